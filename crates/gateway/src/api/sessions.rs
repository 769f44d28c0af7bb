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

/// `GET /v1/sessions`
pub async fn list(
    State(state): State<SharedState>,
    headers: HeaderMap,
) -> Result<Json<Value>, ApiError> {
    let tenant = authenticate(&state, &headers).await?;
    let sessions = state.sessions.list(&tenant)?;
    Ok(Json(json!({
        "object": "list",
        "data": sessions.iter().map(summary).collect::<Vec<_>>(),
    })))
}

/// `GET /v1/sessions/{id}`: metadata and the conversation in Anthropic's message format.
pub async fn get(
    State(state): State<SharedState>,
    headers: HeaderMap,
    Path(id): Path<String>,
) -> Result<Json<Value>, ApiError> {
    let tenant = authenticate(&state, &headers).await?;
    let id = ClientSessionId::parse(&id)?;
    let meta = state
        .sessions
        .load(&tenant, &id)?
        .ok_or_else(|| SessionError::NotFound(id.as_str().to_owned()))?;
    let messages = match state.sessions.find_transcript(&tenant, meta.cli_session_id) {
        Some(path) => transcript::read_messages(&path)
            .map_err(|e| ApiError::Internal(format!("cannot read the transcript: {e}")))?,
        None => Vec::new(),
    };
    let mut body = summary(&meta);
    body["messages"] = Value::Array(messages);
    Ok(Json(body))
}

/// `DELETE /v1/sessions/{id}`: forgets the conversation; the id then starts a fresh one.
pub async fn delete(
    State(state): State<SharedState>,
    headers: HeaderMap,
    Path(id): Path<String>,
) -> Result<StatusCode, ApiError> {
    let tenant = authenticate(&state, &headers).await?;
    let id = ClientSessionId::parse(&id)?;
    // Not while a turn is running: wait for it (bounded), then delete.
    let key = state.sessions.key(&tenant, &id);
    let _guard = state.sessions.lock(key, &id).await?;
    if state.sessions.delete(&tenant, &id)? {
        Ok(StatusCode::NO_CONTENT)
    } else {
        Err(SessionError::NotFound(id.as_str().to_owned()).into())
    }
}
