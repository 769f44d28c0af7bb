//! `GET|POST /v1/mcp/tools`: each requested server's status and tools, asked with the official
//! Rust MCP SDK (`rmcp`) as the client. A local server is started exactly as a run would start
//! it (inside the tenant's sandbox); every server has its own timeout and its own error.

use std::collections::BTreeMap;
use std::process::Stdio;
use std::time::Duration;

use rmcp::transport::TokioChildProcess;
use rmcp::ServiceExt;
use serde::Serialize;
use serde_json::{json, Value};

use super::remote::Connector;
use super::{Effective, LocalServer, McpError, McpPolicy, ServerConfig};
use crate::runner::Runner;
use crate::sandbox::SecurityLevel;

#[derive(Debug, Serialize)]
pub struct ServerTools {
    pub name: String,
    /// `ok`, `error` (the server failed or timed out) or `refused` (policy).
    pub status: &'static str,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub error: Option<String>,
    pub tools: Vec<Value>,
}

fn failed(name: &str, status: &'static str, error: String) -> ServerTools {
    ServerTools {
        name: name.to_owned(),
        status,
        error: Some(crate::telemetry::redact(&error)),
        tools: Vec::new(),
    }
}

/// Where a tenant's local servers start: its sandbox, as a run of its would.
#[derive(Clone, Copy)]
pub struct LocalPlace<'a> {
    pub runner: &'a Runner,
    /// The tenant's fingerprint, for the log.
    pub tenant: &'a str,
    pub workspace: &'a std::path::Path,
}

/// Lists every server's tools, concurrently, each within `timeout`.
pub async fn list(
    policy: &McpPolicy,
    connector: &Connector,
    place: LocalPlace<'_>,
    level: SecurityLevel,
    servers: &BTreeMap<String, ServerConfig>,
    timeout: Duration,
) -> Vec<ServerTools> {
    let jobs = servers.iter().map(|(name, config)| async move {
        match policy.effective(level, name, config) {
            Err(e @ (McpError::Forbidden { .. } | McpError::Refused { .. })) => {
                failed(name, "refused", e.to_string())
            }
            Err(e) => failed(name, "error", e.to_string()),
            Ok(Effective::Remote(remote)) => match connector.connect(&remote).await {
                Err(
                    e @ (super::remote::ConnectError::Blocked(_)
                    | super::remote::ConnectError::Refused(_)),
                ) => failed(name, "refused", e.to_string()),
                Err(e) => failed(name, "error", e.to_string()),
                Ok(client) => {
                    let tools = tokio::time::timeout(timeout, client.list_all_tools()).await;
                    let _ = client.cancel().await;
                    match tools {
                        Err(_) => failed(
                            name,
                            "error",
                            format!("no answer within {} s", timeout.as_secs()),
                        ),
                        Ok(Err(e)) => failed(
                            name,
                            "error",
                            format!("tools/list failed: {}", super::remote::describe(&e)),
                        ),
                        Ok(Ok(tools)) => listed(name, tools),
                    }
                }
            },
            Ok(Effective::Local(local)) => {
                match tokio::time::timeout(timeout, local_tools(place, &local)).await {
                    Err(_) => failed(
                        name,
                        "error",
                        format!("no answer within {} s", timeout.as_secs()),
                    ),
                    Ok(Err(e)) => failed(name, "error", e),
                    Ok(Ok(tools)) => listed(name, tools),
                }
            }
        }
    });
    futures::future::join_all(jobs).await
}

fn listed(name: &str, tools: Vec<rmcp::model::Tool>) -> ServerTools {
    ServerTools {
        name: name.to_owned(),
        status: "ok",
        error: None,
        tools: tools
            .into_iter()
            .map(|t| {
                json!({
                    "name": t.name,
                    "description": t.description,
                    "input_schema": t.input_schema,
                })
            })
            .collect(),
    }
}

async fn local_tools(
    place: LocalPlace<'_>,
    server: &LocalServer,
) -> Result<Vec<rmcp::model::Tool>, String> {
    let (line, dir) = place
        .runner
        .mcp_server_command(
            place.tenant,
            place.workspace,
            &server.command,
            &server.args,
            &server.env,
        )
        .map_err(|e| e.to_string())?;
    let (mut command, _fds) = line
        .command()
        .map_err(|e| format!("cannot start the server: {e}"))?;
    if let Some(cgroup) = &dir.cgroup {
        cgroup.attach(&mut command);
    }
    let (transport, _) = TokioChildProcess::builder(command)
        .stderr(Stdio::null())
        .spawn()
        .map_err(|e| format!("cannot start the server: {e}"))?;
    let client = ()
        .serve(transport)
        .await
        .map_err(|e| format!("the server did not initialise: {e}"))?;
    let tools = client
        .list_all_tools()
        .await
        .map_err(|e| format!("tools/list failed: {e}"));
    let _ = client.cancel().await;
    tools
}
