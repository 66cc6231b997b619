//! Per-caller rate limiting: a token bucket per caller identity (GCRA form: one atomic
//! timestamp per caller), in a map that forgets callers whose bucket is full again; and
//! per-caller caps on what a caller holds open (watch streams, calls waiting on a provider).

use std::{
    collections::HashMap,
    sync::{
        Arc, Mutex, RwLock,
        atomic::{AtomicU64, Ordering},
    },
    time::{Duration, Instant},
};

use crate::{auth::Caller, config::Limits};

/// The most callers with a bucket of their own; callers past it share one, so that a flood
/// of new identities (anonymous callers are told apart by address) cannot grow the map
/// without bound.
const MAX_CALLERS: usize = 100_000;

/// Token buckets for every caller seen recently.
///
/// A read-locked map rather than a cache with idle expiry: it is looked up on every call,
/// and the cache's bookkeeping of each read cost more than the rest of the check. A
/// bucket that is full again is forgotten without loss, so the map is swept of full
/// buckets whenever it has doubled since the last sweep.
pub(crate) struct RateLimiter {
    buckets: RwLock<Buckets>,
    /// Shared by the callers that found the map full.
    overflow: Bucket,
    /// Nanoseconds between two calls at the sustained rate.
    interval: u64,
    /// How far ahead of now a bucket's schedule may run: the burst.
    tolerance: u64,
    epoch: Instant,
}

/// The "theoretical arrival time" of the caller's next call, in nanoseconds since the
/// limiter's epoch. A time at or before now is a full bucket.
struct Bucket(AtomicU64);

#[derive(Default)]
struct Buckets {
    map: HashMap<Caller, Bucket, foldhash::fast::RandomState>,
    /// The map's size that triggers the next sweep.
    sweep_at: usize,
    /// When the last sweep was, in the limiter's nanoseconds: a full map is swept at most
    /// once a second, not for every new caller.
    swept: u64,
}

/// The map's size below which it is not swept.
const FIRST_SWEEP: usize = 1024;
const SECOND: u64 = 1_000_000_000;

impl RateLimiter {
    /// A limiter for these limits.
    pub(crate) fn new(limits: &Limits) -> Self {
        let interval = (1e9 / limits.rate).max(1.0) as u64;
        Self {
            buckets: RwLock::new(Buckets {
                sweep_at: FIRST_SWEEP,
                ..Buckets::default()
            }),
            overflow: Bucket(AtomicU64::new(0)),
            interval,
            tolerance: interval.saturating_mul(u64::from(limits.burst)),
            epoch: Instant::now(),
        }
    }

    /// Takes one call from the caller's bucket, or says how long until one is there.
    pub(crate) fn check(&self, caller: &Caller) -> Result<(), Duration> {
        let now = self.epoch.elapsed().as_nanos() as u64;
        {
            let buckets = self.buckets.read().unwrap_or_else(|e| e.into_inner());
            if let Some(bucket) = buckets.map.get(caller) {
                return self.take(bucket, now);
            }
        }
        let mut guard = self.buckets.write().unwrap_or_else(|e| e.into_inner());
        let buckets = &mut *guard;
        let len = buckets.map.len();
        if len >= buckets.sweep_at && (len < MAX_CALLERS || now >= buckets.swept + SECOND) {
            buckets.map.retain(|_, b| b.0.load(Ordering::Relaxed) > now);
            buckets.sweep_at = (buckets.map.len() * 2).clamp(FIRST_SWEEP, MAX_CALLERS);
            buckets.swept = now;
        }
        if buckets.map.len() >= MAX_CALLERS && !buckets.map.contains_key(caller) {
            return self.take(&self.overflow, now);
        }
        let bucket = buckets
            .map
            .entry(caller.clone())
            .or_insert_with(|| Bucket(AtomicU64::new(0)));
        self.take(bucket, now)
    }

