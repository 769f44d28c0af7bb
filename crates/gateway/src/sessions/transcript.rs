//! The CLI's transcript files (`<session-uuid>.jsonl` under its projects directory): writing one
//! from a request's history, so the CLI resumes it with roles and content blocks intact, and
//! reading one back as Anthropic messages.

use std::path::Path;

use serde_json::{json, Value};
use uuid::Uuid;

use crate::clock;

/// The directory name the CLI uses for a working directory: every character that is not ASCII
/// alphanumeric becomes `-` (`/workspace` → `-workspace`).
pub fn project_dir_name(cwd: &Path) -> String {
    cwd.to_string_lossy()
        .chars()
        .map(|c| if c.is_ascii_alphanumeric() { c } else { '-' })
        .collect()
}

/// One earlier turn of a conversation.
pub struct Turn<'a> {
    pub role: &'a str,
    pub content: Value,
}

/// A continuation of client tool calls: the last assistant turn's calls, answered by the
/// client. The CLI runs one deferred call again when it resumes (the last one its transcript
/// records deferred); the results of the others are recorded before that, in one user turn, so
/// the model sees every call followed by its result.
#[derive(Debug, Clone, Default)]
pub struct Deferred {
    /// The call to defer in a written transcript (the turn's last).
    pub call: Value,
    /// The client's `tool_result` blocks, one per call of the turn, in order.
    pub results: Vec<Value>,
}

impl Deferred {
    /// The results of every call but `id`'s.
    fn others(&self, id: &str) -> Vec<Value> {
        self.results
            .iter()
            .filter(|r| r.get("tool_use_id").and_then(Value::as_str) != Some(id))
            .cloned()
            .collect()
    }
}

/// What every record of a session's transcript carries.
struct Context<'a> {
    session: String,
    cwd: &'a str,
    version: &'a str,
}

impl Context<'_> {
    /// A record of `kind` with `body` (`message` or `attachment`) after `parent`; its uuid.
    fn record(
        &self,
        kind: &str,
        parent: Option<&str>,
        timestamp: &str,
        body: (&str, Value),
    ) -> (String, String) {
        let uuid = Uuid::new_v4().to_string();
        let mut record = json!({
            "type": kind,
            "uuid": uuid,
            "parentUuid": parent,
            "sessionId": self.session,
            "cwd": self.cwd,
            "timestamp": timestamp,
            "isSidechain": false,
            "userType": "external",
            "version": self.version,
        });
        record[body.0] = body.1;
        (uuid, record.to_string())
    }

    /// The user turn with the results of the calls not deferred (if any), then `call` deferred
    /// by the PreToolUse hook, as the CLI records it.
    fn deferral(
        &self,
        parent: Option<String>,
        timestamp: &str,
        call: &Value,
        others: Vec<Value>,
    ) -> Vec<String> {
        let mut lines = Vec::new();
        let mut parent = parent;
        if !others.is_empty() {
            let (uuid, line) = self.record(
                "user",
                parent.as_deref(),
                timestamp,
                ("message", json!({"role": "user", "content": others})),
            );
            lines.push(line);
            parent = Some(uuid);
        }
        let attachment = json!({
            "type": "hook_deferred_tool",
            "toolUseID": call.get("id"),
            "toolName": call.get("name"),
            "toolInput": call.get("input"),
            "hookName": "settings",
            "hookEvent": "PreToolUse",
            "permissionMode": "default",
        });
        let (_, line) = self.record(
            "attachment",
            parent.as_deref(),
            timestamp,
            ("attachment", attachment),
        );
        lines.push(line);
        lines
    }
}

fn joined(lines: Vec<String>) -> Vec<u8> {
    let mut bytes = Vec::new();
    for line in lines {
        bytes.extend_from_slice(line.as_bytes());
        bytes.push(b'\n');
    }
    bytes
}

