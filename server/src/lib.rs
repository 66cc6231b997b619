//! tokenvend: a gRPC service that vends OAuth 2.0 access tokens by profile name from a
//! single-flight, refresh-ahead cache, so that no caller holds a client secret.
//!
//! The request path: `service` → `cache` → (on a miss) `idp`. [`serve`] builds a
//! configuration into a running application (the private `app` module) and runs it on
//! listeners the caller bound; `main.rs` only parses the command line ([`cli`]).
//!
//! Modules are private unless the binary or the tests use them, so that the compiler
//! finds what nothing uses.

mod admin;
mod app;
mod assertion;
mod audit;
mod auth;
pub mod authorize;
mod bounded;
mod cache;
mod chain;
pub mod cli;
pub mod config;
mod conn;
mod connections;
mod credential;
mod crypto;
pub mod dev;
mod error;
mod ext_authz;
mod forward;
#[cfg(feature = "fuzzing")]
#[doc(hidden)]
pub mod fuzzing;
mod idp;
mod limit;
pub mod logging;
mod metrics;
mod reload;
pub mod secret;
pub mod server;
mod service;
mod source;
mod state;
mod store;
pub mod telemetry;
mod tls;
mod web;

pub use config::Config;
pub use server::{Listeners, serve};
