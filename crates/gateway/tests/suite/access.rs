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

/// An access-keys file holding `lines`, in a directory that lives as long as the guard.
fn keys_file(lines: &str) -> (tempfile::TempDir, String) {
    let dir = tempfile::tempdir().expect("tempdir");
    let file = dir.path().join("keys");
    std::fs::write(&file, lines).expect("written");
    let path = file.to_string_lossy().into_owned();
    (dir, path)
}

#[tokio::test]
async fn with_access_keys_only_a_known_key_gets_in_and_nothing_runs_for_the_rest() {
    let (key, line) = new_key("team-a");
    let (_dir, file) = keys_file(&format!("# operator's keys\n{line}\n"));
    let gw = Gateway::builder()
        .args(&["--access-keys-file", &file])
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
    // Without an admin token `/metrics` is open to anyone who reaches the port: it counts
    // requests by key without naming which keys exist.
    let metrics = gw.metrics().await;
    assert!(
        metrics.contains("gateway_requests_by_access_key_total{access_key=\"key\"}"),
        "{metrics}"
    );
    assert!(!metrics.contains("team-a"));
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

/// `POST /v1/messages` with a gateway key (or JWT) beside the tenant's credential.
async fn keyed(gw: &Gateway, key: &str, prompt: &str) -> reqwest::Response {
    keyed_as(gw, TENANT, key, &body(prompt)).await
}

/// `POST /v1/messages` of `req` with a gateway key (or JWT) beside `tenant`'s credential.
async fn keyed_as(gw: &Gateway, tenant: &str, key: &str, req: &Value) -> reqwest::Response {
    gw.post("/v1/messages")
        .bearer_auth(tenant)
        .header("x-gateway-key", key)
        .json(req)
        .send()
        .await
        .expect("sent")
}

#[tokio::test]
async fn an_access_keys_budget_holds_for_that_key_and_the_operator_sees_each_keys_usage() {
    let (capped, capped_line) = new_key("capped");
    let (free, free_line) = new_key("free");
    // Each request costs about $0.015 (the CLI's estimate for the fake's counts).
    let (_dir, file) = keys_file(&format!("{capped_line} daily_usd=0.02\n{free_line}\n"));
    let admin = "operator-secret-token";
    let gw = Gateway::builder()
        .args(&["--access-keys-file", &file, "--admin-token", admin])
        .start()
        .await;
    for prompt in ["marker-key-budget-1", "marker-key-budget-2"] {
        assert_eq!(keyed(&gw, &capped, prompt).await.status(), 200);
    }
    // The capped key is spent: refused before anything runs, naming the key's budget.
    let refused = keyed(&gw, &capped, "marker-key-budget-3").await;
    assert_eq!(refused.status(), 429);
    assert!((1..=86_400).contains(&crate::common::retry_after(&refused)));
    let error: Value = refused.json().await.expect("json");
    let message = error["error"]["message"].as_str().unwrap_or_default();
    assert!(message.contains("access key's daily budget"), "{message}");
    assert!(gw.upstream_with("marker-key-budget-3").is_empty());
    // The same tenant through another key is not held by it.
    assert_eq!(keyed(&gw, &free, "marker-key-budget-4").await.status(), 200);

    // The operator's view: each key's usage, behind the operator's token.
    let res = gw.get("/v1/admin/usage").send().await.expect("sent");
    assert_eq!(res.status(), 401);
    let res = gw
        .get("/v1/admin/usage")
        .bearer_auth(admin)
        .send()
        .await
        .expect("sent");
    assert_eq!(res.status(), 200);
    let view: Value = res.json().await.expect("json");
    assert_eq!(view["keys"]["capped"]["today"]["requests"], 2, "{view}");
    assert_eq!(view["keys"]["free"]["today"]["requests"], 1, "{view}");
    assert!(
        view["keys"]["capped"]["today"]["cost_usd"]
            .as_f64()
            .is_some_and(|c| c >= 0.02),
        "{view}"
    );
    // A tenant's own view is still its own, across keys.
    let mine: Value = gw
        .get("/v1/usage")
        .bearer_auth(TENANT)
        .header("x-gateway-key", &free)
        .send()
        .await
        .expect("sent")
        .json()
        .await
        .expect("json");
    assert_eq!(mine["today"]["requests"], 3, "{mine}");
}

#[tokio::test]
async fn the_operators_usage_route_is_closed_without_an_operators_token() {
    let (_, line) = new_key("team-a");
    let (_dir, file) = keys_file(&format!("{line}\n"));
    let gw = Gateway::builder()
        .args(&["--access-keys-file", &file])
        .start()
        .await;
    let (status, error) = gw.get_json("/v1/admin/usage").await;
    assert_eq!(status, 403, "{error}");
    assert!(error["error"]["message"]
        .as_str()
        .is_some_and(|m| m.contains("--admin-token")));
}

/// An identity provider of the test's own on loopback: its key set (swappable, to rotate) and
/// how often it was fetched.
struct Provider {
    url: String,
    jwks: std::sync::Arc<std::sync::Mutex<Value>>,
    fetches: std::sync::Arc<std::sync::atomic::AtomicUsize>,
}

impl Provider {
    async fn start(jwks: Value) -> Provider {
        let jwks = std::sync::Arc::new(std::sync::Mutex::new(jwks));
        let fetches = std::sync::Arc::new(std::sync::atomic::AtomicUsize::new(0));
        let (served, counted) = (jwks.clone(), fetches.clone());
        let app = axum::Router::new().route(
            "/jwks.json",
            axum::routing::get(move || {
                let (served, counted) = (served.clone(), counted.clone());
                async move {
                    counted.fetch_add(1, std::sync::atomic::Ordering::SeqCst);
                    let jwks = served.lock().unwrap_or_else(|e| e.into_inner()).clone();
                    axum::Json(jwks)
                }
            }),
        );
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
            .await
            .expect("bind");
        let url = format!("http://{}/jwks.json", listener.local_addr().expect("addr"));
        tokio::spawn(async move { axum::serve(listener, app).await });
        Provider { url, jwks, fetches }
    }
}

/// A signing key of the provider's (ES256), and its public JWK under `kid`.
fn signing_key(kid: &str) -> (jsonwebtoken::EncodingKey, Value) {
    let rng = ring::rand::SystemRandom::new();
    let pkcs8 = ring::signature::EcdsaKeyPair::generate_pkcs8(
        &ring::signature::ECDSA_P256_SHA256_FIXED_SIGNING,
        &rng,
    )
    .expect("key");
    let key = jsonwebtoken::EncodingKey::from_ec_der(pkcs8.as_ref());
    let mut jwk = jsonwebtoken::jwk::Jwk::from_encoding_key(&key, jsonwebtoken::Algorithm::ES256)
        .expect("jwk");
    jwk.common.key_id = Some(kid.to_owned());
    (key, serde_json::to_value(jwk).expect("json"))
}

fn now() -> i64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .expect("clock")
        .as_secs() as i64
}

