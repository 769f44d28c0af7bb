//! POST /v1/messages through the real Claude Code CLI against fake-anthropic.

use crate::common::{body, parse_sse, scripted, streamed_text, tool_results, Gateway};
use serde_json::{json, Value};

const ALICE: &str = "sk-ant-oat01-alice.messages-test";
const BOB: &str = "sk-ant-oat01-bob.messages-test";

#[tokio::test]
async fn non_streaming_request_returns_an_anthropic_message() {
    let gw = Gateway::start().await;
    let res = gw.messages(ALICE, body("marker-nonstream hello")).await;
    assert_eq!(res.status(), 200);
    let msg: Value = res.json().await.expect("json");
    assert_eq!(msg["type"], "message");
    assert_eq!(msg["role"], "assistant");
    assert!(msg["id"].as_str().is_some_and(|id| id.starts_with("msg_")));
    assert_eq!(msg["stop_reason"], "end_turn");
    assert_eq!(
        msg["content"][0]["text"],
        "Hello from fake-anthropic. You said: marker-nonstream hello"
    );
    assert!(msg["usage"]["input_tokens"].as_u64().unwrap_or(0) > 0);
    assert!(msg["usage"]["output_tokens"].as_u64().unwrap_or(0) > 0);
    // The alias reached the CLI, which resolved it for the upstream.
    assert!(msg["model"]
        .as_str()
        .is_some_and(|m| m.starts_with("claude-")));
}

#[tokio::test]
async fn streaming_request_relays_anthropics_event_sequence() {
    let gw = Gateway::start().await;
    let mut req = body("marker-stream please stream");
    req["stream"] = json!(true);
    let res = gw.messages(ALICE, req).await;
    assert_eq!(res.status(), 200);
    assert!(res
        .headers()
        .get("content-type")
        .and_then(|v| v.to_str().ok())
        .is_some_and(|v| v.starts_with("text/event-stream")));
    let events = parse_sse(&res.text().await.expect("body"));
    let names: Vec<&str> = events
        .iter()
        .map(|e| e.event.as_str())
        .filter(|n| *n != "ping")
        .collect();
    assert_eq!(names.first(), Some(&"message_start"));
    assert_eq!(names[1], "content_block_start");
    assert!(names[2..names.len() - 3]
        .iter()
        .all(|n| *n == "content_block_delta"));
    assert_eq!(
        &names[names.len() - 3..],
        ["content_block_stop", "message_delta", "message_stop"]
    );
    for e in &events {
        assert_eq!(
            e.data["type"],
            e.event.as_str(),
            "data.type matches the event name"
        );
    }
    assert_eq!(
        streamed_text(&events),
        "Hello from fake-anthropic. You said: marker-stream please stream"
    );
    let delta = events
        .iter()
        .find(|e| e.event == "message_delta")
        .expect("delta");
    assert_eq!(delta.data["delta"]["stop_reason"], "end_turn");
}

#[tokio::test]
async fn system_prompt_is_appended_by_default_and_can_replace() {
    let gw = Gateway::start().await;
    let mut req = body("marker-sys-append");
    req["system"] = json!("SYSTEM-APPENDED-7f3a");
    assert_eq!(gw.messages(ALICE, req).await.status(), 200);
    let upstream = gw.upstream_with("marker-sys-append");
    let system = upstream[0].body["system"].to_string();
    assert!(system.contains("SYSTEM-APPENDED-7f3a"));
    assert!(system.contains("Claude Code"), "the CLI's own prompt stays");

    let mut req = body("marker-sys-replace");
    req["system"] = json!([{"type": "text", "text": "SYSTEM-REPLACED-9c1d"}]);
    req["system_prompt_mode"] = json!("replace");
    assert_eq!(gw.messages(ALICE, req).await.status(), 200);
    let upstream = gw.upstream_with("marker-sys-replace");
    let system = upstream[0].body["system"].to_string();
    assert!(system.contains("SYSTEM-REPLACED-9c1d"));
    assert!(!system.contains("You are an interactive agent"));
}

#[tokio::test]
async fn each_tenants_token_reaches_the_upstream_only_for_its_own_request() {
    let gw = Gateway::start().await;
    let a = gw.messages(ALICE, body("marker-tenant-alice"));
    let b = gw.messages(BOB, body("marker-tenant-bob"));
    let (a, b) = tokio::join!(a, b);
    assert_eq!(a.status(), 200);
    assert_eq!(b.status(), 200);
    for (marker, token) in [("marker-tenant-alice", ALICE), ("marker-tenant-bob", BOB)] {
        let seen = gw.upstream_with(marker);
        assert!(!seen.is_empty(), "{marker} reached the upstream");
        for r in seen {
            assert_eq!(
                r.header("authorization"),
                Some(format!("Bearer {token}").as_str())
            );
            assert!(r
                .header("anthropic-beta")
                .is_some_and(|b| b.contains("oauth-2025-04-20")));
        }
    }
}

