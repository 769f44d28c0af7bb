//! Every setting, once: its flag, its `CLAUDE_GATEWAY_*` variable, its default and its meaning.

use std::net::{Ipv4Addr, SocketAddr};
use std::path::{Path, PathBuf};
use std::time::Duration;

use nix::unistd::{access, AccessFlags};

use clap::{Args, Parser, Subcommand};

use crate::runner::SystemPromptMode;
use crate::sandbox::{Limits, SecurityLevel};
use crate::telemetry::logging::LogFormat;
use crate::tenant::identity::IdentityMode;

/// A setting that is a secret: kept out of `Debug` output and zeroed on drop.
fn secret(text: &str) -> Result<secrecy::SecretString, std::convert::Infallible> {
    Ok(secrecy::SecretString::from(text.to_owned()))
}

#[derive(Debug, Parser)]
#[command(
    name = "claude-gateway",
    version,
    about = "Anthropic-compatible multi-tenant gateway over the Claude Code CLI"
)]
pub struct Cli {
    #[command(subcommand)]
    pub command: Command,
}

#[derive(Debug, Subcommand)]
pub enum Command {
    /// Serve the HTTP API.
    Serve(Box<Config>),
    /// Check the configuration, the CLI, the sandbox, the data dir and the upstream (the same
    /// flags and variables as `serve`); one line per check, exit code 0 when all pass.
    Check(Box<Config>),
    /// Access keys: `keys new NAME` prints a fresh key and its line for --access-keys-file.
    #[command(subcommand)]
    Keys(KeysCommand),
    /// Inside a sandbox: relay loopback ports to the gateway's sockets, then run a command.
    #[command(hide = true)]
    SandboxRelay(RelayArgs),
    /// Inside a sandbox: serve a request's client-defined tools to the CLI (MCP on stdio).
    #[command(hide = true)]
    ClientTools(ClientToolsArgs),
    /// Inside a sandbox: the CLI's PreToolUse hook for client-defined tools.
    #[command(hide = true)]
    ClientToolHook(ClientToolsArgs),
}

#[derive(Debug, Clone, clap::Subcommand)]
pub enum KeysCommand {
    /// Print a new key (give it to its user) and the line that admits it (add it to the file).
    New {
        /// The key's name, as logs and metrics show it.
        name: String,
    },
}

#[derive(Debug, Clone, Args)]
pub struct ClientToolsArgs {
    /// The run's client tools file.
    #[arg(long)]
    pub file: PathBuf,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum SandboxNetwork {
    Isolated,
    Shared,
}

#[derive(Debug, Clone, Args)]
pub struct RelayArgs {
    /// `ADDR=SOCKET`: listen on ADDR, pass each connection to the unix socket SOCKET.
    #[arg(long = "forward")]
    pub forwards: Vec<crate::sandbox::relay::Forward>,
    /// A JSON object of variables the command gets besides the relay's own environment (a
    /// request's MCP `env`: applied here, inside the sandbox, never to a host process).
    #[arg(long = "env-file")]
    pub env_file: Option<PathBuf>,
    /// The command to run.
    #[arg(last = true, required = true)]
    pub command: Vec<std::ffi::OsString>,
}

#[derive(Debug, Clone, Args)]
pub struct Config {
    /// Address to listen on. Without it: 0.0.0.0:$PORT when PORT is set (Cloud Run), else
    /// 127.0.0.1:8080.
    #[arg(long, env = "CLAUDE_GATEWAY_LISTEN")]
    pub listen: Option<SocketAddr>,

    /// Where tenants' workspaces, per-run private directories and the install key live.
    #[arg(long, env = "CLAUDE_GATEWAY_DATA_DIR", default_value = "./data")]
    pub data_dir: PathBuf,

    /// The Claude Code CLI to run. Default: the project's node_modules/.bin/claude, else
    /// `claude` on PATH.
    #[arg(long, env = "CLAUDE_GATEWAY_CLAUDE_BIN")]
    pub claude_bin: Option<PathBuf>,

