//! `GET /v1/usage`: each tenant's requests, tokens and cost, as the upstream reported them,
//! per model, today / last 7 days / this month; its own only; shared across instances on
//! Redis.

use std::time::Duration;

use crate::common::{body, Gateway};
use serde_json::Value;

const ALICE: &str = "sk-ant-oat01-usage-alice.token";
const BOB: &str = "sk-ant-oat01-usage-bob.token";

/// The tenant's usage once it counts `requests` today (recorded just after each turn).
pub async fn usage_with(gw: &Gateway, token: &str, requests: u64) -> Value {
    let deadline = std::time::Instant::now() + crate::common::SETTLE;
    loop {
        let (status, usage) = gw.get_json_as(token, "/v1/usage").await;
        assert_eq!(status, 200, "{usage}");
        if usage["today"]["requests"] == requests {
            return usage;
        }
        assert!(std::time::Instant::now() < deadline, "{usage}");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

#[tokio::test]
async fn a_tenant_sees_what_it_spent_as_the_upstream_reported_it_and_only_its_own() {
    let gw = Gateway::start().await;
    let mut reported = 0;
    for prompt in ["marker-usage-1", "marker-usage-2"] {
        let res = gw.messages(ALICE, body(prompt)).await;
        assert_eq!(res.status(), 200);
        let message: Value = res.json().await.expect("json");
        reported += message["usage"]["input_tokens"].as_u64().expect("usage");
    }
    assert_eq!(
        gw.messages(BOB, body("marker-usage-bob")).await.status(),
        200
    );

    let alice = usage_with(&gw, ALICE, 2).await;
    assert_eq!(alice["today"]["input_tokens"], reported, "{alice}");
    assert!(alice["today"]["output_tokens"]
        .as_u64()
        .is_some_and(|n| n > 0));
    assert_eq!(alice["today"]["models"]["sonnet"]["requests"], 2, "{alice}");
    for period in ["last_7_days", "month"] {
        assert_eq!(alice[period]["requests"], 2, "{alice}");
    }
    let bob = usage_with(&gw, BOB, 1).await;
    assert_ne!(bob["tenant"], alice["tenant"]);
    assert_eq!(
        gw.get_json_as("sk-ant-oat01-invalid.x", "/v1/usage")
            .await
            .0,
        401
    );
}

#[tokio::test]
async fn a_tenant_at_its_budget_is_refused_before_anything_runs_until_it_resets() {
    let gw = Gateway::builder()
        .args(&["--tenant-daily-budget-usd", "0.02"])
        .start()
        .await;
    // Each of these costs about $0.015 (the CLI's estimate for the fake's token counts): the
    // second crosses the budget and is the last to run.
    for (i, prompt) in ["marker-budget-1", "marker-budget-2"]
        .into_iter()
        .enumerate()
    {
        let res = gw.messages(ALICE, body(prompt)).await;
        assert_eq!(
            res.status(),
            200,
            "{i}: {}",
            res.text().await.unwrap_or_default()
        );
    }
    let refused = gw.messages(ALICE, body("marker-budget-3")).await;
    assert_eq!(refused.status(), 429);
    let retry_after = crate::common::retry_after(&refused);
    assert!((1..=86_400).contains(&retry_after), "{retry_after}");
    let error: Value = refused.json().await.expect("json");
    assert_eq!(error["error"]["type"], "rate_limit_error");
    let message = error["error"]["message"].as_str().unwrap_or_default();
    assert!(message.contains("daily budget"), "{message}");
    assert!(message.contains("resets at"), "{message}");
    assert!(
        gw.upstream_with("marker-budget-3").is_empty(),
        "nothing ran"
    );
    // Another tenant has its own budget.
    assert_eq!(
        gw.messages(BOB, body("marker-budget-bob")).await.status(),
        200
    );
}

#[tokio::test]
async fn a_turn_its_client_abandons_still_counts_what_the_upstream_was_paid() {
    // The attack: stream a costly turn, read what it produced, and hang up before its end,
    // so that no result (and, before, no usage) is ever recorded against a budget.
    let gw = Gateway::start().await;
    let prompt = crate::common::scripted(
        "marker-abandoned",
        serde_json::json!({"tools": [crate::common::bash("echo worked")],
            "reply": "a long answer", "chunks": 300, "chunk_delay_ms": 1000}),
    );
    let mut req = body(&prompt);
    req["stream"] = serde_json::json!(true);
    let mut res = gw.messages(ALICE, req).await;
    assert_eq!(res.status(), 200);
    let mut seen = String::new();
    while !seen.contains("text_delta") {
        let chunk = res
            .chunk()
            .await
            .expect("stream")
            .expect("more of the stream");
        seen.push_str(&String::from_utf8_lossy(&chunk));
    }
    drop(res);

    let usage = usage_with(&gw, ALICE, 1).await;
    assert!(
        usage["today"]["input_tokens"]
            .as_u64()
            .is_some_and(|n| n > 0),
        "{usage}"
    );
    assert!(
        usage["today"]["cost_usd"].as_f64().is_some_and(|c| c > 0.0),
        "{usage}"
    );
}
