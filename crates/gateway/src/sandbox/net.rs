//! The network a sandboxed run has: its own namespace with nothing but loopback, plus exactly
//! three ways out, each a unix socket the gateway serves for that run alone and binds into its
//! sandbox, reached through the in-sandbox relay ([`super::relay`]):
//!
//! - **upstream**: a reverse proxy to `ANTHROPIC_BASE_URL`, the CLI's only way to the model
//!   (inside, `ANTHROPIC_BASE_URL` is `http://127.0.0.1:4000`);
//! - **egress**: an HTTPS (`CONNECT`) proxy for the model's own tools (`pip`, `curl`,
//!   `WebFetch`…), set as `HTTPS_PROXY`, that connects only to addresses the SSRF policy allows:
//!   no loopback (the host's services), no private network, no link-local (the cloud metadata
//!   server), judged on every address a name resolves to when connecting;
//! - **bridge**: the remote-MCP bridge ([`crate::mcp::bridge`]), at the same loopback port
//!   inside as outside, so bridge URLs read the same in both places.
//!
//! Each run has its own three sockets (in its private directory), so what one run does to them
//! is bounded per run: at most `max_connections` open connections on each (beyond, new ones are
//! closed at once), request headers within a deadline (also while a kept-alive connection
//! idles), and at most as many tunnels as connections. When the run ends its sockets and every
//! connection and tunnel on them end too. One tenant's thousands of connections then cost that
//! tenant's run its refusals, never another tenant's run or the gateway's own descriptors.

use std::net::SocketAddr;
use std::path::Path;
use std::sync::Arc;

use axum::body::Body;
use axum::extract::{Request, State};
use axum::http::{HeaderName, Method, StatusCode};
use axum::response::{IntoResponse, Response};

use secrecy::ExposeSecret;

use super::masking::{CallSettings, Issued, Placeholders};
use super::relay::Forward;
use crate::mcp::{remote, ssrf};
use crate::tenant::credential::CredentialKind;

/// Where the sockets appear inside the sandbox.
pub const INSIDE_DIR: &str = "/run/gateway/net";
/// Where the gateway binary (the relay) appears inside the sandbox.
pub const RELAY: &str = "/opt/gateway/claude-gateway";
/// The CLI's upstream, inside.
pub const UPSTREAM_PORT: u16 = 4000;
/// The egress proxy, inside.
pub const EGRESS_PORT: u16 = 3128;

const UPSTREAM: &str = "upstream.sock";
const EGRESS: &str = "egress.sock";
const BRIDGE: &str = "bridge.sock";

/// What a sandbox needs to use the gateway's network services.
#[derive(Clone)]
pub struct IsolatedNet {
    /// The bridge's loopback port.
    pub bridge_port: u16,
    /// The services behind each run's sockets; `None` only in tests of the command line.
    pub services: Option<Arc<Services>>,
}

impl std::fmt::Debug for IsolatedNet {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("IsolatedNet")
            .field("bridge_port", &self.bridge_port)
            .finish_non_exhaustive()
    }
}

/// Bounds on what one run may hold open on each of its sockets.
#[derive(Debug, Clone, Copy)]
pub struct SocketLimits {
    /// Open connections per socket per run (and open tunnels per run).
    pub max_connections: usize,
    /// Longest a connection may take to send a request's headers, or sit idle between requests.
    pub header_timeout: std::time::Duration,
}

/// The gateway's network services, served on each run's own sockets.
pub struct Services {
    upstream: UpstreamProxy,
    egress: Egress,
    bridge: crate::mcp::bridge::Bridge,
    limits: SocketLimits,
}

/// One run's sockets: served while this lives; dropping it closes them and every connection.
pub struct RunNet {
    cancel: tokio_util::sync::CancellationToken,
    observed: Arc<Observed>,
}

impl RunNet {
    /// What the upstream proxy saw of this run's calls.
    pub fn observed(&self) -> Arc<Observed> {
        self.observed.clone()
    }
}

impl Drop for RunNet {
    fn drop(&mut self) {
        self.cancel.cancel();
    }
}

