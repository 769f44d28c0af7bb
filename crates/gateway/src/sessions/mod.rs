//! Stateful conversations: a client's session id, bound to its tenant, names a CLI session
//! whose transcript lives in the tenant's directory, so it survives restarts and is continued
//! with `--resume`. One turn runs at a time per session.
//!
//! Layout under `data/tenants/<tenant>/`: `projects/` is the CLI's own projects directory (it
//! is mounted as `~/.claude/projects` in every run of the tenant, so the CLI reads and writes
//! its transcripts there), and `sessions/<key>.json` holds each session's metadata, where
//! `<key>` is a UUIDv5 of the client's id under a per-tenant namespace: the same client id used
//! by two tenants names two different sessions, and no request text becomes a path.

pub mod records;
pub mod transcript;
pub mod tree;

use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use serde::{Deserialize, Serialize};
use uuid::Uuid;

pub use records::{Records, TurnLock};

use crate::tenant::identity::TenantId;
use crate::tenant::volumes::{Volume, Volumes};

/// Namespace of the per-tenant session namespaces (fixed; any uuid would do).
const SESSIONS_NAMESPACE: Uuid = Uuid::from_u128(0x6a1f_3c2e_98b4_4d0a_b1e7_5c93_2f8d_0e41);
/// How long a turn's commit waits for the CLI to write the turn into its transcript.
const SETTLE_WAIT: Duration = Duration::from_secs(5);
/// The largest transcript the gateway reads back (the tenant's runs write them).
const MAX_TRANSCRIPT_BYTES: u64 = 64 << 20;

/// A session id as a client sends it: `[A-Za-z0-9._:-]{1,128}`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ClientSessionId(String);

#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum SessionError {
    #[error("session id must be 1 to 128 characters of A-Z, a-z, 0-9, '.', '_', ':' or '-'")]
    InvalidId,
    #[error("session {0} is busy with another request; retry when it has finished")]
    Busy(String),
    #[error("session {0} not found")]
    NotFound(String),
    #[error("session storage failed: {0}")]
    Storage(String),
    #[error("messages: {0}")]
    NotAwaiting(transcript::NotAwaiting),
    /// The tenant's transcripts would take more than its quota (MiB) in the shared store.
    #[error("this tenant's saved conversations would exceed its transcript quota ({0} MiB); delete sessions it no longer needs (DELETE /v1/sessions/{{id}}) to free space")]
    QuotaExceeded(u64),
    /// The shared store (Redis) could not be reached: nothing was changed.
    #[error("session storage is unavailable: {0}")]
    Unavailable(String),
}

impl ClientSessionId {
    pub fn parse(text: &str) -> Result<Self, SessionError> {
        let ok = (1..=128).contains(&text.len())
            && text
                .bytes()
                .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'.' | b'_' | b':' | b'-'));
        if ok {
            Ok(Self(text.to_owned()))
        } else {
            Err(SessionError::InvalidId)
        }
    }

    /// A fresh id for a request that named none.
    pub fn generate() -> Self {
        Self(Uuid::new_v4().to_string())
    }

    pub fn as_str(&self) -> &str {
        &self.0
    }
}

/// What the gateway remembers about a session.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
pub struct SessionMeta {
    /// The client's id.
    pub id: String,
    /// The CLI's session uuid, as its last `result` line reported it.
    pub cli_session_id: Uuid,
    /// Unix seconds.
    pub created_at: u64,
    pub last_used_at: u64,
    pub turns: u64,
    pub model: String,
    /// SHA-256 (hex) of the transcript committed with the last turn, where the records keep
    /// transcripts (Redis): an instance whose own copy differs fetches it before resuming.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub transcript_sha256: Option<String>,
    /// That transcript's length: a local copy that begins with it is the same conversation
    /// (the CLI adds bookkeeping records after a turn's last message).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub transcript_len: Option<u64>,
}

pub use crate::clock::now_secs;

/// A session's transcript before a turn, so that the turn can be taken out again if it fails
/// ([`SessionStore::roll_back`]).
#[derive(Debug, Clone, Copy)]
pub struct Checkpoint {
    cli_session: Uuid,
    /// Whether the session had completed turns (its transcript may not be on disk yet: a live
    /// CLI writes it shortly after answering).
    existed: bool,
    /// The transcript's length before the turn, when that is known to be final (no process of
    /// the session is running): the turn is cut back to it, whatever it began with.
    length: Option<u64>,
}