#[tokio::test]
async fn api_keys_reach_the_upstream_as_x_api_key() {
    let gw = Gateway::start().await;
    let key = "sk-ant-api03-carol.messages-test";
    let res = gw
        .post("/v1/messages")
        .header("x-api-key", key)
        .json(&body("marker-apikey"))
        .send()
        .await
        .expect("sent");
    assert_eq!(res.status(), 200);
    let seen = gw.upstream_with("marker-apikey");
    assert_eq!(seen[0].header("x-api-key"), Some(key));
    assert_eq!(seen[0].header("authorization"), None);
}

#[tokio::test]
async fn body_oauth_credentials_are_accepted() {
    let gw = Gateway::start().await;
    let mut req = body("marker-body-oauth");
    req["oauth_credentials"] = json!({"access_token": ALICE, "refresh_token": "sk-ant-ort01-alice.r", "expires_at": 4102444800000u64, "scopes": ["user:inference"], "subscription_type": "max"});
    let res = gw.messages_body_only(&req).await;
    assert_eq!(res.status(), 200);
    assert_eq!(
        gw.upstream_with("marker-body-oauth")[0].credential(),
        Some(ALICE)
    );
}

async fn error_of(res: reqwest::Response) -> (u16, Value) {
    let status = res.status().as_u16();
    (status, res.json().await.expect("json error body"))
}

#[tokio::test]
async fn missing_or_unrecognised_credentials_are_401_without_spawning() {
    let gw = Gateway::start().await;
    let none = gw
        .post("/v1/messages")
        .json(&body("x"))
        .send()
        .await
        .expect("sent");
    let (status, err) = error_of(none).await;
    assert_eq!(status, 401);
    assert_eq!(err["type"], "error");
    assert_eq!(err["error"]["type"], "authentication_error");
    for bad in [
        "sk-proj-openai-key",
        "sk-ant-ort01-refresh-token",
        "hunter2",
    ] {
        let (status, err) = error_of(gw.messages(bad, body("x")).await).await;
        assert_eq!(status, 401, "{bad}");
        assert!(
            !err.to_string().contains(bad),
            "the credential is not echoed"
        );
    }
    let garbage = gw
        .post("/v1/messages")
        .body("{not json")
        .send()
        .await
        .expect("sent");
    assert_eq!(garbage.status(), 401, "no credential outranks a bad body");
    assert!(gw.upstream().is_empty(), "nothing reached the upstream");
    assert_eq!(gw.leftover_run_dirs(), 0);
}

#[tokio::test]
async fn malformed_requests_are_400_invalid_request_error() {
    let gw = Gateway::start().await;
    let cases = [
        json!("not an object"),
        json!({"model": "sonnet"}),
        json!({"model": "sonnet", "messages": []}),
        json!({"model": "sonnet", "messages": [{"role": "assistant", "content": "hi"}]}),
        json!({"model": "sonnet --x", "messages": [{"role": "user", "content": "hi"}]}),
        json!({"model": "sonnet", "messages": [{"role": "user", "content": "hi"}], "tools": [{"name": "t", "input_schema": {}}]}),
    ];
    for case in cases {
        let (status, err) = error_of(gw.messages(ALICE, case.clone()).await).await;
        assert_eq!(status, 400, "{case}");
        assert_eq!(err["error"]["type"], "invalid_request_error", "{case}");
        assert!(!err["error"]["message"].as_str().unwrap_or("").is_empty());
    }
    assert!(gw.upstream().is_empty());
}

#[tokio::test]
async fn upstream_errors_map_to_their_anthropic_statuses() {
    let gw = Gateway::start().await;
    let cases = [
        (401, 401, "authentication_error"),
        (429, 429, "rate_limit_error"),
        (529, 529, "overloaded_error"),
        (500, 502, "api_error"),
    ];
    for (upstream, status, kind) in cases {
        for stream in [false, true] {
            let mut req = body(&scripted(
                "marker-err",
                json!({"error": {"status": upstream}}),
            ));
            req["stream"] = json!(stream);
            let (got, err) = error_of(gw.messages(ALICE, req).await).await;
            assert_eq!(got, status, "upstream {upstream}, stream {stream}");
            assert_eq!(err["error"]["type"], kind, "upstream {upstream}");
        }
    }
}

