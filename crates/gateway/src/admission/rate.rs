//! Rate limits: requests per minute per client IP and per tenant (GCRA, via `governor`), and
//! the client IP itself, which comes from `X-Forwarded-For` only when the peer is a proxy the
//! operator trusts.

use std::net::IpAddr;
use std::num::NonZeroU32;
use std::time::Duration;

use governor::clock::{Clock, DefaultClock};
use governor::middleware::NoOpMiddleware;
use governor::state::keyed::DefaultKeyedStateStore;
use governor::{Quota, RateLimiter};
use ipnet::IpNet;

use crate::tenant::identity::TenantId;

type Keyed<K> = RateLimiter<K, DefaultKeyedStateStore<K>, DefaultClock, NoOpMiddleware>;

/// A refused request: the limit it hit and when to retry.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RateLimited {
    pub scope: &'static str,
    pub per_minute: u32,
    pub retry_after: Duration,
}

pub struct RateLimits {
    per_ip: Option<(Keyed<IpAddr>, u32)>,
    per_tenant: Option<(Keyed<String>, u32)>,
    clock: DefaultClock,
}

fn limiter<K: std::hash::Hash + Eq + Clone>(per_minute: u32) -> Option<(Keyed<K>, u32)> {
    NonZeroU32::new(per_minute).map(|n| (RateLimiter::keyed(Quota::per_minute(n)), per_minute))
}

impl RateLimits {
    /// Limits in requests per minute; 0 turns one off.
    pub fn new(per_ip_per_minute: u32, per_tenant_per_minute: u32) -> Self {
        Self {
            per_ip: limiter(per_ip_per_minute),
            per_tenant: limiter(per_tenant_per_minute),
            clock: DefaultClock::default(),
        }
    }

    fn check<K: std::hash::Hash + Eq + Clone>(
        &self,
        limiter: &Option<(Keyed<K>, u32)>,
        key: &K,
        scope: &'static str,
    ) -> Result<(), RateLimited> {
        let Some((limiter, per_minute)) = limiter else {
            return Ok(());
        };
        limiter.check_key(key).map_err(|not_until| RateLimited {
            scope,
            per_minute: *per_minute,
            retry_after: not_until.wait_time_from(self.clock.now()),
        })
    }

    pub fn check_ip(&self, ip: IpAddr) -> Result<(), RateLimited> {
        self.check(&self.per_ip, &ip, "client IP")
    }

    pub fn check_tenant(&self, tenant: &TenantId) -> Result<(), RateLimited> {
        self.check(&self.per_tenant, &tenant.as_dir_name().to_owned(), "tenant")
    }

    /// Forgets keys whose limits have fully recovered, so idle keys cost no memory.
    pub fn prune(&self) {
        if let Some((l, _)) = &self.per_ip {
            l.retain_recent();
        }
        if let Some((l, _)) = &self.per_tenant {
            l.retain_recent();
        }
    }
}

/// The client's address: the peer's, unless the peer is a trusted proxy, in which case the
/// nearest `X-Forwarded-For` entry (from the right) that is not itself a trusted proxy.
pub fn client_ip(peer: IpAddr, forwarded_for: Option<&str>, trusted: &[IpNet]) -> IpAddr {
    let is_trusted = |ip: &IpAddr| trusted.iter().any(|net| net.contains(ip));
    if !is_trusted(&peer) {
        return peer;
    }
    forwarded_for
        .into_iter()
        .flat_map(|h| h.rsplit(','))
        .filter_map(|entry| entry.trim().parse::<IpAddr>().ok())
        .find(|ip| !is_trusted(ip))
        .unwrap_or(peer)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ip(s: &str) -> IpAddr {
        s.parse().expect("ip")
    }

    #[test]
    fn forwarded_for_is_believed_only_from_trusted_proxies() {
        let trusted: Vec<IpNet> = vec!["10.0.0.0/8".parse().expect("net")];
        let xff = Some("203.0.113.9, 10.1.2.3");
        assert_eq!(
            client_ip(ip("198.51.100.7"), xff, &trusted),
            ip("198.51.100.7")
        );
        assert_eq!(client_ip(ip("10.0.0.1"), xff, &trusted), ip("203.0.113.9"));
        assert_eq!(client_ip(ip("10.0.0.1"), None, &trusted), ip("10.0.0.1"));
        assert_eq!(
            client_ip(ip("10.0.0.1"), Some("garbage"), &trusted),
            ip("10.0.0.1")
        );
        // A client cannot spoof past the proxy by prepending its own entries.
        assert_eq!(
            client_ip(ip("10.0.0.1"), Some("1.2.3.4, 203.0.113.9"), &trusted),
            ip("203.0.113.9")
        );
    }

    #[test]
    fn a_tenant_over_its_rate_is_told_when_to_retry() {
        let limits = RateLimits::new(0, 2);
        let t = TenantId::from_dir_name("t".into());
        assert!(limits.check_tenant(&t).is_ok());
        assert!(limits.check_tenant(&t).is_ok());
        let refused = limits.check_tenant(&t).expect_err("third is refused");
        assert_eq!(refused.per_minute, 2);
        assert!(refused.retry_after > Duration::ZERO);
        assert!(
            limits.check_ip(ip("127.0.0.1")).is_ok(),
            "the IP limit is off"
        );
    }
}
