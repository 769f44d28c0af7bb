use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use axum::body::{Body, Bytes};
use axum::extract::{Request, State};
use axum::http::{HeaderMap, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::routing::{any, get, post};
use axum::{Json, Router};
use serde_json::{json, Value};
use tokio::sync::{mpsc, oneshot};
use tokio_stream::wrappers::ReceiverStream;

use crate::accounts::{self, Accounts};
use crate::record::{RecordedRequest, Recorder};
use crate::script::{self, Plan, Script, Turn};

#[derive(Clone, Default)]
struct AppState {
    recorder: Recorder,
    accounts: Arc<Accounts>,
}

/// The fake upstream's routes, recording into `recorder`.
pub fn router(recorder: Recorder) -> Router {
    let state = AppState {
        recorder,
        accounts: Arc::default(),
    };
    Router::new()
        .route("/", any(|| async { "fake-anthropic" }))
        .route("/v1/messages", post(messages))
        .route("/v1/messages/count_tokens", post(count_tokens))
        .route("/v1/models", get(models))
        .route("/api/oauth/profile", get(profile))
        .route("/v1/oauth/token", post(refresh))
        .route("/_fake/requests", get(list_requests).delete(clear_requests))
        .fallback(any(not_found))
        .layer(axum::middleware::from_fn_with_state(state.clone(), record))
        .with_state(state)
}

/// A running fake upstream.
pub struct FakeAnthropic;

pub struct FakeHandle {
    pub addr: SocketAddr,
    pub recorder: Recorder,
    shutdown: Option<oneshot::Sender<()>>,
}

impl FakeHandle {
    pub fn base_url(&self) -> String {
        format!("http://{}", self.addr)
    }
}

impl Drop for FakeHandle {
    fn drop(&mut self) {
        if let Some(tx) = self.shutdown.take() {
            let _ = tx.send(());
        }
    }
}

impl FakeAnthropic {
    /// Serves on `addr` (port 0 picks a free one) until the handle is dropped.
    pub async fn start(addr: SocketAddr) -> std::io::Result<FakeHandle> {
        let listener = tokio::net::TcpListener::bind(addr).await?;
        let addr = listener.local_addr()?;
        let recorder = Recorder::default();
        let app = router(recorder.clone());
        let (tx, rx) = oneshot::channel::<()>();
        tokio::spawn(async move {
            let _ = axum::serve(listener, app)
                .with_graceful_shutdown(async {
                    let _ = rx.await;
                })
                .await;
        });
        Ok(FakeHandle {
            addr,
            recorder,
            shutdown: Some(tx),
        })
    }
}

async fn record(
    State(state): State<AppState>,
    request: Request,
    next: axum::middleware::Next,
) -> Response {
    if request.uri().path().starts_with("/_fake/") {
        return next.run(request).await;
    }
    let (parts, body) = request.into_parts();
    let bytes = axum::body::to_bytes(body, 64 * 1024 * 1024)
        .await
        .unwrap_or_default();
    let mut headers = std::collections::BTreeMap::<String, String>::new();
    for (name, value) in &parts.headers {
        let value = String::from_utf8_lossy(value.as_bytes()).into_owned();
        headers
            .entry(name.as_str().to_owned())
            .and_modify(|v| {
                v.push_str(", ");
                v.push_str(&value);
            })
            .or_insert(value);
    }
    let body_json = serde_json::from_slice(&bytes)
        .unwrap_or_else(|_| Value::String(String::from_utf8_lossy(&bytes).into_owned()));
    state.recorder.push(RecordedRequest {
        method: parts.method.to_string(),
        path: parts.uri.path().to_owned(),
        query: parts.uri.query().map(str::to_owned),
        headers,
        body: body_json,
    });
    next.run(Request::from_parts(parts, Body::from(bytes)))
        .await
}

async fn list_requests(State(state): State<AppState>) -> Json<Vec<RecordedRequest>> {
    Json(state.recorder.all())
}

async fn clear_requests(State(state): State<AppState>) -> StatusCode {
    state.recorder.clear();
    StatusCode::NO_CONTENT
}

async fn not_found() -> Response {
    error_response(
        StatusCode::NOT_FOUND,
        "not_found_error",
        "no such route",
        None,
    )
}

fn credential(headers: &HeaderMap) -> Option<String> {
    headers
        .get("authorization")
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.strip_prefix("Bearer "))
        .or_else(|| headers.get("x-api-key").and_then(|v| v.to_str().ok()))
        .map(str::to_owned)
}

