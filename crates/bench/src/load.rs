//! The load benchmarks: overhead over the bare CLI, the rejection path, concurrency and
//! queued connections, and cost growth with session length. Loopback only, bounded loops.

use std::path::Path;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use fake_anthropic::FakeAnthropic;
use serde_json::json;
use tokio::io::{AsyncBufReadExt, AsyncWriteExt, BufReader};

use crate::gateway::Gateway;
use crate::report::Block;
use crate::stats::Summary;

/// How the benchmark binary is invoked in the commands printed with each table.
pub const BENCH: &str = "target/release/gateway-bench";

fn ms(d: Duration) -> f64 {
    d.as_secs_f64() * 1000.0
}

fn table_row(name: &str, ttft: &[Duration], wall: &[Duration]) -> String {
    let (t, w) = (Summary::of(ttft), Summary::of(wall));
    format!(
        "| {name} | {} | {:.0} | {:.0} | {:.0} | {:.0} |",
        wall.len(),
        t.median_ms,
        t.p95_ms,
        w.median_ms,
        w.p95_ms
    )
}

/// One bare CLI run, as the gateway would start it (stream-json both ways), without the
/// gateway: time to the first text delta and to exit.
async fn bare_cli(
    claude: &Path,
    base_url: &str,
    prompt: &str,
) -> anyhow::Result<(Duration, Duration)> {
    let home = tempfile::tempdir()?;
    let work = tempfile::tempdir()?;
    let started = Instant::now();
    let mut child = tokio::process::Command::new(claude)
        .args([
            "-p",
            "--output-format=stream-json",
            "--input-format=stream-json",
            "--verbose",
            "--include-partial-messages",
            "--model=sonnet",
        ])
        .env_clear()
        .env("PATH", "/usr/local/bin:/usr/bin:/bin")
        .env("HOME", home.path())
        .env("ANTHROPIC_BASE_URL", base_url)
        .env("CLAUDE_CODE_OAUTH_TOKEN", "sk-ant-oat01-bench.bare")
        .env("CLAUDE_CODE_DISABLE_NONESSENTIAL_TRAFFIC", "1")
        .env("DISABLE_AUTOUPDATER", "1")
        .current_dir(work.path())
        .stdin(std::process::Stdio::piped())
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::null())
        .kill_on_drop(true)
        .spawn()?;
    let mut stdin = child.stdin.take().ok_or_else(|| anyhow::anyhow!("stdin"))?;
    let line = json!({"type": "user", "message": {"role": "user", "content": prompt}});
    stdin.write_all(format!("{line}\n").as_bytes()).await?;
    drop(stdin);
    let stdout = child
        .stdout
        .take()
        .ok_or_else(|| anyhow::anyhow!("stdout"))?;
    let mut lines = BufReader::new(stdout).lines();
    let mut first = None;
    while let Some(line) = lines.next_line().await? {
        if first.is_none() && line.contains("\"content_block_delta\"") {
            first = Some(started.elapsed());
        }
    }
    child.wait().await?;
    Ok((first.unwrap_or_default(), started.elapsed()))
}

/// The plain CLI as a user runs it, with nothing of the gateway's flags: `claude -p
/// --output-format json PROMPT` in a fresh HOME and directory; time to exit. `quiet`: with the
/// CLI's non-essential traffic off, as the gateway runs it (on this machine, which reaches
/// nothing but loopback, that traffic can only fail, and waiting for it is most of the
/// difference).
async fn plain_cli(
    claude: &Path,
    base_url: &str,
    prompt: &str,
    quiet: bool,
) -> anyhow::Result<Duration> {
    let home = tempfile::tempdir()?;
    let work = tempfile::tempdir()?;
    let started = Instant::now();
    let mut command = tokio::process::Command::new(claude);
    command.env_clear();
    if quiet {
        command
            .env("CLAUDE_CODE_DISABLE_NONESSENTIAL_TRAFFIC", "1")
            .env("DISABLE_AUTOUPDATER", "1");
    }
    let output = command
        .args(["-p", "--output-format", "json", prompt])
        .env("PATH", "/usr/local/bin:/usr/bin:/bin")
        .env("HOME", home.path())
        .env("ANTHROPIC_BASE_URL", base_url)
        .env("CLAUDE_CODE_OAUTH_TOKEN", "sk-ant-oat01-bench.plain")
        .current_dir(work.path())
        .stdin(std::process::Stdio::null())
        .kill_on_drop(true)
        .output()
        .await?;
    anyhow::ensure!(output.status.success(), "the plain CLI failed");
    Ok(started.elapsed())
}

