//! The sandbox's own hardening, tried from inside as a tenant with Bash would: the syscall
//! filter, no nested user namespaces, bounded memory mounts, a memory cgroup per run, and the
//! egress proxy's ports.
//! Real CLI, real sandbox, scripted by fake-anthropic; every address is loopback.

use crate::common::{bash, body, scripted, tool_results, Gateway};
use serde_json::json;

const TENANT: &str = "sk-ant-oat01-hardy.hardening";
const BYSTANDER: &str = "sk-ant-oat01-bystander.hardening";

async fn gateway() -> Gateway {
    Gateway::builder()
        .args(&[
            "--max-security-level",
            "DEVELOPER",
            "--sandbox-tmp-mb",
            "32",
            "--sandbox-shm-mb",
            "16",
            "--run-timeout-secs",
            "90",
        ])
        .start()
        .await
}

/// Runs one Bash command at DEVELOPER; its output as the upstream saw it.
async fn inside(gw: &Gateway, marker: &str, command: &str) -> String {
    let (status, results) =
        crate::common::tool_run(gw, TENANT, "DEVELOPER", marker, None, vec![bash(command)]).await;
    assert_eq!(status, 200);
    results.join("\n")
}

/// `syscall(nr, 0, …)` from Python: `ret errno`.
fn raw_syscall(name: &str, nr: u32) -> String {
    format!(
        "python3 -c \"import ctypes; c=ctypes.CDLL(None, use_errno=True); \
         print('{name}', c.syscall({nr}, 0, 0, 0, 0, 0), ctypes.get_errno())\""
    )
}

#[tokio::test]
async fn a_run_has_a_syscall_filter_and_no_nested_namespaces_or_mounts() {
    let gw = gateway().await;
    let probe = [
        "grep -E '^(Seccomp|NoNewPrivs):' /proc/self/status".to_owned(),
        "unshare -r id 2>&1 | head -1; echo unshare-r=$?".to_owned(),
        "unshare -n true 2>&1 | head -1".to_owned(),
        "mkdir -p /tmp/m && mount -t tmpfs none /tmp/m 2>&1 | head -1".to_owned(),
        // keyctl, bpf, perf_event_open, io_uring_setup and userfaultfd on x86_64.
        raw_syscall("keyctl", 250),
        raw_syscall("bpf", 321),
        raw_syscall("perf_event_open", 298),
        raw_syscall("io_uring_setup", 425),
        raw_syscall("userfaultfd", 323),
        // prctl(PR_SET_DUMPABLE, 1): what would lend a non-dumpable process's pipes to a tool.
        "python3 -c \"import ctypes; c=ctypes.CDLL(None, use_errno=True); \
         print('set_dumpable', c.prctl(4, 1, 0, 0, 0), ctypes.get_errno())\""
            .to_owned(),
        // What a run needs still works: threads, processes, git, node.
        "python3 -c 'import threading; t=threading.Thread(target=print, args=(\"thread-ok\",)); t.start(); t.join()'".to_owned(),
        "git init -q /tmp/repo && echo git-ok".to_owned(),
        "node -e 'console.log(\"node-ok\")' 2>&1 || echo no-node".to_owned(),
        // The tenant's volumes are file systems of their own: no tenant directory shows.
        "echo tenant-paths=$(grep -c /tenants/ /proc/self/mountinfo)".to_owned(),
    ]
    .join("; ");
    let out = inside(&gw, "marker-seccomp", &probe).await;
    assert!(out.contains("Seccomp:\t2"), "{out}");
    assert!(out.contains("NoNewPrivs:\t1"), "{out}");
    assert!(!out.contains("uid=0"), "a nested user namespace: {out}");
    assert!(out.contains("unshare failed"), "{out}");
    assert!(!out.contains("\nmount-ok"), "{out}");
    for name in [
        "keyctl",
        "bpf",
        "perf_event_open",
        "io_uring_setup",
        "userfaultfd",
        "set_dumpable",
    ] {
        let line = out
            .lines()
            .find(|l| l.starts_with(&format!("{name} ")))
            .unwrap_or_else(|| panic!("{name} not tried: {out}"));
        assert!(
            line.ends_with(" -1 1"),
            "{name} was not refused with EPERM: {line}"
        );
    }
    assert!(out.contains("thread-ok"), "{out}");
    assert!(out.contains("git-ok"), "{out}");
    assert!(out.contains("tenant-paths=0"), "{out}");
}

