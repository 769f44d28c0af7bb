//! The attack suite: one tenant plants secrets, another tries to reach them through the real
//! CLI's tools (scripted by fake-anthropic), at every security level. Each attempt's evidence is
//! what the upstream received as the `tool_result` and what the HTTP response carried.

use crate::common::{bash, body, scripted, tool_results, Gateway, GatewayBuilder};
use serde_json::{json, Value};

const VICTIM: &str = "sk-ant-oat01-victim.isolation-VICTIMTOKEN";
const ATTACKER: &str = "sk-ant-oat01-attacker.isolation";
const VICTIM_MARKER: &str = "VICTIM-SECRET-MARKER-31f9c2";
const GATEWAY_CANARY: &str = "GATEWAY-ENV-CANARY-8d20e7";
/// A shell filter that hides the attacker's own token in what it reads.
const MASK_OWN_TOKEN: &str = "sed 's/sk-ant-oat01-attacker[.]isolation/[own token]/g'";

async fn sandboxed_gateway() -> Gateway {
    sandboxed(Gateway::builder()).start().await
}

/// The gateway every attack here runs against: a tight sandbox, all levels allowed.
fn sandboxed(builder: GatewayBuilder) -> GatewayBuilder {
    builder
        .args(&[
            "--max-security-level",
            "DEVELOPER",
            "--sandbox-max-processes",
            "64",
            // The CLI crashes below about 2 GiB (1 GiB: out of memory now and then; 1.5 GiB:
            // SIGTRAP at start); the memory bomb asks for 8.
            "--sandbox-max-memory-mb",
            "2048",
            "--sandbox-max-file-mb",
            "16",
            "--run-timeout-secs",
            "90",
            "--max-concurrent-runs-per-tenant",
            "4",
        ])
        .env("GATEWAY_SECRET_CANARY", GATEWAY_CANARY)
}

async fn run_as(
    gw: &Gateway,
    token: &str,
    level: &str,
    marker: &str,
    tools: Vec<Value>,
) -> (u16, String) {
    let mut req = body(&scripted(marker, json!({"tools": tools})));
    req["security_level"] = json!(level);
    let res = gw.messages(token, req).await;
    let status = res.status().as_u16();
    (status, res.text().await.unwrap_or_default())
}

/// The victim's workspace on the host, found by the file it planted.
fn victim_workspace(gw: &Gateway) -> String {
    let tenants = std::fs::read_dir(gw.tenants_dir()).expect("tenants");
    tenants
        .filter_map(|t| t.ok())
        .map(|t| t.path().join("workspace"))
        .find(|w| w.join("secret.txt").exists())
        .expect("the victim planted its secret")
        .display()
        .to_string()
}

