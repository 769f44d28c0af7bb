//! How the gateway grows with the number of recently active tenants: each of N tenants makes
//! one request (its credential checked, its workspace and transcript volumes made and mounted),
//! then one tenant's next requests are timed, and the gateway's own memory read, for N = 1, 10
//! and 100 on fresh gateways.

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
        "| recently active tenants | a tenant's next request, median ms | p95 ms | gateway's own RSS MiB (idle after) |\n|---|---|---|---|\n",
    );
    let mut rows: Vec<(usize, f64, f64)> = Vec::new();
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
        let mut took = Vec::with_capacity(timed);
        for i in 0..timed {
            took.push(ask(&client, &gw.url, 0, &format!("again {i}")).await?);
        }
        tokio::time::sleep(Duration::from_millis(500)).await;
        let own = gw.pid().map_or(0, |pid| rss_split(pid).0);
        let s = Summary::of(&took);
        rows.push((n, s.median_ms, own as f64 / 1024.0));
        body.push_str(&format!(
            "| {n} | {:.0} | {:.0} | {:.1} |\n",
            s.median_ms,
            s.p95_ms,
            own as f64 / 1024.0
        ));
        drop(gw);
    }
    if let (Some(first), Some(last)) = (rows.first(), rows.last()) {
        body.push_str(&format!(
            "\nFrom {} to {} recently active tenants, a tenant's request takes {:.2}× at the median ({:+.0} ms); the gateway's own memory goes from {:.1} to {:.1} MiB.\n",
            first.0,
            last.0,
            last.1 / first.1.max(f64::EPSILON),
            last.1 - first.1,
            first.2,
            last.2,
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
