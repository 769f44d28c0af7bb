//! Sessions across instances on one Redis (a real `redis-server` on loopback), each instance
//! with its own disk: a session goes on wherever its next turn lands, one turn at a time, and
//! a Redis failure in the middle of a turn leaves the session as it was before that turn.

use std::time::Duration;

use crate::common::redis_server::RedisServer;
use crate::common::{body, scripted, Gateway};
use crate::sessions::conversation;
use claude_gateway::sessions::records::Records;
use claude_gateway::sessions::{ClientSessionId, SessionError, SessionMeta};
use claude_gateway::shared::Redis;
use claude_gateway::tenant::identity::TenantId;
use serde_json::{json, Value};

const TENANT: &str = "sk-ant-oat01-sharedsessions.token";
const OTHER: &str = "sk-ant-oat01-sharedsessions-other.token";

async fn instance(redis: &RedisServer, extra: &[&str]) -> Gateway {
    let url = redis.url();
    let mut args = vec!["--redis-url", url.as_str()];
    args.extend_from_slice(extra);
    Gateway::builder().args(&args).start().await
}

async fn turn(gw: &Gateway, session: &str, prompt: &str) -> reqwest::Response {
    let mut req = body(prompt);
    req["session_id"] = json!(session);
    gw.messages(TENANT, req).await
}

/// The user prompts (their markers) the model saw in the call that carried `marker`.
fn prompts_seen(gw: &Gateway, marker: &str) -> Vec<String> {
    let call = gw
        .upstream_with(marker)
        .pop()
        .expect("the marker reached the upstream");
    conversation(&call)
        .into_iter()
        .filter(|(role, _)| role == "user")
        .filter_map(|(_, text)| {
            text.split_whitespace()
                .find(|w| w.starts_with("marker-"))
                .map(str::to_owned)
        })
        .collect()
}

#[tokio::test]
async fn a_session_goes_on_with_its_history_wherever_its_turns_land() {
    let redis = RedisServer::start();
    let a = instance(&redis, &[]).await;
    let b = instance(&redis, &[]).await;
    assert_eq!(turn(&a, "travel", "marker-xs-1 first").await.status(), 200);
    // On B, which never saw the session.
    assert_eq!(turn(&b, "travel", "marker-xs-2 second").await.status(), 200);
    assert_eq!(
        prompts_seen(&b, "marker-xs-2"),
        ["marker-xs-1", "marker-xs-2"]
    );
    // Back on A, whose own copy (and live process) stopped at the first turn.
    assert_eq!(turn(&a, "travel", "marker-xs-3 third").await.status(), 200);
    assert_eq!(
        prompts_seen(&a, "marker-xs-3"),
        ["marker-xs-1", "marker-xs-2", "marker-xs-3"]
    );
    // A dies while the session is idle; B goes on.
    drop(a);
    assert_eq!(turn(&b, "travel", "marker-xs-4 fourth").await.status(), 200);
    assert_eq!(
        prompts_seen(&b, "marker-xs-4"),
        ["marker-xs-1", "marker-xs-2", "marker-xs-3", "marker-xs-4"]
    );
    // Its metadata is the same everywhere.
    let (status, session) = b.get_json_as(TENANT, "/v1/sessions/travel").await;
    assert_eq!(status, 200);
    assert_eq!(session["turns"], 4);
    assert_eq!(session["messages"].as_array().map(Vec::len), Some(8));
}

