//! Refresh-token chains: which refresh token a `grant: refresh_token` profile sends next,
//! and how the rotated one is kept, written once over two stores: [`FileStore`] in
//! `state_dir` (one server) and the shared store's [`ProfileStore`] (replicas).
//!
//! The rule:
//! - the stored link wins over the configured seed, unless it grew from another seed than
//!   the configured one: a new seed (put in after a re-authorization, say) takes over
//!   from a stale chain;
//! - a chain started by `tokenvend authorize` carries no seed, and neither does any link
//!   rotated from it, so that a seed left in the configuration never takes over from it;
//! - a refused token is never offered again.
//!
//! Every write is a compare-and-set on the version the link was read at, so a writer that
//! read an older link (a replica that outlived its lock, a slot retired by a reload, a
//! rotation racing `tokenvend authorize`) cannot overwrite a newer one. A rotated token is
//! stored before the access token is handed out: the provider has spent the old refresh
//! token, so the new one is the only way on, and a write that fails is retried rather than
//! dropped.

mod file;
#[cfg(test)]
mod tests;

use std::{
    fmt,
    time::{Duration, SystemTime, UNIX_EPOCH},
};

use serde::{Deserialize, Serialize};
use sha2::{Digest as _, Sha256};

pub(crate) use file::{FileError, FileStore};

use crate::secret::{Secret, SecretError, SecretSource};

/// How many times a write is tried before its error is returned.
const WRITE_TRIES: u32 = 5;
/// The pause between tries: long enough for a Redis failover or a reconnect.
const RETRY_DELAY: Duration = Duration::from_millis(250);

/// Why no refresh token can be used, or the next one cannot be stored.
#[derive(Debug, thiserror::Error)]
pub enum ChainError {
    /// There is no refresh token yet.
    #[error("there is no refresh token yet: set `refresh_token` or run `tokenvend authorize`")]
    Missing,
    /// The provider refused the stored refresh token.
    #[error("the stored refresh token was refused by the provider")]
    Refused,
    /// The seed could not be read.
    #[error("refresh_token: {0}")]
    Seed(SecretError),
    /// The chain moved on since it was read.
    #[error(
        "the chain moved on since it was read (another replica or `tokenvend authorize` wrote it)"
    )]
    Conflict,
    /// The record in `state_dir` cannot be read or written.
    #[error(transparent)]
    File(#[from] FileError),
    /// The shared store cannot be used. Its own error, kept whole: the chain sits below
    /// the store in the module graph, so it holds the error without naming its type.
    #[error("shared store: {0}")]
    Store(Box<dyn std::error::Error + Send + Sync>),
}

/// A store holding one profile's chain record.
pub(crate) trait ChainStore: Send + Sync {
    /// What the store fails with.
    type Error: Into<ChainError>;

    /// The stored record, if any, and the version it is at (a store that never held one
    /// is at the default version).
    fn read(&self) -> impl Future<Output = Result<(Version, Option<Record>), Self::Error>> + Send;

    /// Stores `record` as the version after `from`, if the store is still at `from`.
    fn write(
        &self,
        from: Version,
        record: &Record,
    ) -> impl Future<Output = Result<Cas, Self::Error>> + Send;
}

/// How many times a chain has been written. A write names the version it follows.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub(crate) struct Version(pub u64);

impl Version {
    /// The version a write from this one stores.
    pub(crate) fn next(self) -> Self {
        Self(self.0 + 1)
    }
}

/// What a compare-and-set write did.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Cas {
    /// The record is stored.
    Written,
    /// The store was no longer at the version written from; nothing changed.
    Conflict,
}

/// One link of a chain as stored. Both stores keep this JSON: `state_dir` as a file,
/// the shared store sealed. It has no `Debug`: it holds a refresh token.
#[derive(Serialize, Deserialize)]
pub(crate) struct Record {
    refresh_token: String,
    /// A fingerprint of the configured seed this chain grew from; none for a chain started
    /// by `tokenvend authorize`.
    seed: Option<String>,
    /// Set when the provider refused `refresh_token`.
    refused: bool,
    /// The scope granted with the chain.
    #[serde(default)]
    scope: Option<String>,
    /// Seconds since the Unix epoch; records in the shared store written before it was
    /// kept there lack it.
    #[serde(default)]
    updated_at: u64,
    /// When a person started this chain (seconds since the Unix epoch), carried through
    /// its rotations; zero when unknown (a seeded chain, or one written before this was
    /// kept).
    #[serde(default)]
    started_at: u64,
}

