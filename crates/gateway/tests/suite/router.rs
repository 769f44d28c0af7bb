//! The router driven in process: no listener, no CLI, no upstream (its address is a closed
//! loopback port). Everything the gateway decides before a run starts, answered in the error
//! shape of the API that was called.

use std::sync::Arc;

use axum::body::Body;
use axum::http::{Request, StatusCode};
use claude_gateway::app::{router, AppState};
use claude_gateway::config::Config;
use serde_json::{json, Value};
use tower::ServiceExt;

const TOKEN: &str = "sk-ant-oat01-in-process.router";

async fn app(data: &std::path::Path) -> axum::Router {
    let data = data.to_string_lossy().into_owned();
    // Absolute paths already; the CLI is deliberately missing (nothing here may run it).
    let config = Config::from_args([
        "--data-dir",
        &data,
        "--claude-bin",
        "/nonexistent/claude",
        "--insecure-no-sandbox",
        "--anthropic-base-url",
        "http://127.0.0.1:9",
        "--mcp-bridge-listen",
        "127.0.0.1:0",
    ])
    .expect("config");
    router(Arc::new(AppState::new(config).await.expect("state")))
}

async fn post(app: &axum::Router, path: &str, body: Value) -> (StatusCode, Value) {
    let request = Request::post(path)
        .header("authorization", format!("Bearer {TOKEN}"))
        .header("content-type", "application/json")
        .body(Body::from(body.to_string()))
        .expect("request");
    let response = app.clone().oneshot(request).await.expect("response");
    let status = response.status();
    let bytes = axum::body::to_bytes(response.into_body(), 1 << 20)
        .await
        .expect("body");
    (
        status,
        serde_json::from_slice(&bytes).unwrap_or(Value::Null),
    )
}

fn chat(extra: Value) -> Value {
    let mut body = json!({"model": "sonnet", "messages": [{"role": "user", "content": "hi"}]});
    for (k, v) in extra.as_object().into_iter().flatten() {
        body[k] = v.clone();
    }
    body
}

fn message(extra: Value) -> Value {
    let mut body = chat(extra);
    body["max_tokens"] = json!(64);
    body
}

#[tokio::test]
async fn bad_fields_are_400_naming_them_in_each_dialects_own_shape() {
    let data = tempfile::tempdir().expect("tempdir");
    let app = app(data.path()).await;
    let anthropic = [
        (json!({"temperature": 3}), "temperature"),
        (json!({"stop_sequences": [" "]}), "stop_sequences.0"),
        (
            json!({"thinking": {"type": "enabled", "budget_tokens": 10}}),
            "thinking.budget_tokens",
        ),
        (
            json!({"output_format": {"type": "json_schema", "schema": []}}),
            "output_format.schema",
        ),
        (
            json!({"tools": [{"name": "a b", "input_schema": {"type": "object"}}]}),
            "tools.0.name",
        ),
    ];
    for (fields, named) in anthropic {
        let (status, body) = post(&app, "/v1/messages", message(fields)).await;
        assert_eq!(status, StatusCode::BAD_REQUEST, "{named}: {body}");
        assert_eq!(body["type"], "error", "{body}");
        assert_eq!(body["error"]["type"], "invalid_request_error");
        let text = body["error"]["message"].as_str().unwrap_or_default();
        assert!(text.starts_with(named), "{named}: {text}");
    }
    let openai = [
        (json!({"n": 2}), "n"),
        (json!({"stop": [""]}), "stop"),
        (json!({"reasoning_effort": "extreme"}), "reasoning_effort"),
        (
            json!({"response_format": {"type": "xml"}}),
            "response_format.type",
        ),
        (
            json!({"tools": [{"type": "function", "function": {"name": "a b"}}]}),
            "tools[0].function.name",
        ),
    ];
    for (fields, named) in openai {
        let (status, body) = post(&app, "/v1/chat/completions", chat(fields)).await;
        assert_eq!(status, StatusCode::BAD_REQUEST, "{named}: {body}");
        // OpenAI's shape, built as such: no Anthropic envelope.
        assert!(body.get("type").is_none(), "{body}");
        assert_eq!(body["error"]["type"], "invalid_request_error");
        assert!(body["error"].get("param").is_some() && body["error"].get("code").is_some());
        let text = body["error"]["message"].as_str().unwrap_or_default();
        assert!(text.starts_with(named), "{named}: {text}");
    }
}

#[tokio::test]
async fn a_missing_credential_is_401_whatever_the_body_in_each_shape() {
    let data = tempfile::tempdir().expect("tempdir");
    let app = app(data.path()).await;
    for (path, openai) in [("/v1/messages", false), ("/v1/chat/completions", true)] {
        let request = Request::post(path)
            .header("content-type", "application/json")
            .body(Body::from("{not json"))
            .expect("request");
        let response = app.clone().oneshot(request).await.expect("response");
        assert_eq!(response.status(), StatusCode::UNAUTHORIZED, "{path}");
        let bytes = axum::body::to_bytes(response.into_body(), 1 << 20)
            .await
            .expect("body");
        let body: Value = serde_json::from_slice(&bytes).expect("json");
        if openai {
            assert_eq!(body["error"]["code"], "invalid_api_key", "{body}");
        } else {
            assert_eq!(body["error"]["type"], "authentication_error", "{body}");
        }
    }
}

#[tokio::test]
async fn the_route_table_is_the_openapi_document() {
    let data = tempfile::tempdir().expect("tempdir");
    let app = app(data.path()).await;
    let request = Request::get("/openapi.json")
        .body(Body::empty())
        .expect("request");
    let response = app.oneshot(request).await.expect("response");
    assert_eq!(response.status(), StatusCode::OK);
    let bytes = axum::body::to_bytes(response.into_body(), 4 << 20)
        .await
        .expect("body");
    let doc: Value = serde_json::from_slice(&bytes).expect("json");
    for path in [
        "/v1/messages",
        "/v1/messages/count_tokens",
        "/v1/chat/completions",
    ] {
        assert!(doc["paths"].get(path).is_some(), "{path} documented");
    }
    // Request fields are documented from the types the handlers read.
    assert!(doc.to_string().contains("output_format"));
}
