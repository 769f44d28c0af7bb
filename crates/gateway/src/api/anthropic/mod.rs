//! The Anthropic Messages API.

pub mod messages;
pub mod sse;
pub mod types;
