//! Sessions through the real CLI: stateful turns resume the CLI transcript, bound to the tenant.

use crate::common::{body, scripted, Gateway};
use fake_anthropic::RecordedRequest;
use serde_json::{json, Value};

const ALICE: &str = "sk-ant-oat01-alice.sessions";
const BOB: &str = "sk-ant-oat01-bob.sessions";

async fn turn(
    gw: &Gateway,
    token: &str,
    session: Option<&str>,
    prompt: &str,
) -> (u16, Value, Option<String>) {
    let mut req = gw
        .post("/v1/messages")
        .bearer_auth(token)
        .json(&body(prompt));
    if let Some(id) = session {
        req = req.header("x-session-id", id);
    }
    let res = req.send().await.expect("sent");
    let status = res.status().as_u16();
    let header = res
        .headers()
        .get("x-session-id")
        .and_then(|v| v.to_str().ok())
        .map(str::to_owned);
    (status, res.json().await.unwrap_or(Value::Null), header)
}

/// The user/assistant turns of the model call that carried `marker`, as (role, text) pairs.
pub fn conversation(request: &RecordedRequest) -> Vec<(String, String)> {
    request.body["messages"]
        .as_array()
        .cloned()
        .unwrap_or_default()
        .iter()
        .filter(|m| m["role"] == "user" || m["role"] == "assistant")
        .map(|m| {
            let text = match &m["content"] {
                Value::String(s) => s.clone(),
                Value::Array(blocks) => blocks
                    .iter()
                    .filter_map(|b| b["text"].as_str())
                    .filter(|t| !t.starts_with("<system-reminder>"))
                    .collect::<Vec<_>>()
                    .join(" "),
                _ => String::new(),
            };
            (m["role"].as_str().unwrap_or("").to_owned(), text)
        })
        .collect()
}

fn last_call_with(gw: &Gateway, marker: &str) -> RecordedRequest {
    gw.upstream_with(marker)
        .pop()
        .expect("the marker reached the upstream")
}

#[tokio::test]
async fn a_session_resumes_with_the_earlier_turns_roles_intact() {
    let gw = Gateway::start().await;
    let (status, first, header) = turn(
        &gw,
        ALICE,
        Some("user1-conv-123"),
        "marker-s1 my name is Zed",
    )
    .await;
    assert_eq!(status, 200);
    assert_eq!(header.as_deref(), Some("user1-conv-123"));
    assert_eq!(first["session_id"], "user1-conv-123");
    let (status, _, _) = turn(
        &gw,
        ALICE,
        Some("user1-conv-123"),
        "marker-s2 what is my name",
    )
    .await;
    assert_eq!(status, 200);
    let seen = conversation(&last_call_with(&gw, "marker-s2"));
    assert_eq!(seen.len(), 3, "{seen:?}");
    assert_eq!(seen[0].0, "user");
    assert!(seen[0].1.contains("marker-s1 my name is Zed"));
    assert_eq!(seen[1].0, "assistant");
    assert!(seen[1].1.contains("You said: marker-s1"));
    assert_eq!(seen[2].0, "user");
    assert!(seen[2].1.contains("marker-s2"));
}

#[tokio::test]
async fn a_request_without_a_session_gets_a_new_one_it_can_continue() {
    let gw = Gateway::start().await;
    let (_, first, header) = turn(&gw, ALICE, None, "marker-new-1").await;
    let id = header.expect("x-session-id");
    assert_eq!(first["session_id"], id.as_str());
    let mut req = body("marker-new-2");
    req["session_id"] = json!(id);
    assert_eq!(gw.messages(ALICE, req).await.status(), 200);
    let seen = conversation(&last_call_with(&gw, "marker-new-2"));
    assert!(seen[0].1.contains("marker-new-1"), "{seen:?}");
}

