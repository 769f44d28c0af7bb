//! The audit log (`--audit-log FILE`): one JSON line per request, written when its response has
//! gone out whole (a stream's end included), to its own file, rotated by size. A line holds who
//! (tenant fingerprint, access key name), what (route, model, a hash of the session), how much
//! (tokens, cost as the upstream reported them) and how it went (status, duration): never
//! content, never a secret.
//!
//! Rotation is a few lines of std: the crates at hand rotate by time (`tracing-appender`), and a
//! size bound is what keeps a busy gateway's disk safe.

use std::io::Write;
use std::path::PathBuf;
use std::pin::Pin;
use std::sync::{Arc, Mutex};
use std::task::{Context, Poll};

use axum::extract::{Request, State};
use axum::middleware::Next;
use axum::response::Response;
use serde_json::{json, Value};

/// An audit file, rotated to `FILE.1` … `FILE.<keep>` past `max_bytes`.
pub struct AuditLog {
    path: PathBuf,
    max_bytes: u64,
    keep: usize,
    file: Mutex<Option<(std::fs::File, u64)>>,
}

impl AuditLog {
    pub fn new(path: PathBuf, max_bytes: u64, keep: usize) -> Self {
        Self {
            path,
            max_bytes: max_bytes.max(1),
            keep: keep.max(1),
            file: Mutex::new(None),
        }
    }

    /// Appends one line (a failure to write is logged, never the request's).
    pub fn write(&self, line: &Value) {
        let mut bytes = line.to_string().into_bytes();
        bytes.push(b'\n');
        let mut file = self.file.lock().unwrap_or_else(|e| e.into_inner());
        if let Err(e) = self.append(&mut file, &bytes) {
            tracing::warn!(error = %e, "could not write the audit log");
            *file = None;
        }
    }

    fn append(&self, file: &mut Option<(std::fs::File, u64)>, bytes: &[u8]) -> std::io::Result<()> {
        if file
            .as_ref()
            .is_some_and(|(_, len)| len + bytes.len() as u64 > self.max_bytes && *len > 0)
        {
            *file = None;
            self.rotate()?;
        }
        if file.is_none() {
            use std::os::unix::fs::OpenOptionsExt;
            let opened = std::fs::OpenOptions::new()
                .create(true)
                .append(true)
                .mode(0o600)
                .open(&self.path)?;
            let len = opened.metadata()?.len();
            *file = Some((opened, len));
        }
        if let Some((f, len)) = file.as_mut() {
            f.write_all(bytes)?;
            *len += bytes.len() as u64;
        }
        Ok(())
    }

    fn rotated(&self, n: usize) -> PathBuf {
        let mut name = self.path.as_os_str().to_owned();
        name.push(format!(".{n}"));
        PathBuf::from(name)
    }

    /// `FILE.<keep-1>` → `FILE.<keep>` … `FILE` → `FILE.1`; the oldest goes.
    fn rotate(&self) -> std::io::Result<()> {
        for n in (1..self.keep).rev() {
            match std::fs::rename(self.rotated(n), self.rotated(n + 1)) {
                Err(e) if e.kind() != std::io::ErrorKind::NotFound => return Err(e),
                _ => {}
            }
        }
        match std::fs::rename(&self.path, self.rotated(1)) {
            Err(e) if e.kind() != std::io::ErrorKind::NotFound => Err(e),
            _ => Ok(()),
        }
    }
}

/// What the request's handlers learn for its audit line, shared with them through the
/// request's extensions.
#[derive(Debug, Default, Clone)]
pub struct AuditRecord {
    pub tenant: Option<String>,
    pub access_key: Option<String>,
    pub model: Option<String>,
    /// The session's key (a keyed hash of tenant and client id: names no client text).
    pub session: Option<String>,
    pub input_tokens: u64,
    pub output_tokens: u64,
    pub cache_read_input_tokens: u64,
    pub cache_creation_input_tokens: u64,
    pub cost_usd: Option<f64>,
}

#[derive(Debug, Default, Clone)]
pub struct AuditHandle(Arc<Mutex<AuditRecord>>);

impl AuditHandle {
    pub fn update(&self, f: impl FnOnce(&mut AuditRecord)) {
        f(&mut self.0.lock().unwrap_or_else(|e| e.into_inner()));
    }

    fn snapshot(&self) -> AuditRecord {
        self.0.lock().unwrap_or_else(|e| e.into_inner()).clone()
    }
}

/// Writes the line when dropped: when the response body has been sent whole, or the client
/// went away.
struct Finish {
    log: Arc<AuditLog>,
    record: AuditHandle,
    method: String,
    route: &'static str,
    status: u16,
    started: std::time::Instant,
    completed: bool,
}

