//! Tools the client defines and runs, through the real CLI: the response ends at the model's
//! call, as the API's does, and the client's next request carries the result the model goes
//! on with; statelessly, with a session, after a restart, streamed and not.

use crate::common::{body, parse_sse, scripted, Gateway};
use serde_json::{json, Value};
use std::time::Duration;

const TENANT: &str = "sk-ant-oat01-agent.client-tools";

pub fn weather_tool() -> Value {
    json!({"name": "get_weather", "description": "The weather in a city",
        "input_schema": {"type": "object", "properties": {"city": {"type": "string"}}, "required": ["city"]}})
}

/// A request offering the weather tool, whose scripted model calls it once, then says `reply`.
pub fn asks_for_weather(marker: &str) -> Value {
    let script =
        json!({"tools": [{"name": "get_weather", "input": {"city": "Paris"}}], "reply": "done"});
    let mut req = body(&scripted(marker, script));
    req["tools"] = json!([weather_tool()]);
    req
}

/// The model's call, from a complete response that ended at it.
pub fn the_call(message: &Value) -> Value {
    assert_eq!(message["stop_reason"], "tool_use", "{message}");
    let calls: Vec<&Value> = message["content"]
        .as_array()
        .expect("content")
        .iter()
        .filter(|b| b["type"] == "tool_use")
        .collect();
    assert_eq!(calls.len(), 1, "{message}");
    calls[0].clone()
}

/// The tool_result the model saw last in its most recent call carrying `marker`.
pub fn result_the_model_saw(gw: &Gateway, marker: &str) -> Option<String> {
    let calls = gw.upstream_with(marker);
    let last = calls.last()?;
    last.body["messages"]
        .as_array()?
        .iter()
        .flat_map(|m| m["content"].as_array().cloned().unwrap_or_default())
        .filter(|b| b["type"] == "tool_result")
        .map(|b| b["content"].to_string())
        .next_back()
}

#[tokio::test]
async fn a_client_tool_call_ends_the_response_and_its_result_continues_the_conversation() {
    let gw = Gateway::start().await;
    let first = asks_for_weather("marker-ct-stateless");
    let res = gw.messages(TENANT, first.clone()).await;
    assert_eq!(res.status(), 200);
    let message: Value = res.json().await.expect("json");
    let call = the_call(&message);
    // The client's own name and the model's input; no internal prefix.
    assert_eq!(call["name"], "get_weather");
    assert_eq!(call["input"], json!({"city": "Paris"}));
    // The model was offered the tool (under the CLI's MCP name), as the client chose it.
    let upstream = &gw.upstream_with("marker-ct-stateless")[0].body;
    assert!(upstream["tools"].to_string().contains("get_weather"));
    assert_eq!(upstream["tool_choice"], json!({"type": "auto"}));

    // The client runs the tool and sends the whole conversation back (no session id).
    let mut next = first.clone();
    next["messages"] = json!([
        first["messages"][0],
        {"role": "assistant", "content": message["content"]},
        {"role": "user", "content": [
            {"type": "tool_result", "tool_use_id": call["id"], "content": "sunny, 21C"},
            {"type": "text", "text": "marker-ct-beside reminder"}]},
    ]);
    let res = gw.messages(TENANT, next).await;
    assert_eq!(res.status(), 200);
    let answer: Value = res.json().await.expect("json");
    assert_eq!(answer["stop_reason"], "end_turn", "{answer}");
    assert_eq!(answer["content"][0]["text"], "done");
    // The model went on with the client's result, after its own call.
    let seen = result_the_model_saw(&gw, "marker-ct-stateless").expect("a tool_result");
    assert!(seen.contains("sunny, 21C"), "{seen}");
    // Text beside the result follows it (passed inside the sandbox, never on the host).
    assert!(!gw.upstream_with("marker-ct-beside").is_empty());
}

#[tokio::test]
async fn a_streamed_client_tool_call_is_the_apis_event_sequence() {
    let gw = Gateway::start().await;
    let mut req = asks_for_weather("marker-ct-stream");
    req["stream"] = json!(true);
    let text = gw.messages(TENANT, req).await.text().await.expect("body");
    let events = parse_sse(&text);
    let start = events
        .iter()
        .find(|e| e.event == "content_block_start" && e.data["content_block"]["type"] == "tool_use")
        .expect("a tool_use block");
    assert_eq!(start.data["content_block"]["name"], "get_weather");
    let input: String = events
        .iter()
        .filter(|e| e.data["delta"]["type"] == "input_json_delta")
        .filter_map(|e| e.data["delta"]["partial_json"].as_str())
        .collect();
    assert_eq!(
        serde_json::from_str::<Value>(&input).expect("json input"),
        json!({"city": "Paris"})
    );
    let delta = events
        .iter()
        .find(|e| e.event == "message_delta")
        .expect("message_delta");
    assert_eq!(delta.data["delta"]["stop_reason"], "tool_use");
}

