//! `claude-gateway check`: whether this configuration can serve, before anyone depends on it.
//!
//! The same checks feed `/ready`, where the cheap ones (the data dir) run on every call and the
//! expensive ones (the CLI's version, the sandbox probe) are the results from start-up.

use std::fmt;
use std::path::{Path, PathBuf};
use std::time::Duration;

use serde::Serialize;

use crate::config::Config;
use crate::prepare::ClaudeInfo;

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum Status {
    Ok,
    /// Serves, but the operator should look (e.g. little free space, no sandbox).
    Warn,
    /// Does not serve as configured.
    Fail,
}

impl Status {
    fn label(self) -> &'static str {
        match self {
            Status::Ok => "ok",
            Status::Warn => "warn",
            Status::Fail => "fail",
        }
    }
}

/// One check's outcome.
#[derive(Debug, Clone, Serialize)]
pub struct Check {
    pub name: &'static str,
    pub status: Status,
    pub detail: String,
}

impl Check {
    pub fn ok(name: &'static str, detail: impl Into<String>) -> Self {
        Self::new(name, Status::Ok, detail)
    }

    pub fn warn(name: &'static str, detail: impl Into<String>) -> Self {
        Self::new(name, Status::Warn, detail)
    }

    pub fn fail(name: &'static str, detail: impl Into<String>) -> Self {
        Self::new(name, Status::Fail, detail)
    }

    fn new(name: &'static str, status: Status, detail: impl Into<String>) -> Self {
        Self {
            name,
            status,
            detail: detail.into(),
        }
    }
}

impl fmt::Display for Check {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "{:<4}  {:<9} {}",
            self.status.label(),
            self.name,
            self.detail
        )
    }
}

/// The overall outcome: it passes when no check failed (warnings pass).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Verdict {
    pub passed: bool,
    pub line: String,
}

impl Verdict {
    pub fn exit_code(&self) -> i32 {
        if self.passed {
            0
        } else {
            1
        }
    }
}

pub fn verdict(checks: &[Check]) -> Verdict {
    let failed: Vec<&str> = checks
        .iter()
        .filter(|c| c.status == Status::Fail)
        .map(|c| c.name)
        .collect();
    let warned = checks.iter().filter(|c| c.status == Status::Warn).count();
    let (passed, line) = if checks.is_empty() {
        // Nothing checked proves nothing.
        (false, "verdict: FAIL (nothing was checked)".to_owned())
    } else if !failed.is_empty() {
        (
            false,
            format!("verdict: FAIL ({} failed)", failed.join(", ")),
        )
    } else if warned > 0 {
        let s = if warned == 1 { "" } else { "s" };
        (true, format!("verdict: ok, with {warned} warning{s}"))
    } else {
        (true, "verdict: ok".to_owned())
    };
    Verdict { passed, line }
}

/// Below this much free space in the data dir, runs would fail (each run writes its private
/// dir, and sessions' transcripts grow there): a failure.
pub const MIN_FREE_BYTES: u64 = 256 << 20;
/// Below this much, a warning: enough for now, not for long.
pub const LOW_FREE_BYTES: u64 = 2 << 30;

/// The free-space part of the data dir check, from the bytes available to this user.
pub fn free_space_status(available: u64) -> Status {
    if available < MIN_FREE_BYTES {
        Status::Fail
    } else if available < LOW_FREE_BYTES {
        Status::Warn
    } else {
        Status::Ok
    }
}

fn mib(bytes: u64) -> String {
    if bytes >= 10 << 30 {
        format!("{} GiB", bytes >> 30)
    } else {
        format!("{} MiB", bytes >> 20)
    }
}

