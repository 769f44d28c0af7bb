//! Faults and large payloads through the real CLI: large requests reach the upstream, large
//! answers arrive whole, and failures are reported in the API's own terms without naming the
//! gateway's internals.

use crate::common::{body, parse_sse, scripted, streamed_text, Gateway};
use serde_json::{json, Value};

const TOKEN: &str = "sk-ant-oat01-faye.faults";

async fn gateway() -> Gateway {
    // A stalled CLI shows as a 504 within a minute, not after the default ten.
    Gateway::builder()
        .args(&["--run-timeout-secs", "60"])
        .start()
        .await
}

/// A base64 PNG of `side`×`side` random pixels (incompressible: ~3 MB for 1000).
fn noise_png_base64(side: u32) -> String {
    let script = format!(
        r#"
import base64, os, struct, sys, zlib
w = h = {side}
raw = b"".join(b"\x00" + os.urandom(w * 3) for _ in range(h))
def chunk(t, d):
    return struct.pack(">I", len(d)) + t + d + struct.pack(">I", zlib.crc32(t + d) & 0xffffffff)
png = b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", struct.pack(">IIBBBBB", w, h, 8, 2, 0, 0, 0)) \
    + chunk(b"IDAT", zlib.compress(raw, 1)) + chunk(b"IEND", b"")
sys.stdout.write(base64.b64encode(png).decode())
"#
    );
    let out = std::process::Command::new("python3")
        .args(["-c", &script])
        .output()
        .expect("python3 runs");
    assert!(out.status.success());
    String::from_utf8(out.stdout).expect("base64 text")
}

#[tokio::test]
async fn two_four_megabyte_images_reach_the_upstream() {
    let gw = gateway().await;
    let image = json!({"type": "image", "source": {"type": "base64", "media_type": "image/png",
        "data": noise_png_base64(1000)}});
    assert!(image.to_string().len() > 4_000_000);
    let req = json!({"model": "sonnet", "max_tokens": 100, "messages": [{"role": "user",
        "content": [{"type": "text", "text": "marker-two-images"}, image, image]}]});
    assert!(req.to_string().len() > 8_000_000);
    let res = gw.messages(TOKEN, req).await;
    assert_eq!(
        res.status(),
        200,
        "{}",
        res.text().await.unwrap_or_default()
    );
    let calls = gw.upstream_with("marker-two-images");
    assert!(!calls.is_empty(), "the upstream was called");
    let images = calls[0].body["messages"][0]["content"]
        .as_array()
        .map_or(0, |blocks| {
            blocks.iter().filter(|b| b["type"] == "image").count()
        });
    assert_eq!(images, 2);
}

#[tokio::test]
async fn a_two_mebibyte_answer_arrives_whole_without_a_session_ten_times_in_a_row() {
    let gw = gateway().await;
    let size = 2 << 20;
    let expected = fake_anthropic::script::sized_reply(size);
    for round in 0..10 {
        let prompt = scripted(&format!("marker-big-{round}"), json!({"reply_bytes": size}));
        let res = gw.messages(TOKEN, body(&prompt)).await;
        assert_eq!(res.status(), 200, "round {round}");
        let message: Value = res.json().await.expect("json");
        let text = message["content"][0]["text"].as_str().unwrap_or_default();
        assert!(
            text == expected,
            "round {round}: {} of {size} bytes",
            text.len()
        );

        let mut req = body(&prompt);
        req["stream"] = json!(true);
        let res = gw.messages(TOKEN, req).await;
        assert_eq!(res.status(), 200, "round {round}, streamed");
        let events = parse_sse(&res.text().await.expect("body"));
        assert_eq!(
            events.last().map(|e| e.event.as_str()),
            Some("message_stop"),
            "round {round}: the stream ends cleanly"
        );
        let text = streamed_text(&events);
        assert!(
            text == expected,
            "round {round}, streamed: {} of {size} bytes",
            text.len()
        );
    }
    // The OpenAI dialect gets it whole too.
    let res = gw
        .post("/v1/chat/completions")
        .bearer_auth(TOKEN)
        .json(&json!({"model": "sonnet", "messages": [{"role": "user",
            "content": scripted("marker-big-openai", json!({"reply_bytes": size}))}]}))
        .send()
        .await
        .expect("sent");
    assert_eq!(res.status(), 200);
    let completion: Value = res.json().await.expect("json");
    assert!(completion["choices"][0]["message"]["content"] == expected.as_str());
}