#[tokio::test]
async fn a_session_continues_after_a_client_tool_call_even_across_a_restart() {
    let data = tempfile::tempdir().expect("tempdir");
    let mut gw = Gateway::builder().data_dir(data.path()).start().await;
    let mut first = asks_for_weather("marker-ct-session");
    first["session_id"] = json!("agent-run-1");
    let message: Value = gw.messages(TENANT, first).await.json().await.expect("json");
    let call = the_call(&message);
    // Stopped at once, as Cloud Run stops an instance: the CLI still records the deferred
    // call after the response, and the gateway lets it before it exits.
    gw.terminate();
    let status = gw.wait_exit(Duration::from_secs(30)).await;
    assert!(status.is_some_and(|s| s.success()), "{status:?}");
    drop(gw);

    let gw = Gateway::builder().data_dir(data.path()).start().await;
    // With a session, only the new turn is sent: the gateway holds the rest.
    let next = json!({
        "model": "sonnet", "max_tokens": 100, "session_id": "agent-run-1",
        "tools": [weather_tool()],
        "messages": [
            {"role": "user", "content": "marker-ct-session"},
            {"role": "assistant", "content": message["content"]},
            {"role": "user", "content": [{"type": "tool_result", "tool_use_id": call["id"], "content": "rain"}]},
        ],
    });
    let res = gw.messages(TENANT, next).await;
    assert_eq!(res.status(), 200);
    let answer: Value = res.json().await.expect("json");
    assert_eq!(answer["content"][0]["text"], "done", "{answer}");
    let seen = result_the_model_saw(&gw, "marker-ct-session").expect("a tool_result");
    assert!(seen.contains("rain"), "{seen}");
}

#[tokio::test]
async fn bad_tools_and_results_are_400_naming_the_field() {
    let gw = Gateway::start().await;
    let cases = [
        (
            json!({"tools": [{"name": "no spaces", "input_schema": {"type": "object"}}]}),
            "tools.0.name",
        ),
        (
            json!({"tools": [{"name": "x", "input_schema": {"type": "array"}}]}),
            "tools.0.input_schema",
        ),
        (
            json!({"tools": [weather_tool()], "tool_choice": {"type": "tool", "name": "other"}}),
            "tool_choice.name",
        ),
        (
            json!({"tools": [weather_tool()], "messages": [
                {"role": "user", "content": "q"},
                {"role": "assistant", "content": [{"type": "tool_use", "id": "t1", "name": "get_weather", "input": {}}]},
                {"role": "user", "content": [{"type": "tool_result", "tool_use_id": "t2", "content": "x"}]}]}),
            "messages.2.content.0.tool_use_id",
        ),
    ];
    for (fields, named) in cases {
        let mut req = body("marker-ct-bad");
        for (k, v) in fields.as_object().expect("object") {
            req[k] = v.clone();
        }
        let res = gw.messages(TENANT, req).await;
        assert_eq!(res.status(), 400);
        let error: Value = res.json().await.expect("json");
        let message = error["error"]["message"].as_str().unwrap_or_default();
        assert!(message.starts_with(named), "{named}: {message}");
    }
}

#[tokio::test]
async fn the_claude_code_cli_as_a_client_round_trips_a_call_of_its_own_tool() {
    let gw = Gateway::start().await;
    let dir = tempfile::tempdir().expect("tempdir");
    let (home, work) = (dir.path().join("home"), dir.path().join("work"));
    for d in [&home, &work] {
        std::fs::create_dir_all(d).expect("mkdir");
    }
    // The model calls the client's Bash: the gateway's own runs are PARANOID here (no Bash of
    // their own), so the only Bash offered is the client CLI's.
    let prompt = scripted(
        "marker-cli-client",
        json!({"tools": [{"name": "Bash", "input": {"command": "echo ran-on-the-client-side"}}], "reply": "done"}),
    );
    let run = tokio::process::Command::new(crate::common::claude_bin())
        .args([
            "-p",
            "--output-format=json",
            "--model=sonnet",
            "--allowedTools=Bash",
        ])
        .arg(&prompt)
        .current_dir(&work)
        .env_clear()
        .env("PATH", std::env::var("PATH").unwrap_or_default())
        .env("HOME", &home)
        .env("ANTHROPIC_BASE_URL", &gw.url)
        .env("CLAUDE_CODE_OAUTH_TOKEN", TENANT)
        .env("ANTHROPIC_CUSTOM_HEADERS", "x-security-level: PARANOID")
        .env("CLAUDE_CODE_DISABLE_NONESSENTIAL_TRAFFIC", "1")
        .env("DISABLE_AUTOUPDATER", "1")
        .kill_on_drop(true)
        .output();
    let out = tokio::time::timeout(std::time::Duration::from_secs(180), run)
        .await
        .expect("the client CLI finished")
        .expect("the client CLI ran");
    let stdout = String::from_utf8_lossy(&out.stdout);
    let result: Value = serde_json::from_str(stdout.trim()).unwrap_or_else(|_| {
        panic!(
            "{stdout} {} {}",
            String::from_utf8_lossy(&out.stderr),
            gw.logs()
        )
    });
    assert_eq!(result["is_error"], false, "{result}");
    assert_eq!(result["result"], "done", "{result}");
    // The client's Bash ran where the client is, and the model saw what it printed.
    let seen = result_the_model_saw(&gw, "marker-cli-client").expect("a tool_result");
    assert!(seen.contains("ran-on-the-client-side"), "{seen}");
}

