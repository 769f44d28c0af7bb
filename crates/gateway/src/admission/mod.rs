//! Admission: who may start a run now. Rate limits per client IP and per tenant, and the
//! concurrency limits with their bounded queue.

pub mod queue;
pub mod rate;

pub use queue::{Admission, AdmissionError, ConcurrencyLimits, Permit};
pub use rate::{client_ip, RateError, RateLimited, RateLimits};
