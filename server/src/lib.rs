//! tokenvend: a gRPC service that vends OAuth 2.0 access tokens by profile name from a
//! single-flight, refresh-ahead cache, so that no caller holds a client secret.
//!
//! The request path: [`service`] → [`cache`] → (on a miss) [`idp`]. [`server::serve`] runs
//! it all on listeners the caller bound; `main.rs` only parses the command line.

mod admin;
pub mod app;
pub mod assertion;
pub mod audit;
pub mod auth;
pub mod authorize;
pub mod cache;
pub mod chain;
pub mod cli;
pub mod config;
pub mod dev;
pub mod error;
pub mod idp;
pub mod limit;
pub mod logging;
pub mod metrics;
pub mod reload;
pub mod secret;
pub mod server;
pub mod service;
pub mod source;
pub mod state;
pub mod store;
pub mod telemetry;
pub mod tls;

pub use config::Config;
pub use server::{Listeners, serve};
