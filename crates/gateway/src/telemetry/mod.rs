//! Logs (and, later, metrics). Nothing here ever records a credential.

pub mod audit;
pub mod logging;
pub mod metrics;

use axum::extract::Request;
use axum::middleware::Next;
use axum::response::Response;
use tracing::Instrument;

/// A request id from the client's `x-request-id` when it is a plain token, else a new one.
fn request_id(request: &Request) -> String {
    request
        .headers()
        .get("x-request-id")
        .and_then(|v| v.to_str().ok())
        .filter(|v| {
            !v.is_empty()
                && v.len() <= 64
                && v.bytes()
                    .all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'_')
        })
        .map(str::to_owned)
        .unwrap_or_else(|| uuid::Uuid::new_v4().to_string())
}

/// Runs each request in a span carrying its id, its trace and (once known) its tenant's
/// fingerprint, so every log line of the request has them; logs one `httpRequest` line when
/// the response goes out, and returns the id as `x-request-id`.
pub async fn request_span(request: Request, next: Next) -> Response {
    let id = request_id(&request);
    let span = tracing::info_span!(
        "request",
        request_id = %id,
        trace = tracing::field::Empty,
        tenant = tracing::field::Empty,
        access_key = tracing::field::Empty
    );
    if let Some(trace) = logging::trace_of(request.headers()) {
        span.record("trace", trace.as_str());
    }
    let method = request.method().to_string();
    let url = request.uri().path().to_owned();
    let user_agent = request
        .headers()
        .get(axum::http::header::USER_AGENT)
        .and_then(|v| v.to_str().ok())
        .map(str::to_owned);
    let remote_ip = request
        .extensions()
        .get::<axum::extract::ConnectInfo<std::net::SocketAddr>>()
        .map(|c| c.0.ip().to_string());
    let started = std::time::Instant::now();
    let mut response = next.run(request).instrument(span.clone()).await;
    if let Ok(v) = axum::http::HeaderValue::from_str(&id) {
        response.headers_mut().insert("x-request-id", v);
    }
    span.in_scope(|| {
        tracing::info!(
            http_method = %method,
            http_url = %url,
            http_status = response.status().as_u16(),
            http_latency_secs = started.elapsed().as_secs_f64(),
            http_remote_ip = remote_ip.as_deref().unwrap_or(""),
            http_user_agent = user_agent.as_deref().unwrap_or(""),
            "request finished"
        )
    });
    response
}

/// Replaces anything shaped like an Anthropic credential (`sk-ant-…`) in `text`: applied to text
/// the gateway did not write itself (CLI stderr, upstream messages) before it is logged or
/// returned to a client.
pub fn redact(text: &str) -> String {
    const MARK: &str = "sk-ant-";
    let mut out = String::with_capacity(text.len());
    let mut rest = text;
    while let Some(i) = rest.find(MARK) {
        out.push_str(&rest[..i]);
        out.push_str("sk-ant-[redacted]");
        let after = &rest[i + MARK.len()..];
        let end = after
            .find(|c: char| !(c.is_ascii_alphanumeric() || c == '-' || c == '_' || c == '.'))
            .unwrap_or(after.len());
        rest = &after[end..];
    }
    out.push_str(rest);
    out
}

#[cfg(test)]
mod tests {
    use super::redact;

    #[test]
    fn credentials_in_free_text_are_redacted() {
        assert_eq!(
            redact("bad token sk-ant-oat01-abc.DEF_1 here; sk-ant-api03-x"),
            "bad token sk-ant-[redacted] here; sk-ant-[redacted]"
        );
        assert_eq!(redact("nothing secret"), "nothing secret");
    }
}
