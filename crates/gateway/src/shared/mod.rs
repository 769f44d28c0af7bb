//! State shared by every instance of the gateway, through Redis (`--redis-url`).
//!
//! Without it each instance keeps its own (the embedded default: one machine, nothing else to
//! run). With it, what must hold across instances goes through Redis, and when Redis cannot be
//! reached the requests that need it fail with 503: never a silent local fallback, which
//! would multiply limits by the number of instances.

pub mod lease;

use std::time::Duration;

use redis::aio::{ConnectionManager, ConnectionManagerConfig};
use secrecy::ExposeSecret;

/// How long one Redis command may take, connecting included: a slow Redis must not hang
/// requests.
pub const COMMAND_TIMEOUT: Duration = Duration::from_secs(2);

#[derive(Debug, thiserror::Error)]
pub enum SharedError {
    /// Redis could not be reached or did not answer in time (the message names no secret).
    #[error("the shared state (Redis) is unavailable: {0}")]
    Unavailable(String),
    #[error("the Redis URL is not valid: {0}")]
    BadUrl(String),
}

/// A pooled, self-reconnecting connection to the shared Redis.
#[derive(Clone)]
pub struct Redis {
    manager: ConnectionManager,
    /// Prefix of every key the gateway writes.
    pub prefix: String,
}

impl Redis {
    /// Connects lazily: the gateway starts whether or not Redis is up, and reconnects by
    /// itself when it comes back.
    pub fn new(url: &secrecy::SecretString) -> Result<Self, SharedError> {
        // The URL's password must not reach an error message.
        let client = redis::Client::open(url.expose_secret())
            .map_err(|e| SharedError::BadUrl(format!("{:?}", e.kind())))?;
        let config = ConnectionManagerConfig::new()
            .set_connection_timeout(Some(COMMAND_TIMEOUT))
            .set_response_timeout(Some(COMMAND_TIMEOUT))
            .set_number_of_retries(1)
            .set_max_delay(Duration::from_millis(500));
        let manager = ConnectionManager::new_lazy_with_config(client, config)
            .map_err(|e| SharedError::BadUrl(format!("{:?}", e.kind())))?;
        Ok(Self {
            manager,
            prefix: "claude-gateway:".into(),
        })
    }

    /// Runs `f` on a connection, within the command time limit.
    pub async fn run<T, F, Fut>(&self, f: F) -> Result<T, SharedError>
    where
        F: FnOnce(ConnectionManager) -> Fut,
        Fut: std::future::Future<Output = redis::RedisResult<T>>,
    {
        match tokio::time::timeout(COMMAND_TIMEOUT, f(self.manager.clone())).await {
            Ok(Ok(value)) => Ok(value),
            Ok(Err(e)) => Err(SharedError::Unavailable(describe(&e))),
            Err(_) => Err(SharedError::Unavailable("no answer in time".into())),
        }
    }
}

/// What went wrong, without the server's address or credentials.
fn describe(e: &redis::RedisError) -> String {
    if e.is_timeout() {
        "no answer in time".into()
    } else if e.is_connection_refusal() || e.is_connection_dropped() || e.is_io_error() {
        "cannot connect".into()
    } else {
        format!("{:?}", e.kind())
    }
}