#[tokio::test]
async fn a_dead_token_is_401_even_when_the_cli_would_retry() {
    // Retries on, as in production: the auth failure must still come back quickly as a 401.
    let gw = Gateway::builder()
        .args(&["--upstream-max-retries", "5"])
        .start()
        .await;
    let started = std::time::Instant::now();
    let (status, err) = error_of(
        gw.messages("sk-ant-oat01-invalid.dead", body("marker-dead"))
            .await,
    )
    .await;
    assert_eq!(status, 401);
    assert_eq!(err["error"]["type"], "authentication_error");
    assert!(!err.to_string().contains("invalid.dead"));
    // Not a timing assertion on speed, only that the CLI's 10-step backoff was not waited out.
    assert!(started.elapsed() < std::time::Duration::from_secs(30));
}

#[tokio::test]
async fn a_cli_that_does_not_answer_its_version_is_reported_by_ready_and_as_502() {
    // A missing --claude-bin stops the gateway at start-up (tests/suite/first_run.rs); one that is
    // there but broken is what /ready reports.
    let dir = tempfile::tempdir().expect("tempdir");
    let broken = dir.path().join("claude");
    std::fs::write(&broken, "#!/bin/sh\nexit 1\n").expect("write");
    std::fs::set_permissions(&broken, std::os::unix::fs::PermissionsExt::from_mode(0o755))
        .expect("chmod");
    let gw = Gateway::builder().claude_bin(&broken).start().await;
    let ready = gw.get("/ready").send().await.expect("sent");
    assert_eq!(ready.status(), 503);
    let ready: Value = ready.json().await.expect("json");
    assert!(
        ready["reasons"][0]
            .as_str()
            .is_some_and(|r| r.contains(broken.to_str().expect("utf-8"))),
        "{ready}"
    );
    assert!(ready["checks"].as_array().is_some_and(|c| c
        .iter()
        .any(|c| c["name"] == "cli" && c["status"] == "fail")));
    let (status, err) = error_of(gw.messages(ALICE, body("x")).await).await;
    assert_eq!(status, 502);
    assert_eq!(err["error"]["type"], "api_error");
}

#[tokio::test]
async fn a_run_over_its_time_limit_is_504_and_cleaned_up() {
    let gw = Gateway::builder()
        .args(&["--run-timeout-secs", "2"])
        .start()
        .await;
    let req = body(&scripted(
        "marker-slow",
        json!({"first_byte_delay_ms": 8000}),
    ));
    let res = gw.messages(ALICE, req).await;
    assert!(
        res.headers().contains_key("x-session-id"),
        "a turn that failed once started still names its session"
    );
    let (status, err) = error_of(res).await;
    assert_eq!(status, 504);
    assert_eq!(err["error"]["type"], "timeout_error");
    assert!(
        crate::common::eventually(crate::common::SETTLE, || {
            gw.leftover_run_dirs() == 0 && gw.descendants() == 0
        })
        .await,
        "nothing is left of the run"
    );
}

#[tokio::test]
async fn ready_health_and_models_answer() {
    let gw = Gateway::builder()
        .args(&["--models", "sonnet,claude-opus-4-5"])
        .start()
        .await;
    let (_, health) = gw.get_json("/health").await;
    assert_eq!(health["status"], "ok");
    let ready = gw.get("/ready").send().await.expect("sent");
    assert_eq!(ready.status(), 200);
    let ready: Value = ready.json().await.expect("json");
    assert_eq!(ready["claude_code_version"], crate::common::cli_version());
    let checks: Vec<(&str, &str)> = ready["checks"]
        .as_array()
        .expect("checks")
        .iter()
        .filter_map(|c| Some((c["name"].as_str()?, c["status"].as_str()?)))
        .collect();
    assert_eq!(
        checks.iter().map(|c| c.0).collect::<Vec<_>>(),
        ["cli", "sandbox", "data dir"]
    );
    assert!(checks.iter().all(|c| c.1 != "fail"), "{ready}");
    let (_, models) = gw.get_json("/v1/models").await;
    let ids: Vec<&str> = models["data"]
        .as_array()
        .expect("data")
        .iter()
        .filter_map(|m| m["id"].as_str())
        .collect();
    assert_eq!(ids, ["sonnet", "claude-opus-4-5"]);
    assert_eq!(models["object"], "list");
    assert_eq!(models["has_more"], false);
    let one = gw
        .get("/v1/models/claude-opus-4-5")
        .send()
        .await
        .expect("sent");
    assert_eq!(one.status(), 200);
    let missing = gw.get("/v1/models/nope").send().await.expect("sent");
    assert_eq!(missing.status(), 404);
}

