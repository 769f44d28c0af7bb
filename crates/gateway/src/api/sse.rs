//! Server-sent events: a held stream's events relayed as the CLI produces them, rendered in
//! the caller's dialect, with keep-alives on a quiet stream and a failure after the first byte
//! sent as an in-stream error.

use std::collections::VecDeque;
use std::convert::Infallible;
use std::time::Duration;

use axum::response::sse::{Event as SseEvent, Sse};
use axum::response::{IntoResponse, Response};
use futures::Stream;
use tokio::sync::mpsc;

use crate::api::reply::Held;
use crate::error::ApiError;
use crate::turn::event::TurnEvent;
use crate::turn::Item;

/// How an API dialect writes a turn's events, and a failure once the stream has started, as
/// SSE events.
pub trait Render: Send {
    fn event(&mut self, event: &TurnEvent) -> Vec<SseEvent>;
    fn error(&mut self, error: &ApiError) -> Vec<SseEvent>;
}

struct RelayState {
    pending: VecDeque<TurnEvent>,
    out: VecDeque<SseEvent>,
    rx: Option<mpsc::Receiver<Item>>,
    ping: tokio::time::Interval,
    render: Box<dyn Render>,
    route: &'static str,
    /// Cancelled when the gateway is about to cut its remaining connections.
    stopping: tokio_util::sync::CancellationToken,
}

/// Streams `held` and then whatever its channel delivers.
pub fn response(
    held: Held,
    ping_every: Duration,
    render: Box<dyn Render>,
    route: &'static str,
    stopping: tokio_util::sync::CancellationToken,
) -> Response {
    let mut ping = tokio::time::interval_at(tokio::time::Instant::now() + ping_every, ping_every);
    ping.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    let state = RelayState {
        pending: held.first.into(),
        out: VecDeque::new(),
        rx: held.rest,
        ping,
        render,
        route,
        stopping,
    };
    let mut response = Sse::new(relay(state)).into_response();
    // Proxies such as nginx buffer event streams unless told not to.
    response.headers_mut().insert(
        "x-accel-buffering",
        axum::http::HeaderValue::from_static("no"),
    );
    response
}

impl RelayState {
    /// Ends the stream with `e` as its last event: a failure after the headers went out as 200,
    /// logged with the status it would have had and counted under it (marked as in-stream), so
    /// operators see it as they see any other failure.
    fn fail(&mut self, e: ApiError) {
        let e = failed_in_stream(self.route, e);
        let rendered = self.render.error(&e);
        self.out.extend(rendered);
        self.rx = None;
    }
}

fn failed_in_stream(route: &'static str, e: ApiError) -> ApiError {
    let status = e.status().as_u16();
    tracing::warn!(
        status,
        error = %crate::telemetry::redact(&e.to_string()),
        "request failed after its stream started"
    );
    metrics::counter!("gateway_http_requests_total", "route" => route, "method" => "POST",
        "status" => format!("{status}_in_stream"))
    .increment(1);
    metrics::counter!("gateway_stream_failures_total", "route" => route, "status" => status.to_string())
        .increment(1);
    e
}

fn relay(state: RelayState) -> impl Stream<Item = Result<SseEvent, Infallible>> {
    futures::stream::unfold(state, |mut s| async move {
        loop {
            if let Some(out) = s.out.pop_front() {
                return Some((Ok(out), s));
            }
            if let Some(event) = s.pending.pop_front() {
                if matches!(event, TurnEvent::Retract { .. }) {
                    // Part of a different answer has been sent: report it, never splice.
                    s.pending.clear();
                    s.fail(ApiError::BadGateway(
                        "the upstream's answer broke off and its retry answered differently; \
                         the partial answer already sent is void: send the request again"
                            .into(),
                    ));
                    continue;
                }
                s.out.extend(s.render.event(&event));
                continue;
            }
            let rx = s.rx.as_mut()?;
            let item = tokio::select! {
                item = rx.recv() => item,
                () = s.stopping.cancelled() => {
                    // The shutdown grace is ending: say so, in the stream, before it is cut.
                    s.fail(ApiError::Overloaded(
                        "the gateway is shutting down; send the request again".into(),
                    ));
                    continue;
                }
                _ = s.ping.tick() => {
                    s.out.extend(s.render.event(&TurnEvent::Ping));
                    continue;
                }
            };
            s.ping.reset();
            match item {
                Some(Item::Events(events)) => s.pending.extend(events),
                Some(Item::Started { .. }) => {}
                Some(Item::Done(events, _)) => {
                    s.pending.extend(events);
                    s.rx = None;
                }
                Some(Item::Failed(e)) => s.fail(e.into()),
                None => s.fail(ApiError::BadGateway(
                    "the run ended without a result".into(),
                )),
            }
        }
    })
}
