//! The one place where failures become HTTP responses: one error type, rendered in the shape of
//! the API dialect that failed (Anthropic's `{"type":"error","error":{"type","message"}}`,
//! OpenAI's `{"error":{"message","type","param","code"}}`), with the same status and headers.

use axum::http::{HeaderValue, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::Json;
use serde_json::{json, Value};

use crate::runner::RunError;
use crate::telemetry::redact;
use crate::tenant::credential::CredentialError;
use crate::turn::TurnError;

/// The API dialect an error is answered in.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Dialect {
    Anthropic,
    OpenAi,
}

#[derive(Debug, thiserror::Error)]
pub enum ApiError {
    #[error("{0}")]
    InvalidRequest(String),
    #[error("{0}")]
    Authentication(String),
    #[error("{0}")]
    Permission(String),
    #[error("{0}")]
    NotFound(String),
    #[error("{0}")]
    Conflict(String),
    #[error("{0}")]
    TooLarge(String),
    /// Too many request header lines, or too many bytes of them.
    #[error("{0}")]
    HeadersTooLarge(String),
    #[error("{message}")]
    RateLimited {
        message: String,
        retry_after: Option<u64>,
        /// The requests-per-minute limit that was hit, when the gateway's own.
        limit: Option<u32>,
    },
    #[error("{0}")]
    Overloaded(String),
    /// The CLI is missing, crashed, or the upstream failed in a way the client cannot fix.
    #[error("{0}")]
    BadGateway(String),
    #[error("{0}")]
    Timeout(String),
    #[error("{0}")]
    Unavailable(String),
    #[error("{0}")]
    Internal(String),
}

impl ApiError {
    pub fn status(&self) -> StatusCode {
        match self {
            ApiError::InvalidRequest(_) => StatusCode::BAD_REQUEST,
            ApiError::Authentication(_) => StatusCode::UNAUTHORIZED,
            ApiError::Permission(_) => StatusCode::FORBIDDEN,
            ApiError::NotFound(_) => StatusCode::NOT_FOUND,
            ApiError::Conflict(_) => StatusCode::CONFLICT,
            ApiError::TooLarge(_) => StatusCode::PAYLOAD_TOO_LARGE,
            ApiError::HeadersTooLarge(_) => StatusCode::REQUEST_HEADER_FIELDS_TOO_LARGE,
            ApiError::RateLimited { .. } => StatusCode::TOO_MANY_REQUESTS,
            ApiError::Overloaded(_) => {
                StatusCode::from_u16(529).unwrap_or(StatusCode::SERVICE_UNAVAILABLE)
            }
            ApiError::BadGateway(_) => StatusCode::BAD_GATEWAY,
            ApiError::Timeout(_) => StatusCode::GATEWAY_TIMEOUT,
            ApiError::Unavailable(_) => StatusCode::SERVICE_UNAVAILABLE,
            ApiError::Internal(_) => StatusCode::INTERNAL_SERVER_ERROR,
        }
    }

