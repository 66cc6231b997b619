//! A Rust client for tokenvend, the gRPC token vending service.
//!
//! ```no_run
//! # async fn example() -> Result<(), tokenvend_client::Error> {
//! let mut client = tokenvend_client::TokenClient::connect("http://127.0.0.1:50051").await?;
//! let token = client.get_token("demo").await?;
//! for (name, value) in &token.headers {
//!     println!("{name}: <{} bytes>", value.len());
//! }
//! # Ok(())
//! # }
//! ```

use tokenvend::pb::{GetTokenRequest, token_service_client::TokenServiceClient};
use tonic::transport::Channel;

pub use tokenvend::pb::Token;

/// Why a call failed.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// The server address is not a valid URI.
    #[error("invalid server address: {0}")]
    InvalidAddress(String),
    /// The connection could not be made.
    #[error("cannot connect to tokenvend: {0}")]
    Connect(#[from] tonic::transport::Error),
    /// The server answered with an error status.
    #[error("{}: {}", .0.code(), .0.message())]
    Status(#[from] tonic::Status),
}

/// A connection to a tokenvend server.
#[derive(Clone, Debug)]
pub struct TokenClient {
    inner: TokenServiceClient<Channel>,
}

impl TokenClient {
    /// Connects to a server such as `http://127.0.0.1:50051`.
    pub async fn connect(target: impl Into<String>) -> Result<Self, Error> {
        let target = target.into();
        let endpoint =
            Channel::from_shared(target.clone()).map_err(|_| Error::InvalidAddress(target))?;
        let channel = endpoint.connect().await?;
        Ok(Self {
            inner: TokenServiceClient::new(channel),
        })
    }

    /// Gets a token for a profile.
    pub async fn get_token(&mut self, profile: &str) -> Result<Token, Error> {
        let request = GetTokenRequest {
            profile: profile.to_owned(),
            ..Default::default()
        };
        Ok(self.inner.get_token(request).await?.into_inner())
    }
}
