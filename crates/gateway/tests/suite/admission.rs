//! Admission: rate limits per tenant and per client IP, and the concurrency limits with their
//! bounded queue. Every refusal happens before anything is spawned.

use crate::common::{body, scripted, Gateway};
use serde_json::{json, Value};

const ALICE: &str = "sk-ant-oat01-alice.admission";
const BOB: &str = "sk-ant-oat01-bob.admission";

fn slow(marker: &str) -> Value {
    body(&scripted(
        marker,
        json!({"reply": "slow", "chunks": 3, "chunk_delay_ms": 700}),
    ))
}

#[tokio::test]
async fn a_tenant_over_its_rate_gets_429_with_retry_and_ratelimit_headers() {
    let gw = Gateway::builder()
        .args(&["--rate-limit-per-tenant", "2"])
        .start()
        .await;
    for i in 0..2 {
        let res = gw.messages(ALICE, body(&format!("marker-rate-{i}"))).await;
        assert_eq!(res.status(), 200);
    }
    let res = gw.messages(ALICE, body("marker-rate-refused")).await;
    assert_eq!(res.status(), 429);
    let header = |name: &str| {
        res.headers()
            .get(name)
            .and_then(|v| v.to_str().ok())
            .map(str::to_owned)
    };
    assert!(header("retry-after").is_some_and(|s| s.parse::<u64>().is_ok_and(|n| n >= 1)));
    assert_eq!(
        header("anthropic-ratelimit-requests-limit").as_deref(),
        Some("2")
    );
    assert_eq!(
        header("anthropic-ratelimit-requests-remaining").as_deref(),
        Some("0")
    );
    assert!(header("anthropic-ratelimit-requests-reset").is_some_and(|r| r.ends_with('Z')));
    let err: Value = res.json().await.expect("json");
    assert_eq!(err["error"]["type"], "rate_limit_error");
    assert!(
        gw.upstream_with("marker-rate-refused").is_empty(),
        "nothing ran"
    );
    // Another tenant has its own budget.
    assert_eq!(
        gw.messages(BOB, body("marker-rate-bob")).await.status(),
        200
    );
}

#[tokio::test]
async fn a_client_ip_over_its_rate_gets_429_before_authentication() {
    let gw = Gateway::builder()
        .args(&["--rate-limit-per-ip", "2"])
        .start()
        .await;
    for _ in 0..2 {
        let res = gw
            .post("/v1/messages")
            .json(&body("x"))
            .send()
            .await
            .expect("sent");
        assert_eq!(res.status(), 401);
    }
    let res = gw
        .post("/v1/messages")
        .json(&body("x"))
        .send()
        .await
        .expect("sent");
    assert_eq!(res.status(), 429);
    let err: Value = res.json().await.expect("json");
    assert_eq!(err["error"]["type"], "rate_limit_error");
    // The OpenAI route refuses in OpenAI's shape.
    let res = gw
        .post("/v1/chat/completions")
        .json(&json!({"model": "sonnet", "messages": [{"role": "user", "content": "x"}]}))
        .send()
        .await
        .expect("sent");
    assert_eq!(res.status(), 429);
    let err: Value = res.json().await.expect("json");
    assert!(err.get("type").is_none(), "{err}");
    assert_eq!(err["error"]["code"], "rate_limit_exceeded", "{err}");
    assert_eq!(
        gw.get("/health").send().await.expect("sent").status(),
        200,
        "probes are exempt"
    );
}

#[tokio::test]
async fn forwarded_for_counts_only_behind_a_trusted_proxy() {
    let trusted = Gateway::builder()
        .args(&[
            "--rate-limit-per-ip",
            "1",
            "--trusted-proxies",
            "127.0.0.0/8",
        ])
        .start()
        .await;
    let from =
        |gw: &Gateway, ip: &'static str| gw.get("/v1/models").header("x-forwarded-for", ip).send();
    assert_eq!(
        from(&trusted, "203.0.113.1").await.expect("sent").status(),
        200
    );
    assert_eq!(
        from(&trusted, "203.0.113.2").await.expect("sent").status(),
        200
    );
    assert_eq!(
        from(&trusted, "203.0.113.1").await.expect("sent").status(),
        429
    );

    let untrusted = Gateway::builder()
        .args(&["--rate-limit-per-ip", "1"])
        .start()
        .await;
    assert_eq!(
        from(&untrusted, "203.0.113.1")
            .await
            .expect("sent")
            .status(),
        200
    );
    assert_eq!(
        from(&untrusted, "203.0.113.2")
            .await
            .expect("sent")
            .status(),
        429,
        "a spoofed header does not buy a new budget"
    );
}

#[tokio::test]
async fn a_tenant_over_its_concurrency_waits_then_gets_429_while_others_run() {
    let gw = Gateway::builder()
        .args(&[
            "--max-concurrent-runs-per-tenant",
            "1",
            "--queue-timeout-secs",
            "1",
        ])
        .start()
        .await;
    let (a, b, other) = tokio::join!(
        gw.messages(ALICE, slow("marker-conc-a")),
        gw.messages(ALICE, slow("marker-conc-b")),
        async {
            gw.until_running(1).await;
            gw.messages(BOB, slow("marker-conc-bob")).await
        }
    );
    let mut statuses = [a.status().as_u16(), b.status().as_u16()];
    statuses.sort();
    assert_eq!(statuses, [200, 429]);
    assert_eq!(other.status(), 200, "another tenant is not held up");
}

#[tokio::test]
async fn a_full_gateway_refuses_with_529_and_a_queued_request_runs_when_a_slot_frees() {
    let full = Gateway::builder()
        .args(&["--max-concurrent-runs", "1", "--max-queued-requests", "0"])
        .start()
        .await;
    let (a, b) = tokio::join!(full.messages(ALICE, slow("marker-full-a")), async {
        full.until_running(1).await;
        full.messages(BOB, slow("marker-full-b")).await
    });
    assert_eq!(a.status(), 200);
    assert_eq!(b.status(), 529);
    let err: Value = b.json().await.expect("json");
    assert_eq!(err["error"]["type"], "overloaded_error");

    let queued = Gateway::builder()
        .args(&["--max-concurrent-runs", "1", "--max-queued-requests", "4"])
        .start()
        .await;
    let (a, b) = tokio::join!(
        queued.messages(ALICE, slow("marker-queue-a")),
        queued.messages(BOB, slow("marker-queue-b"))
    );
    assert_eq!((a.status().as_u16(), b.status().as_u16()), (200, 200));
}
