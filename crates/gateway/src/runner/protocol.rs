//! The Claude Code CLI's stream-json protocol: the lines it prints and the lines it reads.
//!
//! Only the fields the gateway acts on are typed; everything else is tolerated, because the CLI
//! adds line types and fields often. A line that does not parse as a known type becomes
//! [`CliLine::Other`] and is logged at debug level by the reader, never treated as an error.

use serde::{Deserialize, Serialize};
use serde_json::Value;

/// One line of `--output-format stream-json --verbose` output.
#[derive(Debug, Clone, PartialEq)]
pub enum CliLine {
    System(SystemLine),
    /// A raw Anthropic stream event (`--include-partial-messages`).
    StreamEvent(StreamEventLine),
    /// A complete model turn.
    Assistant(MessageLine),
    /// Tool results the CLI sends back to the model.
    User(MessageLine),
    Result(ResultLine),
    /// Any other line type (`rate_limit_event`, future additions), kept raw.
    Other(Value),
}

#[derive(Debug, Clone, PartialEq, Deserialize)]
pub struct SystemLine {
    #[serde(default)]
    pub subtype: String,
    #[serde(default)]
    pub session_id: Option<String>,
    #[serde(default)]
    pub model: Option<String>,
    /// `api_retry` lines: the upstream status that caused the retry.
    #[serde(default)]
    pub error_status: Option<u16>,
    #[serde(default)]
    pub error: Option<String>,
}

#[derive(Debug, Clone, PartialEq, Deserialize)]
pub struct StreamEventLine {
    pub event: Value,
    /// Set when the event belongs to a sub-agent working inside a tool call.
    #[serde(default)]
    pub parent_tool_use_id: Option<String>,
}

#[derive(Debug, Clone, PartialEq, Deserialize)]
pub struct MessageLine {
    pub message: Value,
    #[serde(default)]
    pub session_id: Option<String>,
    /// The record's uuid in the session's transcript, once the CLI has written it there.
    #[serde(default)]
    pub uuid: Option<String>,
    #[serde(default)]
    pub parent_tool_use_id: Option<String>,
}

#[derive(Debug, Clone, PartialEq, Deserialize)]
pub struct ResultLine {
    #[serde(default)]
    pub subtype: String,
    #[serde(default)]
    pub is_error: bool,
    #[serde(default)]
    pub api_error_status: Option<u16>,
    /// The CLI's kind of an upstream refusal (`usage_limit_reached`: a limit of the
    /// credential's own), with what it read of it in `api_error_params`.
    #[serde(default)]
    pub api_error: Option<String>,
    #[serde(default)]
    pub api_error_params: Option<Value>,
    #[serde(default)]
    pub result: Option<String>,
    #[serde(default)]
    pub stop_reason: Option<String>,
    #[serde(default)]
    pub session_id: Option<String>,
    #[serde(default)]
    pub num_turns: Option<u64>,
    #[serde(default)]
    pub duration_ms: Option<u64>,
    #[serde(default)]
    pub total_cost_usd: Option<f64>,
    #[serde(default)]
    pub usage: Option<ResultUsage>,
    #[serde(default)]
    pub permission_denials: Vec<Value>,
    /// What the model gave its `StructuredOutput` tool, when the run had a JSON schema.
    #[serde(default)]
    pub structured_output: Option<Value>,
}

#[derive(Debug, Clone, Default, PartialEq, Deserialize)]
pub struct ResultUsage {
    #[serde(default)]
    pub input_tokens: u64,
    #[serde(default)]
    pub output_tokens: u64,
    #[serde(default)]
    pub cache_creation_input_tokens: u64,
    #[serde(default)]
    pub cache_read_input_tokens: u64,
}

#[derive(Deserialize)]
struct Tagged {
    #[serde(rename = "type")]
    kind: String,
}

impl CliLine {
    /// Parses one output line. Only invalid JSON is an error; unknown shapes become `Other`.
    /// Reads a line straight into its typed form: the tag is read first without building the
    /// rest (serde skips it), so even a line of megabytes is parsed once, never copied.
    pub fn parse(line: &[u8]) -> Result<Self, serde_json::Error> {
        let kind = serde_json::from_slice::<Tagged>(line)
            .map(|t| t.kind)
            .unwrap_or_default();
        let typed = match kind.as_str() {
            "system" => serde_json::from_slice(line).map(CliLine::System),
            "stream_event" => serde_json::from_slice(line).map(CliLine::StreamEvent),
            "assistant" => serde_json::from_slice(line).map(CliLine::Assistant),
            "user" => serde_json::from_slice(line).map(CliLine::User),
            "result" => serde_json::from_slice(line).map(CliLine::Result),
            _ => Err(serde::de::Error::custom("untyped")),
        };
        match typed {
            Ok(line) => Ok(line),
            Err(_) => serde_json::from_slice(line).map(CliLine::Other),
        }
    }
}

/// One line of `--input-format stream-json` input: a user turn.
#[derive(Debug, Clone, Serialize)]
pub struct UserInput {
    #[serde(rename = "type")]
    kind: &'static str,
    message: UserInputMessage,
}

#[derive(Debug, Clone, Serialize)]
struct UserInputMessage {
    role: &'static str,
    /// A string or a list of Anthropic content blocks.
    content: Value,
}

impl UserInput {
    pub fn new(content: Value) -> Self {
        Self {
            kind: "user",
            message: UserInputMessage {
                role: "user",
                content,
            },
        }
    }