/// A transcript holding `history` for `session`, as if the CLI had recorded it; with
/// `deferred` (the calls of the last assistant turn and the client's results), ending as the
/// CLI records calls the PreToolUse hook deferred, so a resumed run goes on from the results.
pub fn seed(
    session: Uuid,
    cwd: &Path,
    cli_version: &str,
    model: &str,
    history: &[Turn<'_>],
    deferred: Option<&Deferred>,
) -> Vec<u8> {
    let cwd = cwd.to_string_lossy();
    let context = Context {
        session: session.to_string(),
        cwd: &cwd,
        version: cli_version,
    };
    let mut lines = Vec::with_capacity(history.len() + 2);
    let mut parent: Option<String> = None;
    let start = clock::now_ms() as i64;
    for (i, turn) in history.iter().enumerate() {
        let timestamp = clock::iso8601(start - (history.len() - i) as i64 * 1000);
        let message = if turn.role == "assistant" {
            let content = match &turn.content {
                Value::String(text) => json!([{"type": "text", "text": text}]),
                other => other.clone(),
            };
            json!({
                "id": format!("msg_history_{i}"),
                "type": "message",
                "role": "assistant",
                "model": model,
                "content": content,
                "stop_reason": if has_tool_use(&content) { "tool_use" } else { "end_turn" },
                "stop_sequence": null,
                "usage": {"input_tokens": 0, "output_tokens": 0},
            })
        } else {
            json!({"role": "user", "content": turn.content})
        };
        let (uuid, line) = context.record(
            turn.role,
            parent.as_deref(),
            &timestamp,
            ("message", message),
        );
        lines.push(line);
        parent = Some(uuid);
    }
    if let Some(deferred) = deferred {
        let id = deferred
            .call
            .get("id")
            .and_then(Value::as_str)
            .unwrap_or_default();
        lines.extend(context.deferral(
            parent,
            &clock::iso8601(start),
            &deferred.call,
            deferred.others(id),
        ));
    }
    joined(lines)
}

/// Why a session cannot go on from a client's tool results.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
#[error("the session's last turn did not end in the client tool call {0:?}; send the conversation from its last answer on")]
pub struct NotAwaiting(pub String);

/// What to append to a session's transcript, which ends in client tool calls the CLI deferred,
/// so that a resume goes on from the client's results for all of them: the CLI runs only the
/// last deferred call again, so the others' results are recorded before it is deferred anew.
/// `Ok(None)` when nothing is missing (one call, or results recorded by an earlier try).
///
/// A transcript whose last model turn made the calls but whose CLI was stopped before it
/// recorded their deferral (the gateway shut down right after the response) gets that
/// deferral written here, so the continuation goes on all the same. A transcript that is not
/// waiting for these calls at all is refused: resumed, the CLI would wait for a result that
/// never comes.
pub fn answer_deferred(
    transcript: &[u8],
    deferred: &Deferred,
) -> Result<Option<Vec<u8>>, NotAwaiting> {
    let text = String::from_utf8_lossy(transcript);
    let records: Vec<Value> = text
        .lines()
        .filter_map(|l| serde_json::from_str(l).ok())
        .collect();
    let wanted = deferred
        .call
        .get("id")
        .and_then(Value::as_str)
        .unwrap_or_default();
    let not_awaiting = || NotAwaiting(wanted.to_owned());
    let is_kind = |r: &Value, kind: &str| r.get("type").and_then(Value::as_str) == Some(kind);
    let last_model = records.iter().rposition(|r| is_kind(r, "assistant"));
    let last_deferral = records.iter().rposition(|r| {
        is_kind(r, "attachment")
            && r.pointer("/attachment/type").and_then(Value::as_str) == Some("hook_deferred_tool")
    });
    let recorded = |id: &str| text.contains(&format!("\"tool_use_id\":\"{id}\""));
    let answered = |id: &str| {
        deferred
            .results
            .iter()
            .any(|r| r.get("tool_use_id").and_then(Value::as_str) == Some(id))
    };
    // The call the resumed CLI will run again, and the record that carries the context.
    let (id, call, context_record, written) = match (last_deferral, last_model) {
        (Some(d), m) if m.is_none_or(|m| m < d) => {
            let last = &records[d];
            let id = last
                .pointer("/attachment/toolUseID")
                .and_then(Value::as_str)
                .ok_or_else(not_awaiting)?;
            let call = json!({"id": id, "name": last.pointer("/attachment/toolName"),
                "input": last.pointer("/attachment/toolInput")});
            (id.to_owned(), call, last, true)
        }
        (_, Some(m)) => {
            // The model's calls, recorded one block per record, with no deferral after them.
            let call = records[m]
                .pointer("/message/content")
                .and_then(Value::as_array)
                .and_then(|blocks| blocks.iter().rev().find(|b| b["type"] == "tool_use"))
                .ok_or_else(not_awaiting)?;
            let id = call["id"].as_str().ok_or_else(not_awaiting)?;
            if recorded(id) {
                return Err(not_awaiting());
            }
            (id.to_owned(), call.clone(), &records[m], false)
        }
        _ => return Err(not_awaiting()),
    };
    if !answered(&id) {
        return Err(NotAwaiting(id));
    }
    let missing: Vec<Value> = deferred
        .others(&id)
        .into_iter()
        .filter(|r| {
            !r.get("tool_use_id")
                .and_then(Value::as_str)
                .is_some_and(recorded)
        })
        .collect();
    if written && missing.is_empty() {
        return Ok(None);
    }
    let leaf = records
        .iter()
        .rev()
        .find_map(|r| r.get("uuid").and_then(Value::as_str))
        .ok_or_else(not_awaiting)?;
    let field = |k: &str| {
        context_record
            .get(k)
            .and_then(Value::as_str)
            .unwrap_or_default()
    };
    let context = Context {
        session: field("sessionId").to_owned(),
        cwd: field("cwd"),
        version: field("version"),
    };
    Ok(Some(joined(context.deferral(
        Some(leaf.to_owned()),
        &clock::iso8601(clock::now_ms() as i64),
        &call,
        missing,
    ))))
}

fn has_tool_use(content: &Value) -> bool {
    content
        .as_array()
        .is_some_and(|blocks| blocks.iter().any(|b| b["type"] == "tool_use"))
}

/// The conversation in a transcript, as Anthropic messages. Consecutive records of one model
/// message (the CLI writes one per content block) are merged; meta and sub-agent records are
/// left out.
pub fn messages(transcript: &[u8]) -> Vec<Value> {
    let text = String::from_utf8_lossy(transcript);
    let mut messages: Vec<Value> = Vec::new();
    let mut last_assistant_id: Option<String> = None;
    for line in text.lines() {
        let Ok(record) = serde_json::from_str::<Value>(line) else {
            continue;
        };
        let kind = record
            .get("type")
            .and_then(Value::as_str)
            .unwrap_or_default();
        let flagged = |k: &str| record.get(k).and_then(Value::as_bool).unwrap_or(false);
        if !matches!(kind, "user" | "assistant") || flagged("isMeta") || flagged("isSidechain") {
            continue;
        }
        let Some(message) = record.get("message") else {
            continue;
        };
        let content = match message.get("content") {
            Some(Value::String(s)) => json!([{"type": "text", "text": s}]),
            Some(Value::Array(blocks)) => Value::Array(blocks.clone()),
            _ => continue,
        };
        let id = message.get("id").and_then(Value::as_str).map(str::to_owned);
        if kind == "assistant" && id.is_some() && id == last_assistant_id {
            if let (Some(last), Value::Array(more)) = (messages.last_mut(), content) {
                if let Some(blocks) = last["content"].as_array_mut() {
                    blocks.extend(more);
                }
            }
            continue;
        }
        last_assistant_id = if kind == "assistant" { id } else { None };
        messages.push(json!({"role": kind, "content": content}));
    }
    messages
}

/// A prompt's content as a list of blocks (a string is one text block).
fn as_blocks(content: &Value) -> Value {
    match content {
        Value::String(text) => json!([{"type": "text", "text": text}]),
        other => other.clone(),
    }
}

/// Where the last turn that began with `prompt` starts in a transcript: the byte offset of
/// the line recording the prompt, or of the queue records just before it.
pub fn turn_start(transcript: &[u8], prompt: &Value) -> Option<usize> {
    let wanted = as_blocks(prompt);
    let mut lines = Vec::new();
    let mut offset = 0;
    for line in transcript.split_inclusive(|b| *b == b'\n') {
        lines.push((
            offset,
            serde_json::from_slice::<Value>(line.trim_ascii()).ok(),
        ));
        offset += line.len();
    }
    let kind = |record: &Option<Value>| {
        record
            .as_ref()
            .and_then(|r| r.get("type"))
            .and_then(Value::as_str)
            .map(str::to_owned)
    };
    let prompt_at = lines.iter().rposition(|(_, record)| {
        kind(record).as_deref() == Some("user")
            && record
                .as_ref()
                .and_then(|r| r.get("message"))
                .and_then(|m| m.get("content"))
                .is_some_and(|c| as_blocks(c) == wanted)
    })?;
    let mut start = prompt_at;
    while start > 0 && kind(&lines[start - 1].1).as_deref() == Some("queue-operation") {
        start -= 1;
    }
    Some(lines[start].0)
}

#[cfg(test)]
mod tests {

    #[test]
    fn results_of_the_calls_not_deferred_are_recorded_once_before_the_last_deferred_anew() {
        let calls = json!([
            {"type": "tool_use", "id": "t1", "name": "mcp__client__a", "input": {}},
            {"type": "tool_use", "id": "t2", "name": "mcp__client__b", "input": {}}]);
        let deferred = Deferred {
            call: calls[1].clone(),
            results: vec![
                json!({"type": "tool_result", "tool_use_id": "t1", "content": "one"}),
                json!({"type": "tool_result", "tool_use_id": "t2", "content": "two"}),
            ],
        };
        let history = [
            Turn {
                role: "user",
                content: json!("q"),
            },
            Turn {
                role: "assistant",
                content: calls,
            },
        ];
        // Written from history: t1's result, then t2 deferred (the call the CLI runs again).
        let seeded = seed(
            Uuid::new_v4(),
            Path::new("/w"),
            "2.1",
            "m",
            &history,
            Some(&deferred),
        );
        let text = String::from_utf8_lossy(&seeded);
        let records: Vec<Value> = text
            .lines()
            .filter_map(|l| serde_json::from_str(l).ok())
            .collect();
        assert_eq!(records[2]["message"]["content"][0]["tool_use_id"], "t1");
        assert_eq!(records[3]["attachment"]["toolUseID"], "t2");
        assert!(!text.contains("\"tool_use_id\":\"t2\""));
        // Already recorded: nothing to add.
        assert_eq!(answer_deferred(&seeded, &deferred), Ok(None));

        // A transcript the CLI wrote, with both calls deferred: t1's result and t2 again.
        let without: Vec<&Value> = records
            .iter()
            .filter(|r| r["type"] != "user" || r["message"]["content"].is_string())
            .collect();
        let mut cli = String::new();
        for r in without {
            cli.push_str(&r.to_string());
            cli.push('\n');
        }
        let more = answer_deferred(cli.as_bytes(), &deferred)
            .expect("awaiting")
            .expect("the missing result");
        let added: Vec<Value> = String::from_utf8_lossy(&more)
            .lines()
            .filter_map(|l| serde_json::from_str(l).ok())
            .collect();
        assert_eq!(added[0]["message"]["content"][0]["tool_use_id"], "t1");
        assert_eq!(added[1]["attachment"]["toolUseID"], "t2");
        assert_eq!(added[1]["parentUuid"], added[0]["uuid"]);
    }

    use super::*;

    fn one_call(id: &str) -> Deferred {
        Deferred {
            call: json!({"type": "tool_use", "id": id, "name": "get_weather", "input": {}}),
            results: vec![json!({"type": "tool_result", "tool_use_id": id, "content": "sunny"})],
        }
    }

    #[test]
    fn a_session_whose_cli_stopped_before_deferring_its_call_gets_the_deferral_written() {
        let lines = [
            r#"{"type":"user","uuid":"u1","sessionId":"s","cwd":"/w","version":"2.1","message":{"role":"user","content":"weather?"}}"#,
            r#"{"type":"assistant","uuid":"a1","parentUuid":"u1","sessionId":"s","cwd":"/w","version":"2.1","message":{"id":"m1","role":"assistant","content":[{"type":"tool_use","id":"t1","name":"mcp__client__get_weather","input":{"city":"Oslo"}}]}}"#,
        ];
        let transcript = format!("{}\n", lines.join("\n"));
        let added = answer_deferred(transcript.as_bytes(), &one_call("t1"))
            .expect("awaiting")
            .expect("the deferral");
        let record: Value = serde_json::from_slice(added.trim_ascii()).expect("one record");
        assert_eq!(record["parentUuid"], "a1");
        assert_eq!(record["sessionId"], "s");
        assert_eq!(record["attachment"]["toolUseID"], "t1");
        // The call as the CLI knows it, under its own name for the client's tool.
        assert_eq!(record["attachment"]["toolName"], "mcp__client__get_weather");
        assert_eq!(record["attachment"]["toolInput"]["city"], "Oslo");
    }

    #[test]
    fn results_for_a_session_not_waiting_for_them_are_refused() {
        let answered = [
            r#"{"type":"user","uuid":"u1","message":{"role":"user","content":"hi"}}"#,
            r#"{"type":"assistant","uuid":"a1","message":{"id":"m1","role":"assistant","content":[{"type":"text","text":"hello"}]}}"#,
        ];
        let transcript = format!("{}\n", answered.join("\n"));
        assert_eq!(
            answer_deferred(transcript.as_bytes(), &one_call("t1")),
            Err(NotAwaiting("t1".into()))
        );
        // Deferred, but another call than the one the client answers.
        let deferred = [
            answered[0],
            r#"{"type":"assistant","uuid":"a1","message":{"id":"m1","role":"assistant","content":[{"type":"tool_use","id":"t9","name":"x","input":{}}]}}"#,
            r#"{"type":"attachment","uuid":"d1","attachment":{"type":"hook_deferred_tool","toolUseID":"t9","toolName":"x","toolInput":{}}}"#,
        ];
        let transcript = format!("{}\n", deferred.join("\n"));
        assert_eq!(
            answer_deferred(transcript.as_bytes(), &one_call("t1")),
            Err(NotAwaiting("t9".into()))
        );
        assert_eq!(
            answer_deferred(transcript.as_bytes(), &one_call("t9")),
            Ok(None)
        );
    }

    #[test]
    fn a_failed_turn_is_found_from_its_prompt_on() {
        let lines = [
            r#"{"type":"user","message":{"role":"user","content":"first"}}"#,
            r#"{"type":"assistant","message":{"id":"m1","role":"assistant","content":[{"type":"text","text":"one"}]}}"#,
            r#"{"type":"queue-operation","operation":"enqueue","content":"second"}"#,
            r#"{"type":"user","message":{"role":"user","content":[{"type":"text","text":"second"}]}}"#,
            r#"{"type":"assistant","message":{"id":"m2","role":"assistant","content":[{"type":"text","text":"API Error"}]}}"#,
        ];
        let transcript = format!("{}\n", lines.join("\n"));
        let kept = lines[..2].iter().map(|l| l.len() + 1).sum::<usize>();
        assert_eq!(
            turn_start(transcript.as_bytes(), &json!("second")),
            Some(kept)
        );
        assert_eq!(
            turn_start(
                transcript.as_bytes(),
                &json!([{"type": "text", "text": "first"}])
            ),
            Some(0)
        );
        assert_eq!(
            turn_start(transcript.as_bytes(), &json!("never sent")),
            None
        );
    }

    #[test]
    fn project_dir_names_follow_the_clis_rule() {
        assert_eq!(project_dir_name(Path::new("/workspace")), "-workspace");
        assert_eq!(project_dir_name(Path::new("/tmp/exp/ws4")), "-tmp-exp-ws4");
    }

    #[test]
    fn a_seeded_transcript_reads_back_as_the_same_conversation() {
        let history = [
            Turn {
                role: "user",
                content: json!("q1"),
            },
            Turn {
                role: "assistant",
                content: json!("a1"),
            },
            Turn {
                role: "user",
                content: json!([{"type": "text", "text": "q2"}]),
            },
        ];
        let transcript = seed(
            Uuid::nil(),
            Path::new("/workspace"),
            "2.1.197",
            "sonnet",
            &history,
            None,
        );
        let messages = messages(&transcript);
        let roles: Vec<_> = messages
            .iter()
            .map(|m| m["role"].as_str().unwrap_or(""))
            .collect();
        assert_eq!(roles, ["user", "assistant", "user"]);
        assert_eq!(messages[1]["content"][0]["text"], "a1");
    }

    #[test]
    fn per_block_assistant_records_merge_into_one_message() {
        let lines = [
            r#"{"type":"user","message":{"role":"user","content":"go"}}"#,
            r#"{"type":"assistant","message":{"id":"m1","role":"assistant","content":[{"type":"text","text":"a"}]}}"#,
            r#"{"type":"assistant","message":{"id":"m1","role":"assistant","content":[{"type":"tool_use","id":"t","name":"Bash","input":{}}]}}"#,
            r#"{"type":"user","isMeta":true,"message":{"role":"user","content":"meta"}}"#,
            r#"{"type":"queue-operation"}"#,
        ];
        let messages = messages(lines.join("\n").as_bytes());
        assert_eq!(messages.len(), 2);
        assert_eq!(messages[1]["content"].as_array().map(Vec::len), Some(2));
    }
}
