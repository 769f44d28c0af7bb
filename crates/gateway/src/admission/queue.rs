//! Concurrency: how many CLI runs may go at once, globally and per tenant. A request over
//! either limit waits in a bounded queue with a deadline; a full queue or an expired wait is
//! refused at once with a clear status (429 for the tenant's own limit, 529 for the gateway's).

use std::collections::HashMap;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use tokio::sync::{OwnedSemaphorePermit, Semaphore};

use crate::tenant::identity::TenantId;

#[derive(Debug, Clone, thiserror::Error, PartialEq, Eq)]
pub enum AdmissionError {
    #[error("this tenant already runs {0} requests at once; retry when one has finished")]
    TenantBusy(usize),
    #[error("the gateway is at capacity ({0} concurrent runs) and its queue is full or the wait expired; retry shortly")]
    Overloaded(usize),
    /// The shared per-tenant count could not be checked (Redis away).
    #[error("{0}")]
    Shared(String),
}

/// How long a shared slot stays taken without renewal: an instance that dies frees its
/// tenants' slots within this.
const SLOT_LEASE: Duration = Duration::from_secs(30);

/// Takes a slot in `KEYS[1]` (a sorted set of holders by lease expiry, in ms by Redis's clock)
/// when fewer than `ARGV[1]` hold one: 1 if taken, 0 if full.
const TAKE_SLOT: &str = r"
local t = redis.call('TIME')
local now = tonumber(t[1]) * 1000 + math.floor(tonumber(t[2]) / 1000)
redis.call('ZREMRANGEBYSCORE', KEYS[1], '-inf', now)
if redis.call('ZCARD', KEYS[1]) >= tonumber(ARGV[1]) then return 0 end
redis.call('ZADD', KEYS[1], now + tonumber(ARGV[3]), ARGV[2])
redis.call('PEXPIRE', KEYS[1], tonumber(ARGV[3]))
return 1
";

/// Renews a holder's lease, if it still holds its slot.
const RENEW_SLOT: &str = r"
local t = redis.call('TIME')
local now = tonumber(t[1]) * 1000 + math.floor(tonumber(t[2]) / 1000)
if redis.call('ZSCORE', KEYS[1], ARGV[1]) then
  redis.call('ZADD', KEYS[1], now + tonumber(ARGV[2]), ARGV[1])
  redis.call('PEXPIRE', KEYS[1], tonumber(ARGV[2]))
end
return 1
";

/// Gives `ARGV[1]`'s slot in `KEYS[1]` back.
const GIVE_BACK_SLOT: &str = r"
return redis.call('ZREM', KEYS[1], ARGV[1])
";

/// A tenant's slot counted in Redis across instances: renewed while held, given back when
/// dropped.
struct SharedSlot {
    redis: crate::shared::Redis,
    key: String,
    holder: String,
    renew: tokio::task::JoinHandle<()>,
}

impl Drop for SharedSlot {
    fn drop(&mut self) {
        self.renew.abort();
        crate::shared::lease::give_back(
            &self.redis,
            GIVE_BACK_SLOT,
            self.key.clone(),
            self.holder.clone(),
        );
    }
}

#[derive(Debug, Clone, Copy, serde::Serialize)]
pub struct ConcurrencyLimits {
    pub max_runs: usize,
    pub max_runs_per_tenant: usize,
    pub max_queued: usize,
    pub queue_timeout: Duration,
}

impl ConcurrencyLimits {
    /// A default from the machine: one cold CLI run peaks near 300 MiB, so the memory left
    /// after the gateway's own allows that many, capped at four per core.
    pub fn default_max_runs() -> usize {
        let cores = std::thread::available_parallelism().map_or(1, |n| n.get());
        let mem_mib = memory_limit_bytes().map_or(2048, |b| b >> 20) as usize;
        (mem_mib.saturating_sub(512) / 320).clamp(1, cores * 4)
    }
}

/// The memory this process may use: the cgroup limit (a container's) or the machine's.
fn memory_limit_bytes() -> Option<u64> {
    let cgroup = std::fs::read_to_string("/sys/fs/cgroup/memory.max")
        .ok()
        .and_then(|s| s.trim().parse::<u64>().ok());
    cgroup.or_else(|| {
        let meminfo = std::fs::read_to_string("/proc/meminfo").ok()?;
        let kib: u64 = meminfo
            .lines()
            .find(|l| l.starts_with("MemTotal:"))?
            .split_whitespace()
            .nth(1)?
            .parse()
            .ok()?;
        Some(kib * 1024)
    })
}

