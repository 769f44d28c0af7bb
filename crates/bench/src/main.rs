//! gateway-bench: measures claude-gateway over real HTTP with the real CLI against an in-process
//! fake-anthropic. Every request goes to 127.0.0.1; every loop is bounded.
//!
//! `target/release/gateway-bench all --write BENCHMARKS.md` runs every benchmark and writes each
//! table into BENCHMARKS.md between its markers; `gateway-bench <bench>` runs one and prints its
//! Markdown (`--write FILE` updates only its own block).

mod gateway;
mod lean;
mod load;
mod peers;
mod report;
mod shared;
mod stats;
mod tenants;
mod warm;

use std::time::Duration;

use clap::{Parser, Subcommand};

use gateway::Gateway;
use report::Block;
use stats::Summary;

#[derive(Parser)]
struct Args {
    /// The gateway binary (build it with `cargo build --release -p claude-gateway`).
    #[arg(long, default_value = "target/release/claude-gateway")]
    gateway: std::path::PathBuf,
    /// The pinned CLI.
    #[arg(long, default_value = "node_modules/.bin/claude")]
    claude: std::path::PathBuf,
    /// Where `crates/bench/peers/install.sh` installed the peers `peers` compares with.
    #[arg(long, global = true, default_value = "target/peers")]
    peers_dir: std::path::PathBuf,
    /// Also write each result into this Markdown file (BENCHMARKS.md), replacing only what lies
    /// between its `<!-- bench:NAME:start -->` / `<!-- bench:NAME:end -->` markers.
    #[arg(long, global = true, value_name = "FILE")]
    write: Option<std::path::PathBuf>,
    #[command(subcommand)]
    bench: Bench,
}

#[derive(Subcommand, Clone, Copy)]
enum Bench {
    /// Every benchmark below in turn, with its default settings, and the machine.
    All {
        /// The smallest counts instead, to check the harness in a minute (the figures mean
        /// nothing).
        #[arg(long)]
        smoke: bool,
    },
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
    /// Per-turn latency of live vs cold sessions, and memory held per live session.
    Sessions {
        /// Turns per session (the first, which starts the session, is reported apart).
        #[arg(long, default_value_t = 12)]
        turns: usize,
        /// Live sessions held at once for the memory figure.
        #[arg(long, default_value_t = 3)]
        live: usize,
    },
    /// Latency and memory of turn N of one session (N = 1, 10, 100, 500): cold, live, and
    /// live after a warm first turn.
    Growth {
        #[arg(long, default_value_t = 500)]
        turns: usize,
    },
    /// What the syscall filter adds to starting a sandbox: `true` in one, with and without it.
    Sandbox {
        #[arg(long, default_value_t = 40)]
        runs: usize,
    },
    /// The gateway beside what users would run instead (the simplest wrapper, ccproxy-api,
    /// claude-max-api-proxy): latency at 1 and 10 clients, requests per second, peak memory.
    Peers {
        #[arg(long, default_value_t = 20)]
        requests: usize,
    },
    /// A tenant's request latency and the gateway's memory with 1, 10 and 100 recently
    /// active tenants.
    Tenants {
        #[arg(long, default_value_t = 10)]
        timed: usize,
        /// The most tenants (measured at 1, 10, 100 up to this, and at this).
        #[arg(long, default_value_t = 100)]
        max: usize,
    },
    /// Upstream input tokens per request kind: the API directly, the gateway, lean runs.
    Lean {
        #[arg(long, default_value_t = 5)]
        runs: usize,
    },
    /// New conversations of a recently active tenant with and without warm processes.
    Warm {
        #[arg(long, default_value_t = 12)]
        conversations: usize,
    },
    /// Shared state through Redis vs local: a request's latency, rate checks per second, a
    /// session turn on disk vs in Redis, transcript commit and fetch by size.
    Shared {
        #[arg(long, default_value_t = 200)]
        requests: usize,
        #[arg(long, default_value_t = 3)]
        seconds: u64,
        /// Turns per session measured (after the first).
        #[arg(long, default_value_t = 12)]
        turns: usize,
    },
}

impl Bench {
    /// The benchmarks `all` runs: their defaults (as clap gives them), or the smallest counts.
    fn every(smoke: bool) -> Vec<Bench> {
        let default = |name: &str| -> Bench {
            match Args::try_parse_from(["gateway-bench", name]).map(|a| a.bench) {
                Ok(bench) => bench,
                Err(e) => unreachable!("{name} has defaults: {e}"),
            }
        };
        if smoke {
            vec![
                Bench::Overhead { runs: 1 },
                Bench::Rejection {
                    seconds: 1,
                    connections: 4,
                },
                Bench::Concurrency {
                    streams: 2,
                    queued: 10,
                },
                Bench::Sessions { turns: 2, live: 1 },
                Bench::Growth { turns: 1 },
                Bench::Sandbox { runs: 2 },
                Bench::Shared {
                    requests: 10,
                    seconds: 1,
                    turns: 2,
                },
                Bench::Warm { conversations: 2 },
                Bench::Lean { runs: 1 },
                Bench::Peers { requests: 2 },
                Bench::Tenants { timed: 1, max: 2 },
            ]
        } else {
            [
                "overhead",
                "rejection",
                "concurrency",
                "sessions",
                "growth",
                "sandbox",
                "shared",
                "warm",
                "lean",
                "peers",
                "tenants",
            ]
            .into_iter()
            .map(default)
            .collect()
        }
    }

