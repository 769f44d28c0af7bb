//! The HTTP API: one module per route family. Handlers translate between wire types and the
//! gateway's internals; failures go through [`crate::error::ApiError`].

pub mod anthropic;
pub mod health;
pub mod models;
pub mod reply;
pub mod sse;
pub mod security;
pub mod sessions;

use crate::error::ApiError;

pub async fn not_found(uri: axum::http::Uri) -> ApiError {
    ApiError::NotFound(format!("no route for {}", uri.path()))
}

/// The tenant of a request that carries its credential in a header (the non-message routes).
pub async fn authenticate(
    state: &crate::app::AppState,
    headers: &axum::http::HeaderMap,
) -> Result<crate::tenant::identity::TenantId, ApiError> {
    let credential = crate::tenant::credential::Credential::from_request(headers, None)?;
    Ok(state.identity.resolve(&credential).await?)
}
