//! Per-request MCP servers: what a request may ask for at its security level, and the CLI's
//! `--mcp-config` for a run.
//!
//! Local (stdio) servers are started by the CLI inside the tenant's sandbox, as its children,
//! and die with it: none at PARANOID, the operator's allowlisted commands at BALANCED, any
//! command at DEVELOPER. Operator presets (`--mcp-presets-file`) are enabled by name. Remote
//! servers pass the address policy ([`ssrf`]) when named and again at every connection: the
//! gateway alone connects to them ([`remote`]) and offers them to the run over a loopback
//! bridge ([`bridge`]), so neither their addresses nor their credentials are the CLI's to use.
//! At PARANOID only remote servers on the operator's allowed hosts may be named.

pub mod bridge;
pub mod config;
pub mod remote;
pub mod ssrf;
pub mod tools;

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

use serde_json::{json, Value};

pub use config::{ConfigError, ServerConfig};

use crate::sandbox::SecurityLevel;

#[derive(Debug, thiserror::Error)]
pub enum McpError {
    #[error(transparent)]
    Config(#[from] ConfigError),
    #[error("MCP server {server:?}: {reason}")]
    Forbidden { server: String, reason: String },
    #[error("MCP server {server:?}: url: {refusal}")]
    Refused {
        server: String,
        refusal: ssrf::Refusal,
    },
    /// A remote server could not be connected to (refused at connect time, unreachable,
    /// rejected the credentials, timed out): the run would otherwise go on without its tools.
    #[error("MCP server {server:?}: {error}")]
    Unreachable {
        server: String,
        error: remote::ConnectError,
    },
    #[error("cannot read the MCP presets file {0}: {1}")]
    Presets(PathBuf, String),
}

/// The operator's MCP policy.
#[derive(Debug, Clone, Default)]
pub struct McpPolicy {
    /// Commands local servers may run at BALANCED (exact names or paths).
    pub allowed_commands: Vec<String>,
    /// Hosts remote servers may use whatever their address (and, at PARANOID, the only ones).
    pub allowed_hosts: Vec<String>,
    /// Operator-defined servers a request enables by name.
    pub presets: BTreeMap<String, ServerConfig>,
}

/// The servers of one run, as the CLI reads them.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct McpRun {
    /// `{"mcpServers": {…}}`, written to the run's private directory.
    pub config_json: String,
    pub servers: Vec<String>,
}

/// What a request's servers amount to under the policy, before anything is started.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Effective {
    Local(LocalServer),
    Remote(config::RemoteConfig),
}

/// A request's servers after the policy, before any connection.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct McpPlan {
    pub servers: BTreeMap<String, Effective>,
}

impl McpPlan {
    /// Everything that makes one run's servers differ from another's (secrets included: the
    /// caller hashes it with a keyed hash).
    pub fn identity(&self) -> String {
        let entries: Vec<Value> = self
            .servers
            .iter()
            .map(|(name, server)| match server {
                Effective::Local(l) => json!([name, l.command, l.args, l.env]),
                Effective::Remote(r) => json!([
                    name,
                    r.url,
                    format!("{:?}", r.transport),
                    r.auth_token,
                    r.headers
                ]),
            })
            .collect();
        Value::Array(entries).to_string()
    }

    pub fn remote(&self) -> impl Iterator<Item = (&String, &config::RemoteConfig)> {
        self.servers.iter().filter_map(|(name, s)| match s {
            Effective::Remote(r) => Some((name, r)),
            Effective::Local(_) => None,
        })
    }

    /// The CLI's view: local servers as commands, remote ones as their bridge routes.
    pub fn run(&self, offered: &BTreeMap<String, bridge::Offered>) -> McpRun {
        let mut servers = serde_json::Map::new();
        for (name, server) in &self.servers {
            let entry = match server {
                Effective::Local(local) => {
                    json!({"type": "stdio", "command": local.command, "args": local.args, "env": local.env})
                }
                Effective::Remote(_) => match offered.get(name) {
                    Some(route) => route.cli_entry(),
                    None => continue,
                },
            };
            servers.insert(name.clone(), entry);
        }
        McpRun {
            servers: servers.keys().cloned().collect(),
            config_json: json!({"mcpServers": servers}).to_string(),
        }
    }
}

/// Connects every remote server of `plan` and offers it on the bridge; the first failure is the
/// request's error, naming its server.
pub async fn connect_all(
    plan: &McpPlan,
    connector: &remote::Connector,
    bridge: &bridge::Bridge,
) -> Result<BTreeMap<String, bridge::Offered>, McpError> {
    let connections = plan.remote().map(|(name, config)| async move {
        match connector.connect(config).await {
            Ok(client) => Ok((name.clone(), bridge.offer(client))),
            Err(error) => Err(McpError::Unreachable {
                server: name.clone(),
                error,
            }),
        }
    });
    futures::future::try_join_all(connections)
        .await
        .map(|offered| offered.into_iter().collect())
}

impl McpPolicy {
    pub fn load_presets(path: &Path) -> Result<BTreeMap<String, ServerConfig>, McpError> {
        let text = std::fs::read_to_string(path)
            .map_err(|e| McpError::Presets(path.to_path_buf(), e.to_string()))?;
        let value: Value = serde_json::from_str(&text)
            .map_err(|e| McpError::Presets(path.to_path_buf(), e.to_string()))?;
        config::parse(&value).map_err(|e| McpError::Presets(path.to_path_buf(), e.to_string()))
    }

    fn command_allowed(&self, command: &str) -> bool {
        self.allowed_commands.iter().any(|c| c == command)
    }

