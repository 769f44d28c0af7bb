//! Integration tests: the real `claude-gateway` binary and the real pinned CLI, in its
//! sandbox, against fake-anthropic on loopback; `router` drives the router in process where no
//! CLI is needed. One test binary (one link, one harness), one module per concern.

mod common;

mod access;
mod admission;
mod audit;
mod client_tools;
mod credentials;
mod docs;
mod faults;
mod first_run;
mod hardening;
mod host_side;
mod isolation;
mod lean;
mod mcp;
mod messages;
mod operations;
mod quota;
mod router;
mod sessions;
mod shared;
mod shared_sessions;
mod usage;
mod warm;