#[tokio::test]
async fn a_scripted_bash_call_runs_in_the_tenant_workspace() {
    let gw = Gateway::start().await;
    let script = json!({"tools": [{"name": "Bash", "input": {"command": "echo tool-ran > proof.txt && cat proof.txt && pwd", "description": "prove"}}]});
    let res = gw
        .messages(ALICE, body(&scripted("marker-bash", script)))
        .await;
    assert_eq!(res.status(), 200);
    let msg: Value = res.json().await.expect("json");
    let results = tool_results(&gw.upstream_with("marker-bash"));
    assert_eq!(
        results.len(),
        1,
        "the upstream saw one tool_result: {results:?}"
    );
    assert!(results[0].contains("tool-ran"), "{results:?}");
    assert!(results[0].ends_with("/workspace"), "{results:?}");
    // The file landed in the tenant's workspace on the host.
    let tenants = std::fs::read_dir(gw.tenants_dir()).expect("tenants");
    let proofs: Vec<_> = tenants
        .filter_map(|t| t.ok())
        .map(|t| t.path().join("workspace/proof.txt"))
        .filter(|p| p.exists())
        .collect();
    assert_eq!(proofs.len(), 1);
    // By default the client sees one plain message: the final text, no tool blocks.
    let content = msg["content"].as_array().expect("content");
    assert!(content.iter().all(|b| b["type"] == "text"));
    assert!(content[0]["text"]
        .as_str()
        .is_some_and(|t| t.contains("tool-ran")));
}

#[tokio::test]
async fn tool_activity_blocks_show_tool_use_and_result_in_order() {
    let gw = Gateway::start().await;
    let script = json!({"tools": [{"name": "Bash", "input": {"command": "echo shown-activity"}}]});
    let mut req = body(&scripted("marker-activity", script));
    req["tool_activity"] = json!("blocks");
    req["stream"] = json!(true);
    let res = gw.messages(ALICE, req).await;
    assert_eq!(res.status(), 200);
    let events = parse_sse(&res.text().await.expect("body"));
    let blocks: Vec<(u64, String)> = events
        .iter()
        .filter(|e| e.event == "content_block_start")
        .map(|e| {
            (
                e.data["index"].as_u64().unwrap_or(99),
                e.data["content_block"]["type"]
                    .as_str()
                    .unwrap_or("")
                    .to_owned(),
            )
        })
        .collect();
    assert_eq!(
        blocks,
        [
            (0, "tool_use".to_owned()),
            (1, "tool_result".to_owned()),
            (2, "text".to_owned())
        ]
    );
    let result = events
        .iter()
        .find(|e| e.data["content_block"]["type"] == "tool_result")
        .expect("tool_result");
    assert!(result.data["content_block"]["content"]
        .to_string()
        .contains("shown-activity"));
}

#[tokio::test]
async fn a_quiet_stream_gets_pings() {
    let gw = Gateway::builder()
        .args(&["--ping-interval-secs", "1"])
        .start()
        .await;
    let mut req = body(&scripted(
        "marker-pings",
        json!({"reply": "slow reply", "chunks": 3, "chunk_delay_ms": 1500}),
    ));
    req["stream"] = json!(true);
    let res = gw.messages(ALICE, req).await;
    let events = parse_sse(&res.text().await.expect("body"));
    assert!(events.iter().any(|e| e.event == "ping"), "{events:?}");
    assert_eq!(streamed_text(&events), "slow reply");
}

#[tokio::test]
async fn a_client_that_disconnects_mid_stream_ends_its_run() {
    let gw = Gateway::start().await;
    let mut req = body(&scripted(
        "marker-disconnect",
        json!({"reply": "a long slow answer", "chunks": 20, "chunk_delay_ms": 1000}),
    ));
    req["stream"] = json!(true);
    let mut res = gw.messages(ALICE, req).await;
    assert_eq!(res.status(), 200);
    let _first = res.chunk().await.expect("first chunk");
    assert_eq!(gw.leftover_run_dirs(), 1, "the run is in progress");
    drop(res);
    let mut left = 1;
    for _ in 0..300 {
        tokio::time::sleep(std::time::Duration::from_millis(100)).await;
        left = gw.leftover_run_dirs();
        if left == 0 {
            break;
        }
    }
    assert_eq!(
        left, 0,
        "the run's private dir is gone once the client left"
    );
}

