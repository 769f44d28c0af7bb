//! Where sessions' records live: their metadata, the lock that lets one turn run at a time, and,
//! past one machine, the committed copy of each transcript. One contract, two stores:
//!
//! - **Disk** (the embedded default, one instance): metadata in `tenants/<t>/sessions/<key>.json`,
//!   locks in this process, the transcript is the CLI's own file.
//! - **Redis** (`--redis-url`, many instances): metadata, a lock held under a lease (a crashed
//!   instance's lock frees itself), and each turn's transcript, committed together in one
//!   script that first checks the lock is still held: a session in Redis holds a whole turn's
//!   transcript or the one before, never half of one, and an instance that lost its lock
//!   cannot overwrite another's turn. Keys expire after the session TTL, renewed each turn.
//!
//! Both take the lock in this process first, so turns on one instance queue without polling
//! Redis, and both are checked by the same contract tests (`tests/suite/shared.rs`).

use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use tokio::sync::OwnedMutexGuard;
use uuid::Uuid;

use super::{ClientSessionId, SessionError, SessionMeta};
use crate::shared::lease::Lease;
use crate::shared::Redis;
use crate::tenant::identity::TenantId;

/// Most idle lock entries kept before pruning.
const MAX_IDLE_LOCKS: usize = 4096;
/// How long a turn's lock in Redis outlives its instance (renewed every third of it).
pub const TURN_LEASE: Duration = Duration::from_secs(30);
/// The most sessions a listing shows.
const MAX_LISTED: isize = 1000;

/// Writes a turn's metadata and transcript under the lock `KEYS[1]`, only while `ARGV[1]`
/// holds it, not after the deadline `ARGV[6]` (ms, Redis's clock), and only while the tenant's
/// transcripts stay within its quota `ARGV[7]` (bytes; 0: none): 1 if written, 0 if the lock
/// was lost, -1 if too late, -2 if over the quota.
/// KEYS: lock, meta, transcript, index, sizes. ARGV: holder, meta, ttl secs, member, score,
/// deadline, quota, meta key prefix, [transcript].
///
/// `sizes` holds each of the tenant's sessions' transcript size; sessions whose keys expired
/// leave it here (their meta key is gone). Those keys share the tenant's hash slot.
const COMMIT: &str = r"
if redis.call('GET', KEYS[1]) ~= ARGV[1] then return 0 end
local t = redis.call('TIME')
if tonumber(t[1]) * 1000 + math.floor(tonumber(t[2]) / 1000) > tonumber(ARGV[6]) then return -1 end
if #ARGV >= 9 then
  local quota = tonumber(ARGV[7])
  if quota > 0 then
    local total = string.len(ARGV[9])
    local sizes = redis.call('HGETALL', KEYS[5])
    for i = 1, #sizes, 2 do
      local member = sizes[i]
      if member ~= ARGV[4] then
        if redis.call('EXISTS', ARGV[8] .. member .. ':meta') == 1 then
          total = total + tonumber(sizes[i + 1])
        else
          redis.call('HDEL', KEYS[5], member)
        end
      end
    end
    if total > quota then return -2 end
  end
  redis.call('SET', KEYS[3], ARGV[9], 'EX', ARGV[3])
  redis.call('HSET', KEYS[5], ARGV[4], string.len(ARGV[9]))
else
  redis.call('EXPIRE', KEYS[3], ARGV[3])
end
redis.call('SET', KEYS[2], ARGV[2], 'EX', ARGV[3])
redis.call('ZADD', KEYS[4], ARGV[5], ARGV[4])
redis.call('EXPIRE', KEYS[4], ARGV[3])
redis.call('EXPIRE', KEYS[5], ARGV[3])
return 1
";

/// Removes a session: 1 if its metadata was there. KEYS: meta, transcript, index, sizes.
/// ARGV: member.
const REMOVE: &str = r"
local existed = redis.call('DEL', KEYS[1])
redis.call('DEL', KEYS[2])
redis.call('ZREM', KEYS[3], ARGV[1])
redis.call('HDEL', KEYS[4], ARGV[1])
return existed
";

/// The lock on one session for one turn (or a deletion).
pub struct TurnLock {
    _local: OwnedMutexGuard<()>,
    lease: Option<Lease>,
}

impl TurnLock {
    /// What names this holder in Redis (none on disk, where the process's lock is the lock).
    pub fn fence(&self) -> Option<String> {
        self.lease.as_ref().map(|l| l.holder().to_owned())
    }
}

