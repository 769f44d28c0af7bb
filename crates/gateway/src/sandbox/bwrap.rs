//! The bubblewrap sandbox around a CLI run.
//!
//! Inside: new user, pid, ipc, uts, cgroup, mount and network namespaces (by default the
//! network has nothing but loopback, and the run reaches the upstream, the web and its remote
//! MCP servers only through the gateway's sockets: see [`super::net`]); uid 1000, no capabilities, no-new-privileges; read-only `/usr`
//! and CLI install; a generated `/etc/passwd`; the tenant's workspace read-write at
//! `/workspace`; the run's private directory as `HOME`; fresh `/proc`, minimal `/dev`, tmpfs
//! `/tmp`. Nothing else of the host exists there: no other workspace, no data dir, no gateway
//! process or environment. The environment is not set with `--setenv` (its values would sit in
//! bwrap's argv, visible to every process listing on the host): the child inherits exactly the
//! environment the runner built, and nothing else, because the runner clears its own.

use std::ffi::OsString;
use std::path::{Path, PathBuf};

use super::limits::Limits;
use super::net::{self, IsolatedNet};
use crate::runner::command::CommandLine;

pub const HOME: &str = "/home/claude";
pub const WORKSPACE: &str = "/workspace";
pub const CLI_DIR: &str = "/opt/claude";
pub const SYSTEM_PROMPT: &str = "/run/gateway/system-prompt.txt";
pub const TMP: &str = "/tmp";
pub const PROJECTS: &str = "/home/claude/.claude/projects";
pub const MCP_CONFIG: &str = "/run/gateway/mcp.json";
pub const SETTINGS: &str = "/run/gateway/settings.json";
/// A request's client-defined tools (and, on a continuation, the client's results).
pub const CLIENT_TOOLS: &str = "/run/gateway/client-tools.json";
/// Variables for the sandboxed command that a request named (a local MCP server's `env`),
/// applied by the relay inside: never to bwrap or any other host process.
pub const ENV_FILE: &str = "/run/gateway/env.json";
/// Where the operator's MCP server installations (`--mcp-dir`) appear, read-only.
pub const MCP_DIR: &str = "/opt/mcp";
const PRLIMIT: &str = "/usr/bin/prlimit";
const NICE: &str = "/usr/bin/nice";
/// Sandboxed work runs at a lower CPU priority than the gateway, so a tenant's busy loop or
/// fork bomb cannot starve the server that answers everyone else.
const NICENESS: &str = "10";

/// Host files that programs inside need, bound read-only when present.
const HOST_ETC: &[&str] = &[
    "/etc/resolv.conf",
    "/etc/hosts",
    "/etc/nsswitch.conf",
    "/etc/ssl",
    "/etc/ca-certificates",
    "/etc/alternatives",
    "/etc/localtime",
];

#[derive(Debug, Clone)]
pub struct Bwrap {
    pub bwrap: PathBuf,
    /// The gateway's own binary, which starts every sandboxed command from inside
    /// ([`super::relay`]), bound read-only at [`net::RELAY`].
    pub relay: PathBuf,
    /// The directory holding the CLI binary, bound read-only at [`CLI_DIR`].
    pub cli_dir: PathBuf,
    pub cli_name: OsString,
    /// Holds the generated `passwd` and `group`.
    pub etc_dir: PathBuf,
    pub limits: Limits,
    /// The operator's MCP server installations, bound read-only at [`MCP_DIR`].
    pub mcp_dir: Option<PathBuf>,
    /// A network of its own per sandbox, with the gateway's services; `None` shares the host's.
    pub network: Option<IsolatedNet>,
    /// The syscall filter's programs ([`super::seccomp`]), given to bwrap as descriptors.
    pub seccomp: Vec<std::sync::Arc<[u8]>>,
    /// Where each run gets its own cgroup, or why runs get none.
    pub cgroups: Result<std::sync::Arc<super::cgroup::Cgroups>, String>,
}

/// The host paths a run mounts.
pub struct Mounts<'a> {
    pub home: &'a Path,
    pub workspace: &'a Path,
    pub system_prompt: Option<&'a Path>,
    /// The tenant's transcripts, mounted as the CLI's `~/.claude/projects`.
    pub projects: Option<&'a Path>,
    pub mcp_config: Option<&'a Path>,
    /// The level's permission rules for the CLI.
    pub settings: Option<&'a Path>,
    /// A JSON object of variables for the sandboxed command ([`ENV_FILE`]).
    pub env_file: Option<&'a Path>,
    /// The request's client-defined tools ([`CLIENT_TOOLS`]).
    pub client_tools: Option<&'a Path>,
    /// The run's own network sockets, when the sandbox has an isolated network.
    pub net_dir: Option<&'a Path>,
}

