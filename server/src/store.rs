//! The store shared by replicas (`server.store.redis`): issued tokens, the per-profile
//! lock that makes one replica the only one asking the provider, and refresh-token chains.
//!
//! Without it (the embedded mode) each server keeps its own tokens in memory and its
//! chains in `state_dir`; nothing here runs. With it, the hot path is unchanged: a hit is
//! still answered from the local cache. Only a local miss (and the refresher, which is a
//! miss on schedule) comes here, through [`ProfileStore::obtain`] (see [`flight`]).
//!
//! Keys, for a profile `p` under the prefix `tv`:
//! - `tv:p:token` — the current token, sealed ([`crate::crypto`]), expiring with the token;
//! - `tv:p:lock` — held by the replica asking the provider: `SET NX PX` with a random
//!   fencing value, deleted only by a script that checks the value;
//! - `tv:p:updated` — a channel the holder publishes on once the token is written;
//! - `tv:p:chain` — the refresh-token chain: `<version>` and the sealed token ([`chain`]);
//! - `tv:notice:…` — which replica sends a webhook notice ([`notice`]).
//!
//! A connection of a template profile (one per subject) has the same four keys under
//! `tv:p:c:<digest>`, the digest being keyed by `server.connections.key` so that no key
//! name shows a subject; its chain value seals the subject with the record. The sorted
//! set `tv:p:connections` lists the digests, and `tv:connections:revoked` is the channel
//! on which a revocation tells every replica to drop the connection ([`connections`]).
//!
//! Redis is reached through a connection manager that reconnects by itself; the first
//! connection is made on first use, so a server starts (degraded) while Redis is down.
//! With Sentinel, the primary is asked for again after a failure ([`primary`]), and a
//! chain write waits until replicas have it (`WAIT`), so that a failover loses no link.

mod chain;
mod connections;
mod flight;
mod notice;
mod primary;

use std::{
    sync::{
        Arc,
        atomic::{AtomicBool, Ordering},
    },
    time::{Duration, SystemTime, UNIX_EPOCH},
};

use redis::{AsyncCommands as _, aio::ConnectionManager};
use serde::{Deserialize, Serialize};
use zeroize::Zeroizing;

pub(crate) use crate::crypto::{KeyError, Keyring, decode_key};
pub(crate) use connections::PROFILE_ITSELF;
pub(crate) use flight::{StoreDown, WhenDown};
use primary::Primary;

use crate::{
    config::RedisConfig,
    idp::IssuedToken,
    secret::{Secret, SecretError},
};

/// How long one Redis connection attempt or command may take. Short: every caller of a
/// missing token waits for it, and a replica that cannot reach Redis should fall back to
/// working alone quickly.
const REDIS_TIMEOUT: Duration = Duration::from_secs(1);

/// Why the store could not be used. Never carries a token, a key or the Redis URL.
#[derive(Debug, thiserror::Error)]
pub enum StoreError {
    /// Redis did not answer, or refused.
    #[error("redis: {0}")]
    Redis(String),
    /// A stored value cannot be opened or read.
    #[error("stored value {key}: {reason}")]
    Corrupt {
        /// The Redis key.
        key: String,
        /// Why.
        reason: String,
    },
    /// Fewer replicas than `replicas_to_ack` acknowledged a chain write in time: the
    /// primary had it, but a failover could lose it, so it was taken back and counts as
    /// not written.
    #[error(
        "{acked} of the {wanted} replicas required (replicas_to_ack) acknowledged the refresh-token chain's write in time"
    )]
    NotReplicated {
        /// How many did.
        acked: u32,
        /// How many must.
        wanted: u32,
    },
}