    /// Anthropic's error `type` for this error.
    pub fn error_type(&self) -> &'static str {
        match self {
            ApiError::InvalidRequest(_) | ApiError::Conflict(_) | ApiError::HeadersTooLarge(_) => {
                "invalid_request_error"
            }
            ApiError::Authentication(_) => "authentication_error",
            ApiError::Permission(_) => "permission_error",
            ApiError::NotFound(_) => "not_found_error",
            ApiError::TooLarge(_) => "request_too_large",
            ApiError::RateLimited { .. } => "rate_limit_error",
            ApiError::Overloaded(_) | ApiError::Unavailable(_) => "overloaded_error",
            ApiError::Timeout(_) => "timeout_error",
            ApiError::BadGateway(_) | ApiError::Internal(_) => "api_error",
        }
    }

    /// OpenAI's error `type` and `code` for this error (its SDKs raise by status; these say
    /// what OpenAI's own API says for the same failure).
    pub fn openai_type_and_code(&self) -> (&'static str, Option<&'static str>) {
        match self {
            ApiError::InvalidRequest(_)
            | ApiError::Conflict(_)
            | ApiError::TooLarge(_)
            | ApiError::HeadersTooLarge(_) => ("invalid_request_error", None),
            ApiError::Authentication(_) => ("invalid_request_error", Some("invalid_api_key")),
            ApiError::Permission(_) => ("invalid_request_error", Some("permission_denied")),
            ApiError::NotFound(_) => ("invalid_request_error", Some("not_found")),
            ApiError::RateLimited { .. } => ("requests", Some("rate_limit_exceeded")),
            ApiError::Overloaded(_) | ApiError::Unavailable(_) => {
                ("server_error", Some("overloaded"))
            }
            ApiError::Timeout(_) => ("server_error", Some("timeout")),
            ApiError::BadGateway(_) | ApiError::Internal(_) => ("server_error", None),
        }
    }

    /// The error body in Anthropic's shape; also the data of a mid-stream SSE `error` event.
    pub fn body(&self) -> Value {
        self.body_in(Dialect::Anthropic)
    }

    /// The error body in `dialect`'s shape.
    pub fn body_in(&self, dialect: Dialect) -> Value {
        let message = client_facing(&self.to_string());
        match dialect {
            Dialect::Anthropic => {
                json!({"type":"error","error":{"type":self.error_type(),"message":message}})
            }
            Dialect::OpenAi => {
                let (kind, code) = self.openai_type_and_code();
                json!({"error": {"message": message, "type": kind, "param": null, "code": code}})
            }
        }
    }

    /// Maps an upstream status, as the CLI reported it, to what the client should see.
    pub fn from_upstream(status: u16, message: &str) -> Self {
        let message = redact(message);
        match status {
            400 => ApiError::InvalidRequest(message),
            401 => ApiError::Authentication(message),
            403 => ApiError::Permission(message),
            404 => ApiError::NotFound(message),
            413 => ApiError::TooLarge(message),
            429 => ApiError::RateLimited {
                message,
                retry_after: None,
                limit: None,
            },
            529 => ApiError::Overloaded(message),
            _ => ApiError::BadGateway(format!("upstream error {status}: {message}")),
        }
    }
}

impl From<CredentialError> for ApiError {
    fn from(e: CredentialError) -> Self {
        ApiError::Authentication(e.to_string())
    }
}

impl From<crate::sandbox::LevelError> for ApiError {
    fn from(e: crate::sandbox::LevelError) -> Self {
        match e {
            crate::sandbox::LevelError::Unknown(_) => ApiError::InvalidRequest(e.to_string()),
            crate::sandbox::LevelError::TooLoose { .. } => ApiError::Permission(e.to_string()),
        }
    }
}

impl From<crate::tenant::identity::IdentityError> for ApiError {
    fn from(e: crate::tenant::identity::IdentityError) -> Self {
        match e {
            crate::tenant::identity::IdentityError::Rejected => ApiError::Authentication(
                "the credential was rejected by Anthropic (expired or revoked?)".into(),
            ),
            crate::tenant::identity::IdentityError::NotAllowed => ApiError::Permission(
                "this Anthropic account (or organization) is not among those this gateway serves"
                    .into(),
            ),
            other => ApiError::BadGateway(other.to_string()),
        }
    }
}

impl From<crate::tenant::refresh::RefreshError> for ApiError {
    fn from(e: crate::tenant::refresh::RefreshError) -> Self {
        match e {
            crate::tenant::refresh::RefreshError::Rejected => {
                ApiError::Authentication(e.to_string())
            }
            crate::tenant::refresh::RefreshError::Shared(_) => ApiError::Unavailable(e.to_string()),
            other => ApiError::BadGateway(other.to_string()),
        }
    }
}

impl From<crate::sessions::SessionError> for ApiError {
    fn from(e: crate::sessions::SessionError) -> Self {
        use crate::sessions::SessionError as S;
        match e {
            S::InvalidId => ApiError::InvalidRequest(format!("session_id: {e}")),
            S::Busy(_) => ApiError::Conflict(e.to_string()),
            S::NotFound(_) => ApiError::NotFound(e.to_string()),
            S::Storage(_) => ApiError::Internal(e.to_string()),
            S::NotAwaiting(_) => ApiError::InvalidRequest(e.to_string()),
            S::Unavailable(_) => ApiError::Unavailable(format!("{e}; try again shortly")),
            S::QuotaExceeded(_) => ApiError::TooLarge(e.to_string()),
        }
    }
}

impl From<crate::admission::RateLimited> for ApiError {
    fn from(e: crate::admission::RateLimited) -> Self {
        let secs = e.retry_after.as_secs() + u64::from(e.retry_after.subsec_nanos() > 0);
        ApiError::RateLimited {
            message: format!(
                "rate limit exceeded: {} requests per minute per {}; retry in {secs} s",
                e.per_minute, e.scope
            ),
            retry_after: Some(secs.max(1)),
            limit: Some(e.per_minute),
        }
    }
}

