//! Test harness: the real `claude-gateway` binary, the real pinned CLI, and an in-process
//! fake-anthropic upstream that records what reached it. Everything listens on 127.0.0.1.
#![allow(dead_code)]

pub mod alone;
pub mod redis_server;
pub mod remote_mcp;

use std::path::PathBuf;
use std::process::Stdio;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use fake_anthropic::{FakeAnthropic, FakeHandle, RecordedRequest};
use serde_json::{json, Value};
use tokio::io::{AsyncBufReadExt, BufReader};
use tokio::process::{Child, Command};

/// An HTTP client for tests (TLS provider installed as the gateway installs it).
pub fn client() -> reqwest::Client {
    claude_gateway::tls::client_builder()
        .build()
        .expect("client")
}

pub fn repo_root() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../..")
}

/// The pinned CLI, or the one `scripts/check-cli.sh` names in `CLAUDE_GATEWAY_TEST_CLI`.
pub fn claude_bin() -> PathBuf {
    if let Some(other) = std::env::var_os("CLAUDE_GATEWAY_TEST_CLI") {
        return PathBuf::from(other);
    }
    let bin = repo_root().join("node_modules/.bin/claude");
    assert!(
        bin.exists(),
        "the pinned Claude Code CLI is missing: run `npm ci` in the repository root"
    );
    bin
}

/// The version of the CLI under test (`2.1.332` at the pin), as it reports it.
pub fn cli_version() -> String {
    let out = std::process::Command::new(claude_bin())
        .arg("--version")
        .output()
        .expect("the CLI runs");
    String::from_utf8_lossy(&out.stdout)
        .split_whitespace()
        .next()
        .unwrap_or_default()
        .to_owned()
}

pub struct Gateway {
    pub url: String,
    pub fake: FakeHandle,
    pub data_dir: DataDir,
    child: Child,
    logs: Arc<Mutex<String>>,
    _gate: alone::Hold,
}

/// The gateway's data dir: its own temporary one, or one a test keeps across restarts.
pub enum DataDir {
    Temp(tempfile::TempDir),
    Kept(PathBuf),
}

impl DataDir {
    pub fn path(&self) -> &std::path::Path {
        match self {
            DataDir::Temp(t) => t.path(),
            DataDir::Kept(p) => p,
        }
    }
}

pub struct GatewayBuilder {
    data_dir: Option<PathBuf>,
    args: Vec<String>,
    env: Vec<(String, String)>,
    claude_bin: Option<PathBuf>,
    alone: bool,
}

impl GatewayBuilder {
    pub fn arg(mut self, arg: impl Into<String>) -> Self {
        self.args.push(arg.into());
        self
    }

    pub fn args(mut self, args: &[&str]) -> Self {
        self.args.extend(args.iter().map(|a| a.to_string()));
        self
    }

    /// Use (and keep) this data dir, e.g. to restart a gateway on the same state.
    pub fn data_dir(mut self, dir: &std::path::Path) -> Self {
        self.data_dir = Some(dir.to_path_buf());
        self
    }

    /// An extra variable in the gateway's own environment.
    pub fn env(mut self, key: &str, value: &str) -> Self {
        self.env.push((key.into(), value.into()));
        self
    }

    pub fn claude_bin(mut self, bin: impl Into<PathBuf>) -> Self {
        self.claude_bin = Some(bin.into());
        self
    }

    /// Run while no other test's gateway runs (for attacks that load the whole machine).
    pub fn alone(mut self) -> Self {
        self.alone = true;
        self
    }