impl IsolatedNet {
    /// The relay's forwards, as the sandbox sees them.
    pub fn forwards(&self) -> Vec<Forward> {
        let inside = |name: &str| Path::new(INSIDE_DIR).join(name);
        let local = |port| SocketAddr::from(([127, 0, 0, 1], port));
        vec![
            Forward {
                listen: local(UPSTREAM_PORT),
                socket: inside(UPSTREAM),
            },
            Forward {
                listen: local(EGRESS_PORT),
                socket: inside(EGRESS),
            },
            Forward {
                listen: local(self.bridge_port),
                socket: inside(BRIDGE),
            },
        ]
    }

    /// The environment a sandboxed program gets instead of the host's network settings.
    pub fn environment(&self) -> Vec<(&'static str, std::ffi::OsString)> {
        let proxy = format!("http://127.0.0.1:{EGRESS_PORT}");
        let mut env = vec![(
            "ANTHROPIC_BASE_URL",
            format!("http://127.0.0.1:{UPSTREAM_PORT}").into(),
        )];
        for name in ["HTTPS_PROXY", "https_proxy", "HTTP_PROXY", "http_proxy"] {
            env.push((name, proxy.clone().into()));
        }
        // The upstream and the bridge are reached directly, on the relay's ports.
        for name in ["NO_PROXY", "no_proxy"] {
            env.push((name, "127.0.0.1,localhost".into()));
        }
        env
    }
}

fn bind_unix(path: &Path) -> std::io::Result<tokio::net::UnixListener> {
    match std::fs::remove_file(path) {
        Err(e) if e.kind() != std::io::ErrorKind::NotFound => return Err(e),
        _ => {}
    }
    tokio::net::UnixListener::bind(path)
}

/// The isolated network's services: each run's sockets are opened with [`IsolatedNet::open_run`].
pub fn isolated(
    upstream: &UpstreamProxy,
    egress: Egress,
    bridge: &crate::mcp::bridge::Bridge,
    limits: SocketLimits,
) -> IsolatedNet {
    IsolatedNet {
        bridge_port: bridge.port(),
        services: Some(Arc::new(Services {
            upstream: upstream.clone(),
            egress,
            bridge: bridge.clone(),
            limits,
        })),
    }
}

impl IsolatedNet {
    /// Serves a run's three sockets in `dir` (created 0700), until the returned [`RunNet`] is
    /// dropped; `tenant` names the run in what the gateway logs about it.
    pub fn open_run(&self, dir: &Path, tenant: &str) -> std::io::Result<RunNet> {
        std::os::unix::fs::DirBuilderExt::mode(std::fs::DirBuilder::new().recursive(true), 0o700)
            .create(dir)?;
        let cancel = tokio_util::sync::CancellationToken::new();
        let observed = Arc::new(Observed::default());
        let Some(services) = &self.services else {
            return Ok(RunNet { cancel, observed });
        };
        let limits = services.limits;
        let egress = axum::Router::new()
            .fallback(tunnel)
            .with_state(Arc::new(RunEgress {
                egress: services.egress.clone(),
                tenant: tenant.to_owned(),
                tunnels: Arc::new(tokio::sync::Semaphore::new(limits.max_connections)),
                cancel: cancel.clone(),
            }));
        for (name, router) in [
            (
                UPSTREAM,
                services.upstream.router_observed(Some(observed.clone())),
            ),
            (EGRESS, egress),
            (BRIDGE, services.bridge.router()),
        ] {
            let listener = bind_unix(&dir.join(name))?;
            tokio::spawn(serve_bounded(
                listener,
                router,
                limits,
                cancel.clone(),
                name,
            ));
        }
        Ok(RunNet { cancel, observed })
    }
}