#[tokio::test]
async fn another_tenant_with_the_same_client_id_has_its_own_session() {
    let gw = Gateway::start().await;
    turn(
        &gw,
        ALICE,
        Some("shared-id"),
        "marker-alice-private secret plans",
    )
    .await;
    let (status, _, _) = turn(&gw, BOB, Some("shared-id"), "marker-bob-turn").await;
    assert_eq!(status, 200);
    let bob = last_call_with(&gw, "marker-bob-turn");
    assert!(!bob.body_text().contains("marker-alice-private"));
    assert_eq!(conversation(&bob).len(), 1);
    // The session API agrees: Bob cannot see or delete Alice's session.
    let res = gw
        .get("/v1/sessions/shared-id")
        .bearer_auth(BOB)
        .send()
        .await
        .expect("sent");
    let bobs: Value = res.json().await.expect("json");
    assert!(!bobs.to_string().contains("marker-alice-private"));
}

#[tokio::test]
async fn stateless_history_reaches_the_model_turn_by_turn() {
    let gw = Gateway::start().await;
    let req = json!({
        "model": "sonnet",
        "max_tokens": 100,
        "messages": [
            {"role": "user", "content": "marker-hist-q1 what is 2+2"},
            {"role": "assistant", "content": "marker-hist-a1 it is 4"},
            {"role": "user", "content": [{"type": "text", "text": "marker-hist-q2 and 3+3"}]}
        ]
    });
    let res = gw.messages(ALICE, req).await;
    assert_eq!(res.status(), 200);
    let seen = conversation(&last_call_with(&gw, "marker-hist-q2"));
    let roles: Vec<&str> = seen.iter().map(|(r, _)| r.as_str()).collect();
    assert_eq!(roles, ["user", "assistant", "user"], "{seen:?}");
    assert!(seen[0].1.contains("marker-hist-q1"));
    assert!(seen[1].1.contains("marker-hist-a1 it is 4"));
    assert!(seen[2].1.contains("marker-hist-q2"));
}

#[tokio::test]
async fn concurrent_turns_on_one_session_serialise_or_get_409() {
    let gw = Gateway::builder()
        .args(&["--session-lock-wait-secs", "1"])
        .start()
        .await;
    let slow = |marker: &str| {
        let mut req = body(&scripted(
            marker,
            json!({"reply": "slow", "chunks": 4, "chunk_delay_ms": 800}),
        ));
        req["session_id"] = json!("busy-session");
        gw.messages(ALICE, req)
    };
    let (a, b) = tokio::join!(slow("marker-busy-a"), slow("marker-busy-b"));
    let mut statuses = [a.status().as_u16(), b.status().as_u16()];
    statuses.sort();
    assert_eq!(statuses, [200, 409]);
    let loser = if a.status() == 409 { a } else { b };
    let err: Value = loser.json().await.expect("json");
    assert!(err["error"]["message"]
        .as_str()
        .is_some_and(|m| m.contains("busy")));
    // The transcript is whole: one more turn sees exactly one earlier exchange.
    let mut req = body("marker-busy-after");
    req["session_id"] = json!("busy-session");
    assert_eq!(gw.messages(ALICE, req).await.status(), 200);
    let seen = conversation(&last_call_with(&gw, "marker-busy-after"));
    let roles: Vec<&str> = seen.iter().map(|(r, _)| r.as_str()).collect();
    assert_eq!(roles, ["user", "assistant", "user"], "{seen:?}");
}