#[tokio::test]
async fn a_prompt_that_is_too_long_is_the_clients_400_not_a_server_error() {
    let gw = gateway().await;
    // The fake counts a token per four bytes: a megabyte is past any model's window.
    let long = format!("marker-too-long {}", "word ".repeat(240_000));
    let res = gw.messages(TOKEN, body(&long)).await;
    assert_eq!(res.status(), 400);
    let err: Value = res.json().await.expect("json");
    assert_eq!(err["error"]["type"], "invalid_request_error");
    assert!(err["error"]["message"]
        .as_str()
        .is_some_and(|m| m.contains("too long")));
}

#[tokio::test]
async fn error_messages_name_no_internal_address() {
    let gw = gateway().await;
    for status in [500, 529] {
        let prompt = scripted("marker-5xx", json!({"error": {"status": status}}));
        let res = gw.messages(TOKEN, body(&prompt)).await;
        assert_eq!(res.status().as_u16(), if status == 500 { 502 } else { 529 });
        let text = res.text().await.expect("text");
        assert!(!text.contains("127.0.0.1"), "{text}");
        assert!(!text.contains("inference gateway"), "{text}");
        assert!(!text.contains(&gw.fake.base_url()), "{text}");
    }
}

#[tokio::test]
async fn max_tokens_zero_is_refused_as_the_api_does() {
    let gw = gateway().await;
    let mut req = body("marker-zero");
    req["max_tokens"] = json!(0);
    let res = gw.messages(TOKEN, req).await;
    assert_eq!(res.status(), 400);
    let err: Value = res.json().await.expect("json");
    assert_eq!(err["error"]["type"], "invalid_request_error");
    assert!(gw.upstream_with("marker-zero").is_empty());
}

#[tokio::test]
async fn a_stream_that_fails_after_its_headers_is_logged_and_counted() {
    let gw = Gateway::builder()
        .args(&["--run-timeout-secs", "5"])
        .start()
        .await;
    // The first delta arrives, then the model stalls past the run's time limit.
    let prompt = scripted(
        "marker-stall",
        json!({"reply": "one two three", "chunks": 3, "chunk_delay_ms": 30000}),
    );
    let mut req = body(&prompt);
    req["stream"] = json!(true);
    let res = gw.messages(TOKEN, req).await;
    assert_eq!(
        res.status(),
        200,
        "the headers went out with the first output"
    );
    let events = parse_sse(&res.text().await.expect("body"));
    let error = events
        .iter()
        .find(|e| e.event == "error")
        .expect("an in-stream error event");
    assert_eq!(error.data["error"]["type"], "timeout_error");
    assert!(gw
        .metrics()
        .await
        .lines()
        .any(|l| l.starts_with("gateway_http_requests_total")
            && l.contains("status=\"504_in_stream\"")));
    assert!(gw.metrics().await.contains("gateway_stream_failures_total"));
    let logs = gw.logs();
    assert!(
        logs.lines()
            .any(|l| l.contains("request failed after its stream started")
                && l.contains("\"status\":504")
                && l.contains("WARN")),
        "the failure is logged at WARN with its status"
    );
}