/// Serves `router` on one run's socket within `limits`, until `cancel`.
async fn serve_bounded(
    listener: tokio::net::UnixListener,
    router: axum::Router,
    limits: SocketLimits,
    cancel: tokio_util::sync::CancellationToken,
    socket: &'static str,
) {
    use hyper_util::rt::{TokioExecutor, TokioIo, TokioTimer};
    let mut builder = hyper_util::server::conn::auto::Builder::new(TokioExecutor::new());
    builder
        .http1()
        .timer(TokioTimer::new())
        .header_read_timeout(limits.header_timeout)
        .max_headers(crate::serve::MAX_HEADERS)
        .max_buf_size(crate::serve::MAX_HEADER_BYTES);
    let open = Arc::new(tokio::sync::Semaphore::new(limits.max_connections));
    loop {
        let stream = tokio::select! {
            accepted = listener.accept() => match accepted {
                Ok((stream, _)) => stream,
                Err(e) => {
                    tracing::warn!(error = %e, socket, "accepting a sandbox connection failed");
                    tokio::time::sleep(std::time::Duration::from_millis(50)).await;
                    continue;
                }
            },
            () = cancel.cancelled() => return,
        };
        let Ok(permit) = open.clone().try_acquire_owned() else {
            ::metrics::counter!("gateway_sandbox_connections_refused_total", "socket" => socket)
                .increment(1);
            continue;
        };
        let service = hyper_util::service::TowerToHyperService::new(router.clone());
        let connection = builder
            .serve_connection_with_upgrades(TokioIo::new(stream), service)
            .into_owned();
        let cancel = cancel.clone();
        tokio::spawn(async move {
            tokio::select! {
                _ = connection => {}
                () = cancel.cancelled() => {}
            }
            drop(permit);
        });
    }
}

/// The CLI's only way to the model: a reverse proxy to `ANTHROPIC_BASE_URL` that swaps the
/// tenant's real credential in for the run's placeholder ([`super::masking`]).
#[derive(Clone)]
pub struct UpstreamProxy {
    inner: Arc<Upstream>,
}

struct Upstream {
    base: String,
    client: reqwest::Client,
    placeholders: Arc<Placeholders>,
    /// Where what the upstream reports of each tenant's limits is kept.
    quota: Arc<crate::quota::QuotaStore>,
}

impl UpstreamProxy {
    pub fn new(
        base_url: &str,
        placeholders: Arc<Placeholders>,
        quota: Arc<crate::quota::QuotaStore>,
    ) -> std::io::Result<Self> {
        Ok(Self {
            inner: Arc::new(Upstream {
                base: base_url.trim_end_matches('/').to_owned(),
                client: crate::tls::client_builder()
                    .redirect(reqwest::redirect::Policy::none())
                    .build()
                    .map_err(std::io::Error::other)?,
                placeholders,
                quota,
            }),
        })
    }

    pub fn router(&self) -> axum::Router {
        self.router_observed(None)
    }

    /// Sends one API call of the gateway's own to the upstream with `credential` (the
    /// tenant's real one) and hands the answer back as it came; only the API's own headers of
    /// the client's request go along. `None` when the upstream cannot be reached (logged).
    pub async fn call(
        &self,
        credential: &crate::tenant::credential::Credential,
        path: &str,
        headers: &axum::http::HeaderMap,
        body: axum::body::Bytes,
    ) -> Option<Response> {
        let mut outgoing = self
            .inner
            .client
            .post(format!("{}{path}", self.inner.base))
            .header(axum::http::header::CONTENT_TYPE, "application/json")
            .body(body);
        for name in ["anthropic-version", "anthropic-beta"] {
            for value in headers.get_all(name) {
                outgoing = outgoing.header(name, value);
            }
        }
        if !headers.contains_key("anthropic-version") {
            outgoing = outgoing.header("anthropic-version", "2023-06-01");
        }
        match credential.authorize(outgoing).send().await {
            Ok(res) => answer_head(&res)
                .body(Body::from_stream(res.bytes_stream()))
                .ok(),
            Err(e) => {
                tracing::warn!(error = %remote::describe(&e), "the upstream could not be reached");
                None
            }
        }
    }

    /// The proxy for one run, noting what the upstream said that the CLI does not report.
    fn router_observed(&self, observed: Option<Arc<Observed>>) -> axum::Router {
        axum::Router::new()
            .fallback(forward_upstream)
            .with_state(UpstreamRun {
                up: self.inner.clone(),
                observed,
            })
    }

