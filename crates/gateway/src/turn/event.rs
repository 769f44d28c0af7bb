//! A turn's output as typed, dialect-neutral events: what the model said (text, thinking, tool
//! calls), the usage and the stop. The CLI speaks Anthropic's JSON; the assembler reads it into
//! these once, and each API dialect renders them in its own shape (Anthropic's events and
//! message, OpenAI's chunks and completion) without reading another dialect's JSON.

use serde_json::Value;

/// Token counts as the API reports them.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Usage {
    pub input_tokens: u64,
    pub output_tokens: u64,
    pub cache_creation_input_tokens: u64,
    pub cache_read_input_tokens: u64,
}

impl Usage {
    /// The counts in an API `usage` object (absent fields are 0).
    pub fn from_value(usage: Option<&Value>) -> Self {
        let n = |k: &str| {
            usage
                .and_then(|u| u.get(k))
                .and_then(Value::as_u64)
                .unwrap_or(0)
        };
        Self {
            input_tokens: n("input_tokens"),
            output_tokens: n("output_tokens"),
            cache_creation_input_tokens: n("cache_creation_input_tokens"),
            cache_read_input_tokens: n("cache_read_input_tokens"),
        }
    }
}

/// One content block of the reply.
#[derive(Debug, Clone, PartialEq)]
pub enum Block {
    Text {
        text: String,
        citations: Option<Value>,
    },
    Thinking {
        thinking: String,
        signature: String,
    },
    /// A call: of a client's tool (under the client's name), or, shown as tool activity, one
    /// the CLI ran itself.
    ToolUse {
        id: String,
        name: String,
        input: Value,
    },
    /// A result the CLI got for one of its own calls (tool activity).
    ToolResult {
        tool_use_id: Value,
        content: Value,
        is_error: bool,
    },
    /// Any other block the model produced (server tool use, redacted thinking, …), as it came.
    Other(Value),
}

impl Block {
    /// Reads a content block of the API's shape.
    pub fn from_value(block: Value) -> Self {
        let text = |k: &str| {
            block
                .get(k)
                .and_then(Value::as_str)
                .unwrap_or_default()
                .to_owned()
        };
        match block
            .get("type")
            .and_then(Value::as_str)
            .unwrap_or_default()
        {
            "text" => Block::Text {
                text: text("text"),
                citations: block.get("citations").filter(|c| !c.is_null()).cloned(),
            },
            "thinking" => Block::Thinking {
                thinking: text("thinking"),
                signature: text("signature"),
            },
            "tool_use" => Block::ToolUse {
                id: text("id"),
                name: text("name"),
                input: block.get("input").cloned().unwrap_or(Value::Null),
            },
            "tool_result" => Block::ToolResult {
                tool_use_id: block.get("tool_use_id").cloned().unwrap_or(Value::Null),
                content: block.get("content").cloned().unwrap_or(Value::Null),
                is_error: block
                    .get("is_error")
                    .and_then(Value::as_bool)
                    .unwrap_or(false),
            },
            _ => Block::Other(block),
        }
    }
}

/// A piece of the block at an index.
#[derive(Debug, Clone, PartialEq)]
pub enum Delta {
    Text(String),
    Thinking(String),
    Signature(String),
    /// A piece of a tool call's input, as JSON text.
    InputJson(String),
    /// Any other delta (citations, …), as it came.
    Other(Value),
}

impl Delta {
    /// Reads a `content_block_delta`'s `delta`.
    pub fn from_value(delta: Value) -> Self {
        let text = |k: &str| {
            delta
                .get(k)
                .and_then(Value::as_str)
                .unwrap_or_default()
                .to_owned()
        };
        match delta
            .get("type")
            .and_then(Value::as_str)
            .unwrap_or_default()
        {
            "text_delta" => Delta::Text(text("text")),
            "thinking_delta" => Delta::Thinking(text("thinking")),
            "signature_delta" => Delta::Signature(text("signature")),
            "input_json_delta" => Delta::InputJson(text("partial_json")),
            _ => Delta::Other(delta),
        }
    }
}

