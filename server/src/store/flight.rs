//! Single flight across replicas: on a local miss, take the shared token if it will do;
//! else one replica (the lock holder) asks the provider and shares the result while the
//! others wait for it, so the provider sees one request however many replicas miss.

use std::time::{Duration, SystemTime};

use tokio::time::Instant;

use super::{ProfileStore, SharedToken, StoreError};
use crate::{audit::Fingerprint, config::Profile, idp::IssuedToken};

/// The shared store cannot be reached (or its lock is held too long), and this request
/// needs it: a refresh-token chain must not be rotated by one replica alone.
#[derive(Debug)]
pub(crate) struct StoreDown(pub(crate) String);

/// What the store may do when it cannot be reached.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum WhenDown {
    /// Ask the provider alone: harmless for client credentials, at worst one request per
    /// replica.
    FetchAlone,
    /// Refuse: rotating a refresh-token chain without the store would fork it.
    Refuse,
}

impl ProfileStore {
    /// A token for a local miss: the shared one if it is usable and none of `skip` (the token
    /// this replica already holds and found wanting), else one `fetch` across replicas.
    pub(crate) async fn obtain<E: From<StoreDown>>(
        &self,
        profile: &Profile,
        skip: [Option<Fingerprint>; 2],
        when_down: WhenDown,
        fetch: impl AsyncFnOnce() -> Result<IssuedToken, E>,
    ) -> Result<IssuedToken, E> {
        // The holder's request may take the profile's timeout twice (discovery, then the
        // token endpoint); the lock outlives that, and waiters wait as long.
        let lock_ttl = profile.timeout * 2 + Duration::from_secs(1);
        let deadline = Instant::now() + lock_ttl * 2;
        let usable = |token: &SharedToken| {
            token.usable(SystemTime::now())
                && !skip.contains(&Some(Fingerprint::of(token.issued.access_token.expose())))
        };
        let down = |error: StoreError| {
            tracing::debug!(profile = %profile.name, %error, "shared store not used");
            error
        };
        loop {
            match self.read_token().await {
                Ok(Some(token)) if usable(&token) => return Ok(token.issued),
                Ok(_) => {}
                Err(StoreError::Corrupt { key, reason }) => {
                    // Overwritten below by the lock holder; a replica with other keys
                    // (mid-rotation) lands here too.
                    tracing::warn!(profile = %profile.name, key, reason, "ignoring the stored token");
                }
                Err(error) => return self.alone(profile, down(error), when_down, fetch).await,
            }
            match self.try_lock(lock_ttl).await {
                Ok(Some(fence)) => return self.fetch_holding(profile, &fence, fetch).await,
                Ok(None) => {}
                Err(error) => return self.alone(profile, down(error), when_down, fetch).await,
            }
            let left = deadline.saturating_duration_since(Instant::now());
            if left.is_zero() {
                return Err(StoreDown(format!(
                    "another replica has held the lock of profile {} for {lock_ttl:?} without sharing a token",
                    profile.name
                ))
                .into());
            }
            if let Err(error) = self.wait_for_update(left.min(lock_ttl)).await {
                return self.alone(profile, down(error), when_down, fetch).await;
            }
        }
    }

    /// This replica holds the lock: ask the provider, share the token, release the lock.
    async fn fetch_holding<E>(
        &self,
        profile: &Profile,
        fence: &str,
        fetch: impl AsyncFnOnce() -> Result<IssuedToken, E>,
    ) -> Result<IssuedToken, E> {
        let result = fetch().await.map(|mut issued| {
            // Fixed here, once for all replicas, so that they all refresh together (and
            // so find each other's token instead of asking the provider).
            let refresh_in = issued.refresh_in.unwrap_or_else(|| {
                let jitter = issued.lifetime.mul_f64(fastrand::f64() * 0.05);
                profile
                    .refresh_ahead
                    .after(issued.lifetime)
                    .saturating_sub(jitter)
            });
            issued.refresh_in = Some(refresh_in);
            issued
        });
        if let Ok(issued) = &result
            && let Err(error) = self
                .write_token(issued, issued.refresh_in.unwrap_or_default())
                .await
        {
            // The token is good; the other replicas will ask for their own.
            tracing::warn!(profile = %profile.name, %error, "cannot share the token");
        }
        if let Err(error) = self.unlock(fence).await {
            // It expires by itself.
            tracing::debug!(profile = %profile.name, %error, "cannot release the lock");
        }
        result
    }

    async fn alone<E: From<StoreDown>>(
        &self,
        profile: &Profile,
        error: StoreError,
        when_down: WhenDown,
        fetch: impl AsyncFnOnce() -> Result<IssuedToken, E>,
    ) -> Result<IssuedToken, E> {
        match when_down {
            WhenDown::FetchAlone => fetch().await,
            WhenDown::Refuse => {
                tracing::warn!(profile = %profile.name, %error, "not rotating the refresh token while the shared store is down");
                Err(StoreDown(error.to_string()).into())
            }
        }
    }
}