/// One non-streamed `/v1/messages` request, as `curl` would send it; time to the whole answer.
async fn gateway_complete(
    client: &reqwest::Client,
    url: &str,
    prompt: &str,
) -> anyhow::Result<Duration> {
    gateway_complete_with(client, url, prompt, false).await
}

/// [`gateway_complete`], lean when asked (`"lean": true`).
async fn gateway_complete_with(
    client: &reqwest::Client,
    url: &str,
    prompt: &str,
    lean: bool,
) -> anyhow::Result<Duration> {
    let started = Instant::now();
    let res = client
        .post(format!("{url}/v1/messages"))
        .bearer_auth("sk-ant-oat01-bench.overhead")
        .json(&json!({"model": "sonnet", "max_tokens": 200, "lean": lean,
                      "messages": [{"role": "user", "content": prompt}]}))
        .send()
        .await?;
    anyhow::ensure!(res.status() == 200, "status {}", res.status());
    res.bytes().await?;
    Ok(started.elapsed())
}

/// How one streamed request went.
pub struct Timing {
    pub first_byte: Duration,
    pub first_text: Duration,
    pub total: Duration,
}

/// One streamed `/v1/messages` request (in `session` when given).
pub async fn stream(
    client: &reqwest::Client,
    url: &str,
    token: &str,
    session: Option<&str>,
    prompt: &str,
) -> anyhow::Result<Timing> {
    let started = Instant::now();
    let mut request = client
        .post(format!("{url}/v1/messages"))
        .bearer_auth(token)
        .json(
            &json!({"model": "sonnet", "max_tokens": 200, "stream": true,
                      "messages": [{"role": "user", "content": prompt}]}),
        );
    if let Some(session) = session {
        request = request.header("x-session-id", session);
    }
    let mut res = request.send().await?;
    anyhow::ensure!(res.status() == 200, "status {}", res.status());
    let (mut first_byte, mut first_text) = (None, None);
    while let Some(chunk) = res.chunk().await? {
        first_byte.get_or_insert_with(|| started.elapsed());
        if first_text.is_none() && String::from_utf8_lossy(&chunk).contains("content_block_delta") {
            first_text = Some(started.elapsed());
        }
    }
    Ok(Timing {
        first_byte: first_byte.unwrap_or_default(),
        first_text: first_text.unwrap_or_default(),
        total: started.elapsed(),
    })
}

async fn gateway_request(
    client: &reqwest::Client,
    url: &str,
    prompt: &str,
) -> anyhow::Result<(Duration, Duration)> {
    let t = stream(client, url, "sk-ant-oat01-bench.overhead", None, prompt).await?;
    Ok((t.first_text, t.total))
}