/// Why the shared store's settings cannot be used. Names the setting, never its value
/// (the URL may carry a password).
#[derive(Debug, thiserror::Error)]
pub enum SetupError {
    /// The URL is not a Redis URL.
    #[error("server.store.redis.url: {0:?}")]
    Url(redis::ErrorKind),
    /// The password cannot be read.
    #[error("server.store.redis.password: {0}")]
    Password(SecretError),
    /// The client cannot be built from the settings.
    #[error("server.store.redis: {0:?}")]
    Client(redis::ErrorKind),
    /// The sentinels' password cannot be read.
    #[error("server.store.redis.sentinel.password: {0}")]
    SentinelPassword(SecretError),
    /// The sentinels cannot be used.
    #[error("server.store.redis.sentinel: {0:?}")]
    Sentinel(redis::ErrorKind),
    /// The encryption keys cannot be used.
    #[error("server.store.redis.encryption_keys: {0}")]
    Keys(#[from] KeyError),
}

impl From<redis::RedisError> for StoreError {
    fn from(error: redis::RedisError) -> Self {
        // The kind and the server's message; redis-rs puts no URL or password in either.
        Self::Redis(error.to_string())
    }
}

/// A connection to the shared store. Cheap to clone.
#[derive(Clone)]
pub(crate) struct SharedStore {
    inner: Arc<Inner>,
}

struct Inner {
    primary: Primary,
    /// What a chain write waits for, if anything.
    acks: Option<Acks>,
    prefix: String,
    keys: Keyring,
    /// Whether the last use failed, so that the change is logged once each way.
    down: AtomicBool,
    /// This server's name on the connections channel, so that it skips its own messages.
    origin: String,
}

/// How many replicas must acknowledge a chain write, and how long it waits for them.
#[derive(Debug, Clone, Copy)]
struct Acks {
    replicas: u32,
    timeout: Duration,
}

impl std::fmt::Debug for SharedStore {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("SharedStore")
            .field("prefix", &self.inner.prefix)
            .finish_non_exhaustive()
    }
}

impl SharedStore {
    /// A store for this configuration. Reads the passwords and keys now; connects later.
    pub(crate) fn new(config: &RedisConfig) -> Result<Self, SetupError> {
        let primary = Primary::new(config)?;
        let keys = Keyring::load(&config.encryption_keys)?;
        Ok(Self {
            inner: Arc::new(Inner {
                primary,
                acks: (config.replicas_to_ack > 0).then_some(Acks {
                    replicas: config.replicas_to_ack,
                    timeout: config.ack_timeout,
                }),
                prefix: config.key_prefix.clone(),
                keys,
                down: AtomicBool::new(false),
                origin: format!("{:016x}", fastrand::u64(..)),
            }),
        })
    }

    /// The handle of one profile.
    pub(crate) fn profile(&self, name: &str) -> ProfileStore {
        self.keys_under(format!("{}:{name}", self.inner.prefix), None)
    }

    /// The handle of one connection of a template profile: `digest` names it, `subject`
    /// is sealed with its chain.
    pub(crate) fn connection_keys(
        &self,
        profile: &str,
        digest: &str,
        subject: Arc<str>,
    ) -> ProfileStore {
        self.keys_under(
            format!("{}:{profile}:c:{digest}", self.inner.prefix),
            Some(subject),
        )
    }

    fn keys_under(&self, base: String, subject: Option<Arc<str>>) -> ProfileStore {
        ProfileStore {
            store: self.clone(),
            token_key: format!("{base}:token"),
            lock_key: format!("{base}:lock"),
            channel: format!("{base}:updated"),
            chain_key: format!("{base}:chain"),
            subject,
        }
    }

    /// Claims `name` for `ttl`: true for the first claim across every replica, false for
    /// any later one (`SET NX`). The admin page's callback claims each `state` here, so
    /// that a replayed redirect is refused on whichever replica it lands.
    pub(crate) async fn claim_once(&self, name: &str, ttl: Duration) -> Result<bool, StoreError> {
        let key = format!("{}:web:claimed:{name}", self.inner.prefix);
        let attempt = async {
            let mut redis = self.connection().await?;
            set_if_absent(&mut redis, &key, "1", ttl).await
        };
        self.note(attempt.await)
    }

    async fn connection(&self) -> Result<ConnectionManager, StoreError> {
        Ok(self.inner.primary.connected().await?.commands.clone())
    }

