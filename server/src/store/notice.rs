//! Claims that make one replica the sender of a webhook notice (see `crate::notice`).
//!
//! Keys, under the prefix `tv`: `tv:notice:<what>` — held by the replica that sends the
//! notice `<what>` names, for as long as its episode can last; the value says nothing.

use std::time::Duration;

use super::{SharedStore, StoreError};

impl SharedStore {
    /// The key of a notice claim.
    pub(crate) fn notice_key(&self, what: &str) -> String {
        format!("{}:notice:{what}", self.inner.prefix)
    }

    /// Takes every one of `keys` for `ttl` if none of them is taken yet, in one step:
    /// whether this replica got them.
    pub(crate) async fn claim(&self, keys: &[String], ttl: Duration) -> Result<bool, StoreError> {
        static CLAIM: std::sync::LazyLock<redis::Script> = std::sync::LazyLock::new(|| {
            redis::Script::new(
                r"for _, key in ipairs(KEYS) do
                    if redis.call('EXISTS', key) == 1 then return 0 end
                  end
                  for _, key in ipairs(KEYS) do
                    redis.call('SET', key, '1', 'PX', ARGV[1])
                  end
                  return 1",
            )
        });
        let result = async {
            let mut redis = self.connection().await?;
            let mut invocation = CLAIM.prepare_invoke();
            for key in keys {
                invocation.key(key);
            }
            let claimed: i64 = invocation
                .arg(ttl.as_millis().max(1) as u64)
                .invoke_async(&mut redis)
                .await?;
            Ok(claimed == 1)
        }
        .await;
        self.note(result)
    }

    /// How many times a profile's refresh-token chain has been written (0 before the
    /// first write): every replica reads the same number until a person authorizes again
    /// or a refresh token is refused.
    pub(crate) async fn chain_version(&self, profile: &str) -> Result<u64, StoreError> {
        let key = format!("{}:{profile}:chain", self.inner.prefix);
        let result = async {
            let mut redis = self.connection().await?;
            let version: Option<u64> = redis::cmd("HGET")
                .arg(&key)
                .arg("version")
                .query_async(&mut redis)
                .await?;
            Ok(version.unwrap_or(0))
        }
        .await;
        self.note(result)
    }
}