impl Checkpoint {
    pub fn new(cli_session: Uuid, existed: bool) -> Self {
        Self {
            cli_session,
            existed,
            length: None,
        }
    }

    /// A checkpoint at the transcript's current `length`.
    pub fn at_length(mut self, length: Option<u64>) -> Self {
        self.length = length;
        self
    }
}

fn storage(e: std::io::Error) -> SessionError {
    SessionError::Storage(e.to_string())
}

pub struct SessionStore {
    volumes: Arc<Volumes>,
    records: Records,
}

impl SessionStore {
    pub fn new(volumes: Arc<Volumes>, records: Records) -> Self {
        Self { volumes, records }
    }

    /// Whether each turn's transcript is committed to the records (Redis) as well.
    pub fn keeps_transcripts(&self) -> bool {
        self.records.keeps_transcripts()
    }

    /// The session's stable key: also the CLI session uuid it starts with.
    pub fn key(&self, tenant: &TenantId, id: &ClientSessionId) -> Uuid {
        let namespace = Uuid::new_v5(&SESSIONS_NAMESPACE, tenant.as_dir_name().as_bytes());
        Uuid::new_v5(&namespace, id.as_str().as_bytes())
    }

    /// The tenant's CLI projects directory (created, and mounted, on first use).
    pub fn projects_dir(&self, tenant: &TenantId) -> Result<PathBuf, SessionError> {
        self.volumes
            .path(tenant, Volume::Transcripts)
            .map_err(|e| SessionError::Storage(e.to_string()))
    }

    /// The tenant's projects directory, which its runs can write: never resolved by name.
    fn projects(&self, tenant: &TenantId) -> Result<tree::UntrustedTree, SessionError> {
        tree::UntrustedTree::open(&self.projects_dir(tenant)?).map_err(storage)
    }

    /// Where, under the projects directory, the CLI keeps the transcript of `cli_session` run
    /// with working directory `cwd`.
    fn transcript_name(cwd: &Path, cli_session: Uuid) -> PathBuf {
        Path::new(&transcript::project_dir_name(cwd)).join(format!("{cli_session}.jsonl"))
    }

    /// Writes the transcript a new session resumes from (replacing whatever was there).
    pub fn seed_transcript(
        &self,
        tenant: &TenantId,
        cwd: &Path,
        cli_session: Uuid,
        transcript: &[u8],
    ) -> Result<(), SessionError> {
        let projects = self.projects(tenant)?;
        let name = Self::transcript_name(cwd, cli_session);
        // A run may have left a link or a file where the project directory belongs; it is
        // removed (the link, never its target) so the transcript lands in a real directory.
        if let Some(dir) = name.parent() {
            if projects.exists(dir) && !projects.is_dir(dir) {
                projects.remove(dir).map_err(storage)?;
            }
        }
        projects.write_new(&name, transcript).map_err(storage)
    }

    /// Removes a transcript a failed first turn may have left (`--session-id` would refuse it).
    pub fn remove_transcript(
        &self,
        tenant: &TenantId,
        cwd: &Path,
        cli_session: Uuid,
    ) -> Result<(), SessionError> {
        self.projects(tenant)?
            .remove(&Self::transcript_name(cwd, cli_session))
            .map_err(storage)
    }

    pub async fn load(
        &self,
        tenant: &TenantId,
        id: &ClientSessionId,
    ) -> Result<Option<SessionMeta>, SessionError> {
        self.records.load(tenant, self.key(tenant, id)).await
    }

    /// Records a turn of the session `lock` holds: its metadata and, where the records keep
    /// transcripts, `transcript` (the whole of it as the turn left it).
    pub async fn commit(
        &self,
        tenant: &TenantId,
        meta: &SessionMeta,
        transcript: Option<&[u8]>,
        lock: &TurnLock,
    ) -> Result<(), SessionError> {
        let id = ClientSessionId::parse(&meta.id)?;
        self.records
            .commit(tenant, self.key(tenant, &id), meta, transcript, lock)
            .await
    }

