//! Documentation served by the gateway: `/openapi.json` generated from the handlers' annotations,
//! Swagger UI at `/docs` (its assets are inside the binary: no CDN), and `GET /`, a
//! self-description as JSON, or as a readable page for a browser.

use axum::extract::State;
use axum::http::{header, HeaderMap};
use axum::response::{Html, IntoResponse, Response};
use axum::Json;
use serde_json::{json, Value};
use utoipa::openapi::security::{ApiKey, ApiKeyValue, HttpAuthScheme, HttpBuilder, SecurityScheme};
use utoipa::{Modify, OpenApi, ToSchema};

use crate::app::SharedState;

/// An error, in Anthropic's shape (OpenAI's shape on `/v1/chat/completions`).
#[derive(ToSchema)]
#[allow(dead_code)]
pub struct ErrorBody {
    #[schema(example = "error")]
    r#type: String,
    #[schema(value_type = Object, example = json!({"type": "authentication_error", "message": "…"}))]
    error: Value,
}

/// An Anthropic `message`, with the gateway's extension fields.
#[derive(ToSchema)]
#[allow(dead_code)]
pub struct MessageResponse {
    id: String,
    #[schema(example = "message")]
    r#type: String,
    #[schema(example = "assistant")]
    role: String,
    model: String,
    #[schema(value_type = Vec<Object>)]
    content: Vec<Value>,
    stop_reason: Option<String>,
    #[schema(value_type = Object)]
    usage: Value,
    /// Extension: the session to continue (also the `x-session-id` header).
    session_id: String,
    /// Extension: rotated OAuth credentials after the gateway refreshed an expired token.
    /// Store them: the old refresh token no longer works.
    #[schema(value_type = Option<Object>)]
    refreshed_oauth_credentials: Option<Value>,
}

/// The refusals and failures a conversation turn can answer with.
#[derive(utoipa::IntoResponses)]
#[allow(dead_code)]
pub enum TurnErrors {
    #[response(status = 400, description = "Invalid request")]
    BadRequest(ErrorBody),
    #[response(
        status = 401,
        description = "No or unrecognised credential, or the upstream refused it"
    )]
    Unauthorized(ErrorBody),
    #[response(
        status = 403,
        description = "A looser security level than allowed, or an MCP policy refusal"
    )]
    Forbidden(ErrorBody),
    #[response(status = 409, description = "The session is busy with another turn")]
    Busy(ErrorBody),
    #[response(status = 413, description = "Body too large")]
    TooLarge(ErrorBody),
    #[response(
        status = 429,
        description = "Rate limited (retry-after, anthropic-ratelimit-* headers)"
    )]
    RateLimited(ErrorBody),
    #[response(status = 502, description = "The CLI or the upstream failed")]
    BadGateway(ErrorBody),
    #[response(status = 504, description = "The run exceeded its time limit")]
    Timeout(ErrorBody),
    #[response(status = 529, description = "Upstream or gateway overloaded")]
    Overloaded(ErrorBody),
}

/// A session's summary.
#[derive(ToSchema)]
#[allow(dead_code)]
pub struct SessionSummary {
    id: String,
    created_at: u64,
    last_used_at: u64,
    turns: u64,
    model: String,
}

struct Security;

impl Modify for Security {
    fn modify(&self, openapi: &mut utoipa::openapi::OpenApi) {
        let components = openapi.components.get_or_insert_with(Default::default);
        components.add_security_scheme(
            "bearer",
            SecurityScheme::Http(
                HttpBuilder::new()
                    .scheme(HttpAuthScheme::Bearer)
                    .description(Some(
                        "A Claude OAuth token (sk-ant-oat01-…) or an Anthropic API key (sk-ant-api03-…)",
                    ))
                    .build(),
            ),
        );
        components.add_security_scheme(
            "x-api-key",
            SecurityScheme::ApiKey(ApiKey::Header(ApiKeyValue::new("x-api-key"))),
        );
    }
}

#[derive(OpenApi)]
#[openapi(
    info(
        title = "claude-gateway",
        description = "Anthropic- and OpenAI-compatible API over the Claude Code CLI, one sandboxed run per request, with each user's own credential."
    ),
    paths(
        crate::api::anthropic::messages::create,
        crate::api::anthropic::count_tokens::count,
        crate::api::openai::chat::create,
        crate::api::models::list,
        crate::api::models::get,
        crate::api::sessions::list,
        crate::api::sessions::get,
        crate::api::sessions::delete,
        crate::api::usage::usage,
        crate::api::usage::quota,
        crate::api::usage::by_access_key,
        crate::api::security::security,
        crate::api::mcp_tools::list,
        crate::api::health::health,
        crate::api::health::ready,
        crate::api::health::metrics,
        root,
    ),
    components(schemas(ErrorBody, MessageResponse, SessionSummary)),
    modifiers(&Security),
    security(("bearer" = []), ("x-api-key" = [])),
    tags(
        (name = "Anthropic", description = "The Messages API"),
        (name = "OpenAI", description = "Chat Completions"),
        (name = "Sessions", description = "A tenant's stateful conversations"),
        (name = "Operations", description = "Health, readiness, metrics, security, documentation"),
    )
)]
pub struct ApiDoc;

