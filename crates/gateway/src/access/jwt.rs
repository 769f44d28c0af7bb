//! Access by a JWT of the operator's identity provider (`--access-jwks-url`,
//! `--access-jwt-audience`, `--access-jwt-issuer`), for teams that already have sign-in: the
//! token in `X-Gateway-Key` must be signed by a key the provider publishes, be meant for this
//! gateway (its audience), come from the provider (its issuer, when set) and be current.
//!
//! The provider's keys are fetched at start-up and kept; they are fetched again when older than
//! [`MAX_AGE`], and when a token names a key the gateway does not have (a rotation), at most
//! once per [`REFETCH_GAP`] so that made-up key ids cannot make the gateway hammer the
//! provider. A key's algorithm is the key's own (its `alg`, or what its type and curve allow),
//! never the token's say: an HMAC secret or `none` is never accepted.

use std::collections::HashMap;
use std::time::{Duration, Instant};

use jsonwebtoken::jwk::{AlgorithmParameters, EllipticCurve, Jwk, JwkSet};
use jsonwebtoken::{Algorithm, DecodingKey, Validation};

/// Keys older than this are fetched again before use.
pub const MAX_AGE: Duration = Duration::from_secs(600);
/// The least time between two fetches caused by unknown key ids.
pub const REFETCH_GAP: Duration = Duration::from_secs(30);
/// How long fetching the keys may take.
const FETCH_TIMEOUT: Duration = Duration::from_secs(5);
/// The largest key set read.
const MAX_JWKS_BYTES: usize = 1 << 20;
/// Clock difference allowed between the provider and the gateway.
const LEEWAY_SECS: u64 = 30;

#[derive(Debug, thiserror::Error)]
pub enum JwtError {
    /// The token is not valid (its reason, which names nothing secret).
    #[error("the gateway key (a JWT) is not valid: {0}")]
    Invalid(String),
    /// The provider's keys cannot be had.
    #[error("the gateway cannot read its identity provider's keys: {0}")]
    Unavailable(String),
}

/// Whether `presented` is shaped as a JWT (three base64url parts), not an access key.
pub fn looks_like_jwt(presented: &str) -> bool {
    presented.starts_with("eyJ") && presented.split('.').count() == 3
}

struct Keys {
    by_id: HashMap<String, (DecodingKey, Algorithm)>,
    /// Keys the set gave no id: tried for tokens that name none.
    unnamed: Vec<(DecodingKey, Algorithm)>,
    fetched: Option<Instant>,
    /// The last fetch a token's unknown key id caused.
    unknown_fetch: Option<Instant>,
    /// The last fetch that failed.
    failed: Option<Instant>,
}

pub struct JwtAccess {
    url: String,
    audience: String,
    issuer: Option<String>,
    client: reqwest::Client,
    keys: tokio::sync::RwLock<Keys>,
    /// One fetch at a time; the others wait for it and use what it got.
    fetching: tokio::sync::Mutex<()>,
}

/// The algorithm a published key is for: its own `alg`, or the one its type and curve name.
/// Symmetric keys are never taken from a public key set.
fn algorithm_of(jwk: &Jwk) -> Option<Algorithm> {
    if matches!(jwk.algorithm, AlgorithmParameters::OctetKey(_)) {
        return None;
    }
    if let Some(alg) = jwk.common.key_algorithm {
        let alg: Algorithm = alg.to_string().parse().ok()?;
        return (!matches!(alg, Algorithm::HS256 | Algorithm::HS384 | Algorithm::HS512))
            .then_some(alg);
    }
    match &jwk.algorithm {
        AlgorithmParameters::RSA(_) => Some(Algorithm::RS256),
        AlgorithmParameters::EllipticCurve(ec) => match ec.curve {
            EllipticCurve::P256 => Some(Algorithm::ES256),
            EllipticCurve::P384 => Some(Algorithm::ES384),
            _ => None,
        },
        AlgorithmParameters::OctetKeyPair(_) => Some(Algorithm::EdDSA),
        AlgorithmParameters::OctetKey(_) => None,
    }
}

impl JwtAccess {
    pub fn new(url: String, audience: String, issuer: Option<String>) -> std::io::Result<Self> {
        Ok(Self {
            url,
            audience,
            issuer,
            client: crate::tls::client_builder()
                .timeout(FETCH_TIMEOUT)
                // The keys decide who gets in: a redirect may not lead from https to plain
                // http, where anyone on the path could swap them.
                .redirect(reqwest::redirect::Policy::custom(|attempt| {
                    let downgrade = attempt.url().scheme() == "http"
                        && attempt.previous().iter().any(|u| u.scheme() == "https");
                    if downgrade {
                        attempt.error("the identity provider's keys were redirected to plain http")
                    } else if attempt.previous().len() > 3 {
                        attempt.error("too many redirects")
                    } else {
                        attempt.follow()
                    }
                }))
                .build()
                .map_err(std::io::Error::other)?,
            keys: tokio::sync::RwLock::new(Keys {
                by_id: HashMap::new(),
                unnamed: Vec::new(),
                fetched: None,
                unknown_fetch: None,
                failed: None,
            }),
            fetching: tokio::sync::Mutex::new(()),
        })
    }

