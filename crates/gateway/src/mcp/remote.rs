//! Connecting to remote MCP servers. Only the gateway connects to them (the CLI reaches them
//! through [`super::bridge`]), so the address policy holds at the moment of every connection:
//! each name is judged by every address it resolves to when the connection is made (DNS
//! rebinding gains nothing), every redirect is judged before it is followed and must stay on the
//! server's origin, and literal addresses are judged before anything is sent.
//!
//! Streamable HTTP uses `rmcp`'s client; the older HTTP+SSE transport (a `GET` event stream
//! announcing a `POST` endpoint), which `rmcp` no longer ships, is a small transport here.

use std::collections::HashMap;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use futures::{SinkExt, StreamExt};
use http::{HeaderMap, HeaderName, HeaderValue};
use rmcp::model::{ClientJsonRpcMessage, ServerJsonRpcMessage};
use rmcp::service::RunningService;
use rmcp::transport::streamable_http_client::StreamableHttpClientTransportConfig;
use rmcp::transport::StreamableHttpClientTransport;
use rmcp::{RoleClient, ServiceExt};
use url::Url;

use super::config::{RemoteConfig, Transport};
use super::ssrf::{self, Refusal};

/// A connected remote server, as an MCP client session.
pub type RemoteClient = RunningService<RoleClient, ()>;

/// The most bytes one server-sent event may hold before the stream is dropped.
const MAX_EVENT_BYTES: usize = 16 * 1024 * 1024;
const MAX_REDIRECTS: usize = 3;

#[derive(Debug, thiserror::Error)]
pub enum ConnectError {
    #[error("refused: {0}")]
    Refused(Refusal),
    /// The address policy stopped a connection or a redirect.
    #[error("{0}")]
    Blocked(String),
    #[error("{0}")]
    Failed(String),
    #[error("no answer within {0} s")]
    Timeout(u64),
}

/// Why a connection was not made; carried through reqwest's error chain.
#[derive(Debug, thiserror::Error)]
pub enum Blocked {
    #[error("{host} resolves to a refused address: {refusal}")]
    Resolved { host: String, refusal: Refusal },
    #[error("{host} does not resolve to any address")]
    Unresolved { host: String },
    #[error("redirect to {url} refused: {refusal}")]
    Redirect { url: String, refusal: Refusal },
    #[error("redirect to {0} refused: redirects must stay on the server's origin")]
    CrossOrigin(String),
    #[error("more than {MAX_REDIRECTS} redirects")]
    TooManyRedirects,
}

/// Looks names up; the system resolver in production, a table in tests.
pub trait Lookup: Send + Sync + 'static {
    fn lookup(
        &self,
        host: &str,
    ) -> futures::future::BoxFuture<'static, std::io::Result<Vec<SocketAddr>>>;
}

struct SystemLookup;

impl Lookup for SystemLookup {
    fn lookup(
        &self,
        host: &str,
    ) -> futures::future::BoxFuture<'static, std::io::Result<Vec<SocketAddr>>> {
        let host = host.to_owned();
        Box::pin(async move { Ok(tokio::net::lookup_host((host.as_str(), 0)).await?.collect()) })
    }
}

/// Judges what a name resolved to: every address must pass, so a name that mixes a public and a
/// private address (a rebinding trick) is refused as a whole.
pub fn judge_resolved(
    host: &str,
    addrs: Vec<SocketAddr>,
    allowed_hosts: &[String],
) -> Result<Vec<SocketAddr>, Blocked> {
    if addrs.is_empty() {
        return Err(Blocked::Unresolved { host: host.into() });
    }
    if !ssrf::host_allowed(host, allowed_hosts) {
        for addr in &addrs {
            ssrf::check_ip(addr.ip()).map_err(|refusal| Blocked::Resolved {
                host: host.into(),
                refusal,
            })?;
        }
    }
    Ok(addrs)
}

struct PolicyResolver {
    allowed_hosts: Arc<[String]>,
    lookup: Arc<dyn Lookup>,
}