fn endpoints() -> Value {
    json!([
        {"method": "POST", "path": "/v1/messages", "what": "Anthropic Messages API (stream or not)",
         "parameters": ["model", "messages", "system", "max_tokens", "stream", "session_id", "security_level", "system_prompt_mode", "tool_activity", "oauth_credentials"]},
        {"method": "POST", "path": "/v1/chat/completions", "what": "OpenAI Chat Completions (stream or not)",
         "parameters": ["model", "messages", "stream", "stream_options.include_usage", "max_completion_tokens", "session_id", "user", "security_level"]},
        {"method": "GET", "path": "/v1/models", "what": "the configured models"},
        {"method": "GET", "path": "/v1/sessions", "what": "the tenant's sessions"},
        {"method": "GET", "path": "/v1/sessions/{id}", "what": "one session and its messages"},
        {"method": "DELETE", "path": "/v1/sessions/{id}", "what": "forget a session"},
        {"method": "GET", "path": "/v1/security", "what": "the effective security configuration"},
        {"method": "GET|POST", "path": "/v1/mcp/tools", "what": "the tools of the MCP servers named (X-MCP-Config or mcp_servers)"},
        {"method": "GET", "path": "/health", "what": "liveness"},
        {"method": "GET", "path": "/ready", "what": "readiness (the CLI is usable)"},
        {"method": "GET", "path": "/metrics", "what": "Prometheus metrics"},
        {"method": "GET", "path": "/openapi.json", "what": "this API as OpenAPI 3"},
        {"method": "GET", "path": "/docs", "what": "Swagger UI"},
    ])
}

fn examples(base: &str) -> Value {
    json!({
        "message": format!("curl {base}/v1/messages -H 'authorization: Bearer sk-ant-oat01-…' -H 'content-type: application/json' -d '{{\"model\":\"sonnet\",\"max_tokens\":1024,\"messages\":[{{\"role\":\"user\",\"content\":\"Hello\"}}]}}'"),
        "stream": format!("curl -N {base}/v1/messages -H 'x-api-key: sk-ant-api03-…' -d '{{\"model\":\"sonnet\",\"max_tokens\":1024,\"stream\":true,\"messages\":[{{\"role\":\"user\",\"content\":\"Hello\"}}]}}'"),
        "session": format!("curl {base}/v1/messages -H 'authorization: Bearer sk-ant-oat01-…' -H 'x-session-id: user1-conv-123' -d '{{\"model\":\"sonnet\",\"max_tokens\":1024,\"messages\":[{{\"role\":\"user\",\"content\":\"Remember this\"}}]}}'"),
        "openai": format!("curl {base}/v1/chat/completions -H 'authorization: Bearer sk-ant-oat01-…' -d '{{\"model\":\"sonnet\",\"messages\":[{{\"role\":\"user\",\"content\":\"Hello\"}}]}}'"),
    })
}

fn wants_html(headers: &HeaderMap) -> bool {
    headers
        .get(header::ACCEPT)
        .and_then(|v| v.to_str().ok())
        .is_some_and(|a| a.contains("text/html"))
}

/// The gateway describes itself: JSON for programs, a page for browsers.
#[utoipa::path(get, path = "/", tag = "Operations", security(),
    responses((status = 200, description = "Endpoints, parameters, curl examples, session patterns and the effective security configuration", body = Object)))]
pub async fn root(State(state): State<SharedState>, headers: HeaderMap) -> Response {
    let base = headers
        .get(header::HOST)
        .and_then(|v| v.to_str().ok())
        .map(|h| format!("http://{h}"))
        .unwrap_or_else(|| "http://localhost:8080".into());
    if wants_html(&headers) {
        return Html(format!(
            "<!doctype html><html><head><meta charset=\"utf-8\"><title>claude-gateway</title></head>\
             <body style=\"font-family:sans-serif;max-width:48em;margin:2em auto\">\
             <h1>claude-gateway {}</h1>\
             <p>An Anthropic- and OpenAI-compatible API over the Claude Code CLI. Each request runs in its own sandbox with the caller's own credential.</p>\
             <p><a href=\"/docs\">API documentation (Swagger UI)</a> · <a href=\"/openapi.json\">OpenAPI</a> · <a href=\"/v1/security\">security configuration</a></p>\
             </body></html>",
            env!("CARGO_PKG_VERSION")
        ))
        .into_response();
    }
    let security = crate::api::security::security(State(state)).await.0;
    Json(json!({
        "name": "claude-gateway",
        "version": env!("CARGO_PKG_VERSION"),
        "description": "Anthropic- and OpenAI-compatible API over the Claude Code CLI; each request runs in its own sandbox with the caller's own credential.",
        "authentication": "Authorization: Bearer <sk-ant-oat01-… or sk-ant-api03-…>, or x-api-key, or a body oauth_credentials object",
        "endpoints": endpoints(),
        "examples": examples(&base),
        "sessions": {
            "continue": "send the same X-Session-ID header (or session_id field) on every turn; the response carries it in x-session-id and session_id",
            "new": "omit the session id: a new session is created and its id returned",
            "stateless": "send the whole history in messages without a session id",
            "ids": "[A-Za-z0-9._:-]{1,128}, bound to the tenant",
        },
        "security": security,
        "documentation": {"openapi": "/openapi.json", "swagger_ui": "/docs"},
    }))
    .into_response()
}