    /// The local server a request's entry amounts to at `level`, or why it may not run.
    pub fn effective(
        &self,
        level: SecurityLevel,
        name: &str,
        config: &ServerConfig,
    ) -> Result<Effective, McpError> {
        let (config, preset) = match config {
            ServerConfig::Preset(preset) => match self.presets.get(preset) {
                Some(c) => (c, true),
                None => {
                    return Err(ConfigError::Field {
                        server: name.to_owned(),
                        field: "preset".into(),
                        problem: format!("no operator preset named {preset:?}"),
                    }
                    .into())
                }
            },
            other => (other, false),
        };
        let forbidden = |reason: String| McpError::Forbidden {
            server: name.to_owned(),
            reason,
        };
        match config {
            ServerConfig::Local { command, args, env } => {
                match level {
                    SecurityLevel::Paranoid => {
                        return Err(forbidden(
                            "local MCP servers are not allowed at PARANOID".into(),
                        ))
                    }
                    SecurityLevel::Balanced if !preset && !self.command_allowed(command) => {
                        return Err(forbidden(format!(
                            "command {command:?} is not on this gateway's allowlist for BALANCED"
                        )))
                    }
                    _ => {}
                }
                Ok(Effective::Local(LocalServer {
                    command: command.clone(),
                    args: args.clone(),
                    env: env.clone(),
                }))
            }
            ServerConfig::Remote(remote) => {
                let (url, _) =
                    ssrf::check_url(&remote.url, &self.allowed_hosts).map_err(|refusal| {
                        McpError::Refused {
                            server: name.to_owned(),
                            refusal,
                        }
                    })?;
                let host = url.host_str().unwrap_or_default();
                let on_allowed_host = ssrf::host_allowed(host, &self.allowed_hosts);
                if level == SecurityLevel::Paranoid && !preset && !on_allowed_host {
                    return Err(forbidden(format!(
                        "at PARANOID remote MCP servers must be on this gateway's allowed hosts; {host:?} is not"
                    )));
                }
                Ok(Effective::Remote(remote.clone()))
            }
            ServerConfig::Preset(_) => Err(forbidden("a preset cannot name another preset".into())),
        }
    }

    /// Applies the policy at `level` to every server a request names.
    pub fn resolve(
        &self,
        level: SecurityLevel,
        requested: &BTreeMap<String, ServerConfig>,
    ) -> Result<McpPlan, McpError> {
        let servers = requested
            .iter()
            .map(|(name, config)| Ok((name.clone(), self.effective(level, name, config)?)))
            .collect::<Result<_, McpError>>()?;
        Ok(McpPlan { servers })
    }
}

/// A local server as it will run.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct LocalServer {
    pub command: String,
    pub args: Vec<String>,
    pub env: BTreeMap<String, String>,
}

#[cfg(test)]
mod tests {
    use super::*;

    fn servers(v: Value) -> BTreeMap<String, ServerConfig> {
        config::parse(&v).expect("valid")
    }

    fn policy() -> McpPolicy {
        McpPolicy {
            allowed_commands: vec!["node".into()],
            allowed_hosts: vec![],
            presets: servers(json!({"vetted": {"command": "/opt/mcp/vetted"}})),
        }
    }

    #[test]
    fn local_servers_follow_the_level() {
        let node = servers(json!({"memory": {"command": "node", "args": ["x.js"]}}));
        let python = servers(json!({"py": {"command": "python3"}}));
        assert!(matches!(
            policy().resolve(SecurityLevel::Paranoid, &node),
            Err(McpError::Forbidden { .. })
        ));
        let run = policy()
            .resolve(SecurityLevel::Balanced, &node)
            .expect("allowed")
            .run(&BTreeMap::new());
        assert_eq!(run.servers, ["memory"]);
        assert!(run.config_json.contains("\"command\":\"node\""));
        assert!(matches!(
            policy().resolve(SecurityLevel::Balanced, &python),
            Err(McpError::Forbidden { .. })
        ));
        assert!(policy().resolve(SecurityLevel::Developer, &python).is_ok());
    }

    #[test]
    fn presets_are_enabled_by_name_and_unknown_ones_are_refused() {
        let vetted = servers(json!({"v": {"preset": "vetted"}}));
        assert!(policy().resolve(SecurityLevel::Balanced, &vetted).is_ok());
        let unknown = servers(json!({"v": {"preset": "nope"}}));
        assert!(matches!(
            policy().resolve(SecurityLevel::Balanced, &unknown),
            Err(McpError::Config(_))
        ));
    }

    #[test]
    fn remote_servers_are_checked_and_at_paranoid_only_on_allowed_hosts() {
        let metadata = servers(json!({"m": {"url": "http://169.254.169.254/"}}));
        assert!(matches!(
            policy().resolve(SecurityLevel::Developer, &metadata),
            Err(McpError::Refused { .. })
        ));
        let public = servers(json!({"p": {"url": "https://mcp.example.com/mcp"}}));
        let plan = policy()
            .resolve(SecurityLevel::Balanced, &public)
            .expect("allowed");
        assert_eq!(plan.remote().count(), 1);
        assert!(matches!(
            policy().resolve(SecurityLevel::Paranoid, &public),
            Err(McpError::Forbidden { .. })
        ));
        let allowed = McpPolicy {
            allowed_hosts: vec!["mcp.example.com".into()],
            ..policy()
        };
        assert!(allowed.resolve(SecurityLevel::Paranoid, &public).is_ok());
    }

    #[test]
    fn a_remote_server_without_a_route_is_left_out_of_the_cli_config() {
        let public = servers(json!({"p": {"url": "https://mcp.example.com/mcp"}}));
        let plan = policy()
            .resolve(SecurityLevel::Balanced, &public)
            .expect("allowed");
        assert!(plan.run(&BTreeMap::new()).servers.is_empty());
    }
}
