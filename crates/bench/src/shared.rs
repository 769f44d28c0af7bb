//! What sharing state through Redis costs (`--redis-url`): a request's latency with the local
//! and the Redis-backed checks side by side, and rate-limit checks per second, local vs Redis.
//! Redis is a `redis-server` of the benchmark's own on a loopback port.

use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use claude_gateway::admission::{RateError, RateLimits};
use claude_gateway::tenant::identity::TenantId;

use crate::gateway::Gateway;
use crate::report::Block;
use crate::stats::Summary;

struct RedisServer {
    child: Child,
    port: u16,
    _dir: tempfile::TempDir,
}

impl RedisServer {
    fn start() -> anyhow::Result<Self> {
        let port = std::net::TcpListener::bind("127.0.0.1:0")?
            .local_addr()?
            .port();
        let dir = tempfile::tempdir()?;
        let child = Command::new("redis-server")
            .args(["--port", &port.to_string(), "--bind", "127.0.0.1"])
            .args(["--save", "", "--appendonly", "no"])
            .arg("--dir")
            .arg(dir.path())
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .map_err(|e| {
                anyhow::anyhow!("redis-server (scripts/setup.sh --tests installs it): {e}")
            })?;
        let server = Self {
            child,
            port,
            _dir: dir,
        };
        let deadline = Instant::now() + Duration::from_secs(10);
        while std::net::TcpStream::connect(("127.0.0.1", port)).is_err() {
            anyhow::ensure!(Instant::now() < deadline, "redis-server did not listen");
            std::thread::sleep(Duration::from_millis(20));
        }
        Ok(server)
    }

    fn url(&self) -> String {
        format!("redis://127.0.0.1:{}/", self.port)
    }
}

impl Drop for RedisServer {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// `count_tokens` (identity, rate check, one upstream call; no CLI run) `requests` times,
/// one at a time: the latency of each.
async fn requests(gw: &Gateway, requests: usize) -> anyhow::Result<Vec<Duration>> {
    let client = reqwest::Client::new();
    let body =
        serde_json::json!({"model": "sonnet", "messages": [{"role": "user", "content": "hi"}]});
    let mut took = Vec::with_capacity(requests);
    for _ in 0..requests {
        let started = Instant::now();
        let res = client
            .post(format!("{}/v1/messages/count_tokens", gw.url))
            .bearer_auth("sk-ant-oat01-bench-shared.a")
            .json(&body)
            .send()
            .await?;
        anyhow::ensure!(
            res.status() == 200,
            "count_tokens answered {}",
            res.status()
        );
        res.bytes().await?;
        took.push(started.elapsed());
    }
    Ok(took)
}

/// Rate checks answered per second by `limits` from `tasks` concurrent callers, for `seconds`.
async fn checks_per_second(limits: RateLimits, tasks: usize, seconds: u64) -> anyhow::Result<f64> {
    let limits = std::sync::Arc::new(limits);
    let until = Instant::now() + Duration::from_secs(seconds);
    let mut handles = Vec::new();
    for t in 0..tasks {
        let limits = limits.clone();
        handles.push(tokio::spawn(async move {
            let tenant = TenantId::from_dir_name(format!("bench-{t}"));
            let mut n = 0u64;
            while Instant::now() < until {
                // A refusal is an answered check too; only an unavailable store is a failure.
                if let Err(RateError::Unavailable(e)) = limits.check_tenant(&tenant).await {
                    return Err(anyhow::anyhow!("a check failed: {e}"));
                }
                n += 1;
            }
            Ok(n)
        }));
    }
    let mut total = 0;
    for h in handles {
        total += h.await??;
    }
    Ok(total as f64 / seconds as f64)
}

pub async fn shared(
    bin: &std::path::Path,
    claude: &std::path::Path,
    count: usize,
    seconds: u64,
) -> anyhow::Result<Vec<Block>> {
    let redis = RedisServer::start()?;
    let url = redis.url();
    let local = Gateway::start(bin, claude, &["--rate-limit-per-tenant", "1000000"]).await?;
    let shared = Gateway::start(
        bin,
        claude,
        &["--rate-limit-per-tenant", "1000000", "--redis-url", &url],
    )
    .await?;
    // Warm both (identity verdicts cached), then interleave so drift hits both alike.
    requests(&local, 3).await?;
    requests(&shared, 3).await?;
    let (mut on_local, mut on_shared) = (Vec::new(), Vec::new());
    for _ in 0..count.div_ceil(10) {
        on_local.extend(requests(&local, 10).await?);
        on_shared.extend(requests(&shared, 10).await?);
    }
    drop((local, shared));

    let tasks = 16;
    let per_second_local = checks_per_second(RateLimits::new(0, u32::MAX), tasks, seconds).await?;
    let redis_client = claude_gateway::shared::Redis::new(&secrecy_url(&url))?;
    let per_second_redis = checks_per_second(
        RateLimits::shared(0, u32::MAX, redis_client),
        tasks,
        seconds,
    )
    .await?;

    let (l, s) = (Summary::of(&on_local), Summary::of(&on_shared));
    let mut body = String::new();
    body.push_str("| state | n | median ms | p95 ms |\n|---|---|---|---|\n");
    body.push_str(&format!(
        "| this instance's memory | {} | {:.2} | {:.2} |\n",
        on_local.len(),
        l.median_ms,
        l.p95_ms
    ));
    body.push_str(&format!(
        "| Redis (`--redis-url`) | {} | {:.2} | {:.2} |\n",
        on_shared.len(),
        s.median_ms,
        s.p95_ms
    ));
    body.push_str(&format!(
        "\nA request through Redis: **+{:.2} ms median** ({:.2}×), +{:.2} ms p95 (a rate check, one GCRA script, and an identity verdict read locally after the first).\n\n",
        s.median_ms - l.median_ms,
        s.median_ms / l.median_ms.max(f64::EPSILON),
        s.p95_ms - l.p95_ms
    ));
    body.push_str(&format!(
        "Rate-limit checks per second, {tasks} concurrent callers for {seconds} s: **{per_second_local:.0}** in memory, **{per_second_redis:.0}** against one loopback Redis ({:.1}% of in-memory).\n",
        per_second_redis / per_second_local.max(1.0) * 100.0
    ));
    Ok(vec![Block::new(
        "shared",
        "Shared state through Redis vs this instance's memory",
        &format!(
            "{} shared --requests {count} --seconds {seconds}",
            crate::load::BENCH
        ),
        &body,
    )])
}

fn secrecy_url(url: &str) -> secrecy::SecretString {
    secrecy::SecretString::from(url.to_owned())
}
