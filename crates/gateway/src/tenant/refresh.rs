//! Refreshing a tenant's expired OAuth access token with its refresh token.
//!
//! Refresh tokens rotate: each works once. Two concurrent requests carrying the same refresh
//! token must not both spend it, or the second fails and the login is lost. So refreshes are
//! serialised per refresh token (a keyed hash of it, which names one tenant's login): requests
//! that arrive while a refresh is in flight wait for it and share its outcome. The outcome is
//! handed only to them: a request that presents the old refresh token after the refresh has
//! completed gets nothing from it (the upstream refuses the spent token), so a stolen old
//! refresh token cannot be replayed for the new credentials. The rotated credentials go back to
//! the client in the response, because a rotated refresh token the client never sees is a lost
//! login.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use secrecy::{ExposeSecret, SecretString};
use serde::Serialize;
use serde_json::Value;

use super::credential::OAuthCredentials;
use super::identity::InstallKey;

/// Refresh when the access token has less than this left.
const EXPIRY_MARGIN: Duration = Duration::from_secs(60);

/// Rotated credentials, as handed back to the client.
#[derive(Clone, Serialize)]
pub struct RefreshedCredentials {
    #[serde(serialize_with = "expose")]
    pub access_token: SecretString,
    #[serde(serialize_with = "expose")]
    pub refresh_token: SecretString,
    /// Milliseconds since the epoch.
    pub expires_at: u64,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub scopes: Option<Vec<String>>,
}

impl std::fmt::Debug for RefreshedCredentials {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("RefreshedCredentials")
            .field("expires_at", &self.expires_at)
            .finish_non_exhaustive()
    }
}

fn expose<S: serde::Serializer>(secret: &SecretString, s: S) -> Result<S::Ok, S::Error> {
    s.serialize_str(secret.expose_secret())
}

#[derive(Debug, Clone, thiserror::Error)]
pub enum RefreshError {
    #[error("the refresh token was rejected; sign in again")]
    Rejected,
    #[error("the token refresh failed: {0}")]
    Unavailable(String),
}

/// One refresh in flight, shared by every request that arrived while it ran.
type Flight = Arc<tokio::sync::OnceCell<Result<RefreshedCredentials, RefreshError>>>;

pub struct Refresher {
    token_url: String,
    client_id: String,
    client: reqwest::Client,
    key: Arc<InstallKey>,
    flights: Mutex<HashMap<String, Flight>>,
}

use crate::clock::now_ms;

/// `expires_at` in milliseconds, whether the client sent seconds or milliseconds.
fn expires_at_ms(value: &Value) -> Option<u64> {
    let n = value
        .as_u64()
        .or_else(|| value.as_str().and_then(|s| s.parse().ok()))?;
    // Seconds since the epoch stay below 10^11 until the year 5138.
    Some(if n < 100_000_000_000 { n * 1000 } else { n })
}

impl Refresher {
    pub fn new(token_url: String, client_id: String, key: Arc<InstallKey>) -> Self {
        let client = super::upstream_client(Duration::from_secs(15));
        Self {
            token_url,
            client_id,
            client,
            key,
            flights: Mutex::new(HashMap::new()),
        }
    }

    /// New credentials when `creds` hold an access token that expired (or is about to) and a
    /// refresh token; `None` when the access token can be used as it is.
    pub async fn refresh_if_needed(
        &self,
        creds: &OAuthCredentials,
    ) -> Result<Option<RefreshedCredentials>, RefreshError> {
        let Some(refresh_token) = creds.refresh_token.as_ref() else {
            return Ok(None);
        };
        let expiring = match creds.expires_at.as_ref().and_then(expires_at_ms) {
            Some(at) => at <= now_ms() + EXPIRY_MARGIN.as_millis() as u64,
            // Without an access token there is nothing to use but the refresh token.
            None => creds.access_token.is_none(),
        };
        if !expiring {
            return Ok(None);
        }
        let slot_key = self
            .key
            .keyed_hash("refresh-token", refresh_token.expose_secret().as_bytes());
        let flight = {
            let mut flights = self.flights.lock().unwrap_or_else(|e| e.into_inner());
            // A completed flight is history, not something to join.
            flights.retain(|_, f| !f.initialized());
            flights.entry(slot_key.clone()).or_default().clone()
        };
        let outcome = flight
            .get_or_init(|| async {
                let outcome = self.exchange(refresh_token, creds.scopes.as_ref()).await;
                // Nobody joins once the outcome is known; only the waiters see it.
                let mut flights = self.flights.lock().unwrap_or_else(|e| e.into_inner());
                flights.remove(&slot_key);
                outcome
            })
            .await;
        outcome.clone().map(Some)
    }

    async fn exchange(
        &self,
        refresh_token: &SecretString,
        scopes: Option<&Value>,
    ) -> Result<RefreshedCredentials, RefreshError> {
        let response = self
            .client
            .post(&self.token_url)
            .json(&serde_json::json!({
                "grant_type": "refresh_token",
                "refresh_token": refresh_token.expose_secret(),
                "client_id": self.client_id,
            }))
            .send()
            .await
            .map_err(|e| RefreshError::Unavailable(e.without_url().to_string()))?;
        let status = response.status().as_u16();
        if matches!(status, 400 | 401 | 403) {
            return Err(RefreshError::Rejected);
        }
        if status != 200 {
            return Err(RefreshError::Unavailable(format!(
                "token endpoint answered {status}"
            )));
        }
        let body: Value = response
            .json()
            .await
            .map_err(|e| RefreshError::Unavailable(format!("unreadable token response: {e}")))?;
        let text = |k: &str| body.get(k).and_then(Value::as_str).map(str::to_owned);
        let (Some(access), Some(refresh)) = (text("access_token"), text("refresh_token")) else {
            return Err(RefreshError::Unavailable(
                "the token response lacks access_token or refresh_token".into(),
            ));
        };
        let expires_in = body
            .get("expires_in")
            .and_then(Value::as_u64)
            .unwrap_or(3600);
        let scopes = text("scope")
            .map(|s| s.split_whitespace().map(str::to_owned).collect())
            .or_else(|| {
                scopes.and_then(Value::as_array).map(|a| {
                    a.iter()
                        .filter_map(|v| v.as_str().map(str::to_owned))
                        .collect()
                })
            });
        Ok(RefreshedCredentials {
            access_token: SecretString::from(access),
            refresh_token: SecretString::from(refresh),
            expires_at: now_ms() + expires_in * 1000,
            scopes,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn expiry_is_read_in_seconds_or_milliseconds() {
        assert_eq!(
            expires_at_ms(&serde_json::json!(1_700_000_000)),
            Some(1_700_000_000_000)
        );
        assert_eq!(
            expires_at_ms(&serde_json::json!(1_700_000_000_000u64)),
            Some(1_700_000_000_000)
        );
        assert_eq!(
            expires_at_ms(&serde_json::json!("1700000000")),
            Some(1_700_000_000_000)
        );
        assert_eq!(expires_at_ms(&serde_json::json!(null)), None);
    }

    #[test]
    fn debug_output_hides_the_tokens() {
        let c = RefreshedCredentials {
            access_token: SecretString::from("sk-ant-oat01-secret"),
            refresh_token: SecretString::from("sk-ant-ort01-secret"),
            expires_at: 1,
            scopes: None,
        };
        assert!(!format!("{c:?}").contains("secret"));
    }
}