fn token(key: &jsonwebtoken::EncodingKey, kid: &str, claims: Value) -> String {
    let mut header = jsonwebtoken::Header::new(jsonwebtoken::Algorithm::ES256);
    header.kid = Some(kid.to_owned());
    jsonwebtoken::encode(&header, &claims, key).expect("signed")
}

/// A gateway taking JWTs of a provider (key `k1`, audience `claude-gateway`), with `extra`.
async fn jwt_gateway(extra: &[&str]) -> (jsonwebtoken::EncodingKey, Provider, Gateway) {
    let (key, jwk) = signing_key("k1");
    let provider = Provider::start(json!({"keys": [jwk]})).await;
    let mut args = vec![
        "--access-jwks-url",
        provider.url.as_str(),
        "--access-jwt-audience",
        "claude-gateway",
    ];
    args.extend_from_slice(extra);
    let gw = Gateway::builder().args(&args).start().await;
    (key, provider, gw)
}

#[tokio::test]
async fn a_jwt_of_the_operators_identity_provider_gets_in_and_no_other_does() {
    let (key, provider, gw) = jwt_gateway(&[
        "--access-jwt-issuer",
        "https://id.example.test",
        "--admin-token",
        "operator-secret-token",
    ])
    .await;
    let claims = |sub: &str, aud: &str, exp: i64| json!({"sub": sub, "aud": aud, "iss": "https://id.example.test", "exp": exp, "iat": now()});
    let valid = token(
        &key,
        "k1",
        claims("alice@example.test", "claude-gateway", now() + 600),
    );

    let res = keyed(&gw, &valid, "marker-jwt-valid").await;
    assert_eq!(res.status(), 200);
    // Its usage is counted under its subject, for the operator to see.
    let view: Value = gw
        .get("/v1/admin/usage?name=jwt:alice@example.test")
        .bearer_auth("operator-secret-token")
        .send()
        .await
        .expect("sent")
        .json()
        .await
        .expect("json");
    assert_eq!(
        view["keys"]["jwt:alice@example.test"]["today"]["requests"], 1,
        "{view}"
    );
    let (_, security) = gw
        .get_json_as("operator-secret-token", "/v1/security")
        .await;
    assert_eq!(
        security["access_control"],
        "identity provider JWTs (X-Gateway-Key)"
    );

    // Expired, meant for another audience, signed by another key under the same id, with
    // `none`, the wrong type of `nbf`, or no JWT at all: 401, and nothing runs.
    let (stranger, _) = signing_key("k1");
    // `{"alg":"none","typ":"JWT","kid":"k1"}` over a valid token's claims, unsigned.
    let unsigned = {
        let claims_part = valid.split('.').nth(1).expect("claims");
        format!("eyJhbGciOiJub25lIiwidHlwIjoiSldUIiwia2lkIjoiazEifQ.{claims_part}.")
    };
    let mut future_nbf = claims("alice@example.test", "claude-gateway", now() + 600);
    future_nbf["nbf"] = json!((now() + 86_400).to_string());
    for (what, presented) in [
        (
            "expired",
            token(
                &key,
                "k1",
                claims("alice@example.test", "claude-gateway", now() - 600),
            ),
        ),
        (
            "audience",
            token(
                &key,
                "k1",
                claims("alice@example.test", "another-app", now() + 600),
            ),
        ),
        (
            "signature",
            token(
                &stranger,
                "k1",
                claims("mallory", "claude-gateway", now() + 600),
            ),
        ),
        ("none", unsigned),
        ("nbf as text", token(&key, "k1", future_nbf)),
        ("no jwt", "cgk_whatever".to_owned()),
    ] {
        let res = keyed(&gw, &presented, "marker-jwt-refused").await;
        assert_eq!(res.status(), 401, "{what}");
        let error: Value = res.json().await.expect("json");
        assert_eq!(
            error["error"]["type"], "authentication_error",
            "{what}: {error}"
        );
    }
    assert!(gw.upstream_with("marker-jwt-refused").is_empty());

    // The provider rotates its key: a token under the new id is taken once the set is
    // fetched again, and made-up ids do not make the gateway fetch it again and again.
    let (rotated, rotated_jwk) = signing_key("k2");
    *provider.jwks.lock().unwrap_or_else(|e| e.into_inner()) = json!({"keys": [rotated_jwk]});
    let before = provider.fetches.load(std::sync::atomic::Ordering::SeqCst);
    let fresh = token(
        &rotated,
        "k2",
        claims("bob@example.test", "claude-gateway", now() + 600),
    );
    assert_eq!(keyed(&gw, &fresh, "marker-jwt-rotated").await.status(), 200);
    for i in 0..5 {
        let made_up = token(
            &rotated,
            &format!("made-up-{i}"),
            claims("x", "claude-gateway", now() + 600),
        );
        assert_eq!(
            keyed(&gw, &made_up, "marker-jwt-made-up").await.status(),
            401
        );
    }
    let after = provider.fetches.load(std::sync::atomic::Ordering::SeqCst);
    assert_eq!(
        after - before,
        1,
        "one fetch for the rotation, none for made-up ids"
    );

    let logs = gw.stop().await;
    assert!(
        logs.contains("\"access_key\":\"jwt:alice@example.test\""),
        "the subject is logged"
    );
    assert!(!logs.contains(&valid), "the token itself never is");
}

