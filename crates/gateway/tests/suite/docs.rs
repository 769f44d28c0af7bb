//! The documentation the gateway serves: OpenAPI, Swagger UI (no CDN), `GET /`, CORS.

use crate::common::Gateway;
use serde_json::Value;

#[tokio::test]
async fn openapi_covers_every_route_and_the_extension_fields() {
    let gw = Gateway::start().await;
    let (status, spec) = gw.get_json("/openapi.json").await;
    assert_eq!(status, 200);
    let paths = spec["paths"].as_object().expect("paths");
    for route in [
        "/v1/messages",
        "/v1/chat/completions",
        "/v1/models",
        "/v1/models/{id}",
        "/v1/sessions",
        "/v1/sessions/{id}",
        "/v1/security",
        "/v1/mcp/tools",
        "/v1/usage",
        "/health",
        "/ready",
        "/metrics",
        "/",
    ] {
        assert!(paths.contains_key(route), "{route} is documented");
    }
    let text = spec.to_string();
    for field in [
        "session_id",
        "security_level",
        "system_prompt_mode",
        "tool_activity",
        "oauth_credentials",
        "refreshed_oauth_credentials",
        "x-session-id",
        "x-mcp-config",
        "mcp_servers",
    ] {
        assert!(text.contains(field), "{field} is documented");
    }
    for method in ["get", "post"] {
        assert!(
            paths["/v1/mcp/tools"].get(method).is_some(),
            "{method} /v1/mcp/tools is documented"
        );
    }
}

#[tokio::test]
async fn swagger_ui_is_served_from_the_binary() {
    let gw = Gateway::start().await;
    let page = gw.get("/docs/").send().await.expect("sent");
    assert_eq!(page.status(), 200);
    let html = page.text().await.expect("html");
    assert!(html.contains("swagger-ui"));
    assert!(
        !html.contains("://cdn") && !html.contains("unpkg.com"),
        "no CDN"
    );
    let bundle = gw
        .get("/docs/swagger-ui-bundle.js")
        .send()
        .await
        .expect("sent");
    assert_eq!(bundle.status(), 200);
    assert!(bundle.text().await.expect("js").len() > 100_000);
}

#[tokio::test]
async fn root_describes_the_gateway_as_json_or_as_a_page() {
    let gw = Gateway::start().await;
    let (status, root) = gw.get_json("/").await;
    assert_eq!(status, 200);
    assert!(root["endpoints"].as_array().is_some_and(|e| e.len() >= 10));
    assert!(root["examples"]["message"]
        .as_str()
        .is_some_and(|c| c.starts_with("curl ")));
    assert_eq!(root["security"]["default_level"], "BALANCED");
    assert!(root["sessions"]["continue"].is_string());
    let page = gw
        .get("/")
        .header("accept", "text/html,application/xhtml+xml")
        .send()
        .await
        .expect("sent");
    assert!(page
        .headers()
        .get("content-type")
        .and_then(|v| v.to_str().ok())
        .is_some_and(|c| c.starts_with("text/html")));
    assert!(page.text().await.expect("html").contains("href=\"/docs\""));
}

#[tokio::test]
async fn cors_is_off_by_default_and_follows_the_configured_origins() {
    let off = Gateway::start().await;
    let res = off
        .get("/v1/models")
        .header("origin", "https://app.example")
        .send()
        .await
        .expect("sent");
    assert!(res.headers().get("access-control-allow-origin").is_none());
    let on = Gateway::builder()
        .args(&["--cors-allow-origins", "https://app.example"])
        .start()
        .await;
    let preflight = crate::common::client()
        .request(reqwest::Method::OPTIONS, format!("{}/v1/messages", on.url))
        .header("origin", "https://app.example")
        .header("access-control-request-method", "POST")
        .send()
        .await
        .expect("sent");
    assert_eq!(
        preflight
            .headers()
            .get("access-control-allow-origin")
            .and_then(|v| v.to_str().ok()),
        Some("https://app.example")
    );
    let other: Value = on.get_json("/health").await.1;
    assert_eq!(other["status"], "ok");
}
