//! The address policy for remote MCP servers: a pure function over parsed and resolved
//! addresses. Loopback, private, link-local (cloud metadata included), shared, unique-local,
//! unspecified, multicast, broadcast and documentation addresses are refused, in every spelling:
//! URLs are parsed with the WHATWG rules browsers use (so `2130706433`, `0177.0.0.1`,
//! `0x7f.1` and `127.1` are all 127.0.0.1), and IPv6 forms that embed an IPv4 address
//! (mapped, compatible, NAT64, 6to4) are judged by that address. A name is judged by every
//! address it resolves to, at the moment of connecting, so DNS rebinding cannot slip past.

use std::net::{IpAddr, Ipv4Addr, Ipv6Addr};

use url::{Host, Url};

#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum Refusal {
    #[error("only http and https URLs are allowed")]
    Scheme,
    #[error("the URL has no host")]
    NoHost,
    #[error("{0} is a {1} address, which remote MCP servers may not use")]
    Address(IpAddr, &'static str),
    #[error("{0} names an internal host, which remote MCP servers may not use")]
    InternalName(String),
    #[error("the URL could not be parsed: {0}")]
    Unparsable(String),
}

/// Why an IPv4 address is refused, if it is.
fn v4_class(ip: Ipv4Addr) -> Option<&'static str> {
    let o = ip.octets();
    Some(match o {
        [0, ..] => "this-network (0.0.0.0/8)",
        [127, ..] => "loopback",
        [10, ..] => "private",
        [172, b, ..] if (16..=31).contains(&b) => "private",
        [192, 168, ..] => "private",
        [169, 254, ..] => "link-local (cloud metadata)",
        [100, b, ..] if (64..=127).contains(&b) => "shared (carrier-grade NAT)",
        [192, 0, 0, _] => "IETF protocol assignment",
        [192, 0, 2, _] | [198, 51, 100, _] | [203, 0, 113, _] => "documentation",
        [198, b, ..] if b == 18 || b == 19 => "benchmarking",
        [a, ..] if a >= 224 => "multicast or reserved",
        _ => return None,
    })
}

/// The IPv4 address an IPv6 address carries, for the forms that route to it.
fn embedded_v4(ip: Ipv6Addr) -> Option<Ipv4Addr> {
    let s = ip.segments();
    let tail = Ipv4Addr::new((s[6] >> 8) as u8, s[6] as u8, (s[7] >> 8) as u8, s[7] as u8);
    match s {
        // ::ffff:a.b.c.d (mapped) and ::a.b.c.d (compatible, deprecated).
        [0, 0, 0, 0, 0, 0xffff, ..] | [0, 0, 0, 0, 0, 0, _, _] => Some(tail),
        // 64:ff9b::a.b.c.d (NAT64).
        [0x64, 0xff9b, 0, 0, 0, 0, ..] => Some(tail),
        // 2002:AABB:CCDD::/48 (6to4).
        [0x2002, hi, lo, ..] => Some(Ipv4Addr::new(
            (hi >> 8) as u8,
            hi as u8,
            (lo >> 8) as u8,
            lo as u8,
        )),
        _ => None,
    }
}

/// Judges one address (literal or resolved).
pub fn check_ip(ip: IpAddr) -> Result<(), Refusal> {
    match ip {
        IpAddr::V4(v4) => match v4_class(v4) {
            Some(class) => Err(Refusal::Address(ip, class)),
            None => Ok(()),
        },
        IpAddr::V6(v6) => {
            if let Some(v4) = embedded_v4(v6) {
                // `::` and `::1` fall in the compatible range; judge them as themselves.
                if v6.is_unspecified() {
                    return Err(Refusal::Address(ip, "unspecified"));
                }
                if v6.is_loopback() {
                    return Err(Refusal::Address(ip, "loopback"));
                }
                return match v4_class(v4) {
                    Some(class) => Err(Refusal::Address(ip, class)),
                    None => Ok(()),
                };
            }
            let s = v6.segments();
            let class = match s[0] {
                _ if v6.is_unspecified() => "unspecified",
                _ if v6.is_loopback() => "loopback",
                x if x & 0xfe00 == 0xfc00 => "unique-local",
                x if x & 0xffc0 == 0xfe80 => "link-local",
                x if x & 0xffc0 == 0xfec0 => "site-local",
                x if x & 0xff00 == 0xff00 => "multicast",
                0x2001 if s[1] == 0x0db8 => "documentation",
                0x0100 if s[1..4] == [0, 0, 0] => "discard-only",
                _ => return Ok(()),
            };
            Err(Refusal::Address(ip, class))
        }
    }
}

/// Names that are internal whatever they resolve to.
fn internal_name(domain: &str) -> bool {
    let d = domain.trim_end_matches('.').to_ascii_lowercase();
    d == "localhost"
        || d.ends_with(".localhost")
        || d == "metadata.google.internal"
        || d.ends_with(".internal")
        || d.ends_with(".local")
        || d == "metadata"
        || d == "instance-data"
}

/// What a URL's host is, once parsed the way a browser would.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Target {
    /// A literal address: already judged.
    Ip(IpAddr),
    /// A name: judge every address it resolves to, when connecting.
    Name(String),
}