#[tokio::test]
async fn a_session_continued_under_another_key_does_not_run_in_the_process_the_first_kept() {
    // A live process's spending cap is the budget of the key that started it: a key with a
    // budget must not continue in a process started under one without.
    let (free, free_line) = new_key("team-free");
    let (capped, capped_line) = new_key("team-capped");
    let (_dir, file) = keys_file(&format!("{free_line}\n{capped_line} daily_usd=5\n"));
    let gw = Gateway::builder()
        .args(&["--access-keys-file", &file])
        .start()
        .await;
    for (key, prompt) in [
        (&free, "marker-grant-1"),
        (&capped, "marker-grant-2"),
        (&capped, "marker-grant-3"),
    ] {
        let mut req = body(prompt);
        req["session_id"] = json!("shared-conv");
        assert_eq!(keyed_as(&gw, TENANT, key, &req).await.status(), 200);
    }
    let starts = crate::sessions::cli_starts(&gw);
    assert_eq!(
        starts, 2,
        "the capped key started its own process, then kept it"
    );
}

#[tokio::test]
async fn a_jwt_subject_has_its_own_budget_across_tenants_when_the_operator_sets_one() {
    let (key, _provider, gw) = jwt_gateway(&["--access-jwt-daily-budget-usd", "0.02"]).await;
    let jwt = |sub: &str| {
        token(
            &key,
            "k1",
            json!({"sub": sub, "aud": "claude-gateway", "exp": now() + 600, "iat": now()}),
        )
    };
    let ask = |jwt: String, tenant: &'static str, prompt: &'static str| {
        let gw = &gw;
        async move { keyed_as(gw, tenant, &jwt, &body(prompt)).await }
    };
    // Each request costs about $0.019 (the CLI's estimate for the fake's counts): the second,
    // from another tenant, crosses the subject's budget and is its last.
    let alice = jwt("alice@example.test");
    let first = ask(alice.clone(), TENANT, "marker-jwt-budget-1").await;
    assert_eq!(first.status(), 200);
    let second = ask(
        alice.clone(),
        "sk-ant-oat01-other.tenant",
        "marker-jwt-budget-2",
    )
    .await;
    assert_eq!(second.status(), 200);
    let refused = ask(alice, TENANT, "marker-jwt-budget-3").await;
    assert_eq!(refused.status(), 429);
    let error: Value = refused.json().await.expect("json");
    let message = error["error"]["message"].as_str().unwrap_or_default();
    assert!(
        message.contains("this identity's daily budget"),
        "{message}"
    );
    assert!(
        gw.upstream_with("marker-jwt-budget-3").is_empty(),
        "nothing ran"
    );
    // Another subject has a budget of its own.
    let bob = ask(jwt("bob@example.test"), TENANT, "marker-jwt-budget-bob").await;
    assert_eq!(bob.status(), 200);
}
