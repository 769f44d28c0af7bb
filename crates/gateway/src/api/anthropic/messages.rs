//! `POST /v1/messages`.

use axum::body::Bytes;
use axum::extract::rejection::BytesRejection;
use axum::extract::State;
use axum::http::HeaderMap;
use axum::response::{IntoResponse, Response};
use secrecy::ExposeSecret;
use serde_json::Value;

use super::types::{MessagesRequest, Role, ToolActivity};
use crate::api::reply::{self, Opening};
use crate::api::{validate_model, with_session_header, TurnContext};
use crate::app::SharedState;
use crate::conversation::{self, TurnRequest};
use crate::error::ApiError;
use crate::tenant::credential::Credential;

fn parse_body(body: Result<Bytes, BytesRejection>) -> Result<MessagesRequest, ApiError> {
    let body = body?;
    serde_json::from_slice(&body)
        .map_err(|e| ApiError::InvalidRequest(format!("invalid request body: {e}")))
}

/// Earlier turns: role (`"user"`/`"assistant"`) and content.
type History = Vec<(&'static str, Value)>;

/// The content block types of the Messages API. Anything else would be dropped by the CLI
/// without a word, so it is refused, named.
const BLOCK_TYPES: &[&str] = &[
    "text",
    "image",
    "document",
    "search_result",
    "tool_use",
    "tool_result",
    "thinking",
    "redacted_thinking",
    "server_tool_use",
    "web_search_tool_result",
    "web_fetch_tool_result",
    "code_execution_tool_result",
    "mcp_tool_use",
    "mcp_tool_result",
    "container_upload",
];

fn check_blocks(i: usize, content: &super::types::Content) -> Result<(), ApiError> {
    let super::types::Content::Blocks(blocks) = content else {
        return Ok(());
    };
    for (j, block) in blocks.iter().enumerate() {
        match block.get("type").and_then(Value::as_str) {
            Some(kind) if BLOCK_TYPES.contains(&kind) => {}
            Some(kind) => {
                return Err(ApiError::InvalidRequest(format!(
                    "messages.{i}.content.{j}.type: unknown content block type {kind:?}"
                )))
            }
            None => {
                return Err(ApiError::InvalidRequest(format!(
                    "messages.{i}.content.{j}.type: required"
                )))
            }
        }
    }
    Ok(())
}

/// Splits `messages` into the earlier turns and the new user turn; `system` entries among them
/// are not turns (see [`system_text`]).
fn split_turns(req: &MessagesRequest) -> Result<(History, Value), ApiError> {
    for (i, message) in req.messages.iter().enumerate() {
        check_blocks(i, &message.content)?;
    }
    let turns: Vec<_> = req
        .messages
        .iter()
        .filter(|m| m.role != Role::System)
        .collect();
    let (last, earlier) = turns.split_last().ok_or_else(|| {
        ApiError::InvalidRequest("messages: at least one message is required".into())
    })?;
    if last.role != Role::User {
        return Err(ApiError::InvalidRequest(
            "messages: the last message must have role \"user\"".into(),
        ));
    }
    let history = earlier
        .iter()
        .map(|m| {
            let role = match m.role {
                Role::Assistant => "assistant",
                _ => "user",
            };
            (role, m.content.to_value())
        })
        .collect();
    Ok((history, last.content.to_value()))
}

/// The request's system text: `system`, then the text of each `system` entry among the
/// messages, in order.
fn system_text(req: &MessagesRequest) -> String {
    req.system
        .iter()
        .map(|s| s.text())
        .chain(
            req.messages
                .iter()
                .filter(|m| m.role == Role::System)
                .map(|m| m.content.to_text()),
        )
        .filter(|s| !s.is_empty())
        .collect::<Vec<_>>()
        .join("\n\n")
}

/// An Anthropic `message`; with `stream: true`, Anthropic's event stream (`text/event-stream`).
#[utoipa::path(post, path = "/v1/messages", tag = "Anthropic",
    request_body = super::types::MessagesRequest,
    params(("x-session-id" = Option<String>, Header, description = "The session to continue, [A-Za-z0-9._:-]{1,128}"),
        ("x-security-level" = Option<String>, Header, description = "A stricter level: PARANOID, BALANCED or DEVELOPER"),
        ("x-mcp-config" = Option<String>, Header, description = "MCP servers for this request, {name: config} as JSON (or the mcp_servers body field)")),
    responses(
        (status = 200, description = "The message (or its event stream)", body = crate::api::docs::MessageResponse),
        crate::api::docs::TurnErrors
    ))]