pub async fn overhead(bin: &Path, claude: &Path, runs: usize) -> anyhow::Result<Vec<Block>> {
    let sandboxed = Gateway::start(bin, claude, &[]).await?;
    let bare_sandbox = Gateway::start(bin, claude, &["--insecure-no-sandbox"]).await?;
    let shared_net = Gateway::start(bin, claude, &["--sandbox-network", "shared"]).await?;
    let fake = FakeAnthropic::start(([127, 0, 0, 1], 0).into()).await?;
    let client = reqwest::Client::new();
    let prompt = "benchmark prompt";
    let (mut bare, mut with, mut without) = (Vec::new(), Vec::new(), Vec::new());
    let (mut plain, mut complete, mut plain_quiet) = (Vec::new(), Vec::new(), Vec::new());
    // Where the time goes: the same non-streamed request through each layer.
    let (mut no_sandbox_complete, mut shared_complete, mut lean_complete) =
        (Vec::new(), Vec::new(), Vec::new());
    // One warm-up of each, then interleaved runs so drift affects all alike.
    bare_cli(claude, &fake.base_url(), prompt).await?;
    plain_cli(claude, &fake.base_url(), prompt, false).await?;
    plain_cli(claude, &fake.base_url(), prompt, true).await?;
    gateway_request(&client, &sandboxed.url, prompt).await?;
    gateway_request(&client, &bare_sandbox.url, prompt).await?;
    gateway_complete(&client, &shared_net.url, prompt).await?;
    for _ in 0..runs {
        bare.push(bare_cli(claude, &fake.base_url(), prompt).await?);
        with.push(gateway_request(&client, &sandboxed.url, prompt).await?);
        without.push(gateway_request(&client, &bare_sandbox.url, prompt).await?);
        plain.push(plain_cli(claude, &fake.base_url(), prompt, false).await?);
        plain_quiet.push(plain_cli(claude, &fake.base_url(), prompt, true).await?);
        complete.push(gateway_complete(&client, &sandboxed.url, prompt).await?);
        no_sandbox_complete.push(gateway_complete(&client, &bare_sandbox.url, prompt).await?);
        shared_complete.push(gateway_complete(&client, &shared_net.url, prompt).await?);
        lean_complete.push(gateway_complete_with(&client, &sandboxed.url, prompt, true).await?);
    }
    let split = |v: &[(Duration, Duration)]| -> (Vec<Duration>, Vec<Duration>) {
        v.iter().copied().unzip()
    };
    let (bt, bw) = split(&bare);
    let (st, sw) = split(&with);
    let (nt, nw) = split(&without);
    let mut body = String::new();
    body.push_str("| path | n | first text median ms | first text p95 ms | complete median ms | complete p95 ms |\n");
    body.push_str("|---|---|---|---|---|---|\n");
    body.push_str(&format!("{}\n", table_row("bare CLI", &bt, &bw)));
    body.push_str(&format!("{}\n", table_row("gateway, sandboxed", &st, &sw)));
    body.push_str(&format!("{}\n", table_row("gateway, no sandbox", &nt, &nw)));
    let only_complete = |name: &str, wall: &[Duration]| {
        let w = Summary::of(wall);
        format!(
            "| {name} | {} | – | – | {:.0} | {:.0} |\n",
            wall.len(),
            w.median_ms,
            w.p95_ms
        )
    };
    body.push_str(&only_complete(
        "plain CLI as a user runs it (`claude -p --output-format json`)",
        &plain,
    ));
    body.push_str(&only_complete(
        "the same, its non-essential traffic off (as the gateway runs it)",
        &plain_quiet,
    ));
    body.push_str(&only_complete(
        "gateway, sandboxed, not streamed (as `curl` asks)",
        &complete,
    ));
    let median = |v: &[Duration]| Summary::of(v).median_ms;
    body.push_str(&format!(
        "\nAgainst the plain CLI as a user runs it, a non-streamed request through the sandboxed gateway takes {:+.0} ms ({:.2}×) at the median; against the same CLI with its non-essential traffic off (the fair baseline on a machine that reaches nothing but loopback), {:+.0} ms ({:.2}×).\n",
        median(&complete) - median(&plain),
        median(&complete) / median(&plain).max(1e-9),
        median(&complete) - median(&plain_quiet),
        median(&complete) / median(&plain_quiet).max(1e-9),
    ));
    // Each layer's cost, as the difference of medians between one step and the one before.
    let steps: [(&str, &str, f64); 6] = [
        (
            "plain CLI (`claude -p --output-format json`), non-essential traffic off",
            "",
            median(&plain_quiet),
        ),
        (
            "the CLI with the gateway's flags (stream-json in and out, partial messages)",
            "the flags and stream-json I/O",
            median(&bw),
        ),
        (
            "+ the gateway, no sandbox (non-streamed HTTP)",
            "HTTP, credential check (cached), run dir and settings, session bookkeeping; answered at the CLI's result, not its exit",
            median(&no_sandbox_complete),
        ),
        (
            "+ the sandbox, host network (`--sandbox-network shared`)",
            "bubblewrap and its namespaces, the syscall filter, the run cgroup, prlimit, the relay as pid 1",
            median(&shared_complete),
        ),
        (
            "+ the sandbox's own network (the default)",
            "the isolated network: the relay's ports and the gateway's upstream proxy",
            median(&complete),
        ),
        (
            "the default, lean (`\"lean\": true`)",
            "none of the CLI's tools and no agent prompt (what it saves)",
            median(&lean_complete),
        ),
    ];
    body.push_str("\n| step (complete, median of the same interleaved runs) | ms | Δ ms | what the step adds |\n|---|---|---|---|\n");
    let mut before: Option<f64> = None;
    for (name, what, value) in steps {
        let delta = before.map_or(String::from("–"), |b| format!("{:+.0}", value - b));
        body.push_str(&format!("| {name} | {value:.0} | {delta} | {what} |\n"));
        before = Some(value);
    }
    for (name, t, w) in [("sandboxed", &st, &sw), ("no sandbox", &nt, &nw)] {
        body.push_str(&format!(
            "\nGateway ({name}) adds {:+.0} ms to first text ({:.2}×) and {:+.0} ms to completion ({:.2}×) at the median.\n",
            median(t) - median(&bt),
            median(t) / median(&bt).max(1e-9),
            median(w) - median(&bw),
            median(w) / median(&bw).max(1e-9),
        ));
    }
    Ok(vec![Block::new(
        "overhead",
        "Overhead: one streamed request through the gateway vs the bare CLI",
        &format!("{BENCH} overhead --runs {runs}"),
        &body,
    )])
}

