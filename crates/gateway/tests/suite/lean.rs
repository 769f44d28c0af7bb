//! Lean runs (`"lean": true`, or `--lean-by-default`): a request pays upstream for about what
//! it holds: none of the CLI's own tools, and its own `system` in place of the CLI's agent
//! prompt. Proven on what the fake upstream received from the real CLI.

use crate::common::{body, Gateway};
use serde_json::{json, Value};

const TENANT: &str = "sk-ant-oat01-lean.tenant";

/// The model call that carried `marker`, as the upstream received it.
fn call_with(gw: &Gateway, marker: &str) -> Value {
    gw.upstream_with(marker)
        .pop()
        .expect("the marker reached the upstream")
        .body
}

fn system_text(call: &Value) -> String {
    match &call["system"] {
        Value::String(s) => s.clone(),
        Value::Array(blocks) => blocks
            .iter()
            .filter_map(|b| b["text"].as_str())
            .collect::<Vec<_>>()
            .join("\n"),
        _ => String::new(),
    }
}

#[tokio::test]
async fn a_lean_request_reaches_the_model_with_its_own_system_and_no_cli_tools() {
    let gw = Gateway::start().await;
    let mut full = body("marker-lean-full hi");
    full["system"] = json!("Answer tersely.");
    let res = gw.messages(TENANT, full).await;
    assert_eq!(res.status(), 200);
    let full_usage: Value = res.json().await.expect("json");

    let mut lean = body("marker-lean-lean hi");
    lean["system"] = json!("Answer tersely.");
    lean["lean"] = json!(true);
    let res = gw.messages(TENANT, lean).await;
    assert_eq!(res.status(), 200);
    let lean_usage: Value = res.json().await.expect("json");

    let (full_call, lean_call) = (
        call_with(&gw, "marker-lean-full"),
        call_with(&gw, "marker-lean-lean"),
    );
    assert!(
        full_call["tools"].as_array().is_some_and(|t| !t.is_empty()),
        "the CLI's tools by default"
    );
    assert_eq!(lean_call["tools"].as_array().map_or(0, Vec::len), 0);
    let system = system_text(&lean_call);
    assert!(system.contains("Answer tersely."), "{system}");
    assert!(
        system.len() < system_text(&full_call).len() / 4,
        "the CLI's agent prompt is gone: {system}"
    );
    // What the request pays: the usage reported is the upstream's own, and far smaller.
    let (full_in, lean_in) = (
        full_usage["usage"]["input_tokens"].as_u64().unwrap_or(0),
        lean_usage["usage"]["input_tokens"]
            .as_u64()
            .unwrap_or(u64::MAX),
    );
    assert!(lean_in * 5 < full_in, "lean {lean_in} vs full {full_in}");
}

#[tokio::test]
async fn lean_by_default_holds_for_both_dialects_and_a_request_may_opt_out() {
    let gw = Gateway::builder().arg("--lean-by-default").start().await;
    let res = gw.messages(TENANT, body("marker-lean-default hi")).await;
    assert_eq!(res.status(), 200);
    assert_eq!(
        call_with(&gw, "marker-lean-default")["tools"]
            .as_array()
            .map_or(0, Vec::len),
        0
    );
    let chat = gw
        .post("/v1/chat/completions")
        .bearer_auth(TENANT)
        .json(&json!({"model": "sonnet", "messages": [{"role": "user", "content": "marker-lean-openai hi"}]}))
        .send()
        .await
        .expect("sent");
    assert_eq!(chat.status(), 200);
    assert_eq!(
        call_with(&gw, "marker-lean-openai")["tools"]
            .as_array()
            .map_or(0, Vec::len),
        0
    );
    let mut full = body("marker-lean-optout hi");
    full["lean"] = json!(false);
    assert_eq!(gw.messages(TENANT, full).await.status(), 200);
    assert!(call_with(&gw, "marker-lean-optout")["tools"]
        .as_array()
        .is_some_and(|t| !t.is_empty()));
}

#[tokio::test]
async fn a_request_with_client_tools_runs_lean_offering_the_model_those_and_no_cli_tool() {
    let gw = Gateway::start().await;
    // It does not say: bringing its own tools, it runs lean.
    let req = crate::client_tools::asks_for_weather("marker-lean-tools");
    let res = gw.messages(TENANT, req).await;
    assert_eq!(res.status(), 200);
    let message: Value = res.json().await.expect("json");
    assert_eq!(message["stop_reason"], "tool_use", "{message}");
    let offered = offered(&gw, "marker-lean-tools");
    assert!(
        offered.iter().any(|t| t.ends_with("get_weather")),
        "{offered:?}"
    );
    // None of the CLI's own tools; the CLI still adds the placeholder it offers beside MCP
    // tools (`DeferredToolPlaceholder`, 2.1.332), which runs nothing.
    for builtin in [
        "Bash", "Read", "Write", "Edit", "Glob", "Grep", "Agent", "Task", "WebFetch",
    ] {
        assert!(!offered.iter().any(|t| t == builtin), "{offered:?}");
    }
    assert!(offered.len() <= 2, "{offered:?}");
}