pub async fn create(
    State(state): State<SharedState>,
    headers: HeaderMap,
    audit: Option<axum::Extension<crate::telemetry::audit::AuditHandle>>,
    grant: Option<axum::Extension<crate::access::Grant>>,
    body: Result<Bytes, BytesRejection>,
) -> Result<Response, ApiError> {
    let header_credential = Credential::from_request(&headers, None);
    let req = match parse_body(body) {
        Ok(req) => req,
        // Without a credential the answer is 401 whatever the body holds.
        Err(e) => return Err(header_credential.err().map(ApiError::from).unwrap_or(e)),
    };
    let mut refreshed = None;
    let credential = match req.oauth_credentials.as_ref() {
        Some(oauth) if oauth.access_token.is_some() || oauth.refresh_token.is_some() => {
            refreshed = state.refresher.refresh_if_needed(oauth).await?;
            match &refreshed {
                Some(fresh) => Credential::parse(fresh.access_token.expose_secret())?,
                None => Credential::from_request(&headers, Some(oauth))?,
            }
        }
        _ => header_credential?,
    };
    validate_model(&req.model)?;
    let (mut history, prompt) = split_turns(&req)?;
    let tools = crate::api::client_tools::parse(req.tools.as_deref().unwrap_or_default())?;
    let (client_tools, deferred) =
        crate::api::client_tools::prepare(tools, &mut history, &prompt, req.messages.len() - 1)?;
    let mut call = crate::api::Sampling {
        temperature: req.temperature,
        top_p: req.top_p,
        top_k: req.top_k,
        stop_sequences: &req.stop_sequences,
        thinking_budget: crate::api::thinking_budget(req.thinking.as_ref(), req.max_tokens)?,
    }
    .call_settings()?;
    if let Some(client) = &client_tools {
        call.insert(
            "tool_choice".into(),
            crate::api::client_tools::tool_choice(req.tool_choice.as_ref(), &client.tools)?,
        );
    }
    let output_schema = match (&req.output_format, &req.output_config) {
        (Some(format), _) => crate::api::output_schema::anthropic(Some(format), "output_format")?,
        (None, Some(config)) => {
            crate::api::output_schema::anthropic(config.get("format"), "output_config.format")?
        }
        (None, None) => None,
    };
    let ctx = TurnContext::resolve(&state, &headers, &credential, &req.gateway, None).await?;

    let system_prompt = Some(system_text(&req)).filter(|s| !s.is_empty()).map(|s| {
        (
            s,
            req.system_prompt_mode
                .unwrap_or(state.config.system_prompt_mode),
        )
    });
    let started = conversation::start(
        &state,
        TurnRequest {
            credential,
            tenant: ctx.tenant,
            session: ctx.session,
            model: req.model.clone(),
            system_prompt,
            history,
            prompt,
            max_output_tokens: req.max_tokens,
            level: ctx.level,
            show_tools: req.tool_activity.unwrap_or_default() == ToolActivity::Blocks,
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

    // Extensions in the message object: the session to continue, and rotated credentials
    // (which the client must store: the old refresh token no longer works).
    let mut extensions = vec![(
        "session_id",
        Value::String(started.session.as_str().to_owned()),
    )];
    if let Some(creds) = refreshed
        .as_ref()
        .and_then(|r| serde_json::to_value(r).ok())
    {
        extensions.push(("refreshed_oauth_credentials", creds));
    }
    let opening = Opening::new("/v1/messages", &req.model, extensions);
    let response = reply::respond(
        &state.config,
        &state.stopping,
        req.stream,
        started.events,
        &opening,
        Box::new(super::wire::Events),
        |message| super::wire::message(&message),
    )
    .await;
    // A turn that failed once started still names its session, so the client can go on.
    Ok(with_session_header(
        response.unwrap_or_else(IntoResponse::into_response),
        &started.session,
    ))
}