/// One event of a turn's reply.
#[derive(Debug, Clone, PartialEq)]
pub enum TurnEvent {
    /// The reply begins: its id, the model that answers, the input usage so far, and the
    /// gateway's extension fields of the message (`session_id`, …).
    Start {
        id: String,
        model: String,
        usage: Usage,
        extensions: Vec<(&'static str, Value)>,
    },
    BlockStart {
        index: usize,
        block: Block,
    },
    Delta {
        index: usize,
        delta: Delta,
    },
    BlockStop {
        index: usize,
    },
    /// The block at `index` was a fragment of an answer that the retried call replaced: a
    /// complete message leaves it out; a stream that already sent it cannot take it back and
    /// ends with an error instead.
    Retract {
        index: usize,
    },
    /// Why the model stopped, and the run's total usage.
    Stop {
        reason: String,
        sequence: Option<String>,
        usage: Usage,
    },
    /// The reply is complete.
    End,
    /// Nothing new yet: a keep-alive.
    Ping,
}

impl TurnEvent {
    /// Whether this event carries model output (the point where response headers are sent).
    pub fn is_output(&self) -> bool {
        matches!(self, TurnEvent::BlockStart { .. })
    }
}

/// The whole reply, as the events describe it (for responses that are not streamed).
#[derive(Debug, Clone, Default, PartialEq)]
pub struct Message {
    pub id: String,
    pub model: String,
    pub extensions: Vec<(&'static str, Value)>,
    pub content: Vec<Block>,
    pub stop_reason: Option<String>,
    pub stop_sequence: Option<String>,
    pub usage: Usage,
}

impl Message {
    /// The text of its text blocks, in order.
    pub fn text(&self) -> String {
        self.content
            .iter()
            .filter_map(|b| match b {
                Block::Text { text, .. } => Some(text.as_str()),
                _ => None,
            })
            .collect()
    }
}

/// Folds events into the message they describe, as the SDKs' stream accumulators do, so a
/// response that is not streamed is exactly what streaming would have built.
#[derive(Debug, Default)]
pub struct MessageBuilder {
    message: Message,
    blocks: Vec<Option<Block>>,
    /// Tool call input per block, as its JSON text arrives; parsed when the block stops.
    partial_json: Vec<String>,
}

impl MessageBuilder {
    pub fn apply(&mut self, event: &TurnEvent) {
        match event {
            TurnEvent::Start {
                id,
                model,
                usage,
                extensions,
            } => {
                self.message.id.clone_from(id);
                self.message.model.clone_from(model);
                self.message.usage = *usage;
                self.message.extensions.clone_from(extensions);
            }
            TurnEvent::BlockStart { index, block } => {
                if self.blocks.len() <= *index {
                    self.blocks.resize(index + 1, None);
                    self.partial_json.resize(index + 1, String::new());
                }
                self.blocks[*index] = Some(block.clone());
            }
            TurnEvent::Delta { index, delta } => {
                let Some(Some(block)) = self.blocks.get_mut(*index) else {
                    return;
                };
                match (block, delta) {
                    (Block::Text { text, .. }, Delta::Text(more)) => text.push_str(more),
                    (Block::Thinking { thinking, .. }, Delta::Thinking(more)) => {
                        thinking.push_str(more)
                    }
                    (Block::Thinking { signature, .. }, Delta::Signature(s)) => {
                        signature.clone_from(s)
                    }
                    (_, Delta::InputJson(more)) => {
                        if let Some(buffer) = self.partial_json.get_mut(*index) {
                            buffer.push_str(more);
                        }
                    }
                    _ => {}
                }
            }
            TurnEvent::BlockStop { index } => {
                if let (Some(Some(Block::ToolUse { input, .. })), Some(buffer)) =
                    (self.blocks.get_mut(*index), self.partial_json.get(*index))
                {
                    if !buffer.is_empty() {
                        *input = serde_json::from_str(buffer)
                            .unwrap_or_else(|_| Value::Object(Default::default()));
                    }
                }
            }
            TurnEvent::Retract { index } => {
                if let Some(block) = self.blocks.get_mut(*index) {
                    *block = None;
                }
            }
            TurnEvent::Stop {
                reason,
                sequence,
                usage,
            } => {
                self.message.stop_reason = Some(reason.clone());
                self.message.stop_sequence.clone_from(sequence);
                self.message.usage = *usage;
            }
            TurnEvent::End | TurnEvent::Ping => {}
        }
    }

    pub fn finish(mut self) -> Message {
        self.message.content = self.blocks.into_iter().flatten().collect();
        self.message
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn builds_the_message_a_stream_describes() {
        let mut b = MessageBuilder::default();
        let events = [
            TurnEvent::Start {
                id: "msg_1".into(),
                model: "claude-x".into(),
                usage: Usage::default(),
                extensions: Vec::new(),
            },
            TurnEvent::BlockStart {
                index: 0,
                block: Block::from_value(json!({"type": "text", "text": ""})),
            },
            TurnEvent::Delta {
                index: 0,
                delta: Delta::Text("Hel".into()),
            },
            TurnEvent::Delta {
                index: 0,
                delta: Delta::Text("lo".into()),
            },
            TurnEvent::BlockStop { index: 0 },
            TurnEvent::BlockStart {
                index: 1,
                block: Block::from_value(
                    json!({"type": "tool_use", "id": "t", "name": "Bash", "input": {}}),
                ),
            },
            TurnEvent::Delta {
                index: 1,
                delta: Delta::InputJson("{\"command\":".into()),
            },
            TurnEvent::Delta {
                index: 1,
                delta: Delta::InputJson("\"ls\"}".into()),
            },
            TurnEvent::BlockStop { index: 1 },
            TurnEvent::Stop {
                reason: "end_turn".into(),
                sequence: None,
                usage: Usage {
                    output_tokens: 7,
                    ..Usage::default()
                },
            },
            TurnEvent::End,
        ];
        for e in &events {
            b.apply(e);
        }
        let m = b.finish();
        assert_eq!(m.id, "msg_1");
        assert_eq!(m.text(), "Hello");
        assert!(matches!(&m.content[1], Block::ToolUse { input, .. } if input["command"] == "ls"));
        assert_eq!(m.stop_reason.as_deref(), Some("end_turn"));
        assert_eq!(m.usage.output_tokens, 7);
    }
}