/// The names of the tools the model call that carried `marker` offered.
fn offered(gw: &Gateway, marker: &str) -> Vec<String> {
    call_with(gw, marker)["tools"]
        .as_array()
        .cloned()
        .unwrap_or_default()
        .iter()
        .filter_map(|t| t["name"].as_str().map(str::to_owned))
        .collect()
}

#[tokio::test]
async fn a_request_that_could_not_use_the_clis_tools_runs_lean_unless_it_says_otherwise() {
    let gw = Gateway::start().await;
    // With its own tools but `"lean": false`: the CLI's tools too.
    let mut req = crate::client_tools::asks_for_weather("marker-auto-optout");
    req["lean"] = json!(false);
    assert_eq!(gw.messages(TENANT, req).await.status(), 200);
    let tools = offered(&gw, "marker-auto-optout");
    assert!(tools.iter().any(|t| t == "Bash"), "{tools:?}");

    // PARANOID offers only reading tools: over an empty workspace, nothing to read.
    let paranoid = |marker: &str| {
        let mut req = body(marker);
        req["security_level"] = json!("PARANOID");
        req
    };
    let tenant = "sk-ant-oat01-lean-paranoid.tenant";
    assert_eq!(
        gw.messages(tenant, paranoid("marker-auto-empty"))
            .await
            .status(),
        200
    );
    let tools = offered(&gw, "marker-auto-empty");
    assert!(!tools.iter().any(|t| t == "Read"), "{tools:?}");
    // Once the workspace holds a file (written at BALANCED), PARANOID reads it as before.
    let write = crate::common::scripted(
        "marker-auto-write",
        json!({"tools": [crate::common::bash("echo notes > notes.txt")]}),
    );
    assert_eq!(gw.messages(tenant, body(&write)).await.status(), 200);
    assert_eq!(
        gw.messages(tenant, paranoid("marker-auto-full"))
            .await
            .status(),
        200
    );
    let tools = offered(&gw, "marker-auto-full");
    assert!(tools.iter().any(|t| t == "Read"), "{tools:?}");
}

/// The texts of the user turns the model call that carried `marker` held.
fn user_texts(call: &Value) -> Vec<String> {
    call["messages"]
        .as_array()
        .cloned()
        .unwrap_or_default()
        .iter()
        .filter(|m| m["role"] == "user")
        .flat_map(|m| match &m["content"] {
            Value::String(s) => vec![s.clone()],
            Value::Array(blocks) => blocks
                .iter()
                .filter_map(|b| b["text"].as_str().map(str::to_owned))
                .collect(),
            _ => Vec::new(),
        })
        .collect()
}

#[tokio::test]
async fn a_lean_request_with_an_api_key_carries_nothing_of_the_clis_environment() {
    let gw = Gateway::start().await;
    let key = "sk-ant-api03-lean.api-key-tenant";
    let mut lean = body("marker-lean-bare hi");
    lean["system"] = json!("Answer tersely.");
    lean["lean"] = json!(true);
    let res = gw.messages(key, lean).await;
    assert_eq!(res.status(), 200);
    let call = call_with(&gw, "marker-lean-bare");
    // The user's turn is the request's text alone: no working directory, platform, model,
    // date or token countdown of the CLI's.
    assert_eq!(user_texts(&call), vec!["marker-lean-bare hi".to_owned()]);
    // The system prompt is the request's, after one line of the CLI's identity; no
    // attribution header.
    let system = system_text(&call);
    assert!(system.ends_with("Answer tersely."), "{system}");
    assert!(!system.contains("billing"), "{system}");
    assert!(system.len() < 120, "{system}");

    // In that minimal mode a session still continues, and client tools are still offered
    // and called.
    let mut first = body("marker-bare-s1 my name is Zed");
    first["lean"] = json!(true);
    first["session_id"] = json!("bare-conv-1");
    assert_eq!(gw.messages(key, first).await.status(), 200);
    let mut second = body("marker-bare-s2 what is my name");
    second["lean"] = json!(true);
    second["session_id"] = json!("bare-conv-1");
    assert_eq!(gw.messages(key, second).await.status(), 200);
    let texts = user_texts(&call_with(&gw, "marker-bare-s2"));
    assert_eq!(
        texts,
        vec![
            "marker-bare-s1 my name is Zed".to_owned(),
            "marker-bare-s2 what is my name".to_owned()
        ]
    );
    let res = gw
        .messages(
            key,
            crate::client_tools::asks_for_weather("marker-bare-tools"),
        )
        .await;
    assert_eq!(res.status(), 200);
    let message: Value = res.json().await.expect("json");
    assert_eq!(
        crate::client_tools::the_call(&message)["name"],
        "get_weather"
    );

    // A subscription's lean run still gets no token countdown (the CLI reads no OAuth token
    // in its minimal mode, so its environment notes stay).
    let mut lean = body("marker-lean-oauth hi");
    lean["lean"] = json!(true);
    assert_eq!(gw.messages(TENANT, lean).await.status(), 200);
    let texts = user_texts(&call_with(&gw, "marker-lean-oauth"));
    assert!(
        !texts.iter().any(|t| t.contains("total_tokens")),
        "{texts:?}"
    );
    assert_eq!(
        texts.last().map(String::as_str),
        Some("marker-lean-oauth hi")
    );
}
