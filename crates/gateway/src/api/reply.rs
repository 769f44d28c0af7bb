//! Turning a turn's events into a reply, whatever the API dialect: the complete message (for
//! non-streaming responses), or the first output held back until it exists (for streams), so
//! that a failure before it still gets its real HTTP status.

use std::time::Duration;

use serde_json::Value;
use tokio::sync::mpsc;

use crate::error::ApiError;
use crate::turn::event::{Message, MessageBuilder, TurnEvent, Usage};
use crate::turn::Item;

/// What the reply's opening event carries.
pub struct Opening {
    pub id: String,
    /// The requested model, used until the upstream reports the resolved one.
    pub model: String,
    /// Extension fields of the message object (`session_id`, …).
    pub extensions: Vec<(&'static str, Value)>,
    /// The route template, for what is counted of a stream that fails after its headers.
    pub route: &'static str,
}

impl Opening {
    pub fn new(route: &'static str, model: &str, extensions: Vec<(&'static str, Value)>) -> Self {
        Self {
            id: format!("msg_{}", uuid::Uuid::new_v4().simple()),
            model: model.to_owned(),
            extensions,
            route,
        }
    }

    fn event(&self, started: Option<(String, Option<Usage>)>) -> TurnEvent {
        let (model, usage) = started.unwrap_or_else(|| (self.model.clone(), None));
        TurnEvent::Start {
            id: self.id.clone(),
            model,
            usage: usage.unwrap_or_default(),
            extensions: self.extensions.clone(),
        }
    }
}

fn ended_early() -> ApiError {
    ApiError::BadGateway("the run ended without a result".into())
}

/// The reply to a started turn in one dialect: with `stream`, its events as SSE (`render`
/// writes each event; the headers wait for the first output, then pings keep the stream
/// alive), else the whole message, which `complete` turns into the dialect's body.
pub async fn respond(
    config: &crate::config::Config,
    stopping: &tokio_util::sync::CancellationToken,
    stream: bool,
    rx: mpsc::Receiver<Item>,
    opening: &Opening,
    render: Box<dyn super::sse::Render>,
    complete: impl FnOnce(Message) -> Value,
) -> Result<axum::response::Response, ApiError> {
    use axum::response::IntoResponse;
    if stream {
        let held = hold(rx, opening, config.first_output_timeout()).await?;
        Ok(super::sse::response(
            held,
            config.ping_interval(),
            render,
            opening.route,
            stopping.clone(),
        ))
    } else {
        let message = collect(rx, opening).await?;
        Ok(axum::Json(complete(message)).into_response())
    }
}

/// Waits for the whole run: the complete message.
pub async fn collect(mut rx: mpsc::Receiver<Item>, opening: &Opening) -> Result<Message, ApiError> {
    let mut events = Vec::new();
    let mut started: Option<(String, Option<Usage>)> = None;
    loop {
        match rx.recv().await {
            Some(Item::Started { model, usage }) => started = Some((model, usage)),
            Some(Item::Events(e)) => events.extend(e),
            Some(Item::Done(e, _)) => {
                events.extend(e);
                break;
            }
            Some(Item::Failed(e)) => return Err(e.into()),
            None => return Err(ended_early()),
        }
    }
    let mut builder = MessageBuilder::default();
    builder.apply(&opening.event(started));
    for e in &events {
        builder.apply(e);
    }
    Ok(builder.finish())
}

/// A stream's beginning, held until the first output: the events so far (starting with
/// `message_start`) and the channel of the rest (`None` when the run already finished).
pub struct Held {
    pub first: Vec<TurnEvent>,
    pub rest: Option<mpsc::Receiver<Item>>,
}

/// Waits for the model's first output, at most `bound`; a failure before it is an error.
pub async fn hold(
    mut rx: mpsc::Receiver<Item>,
    opening: &Opening,
    bound: Duration,
) -> Result<Held, ApiError> {
    let deadline = tokio::time::Instant::now() + bound;
    let mut buffered: Vec<TurnEvent> = Vec::new();
    let mut started: Option<(String, Option<Usage>)> = None;
    let mut finished = false;
    loop {
        let item = match tokio::time::timeout_at(deadline, rx.recv()).await {
            Err(_) => break,
            Ok(item) => item,
        };
        match item {
            Some(Item::Started { model, usage }) => started = Some((model, usage)),
            Some(Item::Events(events)) => {
                let output = events.iter().any(TurnEvent::is_output);
                buffered.extend(events);
                if output {
                    break;
                }
            }
            Some(Item::Done(events, _)) => {
                buffered.extend(events);
                finished = true;
                break;
            }
            Some(Item::Failed(e)) => return Err(e.into()),
            None => return Err(ended_early()),
        }
    }
    let mut first = vec![opening.event(started)];
    first.extend(buffered);
    Ok(Held {
        first,
        rest: (!finished).then_some(rx),
    })
}