    pub async fn start(self) -> Gateway {
        let gate = alone::acquire(self.alone).await;
        let fake = FakeAnthropic::start(([127, 0, 0, 1], 0).into())
            .await
            .expect("fake upstream starts");
        let data_dir = match self.data_dir {
            Some(dir) => DataDir::Kept(dir),
            None => DataDir::Temp(tempfile::tempdir().expect("tempdir")),
        };
        let claude = self.claude_bin.unwrap_or_else(claude_bin);
        let mut args = self.args;
        if !args.iter().any(|a| a == "--upstream-max-retries") {
            // Tests script upstream failures; the CLI's own backoff would only slow them down.
            args.extend(["--upstream-max-retries".into(), "0".into()]);
        }
        let mut child = Command::new(env!("CARGO_BIN_EXE_claude-gateway"))
            .arg("serve")
            .args(["--listen", "127.0.0.1:0", "--log-format", "json"])
            .arg("--data-dir")
            .arg(data_dir.path())
            .arg("--claude-bin")
            .arg(&claude)
            .args(&args)
            .env_clear()
            .env("PATH", std::env::var("PATH").unwrap_or_default())
            .env("ANTHROPIC_BASE_URL", fake.base_url())
            // Debug level, so the no-secret-in-logs checks cover the chattiest output.
            .env("RUST_LOG", "debug")
            .envs(self.env.iter().map(|(k, v)| (k, v)))
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .kill_on_drop(true)
            .spawn()
            .expect("gateway binary starts");
        let logs = Arc::new(Mutex::new(String::new()));
        let stderr = child.stderr.take().expect("stderr");
        let sink = logs.clone();
        tokio::spawn(async move {
            let mut lines = BufReader::new(stderr).lines();
            while let Ok(Some(line)) = lines.next_line().await {
                let mut logs = sink.lock().unwrap_or_else(|e| e.into_inner());
                logs.push_str(&line);
                logs.push('\n');
            }
        });
        let stdout = child.stdout.take().expect("stdout");
        let mut lines = BufReader::new(stdout).lines();
        let url = tokio::time::timeout(Duration::from_secs(60), async {
            while let Ok(Some(line)) = lines.next_line().await {
                if let Some(url) = line.strip_prefix("claude-gateway listening on ") {
                    return url.to_owned();
                }
            }
            panic!("gateway exited before listening");
        })
        .await
        .expect("gateway listens within 60 s");
        Gateway {
            url,
            fake,
            data_dir,
            child,
            logs,
            _gate: gate,
        }
    }
}

impl Gateway {
    pub fn builder() -> GatewayBuilder {
        GatewayBuilder {
            data_dir: None,
            args: Vec::new(),
            env: Vec::new(),
            claude_bin: None,
            alone: false,
        }
    }

    pub async fn start() -> Gateway {
        Self::builder().start().await
    }

    pub fn logs(&self) -> String {
        self.logs.lock().unwrap_or_else(|e| e.into_inner()).clone()
    }

    pub fn upstream(&self) -> Vec<RecordedRequest> {
        self.fake.recorder.all()
    }

    /// The data dir's `tenants/` as the gateway sees it: tenants' workspaces and transcripts
    /// are file systems mounted in the gateway's own mount namespace, seen through its root.
    pub fn tenants_dir(&self) -> PathBuf {
        let pid = self.child.id().expect("the gateway runs");
        let inside = self.data_dir.path().join("tenants");
        PathBuf::from(format!("/proc/{pid}/root")).join(inside.strip_prefix("/").unwrap_or(&inside))
    }

    /// Model calls that carried `marker` anywhere in their body.
    pub fn upstream_with(&self, marker: &str) -> Vec<RecordedRequest> {
        self.fake.recorder.messages_containing(marker)
    }

    pub fn post(&self, path: &str) -> reqwest::RequestBuilder {
        client().post(format!("{}{}", self.url, path))
    }

    pub fn get(&self, path: &str) -> reqwest::RequestBuilder {
        client().get(format!("{}{}", self.url, path))
    }

    /// `GET path`: the status and the JSON body.
    pub async fn get_json(&self, path: &str) -> (u16, Value) {
        let res = self.get(path).send().await.expect("request sent");
        let status = res.status().as_u16();
        (status, res.json().await.expect("JSON body"))
    }

    /// `GET path` with a bearer token: the status and the JSON body.
    pub async fn get_json_as(&self, token: &str, path: &str) -> (u16, Value) {
        let res = self
            .get(path)
            .bearer_auth(token)
            .send()
            .await
            .expect("request sent");
        let status = res.status().as_u16();
        (status, res.json().await.expect("JSON body"))
    }

