//! Live sessions: the CLI process of an active session kept alive between turns
//! (`--input-format stream-json` waits for the next user line), so the next turn skips the
//! CLI's start-up and transcript replay. Bounded per tenant and globally, and retired when idle;
//! a retired or missing process is replaced by a cold `--resume`, which gives the same answer.

use std::collections::HashMap;
use std::sync::Mutex;
use std::time::{Duration, Instant};

use uuid::Uuid;

use super::CliProcess;
use crate::tenant::identity::TenantId;

/// How long a retired process may take to exit on its own (finishing its transcript).
const RETIRE_GRACE: Duration = Duration::from_secs(10);

struct Entry {
    tenant: TenantId,
    /// What the process was started with (model, system prompt, level, credential…): a turn
    /// asking for anything else needs a new process.
    fingerprint: String,
    process: CliProcess,
    idle_since: Instant,
}

#[derive(Debug, Clone, Copy, serde::Serialize)]
pub struct LiveLimits {
    pub max_total: usize,
    pub max_per_tenant: usize,
    pub idle: Duration,
}

pub struct LivePool {
    limits: LiveLimits,
    entries: Mutex<HashMap<Uuid, Entry>>,
}

impl LivePool {
    pub fn new(limits: LiveLimits) -> Self {
        Self {
            limits,
            entries: Mutex::new(HashMap::new()),
        }
    }

    pub fn enabled(&self) -> bool {
        self.limits.max_total > 0 && self.limits.max_per_tenant > 0
    }

    pub fn len(&self) -> usize {
        self.lock().len()
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, HashMap<Uuid, Entry>> {
        self.entries.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// The session's live process, if it is alive and was started for the same settings.
    pub fn take(&self, session: Uuid, fingerprint: &str) -> Option<CliProcess> {
        let entry = self.lock().remove(&session)?;
        let mut process = entry.process;
        if entry.fingerprint != fingerprint || !process.is_alive() {
            retire(process);
            return None;
        }
        Some(process)
    }

    /// Keeps a session's process for its next turn, evicting the least recently used ones
    /// beyond the limits.
    pub fn put(&self, session: Uuid, tenant: TenantId, fingerprint: String, process: CliProcess) {
        if !self.enabled() {
            retire(process);
            return;
        }
        let mut evicted = Vec::new();
        {
            let mut entries = self.lock();
            if let Some(old) = entries.remove(&session) {
                evicted.push(old.process);
            }
            let lru = |entries: &HashMap<Uuid, Entry>, tenant: Option<&TenantId>| {
                entries
                    .iter()
                    .filter(|(_, e)| tenant.is_none_or(|t| &e.tenant == t))
                    .min_by_key(|(_, e)| e.idle_since)
                    .map(|(k, _)| *k)
            };
            while entries.values().filter(|e| e.tenant == tenant).count()
                >= self.limits.max_per_tenant
            {
                match lru(&entries, Some(&tenant)).and_then(|k| entries.remove(&k)) {
                    Some(e) => evicted.push(e.process),
                    None => break,
                }
            }
            while entries.len() >= self.limits.max_total {
                match lru(&entries, None).and_then(|k| entries.remove(&k)) {
                    Some(e) => evicted.push(e.process),
                    None => break,
                }
            }
            entries.insert(
                session,
                Entry {
                    tenant,
                    fingerprint,
                    process,
                    idle_since: Instant::now(),
                },
            );
        }
        evicted.into_iter().for_each(retire);
    }

    /// Ends a session's live process and waits until it has exited, so that nothing writes
    /// to the session's transcript afterwards (the session is being deleted).
    pub async fn end(&self, session: Uuid) {
        let entry = self.lock().remove(&session);
        if let Some(mut e) = entry {
            e.process.finish(RETIRE_GRACE).await;
        }
    }

    /// Ends every kept process at once (shutdown).
    pub fn clear(&self) {
        self.lock().clear();
    }

    /// Retires processes idle for longer than the limit; returns how many.
    pub fn reap(&self) -> usize {
        let idle = self.limits.idle;
        let stale: Vec<CliProcess> = {
            let mut entries = self.lock();
            let keys: Vec<Uuid> = entries
                .iter()
                .filter(|(_, e)| e.idle_since.elapsed() >= idle)
                .map(|(k, _)| *k)
                .collect();
            keys.iter()
                .filter_map(|k| entries.remove(k))
                .map(|e| e.process)
                .collect()
        };
        let n = stale.len();
        stale.into_iter().for_each(retire);
        n
    }
}

/// Lets a process end on its own (closing its input), then makes sure it is gone.
fn retire(mut process: CliProcess) {
    tokio::spawn(async move {
        process.finish(RETIRE_GRACE).await;
    });
}
