//! Against Keycloak, a real authorization server: each client authentication method and
//! grant tokenvend offers, accepted by Keycloak and answered with a token whose signature
//! checks against the realm's keys, and each refusal reported with Keycloak's own error.
//! One Keycloak serves the whole binary (it takes half a minute to start); each test has
//! its own realm. See `keycloak/server.rs` for how it is found, started and stopped.

// Shared with the other test binaries, which use more of it.
#[allow(unused_imports)]
mod support;

mod keycloak {
    pub(crate) mod server;

    mod client_auth;
    mod exchange;
    mod grants;
    mod per_call;
}
