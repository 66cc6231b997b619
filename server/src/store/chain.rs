//! The shared store as a [`ChainStore`]: where replicas keep a refresh-token chain.
//!
//! A chain is a hash `{version, value}`: `value` is the sealed [`Record`], and `version`
//! counts writes. A write is a compare-and-set on the version (a Lua script), so only a
//! replica that read the current link can write the next one; the profile's lock already
//! makes one replica the rotator, and the version catches a holder that outlived its lock.
//!
//! With `replicas_to_ack`, a write is followed by `WAIT` on the same connection: Redis
//! replicates asynchronously, and a link that only the primary holds is lost if the
//! primary fails before passing it on, after the provider has spent the link before it.
//! A write too few replicas acknowledged is taken back (if nothing overwrote it since)
//! and reported as failed, so that the chain's rule keeps the link in memory and writes it
//! again, instead of leaving a link on the primary that the rule believes unwritten.

use redis::aio::ConnectionManager;
use zeroize::Zeroizing;

use super::{Acks, ProfileStore, StoreError};
use crate::chain::{Cas, ChainError, ChainStore, Envelope, OwnedEnvelope, Record, Version};

impl From<StoreError> for ChainError {
    fn from(error: StoreError) -> Self {
        Self::Store(Box::new(error))
    }
}

impl ChainStore for ProfileStore {
    type Error = StoreError;

    async fn read(&self) -> Result<(Version, Option<Record>), StoreError> {
        // Boxed: inline, the fetch's future nests deeper than the compiler's layout limit.
        let (version, found) = Box::pin(self.read_connection()).await?;
        Ok((version, found.map(|(_, record)| record)))
    }

    async fn write(&self, from: Version, record: &Record) -> Result<Cas, StoreError> {
        let plain = match &self.subject {
            None => serde_json::to_vec(record),
            Some(subject) => serde_json::to_vec(&Envelope { subject, record }),
        };
        let plain = Zeroizing::new(plain.map_err(|_| StoreError::Corrupt {
            key: self.chain_key.clone(),
            reason: "cannot encode the chain record".into(),
        })?);
        Box::pin(self.write_sealed(from, &plain)).await
    }
}

impl ProfileStore {
    /// The chain record, with its subject if this is a connection's (an empty subject
    /// for a profile's).
    pub(crate) async fn read_connection(
        &self,
    ) -> Result<(Version, Option<(String, Record)>), StoreError> {
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
        let found = if self.subject.is_some() {
            let envelope: OwnedEnvelope = serde_json::from_slice(&plain)
                .map_err(|_| corrupt("not a connection record".into()))?;
            (envelope.subject, envelope.record)
        } else {
            let record =
                serde_json::from_slice(&plain).map_err(|_| corrupt("not a chain record".into()))?;
            (String::new(), record)
        };
        Ok((Version(version), Some(found)))
    }

    async fn write_sealed(&self, from: Version, plain: &[u8]) -> Result<Cas, StoreError> {
        static WRITE: std::sync::LazyLock<redis::Script> = std::sync::LazyLock::new(|| {
            redis::Script::new(
                r"local v = redis.call('HGET', KEYS[1], 'version') or '0'
                  if v ~= ARGV[1] then return 0 end
                  redis.call('HSET', KEYS[1], 'version', ARGV[2], 'value', ARGV[3])
                  return 1",
            )
        });
        let sealed = self.store.inner.keys.seal(&self.chain_key, plain);
        if let Some(acks) = self.store.inner.acks {
            let result = self.write_acknowledged(from, &sealed, acks).await;
            return self.store.note(result);
        }
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

/// The compare-and-set of [`ChainStore::write`], answering also the value it replaced, so
/// that a write the replicas did not acknowledge can be taken back.
const WRITE_KEEPING_PREVIOUS: &str = r"local v = redis.call('HGET', KEYS[1], 'version') or '0'
if v ~= ARGV[1] then return {0, false} end
local previous = redis.call('HGET', KEYS[1], 'value')
redis.call('HSET', KEYS[1], 'version', ARGV[2], 'value', ARGV[3])
return {1, previous}";

/// Restores the chain to the version and value before a write, if the chain still holds
/// exactly that write (the sealed value is unique: a fresh nonce each time).
const TAKE_BACK: &str = r"if redis.call('HGET', KEYS[1], 'version') ~= ARGV[1] then return 0 end
if redis.call('HGET', KEYS[1], 'value') ~= ARGV[2] then return 0 end
if ARGV[4] == '' then redis.call('HDEL', KEYS[1], 'value') else redis.call('HSET', KEYS[1], 'value', ARGV[4]) end
redis.call('HSET', KEYS[1], 'version', ARGV[3])
return 1";

impl ProfileStore {
    /// A compare-and-set that counts only once `acks.replicas` replicas have it.
    ///
    /// The script and `WAIT` go in one pipeline, on one connection: `WAIT` waits for the
    /// replication of that connection's writes, and a reconnect between the two would
    /// make it wait for nothing. A conflict waits too: the link in the way may be this
    /// replica's own earlier write whose answer was lost, which the rule then accepts as
    /// stored; it must be on the replicas before it is.
    async fn write_acknowledged(
        &self,
        from: Version,
        sealed: &str,
        acks: Acks,
    ) -> Result<Cas, StoreError> {
        let connected = self.store.inner.primary.connected().await?;
        let mut redis = connected.durable(acks.timeout).await?;
        let next = from.next().0.to_string();
        let ((written, previous), acked): ((i64, Option<String>), i64) = redis::pipe()
            .cmd("EVAL")
            .arg(WRITE_KEEPING_PREVIOUS)
            .arg(1)
            .arg(&self.chain_key)
            .arg(from.0.to_string())
            .arg(&next)
            .arg(sealed)
            .cmd("WAIT")
            .arg(acks.replicas)
            .arg(acks.timeout.as_millis().max(1) as u64)
            .query_async(&mut redis)
            .await?;
        let acked = u32::try_from(acked).unwrap_or(0);
        if acked >= acks.replicas {
            return Ok(if written == 1 {
                Cas::Written
            } else {
                Cas::Conflict
            });
        }
        if written == 1 {
            self.take_back(&mut redis, &next, sealed, from, previous.as_deref())
                .await;
        }
        Err(StoreError::NotReplicated {
            acked,
            wanted: acks.replicas,
        })
    }

    /// Takes back a write the replicas did not acknowledge. If this fails the write stays
    /// on the primary, where the rule's next write from the same link finds it in the way
    /// and reads it as another writer's.
    async fn take_back(
        &self,
        redis: &mut ConnectionManager,
        written: &str,
        sealed: &str,
        from: Version,
        previous: Option<&str>,
    ) {
        let result: redis::RedisResult<i64> = redis::cmd("EVAL")
            .arg(TAKE_BACK)
            .arg(1)
            .arg(&self.chain_key)
            .arg(written)
            .arg(sealed)
            .arg(from.0.to_string())
            .arg(previous.unwrap_or(""))
            .query_async(redis)
            .await;
        if let Err(error) = result {
            tracing::warn!(key = %self.chain_key, %error, "cannot take back a chain write the replicas did not acknowledge");
        }
    }

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
