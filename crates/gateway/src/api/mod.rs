//! The HTTP API: one module per route family. Handlers translate between wire types and the
//! gateway's internals; failures go through [`crate::error::ApiError`].

pub mod anthropic;
pub mod client_tools;
pub mod docs;
pub mod health;
pub mod mcp_tools;
pub mod models;
pub mod openai;
pub mod output_schema;
pub mod reply;
pub mod security;
pub mod sessions;
pub mod sse;
pub mod usage;

use crate::error::ApiError;

pub async fn not_found(uri: axum::http::Uri) -> ApiError {
    ApiError::NotFound(format!("no route for {}", uri.path()))
}

/// The gateway's extension fields of a request body, the same in every dialect.
#[derive(Debug, Default, serde::Deserialize, utoipa::ToSchema)]
pub struct TurnExtensions {
    /// MCP servers for this request, `{name: config}` (`X-MCP-Config` entries win).
    #[serde(default)]
    #[schema(value_type = Option<Object>)]
    pub mcp_servers: Option<serde_json::Value>,
    /// The session to continue (`X-Session-ID` wins).
    #[serde(default)]
    pub session_id: Option<String>,
    /// A stricter security level (`X-Security-Level` wins).
    #[serde(default)]
    pub security_level: Option<String>,
    /// A lean run (`true`): none of the CLI's own tools (MCP servers and client tools are still
    /// offered), and the request's `system`, or none, in place of the CLI's agent prompt. The
    /// default is the gateway's `--lean-by-default`.
    #[serde(default)]
    pub lean: Option<bool>,
}

/// The sampling settings, thinking and stop sequences of a request, in either dialect: set on
/// each of its run's model calls by the upstream proxy, since the CLI has no flag for them (its
/// own thinking setting gives way to `adaptive` on models that have it). A request that does
/// not ask for thinking gets none: the runner turns the CLI's own off.
#[derive(Debug, Default)]
pub struct Sampling<'a> {
    pub temperature: Option<f64>,
    pub top_p: Option<f64>,
    pub top_k: Option<u32>,
    pub stop_sequences: &'a [String],
    pub thinking_budget: Option<u32>,
}

impl Sampling<'_> {
    /// The fields to set, or a 400 naming the one out of range.
    pub fn call_settings(&self) -> Result<crate::sandbox::masking::CallSettings, ApiError> {
        let mut call = crate::sandbox::masking::CallSettings::new();
        for (name, value) in [("temperature", self.temperature), ("top_p", self.top_p)] {
            if let Some(v) = value {
                if !(0.0..=1.0).contains(&v) {
                    return Err(ApiError::InvalidRequest(format!(
                        "{name}: must be between 0 and 1"
                    )));
                }
                call.insert(name.into(), serde_json::json!(v));
            }
        }
        if let Some(k) = self.top_k {
            call.insert("top_k".into(), serde_json::json!(k));
        }
        for (i, stop) in self.stop_sequences.iter().enumerate() {
            if stop.trim().is_empty() {
                return Err(ApiError::InvalidRequest(format!(
                    "stop_sequences.{i}: must contain a non-whitespace character"
                )));
            }
        }
        if let Some(budget) = self.thinking_budget {
            call.insert(
                "thinking".into(),
                serde_json::json!({"type": "enabled", "budget_tokens": budget}),
            );
        }
        if !self.stop_sequences.is_empty() {
            call.insert(
                "stop_sequences".into(),
                serde_json::json!(self.stop_sequences),
            );
        }
        Ok(call)
    }
}

/// The smallest thinking budget the API accepts.
const MIN_THINKING_BUDGET: u32 = 1024;

