//! What sharing state through Redis costs (`--redis-url`): a request's latency with the local
//! and the Redis-backed checks side by side, rate-limit checks per second, a session turn's
//! latency on disk vs in Redis (on one instance and moving between two), and the time to
//! commit and fetch transcripts by size. Redis is a `redis-server` of the benchmark's own on a
//! loopback port.

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

/// `turns` streamed turns of one session, each on the next of `instances` in turn: the
/// complete time of each (the first turn, which starts the session, left out).
async fn session_turns(instances: &[&Gateway], turns: usize) -> anyhow::Result<Vec<Duration>> {
    let client = reqwest::Client::new();
    let mut took = Vec::with_capacity(turns);
    for i in 0..=turns {
        let gw = instances[i % instances.len()];
        let (_, total) = crate::streamed_turn(
            &client,
            &gw.url,
            "sk-ant-oat01-bench-shared.a",
            "bench-shared-session",
            &format!("turn {i}"),
        )
        .await?;
        if i > 0 {
            took.push(total);
        }
    }
    Ok(took)
}

/// Per-turn latency of a session on disk and in Redis, side by side.
async fn session_block(
    bin: &std::path::Path,
    claude: &std::path::Path,
    url: &str,
    turns: usize,
) -> anyhow::Result<Block> {
    let redis_args = ["--redis-url", url];
    let local = Gateway::start(bin, claude, &[]).await?;
    let on_local = session_turns(&[&local], turns).await?;
    drop(local);
    let shared = Gateway::start(bin, claude, &redis_args).await?;
    let on_shared = session_turns(&[&shared], turns).await?;
    let other = Gateway::start(bin, claude, &redis_args).await?;
    // Every turn on the other instance than the last: each resumes cold from Redis.
    let moving = session_turns(&[&shared, &other], turns).await?;
    drop((shared, other));
    let local_cold = Gateway::start(bin, claude, &["--live-sessions-max", "0"]).await?;
    let on_local_cold = session_turns(&[&local_cold], turns).await?;
    drop(local_cold);

    let row = |name: &str, took: &[Duration]| {
        let s = Summary::of(took);
        format!(
            "| {name} | {} | {:.0} | {:.0} |\n",
            took.len(),
            s.median_ms,
            s.p95_ms
        )
    };
    let mut body = String::from(
        "| session records | n | complete median ms | complete p95 ms |\n|---|---|---|---|\n",
    );
    body.push_str(&row("disk, one instance (live process)", &on_local));
    body.push_str(&row("Redis, one instance (live process)", &on_shared));
    body.push_str(&row(
        "disk, one instance, no live processes (cold `--resume`)",
        &on_local_cold,
    ));
    body.push_str(&row(
        "Redis, alternating between two instances (cold, transcript fetched)",
        &moving,
    ));
    let (l, s, c, m) = (
        Summary::of(&on_local),
        Summary::of(&on_shared),
        Summary::of(&on_local_cold),
        Summary::of(&moving),
    );
    body.push_str(&format!(
        "\nA turn through Redis on one instance: **+{:.0} ms median** ({:.2}×) over disk: the turn lock's lease and the commit of metadata and transcript, which waits for the CLI to write the turn into its transcript (it does a few tens of ms after printing it) before the client hears the end. A turn that moves to another instance costs what a cold resume costs plus the fetch: **{:.0} ms** median vs {:.0} ms for a cold resume on disk ({:.2}×).\n",
        s.median_ms - l.median_ms,
        s.median_ms / l.median_ms.max(f64::EPSILON),
        m.median_ms,
        c.median_ms,
        m.median_ms / c.median_ms.max(f64::EPSILON),
    ));
    Ok(Block::new(
        "shared-sessions",
        format!("A session turn with its records on disk vs in Redis (turns 2..{} of one session, streamed)", turns + 1),
        &format!("{} shared --turns {turns}", crate::load::BENCH),
        &body,
    ))
}

/// Committing and fetching transcripts of growing size through one loopback Redis.
async fn transcript_block(url: &str) -> anyhow::Result<Block> {
    use claude_gateway::sessions::records::Records;
    use claude_gateway::sessions::{ClientSessionId, SessionMeta};
    let records = Records::redis(
        claude_gateway::shared::Redis::new(&secrecy_url(url))?,
        Duration::from_secs(600),
        0,
        Duration::from_secs(5),
    );
    let tenant = TenantId::from_dir_name("bench-transcripts".into());
    let id = ClientSessionId::parse("bench")?;
    let mut body = String::from(
        "| transcript | commits | commit median ms | commit p95 ms | fetch median ms | fetch p95 ms |\n|---|---|---|---|---|---|\n",
    );
    for (label, size) in [
        ("10 KiB", 10usize << 10),
        ("100 KiB", 100 << 10),
        ("1 MiB", 1 << 20),
        ("10 MiB", 10 << 20),
    ] {
        // JSONL-like lines, as the CLI writes.
        let line = format!(
            "{{\"type\":\"assistant\",\"text\":\"{}\"}}\n",
            "x".repeat(200)
        );
        let transcript = line.repeat(size / line.len() + 1).into_bytes();
        let key = uuid::Uuid::new_v4();
        let meta = SessionMeta {
            id: "bench".into(),
            cli_session_id: key,
            created_at: 1,
            last_used_at: 1,
            turns: 1,
            model: "sonnet".into(),
            transcript_sha256: None,
            transcript_len: Some(transcript.len() as u64),
        };
        let rounds = if size >= 10 << 20 { 10 } else { 30 };
        let (mut commits, mut fetches) = (Vec::new(), Vec::new());
        for _ in 0..rounds {
            let lock = records.lock(&tenant, key, &id).await?;
            let started = Instant::now();
            records
                .commit(&tenant, key, &meta, Some(&transcript), &lock)
                .await?;
            commits.push(started.elapsed());
            drop(lock);
            let started = Instant::now();
            let fetched = records.transcript(&tenant, key).await?;
            fetches.push(started.elapsed());
            anyhow::ensure!(
                fetched.map(|f| f.len()) == Some(transcript.len()),
                "fetched whole"
            );
        }
        let (c, f) = (Summary::of(&commits), Summary::of(&fetches));
        body.push_str(&format!(
            "| {label} | {rounds} | {:.2} | {:.2} | {:.2} | {:.2} |\n",
            c.median_ms, c.p95_ms, f.median_ms, f.p95_ms
        ));
    }
    body.push_str("\nA commit is one Lua script (lock check, Redis's clock against the deadline, metadata, transcript, index); a fetch is one GET. Both grow with the transcript's size, as its bytes cross the connection.\n");
    Ok(Block::new(
        "shared-transcripts",
        "Transcript commit and fetch time by size, one loopback Redis",
        &format!("{} shared", crate::load::BENCH),
        &body,
    ))
}

pub async fn shared(
    bin: &std::path::Path,
    claude: &std::path::Path,
    count: usize,
    seconds: u64,
    turns: usize,
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
    let sessions = session_block(bin, claude, &url, turns).await?;
    let transcripts = transcript_block(&url).await?;
    Ok(vec![
        Block::new(
            "shared",
            "Shared state through Redis vs this instance's memory",
            &format!(
                "{} shared --requests {count} --seconds {seconds}",
                crate::load::BENCH
            ),
            &body,
        ),
        sessions,
        transcripts,
    ])
}

fn secrecy_url(url: &str) -> secrecy::SecretString {
    secrecy::SecretString::from(url.to_owned())
}
