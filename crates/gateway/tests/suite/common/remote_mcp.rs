//! Remote MCP servers for tests: the real `@modelcontextprotocol/server-everything` (pinned in
//! tests/mcp-servers) over streamable HTTP or SSE, behind a bearer-token gate, all on loopback.

use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::Duration;

use axum::body::Body;
use axum::extract::{Request, State};
use axum::http::{HeaderValue, StatusCode};
use axum::response::{IntoResponse, Response};
use futures::TryStreamExt;
use tokio::process::{Child, Command};

use super::repo_root;

/// A free loopback port (released again, for a child to take).
fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .and_then(|l| l.local_addr())
        .map(|a| a.port())
        .expect("free port")
}

/// `server-everything` in `mode` (`streamableHttp` or `sse`), killed on drop.
pub struct Everything {
    pub port: u16,
    _child: Child,
}

impl Everything {
    pub async fn start(mode: &str) -> Self {
        let port = free_port();
        let script = repo_root().join(
            "tests/mcp-servers/node_modules/@modelcontextprotocol/server-everything/dist/index.js",
        );
        let child = Command::new("node")
            .arg(script)
            .arg(mode)
            .env("PORT", port.to_string())
            .stdout(std::process::Stdio::null())
            .stderr(std::process::Stdio::null())
            .kill_on_drop(true)
            .spawn()
            .expect("node runs server-everything");
        for _ in 0..200 {
            if tokio::net::TcpStream::connect(("127.0.0.1", port))
                .await
                .is_ok()
            {
                return Self {
                    port,
                    _child: child,
                };
            }
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
        panic!("server-everything ({mode}) did not listen on {port}");
    }
}

#[derive(Clone)]
struct GateState {
    upstream: u16,
    token: String,
    redirect: Option<String>,
    hits: Arc<AtomicUsize>,
    client: reqwest::Client,
}

/// A reverse proxy on loopback that lets through only requests bearing its token (or answers
/// every request with a redirect), and counts what reached it.
pub struct Gate {
    pub port: u16,
    hits: Arc<AtomicUsize>,
}

impl Gate {
    /// Forwards to `127.0.0.1:upstream` requests that carry `Authorization: Bearer token`.
    pub async fn bearer(upstream: u16, token: &str) -> Self {
        Self::start(upstream, token, None).await
    }

    /// Answers every request with `307 Location: location`.
    pub async fn redirecting(location: &str) -> Self {
        Self::start(0, "", Some(location.to_owned())).await
    }

    async fn start(upstream: u16, token: &str, redirect: Option<String>) -> Self {
        let hits = Arc::new(AtomicUsize::new(0));
        let state = GateState {
            upstream,
            token: token.to_owned(),
            redirect,
            hits: hits.clone(),
            client: super::client(),
        };
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
            .await
            .expect("bind");
        let port = listener.local_addr().expect("addr").port();
        let app = axum::Router::new().fallback(forward).with_state(state);
        tokio::spawn(async move {
            let _ = axum::serve(listener, app).await;
        });
        Self { port, hits }
    }

    /// How many requests reached the gate.
    pub fn hits(&self) -> usize {
        self.hits.load(Ordering::SeqCst)
    }
}

async fn forward(State(gate): State<GateState>, request: Request) -> Response {
    gate.hits.fetch_add(1, Ordering::SeqCst);
    if let Some(location) = &gate.redirect {
        let mut res = StatusCode::TEMPORARY_REDIRECT.into_response();
        res.headers_mut().insert(
            "location",
            HeaderValue::from_str(location).expect("location"),
        );
        return res;
    }
    let expected = format!("Bearer {}", gate.token);
    let presented = request
        .headers()
        .get("authorization")
        .and_then(|v| v.to_str().ok());
    if presented != Some(expected.as_str()) {
        return (
            StatusCode::UNAUTHORIZED,
            [("content-type", "application/json")],
            r#"{"error":"invalid_token"}"#,
        )
            .into_response();
    }
    let (parts, body) = request.into_parts();
    let path = parts
        .uri
        .path_and_query()
        .map_or("/", |p| p.as_str())
        .to_owned();
    let body = axum::body::to_bytes(body, 16 * 1024 * 1024)
        .await
        .unwrap_or_default();
    let mut upstream = gate.client.request(
        parts.method.clone(),
        format!("http://127.0.0.1:{}{path}", gate.upstream),
    );
    for (name, value) in &parts.headers {
        if !matches!(name.as_str(), "host" | "authorization" | "content-length") {
            upstream = upstream.header(name, value);
        }
    }
    let Ok(res) = upstream.body(body).send().await else {
        return StatusCode::BAD_GATEWAY.into_response();
    };
    let mut out = Response::builder().status(res.status());
    for (name, value) in res.headers() {
        if !matches!(
            name.as_str(),
            "content-length" | "transfer-encoding" | "connection"
        ) {
            out = out.header(name, value);
        }
    }
    out.body(Body::from_stream(
        res.bytes_stream().map_err(std::io::Error::other),
    ))
    .unwrap_or_else(|_| StatusCode::BAD_GATEWAY.into_response())
}