    /// `POST /v1/messages` with whatever credential the body itself carries.
    pub async fn messages_body_only(&self, body: &Value) -> reqwest::Response {
        self.post("/v1/messages")
            .json(body)
            .send()
            .await
            .expect("request sent")
    }

    /// `POST /v1/messages` with a bearer token.
    pub async fn messages(&self, token: &str, body: Value) -> reqwest::Response {
        self.post("/v1/messages")
            .bearer_auth(token)
            .json(&body)
            .send()
            .await
            .expect("request sent")
    }

    /// The gateway's `/metrics` page.
    pub async fn metrics(&self) -> String {
        self.get("/metrics")
            .send()
            .await
            .expect("sent")
            .text()
            .await
            .expect("text")
    }

    /// How many CLI runs the gateway reports as running, from `/metrics`.
    pub async fn running_runs(&self) -> u64 {
        self.metrics()
            .await
            .lines()
            .find_map(|l| l.strip_prefix("gateway_running_runs "))
            .and_then(|v| v.trim().parse::<f64>().ok())
            .map_or(0, |v| v as u64)
    }

    /// Waits (bounded) until `n` runs hold a slot, so a test can order requests
    /// by state rather than by sleeping.
    pub async fn until_running(&self, n: u64) {
        for _ in 0..300 {
            if self.running_runs().await >= n {
                return;
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
        panic!("{n} runs never started");
    }

    /// The run dirs still present under the data dir.
    pub fn leftover_run_dirs(&self) -> usize {
        std::fs::read_dir(self.data_dir.path().join("runs"))
            .map(|d| d.count())
            .unwrap_or(0)
    }

    pub fn pid(&self) -> u32 {
        self.child.id().expect("running")
    }

    /// Sends SIGTERM, as Cloud Run does to stop an instance.
    pub fn terminate(&self) {
        let pid = self.child.id().expect("running");
        let status = std::process::Command::new("kill")
            .args(["-TERM", &pid.to_string()])
            .status()
            .expect("kill runs");
        assert!(status.success());
    }

    /// Waits (at most `limit`) for the gateway to exit; its exit status.
    pub async fn wait_exit(&mut self, limit: Duration) -> Option<std::process::ExitStatus> {
        tokio::time::timeout(limit, self.child.wait())
            .await
            .ok()
            .and_then(|r| r.ok())
    }

    /// Processes under the gateway (CLI runs, their sandboxes and tools).
    pub fn descendants(&self) -> usize {
        let Some(root) = self.child.id() else {
            return 0;
        };
        descendants_of(root).len()
    }

    pub async fn stop(mut self) -> String {
        let _ = self.child.start_kill();
        let _ = self.child.wait().await;
        // Give the log reader a moment to drain what the process wrote last.
        tokio::time::sleep(Duration::from_millis(100)).await;
        self.logs()
    }
}

/// A minimal request body.
pub fn body(prompt: &str) -> Value {
    json!({"model": "sonnet", "max_tokens": 256, "messages": [{"role": "user", "content": prompt}]})
}

/// A scripted Bash tool call.
pub fn bash(command: &str) -> Value {
    json!({"name": "Bash", "input": {"command": command, "description": "attempt"}})
}

/// Runs the scripted `tools` as `token` at `level` (in `session`, if named): the status, and
/// the tool results as the upstream saw them.
pub async fn tool_run(
    gw: &Gateway,
    token: &str,
    level: &str,
    marker: &str,
    session: Option<&str>,
    tools: Vec<Value>,
) -> (u16, Vec<String>) {
    let mut req = body(&scripted(marker, json!({"tools": tools})));
    req["security_level"] = json!(level);
    if let Some(id) = session {
        req["session_id"] = json!(id);
    }
    let status = gw.messages(token, req).await.status().as_u16();
    (status, tool_results(&gw.upstream_with(marker)))
}

/// A prompt that scripts the fake model (see fake_anthropic::script).
pub fn scripted(marker: &str, script: Value) -> String {
    format!("{marker}\nFAKE-SCRIPT: {script}")
}

/// One parsed server-sent event.
#[derive(Debug, Clone)]
pub struct Sse {
    pub event: String,
    pub data: Value,
}

/// Parses a complete `text/event-stream` body.
pub fn parse_sse(text: &str) -> Vec<Sse> {
    text.split("\n\n")
        .filter(|chunk| !chunk.trim().is_empty())
        .filter_map(|chunk| {
            let mut event = String::from("message");
            let mut data = String::new();
            for line in chunk.lines() {
                if let Some(v) = line.strip_prefix("event:") {
                    event = v.trim().to_owned();
                } else if let Some(v) = line.strip_prefix("data:") {
                    data.push_str(v.trim_start());
                }
            }
            if data.is_empty() {
                return None;
            }
            Some(Sse {
                event,
                data: serde_json::from_str(&data).unwrap_or(Value::String(data)),
            })
        })
        .collect()
}

/// The text of all `text_delta`s in a stream.
pub fn streamed_text(events: &[Sse]) -> String {
    events
        .iter()
        .filter(|e| e.event == "content_block_delta")
        .filter_map(|e| e.data["delta"]["text"].as_str())
        .collect()
}

/// The upstream's view of a tool round trip: the tool_result contents of the last model call
/// (each call carries the whole conversation so far, so the last one holds them all).
pub fn tool_results(requests: &[RecordedRequest]) -> Vec<String> {
    requests
        .iter()
        .max_by_key(|r| r.body["messages"].as_array().map_or(0, Vec::len))
        .into_iter()
        .flat_map(|r| r.body["messages"].as_array().cloned().unwrap_or_default())
        .flat_map(|m| m["content"].as_array().cloned().unwrap_or_default())
        .filter(|b| b["type"] == "tool_result")
        .map(|b| match &b["content"] {
            Value::String(s) => s.clone(),
            other => other.to_string(),
        })
        .collect()
}

pub use proctree::descendants_of;

/// How long a test waits for the gateway to finish cleaning up after a run (process trees
/// reaped, run dirs removed). Generous on purpose: a loaded two-core CI machine reaps late,
/// and the wait ends as soon as the state is reached.
pub const SETTLE: Duration = Duration::from_secs(30);

/// Polls `check` every 100 ms for up to `limit`; whether it came true.
pub async fn eventually(limit: Duration, mut check: impl FnMut() -> bool) -> bool {
    let deadline = std::time::Instant::now() + limit;
    loop {
        if check() {
            return true;
        }
        if std::time::Instant::now() >= deadline {
            return false;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

/// Every credential-shaped string in `logs` that is not redacted.
pub fn leaked_credentials(logs: &str) -> Vec<String> {
    logs.match_indices("sk-ant-")
        .map(|(i, _)| logs[i..].chars().take(40).collect::<String>())
        .filter(|s| !s.starts_with("sk-ant-[redacted]"))
        .collect()
}

impl Drop for Gateway {
    /// Every test doubles as a log scan: whatever the test did, no credential reached the
    /// gateway's log output (debug level included).
    fn drop(&mut self) {
        // The gateway is gone before its data dir is removed: left running a moment longer
        // (kill-on-drop does not wait), it re-creates directories the removal went past and
        // leaves them behind, a copy of the CLI among them.
        let _ = self.child.start_kill();
        let deadline = std::time::Instant::now() + Duration::from_secs(10);
        while matches!(self.child.try_wait(), Ok(None)) && std::time::Instant::now() < deadline {
            std::thread::sleep(Duration::from_millis(5));
        }
        if std::thread::panicking() {
            // The failed test's output then shows what the gateway itself said.
            let logs = self.logs();
            let own: Vec<&str> = logs
                .lines()
                .filter(|l| l.contains("\"target\":\"claude_gateway"))
                .collect();
            eprintln!("--- the gateway's last log lines ---");
            for line in &own[own.len().saturating_sub(80)..] {
                eprintln!("{line}");
            }
            return;
        }
        let leaked = leaked_credentials(&self.logs());
        assert!(
            leaked.is_empty(),
            "credentials in the gateway's logs: {leaked:?}"
        );
    }
}

/// A refusal's `retry-after`, in seconds.
pub fn retry_after(res: &reqwest::Response) -> u64 {
    res.headers()
        .get("retry-after")
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.parse().ok())
        .expect("a retry-after header in seconds")
}
