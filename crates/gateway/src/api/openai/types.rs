//! Wire types of OpenAI's Chat Completions API as the gateway accepts them.

use serde::Deserialize;
use serde_json::Value;

/// `POST /v1/chat/completions` body.
///
/// `temperature`, `top_p` and `stop` are set on each model call of the run;
/// `reasoning_effort` sets a thinking budget. Accepted and ignored (the CLI has no way to
/// honour them): `presence_penalty`, `frequency_penalty`, `logit_bias`, `logprobs`,
/// `top_logprobs`, `seed`, `service_tier`, `store`, `metadata`, and
/// unknown fields. `tools` (and the older `functions`) are the client's own tools, as for
/// `/v1/messages`; `response_format` `json_schema` / `json_object` makes the reply's content
/// JSON matching the schema. Refused with 400: `n` > 1, non-text content parts.
#[derive(Debug, Deserialize, utoipa::ToSchema)]
pub struct ChatRequest {
    pub model: String,
    pub messages: Vec<ChatMessage>,
    #[serde(default)]
    pub stream: bool,
    #[serde(default)]
    pub stream_options: Option<StreamOptions>,
    #[serde(default)]
    pub max_tokens: Option<u32>,
    #[serde(default)]
    pub max_completion_tokens: Option<u32>,
    #[serde(default)]
    pub n: Option<u32>,
    #[serde(default)]
    pub temperature: Option<f64>,
    #[serde(default)]
    pub top_p: Option<f64>,
    /// minimal, low, medium or high: extended thinking with a budget of 0, 2048, 8192 or
    /// 24576 tokens.
    #[serde(default)]
    pub reasoning_effort: Option<String>,
    /// With `tools`: auto, none, required, or `{"type": "function", "function": {"name"}}`.
    #[serde(default)]
    #[schema(value_type = Option<Object>)]
    pub tool_choice: Option<Value>,
    /// `false`: the model calls at most one tool per turn.
    #[serde(default)]
    pub parallel_tool_calls: Option<bool>,
    /// A stop sequence or a list of them.
    #[serde(default)]
    #[schema(value_type = Option<Object>)]
    pub stop: Option<Stop>,
    #[serde(default)]
    #[schema(value_type = Option<Vec<Object>>)]
    pub tools: Option<Vec<Value>>,
    #[serde(default)]
    #[schema(value_type = Option<Vec<Object>>)]
    pub functions: Option<Vec<Value>>,
    #[serde(default)]
    #[schema(value_type = Option<Object>)]
    pub response_format: Option<Value>,
    /// OpenAI's end-user id; the gateway reads it as a session id when no other is given.
    #[serde(default)]
    pub user: Option<String>,
    #[serde(flatten)]
    pub gateway: crate::api::TurnExtensions,
}

#[derive(Debug, Deserialize)]
#[serde(untagged)]
pub enum Stop {
    One(String),
    Many(Vec<String>),
}

impl Stop {
    pub fn sequences(&self) -> Vec<String> {
        match self {
            Stop::One(s) => vec![s.clone()],
            Stop::Many(v) => v.clone(),
        }
    }
}

#[derive(Debug, Deserialize, utoipa::ToSchema)]
pub struct StreamOptions {
    #[serde(default)]
    pub include_usage: bool,
}

#[derive(Debug, Deserialize, utoipa::ToSchema)]
pub struct ChatMessage {
    /// system, developer, user or assistant.
    pub role: String,
    /// A string or a list of text parts.
    #[serde(default)]
    #[schema(value_type = Option<Object>)]
    pub content: Option<ChatContent>,
    /// An assistant message's calls of the client's tools.
    #[serde(default)]
    #[schema(value_type = Option<Vec<Object>>)]
    pub tool_calls: Option<Vec<Value>>,
    /// A `tool` message: the call it answers.
    #[serde(default)]
    pub tool_call_id: Option<String>,
}

#[derive(Debug, Deserialize)]
#[serde(untagged)]
pub enum ChatContent {
    Text(String),
    Parts(Vec<Value>),
}

impl ChatContent {
    /// The text of the content; a part that is not text is refused.
    pub fn text(&self) -> Result<String, String> {
        match self {
            ChatContent::Text(s) => Ok(s.clone()),
            ChatContent::Parts(parts) => parts
                .iter()
                .map(|p| match p.get("type").and_then(Value::as_str) {
                    Some("text") => Ok(p
                        .get("text")
                        .and_then(Value::as_str)
                        .unwrap_or_default()
                        .to_owned()),
                    other => Err(format!(
                        "content part type {:?} is not supported; send text parts",
                        other.unwrap_or("(none)")
                    )),
                })
                .collect::<Result<Vec<_>, _>>()
                .map(|texts| texts.join("\n")),
        }
    }
}
