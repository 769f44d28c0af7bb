//! Parsing and validating a request's MCP servers (`X-MCP-Config` header or `mcp_servers`
//! body field: `{name: config}`), with errors that name the server and the field.

use std::collections::BTreeMap;

use serde_json::{Map, Value};

/// A request's MCP configuration may not be larger than this (serialized).
pub const MAX_CONFIG_BYTES: usize = 64 * 1024;
const MAX_SERVERS: usize = 16;
const MAX_ARGS: usize = 64;
const MAX_ENV: usize = 64;

#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ServerConfig {
    /// Started by the CLI inside the tenant's sandbox, over stdio.
    Local {
        command: String,
        args: Vec<String>,
        env: BTreeMap<String, String>,
    },
    Remote(RemoteConfig),
    /// An operator-defined server, enabled by name.
    Preset(String),
}

#[derive(Clone, PartialEq, Eq)]
pub struct RemoteConfig {
    pub url: String,
    pub transport: Transport,
    pub auth_type: Option<AuthType>,
    /// A secret: never logged, never formatted.
    pub auth_token: Option<String>,
    pub headers: BTreeMap<String, String>,
}

impl std::fmt::Debug for RemoteConfig {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("RemoteConfig")
            .field("url", &self.url)
            .field("transport", &self.transport)
            .field("auth_type", &self.auth_type)
            .finish_non_exhaustive()
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Transport {
    Http,
    Sse,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum AuthType {
    Bearer,
    Jwt,
    OAuth,
}

#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum ConfigError {
    #[error("MCP config: {0}")]
    Invalid(String),
    #[error("MCP server {server:?}: {field}: {problem}")]
    Field {
        server: String,
        field: String,
        problem: String,
    },
}

fn field(server: &str, field: &str, problem: impl Into<String>) -> ConfigError {
    ConfigError::Field {
        server: server.to_owned(),
        field: field.to_owned(),
        problem: problem.into(),
    }
}

/// Server names become parts of tool names (`mcp__<name>__<tool>`) and JSON keys.
pub fn valid_name(name: &str) -> bool {
    (1..=64).contains(&name.len())
        && name
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b == b'_' || b == b'-')
}

fn string(server: &str, key: &str, v: &Value) -> Result<String, ConfigError> {
    v.as_str()
        .map(str::to_owned)
        .ok_or_else(|| field(server, key, "expected a string"))
}

fn string_map(
    server: &str,
    key: &str,
    v: &Value,
    max: usize,
    header: bool,
) -> Result<BTreeMap<String, String>, ConfigError> {
    let obj = v
        .as_object()
        .ok_or_else(|| field(server, key, "expected an object of strings"))?;
    if obj.len() > max {
        return Err(field(server, key, format!("at most {max} entries")));
    }
    obj.iter()
        .map(|(k, v)| {
            let value = v
                .as_str()
                .ok_or_else(|| field(server, &format!("{key}.{k}"), "expected a string"))?;
            if header
                && (k.is_empty()
                    || !k
                        .bytes()
                        .all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'_'))
            {
                return Err(field(
                    server,
                    &format!("{key}.{k}"),
                    "not a valid header name",
                ));
            }
            if value.contains(['\r', '\n', '\0']) {
                return Err(field(
                    server,
                    &format!("{key}.{k}"),
                    "must not contain CR, LF or NUL",
                ));
            }
            if !header && (k.is_empty() || k.contains(['=', '\0'])) {
                return Err(field(
                    server,
                    &format!("{key}.{k}"),
                    "not a valid variable name",
                ));
            }
            Ok((k.clone(), value.to_owned()))
        })
        .collect()
}