fn attempts(victim_ws: &str, data_dir: &str) -> Vec<Value> {
    vec![
        // Search the filesystem for the marker and the file.
        bash(&format!("timeout 60 grep -rIl {VICTIM_MARKER} /home /tmp /workspace /opt /etc /run /var /root /srv /mnt 2>/dev/null | head")),
        bash("find / -xdev -name secret.txt -not -path '/proc/*' 2>/dev/null | head"),
        // Absolute and relative paths to the victim's workspace and the data dir.
        bash(&format!("cat {victim_ws}/secret.txt 2>&1")),
        bash("cat ../secret.txt ../*/workspace/secret.txt ../../*/*/workspace/secret.txt 2>&1; ls -la .. ../.. 2>&1"),
        bash(&format!("ls -la {data_dir} {data_dir}/tenants {data_dir}/runs 2>&1")),
        bash(&format!("xxd {data_dir}/install.key 2>&1 | head; cat {data_dir}/install.key 2>&1 | base64")),
        bash("ls -la / /home /tmp /run /var /mnt /srv /root /opt 2>&1"),
        // Symlinks planted in the attacker's own workspace.
        bash(&format!("ln -sf {victim_ws}/secret.txt planted-link && cat planted-link 2>&1")),
        bash(&format!("ln -sfn / rootlink && cat rootlink{victim_ws}/secret.txt 2>&1; ls rootlink/ 2>&1")),
        // Other processes, their environments and command lines.
        // The attacker's own token is masked (it is its own to see); every other line is kept,
        // so another run's token would show.
        bash(&format!("for f in /proc/[0-9]*/environ; do tr '\\0' '\\n' < $f; done 2>&1 | {MASK_OWN_TOKEN}")),
        bash("for f in /proc/[0-9]*/cmdline; do tr '\\0' ' ' < $f; echo; done 2>&1"),
        bash("ps auxww 2>&1"),
        bash(&format!("{{ env; cat /proc/1/environ 2>&1 | tr '\\0' '\\n'; }} | {MASK_OWN_TOKEN}")),
        bash(&format!("cat /proc/1/root{victim_ws}/secret.txt 2>&1; ls /proc/1/root/ 2>&1")),
        // Another run's private directory and the CLI's credential files.
        bash(&format!("cat {data_dir}/runs/*/home/.claude/.credentials.json {data_dir}/runs/*/home/.claude.json 2>&1 | head -c 2000")),
        bash("find / -xdev -name '.credentials.json' -not -path '/proc/*' 2>/dev/null; cat ~/.claude/.credentials.json 2>&1"),
        // Writes outside the workspace.
        bash(&format!("echo pwned > /etc/pwned 2>&1; echo pwned > /usr/pwned 2>&1; echo pwned > {data_dir}/pwned 2>&1; echo pwned > {victim_ws}/pwned 2>&1; touch /opt/claude/pwned 2>&1; echo done")),
        // Privilege and namespace escapes.
        bash("cat /etc/shadow 2>&1; id; grep -E 'Cap(Eff|Prm)|NoNewPrivs' /proc/self/status"),
        bash(&format!("nsenter -t 1 -m cat {victim_ws}/secret.txt 2>&1; unshare -r cat {victim_ws}/secret.txt 2>&1")),
        bash("cat /proc/mounts 2>&1; ls /sys 2>&1; ls /dev 2>&1"),
        bash(&format!("python3 -c \"print(open('{victim_ws}/secret.txt').read())\" 2>&1")),
        bash(&format!("python3 -c \"import os; print(os.listdir('{data_dir}'))\" 2>&1")),
        // The CLI's own file tools.
        json!({"name": "Read", "input": {"file_path": format!("{victim_ws}/secret.txt")}}),
        json!({"name": "Read", "input": {"file_path": "/proc/1/environ"}}),
        json!({"name": "Read", "input": {"file_path": format!("{data_dir}/install.key")}}),
        json!({"name": "Grep", "input": {"pattern": VICTIM_MARKER, "path": "/"}}),
        json!({"name": "Glob", "input": {"pattern": "**/secret.txt", "path": "/"}}),
        json!({"name": "Write", "input": {"file_path": format!("{victim_ws}/pwned-by-write"), "content": "x"}}),
        json!({"name": "Edit", "input": {"file_path": format!("{victim_ws}/secret.txt"), "old_string": VICTIM_MARKER, "new_string": "gone"}}),
    ]
}

