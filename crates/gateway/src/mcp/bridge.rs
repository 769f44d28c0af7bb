//! The local bridge through which a CLI run reaches its remote MCP servers.
//!
//! The gateway connects to each remote server itself ([`super::remote`]), so the address policy
//! holds for every connection, and offers it to the run as a streamable-HTTP MCP server on a
//! loopback-only listener: one route per server per run, behind a random per-route secret that
//! only that run's private MCP config holds. The remote's own credentials never enter the
//! sandbox. A route lives exactly as long as its [`Lease`], which the run's process holds.

use std::collections::HashMap;
use std::net::SocketAddr;
use std::sync::{Arc, Mutex};

use axum::extract::{Path, Request, State};
use axum::response::{IntoResponse, Response};
use rmcp::model::{
    CallToolRequestParams, CallToolResponse, GetPromptRequestParams, GetPromptResponse,
    ListPromptsResult, ListResourceTemplatesResult, ListResourcesResult, ListToolsResult,
    PaginatedRequestParams, ReadResourceRequestParams, ReadResourceResponse, ServerCapabilities,
    ServerConfig, ServerPeerInfo,
};
use rmcp::service::{RequestContext, ServiceError};
use rmcp::transport::streamable_http_server::session::local::LocalSessionManager;
use rmcp::transport::streamable_http_server::{StreamableHttpServerConfig, StreamableHttpService};
use rmcp::{ErrorData, Peer, RoleClient, RoleServer, ServerHandler};
use secrecy::{ExposeSecret, SecretString};
use sha2::{Digest, Sha256};
use tokio_util::sync::CancellationToken;

use super::remote::{describe, RemoteClient};

type Service = StreamableHttpService<Proxy, LocalSessionManager>;

#[derive(Clone)]
struct Route {
    secret_digest: [u8; 32],
    service: Service,
}

type Routes = Arc<Mutex<HashMap<String, Route>>>;

/// The bridge's listener and its routes. Cheap to clone.
#[derive(Clone)]
pub struct Bridge {
    base: String,
    port: u16,
    routes: Routes,
}

impl std::fmt::Debug for Bridge {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Bridge").field("base", &self.base).finish()
    }
}

/// One remote server as a run sees it.
pub struct Offered {
    pub url: String,
    /// Sent by the CLI as `Authorization: Bearer …`; lives only in the run's private config.
    pub secret: SecretString,
    pub lease: Lease,
}

/// Keeps a route and its remote connection open; dropping it closes both.
pub struct Lease {
    id: String,
    routes: Routes,
    sessions: CancellationToken,
    _client: RemoteClient,
}

impl Drop for Lease {
    fn drop(&mut self) {
        if let Ok(mut routes) = self.routes.lock() {
            routes.remove(&self.id);
        }
        self.sessions.cancel();
    }
}

fn digest(secret: &str) -> [u8; 32] {
    Sha256::digest(secret.as_bytes()).into()
}

fn random_hex(bytes: usize) -> String {
    let mut buf = vec![0u8; bytes];
    rand::RngCore::fill_bytes(&mut rand::rngs::OsRng, &mut buf);
    hex::encode(buf)
}

impl Bridge {
    /// Listens on `listen` (a loopback address) and serves routes until the process ends.
    pub async fn start(listen: SocketAddr) -> std::io::Result<Self> {
        let listener = tokio::net::TcpListener::bind(listen).await?;
        let addr = listener.local_addr()?;
        let bridge = Self {
            base: format!("http://{addr}"),
            port: addr.port(),
            routes: Arc::default(),
        };
        let app = bridge.router();
        tokio::spawn(async move {
            if let Err(e) = axum::serve(listener, app).await {
                tracing::error!(error = %e, "the MCP bridge stopped");
            }
        });
        Ok(bridge)
    }

    pub fn router(&self) -> axum::Router {
        axum::Router::new()
            .route("/mcp/{id}", axum::routing::any(serve_route))
            .with_state(self.routes.clone())
    }

    /// The loopback port the bridge listens on.
    pub fn port(&self) -> u16 {
        self.port
    }