    /// Serves the proxy on a loopback port, for runs that share the host's network (or have
    /// no sandbox): their `ANTHROPIC_BASE_URL`.
    pub async fn serve_loopback(&self) -> std::io::Result<SocketAddr> {
        let listener = tokio::net::TcpListener::bind((std::net::Ipv4Addr::LOCALHOST, 0)).await?;
        let addr = listener.local_addr()?;
        let app = self.router();
        tokio::spawn(async move {
            let _ = axum::serve(listener, app).await;
        });
        Ok(addr)
    }
}

fn hop_by_hop(name: &HeaderName) -> bool {
    matches!(
        name.as_str(),
        "host"
            | "connection"
            | "keep-alive"
            | "proxy-connection"
            | "proxy-authorization"
            | "te"
            | "trailer"
            | "transfer-encoding"
            | "upgrade"
            | "content-length"
    )
}

/// What the upstream proxy saw of one run's calls that the CLI does not pass on.
#[derive(Debug, Default)]
pub struct Observed {
    retry_after: std::sync::Mutex<Option<u64>>,
    /// The limit of the credential's own that the run's last refused call was refused for.
    refusal: std::sync::Mutex<Option<crate::quota::Refusal>>,
    usage: Arc<std::sync::Mutex<super::usage::UpstreamUsage>>,
}

impl Observed {
    /// The usage the upstream reported for the process's model calls since this was last
    /// asked, if any were read: a live process serves several turns, and each counts its own.
    pub fn take_usage(&self) -> Option<super::usage::UpstreamUsage> {
        let usage = std::mem::take(&mut *self.usage.lock().unwrap_or_else(|e| e.into_inner()));
        (usage.calls > 0).then_some(usage)
    }

    /// The limit of the credential's own (as the upstream's headers named it) that the run's
    /// last refused call was refused for.
    pub fn refusal(&self) -> Option<crate::quota::Refusal> {
        self.refusal
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .clone()
    }

    /// The `retry-after` (seconds) of the run's last refused upstream call.
    pub fn retry_after(&self) -> Option<u64> {
        *self.retry_after.lock().unwrap_or_else(|e| e.into_inner())
    }
}

#[derive(Clone)]
struct UpstreamRun {
    up: Arc<Upstream>,
    observed: Option<Arc<Observed>>,
}