/// Sends requests on `connections` keep-alive clients for `seconds`; counts the answers with
/// the `expected` status and all others (errors included) apart.
async fn hammer(
    seconds: u64,
    connections: usize,
    expected: u16,
    build: Arc<dyn Fn(&reqwest::Client) -> reqwest::RequestBuilder + Send + Sync>,
) -> (u64, u64, f64) {
    let answered = Arc::new(AtomicU64::new(0));
    let other = Arc::new(AtomicU64::new(0));
    let deadline = Instant::now() + Duration::from_secs(seconds);
    let started = Instant::now();
    let tasks: Vec<_> = (0..connections)
        .map(|_| {
            let (answered, other, build) = (answered.clone(), other.clone(), build.clone());
            tokio::spawn(async move {
                let client = reqwest::Client::builder()
                    .pool_max_idle_per_host(1)
                    .build()
                    .unwrap_or_default();
                while Instant::now() < deadline {
                    match build(&client).send().await {
                        Ok(res) => {
                            let status = res.status().as_u16();
                            let _ = res.bytes().await;
                            if status == expected {
                                answered.fetch_add(1, Ordering::Relaxed);
                            } else {
                                other.fetch_add(1, Ordering::Relaxed);
                            }
                        }
                        Err(_) => {
                            other.fetch_add(1, Ordering::Relaxed);
                        }
                    }
                }
            })
        })
        .collect();
    for t in tasks {
        let _ = t.await;
    }
    let secs = started.elapsed().as_secs_f64();
    (
        answered.load(Ordering::Relaxed),
        other.load(Ordering::Relaxed),
        secs,
    )
}

/// Watches a gateway while a phase runs: the most CLI runs it held at once
/// (`gateway_running_runs`) and the most processes under it beyond those it had at the start,
/// sampled every 50 ms.
struct SpawnWatch {
    stop: Arc<std::sync::atomic::AtomicBool>,
    task: tokio::task::JoinHandle<(u64, usize)>,
}

