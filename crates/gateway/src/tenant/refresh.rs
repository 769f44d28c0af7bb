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
//!
//! With instances sharing a Redis, the flight is shared too: the first instance takes a lock
//! (`SET NX` with a lease) and exchanges the token; instances whose requests arrive meanwhile
//! wait for its outcome, which it leaves in Redis for a few seconds sealed under a key derived
//! from the old refresh token (so only a holder of that token can open it, and Redis never
//! holds a usable credential). A request that arrives after the lock is released exchanges the
//! spent token itself and is refused, as on one instance.

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
    /// The shared flight could not be coordinated (Redis away).
    #[error("the token refresh could not be coordinated: {0}")]
    Shared(String),
}

/// How long one instance may hold the shared refresh lock (the exchange's own timeout is 15 s).
const LOCK_LEASE: Duration = Duration::from_secs(20);
/// How long the sealed outcome stays for the instances waiting on it.
const OUTCOME_TTL: Duration = Duration::from_secs(15);

/// One refresh in flight, shared by every request that arrived while it ran.
type Flight = Arc<tokio::sync::OnceCell<Result<RefreshedCredentials, RefreshError>>>;

pub struct Refresher {
    token_url: String,
    client_id: String,
    client: reqwest::Client,
    key: Arc<InstallKey>,
    flights: Mutex<HashMap<String, Flight>>,
    shared: Option<crate::shared::Redis>,
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
            shared: None,
        }
    }

    /// Shares the flights with every instance on `redis`.
    pub fn with_shared(mut self, redis: Option<crate::shared::Redis>) -> Self {
        self.shared = redis;
        self
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
                let outcome = match &self.shared {
                    Some(redis) => {
                        self.shared_flight(redis, &slot_key, refresh_token, creds.scopes.as_ref())
                            .await
                    }
                    None => self.exchange(refresh_token, creds.scopes.as_ref()).await,
                };
                // Nobody joins once the outcome is known; only the waiters see it.
                let mut flights = self.flights.lock().unwrap_or_else(|e| e.into_inner());
                flights.remove(&slot_key);
                outcome
            })
            .await;
        outcome.clone().map(Some)
    }

    /// One flight across instances (see the module's documentation).
    async fn shared_flight(
        &self,
        redis: &crate::shared::Redis,
        slot: &str,
        refresh_token: &SecretString,
        scopes: Option<&Value>,
    ) -> Result<RefreshedCredentials, RefreshError> {
        let shared = |e: crate::shared::SharedError| RefreshError::Shared(e.to_string());
        let lock = format!("{}refresh-lock:{slot}", redis.prefix);
        let sealed_at = format!("{}refreshed:{slot}", redis.prefix);
        let seal = Seal::new(&self.key, refresh_token);
        let lock_key = lock.clone();
        let won: Option<String> = redis
            .run(|mut c| async move {
                redis::cmd("SET")
                    .arg(&lock_key)
                    .arg(1)
                    .arg("NX")
                    .arg("PX")
                    .arg(LOCK_LEASE.as_millis() as u64)
                    .query_async(&mut c)
                    .await
            })
            .await
            .map_err(shared)?;
        if won.is_some() {
            let outcome = self.exchange(refresh_token, scopes).await;
            let sealed = seal.seal(&outcome);
            let (lock_key, outcome_key) = (lock.clone(), sealed_at.clone());
            // The outcome is stored before the lock goes: whoever saw the lock finds it.
            let stored = redis
                .run(|mut c| async move {
                    redis::pipe()
                        .atomic()
                        .cmd("SET")
                        .arg(&outcome_key)
                        .arg(sealed)
                        .arg("PX")
                        .arg(OUTCOME_TTL.as_millis() as u64)
                        .ignore()
                        .cmd("DEL")
                        .arg(&lock_key)
                        .ignore()
                        .query_async::<()>(&mut c)
                        .await
                })
                .await;
            if let Err(e) = stored {
                // The token is spent: this client must still get what it was exchanged for.
                // The others waiting on it fail when the lock's lease ends.
                tracing::warn!(error = %e, "could not share a refresh outcome");
            }
            return outcome;
        }
        // Another instance is exchanging this very token: wait for its outcome (never take the
        // lock after it: the token is spent by then).
        let deadline = tokio::time::Instant::now() + LOCK_LEASE;
        loop {
            let (lock_key, outcome_key) = (lock.clone(), sealed_at.clone());
            let (stored, held): (Option<Vec<u8>>, bool) = redis
                .run(|mut c| async move {
                    redis::pipe()
                        .atomic()
                        .cmd("GET")
                        .arg(&outcome_key)
                        .cmd("EXISTS")
                        .arg(&lock_key)
                        .query_async(&mut c)
                        .await
                })
                .await
                .map_err(shared)?;
            if let Some(outcome) = stored.and_then(|bytes| seal.open(&bytes)) {
                return outcome;
            }
            if !held || tokio::time::Instant::now() >= deadline {
                return Err(RefreshError::Unavailable(
                    "another instance's refresh of this token ended without an outcome".into(),
                ));
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
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

/// Seals a flight's outcome under a key only a holder of the old refresh token can derive.
struct Seal {
    key: ring::aead::LessSafeKey,
}

#[derive(serde::Serialize, serde::Deserialize)]
enum Sealed {
    Refreshed {
        access_token: String,
        refresh_token: String,
        expires_at: u64,
        scopes: Option<Vec<String>>,
    },
    Rejected,
    Unavailable(String),
}

impl Seal {
    fn new(install_key: &InstallKey, refresh_token: &SecretString) -> Self {
        let derived = install_key.keyed_hash(
            "refresh-outcome-seal",
            refresh_token.expose_secret().as_bytes(),
        );
        let mut bytes = [0u8; 32];
        let _ = hex::decode_to_slice(&derived, &mut bytes);
        let unbound = ring::aead::UnboundKey::new(&ring::aead::CHACHA20_POLY1305, &bytes)
            .unwrap_or_else(|_| unreachable!("a 32-byte key fits ChaCha20-Poly1305"));
        Self {
            key: ring::aead::LessSafeKey::new(unbound),
        }
    }

    /// The nonce, then the ciphertext and its tag.
    fn seal(&self, outcome: &Result<RefreshedCredentials, RefreshError>) -> Vec<u8> {
        let plain = match outcome {
            Ok(c) => Sealed::Refreshed {
                access_token: c.access_token.expose_secret().to_owned(),
                refresh_token: c.refresh_token.expose_secret().to_owned(),
                expires_at: c.expires_at,
                scopes: c.scopes.clone(),
            },
            Err(RefreshError::Rejected) => Sealed::Rejected,
            Err(e) => Sealed::Unavailable(e.to_string()),
        };
        let mut nonce = [0u8; 12];
        rand::RngCore::fill_bytes(&mut rand::thread_rng(), &mut nonce);
        let mut data = serde_json::to_vec(&plain).unwrap_or_default();
        let sealed = self.key.seal_in_place_append_tag(
            ring::aead::Nonce::assume_unique_for_key(nonce),
            ring::aead::Aad::empty(),
            &mut data,
        );
        if sealed.is_err() {
            return Vec::new();
        }
        let mut out = nonce.to_vec();
        out.extend(data);
        out
    }

    fn open(&self, bytes: &[u8]) -> Option<Result<RefreshedCredentials, RefreshError>> {
        if bytes.len() < 12 {
            return None;
        }
        let (nonce, rest) = bytes.split_at(12);
        let nonce = ring::aead::Nonce::try_assume_unique_for_key(nonce).ok()?;
        let mut data = rest.to_vec();
        let plain = self
            .key
            .open_in_place(nonce, ring::aead::Aad::empty(), &mut data)
            .ok()?;
        Some(match serde_json::from_slice::<Sealed>(plain).ok()? {
            Sealed::Refreshed {
                access_token,
                refresh_token,
                expires_at,
                scopes,
            } => Ok(RefreshedCredentials {
                access_token: SecretString::from(access_token),
                refresh_token: SecretString::from(refresh_token),
                expires_at,
                scopes,
            }),
            Sealed::Rejected => Err(RefreshError::Rejected),
            Sealed::Unavailable(e) => Err(RefreshError::Unavailable(e)),
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_sealed_outcome_opens_only_with_the_same_refresh_token() {
        let key = InstallKey::from_bytes([7; 32]);
        let old = SecretString::from("sk-ant-ort01-old");
        let outcome = Ok(RefreshedCredentials {
            access_token: SecretString::from("sk-ant-oat01-new"),
            refresh_token: SecretString::from("sk-ant-ort01-new"),
            expires_at: 5,
            scopes: None,
        });
        let sealed = Seal::new(&key, &old).seal(&outcome);
        assert!(!String::from_utf8_lossy(&sealed).contains("sk-ant"));
        let opened = Seal::new(&key, &old).open(&sealed).expect("opens");
        assert_eq!(
            opened.expect("refreshed").access_token.expose_secret(),
            "sk-ant-oat01-new"
        );
        let other = SecretString::from("sk-ant-ort01-other");
        assert!(Seal::new(&key, &other).open(&sealed).is_none());
    }

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