#[tokio::test]
async fn a_failed_turn_leaves_the_session_as_it_was_and_a_retry_succeeds_once() {
    let gw = gateway().await;
    let turn = |prompt: String| {
        let mut req = body(&prompt);
        req["session_id"] = json!("retry-me");
        gw.messages(TOKEN, req)
    };
    assert_eq!(turn("marker-first-turn".into()).await.status(), 200);
    let failing = scripted("marker-failing-turn", json!({"error": {"status": 500}}));
    assert_eq!(turn(failing).await.status(), 502);
    let (status, session) = gw.get_json_as(TOKEN, "/v1/sessions/retry-me").await;
    assert_eq!(status, 200);
    assert_eq!(session["turns"], 1, "{session}");
    let messages = session["messages"].as_array().cloned().unwrap_or_default();
    assert_eq!(messages.len(), 2, "only the first turn: {session}");
    assert!(!session.to_string().contains("marker-failing-turn"));
    // The retry sees the conversation without the failed turn, and exactly one of itself.
    assert_eq!(turn("marker-retry-turn".into()).await.status(), 200);
    let seen = gw.upstream_with("marker-retry-turn");
    let text = seen[0].body_text();
    assert!(text.contains("marker-first-turn"), "history kept");
    assert!(
        !text.contains("marker-failing-turn"),
        "the failed turn is gone: {text}"
    );
    assert_eq!(text.matches("marker-retry-turn").count(), 1);
    let (_, session) = gw.get_json_as(TOKEN, "/v1/sessions/retry-me").await;
    assert_eq!(session["turns"], 2);
}

#[tokio::test]
async fn an_unknown_content_block_is_refused_by_name() {
    let gw = gateway().await;
    let req = json!({"model": "sonnet", "max_tokens": 10, "messages": [{"role": "user",
        "content": [{"type": "text", "text": "marker-unknown"}, {"type": "hologram", "data": "x"}]}]});
    let res = gw.messages(TOKEN, req).await;
    assert_eq!(res.status(), 400);
    let err: Value = res.json().await.expect("json");
    assert!(err["error"]["message"]
        .as_str()
        .is_some_and(|m| m.contains("hologram") && m.contains("messages.0.content.1")));
    assert!(gw.upstream_with("marker-unknown").is_empty());
}

#[tokio::test]
async fn a_gzip_body_is_read_and_an_unknown_encoding_is_415() {
    let gw = gateway().await;
    let plain = body("marker-gzip").to_string();
    let mut child = std::process::Command::new("gzip")
        .arg("-c")
        .stdin(std::process::Stdio::piped())
        .stdout(std::process::Stdio::piped())
        .spawn()
        .expect("gzip runs");
    std::io::Write::write_all(&mut child.stdin.take().expect("stdin"), plain.as_bytes())
        .expect("written");
    let gzipped = child.wait_with_output().expect("gzip").stdout;
    let send = |encoding: &'static str, bytes: Vec<u8>| {
        gw.post("/v1/messages")
            .bearer_auth(TOKEN)
            .header("content-type", "application/json")
            .header("content-encoding", encoding)
            .body(bytes)
            .send()
    };
    assert_eq!(send("gzip", gzipped).await.expect("sent").status(), 200);
    assert!(!gw.upstream_with("marker-gzip").is_empty());
    let res = send("x-unheard-of", plain.into_bytes())
        .await
        .expect("sent");
    assert_eq!(res.status(), 415);
}

#[tokio::test]
async fn a_cut_stream_whose_retry_answers_differently_is_never_spliced() {
    let gw = gateway().await;
    let script = json!({"reply": "alpha beta gamma delta epsilon", "chunks": 5,
        "fail_after_chunks": 2, "retry_reply": "a different final answer"});
    // Not streamed: only the retried answer, as one block.
    let res = gw
        .messages(TOKEN, body(&scripted("marker-splice", script.clone())))
        .await;
    assert_eq!(res.status(), 200);
    let message: Value = res.json().await.expect("json");
    let blocks = message["content"].as_array().cloned().unwrap_or_default();
    assert_eq!(blocks.len(), 1, "{message}");
    assert_eq!(blocks[0]["text"], "a different final answer");
    // Streamed: the fragment already went out, so the stream ends with an error, not with the
    // other answer glued on.
    let mut req = body(&scripted("marker-splice-stream", script));
    req["stream"] = json!(true);
    let res = gw.messages(TOKEN, req).await;
    assert_eq!(res.status(), 200);
    let events = parse_sse(&res.text().await.expect("body"));
    let text = streamed_text(&events);
    assert!(!text.contains("different"), "spliced: {text:?}");
    assert!(events.iter().any(|e| e.event == "error"), "{events:?}");
    assert!(!events.iter().any(|e| e.event == "message_stop"));
}