fn parse_server(name: &str, v: &Value) -> Result<ServerConfig, ConfigError> {
    let obj: &Map<String, Value> = v
        .as_object()
        .ok_or_else(|| field(name, "(config)", "expected an object"))?;
    let allowed: &[&str] = if obj.contains_key("preset") {
        &["preset"]
    } else if obj.contains_key("url") {
        &[
            "url",
            "transport",
            "auth_type",
            "auth_token",
            "headers",
            "type",
        ]
    } else {
        &["command", "args", "env", "type"]
    };
    if let Some(unknown) = obj.keys().find(|k| !allowed.contains(&k.as_str())) {
        return Err(field(name, unknown, "unknown field"));
    }
    if let Some(preset) = obj.get("preset") {
        let preset = string(name, "preset", preset)?;
        if !valid_name(&preset) {
            return Err(field(name, "preset", "not a valid server name"));
        }
        return Ok(ServerConfig::Preset(preset));
    }
    if let Some(url) = obj.get("url") {
        let url = string(name, "url", url)?;
        if url.len() > 2048 {
            return Err(field(name, "url", "longer than 2048 characters"));
        }
        // The shape of the URL is the request's mistake (400); where it points is the
        // address policy's call, made later (403).
        match url::Url::parse(&url) {
            Err(e) => return Err(field(name, "url", format!("not a URL: {e}"))),
            Ok(u) if !matches!(u.scheme(), "http" | "https") => {
                return Err(field(name, "url", "must be an http:// or https:// URL"))
            }
            Ok(u) if u.host().is_none() => return Err(field(name, "url", "has no host")),
            Ok(_) => {}
        }
        let transport = match obj.get("transport").or(obj.get("type")).map(|t| t.as_str()) {
            None | Some(Some("http")) | Some(Some("streamable-http")) => Transport::Http,
            Some(Some("sse")) => Transport::Sse,
            _ => return Err(field(name, "transport", "expected \"http\" or \"sse\"")),
        };
        let auth_type = match obj.get("auth_type").map(|t| t.as_str()) {
            None => None,
            Some(Some("bearer")) => Some(AuthType::Bearer),
            Some(Some("jwt")) => Some(AuthType::Jwt),
            Some(Some("oauth")) => Some(AuthType::OAuth),
            _ => {
                return Err(field(
                    name,
                    "auth_type",
                    "expected \"bearer\", \"jwt\" or \"oauth\"",
                ))
            }
        };
        let auth_token = obj
            .get("auth_token")
            .map(|t| string(name, "auth_token", t))
            .transpose()?;
        if auth_token
            .as_ref()
            .is_some_and(|t| t.contains(['\r', '\n', '\0']))
        {
            return Err(field(name, "auth_token", "must not contain CR, LF or NUL"));
        }
        let headers = match obj.get("headers") {
            Some(h) => string_map(name, "headers", h, 32, true)?,
            None => BTreeMap::new(),
        };
        return Ok(ServerConfig::Remote(RemoteConfig {
            url,
            transport,
            auth_type,
            auth_token,
            headers,
        }));
    }
    let command = obj
        .get("command")
        .ok_or_else(|| field(name, "command", "required (or `url` for a remote server)"))
        .and_then(|c| string(name, "command", c))?;
    if command.is_empty() || command.contains('\0') {
        return Err(field(
            name,
            "command",
            "must be a non-empty program name or path",
        ));
    }
    let args = match obj.get("args") {
        None => Vec::new(),
        Some(Value::Array(items)) if items.len() <= MAX_ARGS => items
            .iter()
            .enumerate()
            .map(|(i, a)| string(name, &format!("args[{i}]"), a))
            .collect::<Result<_, _>>()?,
        Some(_) => {
            return Err(field(
                name,
                "args",
                format!("expected a list of at most {MAX_ARGS} strings"),
            ))
        }
    };
    let env = match obj.get("env") {
        Some(e) => string_map(name, "env", e, MAX_ENV, false)?,
        None => BTreeMap::new(),
    };
    for (var, value) in &env {
        if let Some(problem) = env_problem(var, value) {
            return Err(field(name, &format!("env.{var}"), problem));
        }
    }
    Ok(ServerConfig::Local { command, args, env })
}

/// Variables that change how a program is loaded or which code an interpreter runs before
/// the program itself: glibc's list of variables it drops for setuid programs, plus the
/// shells', Node's, Python's, Perl's, Ruby's and the JVM's start-up hooks. A server's `env`
/// only ever reaches the server inside the sandbox, but none of these has a use there that
/// is worth the risk of one reaching a process that runs before the sandbox exists.
const REFUSED_ENV_PREFIXES: &[&str] = &["LD_", "DYLD_", "MALLOC_", "BASH_FUNC_"];
const REFUSED_ENV: &[&str] = &[
    "GCONV_PATH",
    "GETCONF_DIR",
    "HOSTALIASES",
    "LOCALDOMAIN",
    "LOCPATH",
    "NLSPATH",
    "RESOLV_HOST_CONF",
    "RES_OPTIONS",
    "TZDIR",
    "NODE_OPTIONS",
    "BASH_ENV",
    "ENV",
    "SHELLOPTS",
    "BASHOPTS",
    "PS4",
    "IFS",
    "PYTHONSTARTUP",
    "PYTHONHOME",
    "PYTHONINSPECT",
    "PYTHONBREAKPOINT",
    "PERL5OPT",
    "PERL5DB",
    "RUBYOPT",
    "JAVA_TOOL_OPTIONS",
    "_JAVA_OPTIONS",
    "JDK_JAVA_OPTIONS",
];