impl Drop for Record {
    fn drop(&mut self) {
        zeroize::Zeroize::zeroize(&mut self.refresh_token);
    }
}

impl Record {
    fn new(
        token: &Secret,
        seed: Option<String>,
        refused: bool,
        scope: Option<&str>,
        started_at: u64,
    ) -> Self {
        Self {
            refresh_token: token.expose().to_owned(),
            seed,
            refused,
            scope: scope.map(str::to_owned),
            updated_at: now_secs(),
            started_at,
        }
    }

    /// Whether this record wins over a seed with this fingerprint.
    fn outranks(&self, seed: Option<&str>) -> bool {
        match (&self.seed, seed) {
            (Some(grown_from), Some(configured)) => grown_from == configured,
            _ => true,
        }
    }

    /// Whether `other` holds the same link (a write whose answer was lost may have landed).
    fn same_link(&self, other: &Self) -> bool {
        self.refresh_token == other.refresh_token
            && self.refused == other.refused
            && self.seed == other.seed
            && self.scope == other.scope
    }
}

/// A connection's stored value: its subject, so that connections can be listed, sealed
/// together with its record.
#[derive(Serialize)]
pub(crate) struct Envelope<'a> {
    pub(crate) subject: &'a str,
    pub(crate) record: &'a Record,
}

/// [`Envelope`] as read back.
#[derive(Deserialize)]
pub(crate) struct OwnedEnvelope {
    pub(crate) subject: String,
    pub(crate) record: Record,
}

impl Record {
    /// Whether the provider refused this record's refresh token.
    pub(crate) fn refused(&self) -> bool {
        self.refused
    }

    /// The refresh token, taken out (for revocation at the provider).
    pub(crate) fn into_token(mut self) -> Secret {
        Secret::new(std::mem::take(&mut self.refresh_token))
    }

    /// When the record was written.
    pub(crate) fn updated_at(&self) -> Option<SystemTime> {
        (self.updated_at > 0).then(|| UNIX_EPOCH + Duration::from_secs(self.updated_at))
    }

    /// When a person started the chain this record belongs to, if it says.
    pub(crate) fn started_at(&self) -> Option<SystemTime> {
        (self.started_at > 0).then(|| UNIX_EPOCH + Duration::from_secs(self.started_at))
    }
}

/// A refresh token and the scope the provider granted with it, as read from a chain.
#[derive(Debug, Clone)]
pub(crate) struct Link {
    /// The refresh token.
    pub token: Secret,
    /// The granted scope, when the provider said; refreshes ask for exactly this, since
    /// asking for more than was granted is refused (RFC 6749 §6).
    pub scope: Option<String>,
    at: Position,
}

impl Link {
    /// Whether `other` is this link: the same token, read at the same place.
    pub(crate) fn same(&self, other: &Self) -> bool {
        self.at.version == other.at.version && self.token == other.token
    }

    /// The link the provider rotated `spent` into, not yet stored: it takes `spent`'s place
    /// in the chain, so that it (or the link it rotates into) is written from where `spent`
    /// was read.
    pub(crate) fn rotated(spent: Self, token: Secret, scope: Option<String>) -> Self {
        Self {
            token,
            scope,
            at: spent.at,
        }
    }
}

/// Where a link was read: what the next record is written from.
#[derive(Clone)]
struct Position {
    version: Version,
    /// The seed fingerprint the next record carries.
    seed: Option<String>,
    /// When the chain was started, carried into the next record.
    started_at: u64,
}

impl fmt::Debug for Position {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Position")
            .field("version", &self.version.0)
            .finish_non_exhaustive()
    }
}

/// The newest refresh token of one profile, in a store, with the configured seed to start
/// from (or to take over with).
#[derive(Debug)]
pub(crate) struct RefreshChain<S> {
    store: S,
    seed: Option<SecretSource>,
}

impl<S: ChainStore> RefreshChain<S> {
    /// The chain kept in `store`, seeded by `seed`.
    pub(crate) fn new(store: S, seed: Option<SecretSource>) -> Self {
        Self { store, seed }
    }