/// Whether the operator allowed `host` (as a URL spells it: `[::1]` for IPv6), exactly and
/// case-insensitively; the one test every check of the allowlist uses.
pub fn host_allowed(host: &str, allowed_hosts: &[String]) -> bool {
    allowed_hosts.iter().any(|h| h.eq_ignore_ascii_case(host))
}

/// Parses and judges a remote MCP URL. `allowed_hosts` (operator-approved names or addresses)
/// skip the address checks.
pub fn check_url(text: &str, allowed_hosts: &[String]) -> Result<(Url, Target), Refusal> {
    let url = Url::parse(text).map_err(|e| Refusal::Unparsable(e.to_string()))?;
    if !matches!(url.scheme(), "http" | "https") {
        return Err(Refusal::Scheme);
    }
    let host = url.host().ok_or(Refusal::NoHost)?;
    let allowed = host_allowed(url.host_str().unwrap_or_default(), allowed_hosts);
    let target = match host {
        Host::Ipv4(ip) => Target::Ip(IpAddr::V4(ip)),
        Host::Ipv6(ip) => Target::Ip(IpAddr::V6(ip)),
        Host::Domain(d) => Target::Name(d.to_ascii_lowercase()),
    };
    if !allowed {
        match &target {
            Target::Ip(ip) => check_ip(*ip)?,
            Target::Name(name) if internal_name(name) => {
                return Err(Refusal::InternalName(name.clone()))
            }
            Target::Name(_) => {}
        }
    }
    Ok((url, target))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn refused(url: &str) -> bool {
        check_url(url, &[]).is_err()
    }

    #[test]
    fn every_spelling_of_loopback_is_refused() {
        for url in [
            "http://127.0.0.1/",
            "http://127.1/",
            "http://2130706433/",
            "http://0x7f000001/",
            "http://0x7f.0.0.1/",
            "http://0177.0.0.1/",
            "http://017700000001/",
            "http://127.000.000.001/",
            "http://[::1]/",
            "http://[0:0:0:0:0:0:0:1]/",
            "http://[::ffff:127.0.0.1]/",
            "http://[::ffff:7f00:1]/",
            "http://[::127.0.0.1]/",
            "http://[64:ff9b::7f00:1]/",
            "http://[2002:7f00:1::]/",
            "http://localhost/",
            "http://LOCALHOST./",
            "http://app.localhost/",
        ] {
            assert!(refused(url), "{url} was allowed");
        }
    }

    #[test]
    fn metadata_private_link_local_and_unique_local_are_refused() {
        for url in [
            "http://169.254.169.254/latest/meta-data/",
            "http://2852039166/",
            "http://0xa9fea9fe/",
            "http://[::ffff:169.254.169.254]/",
            "http://[fd00:ec2::254]/",
            "http://metadata.google.internal/computeMetadata/v1/",
            "http://metadata.google.internal./",
            "http://10.0.0.1/",
            "http://012.0.0.1/",
            "http://172.16.0.1/",
            "http://172.31.255.255/",
            "http://192.168.1.1/",
            "http://100.64.0.1/",
            "http://0.0.0.0/",
            "http://0/",
            "http://[::]/",
            "http://[fe80::1]/",
            "http://[fc00::1]/",
            "http://224.0.0.1/",
            "http://255.255.255.255/",
            "http://[ff02::1]/",
            "http://printer.local/",
        ] {
            assert!(refused(url), "{url} was allowed");
        }
    }

    #[test]
    fn public_addresses_and_names_pass_and_names_are_left_for_connect_time() {
        assert!(matches!(
            check_url("https://8.8.8.8/mcp", &[]),
            Ok((_, Target::Ip(_)))
        ));
        assert!(check_url("https://[2606:4700::1111]/", &[]).is_ok());
        assert!(check_url("http://172.32.0.1/", &[]).is_ok());
        assert_eq!(
            check_url("https://mcp.example.com/sse", &[]).map(|(_, t)| t),
            Ok(Target::Name("mcp.example.com".into()))
        );
    }

    #[test]
    fn other_schemes_are_refused() {
        for url in [
            "file:///etc/passwd",
            "gopher://x/",
            "ftp://example.com/",
            "ws://example.com/",
        ] {
            assert_eq!(check_url(url, &[]).err(), Some(Refusal::Scheme), "{url}");
        }
    }

    #[test]
    fn an_operator_allowlisted_host_skips_the_address_checks() {
        assert!(check_url("http://127.0.0.1:9000/mcp", &["127.0.0.1".into()]).is_ok());
        assert!(check_url("http://localhost:9000/mcp", &["localhost".into()]).is_ok());
        assert!(check_url("http://127.0.0.2:9000/mcp", &["127.0.0.1".into()]).is_err());
    }

    #[test]
    fn resolved_addresses_are_judged_one_by_one() {
        assert!(check_ip("93.184.216.34".parse().expect("ip")).is_ok());
        assert!(check_ip("169.254.169.254".parse().expect("ip")).is_err());
        assert!(check_ip("::ffff:10.0.0.1".parse().expect("ip")).is_err());
    }
}
