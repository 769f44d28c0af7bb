//! The session API: a tenant's own sessions, and nobody else's (another tenant's session is a
//! 404, indistinguishable from a missing one).

use axum::extract::{Path, State};
use axum::http::{HeaderMap, StatusCode};
use axum::Json;
use serde_json::{json, Value};

use super::authenticate;
use crate::app::SharedState;
use crate::error::ApiError;
use crate::sessions::{transcript, ClientSessionId, SessionError, SessionMeta};

fn summary(meta: &SessionMeta) -> Value {
    json!({
        "id": meta.id,
        "created_at": meta.created_at,
        "last_used_at": meta.last_used_at,
        "turns": meta.turns,
        "model": meta.model,
    })
}

/// The tenant's sessions, most recently used first.
#[utoipa::path(get, path = "/v1/sessions", tag = "Sessions",
    responses((status = 200, description = "The tenant's sessions, most recent first", body = Object),
              (status = 401, body = crate::api::docs::ErrorBody)))]
pub async fn list(
    State(state): State<SharedState>,
    headers: HeaderMap,
) -> Result<Json<Value>, ApiError> {
    let tenant = authenticate(&state, &headers).await?;
    let sessions = state.sessions.list(&tenant).await?;
    Ok(Json(json!({
        "object": "list",
        "data": sessions.iter().map(summary).collect::<Vec<_>>(),
    })))
}

/// A session's metadata and its conversation in Anthropic's message format.
#[utoipa::path(get, path = "/v1/sessions/{id}", tag = "Sessions",
    params(("id" = String, Path, description = "The client's session id")),
    responses((status = 200, description = "Metadata and messages in Anthropic's format", body = Object),
              (status = 400, body = crate::api::docs::ErrorBody),
              (status = 404, description = "No such session for this tenant", body = crate::api::docs::ErrorBody)))]
pub async fn get(
    State(state): State<SharedState>,
    headers: HeaderMap,
    Path(id): Path<String>,
) -> Result<Json<Value>, ApiError> {
    let tenant = authenticate(&state, &headers).await?;
    let id = ClientSessionId::parse(&id)?;
    let meta = state
        .sessions
        .load(&tenant, &id)
        .await?
        .ok_or_else(|| SessionError::NotFound(id.as_str().to_owned()))?;
    let messages = if state.sessions.keeps_transcripts() {
        // Committed whole with the last turn, wherever it ran.
        let bytes = state.sessions.committed_transcript(&tenant, &id).await?;
        bytes.map(|b| transcript::messages(&b)).unwrap_or_default()
    } else {
        settled_messages(&state, &tenant, &meta).await?
    };
    let mut body = summary(&meta);
    body["messages"] = Value::Array(messages);
    Ok(Json(body))
}

/// The transcript's messages once the last answer is on disk. The CLI writes its transcript a
/// few tens of milliseconds after answering (a live process keeps running), so a read right
/// after a turn waits briefly for it rather than showing the conversation without its answer.
async fn settled_messages(
    state: &SharedState,
    tenant: &crate::tenant::identity::TenantId,
    meta: &SessionMeta,
) -> Result<Vec<Value>, ApiError> {
    // A user message with anything but tool results is a prompt: one per recorded turn.
    let is_prompt = |m: &Value| {
        m["role"] == "user"
            && m["content"]
                .as_array()
                .is_some_and(|blocks| blocks.iter().any(|b| b["type"] != "tool_result"))
    };
    let deadline = tokio::time::Instant::now() + std::time::Duration::from_secs(1);
    loop {
        let messages = match state
            .sessions
            .read_transcript(tenant, meta.cli_session_id)?
        {
            Some(bytes) => transcript::messages(&bytes),
            None => Vec::new(),
        };
        let prompts = messages.iter().filter(|m| is_prompt(m)).count() as u64;
        let answered =
            prompts >= meta.turns && messages.last().is_some_and(|m| m["role"] == "assistant");
        if answered || tokio::time::Instant::now() >= deadline {
            return Ok(messages);
        }
        tokio::time::sleep(std::time::Duration::from_millis(20)).await;
    }
}

/// Forgets a session; its id then starts a fresh conversation.
#[utoipa::path(delete, path = "/v1/sessions/{id}", tag = "Sessions",
    params(("id" = String, Path, description = "The client's session id")),
    responses((status = 204, description = "Forgotten"),
              (status = 404, body = crate::api::docs::ErrorBody),
              (status = 409, body = crate::api::docs::ErrorBody)))]
pub async fn delete(
    State(state): State<SharedState>,
    headers: HeaderMap,
    Path(id): Path<String>,
) -> Result<StatusCode, ApiError> {
    let tenant = authenticate(&state, &headers).await?;
    let id = ClientSessionId::parse(&id)?;
    // Not while a turn is running: wait for it (bounded), then delete.
    let key = state.sessions.key(&tenant, &id);
    let _guard = state.sessions.lock(&tenant, key, &id).await?;
    state.live.end(key).await;
    if state.sessions.delete(&tenant, &id).await? {
        Ok(StatusCode::NO_CONTENT)
    } else {
        Err(SessionError::NotFound(id.as_str().to_owned()).into())
    }
}
