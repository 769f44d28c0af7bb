//! Turns the CLI's output lines into one message's events ([`TurnEvent`]).
//!
//! Inside one request the CLI may call the model several times (each tool call is a model turn
//! of its own). The client asked for one message, so the assembler merges them: one
//! `message_start`, the content blocks of every turn re-indexed in order, and one closing
//! `message_delta` / `message_stop` carrying the last turn's stop reason and the run's total
//! usage. Tool activity (`tool_use` blocks and the CLI's `tool_result`s) is hidden unless asked
//! for; sub-agent events (inside a tool call) are always hidden.
//!
//! The CLI's `assistant` lines are the authority on what the model said; the raw stream events
//! are only the fast path. When a stream breaks mid-message the CLI quietly repeats the call
//! without streaming and reports the complete message in `assistant` lines under a new message
//! id; the assembler then sends whatever the client has not yet seen (the rest of a cut-off
//! block, or whole blocks), so nothing is lost and nothing is repeated.

use std::collections::BTreeMap;

use serde_json::{json, Value};

use super::event::{Block, Delta, TurnEvent, Usage};
use super::TurnError;
use crate::runner::client_tools;
use crate::runner::protocol::{CliLine, ResultLine};

/// What a line meant for the response.
#[derive(Debug)]
pub enum Step {
    Continue(Vec<TurnEvent>),
    /// The run finished; the closing events follow.
    Finished(Vec<TurnEvent>, Box<ResultLine>),
    Failed(TurnError),
}

#[derive(Debug)]
struct StreamedBlock {
    /// The client's index, or `None` when hidden.
    index: Option<usize>,
    kind: String,
    /// Text (or thinking) relayed so far.
    streamed: String,
    open: bool,
}

#[derive(Debug, Default)]
pub struct Assembler {
    show_tools: bool,
    /// The client asked for output matching a JSON schema: the answer is the CLI's structured
    /// output (the input of its `StructuredOutput` tool call), sent as the message's one text
    /// block; the model's prose around that call is not part of it.
    structured: bool,
    next_index: usize,
    /// This model turn's blocks as streamed, by upstream index.
    turn_blocks: BTreeMap<u64, StreamedBlock>,
    /// The id of the message whose stream events are being relayed.
    stream_message_id: Option<String>,
    /// The upstream index of the block most recently started.
    latest_started: Option<u64>,
    /// A message that arrived only as `assistant` lines: its id and how many blocks it has had.
    unstreamed: Option<(String, u64)>,
    /// The model id the upstream reported, e.g. `claude-sonnet-5` for the alias `sonnet`.
    pub model: Option<String>,
    /// The first turn's input usage, for the reply's start.
    pub start_usage: Option<Usage>,
    stop_reason: Option<String>,
    /// The stop sequence that ended the last model turn, if one did.
    stop_sequence: Option<String>,
    output_seen: bool,
}

impl Assembler {
    pub fn new(show_tools: bool) -> Self {
        Self {
            show_tools,
            ..Self::default()
        }
    }

    /// Answers with the run's structured output instead of the model's text.
    pub fn structured(mut self, structured: bool) -> Self {
        self.structured = structured;
        self
    }

    pub fn on_line(&mut self, line: CliLine) -> Step {
        match line {
            CliLine::StreamEvent(e) if e.parent_tool_use_id.is_none() => {
                Step::Continue(self.on_event(&e.event))
            }
            CliLine::Assistant(m) if m.parent_tool_use_id.is_none() => {
                Step::Continue(self.on_assistant(&m.message))
            }
            CliLine::User(m) if self.show_tools && m.parent_tool_use_id.is_none() => {
                Step::Continue(self.tool_results(&m.message))
            }
            CliLine::System(s) if s.subtype == "api_retry" && !self.output_seen => {
                match s.error_status {
                    // Retrying a refused credential cannot help: answer now, not after backoff.
                    Some(status @ (401 | 403)) => Step::Failed(TurnError::Upstream {
                        status,
                        message: s.error.unwrap_or_else(|| "authentication failed".into()),
                        retry_after: None,
                    }),
                    _ => Step::Continue(Vec::new()),
                }
            }
            CliLine::Result(result) => self.on_result(result),
            _ => Step::Continue(Vec::new()),
        }
    }