#[tokio::test]
async fn no_token_appears_in_the_gateway_logs() {
    let gw = Gateway::start().await;
    let secret = "sk-ant-oat01-logscan.SECRETPART-1234";
    let dead = "sk-ant-oat01-invalid.SECRETPART-5678";
    let key = "sk-ant-api03-logscan.SECRETPART-9abc";
    let _ = gw.messages(secret, body("marker-log-ok")).await;
    let mut req = body("marker-log-stream");
    req["stream"] = json!(true);
    let _ = gw.messages(secret, req).await.text().await;
    let _ = gw.messages(dead, body("marker-log-dead")).await;
    let _ = gw
        .post("/v1/messages")
        .header("x-api-key", key)
        .json(&body("marker-log-key"))
        .send()
        .await;
    let _ = gw
        .messages(
            secret,
            body(&scripted(
                "marker-log-err",
                json!({"error": {"status": 500}}),
            )),
        )
        .await;
    let logs = gw.stop().await;
    assert!(logs.contains("starting CLI run"), "logs were captured");
    assert!(
        !logs.contains("SECRETPART"),
        "a credential leaked into the logs"
    );
}

#[tokio::test]
async fn a_stream_that_breaks_upstream_still_delivers_the_whole_answer_once() {
    let gw = Gateway::start().await;
    let mut req = body(&scripted(
        "marker-midstream",
        json!({"reply": "partial answer then the rest", "chunks": 4, "fail_after_chunks": 2}),
    ));
    req["stream"] = json!(true);
    let res = gw.messages(ALICE, req).await;
    assert_eq!(res.status(), 200);
    let events = parse_sse(&res.text().await.expect("body"));
    assert_eq!(streamed_text(&events), "partial answer then the rest");
    let count = |name: &str| events.iter().filter(|e| e.event == name).count();
    assert_eq!(count("content_block_start"), count("content_block_stop"));
    assert_eq!(count("message_stop"), 1);
}

#[tokio::test]
async fn a_failure_after_the_stream_started_is_an_sse_error_event() {
    let gw = Gateway::builder()
        .args(&["--run-timeout-secs", "3"])
        .start()
        .await;
    let mut req = body(&scripted(
        "marker-late-failure",
        json!({"reply": "this answer will not finish in time", "chunks": 10, "chunk_delay_ms": 1000}),
    ));
    req["stream"] = json!(true);
    let res = gw.messages(ALICE, req).await;
    assert_eq!(res.status(), 200, "headers were sent with the first output");
    let events = parse_sse(&res.text().await.expect("body"));
    assert!(events.iter().any(|e| e.event == "content_block_delta"));
    let last = events.last().expect("events");
    assert_eq!(last.event, "error", "{events:?}");
    assert_eq!(last.data["type"], "error");
    assert_eq!(last.data["error"]["type"], "timeout_error");
    assert!(!events.iter().any(|e| e.event == "message_stop"));
}

#[tokio::test]
async fn demo_mode_serves_a_round_trip_with_its_built_in_upstream() {
    let data = tempfile::tempdir().expect("tempdir");
    let mut child = tokio::process::Command::new(env!("CARGO_BIN_EXE_claude-gateway"))
        .args(["serve", "--demo", "--listen", "127.0.0.1:0"])
        .arg("--data-dir")
        .arg(data.path())
        .arg("--claude-bin")
        .arg(crate::common::claude_bin())
        .env_remove("ANTHROPIC_BASE_URL")
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::null())
        .kill_on_drop(true)
        .spawn()
        .expect("starts");
    use tokio::io::AsyncBufReadExt;
    let mut lines = tokio::io::BufReader::new(child.stdout.take().expect("stdout")).lines();
    let url = loop {
        let line = lines.next_line().await.expect("read").expect("a line");
        if let Some(url) = line.strip_prefix("claude-gateway listening on ") {
            break url.to_owned();
        }
    };
    let res = crate::common::client()
        .post(format!("{url}/v1/messages"))
        .bearer_auth("sk-ant-oat01-demo")
        .json(&body("demo hello"))
        .send()
        .await
        .expect("sent");
    assert_eq!(res.status(), 200);
    let msg: Value = res.json().await.expect("json");
    assert!(msg["content"][0]["text"]
        .as_str()
        .is_some_and(|t| t.ends_with("demo hello")));
}