    /// The refresh token to send next: the stored one, or the seed if nothing that grew
    /// from it is stored.
    pub(crate) async fn current(&self) -> Result<Link, ChainError> {
        let seed = self
            .seed
            .as_ref()
            .map(|s| s.load().map_err(ChainError::Seed))
            .transpose()?;
        let seed_print = seed.as_ref().map(fingerprint);
        let (version, record) = self.store.read().await.map_err(Into::into)?;
        match record {
            Some(mut record) if record.outranks(seed_print.as_deref()) => {
                if record.refused {
                    return Err(ChainError::Refused);
                }
                // A chain started by `authorize` stays seedless as it rotates.
                let seed = record.seed.is_some().then_some(seed_print).flatten();
                Ok(Link {
                    token: Secret::new(std::mem::take(&mut record.refresh_token)),
                    scope: record.scope.take(),
                    at: Position {
                        version,
                        seed,
                        started_at: record.started_at,
                    },
                })
            }
            _ => seed
                .map(|token| Link {
                    token,
                    scope: None,
                    at: Position {
                        version,
                        seed: seed_print,
                        started_at: 0,
                    },
                })
                .ok_or(ChainError::Missing),
        }
    }

    /// Stores the refresh token the provider rotated `from` into, with the scope granted
    /// with it; [`ChainError::Conflict`] if the chain moved on since `from` was read.
    pub(crate) async fn rotate(
        &self,
        from: &Link,
        token: &Secret,
        scope: Option<&str>,
    ) -> Result<(), ChainError> {
        let record = Record::new(
            token,
            from.at.seed.clone(),
            false,
            scope,
            from.at.started_at,
        );
        self.write(Some(from.at.version), &record).await
    }

    /// Stores `link` itself as the record after the one it replaces: a rotated link kept in
    /// memory because its first write failed.
    pub(crate) async fn persist(&self, link: &Link) -> Result<(), ChainError> {
        let record = Record::new(
            &link.token,
            link.at.seed.clone(),
            false,
            link.scope.as_deref(),
            link.at.started_at,
        );
        self.write(Some(link.at.version), &record).await
    }

    /// Remembers that the provider refused `link`, so that it is never sent again.
    pub(crate) async fn refuse(&self, link: &Link) -> Result<(), ChainError> {
        let record = Record::new(
            &link.token,
            link.at.seed.clone(),
            true,
            None,
            link.at.started_at,
        );
        self.write(Some(link.at.version), &record).await
    }

    /// Stores a refresh token given by a person (`tokenvend authorize`): it starts a new
    /// chain, whatever is stored and whatever the configured seed.
    pub(crate) async fn start(
        &self,
        token: &Secret,
        scope: Option<&str>,
    ) -> Result<(), ChainError> {
        self.write(None, &Record::new(token, None, false, scope, now_secs()))
            .await
    }

    /// Writes `record` from version `from`, or from whatever is stored if `None`. Store
    /// errors are retried: the record may hold the only copy of a refresh token.
    async fn write(&self, from: Option<Version>, record: &Record) -> Result<(), ChainError> {
        let mut tries = 0;
        let mut failed = false;
        loop {
            tries += 1;
            let attempt = async {
                let version = match from {
                    Some(version) => version,
                    None => self.store.read().await.map_err(Into::into)?.0,
                };
                let cas = self
                    .store
                    .write(version, record)
                    .await
                    .map_err(Into::into)?;
                Ok::<_, ChainError>((version, cas))
            }
            .await;
            match attempt {
                Ok((_, Cas::Written)) => return Ok(()),
                // The failed try may have been stored with only its answer lost.
                Ok((version, Cas::Conflict))
                    if failed && self.holds(version.next(), record).await =>
                {
                    return Ok(());
                }
                // A person's authorization replaces whatever a rotation just stored.
                Ok((_, Cas::Conflict)) if from.is_none() && tries < WRITE_TRIES => {}
                Ok((_, Cas::Conflict)) => return Err(ChainError::Conflict),
                Err(error) if tries >= WRITE_TRIES => return Err(error),
                Err(error) => {
                    tracing::warn!(%error, tries, "cannot store the refresh-token chain; trying again");
                    failed = true;
                    tokio::time::sleep(RETRY_DELAY).await;
                }
            }
        }
    }

    /// Whether the store is at `version` holding `record`.
    async fn holds(&self, version: Version, record: &Record) -> bool {
        matches!(
            self.store.read().await,
            Ok((at, Some(stored))) if at == version && stored.same_link(record)
        )
    }
}

fn now_secs() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .unwrap_or_default()
        .as_secs()
}

/// A fingerprint of a seed: enough to tell seeds apart, not to recover one.
fn fingerprint(secret: &Secret) -> String {
    let digest = Sha256::digest(secret.expose().as_bytes());
    digest[..16].iter().map(|b| format!("{b:02x}")).collect()
}
