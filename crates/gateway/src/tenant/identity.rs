//! Who a tenant is, as a name safe to use on disk and in logs.
//!
//! Tenant names are HMAC-SHA256 of the tenant's identity under a per-install secret, so a
//! directory name or log field reveals nothing about the credential and cannot be chosen by a
//! request.

use std::collections::HashMap;
use std::io::Write;
use std::os::unix::fs::OpenOptionsExt;
use std::path::Path;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use hmac::{Hmac, Mac};
use rand::RngCore;
use secrecy::ExposeSecret;
use sha2::Sha256;

use super::credential::{Credential, CredentialKind};

/// The per-install key behind every keyed hash.
pub struct InstallKey([u8; 32]);

impl std::fmt::Debug for InstallKey {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("InstallKey([redacted])")
    }
}

impl InstallKey {
    /// Reads `path`, or creates it (mode 0600) with fresh random bytes.
    pub fn load_or_create(path: &Path) -> std::io::Result<Self> {
        match std::fs::read(path) {
            Ok(bytes) if bytes.len() == 32 => {
                let mut key = [0u8; 32];
                key.copy_from_slice(&bytes);
                return Ok(Self(key));
            }
            Ok(_) => {
                return Err(std::io::Error::new(
                    std::io::ErrorKind::InvalidData,
                    format!("{} is not a 32-byte key", path.display()),
                ))
            }
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
            Err(e) => return Err(e),
        }
        let mut key = [0u8; 32];
        rand::thread_rng().fill_bytes(&mut key);
        let mut file = std::fs::OpenOptions::new()
            .write(true)
            .create_new(true)
            .mode(0o600)
            .open(path)?;
        file.write_all(&key)?;
        file.sync_all()?;
        Ok(Self(key))
    }

    /// The key every instance sharing `redis` uses: the first to start stores its own, the
    /// others adopt it, so a tenant has the same name (and limits, and sessions) everywhere.
    pub async fn shared(
        self,
        redis: &crate::shared::Redis,
    ) -> Result<Self, crate::shared::SharedError> {
        let name = format!("{}install-key", redis.prefix);
        let mine = self.0.to_vec();
        let stored: Vec<u8> = redis
            .run(|mut c| async move {
                let _: Option<String> = redis::cmd("SET")
                    .arg(&name)
                    .arg(mine)
                    .arg("NX")
                    .query_async(&mut c)
                    .await?;
                redis::cmd("GET").arg(&name).query_async(&mut c).await
            })
            .await?;
        let key: [u8; 32] = stored.try_into().map_err(|_| {
            crate::shared::SharedError::Unavailable("the shared install key is not 32 bytes".into())
        })?;
        Ok(Self(key))
    }

    /// Puts this key back in `redis` if it lost it (a restart without persistence), and says
    /// whether the key stored there is this one: if not, instances name tenants differently.
    pub async fn reassert(
        &self,
        redis: &crate::shared::Redis,
    ) -> Result<bool, crate::shared::SharedError> {
        let same = self.clone_key().shared(redis).await?;
        Ok(same.0 == self.0)
    }

    fn clone_key(&self) -> Self {
        Self(self.0)
    }

    #[cfg(test)]
    pub fn from_bytes(key: [u8; 32]) -> Self {
        Self(key)
    }

    /// Hex HMAC-SHA256 of `domain` and `data`; the domain keeps hashes of different things apart.
    pub fn keyed_hash(&self, domain: &str, data: &[u8]) -> String {
        let mut mac = match Hmac::<Sha256>::new_from_slice(&self.0) {
            Ok(m) => m,
            Err(_) => unreachable!("HMAC accepts keys of any length"),
        };
        mac.update(domain.as_bytes());
        mac.update(&[0]);
        mac.update(data);
        hex::encode(mac.finalize().into_bytes())
    }
}

/// A tenant, named by a keyed hash: safe as a directory name and as a log field.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct TenantId(String);

impl TenantId {
    /// Identifies a tenant by its credential itself.
    pub fn from_credential(key: &InstallKey, credential: &Credential) -> Self {
        Self(key.keyed_hash(
            credential.kind().as_str(),
            credential.secret().expose_secret().as_bytes(),
        ))
    }

    /// Identifies a tenant by its Anthropic account uuid.
    pub fn from_account(key: &InstallKey, account_uuid: &str) -> Self {
        Self(key.keyed_hash("account", account_uuid.as_bytes()))
    }

    /// A tenant found on disk by its directory name.
    pub fn from_dir_name(name: String) -> Self {
        Self(name)
    }

