//! `GET /v1/quota`: a tenant's own limits as the upstream reported them on its last call (a
//! subscription's windows, an API key's limits), read by the gateway's proxy from the
//! answer's headers; and an upstream refusal for a spent limit of the credential's own is a
//! clearly worded 429 of its own, the third-party allowance named as such.

use crate::common::redis_server::RedisServer;
use crate::common::{body, Gateway};
use serde_json::{json, Value};

const ALICE: &str = "sk-ant-oat01-quota-alice.token";
const BOB: &str = "sk-ant-oat01-quota-bob.token";
const KEY: &str = "sk-ant-api03-quota-carol-key";

fn now() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .expect("clock")
        .as_secs()
}

/// A prompt whose answer carries `headers` (and is the scripted `error`, if any).
fn scripted(marker: &str, headers: Value, error: Option<Value>) -> Value {
    let mut script = json!({"headers": headers});
    if let Some(error) = error {
        script["error"] = error;
    }
    body(&crate::common::scripted(marker, script))
}

#[tokio::test]
async fn the_limits_the_upstream_reports_appear_at_v1_quota_for_their_tenant_only() {
    let gw = Gateway::start().await;
    let (status, before) = gw.get_json_as(ALICE, "/v1/quota").await;
    assert_eq!(status, 200, "{before}");
    assert_eq!(before["observed"], false, "{before}");

    let five_hour_reset = now() + 3_600;
    let headers = json!({
        "anthropic-ratelimit-unified-status": "allowed_warning",
        "anthropic-ratelimit-unified-representative-claim": "five_hour",
        "anthropic-ratelimit-unified-reset": five_hour_reset.to_string(),
        "anthropic-ratelimit-unified-5h-utilization": "0.92",
        "anthropic-ratelimit-unified-5h-reset": five_hour_reset.to_string(),
        "anthropic-ratelimit-unified-7d-utilization": "0.31",
        "anthropic-ratelimit-unified-7d-reset": (now() + 5 * 86_400).to_string(),
    });
    let res = gw
        .messages(ALICE, scripted("marker-quota-1", headers, None))
        .await;
    assert_eq!(res.status(), 200);

    let (_, quota) = gw.get_json_as(ALICE, "/v1/quota").await;
    assert_eq!(quota["observed"], true, "{quota}");
    assert_eq!(quota["source"], "upstream", "{quota}");
    assert_eq!(quota["status"], "allowed_warning", "{quota}");
    assert_eq!(
        quota["windows"]["five_hour"]["utilization"], 0.92,
        "{quota}"
    );
    assert_eq!(
        quota["windows"]["seven_day"]["utilization"], 0.31,
        "{quota}"
    );
    let resets = quota["windows"]["five_hour"]["resets_at"]
        .as_str()
        .unwrap_or_default();
    assert!(resets.ends_with('Z') && resets.contains('T'), "{quota}");

    // Another tenant sees nothing of it.
    let (_, bob) = gw.get_json_as(BOB, "/v1/quota").await;
    assert_eq!(bob["observed"], false, "{bob}");
    assert_ne!(bob["tenant"], quota["tenant"]);

    // An API key's per-minute limits.
    let headers = json!({
        "anthropic-ratelimit-requests-limit": "50",
        "anthropic-ratelimit-requests-remaining": "49",
        "anthropic-ratelimit-requests-reset": "2026-12-03T12:00:30Z",
        "anthropic-ratelimit-tokens-limit": "90000",
    });
    let res = gw
        .messages(KEY, scripted("marker-quota-2", headers, None))
        .await;
    assert_eq!(res.status(), 200);
    let (_, carol) = gw.get_json_as(KEY, "/v1/quota").await;
    assert_eq!(carol["api"]["requests"]["remaining"], 49, "{carol}");
    assert_eq!(carol["api"]["tokens"]["limit"], 90_000, "{carol}");
    assert_eq!(
        gw.get_json_as("sk-ant-oat01-invalid.x", "/v1/quota")
            .await
            .0,
        401
    );
}