/// The data dir: a writable directory (or one that will be created), private to the gateway's
/// user, on a file system with room. Cheap (a few system calls): `/ready` runs it every time.
pub fn data_dir(dir: &Path) -> Check {
    use crate::config::{data_dir_place, DataDirPlace};
    use std::os::unix::fs::PermissionsExt;
    const NAME: &str = "data dir";
    let (measured, mut notes, mut status): (PathBuf, Vec<String>, Status) =
        match data_dir_place(dir) {
            Err(reason) => return Check::fail(NAME, format!("{}: {reason}", dir.display())),
            Ok(DataDirPlace::Exists(meta)) => {
                let mode = meta.permissions().mode() & 0o777;
                if mode & 0o077 != 0 {
                    // It holds the install key and every tenant's files.
                    (
                        dir.to_path_buf(),
                        vec![format!(
                            "mode {mode:o} lets other users in (chmod 700 {})",
                            dir.display()
                        )],
                        Status::Warn,
                    )
                } else {
                    (dir.to_path_buf(), vec!["private".into()], Status::Ok)
                }
            }
            Ok(DataDirPlace::Creatable(parent)) => {
                (parent, vec!["will be created (0700)".into()], Status::Ok)
            }
        };
    match nix::sys::statvfs::statvfs(&measured) {
        Ok(fs) => {
            // Counts are u64 on 64-bit Linux but other widths elsewhere.
            #[allow(clippy::unnecessary_cast)]
            let available =
                (fs.blocks_available() as u64).saturating_mul(fs.fragment_size() as u64);
            let space = free_space_status(available);
            notes.push(format!("{} free", mib(available)));
            if space == Status::Fail {
                notes.push(format!("needs at least {}", mib(MIN_FREE_BYTES)));
            }
            status = worst(status, space);
        }
        Err(e) => {
            notes.push(format!("free space unknown: {e}"));
            status = worst(status, Status::Warn);
        }
    }
    Check::new(
        NAME,
        status,
        format!("{}: {}", dir.display(), notes.join(", ")),
    )
}

fn worst(a: Status, b: Status) -> Status {
    match (a, b) {
        (Status::Fail, _) | (_, Status::Fail) => Status::Fail,
        (Status::Warn, _) | (_, Status::Warn) => Status::Warn,
        _ => Status::Ok,
    }
}

/// The CLI: found, and answers `--version`.
pub fn cli(info: &ClaudeInfo) -> Check {
    match (&info.bin, &info.version) {
        (Some(bin), Ok(version)) => {
            Check::ok("cli", format!("{} (Claude Code {version})", bin.display()))
        }
        (_, Err(reason)) => Check::fail("cli", reason.clone()),
        (None, Ok(_)) => Check::fail("cli", "the Claude Code CLI was not found"),
    }
}

/// The sandbox of a running gateway, as probed at start-up.
pub fn sandbox_state(sandbox: Option<&crate::sandbox::Bwrap>, disabled: Option<&str>) -> Check {
    match (sandbox, disabled) {
        (Some(b), _) => Check::ok("sandbox", sandbox_detail(b)),
        (None, Some(reason)) => Check::warn(
            "sandbox",
            format!("INSECURE: runs are not sandboxed ({reason}); only PARANOID is served"),
        ),
        (None, None) => Check::fail("sandbox", "no sandbox"),
    }
}

fn sandbox_detail(b: &crate::sandbox::Bwrap) -> String {
    format!(
        "bubblewrap {} works here (user namespaces{}; {})",
        b.bwrap.display(),
        if b.network.is_some() {
            ", own network"
        } else {
            "; host network shared"
        },
        match &b.cgroups {
            Ok(c) => format!(
                "a cgroup v{} per run: {} MiB",
                c.version(),
                c.memory_bytes() >> 20
            ),
            Err(reason) => format!("no cgroup per run: {reason}"),
        }
    )
}

