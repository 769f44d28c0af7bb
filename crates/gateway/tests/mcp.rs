//! Per-request MCP servers through the real CLI: a real stdio server from the npm registry
//! (`@modelcontextprotocol/server-memory`) started inside the tenant's sandbox.

mod common;

use common::{body, repo_root, scripted, tool_results, Gateway};
use serde_json::{json, Value};

const ALICE: &str = "sk-ant-oat01-alice.mcp";

async fn gateway() -> Gateway {
    let mcp_dir = repo_root().join("tests/mcp-servers");
    Gateway::builder()
        .args(&[
            "--mcp-dir",
            mcp_dir.to_str().expect("utf-8 path"),
            "--mcp-allowed-commands",
            "node",
            "--max-security-level",
            "DEVELOPER",
        ])
        .start()
        .await
}

fn memory_server() -> Value {
    json!({"memory": {
        "command": "node",
        "args": ["/opt/mcp/node_modules/@modelcontextprotocol/server-memory/dist/index.js"],
        "env": {"MEMORY_FILE_PATH": "/tmp/memory.json"}
    }})
}

fn tool_names(request: &fake_anthropic::RecordedRequest) -> Vec<String> {
    request.body["tools"]
        .as_array()
        .into_iter()
        .flatten()
        .filter_map(|t| t["name"].as_str().map(str::to_owned))
        .collect()
}

#[tokio::test]
async fn the_servers_tools_reach_the_model_and_a_tool_call_returns_its_real_result() {
    let gw = gateway().await;
    let script = json!({"tools": [
        {"name": "mcp__memory__create_entities", "input": {"entities": [{"name": "Zed", "entityType": "person", "observations": ["writes Rust"]}]}},
        {"name": "mcp__memory__read_graph", "input": {}}
    ]});
    let mut req = body(&scripted("marker-mcp-call", script));
    req["mcp_servers"] = memory_server();
    let res = gw.messages(ALICE, req).await;
    assert_eq!(res.status(), 200);
    let calls = gw.upstream_with("marker-mcp-call");
    let names = tool_names(&calls[0]);
    assert!(
        names.iter().any(|n| n == "mcp__memory__create_entities"),
        "{names:?}"
    );
    assert!(
        names.iter().any(|n| n == "mcp__memory__read_graph"),
        "{names:?}"
    );
    let results = tool_results(&calls);
    assert_eq!(results.len(), 2, "{results:?}");
    assert!(
        results[1].contains("Zed") && results[1].contains("writes Rust"),
        "{results:?}"
    );
}

#[tokio::test]
async fn the_header_form_and_the_openai_route_work_too() {
    let gw = gateway().await;
    let res = gw
        .post("/v1/chat/completions")
        .bearer_auth(ALICE)
        .header("x-mcp-config", memory_server().to_string())
        .json(&json!({"model": "sonnet", "messages": [{"role": "user", "content": "marker-mcp-openai"}]}))
        .send()
        .await
        .expect("sent");
    assert_eq!(res.status(), 200);
    let names = tool_names(&gw.upstream_with("marker-mcp-openai")[0]);
    assert!(
        names.iter().any(|n| n.starts_with("mcp__memory__")),
        "{names:?}"
    );
}

async fn refused(gw: &Gateway, servers: Value, level: &str) -> (u16, String) {
    let mut req = body("marker-mcp-refused");
    req["mcp_servers"] = servers;
    req["security_level"] = json!(level);
    let res = gw.messages(ALICE, req).await;
    let status = res.status().as_u16();
    let err: Value = res.json().await.expect("json");
    (
        status,
        err["error"]["message"]
            .as_str()
            .unwrap_or_default()
            .to_owned(),
    )
}

#[tokio::test]
async fn the_level_decides_which_local_commands_may_run() {
    let gw = gateway().await;
    let (status, message) = refused(&gw, memory_server(), "PARANOID").await;
    assert_eq!(status, 403, "{message}");
    assert!(message.contains("PARANOID"));
    let python = json!({"py": {"command": "python3", "args": ["-c", "print(1)"]}});
    let (status, message) = refused(&gw, python.clone(), "BALANCED").await;
    assert_eq!(status, 403);
    assert!(
        message.contains("\"py\"") && message.contains("allowlist"),
        "{message}"
    );
    assert!(
        gw.upstream_with("marker-mcp-refused").is_empty(),
        "nothing ran"
    );
}