/// How long after it is sent a commit may still take effect: less than the time the gateway
/// waits for its answer, so a commit it gave up on (and put the session back for) never runs
/// later, when Redis takes writes again.
fn commit_window() -> Duration {
    crate::shared::COMMAND_TIMEOUT * 3 / 4
}

enum Store {
    Disk {
        tenants_dir: PathBuf,
    },
    Redis {
        redis: Redis,
        ttl: Duration,
        /// The most bytes of transcripts one tenant may keep here (0: no limit).
        quota: u64,
    },
}

pub struct Records {
    store: Store,
    lock_wait: Duration,
    lease: Duration,
    locks: Mutex<HashMap<Uuid, Arc<tokio::sync::Mutex<()>>>>,
}

/// Writes `bytes` as the file at `path` (a directory of the gateway's own, never one a tenant
/// writes), atomically: a crash leaves the old file or the new one, never half of one.
pub fn replace_file(path: &Path, bytes: &[u8]) -> std::io::Result<()> {
    let dir = path.parent().unwrap_or(Path::new("."));
    std::fs::create_dir_all(dir)?;
    let tmp = dir.join(format!(".{}.tmp", Uuid::new_v4()));
    std::fs::write(&tmp, bytes)?;
    std::fs::rename(&tmp, path)
}

fn unavailable(e: crate::shared::SharedError) -> SessionError {
    SessionError::Unavailable(e.to_string())
}

fn corrupt(e: serde_json::Error) -> SessionError {
    SessionError::Storage(format!("corrupt session metadata: {e}"))
}

impl Records {
    /// Records on local disk, under `tenants_dir`.
    pub fn disk(tenants_dir: PathBuf, lock_wait: Duration) -> Self {
        Self::with(Store::Disk { tenants_dir }, lock_wait)
    }

    /// Records in Redis, kept `ttl` after a session's last turn; a tenant's transcripts there
    /// take at most `quota` bytes (0: no limit), as its transcript volume does on disk.
    pub fn redis(redis: Redis, ttl: Duration, quota: u64, lock_wait: Duration) -> Self {
        Self::with(Store::Redis { redis, ttl, quota }, lock_wait)
    }

    fn with(store: Store, lock_wait: Duration) -> Self {
        Self {
            store,
            lock_wait,
            lease: TURN_LEASE,
            locks: Mutex::new(HashMap::new()),
        }
    }

    /// Another lease for the Redis lock (tests of an instance that died holding it).
    pub fn with_lease(mut self, lease: Duration) -> Self {
        self.lease = lease;
        self
    }

    /// Whether transcripts are kept here (Redis), beside the CLI's own files.
    pub fn keeps_transcripts(&self) -> bool {
        matches!(self.store, Store::Redis { .. })
    }

    /// Whether records expire by themselves (Redis keys), rather than by the gateway's sweep.
    pub fn expire_by_themselves(&self) -> bool {
        matches!(self.store, Store::Redis { .. })
    }

    fn redis_key(redis: &Redis, tenant: &TenantId, key: Uuid, what: &str) -> String {
        // The tenant in braces: every key of a tenant lands in one Redis Cluster slot, so one
        // script may touch them together.
        format!(
            "{}session:{{{}}}:{key}:{what}",
            redis.prefix,
            tenant.as_dir_name()
        )
    }

    /// `what` of the tenant as a whole (`index`, `sizes`); `session_prefix` for its sessions.
    fn tenant_key(redis: &Redis, tenant: &TenantId, what: &str) -> String {
        format!(
            "{}session:{{{}}}:{what}",
            redis.prefix,
            tenant.as_dir_name()
        )
    }

    fn index_key(redis: &Redis, tenant: &TenantId) -> String {
        Self::tenant_key(redis, tenant, "index")
    }

    fn meta_path(tenants_dir: &Path, tenant: &TenantId, key: Uuid) -> PathBuf {
        tenants_dir
            .join(tenant.as_dir_name())
            .join("sessions")
            .join(format!("{key}.json"))
    }