/// Anthropic's `thinking` as a budget: `{"type": "enabled", "budget_tokens": n}` with
/// 1024 <= n < max_tokens; `disabled` (or another type the CLI cannot set) is none.
pub fn thinking_budget(
    thinking: Option<&serde_json::Value>,
    max_tokens: Option<u32>,
) -> Result<Option<u32>, ApiError> {
    let Some(thinking) = thinking else {
        return Ok(None);
    };
    if thinking.get("type").and_then(serde_json::Value::as_str) != Some("enabled") {
        return Ok(None);
    }
    let budget = thinking
        .get("budget_tokens")
        .and_then(serde_json::Value::as_u64)
        .and_then(|n| u32::try_from(n).ok())
        .ok_or_else(|| {
            ApiError::InvalidRequest("thinking.budget_tokens: an integer is required".into())
        })?;
    if budget < MIN_THINKING_BUDGET {
        return Err(ApiError::InvalidRequest(format!(
            "thinking.budget_tokens: must be at least {MIN_THINKING_BUDGET}"
        )));
    }
    if max_tokens.is_some_and(|max| budget >= max) {
        return Err(ApiError::InvalidRequest(
            "thinking.budget_tokens: must be less than max_tokens".into(),
        ));
    }
    Ok(Some(budget))
}

/// OpenAI's `reasoning_effort` as a thinking budget (`minimal` is none).
pub fn effort_budget(effort: Option<&str>) -> Result<Option<u32>, ApiError> {
    match effort {
        None | Some("minimal" | "none") => Ok(None),
        Some("low") => Ok(Some(2048)),
        Some("medium") => Ok(Some(8192)),
        Some("high") => Ok(Some(24576)),
        Some(other) => Err(ApiError::InvalidRequest(format!(
            "reasoning_effort: {other:?} is not one of minimal, low, medium, high"
        ))),
    }
}

/// What every conversation request says besides its messages, in whichever dialect.
pub struct TurnContext {
    pub tenant: crate::tenant::identity::TenantId,
    pub session: Option<crate::sessions::ClientSessionId>,
    pub level: crate::sandbox::SecurityLevel,
    pub mcp: std::collections::BTreeMap<String, crate::mcp::ServerConfig>,
    /// As asked (or the operator's `--lean-by-default`); `None`: the gateway chooses.
    pub lean: Option<bool>,
}

impl TurnContext {
    /// Reads the session, level and MCP servers (headers win over the body's fields; a
    /// dialect may offer a `session_fallback`, as OpenAI's `user`) and resolves the tenant,
    /// refusing bad input before anything runs.
    pub async fn resolve(
        state: &crate::app::AppState,
        headers: &axum::http::HeaderMap,
        credential: &crate::tenant::credential::Credential,
        ext: &TurnExtensions,
        session_fallback: Option<&str>,
    ) -> Result<Self, ApiError> {
        let session = requested_session(headers, ext.session_id.as_deref().or(session_fallback))?;
        let level = state
            .levels
            .resolve(requested_level(headers, ext.security_level.as_deref()))?;
        let mcp = requested_mcp(headers, ext.mcp_servers.as_ref())?;
        let tenant = state.identity.resolve(credential).await?;
        Ok(Self {
            tenant,
            session,
            level,
            mcp,
            lean: ext.lean.or(state.config.lean_by_default.then_some(true)),
        })
    }
}

/// Returns the session id in `x-session-id`.
pub fn with_session_header(
    mut response: axum::response::Response,
    session: &crate::sessions::ClientSessionId,
) -> axum::response::Response {
    if let Ok(v) = axum::http::HeaderValue::from_str(session.as_str()) {
        response.headers_mut().insert("x-session-id", v);
    }
    response
}

/// Refuses a request with too many header lines or bytes, in its API's error shape.
pub async fn limit_headers(
    request: axum::extract::Request,
    next: axum::middleware::Next,
) -> axum::response::Response {
    let headers = request.headers();
    let bytes: usize = headers
        .iter()
        .map(|(name, value)| name.as_str().len() + value.len() + 4)
        .sum();
    if headers.len() > crate::serve::MAX_HEADERS || bytes > crate::serve::MAX_HEADER_BYTES {
        let refusal = ApiError::HeadersTooLarge(format!(
            "request headers: at most {} lines and {} bytes",
            crate::serve::MAX_HEADERS,
            crate::serve::MAX_HEADER_BYTES
        ));
        return in_dialect_of(request.uri().path(), refusal);
    }
    next.run(request).await
}

/// A refusal in the error shape of the API `path` belongs to, so its SDK raises its own
/// exception.
fn in_dialect_of(path: &str, refusal: ApiError) -> axum::response::Response {
    use axum::response::IntoResponse;
    if path.starts_with("/v1/chat/") {
        openai::chat::openai_error_response(refusal)
    } else {
        refusal.into_response()
    }
}

