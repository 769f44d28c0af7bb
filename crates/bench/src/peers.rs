//! The gateway beside what a team would otherwise run, each with the pinned CLI against an
//! in-process fake upstream of its own: the simplest wrapper (a Python HTTP server running
//! `claude --print` per request with a temporary HOME per user, no sandbox:
//! `crates/bench/peers/wrapper.py`), `ccproxy-api` (PyPI, its Claude SDK plugin) and
//! `claude-max-api-proxy` (npm), installed by `crates/bench/peers/install.sh` (a peer not
//! installed is left out, and the table says so). Latency at one and at ten concurrent
//! clients, requests per second, and the peak memory of each server's whole process tree.

use std::path::Path;
use std::process::Stdio;
use std::time::{Duration, Instant};

use fake_anthropic::FakeAnthropic;
use serde_json::json;
use tokio::io::{AsyncBufReadExt, BufReader};

use crate::gateway::Gateway;
use crate::report::Block;
use crate::stats::Summary;

/// How a server is asked for a message.
#[derive(Clone, Copy)]
enum Route {
    /// The Messages API at this path, with this model name.
    Anthropic(&'static str, &'static str),
    /// Chat Completions at this path, with this model name.
    OpenAi(&'static str, &'static str),
}

/// One server under test, on a loopback port, until dropped.
struct Server {
    name: &'static str,
    url: String,
    pid: u32,
    route: Route,
    _held: Vec<Box<dyn std::any::Any + Send>>,
}

/// A free loopback port (free when asked; the server binds it a moment later).
fn free_port() -> anyhow::Result<u16> {
    Ok(std::net::TcpListener::bind("127.0.0.1:0")?
        .local_addr()?
        .port())
}