impl reqwest::dns::Resolve for PolicyResolver {
    fn resolve(&self, name: reqwest::dns::Name) -> reqwest::dns::Resolving {
        let host = name.as_str().to_owned();
        let allowed = self.allowed_hosts.clone();
        let lookup = self.lookup.lookup(&host);
        Box::pin(async move {
            let addrs = lookup.await?;
            let addrs = judge_resolved(&host, addrs, &allowed)?;
            Ok(Box::new(addrs.into_iter()) as reqwest::dns::Addrs)
        })
    }
}

/// Judges one redirect hop: the address policy first (the more useful reason), then the origin.
pub fn judge_redirect(from: &Url, to: &Url, allowed_hosts: &[String]) -> Result<(), Blocked> {
    ssrf::check_url(to.as_str(), allowed_hosts).map_err(|refusal| Blocked::Redirect {
        url: to.to_string(),
        refusal,
    })?;
    if from.origin() != to.origin() {
        return Err(Blocked::CrossOrigin(to.to_string()));
    }
    Ok(())
}

/// Connects to remote MCP servers under the gateway's address policy. Cheap to clone.
#[derive(Clone)]
pub struct Connector {
    client: reqwest::Client,
    allowed_hosts: Arc<[String]>,
    timeout: Duration,
}

impl std::fmt::Debug for Connector {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Connector")
            .field("allowed_hosts", &self.allowed_hosts)
            .finish_non_exhaustive()
    }
}

impl Connector {
    pub fn new(allowed_hosts: &[String], timeout: Duration) -> Self {
        Self::with_lookup(allowed_hosts, timeout, Arc::new(SystemLookup))
    }

    pub fn with_lookup(
        allowed_hosts: &[String],
        timeout: Duration,
        lookup: Arc<dyn Lookup>,
    ) -> Self {
        let allowed_hosts: Arc<[String]> = allowed_hosts.into();
        let for_redirects = allowed_hosts.clone();
        let redirect = reqwest::redirect::Policy::custom(move |attempt| {
            if attempt.previous().len() > MAX_REDIRECTS {
                return attempt.error(Blocked::TooManyRedirects);
            }
            let from = attempt.previous().last().cloned();
            match from.map(|from| judge_redirect(&from, attempt.url(), &for_redirects)) {
                Some(Err(reason)) => attempt.error(reason),
                _ => attempt.follow(),
            }
        });
        let client = crate::tls::client_builder()
            .dns_resolver(Arc::new(PolicyResolver {
                allowed_hosts: allowed_hosts.clone(),
                lookup,
            }))
            .redirect(redirect)
            // An environment proxy would connect on the gateway's behalf, past the resolver.
            .no_proxy()
            .connect_timeout(timeout)
            .build()
            .unwrap_or_default();
        Self {
            client,
            allowed_hosts,
            timeout,
        }
    }

    /// Connects and completes the MCP handshake within the connector's timeout.
    pub async fn connect(&self, server: &RemoteConfig) -> Result<RemoteClient, ConnectError> {
        let (url, _) =
            ssrf::check_url(&server.url, &self.allowed_hosts).map_err(ConnectError::Refused)?;
        let headers = request_headers(server)?;
        let handshake = async {
            match server.transport {
                Transport::Http => {
                    let mut config = StreamableHttpClientTransportConfig::with_uri(url.as_str())
                        .custom_headers(
                            headers
                                .into_iter()
                                .filter_map(|(k, v)| Some((k?, v)))
                                .collect::<HashMap<_, _>>(),
                        );
                    if let Some(token) = &server.auth_token {
                        config = config.auth_header(token.clone());
                    }
                    let transport =
                        StreamableHttpClientTransport::with_client(self.client.clone(), config);
                    ().serve(transport).await.map_err(|e| explain(&e))
                }
                Transport::Sse => {
                    let mut headers = headers;
                    if let Some(token) = &server.auth_token {
                        headers.insert(
                            http::header::AUTHORIZATION,
                            secret_value(&format!("Bearer {token}"))?,
                        );
                    }
                    let (sink, stream) = sse_transport(self.client.clone(), url, headers).await?;
                    ().serve((sink, stream)).await.map_err(|e| explain(&e))
                }
            }
        };
        let result = match tokio::time::timeout(self.timeout, handshake).await {
            Err(_) => Err(ConnectError::Timeout(self.timeout.as_secs())),
            Ok(result) => result,
        };
        let outcome = match &result {
            Ok(_) => "ok",
            Err(ConnectError::Refused(_) | ConnectError::Blocked(_)) => "refused",
            Err(ConnectError::Timeout(_)) => "timeout",
            Err(ConnectError::Failed(_)) => "failed",
        };
        let transport = match server.transport {
            Transport::Http => "http",
            Transport::Sse => "sse",
        };
        metrics::counter!("gateway_mcp_remote_connections_total", "transport" => transport, "outcome" => outcome)
            .increment(1);
        result
    }
}