#[tokio::test]
async fn concurrent_turns_of_one_session_on_two_instances_run_one_at_a_time() {
    let redis = RedisServer::start();
    let wait = ["--session-lock-wait-secs", "1"];
    let a = instance(&redis, &wait).await;
    let b = instance(&redis, &wait).await;
    assert_eq!(turn(&a, "busy", "marker-xc-0 start").await.status(), 200);
    let slow = scripted(
        "marker-xc-slow",
        json!({"reply": "slow", "chunks": 3, "chunk_delay_ms": 800}),
    );
    let (on_a, on_b) = tokio::join!(turn(&a, "busy", &slow), async {
        a.until_running(1).await;
        turn(&b, "busy", "marker-xc-b meanwhile").await
    });
    assert_eq!(on_a.status(), 200);
    assert_eq!(on_b.status(), 409, "the session is busy on A");
    let error: Value = on_b.json().await.expect("json");
    assert!(
        error["error"]["message"]
            .as_str()
            .is_some_and(|m| m.contains("busy")),
        "{error}"
    );
    // Once A's turn is over, B takes the next one, after A's.
    assert_eq!(turn(&b, "busy", "marker-xc-after").await.status(), 200);
    assert_eq!(
        prompts_seen(&b, "marker-xc-after"),
        ["marker-xc-0", "marker-xc-slow", "marker-xc-after"]
    );
}

#[tokio::test]
async fn a_session_deleted_on_one_instance_is_gone_on_every_other() {
    let redis = RedisServer::start();
    let a = instance(&redis, &[]).await;
    let b = instance(&redis, &[]).await;
    assert_eq!(turn(&a, "doomed", "marker-xd-1 first").await.status(), 200);
    assert_eq!(turn(&b, "doomed", "marker-xd-2 second").await.status(), 200);
    let (status, list) = b.get_json_as(TENANT, "/v1/sessions").await;
    assert_eq!(status, 200);
    assert_eq!(list["data"][0]["id"], "doomed");
    // Another tenant sees none of it.
    let (_, others) = a.get_json_as(OTHER, "/v1/sessions").await;
    assert_eq!(others["data"], json!([]));
    assert_eq!(b.get_json_as(OTHER, "/v1/sessions/doomed").await.0, 404);

    let deleted = crate::common::client()
        .delete(format!("{}/v1/sessions/doomed", a.url))
        .bearer_auth(TENANT)
        .send()
        .await
        .expect("sent")
        .status();
    assert_eq!(deleted, 204);
    assert_eq!(b.get_json_as(TENANT, "/v1/sessions/doomed").await.0, 404);
    assert_eq!(
        b.get_json_as(TENANT, "/v1/sessions").await.1["data"],
        json!([])
    );
    // The id starts a new conversation on either instance: nothing of the old one is left.
    assert_eq!(turn(&b, "doomed", "marker-xd-3 anew").await.status(), 200);
    assert_eq!(prompts_seen(&b, "marker-xd-3"), ["marker-xd-3"]);
}

#[tokio::test]
async fn a_redis_failure_in_the_middle_of_a_turn_leaves_the_session_as_it_was() {
    let redis = RedisServer::start();
    let a = instance(&redis, &[]).await;
    let b = instance(&redis, &[]).await;
    assert_eq!(turn(&a, "fragile", "marker-xf-1 first").await.status(), 200);
    let slow = scripted(
        "marker-xf-lost",
        json!({"reply": "lost", "chunks": 2, "chunk_delay_ms": 500}),
    );
    let (lost, _) = tokio::join!(turn(&a, "fragile", &slow), async {
        a.until_running(1).await;
        // Redis stops taking writes for longer than a command may take: the turn's commit
        // fails when its answer is in.
        assert_eq!(redis.command(&["CLIENT", "PAUSE", "6000", "WRITE"]), "+OK");
    });
    assert_eq!(lost.status(), 503);
    let error: Value = lost.json().await.expect("json");
    assert_eq!(error["error"]["type"], "overloaded_error", "{error}");
    // Redis takes writes again: the session holds its first turn, whole, and goes on from it.
    let deadline = std::time::Instant::now() + crate::common::SETTLE;
    let next = loop {
        let res = turn(&b, "fragile", "marker-xf-2 second").await;
        if res.status() != 503 && res.status() != 409 {
            break res;
        }
        assert!(
            std::time::Instant::now() < deadline,
            "service never resumed"
        );
        tokio::time::sleep(Duration::from_millis(200)).await;
    };
    assert_eq!(next.status(), 200);
    assert_eq!(
        prompts_seen(&b, "marker-xf-2"),
        ["marker-xf-1", "marker-xf-2"]
    );
    let (_, session) = a.get_json_as(TENANT, "/v1/sessions/fragile").await;
    assert_eq!(session["turns"], 2);
    // A's own copy was put back too: its next turn sees the same history.
    assert_eq!(turn(&a, "fragile", "marker-xf-3 third").await.status(), 200);
    assert_eq!(
        prompts_seen(&a, "marker-xf-3"),
        ["marker-xf-1", "marker-xf-2", "marker-xf-3"]
    );
}