    /// The blocks of BENCHMARKS.md this writes.
    fn blocks(self) -> Vec<&'static str> {
        match self {
            Bench::All { smoke } => std::iter::once("machine")
                .chain(Self::every(smoke).into_iter().flat_map(Self::blocks))
                .collect(),
            Bench::Overhead { .. } => vec!["overhead"],
            Bench::Rejection { .. } => vec!["rejection"],
            Bench::Concurrency { .. } => vec!["concurrency", "concurrency-queue"],
            Bench::Sessions { .. } => vec!["sessions"],
            Bench::Growth { .. } => vec!["growth"],
            Bench::Sandbox { .. } => vec!["sandbox"],
            Bench::Shared { .. } => vec!["shared", "shared-sessions", "shared-transcripts"],
            Bench::Warm { .. } => vec!["warm"],
            Bench::Lean { .. } => vec!["lean"],
            Bench::Peers { .. } => vec!["peers"],
            Bench::Tenants { .. } => vec!["tenants"],
        }
    }
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

async fn sessions(args: &Args, turns: usize, live_count: usize) -> anyhow::Result<Vec<Block>> {
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
    let mut body = String::new();
    body.push_str("| path | n | first byte median ms | first byte p95 ms | complete median ms | complete p95 ms |\n");
    body.push_str("|---|---|---|---|---|---|\n");
    body.push_str(&format!(
        "{}\n",
        row("live (process kept)", &live_ttfb, &live_total)
    ));
    body.push_str(&format!(
        "{}\n",
        row("cold (`--resume`)", &cold_ttfb, &cold_total)
    ));
    body.push_str(&format!(
        "\nFirst turn (process start): {:.0} ms (live gateway), {:.0} ms (cold gateway) to complete.\n",
        live_first.1.as_secs_f64() * 1000.0,
        cold_first.1.as_secs_f64() * 1000.0
    ));
    body.push_str(&format!(
        "Memory held per idle live session: **{per_live_mib:.0} MiB RSS** ({live_count} sessions, {procs} processes; gateway tree {} MiB with one live session).\n",
        idle_rss / 1024
    ));
    Ok(vec![Block::new(
        "sessions",
        format!("Live vs cold session turns (turns 2..{turns} of one session, streamed)"),
        &format!(
            "{} sessions --turns {turns} --live {live_count}",
            load::BENCH
        ),
        &body,
    )])
}

/// Starting a sandbox (bubblewrap running `true`, as the gateway probes it at start-up) with
/// and without the syscall filter, and with both the filter and a run cgroup (made, joined and
/// removed each time), interleaved; everything else about the sandbox is the same.
async fn sandbox_setup(
    gateway: &std::path::Path,
    claude: &std::path::Path,
    runs: usize,
) -> anyhow::Result<Vec<Block>> {
    let dir = tempfile::tempdir()?;
    let mut sandbox = claude_gateway::sandbox::Bwrap::new(
        claude,
        gateway.to_path_buf(),
        dir.path().join("sandbox-etc"),
        claude_gateway::sandbox::Limits::default(),
    )?;
    let filter = sandbox.seccomp.clone();
    let limits = claude_gateway::sandbox::Limits::default();
    let cgroups = claude_gateway::sandbox::cgroup::Cgroups::detect(
        limits.run_memory_bytes,
        limits.max_processes,
    )
    .map(std::sync::Arc::new);
    let (mut without, mut with, mut grouped) = (Vec::new(), Vec::new(), Vec::new());
    for _ in 0..runs {
        let mut configurations = vec![
            (Vec::new(), Err("off".to_owned()), &mut without),
            (filter.clone(), Err("off".to_owned()), &mut with),
        ];
        if cgroups.is_ok() {
            configurations.push((filter.clone(), cgroups.clone(), &mut grouped));
        }
        for (programs, groups, samples) in configurations {
            sandbox.seccomp = programs;
            sandbox.cgroups = groups;
            let started = std::time::Instant::now();
            sandbox.probe().await?;
            samples.push(started.elapsed());
        }
    }
    let compile = {
        let started = std::time::Instant::now();
        claude_gateway::sandbox::seccomp::programs()?;
        started.elapsed()
    };
    let row = |name: &str, samples: &[Duration]| {
        let s = Summary::of(samples);
        format!(
            "| {name} | {} | {:.1} | {:.1} |",
            samples.len(),
            s.median_ms,
            s.p95_ms
        )
    };
    let (a, b) = (Summary::of(&without), Summary::of(&with));
    let mut body = format!(
        "| sandbox start (`true` inside) | n | median ms | p95 ms |\n|---|---|---|---|\n{}\n{}\n",
        row("without the syscall filter", &without),
        row("with the syscall filter", &with),
    );
    let grouped_line = match &cgroups {
        Ok(_) => {
            let c = Summary::of(&grouped);
            body.push_str(&format!(
                "{}\n",
                row("with the filter and a cgroup per run", &grouped)
            ));
            format!(
                " The run cgroup (made, joined, removed) adds **{:+.1} ms** more ({:.2}x the \
                 sandbox without either).",
                c.median_ms - b.median_ms,
                c.median_ms / a.median_ms.max(0.001)
            )
        }
        Err(reason) => format!(" No run cgroup here: {reason}."),
    };
    body.push_str(&format!(
        "\nThe filter adds **{:+.1} ms** per run at the median ({:.2}x); it is compiled once, at \
         start-up ({:.2} ms).{grouped_line}\n",
        b.median_ms - a.median_ms,
        b.median_ms / a.median_ms.max(0.001),
        compile.as_secs_f64() * 1000.0
    ));
    Ok(vec![Block::new(
        "sandbox",
        "Sandbox start with and without the syscall filter and a run cgroup",
        &format!("{} sandbox --runs {runs}", load::BENCH),
        &body,
    )])
}