    /// The Anthropic API base URL, passed to the CLI.
    #[arg(
        long,
        env = "ANTHROPIC_BASE_URL",
        default_value = "https://api.anthropic.com"
    )]
    pub anthropic_base_url: String,

    /// Models listed by GET /v1/models (aliases or full ids, comma-separated). Requests may
    /// name any model; this list is what clients discover.
    #[arg(
        long,
        env = "CLAUDE_GATEWAY_MODELS",
        value_delimiter = ',',
        default_value = "opus,sonnet,haiku"
    )]
    pub models: Vec<String>,

    /// How a request's `system` combines with the CLI's own system prompt, unless the request
    /// says otherwise (`system_prompt_mode`).
    #[arg(
        long,
        env = "CLAUDE_GATEWAY_SYSTEM_PROMPT_MODE",
        value_enum,
        ignore_case = true,
        default_value = "append"
    )]
    pub system_prompt_mode: SystemPromptMode,

    /// Runs are lean unless a request says otherwise (`lean`): none of the CLI's own tools,
    /// and the request's `system` (or none) in place of the CLI's agent prompt, so a request
    /// pays upstream for about what it holds.
    #[arg(long, env = "CLAUDE_GATEWAY_LEAN_BY_DEFAULT")]
    pub lean_by_default: bool,

    /// The security level of a request that does not ask for one.
    #[arg(
        long,
        env = "CLAUDE_GATEWAY_SECURITY_LEVEL",
        value_enum,
        ignore_case = true,
        default_value = "BALANCED"
    )]
    pub security_level: SecurityLevel,

    /// The loosest level a request may ask for (default: the same as --security-level).
    #[arg(
        long,
        env = "CLAUDE_GATEWAY_MAX_SECURITY_LEVEL",
        value_enum,
        ignore_case = true
    )]
    pub max_security_level: Option<SecurityLevel>,

    /// Run the CLI without the bubblewrap sandbox where user namespaces are unavailable. Only
    /// PARANOID is then served. Never use this for untrusted tenants.
    #[arg(long, env = "CLAUDE_GATEWAY_INSECURE_NO_SANDBOX")]
    pub insecure_no_sandbox: bool,

    /// `isolated` (default): each sandbox has its own network with only loopback; the run
    /// reaches the upstream, public HTTPS (for its tools) and its remote MCP servers through
    /// the gateway. `shared`: sandboxes use the host's network (they can then reach whatever the
    /// host can, e.g. a cloud metadata server).
    #[arg(
        long,
        env = "CLAUDE_GATEWAY_SANDBOX_NETWORK",
        value_enum,
        ignore_case = true,
        default_value = "isolated"
    )]
    pub sandbox_network: SandboxNetwork,

    /// The ports a sandbox's tools may reach through the egress (CONNECT) proxy,
    /// comma-separated. Only HTTPS by default: no SMTP or other services from the gateway's
    /// address.
    #[arg(
        long,
        env = "CLAUDE_GATEWAY_SANDBOX_EGRESS_PORTS",
        value_delimiter = ',',
        default_value = "443"
    )]
    pub sandbox_egress_ports: Vec<u16>,

    /// Open connections one run may hold on each of its sockets to the gateway (upstream,
    /// egress proxy, MCP bridge), and open tunnels through the egress proxy. Beyond, new
    /// connections are closed at once; other runs are not affected.
    #[arg(
        long,
        env = "CLAUDE_GATEWAY_SANDBOX_MAX_CONNECTIONS",
        default_value_t = 64
    )]
    pub sandbox_max_connections: usize,

    /// Memory of each run as a whole (every process, `/tmp` and `/dev/shm`), in MiB, enforced
    /// by a cgroup per run where the gateway can create one; a run that goes past it is stopped
    /// with an error. 0 turns per-run cgroups off.
    #[arg(long, env = "CLAUDE_GATEWAY_SANDBOX_RUN_MEMORY_MB", default_value_t = Limits::default().run_memory_bytes >> 20)]
    pub sandbox_run_memory_mb: u64,

    /// Disk space of each tenant's workspace, in MiB: a file system image per tenant, mounted
    /// while the gateway runs, where the gateway runs as root; writes past it fail inside the
    /// sandbox. Existing images keep the size they were made with. 0 turns quotas off.
    #[arg(
        long,
        env = "CLAUDE_GATEWAY_WORKSPACE_QUOTA_MB",
        default_value_t = 1024
    )]
    pub workspace_quota_mb: u64,

    /// Disk space of each tenant's session transcripts (the CLI's projects directory, which
    /// its runs write), in MiB, kept apart from the workspace the same way; 0 turns it off.
    #[arg(
        long,
        env = "CLAUDE_GATEWAY_TRANSCRIPT_QUOTA_MB",
        default_value_t = 256
    )]
    pub transcript_quota_mb: u64,

    /// Size of each run's `/tmp`, in MiB. It lives in memory, so it is bounded apart from the
    /// processes' own memory.
    #[arg(long, env = "CLAUDE_GATEWAY_SANDBOX_TMP_MB", default_value_t = Limits::default().tmp_bytes >> 20)]
    pub sandbox_tmp_mb: u64,

    /// Size of each run's `/dev/shm` (shared memory), in MiB.
    #[arg(long, env = "CLAUDE_GATEWAY_SANDBOX_SHM_MB", default_value_t = Limits::default().shm_bytes >> 20)]
    pub sandbox_shm_mb: u64,

    /// Processes (and threads) per run's sandbox.
    #[arg(long, env = "CLAUDE_GATEWAY_SANDBOX_MAX_PROCESSES", default_value_t = Limits::default().max_processes)]
    pub sandbox_max_processes: u64,

    /// Memory (heap and private mappings) per process in the sandbox, in MiB.
    #[arg(long, env = "CLAUDE_GATEWAY_SANDBOX_MAX_MEMORY_MB", default_value_t = Limits::default().max_memory_bytes >> 20)]
    pub sandbox_max_memory_mb: u64,

    /// Largest file a process in the sandbox may write, in MiB.
    #[arg(long, env = "CLAUDE_GATEWAY_SANDBOX_MAX_FILE_MB", default_value_t = Limits::default().max_file_bytes >> 20)]
    pub sandbox_max_file_mb: u64,

    /// CPU seconds per process in the sandbox.
    #[arg(long, env = "CLAUDE_GATEWAY_SANDBOX_MAX_CPU_SECS", default_value_t = Limits::default().max_cpu_secs)]
    pub sandbox_max_cpu_secs: u64,

    /// How tenants are identified: `profile` asks the upstream's OAuth profile endpoint for the
    /// account (so a refreshed token stays the same tenant); `token` uses a keyed hash of the
    /// token, for upstreams without that endpoint. API keys are always identified by a keyed hash.
    #[arg(
        long,
        env = "CLAUDE_GATEWAY_TENANT_IDENTITY",
        value_enum,
        ignore_case = true,
        default_value = "profile"
    )]
    pub tenant_identity: IdentityMode,

    /// How long a request waits for another turn of the same session to finish before 409.
    #[arg(
        long,
        env = "CLAUDE_GATEWAY_SESSION_LOCK_WAIT_SECS",
        default_value_t = 30
    )]
    pub session_lock_wait_secs: u64,

    /// Sessions unused for this long are removed, in seconds.
    #[arg(long, env = "CLAUDE_GATEWAY_SESSION_TTL_SECS", default_value_t = 7 * 24 * 3600)]
    pub session_ttl_secs: u64,

    /// Live CLI processes kept between turns, across all tenants (0 disables live sessions).
    /// Each holds about 190 MiB (BENCHMARKS.md).
    #[arg(long, env = "CLAUDE_GATEWAY_LIVE_SESSIONS_MAX", default_value_t = 4)]
    pub live_sessions_max: usize,

    /// Live CLI processes one tenant may hold.
    #[arg(
        long,
        env = "CLAUDE_GATEWAY_LIVE_SESSIONS_PER_TENANT",
        default_value_t = 1
    )]
    pub live_sessions_per_tenant: usize,

    /// A live process idle this long is retired (the session continues cold), in seconds.
    #[arg(
        long,
        env = "CLAUDE_GATEWAY_LIVE_SESSION_IDLE_SECS",
        default_value_t = 120
    )]
    pub live_session_idle_secs: u64,

    /// Warm CLI processes across all tenants: started, sandboxed and waiting, each for the
    /// next new conversation of a tenant active within `--warm-idle-secs`, with the settings of
    /// its last one (0, the default, disables them). Each holds what a live session does.
    #[arg(long, env = "CLAUDE_GATEWAY_WARM_PROCESSES_MAX", default_value_t = 0)]
    pub warm_processes_max: usize,

    /// Warm processes one tenant may hold.
    #[arg(
        long,
        env = "CLAUDE_GATEWAY_WARM_PROCESSES_PER_TENANT",
        default_value_t = 1
    )]
    pub warm_processes_per_tenant: usize,

    /// A warm process unused this long is retired, in seconds: the window in which a tenant
    /// counts as recently active.
    #[arg(long, env = "CLAUDE_GATEWAY_WARM_IDLE_SECS", default_value_t = 300)]
    pub warm_idle_secs: u64,

    /// CLI runs going on at once across all tenants (default: from memory and cores, ~300 MiB
    /// per cold run).
    #[arg(long, env = "CLAUDE_GATEWAY_MAX_CONCURRENT_RUNS")]
    pub max_concurrent_runs: Option<usize>,

    /// CLI runs one tenant may have going on at once.
    #[arg(
        long,
        env = "CLAUDE_GATEWAY_MAX_CONCURRENT_RUNS_PER_TENANT",
        default_value_t = 2
    )]
    pub max_concurrent_runs_per_tenant: usize,

    /// Requests that may wait for a run slot; beyond that they are refused at once.
    #[arg(long, env = "CLAUDE_GATEWAY_MAX_QUEUED_REQUESTS", default_value_t = 64)]
    pub max_queued_requests: usize,

    /// How long a request waits for a run slot, in seconds.
    #[arg(long, env = "CLAUDE_GATEWAY_QUEUE_TIMEOUT_SECS", default_value_t = 30)]
    pub queue_timeout_secs: u64,

    /// Redis shared by every instance (`redis://`, `rediss://` for TLS, a password in the URL):
    /// rate limits then hold across instances. Unset: this instance's memory only.
    #[arg(long, env = "CLAUDE_GATEWAY_REDIS_URL", hide_env_values = true, value_parser = secret)]
    pub redis_url: Option<secrecy::SecretString>,

    /// Requests per minute per tenant (0: no limit).
    #[arg(
        long,
        env = "CLAUDE_GATEWAY_RATE_LIMIT_PER_TENANT",
        default_value_t = 60
    )]
    pub rate_limit_per_tenant: u32,

    /// Requests per minute per client IP (0: no limit). Behind a proxy, set --trusted-proxies
    /// too, or every client shares the proxy's address.
    #[arg(long, env = "CLAUDE_GATEWAY_RATE_LIMIT_PER_IP", default_value_t = 0)]
    pub rate_limit_per_ip: u32,

    /// Proxies (addresses or CIDR ranges, comma-separated) whose X-Forwarded-For is believed.
    #[arg(long, env = "CLAUDE_GATEWAY_TRUSTED_PROXIES", value_delimiter = ',')]
    pub trusted_proxies: Vec<ipnet::IpNet>,

    /// Where expired OAuth access tokens are refreshed (default: {ANTHROPIC_BASE_URL}/v1/oauth/token).
    #[arg(long, env = "CLAUDE_GATEWAY_OAUTH_TOKEN_URL")]
    pub oauth_token_url: Option<String>,

    /// The OAuth client id sent with refreshes (Claude Code's public client).
    #[arg(
        long,
        env = "CLAUDE_GATEWAY_OAUTH_CLIENT_ID",
        default_value = "9d1c250a-e61b-44d9-88ed-5944d1962f5e"
    )]
    pub oauth_client_id: String,

    /// How long an account looked up by token is remembered, in seconds.
    #[arg(
        long,
        env = "CLAUDE_GATEWAY_IDENTITY_CACHE_SECS",
        default_value_t = 300
    )]
    pub identity_cache_secs: u64,

    /// How long the upstream's refusal of a credential is remembered, in seconds: a refused
    /// key or token is answered 401 from memory meanwhile, without another upstream call.
    #[arg(
        long,
        env = "CLAUDE_GATEWAY_IDENTITY_NEGATIVE_CACHE_SECS",
        default_value_t = 60
    )]
    pub identity_negative_cache_secs: u64,

    /// Longest a request's CLI run may take, in seconds.
    #[arg(long, env = "CLAUDE_GATEWAY_RUN_TIMEOUT_SECS", default_value_t = 600)]
    pub run_timeout_secs: u64,

    /// How long a streaming response holds its headers waiting for the model's first output,
    /// so that early failures keep their real HTTP status; pings follow after that.
    #[arg(
        long,
        env = "CLAUDE_GATEWAY_FIRST_OUTPUT_TIMEOUT_SECS",
        default_value_t = 10
    )]
    pub first_output_timeout_secs: u64,

    /// Seconds between `ping` events on a quiet stream.
    #[arg(long, env = "CLAUDE_GATEWAY_PING_INTERVAL_SECS", default_value_t = 10)]
    pub ping_interval_secs: u64,

    /// How often the CLI retries a failed upstream call itself (auth failures are never retried).
    #[arg(long, env = "CLAUDE_GATEWAY_UPSTREAM_MAX_RETRIES", default_value_t = 2)]
    pub upstream_max_retries: u32,

    /// Longest CLI output line accepted, in bytes. The CLI's output is untrusted (a tool in the
    /// sandbox may write to it), so this bounds what one line can make the gateway hold; the
    /// CLI's own lines stay far below it (tool output is cut at ~30k characters).
    #[arg(long, env = "CLAUDE_GATEWAY_MAX_CLI_LINE_BYTES", default_value_t = 8 * 1024 * 1024)]
    pub max_cli_line_bytes: usize,

    /// Largest request body accepted (images and documents arrive base64-encoded).
    #[arg(long, env = "CLAUDE_GATEWAY_MAX_BODY_BYTES", default_value_t = 32 * 1024 * 1024)]
    pub max_body_bytes: usize,

    /// How long a client may take to send a request's headers (also while a keep-alive
    /// connection sits idle), and how long a request body may pause between chunks, in
    /// seconds. Bounds what a slow or stalled client holds.
    #[arg(long, env = "CLAUDE_GATEWAY_CLIENT_TIMEOUT_SECS", default_value_t = 30)]
    pub client_timeout_secs: u64,

    /// After SIGTERM (Cloud Run's stop signal) or Ctrl-C, how long running requests may
    /// finish before they are ended, in seconds. Cloud Run allows 10 s in all.
    #[arg(long, env = "CLAUDE_GATEWAY_SHUTDOWN_GRACE_SECS", default_value_t = 8)]
    pub shutdown_grace_secs: u64,

    /// An operator token that `/metrics` and `/v1/security` then require, as
    /// `Authorization: Bearer <token>` or `X-Admin-Token: <token>`. Unset: both are open.
    #[arg(long, env = "CLAUDE_GATEWAY_ADMIN_TOKEN", hide_env_values = true, value_parser = secret)]
    pub admin_token: Option<secrecy::SecretString>,

    /// Origins allowed to call the API from a browser (comma-separated; `*` for any). Empty:
    /// CORS off.
    #[arg(long, env = "CLAUDE_GATEWAY_CORS_ALLOW_ORIGINS", value_delimiter = ',')]
    pub cors_allow_origins: Vec<String>,

    /// A directory of MCP server installations (e.g. a node_modules), visible read-only inside
    /// every sandbox at /opt/mcp, so local servers can run from it.
    #[arg(long, env = "CLAUDE_GATEWAY_MCP_DIR")]
    pub mcp_dir: Option<PathBuf>,

    /// Commands local MCP servers may run at BALANCED (comma-separated, exact).
    #[arg(
        long,
        env = "CLAUDE_GATEWAY_MCP_ALLOWED_COMMANDS",
        value_delimiter = ','
    )]
    pub mcp_allowed_commands: Vec<String>,

    /// Hosts remote MCP servers may use whatever their address (comma-separated).
    #[arg(long, env = "CLAUDE_GATEWAY_MCP_ALLOWED_HOSTS", value_delimiter = ',')]
    pub mcp_allowed_hosts: Vec<String>,

    /// Gateway keys the operator issues, one `name:sha256-hex-of-key` per line (`claude-gateway
    /// keys new NAME` prints one): every API request then needs `X-Gateway-Key`. Unset: off.
    #[arg(long, env = "CLAUDE_GATEWAY_ACCESS_KEYS_FILE")]
    pub access_keys_file: Option<PathBuf>,

    /// The operator's identity provider's key set (JWKS URL): a JWT it signed, for
    /// --access-jwt-audience, is accepted in `X-Gateway-Key` (beside access keys, if any).
    #[arg(
        long,
        env = "CLAUDE_GATEWAY_ACCESS_JWKS_URL",
        requires = "access_jwt_audience"
    )]
    pub access_jwks_url: Option<String>,

    /// The audience (`aud`) a JWT must be meant for: required with --access-jwks-url, so that
    /// a token the provider issued for another application is not taken.
    #[arg(long, env = "CLAUDE_GATEWAY_ACCESS_JWT_AUDIENCE")]
    pub access_jwt_audience: Option<String>,

    /// The issuer (`iss`) a JWT must come from, when set.
    #[arg(long, env = "CLAUDE_GATEWAY_ACCESS_JWT_ISSUER")]
    pub access_jwt_issuer: Option<String>,

    /// Each JWT subject's own daily budget (UTC), in dollars, counted across every tenant it
    /// uses, as an access key's `daily_usd=`: a subject of the identity provider is otherwise
    /// bounded only by the tenants' budgets.
    #[arg(long, env = "CLAUDE_GATEWAY_ACCESS_JWT_DAILY_BUDGET_USD")]
    pub access_jwt_daily_budget_usd: Option<f64>,

    /// The same for the calendar month (UTC).
    #[arg(long, env = "CLAUDE_GATEWAY_ACCESS_JWT_MONTHLY_BUDGET_USD")]
    pub access_jwt_monthly_budget_usd: Option<f64>,

    /// A tenant whose recorded cost today (UTC) reached this many dollars gets 429 until the
    /// next UTC midnight; a run is bounded by what remains (the CLI's `--max-budget-usd`).
    #[arg(long, env = "CLAUDE_GATEWAY_TENANT_DAILY_BUDGET_USD")]
    pub tenant_daily_budget_usd: Option<f64>,

    /// The same for the calendar month (UTC).
    #[arg(long, env = "CLAUDE_GATEWAY_TENANT_MONTHLY_BUDGET_USD")]
    pub tenant_monthly_budget_usd: Option<f64>,

    /// Writes one JSON line per API request to this file (who, route, model, session hash,
    /// tokens, cost, status, duration; never content or secrets), rotated by size. Unset: off.
    #[arg(long, env = "CLAUDE_GATEWAY_AUDIT_LOG")]
    pub audit_log: Option<PathBuf>,

    /// The audit file's size before it is rotated (`FILE.1` … `FILE.5` kept), in MiB.
    #[arg(long, env = "CLAUDE_GATEWAY_AUDIT_LOG_MAX_MB", default_value_t = 64)]
    pub audit_log_max_mb: u64,

    /// Only these Anthropic account uuids (from an OAuth token's profile) may use the gateway,
    /// comma-separated; with `--allowed-organizations`, either list admits. Unset: any account.
    #[arg(long, env = "CLAUDE_GATEWAY_ALLOWED_ACCOUNTS", value_delimiter = ',')]
    pub allowed_accounts: Vec<String>,

    /// Only these Anthropic organization uuids (from an OAuth token's profile, or the
    /// `anthropic-organization-id` the API answers an API key with) may use the gateway.
    #[arg(
        long,
        env = "CLAUDE_GATEWAY_ALLOWED_ORGANIZATIONS",
        value_delimiter = ','
    )]
    pub allowed_organizations: Vec<String>,

    /// A JSON file of operator-defined MCP servers `{name: config}`, which a request enables
    /// with `{"<server>": {"preset": "<name>"}}`.
    #[arg(long, env = "CLAUDE_GATEWAY_MCP_PRESETS_FILE")]
    pub mcp_presets_file: Option<PathBuf>,

    /// Where the bridge that offers remote MCP servers to runs listens. It must be a loopback
    /// address the sandbox can reach; port 0 picks a free one.
    #[arg(
        long,
        env = "CLAUDE_GATEWAY_MCP_BRIDGE_LISTEN",
        default_value = "127.0.0.1:0"
    )]
    pub mcp_bridge_listen: std::net::SocketAddr,

    /// How long one MCP server may take to start (or connect) and list its tools, in seconds.
    #[arg(long, env = "CLAUDE_GATEWAY_MCP_TIMEOUT_SECS", default_value_t = 20)]
    pub mcp_timeout_secs: u64,

    /// Log format.
    #[arg(
        long,
        env = "CLAUDE_GATEWAY_LOG_FORMAT",
        value_enum,
        ignore_case = true,
        default_value = "json"
    )]
    pub log_format: LogFormat,

    /// Start a built-in fake Anthropic upstream and use it, so the gateway can be tried with
    /// no subscription: any `sk-ant-oat01-…` token works. Overrides the base URL.
    #[arg(long, env = "CLAUDE_GATEWAY_DEMO")]
    pub demo: bool,
}

