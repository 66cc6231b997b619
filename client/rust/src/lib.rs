//! A Rust client for tokenvend, the gRPC token vending service.
//!
//! Ask for a token by profile name; the client keeps a local copy until it comes close to
//! expiring (a tenth of its lifetime, at most [`Builder::max_refresh_margin`]), so most
//! calls make no round trip at all.
//!
//! ```no_run
//! # async fn example() -> Result<(), tokenvend_client::Error> {
//! use tokenvend_client::TokenClient;
//!
//! // Connects on first use: the service can start while tokenvend is down.
//! let tokens = TokenClient::new("http://127.0.0.1:50051")?;
//! let token = tokens.get_token("jama").await?;
//! let mut request = http::Request::get("https://example.jamacloud.com/rest/v1/projects")
//!     .body(())
//!     .expect("a valid request");
//! token.apply(request.headers_mut())?;
//! # Ok(())
//! # }
//! ```
//!
//! The HTTP adapters set every header of the token and, when the API answers 401, report
//! the token as rejected and retry once with its replacement:
//! - [`TokenMiddleware`] for a `reqwest_middleware` client (feature `reqwest-middleware`,
//!   on by default), and [`TokenClient::send`] for one reqwest request (`reqwest`);
//! - [`TokenLayer`] for a tower service of `http::Request`, such as hyper-util's client
//!   (feature `tower`).
//!
//! Failures are an [`Error`] with the gRPC code and [`Error::is_retryable`].

mod client;
#[cfg(any(feature = "reqwest", feature = "tower"))]
mod deadline;
mod error;
#[cfg(feature = "reqwest")]
mod reqwest_adapter;
mod token;
mod token_file;
#[cfg(feature = "tower")]
mod tower_adapter;

pub use client::{Builder, GetOptions, TokenClient, WatchGuard};
pub use error::Error;
#[cfg(feature = "reqwest-middleware")]
pub use reqwest_adapter::TokenMiddleware;
#[cfg(feature = "reqwest")]
pub use token::with_headers;
pub use token::{Token, apply_headers};
#[cfg(feature = "tower")]
pub use tower_adapter::{
    BoxError, CloneBody, NoRetry, ReplayBody, ReplayWith, TokenLayer, TokenService,
};

/// The reqwest (0.13) whose types the adapters take.
#[cfg(feature = "reqwest")]
pub use reqwest;
/// The `reqwest_middleware` whose `Middleware` [`TokenMiddleware`] is.
#[cfg(feature = "reqwest-middleware")]
pub use reqwest_middleware;
/// The traits [`TokenLayer`] and [`TokenService`] implement.
#[cfg(feature = "tower")]
pub use {tower_layer, tower_service};
