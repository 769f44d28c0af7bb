//! Prometheus metrics. Labels are bounded sets (route templates, configured model names,
//! status codes): never a tenant, a token or a session id.

use std::sync::OnceLock;
use std::time::Instant;

use axum::extract::{MatchedPath, Request};
use axum::middleware::Next;
use axum::response::Response;
use metrics_exporter_prometheus::{Matcher, PrometheusBuilder, PrometheusHandle};

static HANDLE: OnceLock<PrometheusHandle> = OnceLock::new();

const LATENCY_BUCKETS: &[f64] = &[
    0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0, 120.0, 300.0,
];

/// Installs the process-wide recorder once and returns its handle.
pub fn handle() -> &'static PrometheusHandle {
    HANDLE.get_or_init(|| {
        let builder = PrometheusBuilder::new()
            .set_buckets_for_metric(Matcher::Suffix("_seconds".into()), LATENCY_BUCKETS)
            .unwrap_or_else(|_| PrometheusBuilder::new());
        match builder.install_recorder() {
            Ok(handle) => handle,
            // Another recorder is installed (a test embedding the library): render an empty one.
            Err(_) => PrometheusBuilder::new().build_recorder().handle(),
        }
    })
}

/// Counts every request by route template, method and status, and times it.
pub async fn track(request: Request, next: Next) -> Response {
    let route = request
        .extensions()
        .get::<MatchedPath>()
        .map(|p| p.as_str().to_owned())
        .unwrap_or_else(|| "unmatched".into());
    let method = request.method().as_str().to_owned();
    let started = Instant::now();
    let response = next.run(request).await;
    let status = response.status().as_u16().to_string();
    metrics::counter!("gateway_http_requests_total", "route" => route.clone(), "method" => method, "status" => status)
        .increment(1);
    metrics::histogram!("gateway_http_request_duration_seconds", "route" => route)
        .record(started.elapsed().as_secs_f64());
    response
}

/// The model label: a configured model name, or `other` (request text never becomes a label).
pub fn model_label(model: &str, configured: &[String]) -> String {
    if configured.iter().any(|m| m == model) {
        model.to_owned()
    } else {
        "other".to_owned()
    }
}

/// Records a finished turn's usage and cost.
pub fn record_usage(
    model: &str,
    usage: &crate::runner::protocol::ResultUsage,
    cost_usd: Option<f64>,
) {
    let model = model.to_owned();
    for (kind, n) in [
        ("input", usage.input_tokens),
        ("output", usage.output_tokens),
        ("cache_read", usage.cache_read_input_tokens),
        ("cache_creation", usage.cache_creation_input_tokens),
    ] {
        metrics::counter!("gateway_tokens_total", "model" => model.clone(), "kind" => kind)
            .increment(n);
    }
    if let Some(cost) = cost_usd.filter(|c| c.is_finite() && *c > 0.0) {
        metrics::counter!("gateway_cost_microdollars_total", "model" => model.clone())
            .increment((cost * 1_000_000.0).round() as u64);
    }
    metrics::counter!("gateway_turns_total", "model" => model).increment(1);
}
