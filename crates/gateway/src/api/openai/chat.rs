//! `POST /v1/chat/completions`: OpenAI's Chat Completions over the same conversation turn as
//! the Messages API, translated at the edge.

use axum::body::Bytes;
use axum::extract::rejection::BytesRejection;
use axum::extract::State;
use axum::http::HeaderMap;
use axum::response::sse::Event as SseEvent;
use axum::response::Response;
use serde_json::{json, Value};

use super::types::ChatRequest;
use crate::api::reply::{self, Opening};
use crate::api::sse;
use crate::api::{validate_model, with_session_header, TurnContext};
use crate::app::SharedState;
use crate::conversation::{self, TurnRequest};
use crate::error::{ApiError, Dialect};
use crate::tenant::credential::Credential;
use crate::turn::event::{Block, Delta, Message, TurnEvent, Usage};

/// A `chat.completion`; with `stream: true`, `chat.completion.chunk` events ending in `[DONE]`.
#[utoipa::path(post, path = "/v1/chat/completions", tag = "OpenAI",
    request_body = super::types::ChatRequest,
    params(("x-session-id" = Option<String>, Header, description = "The session to continue, [A-Za-z0-9._:-]{1,128}"),
        ("x-security-level" = Option<String>, Header, description = "A stricter level: PARANOID, BALANCED or DEVELOPER"),
        ("x-mcp-config" = Option<String>, Header, description = "MCP servers for this request, {name: config} as JSON (or the mcp_servers body field)")),
    responses(
        (status = 200, description = "The completion (or its chunk stream); errors use OpenAI's shape", body = Object),
        crate::api::docs::TurnErrors
    ))]
pub async fn create(
    State(state): State<SharedState>,
    headers: HeaderMap,
    audit: Option<axum::Extension<crate::telemetry::audit::AuditHandle>>,
    grant: Option<axum::Extension<crate::access::Grant>>,
    body: Result<Bytes, BytesRejection>,
) -> Response {
    match handle(state, headers, audit, grant, body).await {
        Ok(response) => response,
        Err(e) => openai_error_response(e),
    }
}

/// An error in OpenAI's shape (`{"error": {"message", "type", "param", "code"}}`), so the
/// OpenAI SDKs raise their own exception types.
pub fn openai_error_response(e: ApiError) -> Response {
    e.into_response_in(Dialect::OpenAi)
}

fn bad(message: impl Into<String>) -> ApiError {
    ApiError::InvalidRequest(message.into())
}

