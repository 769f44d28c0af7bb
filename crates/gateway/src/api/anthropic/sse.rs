//! The streaming response: Anthropic's SSE event sequence relayed as the CLI produces it, with
//! `ping` events on a quiet stream and a failure after the first byte sent as an `error` event.

use std::collections::VecDeque;
use std::convert::Infallible;
use std::time::Duration;

use axum::response::sse::{Event as SseEvent, Sse};
use axum::response::{IntoResponse, Response};
use futures::Stream;
use serde_json::json;
use tokio::sync::mpsc;

use crate::error::ApiError;
use crate::turn::assemble::Event;
use crate::turn::Item;

struct RelayState {
    pending: VecDeque<Event>,
    rx: Option<mpsc::Receiver<Item>>,
    ping: tokio::time::Interval,
}

fn to_sse(event: &Event) -> SseEvent {
    SseEvent::default()
        .event(event.name)
        .data(event.data.to_string())
}

fn error_event(e: ApiError) -> Event {
    Event {
        name: "error",
        data: e.body(),
    }
}

/// Streams `first` (already received) and then whatever `rx` delivers.
pub fn response(
    first: Vec<Event>,
    rx: Option<mpsc::Receiver<Item>>,
    ping_every: Duration,
) -> Response {
    let mut ping = tokio::time::interval_at(tokio::time::Instant::now() + ping_every, ping_every);
    ping.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    let state = RelayState {
        pending: first.into(),
        rx,
        ping,
    };
    let mut response = Sse::new(relay(state)).into_response();
    // Proxies such as nginx buffer event streams unless told not to.
    response.headers_mut().insert(
        "x-accel-buffering",
        axum::http::HeaderValue::from_static("no"),
    );
    response
}

fn relay(state: RelayState) -> impl Stream<Item = Result<SseEvent, Infallible>> {
    futures::stream::unfold(state, |mut s| async move {
        loop {
            if let Some(event) = s.pending.pop_front() {
                return Some((Ok(to_sse(&event)), s));
            }
            let rx = s.rx.as_mut()?;
            let item = tokio::select! {
                item = rx.recv() => item,
                _ = s.ping.tick() => {
                    return Some((Ok(to_sse(&Event { name: "ping", data: json!({"type":"ping"}) })), s));
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
                Some(Item::Failed(e)) => {
                    s.pending.push_back(error_event(e.into()));
                    s.rx = None;
                }
                None => {
                    s.pending.push_back(error_event(ApiError::BadGateway(
                        "the run ended without a result".into(),
                    )));
                    s.rx = None;
                }
            }
        }
    })
}
