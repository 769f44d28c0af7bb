//! Tenants: their credentials and their identity.

pub mod credential;
pub mod identity;
pub mod refresh;
pub mod volumes;

/// An HTTP client for the gateway's own calls to Anthropic (profile, token refresh). Redirects
/// are not followed: a bearer token must only ever reach the host it was meant for.
pub(crate) fn upstream_client(timeout: std::time::Duration) -> reqwest::Client {
    crate::tls::client_builder()
        .timeout(timeout)
        .redirect(reqwest::redirect::Policy::none())
        .build()
        .unwrap_or_default()
}