fn error_response(
    status: StatusCode,
    kind: &str,
    message: &str,
    retry_after: Option<u64>,
) -> Response {
    let body = json!({"type":"error","error":{"type":kind,"message":message}});
    let mut response = (status, Json(body)).into_response();
    if let Some(secs) = retry_after {
        if let Ok(v) = secs.to_string().parse() {
            response.headers_mut().insert("retry-after", v);
        }
    }
    response
}

fn unauthorized() -> Response {
    error_response(
        StatusCode::UNAUTHORIZED,
        "authentication_error",
        "invalid x-api-key or bearer token",
        None,
    )
}

/// Rejects a request without a credential or with one the fake treats as dead.
fn check_auth(headers: &HeaderMap) -> Option<String> {
    credential(headers).filter(|token| !accounts::is_rejected(token))
}

/// The model list, as the real API answers it: 200 for a valid key or token, 401 otherwise.
async fn models(headers: HeaderMap) -> Response {
    let Some(token) = check_auth(&headers) else {
        return unauthorized();
    };
    // As the API: the organization the credential belongs to, in a response header.
    let organization = accounts::account_uuid(&format!("org-{}", accounts::account_name(&token)));
    let data: Vec<Value> = ["claude-opus-4-5", "claude-sonnet-4-5", "claude-haiku-4-5"]
        .iter()
        .map(|id| json!({"type": "model", "id": id, "display_name": id, "created_at": "2025-01-01T00:00:00Z"}))
        .collect();
    (
        [("anthropic-organization-id", organization.to_string())],
        Json(json!({"data": data, "has_more": false, "first_id": "claude-opus-4-5", "last_id": "claude-haiku-4-5"})),
    )
        .into_response()
}

async fn profile(headers: HeaderMap) -> Response {
    let Some(token) = check_auth(&headers) else {
        return unauthorized();
    };
    let name = accounts::account_name(&token);
    Json(json!({
        "account": {
            "uuid": accounts::account_uuid(&token),
            "email_address": format!("{name}@example.test"),
            "display_name": name,
        },
        "organization": {
            "uuid": accounts::account_uuid(&format!("org-{name}")),
            "organization_type": "claude_max",
            "rate_limit_tier": "default_claude_max_20x",
        }
    }))
    .into_response()
}

async fn refresh(State(state): State<AppState>, body: Bytes) -> Response {
    let body: Value = serde_json::from_slice(&body).unwrap_or(Value::Null);
    if body.get("grant_type").and_then(Value::as_str) != Some("refresh_token") {
        return (
            StatusCode::BAD_REQUEST,
            Json(json!({"error":"unsupported_grant_type"})),
        )
            .into_response();
    }
    let token = body
        .get("refresh_token")
        .and_then(Value::as_str)
        .unwrap_or_default();
    if accounts::is_slow(token) {
        // Long enough that requests sent together all arrive while this exchange runs.
        tokio::time::sleep(Duration::from_secs(1)).await;
    }
    match state.accounts.refresh(token) {
        Ok(r) => Json(json!({
            "token_type": "Bearer",
            "access_token": r.access_token,
            "refresh_token": r.refresh_token,
            "expires_in": 28800,
            "scope": "user:inference user:profile",
        }))
        .into_response(),
        Err(_) => (
            StatusCode::BAD_REQUEST,
            Json(json!({"error":"invalid_grant","error_description":"refresh token is invalid or already used"})),
        )
            .into_response(),
    }
}

async fn count_tokens(headers: HeaderMap, body: Bytes) -> Response {
    if check_auth(&headers).is_none() {
        return unauthorized();
    }
    let request: Value = serde_json::from_slice(&body).unwrap_or(Value::Null);
    Json(json!({"input_tokens": billed_tokens(&request)})).into_response()
}

fn estimate_tokens(bytes: usize) -> u64 {
    (bytes as u64 / 4).max(1)
}