    /// How many remote servers are offered right now.
    pub fn len(&self) -> usize {
        self.routes.lock().map_or(0, |r| r.len())
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// Offers a connected remote server on a new route.
    pub fn offer(&self, client: RemoteClient) -> Offered {
        let id = random_hex(16);
        let secret = random_hex(32);
        let proxy = Proxy::new(client.peer().clone(), client.peer_info().as_deref());
        let sessions = CancellationToken::new();
        let service = StreamableHttpService::new(
            move || Ok(proxy.clone()),
            Arc::new(LocalSessionManager::default()),
            StreamableHttpServerConfig::default().with_cancellation_token(sessions.clone()),
        );
        if let Ok(mut routes) = self.routes.lock() {
            routes.insert(
                id.clone(),
                Route {
                    secret_digest: digest(&secret),
                    service,
                },
            );
        }
        Offered {
            url: format!("{}/mcp/{id}", self.base),
            secret: secret.into(),
            lease: Lease {
                id,
                routes: self.routes.clone(),
                sessions,
                _client: client,
            },
        }
    }
}

async fn serve_route(
    State(routes): State<Routes>,
    Path(id): Path<String>,
    mut request: Request,
) -> Response {
    let route = routes.lock().ok().and_then(|r| r.get(&id).cloned());
    let Some(route) = route else {
        return axum::http::StatusCode::NOT_FOUND.into_response();
    };
    let presented = request
        .headers()
        .get(axum::http::header::AUTHORIZATION)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.strip_prefix("Bearer "))
        .map(digest);
    // Digests are compared, so timing says nothing about the secret.
    if presented != Some(route.secret_digest) {
        return axum::http::StatusCode::UNAUTHORIZED.into_response();
    }
    request
        .headers_mut()
        .remove(axum::http::header::AUTHORIZATION);
    match tower::ServiceExt::oneshot(route.service, request).await {
        Ok(response) => response.map(axum::body::Body::new),
        Err(never) => match never {},
    }
}

/// Serves the CLI's requests by asking the remote server.
#[derive(Clone)]
struct Proxy {
    remote: Peer<RoleClient>,
    info: ServerConfig,
}

impl Proxy {
    fn new(remote: Peer<RoleClient>, remote_info: Option<&ServerPeerInfo>) -> Self {
        // Only what is forwarded is advertised: tools, prompts and resources (no subscriptions,
        // no change notifications, no tasks).
        let mut capabilities = ServerCapabilities::default();
        if let Some(remote) = remote_info.map(|i| &i.capabilities) {
            capabilities.tools = remote.tools.clone().map(|mut t| {
                t.list_changed = None;
                t
            });
            capabilities.prompts = remote.prompts.clone().map(|mut p| {
                p.list_changed = None;
                p
            });
            capabilities.resources = remote.resources.clone().map(|mut r| {
                r.list_changed = None;
                r.subscribe = None;
                r
            });
        }
        let mut info = ServerConfig::new(capabilities);
        if let Some(remote) = remote_info {
            if let Some(server_info) = &remote.server_info {
                info.server_info = server_info.clone();
            }
            info.instructions = remote.instructions.clone();
        }
        Self { remote, info }
    }
}

fn forwarded(error: ServiceError) -> ErrorData {
    match error {
        ServiceError::McpError(e) => e,
        other => ErrorData::internal_error(
            format!("the remote MCP server failed: {}", describe(&other)),
            None,
        ),
    }
}

impl ServerHandler for Proxy {
    fn get_info(&self) -> ServerConfig {
        self.info.clone()
    }

    async fn list_tools(
        &self,
        request: Option<PaginatedRequestParams>,
        _: RequestContext<RoleServer>,
    ) -> Result<ListToolsResult, ErrorData> {
        self.remote.list_tools(request).await.map_err(forwarded)
    }

    async fn call_tool(
        &self,
        request: CallToolRequestParams,
        _: RequestContext<RoleServer>,
    ) -> Result<CallToolResponse, ErrorData> {
        self.remote.call_tool_once(request).await.map_err(forwarded)
    }

    async fn list_prompts(
        &self,
        request: Option<PaginatedRequestParams>,
        _: RequestContext<RoleServer>,
    ) -> Result<ListPromptsResult, ErrorData> {
        self.remote.list_prompts(request).await.map_err(forwarded)
    }

    async fn get_prompt(
        &self,
        request: GetPromptRequestParams,
        _: RequestContext<RoleServer>,
    ) -> Result<GetPromptResponse, ErrorData> {
        self.remote
            .get_prompt(request)
            .await
            .map(Into::into)
            .map_err(forwarded)
    }

    async fn list_resources(
        &self,
        request: Option<PaginatedRequestParams>,
        _: RequestContext<RoleServer>,
    ) -> Result<ListResourcesResult, ErrorData> {
        self.remote.list_resources(request).await.map_err(forwarded)
    }

    async fn list_resource_templates(
        &self,
        request: Option<PaginatedRequestParams>,
        _: RequestContext<RoleServer>,
    ) -> Result<ListResourceTemplatesResult, ErrorData> {
        self.remote
            .list_resource_templates(request)
            .await
            .map_err(forwarded)
    }

    async fn read_resource(
        &self,
        request: ReadResourceRequestParams,
        _: RequestContext<RoleServer>,
    ) -> Result<ReadResourceResponse, ErrorData> {
        self.remote
            .read_resource(request)
            .await
            .map(Into::into)
            .map_err(forwarded)
    }
}

impl Offered {
    /// The server's entry in the CLI's `--mcp-config`.
    pub fn cli_entry(&self) -> serde_json::Value {
        serde_json::json!({
            "type": "http",
            "url": self.url,
            "headers": {"Authorization": format!("Bearer {}", self.secret.expose_secret())},
        })
    }
}