/// Passes a CLI request to the upstream with the real credential swapped in, and streams the
/// answer back unchanged (noting, for the run, what the CLI does not report).
async fn forward_upstream(State(run): State<UpstreamRun>, request: Request) -> Response {
    let up = &run.up;
    let path = request
        .uri()
        .path_and_query()
        .map_or("/", |p| p.as_str())
        .to_owned();
    let (mut parts, body) = request.into_parts();
    // The run holds a placeholder; only the gateway knows what it stands for. A credential
    // the gateway did not issue (or whose run has ended) goes no further.
    let issued = match crate::tenant::credential::presented(&parts.headers) {
        None => None,
        Some(placeholder) => match up.placeholders.resolve(placeholder) {
            Some(issued) => Some(issued),
            None => {
                return (
                    StatusCode::UNAUTHORIZED,
                    axum::Json(serde_json::json!({"type": "error", "error": {
                        "type": "authentication_error",
                        "message": "this credential was not issued for a running request"}})),
                )
                    .into_response()
            }
        },
    };
    let model_call = path == "/v1/messages" || path.starts_with("/v1/messages?");
    let body = match issued.as_ref().map(|i| &i.call) {
        Some(call) if model_call && !call.is_empty() => {
            parts.headers.remove(axum::http::header::CONTENT_LENGTH);
            match with_call_settings(body, call).await {
                Ok(bytes) => reqwest::Body::from(bytes),
                Err(status) => return status.into_response(),
            }
        }
        _ => reqwest::Body::wrap_stream(body.into_data_stream()),
    };
    let mut outgoing = up
        .client
        .request(parts.method, format!("{}{path}", up.base))
        .body(body);
    for (name, value) in &parts.headers {
        if !hop_by_hop(name) && name != axum::http::header::AUTHORIZATION && name != "x-api-key" {
            outgoing = outgoing.header(name, value);
        }
    }
    if let Some(Issued { credential, .. }) = &issued {
        let secret = credential.secret().expose_secret();
        outgoing = match credential.kind() {
            CredentialKind::OAuthToken => outgoing.bearer_auth(secret),
            CredentialKind::ApiKey => outgoing.header("x-api-key", secret),
        };
    }
    match outgoing.send().await {
        Ok(res) => {
            // What the answer says of the credential's limits is its tenant's quota view.
            let limits = issued.as_ref().zip(crate::quota::Snapshot::from_headers(
                res.headers(),
                crate::clock::now_secs(),
            ));
            if let Some((issued, snapshot)) = limits {
                if let (Some(observed), false) = (&run.observed, res.status().is_success()) {
                    *observed.refusal.lock().unwrap_or_else(|e| e.into_inner()) =
                        snapshot.refusal();
                }
                up.quota.record(&issued.tenant, snapshot);
            }
            if let Some(observed) = &run.observed {
                let retry_after = res
                    .headers()
                    .get("retry-after")
                    .and_then(|v| v.to_str().ok())
                    .and_then(|v| v.trim().parse::<u64>().ok());
                if retry_after.is_some() || !res.status().is_success() {
                    *observed
                        .retry_after
                        .lock()
                        .unwrap_or_else(|e| e.into_inner()) = retry_after;
                }
            }
            let answer = answer_head(&res);
            // A model call's answer is read on its way for the usage the upstream reports.
            let body = match (&run.observed, model_call && res.status().is_success()) {
                (Some(observed), true) => {
                    let event_stream = res
                        .headers()
                        .get(axum::http::header::CONTENT_TYPE)
                        .and_then(|v| v.to_str().ok())
                        .is_some_and(|t| t.starts_with("text/event-stream"));
                    let mut scanner =
                        super::usage::Scanner::new(observed.usage.clone(), event_stream);
                    Body::from_stream(futures::StreamExt::map(res.bytes_stream(), move |chunk| {
                        if let Ok(bytes) = &chunk {
                            scanner.feed(bytes);
                        }
                        chunk
                    }))
                }
                _ => Body::from_stream(res.bytes_stream()),
            };
            answer
                .body(body)
                .unwrap_or_else(|_| StatusCode::BAD_GATEWAY.into_response())
        }
        // Logged with its cause; the run (and through it, the client) learns only that the
        // upstream was unreachable, not where the gateway's upstream is.
        Err(e) => {
            tracing::warn!(error = %remote::describe(&e), "the upstream could not be reached");
            (
                StatusCode::BAD_GATEWAY,
                "the gateway could not reach the upstream",
            )
                .into_response()
        }
    }
}

/// The status and end-to-end headers of an upstream answer, as the proxy hands it on.
fn answer_head(res: &reqwest::Response) -> axum::http::response::Builder {
    let mut answer = Response::builder().status(res.status());
    for (name, value) in res.headers() {
        if !hop_by_hop(name) {
            answer = answer.header(name, value);
        }
    }
    answer
}

/// The largest model call body the proxy rewrites (the gateway's own body limit is 32 MiB;
/// the CLI's call adds its tools and system prompt).
const MAX_CALL_BODY: usize = 64 << 20;

/// A model call's body with the run's call settings set on it.
async fn with_call_settings(body: Body, call: &CallSettings) -> Result<Vec<u8>, StatusCode> {
    let bytes = axum::body::to_bytes(body, MAX_CALL_BODY)
        .await
        .map_err(|_| StatusCode::PAYLOAD_TOO_LARGE)?;
    let mut value: serde_json::Value =
        serde_json::from_slice(&bytes).map_err(|_| StatusCode::BAD_REQUEST)?;
    let Some(object) = value.as_object_mut() else {
        return Err(StatusCode::BAD_REQUEST);
    };
    for (name, setting) in call {
        object.insert(name.clone(), setting.clone());
    }
    serde_json::to_vec(&value).map_err(|_| StatusCode::INTERNAL_SERVER_ERROR)
}

