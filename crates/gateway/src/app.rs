//! The gateway's shared state, its routes and its server loop.

use std::os::unix::fs::DirBuilderExt;
use std::path::{Path, PathBuf};
use std::sync::Arc;

use axum::extract::DefaultBodyLimit;
use axum::routing::{get, post};
use axum::Router;

use crate::admission::{Admission, RateLimits};
use crate::api;
use crate::config::Config;
use crate::mcp::McpPolicy;
pub use crate::prepare::ClaudeInfo;
use crate::prepare::{build_sandbox, claude_info};
use crate::runner::live::{LiveLimits, LivePool};
use crate::runner::{rundir, Runner, RunnerSettings};
use crate::sandbox::{Bwrap, LevelPolicy, SandboxError};
use crate::sessions::SessionStore;
use crate::tenant::identity::{IdentityResolver, InstallKey, TenantId};
use crate::tenant::refresh::Refresher;
use crate::tenant::volumes::{Volume, VolumeError, Volumes};

pub struct AppState {
    pub config: Config,
    pub runner: Runner,
    pub claude: ClaudeInfo,
    pub identity: IdentityResolver,
    pub refresher: Refresher,
    pub sessions: SessionStore,
    pub live: LivePool,
    /// CLI processes started ahead of a recently active tenant's next new conversation, keyed
    /// by [`crate::conversation::warm_key`].
    pub warm: LivePool,
    pub admission: Admission,
    pub rate: RateLimits,
    /// Redis shared by every instance, when configured.
    pub shared: Option<crate::shared::Redis>,
    /// The operator's access keys (`--access-keys-file`); `None`: none are issued.
    pub access: Option<crate::access::AccessKeys>,
    /// JWTs of the operator's identity provider (`--access-jwks-url`); `None`: not taken.
    /// With neither, access control is off.
    pub access_jwt: Option<Arc<crate::access::jwt::JwtAccess>>,
    /// What the upstream last reported of each tenant's own limits ([`crate::quota`]).
    pub quota: Arc<crate::quota::QuotaStore>,
    /// What each tenant spends, per day and model ([`crate::usage`]).
    pub usage: crate::usage::UsageStore,
    /// The audit log (`--audit-log`), when on.
    pub audit: Option<Arc<crate::telemetry::audit::AuditLog>>,
    pub install_key: Arc<InstallKey>,
    pub levels: LevelPolicy,
    pub mcp: McpPolicy,
    /// The only way to remote MCP servers: connections under the address policy.
    pub mcp_connector: crate::mcp::remote::Connector,
    /// Where runs reach their remote MCP servers.
    pub mcp_bridge: crate::mcp::bridge::Bridge,
    /// Why runs are not sandboxed, when the operator chose `--insecure-no-sandbox`.
    pub sandbox_disabled: Option<String>,
    /// Cancelled just before a shutdown cuts the connections still open.
    pub stopping: tokio_util::sync::CancellationToken,
    /// Tenants' workspaces and transcripts, with their quotas.
    pub volumes: Arc<Volumes>,
    /// The upstream, with tenants' real credentials: the runs' proxy, and the gateway's own
    /// calls on a tenant's behalf (token counting).
    pub upstream: crate::sandbox::net::UpstreamProxy,
}

pub type SharedState = Arc<AppState>;

