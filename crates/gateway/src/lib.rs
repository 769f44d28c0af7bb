//! claude-gateway: a multi-tenant, Anthropic-compatible HTTP API in front of the Claude Code CLI.
//!
//! One request flows one way: HTTP ([`api`]) → credential and tenant ([`tenant`]) → a CLI run
//! ([`runner`]) → its output assembled into Anthropic message events ([`turn`]) → the HTTP
//! response. [`error`] maps every failure to Anthropic's error shape in one place.

pub mod access;
pub mod admission;
pub mod api;
pub mod app;
pub mod check;
pub mod clock;
pub mod config;
pub mod conversation;
pub mod error;
pub mod mcp;
pub mod prepare;
pub mod quota;
pub mod runner;
pub mod sandbox;
pub mod serve;
pub mod sessions;
pub mod shared;
pub mod telemetry;
pub mod tenant;
pub mod tls;
pub mod turn;
pub mod usage;

pub use app::serve;
pub use config::Config;
