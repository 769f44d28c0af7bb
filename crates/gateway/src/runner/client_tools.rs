//! Client-defined tools: tools a request offers that its client runs, not the CLI.
//!
//! The CLI sees them as the tools of an MCP server named [`SERVER`] that the gateway's own
//! binary serves inside the sandbox ([`serve`]), from a file in the run's directory. A
//! PreToolUse hook (the gateway binary again, [`hook`]) answers `defer` for a call the file has
//! no result for: the CLI then ends the turn with `stop_reason: "tool_deferred"` and the call in
//! `deferred_tool_use`, and records it in the session's transcript. The response ends there, as
//! the API's would (`stop_reason: "tool_use"`). The client's next request carries the result: the
//! gateway writes it into the file and resumes the session, and the CLI, finding the deferred
//! call, runs it again before anything else: the hook now allows it, the server answers with the
//! client's result, and the model goes on. Nothing of this is kept in memory between the two
//! requests, so a continuation works after a restart and with a stateless client (whose history
//! is written as a transcript that ends with the deferred call).
//!
//! Parallel calls: the hook defers each call of the turn, but a resumed CLI runs only the last
//! one again (and drops a call left without a result), so the continuation first records the
//! client's results for the others in the transcript, then that call deferred anew
//! ([`crate::sessions::transcript::answer_deferred`]): the model sees all its calls, then all
//! their results, as the API would show them.

use std::collections::BTreeMap;
use std::io::{BufRead, Write};
use std::path::Path;

use serde::{Deserialize, Serialize};
use serde_json::{json, Value};

/// The MCP server's name: the CLI calls its tools `mcp__client__<name>`.
pub const SERVER: &str = "client";
const PREFIX: &str = "mcp__client__";
/// Longest client tool name: the API's 64, less the prefix the CLI adds.
pub const MAX_NAME: usize = 64 - PREFIX.len();
/// The CLI's variable for the text it adds after a resumed call's result.
pub const RESUME_PROMPT_VAR: &str = "CLAUDE_CODE_RESUME_PROMPT";

/// One tool a client offers.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct ClientTool {
    pub name: String,
    #[serde(default)]
    pub description: String,
    pub input_schema: Value,
}

/// A client's answer to one call: `tool_result` content (a string or blocks).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct ToolResult {
    pub content: Value,
    #[serde(default)]
    pub is_error: bool,
}

/// What a run's client tools file holds.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct ClientTools {
    pub tools: Vec<ClientTool>,
    /// Results by `tool_use` id, for a continuation.
    #[serde(default)]
    pub results: BTreeMap<String, ToolResult>,
    /// Text the client sent beside its results: the CLI adds it after them when it resumes the
    /// call ([`RESUME_PROMPT_VAR`]; without it, "Continue from where you left off.").
    #[serde(skip)]
    pub resume_text: Option<String>,
}

/// The name the CLI (and the model) knows a client tool by.
pub fn internal_name(name: &str) -> String {
    format!("{PREFIX}{name}")
}

/// The client's name of a tool the model called, if it is a client tool.
pub fn client_name(internal: &str) -> Option<&str> {
    internal.strip_prefix(PREFIX)
}

/// The `--mcp-config` entry of the server, run by `relay` (the gateway binary as the CLI sees it).
pub fn mcp_entry(relay: &Path, file: &Path) -> Value {
    json!({"type": "stdio", "command": relay, "args": ["client-tools", format!("--file={}", file.display())]})
}

/// The settings' `hooks`: the PreToolUse hook that defers client tool calls without a result.
pub fn hooks(relay: &Path, file: &Path) -> Value {
    json!({"PreToolUse": [{
        "matcher": format!("{PREFIX}.*"),
        "hooks": [{"type": "command", "command": format!("{} client-tool-hook --file={}", relay.display(), file.display())}],
    }]})
}

fn read(file: &Path) -> ClientTools {
    std::fs::read(file)
        .ok()
        .and_then(|bytes| serde_json::from_slice(&bytes).ok())
        .unwrap_or_default()
}