    /// The tenant's sessions, most recently used first.
    pub async fn list(&self, tenant: &TenantId) -> Result<Vec<SessionMeta>, SessionError> {
        self.records.list(tenant).await
    }

    /// The transcript the session's last turn committed, where the records keep transcripts.
    pub async fn committed_transcript(
        &self,
        tenant: &TenantId,
        id: &ClientSessionId,
    ) -> Result<Option<Vec<u8>>, SessionError> {
        self.records.transcript(tenant, self.key(tenant, id)).await
    }

    /// The session's transcript once it holds the turn that ended with the record
    /// `last_record` (the CLI writes it a few tens of milliseconds after printing it), up to
    /// its last whole line: what a turn commits.
    pub async fn settled_transcript(
        &self,
        tenant: &TenantId,
        cli_session: Uuid,
        last_record: Option<&str>,
    ) -> Result<Vec<u8>, SessionError> {
        let wanted = last_record.map(|uuid| format!("\"uuid\":\"{uuid}\""));
        let deadline = tokio::time::Instant::now() + SETTLE_WAIT;
        let mut pause = Duration::from_millis(5);
        loop {
            let mut bytes = self
                .read_transcript(tenant, cli_session)?
                .unwrap_or_default();
            let whole = bytes.iter().rposition(|b| *b == b'\n').map_or(0, |i| i + 1);
            bytes.truncate(whole);
            let settled = wanted
                .as_ref()
                .is_none_or(|w| String::from_utf8_lossy(&bytes).contains(w.as_str()));
            if settled {
                return Ok(bytes);
            }
            if tokio::time::Instant::now() >= deadline {
                tracing::warn!("the CLI had not recorded its turn's last message in time");
                return Ok(bytes);
            }
            tokio::time::sleep(pause).await;
            pause = (pause * 2).min(Duration::from_millis(50));
        }
    }

    /// Makes this instance's copy of the session's transcript the one its last turn committed
    /// (fetched from the records when it differs or is missing: that turn ran elsewhere), so
    /// the CLI resumes the conversation as it stands. Nothing to do where the records keep no
    /// transcripts (the CLI's own file is the transcript).
    pub async fn restore_transcript(
        &self,
        tenant: &TenantId,
        cwd: &Path,
        meta: &SessionMeta,
    ) -> Result<(), SessionError> {
        let (Some(wanted), Some(len)) = (&meta.transcript_sha256, meta.transcript_len) else {
            return Ok(());
        };
        let local = self.read_transcript(tenant, meta.cli_session_id)?;
        let committed_here = local.as_deref().is_some_and(|bytes| {
            usize::try_from(len)
                .ok()
                .and_then(|len| bytes.get(..len))
                .is_some_and(|prefix| sha256_hex(prefix) == *wanted)
        });
        if committed_here {
            return Ok(());
        }
        let id = ClientSessionId::parse(&meta.id)?;
        let bytes = self
            .committed_transcript(tenant, &id)
            .await?
            .ok_or_else(|| {
                SessionError::Storage("the session's committed transcript is missing".into())
            })?;
        if sha256_hex(&bytes) != *wanted {
            return Err(SessionError::Storage(
                "the session's committed transcript does not match its metadata".into(),
            ));
        }
        let projects = self.projects(tenant)?;
        let path = Self::find_transcript(&projects, meta.cli_session_id)
            .unwrap_or_else(|| Self::transcript_name(cwd, meta.cli_session_id));
        if let Some(dir) = path.parent() {
            if projects.exists(dir) && !projects.is_dir(dir) {
                projects.remove(dir).map_err(storage)?;
            }
        }
        projects.write_new(&path, &bytes).map_err(storage)
    }

    /// Where the CLI keeps the transcript of `cli_session` (a regular file), if anywhere.
    fn find_transcript(projects: &tree::UntrustedTree, cli_session: Uuid) -> Option<PathBuf> {
        let name = format!("{cli_session}.jsonl");
        projects
            .subdirs()
            .into_iter()
            .map(|d| d.join(&name))
            .find(|p| projects.is_file(p))
    }