    fn take(&self, bucket: &Bucket, now: u64) -> Result<(), Duration> {
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

    /// How many callers have a bucket of their own.
    #[cfg(test)]
    fn callers(&self) -> usize {
        self.buckets.read().unwrap().map.len()
    }
}

/// What callers hold open, of each kind that has a per-caller cap. One for the life of
/// the server: a reload's new service shares it, so that streams opened before count.
#[derive(Clone, Default)]
pub(crate) struct Holdings {
    /// `WatchToken` streams.
    pub watches: Arc<Held>,
    /// Calls waiting on an identity provider (a cache miss).
    pub pending: Arc<Held>,
}

/// What callers hold open of one kind (`WatchToken` streams, calls waiting on an
/// identity provider), counted per caller so that one caller cannot take it all.
///
/// A mutex around a map: it is taken when a stream opens or a call starts waiting on a
/// provider, and when either ends; never on a cache hit.
#[derive(Default)]
pub(crate) struct Held {
    by_caller: Mutex<HashMap<Caller, usize, foldhash::fast::RandomState>>,
}

impl Held {
    /// One more for `caller`, given back when the guard is dropped; `None` when the caller
    /// holds `max` already.
    pub(crate) fn take(self: &Arc<Self>, caller: &Caller, max: usize) -> Option<HeldGuard> {
        let mut by_caller = self.by_caller.lock().unwrap_or_else(|e| e.into_inner());
        let held = by_caller.entry(caller.clone()).or_insert(0);
        if *held >= max {
            return None;
        }
        *held += 1;
        Some(HeldGuard {
            held: self.clone(),
            caller: caller.clone(),
        })
    }

    /// How many are held, by every caller together.
    pub(crate) fn total(&self) -> usize {
        let by_caller = self.by_caller.lock().unwrap_or_else(|e| e.into_inner());
        by_caller.values().sum()
    }
}

/// One held by a caller; given back when dropped.
pub(crate) struct HeldGuard {
    held: Arc<Held>,
    caller: Caller,
}

impl Drop for HeldGuard {
    fn drop(&mut self) {
        let mut by_caller = self
            .held
            .by_caller
            .lock()
            .unwrap_or_else(|e| e.into_inner());
        if let Some(held) = by_caller.get_mut(&self.caller) {
            *held -= 1;
            if *held == 0 {
                by_caller.remove(&self.caller);
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn with_rate(rate: f64, burst: u32) -> RateLimiter {
        RateLimiter::new(&Limits {
            rate,
            burst,
            ..Limits::default()
        })
    }

    #[test]
    fn a_burst_passes_then_the_rate_holds_per_caller() {
        let limiter = with_rate(10.0, 3);
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

    #[test]
    fn a_caller_holds_at_most_its_cap_and_gives_back_what_it_drops() {
        let held = Arc::new(Held::default());
        let a = Caller::Identified("a".into());
        let b = Caller::Identified("b".into());
        let first = held.take(&a, 2).unwrap();
        let _second = held.take(&a, 2).unwrap();
        assert!(held.take(&a, 2).is_none());
        let _other = held.take(&b, 2).expect("another caller has its own cap");
        drop(first);
        let again = held.take(&a, 2).expect("a dropped one is given back");
        assert_eq!(held.total(), 3);
        drop((again, _second, _other));
        assert_eq!(held.total(), 0);
        assert!(held.by_caller.lock().unwrap().is_empty());
    }

    #[test]
    fn full_buckets_are_forgotten_and_a_flood_of_callers_shares_one() {
        let limiter = with_rate(1e9, 1);
        let caller = |i: usize| Caller::Identified(format!("c{i}").into());
        // At one call a nanosecond, every bucket is full again by the time the next
        // caller arrives: the map never holds more than one sweep's worth.
        for i in 0..10 * FIRST_SWEEP {
            limiter.check(&caller(i)).unwrap();
        }
        assert!(limiter.callers() <= FIRST_SWEEP, "{}", limiter.callers());

        // Buckets that are not full are kept, up to the cap; past it callers share one.
        let limiter = with_rate(0.001, 1);
        for i in 0..MAX_CALLERS {
            limiter.check(&caller(i)).unwrap();
        }
        assert_eq!(limiter.callers(), MAX_CALLERS);
        limiter.check(&caller(MAX_CALLERS)).unwrap();
        limiter.check(&caller(MAX_CALLERS + 1)).unwrap_err();
        assert_eq!(limiter.callers(), MAX_CALLERS);
        // A caller already in the map keeps its own bucket.
        limiter.check(&caller(0)).unwrap_err();
    }
}