#[derive(Debug, thiserror::Error)]
pub enum StartupError {
    #[error(transparent)]
    Setting(#[from] crate::config::SettingError),
    #[error("cannot prepare the data directory {0}: {1}")]
    DataDir(PathBuf, std::io::Error),
    #[error("cannot bind {0}: {1}")]
    Bind(std::net::SocketAddr, std::io::Error),
    #[error("cannot start the demo upstream: {0}")]
    Demo(std::io::Error),
    #[error("server error: {0}")]
    Serve(std::io::Error),
    #[error(transparent)]
    Mcp(#[from] crate::mcp::McpError),
    #[error("cannot start the MCP bridge on {0}: {1}")]
    Bridge(std::net::SocketAddr, std::io::Error),
    #[error("{0}; refusing to start without a sandbox (pass --insecure-no-sandbox to run PARANOID-only without one)")]
    Sandbox(SandboxError),
    #[error("--redis-url: {0}")]
    Shared(crate::shared::SharedError),
    #[error("--access-keys-file: {0}")]
    Access(crate::access::AccessError),
    #[error("--access-jwks-url: {0}")]
    AccessJwks(std::io::Error),
    #[error("--audit-log {0}: {1}")]
    Audit(PathBuf, std::io::Error),
}

fn private_dir(path: &Path) -> Result<(), StartupError> {
    std::fs::DirBuilder::new()
        .recursive(true)
        .mode(0o700)
        .create(path)
        .map_err(|e| StartupError::DataDir(path.to_path_buf(), e))
}

impl AppState {
    /// Prepares the data directory (removing what a crash left behind) and finds the CLI.
    pub async fn new(config: Config) -> Result<Self, StartupError> {
        let data_dir = &config.data_dir;
        let runs_dir = data_dir.join("runs");
        let tenants_dir = data_dir.join("tenants");
        for dir in [data_dir, &runs_dir, &tenants_dir] {
            private_dir(dir)?;
        }
        let swept =
            rundir::sweep(&runs_dir).map_err(|e| StartupError::DataDir(runs_dir.clone(), e))?;
        if swept > 0 {
            tracing::warn!(
                count = swept,
                "removed run dirs left behind by an earlier process"
            );
        }
        let shared = config
            .redis_url
            .as_ref()
            .map(crate::shared::Redis::new)
            .transpose()
            .map_err(StartupError::Shared)?;
        let install_key = InstallKey::load_or_create(&data_dir.join("install.key"))
            .map_err(|e| StartupError::DataDir(data_dir.clone(), e))?;
        // Instances sharing a Redis name tenants alike: they share the key that names them.
        let install_key = Arc::new(match &shared {
            Some(redis) => install_key
                .shared(redis)
                .await
                .map_err(StartupError::Shared)?,
            None => install_key,
        });

        let ClaudeInfo { bin, version } = claude_info(config.claude_bin.as_deref()).await;
        match &version {
            Ok(v) => tracing::info!(claude_version = %v, "found the Claude Code CLI"),
            Err(reason) => tracing::error!(%reason, "the Claude Code CLI is not usable"),
        }
        if !config.mcp_bridge_listen.ip().is_loopback() {
            return Err(StartupError::Bridge(
                config.mcp_bridge_listen,
                std::io::Error::other("the MCP bridge listens on loopback only"),
            ));
        }
        let mcp_bridge = crate::mcp::bridge::Bridge::start(config.mcp_bridge_listen)
            .await
            .map_err(|e| StartupError::Bridge(config.mcp_bridge_listen, e))?;
        let placeholders = Arc::new(crate::sandbox::masking::Placeholders::default());
        let quota = Arc::new(crate::quota::QuotaStore::new(shared.clone()));
        let upstream = crate::sandbox::net::UpstreamProxy::new(
            &config.anthropic_base_url,
            placeholders.clone(),
            quota.clone(),
        )
        .map_err(|e| StartupError::Sandbox(SandboxError::Network(e)))?;
        let (sandbox, sandbox_disabled) = prepare_sandbox(
            &config,
            bin.as_deref(),
            &data_dir.join("sandbox-etc"),
            &mcp_bridge,
            &upstream,
        )
        .await?;
        // Every run reaches the upstream through the proxy that holds the real credentials:
        // an isolated sandbox through its socket, any other run through a loopback port.
        let cli_base_url = match sandbox.as_ref().and_then(|s| s.network.as_ref()) {
            Some(_) => config.anthropic_base_url.clone(),
            None => format!(
                "http://{}",
                upstream
                    .serve_loopback()
                    .await
                    .map_err(|e| StartupError::Sandbox(SandboxError::Network(e)))?
            ),
        };
        let levels = LevelPolicy::new(
            config.security_level,
            config.max_security_level,
            sandbox.is_some(),
        );
        let refresher = Refresher::new(
            config.oauth_token_url.clone().unwrap_or_else(|| {
                format!(
                    "{}/v1/oauth/token",
                    config.anthropic_base_url.trim_end_matches('/')
                )
            }),
            config.oauth_client_id.clone(),
            install_key.clone(),
        )
        .with_shared(shared.clone());
        let identity = IdentityResolver::new(
            config.tenant_identity,
            &config.anthropic_base_url,
            install_key.clone(),
            std::time::Duration::from_secs(config.identity_cache_secs),
            std::time::Duration::from_secs(config.identity_negative_cache_secs),
        )
        .with_shared(shared.clone())
        .with_allowed(crate::tenant::identity::Allowed::new(
            &config.allowed_accounts,
            &config.allowed_organizations,
        ));
        let runner = Runner {
            settings: RunnerSettings {
                claude_bin: bin.clone().unwrap_or_else(|| PathBuf::from("claude")),
                base_url: cli_base_url,
                upstream_max_retries: config.upstream_max_retries,
            },
            runs_dir,
            run_timeout: config.run_timeout(),
            max_line_bytes: config.max_cli_line_bytes,
            sandbox,
            placeholders,
        };
        let volumes = Arc::new(Volumes::new(
            tenants_dir,
            config.workspace_quota_mb << 20,
            config.transcript_quota_mb << 20,
        ));
        let lock_wait = std::time::Duration::from_secs(config.session_lock_wait_secs);
        let records = match &shared {
            Some(redis) => crate::sessions::Records::redis(
                redis.clone(),
                std::time::Duration::from_secs(config.session_ttl_secs.max(1)),
                config.transcript_quota_mb << 20,
                lock_wait,
            ),
            None => crate::sessions::Records::disk(volumes.tenants_dir().to_path_buf(), lock_wait),
        };
        let sessions = SessionStore::new(volumes.clone(), records);
        let usage = match &shared {
            Some(redis) => crate::usage::UsageStore::redis(redis.clone()),
            None => crate::usage::UsageStore::disk(
                volumes.tenants_dir().to_path_buf(),
                data_dir.join("access-keys"),
            ),
        };
        let warm = LivePool::new(LiveLimits {
            max_total: config.warm_processes_max,
            max_per_tenant: config.warm_processes_per_tenant,
            idle: std::time::Duration::from_secs(config.warm_idle_secs),
        });
        let live = LivePool::new(LiveLimits {
            max_total: config.live_sessions_max,
            max_per_tenant: config.live_sessions_per_tenant,
            idle: std::time::Duration::from_secs(config.live_session_idle_secs),
        });
        let mcp = McpPolicy {
            allowed_commands: config.mcp_allowed_commands.clone(),
            allowed_hosts: config.mcp_allowed_hosts.clone(),
            presets: match &config.mcp_presets_file {
                Some(path) => McpPolicy::load_presets(path)?,
                None => Default::default(),
            },
        };
        let mcp_connector = crate::mcp::remote::Connector::new(
            &config.mcp_allowed_hosts,
            std::time::Duration::from_secs(config.mcp_timeout_secs),
        );
        // Opened once here, so a path the gateway cannot write stops it at start.
        let audit = match &config.audit_log {
            Some(path) => {
                use std::os::unix::fs::OpenOptionsExt;
                std::fs::OpenOptions::new()
                    .create(true)
                    .append(true)
                    .mode(0o600)
                    .open(path)
                    .map_err(|e| StartupError::Audit(path.clone(), e))?;
                Some(Arc::new(crate::telemetry::audit::AuditLog::new(
                    path.clone(),
                    config.audit_log_max_mb.max(1) << 20,
                    5,
                )))
            }
            None => None,
        };
        let access = config
            .access_keys_file
            .as_deref()
            .map(crate::access::AccessKeys::load)
            .transpose()
            .map_err(StartupError::Access)?;
        let access_jwt = match (&config.access_jwks_url, &config.access_jwt_audience) {
            (Some(url), Some(audience)) => {
                let jwt = crate::access::jwt::JwtAccess::new(
                    url.clone(),
                    audience.clone(),
                    config.access_jwt_issuer.clone(),
                )
                .map_err(StartupError::AccessJwks)?;
                jwt.prefetch().await;
                Some(Arc::new(jwt))
            }
            _ => None,
        };
        let admission = Admission::new(config.concurrency_limits()).with_shared(shared.clone());
        let rate = match &shared {
            Some(redis) => RateLimits::shared(
                config.rate_limit_per_ip,
                config.rate_limit_per_tenant,
                redis.clone(),
            ),
            None => RateLimits::new(config.rate_limit_per_ip, config.rate_limit_per_tenant),
        };
        Ok(Self {
            config,
            runner,
            sessions,
            live,
            warm,
            admission,
            rate,
            mcp,
            mcp_connector,
            mcp_bridge,
            install_key,
            claude: ClaudeInfo { bin, version },
            identity,
            refresher,
            levels,
            sandbox_disabled,
            stopping: Default::default(),
            volumes,
            upstream,
            shared,
            access,
            access_jwt,
            quota,
            audit,
            usage,
        })
    }

    /// The tenant's workspace, ready for a run (see [`crate::tenant::workspace`]).
    pub fn workspace(&self, tenant: &TenantId) -> Result<PathBuf, VolumeError> {
        self.volumes.path(tenant, Volume::Workspace)
    }
}

/// Sets up and probes the sandbox; without one the gateway refuses to start unless the operator
/// explicitly accepted running unsandboxed.
async fn prepare_sandbox(
    config: &Config,
    cli: Option<&Path>,
    etc_dir: &Path,
    bridge: &crate::mcp::bridge::Bridge,
    upstream: &crate::sandbox::net::UpstreamProxy,
) -> Result<(Option<Bwrap>, Option<String>), StartupError> {
    let probed = build_sandbox(config, cli, etc_dir, bridge, upstream).await;
    if config.insecure_no_sandbox {
        let reason = match probed {
            Ok(_) => "disabled by --insecure-no-sandbox".to_owned(),
            Err(e) => format!("disabled by --insecure-no-sandbox ({e})"),
        };
        tracing::error!(%reason, "INSECURE: CLI runs are NOT sandboxed; only PARANOID is served. Do not expose this gateway to untrusted tenants.");
        return Ok((None, Some(reason)));
    }
    let sandbox = probed.map_err(StartupError::Sandbox)?;
    tracing::info!(bwrap = %sandbox.bwrap.display(), "every CLI run is sandboxed with bubblewrap");
    Ok((Some(sandbox), None))
}

/// CORS for browser clients, when the operator names the origins.
fn cors(origins: &[String]) -> Option<tower_http::cors::CorsLayer> {
    use tower_http::cors::{AllowOrigin, Any, CorsLayer};
    if origins.is_empty() {
        return None;
    }
    let layer = CorsLayer::new()
        .allow_methods(Any)
        .allow_headers(Any)
        .expose_headers([
            axum::http::HeaderName::from_static("x-session-id"),
            axum::http::HeaderName::from_static("x-request-id"),
        ]);
    Some(if origins.iter().any(|o| o == "*") {
        layer.allow_origin(Any)
    } else {
        let list = origins
            .iter()
            .filter_map(|o| axum::http::HeaderValue::from_str(o).ok())
            .collect::<Vec<_>>();
        layer.allow_origin(AllowOrigin::list(list))
    })
}

pub fn router(state: SharedState) -> Router {
    let body_limit = state.config.max_body_bytes;
    let cors = cors(&state.config.cors_allow_origins);
    let admin = Router::new()
        .route("/metrics", get(api::health::metrics))
        .route("/v1/security", get(api::security::security))
        .route("/v1/admin/usage", get(api::usage::by_access_key))
        .route_layer(axum::middleware::from_fn_with_state(
            state.clone(),
            api::require_admin,
        ));
    Router::new()
        .route("/", get(api::docs::root))
        .route("/health", get(api::health::health))
        .route("/ready", get(api::health::ready))
        .merge(admin)
        .route("/v1/models", get(api::models::list))
        .route(
            "/v1/mcp/tools",
            get(api::mcp_tools::list).post(api::mcp_tools::list),
        )
        .route("/v1/models/{id}", get(api::models::get))
        .route("/v1/messages", post(api::anthropic::messages::create))
        .route(
            "/v1/messages/count_tokens",
            post(api::anthropic::count_tokens::count),
        )
        .route("/v1/chat/completions", post(api::openai::chat::create))
        .route("/v1/sessions", get(api::sessions::list))
        .route("/v1/usage", get(api::usage::usage))
        .route("/v1/quota", get(api::usage::quota))
        .route(
            "/v1/sessions/{id}",
            get(api::sessions::get).delete(api::sessions::delete),
        )
        .merge(utoipa_swagger_ui::SwaggerUi::new("/docs").url(
            "/openapi.json",
            <api::docs::ApiDoc as utoipa::OpenApi>::openapi(),
        ))
        .fallback(api::not_found)
        .layer(axum::middleware::from_fn_with_state(
            state.clone(),
            api::limit_client_ip,
        ))
        // Outside the IP limit: an unknown caller is refused before it is even counted.
        .layer(axum::middleware::from_fn_with_state(
            state.clone(),
            api::require_access_key,
        ))
        .layer(DefaultBodyLimit::max(body_limit))
        // gzip bodies are read as what they decompress to (the body limit applies to that);
        // another encoding is 415 rather than a JSON parse error.
        .layer(tower_http::decompression::RequestDecompressionLayer::new())
        .layer(tower_http::timeout::RequestBodyTimeoutLayer::new(
            state.config.client_timeout(),
        ))
        .route_layer(axum::middleware::from_fn(crate::telemetry::metrics::track))
        .layer(tower::util::option_layer(cors))
        .layer(axum::middleware::from_fn(api::limit_headers))
        // Outside everything but the request's span: every API request gets its line.
        .layer(axum::middleware::from_fn_with_state(
            state.audit.clone(),
            crate::telemetry::audit::track,
        ))
        .layer(axum::middleware::from_fn(crate::telemetry::request_span))
        .with_state(state)
}

/// Runs the gateway until SIGTERM or Ctrl-C.
pub async fn serve(mut config: Config) -> Result<(), StartupError> {
    // Before anything reads a path: from here on every path in the config is absolute.
    config.resolve_paths()?;
    // Kept alive for the server's lifetime.
    let demo = if config.demo {
        let fake = fake_anthropic::FakeAnthropic::start(([127, 0, 0, 1], 0).into())
            .await
            .map_err(StartupError::Demo)?;
        tracing::warn!(upstream = %fake.base_url(), "demo mode: using the built-in fake Anthropic upstream");
        config.anthropic_base_url = fake.base_url();
        Some(fake)
    } else {
        None
    };
    let addr = config.listen_addr();
    raise_open_files_limit();
    crate::telemetry::metrics::handle();
    let state = Arc::new(AppState::new(config).await?);
    tokio::spawn(expire_sessions(state.clone()));
    tokio::spawn(reap_live_sessions(state.clone()));
    let listener = tokio::net::TcpListener::bind(addr)
        .await
        .map_err(|e| StartupError::Bind(addr, e))?;
    let local = listener.local_addr().map_err(StartupError::Serve)?;
    tracing::info!(addr = %local, "claude-gateway listening");
    // Scripts and tests that start the binary read the address from the first line, and
    // scripts/serve.sh the upstream from the second. One write, errors ignored: a reader that
    // stops reading after the first line must not take the server down (println! would panic).
    let announce = format!(
        "claude-gateway listening on http://{local}\nclaude-gateway upstream {} {}\n",
        if demo.is_some() { "demo" } else { "real" },
        state.config.anthropic_base_url
    );
    {
        use std::io::Write;
        let mut out = std::io::stdout().lock();
        let _ = out
            .write_all(announce.as_bytes())
            .and_then(|()| out.flush());
    }
    let grace = std::time::Duration::from_secs(state.config.shutdown_grace_secs);
    // After the signal no new connection is accepted; running requests get `grace` to finish.
    let drained = crate::serve::serve(
        listener,
        router(state.clone()),
        state.config.client_timeout(),
        shutdown_signal(),
        grace,
        || state.stopping.cancel(),
    )
    .await;
    if drained == crate::serve::Drained::GraceExpired {
        tracing::warn!(
            grace_secs = grace.as_secs(),
            "shutdown grace expired; ending the requests still running"
        );
    } else if tokio::time::timeout(grace, state.admission.idle())
        .await
        .is_err()
    {
        // Every response went out; what is left are CLIs recording their turn's end (a client
        // tool call's deferral among it), which the next request of the session needs.
        tracing::warn!("shutdown grace expired with CLI runs still finishing; ending them");
    }
    // Whatever still runs (requests past the grace, live sessions) is killed with its process
    // group as its owner is dropped; run dirs are removed the same way.
    state.live.clear();
    state.warm.clear();
    tracing::info!("stopped");
    Ok(())
}

/// Raises the gateway's own descriptor limit to the hard limit: every run holds a few sockets
/// and pipes, and its sandbox may hold up to `--sandbox-max-connections` on each socket. What
/// runs inside a sandbox gets its own limit again (`prlimit --nofile`).
fn raise_open_files_limit() {
    use nix::sys::resource::{getrlimit, setrlimit, Resource};
    if let Ok((soft, hard)) = getrlimit(Resource::RLIMIT_NOFILE) {
        if soft < hard {
            match setrlimit(Resource::RLIMIT_NOFILE, hard, hard) {
                Ok(()) => tracing::debug!(from = soft, to = hard, "raised the open files limit"),
                Err(e) => tracing::warn!(error = %e, "could not raise the open files limit"),
            }
        }
    }
}

/// Removes idle sessions now and then.
async fn expire_sessions(state: SharedState) {
    let ttl = std::time::Duration::from_secs(state.config.session_ttl_secs.max(1));
    let every = (ttl / 10).clamp(
        std::time::Duration::from_secs(1),
        std::time::Duration::from_secs(600),
    );
    let mut tick = tokio::time::interval(every);
    loop {
        tick.tick().await;
        let removed = state.sessions.expire(ttl).await;
        if removed > 0 {
            tracing::info!(removed, "expired idle sessions");
        }
    }
}

/// Retires live and warm CLI processes that sat idle too long.
async fn reap_live_sessions(state: SharedState) {
    let idle = std::time::Duration::from_secs(
        state
            .config
            .live_session_idle_secs
            .min(state.config.warm_idle_secs)
            .max(1),
    );
    let every = (idle / 4).clamp(
        std::time::Duration::from_secs(1),
        std::time::Duration::from_secs(30),
    );
    let mut tick = tokio::time::interval(every);
    loop {
        tick.tick().await;
        state.rate.prune();
        let retired = state.live.reap() + state.warm.reap();
        if retired > 0 {
            tracing::debug!(retired, "retired idle live and warm processes");
        }
    }
}

async fn shutdown_signal() {
    let ctrl_c = async {
        let _ = tokio::signal::ctrl_c().await;
    };
    let term = async {
        match tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate()) {
            Ok(mut s) => {
                s.recv().await;
            }
            Err(_) => std::future::pending::<()>().await,
        }
    };
    tokio::select! {
        _ = ctrl_c => {},
        _ = term => {},
    }
    tracing::info!("shutting down");
}