    /// The directory name for this tenant.
    pub fn as_dir_name(&self) -> &str {
        &self.0
    }

    /// A short fingerprint for logs.
    pub fn fingerprint(&self) -> &str {
        &self.0[..12]
    }
}

/// How OAuth tenants are identified.
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum, serde::Serialize)]
#[serde(rename_all = "lowercase")]
pub enum IdentityMode {
    /// The account uuid from `GET {base}/api/oauth/profile`.
    Profile,
    /// A keyed hash of the token.
    Token,
}

#[derive(Debug, thiserror::Error)]
pub enum IdentityError {
    #[error("the credential was rejected by the upstream")]
    Rejected,
    /// A valid credential of an account or organization the gateway does not serve.
    #[error("this Anthropic account is not among those this gateway serves")]
    NotAllowed,
    #[error("the account could not be looked up: {0}")]
    Unavailable(String),
}

/// Most entries the identity cache holds before it is pruned.
const CACHE_CAP: usize = 10_000;

/// What the upstream said of a credential, remembered for a while.
#[derive(Clone)]
enum Verdict {
    Tenant(TenantId),
    Rejected,
    NotAllowed,
}

/// The accounts and organizations the gateway serves (`--allowed-accounts`,
/// `--allowed-organizations`); both empty: every one.
#[derive(Debug, Clone, Default)]
pub struct Allowed {
    pub accounts: std::collections::BTreeSet<String>,
    pub organizations: std::collections::BTreeSet<String>,
}

impl Allowed {
    pub fn new(accounts: &[String], organizations: &[String]) -> Self {
        let set = |v: &[String]| {
            v.iter()
                .map(|s| s.trim().to_ascii_lowercase())
                .filter(|s| !s.is_empty())
                .collect()
        };
        Self {
            accounts: set(accounts),
            organizations: set(organizations),
        }
    }

    pub fn is_on(&self) -> bool {
        !self.accounts.is_empty() || !self.organizations.is_empty()
    }

    /// Whether a credential of `account` in `organization` (each as far as known) is served.
    fn admits(&self, account: Option<&str>, organization: Option<&str>) -> bool {
        let has = |set: &std::collections::BTreeSet<String>, v: Option<&str>| {
            v.is_some_and(|v| set.contains(&v.to_ascii_lowercase()))
        };
        !self.is_on() || has(&self.accounts, account) || has(&self.organizations, organization)
    }

    /// What names this configuration in cache keys: instances that admit differently never
    /// share a verdict.
    fn fingerprint(&self) -> String {
        if !self.is_on() {
            return String::new();
        }
        let joined = |set: &std::collections::BTreeSet<String>| {
            set.iter().cloned().collect::<Vec<_>>().join(",")
        };
        format!(
            ":allowed[{}|{}]",
            joined(&self.accounts),
            joined(&self.organizations)
        )
    }
}

/// Verifies credentials with the upstream and resolves them to tenants. Every outcome the
/// upstream gave (a tenant, or a refusal) is cached under a keyed hash of the credential, so a
/// flood of made-up keys or dead tokens costs at most one upstream call each, and nothing is
/// created for a credential before it is verified.
pub struct IdentityResolver {
    mode: IdentityMode,
    profile_url: String,
    models_url: String,
    client: reqwest::Client,
    key: Arc<InstallKey>,
    ttl: Duration,
    negative_ttl: Duration,
    cache: Mutex<HashMap<String, (Verdict, Instant)>>,
    /// The same cache, shared by every instance on this Redis.
    shared: Option<crate::shared::Redis>,
    allowed: Allowed,
}

impl IdentityResolver {
    pub fn new(
        mode: IdentityMode,
        base_url: &str,
        key: Arc<InstallKey>,
        ttl: Duration,
        negative_ttl: Duration,
    ) -> Self {
        let client = super::upstream_client(Duration::from_secs(10));
        let base = base_url.trim_end_matches('/');
        Self {
            mode,
            profile_url: format!("{base}/api/oauth/profile"),
            models_url: format!("{base}/v1/models"),
            client,
            key,
            ttl,
            negative_ttl,
            cache: Mutex::new(HashMap::new()),
            shared: None,
            allowed: Allowed::default(),
        }
    }

    /// Serves only credentials of these accounts or organizations.
    pub fn with_allowed(mut self, allowed: Allowed) -> Self {
        self.allowed = allowed;
        self
    }

    pub fn allowed(&self) -> &Allowed {
        &self.allowed
    }