/// Builds and probes the sandbox the configuration asks for, in a scratch directory of its own:
/// a gateway serving from the same data dir keeps its sockets and files untouched.
async fn sandbox_probe(config: &Config, cli: Option<&Path>) -> Check {
    let scratch = std::env::temp_dir().join(format!("claude-gateway-check-{}", std::process::id()));
    let made =
        std::os::unix::fs::DirBuilderExt::mode(std::fs::DirBuilder::new().recursive(true), 0o700)
            .create(&scratch);
    if let Err(e) = made {
        return Check::fail(
            "sandbox",
            format!("cannot create {}: {e}", scratch.display()),
        );
    }
    let outcome = async {
        // Port 0: a gateway already serving may hold the configured port.
        let listen = std::net::SocketAddr::new(config.mcp_bridge_listen.ip(), 0);
        let bridge = crate::mcp::bridge::Bridge::start(listen)
            .await
            .map_err(crate::sandbox::SandboxError::Network)?;
        let upstream = crate::sandbox::net::UpstreamProxy::new(
            &config.anthropic_base_url,
            std::sync::Arc::default(),
            std::sync::Arc::new(crate::quota::QuotaStore::new(None)),
        )
        .map_err(crate::sandbox::SandboxError::Network)?;
        crate::prepare::build_sandbox(config, cli, &scratch.join("etc"), &bridge, &upstream).await
    }
    .await;
    let _ = std::fs::remove_dir_all(&scratch);
    match (outcome, config.insecure_no_sandbox) {
        (Ok(b), false) => Check::ok("sandbox", sandbox_detail(&b)),
        (Ok(_), true) => Check::warn(
            "sandbox",
            "works, but --insecure-no-sandbox turns it off: only PARANOID is served",
        ),
        (Err(e), true) => Check::warn(
            "sandbox",
            format!("INSECURE: runs would not be sandboxed ({e}); only PARANOID is served"),
        ),
        (Err(e), false) => Check::fail("sandbox", e.to_string()),
    }
}

/// Whether the upstream answers at all: any HTTP status counts, since only reaching it is in
/// question (credentials are the tenants').
/// The shared Redis, when configured: whether it answers now, and holds the key this
/// instance names tenants by (put back if Redis lost it).
pub async fn shared(
    redis: Option<&crate::shared::Redis>,
    key: &crate::tenant::identity::InstallKey,
) -> Option<Check> {
    let redis = redis?;
    Some(match key.reassert(redis).await {
        Ok(true) => Check::ok("redis", "shared state reachable"),
        Ok(false) => Check::fail(
            "redis",
            "Redis holds another install key than this instance: restart the instances so they name tenants alike",
        ),
        Err(e) => Check::fail("redis", e.to_string()),
    })
}

pub async fn upstream(base_url: &str, timeout: Duration) -> Check {
    let client = match crate::tls::client_builder()
        .timeout(timeout)
        .redirect(reqwest::redirect::Policy::none())
        .build()
    {
        Ok(c) => c,
        Err(e) => return Check::fail("upstream", format!("no HTTP client: {e}")),
    };
    match client.head(base_url).send().await {
        Ok(res) => Check::ok(
            "upstream",
            format!("{base_url} answers (HTTP {})", res.status().as_u16()),
        ),
        Err(e) => {
            let mut reason = e.to_string();
            let mut source = std::error::Error::source(&e);
            while let Some(s) = source {
                reason = format!("{reason}: {s}");
                source = s.source();
            }
            Check::fail("upstream", format!("{base_url} is unreachable: {reason}"))
        }
    }
}

/// Runs every check on `config` as `serve` would use it.
pub async fn run(mut config: Config) -> Vec<Check> {
    let mut checks = Vec::new();
    // Kept alive until the upstream was checked.
    let mut _demo = None;
    if config.demo {
        match fake_anthropic::FakeAnthropic::start(([127, 0, 0, 1], 0).into()).await {
            Ok(fake) => {
                config.anthropic_base_url = fake.base_url();
                _demo = Some(fake);
            }
            Err(e) => checks.push(Check::fail(
                "upstream",
                format!("cannot start the demo upstream: {e}"),
            )),
        }
    }
    checks.push(match config.resolve_paths() {
        Ok(()) => Check::ok(
            "config",
            format!(
                "listen {}, data dir {}, security level {} (at most {})",
                config.listen_addr(),
                config.data_dir.display(),
                config.security_level.as_str(),
                config
                    .max_security_level
                    .unwrap_or(config.security_level)
                    .as_str(),
            ),
        ),
        Err(e) => Check::fail("config", e.to_string()),
    });
    let info = crate::prepare::claude_info(config.claude_bin.as_deref()).await;
    checks.push(cli(&info));
    checks.push(sandbox_probe(&config, info.bin.as_deref()).await);
    checks.push(data_dir(&config.data_dir));
    if config.demo && _demo.is_none() {
        return checks;
    }
    let mut up = upstream(&config.anthropic_base_url, Duration::from_secs(5)).await;
    if config.demo {
        up.detail = format!("demo (built-in fake upstream): {}", up.detail);
    }
    checks.push(up);
    checks
}