impl SpawnWatch {
    fn start(gw: &Gateway) -> Self {
        let stop = Arc::new(std::sync::atomic::AtomicBool::new(false));
        let (url, pid) = (gw.url.clone(), gw.pid());
        let baseline = gw.tree_processes();
        let task = {
            let stop = stop.clone();
            tokio::spawn(async move {
                let (mut runs, mut procs) = (0u64, 0usize);
                loop {
                    let done = stop.load(Ordering::Relaxed);
                    let running = crate::gateway::metric_at(&url, "gateway_running_runs").await;
                    runs = runs.max(running.unwrap_or(0.0) as u64);
                    if let Some(pid) = pid {
                        let now = proctree::tree_of(pid).len();
                        procs = procs.max(now.saturating_sub(baseline));
                    }
                    if done {
                        break (runs, procs);
                    }
                    tokio::time::sleep(Duration::from_millis(50)).await;
                }
            })
        };
        Self { stop, task }
    }

    /// Stops watching: (CLI runs started, processes spawned), counting the turns the gateway
    /// completed too.
    async fn finish(self, gw: &Gateway) -> (u64, usize) {
        self.stop.store(true, Ordering::Relaxed);
        let (runs, procs) = self.task.await.unwrap_or((u64::MAX, usize::MAX));
        let turns = gw.metric_sum("gateway_turns_total").await as u64;
        (runs.max(turns), procs)
    }
}

/// One refusal phase: every request carries no credential, so none can reach a run. With
/// `use_up_budget`, requests are first sent until the per-IP limit answers 429 (the ones let
/// through it are refused with 401, before any run).
async fn refusal_phase(
    gw: &Gateway,
    expected: u16,
    use_up_budget: bool,
    seconds: u64,
    connections: usize,
) -> anyhow::Result<(u64, u64, f64, u64, usize)> {
    let body = json!({"model": "sonnet", "max_tokens": 10, "messages": [{"role": "user", "content": "x"}]});
    let watch = SpawnWatch::start(gw);
    let url = gw.url.clone();
    if use_up_budget {
        let client = reqwest::Client::new();
        let mut limited = false;
        for _ in 0..10 {
            let res = client
                .post(format!("{url}/v1/messages"))
                .json(&body)
                .send()
                .await?;
            match res.status().as_u16() {
                429 => {
                    limited = true;
                    break;
                }
                401 => {}
                other => {
                    anyhow::bail!("using up the per-IP budget: expected 401 or 429, got {other}")
                }
            }
        }
        anyhow::ensure!(limited, "the per-IP limit never answered 429");
    }
    let (n, other, secs) = hammer(
        seconds,
        connections,
        expected,
        Arc::new(move |c| c.post(format!("{url}/v1/messages")).json(&body)),
    )
    .await;
    let (runs, procs) = watch.finish(gw).await;
    Ok((n, other, secs, runs, procs))
}