#[tokio::test]
async fn an_oversized_body_is_413_request_too_large() {
    let gw = Gateway::builder()
        .args(&["--max-body-bytes", "1000"])
        .start()
        .await;
    let res = gw.messages(ALICE, body(&"x".repeat(5000))).await;
    assert_eq!(res.status(), 413);
    let err: Value = res.json().await.expect("json");
    assert_eq!(err["error"]["type"], "request_too_large");
    // The same on the other routes that take a body, each in its own error shape.
    let big =
        json!({"model": "sonnet", "messages": [{"role": "user", "content": "x".repeat(5000)}]});
    let res = gw
        .post("/v1/chat/completions")
        .bearer_auth(ALICE)
        .json(&big)
        .send()
        .await
        .expect("sent");
    assert_eq!(res.status(), 413);
    let err: Value = res.json().await.expect("json");
    assert!(err["error"]["message"].is_string(), "{err}");
    let res = gw
        .get("/v1/mcp/tools")
        .bearer_auth(ALICE)
        .json(&json!({"mcp_servers": {"m": {"command": "x".repeat(5000)}}}))
        .send()
        .await
        .expect("sent");
    assert_eq!(res.status(), 413);
    let err: Value = res.json().await.expect("json");
    assert_eq!(err["error"]["type"], "request_too_large");
    // Nothing ran (identifying the tenant may have asked the profile endpoint).
    assert!(gw.upstream().iter().all(|r| r.path != "/v1/messages"));
}

#[tokio::test]
async fn count_tokens_is_answered_by_the_upstream_with_the_tenants_own_credential() {
    let gw = Gateway::start().await;
    let request = json!({
        "model": "sonnet",
        "system": "be brief",
        "messages": [{"role": "user", "content": "marker-count how many tokens is this?"}],
    });
    let res = gw
        .post("/v1/messages/count_tokens")
        .bearer_auth(ALICE)
        .json(&request)
        .send()
        .await
        .expect("sent");
    assert_eq!(res.status(), 200);
    let counted: Value = res.json().await.expect("json");
    assert!(
        counted["input_tokens"].as_u64().is_some_and(|n| n > 0),
        "{counted}"
    );
    let calls: Vec<_> = gw
        .upstream()
        .into_iter()
        .filter(|r| r.path == "/v1/messages/count_tokens")
        .collect();
    assert_eq!(calls.len(), 1, "one upstream call, no CLI run");
    assert_eq!(
        calls[0].header("authorization"),
        Some(format!("Bearer {ALICE}").as_str())
    );
    assert!(calls[0].body.to_string().contains("marker-count"));
    assert!(gw.upstream_with("marker-count").is_empty(), "no model call");

    // The same door as a message: no credential is 401, a body without messages 400.
    let anonymous = gw
        .post("/v1/messages/count_tokens")
        .json(&request)
        .send()
        .await
        .expect("sent");
    assert_eq!(anonymous.status(), 401);
    let bad = gw
        .post("/v1/messages/count_tokens")
        .bearer_auth(ALICE)
        .json(&json!({"model": "sonnet"}))
        .send()
        .await
        .expect("sent");
    assert_eq!(bad.status(), 400);
    let error: Value = bad.json().await.expect("json");
    assert!(error["error"]["message"]
        .as_str()
        .is_some_and(|m| m.starts_with("messages:")));
}

#[tokio::test]
async fn system_turns_cache_control_and_unknown_fields_are_accepted_as_the_api_does() {
    let gw = Gateway::start().await;
    let request = json!({
        "model": "sonnet",
        "max_tokens": 100,
        "metadata": {"user_id": "someone"},
        "a_field_from_the_future": {"x": 1},
        "system": [{"type": "text", "text": "marker-sys-a", "cache_control": {"type": "ephemeral"}}],
        "messages": [
            {"role": "user", "content": [{"type": "text", "text": "marker-liberal hi", "cache_control": {"type": "ephemeral", "ttl": "1h"}}]},
            {"role": "system", "content": "marker-sys-b"},
        ],
    });
    let res = gw.messages(ALICE, request).await;
    assert_eq!(res.status(), 200);
    let calls = gw.upstream_with("marker-liberal");
    assert!(!calls.is_empty());
    // Both system texts reached the model as system text; the system turn is not a turn.
    let system = calls[0].body["system"].to_string();
    assert!(
        system.contains("marker-sys-a") && system.contains("marker-sys-b"),
        "{system}"
    );
}

