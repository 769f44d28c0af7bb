//! Operations: metrics, and what a run leaves behind.

mod common;

use common::{body, scripted, Gateway};
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
