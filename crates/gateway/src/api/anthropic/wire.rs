//! A turn's events and message in Anthropic's shape: the Messages API's stream events and
//! message object, and its error event.

use axum::response::sse::Event as SseEvent;
use serde_json::{json, Value};

use crate::api::sse::Render;
use crate::error::ApiError;
use crate::turn::event::{Block, Delta, Message, TurnEvent, Usage};

pub fn usage(usage: &Usage) -> Value {
    json!({
        "input_tokens": usage.input_tokens,
        "output_tokens": usage.output_tokens,
        "cache_creation_input_tokens": usage.cache_creation_input_tokens,
        "cache_read_input_tokens": usage.cache_read_input_tokens,
    })
}

pub fn block(block: &Block) -> Value {
    match block {
        Block::Text { text, citations } => {
            let mut b = json!({"type": "text", "text": text});
            if let Some(citations) = citations {
                b["citations"] = citations.clone();
            }
            b
        }
        Block::Thinking {
            thinking,
            signature,
        } => json!({"type": "thinking", "thinking": thinking, "signature": signature}),
        Block::ToolUse { id, name, input } => {
            json!({"type": "tool_use", "id": id, "name": name, "input": input})
        }
        Block::ToolResult {
            tool_use_id,
            content,
            is_error,
        } => json!({"type": "tool_result", "tool_use_id": tool_use_id, "content": content,
            "is_error": is_error}),
        Block::Other(value) => value.clone(),
    }
}

fn delta(delta: &Delta) -> Value {
    match delta {
        Delta::Text(text) => json!({"type": "text_delta", "text": text}),
        Delta::Thinking(text) => json!({"type": "thinking_delta", "thinking": text}),
        Delta::Signature(s) => json!({"type": "signature_delta", "signature": s}),
        Delta::InputJson(text) => json!({"type": "input_json_delta", "partial_json": text}),
        Delta::Other(value) => value.clone(),
    }
}

/// The message object: complete (`content`), or as `message_start` opens it (no content).
fn message_object(
    id: &str,
    model: &str,
    content: Vec<Value>,
    stop: (Option<&str>, Option<&str>),
    used: &Usage,
    extensions: &[(&'static str, Value)],
) -> Value {
    let mut message = json!({
        "id": id,
        "type": "message",
        "role": "assistant",
        "model": model,
        "content": content,
        "stop_reason": stop.0,
        "stop_sequence": stop.1,
        "usage": usage(used),
    });
    for (key, value) in extensions {
        message[*key] = value.clone();
    }
    message
}

pub fn message(m: &Message) -> Value {
    message_object(
        &m.id,
        &m.model,
        m.content.iter().map(block).collect(),
        (m.stop_reason.as_deref(), m.stop_sequence.as_deref()),
        &m.usage,
        &m.extensions,
    )
}

/// An event's SSE name and data; `None` for what is never sent as such.
pub fn event(event: &TurnEvent) -> Option<(&'static str, Value)> {
    Some(match event {
        TurnEvent::Start {
            id,
            model,
            usage,
            extensions,
        } => (
            "message_start",
            json!({"type": "message_start",
                "message": message_object(id, model, Vec::new(), (None, None), usage, extensions)}),
        ),
        TurnEvent::BlockStart { index, block: b } => (
            "content_block_start",
            json!({"type": "content_block_start", "index": index, "content_block": block(b)}),
        ),
        TurnEvent::Delta { index, delta: d } => (
            "content_block_delta",
            json!({"type": "content_block_delta", "index": index, "delta": delta(d)}),
        ),
        TurnEvent::BlockStop { index } => (
            "content_block_stop",
            json!({"type": "content_block_stop", "index": index}),
        ),
        TurnEvent::Stop {
            reason,
            sequence,
            usage: used,
        } => (
            "message_delta",
            json!({"type": "message_delta",
                "delta": {"stop_reason": reason, "stop_sequence": sequence},
                "usage": usage(used)}),
        ),
        TurnEvent::End => ("message_stop", json!({"type": "message_stop"})),
        TurnEvent::Ping => ("ping", json!({"type": "ping"})),
        TurnEvent::Retract { .. } => return None,
    })
}

/// Anthropic's stream: each event under its name, a failure as an `error` event.
pub struct Events;

impl Render for Events {
    fn event(&mut self, e: &TurnEvent) -> Vec<SseEvent> {
        event(e)
            .map(|(name, data)| SseEvent::default().event(name).data(data.to_string()))
            .into_iter()
            .collect()
    }

    fn error(&mut self, error: &ApiError) -> Vec<SseEvent> {
        vec![SseEvent::default()
            .event("error")
            .data(error.body().to_string())]
    }
}