    fn on_event(&mut self, event: &Value) -> Vec<TurnEvent> {
        let kind = event
            .get("type")
            .and_then(Value::as_str)
            .unwrap_or_default();
        let upstream_index = event.get("index").and_then(Value::as_u64);
        match (kind, upstream_index) {
            ("message_start", _) => {
                self.turn_blocks.clear();
                self.latest_started = None;
                let message = event.get("message");
                self.stream_message_id = message
                    .and_then(|m| m.get("id"))
                    .and_then(Value::as_str)
                    .map(str::to_owned);
                self.note_model(message);
                Vec::new()
            }
            ("content_block_start", Some(i)) => {
                let block = event.get("content_block").cloned().unwrap_or(Value::Null);
                self.latest_started = Some(i);
                let (index, events) = self.open_block(block.clone());
                self.turn_blocks.insert(
                    i,
                    StreamedBlock {
                        index,
                        kind: block_type(&block).to_owned(),
                        streamed: String::new(),
                        open: true,
                    },
                );
                events
            }
            ("content_block_delta", Some(i)) => {
                let Some(block) = self.turn_blocks.get_mut(&i) else {
                    return Vec::new();
                };
                let delta = event.get("delta").cloned().unwrap_or(Value::Null);
                for key in ["text", "thinking"] {
                    if let Some(t) = delta.get(key).and_then(Value::as_str) {
                        block.streamed.push_str(t);
                    }
                }
                match block.index {
                    Some(index) => vec![delta_event(index, delta)],
                    None => Vec::new(),
                }
            }
            ("content_block_stop", Some(i)) => match self.turn_blocks.get_mut(&i) {
                Some(block) if block.open => {
                    block.open = false;
                    block.index.map(stop_event).into_iter().collect()
                }
                _ => Vec::new(),
            },
            ("message_delta", _) => {
                if let Some(delta) = event.get("delta") {
                    self.note_stop(delta);
                }
                Vec::new()
            }
            _ => Vec::new(),
        }
    }

    /// The stop reason (and stop sequence) of a message or message delta, when it has one.
    fn note_stop(&mut self, source: &Value) {
        if let Some(reason) = source.get("stop_reason").and_then(Value::as_str) {
            self.stop_reason = Some(reason.to_owned());
            self.stop_sequence = source
                .get("stop_sequence")
                .and_then(Value::as_str)
                .map(str::to_owned);
        }
    }

    fn note_model(&mut self, message: Option<&Value>) {
        if self.model.is_none() {
            self.model = message
                .and_then(|m| m.get("model"))
                .and_then(Value::as_str)
                .filter(|m| !m.starts_with('<'))
                .map(str::to_owned);
        }
        if self.start_usage.is_none() {
            self.start_usage = message
                .and_then(|m| m.get("usage"))
                .map(|u| Usage::from_value(Some(u)));
        }
    }

    /// Starts a client block for `block` unless it is hidden tool activity. A call of one of
    /// the client's own tools is never hidden: it is the answer, under the client's name.
    fn open_block(&mut self, mut block: Value) -> (Option<usize>, Vec<TurnEvent>) {
        let client_tool = block_type(&block) == "tool_use"
            && block
                .get("name")
                .and_then(Value::as_str)
                .and_then(client_tools::client_name)
                .map(str::to_owned)
                .map(|name| block["name"] = json!(name))
                .is_some();
        if !client_tool && !self.show_tools && is_tool_block(block_type(&block)) {
            return (None, Vec::new());
        }
        if self.structured && block_type(&block) == "text" {
            return (None, Vec::new());
        }
        let index = self.take_index();
        self.output_seen = true;
        (
            Some(index),
            vec![TurnEvent::BlockStart {
                index,
                block: Block::from_value(block),
            }],
        )
    }