#[derive(Debug, thiserror::Error)]
pub enum SandboxError {
    #[error("bubblewrap (bwrap) was not found; install the `bubblewrap` package")]
    NoBwrap,
    #[error("the CLI path {0} has no parent directory")]
    CliPath(PathBuf),
    #[error("cannot write the sandbox's /etc files: {0}")]
    Etc(std::io::Error),
    #[error("bubblewrap cannot create a sandbox here (are user namespaces available? if only network namespaces are refused, --sandbox-network shared keeps the rest): {0}")]
    Probe(String),
    #[error("cannot prepare the sandbox's network services: {0}")]
    Network(std::io::Error),
    #[error(transparent)]
    Seccomp(#[from] super::seccomp::SeccompError),
}

impl Bwrap {
    /// Prepares the sandbox for the CLI at `cli` (symlinks resolved, so the real install is bound).
    pub fn new(
        cli: &Path,
        relay: PathBuf,
        etc_dir: PathBuf,
        limits: Limits,
    ) -> Result<Self, SandboxError> {
        let bwrap = ["/usr/bin/bwrap", "/bin/bwrap", "/usr/local/bin/bwrap"]
            .iter()
            .map(PathBuf::from)
            .find(|p| p.is_file())
            .ok_or(SandboxError::NoBwrap)?;
        let real = std::fs::canonicalize(cli).unwrap_or_else(|_| cli.to_path_buf());
        let copies = etc_dir.with_file_name("sandbox-cli");
        let real = match execute_only_copy(&real, &copies) {
            Ok(Some(copy)) => copy,
            Ok(None) => real,
            Err(e) => {
                tracing::warn!(error = %e, "cannot install an execute-only copy of the CLI; tools in a run may read the CLI's descriptors");
                real
            }
        };
        let (Some(cli_dir), Some(cli_name)) = (real.parent(), real.file_name()) else {
            return Err(SandboxError::CliPath(real));
        };
        std::fs::create_dir_all(&etc_dir).map_err(SandboxError::Etc)?;
        std::fs::write(
            etc_dir.join("passwd"),
            "root:x:0:0::/nonexistent:/usr/sbin/nologin\nclaude:x:1000:1000::/home/claude:/bin/bash\nnobody:x:65534:65534::/nonexistent:/usr/sbin/nologin\n",
        )
        .map_err(SandboxError::Etc)?;
        std::fs::write(
            etc_dir.join("group"),
            "root:x:0:\nclaude:x:1000:\nnogroup:x:65534:\n",
        )
        .map_err(SandboxError::Etc)?;
        Ok(Self {
            bwrap,
            relay,
            cli_dir: cli_dir.to_path_buf(),
            cli_name: cli_name.to_os_string(),
            etc_dir,
            limits,
            mcp_dir: None,
            network: None,
            seccomp: super::seccomp::programs()?
                .into_iter()
                .map(Into::into)
                .collect(),
            cgroups: Err("not set up".into()),
        })
    }

    /// The CLI's path as seen inside the sandbox.
    pub fn inside_program(&self) -> PathBuf {
        Path::new(CLI_DIR).join(&self.cli_name)
    }

    fn base_args(&self) -> Vec<OsString> {
        let mut args: Vec<OsString> = [
            "--unshare-all",
            // Named, so that nested user namespaces can be disabled: no `unshare -r` inside.
            "--unshare-user",
            "--disable-userns",
            "--uid",
            "1000",
            "--gid",
            "1000",
            "--hostname",
            "sandbox",
            "--die-with-parent",
            "--new-session",
            // The relay is pid 1, not bubblewrap's init: that init keeps the gateway's pipes
            // and is dumpable, so a tool could write into them through /proc/1/fd.
            "--as-pid-1",
            "--cap-drop",
            "ALL",
            "--ro-bind",
            "/usr",
            "/usr",
            "--symlink",
            "usr/lib",
            "/lib",
            "--symlink",
            "usr/lib64",
            "/lib64",
            "--symlink",
            "usr/bin",
            "/bin",
            "--symlink",
            "usr/sbin",
            "/sbin",
            "--proc",
            "/proc",
            "--dev",
            "/dev",
        ]
        .iter()
        .map(OsString::from)
        .collect();
        // The memory-backed mounts are bounded: unbounded, each could take half the host's
        // memory. /dev itself is read-only (its devices keep working); /dev/shm and /tmp are
        // writable, each with its own size.
        args.extend([
            "--perms".into(),
            "1777".into(),
            "--size".into(),
            self.limits.shm_bytes.to_string().into(),
            "--tmpfs".into(),
            "/dev/shm".into(),
            "--remount-ro".into(),
            "/dev".into(),
            "--perms".into(),
            "1777".into(),
            "--size".into(),
            self.limits.tmp_bytes.to_string().into(),
            "--tmpfs".into(),
            TMP.into(),
        ]);
        for i in 0..self.seccomp.len() {
            args.extend([
                "--add-seccomp-fd".into(),
                (super::seccomp::FIRST_FD + i as i32).to_string().into(),
            ]);
        }
        for path in HOST_ETC {
            args.extend(["--ro-bind-try".into(), (*path).into(), (*path).into()]);
        }
        for name in ["passwd", "group"] {
            args.extend([
                "--ro-bind".into(),
                self.etc_dir.join(name).into_os_string(),
                format!("/etc/{name}").into(),
            ]);
        }
        // `-try`: a missing CLI is reported by /ready and as 502, not as a failed sandbox.
        args.extend([
            "--ro-bind-try".into(),
            self.cli_dir.clone().into_os_string(),
            CLI_DIR.into(),
            "--ro-bind".into(),
            self.relay.clone().into_os_string(),
            net::RELAY.into(),
        ]);
        if self.network.is_none() {
            args.push("--share-net".into());
        }
        args
    }