    /// Records whether Redis answered, logging each change once.
    fn note<T>(&self, result: Result<T, StoreError>) -> Result<T, StoreError> {
        match &result {
            // A write the replicas did not acknowledge was answered: the store is up, and
            // the chain's own logging says what became of the write.
            Ok(_) | Err(StoreError::NotReplicated { .. }) => {
                if self.inner.down.swap(false, Ordering::Relaxed) {
                    tracing::info!("shared store reachable again: replicas share tokens again");
                }
            }
            Err(error) => {
                if matches!(error, StoreError::Redis(_)) {
                    self.inner.primary.failed();
                }
                if !self.inner.down.swap(true, Ordering::Relaxed) {
                    tracing::warn!(
                        %error,
                        "shared store unreachable: client-credentials profiles fetch per replica, refresh-token profiles do not rotate"
                    );
                }
            }
        }
        result
    }
}

/// One profile's keys in the shared store.
#[derive(Debug, Clone)]
pub(crate) struct ProfileStore {
    store: SharedStore,
    token_key: String,
    lock_key: String,
    channel: String,
    chain_key: String,
    /// For a connection: its subject, sealed with the chain record.
    subject: Option<Arc<str>>,
}

/// A token as stored: what another replica needs to serve it and to refresh it at the
/// same time as everyone else.
#[derive(Serialize, Deserialize)]
struct StoredToken {
    access_token: String,
    token_type: String,
    scopes: Vec<String>,
    /// Milliseconds since the Unix epoch.
    issued_at: u64,
    expires_at: u64,
    refresh_at: u64,
}

impl Drop for StoredToken {
    fn drop(&mut self) {
        zeroize::Zeroize::zeroize(&mut self.access_token);
    }
}

/// A token read from the store.
pub(crate) struct SharedToken {
    pub(crate) issued: IssuedToken,
    refresh_at: SystemTime,
}

impl SharedToken {
    /// Whether it may be served instead of asking the provider: valid, and not yet due
    /// for refresh (a replica asking is one whose own copy is due, or unsuitable).
    fn usable(&self, now: SystemTime) -> bool {
        now < self.refresh_at && now < self.issued.expires_at
    }
}

fn millis(time: SystemTime) -> u64 {
    time.duration_since(UNIX_EPOCH)
        .map_or(0, |d| d.as_millis() as u64)
}

fn from_millis(ms: u64) -> SystemTime {
    UNIX_EPOCH + Duration::from_millis(ms)
}

impl ProfileStore {
    /// The current shared token, if there is one.
    async fn read_token(&self) -> Result<Option<SharedToken>, StoreError> {
        let result = async {
            let mut redis = self.store.connection().await?;
            let value: Option<String> = redis.get(&self.token_key).await?;
            Ok(value)
        }
        .await;
        let Some(value) = self.store.note(result)? else {
            return Ok(None);
        };
        let corrupt = |reason: String| StoreError::Corrupt {
            key: self.token_key.clone(),
            reason,
        };
        let plain = Zeroizing::new(
            self.store
                .inner
                .keys
                .open(&self.token_key, &value)
                .map_err(|e| corrupt(e.to_string()))?,
        );
        let stored: StoredToken =
            serde_json::from_slice(&plain).map_err(|_| corrupt("not a token record".into()))?;
        let issued_at = from_millis(stored.issued_at);
        let expires_at = from_millis(stored.expires_at);
        let refresh_at = from_millis(stored.refresh_at);
        let now = SystemTime::now();
        let lifetime = expires_at.duration_since(issued_at).unwrap_or_default();
        // Replicas that read the token refresh a little after the one that wrote it, so
        // that by then they usually find its successor already stored.
        let lag = (lifetime / 50)
            .min(Duration::from_secs(1))
            .mul_f64(fastrand::f64());
        let issued = IssuedToken {
            access_token: Secret::new(stored.access_token.as_str()),
            token_type: stored.token_type.clone(),
            lifetime,
            age: now.duration_since(issued_at).unwrap_or_default(),
            expires_at,
            refresh_in: Some(refresh_at.duration_since(issued_at).unwrap_or_default() + lag),
            scopes: stored.scopes.clone(),
            refresh_token: None,
            granted_scope: None,
        };
        Ok(Some(SharedToken { issued, refresh_at }))
    }

