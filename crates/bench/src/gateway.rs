//! A gateway under measurement: the release binary, a fresh data dir, an in-process fake
//! upstream, and the memory of its whole process tree.

use std::path::Path;
use std::process::Stdio;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use fake_anthropic::{FakeAnthropic, FakeHandle};
use tokio::io::{AsyncBufReadExt, BufReader};
use tokio::process::{Child, Command};

pub struct Gateway {
    pub url: String,
    child: Child,
    _fake: FakeHandle,
    _data: tempfile::TempDir,
}

impl Gateway {
    pub async fn start(bin: &Path, claude: &Path, args: &[&str]) -> anyhow::Result<Self> {
        let fake = FakeAnthropic::start(([127, 0, 0, 1], 0).into()).await?;
        let data = tempfile::tempdir()?;
        let mut child = Command::new(bin)
            .args(["serve", "--listen", "127.0.0.1:0", "--log-format", "json"])
            .arg("--data-dir")
            .arg(data.path())
            .arg("--claude-bin")
            .arg(claude)
            .args(["--upstream-max-retries", "0"])
            .args(args)
            .env("ANTHROPIC_BASE_URL", fake.base_url())
            .env("RUST_LOG", "warn")
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
                .ok_or_else(|| anyhow::anyhow!("gateway exited before listening"))?;
            if let Some(url) = line.strip_prefix("claude-gateway listening on ") {
                break url.to_owned();
            }
        };
        Ok(Self {
            url,
            child,
            _fake: fake,
            _data: data,
        })
    }

    pub fn pid(&self) -> Option<u32> {
        self.child.id()
    }

    /// The gateway process's own resident memory, in KiB.
    pub fn rss_kib(&self) -> u64 {
        self.pid().map_or(0, proctree::rss_kib)
    }

    /// A value from the gateway's /metrics.
    pub async fn metric(&self, name: &str) -> Option<f64> {
        metric_at(&self.url, name).await
    }

    /// The sum of every series of a metric (all label sets) in the gateway's /metrics; 0 when it
    /// has none yet.
    pub async fn metric_sum(&self, name: &str) -> f64 {
        let Some(text) = scrape(&self.url).await else {
            return 0.0;
        };
        text.lines()
            .filter(|l| {
                l.strip_prefix(name)
                    .is_some_and(|rest| rest.starts_with(' ') || rest.starts_with('{'))
            })
            .filter_map(|l| l.rsplit(' ').next()?.parse::<f64>().ok())
            .sum()
    }

    /// The gateway's pid and all its descendants.
    fn tree(&self) -> Vec<u32> {
        let Some(root) = self.child.id() else {
            return Vec::new();
        };
        proctree::tree_of(root)
    }
}

impl Gateway {
    pub fn tree_processes(&self) -> usize {
        self.tree().len()
    }

    /// Resident memory of the gateway and every process under it, in KiB.
    pub fn tree_rss_kib(&self) -> u64 {
        self.tree().into_iter().map(proctree::rss_kib).sum()
    }
}

/// Resident memory of `pid` itself and of all its descendants, in KiB.
pub fn rss_split(pid: u32) -> (u64, u64) {
    let tree = proctree::tree_of(pid);
    let own = proctree::rss_kib(pid);
    (own, tree.into_iter().skip(1).map(proctree::rss_kib).sum())
}

async fn scrape(url: &str) -> Option<String> {
    reqwest::get(format!("{url}/metrics"))
        .await
        .ok()?
        .text()
        .await
        .ok()
}

/// An unlabelled value from the /metrics of the gateway at `url`.
pub async fn metric_at(url: &str, name: &str) -> Option<f64> {
    scrape(url)
        .await?
        .lines()
        .find(|l| l.starts_with(name) && l[name.len()..].starts_with(' '))
        .and_then(|l| l.split_whitespace().nth(1))
        .and_then(|v| v.parse().ok())
}

/// The peak resident memory of a process tree (its root and every descendant), sampled in
/// the background until stopped.
pub struct PeakSampler {
    peak: Arc<AtomicU64>,
    last: Arc<AtomicU64>,
    stop: Arc<AtomicBool>,
    task: tokio::task::JoinHandle<()>,
}

impl PeakSampler {
    /// Samples `pid`'s tree every `every` (nothing, without a pid).
    pub fn start(pid: Option<u32>, every: Duration) -> Self {
        let peak = Arc::new(AtomicU64::new(0));
        let last = Arc::new(AtomicU64::new(u64::MAX));
        let stop = Arc::new(AtomicBool::new(false));
        let task = {
            let (peak, last, stop) = (peak.clone(), last.clone(), stop.clone());
            tokio::spawn(async move {
                while !stop.load(Ordering::Relaxed) {
                    if let Some(pid) = pid {
                        let (own, below) = rss_split(pid);
                        peak.fetch_max(own + below, Ordering::Relaxed);
                        last.store(own + below, Ordering::Relaxed);
                    }
                    tokio::time::sleep(every).await;
                }
            })
        };
        Self {
            peak,
            last,
            stop,
            task,
        }
    }

    /// The peak so far, in KiB, sampling no more.
    pub async fn stop(self) -> u64 {
        self.stop.store(true, Ordering::Relaxed);
        let _ = self.task.await;
        self.peak.load(Ordering::Relaxed)
    }

    /// The peak, once the tree is back within 8 MiB of `baseline` KiB (or after 5 s).
    pub async fn until_back_to(self, baseline: u64) -> u64 {
        let deadline = Instant::now() + Duration::from_secs(5);
        while self.last.load(Ordering::Relaxed) > baseline + 8 * 1024 && Instant::now() < deadline {
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
        self.stop().await
    }
}
