//! Per-request MCP servers: what a request may ask for at its security level, and the CLI's
//! `--mcp-config` for a run.
//!
//! Local (stdio) servers are started by the CLI inside the tenant's sandbox, as its children,
//! and die with it: none at PARANOID, the operator's allowlisted commands at BALANCED, any
//! command at DEVELOPER. Operator presets (`--mcp-presets-file`) are enabled by name. Remote
//! servers are validated against the SSRF policy ([`ssrf`]); the gateway does not yet bridge
//! them (see the note on [`McpError::RemoteNotOffered`]).

pub mod config;
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
    /// Remote servers must be reached by the gateway itself (so the address check holds at
    /// connect time, through redirects and DNS changes) and offered to the CLI over a local
    /// bridge; until that bridge exists they are refused rather than handed to the CLI.
    #[error("MCP server {0:?}: remote MCP servers are not offered by this gateway yet; use a local (stdio) server")]
    RemoteNotOffered(String),
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
    ) -> Result<LocalServer, McpError> {
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
                Ok(LocalServer {
                    command: command.clone(),
                    args: args.clone(),
                    env: env.clone(),
                })
            }
            ServerConfig::Remote(remote) => {
                ssrf::check_url(&remote.url, &self.allowed_hosts).map_err(|refusal| {
                    McpError::Refused {
                        server: name.to_owned(),
                        refusal,
                    }
                })?;
                Err(McpError::RemoteNotOffered(name.to_owned()))
            }
            ServerConfig::Preset(_) => Err(forbidden("a preset cannot name another preset".into())),
        }
    }

    /// Applies the policy at `level`; `None` when the request names no server.
    pub fn resolve(
        &self,
        level: SecurityLevel,
        requested: &BTreeMap<String, ServerConfig>,
    ) -> Result<Option<McpRun>, McpError> {
        if requested.is_empty() {
            return Ok(None);
        }
        let mut servers = serde_json::Map::new();
        for (name, config) in requested {
            let local = self.effective(level, name, config)?;
            servers.insert(
                name.clone(),
                json!({"type": "stdio", "command": local.command, "args": local.args, "env": local.env}),
            );
        }
        Ok(Some(McpRun {
            servers: servers.keys().cloned().collect(),
            config_json: json!({"mcpServers": servers}).to_string(),
        }))
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
            .expect("some");
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
    fn remote_servers_are_checked_then_not_offered() {
        let metadata = servers(json!({"m": {"url": "http://169.254.169.254/"}}));
        assert!(matches!(
            policy().resolve(SecurityLevel::Developer, &metadata),
            Err(McpError::Refused { .. })
        ));
        let public = servers(json!({"p": {"url": "https://mcp.example.com/mcp"}}));
        assert!(matches!(
            policy().resolve(SecurityLevel::Developer, &public),
            Err(McpError::RemoteNotOffered(_))
        ));
    }
}
