//! The argv and environment of one CLI run.
//!
//! Every value goes into argv in `--flag=value` form so no request-supplied text can be read as
//! a flag, and nothing a tenant wrote (prompt, system prompt) goes into argv at all: the prompt
//! goes over stdin and the system prompt through a file in the run's private directory. The
//! child's environment is built from nothing: it inherits none of the gateway's variables.

use std::ffi::OsString;
use std::path::{Path, PathBuf};

use secrecy::ExposeSecret;

use crate::sandbox::SecurityLevel;
use crate::tenant::credential::{Credential, CredentialKind};

/// How a request's `system` combines with the CLI's own system prompt.
#[derive(
    Debug, Clone, Copy, PartialEq, Eq, serde::Deserialize, serde::Serialize, clap::ValueEnum,
)]
#[serde(rename_all = "lowercase")]
pub enum SystemPromptMode {
    /// Added after the CLI's agent prompt: the model keeps its tool instructions.
    Append,
    /// Replaces the CLI's agent prompt: the model sees only the request's system text.
    Replace,
}

/// Which CLI session a run starts or continues.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum SessionArg {
    New(uuid::Uuid),
    Resume(uuid::Uuid),
}

/// Everything that varies between runs.
#[derive(Debug)]
pub struct RunSpec {
    pub credential: Credential,
    /// Whose run it is (its fingerprint names the run in what the gateway logs).
    pub tenant: crate::tenant::identity::TenantId,
    pub model: String,
    pub system_prompt: Option<(String, SystemPromptMode)>,
    /// The tenant's workspace on the host.
    pub workspace: PathBuf,
    pub session: Option<SessionArg>,
    /// The tenant's CLI projects directory (transcripts) on the host, shared by its runs.
    pub projects_dir: Option<PathBuf>,
    pub max_output_tokens: Option<u32>,
    pub level: SecurityLevel,
    /// MCP servers for this run.
    pub mcp: Option<crate::mcp::McpRun>,
    /// Set on each of the run's model calls by the upstream proxy (no CLI flag has them).
    pub call: crate::sandbox::masking::CallSettings,
    /// Tools the client offers and runs itself ([`super::client_tools`]).
    pub client_tools: Option<super::client_tools::ClientTools>,
    /// The JSON schema the answer must match, sent on the CLI's input as it starts.
    pub output_schema: Option<serde_json::Value>,
    /// The most the run may spend, in dollars (what remains of the tenant's budgets).
    pub max_budget_usd: Option<f64>,
    /// A lean run: none of the CLI's built-in tools, and the request's system prompt (or an
    /// empty one) in place of the CLI's agent prompt, so the upstream sees about what the
    /// request holds (the CLI still adds a line of its own, and with a subscription token or
    /// client tools its environment notes; see [`build`]).
    pub lean: bool,
}

impl RunSpec {
    /// The system prompt the run's file holds, if any: the request's, or an empty one in
    /// place of the CLI's agent prompt for a lean run.
    pub fn system_prompt_text(&self) -> Option<&str> {
        match (&self.system_prompt, self.lean) {
            (Some((text, _)), _) => Some(text),
            (None, true) => Some(""),
            (None, false) => None,
        }
    }

    /// How that file combines with the CLI's agent prompt: a lean run replaces it.
    pub fn system_prompt_mode(&self) -> Option<SystemPromptMode> {
        match (&self.system_prompt, self.lean) {
            (_, true) => Some(SystemPromptMode::Replace),
            (Some((_, mode)), false) => Some(*mode),
            (None, false) => None,
        }
    }
}

/// What is fixed for the gateway's lifetime.
#[derive(Debug, Clone)]
pub struct RunnerSettings {
    /// The CLI on the host.
    pub claude_bin: PathBuf,
    pub base_url: String,
    /// How often the CLI itself retries a failed upstream call.
    pub upstream_max_retries: u32,
}

/// Where things are as the CLI sees them: host paths, or the sandbox's inside paths.
pub struct RunPaths<'a> {
    pub program: &'a Path,
    pub cwd: &'a Path,
    pub home: &'a Path,
    pub tmp: &'a Path,
    pub system_prompt_file: Option<&'a Path>,
    pub mcp_config_file: Option<&'a Path>,
    /// The level's permission rules ([`crate::sandbox::level::ToolPolicy::settings`]).
    pub settings_file: Option<&'a Path>,
}