    /// The turn's content, as the CLI receives (and records) it.
    pub fn content(&self) -> &Value {
        &self.message.content
    }

    /// The JSON line, newline-terminated, to write to the CLI's stdin.
    pub fn to_line(&self) -> Vec<u8> {
        let mut line = serde_json::to_vec(self).unwrap_or_default();
        line.push(b'\n');
        line
    }
}

/// The request id of the gateway's `initialize` control request.
pub const INITIALIZE_ID: &str = "gateway-initialize";

/// The SDK's `initialize` control request; with a JSON schema for the run's answer, the CLI
/// then offers the model a `StructuredOutput` tool with that schema, checks the call against
/// it, and reports its input as the result's `structured_output`. Sent on the CLI's input (its
/// own `--json-schema` flag would put what a tenant wrote on a command line). The CLI answers
/// it with a `control_response` once it has started up ([`INITIALIZE_ID`]).
pub fn initialize_line(json_schema: Option<&Value>) -> Vec<u8> {
    let mut request = serde_json::json!({"subtype": "initialize"});
    if let Some(schema) = json_schema {
        request["jsonSchema"] = schema.clone();
    }
    let mut line = serde_json::to_vec(&serde_json::json!({
        "type": "control_request",
        "request_id": INITIALIZE_ID,
        "request": request,
    }))
    .unwrap_or_default();
    line.push(b'\n');
    line
}

#[cfg(test)]
mod tests {
    use super::*;

    // Lines recorded from claude 2.1.197 against fake-anthropic.
    const INIT: &str = r#"{"type":"system","subtype":"init","cwd":"/tmp/exp/ws","session_id":"0c9d27c3-fda2-4664-a32b-452a8f0054a7","tools":["Bash"],"mcp_servers":[],"model":"claude-sonnet-5","permissionMode":"default","apiKeySource":"none","claude_code_version":"2.1.197"}"#;
    const RETRY: &str = r#"{"type":"system","subtype":"api_retry","attempt":1,"max_retries":10,"retry_delay_ms":590.49,"error_status":401,"error":"authentication_failed","session_id":"c4d9","uuid":"7952"}"#;
    const DELTA: &str = r#"{"type":"stream_event","event":{"delta":{"text":"Hello","type":"text_delta"},"index":0,"type":"content_block_delta"},"session_id":"0c9d","parent_tool_use_id":null,"uuid":"c2b8"}"#;
    const RESULT_ERR: &str = r#"{"type":"result","subtype":"success","is_error":true,"api_error_status":401,"duration_ms":1877,"duration_api_ms":0,"num_turns":1,"result":"Failed to authenticate. API Error: 401 scripted upstream error 401","stop_reason":"stop_sequence","session_id":"c4d9","total_cost_usd":0,"usage":{"input_tokens":0,"cache_creation_input_tokens":0,"cache_read_input_tokens":0,"output_tokens":0,"server_tool_use":{"web_search_requests":0}},"permission_denials":[],"terminal_reason":"completed"}"#;

    #[test]
    fn parses_recorded_system_init_and_retry_lines() {
        match CliLine::parse(INIT.as_bytes()).expect("json") {
            CliLine::System(s) => {
                assert_eq!(s.subtype, "init");
                assert_eq!(s.model.as_deref(), Some("claude-sonnet-5"));
            }
            other => panic!("unexpected {other:?}"),
        }
        match CliLine::parse(RETRY.as_bytes()).expect("json") {
            CliLine::System(s) => assert_eq!(s.error_status, Some(401)),
            other => panic!("unexpected {other:?}"),
        }
    }

    #[test]
    fn stream_event_yields_the_raw_anthropic_event() {
        match CliLine::parse(DELTA.as_bytes()).expect("json") {
            CliLine::StreamEvent(e) => {
                assert_eq!(e.event["delta"]["text"], "Hello");
                assert_eq!(e.parent_tool_use_id, None);
            }
            other => panic!("unexpected {other:?}"),
        }
    }

    #[test]
    fn error_result_carries_upstream_status() {
        match CliLine::parse(RESULT_ERR.as_bytes()).expect("json") {
            CliLine::Result(r) => {
                assert!(r.is_error);
                assert_eq!(r.api_error_status, Some(401));
            }
            other => panic!("unexpected {other:?}"),
        }
    }

    #[test]
    fn unknown_line_types_and_fields_are_tolerated() {
        let line = br#"{"type":"brand_new_thing","x":1}"#;
        assert!(matches!(CliLine::parse(line), Ok(CliLine::Other(_))));
        let odd_result = br#"{"type":"result","usage":"not an object"}"#;
        assert!(matches!(CliLine::parse(odd_result), Ok(CliLine::Other(_))));
    }

    #[test]
    fn a_multi_megabyte_line_parses() {
        let big = "x".repeat(8 * 1024 * 1024);
        let line = format!(
            r#"{{"type":"user","message":{{"role":"user","content":[{{"type":"tool_result","content":"{big}"}}]}}}}"#
        );
        assert!(matches!(
            CliLine::parse(line.as_bytes()),
            Ok(CliLine::User(_))
        ));
    }

    #[test]
    fn user_input_is_one_json_line() {
        let line = UserInput::new(Value::String("hi\nthere".into())).to_line();
        assert_eq!(line.iter().filter(|b| **b == b'\n').count(), 1);
        let v: Value = serde_json::from_slice(&line).expect("json");
        assert_eq!(v["message"]["content"], "hi\nthere");
    }
}