fn meta(id: &str, key: uuid::Uuid, last_used_at: u64) -> SessionMeta {
    SessionMeta {
        id: id.into(),
        cli_session_id: key,
        created_at: 1,
        last_used_at,
        turns: 1,
        model: "sonnet".into(),
        transcript_sha256: None,
        transcript_len: None,
    }
}

/// What every session store does, on disk or in Redis: metadata round-trips and lists most
/// recent first, per tenant; one lock holder at a time; removal forgets.
async fn records_contract(records: Records, run: &str) {
    let tenant = TenantId::from_dir_name(format!("contract-{run}-a"));
    let other = TenantId::from_dir_name(format!("contract-{run}-b"));
    let (k1, k2) = (uuid::Uuid::new_v4(), uuid::Uuid::new_v4());
    let (id1, id2) = (
        ClientSessionId::parse("one").expect("valid"),
        ClientSessionId::parse("two").expect("valid"),
    );
    assert_eq!(
        records.load(&tenant, k1).await.expect("load"),
        None,
        "{run}"
    );
    let lock = records.lock(&tenant, k1, &id1).await.expect("lock");
    // One holder at a time: the second waits its bounded time, then is refused.
    assert!(
        matches!(
            records.lock(&tenant, k1, &id1).await,
            Err(SessionError::Busy(_))
        ),
        "{run}"
    );
    records
        .commit(&tenant, k1, &meta("one", k1, 10), None, &lock)
        .await
        .expect("commit");
    drop(lock);
    let lock = records.lock(&tenant, k2, &id2).await.expect("lock");
    records
        .commit(&tenant, k2, &meta("two", k2, 20), None, &lock)
        .await
        .expect("commit");
    drop(lock);
    assert_eq!(
        records.load(&tenant, k1).await.expect("load"),
        Some(meta("one", k1, 10)),
        "{run}"
    );
    let listed: Vec<String> = records
        .list(&tenant)
        .await
        .expect("list")
        .into_iter()
        .map(|m| m.id)
        .collect();
    assert_eq!(listed, ["two", "one"], "{run}");
    assert!(
        records.list(&other).await.expect("list").is_empty(),
        "{run}"
    );
    assert!(records.remove(&tenant, k1).await.expect("remove"), "{run}");
    assert!(!records.remove(&tenant, k1).await.expect("remove"), "{run}");
    assert_eq!(
        records.load(&tenant, k1).await.expect("load"),
        None,
        "{run}"
    );
    // Once free, the lock is taken at once.
    let relock = records.lock(&tenant, k1, &id1).await;
    assert!(relock.is_ok(), "{run}");
}

fn shared(redis: &RedisServer) -> Redis {
    Redis::new(&secrecy::SecretString::from(redis.url())).expect("a valid URL")
}

#[tokio::test]
async fn disk_and_redis_session_records_keep_one_contract() {
    let dir = tempfile::tempdir().expect("tempdir");
    let wait = Duration::from_millis(300);
    records_contract(Records::disk(dir.path().into(), wait), "disk").await;
    let redis = RedisServer::start();
    let ttl = Duration::from_secs(60);
    records_contract(Records::redis(shared(&redis), ttl, 0, wait), "redis").await;
}

