//! The Anthropic Messages API.

pub mod messages;
pub mod types;
