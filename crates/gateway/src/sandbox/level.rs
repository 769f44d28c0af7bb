//! Security levels: what the model may do, expressed as CLI flags. The OS sandbox around every
//! run is the same at every level; the levels decide which tools the CLI offers and whether it
//! asks before using them (and, with MCP, which local servers may start).

use serde::{Deserialize, Serialize};

/// Ordered from strictest to loosest.
#[derive(
    Debug,
    Clone,
    Copy,
    PartialEq,
    Eq,
    PartialOrd,
    Ord,
    Hash,
    Serialize,
    Deserialize,
    clap::ValueEnum,
)]
#[serde(rename_all = "UPPERCASE")]
#[value(rename_all = "UPPERCASE")]
pub enum SecurityLevel {
    /// No shell, no file writes, no web tools, no local MCP servers: the model can read the
    /// workspace (Read, Glob, Grep) and nothing else.
    Paranoid,
    /// File tools and Bash, inside the sandbox; writes confined to the workspace by the CLI's
    /// permission rules as a second layer; no web tools; local MCP servers only from the
    /// operator's allowlist.
    Balanced,
    /// Every tool, any local MCP command, no permission prompts (`bypassPermissions`), still
    /// inside the sandbox.
    Developer,
}

impl SecurityLevel {
    pub fn as_str(self) -> &'static str {
        match self {
            SecurityLevel::Paranoid => "PARANOID",
            SecurityLevel::Balanced => "BALANCED",
            SecurityLevel::Developer => "DEVELOPER",
        }
    }

    /// Parses a level name as a request sends it (case-insensitive).
    pub fn parse(text: &str) -> Option<Self> {
        match text.trim().to_ascii_uppercase().as_str() {
            "PARANOID" => Some(SecurityLevel::Paranoid),
            "BALANCED" => Some(SecurityLevel::Balanced),
            "DEVELOPER" => Some(SecurityLevel::Developer),
            _ => None,
        }
    }

    /// The CLI's permission posture for this level.
    pub fn tool_policy(self) -> ToolPolicy {
        let list = |names: &[&str]| names.iter().map(|s| s.to_string()).collect::<Vec<_>>();
        match self {
            SecurityLevel::Paranoid => ToolPolicy {
                tools: Some(list(&["Read", "Glob", "Grep"])),
                allowed: Vec::new(),
                workspace_only: &["Read"],
                disallowed: list(&[
                    "Bash",
                    "Write",
                    "Edit",
                    "NotebookEdit",
                    "WebFetch",
                    "WebSearch",
                ]),
                permission_mode: "default",
            },
            SecurityLevel::Balanced => ToolPolicy {
                tools: Some(list(&[
                    "Bash",
                    "Read",
                    "Write",
                    "Edit",
                    "Glob",
                    "Grep",
                    "NotebookEdit",
                    "TodoWrite",
                    "Task",
                ])),
                allowed: list(&["Bash"]),
                workspace_only: &["Read", "Edit"],
                disallowed: list(&["WebFetch", "WebSearch"]),
                permission_mode: "acceptEdits",
            },
            SecurityLevel::Developer => ToolPolicy {
                tools: None,
                allowed: Vec::new(),
                workspace_only: &[],
                disallowed: Vec::new(),
                permission_mode: "bypassPermissions",
            },
        }
    }
}

/// The CLI flags that express a level.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ToolPolicy {
    /// `--tools`: the built-in tools offered at all (`None`: the CLI's default set).
    pub tools: Option<Vec<String>>,
    /// `--allowedTools`: run without asking, on any path.
    pub allowed: Vec<String>,
    /// Permission-rule families (`Read`: Read, Glob, Grep; `Edit`: Write, Edit, NotebookEdit)
    /// allowed only inside the workspace; anywhere else the CLI refuses (in print mode an
    /// unanswered permission request is a refusal).
    pub workspace_only: &'static [&'static str],
    /// `--disallowedTools`: refused even if offered.
    pub disallowed: Vec<String>,
    /// `--permission-mode`.
    pub permission_mode: &'static str,
}

impl ToolPolicy {
    /// The run's settings file: the level's permission rules, with paths as the CLI sees them.
    /// It is the only settings source a run loads (`--setting-sources=user` with a fresh
    /// home), so nothing a tenant writes into its workspace (`.claude/settings.json`) can
    /// loosen them.
    pub fn settings(&self, workspace: &std::path::Path) -> serde_json::Value {
        // `//` starts an absolute path in the CLI's permission rules.
        let root = format!("/{}", workspace.display())
            .trim_end_matches('/')
            .to_owned();
        let allow: Vec<String> = self
            .workspace_only
            .iter()
            .map(|family| format!("{family}({root}/**)"))
            .collect();
        serde_json::json!({
            "permissions": {
                "allow": allow,
                "deny": self.disallowed,
                "defaultMode": self.permission_mode,
            }
        })
    }
}

/// The operator's level settings, and what a request may ask of them.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
pub struct LevelPolicy {
    pub default: SecurityLevel,
    /// The loosest level a request may ask for.
    pub max: SecurityLevel,
}