impl From<crate::admission::RateError> for ApiError {
    fn from(e: crate::admission::RateError) -> Self {
        match e {
            crate::admission::RateError::Limited(limited) => limited.into(),
            crate::admission::RateError::Unavailable(e) => e.into(),
        }
    }
}

impl From<crate::shared::SharedError> for ApiError {
    fn from(e: crate::shared::SharedError) -> Self {
        ApiError::Unavailable(format!("{e}; try again shortly"))
    }
}

impl From<crate::admission::AdmissionError> for ApiError {
    fn from(e: crate::admission::AdmissionError) -> Self {
        match e {
            crate::admission::AdmissionError::TenantBusy(_) => ApiError::RateLimited {
                message: e.to_string(),
                retry_after: Some(1),
                limit: None,
            },
            crate::admission::AdmissionError::Overloaded(_) => ApiError::Overloaded(e.to_string()),
            crate::admission::AdmissionError::Shared(_) => {
                ApiError::Unavailable(format!("{e}; try again shortly"))
            }
        }
    }
}

impl From<crate::mcp::McpError> for ApiError {
    fn from(e: crate::mcp::McpError) -> Self {
        use crate::mcp::McpError as M;
        match e {
            M::Forbidden { .. } | M::Refused { .. } => ApiError::Permission(e.to_string()),
            M::Presets(..) => ApiError::Internal(e.to_string()),
            M::Unreachable {
                error:
                    crate::mcp::remote::ConnectError::Refused(_)
                    | crate::mcp::remote::ConnectError::Blocked(_),
                ..
            } => ApiError::Permission(e.to_string()),
            // The request's own server configuration failed (wrong token, unreachable URL): a
            // client error, so SDKs do not retry it as if the gateway were at fault.
            M::Config(_) | M::Unreachable { .. } => ApiError::InvalidRequest(e.to_string()),
        }
    }
}

impl From<crate::tenant::volumes::VolumeError> for ApiError {
    fn from(e: crate::tenant::volumes::VolumeError) -> Self {
        ApiError::Internal(e.to_string())
    }
}

impl From<crate::mcp::ConfigError> for ApiError {
    fn from(e: crate::mcp::ConfigError) -> Self {
        ApiError::InvalidRequest(e.to_string())
    }
}

impl From<RunError> for ApiError {
    fn from(e: RunError) -> Self {
        match e {
            RunError::Timeout => {
                ApiError::Timeout("the request exceeded the gateway's run time limit".into())
            }
            // What the run did inside went past its limit: not a gateway fault, and a retry
            // would do the same.
            e @ RunError::OutOfMemory(_) => ApiError::InvalidRequest(e.to_string()),
            other => ApiError::BadGateway(other.to_string()),
        }
    }
}

impl From<TurnError> for ApiError {
    fn from(e: TurnError) -> Self {
        match e {
            TurnError::Upstream {
                status,
                message,
                retry_after,
            } => {
                metrics::counter!("gateway_upstream_errors_total", "status" => status.to_string())
                    .increment(1);
                match ApiError::from_upstream(status, &message) {
                    ApiError::RateLimited { message, limit, .. } => ApiError::RateLimited {
                        message,
                        retry_after,
                        limit,
                    },
                    other => other,
                }
            }
            TurnError::UsageLimit { refusal, .. } => {
                metrics::counter!("gateway_upstream_errors_total", "status" => "usage_limit")
                    .increment(1);
                let now = crate::clock::now_secs();
                let resets = refusal.resets_at.map_or(String::new(), |at| {
                    format!("; it resets at {}", crate::clock::iso8601(at as i64 * 1000))
                });
                let message = if refusal.third_party {
                    format!(
                        "this subscription's allowance for third-party use (claude -p, the Agent \
                         SDK and services such as this gateway) is spent{resets}. Its own apps \
                         may still work; an Anthropic API key is billed per token instead"
                    )
                } else {
                    format!(
                        "this credential's own usage limit ({}) is reached: the upstream refused \
                         the call{resets}",
                        refusal.window.as_deref().unwrap_or("its plan's")
                    )
                };
                ApiError::RateLimited {
                    message,
                    retry_after: refusal.resets_at.map(|at| at.saturating_sub(now).max(1)),
                    limit: None,
                }
            }
            TurnError::Cli(message) => ApiError::BadGateway(format!(
                "the Claude Code CLI reported an error: {}",
                redact(&message)
            )),
            TurnError::Run(e) => e.into(),
            TurnError::Session(e) => e.into(),
            TurnError::BudgetSpent => ApiError::RateLimited {
                message: e.to_string(),
                retry_after: None,
                limit: None,
            },
        }
    }
}