pub async fn rejection(
    bin: &Path,
    claude: &Path,
    seconds: u64,
    connections: usize,
) -> anyhow::Result<Vec<Block>> {
    let mut body = String::new();
    body.push_str("| refusal | answered | other | requests/s | CLI runs / processes started | gateway RSS after |\n");
    body.push_str("|---|---|---|---|---|---|\n");
    let (mut all_runs, mut all_procs) = (0, 0);
    // 401: no IP limit, so every request reaches the credential check.
    // 429: a limit of one request per minute per IP, used up before the phase starts.
    for (label, expected, args) in [
        ("401 no credential", 401, &[][..]),
        (
            "429 rate limited (per IP)",
            429,
            &["--rate-limit-per-ip", "1"][..],
        ),
    ] {
        let gw = Gateway::start(bin, claude, args).await?;
        let (n, other, secs, runs, procs) =
            refusal_phase(&gw, expected, expected == 429, seconds, connections).await?;
        body.push_str(&format!(
            "| {label} | {n} | {other} | {:.0} | {runs} / {procs} | {} MiB |\n",
            n as f64 / secs,
            gw.tree_rss_kib() / 1024
        ));
        all_runs += runs;
        all_procs += procs;
    }
    body.push_str(&format!(
        "\nNo request carries a credential; the 429 gateway's budget (1 per minute per IP) is used up by one such request, refused with 401. CLI runs started: {all_runs}, processes spawned under the gateway: {all_procs} (`gateway_running_runs` and the process tree sampled every 50 ms, `gateway_turns_total` after).\n"
    ));
    anyhow::ensure!(
        all_runs == 0 && all_procs == 0,
        "the rejection path started {all_runs} CLI runs and {all_procs} processes:\n{body}"
    );
    Ok(vec![Block::new(
        "rejection",
        format!(
            "Rejection path ({connections} keep-alive connections, {seconds} s each, loopback)"
        ),
        &format!("{BENCH} rejection --seconds {seconds} --connections {connections}"),
        &body,
    )])
}