fn secret_value(value: &str) -> Result<HeaderValue, ConnectError> {
    let mut value = HeaderValue::from_str(value)
        .map_err(|_| ConnectError::Failed("auth_token is not a valid header value".into()))?;
    value.set_sensitive(true);
    Ok(value)
}

/// The server's own headers, all marked sensitive: they commonly carry credentials.
fn request_headers(server: &RemoteConfig) -> Result<HeaderMap, ConnectError> {
    let mut headers = HeaderMap::new();
    for (name, value) in &server.headers {
        let name = HeaderName::from_bytes(name.as_bytes()).map_err(|_| {
            ConnectError::Failed(format!("headers.{name}: not a valid header name"))
        })?;
        headers.insert(name, secret_value(value)?);
    }
    Ok(headers)
}

/// A failed handshake in words: rmcp keeps the HTTP client's error (where a refused redirect or
/// address is) out of its error chain, so it is dug out here.
fn explain(error: &rmcp::service::ClientInitializeError) -> ConnectError {
    use rmcp::transport::streamable_http_client::StreamableHttpError;
    if let rmcp::service::ClientInitializeError::TransportError {
        error: transport, ..
    } = error
    {
        return match transport
            .error
            .downcast_ref::<StreamableHttpError<reqwest::Error>>()
        {
            Some(StreamableHttpError::Client(e)) => failure(e),
            Some(StreamableHttpError::AuthRequired(_)) => ConnectError::Failed(
                "the server refused the credentials (HTTP 401 with an authorization challenge)"
                    .into(),
            ),
            Some(other) => ConnectError::Failed(describe(other)),
            None => failure(transport.error.as_ref()),
        };
    }
    ConnectError::Failed(describe(error))
}

