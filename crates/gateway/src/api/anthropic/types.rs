//! Wire types of the Anthropic Messages API as the gateway accepts them.

use serde::Deserialize;
use serde_json::Value;

use crate::runner::SystemPromptMode;
use crate::tenant::credential::OAuthCredentials;

/// `POST /v1/messages` body.
///
/// `temperature`, `top_p`, `top_k` and `stop_sequences` are set on each model call of the run.
/// `thinking` sets the CLI's thinking budget. Accepted and ignored, because the CLI has no way
/// to honour them: `service_tier`, `container`, `context_management`. Any
/// other unknown field is ignored too, as the API grows.
#[derive(Debug, Deserialize, utoipa::ToSchema)]
pub struct MessagesRequest {
    pub model: String,
    pub messages: Vec<InputMessage>,
    /// A string or a list of text blocks.
    #[serde(default)]
    #[schema(value_type = Option<Object>)]
    pub system: Option<SystemField>,
    /// Passed to the CLI as its per-turn output limit.
    #[serde(default)]
    pub max_tokens: Option<u32>,
    #[serde(default)]
    pub stream: bool,
    #[serde(default)]
    pub temperature: Option<f64>,
    #[serde(default)]
    pub top_p: Option<f64>,
    #[serde(default)]
    pub top_k: Option<u32>,
    /// The reply ends at the first of these the model writes (`stop_reason: "stop_sequence"`).
    #[serde(default)]
    pub stop_sequences: Vec<String>,
    /// With `tools`: set on each model call (a named tool under its CLI name; never parallel).
    #[serde(default)]
    #[schema(value_type = Option<Object>)]
    pub tool_choice: Option<Value>,
    /// `{"type": "enabled", "budget_tokens": n}`: extended thinking, its blocks in the reply.
    #[serde(default)]
    #[schema(value_type = Option<Object>)]
    pub thinking: Option<Value>,
    /// Accepted and ignored.
    #[serde(default)]
    #[schema(value_type = Option<Object>)]
    pub metadata: Option<Value>,
    /// Client-defined tools (`name`, `description`, `input_schema`): the model may call them;
    /// the response then ends with `stop_reason: "tool_use"` and the client's next request
    /// carries the `tool_result`.
    #[serde(default)]
    #[schema(value_type = Option<Vec<Object>>)]
    pub tools: Option<Vec<Value>>,
    /// Structured output: `{"type": "json_schema", "schema": {…}}`; the reply's one text block
    /// is JSON matching the schema.
    #[serde(default)]
    #[schema(value_type = Option<Object>)]
    pub output_format: Option<Value>,
    /// `{"format": {"type": "json_schema", "schema": {…}}}`: as `output_format`.
    #[serde(default)]
    #[schema(value_type = Option<Object>)]
    pub output_config: Option<Value>,
    /// The original spec's credential object (an alternative to the auth headers).
    #[serde(default)]
    pub oauth_credentials: Option<OAuthCredentials>,
    /// Gateway extension: how `system` combines with the CLI's own system prompt.
    #[serde(default)]
    #[schema(value_type = Option<String>, example = "append")]
    pub system_prompt_mode: Option<SystemPromptMode>,
    #[serde(flatten)]
    pub gateway: crate::api::TurnExtensions,
    /// Gateway extension: show the CLI's own tool calls and results in the response.
    #[serde(default)]
    pub tool_activity: Option<ToolActivity>,
}

#[derive(
    Debug, Clone, Copy, PartialEq, Eq, Default, Deserialize, serde::Serialize, utoipa::ToSchema,
)]
#[serde(rename_all = "lowercase")]
pub enum ToolActivity {
    /// Only the model's text (and thinking) reaches the client: one plain assistant message.
    #[default]
    Hidden,
    /// `tool_use` blocks as the model wrote them and `tool_result` blocks as the CLI returned
    /// them appear in the content, in order.
    Blocks,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize, utoipa::ToSchema)]
