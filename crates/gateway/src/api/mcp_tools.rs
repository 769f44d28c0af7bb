//! `GET|POST /v1/mcp/tools`: the tools of the servers a request names (same `X-MCP-Config`
//! header or `mcp_servers` body forms, same validation, same sandbox as a run).

use axum::body::Bytes;
use axum::extract::State;
use axum::http::HeaderMap;
use axum::Json;
use serde_json::{json, Value};

use super::{authenticate, requested_level, requested_mcp, TurnExtensions};
use crate::app::SharedState;
use crate::error::ApiError;

/// Each server's status (`ok`, `error`, `refused`) and tools (name, description, input schema).
#[utoipa::path(method(get, post), path = "/v1/mcp/tools", tag = "Operations",
    request_body(content = Object, description = "Optional: {\"mcp_servers\": {name: config}, \"security_level\": …}"),
    params(("x-mcp-config" = Option<String>, Header, description = "{name: config} as JSON"),
           ("x-security-level" = Option<String>, Header, description = "A stricter level")),
    responses((status = 200, description = "Per-server status and tools; one server's failure does not fail the others", body = Object),
              (status = 400, body = crate::api::docs::ErrorBody),
              (status = 401, body = crate::api::docs::ErrorBody),
              (status = 429, body = crate::api::docs::ErrorBody),
              (status = 529, body = crate::api::docs::ErrorBody)))]
pub async fn list(
    State(state): State<SharedState>,
    headers: HeaderMap,
    body: Result<Bytes, axum::extract::rejection::BytesRejection>,
) -> Result<Json<Value>, ApiError> {
    let tenant = authenticate(&state, &headers).await?;
    let body = body?;
    let body: TurnExtensions = if body.is_empty() {
        TurnExtensions::default()
    } else {
        serde_json::from_slice(&body)
            .map_err(|e| ApiError::InvalidRequest(format!("invalid request body: {e}")))?
    };
    let servers = requested_mcp(&headers, body.mcp_servers.as_ref())?;
    if servers.is_empty() {
        return Err(ApiError::InvalidRequest(
            "name at least one MCP server (X-MCP-Config header or mcp_servers)".into(),
        ));
    }
    let level = state
        .levels
        .resolve(requested_level(&headers, body.security_level.as_deref()))?;
    // Listing starts servers and opens connections like a run does, so it counts like one:
    // against the tenant's rate and, while it lasts, a run slot.
    state.rate.check_tenant(&tenant).await?;
    let _permit = state.admission.admit(&tenant).await?;
    let workspace = state.workspace(&tenant)?;
    let listed = crate::mcp::tools::list(
        &state.mcp,
        &state.mcp_connector,
        crate::mcp::tools::LocalPlace {
            runner: &state.runner,
            tenant: tenant.fingerprint(),
            workspace: &workspace,
        },
        level,
        &servers,
        std::time::Duration::from_secs(state.config.mcp_timeout_secs),
    )
    .await;
    Ok(Json(json!({"servers": listed})))
}