/// What the egress proxy lets a sandbox's tools reach.
#[derive(Debug, Clone)]
pub struct Egress {
    /// The only ports a tunnel may go to.
    pub ports: Vec<u16>,
    /// Longest a tunnel's connection to its target may take to open.
    pub connect_timeout: std::time::Duration,
    /// The host's own addresses (every interface's, public ones included): never a target,
    /// or a sandbox could reach the host's services on them.
    pub own_addresses: Vec<std::net::IpAddr>,
}

impl Egress {
    /// The egress policy for `ports`, with the host's own addresses as found now.
    pub fn new(ports: Vec<u16>, connect_timeout: std::time::Duration) -> Self {
        let own_addresses = nix::ifaddrs::getifaddrs()
            .map(|addrs| {
                addrs
                    .filter_map(|a| a.address)
                    .filter_map(|a| {
                        a.as_sockaddr_in()
                            .map(|v4| std::net::IpAddr::V4(v4.ip()))
                            .or_else(|| a.as_sockaddr_in6().map(|v6| std::net::IpAddr::V6(v6.ip())))
                    })
                    .collect()
            })
            .unwrap_or_default();
        Self {
            ports,
            connect_timeout,
            own_addresses,
        }
    }
}

/// Where a tunnel may go: the addresses of `host:port` if the port is allowed and every
/// address passes the policy.
pub async fn tunnel_target(
    egress: &Egress,
    host: &str,
    port: u16,
) -> Result<Vec<SocketAddr>, String> {
    if !egress.ports.contains(&port) {
        return Err(format!("port {port} is not open to sandboxes"));
    }
    let host = host.trim_start_matches('[').trim_end_matches(']');
    let url = if host.contains(':') {
        format!("https://[{host}]:{port}/")
    } else {
        format!("https://{host}:{port}/")
    };
    let (_, target) = ssrf::check_url(&url, &[]).map_err(|r| r.to_string())?;
    let addrs = match target {
        ssrf::Target::Ip(ip) => vec![SocketAddr::new(ip, port)],
        ssrf::Target::Name(name) => {
            let addrs: Vec<SocketAddr> = tokio::net::lookup_host((name.as_str(), port))
                .await
                .map_err(|e| format!("{name}: {e}"))?
                .collect();
            remote::judge_resolved(&name, addrs, &[]).map_err(|e| e.to_string())?
        }
    };
    if let Some(own) = addrs
        .iter()
        .find(|a| egress.own_addresses.contains(&a.ip()))
    {
        return Err(format!("{} is this host's own address", own.ip()));
    }
    Ok(addrs)
}

/// One run's view of the egress proxy: its tenant (for the log), its tunnels, its end.
struct RunEgress {
    egress: Egress,
    tenant: String,
    tunnels: Arc<tokio::sync::Semaphore>,
    cancel: tokio_util::sync::CancellationToken,
}

/// Counts and logs a refused tunnel: what a sandbox tried is worth an operator's attention.
fn refuse_tunnel(tenant: &str, reason: String) -> Response {
    tracing::warn!(tenant, %reason, "egress refused");
    ::metrics::counter!("gateway_egress_refusals_total").increment(1);
    (StatusCode::FORBIDDEN, format!("refused: {reason}\n")).into_response()
}