/// The input tokens a request is billed, as the API bills them: what its system prompt,
/// messages and tool definitions say (a token per four bytes of their text and values), not
/// the request's envelope (`metadata`, `max_tokens`, `stream`, block types, cache markers), so
/// the same conversation counts the same whoever sends it and however it is dressed.
fn billed_tokens(request: &Value) -> u64 {
    fn walk(value: &Value, total: &mut usize) {
        match value {
            Value::String(text) => *total += text.len(),
            Value::Object(map) => {
                for (key, inner) in map {
                    if !matches!(key.as_str(), "type" | "cache_control" | "source") {
                        walk(inner, total);
                    }
                }
            }
            Value::Array(items) => items.iter().for_each(|i| walk(i, total)),
            Value::Number(n) => *total += n.to_string().len(),
            Value::Bool(_) | Value::Null => *total += 4,
        }
    }
    let mut total = 0;
    for key in ["system", "messages", "tools"] {
        if let Some(part) = request.get(key) {
            walk(part, &mut total);
        }
    }
    estimate_tokens(total)
}

/// The model's context window, in tokens, as the fake counts them.
const CONTEXT_WINDOW: u64 = 200_000;

/// The tokens of a request's text (system and message text; images and documents are counted
/// by the API otherwise and left out), a token per four bytes.
fn text_tokens(request: &Value) -> u64 {
    fn walk(value: &Value, total: &mut usize) {
        match value {
            Value::Object(map) => {
                if let Some(Value::String(text)) = map.get("text") {
                    *total += text.len();
                }
                for (key, inner) in map {
                    if key != "source" {
                        walk(inner, total);
                    }
                }
            }
            Value::Array(items) => items.iter().for_each(|i| walk(i, total)),
            _ => {}
        }
    }
    let mut total = 0;
    for key in ["system", "messages"] {
        match request.get(key) {
            Some(Value::String(text)) => total += text.len(),
            Some(other) => walk(other, &mut total),
            None => {}
        }
    }
    (total / 4) as u64
}

async fn messages(headers: HeaderMap, body: Bytes) -> Response {
    if check_auth(&headers).is_none() {
        return unauthorized();
    }
    let request: Value = match serde_json::from_slice(&body) {
        Ok(v) => v,
        Err(e) => {
            return error_response(
                StatusCode::BAD_REQUEST,
                "invalid_request_error",
                &format!("body is not JSON: {e}"),
                None,
            )
        }
    };
    let model = request
        .get("model")
        .and_then(Value::as_str)
        .unwrap_or("claude-fake")
        .to_owned();
    let stream = request
        .get("stream")
        .and_then(Value::as_bool)
        .unwrap_or(false);
    // Past the window: the API's own refusal (a CLI may send such a prompt rather than refuse
    // it itself).
    let tokens = text_tokens(&request);
    if tokens > CONTEXT_WINDOW {
        return error_response(
            StatusCode::BAD_REQUEST,
            "invalid_request_error",
            &format!("prompt is too long: {tokens} tokens > {CONTEXT_WINDOW} maximum"),
            None,
        );
    }
    let Plan { mut turn, script } = script::plan(&request);
    if let (false, Some(retry), Turn::Text(_)) = (stream, &script.retry_reply, &turn) {
        turn = Turn::Text(retry.clone());
    }
    if let Turn::Text(text) = &turn {
        if let Some(cut) = first_stop(text, &request) {
            turn = cut;
        }
    }
    if let Turn::ToolUse(call) = &mut turn {
        call.name = offered_name(&call.name, &request);
        for sibling in &mut call.with {
            sibling.name = offered_name(&sibling.name, &request);
        }
    }
    if script.first_byte_delay_ms > 0 {
        tokio::time::sleep(Duration::from_millis(script.first_byte_delay_ms)).await;
    }
    let extra = script.headers.clone();
    let mut response = if let Turn::Error(e) = &turn {
        let status = StatusCode::from_u16(e.status).unwrap_or(StatusCode::INTERNAL_SERVER_ERROR);
        let message = e
            .message
            .clone()
            .unwrap_or_else(|| format!("scripted upstream error {}", e.status));
        error_response(status, e.error_type(), &message, e.retry_after)
    } else {
        let input_tokens = billed_tokens(&request);
        // Extended thinking asked for: the reply starts with a thinking block, as the API's does.
        let thoughts = (request.pointer("/thinking/type").and_then(Value::as_str)
            == Some("enabled"))
        .then(|| "Fake thoughts before answering.".to_owned());
        if stream {
            stream_response(model, turn, script, input_tokens, thoughts)
        } else {
            Json(message_json(
                &model,
                &turn,
                input_tokens,
                thoughts.as_deref(),
            ))
            .into_response()
        }
    };
    for (name, value) in extra {
        if let (Ok(name), Ok(value)) = (
            axum::http::HeaderName::from_bytes(name.as_bytes()),
            axum::http::HeaderValue::from_str(&value),
        ) {
            response.headers_mut().insert(name, value);
        }
    }
    response
}