#[tokio::test]
async fn memory_mounts_are_bounded_and_a_bystander_is_served_meanwhile() {
    let gw = gateway().await;
    let fill = "dd if=/dev/zero of=/dev/shm/fill bs=1M count=64 2>&1 | grep -q 'No space left' && echo shm-full; \
                dd if=/dev/zero of=/tmp/fill bs=1M count=128 2>&1 | grep -q 'No space left' && echo tmp-full; \
                touch /dev/planted 2>&1; df -k /tmp /dev/shm | tail -2";
    let mut req = body(&scripted("marker-fill", json!({"tools": [bash(fill)]})));
    req["security_level"] = json!("DEVELOPER");
    let (filled, bystander) = tokio::join!(
        gw.messages(TENANT, req),
        gw.messages(BYSTANDER, body("marker-bystander"))
    );
    assert_eq!(filled.status(), 200);
    assert_eq!(bystander.status(), 200);
    let out = tool_results(&gw.upstream_with("marker-fill")).join("\n");
    assert!(
        out.contains("shm-full") && out.contains("tmp-full"),
        "both memory mounts stop at their size: {out}"
    );
    assert!(
        out.contains("Read-only file system"),
        "/dev is read-only: {out}"
    );
}

#[tokio::test]
async fn the_egress_proxy_tunnels_only_to_allowed_ports() {
    let gw = gateway().await;
    // Port 25 on loopback: refused for its port before any address is judged or dialled.
    let out = inside(
        &gw,
        "marker-smtp",
        "curl -sS --noproxy '' -o /dev/null -w 'code=%{http_code}' -x http://127.0.0.1:3128 https://127.0.0.1:25/ 2>&1; echo",
    )
    .await;
    assert!(out.contains("403") || out.contains("CONNECT"), "{out}");
    let logs = gw.logs();
    assert!(
        logs.contains("port 25 is not open to sandboxes"),
        "the refusal is logged with its reason"
    );
    assert!(gw
        .metrics()
        .await
        .lines()
        .any(|l| l.starts_with("gateway_egress_refusals_total ") && !l.ends_with(" 0")));
}

#[tokio::test]
async fn the_security_report_names_the_hardening() {
    let gw = gateway().await;
    let (status, report) = gw.get_json("/v1/security").await;
    assert_eq!(status, 200);
    let sandbox = &report["sandbox"];
    assert_eq!(sandbox["syscall_filter"]["enabled"], true);
    assert_eq!(sandbox["nested_user_namespaces"], false);
    assert_eq!(sandbox["memory_mounts"]["tmp_bytes"], 32 << 20);
    assert_eq!(sandbox["egress_ports"], json!([443]));
    // This test machine lets the gateway make cgroups (a writable cgroup v1 memory hierarchy).
    assert_eq!(sandbox["cgroups"]["enabled"], true, "{sandbox}");
    // The gateway runs as root here, so it can mount workspace images.
    assert_eq!(
        sandbox["disk_quotas"]["workspace"]["enabled"], true,
        "{sandbox}"
    );
    assert_eq!(
        sandbox["disk_quotas"]["transcripts"]["enabled"], true,
        "{sandbox}"
    );
}