    /// Waits (at most the lock wait) until no other turn of the session runs, on any instance.
    pub async fn lock(
        &self,
        tenant: &TenantId,
        key: Uuid,
        id: &ClientSessionId,
    ) -> Result<TurnLock, SessionError> {
        let busy = || SessionError::Busy(id.as_str().to_owned());
        let started = tokio::time::Instant::now();
        let lock = {
            let mut locks = self.locks.lock().unwrap_or_else(|e| e.into_inner());
            if locks.len() >= MAX_IDLE_LOCKS {
                locks.retain(|_, l| Arc::strong_count(l) > 1);
            }
            locks.entry(key).or_default().clone()
        };
        let local = tokio::time::timeout(self.lock_wait, lock.lock_owned())
            .await
            .map_err(|_| busy())?;
        let lease = match &self.store {
            Store::Disk { .. } => None,
            Store::Redis { redis, .. } => {
                let left = self.lock_wait.saturating_sub(started.elapsed());
                let name = Self::redis_key(redis, tenant, key, "lock");
                Some(
                    Lease::acquire(redis, name, self.lease, left)
                        .await
                        .map_err(unavailable)?
                        .ok_or_else(busy)?,
                )
            }
        };
        Ok(TurnLock {
            _local: local,
            lease,
        })
    }

    /// Whether a turn of the session runs on this instance now.
    pub fn is_busy(&self, key: Uuid) -> bool {
        let locks = self.locks.lock().unwrap_or_else(|e| e.into_inner());
        locks.get(&key).is_some_and(|l| l.try_lock().is_err())
    }

    pub async fn load(
        &self,
        tenant: &TenantId,
        key: Uuid,
    ) -> Result<Option<SessionMeta>, SessionError> {
        match &self.store {
            Store::Disk { tenants_dir } => {
                match std::fs::read(Self::meta_path(tenants_dir, tenant, key)) {
                    Ok(bytes) => serde_json::from_slice(&bytes).map(Some).map_err(corrupt),
                    Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(None),
                    Err(e) => Err(super::storage(e)),
                }
            }
            Store::Redis { redis, .. } => {
                let name = Self::redis_key(redis, tenant, key, "meta");
                let bytes: Option<Vec<u8>> =
                    redis
                        .run(|mut c| async move {
                            redis::cmd("GET").arg(name).query_async(&mut c).await
                        })
                        .await
                        .map_err(unavailable)?;
                bytes
                    .map(|b| serde_json::from_slice(&b).map_err(corrupt))
                    .transpose()
            }
        }
    }

    /// Records a turn: its metadata and, where transcripts are kept here, the transcript as
    /// the turn left it; both or neither, and only under `lock`.
    pub async fn commit(
        &self,
        tenant: &TenantId,
        key: Uuid,
        meta: &SessionMeta,
        transcript: Option<&[u8]>,
        lock: &TurnLock,
    ) -> Result<(), SessionError> {
        let bytes = serde_json::to_vec(meta).map_err(|e| SessionError::Storage(e.to_string()))?;
        match &self.store {
            Store::Disk { tenants_dir } => {
                replace_file(&Self::meta_path(tenants_dir, tenant, key), &bytes)
                    .map_err(super::storage)
            }
            Store::Redis { redis, ttl, quota } => {
                let holder = lock.fence().unwrap_or_default();
                let deadline = lock
                    .lease
                    .as_ref()
                    .map_or(0, |l| l.deadline(commit_window()));
                let commit = redis::Script::new(COMMIT);
                let mut script = commit.prepare_invoke();
                script
                    .key(Self::redis_key(redis, tenant, key, "lock"))
                    .key(Self::redis_key(redis, tenant, key, "meta"))
                    .key(Self::redis_key(redis, tenant, key, "transcript"))
                    .key(Self::index_key(redis, tenant))
                    .key(Self::tenant_key(redis, tenant, "sizes"))
                    .arg(holder)
                    .arg(bytes)
                    .arg(ttl.as_secs().max(1))
                    .arg(key.to_string())
                    .arg(meta.last_used_at)
                    .arg(deadline)
                    .arg(*quota)
                    .arg(Self::tenant_key(redis, tenant, ""));
                if let Some(transcript) = transcript {
                    script.arg(transcript);
                }
                let written: i64 = redis
                    .run(|mut c| async move { script.invoke_async(&mut c).await })
                    .await
                    .map_err(unavailable)?;
                match written {
                    1 => Ok(()),
                    0 => Err(SessionError::Unavailable(
                        "the session's lock was lost before its turn could be recorded".into(),
                    )),
                    -2 => Err(SessionError::QuotaExceeded(*quota >> 20)),
                    _ => Err(SessionError::Unavailable(
                        "Redis did not record the turn in time".into(),
                    )),
                }
            }
        }
    }