impl Config {
    /// The address to bind, applying the PORT convention.
    pub fn listen_addr(&self) -> SocketAddr {
        if let Some(addr) = self.listen {
            return addr;
        }
        match std::env::var("PORT")
            .ok()
            .and_then(|p| p.parse::<u16>().ok())
        {
            Some(port) => SocketAddr::from((Ipv4Addr::UNSPECIFIED, port)),
            None => SocketAddr::from((Ipv4Addr::LOCALHOST, 8080)),
        }
    }

    pub fn run_timeout(&self) -> Duration {
        Duration::from_secs(self.run_timeout_secs)
    }

    pub fn first_output_timeout(&self) -> Duration {
        Duration::from_secs(self.first_output_timeout_secs)
    }

    /// The deadline for a client's request headers and for each pause in its body.
    pub fn client_timeout(&self) -> Duration {
        Duration::from_secs(self.client_timeout_secs.max(1))
    }

    pub fn sandbox_limits(&self) -> Limits {
        Limits {
            max_processes: self.sandbox_max_processes,
            max_memory_bytes: self.sandbox_max_memory_mb << 20,
            max_file_bytes: self.sandbox_max_file_mb << 20,
            max_cpu_secs: self.sandbox_max_cpu_secs,
            run_memory_bytes: self.sandbox_run_memory_mb << 20,
            tmp_bytes: self.sandbox_tmp_mb << 20,
            shm_bytes: self.sandbox_shm_mb << 20,
            ..Limits::default()
        }
    }