    /// The run's own network sockets ([`net::IsolatedNet::open_run`]), where the relay finds them.
    fn net_args(&self, net_dir: Option<&Path>) -> Vec<OsString> {
        match (&self.network, net_dir) {
            (Some(_), Some(dir)) => vec![
                "--ro-bind".into(),
                dir.as_os_str().to_owned(),
                net::INSIDE_DIR.into(),
            ],
            _ => Vec::new(),
        }
    }

    /// The relay that starts every sandboxed command: it serves an isolated network's ports
    /// and adds the request's variables from [`ENV_FILE`], both from inside the sandbox.
    fn relay_prefix(&self, env_file: bool) -> Vec<OsString> {
        let mut args: Vec<OsString> = vec![net::RELAY.into(), "sandbox-relay".into()];
        for forward in self.network.iter().flat_map(IsolatedNet::forwards) {
            args.push(format!("--forward={forward}").into());
        }
        if env_file {
            args.push(format!("--env-file={ENV_FILE}").into());
        }
        args.push("--".into());
        args
    }

    /// Wraps `inner` (built with the inside paths) so it runs in the sandbox with `mounts`.
    pub fn wrap(&self, inner: CommandLine, mounts: &Mounts<'_>) -> CommandLine {
        let mut args = self.base_args();
        args.extend(self.net_args(mounts.net_dir));
        args.extend([
            "--bind".into(),
            mounts.home.as_os_str().to_owned(),
            HOME.into(),
            "--bind".into(),
            mounts.workspace.as_os_str().to_owned(),
            WORKSPACE.into(),
        ]);
        if let Some(projects) = mounts.projects {
            args.extend([
                "--bind".into(),
                projects.as_os_str().to_owned(),
                PROJECTS.into(),
            ]);
        }
        if let Some(dir) = &self.mcp_dir {
            args.extend([
                "--ro-bind-try".into(),
                dir.as_os_str().to_owned(),
                MCP_DIR.into(),
            ]);
        }
        // The run's own files, written by the gateway, read-only inside.
        for (file, inside) in [
            (mounts.mcp_config, MCP_CONFIG),
            (mounts.system_prompt, SYSTEM_PROMPT),
            (mounts.settings, SETTINGS),
            (mounts.env_file, ENV_FILE),
            (mounts.client_tools, CLIENT_TOOLS),
        ] {
            if let Some(file) = file {
                args.extend([
                    "--ro-bind".into(),
                    file.as_os_str().to_owned(),
                    inside.into(),
                ]);
            }
        }
        args.extend(["--chdir".into(), WORKSPACE.into(), "--".into()]);
        args.extend(self.relay_prefix(mounts.env_file.is_some()));
        args.extend([NICE.into(), "-n".into(), NICENESS.into()]);
        // Limits are applied inside, by prlimit, so that the process count is limited per
        // sandbox rather than across every sandbox of the gateway's host user.
        args.push(PRLIMIT.into());
        args.extend(self.limits.prlimit_args());
        args.push("--".into());
        args.push(inner.program.into_os_string());
        args.extend(inner.args);
        let mut env = inner.env;
        if let Some(network) = &self.network {
            let inside = network.environment();
            env.retain(|(name, _)| !inside.iter().any(|(n, _)| n == name));
            env.extend(inside);
        }
        CommandLine {
            program: self.bwrap.clone(),
            args,
            env,
            cwd: mounts.home.to_path_buf(),
            fds: self.seccomp.clone(),
        }
    }