#[tokio::test]
async fn invalid_configs_are_400_naming_the_server_and_field() {
    let gw = gateway().await;
    for (servers, needles) in [
        (
            json!({"memory": {"command": "node", "argz": []}}),
            vec!["\"memory\"", "argz"],
        ),
        (json!({"bad name!": {"command": "node"}}), vec!["bad name!"]),
        (
            json!({"r": {"url": "ftp://example.com/"}}),
            vec!["\"r\"", "url"],
        ),
        (
            json!({"r": {"url": "https://example.com/", "headers": {"X-A": "a\r\nB: c"}}}),
            vec!["headers.X-A"],
        ),
        (json!("not an object"), vec!["object"]),
    ] {
        let (status, message) = refused(&gw, servers.clone(), "BALANCED").await;
        assert!(
            status == 400 || status == 403,
            "{servers}: {status} {message}"
        );
        for needle in needles {
            assert!(message.contains(needle), "{servers}: {message}");
        }
    }
    let res = gw
        .post("/v1/messages")
        .bearer_auth(ALICE)
        .header("x-mcp-config", "{not json")
        .json(&body("marker-mcp-badjson"))
        .send()
        .await
        .expect("sent");
    assert_eq!(res.status(), 400);
}

#[tokio::test]
async fn remote_servers_at_internal_addresses_are_refused_in_every_spelling() {
    let gw = gateway().await;
    for url in [
        "http://127.0.0.1:1/mcp",
        "http://2130706433/mcp",
        "http://0177.0.0.1/mcp",
        "http://[::ffff:127.0.0.1]/mcp",
        "http://localhost/mcp",
        "http://169.254.169.254/latest",
        "http://metadata.google.internal/",
    ] {
        let (status, message) = refused(&gw, json!({"remote": {"url": url}}), "DEVELOPER").await;
        assert_eq!(status, 403, "{url}: {message}");
        assert!(message.contains("\"remote\""), "{message}");
    }
    // A public address passes the check, but the gateway does not bridge remote servers yet.
    let (status, message) = refused(
        &gw,
        json!({"remote": {"url": "https://mcp.example.com/mcp", "auth_type": "bearer", "auth_token": "tok-SECRET"}}),
        "DEVELOPER",
    )
    .await;
    assert_eq!(status, 400);
    assert!(message.contains("not offered"), "{message}");
    assert!(!message.contains("tok-SECRET"));
}

#[tokio::test]
async fn mcp_tools_lists_each_servers_tools_with_per_server_errors() {
    let gw = gateway().await;
    let servers = json!({
        "memory": memory_server()["memory"].clone(),
        "broken": {"command": "node", "args": ["/opt/mcp/does-not-exist.js"]},
        "py": {"command": "python3"},
        "meta": {"url": "http://169.254.169.254/"}
    });
    let res = gw
        .post("/v1/mcp/tools")
        .bearer_auth(ALICE)
        .json(&json!({"mcp_servers": servers}))
        .send()
        .await
        .expect("sent");
    assert_eq!(res.status(), 200);
    let listed: Value = res.json().await.expect("json");
    let by_name = |name: &str| {
        listed["servers"]
            .as_array()
            .into_iter()
            .flatten()
            .find(|s| s["name"] == name)
            .cloned()
            .unwrap_or(Value::Null)
    };
    let memory = by_name("memory");
    assert_eq!(memory["status"], "ok", "{listed}");
    let tools = memory["tools"].as_array().expect("tools");
    let create = tools
        .iter()
        .find(|t| t["name"] == "create_entities")
        .expect("create_entities");
    assert!(create["description"]
        .as_str()
        .is_some_and(|d| !d.is_empty()));
    assert_eq!(create["input_schema"]["type"], "object");
    assert_eq!(by_name("broken")["status"], "error");
    assert_eq!(by_name("py")["status"], "refused");
    assert_eq!(by_name("meta")["status"], "refused");
    // The header form, via GET.
    let res = gw
        .get("/v1/mcp/tools")
        .bearer_auth(ALICE)
        .header("x-mcp-config", memory_server().to_string())
        .send()
        .await
        .expect("sent");
    let listed: Value = res.json().await.expect("json");
    assert_eq!(listed["servers"][0]["status"], "ok");
    assert!(common::eventually(std::time::Duration::from_secs(2), || gw.descendants() == 0).await);
}
