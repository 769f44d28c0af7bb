//! Who may use the gateway: access keys the operator issues (`--access-keys-file`), checked on
//! every API route before anything else happens. Off by default: then any holder of an
//! Anthropic credential may, as before.
//!
//! The file holds one `name:sha256-hex-of-key` per line (`#` comments and blank lines
//! allowed), so it never holds a key itself; `claude-gateway keys new NAME` prints a fresh key
//! and its line. A line may go on with the key's own budgets: `daily_usd=5 monthly_usd=100`.
//! A request names its key in `X-Gateway-Key`, or there a JWT of the operator's identity
//! provider ([`jwt`], `--access-jwks-url`).

pub mod jwt;

use std::path::Path;

use sha2::{Digest, Sha256};

use crate::usage::Budgets;

/// What admitted a request: an access key, or a token of the operator's identity provider.
/// Its usage is counted under its name (beside the tenant's), within its budgets.
#[derive(Debug, Clone, PartialEq)]
pub struct Grant {
    /// The key's name, or `jwt:<subject>`: in the audit log and the operator's usage view.
    pub name: String,
    /// The metric label: the key's name, or `jwt` (a subject per label would be unbounded).
    pub label: String,
    pub budgets: Budgets,
}

/// The metric label of every request a JWT admitted.
pub const JWT_LABEL: &str = "jwt";

impl Grant {
    /// Whether a JWT of the operator's identity provider (not an access key) admitted it.
    pub fn is_jwt(&self) -> bool {
        self.label == JWT_LABEL
    }
}

/// The header a request carries its gateway key in.
pub const HEADER: &str = "x-gateway-key";

#[derive(Debug, thiserror::Error)]
pub enum AccessError {
    #[error("cannot read the access keys file: {0}")]
    Read(std::io::Error),
    #[error("access keys file, line {line}: {reason}")]
    Line { line: usize, reason: &'static str },
    #[error("the access keys file names no key")]
    Empty,
}

/// The operator's keys, by name and the SHA-256 of the key, with their budgets.
#[derive(Debug, Clone)]
pub struct AccessKeys {
    keys: Vec<(String, [u8; 32], Budgets)>,
}

impl AccessKeys {
    pub fn load(path: &Path) -> Result<Self, AccessError> {
        Self::parse(&std::fs::read_to_string(path).map_err(AccessError::Read)?)
    }

    pub fn parse(text: &str) -> Result<Self, AccessError> {
        let mut keys = Vec::new();
        for (i, line) in text.lines().enumerate() {
            let line = line.trim();
            if line.is_empty() || line.starts_with('#') {
                continue;
            }
            let bad = |reason| AccessError::Line {
                line: i + 1,
                reason,
            };
            let mut words = line.split_whitespace();
            let (name, hex_digest) = words
                .next()
                .and_then(|w| w.split_once(':'))
                .ok_or(bad("expected NAME:SHA256-HEX"))?;
            let name = name.trim();
            if name.is_empty()
                || name.len() > 64
                || !name
                    .bytes()
                    .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'-' | b'_' | b'.'))
            {
                return Err(bad("the name: 1 to 64 letters, digits, '-', '_' or '.'"));
            }
            let mut digest = [0u8; 32];
            hex::decode_to_slice(hex_digest.trim(), &mut digest)
                .map_err(|_| bad("the digest: 64 hex digits (SHA-256 of the key)"))?;
            let mut budgets = Budgets::default();
            for option in words {
                let (slot, value) = match option.split_once('=') {
                    Some(("daily_usd", v)) => (&mut budgets.daily_usd, v),
                    Some(("monthly_usd", v)) => (&mut budgets.monthly_usd, v),
                    _ => return Err(bad("options: daily_usd=AMOUNT, monthly_usd=AMOUNT")),
                };
                let amount: f64 = value
                    .parse()
                    .ok()
                    .filter(|a: &f64| a.is_finite() && *a >= 0.0)
                    .ok_or(bad("a budget: a non-negative amount of dollars"))?;
                *slot = Some(amount);
            }
            keys.push((name.to_owned(), digest, budgets));
        }
        if keys.is_empty() {
            return Err(AccessError::Empty);
        }
        Ok(Self { keys })
    }

    /// The grant of the key `presented` is, if it is one.
    pub fn check(&self, presented: &str) -> Option<Grant> {
        let digest: [u8; 32] = Sha256::digest(presented.as_bytes()).into();
        // Every entry is compared, in constant time, whichever matches.
        let mut found = None;
        for (name, expected, budgets) in &self.keys {
            if bool::from(subtle::ConstantTimeEq::ct_eq(&expected[..], &digest[..])) {
                found = Some(Grant {
                    name: name.clone(),
                    label: name.clone(),
                    budgets: *budgets,
                });
            }
        }
        found
    }

    /// The names of the keys, in the file's order.
    pub fn names(&self) -> impl Iterator<Item = &str> {
        self.keys.iter().map(|(name, ..)| name.as_str())
    }
}

/// A fresh key and the line that admits it: `cgk_` and 32 random bytes in hex.
pub fn new_key(name: &str) -> (String, String) {
    let mut bytes = [0u8; 32];
    rand::RngCore::fill_bytes(&mut rand::thread_rng(), &mut bytes);
    let key = format!("cgk_{}", hex::encode(bytes));
    let line = format!("{name}:{}", hex::encode(Sha256::digest(key.as_bytes())));
    (key, line)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_new_key_is_admitted_by_its_line_and_nothing_else_is() {
        let (key, line) = new_key("alice");
        let keys = AccessKeys::parse(&format!("# team\n\n{line}\n")).expect("parses");
        assert_eq!(keys.check(&key).map(|g| g.name), Some("alice".into()));
        assert_eq!(keys.check("cgk_wrong"), None);
        assert_eq!(keys.check(""), None);
        assert!(!line.contains(&key), "the file never holds the key");
    }

    #[test]
    fn bad_lines_are_refused_with_their_number() {
        let digest = "0".repeat(64);
        let bad_budget = format!("a:{digest} daily_usd=-1");
        let bad_option = format!("a:{digest}\nb:{digest} weekly_usd=3");
        for (text, line) in [
            ("alice", 1),
            ("# c\nbad name:00", 2),
            ("a:xyz", 1),
            (bad_budget.as_str(), 1),
            (bad_option.as_str(), 2),
        ] {
            match AccessKeys::parse(text) {
                Err(AccessError::Line { line: l, .. }) => assert_eq!(l, line, "{text}"),
                other => panic!("{text}: {other:?}"),
            }
        }
        assert!(matches!(
            AccessKeys::parse("# none\n"),
            Err(AccessError::Empty)
        ));
    }

    #[test]
    fn a_key_may_carry_its_own_budgets() {
        let (key, line) = new_key("team-a");
        let keys =
            AccessKeys::parse(&format!("{line} daily_usd=5 monthly_usd=100.50\n")).expect("parses");
        let grant = keys.check(&key).expect("admitted");
        assert_eq!(grant.budgets.daily_usd, Some(5.0));
        assert_eq!(grant.budgets.monthly_usd, Some(100.5));
        assert_eq!(keys.names().collect::<Vec<_>>(), ["team-a"]);
    }
}
