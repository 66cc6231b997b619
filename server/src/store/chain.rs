//! Refresh-token chains: in `state_dir` (one server), or in the shared store (replicas).
//!
//! In the store a chain is a hash `{version, value}`: `value` is the sealed record, and
//! `version` counts rotations. A rotation is a compare-and-set on the version (a Lua
//! script), so only a replica that read the current link can write the next one; the
//! profile's lock already makes one replica the rotator, and the version catches a holder
//! that outlived its lock. The rotated token is stored before the access token is used,
//! as in `state_dir`: the old refresh token is spent, and the new one is the only way on.

use serde::{Deserialize, Serialize};
use zeroize::Zeroizing;

use super::{ProfileStore, StoreError};
use crate::{
    secret::{Secret, SecretSource},
    state::{ChainError, Link, RefreshChain},
};

/// Where a profile's chain is kept.
#[derive(Debug)]
pub enum Chain {
    /// In `state_dir`.
    File(RefreshChain),
    /// In the shared store, seeded from the configuration when it holds nothing yet.
    Shared {
        /// The profile's keys.
        store: ProfileStore,
        /// The configured first refresh token.
        seed: Option<SecretSource>,
    },
}

/// The version of the link read, to rotate from (always 0 for a file).
#[derive(Debug, Clone, Copy)]
pub(crate) struct Version(u64);

#[derive(Serialize, Deserialize)]
struct Record {
    refresh_token: String,
    /// A fingerprint of the seed the chain grew from: a new seed takes over.
    seed: Option<String>,
    refused: bool,
    scope: Option<String>,
}

impl Drop for Record {
    fn drop(&mut self) {
        zeroize::Zeroize::zeroize(&mut self.refresh_token);
    }
}

impl Chain {
    /// The refresh token to use next, and the version to rotate from.
    pub(crate) async fn current(&self) -> Result<(Link, Version), ChainError> {
        match self {
            Self::File(chain) => chain.current().map(|link| (link, Version(0))),
            Self::Shared { store, seed } => {
                let seed = seed
                    .as_ref()
                    .map(|s| s.load().map_err(ChainError::Seed))
                    .transpose()?;
                let seed_print = seed.as_ref().map(fingerprint);
                let (version, record) = store.read_chain().await.map_err(unavailable)?;
                match record {
                    Some(record)
                        if record.seed.is_none()
                            || seed_print.is_none()
                            || record.seed == seed_print =>
                    {
                        if record.refused {
                            Err(ChainError::Refused)
                        } else {
                            let link = Link {
                                token: Secret::new(record.refresh_token.as_str()),
                                scope: record.scope.clone(),
                            };
                            Ok((link, Version(version)))
                        }
                    }
                    _ => seed
                        .map(|token| (Link { token, scope: None }, Version(version)))
                        .ok_or(ChainError::Missing),
                }
            }
        }
    }

    /// Stores the next link, if the chain is still at `from`.
    pub(crate) async fn rotate(
        &self,
        from: Version,
        token: &Secret,
        scope: Option<&str>,
    ) -> Result<(), ChainError> {
        match self {
            Self::File(chain) => chain.rotate(token, scope),
            Self::Shared { .. } => self.write(from, token, false, scope).await,
        }
    }

    /// Remembers that the provider refused `token`.
    pub(crate) async fn refuse(&self, from: Version, token: &Secret) -> Result<(), ChainError> {
        match self {
            Self::File(chain) => chain.refuse(token),
            Self::Shared { .. } => self.write(from, token, true, None).await,
        }
    }

    async fn write(
        &self,
        from: Version,
        token: &Secret,
        refused: bool,
        scope: Option<&str>,
    ) -> Result<(), ChainError> {
        let Self::Shared { store, seed } = self else {
            return Ok(());
        };
        let record = Record {
            refresh_token: token.expose().to_owned(),
            seed: seed
                .as_ref()
                .and_then(|s| s.load().ok())
                .map(|s| fingerprint(&s)),
            refused,
            scope: scope.map(str::to_owned),
        };
        // The provider has spent the old refresh token: this one is the only way on, so a
        // blip of Redis is worth a few tries before giving up on it.
        let mut tries = 0;
        loop {
            match store.write_chain(from.0, &record).await {
                Ok(true) => return Ok(()),
                Ok(false) => return Err(ChainError::Conflict),
                Err(error) if tries >= 4 => return Err(unavailable(error)),
                Err(_) => {
                    tries += 1;
                    tokio::time::sleep(std::time::Duration::from_millis(250)).await;
                }
            }
        }
    }
}

fn unavailable(error: StoreError) -> ChainError {
    ChainError::Store(error.to_string())
}

fn fingerprint(secret: &Secret) -> String {
    use sha2::Digest as _;
    let digest = sha2::Sha256::digest(secret.expose().as_bytes());
    digest[..16].iter().map(|b| format!("{b:02x}")).collect()
}

impl ProfileStore {
    async fn read_chain(&self) -> Result<(u64, Option<Record>), StoreError> {
        let result = async {
            let mut redis = self.store.connection().await?;
            let (version, value): (Option<u64>, Option<String>) = redis::cmd("HMGET")
                .arg(&self.chain_key)
                .arg("version")
                .arg("value")
                .query_async(&mut redis)
                .await?;
            Ok((version.unwrap_or(0), value))
        }
        .await;
        let (version, value) = self.store.note(result)?;
        let Some(value) = value else {
            return Ok((version, None));
        };
        let corrupt = |reason: String| StoreError::Corrupt {
            key: self.chain_key.clone(),
            reason,
        };
        let plain = Zeroizing::new(
            self.store
                .inner
                .keys
                .open(&self.chain_key, &value)
                .map_err(|e| corrupt(e.to_string()))?,
        );
        let record =
            serde_json::from_slice(&plain).map_err(|_| corrupt("not a chain record".into()))?;
        Ok((version, Some(record)))
    }

    /// Writes the record as version `from + 1` if the chain is at `from`; false if another
    /// replica moved it on.
    async fn write_chain(&self, from: u64, record: &Record) -> Result<bool, StoreError> {
        static ROTATE: std::sync::LazyLock<redis::Script> = std::sync::LazyLock::new(|| {
            redis::Script::new(
                r"local v = redis.call('HGET', KEYS[1], 'version') or '0'
                  if v ~= ARGV[1] then return 0 end
                  redis.call('HSET', KEYS[1], 'version', ARGV[2], 'value', ARGV[3])
                  return 1",
            )
        });
        let plain = Zeroizing::new(serde_json::to_vec(record).unwrap_or_default());
        let sealed = self.store.inner.keys.seal(&self.chain_key, &plain);
        let result = async {
            let mut redis = self.store.connection().await?;
            let written: i64 = ROTATE
                .key(&self.chain_key)
                .arg(from.to_string())
                .arg((from + 1).to_string())
                .arg(sealed)
                .invoke_async(&mut redis)
                .await?;
            Ok(written == 1)
        }
        .await;
        self.store.note(result)
    }
}