    pub fn concurrency_limits(&self) -> crate::admission::ConcurrencyLimits {
        crate::admission::ConcurrencyLimits {
            max_runs: self
                .max_concurrent_runs
                .unwrap_or_else(crate::admission::ConcurrencyLimits::default_max_runs),
            max_runs_per_tenant: self.max_concurrent_runs_per_tenant,
            max_queued: self.max_queued_requests,
            queue_timeout: Duration::from_secs(self.queue_timeout_secs),
        }
    }

    pub fn ping_interval(&self) -> Duration {
        Duration::from_secs(self.ping_interval_secs.max(1))
    }

    /// Parses a `serve` command line (for tests and embedding).
    pub fn from_args<I, T>(args: I) -> Result<Self, clap::Error>
    where
        I: IntoIterator<Item = T>,
        T: Into<std::ffi::OsString> + Clone,
    {
        let args = std::iter::once("claude-gateway".into())
            .chain(std::iter::once("serve".into()))
            .chain(args.into_iter().map(Into::into));
        match Cli::try_parse_from(args)?.command {
            Command::Serve(config) => Ok(*config),
            Command::Check(_)
            | Command::SandboxRelay(_)
            | Command::ClientTools(_)
            | Command::ClientToolHook(_)
            | Command::Keys(_) => Err(clap::Error::new(clap::error::ErrorKind::InvalidSubcommand)),
        }
    }
}