/// The PreToolUse hook, inside the sandbox: reads the call from stdin, answers `allow` when the
/// file holds the client's result for it, else `defer`.
pub fn hook(file: &Path) -> i32 {
    let mut input = String::new();
    let _ = std::io::Read::read_to_string(&mut std::io::stdin(), &mut input);
    let id = serde_json::from_str::<Value>(&input).ok().and_then(|v| {
        v.get("tool_use_id")
            .and_then(Value::as_str)
            .map(str::to_owned)
    });
    let answered = id.is_some_and(|id| read(file).results.contains_key(&id));
    let decision = if answered { "allow" } else { "defer" };
    println!(
        "{}",
        json!({"hookSpecificOutput": {"hookEventName": "PreToolUse", "permissionDecision": decision}})
    );
    0
}

/// MCP content for a `tool_result`'s content: text as text, images as images.
fn mcp_content(content: &Value) -> Vec<Value> {
    match content {
        Value::String(text) => vec![json!({"type": "text", "text": text})],
        Value::Array(blocks) => blocks
            .iter()
            .filter_map(|b| match b.get("type").and_then(Value::as_str) {
                Some("text") => Some(json!({"type": "text", "text": b.get("text")?})),
                Some("image") => {
                    let source = b.get("source")?;
                    Some(json!({"type": "image", "data": source.get("data")?,
                        "mimeType": source.get("media_type")?}))
                }
                _ => None,
            })
            .collect(),
        _ => Vec::new(),
    }
}

/// The MCP server, inside the sandbox: line-delimited JSON-RPC on stdin and stdout, the few
/// methods the CLI uses (hand-written: three methods do not need an SDK in every sandbox).
pub fn serve(file: &Path) -> i32 {
    let stdin = std::io::stdin();
    let mut stdout = std::io::stdout();
    for line in stdin.lock().lines() {
        let Ok(line) = line else { return 0 };
        let Ok(message) = serde_json::from_str::<Value>(&line) else {
            continue;
        };
        let Some(id) = message.get("id").cloned() else {
            continue; // a notification
        };
        let params = message.get("params").cloned().unwrap_or(Value::Null);
        let result = match message.get("method").and_then(Value::as_str) {
            Some("initialize") => json!({
                "protocolVersion": params.get("protocolVersion").cloned().unwrap_or(json!("2025-06-18")),
                "capabilities": {"tools": {}},
                "serverInfo": {"name": SERVER, "version": env!("CARGO_PKG_VERSION")},
            }),
            Some("tools/list") => json!({"tools": read(file).tools.iter().map(|t| json!({
                "name": t.name, "description": t.description, "inputSchema": t.input_schema,
            })).collect::<Vec<_>>()}),
            Some("tools/call") => {
                let call = params
                    .pointer("/_meta/claudecode~1toolUseId")
                    .and_then(Value::as_str)
                    .unwrap_or_default();
                match read(file).results.get(call) {
                    Some(result) => {
                        json!({"content": mcp_content(&result.content), "isError": result.is_error})
                    }
                    // A call the hook did not defer and the client has not answered: no answer
                    // at all (the run ends at its time limit, with an error), never a made-up
                    // one the model would carry on from.
                    None => continue,
                }
            }
            _ => json!({}),
        };
        let reply = json!({"jsonrpc": "2.0", "id": id, "result": result});
        if writeln!(stdout, "{reply}")
            .and_then(|()| stdout.flush())
            .is_err()
        {
            return 0;
        }
    }
    0
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names_round_trip_and_results_become_mcp_content() {
        assert_eq!(internal_name("get_weather"), "mcp__client__get_weather");
        assert_eq!(client_name("mcp__client__get_weather"), Some("get_weather"));
        assert_eq!(client_name("Bash"), None);
        assert_eq!(
            mcp_content(&json!("sunny")),
            vec![json!({"type": "text", "text": "sunny"})]
        );
        let blocks = json!([{"type": "text", "text": "a"},
            {"type": "image", "source": {"type": "base64", "media_type": "image/png", "data": "AA=="}}]);
        assert_eq!(
            mcp_content(&blocks),
            vec![
                json!({"type": "text", "text": "a"}),
                json!({"type": "image", "data": "AA==", "mimeType": "image/png"})
            ]
        );
    }
}