#[tokio::test]
async fn a_named_tool_choice_reaches_the_model_under_the_clis_name() {
    let gw = Gateway::start().await;
    let mut req = asks_for_weather("marker-ct-choice");
    req["tool_choice"] =
        json!({"type": "tool", "name": "get_weather", "disable_parallel_tool_use": true});
    let message: Value = gw.messages(TENANT, req).await.json().await.expect("json");
    assert_eq!(the_call(&message)["name"], "get_weather");
    let upstream = &gw.upstream_with("marker-ct-choice")[0].body;
    assert_eq!(
        upstream["tool_choice"],
        json!({"type": "tool", "name": "mcp__client__get_weather", "disable_parallel_tool_use": true})
    );
}

fn time_tool() -> Value {
    json!({"name": "get_time", "description": "The time in a city",
        "input_schema": {"type": "object", "properties": {"city": {"type": "string"}}}})
}

/// A request whose scripted model calls both tools at once (one turn, two `tool_use` blocks).
fn asks_for_both(marker: &str) -> Value {
    let script = json!({"tools": [{"name": "get_weather", "input": {"city": "Paris"},
        "with": [{"name": "get_time", "input": {"city": "Oslo"}}]}], "reply": "done"});
    let mut req = body(&scripted(marker, script));
    req["tools"] = json!([weather_tool(), time_tool()]);
    req
}

/// The model's calls, from a response that ended at them.
fn the_calls(message: &Value) -> Vec<Value> {
    assert_eq!(message["stop_reason"], "tool_use", "{message}");
    message["content"]
        .as_array()
        .expect("content")
        .iter()
        .filter(|b| b["type"] == "tool_use")
        .cloned()
        .collect()
}

/// The last model call carrying `marker`: its last assistant turn's calls and the results in
/// the user turn after it, as `(tool_use id, result content)`.
fn calls_and_results_the_model_saw(
    gw: &Gateway,
    marker: &str,
) -> (Vec<String>, Vec<(String, String)>) {
    let calls = gw.upstream_with(marker);
    let messages = calls.last().expect("a model call").body["messages"]
        .as_array()
        .cloned()
        .expect("messages");
    let at = messages
        .iter()
        .rposition(|m| m["role"] == "assistant" && m["content"].to_string().contains("tool_use"))
        .expect("an assistant turn with calls");
    let ids = messages[at]["content"]
        .as_array()
        .into_iter()
        .flatten()
        .filter(|b| b["type"] == "tool_use")
        .map(|b| b["id"].as_str().unwrap_or_default().to_owned())
        .collect();
    let results = messages[at + 1]["content"]
        .as_array()
        .into_iter()
        .flatten()
        .filter(|b| b["type"] == "tool_result")
        .map(|b| {
            (
                b["tool_use_id"].as_str().unwrap_or_default().to_owned(),
                b["content"].to_string(),
            )
        })
        .collect();
    (ids, results)
}