#[tokio::test]
async fn no_attempt_at_any_level_reaches_another_tenants_secrets() {
    let gw = sandboxed_gateway().await;
    // The victim plants its secret.
    let (status, _) = run_as(
        &gw,
        VICTIM,
        "BALANCED",
        "marker-victim-plant",
        vec![bash(&format!(
            "echo {VICTIM_MARKER} > secret.txt && cat secret.txt"
        ))],
    )
    .await;
    assert_eq!(status, 200);
    let victim_ws = victim_workspace(&gw);
    let data_dir = gw.data_dir.path().display().to_string();
    let install_key = hex_of(&std::fs::read(gw.data_dir.path().join("install.key")).expect("key"));

    // A victim run stays alive (slow stream) while the attacks run, so its process and
    // environment exist to be looked for.
    let mut slow = body(&scripted(
        "marker-victim-alive",
        // Longer than the attacks take; dropping the response ends it.
        json!({"reply": "still here", "chunks": 300, "chunk_delay_ms": 1000}),
    ));
    slow["stream"] = json!(true);
    let victim_alive = gw.messages(VICTIM, slow);
    let attacks = async {
        let mut report = Vec::new();
        for level in ["PARANOID", "BALANCED", "DEVELOPER"] {
            let marker = format!("marker-attack-{level}");
            let tools = attempts(&victim_ws, &data_dir);
            let count = tools.len();
            let (status, response) = run_as(&gw, ATTACKER, level, &marker, tools).await;
            let results = tool_results(&gw.upstream_with(&marker));
            report.push((level, count, status, response, results));
        }
        report
    };
    let (victim_res, report) = tokio::join!(victim_alive, attacks);
    drop(victim_res);

    let secrets = [
        VICTIM_MARKER,
        "VICTIMTOKEN",
        GATEWAY_CANARY,
        install_key.as_str(),
    ];
    let mut total = 0;
    let mut leaks = Vec::new();
    for (level, count, status, response, results) in &report {
        assert_eq!(
            *status, 200,
            "{level}: the attacker's run completed: {response}"
        );
        assert_eq!(
            results.len(),
            *count,
            "{level}: every attempt produced a tool_result"
        );
        total += count;
        for (i, result) in results.iter().enumerate() {
            for secret in secrets {
                if result.contains(secret) || response.contains(secret) {
                    leaks.push(format!("{level} attempt {i}: {secret}: {result}"));
                }
            }
        }
    }
    println!(
        "isolation: {total} attempts across 3 levels, {} leaks",
        leaks.len()
    );
    if let Ok(path) = std::env::var("ISOLATION_REPORT") {
        // For reading what each attempt got back: ISOLATION_REPORT=/tmp/report.txt cargo test ...
        let text: Vec<String> = report
            .iter()
            .flat_map(|(level, _, _, _, results)| {
                results
                    .iter()
                    .enumerate()
                    .map(move |(i, r)| format!("== {level} #{i}\n{r}\n"))
            })
            .collect();
        let _ = std::fs::write(path, text.join("\n"));
    }
    assert!(total >= 75, "at least 25 distinct attempts per level");
    assert!(leaks.is_empty(), "leaks: {leaks:#?}");

    // Nothing was written outside the attacker's workspace.
    for path in [
        "/etc/pwned".to_owned(),
        "/usr/pwned".to_owned(),
        format!("{data_dir}/pwned"),
        format!("{victim_ws}/pwned"),
        format!("{victim_ws}/pwned-by-write"),
    ] {
        assert!(!std::path::Path::new(&path).exists(), "{path} was written");
    }
    let secret = std::fs::read_to_string(format!("{victim_ws}/secret.txt")).expect("secret");
    assert!(
        secret.contains(VICTIM_MARKER),
        "the victim's file is intact"
    );

    // PARANOID offered no shell: its Bash attempts were refused by the CLI itself.
    let paranoid = &report[0].4;
    assert!(
        paranoid[0].contains("No such tool available: Bash"),
        "{}",
        paranoid[0]
    );
    // At DEVELOPER the shell ran, inside the sandbox, as an unprivileged user.
    let developer = &report[2].4;
    assert!(developer[17].contains("uid=1000"), "{}", developer[17]);
    assert!(
        developer[17].contains("CapEff:\t0000000000000000"),
        "{}",
        developer[17]
    );
    assert!(
        developer[17].contains("NoNewPrivs:\t1"),
        "{}",
        developer[17]
    );
}

fn hex_of(bytes: &[u8]) -> String {
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}

#[tokio::test]
async fn bombs_in_one_tenants_sandbox_leave_the_gateway_serving_others() {
    // The bombs' own bystander proves the gateway serves other tenants meanwhile; other
    // tests' CLIs are kept away, so that what they assert is not decided by CPU starvation.
    let gw = sandboxed(Gateway::builder().alone()).start().await;
    let bombs = [
        // timeout kills its whole process group, so the bomb ends after 5 s.
        ("fork", bash("timeout -s KILL 5 bash -c ':(){ :|:& };:' >/dev/null 2>&1; echo fork-bomb-contained")),
        ("memory", bash("python3 -c \"x = bytearray(8 * 1024**3)\" 2>&1 | tail -1; echo memory-bomb-contained")),
        // Far past what the CLI passes on (about 30,000 characters), and small enough that
        // moving it does not starve two cores for longer than the run timeout.
        ("output", bash("yes leak | head -c 20000000; echo")),
        ("file", bash("head -c 100M /dev/zero > big.bin 2>&1; ls -la big.bin; echo file-bomb-contained")),
    ];
    let runs = bombs.iter().map(|(name, tool)| {
        let marker = format!("marker-bomb-{name}");
        let gw = &gw;
        let tool = tool.clone();
        async move {
            let (status, _) = run_as(gw, ATTACKER, "DEVELOPER", &marker, vec![tool]).await;
            (*name, status, tool_results(&gw.upstream_with(&marker)))
        }
    });
    let bystander = async {
        // Let the bombs start first.
        tokio::time::sleep(std::time::Duration::from_secs(3)).await;
        // The bystander's own CLI may crash when two cores are this starved (seen: exit
        // 134); what is asserted is that the gateway keeps serving, so a 5xx is retried.
        let mut res = gw.messages(VICTIM, body("marker-bystander hello")).await;
        for _ in 0..2 {
            if !res.status().is_server_error() {
                break;
            }
            res = gw.messages(VICTIM, body("marker-bystander hello")).await;
        }
        res
    };
    let (results, bystander) = tokio::join!(futures::future::join_all(runs), bystander);
    assert_eq!(
        bystander.status(),
        200,
        "another tenant is served during the bombs"
    );
    for (name, status, results) in results {
        assert_eq!(status, 200, "{name} bomb run answered");
        let text = results.join("\n");
        match name {
            "fork" => assert!(text.contains("fork-bomb-contained"), "{text}"),
            "memory" => assert!(
                text.contains("MemoryError") && text.contains("memory-bomb-contained"),
                "{text}"
            ),
            "output" => assert!(text.len() < 1_000_000, "the CLI bounded the tool output"),
            "file" => assert!(text.contains("file-bomb-contained"), "{text}"),
            _ => {}
        }
    }
    let health = gw.get("/health").send().await.expect("sent");
    assert_eq!(health.status(), 200);
    // A run's dir goes once its whole process tree is reaped, which under a
    // fork bomb on two cores can take longer than the answer.
    assert!(
        crate::common::eventually(crate::common::SETTLE, || gw.leftover_run_dirs() == 0).await,
        "every run dir was removed: {} left",
        gw.leftover_run_dirs()
    );
}

