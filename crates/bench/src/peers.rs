//! The gateway beside what a team would otherwise run: the simplest wrapper (a Python HTTP
//! server running `claude --print` per request with a temporary HOME per user, no sandbox:
//! `crates/bench/peers/wrapper.py`), both with the pinned CLI against the same in-process fake
//! upstream. Latency at one and at ten concurrent clients, requests per second, and the peak
//! memory of each server's whole process tree.

use std::process::Stdio;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use fake_anthropic::FakeAnthropic;
use serde_json::json;
use tokio::io::{AsyncBufReadExt, BufReader};

use crate::gateway::Gateway;
use crate::report::Block;
use crate::stats::Summary;

/// The wrapper, on a free loopback port, until dropped.
struct Wrapper {
    child: tokio::process::Child,
    url: String,
    _fake: fake_anthropic::FakeHandle,
}

impl Wrapper {
    async fn start(claude: &std::path::Path) -> anyhow::Result<Self> {
        let fake = FakeAnthropic::start(([127, 0, 0, 1], 0).into()).await?;
        let script = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("peers/wrapper.py");
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
        Ok(Self {
            child,
            url,
            _fake: fake,
        })
    }
}

/// `clients` concurrent clients (each its own user) sending `each` requests one after
/// another: every latency, the wall time, and the peak RSS of `pid`'s tree meanwhile.
async fn load(
    url: &str,
    pid: u32,
    clients: usize,
    each: usize,
) -> anyhow::Result<(Vec<Duration>, Duration, u64)> {
    let done = Arc::new(AtomicBool::new(false));
    let peak = Arc::new(AtomicU64::new(0));
    let sampler = {
        let (done, peak) = (done.clone(), peak.clone());
        tokio::spawn(async move {
            while !done.load(Ordering::Relaxed) {
                let rss: u64 = proctree::tree_of(pid)
                    .into_iter()
                    .map(proctree::rss_kib)
                    .sum();
                peak.fetch_max(rss, Ordering::Relaxed);
                tokio::time::sleep(Duration::from_millis(50)).await;
            }
        })
    };
    let started = Instant::now();
    let mut tasks = Vec::new();
    for c in 0..clients {
        let url = url.to_owned();
        tasks.push(tokio::spawn(async move {
            let client = reqwest::Client::new();
            let mut took = Vec::with_capacity(each);
            for i in 0..each {
                let t = Instant::now();
                let res = client
                    .post(format!("{url}/v1/messages"))
                    .bearer_auth(format!("sk-ant-oat01-peer{c}.bench"))
                    .json(&json!({"model": "sonnet", "max_tokens": 100,
                        "messages": [{"role": "user", "content": format!("hello {i}")}]}))
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
    done.store(true, Ordering::Relaxed);
    let _ = sampler.await;
    Ok((all, wall, peak.load(Ordering::Relaxed)))
}

pub async fn peers(
    bin: &std::path::Path,
    claude: &std::path::Path,
    requests: usize,
) -> anyhow::Result<Vec<Block>> {
    let gateway = Gateway::start(bin, claude, &["--max-concurrent-runs", "10"]).await?;
    let wrapper = Wrapper::start(claude).await?;
    let gateway_pid = gateway
        .pid()
        .ok_or_else(|| anyhow::anyhow!("no gateway pid"))?;
    let wrapper_pid = wrapper
        .child
        .id()
        .ok_or_else(|| anyhow::anyhow!("no wrapper pid"))?;
    // One warm-up each (the gateway checks each credential once; the wrapper makes its HOME).
    load(&gateway.url, gateway_pid, 1, 1).await?;
    load(&wrapper.url, wrapper_pid, 1, 1).await?;
    let each = requests.div_ceil(10).max(1);
    let mut rows = Vec::new();
    for (name, url, pid) in [
        (
            "claude-gateway (sandboxed)",
            gateway.url.as_str(),
            gateway_pid,
        ),
        (
            "minimal wrapper (`claude --print` per request)",
            wrapper.url.as_str(),
            wrapper_pid,
        ),
    ] {
        let (one, _, one_peak) = load(url, pid, 1, requests).await?;
        let (ten, wall, ten_peak) = load(url, pid, 10, each).await?;
        rows.push((
            name,
            Summary::of(&one),
            Summary::of(&ten),
            ten.len() as f64 / wall.as_secs_f64(),
            one_peak.max(ten_peak),
        ));
    }
    drop((gateway, wrapper));
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
    let (g, w) = (&rows[0], &rows[1]);
    body.push_str(&format!(
        "\nThe gateway against the wrapper: **{:.2}×** the latency with one client and {:.2}× with ten at the median, {:.2}× the requests per second, {:.2}× the peak memory; for a sandbox per run, masked credentials, sessions and limits the wrapper does not have. Both run the pinned CLI; the gateway with `--max-concurrent-runs 10` so that both run ten CLIs at once.\n",
        g.1.median_ms / w.1.median_ms.max(f64::EPSILON),
        g.2.median_ms / w.2.median_ms.max(f64::EPSILON),
        g.3 / w.3.max(f64::EPSILON),
        g.4 as f64 / (w.4 as f64).max(1.0),
    ));
    Ok(vec![Block::new(
        "peers",
        format!("The gateway beside the simplest wrapper ({requests} requests per client count)"),
        &format!("{} peers --requests {requests}", crate::load::BENCH),
        &body,
    )])
}
