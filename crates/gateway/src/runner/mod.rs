//! Running the Claude Code CLI: the command line of a run, its private directory, the process
//! and the stream-json protocol it speaks. Knows nothing of HTTP.

pub mod client_tools;
pub mod command;
pub mod live;
pub mod locate;
pub mod process;
pub mod protocol;
pub mod rundir;

use std::path::{Path, PathBuf};
use std::time::Duration;

pub use command::{RunSpec, RunnerSettings, SessionArg, SystemPromptMode};
pub use process::CliProcess;
use rundir::RunDir;

use crate::sandbox::{bwrap, Bwrap, Mounts};

#[derive(Debug, thiserror::Error)]
pub enum RunError {
    #[error("the Claude Code CLI could not be started: {0}")]
    Spawn(std::io::Error),
    #[error("the run's private directory could not be prepared: {0}")]
    RunDir(std::io::Error),
    #[error("I/O with the Claude Code CLI failed: {0}")]
    Io(String),
    #[error("the run exceeded its time limit")]
    Timeout,
    #[error("the CLI printed a line longer than {0} bytes")]
    LineTooLong(usize),
    #[error("the CLI's input is already closed")]
    InputClosed,
    #[error("the Claude Code CLI ended without a result ({0})")]
    Exited(String),
    #[error("the run's control group could not be created: {0}")]
    Cgroup(std::io::Error),
    #[error("the run went past its memory limit ({} MiB) and was stopped", .0 >> 20)]
    OutOfMemory(u64),
}

/// Starts CLI runs. Cheap to clone.
#[derive(Debug, Clone)]
pub struct Runner {
    pub settings: RunnerSettings,
    pub runs_dir: PathBuf,
    pub run_timeout: Duration,
    pub max_line_bytes: usize,
    /// `None` only when the operator explicitly ran without a sandbox.
    pub sandbox: Option<Bwrap>,
    /// What runs get instead of their tenant's credential.
    pub placeholders: std::sync::Arc<crate::sandbox::masking::Placeholders>,
}

impl Runner {
    /// The working directory as the CLI sees it (it names the transcript directory).
    pub fn cli_cwd(&self, workspace: &Path) -> PathBuf {
        match &self.sandbox {
            Some(_) => PathBuf::from(bwrap::WORKSPACE),
            None => workspace.to_path_buf(),
        }
    }

    /// The command line of a local MCP server started on its own (to list its tools), in the
    /// tenant's sandbox as a run would start it, and the private dir it uses as HOME.
    pub fn mcp_server_command(
        &self,
        tenant: &str,
        workspace: &Path,
        command: &str,
        args: &[String],
        env: &std::collections::BTreeMap<String, String>,
    ) -> Result<(command::CommandLine, RunDir), RunError> {
        let sandbox = self.sandbox.as_ref().ok_or_else(|| {
            RunError::Spawn(std::io::Error::other(
                "local MCP servers run only inside the sandbox",
            ))
        })?;
        let mut dir = RunDir::create(&self.runs_dir).map_err(RunError::RunDir)?;
        let net_dir = open_run_net(sandbox, &mut dir, tenant)?.map(|(path, _)| path);
        open_run_cgroup(sandbox, &mut dir)?;
        let mut vars: Vec<(&'static str, std::ffi::OsString)> = vec![
            ("PATH", "/usr/local/bin:/usr/bin:/bin".into()),
            ("HOME", bwrap::HOME.into()),
            ("TMPDIR", bwrap::TMP.into()),
            ("LANG", "C.UTF-8".into()),
        ];
        let home = dir.home();
        // The request's variables go to the server only, as the CLI would pass them: through a
        // file the relay reads inside the sandbox, so no host process (bwrap included, whose
        // loader would honour `LD_PRELOAD` before any namespace exists) ever has them.
        let env_file = match env.is_empty() {
            true => None,
            false => Some(
                dir.write_file(
                    "env.json",
                    &serde_json::to_vec(env).map_err(|e| RunError::RunDir(e.into()))?,
                )
                .map_err(RunError::RunDir)?,
            ),
        };
        let inner = command::CommandLine {
            program: PathBuf::from(command),
            args: args.iter().map(Into::into).collect(),
            env: Vec::new(),
            cwd: PathBuf::from(bwrap::WORKSPACE),
            fds: Vec::new(),
        };
        let mut line = sandbox.wrap(
            inner,
            &Mounts {
                home: &home,
                workspace,
                system_prompt: None,
                projects: None,
                mcp_config: None,
                settings: None,
                env_file: env_file.as_deref(),
                client_tools: None,
                net_dir: net_dir.as_deref(),
            },
        );
        line.env.append(&mut vars);
        Ok((line, dir))
    }

