//! What a request pays upstream: the input tokens the upstream reported for the same request
//! sent straight to the API, through the gateway as it is by default, and through it lean
//! (`"lean": true`) with an API key and with a subscription token; with the complete times
//! through the gateway.

use std::time::{Duration, Instant};

use fake_anthropic::FakeAnthropic;
use serde_json::{json, Value};

use crate::gateway::Gateway;
use crate::report::Block;
use crate::stats::Summary;

/// The two kinds of credential a tenant brings: what a lean run can leave out differs.
const SUBSCRIPTION: &str = "sk-ant-oat01-bench-lean.a";
const API_KEY: &str = "sk-ant-api03-bench-lean.a";

/// One non-streamed request with `credential`: its complete time and the upstream's
/// `input_tokens`.
async fn ask(
    client: &reqwest::Client,
    url: &str,
    credential: &str,
    body: &Value,
) -> anyhow::Result<(Duration, u64)> {
    let started = Instant::now();
    let mut req = client
        .post(format!("{url}/v1/messages"))
        .header("anthropic-version", "2023-06-01")
        .json(body);
    req = if credential.starts_with("sk-ant-api") {
        req.header("x-api-key", credential)
    } else {
        req.bearer_auth(credential)
    };
    let res = req.send().await?;
    anyhow::ensure!(res.status() == 200, "status {}", res.status());
    let answer: Value = res.json().await?;
    let tokens = answer["usage"]["input_tokens"].as_u64().unwrap_or(0);
    Ok((started.elapsed(), tokens))
}

/// A document of about `bytes` bytes of plain prose, the same every run.
fn document(bytes: usize) -> String {
    const PARAGRAPH: &str =
        "The committee met on Tuesday to review the quarterly figures. Revenue \
        rose in the northern region while costs held steady elsewhere; the delivery backlog \
        shrank by a third after the new warehouse opened. Two members asked for a breakdown \
        by product line before the next meeting, and the chair agreed to circulate it. ";
    PARAGRAPH.repeat(bytes / PARAGRAPH.len() + 1)[..bytes].to_owned()
}

/// What a figure is against the API's own: the ratio, and the tokens added.
fn against(direct: u64, n: u64) -> String {
    let added = n as i64 - direct as i64;
    let ratio = n as f64 / direct.max(1) as f64;
    if ratio < 10.0 {
        format!("{n} ({ratio:.2}×, {added:+})")
    } else {
        format!("{n} ({ratio:.0}×, {added:+})")
    }
}

pub async fn lean(
    bin: &std::path::Path,
    claude: &std::path::Path,
    runs: usize,
) -> anyhow::Result<Vec<Block>> {
    let gw = Gateway::start(bin, claude, &[]).await?;
    // The API itself, as the fake stands for it: it counts what it is sent the same way.
    let api = FakeAnthropic::start(([127, 0, 0, 1], 0).into()).await?;
    let client = reqwest::Client::new();
    let question = |bytes: usize| {
        json!({"model": "sonnet", "max_tokens": 100,
        "system": "Answer from the document only.",
        "messages": [{"role": "user", "content": format!(
            "<document>\n{}\n</document>\nWhat did the chair agree to do?", document(bytes))}]})
    };
    let kinds = [
        (
            "\"hi\"".to_owned(),
            json!({"model": "sonnet", "max_tokens": 100,
            "messages": [{"role": "user", "content": "hi"}]}),
        ),
        (
            "\"hi\" with a one-line `system`".to_owned(),
            json!({"model": "sonnet", "max_tokens": 100,
            "system": "Answer in one short sentence.",
            "messages": [{"role": "user", "content": "hi"}]}),
        ),
        (
            "a 4-turn conversation".to_owned(),
            json!({"model": "sonnet", "max_tokens": 100,
            "messages": [
                {"role": "user", "content": "What is the capital of France?"},
                {"role": "assistant", "content": "Paris."},
                {"role": "user", "content": "And of Italy?"},
                {"role": "assistant", "content": "Rome."},
                {"role": "user", "content": "And of Spain?"}]}),
        ),
        ("a question on a 4 kB document".to_owned(), question(4_000)),
        (
            "a question on a 40 kB document".to_owned(),
            question(40_000),
        ),
    ];
    let mut body = String::from(
        "| request | to the API directly: input tokens | through the gateway: input tokens (×, added) | complete median ms | lean, API key: input tokens (×, added) | complete median ms | lean, subscription token: input tokens (×, added) |\n|---|---|---|---|---|---|---|\n",
    );
    for (name, request) in kinds {
        let (_, direct) = ask(&client, &api.base_url(), API_KEY, &request).await?;
        let mut lean_request = request.clone();
        lean_request["lean"] = json!(true);
        let (mut full_times, mut lean_times) = (Vec::new(), Vec::new());
        let (mut full_tokens, mut lean_tokens, mut lean_oauth_tokens) = (0, 0, 0);
        for _ in 0..runs {
            let (t, n) = ask(&client, &gw.url, API_KEY, &request).await?;
            full_times.push(t);
            full_tokens = n;
            let (t, n) = ask(&client, &gw.url, API_KEY, &lean_request).await?;
            lean_times.push(t);
            lean_tokens = n;
            let (_, n) = ask(&client, &gw.url, SUBSCRIPTION, &lean_request).await?;
            lean_oauth_tokens = n;
        }
        body.push_str(&format!(
            "| {name} | {direct} | {} | {:.0} | {} | {:.0} | {} |\n",
            against(direct, full_tokens),
            Summary::of(&full_times).median_ms,
            against(direct, lean_tokens),
            Summary::of(&lean_times).median_ms,
            against(direct, lean_oauth_tokens),
        ));
    }
    body.push_str("\nInput tokens as the upstream reported them: the fake bills what a request's system prompt, messages and tool definitions say (a token per four bytes of their text), not its envelope, the same way whoever sends it; the `usage` the gateway returns is this figure. A lean run with an API key runs the CLI in its minimal mode (`--bare`): what it adds is one line of agent identity. With a subscription token the CLI cannot run in that mode (it reads no OAuth token there) and adds its environment notes (working directory, platform, model, date) and an attribution header as well. Neither offers any tool definition or the CLI's agent prompt.\n");
    Ok(vec![Block::new(
        "lean",
        format!("Upstream input per request: the API directly, the gateway, the gateway lean with either credential ({runs} runs each)"),
        &format!("{} lean --runs {runs}", crate::load::BENCH),
        &body,
    )])
}
