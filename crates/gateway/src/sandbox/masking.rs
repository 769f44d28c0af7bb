//! Credential masking: a tenant's real credential never enters its sandbox.
//!
//! Each run's CLI gets a placeholder of the credential's kind (`sk-ant-oat01-…` or
//! `sk-ant-api03-…`, random, at least as long as the real one), and every upstream call the CLI
//! makes passes through the gateway's upstream proxy ([`super::net`]), which swaps the real
//! credential in for a placeholder it issued and refuses anything else. So `env`,
//! `/proc/*/environ` and every file inside show only the placeholder, and the placeholder is
//! worth nothing outside the proxy, nor once its run has ended (its lease is dropped with the
//! process).
//!
//! A placeholder also names what its run's model calls carry that the CLI has no flag for
//! (the request's sampling settings and stop sequences, [`CallSettings`]): the proxy sets them
//! on each call it swaps a credential into.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};

use rand::distributions::{Alphanumeric, DistString};
use secrecy::{ExposeSecret, SecretString};

use crate::tenant::credential::{Credential, CredentialKind};
use crate::tenant::identity::TenantId;

/// Placeholders carry at least this many random characters (~380 bits), however short the
/// real credential, so no run can guess another run's.
const MIN_RANDOM: usize = 64;

/// Fields set on every model call of a run (`temperature`, `top_p`, `top_k`,
/// `stop_sequences`), as the client's request named them.
pub type CallSettings = serde_json::Map<String, serde_json::Value>;

/// What a placeholder stands for.
#[derive(Clone)]
pub struct Issued {
    pub credential: Credential,
    /// Whose run it is: what the upstream reports of the credential's limits is theirs.
    pub tenant: TenantId,
    pub call: Arc<CallSettings>,
}

/// The placeholders issued to running CLI processes, and the credentials they stand for.
#[derive(Default)]
pub struct Placeholders {
    issued: Mutex<HashMap<String, Issued>>,
}

impl std::fmt::Debug for Placeholders {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Placeholders").finish_non_exhaustive()
    }
}

/// One run's placeholder; it stops working when dropped.
pub struct Lease {
    placeholder: SecretString,
    registry: Arc<Placeholders>,
}

impl Lease {
    /// What the CLI gets instead of the credential.
    pub fn placeholder(&self) -> &SecretString {
        &self.placeholder
    }

    /// Makes the placeholder stand for `credential` (of the same kind) and `call` from now on:
    /// a process started ahead of its request (warm) serves the credential that request
    /// presents, a refreshed token included.
    pub fn rebind(&self, credential: &Credential, call: CallSettings) {
        let mut issued = self
            .registry
            .issued
            .lock()
            .unwrap_or_else(|e| e.into_inner());
        if let Some(entry) = issued.get_mut(self.placeholder.expose_secret()) {
            entry.credential = credential.clone();
            entry.call = Arc::new(call);
        }
    }
}

impl Drop for Lease {
    fn drop(&mut self) {
        let mut issued = self
            .registry
            .issued
            .lock()
            .unwrap_or_else(|e| e.into_inner());
        issued.remove(self.placeholder.expose_secret());
    }
}

impl Placeholders {
    /// Issues a placeholder for `credential` (and its run's call settings), valid until the
    /// lease is dropped.
    pub fn issue(
        self: &Arc<Self>,
        credential: &Credential,
        tenant: &TenantId,
        call: CallSettings,
    ) -> Lease {
        let prefix = match credential.kind() {
            CredentialKind::OAuthToken => "sk-ant-oat01-",
            CredentialKind::ApiKey => "sk-ant-api03-",
        };
        let real = credential.secret().expose_secret().len();
        let random = real.saturating_sub(prefix.len()).max(MIN_RANDOM);
        let placeholder = format!(
            "{prefix}{}",
            Alphanumeric.sample_string(&mut rand::thread_rng(), random)
        );
        self.issued
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .insert(
                placeholder.clone(),
                Issued {
                    credential: credential.clone(),
                    tenant: tenant.clone(),
                    call: Arc::new(call),
                },
            );
        Lease {
            placeholder: SecretString::from(placeholder),
            registry: self.clone(),
        }
    }

    /// What a placeholder stands for, while its run lasts.
    pub fn resolve(&self, placeholder: &str) -> Option<Issued> {
        self.issued
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .get(placeholder)
            .cloned()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_placeholder_has_the_kind_and_shape_and_works_only_while_leased() {
        let registry = Arc::new(Placeholders::default());
        let real = Credential::parse("sk-ant-oat01-alice").expect("valid");
        let lease = registry.issue(
            &real,
            &TenantId::from_dir_name("t".into()),
            CallSettings::new(),
        );
        let text = lease.placeholder().expose_secret().to_owned();
        assert!(text.starts_with("sk-ant-oat01-"));
        assert!(text.len() >= "sk-ant-oat01-".len() + MIN_RANDOM);
        assert!(!text.contains("alice"));
        assert!(Credential::parse(&text).is_ok());
        let swapped = registry.resolve(&text).expect("leased").credential;
        assert_eq!(swapped.secret().expose_secret(), "sk-ant-oat01-alice");
        let key = Credential::parse("sk-ant-api03-bob").expect("valid");
        let other = registry.issue(
            &key,
            &TenantId::from_dir_name("t".into()),
            CallSettings::new(),
        );
        assert!(other
            .placeholder()
            .expose_secret()
            .starts_with("sk-ant-api03-"));
        assert_ne!(other.placeholder().expose_secret(), &text);
        drop(lease);
        assert!(registry.resolve(&text).is_none());
        assert!(registry.resolve("sk-ant-oat01-alice").is_none());
    }
}
