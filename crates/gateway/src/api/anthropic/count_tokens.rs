//! `POST /v1/messages/count_tokens`: answered by the upstream itself, with the tenant's own
//! credential. No CLI runs: counting needs no sandbox, and the upstream's count is the truth.

use axum::body::Bytes;
use axum::extract::rejection::BytesRejection;
use axum::extract::State;
use axum::http::HeaderMap;
use axum::response::Response;
use serde_json::Value;

use crate::app::SharedState;
use crate::error::ApiError;
use crate::tenant::credential::Credential;

/// The body must be what the API counts: a model and a list of messages. The rest (system,
/// tools, thinking, …) goes to the upstream as the client wrote it.
fn check_body(body: &[u8]) -> Result<(), ApiError> {
    let value: Value = serde_json::from_slice(body)
        .map_err(|e| ApiError::InvalidRequest(format!("invalid request body: {e}")))?;
    if !value.get("model").is_some_and(Value::is_string) {
        return Err(ApiError::InvalidRequest(
            "model: a string is required".into(),
        ));
    }
    if !value.get("messages").is_some_and(Value::is_array) {
        return Err(ApiError::InvalidRequest(
            "messages: a list is required".into(),
        ));
    }
    Ok(())
}

/// Counts a request's input tokens as the upstream would bill them.
#[utoipa::path(post, path = "/v1/messages/count_tokens", tag = "Anthropic",
    request_body(content = Object, description = "A Messages request without max_tokens: model, messages, system, tools, …"),
    responses(
        (status = 200, description = "`{\"input_tokens\": n}`, from the upstream", body = Object),
        crate::api::docs::TurnErrors
    ))]
pub async fn count(
    State(state): State<SharedState>,
    headers: HeaderMap,
    body: Result<Bytes, BytesRejection>,
) -> Result<Response, ApiError> {
    let credential = Credential::from_request(&headers, None)?;
    let body = body?;
    check_body(&body)?;
    // The same door as a message: a verified credential, within the tenant's rate.
    let tenant = state.identity.resolve(&credential).await?;
    state.rate.check_tenant(&tenant).await?;
    state
        .upstream
        .call(&credential, "/v1/messages/count_tokens", &headers, body)
        .await
        .ok_or_else(|| ApiError::BadGateway("the gateway could not reach the upstream".into()))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_body_without_model_or_messages_is_refused_naming_the_field() {
        let refused = |body: &str| check_body(body.as_bytes()).map_err(|e| e.to_string());
        assert!(refused(r#"{"model":"sonnet","messages":[]}"#).is_ok());
        assert!(refused(r#"{"messages":[]}"#).is_err_and(|e| e.starts_with("model:")));
        assert!(refused(r#"{"model":"sonnet"}"#).is_err_and(|e| e.starts_with("messages:")));
        assert!(refused("not json").is_err_and(|e| e.contains("invalid request body")));
    }
}
