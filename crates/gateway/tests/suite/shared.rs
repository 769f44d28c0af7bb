//! Several instances on one Redis (`--redis-url`), a real `redis-server` on loopback: what
//! must hold across instances does, and a Redis that is away is a 503, never a local stand-in.

use std::time::Duration;

use crate::common::redis_server::RedisServer;
use crate::common::Gateway;
use claude_gateway::admission::{RateError, RateLimits};
use claude_gateway::shared::Redis;
use claude_gateway::tenant::identity::TenantId;
use serde_json::{json, Value};

const TENANT: &str = "sk-ant-oat01-sharedalpha.token";
const OTHER: &str = "sk-ant-oat01-sharedbeta.token";

async fn instance(redis: &RedisServer, per_minute: &str) -> Gateway {
    Gateway::builder()
        .args(&[
            "--redis-url",
            &redis.url(),
            "--rate-limit-per-tenant",
            per_minute,
        ])
        .start()
        .await
}

/// A request that passes the tenant's rate check and needs no CLI run: token counting.
async fn count(gw: &Gateway, token: &str) -> reqwest::Response {
    gw.post("/v1/messages/count_tokens")
        .bearer_auth(token)
        .json(&json!({"model": "sonnet", "messages": [{"role": "user", "content": "hi"}]}))
        .send()
        .await
        .expect("sent")
}

#[tokio::test]
async fn a_tenants_rate_limit_holds_across_instances() {
    let redis = RedisServer::start();
    let a = instance(&redis, "3").await;
    let b = instance(&redis, "3").await;
    // Three a minute in all, wherever they land.
    for gw in [&a, &b, &a] {
        assert_eq!(count(gw, TENANT).await.status(), 200);
    }
    let refused = count(&b, TENANT).await;
    assert_eq!(refused.status(), 429);
    let retry_after = crate::common::retry_after(&refused);
    assert!((1..=60).contains(&retry_after), "{retry_after}");
    let error: Value = refused.json().await.expect("json");
    assert_eq!(error["error"]["type"], "rate_limit_error");
    // Another tenant has its own count.
    assert_eq!(count(&a, OTHER).await.status(), 200);
}

#[tokio::test]
async fn without_redis_requests_that_need_it_are_503_until_it_returns() {
    let mut redis = RedisServer::start();
    let gw = instance(&redis, "100").await;
    assert_eq!(count(&gw, TENANT).await.status(), 200);
    redis.stop();
    let res = count(&gw, TENANT).await;
    assert_eq!(res.status(), 503);
    let error: Value = res.json().await.expect("json");
    let message = error["error"]["message"].as_str().unwrap_or_default();
    assert!(message.contains("Redis"), "{message}");
    assert!(!message.contains("127.0.0.1"), "no address: {message}");
    // /ready says why.
    let (status, ready) = gw.get_json("/ready").await;
    assert_eq!(status, 503);
    assert!(ready.to_string().contains("redis"), "{ready}");
    // Back by itself once Redis is.
    redis.resume();
    let deadline = std::time::Instant::now() + crate::common::SETTLE;
    while count(&gw, TENANT).await.status() != 200 {
        assert!(
            std::time::Instant::now() < deadline,
            "service did not resume"
        );
        tokio::time::sleep(std::time::Duration::from_millis(100)).await;
    }
    assert_eq!(gw.get_json("/ready").await.0, 200);
}

/// What every rate-limit store does, local or shared: a tenant's burst passes, the next is
/// refused with when to retry, other tenants and the off limit are unaffected.
async fn rate_limit_contract(limits: RateLimits, run: &str) {
    let tenant = TenantId::from_dir_name(format!("contract-{run}-a"));
    let other = TenantId::from_dir_name(format!("contract-{run}-b"));
    for _ in 0..2 {
        assert!(limits.check_tenant(&tenant).await.is_ok(), "{run}");
    }
    match limits.check_tenant(&tenant).await {
        Err(RateError::Limited(refused)) => {
            assert_eq!(refused.per_minute, 2, "{run}");
            assert!(refused.retry_after > Duration::ZERO, "{run}");
            assert!(refused.retry_after <= Duration::from_secs(30), "{run}");
        }
        other => panic!("{run}: the third is refused, not {other:?}"),
    }
    assert!(limits.check_tenant(&other).await.is_ok(), "{run}");
    assert!(
        limits
            .check_ip("127.0.0.1".parse().expect("ip"))
            .await
            .is_ok(),
        "{run}: the IP limit is off"
    );
}

#[tokio::test]
async fn local_and_shared_rate_limits_keep_one_contract() {
    rate_limit_contract(RateLimits::new(0, 2), "local").await;
    let redis = RedisServer::start();
    let url = secrecy::SecretString::from(redis.url());
    let shared = Redis::new(&url).expect("a valid URL");
    rate_limit_contract(RateLimits::shared(0, 2, shared), "redis").await;
}

