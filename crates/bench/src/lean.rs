//! What a request pays upstream: the input tokens the upstream reported for the same small
//! request sent straight to the API, through the gateway as it is by default, and through it
//! lean (`"lean": true`); with each one's complete time through the gateway.

use std::time::{Duration, Instant};

use fake_anthropic::FakeAnthropic;
use serde_json::{json, Value};

use crate::gateway::Gateway;
use crate::report::Block;
use crate::stats::Summary;

/// One non-streamed request: its complete time and the upstream's `input_tokens`.
async fn ask(client: &reqwest::Client, url: &str, body: &Value) -> anyhow::Result<(Duration, u64)> {
    let started = Instant::now();
    let res = client
        .post(format!("{url}/v1/messages"))
        .bearer_auth("sk-ant-oat01-bench-lean.a")
        .header("anthropic-version", "2023-06-01")
        .json(body)
        .send()
        .await?;
    anyhow::ensure!(res.status() == 200, "status {}", res.status());
    let answer: Value = res.json().await?;
    let tokens = answer["usage"]["input_tokens"].as_u64().unwrap_or(0);
    Ok((started.elapsed(), tokens))
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
    let kinds = [
        (
            "\"hi\"",
            json!({"model": "sonnet", "max_tokens": 100,
            "messages": [{"role": "user", "content": "hi"}]}),
        ),
        (
            "\"hi\" with a one-line `system`",
            json!({"model": "sonnet", "max_tokens": 100,
            "system": "Answer in one short sentence.",
            "messages": [{"role": "user", "content": "hi"}]}),
        ),
        (
            "a 4-turn conversation",
            json!({"model": "sonnet", "max_tokens": 100,
            "messages": [
                {"role": "user", "content": "What is the capital of France?"},
                {"role": "assistant", "content": "Paris."},
                {"role": "user", "content": "And of Italy?"},
                {"role": "assistant", "content": "Rome."},
                {"role": "user", "content": "And of Spain?"}]}),
        ),
    ];
    let mut body = String::from(
        "| request | to the API directly: input tokens | through the gateway: input tokens (×) | complete median ms | lean: input tokens (×) | complete median ms |\n|---|---|---|---|---|---|\n",
    );
    for (name, request) in kinds {
        let (_, direct) = ask(&client, &api.base_url(), &request).await?;
        let mut lean_request = request.clone();
        lean_request["lean"] = json!(true);
        let (mut full_times, mut lean_times) = (Vec::new(), Vec::new());
        let (mut full_tokens, mut lean_tokens) = (0, 0);
        for _ in 0..runs {
            let (t, n) = ask(&client, &gw.url, &request).await?;
            full_times.push(t);
            full_tokens = n;
            let (t, n) = ask(&client, &gw.url, &lean_request).await?;
            lean_times.push(t);
            lean_tokens = n;
        }
        let ratio = |n: u64| n as f64 / direct.max(1) as f64;
        body.push_str(&format!(
            "| {name} | {direct} | {full_tokens} ({:.0}×) | {:.0} | {lean_tokens} ({:.1}×) | {:.0} |\n",
            ratio(full_tokens),
            Summary::of(&full_times).median_ms,
            ratio(lean_tokens),
            Summary::of(&lean_times).median_ms,
        ));
    }
    body.push_str("\nInput tokens as the upstream reported them (the fake counts a request's bytes the same way whoever sends it; the `usage` the gateway returns is this figure). A lean run still carries what the CLI adds of its own: a line of agent prompt, its billing header and a block of environment notes (working directory, platform, date); no tool definitions and none of its agent prompt.\n");
    Ok(vec![Block::new(
        "lean",
        format!("Upstream input per request: the API directly, the gateway, the gateway lean ({runs} runs each)"),
        &format!("{} lean --runs {runs}", crate::load::BENCH),
        &body,
    )])
}