/// The reply cut at the earliest of the request's stop sequences that it holds, as the API
/// does.
fn first_stop(text: &str, request: &Value) -> Option<Turn> {
    request
        .get("stop_sequences")?
        .as_array()?
        .iter()
        .filter_map(Value::as_str)
        .filter(|s| !s.is_empty())
        .filter_map(|s| text.find(s).map(|at| (at, s)))
        .min_by_key(|(at, _)| *at)
        .map(|(at, s)| Turn::Stopped(text[..at].to_owned(), s.to_owned()))
}

/// The offered tool a scripted call names: itself, or the one an MCP server's prefix hides
/// (`get_weather` calls `mcp__client__get_weather` when only that is offered).
fn offered_name(name: &str, request: &Value) -> String {
    let offered: Vec<&str> = request
        .get("tools")
        .and_then(Value::as_array)
        .into_iter()
        .flatten()
        .filter_map(|t| t.get("name").and_then(Value::as_str))
        .collect();
    if offered.contains(&name) {
        return name.to_owned();
    }
    let suffix = format!("__{name}");
    offered
        .into_iter()
        .find(|o| o.starts_with("mcp__") && o.ends_with(&suffix))
        .unwrap_or(name)
        .to_owned()
}

/// The `stop_sequence` a turn ended on, if any.
fn stop_sequence(turn: &Turn) -> Value {
    match turn {
        Turn::Stopped(_, sequence) => json!(sequence),
        _ => Value::Null,
    }
}

fn message_id() -> String {
    format!("msg_fake_{}", uuid::Uuid::new_v4().simple())
}

fn tool_id() -> String {
    format!("toolu_fake_{}", uuid::Uuid::new_v4().simple())
}

/// The complete content blocks of a turn (after its thinking, if any), and its stop reason.
fn blocks(turn: &Turn, thoughts: Option<&str>) -> (Vec<Value>, &'static str) {
    let (mut content, stop_reason) = turn_blocks(turn);
    if let Some(thinking) = thoughts {
        content.insert(
            0,
            json!({"type":"thinking","thinking":thinking,"signature":"fake-signature"}),
        );
    }
    (content, stop_reason)
}

fn turn_blocks(turn: &Turn) -> (Vec<Value>, &'static str) {
    match turn {
        Turn::Text(text) => (vec![json!({"type":"text","text":text})], "end_turn"),
        Turn::Stopped(text, _) => (vec![json!({"type":"text","text":text})], "stop_sequence"),
        Turn::ToolUse(call) => {
            let mut blocks = Vec::new();
            if let Some(say) = &call.say {
                blocks.push(json!({"type":"text","text":say}));
            }
            for call in std::iter::once(call).chain(&call.with) {
                blocks.push(
                    json!({"type":"tool_use","id":tool_id(),"name":call.name,"input":call.input}),
                );
            }
            (blocks, "tool_use")
        }
        Turn::Error(_) => (Vec::new(), "end_turn"),
    }
}

fn output_tokens(blocks: &[Value]) -> u64 {
    blocks
        .iter()
        .map(|b| estimate_tokens(b.to_string().len()))
        .sum()
}

fn message_json(model: &str, turn: &Turn, input_tokens: u64, thoughts: Option<&str>) -> Value {
    let (content, stop_reason) = blocks(turn, thoughts);
    let output_tokens = output_tokens(&content);
    json!({
        "id": message_id(),
        "type": "message",
        "role": "assistant",
        "model": model,
        "content": content,
        "stop_reason": stop_reason,
        "stop_sequence": stop_sequence(turn),
        "usage": {"input_tokens": input_tokens, "output_tokens": output_tokens,
                  "cache_creation_input_tokens": 0, "cache_read_input_tokens": 0}
    })
}

