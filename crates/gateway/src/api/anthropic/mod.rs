//! The Anthropic Messages API.

pub mod count_tokens;
pub mod messages;
pub mod types;
pub mod wire;
