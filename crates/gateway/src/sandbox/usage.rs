//! What the upstream itself reported as a run's usage, read by the gateway's upstream proxy
//! from the responses it relays. The CLI's own `result` line reports usage too, but the CLI's
//! output passes through a process the tenant's tools share a uid with; the upstream's word,
//! read on the gateway's side of the sandbox, is what the metrics count.

use std::sync::{Arc, Mutex};

use serde_json::Value;

/// Tokens the upstream reported over a run's model calls.
#[derive(Debug, Default, Clone, Copy, PartialEq, Eq)]
pub struct UpstreamUsage {
    pub input_tokens: u64,
    pub output_tokens: u64,
    pub cache_read_input_tokens: u64,
    pub cache_creation_input_tokens: u64,
    /// Model calls whose usage was read.
    pub calls: u64,
}

impl UpstreamUsage {
    fn add_input(&mut self, usage: &Value) {
        let n = |k: &str| usage.get(k).and_then(Value::as_u64).unwrap_or(0);
        self.input_tokens += n("input_tokens");
        self.cache_read_input_tokens += n("cache_read_input_tokens");
        self.cache_creation_input_tokens += n("cache_creation_input_tokens");
    }
}

/// The longest event line or JSON body the scanner keeps; beyond, that call is not counted.
const MAX_BUFFERED: usize = 32 << 20;

/// Reads one relayed response (an event stream or a JSON message) as it passes, and adds its
/// usage to `totals` once the call is complete.
pub struct Scanner {
    totals: Arc<Mutex<UpstreamUsage>>,
    event_stream: bool,
    /// The current line of an event stream, or the whole JSON body so far.
    buffer: Vec<u8>,
    overflowed: bool,
    /// This call so far (an event stream's `message_start` and latest `message_delta`).
    call: UpstreamUsage,
    committed: bool,
}

impl Scanner {
    pub fn new(totals: Arc<Mutex<UpstreamUsage>>, event_stream: bool) -> Self {
        Self {
            totals,
            event_stream,
            buffer: Vec::new(),
            overflowed: false,
            call: UpstreamUsage::default(),
            committed: false,
        }
    }

    pub fn feed(&mut self, chunk: &[u8]) {
        if !self.event_stream {
            self.keep(chunk);
            return;
        }
        let mut rest = chunk;
        while let Some(i) = rest.iter().position(|b| *b == b'\n') {
            self.keep(&rest[..i]);
            let line = std::mem::take(&mut self.buffer);
            if !std::mem::take(&mut self.overflowed) {
                self.on_line(&line);
            }
            rest = &rest[i + 1..];
        }
        self.keep(rest);
    }

    fn keep(&mut self, bytes: &[u8]) {
        if self.buffer.len() + bytes.len() > MAX_BUFFERED {
            self.overflowed = true;
            self.buffer.clear();
        } else if !self.overflowed {
            self.buffer.extend_from_slice(bytes);
        }
    }

    fn on_line(&mut self, line: &[u8]) {
        let Some(data) = line.strip_prefix(b"data:") else {
            return;
        };
        let Ok(event) = serde_json::from_slice::<Value>(data.trim_ascii()) else {
            return;
        };
        match event.get("type").and_then(Value::as_str) {
            Some("message_start") => {
                if let Some(usage) = event.get("message").and_then(|m| m.get("usage")) {
                    self.call.add_input(usage);
                    self.call.output_tokens = usage
                        .get("output_tokens")
                        .and_then(Value::as_u64)
                        .unwrap_or(0);
                }
            }
            // Output tokens in a `message_delta` are the message's running total.
            Some("message_delta") => {
                if let Some(n) = event
                    .get("usage")
                    .and_then(|u| u.get("output_tokens"))
                    .and_then(Value::as_u64)
                {
                    self.call.output_tokens = n;
                }
            }
            Some("message_stop") => self.commit(),
            _ => {}
        }
    }