    /// Takes a failed turn, begun with `prompt`, out of the transcript: from its prompt's record
    /// on (the prompt, a
    /// partial or made-up reply) everything is cut, and a session that had no transcript
    /// loses the one the turn started. By content rather than by length, because a live
    /// process may still have been writing the previous turn when this one began. Call only
    /// once the turn's process is gone.
    pub fn roll_back(
        &self,
        tenant: &TenantId,
        checkpoint: Checkpoint,
        prompt: &serde_json::Value,
    ) -> Result<(), SessionError> {
        let projects = self.projects(tenant)?;
        if !checkpoint.existed {
            for path in Self::derived_files(&projects, checkpoint.cli_session) {
                projects.remove(&path).map_err(storage)?;
            }
            return Ok(());
        }
        let Some(path) = Self::find_transcript(&projects, checkpoint.cli_session) else {
            return Ok(());
        };
        let bytes = projects
            .read(&path, MAX_TRANSCRIPT_BYTES)
            .map_err(storage)?;
        let cut = match checkpoint.length {
            Some(length) => Some(length).filter(|l| *l < bytes.len() as u64),
            None => transcript::turn_start(&bytes, prompt).map(|o| o as u64),
        };
        if let Some(offset) = cut {
            projects.truncate(&path, offset).map_err(storage)?;
        }
        Ok(())
    }

    /// The length of a session's transcript (none yet: `None`).
    pub fn transcript_len(
        &self,
        tenant: &TenantId,
        cli_session: Uuid,
    ) -> Result<Option<u64>, SessionError> {
        Ok(self
            .read_transcript(tenant, cli_session)?
            .map(|bytes| bytes.len() as u64))
    }

    /// Records the client's results for every deferred call of a session's last turn but the
    /// one the CLI runs again when it resumes ([`transcript::answer_deferred`]).
    pub fn answer_deferred(
        &self,
        tenant: &TenantId,
        cli_session: Uuid,
        deferred: &transcript::Deferred,
    ) -> Result<(), SessionError> {
        let projects = self.projects(tenant)?;
        let Some(path) = Self::find_transcript(&projects, cli_session) else {
            let id = deferred.call.get("id").and_then(serde_json::Value::as_str);
            return Err(SessionError::NotAwaiting(transcript::NotAwaiting(
                id.unwrap_or_default().to_owned(),
            )));
        };
        let bytes = projects
            .read(&path, MAX_TRANSCRIPT_BYTES)
            .map_err(storage)?;
        match transcript::answer_deferred(&bytes, deferred) {
            Ok(Some(more)) => projects.append(&path, &more).map_err(storage),
            Ok(None) => Ok(()),
            Err(e) => Err(SessionError::NotAwaiting(e)),
        }
    }

    /// The transcript of a session, wherever the CLI put it: only a regular file, of at most
    /// [`MAX_TRANSCRIPT_BYTES`].
    pub fn read_transcript(
        &self,
        tenant: &TenantId,
        cli_session: Uuid,
    ) -> Result<Option<Vec<u8>>, SessionError> {
        let projects = self.projects(tenant)?;
        let Some(found) = Self::find_transcript(&projects, cli_session) else {
            return Ok(None);
        };
        projects
            .read(&found, MAX_TRANSCRIPT_BYTES)
            .map(Some)
            .map_err(storage)
    }

    /// Removes a session's records and this instance's transcripts of it; `false` if there
    /// was none. Call with the session locked.
    pub async fn delete(
        &self,
        tenant: &TenantId,
        id: &ClientSessionId,
    ) -> Result<bool, SessionError> {
        let key = self.key(tenant, id);
        let meta = self.records.load(tenant, key).await?;
        self.forget_local(tenant, key, meta.as_ref().map(|m| m.cli_session_id))?;
        if meta.is_none() {
            return Ok(false);
        }
        self.records.remove(tenant, key).await
    }