    /// Fetches the provider's keys now (at start-up: a failure is logged, and requests try
    /// again).
    pub async fn prefetch(&self) {
        if let Err(e) = self.fetch().await {
            tracing::warn!(error = %e, "the identity provider's keys could not be fetched");
        }
    }

    async fn fetch(&self) -> Result<(), JwtError> {
        let fetched = self.fetch_set().await;
        if fetched.is_err() {
            self.keys.write().await.failed = Some(Instant::now());
        }
        fetched
    }

    async fn fetch_set(&self) -> Result<(), JwtError> {
        let unavailable = |e: String| JwtError::Unavailable(e);
        let response = self
            .client
            .get(&self.url)
            .send()
            .await
            .map_err(|e| unavailable(crate::mcp::remote::describe(&e)))?;
        if !response.status().is_success() {
            return Err(unavailable(format!("status {}", response.status())));
        }
        if response
            .content_length()
            .is_some_and(|n| n > MAX_JWKS_BYTES as u64)
        {
            return Err(unavailable("the key set is too large".into()));
        }
        let bytes = response
            .bytes()
            .await
            .map_err(|e| unavailable(crate::mcp::remote::describe(&e)))?;
        if bytes.len() > MAX_JWKS_BYTES {
            return Err(unavailable("the key set is too large".into()));
        }
        let set: JwkSet = serde_json::from_slice(&bytes)
            .map_err(|e| unavailable(format!("not a JWK set: {e}")))?;
        let mut by_id = HashMap::new();
        let mut unnamed = Vec::new();
        for jwk in &set.keys {
            let (Some(alg), Ok(key)) = (algorithm_of(jwk), DecodingKey::from_jwk(jwk)) else {
                continue;
            };
            match &jwk.common.key_id {
                Some(id) => {
                    by_id.insert(id.clone(), (key, alg));
                }
                None => unnamed.push((key, alg)),
            }
        }
        if by_id.is_empty() && unnamed.is_empty() {
            return Err(unavailable("the key set holds no usable key".into()));
        }
        let mut keys = self.keys.write().await;
        keys.by_id = by_id;
        keys.unnamed = unnamed;
        keys.fetched = Some(Instant::now());
        Ok(())
    }

    /// The keys a token naming `kid` may be checked with, fetching them again when they are
    /// old, or when `kid` is unknown and the last attempt was not just now.
    async fn keys_for(&self, kid: Option<&str>) -> Result<Vec<(DecodingKey, Algorithm)>, JwtError> {
        let pick = |keys: &Keys| -> Vec<(DecodingKey, Algorithm)> {
            match kid {
                Some(id) => keys.by_id.get(id).cloned().into_iter().collect(),
                None => keys.unnamed.clone(),
            }
        };
        let recently = |at: Option<Instant>| at.is_some_and(|at| at.elapsed() < REFETCH_GAP);
        let wants_fetch = |keys: &Keys, found: bool| {
            let stale = keys.fetched.is_none_or(|at| at.elapsed() > MAX_AGE);
            !recently(keys.failed) && (stale || (!found && !recently(keys.unknown_fetch)))
        };
        {
            let keys = self.keys.read().await;
            let found = pick(&keys);
            if !wants_fetch(&keys, !found.is_empty()) {
                return Ok(found);
            }
        }
        let _one = self.fetching.lock().await;
        // Another request may have fetched them while this one waited.
        let fetch = {
            let keys = self.keys.read().await;
            wants_fetch(&keys, !pick(&keys).is_empty())
        };
        let fetched = if fetch {
            self.keys.write().await.unknown_fetch = Some(Instant::now());
            self.fetch().await
        } else {
            Ok(())
        };
        let keys = self.keys.read().await;
        match (fetched, keys.fetched) {
            // Old keys serve while the provider cannot be reached.
            (Err(e), Some(_)) => {
                tracing::warn!(error = %e, "the identity provider's keys could not be fetched again; using the kept ones");
                Ok(pick(&keys))
            }
            (Err(e), None) => Err(e),
            (Ok(()), _) => Ok(pick(&keys)),
        }
    }

