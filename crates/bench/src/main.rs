//! gateway-bench: measures claude-gateway over real HTTP with the real CLI against an in-process
//! fake-anthropic. Every request goes to 127.0.0.1; every loop is bounded.
//!
//! `cargo run --release -p gateway-bench -- sessions` prints a Markdown table.

mod gateway;
mod load;
mod stats;

use std::time::Duration;

use clap::{Parser, Subcommand};

use gateway::Gateway;
use stats::Summary;

#[derive(Parser)]
struct Args {
    /// The gateway binary (build it with `cargo build --release -p claude-gateway`).
    #[arg(long, default_value = "target/release/claude-gateway")]
    gateway: std::path::PathBuf,
    /// The pinned CLI.
    #[arg(long, default_value = "node_modules/.bin/claude")]
    claude: std::path::PathBuf,
    #[command(subcommand)]
    bench: Bench,
}

#[derive(Subcommand)]
enum Bench {
    /// What the gateway adds to a bare CLI run: wall time and time to first text, with and
    /// without the sandbox.
    Overhead {
        #[arg(long, default_value_t = 10)]
        runs: usize,
    },
    /// Requests per second answered with 401 / 429 without spawning anything.
    Rejection {
        #[arg(long, default_value_t = 5)]
        seconds: u64,
        #[arg(long, default_value_t = 64)]
        connections: usize,
    },
    /// 50 concurrent slow streams, and 1,000 queued requests: completion, spread, memory.
    Concurrency {
        #[arg(long, default_value_t = 50)]
        streams: usize,
        #[arg(long, default_value_t = 1000)]
        queued: usize,
    },
    /// Latency of turn N of one session (N = 1, 10, 50), live and cold.
    Growth {
        #[arg(long, default_value_t = 50)]
        turns: usize,
    },
    /// Per-turn latency of live vs cold sessions, and memory held per live session.
    Sessions {
        /// Turns per session (the first, which starts the session, is reported apart).
        #[arg(long, default_value_t = 10)]
        turns: usize,
        /// Live sessions held at once for the memory figure.
        #[arg(long, default_value_t = 3)]
        live: usize,
    },
}

/// One streamed turn of a named session: time to the first body byte and to the end.
pub(crate) async fn streamed_turn(
    client: &reqwest::Client,
    url: &str,
    token: &str,
    session: &str,
    prompt: &str,
) -> anyhow::Result<(Duration, Duration)> {
    let timing = load::stream(client, url, token, Some(session), prompt).await?;
    Ok((timing.first_byte, timing.total))
}

async fn session_latencies(
    gw: &Gateway,
    turns: usize,
) -> anyhow::Result<(Vec<Duration>, Vec<Duration>, (Duration, Duration))> {
    let client = reqwest::Client::new();
    let (mut ttfb, mut total) = (Vec::new(), Vec::new());
    let first = streamed_turn(
        &client,
        &gw.url,
        "sk-ant-oat01-bench.a",
        "bench-session",
        "turn 0",
    )
    .await?;
    for i in 1..turns {
        let (t, d) = streamed_turn(
            &client,
            &gw.url,
            "sk-ant-oat01-bench.a",
            "bench-session",
            &format!("turn {i}"),
        )
        .await?;
        ttfb.push(t);
        total.push(d);
    }
    Ok((ttfb, total, first))
}

async fn sessions(args: &Args, turns: usize, live_count: usize) -> anyhow::Result<()> {
    let live = Gateway::start(&args.gateway, &args.claude, &["--live-sessions-max", "16"]).await?;
    let (live_ttfb, live_total, live_first) = session_latencies(&live, turns).await?;
    let idle_rss = live.tree_rss_kib();
    // Hold `live_count` live sessions (one per tenant) and measure what they cost.
    let client = reqwest::Client::new();
    let before = live.tree_rss_kib();
    let before_procs = live.tree_processes();
    for i in 0..live_count {
        streamed_turn(
            &client,
            &live.url,
            &format!("sk-ant-oat01-bench-mem{i}.a"),
            "mem",
            "hello",
        )
        .await?;
    }
    tokio::time::sleep(Duration::from_millis(500)).await;
    let after = live.tree_rss_kib();
    let per_live_mib = (after.saturating_sub(before)) as f64 / live_count as f64 / 1024.0;
    let procs = live.tree_processes() - before_procs;
    drop(live);

    let cold = Gateway::start(&args.gateway, &args.claude, &["--live-sessions-max", "0"]).await?;
    let (cold_ttfb, cold_total, cold_first) = session_latencies(&cold, turns).await?;
    drop(cold);

    let row = |name: &str, ttfb: &[Duration], total: &[Duration]| {
        let (t, d) = (Summary::of(ttfb), Summary::of(total));
        format!(
            "| {name} | {} | {:.0} | {:.0} | {:.0} | {:.0} |",
            ttfb.len(),
            t.median_ms,
            t.p95_ms,
            d.median_ms,
            d.p95_ms
        )
    };
    println!("### Live vs cold session turns (turns 2..{turns} of one session, streamed)\n");
    println!("| path | n | first byte median ms | first byte p95 ms | complete median ms | complete p95 ms |");
    println!("|---|---|---|---|---|---|");
    println!("{}", row("live (process kept)", &live_ttfb, &live_total));
    println!("{}", row("cold (`--resume`)", &cold_ttfb, &cold_total));
    println!(
        "\nFirst turn (process start): live gateway {:.0} ms, cold gateway {:.0} ms to complete.",
        live_first.1.as_secs_f64() * 1000.0,
        cold_first.1.as_secs_f64() * 1000.0
    );
    println!(
        "\nMemory held per idle live session: {per_live_mib:.0} MiB RSS ({live_count} sessions, {procs} processes; gateway tree {} MiB with one live session).",
        idle_rss / 1024
    );
    Ok(())
}

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    let mut args = Args::parse();
    // reqwest's TLS needs a provider even though every benchmark speaks plain HTTP to loopback.
    let _ = rustls::crypto::ring::default_provider().install_default();
    // Children run in other working directories: give them absolute paths.
    args.gateway = std::fs::canonicalize(&args.gateway)?;
    args.claude = std::fs::canonicalize(&args.claude)?;
    match args.bench {
        Bench::Sessions { turns, live } => sessions(&args, turns.max(2), live.max(1)).await,
        Bench::Overhead { runs } => load::overhead(&args.gateway, &args.claude, runs.max(1)).await,
        Bench::Rejection {
            seconds,
            connections,
        } => {
            load::rejection(
                &args.gateway,
                &args.claude,
                seconds.min(60),
                connections.min(512),
            )
            .await
        }
        Bench::Concurrency { streams, queued } => {
            load::concurrency(
                &args.gateway,
                &args.claude,
                streams.min(200),
                queued.min(5000),
            )
            .await
        }
        Bench::Growth { turns } => {
            load::growth(&args.gateway, &args.claude, turns.clamp(1, 100)).await
        }
    }
}