#[tokio::test]
async fn the_session_api_lists_shows_and_deletes_only_the_tenants_sessions() {
    let gw = Gateway::start().await;
    turn(&gw, ALICE, Some("api-conv"), "marker-api-1").await;
    turn(&gw, ALICE, Some("api-conv"), "marker-api-2").await;
    let (_, list) = gw.get_json_as(ALICE, "/v1/sessions").await;
    let sessions = list["data"].as_array().expect("data");
    assert_eq!(sessions.len(), 1);
    assert_eq!(sessions[0]["id"], "api-conv");
    assert_eq!(sessions[0]["turns"], 2);
    let (_, one) = gw.get_json_as(ALICE, "/v1/sessions/api-conv").await;
    let roles: Vec<&str> = one["messages"]
        .as_array()
        .expect("messages")
        .iter()
        .filter_map(|m| m["role"].as_str())
        .collect();
    assert_eq!(roles, ["user", "assistant", "user", "assistant"]);
    assert!(one["messages"][2]["content"]
        .to_string()
        .contains("marker-api-2"));

    let (_, bob_list) = gw.get_json_as(BOB, "/v1/sessions").await;
    assert_eq!(bob_list["data"].as_array().map(Vec::len), Some(0));
    for res in [
        gw.get("/v1/sessions/api-conv")
            .bearer_auth(BOB)
            .send()
            .await
            .expect("sent"),
        crate::common::client()
            .delete(format!("{}/v1/sessions/api-conv", gw.url))
            .bearer_auth(BOB)
            .send()
            .await
            .expect("sent"),
        gw.get("/v1/sessions/no-such-session")
            .bearer_auth(ALICE)
            .send()
            .await
            .expect("sent"),
    ] {
        assert_eq!(res.status(), 404);
    }
    let bad = gw
        .get("/v1/sessions/bad%2Fid")
        .bearer_auth(ALICE)
        .send()
        .await
        .expect("sent");
    assert_eq!(bad.status(), 400);
    let unauth = gw.get("/v1/sessions").send().await.expect("sent");
    assert_eq!(unauth.status(), 401);

    let deleted = crate::common::client()
        .delete(format!("{}/v1/sessions/api-conv", gw.url))
        .bearer_auth(ALICE)
        .send()
        .await
        .expect("sent");
    assert_eq!(deleted.status(), 204);
    let gone = gw
        .get("/v1/sessions/api-conv")
        .bearer_auth(ALICE)
        .send()
        .await
        .expect("sent");
    assert_eq!(gone.status(), 404);
    // The id now starts a fresh conversation.
    turn(&gw, ALICE, Some("api-conv"), "marker-api-fresh").await;
    let seen = conversation(&last_call_with(&gw, "marker-api-fresh"));
    assert_eq!(seen.len(), 1, "{seen:?}");
}

#[tokio::test]
async fn sessions_survive_a_gateway_restart() {
    let data = tempfile::tempdir().expect("tempdir");
    let first = Gateway::builder().data_dir(data.path()).start().await;
    turn(&first, ALICE, Some("durable"), "marker-before-restart").await;
    // The CLI writes its transcript just after answering; stop only once it is on disk.
    let mut messages = 0;
    for _ in 0..300 {
        let (_, session) = first.get_json_as(ALICE, "/v1/sessions/durable").await;
        messages = session["messages"].as_array().map_or(0, Vec::len);
        if messages == 2 {
            break;
        }
        tokio::time::sleep(std::time::Duration::from_millis(100)).await;
    }
    assert_eq!(messages, 2);
    first.stop().await;
    let second = Gateway::builder().data_dir(data.path()).start().await;
    let (status, _, _) = turn(&second, ALICE, Some("durable"), "marker-after-restart").await;
    assert_eq!(status, 200);
    let seen = conversation(&last_call_with(&second, "marker-after-restart"));
    assert!(seen[0].1.contains("marker-before-restart"), "{seen:?}");
}

#[tokio::test]
async fn idle_sessions_expire() {
    let gw = Gateway::builder()
        .args(&["--session-ttl-secs", "1"])
        .start()
        .await;
    turn(&gw, ALICE, Some("short-lived"), "marker-expire").await;
    let mut left = usize::MAX;
    for _ in 0..150 {
        tokio::time::sleep(std::time::Duration::from_millis(200)).await;
        let (_, list) = gw.get_json_as(ALICE, "/v1/sessions").await;
        left = list["data"].as_array().map_or(0, Vec::len);
        if left == 0 {
            break;
        }
    }
    assert_eq!(left, 0);
}

