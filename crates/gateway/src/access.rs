//! Who may use the gateway: access keys the operator issues (`--access-keys-file`), checked on
//! every API route before anything else happens. Off by default: then any holder of an
//! Anthropic credential may, as before.
//!
//! The file holds one `name:sha256-hex-of-key` per line (`#` comments and blank lines
//! allowed), so it never holds a key itself; `claude-gateway keys new NAME` prints a fresh key
//! and its line. A request names its key in `X-Gateway-Key`.

use std::path::Path;

use sha2::{Digest, Sha256};

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

/// The operator's keys, by name and the SHA-256 of the key.
#[derive(Debug, Clone)]
pub struct AccessKeys {
    keys: Vec<(String, [u8; 32])>,
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
            let (name, hex_digest) = line
                .split_once(':')
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
            keys.push((name.to_owned(), digest));
        }
        if keys.is_empty() {
            return Err(AccessError::Empty);
        }
        Ok(Self { keys })
    }

    /// The name of the key `presented` is, if it is one.
    pub fn check(&self, presented: &str) -> Option<&str> {
        let digest: [u8; 32] = Sha256::digest(presented.as_bytes()).into();
        // Every entry is compared, in constant time, whichever matches.
        let mut found = None;
        for (name, expected) in &self.keys {
            if bool::from(subtle::ConstantTimeEq::ct_eq(&expected[..], &digest[..])) {
                found = Some(name.as_str());
            }
        }
        found
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
        assert_eq!(keys.check(&key), Some("alice"));
        assert_eq!(keys.check("cgk_wrong"), None);
        assert_eq!(keys.check(""), None);
        assert!(!line.contains(&key), "the file never holds the key");
    }

    #[test]
    fn bad_lines_are_refused_with_their_number() {
        for (text, line) in [("alice", 1), ("# c\nbad name:00", 2), ("a:xyz", 1)] {
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
}