#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum LevelError {
    #[error("unknown security level {0:?}: expected PARANOID, BALANCED or DEVELOPER")]
    Unknown(String),
    #[error("security level {asked} is looser than this gateway allows (at most {max})")]
    TooLoose {
        asked: &'static str,
        max: &'static str,
    },
}

impl LevelPolicy {
    /// The operator's settings; without a sandbox only PARANOID is served.
    pub fn new(default: SecurityLevel, max: Option<SecurityLevel>, sandboxed: bool) -> Self {
        if !sandboxed {
            return Self {
                default: SecurityLevel::Paranoid,
                max: SecurityLevel::Paranoid,
            };
        }
        let max = max.unwrap_or(default).max(default);
        Self { default, max }
    }

    /// The level of a request that asked for `requested` (a name, or nothing).
    pub fn resolve(&self, requested: Option<&str>) -> Result<SecurityLevel, LevelError> {
        let Some(name) = requested else {
            return Ok(self.default);
        };
        let level = SecurityLevel::parse(name).ok_or_else(|| LevelError::Unknown(name.into()))?;
        if level > self.max {
            return Err(LevelError::TooLoose {
                asked: level.as_str(),
                max: self.max.as_str(),
            });
        }
        Ok(level)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn requests_may_ask_for_stricter_never_looser() {
        let policy = LevelPolicy::new(SecurityLevel::Balanced, None, true);
        assert_eq!(policy.resolve(None), Ok(SecurityLevel::Balanced));
        assert_eq!(
            policy.resolve(Some("paranoid")),
            Ok(SecurityLevel::Paranoid)
        );
        assert!(matches!(
            policy.resolve(Some("DEVELOPER")),
            Err(LevelError::TooLoose { .. })
        ));
        assert!(matches!(
            policy.resolve(Some("x")),
            Err(LevelError::Unknown(_))
        ));
        let open = LevelPolicy::new(
            SecurityLevel::Balanced,
            Some(SecurityLevel::Developer),
            true,
        );
        assert_eq!(
            open.resolve(Some("developer")),
            Ok(SecurityLevel::Developer)
        );
    }

    #[test]
    fn file_tools_below_developer_are_confined_to_the_workspace() {
        let rules = |level: SecurityLevel| -> serde_json::Value {
            level
                .tool_policy()
                .settings(std::path::Path::new("/workspace"))
        };
        let balanced = rules(SecurityLevel::Balanced);
        assert_eq!(
            balanced["permissions"]["allow"],
            serde_json::json!(["Read(//workspace/**)", "Edit(//workspace/**)"])
        );
        assert_eq!(balanced["permissions"]["defaultMode"], "acceptEdits");
        let paranoid = rules(SecurityLevel::Paranoid);
        assert_eq!(
            paranoid["permissions"]["allow"],
            serde_json::json!(["Read(//workspace/**)"])
        );
        assert!(paranoid["permissions"]["deny"]
            .as_array()
            .is_some_and(|d| d.iter().any(|t| t == "Bash")));
        // No bare file tool is allowed anywhere below DEVELOPER.
        for level in [SecurityLevel::Paranoid, SecurityLevel::Balanced] {
            let policy = level.tool_policy();
            assert!(!policy.allowed.iter().any(|t| [
                "Read",
                "Write",
                "Edit",
                "Glob",
                "Grep",
                "NotebookEdit"
            ]
            .contains(&t.as_str())));
        }
        assert_eq!(
            rules(SecurityLevel::Developer)["permissions"]["defaultMode"],
            "bypassPermissions"
        );
    }

    #[test]
    fn without_a_sandbox_only_paranoid_is_served() {
        let policy = LevelPolicy::new(
            SecurityLevel::Developer,
            Some(SecurityLevel::Developer),
            false,
        );
        assert_eq!(policy.resolve(None), Ok(SecurityLevel::Paranoid));
        assert!(policy.resolve(Some("BALANCED")).is_err());
    }

    #[test]
    fn levels_order_from_strictest_to_loosest() {
        assert!(SecurityLevel::Paranoid < SecurityLevel::Balanced);
        assert!(SecurityLevel::Balanced < SecurityLevel::Developer);
    }

    #[test]
    fn paranoid_offers_no_shell_write_or_web_tool() {
        let policy = SecurityLevel::Paranoid.tool_policy();
        let offered = policy.tools.expect("explicit tool list");
        for forbidden in ["Bash", "Write", "Edit", "WebFetch", "WebSearch"] {
            assert!(!offered.iter().any(|t| t == forbidden));
            assert!(policy.disallowed.iter().any(|t| t == forbidden));
        }
    }

    #[test]
    fn only_developer_bypasses_permission_prompts() {
        assert_eq!(
            SecurityLevel::Developer.tool_policy().permission_mode,
            "bypassPermissions"
        );
        assert_ne!(
            SecurityLevel::Balanced.tool_policy().permission_mode,
            "bypassPermissions"
        );
        assert_eq!(
            SecurityLevel::parse("developer"),
            Some(SecurityLevel::Developer)
        );
        assert_eq!(SecurityLevel::parse("root"), None);
    }
}