/// Held while a run goes on; dropping it lets the next queued request in.
pub struct Permit {
    _tenant: OwnedSemaphorePermit,
    _global: OwnedSemaphorePermit,
    _shared: Option<SharedSlot>,
}

pub struct Admission {
    limits: ConcurrencyLimits,
    global: Arc<Semaphore>,
    tenants: Mutex<HashMap<TenantId, Arc<Semaphore>>>,
    queued: AtomicUsize,
    /// Per-tenant slots counted across instances, when they share a Redis.
    shared: Option<crate::shared::Redis>,
}

/// Counts a waiting request for as long as it waits.
struct Queued<'a>(&'a AtomicUsize);

impl Drop for Queued<'_> {
    fn drop(&mut self) {
        self.0.fetch_sub(1, Ordering::SeqCst);
        metrics::gauge!("gateway_queued_requests").decrement(1.0);
    }
}

impl Admission {
    pub fn new(limits: ConcurrencyLimits) -> Self {
        Self {
            global: Arc::new(Semaphore::new(limits.max_runs.max(1))),
            tenants: Mutex::new(HashMap::new()),
            queued: AtomicUsize::new(0),
            limits,
            shared: None,
        }
    }

    /// Counts each tenant's runs across every instance on `redis` (global slots stay per
    /// instance: they follow this machine's memory).
    pub fn with_shared(mut self, redis: Option<crate::shared::Redis>) -> Self {
        self.shared = redis;
        self
    }

    /// Waits (until `deadline`) for one of the tenant's slots across instances.
    async fn shared_slot(
        &self,
        redis: &crate::shared::Redis,
        tenant: &TenantId,
        deadline: tokio::time::Instant,
    ) -> Result<SharedSlot, AdmissionError> {
        let key = format!("{}slots:{}", redis.prefix, tenant.as_dir_name());
        let holder = uuid::Uuid::new_v4().to_string();
        let max = self.limits.max_runs_per_tenant.max(1);
        let lease = SLOT_LEASE.as_millis() as u64;
        let mut pause = Duration::from_millis(20);
        loop {
            let (k, h) = (key.clone(), holder.clone());
            let taken: i64 = redis
                .run(|mut c| async move {
                    redis::Script::new(TAKE_SLOT)
                        .key(k)
                        .arg(max)
                        .arg(h)
                        .arg(lease)
                        .invoke_async(&mut c)
                        .await
                })
                .await
                .map_err(|e| AdmissionError::Shared(e.to_string()))?;
            if taken == 1 {
                break;
            }
            if tokio::time::Instant::now() + pause > deadline {
                return Err(AdmissionError::TenantBusy(max));
            }
            tokio::time::sleep(pause).await;
            pause = (pause * 2).min(Duration::from_millis(250));
        }
        let renew = crate::shared::lease::keep_renewed(
            redis,
            RENEW_SLOT,
            key.clone(),
            holder.clone(),
            SLOT_LEASE,
        );
        Ok(SharedSlot {
            redis: redis.clone(),
            key,
            holder,
            renew,
        })
    }

    pub fn limits(&self) -> ConcurrencyLimits {
        self.limits
    }

    /// Requests waiting for a slot now.
    pub fn queued(&self) -> usize {
        self.queued.load(Ordering::SeqCst)
    }

    /// Runs going on now.
    pub fn running(&self) -> usize {
        self.limits.max_runs.max(1) - self.global.available_permits()
    }

    /// Waits until no run is going on: each one's CLI has exited (a finished run's CLI writes
    /// the last of its transcript after the response) or was kept as a live process.
    pub async fn idle(&self) {
        let all = u32::try_from(self.limits.max_runs.max(1)).unwrap_or(u32::MAX);
        let _ = self.global.acquire_many(all).await;
    }

    fn tenant_semaphore(&self, tenant: &TenantId) -> Arc<Semaphore> {
        let mut tenants = self.tenants.lock().unwrap_or_else(|e| e.into_inner());
        if tenants.len() > 10_000 {
            let max = self.limits.max_runs_per_tenant.max(1);
            tenants.retain(|_, s| s.available_permits() < max);
        }
        tenants
            .entry(tenant.clone())
            .or_insert_with(|| Arc::new(Semaphore::new(self.limits.max_runs_per_tenant.max(1))))
            .clone()
    }

