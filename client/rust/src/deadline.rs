//! The caller's deadline, as the HTTP adapters see it: the token calls and the request
//! itself share it.

use std::time::{Duration, Instant};

use crate::{Error, GetOptions};

#[derive(Clone, Copy, Debug)]
pub(crate) struct Deadline {
    at: Instant,
    total: Duration,
}

impl Deadline {
    pub(crate) fn after(total: Duration) -> Self {
        Self {
            at: Instant::now() + total,
            total,
        }
    }

    /// The time left, or `DeadlineExceeded` when none is.
    pub(crate) fn left(&self) -> Result<Duration, Error> {
        let left = self.at.saturating_duration_since(Instant::now());
        if left.is_zero() {
            return Err(Error::deadline(self.total));
        }
        Ok(left)
    }
}

/// Options for a token call bounded by the deadline, if there is one.
pub(crate) fn options(deadline: Option<&Deadline>) -> Result<GetOptions, Error> {
    Ok(match deadline {
        Some(deadline) => GetOptions::new().timeout(deadline.left()?),
        None => GetOptions::new(),
    })
}