pub async fn concurrency(
    bin: &Path,
    claude: &Path,
    streams: usize,
    queued: usize,
) -> anyhow::Result<Vec<Block>> {
    let command = format!("{BENCH} concurrency --streams {streams} --queued {queued}");
    // 50 slow streams at once: every one must complete.
    let gw = Gateway::start(
        bin,
        claude,
        &[
            "--max-concurrent-runs",
            &streams.to_string(),
            "--max-concurrent-runs-per-tenant",
            &streams.to_string(),
            "--rate-limit-per-tenant",
            "0",
            "--run-timeout-secs",
            "600",
        ],
    )
    .await?;
    let idle_rss = gw.rss_kib();
    let client = reqwest::Client::new();
    let prompt = "slow stream\nFAKE-SCRIPT: {\"reply\": \"one two three four five six\", \"chunks\": 6, \"chunk_delay_ms\": 500}";
    let peak = Arc::new(AtomicU64::new(0));
    let peak_cli = Arc::new(AtomicU64::new(0));
    let sampling = {
        let (peak, peak_cli) = (peak.clone(), peak_cli.clone());
        let pid = gw.pid();
        tokio::spawn(async move {
            for _ in 0..2400 {
                if let Some(pid) = pid {
                    let (own, children) = crate::gateway::rss_split(pid);
                    peak.fetch_max(own, Ordering::Relaxed);
                    peak_cli.fetch_max(children, Ordering::Relaxed);
                }
                tokio::time::sleep(Duration::from_millis(50)).await;
            }
        })
    };
    let started = Instant::now();
    let runs = (0..streams).map(|i| {
        let client = client.clone();
        let url = gw.url.clone();
        async move {
            let sent = Instant::now();
            let res = client
                .post(format!("{url}/v1/messages"))
                .bearer_auth(format!("sk-ant-oat01-bench-c{i}.a"))
                .json(
                    &json!({"model": "sonnet", "max_tokens": 100, "stream": true,
                              "messages": [{"role": "user", "content": prompt}]}),
                )
                .send()
                .await;
            let mut res = match res {
                Ok(r) if r.status() == 200 => r,
                _ => return None,
            };
            let mut first = None;
            let mut text = String::new();
            while let Ok(Some(chunk)) = res.chunk().await {
                first.get_or_insert_with(|| sent.elapsed());
                text.push_str(&String::from_utf8_lossy(&chunk));
            }
            text.contains("message_stop")
                .then(|| (first.unwrap_or_default(), sent.elapsed()))
        }
    });
    let results = futures::future::join_all(runs).await;
    let wall = started.elapsed();
    sampling.abort();
    let done: Vec<(Duration, Duration)> = results.iter().flatten().copied().collect();
    let (ttfb, total): (Vec<Duration>, Vec<Duration>) = done.iter().copied().unzip();
    let spread = ttfb.iter().max().copied().unwrap_or_default()
        - ttfb.iter().min().copied().unwrap_or_default();
    let mut streams_body = String::new();
    streams_body.push_str("| completed | lost | first byte median / p95 / spread ms | complete median / p95 ms | all done in s | gateway RSS idle → peak MiB | CLI runs peak RSS (all) MiB | per run MiB |\n");
    streams_body.push_str("|---|---|---|---|---|---|---|---|\n");
    let (t, c) = (Summary::of(&ttfb), Summary::of(&total));
    let peak_cli_mib = peak_cli.load(Ordering::Relaxed) / 1024;
    streams_body.push_str(&format!(
        "| {} | {} | {:.0} / {:.0} / {:.0} | {:.0} / {:.0} | {:.1} | {} → {} | {} | {} |\n",
        done.len(),
        streams - done.len(),
        t.median_ms,
        t.p95_ms,
        ms(spread),
        c.median_ms,
        c.p95_ms,
        wall.as_secs_f64(),
        idle_rss / 1024,
        peak.load(Ordering::Relaxed) / 1024,
        peak_cli_mib,
        peak_cli_mib / streams.max(1) as u64,
    ));
    drop(gw);

    // 1,000 requests waiting in the queue behind one slow run.
    let gw = Gateway::start(
        bin,
        claude,
        &[
            "--max-concurrent-runs",
            "1",
            "--max-queued-requests",
            &(queued + 10).to_string(),
            "--queue-timeout-secs",
            "120",
            "--rate-limit-per-tenant",
            "0",
            "--tenant-identity",
            "token",
        ],
    )
    .await?;
    let idle = gw.rss_kib();
    let blocker = {
        let client = client.clone();
        let url = gw.url.clone();
        tokio::spawn(async move {
            let _ = client
                .post(format!("{url}/v1/messages"))
                .bearer_auth("sk-ant-oat01-bench-blocker.a")
                .json(
                    &json!({"model": "sonnet", "max_tokens": 100, "messages": [{"role": "user",
                    "content": "hold\nFAKE-SCRIPT: {\"first_byte_delay_ms\": 30000}"}]}),
                )
                .send()
                .await;
        })
    };
    tokio::time::sleep(Duration::from_secs(2)).await;
    let waiting: Vec<_> = (0..queued)
        .map(|i| {
            let url = gw.url.clone();
            tokio::spawn(async move {
                let client = reqwest::Client::new();
                let _ = client
                    .post(format!("{url}/v1/messages"))
                    .bearer_auth(format!("sk-ant-oat01-bench-q{i}.a"))
                    .timeout(Duration::from_secs(20))
                    .json(&json!({"model": "sonnet", "max_tokens": 10, "messages": [{"role": "user", "content": "q"}]}))
                    .send()
                    .await;
            })
        })
        .collect();
    let mut queued_now = 0;
    for _ in 0..100 {
        tokio::time::sleep(Duration::from_millis(100)).await;
        queued_now = gw
            .metric("gateway_queued_requests_now")
            .await
            .unwrap_or(0.0) as usize;
        if queued_now >= queued {
            break;
        }
    }
    tokio::time::sleep(Duration::from_millis(500)).await;
    let with_queue = gw.rss_kib();
    let queue_body = format!(
        "| queued (gauge) | gateway RSS idle | gateway RSS with the queue |\n|---|---|---|\n| {queued_now} | **{:.1} MiB** | **{:.1} MiB** |\n",
        idle as f64 / 1024.0,
        with_queue as f64 / 1024.0
    );
    for w in waiting {
        w.abort();
    }
    blocker.abort();
    Ok(vec![
        Block::new(
            "concurrency",
            format!("Concurrency: {streams} concurrent slow streams (3 s of output each)"),
            &command,
            &streams_body,
        ),
        Block::new(
            "concurrency-queue",
            format!("{queued} requests queued behind one run"),
            &command,
            &queue_body,
        ),
    ])
}

