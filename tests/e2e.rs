//! End-to-end tests: the real server on `127.0.0.1:0`, a real HTTP identity provider on
//! loopback, and the generated gRPC client. One module per behaviour.

mod support;

mod e2e {
    mod admin_web;
    mod browser;
    mod cache;
    mod client_auth;
    mod connections;
    mod dev_mode;
    mod ext_authz;
    mod forward_auth;
    mod forward_nginx;
    mod interop;
    mod lifecycle;
    mod notices;
    mod observability;
    mod per_call;
    mod providers;
    mod reload;
    mod rollout;
    mod rust_client;
    mod rust_client_conformance;
    mod security;
    mod shared_state;
    mod status_codes;
}
