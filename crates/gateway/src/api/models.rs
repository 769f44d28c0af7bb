//! `GET /v1/models`: the configured models, in a list shape both the Anthropic SDKs
//! (`data`, `has_more`, `first_id`, `last_id`, items with `type`, `display_name`, `created_at`)
//! and the OpenAI SDKs (`object: "list"`, items with `object`, `created`, `owned_by`) accept.

use axum::extract::{Path, State};
use axum::Json;
use serde_json::{json, Value};

use crate::app::SharedState;
use crate::error::ApiError;

fn display_name(id: &str) -> String {
    match id {
        "opus" => "Claude Opus (latest)".into(),
        "sonnet" => "Claude Sonnet (latest)".into(),
        "haiku" => "Claude Haiku (latest)".into(),
        other => other.to_owned(),
    }
}

fn model_json(id: &str) -> Value {
    json!({
        "type": "model",
        "object": "model",
        "id": id,
        "display_name": display_name(id),
        // The gateway does not know release dates; the epoch says so rather than inventing one.
        "created_at": "1970-01-01T00:00:00Z",
        "created": 0,
        "owned_by": "anthropic",
    })
}

#[utoipa::path(get, path = "/v1/models", tag = "Operations",
    responses((status = 200, description = "The configured models, in a shape both the Anthropic and the OpenAI SDKs accept", body = Object)))]
pub async fn list(State(state): State<SharedState>) -> Json<Value> {
    let data: Vec<Value> = state.config.models.iter().map(|m| model_json(m)).collect();
    Json(json!({
        "object": "list",
        "data": data,
        "has_more": false,
        "first_id": state.config.models.first(),
        "last_id": state.config.models.last(),
    }))
}

#[utoipa::path(get, path = "/v1/models/{id}", tag = "Operations",
    params(("id" = String, Path, description = "A model alias or id")),
    responses((status = 200, body = Object), (status = 404, body = crate::api::docs::ErrorBody)))]
pub async fn get(
    State(state): State<SharedState>,
    Path(id): Path<String>,
) -> Result<Json<Value>, ApiError> {
    state
        .config
        .models
        .iter()
        .find(|m| **m == id)
        .map(|m| Json(model_json(m)))
        .ok_or_else(|| ApiError::NotFound(format!("model {id:?} is not offered by this gateway")))
}
