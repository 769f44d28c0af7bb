//! fake-anthropic: a scriptable stand-in for the Anthropic API.
//!
//! It serves what the Claude Code CLI and the gateway ask of the real service (`POST /v1/messages`
//! streaming and not, `GET /api/oauth/profile`, `POST /v1/oauth/token`), records every request it
//! receives for tests to assert on (`GET /_fake/requests`), and lets a prompt script the model's
//! behaviour (see [`script`]).

pub mod accounts;
pub mod record;
pub mod script;
mod server;

pub use record::{RecordedRequest, Recorder};
pub use server::{router, FakeAnthropic, FakeHandle};