/// Runs one benchmark (not `all`) with the limits every loop is held to.
async fn run(args: &Args, bench: Bench) -> anyhow::Result<Vec<Block>> {
    let (gw, claude) = (&args.gateway, &args.claude);
    match bench {
        Bench::All { .. } => anyhow::bail!("`all` runs the others"),
        Bench::Overhead { runs } => load::overhead(gw, claude, runs.clamp(1, 1000)).await,
        Bench::Rejection {
            seconds,
            connections,
        } => load::rejection(gw, claude, seconds.clamp(1, 60), connections.clamp(1, 512)).await,
        Bench::Concurrency { streams, queued } => {
            load::concurrency(gw, claude, streams.clamp(1, 200), queued.clamp(1, 5000)).await
        }
        Bench::Sessions { turns, live } => {
            sessions(args, turns.clamp(2, 1000), live.clamp(1, 64)).await
        }
        Bench::Growth { turns } => load::growth(gw, claude, turns.clamp(1, 500)).await,
        Bench::Sandbox { runs } => sandbox_setup(gw, claude, runs.clamp(1, 1000)).await,
        Bench::Warm { conversations } => warm::warm(gw, claude, conversations.clamp(1, 200)).await,
        Bench::Lean { runs } => lean::lean(gw, claude, runs.clamp(1, 100)).await,
        Bench::Peers { requests } => {
            peers::peers(gw, claude, requests.clamp(1, 500), &args.peers_dir).await
        }
        Bench::Tenants { timed, max } => {
            let max = max.clamp(1, 500);
            let mut counts: Vec<usize> = [1, 10, 100].into_iter().filter(|n| *n <= max).collect();
            if !counts.contains(&max) {
                counts.push(max);
            }
            tenants::tenants(gw, claude, &counts, timed.clamp(1, 100)).await
        }
        Bench::Shared {
            requests,
            seconds,
            turns,
        } => {
            shared::shared(
                gw,
                claude,
                requests.clamp(1, 10_000),
                seconds.clamp(1, 60),
                turns.clamp(1, 200),
            )
            .await
        }
    }
}

/// Prints blocks as Markdown and, with `--write`, puts each between its markers in the file.
fn emit(args: &Args, blocks: &[Block]) -> anyhow::Result<()> {
    for block in blocks {
        println!("### {}\n\n{}\n", block.title, block.body);
    }
    if let Some(path) = &args.write {
        report::write_blocks(path, blocks)?;
        eprintln!(
            "wrote {} into {}",
            blocks.iter().map(|b| b.name).collect::<Vec<_>>().join(", "),
            path.display()
        );
    }
    Ok(())
}

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    let mut args = Args::parse();
    // reqwest's TLS needs a provider even though every benchmark speaks plain HTTP to loopback.
    let _ = rustls::crypto::ring::default_provider().install_default();
    // Children run in other working directories: give them absolute paths.
    args.gateway = std::fs::canonicalize(&args.gateway)
        .map_err(|e| anyhow::anyhow!("{}: {e}", args.gateway.display()))?;
    args.claude = std::fs::canonicalize(&args.claude)
        .map_err(|e| anyhow::anyhow!("{}: {e}", args.claude.display()))?;
    // Made absolute without resolving: peers not installed are reported as not run, not an
    // error here.
    args.peers_dir = std::path::absolute(&args.peers_dir)?;
    // Every marker must be there before minutes are spent measuring.
    if let Some(path) = &args.write {
        report::check_markers(path, &args.bench.blocks())?;
    }
    match args.bench {
        Bench::All { smoke } => {
            emit(&args, &[report::machine()])?;
            for bench in Bench::every(smoke) {
                let blocks = run(&args, bench).await?;
                emit(&args, &blocks)?;
            }
            Ok(())
        }
        bench => {
            let blocks = run(&args, bench).await?;
            emit(&args, &blocks)
        }
    }
}