async fn handle(
    state: SharedState,
    headers: HeaderMap,
    audit: Option<axum::Extension<crate::telemetry::audit::AuditHandle>>,
    grant: Option<axum::Extension<crate::access::Grant>>,
    body: Result<Bytes, BytesRejection>,
) -> Result<Response, ApiError> {
    let credential = Credential::from_request(&headers, None)?;
    let body = body?;
    let req: ChatRequest =
        serde_json::from_slice(&body).map_err(|e| bad(format!("invalid request body: {e}")))?;
    validate_model(&req.model)?;
    if req.n.is_some_and(|n| n > 1) {
        return Err(bad("n: only one choice (n = 1) is supported"));
    }
    let tools = client_tools(&req)?;
    let output_schema = crate::api::output_schema::openai(req.response_format.as_ref())?;

    let mut system = Vec::new();
    let mut turns: Vec<(&'static str, Value)> = Vec::new();
    for (i, m) in req.messages.iter().enumerate() {
        let text = match &m.content {
            Some(c) => c.text().map_err(|e| bad(format!("messages[{i}]: {e}")))?,
            None => String::new(),
        };
        match m.role.as_str() {
            "system" | "developer" => system.push(text),
            "user" => turns.push(("user", Value::String(text))),
            "assistant" => match &m.tool_calls {
                Some(calls) if !calls.is_empty() => {
                    turns.push(("assistant", tool_use_blocks(i, &text, calls)?))
                }
                _ => turns.push(("assistant", Value::String(text))),
            },
            // A tool's answer: a tool_result; the answers to one turn's calls go together.
            "tool" => {
                let result = json!({"type": "tool_result",
                    "tool_use_id": m.tool_call_id.as_deref().unwrap_or_default(), "content": text});
                match turns.last_mut() {
                    Some(("user", Value::Array(blocks))) => blocks.push(result),
                    _ => turns.push(("user", json!([result]))),
                }
            }
            other => {
                return Err(bad(format!(
                    "messages[{i}]: role {other:?} is not supported (system, developer, user, assistant, tool)"
                )))
            }
        }
    }
    let prompt = match turns.pop() {
        Some(("user", content)) => content,
        _ => {
            return Err(bad(
                "messages: the last non-system message must have role \"user\"",
            ))
        }
    };
    let last = req.messages.len().saturating_sub(1);
    let (client_tools, deferred) =
        crate::api::client_tools::prepare(tools, &mut turns, &prompt, last)?;
    let stop = req.stop.as_ref().map(|s| s.sequences()).unwrap_or_default();
    let mut call = crate::api::Sampling {
        temperature: req.temperature,
        top_p: req.top_p,
        top_k: None,
        stop_sequences: &stop,
        thinking_budget: crate::api::effort_budget(req.reasoning_effort.as_deref())?,
    }
    .call_settings()
    .map_err(|e| bad(e.to_string().replace("stop_sequences", "stop")))?;
    if let Some(client) = &client_tools {
        // OpenAI's choice in Anthropic's shape.
        let mut choice = match &req.tool_choice {
            None => None,
            Some(Value::String(kind)) => Some(match kind.as_str() {
                "required" => json!({"type": "any"}),
                other => json!({"type": other}),
            }),
            Some(named) => Some(json!({"type": "tool",
                "name": named.pointer("/function/name").cloned().unwrap_or(Value::Null)})),
        };
        if req.parallel_tool_calls == Some(false) {
            let choice = choice.get_or_insert_with(|| json!({"type": "auto"}));
            if choice["type"] != "none" {
                choice["disable_parallel_tool_use"] = json!(true);
            }
        }
        call.insert(
            "tool_choice".into(),
            crate::api::client_tools::tool_choice(choice.as_ref(), &client.tools)?,
        );
    }
    let ctx = TurnContext::resolve(
        &state,
        &headers,
        &credential,
        &req.gateway,
        req.user.as_deref(),
    )
    .await?;
    let system_prompt = Some(system.join("\n\n"))
        .filter(|s| !s.is_empty())
        .map(|s| (s, state.config.system_prompt_mode));
    let started = conversation::start(
        &state,
        TurnRequest {
            credential,
            tenant: ctx.tenant,
            session: ctx.session,
            model: req.model.clone(),
            system_prompt,
            history: turns,
            prompt,
            max_output_tokens: req.max_completion_tokens.or(req.max_tokens),
            level: ctx.level,
            show_tools: false,
            mcp: ctx.mcp,
            lean: ctx.lean,
            audit: audit.map(|axum::Extension(a)| a),
            grant: grant.map(|axum::Extension(g)| g),
            call,
            client_tools,
            deferred,
            output_schema,
        },
    )
    .await?;

    let session_id = started.session.as_str().to_owned();
    let opening = Opening::new("/v1/chat/completions", &req.model, Vec::new());
    let include_usage = req.stream_options.is_some_and(|o| o.include_usage);
    let response = reply::respond(
        &state.config,
        &state.stopping,
        req.stream,
        started.events,
        &opening,
        Box::new(Chunks::new(session_id.clone(), include_usage)),
        |message| completion(&message, &session_id),
    )
    .await;
    // A turn that failed once started still names its session, so the client can go on.
    Ok(with_session_header(
        response.unwrap_or_else(openai_error_response),
        &started.session,
    ))
}

fn now_secs() -> u64 {
    crate::sessions::now_secs()
}

fn completion_id(message_id: &str) -> String {
    format!(
        "chatcmpl-{}",
        message_id.strip_prefix("msg_").unwrap_or(message_id)
    )
}

/// The request's `tools` (or `functions`), as client tools; a 400 names OpenAI's field.
fn client_tools(
    req: &ChatRequest,
) -> Result<Vec<crate::runner::client_tools::ClientTool>, ApiError> {
    let functions: Vec<Value> = match (&req.tools, &req.functions) {
        (Some(tools), _) if !tools.is_empty() => tools
            .iter()
            .map(|t| match t.get("type").and_then(Value::as_str) {
                Some("function") | None => t.get("function").cloned().unwrap_or(Value::Null),
                Some(other) => json!({"type": other}),
            })
            .collect(),
        (_, Some(functions)) => functions.clone(),
        _ => Vec::new(),
    };
    let anthropic: Vec<Value> = functions
        .iter()
        .map(|f| {
            let mut tool = json!({"name": f.get("name"), "description": f.get("description"),
                "input_schema": f.get("parameters").cloned().unwrap_or(json!({"type": "object"}))});
            if let Some(kind) = f.get("type") {
                tool["type"] = kind.clone();
            }
            tool
        })
        .collect();
    crate::api::client_tools::parse(&anthropic).map_err(|e| {
        // `tools.3.name` → `tools[3].function.name`, as OpenAI names its fields.
        let text = e.to_string();
        let Some(rest) = text.strip_prefix("tools.") else {
            return bad(text);
        };
        let (index, field) = rest.split_once('.').unwrap_or((rest, ""));
        let field = field.replacen("input_schema", "parameters", 1);
        bad(format!("tools[{index}].function.{field}"))
    })
}

/// An assistant message with `tool_calls`, as Anthropic content blocks.
fn tool_use_blocks(i: usize, text: &str, calls: &[Value]) -> Result<Value, ApiError> {
    let mut blocks = Vec::new();
    if !text.is_empty() {
        blocks.push(json!({"type": "text", "text": text}));
    }
    for (j, call) in calls.iter().enumerate() {
        let arguments = call
            .pointer("/function/arguments")
            .and_then(Value::as_str)
            .unwrap_or("{}");
        let input: Value = serde_json::from_str(arguments).map_err(|_| {
            bad(format!(
                "messages[{i}].tool_calls[{j}].function.arguments: not a JSON object"
            ))
        })?;
        blocks.push(json!({"type": "tool_use", "id": call.get("id"),
            "name": call.pointer("/function/name"), "input": input}));
    }
    Ok(Value::Array(blocks))
}

fn finish_reason(stop_reason: Option<&str>) -> &'static str {
    match stop_reason {
        Some("tool_use") => "tool_calls",
        Some("max_tokens") => "length",
        Some("refusal") => "content_filter",
        _ => "stop",
    }
}

