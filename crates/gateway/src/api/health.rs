//! Liveness and readiness.

use axum::extract::State;
use axum::http::StatusCode;
use axum::response::IntoResponse;
use axum::Json;
use serde_json::json;

use crate::app::SharedState;
use crate::check;

/// Liveness: the process serves HTTP.
#[utoipa::path(get, path = "/health", tag = "Operations", security(), responses((status = 200, body = Object)))]
pub async fn health() -> impl IntoResponse {
    Json(json!({"status": "ok", "version": env!("CARGO_PKG_VERSION")}))
}

/// Readiness: the checks of `claude-gateway check` that need no network: the CLI (its version
/// from start-up), the sandbox (probed at start-up) and the data dir (permissions and free
/// space, measured now: a few system calls); and the shared Redis, when there is one (a PING).
#[utoipa::path(get, path = "/ready", tag = "Operations", security(),
    responses((status = 200, body = Object), (status = 503, description = "Not ready, with reasons", body = Object)))]
pub async fn ready(State(state): State<SharedState>) -> impl IntoResponse {
    let mut checks = vec![
        check::cli(&state.claude),
        check::sandbox_state(
            state.runner.sandbox.as_ref(),
            state.sandbox_disabled.as_deref(),
        ),
        check::data_dir(&state.config.data_dir),
    ];
    checks.extend(check::shared(state.shared.as_ref(), &state.install_key).await);
    if !check::verdict(&checks).passed {
        let reasons: Vec<&str> = checks
            .iter()
            .filter(|c| c.status == check::Status::Fail)
            .map(|c| c.detail.as_str())
            .collect();
        return (
            StatusCode::SERVICE_UNAVAILABLE,
            Json(json!({"status": "not_ready", "reasons": reasons, "checks": checks})),
        );
    }
    let mut body = json!({
        "status": "ready",
        "version": env!("CARGO_PKG_VERSION"),
        "claude_code_version": state.claude.version.as_deref().unwrap_or_default(),
        "sandbox": if state.runner.sandbox.is_some() { "bubblewrap" } else { "DISABLED" },
        "checks": checks,
    });
    if let Some(reason) = &state.sandbox_disabled {
        body["warning"] = json!(format!(
            "INSECURE: CLI runs are not sandboxed ({reason}); only PARANOID is served"
        ));
    }
    (StatusCode::OK, Json(body))
}

/// Prometheus metrics (text format).
#[utoipa::path(get, path = "/metrics", tag = "Operations", security(), responses((status = 200, content_type = "text/plain")))]
pub async fn metrics(State(state): State<SharedState>) -> impl IntoResponse {
    // Gauges of the moment are read at scrape time.
    ::metrics::gauge!("gateway_running_runs").set(state.admission.running() as f64);
    ::metrics::gauge!("gateway_queued_requests_now").set(state.admission.queued() as f64);
    ::metrics::gauge!("gateway_live_sessions").set(state.live.len() as f64);
    ::metrics::gauge!("gateway_warm_processes").set(state.warm.len() as f64);
    ::metrics::gauge!("gateway_mcp_bridged_servers").set(state.mcp_bridge.len() as f64);
    (
        [("content-type", "text/plain; version=0.0.4")],
        crate::telemetry::metrics::handle().render(),
    )
}