#[tokio::test]
async fn at_balanced_the_clis_own_rules_keep_file_tools_in_the_workspace() {
    let gw = sandboxed_gateway().await;
    // The tenant plants project settings and an MCP file that would loosen its level if
    // the CLI loaded them.
    let planted_settings =
        r#"{"permissions":{"allow":["Read","Edit","WebFetch"]},"enableAllProjectMcpServers":true}"#;
    let planted_mcp = r#"{"mcpServers":{"planted":{"command":"node","args":["-e","0"]}}}"#;
    let tools = vec![
        json!({"name": "Write", "input": {"file_path": "/workspace/inside.txt", "content": "inside-ok"}}),
        json!({"name": "Write", "input": {"file_path": "/tmp/outside.txt", "content": "x"}}),
        json!({"name": "Read", "input": {"file_path": "/etc/hostname"}}),
        json!({"name": "Grep", "input": {"pattern": "inside-ok", "path": "/workspace", "output_mode": "content"}}),
        bash(&format!(
            "mkdir -p .claude && echo '{planted_settings}' > .claude/settings.json && echo '{planted_mcp}' > .mcp.json && echo planted"
        )),
    ];
    let (status, _) = run_as(&gw, ATTACKER, "BALANCED", "marker-confine-1", tools).await;
    assert_eq!(status, 200);
    let results = tool_results(&gw.upstream_with("marker-confine-1"));
    assert!(results[0].contains("successfully"), "{}", results[0]);
    for refused in [&results[1], &results[2]] {
        assert!(
            refused.contains("requested permissions"),
            "outside the workspace the CLI refuses: {refused}"
        );
    }
    assert!(results[3].contains("inside-ok"), "{}", results[3]);
    assert!(results[4].contains("planted"), "{}", results[4]);

    // The next run ignores what was planted.
    let tools = vec![json!({"name": "Read", "input": {"file_path": "/etc/hostname"}})];
    let (status, _) = run_as(&gw, ATTACKER, "BALANCED", "marker-confine-2", tools).await;
    assert_eq!(status, 200);
    let calls = gw.upstream_with("marker-confine-2");
    let results = tool_results(&calls);
    assert!(
        results[0].contains("requested permissions"),
        "{}",
        results[0]
    );
    let offered = calls[0].body["tools"].to_string();
    assert!(!offered.contains("mcp__planted"), "{offered}");
    assert!(!offered.contains("WebFetch"), "{offered}");
}

#[tokio::test]
async fn a_request_may_not_loosen_the_operators_level() {
    let gw = Gateway::start().await; // default BALANCED, max BALANCED
    let mut req = body("marker-loosen");
    req["security_level"] = json!("DEVELOPER");
    let res = gw.messages(VICTIM, req).await;
    assert_eq!(res.status(), 403);
    let err: Value = res.json().await.expect("json");
    assert_eq!(err["error"]["type"], "permission_error");
    let res = gw
        .post("/v1/messages")
        .bearer_auth(VICTIM)
        .header("x-security-level", "nonsense")
        .json(&body("marker-bad-level"))
        .send()
        .await
        .expect("sent");
    assert_eq!(res.status(), 400);
    let mut req = body("marker-stricter");
    req["security_level"] = json!("PARANOID");
    assert_eq!(gw.messages(VICTIM, req).await.status(), 200);
    let (_, security) = gw.get_json("/v1/security").await;
    assert_eq!(security["default_level"], "BALANCED");
    assert_eq!(security["sandbox"]["enabled"], true);
}