/// How a session's turns grow in latency and memory with its length (turns 1, 10, 100, 500):
/// resumed cold each turn, kept live, and kept live after a first turn that began warm. The
/// live process's memory is read at each mark.
pub async fn growth(bin: &Path, claude: &Path, turns: usize) -> anyhow::Result<Vec<Block>> {
    let marks: Vec<usize> = [1, 10, 100, 500]
        .into_iter()
        .filter(|n| *n <= turns)
        .collect();
    let header = |what: &str| {
        format!(
            "| {what} | {} |\n|---|{}|\n",
            marks
                .iter()
                .map(|n| format!("turn {n}"))
                .collect::<Vec<_>>()
                .join(" | "),
            marks.iter().map(|_| "---").collect::<Vec<_>>().join("|")
        )
    };
    let mut latency = header("latency ms");
    let mut memory = header("the session's CLI process, RSS MiB");
    for (name, args, warm) in [
        (
            "cold (resumed each turn)",
            vec!["--live-sessions-max", "0", "--rate-limit-per-tenant", "0"],
            false,
        ),
        (
            "live",
            vec!["--live-sessions-max", "4", "--rate-limit-per-tenant", "0"],
            false,
        ),
        (
            "live, first turn warm",
            vec![
                "--live-sessions-max",
                "4",
                "--warm-processes-max",
                "2",
                "--rate-limit-per-tenant",
                "0",
            ],
            true,
        ),
    ] {
        let gw = Gateway::start(bin, claude, &args).await?;
        let client = reqwest::Client::new();
        let token = "sk-ant-oat01-bench.growth";
        if warm {
            // A conversation a moment earlier leaves a warm process for the tenant's next.
            crate::streamed_turn(&client, &gw.url, token, "growth-prime", "hello").await?;
            let deadline = std::time::Instant::now() + Duration::from_secs(30);
            while gw.metric("gateway_warm_processes").await != Some(1.0) {
                anyhow::ensure!(std::time::Instant::now() < deadline, "no warm process");
                tokio::time::sleep(Duration::from_millis(20)).await;
            }
        }
        let own_and_waiting = gw.pid().map_or(0, |pid| {
            let (own, below) = crate::gateway::rss_split(pid);
            own + below
        });
        let cold = args.windows(2).any(|w| w == ["--live-sessions-max", "0"]);
        let (mut at, mut rss) = (Vec::new(), Vec::new());
        for n in 1..=turns {
            // A cold turn's process lives only for its turn (and the moment after its answer
            // while it finishes its transcript): its memory is its peak, sampled throughout.
            let sampler = (cold && marks.contains(&n))
                .then(|| crate::gateway::PeakSampler::start(gw.pid(), Duration::from_millis(10)));
            let (_, total) = crate::streamed_turn(
                &client,
                &gw.url,
                token,
                "growth",
                &format!("turn {n} of a long conversation"),
            )
            .await?;
            if marks.contains(&n) {
                at.push(format!("{:.0}", ms(total)));
                // What the gateway's tree holds beyond what it held before the session: the
                // session's live process after its turn, or a cold turn's process at its peak.
                // (With warm processes another one is made ready beside the session: its
                // memory is the warm benchmark's, not counted here.)
                let held = match sampler {
                    Some(sampler) => sampler.until_back_to(own_and_waiting).await,
                    None => gw.tree_rss_kib(),
                };
                rss.push(if warm {
                    "as live".to_owned()
                } else {
                    format!(
                        "{:.0}",
                        held.saturating_sub(own_and_waiting) as f64 / 1024.0
                    )
                });
            }
        }
        latency.push_str(&format!("| {name} | {} |\n", at.join(" | ")));
        memory.push_str(&format!("| {name} | {} |\n", rss.join(" | ")));
    }
    let body = format!("{latency}\n{memory}");
    Ok(vec![Block::new(
        "growth",
        "Cost growth: latency and memory of turn N of one session",
        &format!("{BENCH} growth --turns {turns}"),
        &body,
    )])
}
