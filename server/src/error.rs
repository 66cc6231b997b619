//! The service's errors, and the one place where they become gRPC statuses.

use std::{sync::Arc, time::Duration};

use tonic::{Code, Status, metadata::MetadataMap};

use crate::{auth::AuthError, source::FetchError};

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
        error: Arc<FetchError>,
    },
    /// The last provider request failed and the next one is not due yet.
    #[error("profile `{profile}`: {error} (next attempt in {}s)", retry_in.as_secs().max(1))]
    Backoff {
        /// The profile.
        profile: Arc<str>,
        /// What the provider did last time.
        error: Arc<FetchError>,
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
    /// The caller holds as many of something (watch streams, waiting calls) as it may.
    #[error("this caller has {max} {what} open, the most `server.limits.{key}` allows; {advice}")]
    TooMany {
        /// What it holds.
        what: &'static str,
        /// The cap.
        max: usize,
        /// The configuration key of the cap.
        key: &'static str,
        /// What the caller can do.
        advice: &'static str,
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
            Self::TooMany { .. } => "too_many_open",
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
            ServeError::RateLimited { .. }
            | ServeError::IdpCeiling { .. }
            | ServeError::TooMany { .. } => Code::ResourceExhausted,
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

/// tonic answers a request it cannot decode before the service sees it, with codes the
/// contract keeps for other things: INTERNAL (a bug, to a client) for a malformed message
/// or a string that is not UTF-8, OUT_OF_RANGE for one over `max_request_bytes`. Such a
/// reply carries its status in its headers; this rewrites it to INVALID_ARGUMENT and
/// RESOURCE_EXHAUSTED. A reply whose status comes at the end (every answered call) has
/// none in its headers and costs one lookup.
pub(crate) fn rewrite_decode_status(headers: &mut http::HeaderMap) {
    let code = match headers.get(Status::GRPC_STATUS).map(|v| v.as_bytes()) {
        Some(b"13") => Code::Internal,
        Some(b"11") => Code::OutOfRange,
        _ => return,
    };
    let Some(status) = Status::from_header_map(headers) else {
        return;
    };
    let message = status.message();
    let rewritten = match code {
        Code::Internal
            if message.starts_with("failed to decode Protobuf message")
                || message.starts_with("Unexpected EOF decoding stream") =>
        {
            Status::invalid_argument(format!("the request cannot be decoded: {message}"))
        }
        Code::OutOfRange if message.starts_with("Error, decoded message length too large") => {
            Status::resource_exhausted(format!(
                "the request is larger than `server.limits.max_request_bytes` allows: {message}"
            ))
        }
        _ => return,
    };
    if let Err(error) = rewritten.add_header(headers) {
        tracing::debug!(%error, "cannot rewrite a decoding error's status");
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn rewritten(status: Status) -> Status {
        let mut headers = http::HeaderMap::new();
        status.add_header(&mut headers).unwrap();
        rewrite_decode_status(&mut headers);
        Status::from_header_map(&headers).unwrap()
    }

    #[test]
    fn decoding_errors_get_the_contracts_codes_and_others_are_kept() {
        let status = rewritten(Status::internal(
            "failed to decode Protobuf message: GetTokenRequest.profile: invalid string value: data is not UTF-8 encoded",
        ));
        assert_eq!(status.code(), Code::InvalidArgument);
        assert!(status.message().contains("UTF-8"), "{status:?}");
        let status = rewritten(Status::out_of_range(
            "Error, decoded message length too large: found 200 bytes, the limit is: 64 bytes",
        ));
        assert_eq!(status.code(), Code::ResourceExhausted);
        assert!(status.message().contains("max_request_bytes"), "{status:?}");
        // The service's own codes pass untouched.
        let status = rewritten(ServeError::Internal.into());
        assert_eq!(status.code(), Code::Internal);
        let status = rewritten(Status::out_of_range("cannot meet a min_ttl"));
        assert_eq!(status.code(), Code::OutOfRange);
    }
}
