//! How the gateway grows with the number of recently active tenants: each of N tenants makes
//! one request (its credential checked, its workspace and transcript volumes made and mounted),
//! then one tenant's next requests are timed, and the gateway's own memory read, for N = 1, 10
//! and 100 on fresh gateways. Timed twice: right after the N first requests, and again once
//! the host has written the new volumes' images out (dirty pages flushed), which tells a cost
//! that stays with each tenant from the passing cost of having just made its volumes.

use std::time::Duration;

use crate::gateway::{rss_split, Gateway};
use crate::report::Block;
use crate::stats::Summary;

async fn ask(
    client: &reqwest::Client,
    url: &str,
    tenant: usize,
    prompt: &str,
) -> anyhow::Result<Duration> {
    let started = std::time::Instant::now();
    let res = client
        .post(format!("{url}/v1/messages"))
        .bearer_auth(format!("sk-ant-oat01-bench-tenant{tenant}.a"))
        .json(&serde_json::json!({"model": "sonnet", "max_tokens": 100,
            "messages": [{"role": "user", "content": prompt}]}))
        .send()
        .await?;
    anyhow::ensure!(res.status() == 200, "status {}", res.status());
    res.bytes().await?;
    Ok(started.elapsed())
}

pub async fn tenants(
    bin: &std::path::Path,
    claude: &std::path::Path,
    counts: &[usize],
    timed: usize,
) -> anyhow::Result<Vec<Block>> {
    let mut body = String::from(
        "| recently active tenants | a tenant's next request right after, median ms | p95 ms | once the images are written out, median ms | p95 ms | gateway's own RSS MiB (idle after) |\n|---|---|---|---|---|---|\n",
    );
    let mut rows: Vec<(usize, f64, f64, f64)> = Vec::new();
    for &n in counts {
        let gw = Gateway::start(
            bin,
            claude,
            &[
                "--max-concurrent-runs",
                "4",
                "--max-concurrent-runs-per-tenant",
                "1",
            ],
        )
        .await?;
        let client = reqwest::Client::new();
        // Every tenant's first request, four at a time.
        let mut next = 0;
        while next < n {
            let batch: Vec<_> = (next..(next + 4).min(n))
                .map(|t| {
                    let (client, url) = (client.clone(), gw.url.clone());
                    tokio::spawn(async move { ask(&client, &url, t, "hello").await })
                })
                .collect();
            for task in batch {
                task.await??;
            }
            next += 4;
        }
        let mut phases = Vec::new();
        for phase in ["after", "settled"] {
            if phase == "settled" {
                settle().await;
            }
            let mut took = Vec::with_capacity(timed);
            for i in 0..timed {
                took.push(ask(&client, &gw.url, 0, &format!("{phase} {i}")).await?);
            }
            phases.push(Summary::of(&took));
        }
        tokio::time::sleep(Duration::from_millis(500)).await;
        let own = gw.pid().map_or(0, |pid| rss_split(pid).0);
        let (after, settled) = (&phases[0], &phases[1]);
        rows.push((n, after.median_ms, settled.median_ms, own as f64 / 1024.0));
        body.push_str(&format!(
            "| {n} | {:.0} | {:.0} | {:.0} | {:.0} | {:.1} |\n",
            after.median_ms,
            after.p95_ms,
            settled.median_ms,
            settled.p95_ms,
            own as f64 / 1024.0
        ));
        drop(gw);
    }
    if let (Some(first), Some(last)) = (rows.first(), rows.last()) {
        body.push_str(&format!(
            "\nFrom {} to {} recently active tenants, a tenant's request takes {:.2}× at the median right after the tenants' first requests ({:+.0} ms), and {:.2}× ({:+.0} ms) once their new volume images are written out; the gateway's own memory goes from {:.1} to {:.1} MiB.\n",
            first.0,
            last.0,
            last.1 / first.1.max(f64::EPSILON),
            last.1 - first.1,
            last.2 / first.2.max(f64::EPSILON),
            last.2 - first.2,
            first.3,
            last.3,
        ));
    }
    Ok(vec![Block::new(
        "tenants",
        format!("Growth with the number of recently active tenants ({timed} timed requests each)"),
        &format!(
            "{} tenants --timed {timed} --max {}",
            crate::load::BENCH,
            counts.iter().max().copied().unwrap_or(1)
        ),
        &body,
    )])
}

/// Waits (at most 60 s) until the host has written out what it holds dirty: the tenants' new
/// volume images, among others.
async fn settle() {
    let dirty_kib = || {
        std::fs::read_to_string("/proc/meminfo")
            .unwrap_or_default()
            .lines()
            .filter(|l| l.starts_with("Dirty:") || l.starts_with("Writeback:"))
            .filter_map(|l| l.split_whitespace().nth(1)?.parse::<u64>().ok())
            .sum::<u64>()
    };
    let _ = tokio::process::Command::new("sync").status().await;
    let deadline = std::time::Instant::now() + Duration::from_secs(60);
    while dirty_kib() > 16 * 1024 && std::time::Instant::now() < deadline {
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
}
