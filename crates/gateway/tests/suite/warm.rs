//! Warm processes (`--warm-processes-max`): a recently active tenant's next new conversation
//! begins in a CLI already started and sandboxed for it, with the same answer as a cold start,
//! the caller's own credential, and never for another tenant.

use std::time::Duration;

use crate::common::{body, Gateway};
use serde_json::{json, Value};

/// Two tokens of one account: one tenant.
const WARMY: &str = "sk-ant-oat01-warmy.first";
const WARMY_AGAIN: &str = "sk-ant-oat01-warmy.second";
const OTHER: &str = "sk-ant-oat01-chilly.token";

async fn gateway(extra: &[&str]) -> Gateway {
    let mut args = vec!["--warm-processes-max", "2"];
    args.extend_from_slice(extra);
    Gateway::builder().args(&args).start().await
}

/// A gauge or counter from `/metrics` (0 when absent).
async fn metric(gw: &Gateway, line_start: &str) -> u64 {
    gw.metrics()
        .await
        .lines()
        .find_map(|l| l.strip_prefix(line_start))
        .and_then(|v| v.trim().parse::<f64>().ok())
        .map_or(0, |v| v as u64)
}

async fn warm_processes(gw: &Gateway) -> u64 {
    metric(gw, "gateway_warm_processes ").await
}

async fn starts(gw: &Gateway, outcome: &str) -> u64 {
    metric(
        gw,
        &format!("gateway_warm_starts_total{{outcome=\"{outcome}\"}} "),
    )
    .await
}

/// Waits (bounded) until the gateway holds `n` warm processes.
async fn until_warm(gw: &Gateway, n: u64) {
    let deadline = std::time::Instant::now() + crate::common::SETTLE;
    while warm_processes(gw).await != n {
        assert!(
            std::time::Instant::now() < deadline,
            "{n} warm processes never"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

async fn ask(gw: &Gateway, token: &str, prompt: &str, model: &str) -> Value {
    let mut req = body(prompt);
    req["model"] = json!(model);
    let res = gw.messages(token, req).await;
    assert_eq!(res.status(), 200);
    res.json().await.expect("json")
}

#[tokio::test]
async fn a_new_conversation_begins_in_a_warm_process_with_the_callers_own_credential() {
    let gw = gateway(&[]).await;
    let cold = ask(&gw, WARMY, "marker-warm-1 hello", "sonnet").await;
    assert_eq!(starts(&gw, "miss").await, 1);
    // Made ready for the tenant's next new conversation.
    until_warm(&gw, 1).await;
    let warm = ask(&gw, WARMY_AGAIN, "marker-warm-1 hello", "sonnet").await;
    assert_eq!(starts(&gw, "hit").await, 1);
    assert_eq!(warm["content"], cold["content"], "the same answer as cold");
    // The upstream got the credential this request presented, not the one the process was
    // started with.
    let calls = gw.upstream_with("marker-warm-1");
    let last = calls.last().expect("the call");
    let auth = last.header("authorization").unwrap_or_default();
    assert_eq!(auth, format!("Bearer {WARMY_AGAIN}"));
    // A warm conversation is a session like any other: it goes on.
    let session = warm["session_id"].as_str().expect("session id").to_owned();
    let mut next = body("marker-warm-2 again");
    next["session_id"] = json!(session);
    let res = gw.messages(WARMY, next).await;
    assert_eq!(res.status(), 200);
    let seen: Vec<String> = gw
        .upstream_with("marker-warm-2")
        .last()
        .and_then(|r| r.body["messages"].as_array().cloned())
        .unwrap_or_default()
        .iter()
        .map(|m| m["content"].to_string())
        .collect();
    assert!(seen.iter().any(|c| c.contains("marker-warm-1")), "{seen:?}");
}

#[tokio::test]
async fn a_warm_process_serves_only_its_tenant_and_settings_and_is_retired_when_idle() {
    let gw = gateway(&["--warm-idle-secs", "2"]).await;
    ask(&gw, WARMY, "marker-warm-a first", "sonnet").await;
    until_warm(&gw, 1).await;
    // Another tenant's new conversation does not get it.
    ask(&gw, OTHER, "marker-warm-b other", "sonnet").await;
    assert_eq!(starts(&gw, "hit").await, 0);
    until_warm(&gw, 2).await;
    // Nor does the tenant's own with other settings; its process for them replaces the old.
    ask(&gw, WARMY, "marker-warm-c opus", "opus").await;
    assert_eq!(starts(&gw, "hit").await, 0);
    assert_eq!(starts(&gw, "miss").await, 3);
    until_warm(&gw, 2).await;
    // Unused for the idle window, they are retired.
    until_warm(&gw, 0).await;
    assert_eq!(gw.running_runs().await, 0);
}

/// Attack: a warm process is started with one request's credential and serves the next one's.
/// From inside a conversation that began warm, a tool looks for either real credential in
/// every process's environment it can read and in the files it can read: it finds neither.
#[tokio::test]
async fn a_warm_process_holds_no_real_credential_of_either_request() {
    let gw = gateway(&["--max-security-level", "DEVELOPER"]).await;
    let mut first = body("marker-warm-env-1 hello");
    first["security_level"] = json!("DEVELOPER");
    assert_eq!(gw.messages(WARMY, first).await.status(), 200);
    until_warm(&gw, 1).await;
    // The account name is spelt in two halves, so that the command's own text (which the CLI
    // keeps in its files) cannot be what the search finds.
    let probe = "a=war; b=my; for f in /proc/[0-9]*/environ; do tr '\\0' '\\n' < $f 2>/dev/null; done | \
                 grep -o \"sk-ant-oat01-$a$b[A-Za-z0-9._-]*\" | sort -u; \
                 grep -rhoa \"sk-ant-oat01-$a$b[A-Za-z0-9._-]*\" ~ /tmp 2>/dev/null | sort -u; echo probed";
    let mut second = body(&crate::common::scripted(
        "marker-warm-env-2",
        json!({"tools": [crate::common::bash(probe)], "reply": "done"}),
    ));
    second["security_level"] = json!("DEVELOPER");
    assert_eq!(gw.messages(WARMY_AGAIN, second).await.status(), 200);
    assert_eq!(starts(&gw, "hit").await, 1, "the second began warm");
    let seen = crate::common::tool_results(&gw.upstream_with("marker-warm-env-2")).join("\n");
    assert!(seen.contains("probed"), "{seen}");
    for real in [WARMY, WARMY_AGAIN] {
        assert!(!seen.contains(real), "{real} inside the sandbox: {seen}");
    }
    assert!(!seen.contains("warmy"), "{seen}");
}
