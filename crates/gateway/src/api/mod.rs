//! The HTTP API: one module per route family. Handlers translate between wire types and the
//! gateway's internals; failures go through [`crate::error::ApiError`].

pub mod anthropic;
pub mod health;
pub mod models;
pub mod security;

use crate::error::ApiError;

pub async fn not_found(uri: axum::http::Uri) -> ApiError {
    ApiError::NotFound(format!("no route for {}", uri.path()))
}