#[tokio::test]
async fn a_full_workspace_or_transcript_store_fails_the_tenants_writes_only() {
    let gw = Gateway::builder()
        .args(&[
            "--max-security-level",
            "DEVELOPER",
            "--workspace-quota-mb",
            "32",
            "--transcript-quota-mb",
            "16",
        ])
        .start()
        .await;
    let session = uuid::Uuid::new_v4().to_string();
    let fill = "dd if=/dev/zero of=/workspace/fill bs=1M count=64 2>&1 | grep -q 'No space left' && echo workspace-full; \
                echo still-writable-elsewhere > /tmp/note && cat /tmp/note; \
                dd if=/dev/zero of=~/.claude/projects/fill bs=1M count=64 2>&1 | grep -q 'No space left' && echo transcripts-full; \
                rm -f ~/.claude/projects/fill";
    let mut req = body(&scripted("marker-quota", json!({"tools": [bash(fill)]})));
    req["security_level"] = json!("DEVELOPER");
    req["session_id"] = json!(session);
    let (filled, bystander) = tokio::join!(
        gw.messages(TENANT, req),
        gw.messages(BYSTANDER, body("marker-quota-bystander"))
    );
    assert_eq!(filled.status(), 200);
    assert_eq!(bystander.status(), 200);
    let out = tool_results(&gw.upstream_with("marker-quota")).join("\n");
    assert!(out.contains("workspace-full"), "{out}");
    assert!(out.contains("transcripts-full"), "{out}");
    assert!(out.contains("still-writable-elsewhere"), "{out}");
    // The workspace is still full, yet the transcript of the turn is kept and the next turn
    // is served.
    let transcript = gw
        .get(&format!("/v1/sessions/{session}"))
        .bearer_auth(TENANT)
        .send()
        .await
        .expect("sent");
    assert_eq!(transcript.status(), 200);
    let mut next = body("marker-quota-next");
    next["session_id"] = json!(session);
    assert_eq!(gw.messages(TENANT, next).await.status(), 200);
    // The mounts live in the gateway's own mount namespace: the host sees none.
    let host_mounts = std::fs::read_to_string("/proc/self/mountinfo").expect("mountinfo");
    assert!(!host_mounts.contains("workspace"), "{host_mounts}");
}

#[tokio::test]
async fn a_run_past_its_memory_limit_is_stopped_with_an_error_and_a_bystander_is_served() {
    let gw = Gateway::builder()
        .args(&[
            "--max-security-level",
            "DEVELOPER",
            "--sandbox-run-memory-mb",
            "512",
        ])
        .start()
        .await;
    // One process well under the per-process limit (RLIMIT_DATA) but past the run's: only the
    // run's cgroup stops it. Its pages are touched, so they count.
    let hog = "python3 -c \"s = b'a' * (1 << 30); print('allocated', len(s))\"; echo hog-exit=$?";
    let mut req = body(&scripted("marker-oom", json!({"tools": [bash(hog)]})));
    req["security_level"] = json!("DEVELOPER");
    let (hog, bystander) = tokio::join!(
        gw.messages(TENANT, req),
        gw.messages(BYSTANDER, body("marker-oom-bystander"))
    );
    assert_eq!(bystander.status(), 200);
    assert_eq!(hog.status(), 400);
    let error: serde_json::Value = hog.json().await.expect("an error body");
    assert_eq!(error["error"]["type"], "invalid_request_error");
    let message = error["error"]["message"].as_str().unwrap_or_default();
    assert!(
        message.contains("memory limit (512 MiB)"),
        "the client is told why: {message}"
    );
    // The tenant is served again at once.
    assert_eq!(
        gw.messages(TENANT, body("marker-after-oom")).await.status(),
        200
    );
}

/// Opens `n` connections to each of the run's sockets, sends a request on each and counts
/// which were answered and which were closed unanswered; holds them all for a moment.
const CONNECTION_FLOOD: &str = r#"
import socket, time
for name in ["upstream", "egress", "bridge"]:
    conns = []
    for _ in range(200):
        s = socket.socket(socket.AF_UNIX)
        s.settimeout(5)
        try:
            s.connect("/run/gateway/net/%s.sock" % name)
            s.sendall(b"GET / HTTP/1.1\r\nHost: x\r\n\r\n")
            conns.append(s)
        except OSError:
            s.close()
    answered = 0
    for s in conns:
        try:
            answered += 1 if s.recv(64) else 0
        except OSError:
            pass
    print("%s answered=%d unanswered=%d" % (name, answered, len(conns) - answered))
    globals()["keep_" + name] = conns
time.sleep(2)
"#;