/// A setting the gateway cannot start with.
#[derive(Debug, thiserror::Error)]
pub enum SettingError {
    /// A path setting that cannot be used; names the flag and its variable.
    #[error("{flag} ({env}) {}: {reason}", path.display())]
    Path {
        flag: &'static str,
        env: &'static str,
        path: PathBuf,
        reason: String,
    },
    #[error("cannot read the working directory: {0}")]
    WorkingDir(std::io::Error),
}

/// The setting a path came from, as an operator would write it.
fn setting(
    flag: &'static str,
    env: &'static str,
    path: &Path,
    reason: impl Into<String>,
) -> SettingError {
    SettingError::Path {
        flag,
        env,
        path: path.to_path_buf(),
        reason: reason.into(),
    }
}

/// `path` against `cwd`, with `.` components dropped. `..` is kept: lexically removing it
/// would be wrong across symlinks.
fn absolute(cwd: &Path, path: &Path) -> PathBuf {
    cwd.join(path).components().collect()
}

fn usable(path: &Path, flags: AccessFlags) -> bool {
    access(path, flags).is_ok()
}

/// Where a data dir stands: it must be a writable directory, or not exist yet under a
/// writable directory (it is then created).
pub enum DataDirPlace {
    /// An existing directory this user may write.
    Exists(std::fs::Metadata),
    /// Not there yet; this is the writable directory it is created under.
    Creatable(PathBuf),
}