    fn commit(&mut self) {
        if self.committed {
            return;
        }
        self.committed = true;
        let mut totals = self.totals.lock().unwrap_or_else(|e| e.into_inner());
        totals.input_tokens += self.call.input_tokens;
        totals.output_tokens += self.call.output_tokens;
        totals.cache_read_input_tokens += self.call.cache_read_input_tokens;
        totals.cache_creation_input_tokens += self.call.cache_creation_input_tokens;
        totals.calls += 1;
    }

    /// The response ended: a JSON message is read now; a stream cut before its
    /// `message_stop` (its run killed, its client gone) counts what it had reported, since the
    /// upstream bills a call it began.
    pub fn finish(&mut self) {
        if self.event_stream {
            if self.call != UpstreamUsage::default() {
                self.commit();
            }
            return;
        }
        if self.committed || self.overflowed {
            return;
        }
        let Ok(message) = serde_json::from_slice::<Value>(&self.buffer) else {
            return;
        };
        if let Some(usage) = message.get("usage") {
            self.call.add_input(usage);
            self.call.output_tokens = usage
                .get("output_tokens")
                .and_then(Value::as_u64)
                .unwrap_or(0);
            self.commit();
        }
    }
}

impl Drop for Scanner {
    fn drop(&mut self) {
        self.finish();
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_stream_cut_after_its_start_counts_what_it_reported() {
        let totals = Arc::new(Mutex::new(UpstreamUsage::default()));
        let mut scanner = Scanner::new(totals.clone(), true);
        scanner.feed(b"data: {\"type\":\"message_start\",\"message\":{\"usage\":{\"input_tokens\":900,\"output_tokens\":1}}}\n\n");
        scanner.feed(b"data: {\"type\":\"message_delta\",\"usage\":{\"output_tokens\":30}}\n");
        drop(scanner);
        let totals = *totals.lock().expect("lock");
        assert_eq!(
            (totals.input_tokens, totals.output_tokens, totals.calls),
            (900, 30, 1)
        );
    }

    #[test]
    fn an_event_stream_split_anywhere_counts_once_per_message() {
        let stream = concat!(
            "event: message_start\n",
            "data: {\"type\":\"message_start\",\"message\":{\"usage\":{\"input_tokens\":120,\"cache_read_input_tokens\":7,\"output_tokens\":1}}}\n\n",
            "event: content_block_delta\n",
            "data: {\"type\":\"content_block_delta\",\"delta\":{\"text\":\"hi\"}}\n\n",
            "event: message_delta\n",
            "data: {\"type\":\"message_delta\",\"usage\":{\"output_tokens\":42}}\n\n",
            "event: message_stop\n",
            "data: {\"type\":\"message_stop\"}\n\n",
        );
        for split in [1, 7, 64, stream.len()] {
            let totals = Arc::new(Mutex::new(UpstreamUsage::default()));
            let mut scanner = Scanner::new(totals.clone(), true);
            for chunk in stream.as_bytes().chunks(split) {
                scanner.feed(chunk);
            }
            drop(scanner);
            let totals = *totals.lock().expect("lock");
            assert_eq!(
                totals,
                UpstreamUsage {
                    input_tokens: 120,
                    output_tokens: 42,
                    cache_read_input_tokens: 7,
                    cache_creation_input_tokens: 0,
                    calls: 1
                },
                "split {split}"
            );
        }
    }

    #[test]
    fn a_json_message_counts_when_it_ends() {
        let totals = Arc::new(Mutex::new(UpstreamUsage::default()));
        let body =
            br#"{"type":"message","content":[],"usage":{"input_tokens":5,"output_tokens":9}}"#;
        let mut scanner = Scanner::new(totals.clone(), false);
        scanner.feed(&body[..10]);
        scanner.feed(&body[10..]);
        drop(scanner);
        let totals = *totals.lock().expect("lock");
        assert_eq!(
            (totals.input_tokens, totals.output_tokens, totals.calls),
            (5, 9, 1)
        );
    }
}
