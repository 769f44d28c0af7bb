//! A lock in Redis held under a lease: taken with `SET NX PX`, renewed while its holder lives,
//! given back when dropped, and freed by the lease alone when its instance dies. Whoever
//! writes under it checks that it still holds it ([`Lease::holder`], a fencing value).

use std::time::Duration;

use super::{Redis, SharedError};

/// Takes `KEYS[1]` for `ARGV[1]` for `ARGV[2]` ms when nobody holds it: Redis's clock then, in
/// ms, or -1 when it is held.
const TAKE: &str = r"
if redis.call('SET', KEYS[1], ARGV[1], 'NX', 'PX', tonumber(ARGV[2])) then
  local t = redis.call('TIME')
  return tonumber(t[1]) * 1000 + math.floor(tonumber(t[2]) / 1000)
end
return -1
";

/// Renews `KEYS[1]`'s lease when `ARGV[1]` still holds it.
const RENEW: &str = r"
if redis.call('GET', KEYS[1]) == ARGV[1] then
  return redis.call('PEXPIRE', KEYS[1], tonumber(ARGV[2]))
end
return 0
";

/// Deletes `KEYS[1]` when `ARGV[1]` still holds it.
const RELEASE: &str = r"
if redis.call('GET', KEYS[1]) == ARGV[1] then
  return redis.call('DEL', KEYS[1])
end
return 0
";

pub struct Lease {
    redis: Redis,
    key: String,
    holder: String,
    /// Redis's clock minus this instance's, in ms (as of taking the lock, within its round
    /// trip): what a deadline in Redis's own time is computed with.
    offset_ms: i64,
    renew: tokio::task::JoinHandle<()>,
}

impl Lease {
    /// Takes `key` for `lease` (renewed every third of it), waiting at most `wait` while
    /// another holder has it: `None` if it still does then.
    pub async fn acquire(
        redis: &Redis,
        key: String,
        lease: Duration,
        wait: Duration,
    ) -> Result<Option<Self>, SharedError> {
        let holder = uuid::Uuid::new_v4().to_string();
        let lease_ms = lease.as_millis() as u64;
        let deadline = tokio::time::Instant::now() + wait;
        let mut pause = Duration::from_millis(10);
        let offset_ms = loop {
            let (k, h) = (key.clone(), holder.clone());
            let taken_at: i64 = redis
                .run(|mut c| async move {
                    redis::Script::new(TAKE)
                        .key(k)
                        .arg(h)
                        .arg(lease_ms)
                        .invoke_async(&mut c)
                        .await
                })
                .await?;
            if taken_at >= 0 {
                break taken_at - crate::clock::now_ms() as i64;
            }
            let now = tokio::time::Instant::now();
            if now >= deadline {
                return Ok(None);
            }
            // Polled: Redis has no wake-up for a key's deletion short of keyspace events,
            // which a managed Redis may not enable.
            tokio::time::sleep(pause.min(deadline - now)).await;
            pause = (pause * 2).min(Duration::from_millis(200));
        };
        let renew = keep_renewed(redis, RENEW, key.clone(), holder.clone(), lease);
        Ok(Some(Self {
            redis: redis.clone(),
            key,
            holder,
            offset_ms,
            renew,
        }))
    }

    /// The value that names this holder in the lock's key.
    pub fn holder(&self) -> &str {
        &self.holder
    }

    /// `within` from now, in ms by Redis's clock: a write that checks it in Redis is refused
    /// when it runs later (a command the client gave up on may still run when Redis comes
    /// back, and must not then undo what the client did next).
    pub fn deadline(&self, within: Duration) -> i64 {
        crate::clock::now_ms() as i64 + self.offset_ms + within.as_millis() as i64
    }
}

impl Drop for Lease {
    fn drop(&mut self) {
        self.renew.abort();
        give_back(&self.redis, RELEASE, self.key.clone(), self.holder.clone());
    }
}

/// Runs `script` (`KEYS[1]` the key, `ARGV[1]` the holder, `ARGV[2]` the lease in ms) every
/// third of `lease` until the returned task is aborted: what keeps a holder's lease alive while
/// it lives.
pub fn keep_renewed(
    redis: &Redis,
    script: &'static str,
    key: String,
    holder: String,
    lease: Duration,
) -> tokio::task::JoinHandle<()> {
    let redis = redis.clone();
    let lease_ms = lease.as_millis() as u64;
    tokio::spawn(async move {
        let mut every = tokio::time::interval(lease / 3);
        every.tick().await;
        loop {
            every.tick().await;
            let (k, h) = (key.clone(), holder.clone());
            let _ = redis
                .run(|mut c| async move {
                    redis::Script::new(script)
                        .key(k)
                        .arg(h)
                        .arg(lease_ms)
                        .invoke_async::<i64>(&mut c)
                        .await
                })
                .await;
        }
    })
}

/// Runs `script` (`KEYS[1]` the key, `ARGV[1]` the holder) once, in the background: a holder
/// giving back what it holds as it is dropped. Were this lost, the lease would free it.
pub fn give_back(redis: &Redis, script: &'static str, key: String, holder: String) {
    let redis = redis.clone();
    if let Ok(runtime) = tokio::runtime::Handle::try_current() {
        runtime.spawn(async move {
            let _ = redis
                .run(|mut c| async move {
                    redis::Script::new(script)
                        .key(key)
                        .arg(holder)
                        .invoke_async::<i64>(&mut c)
                        .await
                })
                .await;
        });
    }
}