pub struct CommandLine {
    pub program: PathBuf,
    pub args: Vec<OsString>,
    /// Every variable the process gets: it inherits nothing, and nothing a request names is
    /// here (a request's variables reach a sandboxed command only through the relay inside).
    pub env: Vec<(&'static str, OsString)>,
    pub cwd: PathBuf,
    /// Data the child gets as descriptors 3, 4, … (the sandbox's syscall filter).
    pub fds: Vec<std::sync::Arc<[u8]>>,
}

impl CommandLine {
    /// The command to spawn: this program, argv and environment (nothing inherited), in its
    /// own process group, killed if dropped; with the descriptors that must live until spawn.
    pub fn command(&self) -> std::io::Result<(tokio::process::Command, Vec<std::os::fd::OwnedFd>)> {
        let mut command = tokio::process::Command::new(&self.program);
        command
            .args(&self.args)
            .env_clear()
            .envs(self.env.iter().map(|(k, v)| (k, v)))
            .current_dir(&self.cwd)
            .process_group(0)
            .kill_on_drop(true);
        let fds = crate::sandbox::seccomp::attach(&mut command, &self.fds)?;
        Ok((command, fds))
    }
}

/// The command line of a run whose CLI authenticates with `credential` (the run's placeholder,
/// [`crate::sandbox::masking`]; never the tenant's real credential).
pub fn build(
    settings: &RunnerSettings,
    spec: &RunSpec,
    mcp: Option<&crate::mcp::McpRun>,
    paths: &RunPaths<'_>,
    credential: &secrecy::SecretString,
) -> CommandLine {
    let mut args: Vec<OsString> = [
        "-p",
        "--output-format=stream-json",
        "--input-format=stream-json",
        "--verbose",
        "--include-partial-messages",
    ]
    .iter()
    .map(OsString::from)
    .collect();
    args.push(format!("--model={}", spec.model).into());
    if let Some(usd) = spec.max_budget_usd {
        args.push(format!("--max-budget-usd={:.6}", usd.max(0.0)).into());
    }
    if let (Some(mode), Some(file)) = (spec.system_prompt_mode(), paths.system_prompt_file) {
        let flag = match mode {
            SystemPromptMode::Append => "--append-system-prompt-file=",
            SystemPromptMode::Replace => "--system-prompt-file=",
        };
        let mut arg = OsString::from(flag);
        arg.push(file);
        args.push(arg);
    }
    let mut policy = spec.level.tool_policy();
    if spec.lean {
        // No built-in tool at all (`--tools=`); the request's MCP servers and client tools
        // are still offered below.
        policy.tools = Some(Vec::new());
        policy.allowed.clear();
        policy.disallowed.clear();
    }
    if let Some(file) = paths.settings_file {
        let mut arg = OsString::from("--settings=");
        arg.push(file);
        args.push(arg);
    }
    // Only the run's fresh home is a settings source: a tenant's workspace may hold
    // `.claude/settings.json` or `.mcp.json`, and neither may loosen the level.
    args.push("--setting-sources=user".into());
    // Only the request's MCP servers, or none: nothing from any settings file.
    args.push("--strict-mcp-config".into());
    if let (Some(mcp), Some(file)) = (mcp, paths.mcp_config_file) {
        let mut arg = OsString::from("--mcp-config=");
        arg.push(file);
        args.push(arg);
        if policy.permission_mode != "bypassPermissions" {
            policy
                .allowed
                .extend(mcp.servers.iter().map(|name| format!("mcp__{name}")));
        }
    }
    if let Some(tools) = &policy.tools {
        args.push(format!("--tools={}", tools.join(",")).into());
    }
    if !policy.allowed.is_empty() {
        args.push(format!("--allowedTools={}", policy.allowed.join(",")).into());
    }
    if !policy.disallowed.is_empty() {
        args.push(format!("--disallowedTools={}", policy.disallowed.join(",")).into());
    }
    args.push(format!("--permission-mode={}", policy.permission_mode).into());
    match spec.session {
        Some(SessionArg::New(id)) => args.push(format!("--session-id={id}").into()),
        Some(SessionArg::Resume(id)) => args.push(format!("--resume={id}").into()),
        None => {}
    }

    let mut env: Vec<(&'static str, OsString)> = vec![
        ("PATH", "/usr/local/bin:/usr/bin:/bin".into()),
        ("HOME", paths.home.into()),
        ("TMPDIR", paths.tmp.into()),
        ("SHELL", "/bin/bash".into()),
        ("LANG", "C.UTF-8".into()),
        ("ANTHROPIC_BASE_URL", settings.base_url.clone().into()),
        ("CLAUDE_CODE_DISABLE_NONESSENTIAL_TRAFFIC", "1".into()),
        ("DISABLE_AUTOUPDATER", "1".into()),
        ("DISABLE_TELEMETRY", "1".into()),
        ("DISABLE_ERROR_REPORTING", "1".into()),
        (
            "CLAUDE_CODE_MAX_RETRIES",
            settings.upstream_max_retries.to_string().into(),
        ),
    ];
    if let Some(n) = spec.max_output_tokens {
        env.push(("CLAUDE_CODE_MAX_OUTPUT_TOKENS", n.to_string().into()));
    }
    // As the API: no thinking unless the request asks for it (then the upstream proxy sets it
    // on each call); the CLI's own would send thinking blocks to clients that never asked.
    if !spec.call.contains_key("thinking") {
        env.push(("CLAUDE_CODE_DISABLE_THINKING", "1".into()));
    }

    if spec.lean {
        // What the CLI adds of its own that a lean request did not ask for. A budget countdown
        // on every user turn goes for every credential. With an API key the CLI's minimal
        // mode (`--bare`) also drops its environment notes (working directory, platform, model,
        // date) and the attribution header, leaving one line of agent identity. It reads no
        // OAuth token and runs no settings hooks, so a subscription's lean run, and one with
        // client tools (whose calls a hook defers), keep those notes.
        env.push(("CLAUDE_CODE_TOTAL_TOKENS_REMINDER", "off".into()));
        if spec.credential.kind() == CredentialKind::ApiKey && spec.client_tools.is_none() {
            args.push("--bare".into());
            env.push(("CLAUDE_CODE_ATTRIBUTION_HEADER", "0".into()));
        }
    }

    let secret_var = match spec.credential.kind() {
        CredentialKind::OAuthToken => "CLAUDE_CODE_OAUTH_TOKEN",
        CredentialKind::ApiKey => "ANTHROPIC_API_KEY",
    };
    env.push((secret_var, credential.expose_secret().into()));

    CommandLine {
        program: paths.program.to_path_buf(),
        args,
        env,
        cwd: paths.cwd.to_path_buf(),
        fds: Vec::new(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::tenant::credential::Credential;

    fn spec(token: &str) -> RunSpec {
        RunSpec {
            credential: Credential::parse(token).expect("valid"),
            tenant: crate::tenant::identity::TenantId::from_dir_name("t1".into()),
            model: "--dangerously-skip-permissions".into(),
            system_prompt: Some(("be brief".into(), SystemPromptMode::Append)),
            workspace: "/ws".into(),
            session: Some(SessionArg::Resume(uuid::Uuid::nil())),
            projects_dir: None,
            max_output_tokens: Some(100),
            level: SecurityLevel::Balanced,
            mcp: None,
            call: Default::default(),
            client_tools: None,
            output_schema: None,
            max_budget_usd: None,
            lean: false,
        }
    }

    fn settings() -> RunnerSettings {
        RunnerSettings {
            claude_bin: "/bin/claude".into(),
            base_url: "http://127.0.0.1:1".into(),
            upstream_max_retries: 0,
        }
    }

    /// The command line of `spec`'s run, its CLI given `placeholder` for a credential.
    fn build_for(spec: &RunSpec, placeholder: &str) -> CommandLine {
        build(
            &settings(),
            spec,
            None,
            &paths(),
            &secrecy::SecretString::from(placeholder),
        )
    }

    fn paths() -> RunPaths<'static> {
        RunPaths {
            program: Path::new("/bin/claude"),
            cwd: Path::new("/ws"),
            home: Path::new("/run/x/home"),
            tmp: Path::new("/run/x/tmp"),
            system_prompt_file: Some(Path::new("/run/x/system.txt")),
            mcp_config_file: None,
            settings_file: Some(Path::new("/run/x/settings.json")),
        }
    }

    #[test]
    fn request_values_cannot_become_flags() {
        let cmd = build_for(&spec("sk-ant-oat01-abc"), "sk-ant-oat01-abc");
        assert!(cmd
            .args
            .iter()
            .any(|a| a == "--model=--dangerously-skip-permissions"));
        assert!(!cmd
            .args
            .iter()
            .any(|a| a == "--dangerously-skip-permissions"));
        assert!(cmd
            .args
            .iter()
            .any(|a| a == "--resume=00000000-0000-0000-0000-000000000000"));
    }

    #[test]
    fn a_lean_run_offers_no_builtin_tool_and_replaces_the_agent_prompt() {
        let lean = RunSpec {
            lean: true,
            system_prompt: None,
            ..spec("sk-ant-oat01-abc")
        };
        assert_eq!(lean.system_prompt_text(), Some(""));
        let cmd = build_for(&lean, "sk-ant-oat01-abc");
        let args: Vec<String> = cmd
            .args
            .iter()
            .map(|a| a.to_string_lossy().into_owned())
            .collect();
        assert!(args.contains(&"--tools=".to_owned()), "{args:?}");
        assert!(args.contains(&"--system-prompt-file=/run/x/system.txt".to_owned()));
        assert!(!args.iter().any(|a| a.starts_with("--allowedTools")));
        assert!(!args.iter().any(|a| a.starts_with("--append-system-prompt")));
    }

    #[test]
    fn only_a_lean_run_with_an_api_key_and_no_client_tools_is_bare() {
        let bare = |token: &str, client_tools: bool| {
            let spec = RunSpec {
                lean: true,
                client_tools: client_tools.then(Default::default),
                ..spec(token)
            };
            let cmd = build_for(&spec, token);
            assert!(cmd
                .env
                .iter()
                .any(|(k, v)| *k == "CLAUDE_CODE_TOTAL_TOKENS_REMINDER" && v == "off"));
            cmd.args.iter().any(|a| a == "--bare")
        };
        assert!(bare("sk-ant-api03-a", false));
        // The CLI's minimal mode reads no OAuth token and runs no hooks.
        assert!(!bare("sk-ant-oat01-a", false));
        assert!(!bare("sk-ant-api03-a", true));
        let full = build_for(&spec("sk-ant-api03-a"), "sk-ant-api03-a");
        assert!(!full.args.iter().any(|a| a == "--bare"));
    }

    #[test]
    fn secrets_and_prompts_stay_out_of_argv() {
        let cmd = build_for(
            &spec("sk-ant-oat01-secret-value"),
            "sk-ant-oat01-secret-value",
        );
        let argv = format!("{:?}", cmd.args);
        assert!(!argv.contains("secret-value"));
        assert!(!argv.contains("be brief"));
        assert!(argv.contains("--append-system-prompt-file=/run/x/system.txt"));
    }

    #[test]
    fn only_the_gateways_settings_and_mcp_servers_are_loaded() {
        let cmd = build_for(&spec("sk-ant-oat01-a"), "sk-ant-oat01-a");
        for flag in [
            "--settings=/run/x/settings.json",
            "--setting-sources=user",
            "--strict-mcp-config",
        ] {
            assert!(cmd.args.iter().any(|a| a == flag), "{flag}");
        }
    }

    #[test]
    fn client_tools_and_the_text_beside_their_results_stay_out_of_env_and_argv() {
        let mut spec = spec("sk-ant-oat01-a");
        spec.client_tools = Some(super::super::client_tools::ClientTools {
            tools: vec![super::super::client_tools::ClientTool {
                name: "tool-name-3f2a".into(),
                description: "description-3f2a".into(),
                input_schema: serde_json::json!({"type": "object"}),
            }],
            resume_text: Some("beside-the-result-3f2a".into()),
            ..Default::default()
        });
        let cmd = build_for(&spec, "sk-ant-oat01-a");
        let seen = format!("{:?} {:?}", cmd.args, cmd.env);
        assert!(!seen.contains("3f2a"), "{seen}");
    }

    #[test]
    fn oauth_tokens_and_api_keys_use_their_own_variables() {
        let oauth = build_for(&spec("sk-ant-oat01-a"), "sk-ant-oat01-a");
        assert!(oauth
            .env
            .iter()
            .any(|(k, _)| *k == "CLAUDE_CODE_OAUTH_TOKEN"));
        assert!(!oauth.env.iter().any(|(k, _)| *k == "ANTHROPIC_API_KEY"));
        let key = build_for(&spec("sk-ant-api03-a"), "sk-ant-api03-a");
        assert!(key.env.iter().any(|(k, _)| *k == "ANTHROPIC_API_KEY"));
        assert!(!key.env.iter().any(|(k, _)| *k == "CLAUDE_CODE_OAUTH_TOKEN"));
    }
}