#[tokio::test]
async fn invalid_session_ids_are_400() {
    let gw = Gateway::start().await;
    for bad in ["../../etc/passwd", "a b", "x".repeat(129).as_str()] {
        let mut req = body("marker-bad-session");
        req["session_id"] = json!(bad);
        let res = gw.messages(ALICE, req).await;
        assert_eq!(res.status(), 400, "{bad}");
    }
    assert!(gw.upstream_with("marker-bad-session").is_empty());
}

/// How many turns started a new CLI process (the gateway logs each run, live or not).
pub fn cli_starts(gw: &Gateway) -> usize {
    gw.logs()
        .lines()
        .filter(|l| l.contains("starting CLI run") && l.contains("\"live\":false"))
        .count()
}

async fn three_turns(gw: &Gateway, session: &str) -> Vec<Value> {
    for prompt in ["marker-lc-1 alpha", "marker-lc-2 beta", "marker-lc-3 gamma"] {
        let (status, _, _) = turn(gw, ALICE, Some(session), prompt).await;
        assert_eq!(status, 200);
    }
    let (_, session) = gw
        .get_json_as(ALICE, &format!("/v1/sessions/{session}"))
        .await;
    session["messages"].as_array().cloned().unwrap_or_default()
}

fn texts(messages: &[Value]) -> Vec<(String, String)> {
    messages
        .iter()
        .map(|m| {
            let text: String = m["content"]
                .as_array()
                .into_iter()
                .flatten()
                .filter_map(|b| b["text"].as_str())
                .collect();
            (m["role"].as_str().unwrap_or("").to_owned(), text)
        })
        .collect()
}

#[tokio::test]
async fn live_and_cold_turns_give_the_same_transcript() {
    let live = Gateway::start().await;
    let cold = Gateway::builder()
        .args(&["--live-sessions-max", "0"])
        .start()
        .await;
    let (live_messages, cold_messages) = tokio::join!(
        three_turns(&live, "same-conv"),
        three_turns(&cold, "same-conv")
    );
    assert_eq!(live_messages.len(), 6);
    assert_eq!(texts(&live_messages), texts(&cold_messages));
    // The live gateway started the CLI once; the cold one once per turn.
    assert_eq!(cli_starts(&live), 1);
    assert_eq!(cli_starts(&cold), 3);
    // Both sent the model the same conversation for the last turn.
    let last = |gw: &Gateway| conversation(&last_call_with(gw, "marker-lc-3"));
    assert_eq!(last(&live), last(&cold));
}

#[tokio::test]
async fn a_turn_with_different_settings_gets_a_fresh_process_with_the_same_history() {
    let gw = Gateway::start().await;
    turn(&gw, ALICE, Some("switch"), "marker-sw-1").await;
    let mut req = body("marker-sw-2");
    req["model"] = json!("haiku");
    req["session_id"] = json!("switch");
    assert_eq!(gw.messages(ALICE, req).await.status(), 200);
    assert_eq!(cli_starts(&gw), 2, "the model changed: a new process");
    let seen = conversation(&last_call_with(&gw, "marker-sw-2"));
    assert!(seen[0].1.contains("marker-sw-1"), "{seen:?}");
    assert!(last_call_with(&gw, "marker-sw-2").body["model"]
        .as_str()
        .is_some_and(|m| m.contains("haiku")));
}

#[tokio::test]
async fn live_processes_are_bounded_per_tenant_and_evicted_sessions_continue_cold() {
    let gw = Gateway::start().await; // one live process per tenant
    turn(&gw, ALICE, Some("first"), "marker-ev-1").await;
    turn(&gw, ALICE, Some("second"), "marker-ev-2").await; // evicts "first"
    let (status, _, _) = turn(&gw, ALICE, Some("first"), "marker-ev-3").await;
    assert_eq!(status, 200);
    assert_eq!(cli_starts(&gw), 3, "the evicted session was resumed cold");
    let seen = conversation(&last_call_with(&gw, "marker-ev-3"));
    assert!(seen[0].1.contains("marker-ev-1"), "{seen:?}");
}
