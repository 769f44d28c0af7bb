//! Per-request MCP servers through the real CLI: real servers from the npm registry,
//! `@modelcontextprotocol/server-memory` over stdio inside the tenant's sandbox and
//! `@modelcontextprotocol/server-everything` over streamable HTTP and SSE behind a bearer check,
//! reached by the gateway and bridged to the run. Every address is loopback: remote servers are
//! reached as `localhost`, the one host the test gateways allow.

use crate::common::remote_mcp::{Everything, Gate};
use crate::common::{body, repo_root, scripted, tool_results, Gateway};
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
            "--mcp-allowed-hosts",
            "localhost",
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
            vec!["\"r\"", "url", "http"],
        ),
        (json!({"r": {"url": "not a url"}}), vec!["\"r\"", "url"]),
        (
            json!({"r": {"url": "https://example.com/", "headers": {"X-A": "a\r\nB: c"}}}),
            vec!["headers.X-A"],
        ),
        (json!("not an object"), vec!["object"]),
    ] {
        let (status, message) = refused(&gw, servers.clone(), "BALANCED").await;
        assert_eq!(status, 400, "{servers}: {message}");
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
        "http://app.localhost/mcp",
        "http://169.254.169.254/latest",
        "http://metadata.google.internal/",
    ] {
        let (status, message) = refused(&gw, json!({"remote": {"url": url}}), "DEVELOPER").await;
        assert_eq!(status, 403, "{url}: {message}");
        assert!(message.contains("\"remote\""), "{message}");
    }
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
    let listed = list_tools(&gw, servers).await;
    let by_name = |name: &str| server(&listed, name).clone();
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
    assert!(crate::common::eventually(crate::common::SETTLE, || gw.descendants() == 0).await);
}

const HTTP_TOKEN: &str = "mcp-http-token-7f3a9c";
const SSE_TOKEN: &str = "mcp-sse-token-41d0be";

/// server-everything over streamable HTTP and over SSE, each behind its own bearer gate.
struct Remotes {
    http: Gate,
    sse: Gate,
    _servers: (Everything, Everything),
}

impl Remotes {
    async fn start() -> Self {
        let (http_server, sse_server) = tokio::join!(
            Everything::start("streamableHttp"),
            Everything::start("sse")
        );
        let (http, sse) = tokio::join!(
            Gate::bearer(http_server.port, HTTP_TOKEN),
            Gate::bearer(sse_server.port, SSE_TOKEN)
        );
        Self {
            http,
            sse,
            _servers: (http_server, sse_server),
        }
    }

    fn servers(&self) -> Value {
        json!({
            "http": {
                "url": format!("http://localhost:{}/mcp", self.http.port),
                "transport": "http",
                "auth_type": "bearer",
                "auth_token": HTTP_TOKEN,
            },
            "sse": {
                "url": format!("http://localhost:{}/sse", self.sse.port),
                "transport": "sse",
                "auth_type": "jwt",
                "auth_token": SSE_TOKEN,
            },
        })
    }
}

async fn list_tools(gw: &Gateway, servers: Value) -> Value {
    let res = gw
        .post("/v1/mcp/tools")
        .bearer_auth(ALICE)
        .json(&json!({"mcp_servers": servers}))
        .send()
        .await
        .expect("sent");
    assert_eq!(res.status(), 200);
    res.json().await.expect("json")
}

fn server<'a>(listed: &'a Value, name: &str) -> &'a Value {
    listed["servers"]
        .as_array()
        .into_iter()
        .flatten()
        .find(|s| s["name"] == name)
        .unwrap_or(&Value::Null)
}

fn assert_no_remote_secret(gw: &Gateway, text: &str) {
    for secret in [HTTP_TOKEN, SSE_TOKEN] {
        assert!(!text.contains(secret), "a remote MCP token leaked: {text}");
        assert!(
            !gw.logs().contains(secret),
            "a remote MCP token reached the log"
        );
        let upstream = serde_json::to_string(
            &gw.upstream()
                .iter()
                .map(|r| (&r.headers, &r.body))
                .collect::<Vec<_>>(),
        )
        .expect("json");
        assert!(
            !upstream.contains(secret),
            "a remote MCP token reached the model"
        );
    }
}

#[tokio::test]
async fn mcp_tools_lists_remote_servers_over_http_and_sse_and_names_a_wrong_bearer() {
    let gw = gateway().await;
    let remotes = Remotes::start().await;
    let mut servers = remotes.servers();
    servers["wrong"] = json!({
        "url": format!("http://localhost:{}/mcp", remotes.http.port),
        "auth_type": "bearer",
        "auth_token": "not-the-token",
    });
    let listed = list_tools(&gw, servers).await;
    for name in ["http", "sse"] {
        let entry = server(&listed, name);
        assert_eq!(entry["status"], "ok", "{name}: {listed}");
        let echo = entry["tools"]
            .as_array()
            .into_iter()
            .flatten()
            .find(|t| t["name"] == "echo")
            .unwrap_or_else(|| panic!("{name} lists echo: {listed}"));
        assert_eq!(echo["input_schema"]["type"], "object");
    }
    let wrong = server(&listed, "wrong");
    assert_eq!(wrong["status"], "error", "{listed}");
    let message = wrong["error"].as_str().unwrap_or_default();
    assert!(message.contains("401"), "the error says why: {message}");
    assert_no_remote_secret(&gw, &listed.to_string());
}