#[tokio::test]
async fn parallel_calls_end_one_response_and_their_results_continue_it_together() {
    let data = tempfile::tempdir().expect("tempdir");
    let gw = Gateway::builder().data_dir(data.path()).start().await;
    // Statelessly: both calls in one response, under the client's names.
    let first = asks_for_both("marker-ct-parallel");
    let message: Value = gw
        .messages(TENANT, first.clone())
        .await
        .json()
        .await
        .expect("json");
    let calls = the_calls(&message);
    let names: Vec<&str> = calls.iter().filter_map(|c| c["name"].as_str()).collect();
    assert_eq!(names, ["get_weather", "get_time"], "{message}");

    let answer = |calls: &[Value], weather: &str, time: &str| {
        json!([
            {"type": "tool_result", "tool_use_id": calls[0]["id"], "content": weather},
            {"type": "tool_result", "tool_use_id": calls[1]["id"], "content": time},
        ])
    };
    let mut next = first.clone();
    next["messages"] = json!([first["messages"][0],
        {"role": "assistant", "content": message["content"]},
        {"role": "user", "content": answer(&calls, "sunny", "noon")}]);
    let res = gw.messages(TENANT, next).await;
    assert_eq!(res.status(), 200);
    let done: Value = res.json().await.expect("json");
    assert_eq!(done["content"][0]["text"], "done", "{done}");
    // The model saw both calls in one turn, each answered in the next, in order.
    let (ids, results) = calls_and_results_the_model_saw(&gw, "marker-ct-parallel");
    assert_eq!(
        ids,
        [
            calls[0]["id"].as_str().unwrap_or_default(),
            calls[1]["id"].as_str().unwrap_or_default()
        ]
    );
    let seen: Vec<(&str, bool)> = results
        .iter()
        .map(|(id, content)| {
            (
                id.as_str(),
                content.contains("sunny") || content.contains("noon"),
            )
        })
        .collect();
    assert_eq!(
        seen,
        [(ids[0].as_str(), true), (ids[1].as_str(), true)],
        "{results:?}"
    );

    // With a session, across a restart: the same.
    let mut first = asks_for_both("marker-ct-parallel-session");
    first["session_id"] = json!("agent-run-parallel");
    let message: Value = gw
        .messages(TENANT, first.clone())
        .await
        .json()
        .await
        .expect("json");
    let calls = the_calls(&message);
    assert_eq!(calls.len(), 2, "{message}");
    assert!(crate::common::eventually(crate::common::SETTLE, || gw.descendants() == 0).await);
    drop(gw);
    let gw = Gateway::builder().data_dir(data.path()).start().await;
    let mut next = first.clone();
    next["messages"] = json!([first["messages"][0],
        {"role": "assistant", "content": message["content"]},
        {"role": "user", "content": answer(&calls, "rain", "dusk")}]);
    let res = gw.messages(TENANT, next).await;
    assert_eq!(res.status(), 200);
    let done: Value = res.json().await.expect("json");
    assert_eq!(done["content"][0]["text"], "done", "{done}");
    let (ids, results) = calls_and_results_the_model_saw(&gw, "marker-ct-parallel-session");
    assert_eq!(ids.len(), 2);
    assert_eq!(results.len(), 2, "{results:?}");
    assert!(
        results[0].1.contains("rain") && results[1].1.contains("dusk"),
        "{results:?}"
    );

    // Only one of the two answered: 400 naming the call left without its result.
    let mut partial = first;
    partial["messages"] = json!([partial["messages"][0],
        {"role": "assistant", "content": message["content"]},
        {"role": "user", "content": [answer(&calls, "x", "y")[0]]}]);
    let res = gw.messages(TENANT, partial).await;
    assert_eq!(res.status(), 400);
    let error: Value = res.json().await.expect("json");
    assert!(
        error["error"]["message"]
            .as_str()
            .is_some_and(|m| m.starts_with("messages.2.content: no tool_result")),
        "{error}"
    );
}

#[tokio::test]
async fn a_failed_continuation_leaves_the_session_as_it_was_and_its_retry_goes_on() {
    let gw = Gateway::start().await;
    let mut first = asks_for_weather("marker-ct-retry");
    first["session_id"] = json!("agent-run-retry");
    let message: Value = gw
        .messages(TENANT, first.clone())
        .await
        .json()
        .await
        .expect("json");
    let call = the_call(&message);
    let continuation = |beside: Option<&str>| {
        let mut content =
            vec![json!({"type": "tool_result", "tool_use_id": call["id"], "content": "hail"})];
        if let Some(text) = beside {
            content.push(json!({"type": "text", "text": text}));
        }
        let mut next = first.clone();
        next["messages"] = json!([first["messages"][0],
            {"role": "assistant", "content": message["content"]},
            {"role": "user", "content": content}]);
        next
    };
    // The model call after the result fails (the text beside it scripts an upstream 500).
    let failing = scripted("marker-ct-retry-fails", json!({"error": {"status": 500}}));
    let res = gw.messages(TENANT, continuation(Some(&failing))).await;
    assert_eq!(res.status(), 502);
    // The same continuation again goes on from the result, as if the failure had not been.
    let res = gw.messages(TENANT, continuation(None)).await;
    assert_eq!(res.status(), 200);
    let answer: Value = res.json().await.expect("json");
    assert_eq!(answer["content"][0]["text"], "done", "{answer}");
    let last = gw.upstream_with("marker-ct-retry");
    let text = last.last().expect("a model call").body_text();
    assert!(
        !text.contains("marker-ct-retry-fails"),
        "the failed try is gone: {text}"
    );
    assert_eq!(text.matches("hail").count(), 1, "one result: {text}");
}