    /// Waits for a slot for `tenant` (at most the queue timeout, and only if the queue has room).
    pub async fn admit(&self, tenant: &TenantId) -> Result<Permit, AdmissionError> {
        let started = Instant::now();
        let deadline = tokio::time::Instant::now() + self.limits.queue_timeout;
        let tenant_sem = self.tenant_semaphore(tenant);
        let tenant_busy = AdmissionError::TenantBusy(self.limits.max_runs_per_tenant);
        let overloaded = AdmissionError::Overloaded(self.limits.max_runs);

        let mut queued = None;
        let tenant_permit = match tenant_sem.clone().try_acquire_owned() {
            Ok(p) => p,
            Err(_) => {
                queued = Some(self.enqueue().ok_or(overloaded.clone())?);
                tokio::time::timeout_at(deadline, tenant_sem.acquire_owned())
                    .await
                    .map_err(|_| tenant_busy.clone())?
                    .map_err(|_| tenant_busy.clone())?
            }
        };
        // The tenant's slot here is held; now its count across instances (before a global slot,
        // which a wait for this tenant must not keep from others).
        let shared = match &self.shared {
            Some(redis) => Some(self.shared_slot(redis, tenant, deadline).await?),
            None => None,
        };
        let global_permit = match self.global.clone().try_acquire_owned() {
            Ok(p) => p,
            Err(_) => {
                if queued.is_none() {
                    queued = Some(self.enqueue().ok_or(overloaded.clone())?);
                }
                tokio::time::timeout_at(deadline, self.global.clone().acquire_owned())
                    .await
                    .map_err(|_| overloaded.clone())?
                    .map_err(|_| overloaded.clone())?
            }
        };
        drop(queued);
        metrics::histogram!("gateway_queue_wait_seconds").record(started.elapsed().as_secs_f64());
        Ok(Permit {
            _tenant: tenant_permit,
            _global: global_permit,
            _shared: shared,
        })
    }

    fn enqueue(&self) -> Option<Queued<'_>> {
        let before = self.queued.fetch_add(1, Ordering::SeqCst);
        metrics::gauge!("gateway_queued_requests").increment(1.0);
        let guard = Queued(&self.queued);
        (before < self.limits.max_queued).then_some(guard)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn admission(max_runs: usize, per_tenant: usize, queued: usize, wait_ms: u64) -> Admission {
        Admission::new(ConcurrencyLimits {
            max_runs,
            max_runs_per_tenant: per_tenant,
            max_queued: queued,
            queue_timeout: Duration::from_millis(wait_ms),
        })
    }

    fn tenant(name: &str) -> TenantId {
        TenantId::from_dir_name(name.into())
    }

    #[tokio::test]
    async fn a_tenant_over_its_limit_waits_then_gets_tenant_busy() {
        let a = admission(4, 1, 8, 50);
        let _held = a.admit(&tenant("t")).await.expect("first");
        assert_eq!(
            a.admit(&tenant("t")).await.err(),
            Some(AdmissionError::TenantBusy(1))
        );
        assert!(
            a.admit(&tenant("other")).await.is_ok(),
            "other tenants are not held up"
        );
    }

    #[tokio::test]
    async fn a_queued_request_runs_when_a_slot_frees() {
        let a = Arc::new(admission(1, 1, 8, 2000));
        let held = a.admit(&tenant("x")).await.expect("first");
        let waiter = {
            let a = a.clone();
            tokio::spawn(async move { a.admit(&tenant("y")).await.is_ok() })
        };
        tokio::time::sleep(Duration::from_millis(50)).await;
        assert_eq!(a.queued(), 1);
        drop(held);
        assert!(waiter.await.expect("joined"));
        assert_eq!(a.queued(), 0);
    }

    #[tokio::test]
    async fn a_full_queue_refuses_at_once() {
        let a = Arc::new(admission(1, 4, 0, 2000));
        let _held = a.admit(&tenant("x")).await.expect("first");
        let started = Instant::now();
        assert_eq!(
            a.admit(&tenant("y")).await.err(),
            Some(AdmissionError::Overloaded(1))
        );
        assert!(started.elapsed() < Duration::from_millis(1000));
        assert_eq!(a.queued(), 0);
    }

    #[test]
    fn the_default_scales_with_memory_and_cores() {
        assert!(ConcurrencyLimits::default_max_runs() >= 1);
    }
}