    /// The transcript committed with the session's last turn, where transcripts are kept here.
    pub async fn transcript(
        &self,
        tenant: &TenantId,
        key: Uuid,
    ) -> Result<Option<Vec<u8>>, SessionError> {
        match &self.store {
            Store::Disk { .. } => Ok(None),
            Store::Redis { redis, .. } => {
                let name = Self::redis_key(redis, tenant, key, "transcript");
                redis
                    .run(|mut c| async move {
                        redis::cmd("GET").arg(name).query_async(&mut c).await
                    })
                    .await
                    .map_err(unavailable)
            }
        }
    }

    /// The tenant's sessions, most recently used first.
    pub async fn list(&self, tenant: &TenantId) -> Result<Vec<SessionMeta>, SessionError> {
        let mut sessions: Vec<SessionMeta> = match &self.store {
            Store::Disk { tenants_dir } => {
                let dir = tenants_dir.join(tenant.as_dir_name()).join("sessions");
                let entries = match std::fs::read_dir(&dir) {
                    Ok(e) => e,
                    Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(Vec::new()),
                    Err(e) => return Err(super::storage(e)),
                };
                entries
                    .filter_map(|e| e.ok())
                    .filter(|e| e.path().extension().is_some_and(|x| x == "json"))
                    .filter_map(|e| std::fs::read(e.path()).ok())
                    .filter_map(|b| serde_json::from_slice(&b).ok())
                    .collect()
            }
            Store::Redis { redis, .. } => {
                let index = Self::index_key(redis, tenant);
                let members: Vec<String> = {
                    let index = index.clone();
                    redis
                        .run(|mut c| async move {
                            redis::cmd("ZREVRANGE")
                                .arg(index)
                                .arg(0)
                                .arg(MAX_LISTED - 1)
                                .query_async(&mut c)
                                .await
                        })
                        .await
                        .map_err(unavailable)?
                };
                if members.is_empty() {
                    return Ok(Vec::new());
                }
                let names: Vec<String> = members
                    .iter()
                    .filter_map(|m| m.parse::<Uuid>().ok())
                    .map(|k| Self::redis_key(redis, tenant, k, "meta"))
                    .collect();
                let metas: Vec<Option<Vec<u8>>> =
                    redis
                        .run(|mut c| async move {
                            redis::cmd("MGET").arg(names).query_async(&mut c).await
                        })
                        .await
                        .map_err(unavailable)?;
                // Sessions whose keys expired leave the index here.
                let gone: Vec<&String> = members
                    .iter()
                    .zip(&metas)
                    .filter(|(_, m)| m.is_none())
                    .map(|(k, _)| k)
                    .collect();
                if !gone.is_empty() {
                    let gone: Vec<String> = gone.into_iter().cloned().collect();
                    let _ = redis
                        .run(|mut c| async move {
                            redis::cmd("ZREM")
                                .arg(index)
                                .arg(gone)
                                .query_async::<i64>(&mut c)
                                .await
                        })
                        .await;
                }
                metas
                    .into_iter()
                    .flatten()
                    .filter_map(|b| serde_json::from_slice(&b).ok())
                    .collect()
            }
        };
        sessions.sort_by_key(|s| std::cmp::Reverse(s.last_used_at));
        Ok(sessions)
    }

    /// Forgets a session's records; `false` if there were none.
    pub async fn remove(&self, tenant: &TenantId, key: Uuid) -> Result<bool, SessionError> {
        match &self.store {
            Store::Disk { tenants_dir } => {
                match std::fs::remove_file(Self::meta_path(tenants_dir, tenant, key)) {
                    Ok(()) => Ok(true),
                    Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(false),
                    Err(e) => Err(super::storage(e)),
                }
            }
            Store::Redis { redis, .. } => {
                let remove = redis::Script::new(REMOVE);
                let mut script = remove.prepare_invoke();
                script
                    .key(Self::redis_key(redis, tenant, key, "meta"))
                    .key(Self::redis_key(redis, tenant, key, "transcript"))
                    .key(Self::index_key(redis, tenant))
                    .key(Self::tenant_key(redis, tenant, "sizes"))
                    .arg(key.to_string());
                let existed: i64 = redis
                    .run(|mut c| async move { script.invoke_async(&mut c).await })
                    .await
                    .map_err(unavailable)?;
                Ok(existed == 1)
            }
        }
    }
}
