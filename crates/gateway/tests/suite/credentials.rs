//! OAuth credentials in the body: expired access tokens are refreshed by the gateway, once per
//! rotating refresh token, and the rotated credentials go back to the client.

use crate::common::{body, parse_sse, Gateway};
use serde_json::{json, Value};

fn expired(access: &str, refresh: &str) -> Value {
    json!({
        "access_token": access,
        "refresh_token": refresh,
        "expires_at": 1_000_000_000_000u64,
        "scopes": ["user:inference", "user:profile"],
        "subscription_type": "max"
    })
}

fn token_calls(gw: &Gateway) -> usize {
    gw.upstream()
        .iter()
        .filter(|r| r.path == "/v1/oauth/token")
        .count()
}

#[tokio::test]
async fn an_expired_token_is_refreshed_and_the_rotated_credentials_returned() {
    let gw = Gateway::start().await;
    let mut req = body("marker-refresh");
    req["oauth_credentials"] = expired("sk-ant-oat01-erin.old", "sk-ant-ort01-erin.r1");
    let res = gw.messages_body_only(&req).await;
    assert_eq!(res.status(), 200);
    let msg: Value = res.json().await.expect("json");
    let fresh = &msg["refreshed_oauth_credentials"];
    let access = fresh["access_token"].as_str().expect("new access token");
    assert!(access.starts_with("sk-ant-oat01-erin.refreshed"));
    assert!(fresh["refresh_token"]
        .as_str()
        .is_some_and(|r| r.starts_with("sk-ant-ort01-erin.rotated")));
    assert!(fresh["expires_at"]
        .as_u64()
        .is_some_and(|t| t > 1_700_000_000_000));
    let seen = gw.upstream_with("marker-refresh");
    assert!(!seen.is_empty());
    assert!(
        seen.iter().all(|r| r.credential() == Some(access)),
        "the CLI used the new token"
    );
    assert_eq!(token_calls(&gw), 1);
    let logs = gw.stop().await;
    for secret in ["erin.old", "erin.r1", "erin.refreshed", "erin.rotated"] {
        assert!(!logs.contains(secret), "{secret} leaked into the logs");
    }
}

#[tokio::test]
async fn concurrent_requests_with_one_refresh_token_refresh_once() {
    let gw = Gateway::start().await;
    // The exchange is slow, so both requests are waiting on it when it completes (a request
    // that arrives after a refresh completed gets nothing from it).
    let send = |marker: &'static str| {
        let mut req = body(marker);
        req["oauth_credentials"] = expired("sk-ant-oat01-fay.old", "sk-ant-ort01-fay.slow-r1");
        gw.post("/v1/messages").json(&req).send()
    };
    let (a, b) = tokio::join!(send("marker-race-a"), send("marker-race-b"));
    let (a, b) = (a.expect("sent"), b.expect("sent"));
    assert_eq!((a.status().as_u16(), b.status().as_u16()), (200, 200));
    let a: Value = a.json().await.expect("json");
    let b: Value = b.json().await.expect("json");
    assert_eq!(
        a["refreshed_oauth_credentials"]["refresh_token"],
        b["refreshed_oauth_credentials"]["refresh_token"],
        "both clients learn the one rotated refresh token"
    );
    assert_eq!(
        token_calls(&gw),
        1,
        "the rotating refresh token was spent once"
    );
}

#[tokio::test]
async fn a_rejected_refresh_token_is_401() {
    let gw = Gateway::start().await;
    let mut req = body("marker-refresh-dead");
    req["oauth_credentials"] = expired("sk-ant-oat01-gus.old", "sk-ant-ort01-invalid.gus");
    let res = gw.messages_body_only(&req).await;
    assert_eq!(res.status(), 401);
    let err: Value = res.json().await.expect("json");
    assert_eq!(err["error"]["type"], "authentication_error");
    assert!(!err.to_string().contains("invalid.gus"));
    assert!(
        gw.upstream().iter().all(|r| !r.is_messages()),
        "nothing ran"
    );
}

#[tokio::test]
async fn a_streamed_response_carries_the_rotated_credentials_in_message_start() {
    let gw = Gateway::start().await;
    let mut req = body("marker-refresh-stream");
    req["stream"] = json!(true);
    req["oauth_credentials"] = expired("sk-ant-oat01-hal.old", "sk-ant-ort01-hal.r1");
    let res = gw.messages_body_only(&req).await;
    assert_eq!(res.status(), 200);
    let events = parse_sse(&res.text().await.expect("body"));
    let start = events
        .iter()
        .find(|e| e.event == "message_start")
        .expect("start");
    assert!(
        start.data["message"]["refreshed_oauth_credentials"]["access_token"]
            .as_str()
            .is_some_and(|t| t.starts_with("sk-ant-oat01-hal.refreshed"))
    );
}

#[tokio::test]
async fn a_token_that_is_not_expired_is_used_as_it_is() {
    let gw = Gateway::start().await;
    let mut req = body("marker-fresh");
    req["oauth_credentials"] = json!({
        "access_token": "sk-ant-oat01-ida.current",
        "refresh_token": "sk-ant-ort01-ida.r1",
        "expires_at": 4_102_444_800_000u64
    });
    let res = gw.messages_body_only(&req).await;
    assert_eq!(res.status(), 200);
    let msg: Value = res.json().await.expect("json");
    assert!(msg.get("refreshed_oauth_credentials").is_none());
    assert_eq!(token_calls(&gw), 0);
}