#[tokio::test]
async fn a_run_flooding_its_sockets_is_capped_and_others_are_served() {
    let gw = Gateway::builder()
        .args(&[
            "--max-security-level",
            "DEVELOPER",
            "--sandbox-max-connections",
            "16",
        ])
        .start()
        .await;
    let script =
        format!("cat > /tmp/flood.py <<'PY'\n{CONNECTION_FLOOD}\nPY\npython3 /tmp/flood.py");
    let mut req = body(&scripted("marker-flood", json!({"tools": [bash(&script)]})));
    req["security_level"] = json!("DEVELOPER");
    let (flood, bystander, health) = tokio::join!(
        gw.messages(TENANT, req),
        gw.messages(BYSTANDER, body("marker-flood-bystander")),
        gw.get("/health").send()
    );
    assert_eq!(flood.status(), 200);
    assert_eq!(bystander.status(), 200);
    assert_eq!(health.expect("health").status(), 200);
    let out = tool_results(&gw.upstream_with("marker-flood")).join("\n");
    for name in ["upstream", "egress", "bridge"] {
        let line = out
            .lines()
            .find(|l| l.starts_with(&format!("{name} answered=")))
            .unwrap_or_else(|| panic!("{name} not tried: {out}"));
        let answered: usize = line
            .split_whitespace()
            .find_map(|w| w.strip_prefix("answered="))
            .and_then(|n| n.parse().ok())
            .expect("a count");
        assert!(answered <= 16, "{name}: more than the cap answered: {line}");
        assert!(
            answered > 0,
            "{name}: the socket serves within the cap: {line}"
        );
    }
    // After the run, a bystander is still served and nothing is left open for the run.
    assert_eq!(
        gw.messages(BYSTANDER, body("marker-after-flood"))
            .await
            .status(),
        200
    );
    assert!(gw
        .metrics()
        .await
        .contains("gateway_sandbox_connections_refused_total"));
}

#[tokio::test]
async fn a_workspace_from_before_the_quota_moves_into_its_image_whole() {
    let data = tempfile::tempdir().expect("tempdir");
    let unbounded = Gateway::builder()
        .data_dir(data.path())
        .args(&[
            "--max-security-level",
            "DEVELOPER",
            "--workspace-quota-mb",
            "0",
        ])
        .start()
        .await;
    // The move copies the workspace as root on the host: a link the tenant planted to a host
    // file (the install key) must be copied as a link, never followed.
    let host_secret = data.path().join("install.key");
    inside(
        &unbounded,
        "marker-before-quota",
        &format!(
            "mkdir -p notes && echo kept-across-the-move > notes/a.txt && ln -s notes/a.txt link \
             && ln -s {} stolen-key",
            host_secret.display()
        ),
    )
    .await;
    drop(unbounded);
    let bounded = Gateway::builder()
        .data_dir(data.path())
        .args(&[
            "--max-security-level",
            "DEVELOPER",
            "--workspace-quota-mb",
            "32",
        ])
        .start()
        .await;
    let out = inside(
        &bounded,
        "marker-after-quota",
        "cat link; test -L stolen-key && ! test -e stolen-key && echo still-a-dangling-link; \
         df -k /workspace | tail -1 | awk '{print \"size-kb=\" $2}'",
    )
    .await;
    assert!(out.contains("kept-across-the-move"), "{out}");
    assert!(out.contains("still-a-dangling-link"), "{out}");
    let size: u64 = out
        .split("size-kb=")
        .nth(1)
        .and_then(|s| s.split_whitespace().next())
        .and_then(|s| s.parse().ok())
        .unwrap_or_else(|| panic!("a size: {out}"));
    assert!(
        size <= 32 * 1024,
        "the workspace is its own 32 MiB file system: {out}"
    );
}

/// The sandbox's pid 1 is the gateway's relay: it reaps the orphans a tool leaves behind (no
/// zombie piles up in a long session) and a tool cannot signal it away.
#[tokio::test]
async fn the_sandboxs_pid_1_reaps_orphans_and_outlives_a_tools_signals() {
    let gw = gateway().await;
    let probe = [
        "sh -c 'sleep 0.2 & echo $! > /tmp/orphan'",
        "o=$(cat /tmp/orphan); i=0",
        "while [ -e /proc/$o ] && [ $i -lt 200 ]; do i=$((i+1)); sleep 0.05; done",
        "[ -e /proc/$o ] && echo \"orphan-left $(grep State /proc/$o/status)\" || echo orphan-reaped",
        "kill -KILL 1; kill -TERM 1; kill -INT 1",
        "echo pid1=$(tr '\\0' ' ' < /proc/1/cmdline)",
    ]
    .join("; ");
    let out = inside(&gw, "marker-pid1", &probe).await;
    assert!(out.contains("orphan-reaped"), "{out}");
    assert!(
        out.contains("pid1=/opt/gateway/claude-gateway sandbox-relay"),
        "{out}"
    );
}