#[serde(rename_all = "lowercase")]
pub enum Role {
    User,
    Assistant,
    /// Instructions among the turns, as the Claude Code CLI sends them: added to `system`.
    System,
}

#[derive(Debug, Deserialize, utoipa::ToSchema)]
pub struct InputMessage {
    pub role: Role,
    /// A string or a list of content blocks (text, image, document).
    #[schema(value_type = Object)]
    pub content: Content,
}

/// A message's content: a string or a list of content blocks (kept as JSON and passed on).
#[derive(Debug, Clone, Deserialize)]
#[serde(untagged)]
pub enum Content {
    Text(String),
    Blocks(Vec<Value>),
}

impl Content {
    pub fn to_value(&self) -> Value {
        match self {
            Content::Text(s) => Value::String(s.clone()),
            Content::Blocks(b) => Value::Array(b.clone()),
        }
    }

    /// The text of the content, blocks joined by blank lines; non-text blocks are described.
    pub fn to_text(&self) -> String {
        match self {
            Content::Text(s) => s.clone(),
            Content::Blocks(blocks) => blocks
                .iter()
                .map(|b| match b.get("type").and_then(Value::as_str) {
                    Some("text") => b
                        .get("text")
                        .and_then(Value::as_str)
                        .unwrap_or_default()
                        .to_owned(),
                    Some(other) => format!("[{other} block]"),
                    None => String::new(),
                })
                .collect::<Vec<_>>()
                .join("\n\n"),
        }
    }
}

/// `system`: a string or a list of text blocks.
#[derive(Debug, Deserialize)]
#[serde(untagged)]
pub enum SystemField {
    Text(String),
    Blocks(Vec<SystemBlock>),
}

#[derive(Debug, Deserialize)]
pub struct SystemBlock {
    #[serde(default)]
    pub text: String,
}

impl SystemField {
    pub fn text(&self) -> String {
        match self {
            SystemField::Text(s) => s.clone(),
            SystemField::Blocks(blocks) => blocks
                .iter()
                .map(|b| b.text.as_str())
                .collect::<Vec<_>>()
                .join("\n\n"),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn accepts_sdk_bodies_with_fields_the_cli_cannot_honour() {
        let body = r#"{"model":"sonnet","max_tokens":100,"temperature":0.2,"top_k":3,
            "stop_sequences":["x"],"system":[{"type":"text","text":"a"},{"type":"text","text":"b"}],
            "messages":[{"role":"user","content":[{"type":"text","text":"hi"}]}]}"#;
        let req: MessagesRequest = serde_json::from_str(body).expect("parses");
        assert_eq!(req.system.map(|s| s.text()).as_deref(), Some("a\n\nb"));
        assert_eq!(req.messages[0].content.to_text(), "hi");
    }

    #[test]
    fn rejects_unknown_roles() {
        let body = r#"{"model":"sonnet","messages":[{"role":"tool","content":"x"}]}"#;
        assert!(serde_json::from_str::<MessagesRequest>(body).is_err());
    }

    #[test]
    fn accepts_what_the_claude_code_cli_sends() {
        // System turns among the messages, cache_control anywhere, metadata, fields the
        // gateway has never heard of.
        let body = r#"{"model":"sonnet","max_tokens":32000,"stream":true,
            "metadata":{"user_id":"u"},"context_management":{"edits":[]},"a_future_field":1,
            "system":[{"type":"text","text":"a","cache_control":{"type":"ephemeral","ttl":"1h"}}],
            "messages":[{"role":"user","content":[{"type":"text","text":"hi","cache_control":{"type":"ephemeral"}}]},
                        {"role":"system","content":"Available agent types: …"}]}"#;
        let req: MessagesRequest = serde_json::from_str(body).expect("parses");
        assert_eq!(req.messages[1].role, Role::System);
    }
}