/// Applies the per-IP rate limit to everything but the probes a platform sends.
pub async fn limit_client_ip(
    axum::extract::State(state): axum::extract::State<crate::app::SharedState>,
    request: axum::extract::Request,
    next: axum::middleware::Next,
) -> axum::response::Response {
    let path = request.uri().path();
    // Platform probes only; `/metrics` counts like every other route.
    let exempt = matches!(path, "/health" | "/ready");
    let peer = request
        .extensions()
        .get::<axum::extract::ConnectInfo<std::net::SocketAddr>>()
        .map(|c| c.0.ip());
    if let (false, Some(peer)) = (exempt, peer) {
        let forwarded = request
            .headers()
            .get("x-forwarded-for")
            .and_then(|v| v.to_str().ok());
        let ip = crate::admission::client_ip(peer, forwarded, &state.config.trusted_proxies);
        if let Err(limited) = state.rate.check_ip(ip).await {
            return in_dialect_of(path, ApiError::from(limited));
        }
    }
    next.run(request).await
}

/// With `--access-keys-file` or `--access-jwks-url`, every API route (`/v1/…`, the operator's
/// own aside) needs a gateway key in `X-Gateway-Key`, or there a JWT of the operator's
/// identity provider: a missing or unknown one is 401 in the dialect's error shape, before the
/// body is read, a limit counted or anything spawned. What admitted the request
/// ([`crate::access::Grant`]) goes with it to the handlers (its usage and budgets), and its
/// name (never the key or token) into the request's log line, audit line and a metric.
pub async fn require_access_key(
    axum::extract::State(state): axum::extract::State<crate::app::SharedState>,
    mut request: axum::extract::Request,
    next: axum::middleware::Next,
) -> axum::response::Response {
    let path = request.uri().path();
    let guarded =
        path.starts_with("/v1/") && path != "/v1/security" && !path.starts_with("/v1/admin/");
    let on = state.access.is_some() || state.access_jwt.is_some();
    if !(guarded && on) {
        return next.run(request).await;
    }
    let presented = request
        .headers()
        .get(crate::access::HEADER)
        .and_then(|v| v.to_str().ok())
        .map(str::trim);
    let unknown = || {
        ApiError::Authentication(
            "this gateway needs a gateway key: X-Gateway-Key (ask its operator)".into(),
        )
    };
    let grant = match (presented, &state.access_jwt) {
        (Some(token), Some(jwt)) if crate::access::jwt::looks_like_jwt(token) => {
            match jwt.verify(token).await {
                Ok(subject) => Ok(crate::access::Grant {
                    name: crate::access::jwt::grant_name(&subject),
                    label: crate::access::JWT_LABEL.into(),
                    budgets: crate::usage::Budgets {
                        daily_usd: state.config.access_jwt_daily_budget_usd,
                        monthly_usd: state.config.access_jwt_monthly_budget_usd,
                    },
                }),
                Err(e @ crate::access::jwt::JwtError::Unavailable(_)) => {
                    tracing::warn!(error = %e, "a JWT could not be checked");
                    Err(ApiError::Unavailable(
                        "the gateway cannot check its identity provider's tokens just now".into(),
                    ))
                }
                Err(e) => Err(ApiError::Authentication(e.to_string())),
            }
        }
        (Some(key), _) => state
            .access
            .as_ref()
            .and_then(|keys| keys.check(key))
            .ok_or_else(unknown),
        (None, _) => Err(unknown()),
    };
    match grant {
        Ok(grant) => {
            tracing::Span::current().record("access_key", grant.name.as_str());
            if let Some(audit) = request
                .extensions()
                .get::<crate::telemetry::audit::AuditHandle>()
            {
                audit.update(|r| r.access_key = Some(grant.name.clone()));
            }
            // Without an admin token `/metrics` is open to whoever reaches the port, and which
            // keys exist is the operator's to know: the label then only says a key was used.
            let label = if state.config.admin_token.is_some() || grant.is_jwt() {
                grant.label.clone()
            } else {
                "key".to_owned()
            };
            metrics::counter!("gateway_requests_by_access_key_total", "access_key" => label)
                .increment(1);
            request.extensions_mut().insert(grant);
            next.run(request).await
        }
        Err(refusal) => in_dialect_of(request.uri().path(), refusal),
    }
}