#[tokio::test]
async fn tenants_are_accounts_and_dead_tokens_are_refused_before_any_run() {
    let gw = Gateway::start().await;
    let (status, _) = (
        gw.messages("sk-ant-oat01-invalid.revoked", body("marker-dead-profile"))
            .await
            .status(),
        (),
    );
    assert_eq!(status, 401);
    assert!(
        gw.upstream().iter().all(|r| !r.is_messages()),
        "no CLI ran for a dead token"
    );
    // Two tokens of one account are one tenant: one workspace.
    for token in ["sk-ant-oat01-dana.first", "sk-ant-oat01-dana.second"] {
        assert_eq!(gw.messages(token, body("marker-dana")).await.status(), 200);
    }
    let workspaces = std::fs::read_dir(gw.tenants_dir())
        .expect("tenants")
        .count();
    assert_eq!(workspaces, 1);
}

#[tokio::test]
async fn without_a_sandbox_only_paranoid_is_served_and_every_status_says_so() {
    let gw = Gateway::builder()
        .args(&["--insecure-no-sandbox", "--max-security-level", "DEVELOPER"])
        .start()
        .await;
    let (_, ready) = gw.get_json("/ready").await;
    assert_eq!(ready["sandbox"], "DISABLED");
    assert!(ready["warning"]
        .as_str()
        .is_some_and(|w| w.contains("INSECURE")));
    let (_, security) = gw.get_json("/v1/security").await;
    assert_eq!(security["sandbox"]["enabled"], false);
    assert_eq!(security["default_level"], "PARANOID");
    assert_eq!(security["max_level"], "PARANOID");
    let mut req = body("marker-insecure");
    req["security_level"] = json!("BALANCED");
    assert_eq!(gw.messages(VICTIM, req).await.status(), 403);
    let (status, _) = run_as(
        &gw,
        VICTIM,
        "PARANOID",
        "marker-insecure-paranoid",
        vec![bash("id")],
    )
    .await;
    assert_eq!(status, 200);
    let results = tool_results(&gw.upstream_with("marker-insecure-paranoid"));
    assert!(
        results[0].contains("No such tool available: Bash"),
        "{results:?}"
    );
    assert!(gw.logs().contains("INSECURE"));
}

/// Connects to `port` on the sandbox's loopback and says whether anything answered.
fn probe_port(label: &str, port: u16) -> String {
    format!("(exec 3<>/dev/tcp/127.0.0.1/{port}) 2>/dev/null && echo {label}=reached || echo {label}=unreachable")
}

/// Asks the sandbox's egress proxy to tunnel to `target` and prints its status line.
fn via_proxy(label: &str, target: &str) -> String {
    format!(
        "exec 3<>/dev/tcp/127.0.0.1/3128 && printf 'CONNECT {target} HTTP/1.1\\r\\nHost: {target}\\r\\n\\r\\n' >&3 && echo \"{label}=$(head -1 <&3 | tr -d '\\r')\""
    )
}

#[tokio::test]
async fn a_sandbox_has_its_own_network_and_its_proxy_refuses_internal_addresses() {
    let gw = sandboxed_gateway().await;
    let gateway_port: u16 = gw
        .url
        .rsplit(':')
        .next()
        .and_then(|p| p.parse().ok())
        .expect("gateway port");
    let upstream_port: u16 = gw
        .fake
        .base_url()
        .rsplit(':')
        .next()
        .and_then(|p| p.trim_end_matches('/').parse().ok())
        .expect("upstream port");
    // Every target is a loopback spelling: were a check missing, nothing would leave the host.
    let script = [
        probe_port("gateway", gateway_port),
        probe_port("upstream", upstream_port),
        via_proxy("p_gateway", &format!("127.0.0.1:{gateway_port}")),
        via_proxy("p_decimal", &format!("2130706433:{upstream_port}")),
        via_proxy("p_v6", &format!("[::1]:{upstream_port}")),
        via_proxy("p_mapped", &format!("[::ffff:127.0.0.1]:{upstream_port}")),
        via_proxy("p_name", &format!("localhost:{upstream_port}")),
    ]
    .join("; ");
    let (status, _body) = run_as(
        &gw,
        ATTACKER,
        "DEVELOPER",
        "marker-netns",
        vec![bash(&script)],
    )
    .await;
    assert_eq!(status, 200, "the run itself reached the model: {_body}");
    let out = tool_results(&gw.upstream_with("marker-netns")).join("\n");
    for direct in ["gateway", "upstream"] {
        assert!(
            out.contains(&format!("{direct}=unreachable")),
            "the host's {direct} is not reachable from inside: {out}"
        );
    }
    for proxied in ["p_gateway", "p_decimal", "p_v6", "p_mapped", "p_name"] {
        assert!(
            out.contains(&format!("{proxied}=HTTP/1.1 403")),
            "the proxy refused {proxied}: {out}"
        );
    }
}