impl IntoResponse for ApiError {
    fn into_response(self) -> Response {
        self.into_response_in(Dialect::Anthropic)
    }
}

impl ApiError {
    /// The response in `dialect`'s shape: the status, a log line, and for rate limits the
    /// retry headers, whatever the dialect.
    pub fn into_response_in(self, dialect: Dialect) -> Response {
        let status = self.status();
        if status.is_server_error() {
            tracing::warn!(status = status.as_u16(), error = %redact(&self.to_string()), "request failed");
        } else {
            tracing::info!(status = status.as_u16(), error = %redact(&self.to_string()), "request refused");
        }
        let mut response = (status, Json(self.body_in(dialect))).into_response();
        if let ApiError::RateLimited {
            retry_after, limit, ..
        } = self
        {
            let headers = response.headers_mut();
            let mut set = |name: &'static str, value: String| {
                if let Ok(v) = HeaderValue::from_str(&value) {
                    headers.insert(name, v);
                }
            };
            if let Some(secs) = retry_after {
                set("retry-after", secs.to_string());
            }
            if let Some(limit) = limit {
                set("anthropic-ratelimit-requests-limit", limit.to_string());
                set("anthropic-ratelimit-requests-remaining", "0".into());
                let reset_ms = crate::clock::now_ms() + retry_after.unwrap_or(0) * 1000;
                set(
                    "anthropic-ratelimit-requests-reset",
                    crate::clock::iso8601(reset_ms as i64),
                );
            }
        }
        response
    }
}

/// A body that could not be read (too large, or the client stalled or left), in Anthropic's
/// error shape rather than axum's plain-text rejection.
impl From<axum::extract::rejection::BytesRejection> for ApiError {
    fn from(e: axum::extract::rejection::BytesRejection) -> Self {
        if e.status() == StatusCode::PAYLOAD_TOO_LARGE {
            ApiError::TooLarge("request body too large".into())
        } else {
            ApiError::InvalidRequest(format!("could not read the request body: {e}"))
        }
    }
}

/// A malformed JSON body, in Anthropic's error shape rather than axum's plain-text rejection.
impl From<axum::extract::rejection::JsonRejection> for ApiError {
    fn from(e: axum::extract::rejection::JsonRejection) -> Self {
        use axum::extract::rejection::JsonRejection as J;
        match e {
            J::BytesRejection(b) => b.into(),
            other => {
                ApiError::InvalidRequest(format!("invalid request body: {}", other.body_text()))
            }
        }
    }
}

/// What a client may read of an error: no credential, and no address internal to the
/// gateway (the CLI names its upstream, which is the gateway's proxy at a loopback address).
pub fn client_facing(message: &str) -> String {
    let mut text = redact(message);
    const HINT: &str = " If it persists, check your inference gateway (";
    while let Some(start) = text.find(HINT) {
        let end = text[start + HINT.len()..]
            .find(')')
            .map_or(text.len(), |i| start + HINT.len() + i + 1);
        let end = if text[end..].starts_with('.') {
            end + 1
        } else {
            end
        };
        text.replace_range(start..end, "");
    }
    for internal in [
        format!("http://127.0.0.1:{}", crate::sandbox::net::UPSTREAM_PORT),
        format!("127.0.0.1:{}", crate::sandbox::net::UPSTREAM_PORT),
    ] {
        text = text.replace(&internal, "the upstream");
    }
    text
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn upstream_statuses_map_to_anthropic_error_types() {
        let cases = [
            (401, 401, "authentication_error"),
            (429, 429, "rate_limit_error"),
            (529, 529, "overloaded_error"),
            (500, 502, "api_error"),
            (403, 403, "permission_error"),
        ];
        for (upstream, status, kind) in cases {
            let e = ApiError::from_upstream(upstream, "x");
            assert_eq!(e.status().as_u16(), status);
            assert_eq!(e.error_type(), kind);
        }
    }

    #[test]
    fn error_bodies_never_carry_credentials() {
        let e = ApiError::from_upstream(401, "bad token sk-ant-oat01-secret");
        assert!(!e.body().to_string().contains("secret"));
    }

    #[test]
    fn timeouts_are_504() {
        assert_eq!(ApiError::from(RunError::Timeout).status().as_u16(), 504);
    }
}
