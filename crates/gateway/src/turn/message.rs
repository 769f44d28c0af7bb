//! Folds a message's stream events into the complete message object, as the SDKs'
//! stream accumulators do, so a non-streaming response is exactly what streaming would have built.

use serde_json::{json, Map, Value};

use super::assemble::Event;

#[derive(Debug, Default)]
pub struct MessageBuilder {
    message: Map<String, Value>,
    content: Vec<Value>,
    /// Raw `input_json_delta` text per block, parsed at `content_block_stop`.
    partial_json: Vec<String>,
}

impl MessageBuilder {
    pub fn apply(&mut self, event: &Event) {
        let data = &event.data;
        let index = data
            .get("index")
            .and_then(Value::as_u64)
            .map(|i| i as usize);
        match (event.name, index) {
            ("message_start", _) => {
                if let Some(Value::Object(m)) = data.get("message") {
                    self.message = m.clone();
                }
            }
            ("content_block_start", Some(i)) => {
                let block = data.get("content_block").cloned().unwrap_or(Value::Null);
                if self.content.len() <= i {
                    self.content.resize(i + 1, Value::Null);
                    self.partial_json.resize(i + 1, String::new());
                }
                self.content[i] = block;
            }
            ("content_block_delta", Some(i)) => {
                let (Some(block), Some(delta)) = (self.content.get_mut(i), data.get("delta"))
                else {
                    return;
                };
                let text = |k: &str| delta.get(k).and_then(Value::as_str).unwrap_or_default();
                match delta.get("type").and_then(Value::as_str) {
                    Some("text_delta") => append(block, "text", text("text")),
                    Some("thinking_delta") => append(block, "thinking", text("thinking")),
                    Some("signature_delta") => block["signature"] = json!(text("signature")),
                    Some("input_json_delta") => {
                        if let Some(buf) = self.partial_json.get_mut(i) {
                            buf.push_str(text("partial_json"));
                        }
                    }
                    _ => {}
                }
            }
            ("content_block_stop", Some(i)) => {
                if let (Some(block), Some(buf)) =
                    (self.content.get_mut(i), self.partial_json.get(i))
                {
                    if !buf.is_empty() {
                        block["input"] = serde_json::from_str(buf).unwrap_or(json!({}));
                    }
                }
            }
            (super::assemble::RETRACT, Some(i)) => {
                if let Some(block) = self.content.get_mut(i) {
                    *block = Value::Null;
                }
            }
            ("message_delta", _) => {
                if let Some(Value::Object(delta)) = data.get("delta") {
                    for (k, v) in delta {
                        self.message.insert(k.clone(), v.clone());
                    }
                }
                if let Some(Value::Object(usage)) = data.get("usage") {
                    let target = self.message.entry("usage").or_insert_with(|| json!({}));
                    for (k, v) in usage {
                        target[k] = v.clone();
                    }
                }
            }
            _ => {}
        }
    }

    pub fn finish(mut self) -> Value {
        self.message.insert(
            "content".into(),
            Value::Array(self.content.into_iter().filter(|b| !b.is_null()).collect()),
        );
        Value::Object(self.message)
    }
}

fn append(block: &mut Value, key: &str, text: &str) {
    let current = block.get(key).and_then(Value::as_str).unwrap_or_default();
    block[key] = Value::String(format!("{current}{text}"));
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::turn::assemble::message_start;

    #[test]
    fn builds_the_message_a_stream_describes() {
        let mut b = MessageBuilder::default();
        let events = [
            message_start("msg_1", "claude-x", None),
            Event {
                name: "content_block_start",
                data: json!({"index":0,"content_block":{"type":"text","text":""}}),
            },
            Event {
                name: "content_block_delta",
                data: json!({"index":0,"delta":{"type":"text_delta","text":"Hel"}}),
            },
            Event {
                name: "content_block_delta",
                data: json!({"index":0,"delta":{"type":"text_delta","text":"lo"}}),
            },
            Event {
                name: "content_block_stop",
                data: json!({"index":0}),
            },
            Event {
                name: "content_block_start",
                data: json!({"index":1,"content_block":{"type":"tool_use","id":"t","name":"Bash","input":{}}}),
            },
            Event {
                name: "content_block_delta",
                data: json!({"index":1,"delta":{"type":"input_json_delta","partial_json":"{\"command\":"}}),
            },
            Event {
                name: "content_block_delta",
                data: json!({"index":1,"delta":{"type":"input_json_delta","partial_json":"\"ls\"}"}}),
            },
            Event {
                name: "content_block_stop",
                data: json!({"index":1}),
            },
            Event {
                name: "message_delta",
                data: json!({"delta":{"stop_reason":"end_turn","stop_sequence":null},"usage":{"output_tokens":7}}),
            },
        ];
        for e in &events {
            b.apply(e);
        }
        let m = b.finish();
        assert_eq!(m["id"], "msg_1");
        assert_eq!(m["content"][0]["text"], "Hello");
        assert_eq!(m["content"][1]["input"]["command"], "ls");
        assert_eq!(m["stop_reason"], "end_turn");
        assert_eq!(m["usage"]["output_tokens"], 7);
    }
}