#[tokio::test]
async fn a_stop_sequence_ends_the_reply_where_the_api_would_in_both_dialects() {
    let gw = Gateway::start().await;
    let script = json!({"reply": "first part STOP-HERE second part"});
    // Anthropic, complete: the reply ends before the sequence, and says which one.
    let mut req = body(&scripted("marker-stop-a", script.clone()));
    req["stop_sequences"] = json!(["NEVER", "STOP-HERE"]);
    req["temperature"] = json!(0.2);
    let res = gw.messages(ALICE, req).await;
    assert_eq!(res.status(), 200);
    let msg: Value = res.json().await.expect("json");
    assert_eq!(msg["stop_reason"], "stop_sequence");
    assert_eq!(msg["stop_sequence"], "STOP-HERE");
    assert_eq!(msg["content"][0]["text"], "first part ");
    // The model call carried the request's settings; the CLI has no flag for them.
    let call = &gw.upstream_with("marker-stop-a")[0].body;
    assert_eq!(call["stop_sequences"], json!(["NEVER", "STOP-HERE"]));
    assert_eq!(call["temperature"], json!(0.2));

    // Anthropic, streamed.
    let mut req = body(&scripted("marker-stop-b", script.clone()));
    req["stop_sequences"] = json!(["STOP-HERE"]);
    req["stream"] = json!(true);
    let events = parse_sse(&gw.messages(ALICE, req).await.text().await.expect("body"));
    assert_eq!(streamed_text(&events), "first part ");
    let delta = events
        .iter()
        .find(|e| e.event == "message_delta")
        .expect("message_delta");
    assert_eq!(delta.data["delta"]["stop_reason"], "stop_sequence");
    assert_eq!(delta.data["delta"]["stop_sequence"], "STOP-HERE");

    // OpenAI: `stop` (a string or a list) is the same setting; the reply just stops.
    let res = gw
        .post("/v1/chat/completions")
        .bearer_auth(ALICE)
        .json(
            &json!({"model": "sonnet", "stop": "STOP-HERE", "messages": [
            {"role": "user", "content": scripted("marker-stop-c", script)}]}),
        )
        .send()
        .await
        .expect("sent");
    assert_eq!(res.status(), 200);
    let completion: Value = res.json().await.expect("json");
    assert_eq!(
        completion["choices"][0]["message"]["content"],
        "first part "
    );
    assert_eq!(completion["choices"][0]["finish_reason"], "stop");

    // Out of range or blank: 400 naming the field.
    for (field, value, named) in [
        ("temperature", json!(1.5), "temperature"),
        ("stop_sequences", json!(["ok", "  "]), "stop_sequences.1"),
    ] {
        let mut req = body("marker-stop-bad");
        req[field] = value;
        let res = gw.messages(ALICE, req).await;
        assert_eq!(res.status(), 400);
        let error: Value = res.json().await.expect("json");
        assert!(
            error["error"]["message"]
                .as_str()
                .is_some_and(|m| m.starts_with(named)),
            "{error}"
        );
    }
}

#[tokio::test]
async fn thinking_sets_the_budget_and_its_blocks_come_back_in_order_with_their_signature() {
    let gw = Gateway::start().await;
    let mut req = body("marker-think-a hello");
    req["max_tokens"] = json!(4096);
    req["thinking"] = json!({"type": "enabled", "budget_tokens": 2048});
    let res = gw.messages(ALICE, req.clone()).await;
    assert_eq!(res.status(), 200);
    let msg: Value = res.json().await.expect("json");
    let call = &gw.upstream_with("marker-think-a")[0].body;
    assert_eq!(msg["content"][0]["type"], "thinking", "{msg}");
    assert_eq!(msg["content"][0]["signature"], "fake-signature");
    assert_eq!(msg["content"][1]["type"], "text");
    assert_eq!(
        call["thinking"]["budget_tokens"], 2048,
        "{}",
        call["thinking"]
    );

    // Streamed: the thinking block's deltas, then its signature, before the text.
    req["stream"] = json!(true);
    req["messages"][0]["content"] = json!("marker-think-b hello");
    let events = parse_sse(&gw.messages(ALICE, req).await.text().await.expect("body"));
    let deltas: Vec<&str> = events
        .iter()
        .filter(|e| e.event == "content_block_delta")
        .filter_map(|e| e.data["delta"]["type"].as_str())
        .collect();
    let first_text = deltas.iter().position(|d| *d == "text_delta");
    assert!(
        deltas.first() == Some(&"thinking_delta")
            && deltas.iter().position(|d| *d == "signature_delta") < first_text,
        "{deltas:?}"
    );

    // OpenAI's reasoning_effort is the same budget.
    let res = gw
        .post("/v1/chat/completions")
        .bearer_auth(ALICE)
        .json(&json!({"model": "sonnet", "reasoning_effort": "low",
            "messages": [{"role": "user", "content": "marker-think-c hello"}]}))
        .send()
        .await
        .expect("sent");
    assert_eq!(res.status(), 200);
    let call = &gw.upstream_with("marker-think-c")[0].body;
    assert_eq!(
        call["thinking"]["budget_tokens"], 2048,
        "{}",
        call["thinking"]
    );

    // A budget below the API's minimum, or not under max_tokens: 400 naming it.
    for thinking in [
        json!({"type": "enabled", "budget_tokens": 100}),
        json!({"type": "enabled", "budget_tokens": 8000}),
    ] {
        let mut req = body("marker-think-bad");
        req["max_tokens"] = json!(4096);
        req["thinking"] = thinking;
        let res = gw.messages(ALICE, req).await;
        assert_eq!(res.status(), 400);
        let error: Value = res.json().await.expect("json");
        assert!(error["error"]["message"]
            .as_str()
            .is_some_and(|m| m.starts_with("thinking.budget_tokens")));
    }
}

