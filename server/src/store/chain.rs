//! The shared store as a [`ChainStore`]: where replicas keep a refresh-token chain.
//!
//! A chain is a hash `{version, value}`: `value` is the sealed [`Record`], and `version`
//! counts writes. A write is a compare-and-set on the version (a Lua script), so only a
//! replica that read the current link can write the next one; the profile's lock already
//! makes one replica the rotator, and the version catches a holder that outlived its lock.

use zeroize::Zeroizing;

use super::{ProfileStore, StoreError};
use crate::chain::{Cas, ChainError, ChainStore, Record, Version};

impl From<StoreError> for ChainError {
    fn from(error: StoreError) -> Self {
        Self::Store(Box::new(error))
    }
}

impl ChainStore for ProfileStore {
    type Error = StoreError;

    async fn read(&self) -> Result<(Version, Option<Record>), StoreError> {
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
            return Ok((Version(version), None));
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
        Ok((Version(version), Some(record)))
    }

    async fn write(&self, from: Version, record: &Record) -> Result<Cas, StoreError> {
        static WRITE: std::sync::LazyLock<redis::Script> = std::sync::LazyLock::new(|| {
            redis::Script::new(
                r"local v = redis.call('HGET', KEYS[1], 'version') or '0'
                  if v ~= ARGV[1] then return 0 end
                  redis.call('HSET', KEYS[1], 'version', ARGV[2], 'value', ARGV[3])
                  return 1",
            )
        });
        let plain =
            Zeroizing::new(serde_json::to_vec(record).map_err(|_| StoreError::Corrupt {
                key: self.chain_key.clone(),
                reason: "cannot encode the chain record".into(),
            })?);
        let sealed = self.store.inner.keys.seal(&self.chain_key, &plain);
        let result = async {
            let mut redis = self.store.connection().await?;
            let written: i64 = WRITE
                .key(&self.chain_key)
                .arg(from.0.to_string())
                .arg(from.next().0.to_string())
                .arg(sealed)
                .invoke_async(&mut redis)
                .await?;
            Ok(if written == 1 {
                Cas::Written
            } else {
                Cas::Conflict
            })
        }
        .await;
        self.store.note(result)
    }
}

impl ProfileStore {
    /// Stores `plaintext` sealed as the chain at `version`, as an older tokenvend would
    /// have written it.
    #[cfg(test)]
    pub(crate) async fn plant_chain(
        &self,
        version: u64,
        plaintext: &[u8],
    ) -> Result<(), StoreError> {
        let sealed = self.store.inner.keys.seal(&self.chain_key, plaintext);
        let mut redis = self.store.connection().await?;
        redis::cmd("HSET")
            .arg(&self.chain_key)
            .arg("version")
            .arg(version)
            .arg("value")
            .arg(sealed)
            .exec_async(&mut redis)
            .await?;
        Ok(())
    }
}
