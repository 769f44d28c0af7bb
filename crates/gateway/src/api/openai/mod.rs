//! OpenAI's Chat Completions API, a thin translation over the same conversation turn.

pub mod chat;
pub mod types;
