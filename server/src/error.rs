//! The service's errors, and the one place where they become gRPC statuses.

use std::{sync::Arc, time::Duration};

use tonic::{Code, Status, metadata::MetadataMap};

use crate::{auth::AuthError, idp::IdpError};

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
    /// The caller is not authenticated.
    #[error("{0}")]
    Unauthenticated(AuthError),
    /// The caller is over its rate.
    #[error("too many calls from this caller; retry in {}ms", retry_in.as_millis().max(1))]
    RateLimited {
        /// When the caller's bucket has a call again.
        retry_in: Duration,
    },
    /// The profile reached its ceiling of provider requests per minute.
    #[error(
        "profile `{profile}` reached its limit of {limit} identity provider requests per minute; retry in {}s",
        retry_in.as_secs().max(1)
    )]
    IdpCeiling {
        /// The profile.
        profile: Arc<str>,
        /// Its `idp_requests_per_minute`.
        limit: u32,
        /// When the next request may be made.
        retry_in: Duration,
    },
    /// A bug; logged where it happened.
    #[error("internal error")]
    Internal,
}

impl ServeError {
    /// A short name for audit events.
    pub fn outcome(&self) -> &'static str {
        match self {
            Self::InvalidArgument(_) => "invalid_argument",
            Self::NotFound(_) => "not_found",
            Self::Unauthenticated(_) => "unauthenticated",
            Self::RateLimited { .. } => "rate_limited",
            Self::IdpCeiling { .. } => "idp_ceiling",
            Self::DeadlineExceeded => "deadline_exceeded",
            Self::Fetch { .. } | Self::Backoff { .. } | Self::TooShort { .. } => "idp_error",
            Self::ShuttingDown | Self::Internal => "error",
        }
    }
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
            ServeError::Unauthenticated(AuthError::KeysUnavailable(_)) => Code::Unavailable,
            ServeError::Unauthenticated(_) => Code::Unauthenticated,
            ServeError::RateLimited { .. } | ServeError::IdpCeiling { .. } => {
                Code::ResourceExhausted
            }
        };
        let retry_in = match &error {
            ServeError::RateLimited { retry_in } | ServeError::IdpCeiling { retry_in, .. } => {
                Some(*retry_in)
            }
            _ => None,
        };
        let message = error.to_string();
        match retry_in {
            None => Status::new(code, message),
            // `retry-after` in whole seconds as HTTP has it, and gRPC's own retry pushback
            // in milliseconds, which gRPC clients with a retry policy honour.
            Some(retry_in) => {
                let mut metadata = MetadataMap::new();
                let seconds = retry_in.as_secs() + u64::from(retry_in.subsec_nanos() > 0);
                metadata.insert("retry-after", seconds.into());
                metadata.insert(
                    "grpc-retry-pushback-ms",
                    (retry_in.as_millis().max(1) as u64).into(),
                );
                Status::with_metadata(code, message, metadata)
            }
        }
    }
}