    /// Reconciles an `assistant` line (the complete blocks of a model message) with what was
    /// streamed, sending only what the client has not seen.
    fn on_assistant(&mut self, message: &Value) -> Vec<TurnEvent> {
        let id = message
            .get("id")
            .and_then(Value::as_str)
            .unwrap_or_default();
        let blocks = message
            .get("content")
            .and_then(Value::as_array)
            .cloned()
            .unwrap_or_default();
        if message.get("model").and_then(Value::as_str) == Some("<synthetic>") {
            // The CLI's own error notice; the result line reports the failure.
            return Vec::new();
        }
        let streamed = self.stream_message_id.as_deref() == Some(id);
        let first = if streamed {
            // Blocks of a streamed message arrive just before their content_block_stop.
            let count = blocks.len() as u64;
            self.latest_started
                .map_or(0, |l| (l + 1).saturating_sub(count))
        } else {
            self.note_model(Some(message));
            match &mut self.unstreamed {
                Some((seen_id, seen)) if seen_id == id => {
                    let first = *seen;
                    *seen += blocks.len() as u64;
                    first
                }
                _ => {
                    self.unstreamed = Some((id.to_owned(), blocks.len() as u64));
                    0
                }
            }
        };
        if !streamed {
            self.note_stop(message);
        }
        let mut events = Vec::new();
        for (offset, block) in blocks.into_iter().enumerate() {
            let position = first + offset as u64;
            events.extend(self.reconcile(position, block, !streamed));
        }
        events
    }

    fn reconcile(&mut self, position: u64, block: Value, close: bool) -> Vec<TurnEvent> {
        let kind = block_type(&block).to_owned();
        let text_key = match kind.as_str() {
            "text" => Some("text"),
            "thinking" => Some("thinking"),
            _ => None,
        };
        let full = text_key
            .and_then(|k| block.get(k))
            .and_then(Value::as_str)
            .unwrap_or_default()
            .to_owned();
        let mut events = Vec::new();
        if let Some(seen) = self.turn_blocks.get_mut(&position) {
            if seen.kind == kind && (text_key.is_none() || full.starts_with(&seen.streamed)) {
                if let (Some(index), Some(key)) = (seen.index, text_key) {
                    let rest = &full[seen.streamed.len()..];
                    if !rest.is_empty() {
                        let delta_type = format!("{key}_delta");
                        events.push(delta_event(index, json!({"type": delta_type, key: rest})));
                        seen.streamed.push_str(rest);
                    }
                }
                if close && seen.open {
                    seen.open = false;
                    events.extend(seen.index.map(stop_event));
                }
                return events;
            }
            // What was streamed does not match the final block (the stream broke and the
            // retried call answered differently): close it, declare it void, and send the
            // block whole. Never both as if they were one answer.
            if seen.open {
                seen.open = false;
                events.extend(seen.index.map(stop_event));
            }
            if let Some(index) = seen.index.filter(|_| !seen.streamed.is_empty()) {
                events.push(TurnEvent::Retract { index });
            }
        }
        let mut opening = block.clone();
        let delta = match text_key {
            Some(key) => {
                opening[key] = json!("");
                (!full.is_empty()).then(|| json!({"type": format!("{key}_delta"), key: full}))
            }
            None if kind == "tool_use" => {
                let input = block.get("input").cloned().unwrap_or(json!({}));
                opening["input"] = json!({});
                Some(json!({"type":"input_json_delta","partial_json":input.to_string()}))
            }
            None => None,
        };
        let (index, opened) = self.open_block(opening);
        events.extend(opened);
        if let Some(index) = index {
            events.extend(delta.map(|d| delta_event(index, d)));
            events.push(stop_event(index));
        }
        events
    }

    fn tool_results(&mut self, message: &Value) -> Vec<TurnEvent> {
        let Some(blocks) = message.get("content").and_then(Value::as_array) else {
            return Vec::new();
        };
        blocks
            .iter()
            .filter(|b| b.get("type").and_then(Value::as_str) == Some("tool_result"))
            .flat_map(|b| {
                let index = self.take_index();
                [
                    TurnEvent::BlockStart {
                        index,
                        block: Block::ToolResult {
                            tool_use_id: b.get("tool_use_id").cloned().unwrap_or(Value::Null),
                            content: b.get("content").cloned().unwrap_or(Value::Null),
                            is_error: b.get("is_error").and_then(Value::as_bool).unwrap_or(false),
                        },
                    },
                    TurnEvent::BlockStop { index },
                ]
            })
            .collect()
    }

