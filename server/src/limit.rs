//! Per-caller rate limiting: a token bucket per caller identity (GCRA form: one atomic
//! timestamp per caller), kept in a moka cache that forgets idle callers.

use std::{
    sync::{
        Arc,
        atomic::{AtomicU64, Ordering},
    },
    time::{Duration, Instant},
};

use crate::{auth::Caller, config::Limits};

/// Token buckets for every caller seen recently.
pub struct RateLimiter {
    buckets: moka::sync::Cache<Caller, Arc<Bucket>>,
    /// Nanoseconds between two calls at the sustained rate.
    interval: u64,
    /// How far ahead of now a bucket's schedule may run: the burst.
    tolerance: u64,
    epoch: Instant,
}

/// The "theoretical arrival time" of the caller's next call, in nanoseconds since the
/// limiter's epoch. A full bucket is a time in the past.
struct Bucket(AtomicU64);

impl RateLimiter {
    /// A limiter for these limits.
    pub fn new(limits: &Limits) -> Self {
        let interval = (1e9 / limits.rate).max(1.0) as u64;
        let tolerance = interval.saturating_mul(u64::from(limits.burst));
        // A bucket idle for its whole tolerance is full again; forgetting it is lossless.
        let idle = Duration::from_nanos(tolerance).max(Duration::from_secs(10));
        Self {
            buckets: moka::sync::Cache::builder()
                .max_capacity(100_000)
                .time_to_idle(idle)
                .build(),
            interval,
            tolerance,
            epoch: Instant::now(),
        }
    }

    /// Takes one call from the caller's bucket, or says how long until one is there.
    pub fn check(&self, caller: &Caller) -> Result<(), Duration> {
        let bucket = self
            .buckets
            .get_with_by_ref(caller, || Arc::new(Bucket(AtomicU64::new(0))));
        let now = self.epoch.elapsed().as_nanos() as u64;
        let mut tat = bucket.0.load(Ordering::Relaxed);
        loop {
            let next = tat.max(now) + self.interval;
            let ahead = next - now;
            if ahead > self.tolerance {
                return Err(Duration::from_nanos(ahead - self.tolerance));
            }
            match bucket
                .0
                .compare_exchange_weak(tat, next, Ordering::Relaxed, Ordering::Relaxed)
            {
                Ok(_) => return Ok(()),
                Err(actual) => tat = actual,
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_burst_passes_then_the_rate_holds_per_caller() {
        let limits = Limits {
            rate: 10.0,
            burst: 3,
            ..Limits::default()
        };
        let limiter = RateLimiter::new(&limits);
        let a = Caller::Identified("a".into());
        let b = Caller::Identified("b".into());
        for _ in 0..3 {
            limiter.check(&a).unwrap();
        }
        let wait = limiter.check(&a).unwrap_err();
        assert!(wait <= Duration::from_millis(100), "{wait:?}");
        limiter.check(&b).unwrap();
        std::thread::sleep(wait + Duration::from_millis(5));
        limiter.check(&a).unwrap();
    }
}
