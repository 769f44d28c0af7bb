//! Every request the fake upstream receives, kept for tests to inspect.

use std::sync::{Arc, Mutex};

use serde::{Deserialize, Serialize};
use serde_json::Value;

#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct RecordedRequest {
    pub method: String,
    pub path: String,
    pub query: Option<String>,
    /// Header names lower-cased; repeated headers joined with ", ".
    pub headers: std::collections::BTreeMap<String, String>,
    /// The body as JSON when it parses, else as a string.
    pub body: Value,
}

impl RecordedRequest {
    pub fn header(&self, name: &str) -> Option<&str> {
        self.headers
            .get(&name.to_ascii_lowercase())
            .map(String::as_str)
    }

    /// The bearer token or API key this request authenticated with.
    pub fn credential(&self) -> Option<&str> {
        self.header("authorization")
            .and_then(|v| v.strip_prefix("Bearer "))
            .or_else(|| self.header("x-api-key"))
    }

    /// Whether this is a model call (`POST /v1/messages`).
    pub fn is_messages(&self) -> bool {
        self.method == "POST" && self.path == "/v1/messages"
    }

    /// All text of the request: system prompt and every message, for "did X reach the model" checks.
    pub fn body_text(&self) -> String {
        self.body.to_string()
    }
}

/// A shared, append-only log of requests.
#[derive(Debug, Clone, Default)]
pub struct Recorder(Arc<Mutex<Vec<RecordedRequest>>>);

impl Recorder {
    pub fn push(&self, request: RecordedRequest) {
        self.lock().push(request);
    }

    pub fn all(&self) -> Vec<RecordedRequest> {
        self.lock().clone()
    }

    /// Model calls whose body contains `needle` (e.g. a marker the test put in its prompt).
    pub fn messages_containing(&self, needle: &str) -> Vec<RecordedRequest> {
        self.lock()
            .iter()
            .filter(|r| r.is_messages() && r.body_text().contains(needle))
            .cloned()
            .collect()
    }

    pub fn clear(&self) {
        self.lock().clear();
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, Vec<RecordedRequest>> {
        // A panic while holding the lock cannot leave the Vec half-written, so poisoning is moot.
        self.0.lock().unwrap_or_else(|e| e.into_inner())
    }
}