#[tokio::test]
async fn a_spent_third_party_allowance_is_a_429_that_says_so_and_when_it_resets() {
    let gw = Gateway::start().await;
    let reset = now() + 4 * 86_400;
    let spent = json!({
        "anthropic-ratelimit-unified-status": "rejected",
        "anthropic-ratelimit-unified-reset": reset.to_string(),
        "anthropic-ratelimit-unified-representative-claim": "seven_day_oauth_apps",
        "anthropic-ratelimit-unified-7d_oauth_apps-status": "rejected",
        "anthropic-ratelimit-unified-7d_oauth_apps-utilization": "1.0",
        "anthropic-ratelimit-unified-7d_oauth_apps-reset": reset.to_string(),
    });
    let refusal = json!({"status": 429, "message": "rate limited"});
    let res = gw
        .messages(
            ALICE,
            scripted("marker-allowance", spent.clone(), Some(refusal.clone())),
        )
        .await;
    assert_eq!(res.status(), 429);
    let retry_after = crate::common::retry_after(&res);
    assert!(
        retry_after > 3 * 86_400 && retry_after <= 4 * 86_400,
        "{retry_after}"
    );
    let error: Value = res.json().await.expect("json");
    assert_eq!(error["error"]["type"], "rate_limit_error", "{error}");
    let message = error["error"]["message"].as_str().unwrap_or_default();
    assert!(
        message.contains("allowance for third-party use"),
        "{message}"
    );
    assert!(message.contains("resets at"), "{message}");
    let (_, quota) = gw.get_json_as(ALICE, "/v1/quota").await;
    assert_eq!(quota["status"], "rejected", "{quota}");
    assert_eq!(
        quota["windows"]["seven_day_oauth_apps"]["utilization"], 1.0,
        "{quota}"
    );

    // The same refusal in the OpenAI dialect.
    let res = gw
        .post("/v1/chat/completions")
        .bearer_auth(ALICE)
        .json(&json!({"model": "sonnet", "messages": [{"role": "user", "content":
            crate::common::scripted("marker-allowance-openai", json!({"headers": spent, "error": refusal}))}]}))
        .send()
        .await
        .expect("sent");
    assert_eq!(res.status(), 429);
    let error: Value = res.json().await.expect("json");
    let message = error["error"]["message"].as_str().unwrap_or_default();
    assert!(message.contains("allowance for third-party use"), "{error}");

    // A plan's own 5-hour window is named as that, not as the third-party allowance.
    let five_hour = json!({
        "anthropic-ratelimit-unified-status": "rejected",
        "anthropic-ratelimit-unified-reset": (now() + 600).to_string(),
        "anthropic-ratelimit-unified-representative-claim": "five_hour",
    });
    let res = gw
        .messages(BOB, scripted("marker-five-hour", five_hour, Some(refusal)))
        .await;
    assert_eq!(res.status(), 429);
    assert!((1..=600).contains(&crate::common::retry_after(&res)));
    let error: Value = res.json().await.expect("json");
    let message = error["error"]["message"].as_str().unwrap_or_default();
    assert!(message.contains("five_hour"), "{message}");
    assert!(!message.contains("third-party"), "{message}");
}

#[tokio::test]
async fn what_one_instance_saw_of_a_tenants_limits_another_shows() {
    let redis = RedisServer::start();
    let start = || {
        Gateway::builder()
            .args(&["--redis-url", &redis.url()])
            .start()
    };
    let (a, b) = (start().await, start().await);
    let headers = json!({"anthropic-ratelimit-unified-5h-utilization": "0.5"});
    let res = a
        .messages(ALICE, scripted("marker-quota-shared", headers, None))
        .await;
    assert_eq!(res.status(), 200);
    // Shared on a task of its own after the answer: wait for it.
    let deadline = std::time::Instant::now() + crate::common::SETTLE;
    loop {
        let (_, quota) = b.get_json_as(ALICE, "/v1/quota").await;
        if quota["windows"]["five_hour"]["utilization"] == 0.5 {
            break;
        }
        assert!(std::time::Instant::now() < deadline, "{quota}");
        tokio::time::sleep(std::time::Duration::from_millis(50)).await;
    }
}