#[cfg(test)]
mod tests {
    use super::*;

    fn of(statuses: &[Status]) -> Vec<Check> {
        const NAMES: [&str; 4] = ["config", "cli", "sandbox", "upstream"];
        statuses
            .iter()
            .zip(NAMES)
            .map(|(s, n)| Check::new(n, *s, "x"))
            .collect()
    }

    #[test]
    fn all_ok_passes() {
        let v = verdict(&of(&[Status::Ok, Status::Ok, Status::Ok]));
        assert_eq!(v.exit_code(), 0);
        assert_eq!(v.line, "verdict: ok");
    }

    #[test]
    fn warnings_pass_and_are_counted() {
        let v = verdict(&of(&[Status::Ok, Status::Warn, Status::Warn]));
        assert_eq!(v.exit_code(), 0);
        assert_eq!(v.line, "verdict: ok, with 2 warnings");
        let v = verdict(&of(&[Status::Warn]));
        assert_eq!(v.line, "verdict: ok, with 1 warning");
    }

    #[test]
    fn any_failure_fails_and_names_the_failed_checks() {
        let v = verdict(&of(&[Status::Fail, Status::Warn, Status::Ok, Status::Fail]));
        assert_eq!(v.exit_code(), 1);
        assert_eq!(v.line, "verdict: FAIL (config, upstream failed)");
    }

    #[test]
    fn nothing_checked_is_not_a_pass() {
        assert_eq!(verdict(&[]).exit_code(), 1);
    }

    #[test]
    fn free_space_thresholds() {
        assert_eq!(free_space_status(0), Status::Fail);
        assert_eq!(free_space_status(MIN_FREE_BYTES - 1), Status::Fail);
        assert_eq!(free_space_status(MIN_FREE_BYTES), Status::Warn);
        assert_eq!(free_space_status(LOW_FREE_BYTES), Status::Ok);
    }

    #[test]
    fn lines_show_status_name_and_detail() {
        assert_eq!(
            Check::warn("data dir", "/d: 1 GiB free").to_string(),
            "warn  data dir  /d: 1 GiB free"
        );
    }

    #[test]
    fn a_missing_data_dir_under_a_writable_parent_is_ok_and_not_created() {
        let parent = tempfile::tempdir().expect("tempdir");
        let dir = parent.path().join("data");
        let c = data_dir(&dir);
        assert_ne!(c.status, Status::Fail, "{c}");
        assert!(c.detail.contains("will be created"), "{c}");
        assert!(!dir.exists());
    }

    #[test]
    fn a_shared_data_dir_is_a_warning_and_a_file_a_failure() {
        use std::os::unix::fs::PermissionsExt;
        let dir = tempfile::tempdir().expect("tempdir");
        std::fs::set_permissions(dir.path(), std::fs::Permissions::from_mode(0o755))
            .expect("chmod");
        let c = data_dir(dir.path());
        assert!(c.detail.contains("mode 755"), "{c}");
        assert_ne!(c.status, Status::Ok);
        let file = dir.path().join("file");
        std::fs::write(&file, "").expect("write");
        assert_eq!(data_dir(&file).status, Status::Fail);
        assert_eq!(data_dir(&file.join("data")).status, Status::Fail);
    }

    #[tokio::test]
    async fn any_http_answer_means_reachable_and_no_answer_means_not() {
        let fake = fake_anthropic::FakeAnthropic::start(([127, 0, 0, 1], 0).into())
            .await
            .expect("fake");
        let c = upstream(&fake.base_url(), Duration::from_secs(5)).await;
        assert_eq!(c.status, Status::Ok, "{c}");
        // A port just freed: nothing listens there.
        let port = std::net::TcpListener::bind("127.0.0.1:0")
            .and_then(|l| l.local_addr())
            .expect("port")
            .port();
        let c = upstream(&format!("http://127.0.0.1:{port}"), Duration::from_secs(5)).await;
        assert_eq!(c.status, Status::Fail, "{c}");
        assert!(c.detail.contains("unreachable"), "{c}");
    }
}
