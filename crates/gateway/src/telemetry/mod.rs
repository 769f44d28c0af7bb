//! Logs (and, later, metrics). Nothing here ever records a credential.

pub mod logging;
pub mod metrics;

/// Replaces anything shaped like an Anthropic credential (`sk-ant-…`) in `text`: applied to text
/// the gateway did not write itself (CLI stderr, upstream messages) before it is logged or
/// returned to a client.
pub fn redact(text: &str) -> String {
    const MARK: &str = "sk-ant-";
    let mut out = String::with_capacity(text.len());
    let mut rest = text;
    while let Some(i) = rest.find(MARK) {
        out.push_str(&rest[..i]);
        out.push_str("sk-ant-[redacted]");
        let after = &rest[i + MARK.len()..];
        let end = after
            .find(|c: char| !(c.is_ascii_alphanumeric() || c == '-' || c == '_' || c == '.'))
            .unwrap_or(after.len());
        rest = &after[end..];
    }
    out.push_str(rest);
    out
}

#[cfg(test)]
mod tests {
    use super::redact;

    #[test]
    fn credentials_in_free_text_are_redacted() {
        assert_eq!(
            redact("bad token sk-ant-oat01-abc.DEF_1 here; sk-ant-api03-x"),
            "bad token sk-ant-[redacted] here; sk-ant-[redacted]"
        );
        assert_eq!(redact("nothing secret"), "nothing secret");
    }
}