    /// Shares verdicts with every instance on `redis`, so a credential is checked with the
    /// upstream once across them. A cache: when Redis is away, the upstream is asked instead.
    pub fn with_shared(mut self, redis: Option<crate::shared::Redis>) -> Self {
        self.shared = redis;
        self
    }

    async fn shared_verdict(&self, cache_key: &str) -> Option<Verdict> {
        let redis = self.shared.as_ref()?;
        let name = format!("{}identity:{cache_key}", redis.prefix);
        let stored: Option<String> = redis
            .run(|mut c| async move { redis::cmd("GET").arg(&name).query_async(&mut c).await })
            .await
            .ok()?;
        match stored?.as_str() {
            "rejected" => Some(Verdict::Rejected),
            "not-allowed" => Some(Verdict::NotAllowed),
            other => other
                .strip_prefix("tenant:")
                .map(|t| Verdict::Tenant(TenantId(t.to_owned()))),
        }
    }

    async fn share(&self, cache_key: &str, verdict: &Verdict) {
        let Some(redis) = &self.shared else { return };
        let (value, ttl) = match verdict {
            Verdict::Tenant(t) => (format!("tenant:{}", t.as_dir_name()), self.ttl),
            Verdict::Rejected => ("rejected".to_owned(), self.negative_ttl),
            Verdict::NotAllowed => ("not-allowed".to_owned(), self.negative_ttl),
        };
        let name = format!("{}identity:{cache_key}", redis.prefix);
        let millis = ttl.as_millis().max(1) as u64;
        let stored = redis
            .run(|mut c| async move {
                redis::cmd("SET")
                    .arg(&name)
                    .arg(value)
                    .arg("PX")
                    .arg(millis)
                    .query_async::<()>(&mut c)
                    .await
            })
            .await;
        if let Err(e) = stored {
            tracing::debug!(error = %e, "could not share an identity verdict");
        }
    }

    pub fn mode(&self) -> IdentityMode {
        self.mode
    }

    pub async fn resolve(&self, credential: &Credential) -> Result<TenantId, IdentityError> {
        let cache_key = self.key.keyed_hash(
            &format!(
                "identity-cache:{}{}",
                credential.kind().as_str(),
                self.allowed.fingerprint()
            ),
            credential.secret().expose_secret().as_bytes(),
        );
        let known = match self.cached(&cache_key) {
            Some(verdict) => Some(verdict),
            None => {
                let shared = self.shared_verdict(&cache_key).await;
                if let Some(verdict) = &shared {
                    self.remember(cache_key.clone(), verdict.clone());
                }
                shared
            }
        };
        match known {
            Some(Verdict::Tenant(tenant)) => return Ok(tenant),
            Some(Verdict::Rejected) => return Err(IdentityError::Rejected),
            Some(Verdict::NotAllowed) => return Err(IdentityError::NotAllowed),
            None => {}
        }
        let outcome = match (credential.kind(), self.mode) {
            (CredentialKind::OAuthToken, IdentityMode::Profile) => self
                .account(credential)
                .await
                .and_then(|(tenant, account, org)| {
                    if self.allowed.admits(Some(&account), org.as_deref()) {
                        Ok(tenant)
                    } else {
                        Err(IdentityError::NotAllowed)
                    }
                }),
            _ => self.verify(credential).await.and_then(|org| {
                if self.allowed.admits(None, org.as_deref()) {
                    Ok(TenantId::from_credential(&self.key, credential))
                } else {
                    Err(IdentityError::NotAllowed)
                }
            }),
        };
        let verdict = match &outcome {
            Ok(tenant) => Some(Verdict::Tenant(tenant.clone())),
            Err(IdentityError::Rejected) => Some(Verdict::Rejected),
            Err(IdentityError::NotAllowed) => Some(Verdict::NotAllowed),
            // The upstream did not say: nothing to remember, the next request asks again.
            Err(IdentityError::Unavailable(_)) => None,
        };
        if let Some(verdict) = verdict {
            self.share(&cache_key, &verdict).await;
            self.remember(cache_key, verdict);
        }
        outcome
    }

    /// Sends `request` and sorts the answer: 200 is acceptance, 401 and 403 a refusal, anything
    /// else leaves the credential unverified.
    async fn ask(
        &self,
        request: reqwest::RequestBuilder,
        what: &str,
    ) -> Result<reqwest::Response, IdentityError> {
        let response = request
            .send()
            .await
            // reqwest's errors name the URL, never a header.
            .map_err(|e| IdentityError::Unavailable(e.without_url().to_string()))?;
        match response.status().as_u16() {
            200 => Ok(response),
            401 | 403 => Err(IdentityError::Rejected),
            other => Err(IdentityError::Unavailable(format!(
                "{what} answered {other}"
            ))),
        }
    }

