//! Tenants: their credentials and their identity.

pub mod credential;
pub mod identity;
pub mod refresh;
