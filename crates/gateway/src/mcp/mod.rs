//! Per-request MCP servers.

pub mod ssrf;