    /// Removes what this instance keeps of a session's transcripts: the CLI session id is
    /// derived from the client id, so anything left would be inherited by the next
    /// conversation under that id (here, or when another instance deleted the session).
    pub fn forget_local(
        &self,
        tenant: &TenantId,
        key: Uuid,
        cli_session: Option<Uuid>,
    ) -> Result<(), SessionError> {
        let projects = self.projects(tenant)?;
        for cli_session in cli_session.into_iter().chain([key]) {
            for path in Self::derived_files(&projects, cli_session) {
                projects.remove(&path).map_err(storage)?;
            }
        }
        Ok(())
    }

    /// Everything the CLI keeps for one session, in every project dir: the transcript
    /// `<uuid>.jsonl` and the `<uuid>/` dir beside it (saved tool results, subagent
    /// transcripts). The CLI session id is derived from the client id, so anything left would
    /// be inherited by the next conversation under that id.
    fn derived_files(projects: &tree::UntrustedTree, cli_session: Uuid) -> Vec<PathBuf> {
        let transcript = format!("{cli_session}.jsonl");
        let dir = cli_session.to_string();
        projects
            .subdirs()
            .into_iter()
            .flat_map(|d| [d.join(&transcript), d.join(&dir)])
            .filter(|p| projects.exists(p))
            .collect()
    }

    /// Waits (a bounded time) until no other request, on any instance, runs a turn of this
    /// session.
    pub async fn lock(
        &self,
        tenant: &TenantId,
        key: Uuid,
        id: &ClientSessionId,
    ) -> Result<TurnLock, SessionError> {
        self.records.lock(tenant, key, id).await
    }

    /// Removes sessions idle for longer than `ttl`; returns how many. Records that expire by
    /// themselves (Redis keys) are left to do so.
    pub async fn expire(&self, ttl: Duration) -> usize {
        if self.records.expire_by_themselves() {
            return 0;
        }
        let cutoff = now_secs().saturating_sub(ttl.as_secs());
        let Ok(tenants) = std::fs::read_dir(self.volumes.tenants_dir()) else {
            return 0;
        };
        let mut removed = 0;
        for tenant in tenants.filter_map(|t| t.ok()) {
            let Some(name) = tenant.file_name().to_str().map(str::to_owned) else {
                continue;
            };
            let tenant = TenantId::from_dir_name(name);
            for meta in self.list(&tenant).await.unwrap_or_default() {
                if meta.last_used_at >= cutoff {
                    continue;
                }
                let Ok(id) = ClientSessionId::parse(&meta.id) else {
                    continue;
                };
                // A session in use is not idle, whatever its metadata says.
                if self.records.is_busy(self.key(&tenant, &id)) {
                    continue;
                }
                if self.delete(&tenant, &id).await.unwrap_or(false) {
                    removed += 1;
                }
            }
        }
        removed
    }
}