/// Where `dir` stands as the data dir, or why it cannot serve as one.
pub fn data_dir_place(dir: &Path) -> Result<DataDirPlace, String> {
    match std::fs::metadata(dir) {
        Ok(meta) if !meta.is_dir() => Err("exists and is not a directory".into()),
        Ok(_) if !usable(dir, AccessFlags::W_OK | AccessFlags::X_OK) => {
            Err("is not writable by this user".into())
        }
        Ok(meta) => Ok(DataDirPlace::Exists(meta)),
        // NotADirectory: some ancestor is a file, which the search below names.
        Err(e)
            if !matches!(
                e.kind(),
                std::io::ErrorKind::NotFound | std::io::ErrorKind::NotADirectory
            ) =>
        {
            Err(e.to_string())
        }
        Err(_) => {
            let Some(parent) = dir.ancestors().skip(1).find(|a| a.exists()) else {
                return Err("has no existing parent directory".into());
            };
            if !parent.is_dir() || !usable(parent, AccessFlags::W_OK | AccessFlags::X_OK) {
                Err(format!(
                    "does not exist and cannot be created: {} is not a writable directory",
                    parent.display()
                ))
            } else {
                Ok(DataDirPlace::Creatable(parent.to_path_buf()))
            }
        }
    }
}

/// Why `path` cannot serve as an existing directory (`dir`) or file this user may read.
fn readable_problem(path: &Path, dir: bool) -> Option<String> {
    let access = if dir {
        AccessFlags::R_OK | AccessFlags::X_OK
    } else {
        AccessFlags::R_OK
    };
    match std::fs::metadata(path) {
        Err(e) => Some(e.to_string()),
        Ok(meta) if dir && !meta.is_dir() => Some("is not a directory".into()),
        Ok(meta) if !dir && !meta.is_file() => Some("is not a file".into()),
        Ok(_) if !usable(path, access) => Some("is not readable by this user".into()),
        Ok(_) => None,
    }
}

/// An optional path setting made absolute against `cwd`, if it names a readable directory
/// (`dir`) or file.
fn readable_setting(
    cwd: &Path,
    path: Option<&Path>,
    dir: bool,
    flag: &'static str,
    env: &'static str,
) -> Result<Option<PathBuf>, SettingError> {
    let Some(path) = path else {
        return Ok(None);
    };
    let abs = absolute(cwd, path);
    match readable_problem(&abs, dir) {
        Some(reason) => Err(setting(flag, env, &abs, reason)),
        None => Ok(Some(abs)),
    }
}

