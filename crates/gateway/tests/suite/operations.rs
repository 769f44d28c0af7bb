//! Operations: metrics, and what a run leaves behind.

use std::time::Duration;

use crate::common::{body, eventually, scripted, Gateway};
use serde_json::json;

const ALICE: &str = "sk-ant-oat01-alice.operations-SECRET";

#[tokio::test]
async fn metrics_count_requests_tokens_and_latency_without_secrets_in_labels() {
    let gw = Gateway::start().await;
    let mut req = body("marker-metrics");
    req["session_id"] = json!("metrics-session-id-77");
    assert_eq!(gw.messages(ALICE, req).await.status(), 200);
    let _ = gw
        .messages(
            ALICE,
            body(&scripted(
                "marker-metrics-err",
                json!({"error": {"status": 529}}),
            )),
        )
        .await;
    let _ = gw.post("/v1/messages").json(&body("x")).send().await;
    let res = gw.get("/metrics").send().await.expect("sent");
    assert_eq!(res.status(), 200);
    let text = res.text().await.expect("text");
    for needle in [
        r#"gateway_http_requests_total{route="/v1/messages",method="POST",status="200"}"#,
        r#"gateway_http_requests_total{route="/v1/messages",method="POST",status="401"}"#,
        r#"gateway_http_requests_total{route="/v1/messages",method="POST",status="529"}"#,
        "gateway_http_request_duration_seconds_bucket",
        "gateway_time_to_first_token_seconds_bucket",
        r#"gateway_tokens_total{model="sonnet",kind="output"}"#,
        r#"gateway_upstream_errors_total{status="529"}"#,
        "gateway_running_runs",
        "gateway_live_sessions",
        "gateway_queue_wait_seconds",
    ] {
        assert!(text.contains(needle), "missing {needle} in:\n{text}");
    }
    for secret in ["SECRET", "metrics-session-id-77", "alice"] {
        assert!(!text.contains(secret), "{secret} appeared in the metrics");
    }
}

fn slow_stream(marker: &str, chunks: u64) -> serde_json::Value {
    let mut req = body(&scripted(
        marker,
        json!({"reply": "a slow answer", "chunks": chunks, "chunk_delay_ms": 1000}),
    ));
    req["stream"] = json!(true);
    req
}

#[tokio::test]
async fn a_client_leaving_mid_stream_leaves_no_process_or_dir_behind() {
    let gw = Gateway::start().await;
    let mut res = gw.messages(ALICE, slow_stream("marker-leave", 20)).await;
    let _ = res.chunk().await.expect("first chunk");
    assert!(gw.descendants() > 0, "the run is going");
    drop(res);
    assert!(
        eventually(crate::common::SETTLE, || gw.descendants() == 0
            && gw.leftover_run_dirs() == 0)
        .await,
        "processes {} dirs {}",
        gw.descendants(),
        gw.leftover_run_dirs()
    );
}

#[tokio::test]
async fn a_non_streaming_client_that_gives_up_ends_its_run() {
    let gw = Gateway::start().await;
    let mut req = slow_stream("marker-give-up", 20);
    req["stream"] = json!(false);
    let res = crate::common::client()
        .post(format!("{}/v1/messages", gw.url))
        .bearer_auth(ALICE)
        .timeout(Duration::from_secs(3))
        .json(&req)
        .send()
        .await;
    assert!(res.is_err(), "the client timed out");
    assert!(
        eventually(crate::common::SETTLE, || gw.descendants() == 0
            && gw.leftover_run_dirs() == 0)
        .await
    );
}

#[tokio::test]
async fn sigterm_lets_running_requests_finish_then_exits_zero() {
    let mut gw = Gateway::start().await;
    let mut res = gw.messages(ALICE, slow_stream("marker-drain", 3)).await;
    let _ = res.chunk().await.expect("first chunk");
    gw.terminate();
    let mut body = Vec::new();
    while let Ok(Some(chunk)) = res.chunk().await {
        body.extend_from_slice(&chunk);
    }
    let text = String::from_utf8_lossy(&body);
    assert!(
        text.contains("message_stop"),
        "the running request finished: {text}"
    );
    let status = gw.wait_exit(Duration::from_secs(15)).await.expect("exited");
    let logs = gw.logs();
    let tail = &logs[logs.len().saturating_sub(3000)..];
    assert!(status.success(), "{status:?}: {tail}");
    assert_eq!(gw.leftover_run_dirs(), 0);
}