    /// Starts the CLI for `spec`; the returned process waits for user turns on stdin.
    pub async fn start(&self, spec: &RunSpec) -> Result<CliProcess, RunError> {
        let mut dir = RunDir::create(&self.runs_dir).map_err(RunError::RunDir)?;
        let (net_dir, observed) = match &self.sandbox {
            Some(sandbox) => {
                open_run_cgroup(sandbox, &mut dir)?;
                open_run_net(sandbox, &mut dir, spec.tenant.fingerprint())?.unzip()
            }
            None => (None, None),
        };
        // The CLI never holds the real credential: the upstream proxy swaps it in.
        let lease = self
            .placeholders
            .issue(&spec.credential, &spec.tenant, spec.call.clone());
        let system_file = match spec.system_prompt_text() {
            Some(text) => Some(
                dir.write_file("system-prompt.txt", text.as_bytes())
                    .map_err(RunError::RunDir)?,
            ),
            None => None,
        };
        // Client tools: a server of the gateway's own joins the request's, and a hook the settings.
        let client_tools_file = match &spec.client_tools {
            Some(tools) => Some(
                dir.write_file(
                    "client-tools.json",
                    &serde_json::to_vec(tools).map_err(|e| RunError::RunDir(e.into()))?,
                )
                .map_err(RunError::RunDir)?,
            ),
            None => None,
        };
        // The gateway binary and the tools file, as the CLI sees them.
        let client_tools_seen = match (&client_tools_file, &self.sandbox) {
            (None, _) => None,
            (Some(_), Some(_)) => Some((
                PathBuf::from(crate::sandbox::net::RELAY),
                PathBuf::from(bwrap::CLIENT_TOOLS),
            )),
            (Some(file), None) => Some((
                std::env::current_exe().map_err(RunError::Spawn)?,
                file.clone(),
            )),
        };
        // Text the client sent beside its tool results reaches the CLI only through the relay
        // inside the sandbox (never the environment of bwrap, a host process).
        let env_file = match spec
            .client_tools
            .as_ref()
            .and_then(|c| c.resume_text.as_ref())
        {
            None => None,
            Some(_) if self.sandbox.is_none() => {
                return Err(RunError::Spawn(std::io::Error::other(
                    "text beside client tool results needs the sandbox",
                )))
            }
            Some(text) => Some(
                dir.write_file(
                    "env.json",
                    serde_json::json!({client_tools::RESUME_PROMPT_VAR: text})
                        .to_string()
                        .as_bytes(),
                )
                .map_err(RunError::RunDir)?,
            ),
        };
        let mcp = with_client_tools(spec.mcp.as_ref(), client_tools_seen.as_ref());
        let mcp_file = match &mcp {
            Some(mcp) => Some(
                dir.write_file("mcp.json", mcp.config_json.as_bytes())
                    .map_err(RunError::RunDir)?,
            ),
            None => None,
        };
        let workspace_inside = match &self.sandbox {
            Some(_) => Path::new(bwrap::WORKSPACE),
            None => spec.workspace.as_path(),
        };
        let mut settings = spec.level.tool_policy().settings(workspace_inside);
        if let Some((relay, file)) = &client_tools_seen {
            settings["hooks"] = client_tools::hooks(relay, file);
        }
        let settings_file = dir
            .write_file("settings.json", settings.to_string().as_bytes())
            .map_err(RunError::RunDir)?;
        let home = dir.home();
        let tmp = dir.tmp();
        let cmd = match &self.sandbox {
            Some(sandbox) => {
                let program = sandbox.inside_program();
                let paths = command::RunPaths {
                    program: &program,
                    cwd: Path::new(bwrap::WORKSPACE),
                    home: Path::new(bwrap::HOME),
                    tmp: Path::new(bwrap::TMP),
                    system_prompt_file: system_file
                        .as_ref()
                        .map(|_| Path::new(bwrap::SYSTEM_PROMPT)),
                    mcp_config_file: mcp_file.as_ref().map(|_| Path::new(bwrap::MCP_CONFIG)),
                    settings_file: Some(Path::new(bwrap::SETTINGS)),
                };
                let inner = command::build(
                    &self.settings,
                    spec,
                    mcp.as_ref(),
                    &paths,
                    lease.placeholder(),
                );
                sandbox.wrap(
                    inner,
                    &Mounts {
                        home: &home,
                        workspace: &spec.workspace,
                        system_prompt: system_file.as_deref(),
                        projects: spec.projects_dir.as_deref(),
                        mcp_config: mcp_file.as_deref(),
                        settings: Some(&settings_file),
                        env_file: env_file.as_deref(),
                        client_tools: client_tools_file.as_deref(),
                        net_dir: net_dir.as_deref(),
                    },
                )
            }
            None => {
                if let Some(projects) = &spec.projects_dir {
                    let claude_dir = home.join(".claude");
                    std::fs::create_dir_all(&claude_dir).map_err(RunError::RunDir)?;
                    std::os::unix::fs::symlink(projects, claude_dir.join("projects"))
                        .map_err(RunError::RunDir)?;
                }
                let paths = command::RunPaths {
                    program: &self.settings.claude_bin,
                    cwd: &spec.workspace,
                    home: &home,
                    tmp: &tmp,
                    system_prompt_file: system_file.as_deref(),
                    mcp_config_file: mcp_file.as_deref(),
                    settings_file: Some(&settings_file),
                };
                command::build(
                    &self.settings,
                    spec,
                    mcp.as_ref(),
                    &paths,
                    lease.placeholder(),
                )
            }
        };
        let deadline = tokio::time::Instant::now() + self.run_timeout;
        let mut process = CliProcess::spawn(cmd, dir, deadline, self.max_line_bytes).await?;
        process.hold_placeholder(lease);
        process.cli_session = spec.session.map(|s| match s {
            SessionArg::New(id) | SessionArg::Resume(id) => id,
        });
        process.observed = observed;
        if let Some(schema) = &spec.output_schema {
            process
                .send_line(&protocol::initialize_line(Some(schema)))
                .await?;
        }
        Ok(process)
    }
}