/// The CLI named by `--claude-bin`: a name without a slash is looked up on PATH, as a shell
/// would; anything else is a path relative to `cwd`.
fn resolve_program(cwd: &Path, bin: &Path) -> Result<PathBuf, String> {
    let is_bare_name =
        bin.components().count() == 1 && !bin.as_os_str().as_encoded_bytes().contains(&b'/');
    let path = if is_bare_name {
        let found = std::env::var_os("PATH").and_then(|paths| {
            std::env::split_paths(&paths)
                .map(|dir| absolute(cwd, &dir.join(bin)))
                .find(|p| p.is_file())
        });
        found.ok_or_else(|| "was not found on PATH".to_owned())?
    } else {
        absolute(cwd, bin)
    };
    match std::fs::metadata(&path) {
        Err(e) => Err(format!("{}: {e}", path.display())),
        Ok(meta) if !meta.is_file() => Err(format!("{} is not a file", path.display())),
        Ok(_) if !usable(&path, AccessFlags::X_OK) => {
            Err(format!("{} is not executable", path.display()))
        }
        Ok(_) => Ok(path),
    }
}

impl Config {
    /// Makes every path setting absolute, against the working directory at launch, and checks
    /// that each is usable. Runs once, first thing: the CLI and bubblewrap run in other working
    /// directories, where a relative path names something else, so nothing downstream may see
    /// one; and a bad path is the operator's to fix at start-up, not a tenant's first request
    /// to discover.
    pub fn resolve_paths(&mut self) -> Result<(), SettingError> {
        let cwd = std::env::current_dir().map_err(SettingError::WorkingDir)?;
        self.resolve_paths_from(&cwd)
    }