    fn on_result(&mut self, result: ResultLine) -> Step {
        // The CLI checks its `--max-budget-usd` after each model call: past it, it reports an
        // error even when that call's answer was whole. A whole answer is the turn's result
        // (the upstream was paid for it); a run cut before its answer is the budget's refusal.
        let over_budget = result.subtype == "error_max_budget_usd";
        if over_budget && self.stop_reason.as_deref() != Some("end_turn") {
            return Step::Failed(TurnError::BudgetSpent);
        }
        if result.is_error && !over_budget {
            let message = result
                .result
                .clone()
                .unwrap_or_else(|| format!("the CLI reported an error ({})", result.subtype));
            // A limit of the credential's own, as the CLI read it from the refusal (the
            // proxy's own reading, where it stood between, replaces this).
            if result.api_error.as_deref() == Some("usage_limit_reached") {
                let refusal = result
                    .api_error_params
                    .as_ref()
                    .and_then(|p| p.get("rate_limit_info"))
                    .and_then(|info| crate::quota::Snapshot::from_cli_event(info, 0))
                    .and_then(|s| s.refusal());
                if let Some(refusal) = refusal {
                    return Step::Failed(TurnError::UsageLimit { refusal, message });
                }
            }
            if matches!(result.api_error_status, Some(400 | 403 | 429))
                && crate::quota::message_is_third_party_allowance(&message)
            {
                let refusal = crate::quota::Refusal {
                    window: None,
                    resets_at: None,
                    third_party: true,
                };
                return Step::Failed(TurnError::UsageLimit { refusal, message });
            }
            return Step::Failed(match result.api_error_status {
                Some(status) => TurnError::Upstream {
                    status,
                    message,
                    retry_after: None,
                },
                // The CLI refuses an over-long prompt itself, as the API would have: the
                // request is at fault, not the server (and a client must not retry it).
                None if message.starts_with("Prompt is too long") => TurnError::Upstream {
                    status: 400,
                    message,
                    retry_after: None,
                },
                None => TurnError::Cli(message),
            });
        }
        let mut events = Vec::new();
        if self.structured {
            // The run ends at the model's StructuredOutput call, which the CLI checked against
            // the schema; without one the CLI gave up (it says so with an error result).
            let Some(output) = &result.structured_output else {
                return Step::Failed(TurnError::Cli(
                    "the model gave no output matching the requested JSON schema".into(),
                ));
            };
            let index = self.take_index();
            events.extend([
                TurnEvent::BlockStart {
                    index,
                    block: Block::Text {
                        text: String::new(),
                        citations: None,
                    },
                },
                TurnEvent::Delta {
                    index,
                    delta: Delta::Text(output.to_string()),
                },
                TurnEvent::BlockStop { index },
            ]);
            self.stop_reason = Some("end_turn".into());
            self.stop_sequence = None;
        }
        let usage = result.usage.clone().unwrap_or_default();
        let stop_reason = self
            .stop_reason
            .clone()
            .or_else(|| result.stop_reason.clone())
            .unwrap_or_else(|| "end_turn".into());
        events.extend([
            TurnEvent::Stop {
                reason: stop_reason,
                sequence: self.stop_sequence.clone(),
                usage: Usage {
                    input_tokens: usage.input_tokens,
                    output_tokens: usage.output_tokens,
                    cache_creation_input_tokens: usage.cache_creation_input_tokens,
                    cache_read_input_tokens: usage.cache_read_input_tokens,
                },
            },
            TurnEvent::End,
        ]);
        Step::Finished(events, Box::new(result))
    }

    fn take_index(&mut self) -> usize {
        let i = self.next_index;
        self.next_index += 1;
        i
    }
}

fn block_type(block: &Value) -> &str {
    block
        .get("type")
        .and_then(Value::as_str)
        .unwrap_or_default()
}

fn delta_event(index: usize, delta: Value) -> TurnEvent {
    TurnEvent::Delta {
        index,
        delta: Delta::from_value(delta),
    }
}

fn stop_event(index: usize) -> TurnEvent {
    TurnEvent::BlockStop { index }
}