/// A failed connection, told apart when the address policy stopped it.
fn failure(error: &(dyn std::error::Error + 'static)) -> ConnectError {
    let mut next: Option<&(dyn std::error::Error + 'static)> = Some(error);
    while let Some(e) = next {
        if let Some(blocked) = e.downcast_ref::<Blocked>() {
            return ConnectError::Blocked(blocked.to_string());
        }
        next = e.source();
    }
    ConnectError::Failed(describe(error))
}

/// An error and its causes in one line: reqwest and rmcp put the useful part (a refused
/// redirect, an HTTP status) at the end of the chain.
pub fn describe(error: &dyn std::error::Error) -> String {
    let mut parts: Vec<String> = Vec::new();
    let mut next: Option<&dyn std::error::Error> = Some(error);
    while let Some(e) = next {
        let text = e.to_string();
        if !parts.iter().any(|p| p.contains(&text)) {
            parts.push(text);
        }
        next = e.source();
    }
    crate::telemetry::redact(&parts.join(": "))
}

/// The legacy HTTP+SSE transport: a `GET` opens the event stream, whose first `endpoint` event
/// names where messages are `POST`ed; replies come back as `message` events.
async fn sse_transport(
    client: reqwest::Client,
    url: Url,
    headers: HeaderMap,
) -> Result<
    (
        futures::channel::mpsc::Sender<ClientJsonRpcMessage>,
        futures::channel::mpsc::Receiver<ServerJsonRpcMessage>,
    ),
    ConnectError,
> {
    let response = client
        .get(url.clone())
        .headers(headers.clone())
        .header(http::header::ACCEPT, "text/event-stream")
        .send()
        .await
        .map_err(|e| failure(&e))?;
    let status = response.status();
    if !status.is_success() {
        return Err(ConnectError::Failed(format!(
            "the server answered the event stream request with HTTP {status}"
        )));
    }
    let mut events = Box::pin(sse_stream::SseStream::from_bytes_stream(bounded_events(
        response.bytes_stream(),
    )));
    let endpoint = loop {
        match events.next().await {
            Some(Ok(event)) if event.event.as_deref() == Some("endpoint") => {
                break event.data.unwrap_or_default();
            }
            Some(Ok(_)) => continue,
            Some(Err(e)) => return Err(ConnectError::Failed(format!("event stream: {e}"))),
            None => {
                return Err(ConnectError::Failed(
                    "the event stream ended before naming its message endpoint".into(),
                ))
            }
        }
    };
    let post_url = url
        .join(endpoint.trim())
        .map_err(|e| ConnectError::Failed(format!("bad message endpoint: {e}")))?;
    if post_url.origin() != url.origin() {
        return Err(ConnectError::Failed(
            "the message endpoint is on another origin; refused".into(),
        ));
    }
    let (out_tx, mut out_rx) = futures::channel::mpsc::channel::<ClientJsonRpcMessage>(32);
    let (mut in_tx, in_rx) = futures::channel::mpsc::channel::<ServerJsonRpcMessage>(32);
    tokio::spawn(async move {
        loop {
            tokio::select! {
                outgoing = out_rx.next() => {
                    let Some(message) = outgoing else { break };
                    let sent = client
                        .post(post_url.clone())
                        .headers(headers.clone())
                        .json(&message)
                        .send()
                        .await;
                    match sent {
                        Ok(r) if r.status().is_success() => {}
                        Ok(r) => {
                            tracing::debug!(status = %r.status(), "remote MCP server refused a message");
                            break;
                        }
                        Err(e) => {
                            tracing::debug!(error = %describe(&e), "remote MCP message not sent");
                            break;
                        }
                    }
                }
                incoming = events.next() => {
                    match incoming {
                        Some(Ok(event)) if event.event.as_deref().is_none_or(|e| e == "message") => {
                            let Some(data) = event.data else { continue };
                            match serde_json::from_str::<ServerJsonRpcMessage>(&data) {
                                Ok(message) => {
                                    if in_tx.send(message).await.is_err() {
                                        break;
                                    }
                                }
                                Err(e) => tracing::debug!(error = %e, "unreadable message from a remote MCP server"),
                            }
                        }
                        Some(Ok(_)) => {}
                        // The stream ended or broke: dropping `in_tx` ends the session.
                        Some(Err(_)) | None => break,
                    }
                }
            }
        }
    });
    Ok((out_tx, in_rx))
}

/// Passes bytes through, failing once one event (bytes between blank lines) grows too large.
fn bounded_events<S>(stream: S) -> impl futures::Stream<Item = Result<bytes::Bytes, std::io::Error>>
where
    S: futures::Stream<Item = Result<bytes::Bytes, reqwest::Error>>,
{
    let mut since_boundary = 0usize;
    let mut last = 0u8;
    stream.map(move |chunk| {
        let chunk = chunk.map_err(std::io::Error::other)?;
        for &b in chunk.iter() {
            // "\n\n" (or "\n\r\n") ends an event.
            if b == b'\n' && last == b'\n' {
                since_boundary = 0;
            } else {
                since_boundary += 1;
            }
            if b != b'\r' {
                last = b;
            }
        }
        if since_boundary > MAX_EVENT_BYTES {
            return Err(std::io::Error::other(format!(
                "an event exceeded {MAX_EVENT_BYTES} bytes"
            )));
        }
        Ok(chunk)
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::net::{IpAddr, Ipv4Addr, Ipv6Addr};

    fn addr(ip: IpAddr) -> SocketAddr {
        SocketAddr::new(ip, 443)
    }

    #[test]
    fn a_name_is_refused_when_any_address_it_resolves_to_is_refused() {
        let public = addr(IpAddr::V4(Ipv4Addr::new(93, 184, 216, 34)));
        let metadata = addr(IpAddr::V4(Ipv4Addr::new(169, 254, 169, 254)));
        let mapped_loopback = addr(IpAddr::V6(Ipv4Addr::LOCALHOST.to_ipv6_mapped()));
        assert!(judge_resolved("mcp.example.com", vec![public], &[]).is_ok());
        for rebinding in [
            vec![metadata],
            vec![public, metadata],
            vec![mapped_loopback],
            vec![addr(IpAddr::V6(Ipv6Addr::LOCALHOST))],
            vec![addr(IpAddr::V4(Ipv4Addr::new(10, 0, 0, 7)))],
        ] {
            let refused = judge_resolved("rebind.example.com", rebinding, &[])
                .unwrap_err()
                .to_string();
            assert!(refused.contains("rebind.example.com"), "{refused}");
        }
        assert!(judge_resolved("nothing.example.com", vec![], &[]).is_err());
    }

    #[test]
    fn an_allowlisted_host_may_resolve_anywhere() {
        let private = addr(IpAddr::V4(Ipv4Addr::new(10, 1, 2, 3)));
        assert!(judge_resolved("mcp.corp", vec![private], &["MCP.corp".into()]).is_ok());
    }

    #[test]
    fn redirects_are_judged_by_address_then_origin() {
        let from = Url::parse("https://mcp.example.com/mcp").expect("url");
        let same = Url::parse("https://mcp.example.com/mcp/").expect("url");
        assert!(judge_redirect(&from, &same, &[]).is_ok());
        for private in [
            "http://127.0.0.1/",
            "http://2130706433/",
            "http://0x7f.1/",
            "http://[::ffff:127.0.0.1]/",
            "http://169.254.169.254/latest/meta-data/",
            "http://metadata.google.internal/",
            "http://10.0.0.1/",
        ] {
            let to = Url::parse(private).expect("url");
            let refused = judge_redirect(&from, &to, &[]).unwrap_err().to_string();
            assert!(refused.contains("refused"), "{private}: {refused}");
        }
        let elsewhere = Url::parse("https://other.example.com/mcp").expect("url");
        assert!(judge_redirect(&from, &elsewhere, &[])
            .unwrap_err()
            .to_string()
            .contains("origin"));
    }

    /// Answers every name with one fixed address, like a rebinding DNS server would.
    struct Table(SocketAddr);

    impl Lookup for Table {
        fn lookup(
            &self,
            _host: &str,
        ) -> futures::future::BoxFuture<'static, std::io::Result<Vec<SocketAddr>>> {
            let addr = self.0;
            Box::pin(async move { Ok(vec![addr]) })
        }
    }

    #[tokio::test]
    async fn the_address_a_name_resolves_to_when_connecting_is_judged() {
        // A listener on loopback that counts connections: were the check missing, the
        // connection would land here and nowhere else.
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
            .await
            .expect("bind");
        let addr = listener.local_addr().expect("addr");
        let accepted = Arc::new(std::sync::atomic::AtomicUsize::new(0));
        let counter = accepted.clone();
        tokio::spawn(async move {
            while listener.accept().await.is_ok() {
                counter.fetch_add(1, std::sync::atomic::Ordering::SeqCst);
            }
        });
        let connector = Connector::with_lookup(&[], Duration::from_secs(5), Arc::new(Table(addr)));
        for transport in [Transport::Http, Transport::Sse] {
            let server = RemoteConfig {
                url: format!("http://rebind.example.com:{}/mcp", addr.port()),
                transport,
                auth_type: None,
                auth_token: None,
                headers: Default::default(),
            };
            match connector.connect(&server).await {
                Err(ConnectError::Blocked(reason)) => {
                    assert!(reason.contains("rebind.example.com"), "{reason}");
                    assert!(reason.contains("loopback"), "{reason}");
                }
                Err(other) => panic!("{transport:?}: not blocked: {other}"),
                Ok(_) => panic!("{transport:?}: connected"),
            }
        }
        assert_eq!(accepted.load(std::sync::atomic::Ordering::SeqCst), 0);
    }

    #[test]
    fn an_oversized_event_ends_the_stream() {
        let big = bytes::Bytes::from(vec![b'x'; MAX_EVENT_BYTES + 1]);
        let ok = bytes::Bytes::from_static(b"data: {}\n\n");
        let chunks: Vec<Result<bytes::Bytes, reqwest::Error>> = vec![Ok(ok), Ok(big)];
        let results: Vec<_> = futures::executor::block_on(
            bounded_events(futures::stream::iter(chunks)).collect::<Vec<_>>(),
        );
        assert!(results[0].is_ok());
        assert!(results[1].is_err());
    }
}