fn split_chunks(text: &str, chunks: usize) -> Vec<String> {
    let chars: Vec<char> = text.chars().collect();
    let size = chars.len().div_ceil(chunks.max(1)).max(1);
    chars.chunks(size).map(|c| c.iter().collect()).collect()
}

fn sse(event: &str, data: &Value) -> Bytes {
    Bytes::from(format!("event: {event}\ndata: {data}\n\n"))
}

fn stream_response(
    model: String,
    turn: Turn,
    script: Script,
    input_tokens: u64,
    thoughts: Option<String>,
) -> Response {
    let (tx, rx) = mpsc::channel::<Result<Bytes, std::io::Error>>(16);
    tokio::spawn(async move {
        let delay = Duration::from_millis(script.chunk_delay_ms);
        let send = |event: &str, data: Value| {
            let tx = tx.clone();
            let bytes = sse(event, &data);
            async move { tx.send(Ok(bytes)).await.is_ok() }
        };
        let mut start = message_json(&model, &Turn::Text(String::new()), input_tokens, None);
        start["content"] = json!([]);
        start["stop_reason"] = Value::Null;
        start["usage"]["output_tokens"] = json!(1);
        if !send(
            "message_start",
            json!({"type":"message_start","message":start}),
        )
        .await
        {
            return;
        }
        let (content, stop_reason) = blocks(&turn, thoughts.as_deref());
        let mut text_deltas = 0;
        for (index, block) in content.iter().enumerate() {
            let (opening, deltas) = match block["type"].as_str() {
                Some("tool_use") => {
                    let mut opening = block.clone();
                    opening["input"] = json!({});
                    let pieces = split_chunks(&block["input"].to_string(), 2);
                    let deltas: Vec<Value> = pieces
                        .into_iter()
                        .map(|p| json!({"type":"input_json_delta","partial_json":p}))
                        .collect();
                    (opening, deltas)
                }
                Some("thinking") => (
                    json!({"type":"thinking","thinking":"","signature":""}),
                    vec![
                        json!({"type":"thinking_delta","thinking":block["thinking"]}),
                        json!({"type":"signature_delta","signature":block["signature"]}),
                    ],
                ),
                _ => {
                    let text = block["text"].as_str().unwrap_or_default();
                    let pieces = split_chunks(text, script.chunks.unwrap_or(3));
                    let deltas: Vec<Value> = pieces
                        .into_iter()
                        .map(|p| json!({"type":"text_delta","text":p}))
                        .collect();
                    (json!({"type":"text","text":""}), deltas)
                }
            };
            send(
                "content_block_start",
                json!({"type":"content_block_start","index":index,"content_block":opening}),
            )
            .await;
            if index == 0 {
                send("ping", json!({"type":"ping"})).await;
            }
            for delta in deltas {
                if delta["type"] == "text_delta" {
                    if script.fail_after_chunks == Some(text_deltas) {
                        send("error", json!({"type":"error","error":{"type":"overloaded_error","message":"scripted mid-stream failure"}})).await;
                        return;
                    }
                    text_deltas += 1;
                }
                if !delay.is_zero() {
                    tokio::time::sleep(delay).await;
                }
                if !send(
                    "content_block_delta",
                    json!({"type":"content_block_delta","index":index,"delta":delta}),
                )
                .await
                {
                    return;
                }
            }
            send(
                "content_block_stop",
                json!({"type":"content_block_stop","index":index}),
            )
            .await;
        }
        let output_tokens = output_tokens(&content);
        send("message_delta", json!({"type":"message_delta","delta":{"stop_reason":stop_reason,"stop_sequence":stop_sequence(&turn)},"usage":{"output_tokens":output_tokens}})).await;
        send("message_stop", json!({"type":"message_stop"})).await;
    });
    Response::builder()
        .header("content-type", "text/event-stream")
        .header("cache-control", "no-cache")
        .body(Body::from_stream(ReceiverStream::new(rx)))
        .unwrap_or_else(|_| StatusCode::INTERNAL_SERVER_ERROR.into_response())
}
