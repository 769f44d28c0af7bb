//! TLS for the gateway's own HTTP clients (identity, token refresh, remote MCP servers).
//!
//! rustls runs on the `ring` provider, which builds without a C toolchain; certificates come
//! from the platform's store. The provider is installed once per process, before any client.

use std::sync::Once;

/// Installs the process-wide TLS provider; idempotent, cheap after the first call.
pub fn init() {
    static ONCE: Once = Once::new();
    ONCE.call_once(|| {
        // Fails only if another provider is already installed, which serves as well.
        let _ = rustls::crypto::ring::default_provider().install_default();
    });
}

/// A client builder with TLS ready.
pub fn client_builder() -> reqwest::ClientBuilder {
    init();
    reqwest::Client::builder()
}
