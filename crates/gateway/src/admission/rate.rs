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

use crate::shared::{Redis, SharedError};
use crate::tenant::identity::TenantId;

type Keyed<K> = RateLimiter<K, DefaultKeyedStateStore<K>, DefaultClock, NoOpMiddleware>;

/// A refused request: the limit it hit and when to retry.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RateLimited {
    pub scope: &'static str,
    pub per_minute: u32,
    pub retry_after: Duration,
}

/// Why a request did not pass its rate check.
#[derive(Debug, thiserror::Error)]
pub enum RateError {
    #[error("rate limited")]
    Limited(RateLimited),
    /// The shared limits could not be checked (they are never replaced by local ones).
    #[error(transparent)]
    Unavailable(#[from] SharedError),
}

impl From<RateLimited> for RateError {
    fn from(limited: RateLimited) -> Self {
        RateError::Limited(limited)
    }
}

struct Local {
    per_ip: Option<Keyed<IpAddr>>,
    per_tenant: Option<Keyed<String>>,
    clock: DefaultClock,
}

/// Where the counts live: this instance's memory, or Redis, shared by every instance.
enum Backend {
    Local(Box<Local>),
    Shared(Redis),
}

/// Requests per minute per client IP and per tenant, as a GCRA: a burst of the whole minute's
/// count, then one more each sixtieth of the minute (as `governor`'s quota; the shared one is
/// the same algorithm in one Lua script, so every check is atomic across instances).
pub struct RateLimits {
    per_ip_per_minute: u32,
    per_tenant_per_minute: u32,
    backend: Backend,
}

fn limiter<K: std::hash::Hash + Eq + Clone>(per_minute: u32) -> Option<Keyed<K>> {
    NonZeroU32::new(per_minute).map(|n| RateLimiter::keyed(Quota::per_minute(n)))
}

/// One GCRA check on `KEYS[1]`, by Redis's own clock (instances' clocks may differ), in
/// microseconds: the microseconds to wait, 0 when the request passes (and is counted).
const GCRA: &str = r"
local t = redis.call('TIME')
local now = tonumber(t[1]) * 1000000 + tonumber(t[2])
local interval = tonumber(ARGV[1])
local burst = tonumber(ARGV[2])
local tat = tonumber(redis.call('GET', KEYS[1]) or '0')
if tat < now then tat = now end
local new_tat = tat + interval
local allow_at = new_tat - interval * burst
if allow_at > now then return allow_at - now end
redis.call('SET', KEYS[1], string.format('%.0f', new_tat), 'PX', math.max(1, math.ceil((new_tat - now) / 1000)))
return 0
";

impl RateLimits {
    /// Limits in requests per minute, kept in this instance; 0 turns one off.
    pub fn new(per_ip_per_minute: u32, per_tenant_per_minute: u32) -> Self {
        Self {
            per_ip_per_minute,
            per_tenant_per_minute,
            backend: Backend::Local(Box::new(Local {
                per_ip: limiter(per_ip_per_minute),
                per_tenant: limiter(per_tenant_per_minute),
                clock: DefaultClock::default(),
            })),
        }
    }

    /// The same limits, counted in `redis` across every instance.
    pub fn shared(per_ip_per_minute: u32, per_tenant_per_minute: u32, redis: Redis) -> Self {
        Self {
            per_ip_per_minute,
            per_tenant_per_minute,
            backend: Backend::Shared(redis),
        }
    }

    async fn check_shared(
        redis: &Redis,
        key: String,
        per_minute: u32,
        scope: &'static str,
    ) -> Result<(), RateError> {
        let interval_us = 60_000_000 / u64::from(per_minute.max(1));
        let key = format!("{}rate:{key}", redis.prefix);
        let wait_us: u64 = redis
            .run(|mut c| async move {
                redis::Script::new(GCRA)
                    .key(key)
                    .arg(interval_us.max(1))
                    .arg(per_minute)
                    .invoke_async(&mut c)
                    .await
            })
            .await?;
        if wait_us == 0 {
            return Ok(());
        }
        Err(RateLimited {
            scope,
            per_minute,
            retry_after: Duration::from_micros(wait_us),
        }
        .into())
    }

    pub async fn check_ip(&self, ip: IpAddr) -> Result<(), RateError> {
        const SCOPE: &str = "client IP";
        match &self.backend {
            Backend::Local(l) => local(&l.per_ip, &ip, self.per_ip_per_minute, &l.clock, SCOPE),
            Backend::Shared(_) if self.per_ip_per_minute == 0 => Ok(()),
            Backend::Shared(redis) => {
                Self::check_shared(redis, format!("ip:{ip}"), self.per_ip_per_minute, SCOPE).await
            }
        }
    }

    pub async fn check_tenant(&self, tenant: &TenantId) -> Result<(), RateError> {
        const SCOPE: &str = "tenant";
        let key = tenant.as_dir_name().to_owned();
        match &self.backend {
            Backend::Local(l) => local(
                &l.per_tenant,
                &key,
                self.per_tenant_per_minute,
                &l.clock,
                SCOPE,
            ),
            Backend::Shared(_) if self.per_tenant_per_minute == 0 => Ok(()),
            Backend::Shared(redis) => {
                Self::check_shared(
                    redis,
                    format!("tenant:{key}"),
                    self.per_tenant_per_minute,
                    SCOPE,
                )
                .await
            }
        }
    }

    /// Forgets keys whose limits have fully recovered, so idle keys cost no memory (shared
    /// keys expire in Redis by themselves).
    pub fn prune(&self) {
        if let Backend::Local(l) = &self.backend {
            if let Some(limiter) = &l.per_ip {
                limiter.retain_recent();
            }
            if let Some(limiter) = &l.per_tenant {
                limiter.retain_recent();
            }
        }
    }
}

fn local<K: std::hash::Hash + Eq + Clone>(
    limiter: &Option<Keyed<K>>,
    key: &K,
    per_minute: u32,
    clock: &DefaultClock,
    scope: &'static str,
) -> Result<(), RateError> {
    let Some(limiter) = limiter else {
        return Ok(());
    };
    limiter.check_key(key).map_err(|not_until| {
        RateLimited {
            scope,
            per_minute,
            retry_after: not_until.wait_time_from(clock.now()),
        }
        .into()
    })
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

    #[tokio::test]
    async fn a_tenant_over_its_rate_is_told_when_to_retry() {
        let limits = RateLimits::new(0, 2);
        let t = TenantId::from_dir_name("t".into());
        assert!(limits.check_tenant(&t).await.is_ok());
        assert!(limits.check_tenant(&t).await.is_ok());
        let Err(RateError::Limited(refused)) = limits.check_tenant(&t).await else {
            panic!("the third is refused");
        };
        assert_eq!(refused.per_minute, 2);
        assert!(refused.retry_after > Duration::ZERO);
        assert!(
            limits.check_ip(ip("127.0.0.1")).await.is_ok(),
            "the IP limit is off"
        );
    }
}