/// SHA-256 of `bytes`, in hex.
pub fn sha256_hex(bytes: &[u8]) -> String {
    use sha2::Digest;
    hex::encode(sha2::Sha256::digest(bytes))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn volumes(tenants_dir: impl Into<PathBuf>) -> Arc<Volumes> {
        Arc::new(Volumes::new(tenants_dir.into(), 0, 0))
    }

    fn store(tenants_dir: &Path, lock_wait: Duration) -> SessionStore {
        SessionStore::new(
            volumes(tenants_dir),
            Records::disk(tenants_dir.into(), lock_wait),
        )
    }

    async fn save(store: &SessionStore, t: &TenantId, meta: &SessionMeta) {
        let id = ClientSessionId::parse(&meta.id).expect("valid");
        let lock = store.lock(t, store.key(t, &id), &id).await.expect("lock");
        store.commit(t, meta, None, &lock).await.expect("commit");
    }

    fn tenant(name: &str) -> TenantId {
        TenantId::from_dir_name(name.to_owned())
    }

    #[test]
    fn client_ids_follow_the_documented_pattern() {
        for ok in ["user1-conv-123", "test-123", "a.b:c_d", &"x".repeat(128)] {
            assert!(ClientSessionId::parse(ok).is_ok(), "{ok}");
        }
        for bad in [
            "",
            "../etc",
            "a/b",
            "sp ace",
            "new\nline",
            &"x".repeat(129),
            "--resume",
        ] {
            if bad == "--resume" {
                // Allowed characters; harmless because the CLI gets a derived uuid, never this.
                continue;
            }
            assert_eq!(
                ClientSessionId::parse(bad),
                Err(SessionError::InvalidId),
                "{bad:?}"
            );
        }
    }

    #[test]
    fn one_client_id_names_different_sessions_for_different_tenants() {
        let store = store(Path::new("/nonexistent"), Duration::from_secs(1));
        let id = ClientSessionId::parse("conv-1").expect("valid");
        assert_ne!(store.key(&tenant("a"), &id), store.key(&tenant("b"), &id));
        assert_eq!(store.key(&tenant("a"), &id), store.key(&tenant("a"), &id));
    }

    #[tokio::test]
    async fn metadata_round_trips_lists_expires_and_deletes() {
        let dir = tempfile::tempdir().expect("tempdir");
        let store = store(dir.path(), Duration::from_secs(1));
        let t = tenant("t1");
        let id = ClientSessionId::parse("conv").expect("valid");
        let meta = SessionMeta {
            id: "conv".into(),
            cli_session_id: store.key(&t, &id),
            created_at: 1,
            last_used_at: now_secs(),
            turns: 1,
            model: "sonnet".into(),
            transcript_sha256: None,
            transcript_len: None,
        };
        save(&store, &t, &meta).await;
        assert_eq!(store.load(&t, &id).await.expect("load"), Some(meta.clone()));
        assert_eq!(store.list(&t).await.expect("list").len(), 1);
        assert_eq!(store.expire(Duration::from_secs(3600)).await, 0);
        let old = SessionMeta {
            last_used_at: 1,
            ..meta
        };
        save(&store, &t, &old).await;
        assert_eq!(store.expire(Duration::from_secs(3600)).await, 1);
        assert_eq!(store.load(&t, &id).await.expect("load"), None);
        assert!(!store.delete(&t, &id).await.expect("delete"));
    }

    #[tokio::test]
    async fn deleting_a_session_removes_its_transcript_and_the_files_derived_from_it() {
        let dir = tempfile::tempdir().expect("tempdir");
        let store = store(dir.path(), Duration::from_secs(1));
        let t = tenant("t1");
        let id = ClientSessionId::parse("conv").expect("valid");
        let uuid = store.key(&t, &id);
        let meta = SessionMeta {
            id: "conv".into(),
            cli_session_id: uuid,
            created_at: 1,
            last_used_at: now_secs(),
            turns: 1,
            model: "sonnet".into(),
            transcript_sha256: None,
            transcript_len: None,
        };
        save(&store, &t, &meta).await;
        let projects = store.projects_dir(&t).expect("projects");
        let other = Uuid::new_v4();
        for project in ["-workspace", "-elsewhere"] {
            let tool_results = projects
                .join(project)
                .join(uuid.to_string())
                .join("tool-results");
            std::fs::create_dir_all(&tool_results).expect("mkdir");
            std::fs::write(tool_results.join("big.txt"), "saved output").expect("write");
            std::fs::write(projects.join(project).join(format!("{uuid}.jsonl")), "{}")
                .expect("write");
            std::fs::write(projects.join(project).join(format!("{other}.jsonl")), "{}")
                .expect("write");
        }
        assert!(store.delete(&t, &id).await.expect("delete"));
        for project in ["-workspace", "-elsewhere"] {
            let left: Vec<String> = std::fs::read_dir(projects.join(project))
                .expect("project dir")
                .filter_map(|e| e.ok())
                .map(|e| e.file_name().to_string_lossy().into_owned())
                .collect();
            assert_eq!(left, [format!("{other}.jsonl")], "{project}");
        }
        assert_eq!(store.load(&t, &id).await.expect("load"), None);
    }

    #[tokio::test]
    async fn a_second_turn_on_a_busy_session_waits_then_is_refused() {
        let store = store(Path::new("/nonexistent"), Duration::from_millis(100));
        let t = tenant("t1");
        let id = ClientSessionId::parse("conv").expect("valid");
        let key = Uuid::new_v4();
        let held = store.lock(&t, key, &id).await.expect("first");
        assert!(matches!(
            store.lock(&t, key, &id).await,
            Err(SessionError::Busy(_))
        ));
        drop(held);
        assert!(store.lock(&t, key, &id).await.is_ok());
    }
}