fn usage(usage: &Usage) -> Value {
    let prompt =
        usage.input_tokens + usage.cache_read_input_tokens + usage.cache_creation_input_tokens;
    let completion = usage.output_tokens;
    json!({"prompt_tokens": prompt, "completion_tokens": completion, "total_tokens": prompt + completion})
}

/// A complete message as a `chat.completion`.
fn completion(message: &Message, session_id: &str) -> Value {
    let text = message.text();
    let tool_calls: Vec<Value> = message
        .content
        .iter()
        .filter_map(|b| match b {
            Block::ToolUse { id, name, input } => Some(json!({"id": id, "type": "function",
                "function": {"name": name, "arguments": input.to_string()}})),
            _ => None,
        })
        .collect();
    let mut reply = json!({"role": "assistant", "content": text, "refusal": null});
    if !tool_calls.is_empty() {
        reply["tool_calls"] = json!(tool_calls);
        if text.is_empty() {
            reply["content"] = Value::Null;
        }
    }
    json!({
        "id": completion_id(&message.id),
        "object": "chat.completion",
        "created": now_secs(),
        "model": message.model,
        "choices": [{
            "index": 0,
            "message": reply,
            "finish_reason": finish_reason(message.stop_reason.as_deref()),
            "logprobs": null,
        }],
        "usage": usage(&message.usage),
        "session_id": session_id,
    })
}

/// A turn's events as `chat.completion.chunk`s, ending with `[DONE]`.
struct Chunks {
    session_id: String,
    include_usage: bool,
    id: String,
    model: String,
    created: u64,
    final_usage: Usage,
    /// Block index → the position of its call among the message's tool calls.
    calls: std::collections::HashMap<usize, usize>,
}

