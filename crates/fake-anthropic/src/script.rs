//! What the fake model does with one request, decided by a directive in the conversation.
//!
//! A user text block may hold a line `FAKE-SCRIPT: {json}`. The most recent such directive
//! governs the request; without one the model answers with a short plain reply. Tool scripts are
//! stateless: the number of `tool_result` blocks seen since the directive says which step is next,
//! so the real CLI can drive a multi-step tool conversation against it.

use serde::Deserialize;
use serde_json::Value;

/// The marker a prompt carries to script the fake model.
pub const DIRECTIVE: &str = "FAKE-SCRIPT:";

/// One scripted behaviour, parsed from the JSON after [`DIRECTIVE`].
#[derive(Debug, Clone, Default, Deserialize, PartialEq)]
#[serde(deny_unknown_fields)]
pub struct Script {
    /// The final text reply. Defaults to an echo of the prompt (or of the tool results).
    #[serde(default)]
    pub reply: Option<String>,
    /// The reply to a non-streaming call instead of `reply`: what the CLI's retry gets after
    /// a stream was cut (`fail_after_chunks`), to test an answer that changes on retry.
    #[serde(default)]
    pub retry_reply: Option<String>,
    /// A final reply of exactly this many bytes (a marker, then filler), for large answers.
    #[serde(default)]
    pub reply_bytes: Option<usize>,
    /// Tool calls to make, one per model turn, before the final reply.
    #[serde(default)]
    pub tools: Vec<ToolCall>,
    /// Answer with this upstream error instead of a message.
    #[serde(default)]
    pub error: Option<ScriptedError>,
    /// Pause between streamed chunks, in milliseconds.
    #[serde(default)]
    pub chunk_delay_ms: u64,
    /// Pause before the first byte of the response, in milliseconds.
    #[serde(default)]
    pub first_byte_delay_ms: u64,
    /// Split the reply text into this many deltas (at least one).
    #[serde(default)]
    pub chunks: Option<usize>,
    /// Stop the stream after this many text deltas with a mid-stream `error` event.
    #[serde(default)]
    pub fail_after_chunks: Option<usize>,
    /// Response headers to add to the answer (an error's included), such as the
    /// `anthropic-ratelimit-*` headers the API reports a credential's limits in.
    #[serde(default)]
    pub headers: std::collections::BTreeMap<String, String>,
}

#[derive(Debug, Clone, Deserialize, PartialEq)]
#[serde(deny_unknown_fields)]
pub struct ToolCall {
    pub name: String,
    #[serde(default)]
    pub input: Value,
    /// Text the model says in the same turn, before the tool call.
    #[serde(default)]
    pub say: Option<String>,
    /// Further calls in the same turn, after this one (parallel tool use).
    #[serde(default)]
    pub with: Vec<ToolCall>,
}

#[derive(Debug, Clone, Deserialize, PartialEq)]
#[serde(deny_unknown_fields)]
pub struct ScriptedError {
    pub status: u16,
    #[serde(default)]
    pub message: Option<String>,
    /// Seconds for a `retry-after` header.
    #[serde(default)]
    pub retry_after: Option<u64>,
}

impl ScriptedError {
    pub fn error_type(&self) -> &'static str {
        match self.status {
            400 => "invalid_request_error",
            401 => "authentication_error",
            403 => "permission_error",
            404 => "not_found_error",
            413 => "request_too_large",
            429 => "rate_limit_error",
            529 => "overloaded_error",
            _ => "api_error",
        }
    }
}

/// What the fake model answers for one request.
#[derive(Debug, Clone, PartialEq)]
pub enum Turn {
    Text(String),
    /// A reply the request's `stop_sequences` cut short: the text before the first sequence
    /// the reply held, and that sequence.
    Stopped(String, String),
    ToolUse(ToolCall),
    Error(ScriptedError),
}

/// The plan for one request: its turn plus the pacing of the script that produced it.
#[derive(Debug, Clone, PartialEq)]
pub struct Plan {
    pub turn: Turn,
    pub script: Script,
}

/// Decides the reply to a Messages API request body.
pub fn plan(body: &Value) -> Plan {
    let messages = body
        .get("messages")
        .and_then(Value::as_array)
        .map(Vec::as_slice)
        .unwrap_or_default();
    let Some((index, script)) = latest_directive(messages) else {
        return Plan {
            turn: Turn::Text(default_reply(messages)),
            script: Script::default(),
        };
    };
    if let Some(error) = &script.error {
        return Plan {
            turn: Turn::Error(error.clone()),
            script,
        };
    }
    let results = tool_results_since(&messages[index + 1..]);
    // One step per user turn that answered calls (a turn of parallel calls has several results).
    let answered = messages[index + 1..]
        .iter()
        .filter(|m| !tool_results_since(std::slice::from_ref(m)).is_empty())
        .count();
    let turn = match script.tools.get(answered) {
        Some(call) => Turn::ToolUse(call.clone()),
        None => Turn::Text(match (&script.reply, script.reply_bytes) {
            (_, Some(n)) => sized_reply(n),
            (Some(reply), None) => reply.clone(),
            (None, None) if script.tools.is_empty() => default_reply(messages),
            (None, None) => format!("tool results: {}", Value::Array(results)),
        }),
    };
    Plan { turn, script }
}