/// Waits (bounded) until `GET {url}/health` answers 200.
async fn until_healthy(url: &str, child: &mut tokio::process::Child) -> anyhow::Result<()> {
    let deadline = Instant::now() + Duration::from_secs(60);
    let client = reqwest::Client::new();
    loop {
        if let Ok(res) = client.get(format!("{url}/health")).send().await {
            if res.status().is_success() {
                return Ok(());
            }
        }
        anyhow::ensure!(child.try_wait()?.is_none(), "{url}: the server exited");
        anyhow::ensure!(Instant::now() < deadline, "{url}: not healthy after 60 s");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

impl Server {
    async fn wrapper(claude: &Path) -> anyhow::Result<Self> {
        let fake = FakeAnthropic::start(([127, 0, 0, 1], 0).into()).await?;
        let script = Path::new(env!("CARGO_MANIFEST_DIR")).join("peers/wrapper.py");
        let mut child = tokio::process::Command::new("python3")
            .arg(script)
            .arg("0")
            .arg(claude)
            .env("ANTHROPIC_BASE_URL", fake.base_url())
            .stdout(Stdio::piped())
            .stderr(Stdio::null())
            .kill_on_drop(true)
            .spawn()?;
        let stdout = child
            .stdout
            .take()
            .ok_or_else(|| anyhow::anyhow!("no stdout"))?;
        let mut lines = BufReader::new(stdout).lines();
        let url = loop {
            let line = lines
                .next_line()
                .await?
                .ok_or_else(|| anyhow::anyhow!("the wrapper exited before listening"))?;
            if let Some(url) = line.strip_prefix("wrapper listening on ") {
                break url.to_owned();
            }
        };
        let pid = child
            .id()
            .ok_or_else(|| anyhow::anyhow!("no wrapper pid"))?;
        Ok(Self {
            name: "minimal wrapper (`claude --print` per request)",
            url,
            pid,
            route: Route::Anthropic("/v1/messages", "sonnet"),
            _held: vec![Box::new(child), Box::new(fake)],
        })
    }

    /// A peer installed in `dir`, started with `args` in a scratch directory of its own, its
    /// CLI pointed at a fake upstream of its own with one shared credential (neither peer takes
    /// a credential per request).
    async fn peer(
        name: &'static str,
        dir: &Path,
        program: &str,
        args: &[String],
        env: &[(&str, String)],
        route: Route,
        port: u16,
    ) -> anyhow::Result<Self> {
        let fake = FakeAnthropic::start(([127, 0, 0, 1], 0).into()).await?;
        let scratch = tempfile::tempdir()?;
        let path = format!(
            "{}:{}:/usr/local/bin:/usr/bin:/bin",
            dir.join("bin").display(),
            dir.join("venv/bin").display()
        );
        let mut child = tokio::process::Command::new(program)
            .args(args)
            .current_dir(scratch.path())
            .env_clear()
            .env("PATH", path)
            .env("HOME", scratch.path())
            .env("ANTHROPIC_BASE_URL", fake.base_url())
            .env("CLAUDE_CODE_OAUTH_TOKEN", "sk-ant-oat01-peers.shared")
            .env("CLAUDE_CODE_DISABLE_NONESSENTIAL_TRAFFIC", "1")
            .env("DISABLE_AUTOUPDATER", "1")
            .envs(env.iter().map(|(k, v)| (k, v)))
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .kill_on_drop(true)
            .spawn()?;
        let url = format!("http://127.0.0.1:{port}");
        until_healthy(&url, &mut child).await?;
        let pid = child.id().ok_or_else(|| anyhow::anyhow!("no pid"))?;
        Ok(Self {
            name,
            url,
            pid,
            route,
            _held: vec![Box::new(child), Box::new(fake), Box::new(scratch)],
        })
    }

    /// ccproxy-api with only its Claude SDK plugin, quiet, without its calls home.
    async fn ccproxy(dir: &Path) -> anyhow::Result<Self> {
        let port = free_port()?;
        let config = dir.join(format!("ccproxy-{port}.toml"));
        std::fs::write(
            &config,
            format!(
                "enabled_plugins = [\"claude_sdk\"]\n[server]\nhost = \"127.0.0.1\"\nport = {port}\n[logging]\nlevel = \"WARNING\"\n[scheduler]\nversion_check_enabled = false\npricing_update_enabled = false\n[plugins.claude_sdk]\nsdk_message_mode = \"ignore\"\ninclude_system_messages_in_stream = false\npretty_format = false\n"
            ),
        )?;
        let config_arg = config.display().to_string();
        let server = Self::peer(
            "ccproxy-api 0.2.10 (Claude SDK plugin)",
            dir,
            &dir.join("venv/bin/ccproxy").display().to_string(),
            &["serve".into(), "--config".into(), config_arg.clone()],
            &[
                // Read before `--config` by its plugin discovery.
                ("CONFIG_FILE", config_arg),
                ("SCHEDULER__VERSION_CHECK_ENABLED", "false".into()),
                ("SCHEDULER__PRICING_UPDATE_ENABLED", "false".into()),
            ],
            Route::Anthropic("/claude/sdk/v1/messages", "claude-sonnet-4-5"),
            port,
        )
        .await;
        let _ = std::fs::remove_file(&config);
        server
    }

    async fn claude_max_api_proxy(dir: &Path) -> anyhow::Result<Self> {
        let port = free_port()?;
        let script = dir.join("cmap/node_modules/claude-max-api-proxy/dist/server/standalone.js");
        Self::peer(
            "claude-max-api-proxy 1.0.0",
            dir,
            "node",
            &[script.display().to_string(), port.to_string()],
            &[],
            Route::OpenAi("/v1/chat/completions", "claude-sonnet-4"),
            port,
        )
        .await
    }
}

/// `clients` concurrent clients (each its own user) sending `each` requests one after
/// another: every latency, the wall time, and the peak RSS of `pid`'s tree meanwhile.
async fn load(
    server: &Server,
    clients: usize,
    each: usize,
) -> anyhow::Result<(Vec<Duration>, Duration, u64)> {
    let (url, pid, route) = (server.url.as_str(), server.pid, server.route);
    let sampler = crate::gateway::PeakSampler::start(Some(pid), Duration::from_millis(50));
    let started = Instant::now();
    let mut tasks = Vec::new();
    for c in 0..clients {
        let url = url.to_owned();
        tasks.push(tokio::spawn(async move {
            let client = reqwest::Client::new();
            let mut took = Vec::with_capacity(each);
            for i in 0..each {
                let t = Instant::now();
                let messages = json!([{"role": "user", "content": format!("hello {i}")}]);
                let request = match route {
                    Route::Anthropic(path, model) => client
                        .post(format!("{url}{path}"))
                        .json(&json!({"model": model, "max_tokens": 100, "messages": messages})),
                    Route::OpenAi(path, model) => client
                        .post(format!("{url}{path}"))
                        .json(&json!({"model": model, "messages": messages})),
                };
                let res = request
                    .bearer_auth(format!("sk-ant-oat01-peer{c}.bench"))
                    .send()
                    .await?;
                anyhow::ensure!(res.status() == 200, "status {}", res.status());
                res.bytes().await?;
                took.push(t.elapsed());
            }
            Ok::<_, anyhow::Error>(took)
        }));
    }
    let mut all = Vec::new();
    for t in tasks {
        all.extend(t.await??);
    }
    let wall = started.elapsed();
    Ok((all, wall, sampler.stop().await))
}

pub async fn peers(
    bin: &Path,
    claude: &Path,
    requests: usize,
    peers_dir: &Path,
) -> anyhow::Result<Vec<Block>> {
    let gateway = Gateway::start(bin, claude, &["--max-concurrent-runs", "10"]).await?;
    let gateway = Server {
        name: "claude-gateway (sandboxed)",
        url: gateway.url.clone(),
        pid: gateway
            .pid()
            .ok_or_else(|| anyhow::anyhow!("no gateway pid"))?,
        route: Route::Anthropic("/v1/messages", "sonnet"),
        _held: vec![Box::new(gateway)],
    };
    let mut servers = vec![gateway, Server::wrapper(claude).await?];
    let mut missing = Vec::new();
    for (name, started) in [
        ("ccproxy-api", Server::ccproxy(peers_dir).await),
        (
            "claude-max-api-proxy",
            Server::claude_max_api_proxy(peers_dir).await,
        ),
    ] {
        match started {
            Ok(server) => servers.push(server),
            Err(e) => missing.push(format!("{name} ({e})")),
        }
    }
    let each = requests.div_ceil(10).max(1);
    let mut rows = Vec::new();
    for server in &servers {
        // One warm-up (the gateway checks each credential once; the wrapper makes its HOME).
        load(server, 1, 1).await?;
        let (one, _, one_peak) = load(server, 1, requests).await?;
        let (ten, wall, ten_peak) = load(server, 10, each).await?;
        rows.push((
            server.name,
            Summary::of(&one),
            Summary::of(&ten),
            ten.len() as f64 / wall.as_secs_f64(),
            one_peak.max(ten_peak),
        ));
    }
    drop(servers);
    let mut body = String::from(
        "| server | 1 client p50 ms | p95 ms | 10 clients p50 ms | p95 ms | requests/s at 10 | peak RSS MiB |\n|---|---|---|---|---|---|---|\n",
    );
    for (name, one, ten, rps, peak) in &rows {
        body.push_str(&format!(
            "| {name} | {:.0} | {:.0} | {:.0} | {:.0} | {rps:.1} | {:.0} |\n",
            one.median_ms,
            one.p95_ms,
            ten.median_ms,
            ten.p95_ms,
            *peak as f64 / 1024.0
        ));
    }
    body.push_str("\nThe gateway against each (latency at the median with one client and with ten, requests per second, peak memory):\n\n");
    let g = &rows[0];
    for peer in &rows[1..] {
        body.push_str(&format!(
            "- {}: **{:.2}×** / {:.2}× the latency, {:.2}× the requests per second, {:.2}× the peak memory\n",
            peer.0,
            g.1.median_ms / peer.1.median_ms.max(f64::EPSILON),
            g.2.median_ms / peer.2.median_ms.max(f64::EPSILON),
            g.3 / peer.3.max(f64::EPSILON),
            g.4 as f64 / (peer.4 as f64).max(1.0),
        ));
    }
    for name in &missing {
        body.push_str(&format!(
            "- {name}: not run (install the peers with `crates/bench/peers/install.sh`)\n"
        ));
    }
    body.push_str("\nEvery server runs the pinned CLI against a fake upstream of its own; the gateway with `--max-concurrent-runs 10` so that all run ten CLIs at once. The gateway runs each CLI in its sandbox with a credential per tenant it never hands the CLI; the wrapper passes each caller's token; ccproxy-api and claude-max-api-proxy run every request with one credential of the server's, without a sandbox, the CLI's tools on (ccproxy-api through claude-agent-sdk, claude-max-api-proxy with `claude --print` per request).\n");
    Ok(vec![Block::new(
        "peers",
        format!("The gateway beside what a team would otherwise run ({requests} requests per client count)"),
        &format!("{} peers --requests {requests}", crate::load::BENCH),
        &body,
    )])
}
