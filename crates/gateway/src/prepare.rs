//! What the gateway prepares before it serves, shared by `serve` and `check`: the CLI it
//! found, and the sandbox the configuration asks for, probed.

use std::path::{Path, PathBuf};

use crate::config::Config;
use crate::runner::locate;
use crate::sandbox::{Bwrap, SandboxError};

/// What the gateway knows about its CLI.
#[derive(Debug, Clone)]
pub struct ClaudeInfo {
    pub bin: Option<PathBuf>,
    /// The CLI's version, or why it cannot be used.
    pub version: Result<String, String>,
}

/// Finds the CLI (`explicit`, else the usual places) and asks its version.
pub async fn claude_info(explicit: Option<&Path>) -> ClaudeInfo {
    let bin = locate::find_claude(explicit);
    let version = match &bin {
        Some(bin) => locate::version(bin).await,
        None => Err("the Claude Code CLI was not found: run `npm ci` in the project root, pass --claude-bin, or put `claude` on PATH".into()),
    };
    ClaudeInfo { bin, version }
}

/// The sandbox as the configuration asks for it, with its /etc files in `etc_dir` and its
/// network services' sockets in `net_dir`, probed: bubblewrap ran `true` inside it.
pub async fn build_sandbox(
    config: &Config,
    cli: Option<&Path>,
    etc_dir: &Path,
    bridge: &crate::mcp::bridge::Bridge,
    upstream: &crate::sandbox::net::UpstreamProxy,
) -> Result<Bwrap, SandboxError> {
    let cli = cli.unwrap_or(Path::new("claude"));
    let relay = std::env::current_exe().map_err(SandboxError::Network)?;
    let mut sandbox = Bwrap::new(cli, relay, etc_dir.to_path_buf(), config.sandbox_limits())?;
    sandbox.mcp_dir = config
        .mcp_dir
        .as_ref()
        .map(|d| std::fs::canonicalize(d).unwrap_or_else(|_| d.clone()));
    if config.sandbox_network == crate::config::SandboxNetwork::Isolated {
        sandbox.network = Some(crate::sandbox::net::isolated(
            upstream,
            crate::sandbox::net::Egress::new(
                config.sandbox_egress_ports.clone(),
                std::time::Duration::from_secs(10),
            ),
            bridge,
            crate::sandbox::net::SocketLimits {
                max_connections: config.sandbox_max_connections,
                header_timeout: config.client_timeout(),
            },
        ));
    }
    let limits = config.sandbox_limits();
    sandbox.cgroups = match limits.run_memory_bytes {
        0 => Err("turned off (--sandbox-run-memory-mb 0)".into()),
        bytes => crate::sandbox::cgroup::Cgroups::detect(bytes, limits.max_processes)
            .map(std::sync::Arc::new),
    };
    if let Err(reason) = &sandbox.cgroups {
        tracing::warn!(%reason, "no cgroup per run: a run's memory is bounded per process and by its sized memory mounts only");
    }
    sandbox.probe().await?;
    Ok(sandbox)
}
