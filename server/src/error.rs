//! The service's errors, and the one place where they become gRPC statuses.

use std::{sync::Arc, time::Duration};

use tonic::{Code, Status};

use crate::idp::IdpError;

/// Why a call could not be answered with a token. The text is safe to send to the caller:
/// it never holds a secret or a token.
#[derive(Debug, thiserror::Error)]
pub enum ServeError {
    /// The request is malformed.
    #[error("{0}")]
    InvalidArgument(String),
    /// No such profile, or one the caller may not use; the two read the same.
    #[error("no profile named `{0}`")]
    NotFound(String),
    /// The provider request failed and there is no valid cached token.
    #[error("profile `{profile}`: {error}")]
    Fetch {
        /// The profile.
        profile: Arc<str>,
        /// What the provider did.
        error: Arc<IdpError>,
    },
    /// The last provider request failed and the next one is not due yet.
    #[error("profile `{profile}`: {error} (next attempt in {}s)", retry_in.as_secs().max(1))]
    Backoff {
        /// The profile.
        profile: Arc<str>,
        /// What the provider did last time.
        error: Arc<IdpError>,
        /// When the next request is due.
        retry_in: Duration,
    },
    /// The profile's tokens live shorter than the caller's `min_ttl`.
    #[error(
        "profile `{profile}` gets tokens valid for {}s, which cannot meet a min_ttl of {}s",
        lifetime.as_secs(),
        min_ttl.as_secs()
    )]
    TooShort {
        /// The profile.
        profile: Arc<str>,
        /// The lifetime of its tokens.
        lifetime: Duration,
        /// What the caller asked for.
        min_ttl: Duration,
    },
    /// The caller's deadline passed while waiting for the provider.
    #[error(
        "the deadline passed while waiting for the identity provider; the token will be cached for the next call"
    )]
    DeadlineExceeded,
    /// The server is shutting down.
    #[error("tokenvend is shutting down; try another replica")]
    ShuttingDown,
    /// A bug; logged where it happened.
    #[error("internal error")]
    Internal,
}

impl From<ServeError> for Status {
    fn from(error: ServeError) -> Self {
        let code = match &error {
            ServeError::InvalidArgument(_) => Code::InvalidArgument,
            ServeError::NotFound(_) => Code::NotFound,
            ServeError::Fetch { error, .. } | ServeError::Backoff { error, .. } => {
                if error.is_transient() {
                    Code::Unavailable
                } else {
                    Code::FailedPrecondition
                }
            }
            ServeError::TooShort { .. } => Code::OutOfRange,
            ServeError::DeadlineExceeded => Code::DeadlineExceeded,
            ServeError::ShuttingDown => Code::Unavailable,
            ServeError::Internal => Code::Internal,
        };
        Status::new(code, error.to_string())
    }
}