/// `CONNECT host:port`: judged, connected, then spliced.
async fn tunnel(State(run): State<Arc<RunEgress>>, request: Request) -> Response {
    let egress = &run.egress;
    if request.method() != Method::CONNECT {
        return (
            StatusCode::METHOD_NOT_ALLOWED,
            "this proxy tunnels HTTPS (CONNECT) only\n",
        )
            .into_response();
    }
    let Some((host, port)) = request
        .uri()
        .authority()
        .map(|a| (a.host().to_owned(), a.port_u16().unwrap_or(443)))
    else {
        return (StatusCode::BAD_REQUEST, "CONNECT needs host:port\n").into_response();
    };
    let addrs = match tunnel_target(egress, &host, port).await {
        Ok(addrs) => addrs,
        Err(reason) => return refuse_tunnel(&run.tenant, reason),
    };
    let Ok(permit) = run.tunnels.clone().try_acquire_owned() else {
        return refuse_tunnel(&run.tenant, "too many open tunnels for one run".into());
    };
    let connect = tokio::net::TcpStream::connect(&addrs[..]);
    let mut target = match tokio::time::timeout(egress.connect_timeout, connect).await {
        Ok(Ok(stream)) => stream,
        Ok(Err(e)) => return (StatusCode::BAD_GATEWAY, format!("{e}\n")).into_response(),
        Err(_) => {
            return (
                StatusCode::GATEWAY_TIMEOUT,
                "the target did not answer in time\n",
            )
                .into_response()
        }
    };
    let upgrade = hyper::upgrade::on(request);
    let cancel = run.cancel.clone();
    tokio::spawn(async move {
        if let Ok(upgraded) = upgrade.await {
            let mut client = hyper_util::rt::TokioIo::new(upgraded);
            // A tunnel ends with its run, and holds one of the run's tunnel slots till then.
            tokio::select! {
                _ = tokio::io::copy_bidirectional(&mut client, &mut target) => {}
                () = cancel.cancelled() => {}
            }
        }
        drop(permit);
    });
    StatusCode::OK.into_response()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn egress() -> Egress {
        Egress {
            ports: vec![443],
            connect_timeout: std::time::Duration::from_secs(1),
            own_addresses: Vec::new(),
        }
    }

    #[tokio::test]
    async fn the_hosts_own_public_address_is_not_a_target() {
        // Judged before any connection: nothing leaves this machine.
        let mut egress = egress();
        egress.own_addresses = vec!["93.184.216.34".parse().expect("ip")];
        let refused = tunnel_target(&egress, "93.184.216.34", 443).await;
        assert!(refused.is_err_and(|r| r.contains("own address")));
        assert!(tunnel_target(&egress, "93.184.216.35", 443).await.is_ok());
        // Every interface's address is found at start (loopback at least).
        let found = Egress::new(vec![443], std::time::Duration::from_secs(1));
        assert!(found.own_addresses.iter().any(|a| a.is_loopback()));
    }

    #[tokio::test]
    async fn tunnels_go_only_to_allowed_ports() {
        // Judged before any look-up or connection: nothing leaves this machine.
        for port in [25, 22, 80, 6379] {
            let refused = tunnel_target(&egress(), "93.184.216.34", port).await;
            assert!(refused.is_err_and(|r| r.contains("not open")), "{port}");
        }
    }

    #[tokio::test]
    async fn tunnels_go_only_to_public_addresses() {
        assert!(tunnel_target(&egress(), "93.184.216.34", 443).await.is_ok());
        assert!(tunnel_target(&egress(), "[2606:2800:220:1::1]", 443)
            .await
            .is_ok());
        for refused in [
            "127.0.0.1",
            "2130706433",
            "0x7f.1",
            "[::1]",
            "[::ffff:127.0.0.1]",
            "169.254.169.254",
            "metadata.google.internal",
            "localhost",
            "10.0.0.1",
            "192.168.1.1",
            "[fd00::1]",
        ] {
            assert!(
                tunnel_target(&egress(), refused, 443).await.is_err(),
                "{refused}"
            );
        }
    }

    #[test]
    fn inside_the_sandbox_the_upstream_and_the_bridge_are_local_ports() {
        let net = IsolatedNet {
            bridge_port: 41000,
            services: None,
        };
        let forwards: Vec<String> = net.forwards().iter().map(|f| f.to_string()).collect();
        assert_eq!(
            forwards,
            [
                "127.0.0.1:4000=/run/gateway/net/upstream.sock",
                "127.0.0.1:3128=/run/gateway/net/egress.sock",
                "127.0.0.1:41000=/run/gateway/net/bridge.sock",
            ]
        );
        let env = net.environment();
        assert!(env
            .iter()
            .any(|(k, v)| *k == "ANTHROPIC_BASE_URL" && v == "http://127.0.0.1:4000"));
        assert!(env
            .iter()
            .any(|(k, v)| *k == "HTTPS_PROXY" && v == "http://127.0.0.1:3128"));
    }
}