#[tokio::test]
async fn a_json_schema_reply_is_the_models_structured_output_in_both_dialects() {
    let gw = Gateway::start().await;
    let schema = json!({"type": "object", "required": ["answer", "n"],
        "properties": {"answer": {"type": "string"}, "n": {"type": "integer"}}});
    let wanted = json!({"answer": "forty-two", "n": 3});
    // The model talks, then answers through the CLI's StructuredOutput tool.
    let script = json!({"tools": [{"name": "StructuredOutput", "input": wanted,
        "say": "Let me put that in the shape you asked for."}]});

    // Anthropic, complete: one text block, the JSON; the model's prose is not part of it.
    let mut req = body(&scripted("marker-schema-a", script.clone()));
    req["output_format"] = json!({"type": "json_schema", "schema": schema});
    let res = gw.messages(ALICE, req).await;
    assert_eq!(res.status(), 200);
    let msg: Value = res.json().await.expect("json");
    let content = msg["content"].as_array().expect("content");
    assert_eq!(content.len(), 1, "{msg}");
    assert_eq!(content[0]["type"], "text");
    let text = content[0]["text"].as_str().expect("text");
    assert_eq!(serde_json::from_str::<Value>(text).expect("JSON"), wanted);
    assert_eq!(msg["stop_reason"], "end_turn");
    // The model was offered the schema as the tool's input schema.
    let call = &gw.upstream_with("marker-schema-a")[0].body;
    let tool = call["tools"]
        .as_array()
        .into_iter()
        .flatten()
        .find(|t| t["name"] == "StructuredOutput")
        .expect("the StructuredOutput tool");
    assert_eq!(tool["input_schema"], schema);

    // Anthropic, streamed, with the schema in `output_config.format`.
    let mut req = body(&scripted("marker-schema-b", script.clone()));
    req["output_config"] = json!({"format": {"type": "json_schema", "schema": schema}});
    req["stream"] = json!(true);
    let events = parse_sse(&gw.messages(ALICE, req).await.text().await.expect("body"));
    let text = streamed_text(&events);
    assert_eq!(serde_json::from_str::<Value>(&text).expect("JSON"), wanted);

    // OpenAI: response_format json_schema; the message content is the JSON.
    let res = gw
        .post("/v1/chat/completions")
        .bearer_auth(ALICE)
        .json(&json!({"model": "sonnet",
            "response_format": {"type": "json_schema",
                "json_schema": {"name": "answer", "strict": true, "schema": schema}},
            "messages": [{"role": "user", "content": scripted("marker-schema-c", script)}]}))
        .send()
        .await
        .expect("sent");
    assert_eq!(res.status(), 200);
    let completion: Value = res.json().await.expect("json");
    let content = completion["choices"][0]["message"]["content"]
        .as_str()
        .expect("content");
    assert_eq!(
        serde_json::from_str::<Value>(content).expect("JSON"),
        wanted
    );
    assert_eq!(completion["choices"][0]["finish_reason"], "stop");

    // Bad formats: 400 naming the field, in each dialect's shape.
    let mut req = body("marker-schema-bad");
    req["output_format"] = json!({"type": "json_schema", "schema": "not a schema"});
    let res = gw.messages(ALICE, req).await;
    assert_eq!(res.status(), 400);
    let error: Value = res.json().await.expect("json");
    assert!(error["error"]["message"]
        .as_str()
        .is_some_and(|m| m.starts_with("output_format.schema")));
    let res = gw
        .post("/v1/chat/completions")
        .bearer_auth(ALICE)
        .json(
            &json!({"model": "sonnet", "response_format": {"type": "xml"},
            "messages": [{"role": "user", "content": "marker-schema-bad"}]}),
        )
        .send()
        .await
        .expect("sent");
    assert_eq!(res.status(), 400);
    let error: Value = res.json().await.expect("json");
    assert!(error["error"]["message"]
        .as_str()
        .is_some_and(|m| m.starts_with("response_format.type")));
    assert!(gw.upstream_with("marker-schema-bad").is_empty());
}