fn is_tool_block(block_type: &str) -> bool {
    matches!(
        block_type,
        "tool_use" | "server_tool_use" | "mcp_tool_use" | "tool_result"
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    fn line(s: &str) -> CliLine {
        CliLine::parse(s.as_bytes()).expect("json")
    }

    fn event(e: Value) -> CliLine {
        line(&json!({"type":"stream_event","event":e,"parent_tool_use_id":null}).to_string())
    }

    fn tool_turn() -> Vec<CliLine> {
        vec![
            event(
                json!({"type":"message_start","message":{"model":"claude-x","usage":{"input_tokens":5}}}),
            ),
            event(
                json!({"type":"content_block_start","index":0,"content_block":{"type":"tool_use","id":"t1","name":"Bash","input":{}}}),
            ),
            event(
                json!({"type":"content_block_delta","index":0,"delta":{"type":"input_json_delta","partial_json":"{}"}}),
            ),
            event(json!({"type":"content_block_stop","index":0})),
            event(json!({"type":"message_delta","delta":{"stop_reason":"tool_use"}})),
            event(json!({"type":"message_stop"})),
            line(
                r#"{"type":"user","message":{"role":"user","content":[{"type":"tool_result","tool_use_id":"t1","content":"out"}]},"parent_tool_use_id":null}"#,
            ),
            event(json!({"type":"message_start","message":{"model":"claude-x"}})),
            event(
                json!({"type":"content_block_start","index":0,"content_block":{"type":"text","text":""}}),
            ),
            event(
                json!({"type":"content_block_delta","index":0,"delta":{"type":"text_delta","text":"done"}}),
            ),
            event(json!({"type":"content_block_stop","index":0})),
            event(json!({"type":"message_delta","delta":{"stop_reason":"end_turn"}})),
            line(
                r#"{"type":"result","subtype":"success","is_error":false,"result":"done","usage":{"input_tokens":9,"output_tokens":4}}"#,
            ),
        ]
    }

    fn run(show_tools: bool) -> (Vec<TurnEvent>, bool) {
        let mut asm = Assembler::new(show_tools);
        let mut out = Vec::new();
        for l in tool_turn() {
            match asm.on_line(l) {
                Step::Continue(e) => out.extend(e),
                Step::Finished(e, _) => {
                    out.extend(e);
                    return (out, true);
                }
                Step::Failed(e) => panic!("failed: {e:?}"),
            }
        }
        (out, false)
    }

    #[test]
    fn hidden_tool_activity_leaves_one_text_message_indexed_from_zero() {
        let (events, finished) = run(false);
        assert!(finished);
        assert_eq!(
            kinds(&events),
            [
                "content_block_start",
                "content_block_delta",
                "content_block_stop",
                "message_delta",
                "message_stop"
            ]
        );
        assert!(matches!(events[0], TurnEvent::BlockStart { index: 0, .. }));
        let (reason, usage) = stop_reason(&events).expect("a stop");
        assert_eq!((reason, usage.output_tokens), ("end_turn", 4));
    }

    #[test]
    fn shown_tool_activity_interleaves_tool_use_and_result_blocks() {
        let (events, _) = run(true);
        let starts: Vec<(usize, &str)> = events
            .iter()
            .filter_map(|e| match e {
                TurnEvent::BlockStart { index, block } => Some((
                    *index,
                    match block {
                        Block::ToolUse { .. } => "tool_use",
                        Block::ToolResult { .. } => "tool_result",
                        Block::Text { .. } => "text",
                        _ => "other",
                    },
                )),
                _ => None,
            })
            .collect();
        assert_eq!(starts, [(0, "tool_use"), (1, "tool_result"), (2, "text")]);
    }

    #[test]
    fn auth_retry_fails_fast_and_error_results_carry_status() {
        let mut asm = Assembler::new(false);
        let retry = line(
            r#"{"type":"system","subtype":"api_retry","error_status":401,"error":"authentication_failed"}"#,
        );
        assert!(matches!(
            asm.on_line(retry),
            Step::Failed(TurnError::Upstream { status: 401, .. })
        ));
        let result = line(
            r#"{"type":"result","is_error":true,"api_error_status":529,"result":"API Error: 529"}"#,
        );
        assert!(matches!(
            Assembler::new(false).on_line(result),
            Step::Failed(TurnError::Upstream { status: 529, .. })
        ));
    }

    fn collect(asm: &mut Assembler, lines: Vec<CliLine>) -> Vec<TurnEvent> {
        let mut out = Vec::new();
        for l in lines {
            match asm.on_line(l) {
                Step::Continue(e) => out.extend(e),
                Step::Finished(e, _) => out.extend(e),
                Step::Failed(e) => panic!("failed: {e:?}"),
            }
        }
        out
    }

    fn text_of(events: &[TurnEvent]) -> String {
        events
            .iter()
            .filter_map(|e| match e {
                TurnEvent::Delta {
                    delta: Delta::Text(text),
                    ..
                } => Some(text.as_str()),
                _ => None,
            })
            .collect()
    }

    /// What each event is, by the name Anthropic's stream gives it.
    fn kinds(events: &[TurnEvent]) -> Vec<&'static str> {
        events
            .iter()
            .map(|e| match e {
                TurnEvent::Start { .. } => "message_start",
                TurnEvent::BlockStart { .. } => "content_block_start",
                TurnEvent::Delta { .. } => "content_block_delta",
                TurnEvent::BlockStop { .. } => "content_block_stop",
                TurnEvent::Retract { .. } => "retract",
                TurnEvent::Stop { .. } => "message_delta",
                TurnEvent::End => "message_stop",
                TurnEvent::Ping => "ping",
            })
            .collect()
    }

    fn stop_reason(events: &[TurnEvent]) -> Option<(&str, Usage)> {
        events.iter().find_map(|e| match e {
            TurnEvent::Stop { reason, usage, .. } => Some((reason.as_str(), *usage)),
            _ => None,
        })
    }

    #[test]
    fn assistant_lines_of_a_streamed_message_add_nothing() {
        // As claude 2.1.197 prints it: one assistant line per block, before its stop event.
        let lines = vec![
            event(json!({"type":"message_start","message":{"id":"m1","model":"claude-x"}})),
            event(
                json!({"type":"content_block_start","index":0,"content_block":{"type":"text","text":""}}),
            ),
            event(
                json!({"type":"content_block_delta","index":0,"delta":{"type":"text_delta","text":"Let me check."}}),
            ),
            line(
                r#"{"type":"assistant","message":{"id":"m1","content":[{"type":"text","text":"Let me check."}]},"parent_tool_use_id":null}"#,
            ),
            event(json!({"type":"content_block_stop","index":0})),
            event(
                json!({"type":"content_block_start","index":1,"content_block":{"type":"tool_use","id":"t","name":"Bash","input":{}}}),
            ),
            line(
                r#"{"type":"assistant","message":{"id":"m1","content":[{"type":"tool_use","id":"t","name":"Bash","input":{}}]},"parent_tool_use_id":null}"#,
            ),
            event(json!({"type":"content_block_stop","index":1})),
        ];
        let events = collect(&mut Assembler::new(false), lines);
        assert_eq!(
            kinds(&events),
            [
                "content_block_start",
                "content_block_delta",
                "content_block_stop"
            ]
        );
        assert_eq!(text_of(&events), "Let me check.");
    }

    #[test]
    fn a_broken_stream_is_completed_from_the_non_streamed_retry() {
        // The stream broke after "partial"; the CLI retried without streaming (new id).
        let lines = vec![
            event(json!({"type":"message_start","message":{"id":"m1","model":"claude-x"}})),
            event(
                json!({"type":"content_block_start","index":0,"content_block":{"type":"text","text":""}}),
            ),
            event(
                json!({"type":"content_block_delta","index":0,"delta":{"type":"text_delta","text":"partial"}}),
            ),
            line(
                r#"{"type":"assistant","message":{"id":"m2","stop_reason":"end_turn","content":[{"type":"text","text":"partial answer"},{"type":"text","text":"second block"}]},"parent_tool_use_id":null}"#,
            ),
            line(r#"{"type":"result","is_error":false,"result":"partial answer"}"#),
        ];
        let events = collect(&mut Assembler::new(false), lines);
        assert_eq!(text_of(&events), "partial answersecond block");
        let kinds = kinds(&events);
        let count = |k: &str| kinds.iter().filter(|n| **n == k).count();
        assert_eq!(
            (count("content_block_start"), count("content_block_stop")),
            (2, 2),
            "every block is closed once"
        );
        assert_eq!(stop_reason(&events).map(|s| s.0), Some("end_turn"));
    }

    #[test]
    fn sub_agent_events_are_hidden() {
        let mut asm = Assembler::new(true);
        let inner = line(
            &json!({"type":"stream_event","parent_tool_use_id":"t9","event":{"type":"content_block_start","index":0,"content_block":{"type":"text","text":""}}})
                .to_string(),
        );
        assert!(matches!(asm.on_line(inner), Step::Continue(e) if e.is_empty()));
    }
}
