//! `GET /v1/security`: the effective security configuration, as a client or auditor sees it.

use axum::extract::State;
use axum::Json;
use serde_json::{json, Value};

use crate::app::SharedState;
use crate::sandbox::SecurityLevel;
use crate::tenant::volumes::Volume;

fn quota_json(quota: Result<u64, &str>) -> Value {
    match quota {
        Ok(bytes) => json!({"enabled": true, "bytes": bytes}),
        Err(reason) => json!({
            "enabled": false,
            "reason": reason,
            "note": "a plain directory: each file is bounded by the per-file size limit only",
        }),
    }
}

fn level_json(level: SecurityLevel) -> Value {
    let policy = level.tool_policy();
    json!({
        "name": level.as_str(),
        "tools": policy.tools,
        "allowed_tools": policy.allowed,
        "disallowed_tools": policy.disallowed,
        "permission_mode": policy.permission_mode,
    })
}

#[utoipa::path(get, path = "/v1/security", tag = "Operations", security(),
    responses((status = 200, description = "Levels, sandbox status and limits, MCP policy, tenant identity", body = Object)))]
pub async fn security(State(state): State<SharedState>) -> Json<Value> {
    let levels = [
        SecurityLevel::Paranoid,
        SecurityLevel::Balanced,
        SecurityLevel::Developer,
    ];
    let sandbox = match (&state.runner.sandbox, &state.sandbox_disabled) {
        (Some(b), _) => json!({
            "enabled": true,
            "kind": "bubblewrap",
            "namespaces": match b.network {
                Some(_) => json!(["user", "pid", "ipc", "uts", "cgroup", "mount", "network"]),
                None => json!(["user", "pid", "ipc", "uts", "cgroup", "mount"]),
            },
            "network": match b.network {
                Some(_) => json!({
                    "mode": "isolated",
                    "inside": "loopback only; the upstream through the gateway, public HTTPS through the gateway's CONNECT proxy (HTTPS_PROXY), remote MCP servers through the bridge",
                    "proxy_refuses": "loopback, private, link-local (metadata), shared, unique-local, unspecified, multicast and documentation addresses, in every spelling, judged on every resolved address",
                }),
                None => json!({
                    "mode": "shared",
                    "warning": "runs share the host's network and can reach whatever it can (e.g. a cloud metadata server)",
                }),
            },
            "uid_inside": 1000,
            "limits": b.limits,
            "syscall_filter": {
                "enabled": !b.seccomp.is_empty(),
                "refused": "new namespaces (unshare, setns, clone with namespace flags), mounts, bpf, perf_event_open, key rings, kernel modules, kexec, userfaultfd, io_uring, personality changes, TIOCSTI/TIOCLINUX; clone3 answers ENOSYS",
            },
            "nested_user_namespaces": false,
            "memory_mounts": {"tmp_bytes": b.limits.tmp_bytes, "dev_shm_bytes": b.limits.shm_bytes, "dev": "read-only"},
            "cgroups": match &b.cgroups {
                Ok(c) => json!({
                    "enabled": true,
                    "version": c.version(),
                    "memory_bytes": c.memory_bytes(),
                    "max_processes": b.limits.max_processes,
                    "on_oom": "the run is stopped and its client gets an error; other runs go on",
                }),
                Err(reason) => json!({
                    "enabled": false,
                    "reason": reason,
                    "note": "no per-run cgroup: memory is bounded per process (RLIMIT_DATA) and by the sized memory mounts, processes per run by RLIMIT_NPROC",
                }),
            },
            "credential": "runs hold a per-run placeholder; the gateway's upstream proxy swaps in the real credential, so it never enters the sandbox",
            "cli_process": "executed from an execute-only copy: not dumpable, so its tools cannot read its memory or descriptors",
            "egress_ports": state.config.sandbox_egress_ports,
            "usage_metrics": "token counts are what the upstream reported, read by each run's upstream proxy; the CLI's report is the fallback only without an isolated network",
            "max_connections_per_socket": state.config.sandbox_max_connections,
            "disk_quotas": {
                "how": "an ext4 image per tenant and volume, loop-mounted nosuid,nodev in the gateway's own mount namespace; writes past it fail inside the sandbox, and a full workspace leaves transcripts writable",
                "workspace": quota_json(state.volumes.quota(Volume::Workspace)),
                "transcripts": quota_json(state.volumes.quota(Volume::Transcripts)),
            },
        }),
        (None, reason) => json!({
            "enabled": false,
            "warning": "INSECURE: CLI runs are not sandboxed; only PARANOID is served",
            "reason": reason,
        }),
    };
    Json(json!({
        "default_level": state.levels.default.as_str(),
        "max_level": state.levels.max.as_str(),
        "request_level": "header `x-security-level` or body `security_level`; stricter than the maximum only",
        "levels": levels.iter().map(|l| level_json(*l)).collect::<Vec<_>>(),
        "sandbox": sandbox,
        "limits": {
            "concurrency": state.admission.limits(),
            "rate_limit_per_tenant_per_minute": state.config.rate_limit_per_tenant,
            "rate_limit_per_ip_per_minute": state.config.rate_limit_per_ip,
            "run_timeout_secs": state.config.run_timeout_secs,
            "max_body_bytes": state.config.max_body_bytes,
            "live_sessions": {
                "max": state.config.live_sessions_max,
                "per_tenant": state.config.live_sessions_per_tenant,
                "idle_secs": state.config.live_session_idle_secs,
            },
        },
        "mcp": {
            "local": {
                "PARANOID": "none",
                "BALANCED": {"allowed_commands": state.mcp.allowed_commands},
                "DEVELOPER": "any command",
                "runs_in": "the tenant's sandbox, as children of the CLI",
                "presets": state.mcp.presets.keys().collect::<Vec<_>>(),
            },
            "remote": {
                "offered": true,
                "transports": ["http", "sse"],
                "connected_by": "the gateway only; runs reach them through a loopback bridge, and their credentials never enter the sandbox",
                "address_policy": "loopback, private, link-local (metadata), shared, unique-local, unspecified, multicast and documentation addresses refused in every spelling, at every connection; redirects only within the server's origin",
                "PARANOID": "only on allowed hosts",
                "allowed_hosts": state.mcp.allowed_hosts,
                "bridged_now": state.mcp_bridge.len(),
            },
        },
        "tenant_identity": state.identity.mode(),
        // Whether callers need a gateway key; which keys exist is not shown.
        "access_control": match (state.access.is_some(), state.access_jwt.is_some()) {
            (true, true) => "access keys or identity provider JWTs (X-Gateway-Key)",
            (true, false) => "access keys (X-Gateway-Key)",
            (false, true) => "identity provider JWTs (X-Gateway-Key)",
            (false, false) => "off",
        },
        "allowed_accounts": if state.identity.allowed().is_on() { "only the configured accounts and organizations" } else { "any" },
    }))
}