#[tokio::test]
async fn remote_tools_reach_the_model_and_calls_return_their_real_results_through_the_bridge() {
    let gw = gateway().await;
    let remotes = Remotes::start().await;
    let script = json!({"tools": [
        {"name": "mcp__http__echo", "input": {"message": "hello over streamable http"}},
        {"name": "mcp__sse__echo", "input": {"message": "hello over sse"}}
    ]});
    let mut req = body(&scripted("marker-mcp-remote", script));
    req["mcp_servers"] = remotes.servers();
    let res = gw.messages(ALICE, req).await;
    assert_eq!(res.status(), 200);
    let text = res.text().await.expect("body");
    let calls = gw.upstream_with("marker-mcp-remote");
    let names = tool_names(&calls[0]);
    for tool in ["mcp__http__echo", "mcp__sse__echo", "mcp__http__get-sum"] {
        assert!(names.iter().any(|n| n == tool), "{tool} in {names:?}");
    }
    let results = tool_results(&calls);
    assert_eq!(results.len(), 2, "{results:?}");
    assert!(
        results[0].contains("Echo: hello over streamable http"),
        "{results:?}"
    );
    assert!(results[1].contains("Echo: hello over sse"), "{results:?}");
    assert_no_remote_secret(&gw, &text);
    // The run is over: its routes are closed and nothing it started is left.
    assert!(
        crate::common::eventually(crate::common::SETTLE, || gw.descendants() == 0
            && gw.leftover_run_dirs() == 0)
        .await
    );
    let metrics = gw.metrics().await;
    for transport in ["http", "sse"] {
        assert!(
            metrics
                .lines()
                .any(|l| l.starts_with("gateway_mcp_remote_connections_total{")
                    && l.contains(&format!("transport=\"{transport}\""))
                    && l.contains("outcome=\"ok\"")),
            "{metrics}"
        );
    }
    assert!(
        metrics
            .lines()
            .any(|l| l == "gateway_mcp_bridged_servers 0"),
        "no route outlives its run: {metrics}"
    );
}

#[tokio::test]
async fn a_remote_server_that_refuses_the_bearer_fails_the_request_naming_it() {
    let gw = gateway().await;
    let remotes = Remotes::start().await;
    let mut servers = remotes.servers();
    servers["http"]["auth_token"] = json!("not-the-token");
    let (status, message) = refused(&gw, servers, "BALANCED").await;
    assert_eq!(status, 400, "{message}");
    assert!(
        message.contains("\"http\"") && message.contains("401"),
        "{message}"
    );
    assert!(
        gw.upstream_with("marker-mcp-refused").is_empty(),
        "no run started"
    );
}

#[tokio::test]
async fn redirects_to_private_addresses_or_other_origins_are_refused_before_connecting() {
    let gw = gateway().await;
    let target = Gate::bearer(1, HTTP_TOKEN).await;
    let p = target.port;
    let locations = [
        format!("http://127.0.0.1:{p}/mcp"),
        format!("http://2130706433:{p}/mcp"),
        format!("http://0x7f.1:{p}/mcp"),
        format!("http://0177.0.0.1:{p}/mcp"),
        format!("http://[::ffff:127.0.0.1]:{p}/mcp"),
        format!("http://[::1]:{p}/mcp"),
        // The allowed host, but another origin (port): refused too.
        format!("http://localhost:{p}/mcp"),
    ];
    let mut gates = Vec::new();
    let mut servers = serde_json::Map::new();
    for (i, location) in locations.iter().enumerate() {
        let gate = Gate::redirecting(location).await;
        servers.insert(
            format!("r{i}"),
            json!({"url": format!("http://localhost:{}/mcp", gate.port), "auth_type": "bearer", "auth_token": HTTP_TOKEN}),
        );
        gates.push(gate);
    }
    let listed = list_tools(&gw, Value::Object(servers)).await;
    for (i, location) in locations.iter().enumerate() {
        let entry = server(&listed, &format!("r{i}"));
        assert_eq!(entry["status"], "refused", "{location}: {listed}");
        assert!(
            entry["error"]
                .as_str()
                .is_some_and(|e| e.contains("redirect")),
            "{location}: {entry}"
        );
        assert!(gates[i].hits() >= 1, "the redirecting server was asked");
    }
    assert_eq!(target.hits(), 0, "no redirect was followed");
    // On /v1/messages the same refusal is a 403 naming the server, before any run.
    let redirect = Gate::redirecting(&format!("http://127.0.0.1:{p}/mcp")).await;
    let (status, message) = refused(
        &gw,
        json!({"r": {"url": format!("http://localhost:{}/mcp", redirect.port)}}),
        "BALANCED",
    )
    .await;
    assert_eq!(status, 403, "{message}");
    assert!(
        message.contains("\"r\"") && message.contains("redirect"),
        "{message}"
    );
    assert_eq!(target.hits(), 0);
}

#[tokio::test]
async fn listing_tools_counts_against_the_tenants_rate_like_a_run() {
    let gw = Gateway::builder()
        .args(&["--rate-limit-per-tenant", "1"])
        .start()
        .await;
    // A server the policy refuses: nothing is started or connected to.
    let servers = json!({"meta": {"url": "http://169.254.169.254/"}});
    let list = || {
        gw.post("/v1/mcp/tools")
            .bearer_auth(ALICE)
            .json(&json!({"mcp_servers": servers}))
            .send()
    };
    assert_eq!(list().await.expect("sent").status(), 200);
    let limited = list().await.expect("sent");
    assert_eq!(limited.status(), 429);
    assert!(limited.headers().contains_key("retry-after"));
}