#[tokio::test]
async fn a_lock_left_by_a_dead_instance_frees_itself_and_its_holder_can_no_longer_write() {
    let redis = RedisServer::start();
    let records = Records::redis(
        shared(&redis),
        Duration::from_secs(60),
        0,
        Duration::from_secs(5),
    );
    let tenant = TenantId::from_dir_name("contract-lease".into());
    let key = uuid::Uuid::new_v4();
    let id = ClientSessionId::parse("leased").expect("valid");
    let lock_key = format!("claude-gateway:session:{{contract-lease}}:{key}:lock");
    // An instance that died holding the lock: its lease runs out by itself.
    assert_eq!(
        redis.command(&["SET", &lock_key, "dead-instance", "PX", "600"]),
        "+OK"
    );
    let lock = records
        .lock(&tenant, key, &id)
        .await
        .expect("taken once free");
    // A holder whose lock is gone (its lease ran out while it was stalled, say) writes
    // nothing: another instance may hold the session by now.
    assert_eq!(redis.command(&["SET", &lock_key, "someone-else"]), "+OK");
    let refused = records
        .commit(&tenant, key, &meta("leased", key, 1), Some(b"{}\n"), &lock)
        .await;
    assert!(
        matches!(refused, Err(SessionError::Unavailable(_))),
        "{refused:?}"
    );
    assert_eq!(records.load(&tenant, key).await.expect("load"), None);
}

#[tokio::test]
async fn a_client_tool_call_made_on_one_instance_is_answered_on_another() {
    use crate::client_tools::{asks_for_weather, result_the_model_saw, the_call, weather_tool};
    let redis = RedisServer::start();
    let a = instance(&redis, &[]).await;
    let b = instance(&redis, &[]).await;
    let mut first = asks_for_weather("marker-xt");
    first["session_id"] = json!("agent-xt");
    let res = a.messages(TENANT, first).await;
    assert_eq!(res.status(), 200);
    let message: Value = res.json().await.expect("json");
    assert_eq!(message["stop_reason"], "tool_use", "{message}");
    let call = the_call(&message);
    // The result comes back to B, which holds nothing of the session but what Redis has.
    let next = json!({
        "model": "sonnet", "max_tokens": 100, "session_id": "agent-xt",
        "tools": [weather_tool()],
        "messages": [
            {"role": "user", "content": "marker-xt"},
            {"role": "assistant", "content": message["content"]},
            {"role": "user", "content": [{"type": "tool_result", "tool_use_id": call["id"], "content": "hail"}]},
        ],
    });
    let res = b.messages(TENANT, next).await;
    assert_eq!(res.status(), 200);
    let answer: Value = res.json().await.expect("json");
    assert_eq!(answer["content"][0]["text"], "done", "{answer}");
    let seen = result_the_model_saw(&b, "marker-xt").expect("a tool_result");
    assert!(seen.contains("hail"), "{seen}");
}