#[tokio::test]
async fn an_upstream_429_keeps_its_retry_after() {
    let gw = gateway().await;
    let prompt = scripted(
        "marker-429",
        json!({"error": {"status": 429, "retry_after": 7}}),
    );
    let anthropic = gw.messages(TOKEN, body(&prompt)).await;
    let openai = gw
        .post("/v1/chat/completions")
        .bearer_auth(TOKEN)
        .json(&json!({"model": "sonnet", "messages": [{"role": "user", "content": prompt}]}))
        .send()
        .await
        .expect("sent");
    for res in [anthropic, openai] {
        assert_eq!(res.status(), 429);
        let retry_after = res.headers().get("retry-after").cloned();
        assert_eq!(
            retry_after.as_ref().and_then(|v| v.to_str().ok()),
            Some("7")
        );
        let err: Value = res.json().await.expect("json");
        assert!(err["error"]["message"].is_string());
    }
}

#[tokio::test]
async fn too_many_headers_are_431_in_each_apis_error_shape() {
    let gw = gateway().await;
    for path in ["/v1/messages", "/v1/chat/completions"] {
        let mut req = gw.post(path).bearer_auth(TOKEN).json(&body("marker-431"));
        for i in 0..150 {
            req = req.header(format!("x-filler-{i}"), "x");
        }
        let res = req.send().await.expect("sent");
        assert_eq!(res.status(), 431, "{path}");
        let err: Value = res.json().await.expect("a JSON error body");
        assert!(
            err["error"]["message"]
                .as_str()
                .is_some_and(|m| m.contains("headers")),
            "{path}: {err}"
        );
        if path == "/v1/messages" {
            assert_eq!(err["type"], "error");
        }
    }
    assert!(gw.upstream_with("marker-431").is_empty());
}

/// The OpenAI dialect's streamed text and whether it ended with an error object.
fn openai_stream(text: &str) -> (String, bool) {
    let events = parse_sse(text);
    let content = events
        .iter()
        .filter_map(|e| e.data["choices"][0]["delta"]["content"].as_str())
        .collect();
    let failed = events.iter().any(|e| e.data.get("error").is_some());
    (content, failed)
}

#[tokio::test]
async fn the_openai_dialect_gets_the_same_whole_answers_errors_and_no_splice() {
    let gw = gateway().await;
    let chat = |prompt: String, stream: bool| {
        gw.post("/v1/chat/completions")
            .bearer_auth(TOKEN)
            .json(&json!({"model": "sonnet", "stream": stream,
                "messages": [{"role": "user", "content": prompt}]}))
            .send()
    };
    // A 2 MiB answer, streamed, whole.
    let size = 2 << 20;
    let res = chat(
        scripted("marker-oa-big", json!({"reply_bytes": size})),
        true,
    )
    .await
    .expect("sent");
    assert_eq!(res.status(), 200);
    let (text, failed) = openai_stream(&res.text().await.expect("body"));
    assert!(!failed);
    assert!(
        text == fake_anthropic::script::sized_reply(size),
        "{} bytes",
        text.len()
    );
    // A cut stream whose retry differs: only the retry when not streamed, an error when the
    // fragment was already sent.
    let script = json!({"reply": "alpha beta gamma delta epsilon", "chunks": 5,
        "fail_after_chunks": 2, "retry_reply": "a different final answer"});
    let res = chat(scripted("marker-oa-splice", script.clone()), false)
        .await
        .expect("sent");
    assert_eq!(res.status(), 200);
    let completion: Value = res.json().await.expect("json");
    assert_eq!(
        completion["choices"][0]["message"]["content"],
        "a different final answer"
    );
    let res = chat(scripted("marker-oa-splice-stream", script), true)
        .await
        .expect("sent");
    let (text, failed) = openai_stream(&res.text().await.expect("body"));
    assert!(failed && !text.contains("different"), "{text:?}");
    // A prompt too long is the client's 400, in OpenAI's shape.
    let res = chat(format!("marker-oa-long {}", "word ".repeat(240_000)), false)
        .await
        .expect("sent");
    assert_eq!(res.status(), 400);
    let err: Value = res.json().await.expect("json");
    assert_eq!(err["error"]["type"], "invalid_request_error");
}
