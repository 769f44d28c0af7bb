//! Accepting HTTP connections with the limits a public server needs, and draining them on
//! shutdown.
//!
//! `axum::serve` gives hyper no timer, which silently turns off hyper's deadline for request
//! headers: a client could open connections and trickle bytes forever. Here every connection
//! has a deadline for its request headers (also while idle between keep-alive requests), a
//! bounded header buffer, and each request body a deadline between its chunks (set in the
//! router). A slow client then holds a task and a socket for a bounded time, never a thread.

use std::future::Future;
use std::net::SocketAddr;
use std::time::Duration;

use axum::extract::ConnectInfo;
use axum::Router;
use hyper::body::Incoming;
use hyper_util::rt::{TokioExecutor, TokioIo, TokioTimer};
use hyper_util::server::conn::auto;
use hyper_util::server::graceful::GracefulShutdown;
use hyper_util::service::TowerToHyperService;
use tokio::net::TcpListener;
use tower::ServiceExt;

/// At most this many header lines per request (431 beyond, in the API's error shape).
pub const MAX_HEADERS: usize = 100;
/// At most this many bytes of request headers (431 beyond, in the API's error shape).
pub const MAX_HEADER_BYTES: usize = 64 * 1024;
/// hyper's own bounds, twice the above: a request between the two is answered by the router
/// in the API's error shape; only one past these gets hyper's bare 431.
const HYPER_MAX_HEADERS: usize = 2 * MAX_HEADERS;
const HYPER_MAX_HEADER_BYTES: usize = 2 * MAX_HEADER_BYTES;

/// How serving ended.
#[derive(Debug, PartialEq, Eq)]
pub enum Drained {
    /// Every connection finished within the grace.
    Fully,
    /// The grace expired with requests still running.
    GraceExpired,
}

/// Serves `router` on `listener` until `shutdown` completes, then stops accepting and gives
/// open connections `grace` to finish. A client gets `client_timeout` to send a request's
/// headers (the body's pauses are bounded in the router, by the same setting).
pub async fn serve(
    listener: TcpListener,
    router: Router,
    client_timeout: Duration,
    shutdown: impl Future<Output = ()>,
    grace: Duration,
    before_cut: impl FnOnce(),
) -> Drained {
    let mut builder = auto::Builder::new(TokioExecutor::new());
    builder
        .http1()
        .timer(TokioTimer::new())
        .header_read_timeout(client_timeout)
        .max_headers(HYPER_MAX_HEADERS)
        .max_buf_size(HYPER_MAX_HEADER_BYTES);
    builder
        .http2()
        .timer(TokioTimer::new())
        .max_header_list_size(HYPER_MAX_HEADER_BYTES as u32)
        .keep_alive_interval(Duration::from_secs(20));
    let graceful = GracefulShutdown::new();
    tokio::pin!(shutdown);
    loop {
        let (stream, remote) = tokio::select! {
            accepted = listener.accept() => match accepted {
                Ok(accepted) => accepted,
                Err(e) => {
                    // Out of file descriptors, or a connection reset before it was accepted:
                    // keep serving the others.
                    tracing::warn!(error = %e, "accepting a connection failed");
                    tokio::time::sleep(Duration::from_millis(50)).await;
                    continue;
                }
            },
            () = &mut shutdown => break,
        };
        let service = TowerToHyperService::new(router.clone().map_request(
            move |mut req: axum::http::Request<Incoming>| {
                req.extensions_mut()
                    .insert(ConnectInfo::<SocketAddr>(remote));
                req
            },
        ));
        let connection = builder
            .serve_connection_with_upgrades(TokioIo::new(stream), service)
            .into_owned();
        let connection = graceful.watch(connection);
        tokio::spawn(async move {
            if let Err(e) = connection.await {
                tracing::debug!(error = %e, "connection ended with an error");
            }
        });
    }
    drop(listener);
    // Shortly before the grace ends, what still runs is told, so that streams can end with an
    // error event rather than be cut mid-answer.
    let warning = grace.saturating_sub(CUT_WARNING);
    tokio::select! {
        () = graceful.shutdown() => Drained::Fully,
        () = async {
            tokio::time::sleep(warning).await;
            before_cut();
            tokio::time::sleep(grace - warning).await;
        } => Drained::GraceExpired,
    }
}

/// How long before the grace ends the requests still running are told.
const CUT_WARNING: Duration = Duration::from_millis(500);