#[tokio::test]
async fn a_refresh_racing_on_two_instances_spends_the_token_once_and_both_get_it() {
    let redis = RedisServer::start();
    let a = instance(&redis, "100").await;
    // Both instances refresh against one token endpoint (A's upstream), as they would in life.
    let token_url = format!("{}/v1/oauth/token", a.fake.base_url());
    let b = Gateway::builder()
        .args(&["--redis-url", &redis.url(), "--oauth-token-url", &token_url])
        .start()
        .await;
    // The exchange is slow, so the second request arrives while the first instance runs it.
    let send = |gw: &Gateway, marker: &str| {
        let mut req = crate::common::body(marker);
        req["oauth_credentials"] = json!({"access_token": "sk-ant-oat01-hal.old",
            "refresh_token": "sk-ant-ort01-hal.slow-r1", "expires_at": 1_000_000_000_000u64});
        gw.post("/v1/messages").json(&req).send()
    };
    let (ra, rb) = tokio::join!(
        send(&a, "marker-shared-refresh-a"),
        send(&b, "marker-shared-refresh-b")
    );
    let (ra, rb) = (ra.expect("sent"), rb.expect("sent"));
    assert_eq!((ra.status().as_u16(), rb.status().as_u16()), (200, 200));
    let ra: Value = ra.json().await.expect("json");
    let rb: Value = rb.json().await.expect("json");
    let rotated = &ra["refreshed_oauth_credentials"]["refresh_token"];
    assert!(
        rotated.as_str().is_some_and(|t| t.contains("rotated")),
        "{ra}"
    );
    assert_eq!(rotated, &rb["refreshed_oauth_credentials"]["refresh_token"]);
    let spent = a
        .upstream()
        .iter()
        .filter(|r| r.path == "/v1/oauth/token")
        .count();
    assert_eq!(spent, 1, "the rotating refresh token was spent once");
    // What Redis held for the waiting instance was sealed: no token in it.
    let logs = b.stop().await;
    assert!(!logs.contains("hal.rotated") && !logs.contains("hal.slow-r1"));
}

#[tokio::test]
async fn a_credential_is_checked_with_the_upstream_once_across_instances() {
    let redis = RedisServer::start();
    let a = instance(&redis, "100").await;
    let b = instance(&redis, "100").await;
    let checks = |gw: &Gateway| {
        gw.upstream()
            .iter()
            .filter(|r| r.path == "/api/oauth/profile" || r.path == "/v1/models")
            .count()
    };
    // A made-up key: refused by A's upstream, then by B from the shared verdict.
    let made_up = "sk-ant-api03-invalid-made-up";
    assert_eq!(count(&a, made_up).await.status(), 401);
    assert_eq!(count(&b, made_up).await.status(), 401);
    // A good token: accepted once, the same tenant on B without asking again.
    assert_eq!(count(&a, TENANT).await.status(), 200);
    assert_eq!(count(&b, TENANT).await.status(), 200);
    assert_eq!((checks(&a), checks(&b)), (2, 0));
}

#[tokio::test]
async fn a_tenants_concurrency_holds_across_instances() {
    let redis = RedisServer::start();
    let limits = [
        "--redis-url",
        &redis.url(),
        "--max-concurrent-runs-per-tenant",
        "1",
        "--queue-timeout-secs",
        "1",
    ];
    let a = Gateway::builder().args(&limits).start().await;
    let b = Gateway::builder().args(&limits).start().await;
    let slow = |marker: &str| {
        crate::common::body(&crate::common::scripted(
            marker,
            json!({"reply": "slow", "chunks": 3, "chunk_delay_ms": 700}),
        ))
    };
    // One run of the tenant's on A; the same tenant on B waits, then is refused; another
    // tenant on B runs.
    let (on_a, on_b, other) = tokio::join!(
        a.messages(TENANT, slow("marker-shared-conc-a")),
        async {
            a.until_running(1).await;
            b.messages(TENANT, slow("marker-shared-conc-b")).await
        },
        async {
            a.until_running(1).await;
            b.messages(OTHER, slow("marker-shared-conc-other")).await
        }
    );
    assert_eq!(on_a.status(), 200);
    assert_eq!(on_b.status(), 429, "one run at a time across instances");
    assert_eq!(other.status(), 200, "another tenant is not held up");
    // Once A's run is over (its process gone), the tenant's slot is free on B too.
    let deadline = std::time::Instant::now() + crate::common::SETTLE;
    while a.running_runs().await > 0 {
        assert!(std::time::Instant::now() < deadline, "A's run never ended");
        tokio::time::sleep(std::time::Duration::from_millis(50)).await;
    }
    let res = b
        .messages(TENANT, crate::common::body("marker-shared-conc-after"))
        .await;
    assert_eq!(res.status(), 200);
}