    /// Checks that a sandbox can be created here, by running `true` in one (in a run cgroup of
    /// its own, where runs get one).
    pub async fn probe(&self) -> Result<(), SandboxError> {
        let mut args = self.base_args();
        // The relay starts without its sockets; an empty directory stands in for them.
        let net_dir = self.etc_dir.with_file_name("sandbox-probe-net");
        if self.network.is_some() {
            std::fs::create_dir_all(&net_dir).map_err(|e| SandboxError::Probe(e.to_string()))?;
        }
        args.extend(self.net_args(Some(&net_dir)));
        args.push("--".into());
        args.extend(self.relay_prefix(false));
        args.push(PRLIMIT.into());
        args.extend(self.limits.prlimit_args());
        args.extend(["--".into(), "/usr/bin/true".into()]);
        let line = CommandLine {
            program: self.bwrap.clone(),
            args,
            env: Vec::new(),
            cwd: self.etc_dir.clone(),
            fds: self.seccomp.clone(),
        };
        let (mut command, _fds) = line
            .command()
            .map_err(|e| SandboxError::Probe(e.to_string()))?;
        let run_cgroup =
            match &self.cgroups {
                Ok(cgroups) => Some(cgroups.create_run().map_err(|e| {
                    SandboxError::Probe(format!("cannot create a run cgroup: {e}"))
                })?),
                Err(_) => None,
            };
        if let Some(cgroup) = &run_cgroup {
            cgroup.attach(&mut command);
        }
        let output = tokio::time::timeout(std::time::Duration::from_secs(10), command.output())
            .await
            .map_err(|_| SandboxError::Probe("timed out".into()))?
            .map_err(|e| SandboxError::Probe(e.to_string()))?;
        if output.status.success() {
            Ok(())
        } else {
            Err(SandboxError::Probe(
                String::from_utf8_lossy(&output.stderr).trim().to_owned(),
            ))
        }
    }
}

/// A copy of a native CLI binary that its own user may execute but not read (mode 0111), in
/// `dir`; `None` when the CLI is already unreadable to the gateway or is a script (which its
/// interpreter must read).
///
/// The kernel makes a process that executes a file it cannot read non-dumpable: no other
/// process of the same uid may open its `/proc/<pid>/fd/*`, read its memory or environment, or
/// trace it. Inside the sandbox the gateway's uid is the run's uid, so the tools the CLI runs
/// (Bash, MCP servers) cannot write forged lines into the CLI's stdout through
/// `/proc/<cli>/fd/1`, nor read its memory.
pub fn execute_only_copy(cli: &Path, dir: &Path) -> std::io::Result<Option<PathBuf>> {
    use std::io::Read;
    use std::os::unix::fs::{DirBuilderExt, MetadataExt, OpenOptionsExt, PermissionsExt};
    if nix::unistd::access(cli, nix::unistd::AccessFlags::R_OK).is_err() {
        return Ok(None);
    }
    let mut magic = [0u8; 4];
    std::fs::File::open(cli)?.read_exact(&mut magic)?;
    if magic != *b"\x7fELF" {
        return Ok(None);
    }
    let Some(name) = cli.file_name() else {
        return Ok(None);
    };
    std::fs::DirBuilder::new()
        .recursive(true)
        .mode(0o700)
        .create(dir)?;
    let copy = dir.join(name);
    let source = std::fs::metadata(cli)?;
    if let Ok(existing) = std::fs::metadata(&copy) {
        if existing.len() == source.len()
            && existing.mtime() >= source.mtime()
            && existing.permissions().mode() & 0o777 == 0o111
        {
            return Ok(Some(copy));
        }
    }
    let tmp = dir.join(format!(".{}.tmp", uuid::Uuid::new_v4()));
    let result = (|| {
        let mut from = std::fs::File::open(cli)?;
        let mut to = std::fs::OpenOptions::new()
            .write(true)
            .create_new(true)
            .mode(0o700)
            .open(&tmp)?;
        std::io::copy(&mut from, &mut to)?;
        to.set_permissions(std::fs::Permissions::from_mode(0o111))?;
        to.sync_all()?;
        std::fs::rename(&tmp, &copy)
    })();
    if result.is_err() {
        let _ = std::fs::remove_file(&tmp);
    }
    result.map(|()| Some(copy))
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A run's home and workspace, nothing else mounted.
    fn run_mounts() -> Mounts<'static> {
        Mounts {
            home: Path::new("/data/runs/r1/home"),
            workspace: Path::new("/data/tenants/t1/workspace"),
            system_prompt: None,
            projects: None,
            mcp_config: None,
            settings: None,
            env_file: None,
            client_tools: None,
            net_dir: Some(Path::new("/data/runs/r1/net")),
        }
    }