    /// The subject of a valid token.
    pub async fn verify(&self, token: &str) -> Result<String, JwtError> {
        let invalid = |reason: &str| JwtError::Invalid(reason.to_owned());
        let header = jsonwebtoken::decode_header(token).map_err(|_| invalid("malformed"))?;
        let candidates = self.keys_for(header.kid.as_deref()).await?;
        if candidates.is_empty() {
            return Err(invalid(
                "signed by a key the identity provider does not publish",
            ));
        }
        let mut reason = String::from("bad signature");
        for (key, alg) in candidates {
            // The key says which algorithm; a token claiming another is refused.
            let mut validation = Validation::new(alg);
            validation.leeway = LEEWAY_SECS;
            validation.validate_nbf = true;
            validation.set_audience(&[&self.audience]);
            let mut required = vec!["exp", "aud", "sub"];
            if let Some(issuer) = &self.issuer {
                validation.set_issuer(&[issuer]);
                required.push("iss");
            }
            validation.set_required_spec_claims(&required);
            match jsonwebtoken::decode::<serde_json::Value>(token, &key, &validation) {
                Ok(data) => {
                    return match data.claims.get("sub").and_then(serde_json::Value::as_str) {
                        Some(sub) if !sub.is_empty() => Ok(sub.to_owned()),
                        _ => Err(invalid("no subject")),
                    }
                }
                Err(e) => {
                    use jsonwebtoken::errors::ErrorKind;
                    reason = match e.kind() {
                        ErrorKind::ExpiredSignature => "expired".into(),
                        ErrorKind::ImmatureSignature => "not valid yet".into(),
                        ErrorKind::InvalidAudience => "meant for another audience".into(),
                        ErrorKind::InvalidIssuer => "from another issuer".into(),
                        ErrorKind::InvalidAlgorithm => {
                            "signed with another algorithm than its key's".into()
                        }
                        ErrorKind::MissingRequiredClaim(c) => format!("no `{c}` claim"),
                        ErrorKind::InvalidClaimFormat(c) => format!("a malformed `{c}` claim"),
                        ErrorKind::InvalidSignature => "bad signature".into(),
                        _ => "malformed".into(),
                    };
                }
            }
        }
        Err(JwtError::Invalid(reason))
    }
}

/// The name a token's subject is counted and logged under: `jwt:` and the subject, or a hash
/// of it when it is long or holds characters a log line or file name should not.
pub fn grant_name(subject: &str) -> String {
    // Short enough that the name in hex stays a valid file name (usage is kept under it).
    let plain = subject.len() <= 96
        && subject
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'-' | b'_' | b'.' | b'@' | b':'));
    if plain {
        format!("jwt:{subject}")
    } else {
        let digest = sha2::Digest::finalize(sha2::Digest::chain_update(
            <sha2::Sha256 as sha2::Digest>::new(),
            subject.as_bytes(),
        ));
        format!("jwt:sha256-{}", &hex::encode(digest)[..32])
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn only_three_part_tokens_are_taken_for_jwts() {
        assert!(looks_like_jwt("eyJhbGciOi.eyJzdWIi.c2ln"));
        assert!(!looks_like_jwt("cgk_0123abcd"));
        assert!(!looks_like_jwt("eyJhbGciOi.eyJzdWIi"));
    }

    #[test]
    fn a_symmetric_key_or_an_hmac_algorithm_in_the_set_is_never_used() {
        let secret: Jwk = serde_json::from_value(serde_json::json!({
            "kty": "oct", "k": "c2VjcmV0", "kid": "s", "alg": "HS256"
        }))
        .expect("jwk");
        assert_eq!(algorithm_of(&secret), None);
        let ec: Jwk = serde_json::from_value(serde_json::json!({
            "kty": "EC", "crv": "P-256", "kid": "e",
            "x": "f83OJ3D2xF1Bg8vub9tLe1gHMzV76e8Tus9uPHvRVEU",
            "y": "x_FEzRu9m36HLN_tue659LNpXW6pCyStikYjKIWI5a0"
        }))
        .expect("jwk");
        assert_eq!(algorithm_of(&ec), Some(Algorithm::ES256));
    }

    #[test]
    fn a_subject_is_named_as_it_is_or_by_its_hash() {
        assert_eq!(grant_name("user-42@example.com"), "jwt:user-42@example.com");
        let odd = grant_name("a b\nc");
        assert!(odd.starts_with("jwt:sha256-") && odd.len() == 43, "{odd}");
        assert!(!odd.contains(' '));
        // A long subject is hashed too: its usage is kept under the name in hex, which must
        // stay a valid file name (255 bytes).
        let long = grant_name(&"u".repeat(127));
        assert!(long.starts_with("jwt:sha256-"), "{long}");
        assert!(hex::encode(grant_name(&"u".repeat(96))).len() <= 255);
    }
}