#[tokio::test]
async fn sigterm_ends_requests_that_outlive_the_grace() {
    let mut gw = Gateway::builder()
        .args(&["--shutdown-grace-secs", "1"])
        .start()
        .await;
    let pid = gw.pid();
    let mut res = gw.messages(ALICE, slow_stream("marker-outlive", 60)).await;
    let _ = res.chunk().await.expect("first chunk");
    assert!(!crate::common::descendants_of(pid).is_empty());
    gw.terminate();
    // Before the cut, the stream is told why it ends.
    let mut rest = Vec::new();
    while let Ok(Some(chunk)) = res.chunk().await {
        rest.extend_from_slice(&chunk);
    }
    let rest = String::from_utf8_lossy(&rest);
    assert!(
        rest.contains("event: error") && rest.contains("shutting down"),
        "{rest}"
    );
    let status = gw
        .wait_exit(Duration::from_secs(10))
        .await
        .expect("exited within the grace");
    assert!(status.success(), "{status:?}");
    assert!(
        eventually(crate::common::SETTLE, || crate::common::descendants_of(pid)
            .is_empty())
        .await,
        "no CLI outlives the gateway"
    );
    assert_eq!(gw.leftover_run_dirs(), 0);
}

#[tokio::test]
async fn log_lines_are_cloud_logging_json_with_the_request_id_and_trace() {
    let gw = Gateway::start().await;
    let res = gw
        .post("/v1/messages")
        .bearer_auth(ALICE)
        .header(
            "x-cloud-trace-context",
            "105445aa7843bc8bf206b12000100000/1;o=1",
        )
        .header("x-request-id", "req-test-42")
        .json(&body("marker-logs"))
        .send()
        .await
        .expect("sent");
    assert_eq!(
        res.headers()
            .get("x-request-id")
            .and_then(|v| v.to_str().ok()),
        Some("req-test-42")
    );
    assert_eq!(res.status(), 200);
    let logs = gw.stop().await;
    let lines: Vec<serde_json::Value> = logs
        .lines()
        .map(|l| serde_json::from_str(l).unwrap_or_else(|_| panic!("not JSON: {l}")))
        .collect();
    assert!(lines
        .iter()
        .all(|l| l["severity"].is_string() && l["message"].is_string()));
    let of_request: Vec<_> = lines
        .iter()
        .filter(|l| l["request_id"] == "req-test-42")
        .collect();
    assert!(of_request.len() >= 2, "{of_request:?}");
    assert!(of_request.iter().all(|l| l["logging.googleapis.com/trace"]
        .as_str()
        .is_some_and(|t| t.ends_with("105445aa7843bc8bf206b12000100000"))));
    let finished = of_request
        .iter()
        .find(|l| l["message"] == "request finished")
        .expect("the request line");
    assert_eq!(finished["httpRequest"]["status"], 200);
    assert_eq!(finished["httpRequest"]["requestMethod"], "POST");
    assert!(
        finished["tenant"].as_str().is_some_and(|t| t.len() == 12),
        "the tenant's fingerprint"
    );
    assert!(
        !logs.contains("alice"),
        "tenants appear only as fingerprints"
    );
}

/// Sends `bytes` on a new connection to the gateway and reads until the gateway closes it
/// (bounded by `crate::common::SETTLE`); what it answered, or `None` if it kept the connection.
async fn send_raw(gw: &Gateway, bytes: &[u8]) -> Option<String> {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let addr = gw.url.trim_start_matches("http://");
    let mut stream = tokio::net::TcpStream::connect(addr).await.expect("connect");
    stream.write_all(bytes).await.expect("write");
    let mut got = Vec::new();
    let read = tokio::time::timeout(crate::common::SETTLE, stream.read_to_end(&mut got)).await;
    read.ok()
        .map(|_| String::from_utf8_lossy(&got).into_owned())
}

#[tokio::test]
async fn a_client_that_never_finishes_its_headers_is_disconnected() {
    let gw = Gateway::builder()
        .args(&["--client-timeout-secs", "1"])
        .start()
        .await;
    assert!(
        send_raw(&gw, b"GET /health HTTP/1.1\r\nHost: gateway\r\nX-Slow: ")
            .await
            .is_some(),
        "the gateway closed the connection"
    );
    // An idle keep-alive connection is held no longer either.
    let answered = send_raw(&gw, b"GET /health HTTP/1.1\r\nHost: gateway\r\n\r\n")
        .await
        .expect("closed after going idle");
    assert!(answered.starts_with("HTTP/1.1 200"), "{answered}");
    // Everyone else is served meanwhile.
    assert_eq!(gw.get("/health").send().await.expect("sent").status(), 200);
}

#[tokio::test]
async fn a_request_body_that_stalls_is_ended_without_a_run() {
    let gw = Gateway::builder()
        .args(&["--client-timeout-secs", "1"])
        .start()
        .await;
    let head = format!(
        "POST /v1/messages HTTP/1.1\r\nHost: gateway\r\nAuthorization: Bearer {ALICE}\r\nContent-Type: application/json\r\nContent-Length: 1000\r\n\r\n{{\"model\":"
    );
    let answer = send_raw(&gw, head.as_bytes())
        .await
        .expect("the gateway ended the request");
    assert!(
        !answer.starts_with("HTTP/1.1 200"),
        "a stalled body is not run: {answer}"
    );
    assert!(
        gw.upstream_with("model").is_empty(),
        "nothing reached the upstream"
    );
}
