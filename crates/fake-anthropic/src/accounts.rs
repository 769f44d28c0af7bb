//! Accounts behind tokens, and rotating refresh tokens.
//!
//! Token convention: the text after the `sk-ant-xxx01-` prefix, up to the first `.`, names the
//! account, so `sk-ant-oat01-alice.1`, `sk-ant-ort01-alice.r7` and `sk-ant-api03-alice` all belong
//! to `alice`. A token containing `invalid` is rejected everywhere with 401; a refresh token
//! containing `slow` is exchanged after a second. Refresh tokens rotate: each one works once.

use std::collections::HashSet;
use std::sync::Mutex;

use uuid::Uuid;

/// Namespace for the fake's account uuids (any fixed uuid works; this one is random).
const ACCOUNT_NAMESPACE: Uuid = Uuid::from_u128(0x5e0c_5a1d_2c4f_4b3e_9d7a_1f2e_3c4b_5a69);

pub fn is_rejected(token: &str) -> bool {
    token.contains("invalid")
}

/// Whether exchanging this refresh token takes a while (for tests of concurrent refreshes).
pub fn is_slow(token: &str) -> bool {
    token.contains("slow")
}

/// The account name a token belongs to.
pub fn account_name(token: &str) -> &str {
    let rest = ["sk-ant-oat01-", "sk-ant-ort01-", "sk-ant-api03-"]
        .iter()
        .find_map(|p| token.strip_prefix(p))
        .unwrap_or(token);
    rest.split('.').next().unwrap_or(rest)
}

pub fn account_uuid(token: &str) -> Uuid {
    Uuid::new_v5(&ACCOUNT_NAMESPACE, account_name(token).as_bytes())
}

#[derive(Debug)]
pub enum RefreshError {
    /// Unknown, rejected, or already used.
    InvalidGrant,
}

#[derive(Debug, Clone)]
pub struct Refreshed {
    pub access_token: String,
    pub refresh_token: String,
}

#[derive(Debug, Default)]
pub struct Accounts {
    spent: Mutex<HashSet<String>>,
    counter: std::sync::atomic::AtomicU64,
}

impl Accounts {
    /// Exchanges a refresh token for a new pair; the old refresh token stops working.
    pub fn refresh(&self, refresh_token: &str) -> Result<Refreshed, RefreshError> {
        if is_rejected(refresh_token) || !refresh_token.starts_with("sk-ant-ort01-") {
            return Err(RefreshError::InvalidGrant);
        }
        let mut spent = self.spent.lock().unwrap_or_else(|e| e.into_inner());
        if !spent.insert(refresh_token.to_owned()) {
            return Err(RefreshError::InvalidGrant);
        }
        let n = self
            .counter
            .fetch_add(1, std::sync::atomic::Ordering::Relaxed)
            + 1;
        let name = account_name(refresh_token);
        Ok(Refreshed {
            access_token: format!("sk-ant-oat01-{name}.refreshed{n}"),
            refresh_token: format!("sk-ant-ort01-{name}.rotated{n}"),
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn tokens_of_one_account_share_its_uuid() {
        assert_eq!(
            account_uuid("sk-ant-oat01-alice.1"),
            account_uuid("sk-ant-ort01-alice.r2")
        );
        assert_ne!(
            account_uuid("sk-ant-oat01-alice"),
            account_uuid("sk-ant-oat01-bob")
        );
    }

    #[test]
    fn refresh_tokens_work_once() {
        let accounts = Accounts::default();
        let first = accounts.refresh("sk-ant-ort01-alice.r").expect("first use");
        assert_eq!(account_name(&first.access_token), "alice");
        assert!(accounts.refresh("sk-ant-ort01-alice.r").is_err());
        assert!(accounts.refresh(&first.refresh_token).is_ok());
    }
}
