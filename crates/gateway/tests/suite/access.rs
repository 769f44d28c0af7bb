//! Access keys (`--access-keys-file`): with them on, every API route needs `X-Gateway-Key`;
//! a missing or unknown key is 401 before anything runs, in each dialect's shape.

use crate::common::{body, Gateway};
use serde_json::{json, Value};

const TENANT: &str = "sk-ant-oat01-keyed.tenant";

/// `claude-gateway keys new NAME`: the key and the line, as it prints them.
fn new_key(name: &str) -> (String, String) {
    let out = std::process::Command::new(env!("CARGO_BIN_EXE_claude-gateway"))
        .args(["keys", "new", name])
        .output()
        .expect("runs");
    assert!(out.status.success());
    let text = String::from_utf8_lossy(&out.stdout).into_owned();
    let after = |label: &str| {
        text.lines()
            .find(|l| l.starts_with(label))
            .and_then(|l| l.rsplit(' ').next())
            .expect(label)
            .to_owned()
    };
    (after("key"), after("line"))
}

#[tokio::test]
async fn with_access_keys_only_a_known_key_gets_in_and_nothing_runs_for_the_rest() {
    let (key, line) = new_key("team-a");
    let dir = tempfile::tempdir().expect("tempdir");
    let file = dir.path().join("keys");
    std::fs::write(&file, format!("# operator's keys\n{line}\n")).expect("written");
    let gw = Gateway::builder()
        .args(&["--access-keys-file", &file.to_string_lossy()])
        .start()
        .await;

    // No key, or a wrong one: 401 on every route that could run anything, in its shape.
    for presented in [None, Some("cgk_not-a-key")] {
        let with = |req: reqwest::RequestBuilder| match presented {
            Some(k) => req.header("x-gateway-key", k),
            None => req,
        };
        let res = with(gw.post("/v1/messages").bearer_auth(TENANT))
            .json(&body("marker-access-denied"))
            .send()
            .await
            .expect("sent");
        assert_eq!(res.status(), 401);
        let err: Value = res.json().await.expect("json");
        assert_eq!(err["error"]["type"], "authentication_error", "{err}");
        assert!(err["error"]["message"]
            .as_str()
            .is_some_and(|m| m.contains("X-Gateway-Key")));
        let res = with(gw.post("/v1/chat/completions").bearer_auth(TENANT))
            .json(&json!({"model": "sonnet", "messages": [{"role": "user", "content": "marker-access-denied"}]}))
            .send()
            .await
            .expect("sent");
        assert_eq!(res.status(), 401);
        let err: Value = res.json().await.expect("json");
        assert_eq!(
            err["error"]["code"], "invalid_api_key",
            "OpenAI's shape: {err}"
        );
        for path in ["/v1/sessions", "/v1/models", "/v1/mcp/tools"] {
            let res = with(gw.get(path).bearer_auth(TENANT))
                .send()
                .await
                .expect("sent");
            assert_eq!(res.status(), 401, "{path}");
        }
    }
    // Nothing reached the upstream, not even to identify the caller.
    assert!(gw.upstream().is_empty(), "{:?}", gw.upstream().len());
    // Probes stay open.
    assert_eq!(gw.get("/health").send().await.expect("sent").status(), 200);

    // The right key: in, and its name (never the key) in the request's log line.
    let res = gw
        .post("/v1/messages")
        .bearer_auth(TENANT)
        .header("x-gateway-key", &key)
        .json(&body("marker-access-granted"))
        .send()
        .await
        .expect("sent");
    assert_eq!(res.status(), 200);
    let (_, security) = gw.get_json("/v1/security").await;
    assert_eq!(security["access_control"], "access keys (X-Gateway-Key)");
    let logs = gw.stop().await;
    assert!(
        logs.contains("\"access_key\":\"team-a\""),
        "the key's name is logged"
    );
    assert!(!logs.contains(&key), "the key itself never is");
}

#[tokio::test]
async fn a_malformed_access_keys_file_stops_the_gateway_at_start() {
    let dir = tempfile::tempdir().expect("tempdir");
    let file = dir.path().join("keys");
    std::fs::write(&file, "team-a:not-a-digest\n").expect("written");
    let out = std::process::Command::new(env!("CARGO_BIN_EXE_claude-gateway"))
        .args(["serve", "--listen", "127.0.0.1:0", "--insecure-no-sandbox"])
        .arg("--data-dir")
        .arg(dir.path().join("data"))
        .arg("--access-keys-file")
        .arg(&file)
        .output()
        .expect("runs");
    assert!(!out.status.success());
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(
        err.contains("--access-keys-file") && err.contains("line 1"),
        "{err}"
    );
}

#[tokio::test]
async fn only_the_allowed_accounts_and_organizations_are_served() {
    use fake_anthropic::accounts::account_uuid;
    let alice = account_uuid("sk-ant-oat01-alice.allowed").to_string();
    let carols_org = account_uuid("org-carol").to_string();
    let gw = Gateway::builder()
        .args(&[
            "--allowed-accounts",
            &alice,
            "--allowed-organizations",
            &carols_org,
        ])
        .start()
        .await;
    let count = |token: &'static str| {
        gw.post("/v1/messages/count_tokens")
            .bearer_auth(token)
            .json(&json!({"model": "sonnet", "messages": [{"role": "user", "content": "hi"}]}))
            .send()
    };
    // An allowed account (OAuth, by its profile) and an API key of an allowed organization
    // (by the organization the API names in its answer).
    assert_eq!(
        count("sk-ant-oat01-alice.allowed")
            .await
            .expect("sent")
            .status(),
        200
    );
    assert_eq!(
        count("sk-ant-api03-carol.key")
            .await
            .expect("sent")
            .status(),
        200
    );
    let res = gw
        .messages("sk-ant-oat01-alice.allowed", body("marker-allowed"))
        .await;
    assert_eq!(res.status(), 200);
    // Anyone else: 403 in the API's shape, and nothing runs.
    for token in ["sk-ant-oat01-bob.other", "sk-ant-api03-dave.key"] {
        let res = gw.messages(token, body("marker-not-allowed")).await;
        assert_eq!(res.status(), 403, "{token}");
        let error: Value = res.json().await.expect("json");
        assert_eq!(error["error"]["type"], "permission_error", "{error}");
    }
    assert!(gw.upstream_with("marker-not-allowed").is_empty());
    let (_, security) = gw.get_json("/v1/security").await;
    assert_eq!(
        security["allowed_accounts"],
        "only the configured accounts and organizations"
    );
}