impl Drop for Finish {
    fn drop(&mut self) {
        let r = self.record.snapshot();
        self.log.write(&json!({
            "time": crate::clock::iso8601(crate::clock::now_ms() as i64),
            "tenant": r.tenant,
            "access_key": r.access_key,
            "method": self.method,
            "route": self.route,
            "model": r.model,
            "session": r.session,
            "status": self.status,
            "completed": self.completed,
            "duration_ms": self.started.elapsed().as_millis() as u64,
            "input_tokens": r.input_tokens,
            "output_tokens": r.output_tokens,
            "cache_read_input_tokens": r.cache_read_input_tokens,
            "cache_creation_input_tokens": r.cache_creation_input_tokens,
            "cost_usd": r.cost_usd,
        }));
    }
}

/// The response body, passed through; its end writes the audit line.
struct Audited {
    inner: axum::body::Body,
    finish: Option<Finish>,
}

impl http_body::Body for Audited {
    type Data = bytes::Bytes;
    type Error = axum::Error;

    fn poll_frame(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<http_body::Frame<Self::Data>, Self::Error>>> {
        let polled = Pin::new(&mut self.inner).poll_frame(cx);
        // The end: no more frames, or the last one of a body whose length was known (the
        // server stops polling once it has them all).
        let ended = match &polled {
            Poll::Ready(None) => true,
            Poll::Ready(Some(Ok(_))) => self.inner.is_end_stream(),
            _ => false,
        };
        if ended {
            if let Some(mut finish) = self.finish.take() {
                finish.completed = true;
            }
        }
        polled
    }

    fn is_end_stream(&self) -> bool {
        self.inner.is_end_stream()
    }

    fn size_hint(&self) -> http_body::SizeHint {
        self.inner.size_hint()
    }
}

/// The route template of `path`, never a client's text (a session id in the path).
fn route_of(path: &str) -> &'static str {
    const ROUTES: &[&str] = &[
        "/v1/messages",
        "/v1/messages/count_tokens",
        "/v1/chat/completions",
        "/v1/models",
        "/v1/sessions",
        "/v1/mcp/tools",
        "/v1/security",
        "/v1/usage",
    ];
    if let Some(route) = ROUTES.iter().find(|r| **r == path) {
        return route;
    }
    if path.starts_with("/v1/sessions/") {
        return "/v1/sessions/{id}";
    }
    "other"
}

/// Gives each `/v1/…` request a record its handlers fill, and writes its line when its
/// response has gone out.
pub async fn track(
    State(audit): State<Option<Arc<AuditLog>>>,
    mut request: Request,
    next: Next,
) -> Response {
    let Some(log) = audit else {
        return next.run(request).await;
    };
    let path = request.uri().path().to_owned();
    if !path.starts_with("/v1/") {
        return next.run(request).await;
    }
    let record = AuditHandle::default();
    request.extensions_mut().insert(record.clone());
    let method = request.method().to_string();
    let started = std::time::Instant::now();
    let response = next.run(request).await;
    let status = response.status().as_u16();
    let (parts, body) = response.into_parts();
    let finish = Finish {
        log,
        record,
        method,
        route: route_of(&path),
        status,
        started,
        completed: false,
    };
    Response::from_parts(
        parts,
        axum::body::Body::new(Audited {
            inner: body,
            finish: Some(finish),
        }),
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_file_rotates_past_its_size_keeping_the_newest() {
        let dir = tempfile::tempdir().expect("tempdir");
        let path = dir.path().join("audit.jsonl");
        let log = AuditLog::new(path.clone(), 100, 2);
        for i in 0..12 {
            log.write(&json!({"n": i, "pad": "xxxxxxxxxxxxxxxxxxxx"}));
        }
        let lines = |p: &std::path::Path| {
            std::fs::read_to_string(p)
                .unwrap_or_default()
                .lines()
                .count()
        };
        assert!(std::fs::metadata(&path).expect("current").len() <= 100);
        assert!(lines(&path) >= 1);
        assert!(lines(&log.rotated(1)) >= 1);
        assert!(lines(&log.rotated(2)) >= 1);
        assert!(!log.rotated(3).exists(), "only two kept");
        let newest = std::fs::read_to_string(&path).expect("read");
        assert!(newest.contains("\"n\":11"), "{newest}");
    }

    #[test]
    fn routes_are_templates_never_a_clients_text() {
        assert_eq!(route_of("/v1/messages"), "/v1/messages");
        assert_eq!(route_of("/v1/sessions/my-secret-conv"), "/v1/sessions/{id}");
        assert_eq!(route_of("/v1/whatever"), "other");
    }
}
