//! Who a tenant is, as a name safe to use on disk and in logs.
//!
//! Tenant names are HMAC-SHA256 of the tenant's identity under a per-install secret, so a
//! directory name or log field reveals nothing about the credential and cannot be chosen by a
//! request.

use std::io::Write;
use std::os::unix::fs::OpenOptionsExt;
use std::path::Path;

use hmac::{Hmac, Mac};
use rand::RngCore;
use secrecy::ExposeSecret;
use sha2::Sha256;

use super::credential::Credential;

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
    /// Identifies a tenant by its credential. (The isolation work replaces this for OAuth
    /// tokens with the account uuid, so that a refreshed token stays the same tenant.)
    pub fn from_credential(key: &InstallKey, credential: &Credential) -> Self {
        Self(key.keyed_hash(
            credential.kind().as_str(),
            credential.secret().expose_secret().as_bytes(),
        ))
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