    /// [`Config::resolve_paths`] against a given working directory.
    pub fn resolve_paths_from(&mut self, cwd: &Path) -> Result<(), SettingError> {
        self.data_dir = absolute(cwd, &self.data_dir);
        if let Err(reason) = data_dir_place(&self.data_dir) {
            return Err(setting(
                "--data-dir",
                "CLAUDE_GATEWAY_DATA_DIR",
                &self.data_dir,
                reason,
            ));
        }
        // On an error each setting keeps what was given, so `check` goes on to report on it
        // rather than on some default.
        self.claude_bin = match &self.claude_bin {
            Some(bin) => Some(resolve_program(cwd, bin).map_err(|reason| {
                setting("--claude-bin", "CLAUDE_GATEWAY_CLAUDE_BIN", bin, reason)
            })?),
            // Not found is not an error here: /ready and `check` say why the CLI is missing.
            None => crate::runner::locate::find_claude(None).map(|p| absolute(cwd, &p)),
        };
        self.mcp_dir = readable_setting(
            cwd,
            self.mcp_dir.as_deref(),
            true,
            "--mcp-dir",
            "CLAUDE_GATEWAY_MCP_DIR",
        )?;
        self.mcp_presets_file = readable_setting(
            cwd,
            self.mcp_presets_file.as_deref(),
            false,
            "--mcp-presets-file",
            "CLAUDE_GATEWAY_MCP_PRESETS_FILE",
        )?;
        self.access_keys_file = readable_setting(
            cwd,
            self.access_keys_file.as_deref(),
            false,
            "--access-keys-file",
            "CLAUDE_GATEWAY_ACCESS_KEYS_FILE",
        )?;
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::os::unix::fs::PermissionsExt;

    fn in_dir(args: &[&str], cwd: &Path) -> Result<Config, SettingError> {
        let mut c = Config::from_args(args).expect("parses");
        c.resolve_paths_from(cwd).map(|()| c)
    }

    fn executable(path: &Path) {
        std::fs::write(path, "#!/bin/sh\n").expect("write");
        std::fs::set_permissions(path, std::fs::Permissions::from_mode(0o755)).expect("chmod");
    }

    #[test]
    fn relative_paths_become_absolute_against_the_launch_directory() {
        let cwd = tempfile::tempdir().expect("tempdir");
        std::fs::create_dir_all(cwd.path().join("mcp")).expect("mkdir");
        std::fs::create_dir_all(cwd.path().join("bin")).expect("mkdir");
        executable(&cwd.path().join("bin/claude"));
        std::fs::write(cwd.path().join("presets.json"), "{}").expect("write");
        let c = in_dir(
            &[
                "--claude-bin",
                "./bin/claude",
                "--mcp-dir",
                "mcp",
                "--mcp-presets-file",
                "./presets.json",
            ],
            cwd.path(),
        )
        .expect("resolves");
        assert_eq!(c.data_dir, cwd.path().join("data"), "the default ./data");
        assert_eq!(c.claude_bin, Some(cwd.path().join("bin/claude")));
        assert_eq!(c.mcp_dir, Some(cwd.path().join("mcp")));
        assert_eq!(c.mcp_presets_file, Some(cwd.path().join("presets.json")));
        assert!(
            !cwd.path().join("data").exists(),
            "resolving creates nothing"
        );
    }

    #[test]
    fn absolute_paths_stay_as_they_are() {
        let cwd = tempfile::tempdir().expect("tempdir");
        let data = tempfile::tempdir().expect("tempdir");
        let c = in_dir(
            &["--data-dir", data.path().to_str().expect("utf-8")],
            cwd.path(),
        )
        .expect("resolves");
        assert_eq!(c.data_dir, data.path());
    }

    #[test]
    fn a_data_dir_that_does_not_exist_yet_is_fine_under_a_writable_parent() {
        let cwd = tempfile::tempdir().expect("tempdir");
        let c = in_dir(&["--data-dir", "state/gateway/data"], cwd.path()).expect("resolves");
        assert_eq!(c.data_dir, cwd.path().join("state/gateway/data"));
    }

    fn refusal(args: &[&str], cwd: &Path) -> String {
        match in_dir(args, cwd) {
            Ok(c) => panic!("{args:?} was accepted: {c:?}"),
            Err(e) => e.to_string(),
        }
    }

    #[test]
    fn an_unusable_data_dir_is_refused_naming_the_flag() {
        let cwd = tempfile::tempdir().expect("tempdir");
        std::fs::write(cwd.path().join("file"), "").expect("write");
        let e = refusal(&["--data-dir", "file"], cwd.path());
        assert!(
            e.contains("--data-dir") && e.contains("not a directory"),
            "{e}"
        );
        let e = refusal(&["--data-dir", "file/data"], cwd.path());
        assert!(
            e.contains("--data-dir") && e.contains("cannot be created"),
            "{e}"
        );
    }

    #[test]
    fn a_missing_or_unusable_cli_is_refused_naming_the_flag() {
        let cwd = tempfile::tempdir().expect("tempdir");
        let e = refusal(&["--claude-bin", "nowhere/claude"], cwd.path());
        assert!(
            e.contains("--claude-bin") && e.contains("nowhere/claude"),
            "{e}"
        );
        std::fs::write(cwd.path().join("plain"), "").expect("write");
        let e = refusal(&["--claude-bin", "./plain"], cwd.path());
        assert!(
            e.contains("--claude-bin") && e.contains("not executable"),
            "{e}"
        );
        let e = refusal(&["--claude-bin", "no-such-claude-anywhere"], cwd.path());
        assert!(e.contains("--claude-bin") && e.contains("PATH"), "{e}");
    }

    #[test]
    fn a_refused_setting_keeps_what_was_given() {
        let cwd = tempfile::tempdir().expect("tempdir");
        let mut c = Config::from_args(["--claude-bin", "nowhere/claude"]).expect("parses");
        assert!(c.resolve_paths_from(cwd.path()).is_err());
        assert_eq!(c.claude_bin, Some(PathBuf::from("nowhere/claude")));
    }

    #[test]
    fn a_bare_cli_name_is_looked_up_on_path() {
        let cwd = tempfile::tempdir().expect("tempdir");
        let c = in_dir(&["--claude-bin", "sh"], cwd.path()).expect("sh is on PATH");
        let bin = c.claude_bin.expect("resolved");
        assert!(bin.is_absolute() && bin.ends_with("sh"), "{bin:?}");
    }

    #[test]
    fn missing_mcp_paths_are_refused_naming_the_flag() {
        let cwd = tempfile::tempdir().expect("tempdir");
        let e = refusal(&["--mcp-dir", "absent"], cwd.path());
        assert!(e.contains("--mcp-dir"), "{e}");
        let e = refusal(&["--mcp-presets-file", "absent.json"], cwd.path());
        assert!(e.contains("--mcp-presets-file"), "{e}");
        let e = refusal(&["--mcp-presets-file", "."], cwd.path());
        assert!(
            e.contains("--mcp-presets-file") && e.contains("not a file"),
            "{e}"
        );
    }

    #[test]
    fn defaults_parse_and_lists_split_on_commas() {
        let c = Config::from_args(["--models", "sonnet,claude-opus-4-5"]).expect("parses");
        assert_eq!(c.models, ["sonnet", "claude-opus-4-5"]);
        assert_eq!(c.system_prompt_mode, SystemPromptMode::Append);
        assert_eq!(c.security_level, SecurityLevel::Balanced);
        assert_eq!(c.max_security_level, None);
    }

    #[test]
    fn explicit_listen_wins() {
        let c = Config::from_args(["--listen", "127.0.0.1:9"]).expect("parses");
        assert_eq!(
            c.listen_addr(),
            "127.0.0.1:9".parse::<SocketAddr>().expect("addr")
        );
    }

    #[test]
    fn security_levels_are_read_in_any_case() {
        for (text, level) in [
            ("developer", SecurityLevel::Developer),
            ("Balanced", SecurityLevel::Balanced),
            ("PARANOID", SecurityLevel::Paranoid),
        ] {
            let c = Config::from_args(["--security-level", text, "--max-security-level", text])
                .expect("parses");
            assert_eq!(
                (c.security_level, c.max_security_level),
                (level, Some(level))
            );
        }
    }

    #[test]
    fn every_enum_setting_is_read_in_any_case() {
        let c = Config::from_args([
            "--system-prompt-mode",
            "Replace",
            "--sandbox-network",
            "SHARED",
            "--tenant-identity",
            "Token",
            "--log-format",
            "TEXT",
        ])
        .expect("parses");
        assert_eq!(c.system_prompt_mode, SystemPromptMode::Replace);
        assert_eq!(c.sandbox_network, SandboxNetwork::Shared);
        assert_eq!(c.tenant_identity, IdentityMode::Token);
    }
}