#[tokio::test]
async fn sessions_in_redis_expire_after_their_ttl_as_on_disk() {
    let redis = RedisServer::start();
    let a = instance(&redis, &["--session-ttl-secs", "1"]).await;
    assert_eq!(turn(&a, "brief", "marker-xe-1 first").await.status(), 200);
    assert_eq!(a.get_json_as(TENANT, "/v1/sessions/brief").await.0, 200);
    let deadline = std::time::Instant::now() + crate::common::SETTLE;
    while a.get_json_as(TENANT, "/v1/sessions/brief").await.0 != 404 {
        assert!(
            std::time::Instant::now() < deadline,
            "the session never expired"
        );
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    assert_eq!(
        a.get_json_as(TENANT, "/v1/sessions").await.1["data"],
        json!([])
    );
    // Its id starts afresh.
    assert_eq!(turn(&a, "brief", "marker-xe-2 again").await.status(), 200);
    assert_eq!(prompts_seen(&a, "marker-xe-2"), ["marker-xe-2"]);
}

/// The bytes of every transcript in the Redis (all tenants).
fn transcript_bytes_in(redis: &RedisServer) -> u64 {
    let reply = redis.command(&[
        "EVAL",
        "local t = 0 for _, k in ipairs(redis.call('KEYS', ARGV[1])) do t = t + redis.call('STRLEN', k) end return t",
        "0",
        "claude-gateway:session:*:transcript",
    ]);
    reply.trim_start_matches(':').parse().unwrap_or(u64::MAX)
}

/// Attack: a tenant's tools bloat its transcripts (which its runs may write) and drop the
/// local copies, session after session, so the shared Redis fills with its bytes until every
/// tenant's writes fail. A tenant's transcripts in Redis are bounded by its transcript quota.
#[tokio::test]
async fn a_tenant_cannot_fill_the_shared_store_with_bloated_transcripts() {
    let redis = RedisServer::start();
    let gw = instance(
        &redis,
        &[
            "--max-security-level",
            "DEVELOPER",
            "--transcript-quota-mb",
            "16",
        ],
    )
    .await;
    // Keep only the newest transcript on this instance's disk, then append 10 MB to it.
    let bloat = "python3 -c \"import glob, os; \
        fs = sorted(glob.glob(os.path.expanduser('~/.claude/projects/*/*.jsonl')), key=os.path.getmtime); \
        [os.remove(f) for f in fs[:-1]]; \
        open(fs[-1], 'a').write('{\\\"type\\\":\\\"junk\\\",\\\"x\\\":\\\"' + 'x' * 10000000 + '\\\"}\\n')\" && echo bloated";
    let mut statuses = Vec::new();
    for session in ["bloat-1", "bloat-2", "bloat-3"] {
        let marker = format!("marker-xq-{session}");
        let mut req = body(&scripted(
            &marker,
            json!({"tools": [crate::common::bash(bloat)], "reply": "ok"}),
        ));
        req["security_level"] = json!("DEVELOPER");
        req["session_id"] = json!(session);
        let res = gw.messages(TENANT, req).await;
        statuses.push(res.status().as_u16());
        if res.status() == 413 {
            let error: Value = res.json().await.expect("json");
            let message = error["error"]["message"].as_str().unwrap_or_default();
            assert!(message.contains("quota"), "{message}");
        }
    }
    let stored = transcript_bytes_in(&redis);
    assert!(
        stored <= 16 << 20,
        "{stored} bytes in Redis, statuses {statuses:?}"
    );
    assert_eq!(statuses[0], 200, "{statuses:?}");
    assert!(statuses[1..].contains(&413), "{statuses:?}");
    // Another tenant is served meanwhile.
    let mut other = body("marker-xq-other");
    other["session_id"] = json!("fine");
    assert_eq!(gw.messages(OTHER, other).await.status(), 200);
    // The tenant frees space by deleting a session, and its next one is kept again.
    let deleted = crate::common::client()
        .delete(format!("{}/v1/sessions/bloat-1", gw.url))
        .bearer_auth(TENANT)
        .send()
        .await
        .expect("sent");
    assert_eq!(deleted.status(), 204);
    let mut again = body(&scripted(
        "marker-xq-again",
        json!({"tools": [crate::common::bash(bloat)], "reply": "ok"}),
    ));
    again["security_level"] = json!("DEVELOPER");
    again["session_id"] = json!("bloat-4");
    assert_eq!(gw.messages(TENANT, again).await.status(), 200);
    assert!(transcript_bytes_in(&redis) <= 16 << 20);
}

#[tokio::test]
async fn a_tenants_usage_counts_its_turns_on_every_instance() {
    let redis = RedisServer::start();
    let a = instance(&redis, &[]).await;
    let b = instance(&redis, &[]).await;
    assert_eq!(a.messages(TENANT, body("marker-xu-a")).await.status(), 200);
    assert_eq!(b.messages(TENANT, body("marker-xu-b")).await.status(), 200);
    let usage = crate::usage::usage_with(&a, TENANT, 2).await;
    assert!(usage["today"]["input_tokens"]
        .as_u64()
        .is_some_and(|n| n > 0));
    crate::usage::usage_with(&b, TENANT, 2).await;
}
