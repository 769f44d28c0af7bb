//! New conversations from a recently active tenant, with warm processes
//! (`--warm-processes-max`) and without: time to the first text and to the end, and the memory
//! a warm process holds while it waits.

use std::time::{Duration, Instant};

use crate::gateway::{metric_at, Gateway};
use crate::report::Block;
use crate::stats::Summary;

const TOKEN: &str = "sk-ant-oat01-bench-warm.a";

/// Waits (bounded) until the gateway holds `n` warm processes.
async fn until_warm(gw: &Gateway, n: f64) -> anyhow::Result<()> {
    let deadline = Instant::now() + Duration::from_secs(30);
    while metric_at(&gw.url, "gateway_warm_processes").await != Some(n) {
        anyhow::ensure!(Instant::now() < deadline, "no warm process after 30 s");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    Ok(())
}

/// `count` new conversations, one after another, each once the gateway is idle again (and,
/// with warm processes, once one is ready, as it is for a tenant that comes back a moment
/// later): first text and complete time of each.
async fn conversations(
    gw: &Gateway,
    count: usize,
    warm: bool,
) -> anyhow::Result<(Vec<Duration>, Vec<Duration>)> {
    let client = reqwest::Client::new();
    let (mut first, mut total) = (Vec::new(), Vec::new());
    // The tenant's first request, which makes it recently active.
    crate::load::stream(&client, &gw.url, TOKEN, None, "hello").await?;
    for i in 0..count {
        if warm {
            until_warm(gw, 1.0).await?;
        }
        let t = crate::load::stream(&client, &gw.url, TOKEN, None, &format!("new {i}")).await?;
        first.push(t.first_text);
        total.push(t.total);
    }
    Ok((first, total))
}

pub async fn warm(
    bin: &std::path::Path,
    claude: &std::path::Path,
    count: usize,
) -> anyhow::Result<Vec<Block>> {
    let cold = Gateway::start(bin, claude, &[]).await?;
    let (cold_first, cold_total) = conversations(&cold, count, false).await?;
    drop(cold);
    let warm = Gateway::start(bin, claude, &["--warm-processes-max", "4"]).await?;
    let (warm_first, warm_total) = conversations(&warm, count, true).await?;
    // What one waiting warm process holds: the gateway's tree with it, and after it retires.
    until_warm(&warm, 1.0).await?;
    let with = warm.tree_rss_kib();
    drop(warm);
    let bare = Gateway::start(bin, claude, &[]).await?;
    tokio::time::sleep(Duration::from_millis(300)).await;
    let without = bare.tree_rss_kib();
    drop(bare);

    let (cf, ct, wf, wt) = (
        Summary::of(&cold_first),
        Summary::of(&cold_total),
        Summary::of(&warm_first),
        Summary::of(&warm_total),
    );
    let mut body = String::from(
        "| new conversation | n | first text median ms | first text p95 ms | complete median ms | complete p95 ms |\n|---|---|---|---|---|---|\n",
    );
    body.push_str(&format!(
        "| cold (CLI started for the request) | {count} | {:.0} | {:.0} | {:.0} | {:.0} |\n",
        cf.median_ms, cf.p95_ms, ct.median_ms, ct.p95_ms
    ));
    body.push_str(&format!(
        "| warm (`--warm-processes-max 4`) | {count} | {:.0} | {:.0} | {:.0} | {:.0} |\n",
        wf.median_ms, wf.p95_ms, wt.median_ms, wt.p95_ms
    ));
    body.push_str(&format!(
        "\nA warm start: first text **{:.0} ms** median vs {:.0} ms cold ({:.2}×); the fake upstream answers at once, so this is the gateway's and the CLI's own time. A waiting warm process holds **{:.0} MiB RSS** (the gateway's tree with one, {} MiB, against a fresh gateway's, {} MiB).\n",
        wf.median_ms,
        cf.median_ms,
        wf.median_ms / cf.median_ms.max(f64::EPSILON),
        with.saturating_sub(without) as f64 / 1024.0,
        with / 1024,
        without / 1024,
    ));
    Ok(vec![Block::new(
        "warm",
        format!(
            "New conversations of a recently active tenant, warm vs cold ({count} each, streamed)"
        ),
        &format!("{} warm --conversations {count}", crate::load::BENCH),
        &body,
    )])
}