fn latest_directive(messages: &[Value]) -> Option<(usize, Script)> {
    messages.iter().enumerate().rev().find_map(|(i, m)| {
        if m.get("role").and_then(Value::as_str) != Some("user") {
            return None;
        }
        texts(m)
            .iter()
            .rev()
            .find_map(|text| parse_directive(text))
            .map(|s| (i, s))
    })
}

/// Parses the first directive line in `text`; a malformed one reads as no directive.
pub fn parse_directive(text: &str) -> Option<Script> {
    text.lines().find_map(|line| {
        let rest = line.trim_start().strip_prefix(DIRECTIVE)?;
        serde_json::from_str(rest.trim()).ok()
    })
}

fn texts(message: &Value) -> Vec<String> {
    match message.get("content") {
        Some(Value::String(s)) => vec![s.clone()],
        Some(Value::Array(blocks)) => blocks
            .iter()
            .filter(|b| b.get("type").and_then(Value::as_str) == Some("text"))
            .filter_map(|b| b.get("text").and_then(Value::as_str).map(str::to_owned))
            .collect(),
        _ => Vec::new(),
    }
}

/// The content of every `tool_result` block in `messages`, in order.
fn tool_results_since(messages: &[Value]) -> Vec<Value> {
    messages
        .iter()
        .filter_map(|m| m.get("content").and_then(Value::as_array))
        .flatten()
        .filter(|b| b.get("type").and_then(Value::as_str) == Some("tool_result"))
        .map(|b| b.get("content").cloned().unwrap_or(Value::Null))
        .collect()
}

/// Echoes the last text block of the last user message: the CLI puts its own context
/// (`<system-reminder>` blocks) before the prompt, so the prompt is the last block.
/// `BEGIN-`, then digits and spaces, then `-END`: exactly `n` bytes (at least 10), so a test
/// can tell a whole answer from a cut one.
pub fn sized_reply(n: usize) -> String {
    let n = n.max(10);
    let mut text = String::with_capacity(n);
    text.push_str("BEGIN-");
    let filler = "0123456789 ";
    while text.len() < n - 4 {
        let take = (n - 4 - text.len()).min(filler.len());
        text.push_str(&filler[..take]);
    }
    text.push_str("-END");
    text
}

fn default_reply(messages: &[Value]) -> String {
    let last = messages
        .iter()
        .rev()
        .find(|m| m.get("role").and_then(Value::as_str) == Some("user"))
        .and_then(|m| texts(m).pop())
        .unwrap_or_default();
    let prompt: String = last.chars().take(200).collect();
    format!("Hello from fake-anthropic. You said: {prompt}")
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn without_directive_replies_with_echo_of_last_user_text() {
        let body = json!({"messages":[{"role":"user","content":"hi there"}]});
        assert_eq!(
            plan(&body).turn,
            Turn::Text("Hello from fake-anthropic. You said: hi there".into())
        );
    }

    #[test]
    fn tool_script_steps_through_calls_then_echoes_results() {
        let directive = r#"FAKE-SCRIPT: {"tools":[{"name":"Bash","input":{"command":"pwd"}}]}"#;
        let first =
            json!({"messages":[{"role":"user","content":[{"type":"text","text":directive}]}]});
        assert!(matches!(plan(&first).turn, Turn::ToolUse(ref c) if c.name == "Bash"));
        let second = json!({"messages":[
            {"role":"user","content":[{"type":"text","text":directive}]},
            {"role":"assistant","content":[{"type":"tool_use","id":"t1","name":"Bash","input":{}}]},
            {"role":"user","content":[{"type":"tool_result","tool_use_id":"t1","content":"/work"}]}
        ]});
        assert_eq!(
            plan(&second).turn,
            Turn::Text(r#"tool results: ["/work"]"#.into())
        );
    }

    #[test]
    fn error_directive_yields_error_turn() {
        let body = json!({"messages":[{"role":"user","content":"FAKE-SCRIPT: {\"error\":{\"status\":429,\"retry_after\":7}}"}]});
        match plan(&body).turn {
            Turn::Error(e) => {
                assert_eq!(e.status, 429);
                assert_eq!(e.error_type(), "rate_limit_error");
            }
            other => panic!("unexpected {other:?}"),
        }
    }

    #[test]
    fn malformed_directive_is_ignored() {
        assert_eq!(parse_directive("FAKE-SCRIPT: {not json"), None);
    }
}