/// The run's MCP servers with the client tools server added, when the request has client tools.
fn with_client_tools(
    mcp: Option<&crate::mcp::McpRun>,
    client_tools: Option<&(PathBuf, PathBuf)>,
) -> Option<crate::mcp::McpRun> {
    let Some((relay, file)) = client_tools else {
        return mcp.cloned();
    };
    let mut config: serde_json::Value = mcp
        .and_then(|m| serde_json::from_str(&m.config_json).ok())
        .unwrap_or_else(|| serde_json::json!({"mcpServers": {}}));
    config["mcpServers"][client_tools::SERVER] = client_tools::mcp_entry(relay, file);
    let mut servers = mcp.map(|m| m.servers.clone()).unwrap_or_default();
    servers.push(client_tools::SERVER.to_owned());
    Some(crate::mcp::McpRun {
        config_json: config.to_string(),
        servers,
    })
}

/// Opens the run's own network sockets in its dir (held, and closed, with it), when the
/// sandbox has an isolated network; where they are.
fn open_run_net(
    sandbox: &Bwrap,
    dir: &mut RunDir,
    tenant: &str,
) -> Result<Option<(PathBuf, std::sync::Arc<crate::sandbox::net::Observed>)>, RunError> {
    let Some(network) = &sandbox.network else {
        return Ok(None);
    };
    let path = dir.net();
    let run_net = network.open_run(&path, tenant).map_err(RunError::RunDir)?;
    let observed = run_net.observed();
    dir.hold(Box::new(run_net));
    Ok(Some((path, observed)))
}

/// Gives the run a cgroup of its own where the sandbox makes them; a group that cannot be made
/// fails the run rather than let it go unbounded.
fn open_run_cgroup(sandbox: &Bwrap, dir: &mut RunDir) -> Result<(), RunError> {
    if let Ok(cgroups) = &sandbox.cgroups {
        dir.cgroup = Some(cgroups.create_run().map_err(RunError::Cgroup)?);
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn no_request_field_reaches_a_host_process_environment_or_argv() {
        let runs = tempfile::tempdir().expect("tempdir");
        let runner = Runner {
            settings: RunnerSettings {
                claude_bin: "/bin/claude".into(),
                base_url: "http://127.0.0.1:1".into(),
                upstream_max_retries: 0,
            },
            runs_dir: runs.path().to_path_buf(),
            run_timeout: Duration::from_secs(1),
            max_line_bytes: 1024,
            sandbox: Some(Bwrap {
                bwrap: "/usr/bin/bwrap".into(),
                relay: "/usr/local/bin/claude-gateway".into(),
                cli_dir: "/opt/install/bin".into(),
                cli_name: "claude.exe".into(),
                etc_dir: "/data/sandbox-etc".into(),
                limits: crate::sandbox::Limits::default(),
                mcp_dir: None,
                network: None,
                seccomp: Vec::new(),
                cgroups: Err("not in unit tests".into()),
            }),
            placeholders: Default::default(),
        };
        let env = std::collections::BTreeMap::from([
            ("LD_PRELOAD".to_owned(), "/workspace/evil.so".to_owned()),
            ("SERVER_TOKEN".to_owned(), "request-value-9d1c".to_owned()),
        ]);
        let (line, dir) = runner
            .mcp_server_command("t1", Path::new("/ws"), "node", &["server.js".into()], &env)
            .expect("command");
        // bwrap itself gets only the gateway's own variables.
        for (name, value) in &line.env {
            assert!(!env.contains_key(*name), "{name} reached bwrap");
            assert!(!value.to_string_lossy().contains("request-value"));
        }
        let argv = format!("{:?}", line.args);
        assert!(!argv.contains("request-value") && !argv.contains("evil.so"));
        // The variables wait in the run's private dir for the relay inside the sandbox.
        assert!(argv.contains(&format!("--env-file={}", bwrap::ENV_FILE)));
        let file = std::fs::read_to_string(dir.root().join("env.json")).expect("env file");
        assert!(file.contains("request-value-9d1c"));
    }
}
