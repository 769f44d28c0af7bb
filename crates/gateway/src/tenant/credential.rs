//! A tenant's credential: where a request carries it, what kinds are accepted, and how it is
//! kept out of logs (wrapped in `secrecy`, zeroed on drop, never formatted).

use axum::http::HeaderMap;
use secrecy::{ExposeSecret, SecretString};
use serde::Deserialize;

/// The two kinds of credential the CLI can use on a tenant's behalf.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum CredentialKind {
    /// A Claude subscription OAuth token, `sk-ant-oat01-…`.
    OAuthToken,
    /// An Anthropic API key, `sk-ant-api03-…`.
    ApiKey,
}

impl CredentialKind {
    pub fn as_str(self) -> &'static str {
        match self {
            CredentialKind::OAuthToken => "oauth",
            CredentialKind::ApiKey => "api_key",
        }
    }
}

#[derive(Clone)]
pub struct Credential {
    kind: CredentialKind,
    secret: SecretString,
}

impl std::fmt::Debug for Credential {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Credential")
            .field("kind", &self.kind)
            .field("secret", &"[redacted]")
            .finish()
    }
}

/// Why a request carries no usable credential. Messages never include the credential itself.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum CredentialError {
    #[error("no credential: send `Authorization: Bearer <token>`, `x-api-key: <key>` or a body `oauth_credentials` object")]
    Missing,
    #[error("the credential is neither a Claude OAuth token (sk-ant-oat01-…) nor an Anthropic API key (sk-ant-api03-…)")]
    Unrecognised,
}

/// The `oauth_credentials` body object of the original spec.
#[derive(Deserialize, Default, utoipa::ToSchema)]
pub struct OAuthCredentials {
    #[schema(value_type = Option<String>)]
    pub access_token: Option<SecretString>,
    #[serde(default)]
    #[schema(value_type = Option<String>)]
    pub refresh_token: Option<SecretString>,
    /// Milliseconds or seconds since the epoch, as clients send either.
    #[serde(default)]
    #[schema(value_type = Option<u64>)]
    pub expires_at: Option<serde_json::Value>,
    #[serde(default)]
    #[schema(value_type = Option<Vec<String>>)]
    pub scopes: Option<serde_json::Value>,
    #[serde(default)]
    pub subscription_type: Option<String>,
}

impl std::fmt::Debug for OAuthCredentials {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("OAuthCredentials")
            .field("subscription_type", &self.subscription_type)
            .finish_non_exhaustive()
    }
}

/// The token of `Authorization: Bearer …` (the scheme in either case), trimmed.
pub fn bearer(headers: &HeaderMap) -> Option<&str> {
    headers
        .get(axum::http::header::AUTHORIZATION)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| {
            v.strip_prefix("Bearer ")
                .or_else(|| v.strip_prefix("bearer "))
        })
        .map(str::trim)
}

/// What a request presents as its credential: the bearer token, else `x-api-key`, trimmed.
pub fn presented(headers: &HeaderMap) -> Option<&str> {
    bearer(headers).or_else(|| {
        headers
            .get("x-api-key")
            .and_then(|v| v.to_str().ok())
            .map(str::trim)
    })
}

const OAUTH_PREFIX: &str = "sk-ant-oat01-";
const API_KEY_PREFIX: &str = "sk-ant-api03-";
/// Real credentials are ~100 characters; this bounds what a request can make us hold.
const MAX_LEN: usize = 512;

impl Credential {
    /// Classifies a credential by its prefix; anything else is refused.
    pub fn parse(text: &str) -> Result<Self, CredentialError> {
        let text = text.trim();
        let kind = if text.starts_with(OAUTH_PREFIX) {
            CredentialKind::OAuthToken
        } else if text.starts_with(API_KEY_PREFIX) {
            CredentialKind::ApiKey
        } else {
            return Err(CredentialError::Unrecognised);
        };
        let body_ok = text.len() > OAUTH_PREFIX.len()
            && text.len() <= MAX_LEN
            && text
                .bytes()
                .all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'_' || b == b'.');
        if !body_ok {
            return Err(CredentialError::Unrecognised);
        }
        Ok(Self {
            kind,
            secret: SecretString::from(text.to_owned()),
        })
    }

    /// Finds the request's credential: the body's `oauth_credentials` first (it is the most
    /// specific), then `Authorization: Bearer`, then `x-api-key`.
    pub fn from_request(
        headers: &HeaderMap,
        body: Option<&OAuthCredentials>,
    ) -> Result<Self, CredentialError> {
        if let Some(token) = body.and_then(|o| o.access_token.as_ref()) {
            return Self::parse(token.expose_secret());
        }
        match presented(headers) {
            Some(text) if !text.is_empty() => Self::parse(text),
            _ => Err(CredentialError::Missing),
        }
    }

    pub fn kind(&self) -> CredentialKind {
        self.kind
    }

    pub fn secret(&self) -> &SecretString {
        &self.secret
    }

    /// `request`, a call of the gateway's own to the API, authenticated with this credential:
    /// `x-api-key`, or a bearer token with the beta header a subscription token needs.
    pub fn authorize(&self, request: reqwest::RequestBuilder) -> reqwest::RequestBuilder {
        let secret = self.secret.expose_secret();
        match self.kind {
            CredentialKind::ApiKey => request.header("x-api-key", secret),
            CredentialKind::OAuthToken => request
                .bearer_auth(secret)
                .header("anthropic-beta", "oauth-2025-04-20"),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use axum::http::HeaderValue;

    #[test]
    fn oauth_tokens_and_api_keys_are_told_apart_by_prefix() {
        assert_eq!(
            Credential::parse("sk-ant-oat01-abc").map(|c| c.kind()),
            Ok(CredentialKind::OAuthToken)
        );
        assert_eq!(
            Credential::parse("sk-ant-api03-abc").map(|c| c.kind()),
            Ok(CredentialKind::ApiKey)
        );
    }

    #[test]
    fn anything_else_is_refused() {
        for bad in [
            "",
            "sk-ant-oat01-",
            "sk-ant-ort01-refresh",
            "sk-proj-openai",
            "sk-ant-oat01-has space",
            "sk-ant-oat01-new\nline",
        ] {
            assert_eq!(
                Credential::parse(bad).map(|c| c.kind()),
                Err(CredentialError::Unrecognised),
                "{bad:?}"
            );
        }
        let long = format!("sk-ant-oat01-{}", "a".repeat(600));
        assert!(Credential::parse(&long).is_err());
    }

    #[test]
    fn sdk_header_forms_are_both_read() {
        let mut bearer = HeaderMap::new();
        bearer.insert(
            "authorization",
            HeaderValue::from_static("Bearer sk-ant-oat01-x"),
        );
        assert!(Credential::from_request(&bearer, None).is_ok());
        let mut key = HeaderMap::new();
        key.insert("x-api-key", HeaderValue::from_static("sk-ant-api03-x"));
        assert_eq!(
            Credential::from_request(&key, None).map(|c| c.kind()),
            Ok(CredentialKind::ApiKey)
        );
        assert_eq!(
            Credential::from_request(&HeaderMap::new(), None).map(|c| c.kind()),
            Err(CredentialError::Missing)
        );
    }

    #[test]
    fn debug_output_never_shows_the_secret() {
        let c = Credential::parse("sk-ant-oat01-topsecret").expect("valid");
        assert!(!format!("{c:?}").contains("topsecret"));
    }
}