/// Why a local server's environment variable is refused, if it is.
pub fn env_problem(var: &str, value: &str) -> Option<String> {
    let well_formed = var
        .bytes()
        .next()
        .is_some_and(|b| b.is_ascii_alphabetic() || b == b'_')
        && var.bytes().all(|b| b.is_ascii_alphanumeric() || b == b'_')
        && var.len() <= 128;
    if !well_formed {
        return Some(
            "a variable name is letters, digits and '_', not starting with a digit".into(),
        );
    }
    if value.contains('\0') {
        return Some("must not contain NUL".into());
    }
    let upper = var.to_ascii_uppercase();
    if REFUSED_ENV.contains(&upper.as_str())
        || REFUSED_ENV_PREFIXES.iter().any(|p| upper.starts_with(p))
    {
        return Some(format!(
            "{var} changes how programs are loaded or started and is not accepted"
        ));
    }
    None
}

/// Parses `{name: config}` (the header's text or the body field's value).
pub fn parse(value: &Value) -> Result<BTreeMap<String, ServerConfig>, ConfigError> {
    if value.to_string().len() > MAX_CONFIG_BYTES {
        return Err(ConfigError::Invalid(format!(
            "larger than {MAX_CONFIG_BYTES} bytes"
        )));
    }
    // `{"mcpServers": {...}}`, the CLI's own file shape, is accepted too.
    let value = value.get("mcpServers").unwrap_or(value);
    let servers = value
        .as_object()
        .ok_or_else(|| ConfigError::Invalid("expected an object {name: config}".into()))?;
    if servers.len() > MAX_SERVERS {
        return Err(ConfigError::Invalid(format!(
            "at most {MAX_SERVERS} servers"
        )));
    }
    servers
        .iter()
        .map(|(name, v)| {
            if !valid_name(name) {
                return Err(field(
                    name,
                    "(name)",
                    "must be 1 to 64 characters of A-Z, a-z, 0-9, '_' or '-'",
                ));
            }
            Ok((name.clone(), parse_server(name, v)?))
        })
        .collect()
}

/// Parses the `X-MCP-Config` header's text.
pub fn parse_text(text: &str) -> Result<BTreeMap<String, ServerConfig>, ConfigError> {
    if text.len() > MAX_CONFIG_BYTES {
        return Err(ConfigError::Invalid(format!(
            "larger than {MAX_CONFIG_BYTES} bytes"
        )));
    }
    let value: Value = serde_json::from_str(text)
        .map_err(|e| ConfigError::Invalid(format!("X-MCP-Config is not valid JSON: {e}")))?;
    parse(&value)
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn problem(v: Value) -> String {
        parse(&v).expect_err("invalid").to_string()
    }

    #[test]
    fn local_remote_and_preset_servers_parse() {
        let servers = parse(&json!({
            "memory": {"command": "node", "args": ["/opt/mcp/x.js"], "env": {"A": "b"}},
            "docs": {"url": "https://mcp.example.com/mcp", "transport": "http", "auth_type": "bearer", "auth_token": "t", "headers": {"X-Team": "a"}},
            "github": {"preset": "github"}
        }))
        .expect("valid");
        assert!(matches!(servers["memory"], ServerConfig::Local { .. }));
        assert!(
            matches!(&servers["docs"], ServerConfig::Remote(r) if r.transport == Transport::Http)
        );
        assert_eq!(servers["github"], ServerConfig::Preset("github".into()));
    }

    #[test]
    fn errors_name_the_server_and_the_field() {
        let e = problem(json!({"mem": {"command": "node", "argz": []}}));
        assert!(
            e.contains("\"mem\"") && e.contains("argz") && e.contains("unknown field"),
            "{e}"
        );
        let e = problem(json!({"r": {"url": "https://x", "headers": {"X-A": "a\r\nInjected: 1"}}}));
        assert!(
            e.contains("\"r\"") && e.contains("headers.X-A") && e.contains("CR"),
            "{e}"
        );
        let e = problem(json!({"bad/name": {"command": "node"}}));
        assert!(e.contains("bad/name"), "{e}");
        let e = problem(json!({"r": {"url": "https://x", "transport": "websocket"}}));
        assert!(e.contains("transport"), "{e}");
        let e = problem(json!({"l": {"command": "node", "args": "not-a-list"}}));
        assert!(e.contains("args"), "{e}");
        assert!(problem(json!(["not", "an", "object"])).contains("expected an object"));
    }

    #[test]
    fn oversized_configs_and_bad_json_are_refused() {
        let big = "x".repeat(MAX_CONFIG_BYTES);
        assert!(parse(&json!({"m": {"command": "node", "args": [big]}})).is_err());
        assert!(parse_text("{not json").is_err());
    }

    #[test]
    fn debug_output_hides_auth_tokens() {
        let servers =
            parse(&json!({"r": {"url": "https://x", "auth_token": "supersecret"}})).expect("valid");
        assert!(!format!("{servers:?}").contains("supersecret"));
    }
}