    fn sandbox() -> Bwrap {
        Bwrap {
            bwrap: "/usr/bin/bwrap".into(),
            relay: "/usr/local/bin/claude-gateway".into(),
            cli_dir: "/opt/install/bin".into(),
            cli_name: "claude.exe".into(),
            etc_dir: "/data/sandbox-etc".into(),
            limits: Limits::default(),
            mcp_dir: None,
            network: None,
            seccomp: Vec::new(),
            cgroups: Err("not in unit tests".into()),
        }
    }

    fn wrapped() -> CommandLine {
        let inner = CommandLine {
            program: sandbox().inside_program(),
            args: vec!["-p".into(), "--model=sonnet".into()],
            env: vec![("CLAUDE_CODE_OAUTH_TOKEN", "sk-ant-oat01-secret".into())],
            cwd: WORKSPACE.into(),
            fds: Vec::new(),
        };
        sandbox().wrap(inner, &run_mounts())
    }

    #[test]
    fn secrets_stay_in_the_environment_never_in_bwrap_argv() {
        let cmd = wrapped();
        let argv = format!("{:?}", cmd.args);
        assert!(!argv.contains("secret"));
        assert!(!argv.contains("--setenv"));
        assert!(cmd.env.iter().any(|(k, _)| *k == "CLAUDE_CODE_OAUTH_TOKEN"));
    }

    #[test]
    fn only_the_tenants_workspace_and_run_home_are_writable() {
        let cmd = wrapped();
        let args: Vec<String> = cmd
            .args
            .iter()
            .map(|a| a.to_string_lossy().into_owned())
            .collect();
        let rw: Vec<(&str, &str)> = args
            .windows(3)
            .filter(|w| w[0] == "--bind")
            .map(|w| (w[1].as_str(), w[2].as_str()))
            .collect();
        assert_eq!(
            rw,
            [
                ("/data/runs/r1/home", HOME),
                ("/data/tenants/t1/workspace", WORKSPACE)
            ]
        );
        assert!(args.contains(&"--unshare-all".to_owned()));
        assert!(args.contains(&"--die-with-parent".to_owned()));
        let separator = args.iter().position(|a| a == "--").expect("separator");
        assert_eq!(
            args[separator + 1..separator + 8],
            [
                net::RELAY,
                "sandbox-relay",
                "--",
                NICE,
                "-n",
                NICENESS,
                PRLIMIT
            ]
        );
        assert!(args.ends_with(&[
            "/opt/claude/claude.exe".to_owned(),
            "-p".into(),
            "--model=sonnet".into()
        ]));
    }

    #[test]
    fn an_isolated_network_is_reached_only_through_the_relay_and_its_sockets() {
        let shared = wrapped();
        assert!(shared.args.iter().any(|a| a == "--share-net"));
        let mut isolated = sandbox();
        isolated.network = Some(IsolatedNet {
            bridge_port: 41000,
            services: None,
        });
        let inner = CommandLine {
            program: isolated.inside_program(),
            args: vec!["-p".into()],
            env: vec![("ANTHROPIC_BASE_URL", "https://api.anthropic.com".into())],
            cwd: WORKSPACE.into(),
            fds: Vec::new(),
        };
        let cmd = isolated.wrap(inner, &run_mounts());
        let args: Vec<String> = cmd
            .args
            .iter()
            .map(|a| a.to_string_lossy().into_owned())
            .collect();
        assert!(!args.contains(&"--share-net".to_owned()));
        let ro: Vec<(&str, &str)> = args
            .windows(3)
            .filter(|w| w[0] == "--ro-bind")
            .map(|w| (w[1].as_str(), w[2].as_str()))
            .collect();
        assert!(ro.contains(&("/data/runs/r1/net", net::INSIDE_DIR)));
        assert!(ro.contains(&("/usr/local/bin/claude-gateway", net::RELAY)));
        let separator = args.iter().position(|a| a == "--").expect("separator");
        assert_eq!(
            args[separator + 1..separator + 3],
            [net::RELAY, "sandbox-relay"]
        );
        let base_urls: Vec<_> = cmd
            .env
            .iter()
            .filter(|(k, _)| *k == "ANTHROPIC_BASE_URL")
            .map(|(_, v)| v.clone())
            .collect();
        assert_eq!(base_urls, ["http://127.0.0.1:4000"]);
    }
}