/// Guards the operator's routes (`/metrics`, `/v1/security`) with `--admin-token`, when set.
pub async fn require_admin(
    axum::extract::State(state): axum::extract::State<crate::app::SharedState>,
    request: axum::extract::Request,
    next: axum::middleware::Next,
) -> axum::response::Response {
    use axum::response::IntoResponse;
    if let Some(expected) = &state.config.admin_token {
        let headers = request.headers();
        let given = crate::tenant::credential::bearer(headers)
            .or_else(|| headers.get("x-admin-token").and_then(|v| v.to_str().ok()));
        // Compared as keyed hashes, so the time taken says nothing about the token.
        let hash = |t: &str| {
            state
                .install_key
                .keyed_hash("admin-token", t.trim().as_bytes())
        };
        if given.map(hash) != Some(hash(secrecy::ExposeSecret::expose_secret(expected))) {
            return ApiError::Authentication(
                "this route needs the operator's token: `Authorization: Bearer <admin token>`"
                    .into(),
            )
            .into_response();
        }
    }
    next.run(request).await
}

/// The tenant of a request that carries its credential in a header (the non-message routes).
pub async fn authenticate(
    state: &crate::app::AppState,
    headers: &axum::http::HeaderMap,
) -> Result<crate::tenant::identity::TenantId, ApiError> {
    let credential = crate::tenant::credential::Credential::from_request(headers, None)?;
    Ok(state.identity.resolve(&credential).await?)
}

/// Model names are passed to the CLI; keep them to the characters real ids and aliases use.
pub fn validate_model(model: &str) -> Result<(), ApiError> {
    let ok = !model.is_empty()
        && model.len() <= 128
        && model.bytes().all(|b| {
            b.is_ascii_alphanumeric() || matches!(b, b'-' | b'_' | b'.' | b':' | b'[' | b']')
        });
    if ok {
        Ok(())
    } else {
        Err(ApiError::InvalidRequest(
            "model: expected a model alias (opus, sonnet, haiku) or a model id such as claude-sonnet-4-5".into(),
        ))
    }
}

/// The session a request names: the `x-session-id` header, else the body's field.
pub fn requested_session(
    headers: &axum::http::HeaderMap,
    body: Option<&str>,
) -> Result<Option<crate::sessions::ClientSessionId>, ApiError> {
    let header = match headers.get("x-session-id") {
        Some(v) => Some(
            v.to_str()
                .map_err(|_| crate::sessions::SessionError::InvalidId)?,
        ),
        None => None,
    };
    Ok(header
        .or(body)
        .map(crate::sessions::ClientSessionId::parse)
        .transpose()?)
}

/// The MCP servers a request names: the body's `mcp_servers` and the `X-MCP-Config` header
/// (whose entries win for a name in both).
pub fn requested_mcp(
    headers: &axum::http::HeaderMap,
    body: Option<&serde_json::Value>,
) -> Result<std::collections::BTreeMap<String, crate::mcp::ServerConfig>, ApiError> {
    let mut servers = match body {
        Some(v) if !v.is_null() => crate::mcp::config::parse(v)?,
        _ => Default::default(),
    };
    if let Some(h) = headers.get("x-mcp-config") {
        let text = h.to_str().map_err(|_| {
            ApiError::InvalidRequest("MCP config: X-MCP-Config is not valid text".into())
        })?;
        servers.extend(crate::mcp::config::parse_text(text)?);
    }
    Ok(servers)
}

/// The security level a request asks for: the `x-security-level` header, else the body's field.
pub fn requested_level<'a>(
    headers: &'a axum::http::HeaderMap,
    body: Option<&'a str>,
) -> Option<&'a str> {
    headers
        .get("x-security-level")
        .map(|v| v.to_str().unwrap_or("(not text)"))
        .or(body)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn model_names_are_restricted_to_id_characters() {
        assert!(validate_model("claude-sonnet-4-5-20250929").is_ok());
        assert!(validate_model("sonnet[1m]").is_ok());
        assert!(validate_model("").is_err());
        assert!(validate_model("sonnet --dangerously-skip-permissions").is_err());
        assert!(validate_model("a/b").is_err());
    }
}
