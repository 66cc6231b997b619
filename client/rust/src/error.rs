//! The one error type of the client: what failed, its gRPC code, and whether trying again
//! can help.

use std::{error::Error as StdError, fmt, time::Duration};

use tonic::Code;

/// Why a call failed. [`code`](Self::code) gives the gRPC code and
/// [`is_retryable`](Self::is_retryable) whether the same call may succeed later. The
/// message names the cause (down to the operating system's error, for a failed connection)
/// and never carries a token.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum Error {
    /// The server address cannot be used.
    #[error("invalid tokenvend address {target:?}: {reason}")]
    InvalidAddress {
        /// The address as given.
        target: String,
        /// What is wrong with it.
        reason: String,
    },
    /// [`Builder::connect`](crate::Builder::connect) could not reach tokenvend.
    #[error("cannot connect to tokenvend at {target}: {}", Chain(.source))]
    Connect {
        /// The address it tried.
        target: String,
        /// The transport's error.
        source: tonic::transport::Error,
    },
    /// tokenvend answered with an error status, or could not be reached in time (then
    /// the code is `Unavailable` or `DeadlineExceeded`).
    #[error("tokenvend: {}", StatusText(.0))]
    Status(#[from] tonic::Status),
    /// A header that tokenvend sent cannot be put on an HTTP request.
    #[error("invalid header {name:?} from tokenvend")]
    InvalidHeader {
        /// The header's name (its value is not shown: it holds the token).
        name: String,
    },
    /// The HTTP request to the resource API failed.
    #[cfg(feature = "reqwest")]
    #[error("request failed: {}", Chain(.0))]
    Http(#[from] reqwest::Error),
}

impl Error {
    /// The gRPC code of the failure: tokenvend's answer, `Unavailable` when it could not
    /// be reached, `DeadlineExceeded` when no answer came in time, `InvalidArgument` for
    /// an unusable address, `Internal` for an unusable header and `Unknown` for a failed
    /// HTTP request to the resource API.
    pub fn code(&self) -> Code {
        match self {
            Self::InvalidAddress { .. } => Code::InvalidArgument,
            Self::Connect { .. } => Code::Unavailable,
            Self::Status(status) => status.code(),
            Self::InvalidHeader { .. } => Code::Internal,
            #[cfg(feature = "reqwest")]
            Self::Http(_) => Code::Unknown,
        }
    }

    /// Whether the same call may succeed if tried again later: true for `Unavailable`,
    /// `DeadlineExceeded`, `ResourceExhausted` and `Aborted`. `NotFound` (an unknown
    /// profile, or one this caller may not use), `Unauthenticated`, `PermissionDenied`,
    /// `InvalidArgument`, `OutOfRange`, `FailedPrecondition` (the provider refused the
    /// credentials or needs re-authorization) and `Internal` will fail the same way again.
    pub fn is_retryable(&self) -> bool {
        is_retryable(self.code())
    }

    /// The tokenvend error inside an error of [`reqwest_middleware`], when the
    /// [`TokenMiddleware`](crate::TokenMiddleware) is what failed.
    #[cfg(feature = "reqwest-middleware")]
    pub fn from_middleware(error: &reqwest_middleware::Error) -> Option<&Self> {
        match error {
            reqwest_middleware::Error::Middleware(error) => error.downcast_ref(),
            reqwest_middleware::Error::Reqwest(_) => None,
        }
    }

    pub(crate) fn deadline(limit: Duration) -> Self {
        Self::Status(deadline_status(limit))
    }
}

pub(crate) fn deadline_status(limit: Duration) -> tonic::Status {
    // What is left of a caller's deadline is rarely a round number: to the millisecond.
    let ms = (limit.as_micros() + 500) / 1000;
    let limit = if ms.is_multiple_of(1000) {
        format!("{} s", ms / 1000)
    } else {
        format!("{ms} ms")
    };
    tonic::Status::deadline_exceeded(format!("no answer from tokenvend within {limit}"))
}

pub(crate) fn is_retryable(code: Code) -> bool {
    matches!(
        code,
        Code::Unavailable | Code::DeadlineExceeded | Code::ResourceExhausted | Code::Aborted
    )
}

/// A status as `Code: message: causes`. tonic's messages for transport failures are
/// generic ("transport error"); the cause chain below them says what happened.
struct StatusText<'a>(&'a tonic::Status);

impl fmt::Display for StatusText<'_> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{:?}", self.0.code())?;
        let mut seen = String::new();
        if !self.0.message().is_empty() {
            write!(f, ": {}", self.0.message())?;
            seen = self.0.message().to_owned();
        }
        write_causes(f, self.0.source(), &mut seen)
    }
}

/// An error followed by its causes.
pub(crate) struct Chain<'a, E>(pub(crate) &'a E);

impl<E: StdError> fmt::Display for Chain<'_, E> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let mut seen = self.0.to_string();
        f.write_str(&seen)?;
        write_causes(f, self.0.source(), &mut seen)
    }
}

/// Appends each cause that adds something: layers often repeat their inner error's text.
fn write_causes(
    f: &mut fmt::Formatter<'_>,
    mut cause: Option<&(dyn StdError + 'static)>,
    seen: &mut String,
) -> fmt::Result {
    // Bounded: a cyclic or very deep chain must not make a message without end.
    for _ in 0..8 {
        let Some(error) = cause else { break };
        let text = error.to_string();
        // tonic's transport error says only that much; its own cause says what.
        if !text.is_empty() && text != "transport error" && !seen.contains(&text) {
            write!(f, ": {text}")?;
            seen.push_str(&text);
        }
        cause = error.source();
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn retryable_codes_are_the_transient_ones() {
        let retryable: Vec<Code> = [
            Code::Ok,
            Code::Cancelled,
            Code::Unknown,
            Code::InvalidArgument,
            Code::DeadlineExceeded,
            Code::NotFound,
            Code::AlreadyExists,
            Code::PermissionDenied,
            Code::ResourceExhausted,
            Code::FailedPrecondition,
            Code::Aborted,
            Code::OutOfRange,
            Code::Unimplemented,
            Code::Internal,
            Code::Unavailable,
            Code::DataLoss,
            Code::Unauthenticated,
        ]
        .into_iter()
        .filter(|&c| Error::Status(tonic::Status::new(c, "")).is_retryable())
        .collect();
        assert_eq!(
            retryable,
            [
                Code::DeadlineExceeded,
                Code::ResourceExhausted,
                Code::Aborted,
                Code::Unavailable
            ]
        );
    }

    #[test]
    fn a_status_shows_its_causes_once() {
        let io = std::io::Error::new(std::io::ErrorKind::ConnectionRefused, "refused");
        let status = tonic::Status::from_error(Box::new(io));
        let text = Error::Status(status).to_string();
        assert_eq!(text.matches("refused").count(), 1, "{text}");
        assert!(text.starts_with("tokenvend: Unknown: refused"), "{text}");
    }
}