    /// Whether the upstream accepts the credential: `GET /v1/models`, the cheapest call it
    /// authenticates; the organization it names in `anthropic-organization-id`, if any.
    async fn verify(&self, credential: &Credential) -> Result<Option<String>, IdentityError> {
        let request = credential.authorize(
            self.client
                .get(&self.models_url)
                .header("anthropic-version", "2023-06-01"),
        );
        let response = self.ask(request, "the models endpoint").await?;
        Ok(response
            .headers()
            .get("anthropic-organization-id")
            .and_then(|v| v.to_str().ok())
            .map(str::to_owned))
    }

    /// The tenant of an OAuth token (by its account uuid from the profile endpoint), the
    /// account uuid and the organization's.
    async fn account(
        &self,
        credential: &Credential,
    ) -> Result<(TenantId, String, Option<String>), IdentityError> {
        let request = self
            .client
            .get(&self.profile_url)
            .bearer_auth(credential.secret().expose_secret())
            .header("anthropic-beta", "oauth-2025-04-20");
        let profile: serde_json::Value = self
            .ask(request, "the profile endpoint")
            .await?
            .json()
            .await
            .map_err(|e| IdentityError::Unavailable(format!("unreadable profile: {e}")))?;
        let uuid = profile
            .get("account")
            .and_then(|a| a.get("uuid"))
            .and_then(|u| u.as_str())
            .filter(|u| !u.is_empty())
            .ok_or_else(|| IdentityError::Unavailable("the profile has no account uuid".into()))?;
        let organization = profile
            .get("organization")
            .and_then(|o| o.get("uuid"))
            .and_then(|u| u.as_str())
            .map(str::to_owned);
        Ok((
            TenantId::from_account(&self.key, uuid),
            uuid.to_owned(),
            organization,
        ))
    }

    fn ttl_of(&self, verdict: &Verdict) -> Duration {
        match verdict {
            Verdict::Tenant(_) => self.ttl,
            Verdict::Rejected | Verdict::NotAllowed => self.negative_ttl,
        }
    }

    fn cached(&self, cache_key: &str) -> Option<Verdict> {
        let cache = self.cache.lock().unwrap_or_else(|e| e.into_inner());
        cache
            .get(cache_key)
            .filter(|(verdict, at)| at.elapsed() < self.ttl_of(verdict))
            .map(|(verdict, _)| verdict.clone())
    }

    fn remember(&self, cache_key: String, verdict: Verdict) {
        let mut cache = self.cache.lock().unwrap_or_else(|e| e.into_inner());
        if cache.len() >= CACHE_CAP {
            cache.retain(|_, (verdict, at)| at.elapsed() < self.ttl_of(verdict));
            if cache.len() >= CACHE_CAP {
                cache.clear();
            }
        }
        cache.insert(cache_key, (verdict, Instant::now()));
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn tenant_names_are_stable_hex_and_differ_per_credential_and_key() {
        let key = InstallKey::from_bytes([7; 32]);
        let a = Credential::parse("sk-ant-oat01-alice").expect("valid");
        let b = Credential::parse("sk-ant-oat01-bob").expect("valid");
        let ta = TenantId::from_credential(&key, &a);
        assert_eq!(ta, TenantId::from_credential(&key, &a));
        assert_ne!(ta, TenantId::from_credential(&key, &b));
        assert_ne!(
            ta,
            TenantId::from_credential(&InstallKey::from_bytes([8; 32]), &a)
        );
        assert_eq!(ta.as_dir_name().len(), 64);
        assert!(ta.as_dir_name().bytes().all(|c| c.is_ascii_hexdigit()));
        assert!(!ta.as_dir_name().contains("alice"));
    }

    #[test]
    fn install_key_is_created_private_and_reloaded() {
        use std::os::unix::fs::PermissionsExt;
        let dir = tempfile::tempdir().expect("tempdir");
        let path = dir.path().join("key");
        let first = InstallKey::load_or_create(&path).expect("create");
        let mode = std::fs::metadata(&path).expect("meta").permissions().mode();
        assert_eq!(mode & 0o777, 0o600);
        let again = InstallKey::load_or_create(&path).expect("load");
        assert_eq!(first.keyed_hash("d", b"x"), again.keyed_hash("d", b"x"));
    }
}