impl Chunks {
    fn new(session_id: String, include_usage: bool) -> Self {
        Self {
            session_id,
            include_usage,
            id: String::new(),
            model: String::new(),
            created: now_secs(),
            final_usage: Usage::default(),
            calls: Default::default(),
        }
    }

    fn chunk(&self, delta: Value, finish_reason: Option<&str>) -> Value {
        json!({"id": self.id, "object": "chat.completion.chunk", "created": self.created,
            "model": self.model,
            "choices": [{"index": 0, "delta": delta, "finish_reason": finish_reason}]})
    }
}

fn data(v: Value) -> SseEvent {
    SseEvent::default().data(v.to_string())
}

impl sse::Render for Chunks {
    fn event(&mut self, event: &TurnEvent) -> Vec<SseEvent> {
        match event {
            TurnEvent::Start { id, model, .. } => {
                self.id = completion_id(id);
                self.model.clone_from(model);
                let mut first = self.chunk(json!({"role": "assistant", "content": ""}), None);
                first["session_id"] = json!(self.session_id);
                vec![data(first)]
            }
            TurnEvent::BlockStart {
                index,
                block: Block::ToolUse { id, name, .. },
            } => {
                let position = self.calls.len();
                self.calls.insert(*index, position);
                vec![data(self.chunk(
                    json!({"tool_calls": [{"index": position, "id": id, "type": "function",
                        "function": {"name": name, "arguments": ""}}]}),
                    None,
                ))]
            }
            TurnEvent::Delta {
                delta: Delta::Text(text),
                ..
            } => vec![data(self.chunk(json!({"content": text}), None))],
            TurnEvent::Delta {
                index,
                delta: Delta::InputJson(piece),
            } => match self.calls.get(index) {
                Some(position) => vec![data(self.chunk(
                    json!({"tool_calls": [{"index": position, "function": {"arguments": piece}}]}),
                    None,
                ))],
                None => Vec::new(),
            },
            TurnEvent::Stop { reason, usage, .. } => {
                self.final_usage = *usage;
                vec![data(
                    self.chunk(json!({}), Some(finish_reason(Some(reason)))),
                )]
            }
            TurnEvent::End => {
                let mut out = Vec::new();
                if self.include_usage {
                    let mut last = json!({"id": self.id, "object": "chat.completion.chunk",
                        "created": self.created, "model": self.model, "choices": []});
                    last["usage"] = usage(&self.final_usage);
                    out.push(data(last));
                }
                out.push(SseEvent::default().data("[DONE]"));
                out
            }
            TurnEvent::Ping => vec![SseEvent::default().comment("ping")],
            _ => Vec::new(),
        }
    }

    fn error(&mut self, error: &ApiError) -> Vec<SseEvent> {
        vec![
            data(error.body_in(Dialect::OpenAi)),
            SseEvent::default().data("[DONE]"),
        ]
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_message_becomes_a_chat_completion() {
        let message = Message {
            id: "msg_abc".into(),
            model: "claude-x".into(),
            stop_reason: Some("max_tokens".into()),
            content: vec![
                Block::from_value(json!({"type": "text", "text": "Hel"})),
                Block::from_value(json!({"type": "tool_use", "id": "t", "name": "f", "input": {}})),
                Block::from_value(json!({"type": "text", "text": "lo"})),
            ],
            usage: Usage {
                input_tokens: 3,
                cache_read_input_tokens: 2,
                output_tokens: 4,
                ..Usage::default()
            },
            ..Message::default()
        };
        let c = completion(&message, "s1");
        assert_eq!(c["id"], "chatcmpl-abc");
        assert_eq!(c["choices"][0]["message"]["content"], "Hello");
        assert_eq!(
            c["choices"][0]["message"]["tool_calls"][0]["function"]["name"],
            "f"
        );
        assert_eq!(c["choices"][0]["finish_reason"], "length");
        assert_eq!(c["usage"]["prompt_tokens"], 5);
        assert_eq!(c["usage"]["total_tokens"], 9);
        assert_eq!(c["session_id"], "s1");
    }
}