    /// Stores a token the provider just issued and tells waiting replicas. `refresh_in`
    /// is when every replica will consider it due.
    async fn write_token(
        &self,
        issued: &IssuedToken,
        refresh_in: Duration,
    ) -> Result<(), StoreError> {
        let now = SystemTime::now();
        let issued_at = issued
            .expires_at
            .checked_sub(issued.lifetime)
            .unwrap_or(now);
        let stored = StoredToken {
            access_token: issued.access_token.expose().to_owned(),
            token_type: issued.token_type.clone(),
            scopes: issued.scopes.clone(),
            issued_at: millis(issued_at),
            expires_at: millis(issued.expires_at),
            refresh_at: millis(issued_at + refresh_in),
        };
        let plain = Zeroizing::new(serde_json::to_vec(&stored).unwrap_or_default());
        let sealed = self.store.inner.keys.seal(&self.token_key, &plain);
        let ttl = issued.expires_at.duration_since(now).unwrap_or_default();
        if ttl.is_zero() {
            return Ok(());
        }
        let result = async {
            let mut redis = self.store.connection().await?;
            redis::pipe()
                .atomic()
                .cmd("SET")
                .arg(&self.token_key)
                .arg(sealed)
                .arg("PX")
                .arg(ttl.as_millis().max(1) as u64)
                .ignore()
                .cmd("PUBLISH")
                .arg(&self.channel)
                .arg("token")
                .ignore()
                .exec_async(&mut redis)
                .await?;
            Ok(())
        }
        .await;
        self.store.note(result)
    }

    /// Takes the profile's lock for `ttl`, returning its fencing value if this replica
    /// got it.
    async fn try_lock(&self, ttl: Duration) -> Result<Option<String>, StoreError> {
        let mut fence = [0u8; 16];
        getrandom::fill(&mut fence).unwrap_or_else(|_| fence.fill_with(|| fastrand::u8(..)));
        let fence: String = fence.iter().map(|b| format!("{b:02x}")).collect();
        let result = async {
            let mut redis = self.store.connection().await?;
            set_if_absent(&mut redis, &self.lock_key, &fence, ttl).await
        }
        .await;
        Ok(self.store.note(result)?.then_some(fence))
    }

    /// Releases the lock if this replica still holds it: a holder that outlived its lock
    /// must not delete the next holder's.
    async fn unlock(&self, fence: &str) -> Result<(), StoreError> {
        static UNLOCK: std::sync::LazyLock<redis::Script> = std::sync::LazyLock::new(|| {
            redis::Script::new(
                r"if redis.call('GET', KEYS[1]) == ARGV[1] then return redis.call('DEL', KEYS[1]) else return 0 end",
            )
        });
        let result = async {
            let mut redis = self.store.connection().await?;
            let _: i64 = UNLOCK
                .key(&self.lock_key)
                .arg(fence)
                .invoke_async(&mut redis)
                .await?;
            Ok(())
        }
        .await;
        self.store.note(result)
    }

    /// Waits until the lock holder publishes, the lock is gone, or `timeout` passes.
    async fn wait_for_update(&self, timeout: Duration) -> Result<(), StoreError> {
        let result = async {
            let client = self.store.inner.primary.connected().await?.client.clone();
            let mut pubsub = tokio::time::timeout(REDIS_TIMEOUT, client.get_async_pubsub())
                .await
                .map_err(|_| StoreError::Redis("timed out connecting".into()))??;
            pubsub.subscribe(&self.channel).await?;
            // Subscribed: from here no publication is missed. One may have come before,
            // in which case the holder has also released the lock.
            let mut redis = self.store.connection().await?;
            let held: bool = redis.exists(&self.lock_key).await?;
            if held {
                use futures::StreamExt as _;
                let mut messages = pubsub.on_message();
                let _ = tokio::time::timeout(timeout, messages.next()).await;
            }
            Ok(())
        }
        .await;
        self.store.note(result)
    }
}

/// `SET key value NX PX ttl`: whether this call set it (no one held the key).
async fn set_if_absent(
    redis: &mut ConnectionManager,
    key: &str,
    value: &str,
    ttl: Duration,
) -> Result<bool, StoreError> {
    let set: Option<String> = redis::cmd("SET")
        .arg(key)
        .arg(value)
        .arg("NX")
        .arg("PX")
        .arg(ttl.as_millis().max(1) as u64)
        .query_async(redis)
        .await?;
    Ok(set.is_some())
}
