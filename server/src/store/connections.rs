//! The connections of template profiles in the shared store: the index that lists them,
//! their removal, and the channel on which a revocation (or a new authorization) reaches
//! every replica.
//!
//! The index `tv:p:connections` is a sorted set of digests, all with score 0, so that
//! `ZRANGE … BYLEX` pages through it in digest order with the last digest as the cursor:
//! no scan of the whole keyspace, and a page costs the same at 10 or 100,000 connections.

use std::time::Duration;

use futures::StreamExt as _;
use tokio_util::sync::CancellationToken;

use super::{ProfileStore, REDIS_TIMEOUT, SharedStore, StoreError};

/// What the revocation channel names instead of a connection's digest when a person
/// authorized the profile itself.
pub(crate) const PROFILE_ITSELF: &str = "-";

impl SharedStore {
    fn index_key(&self, profile: &str) -> String {
        format!("{}:{profile}:connections", self.inner.prefix)
    }

    fn revoked_channel(&self) -> String {
        format!("{}:connections:revoked", self.inner.prefix)
    }

    /// Adds a connection to its profile's index (before its chain is written, so that a
    /// chain is never stored unlisted).
    pub(crate) async fn index_connection(
        &self,
        profile: &str,
        digest: &str,
    ) -> Result<(), StoreError> {
        let result = async {
            let mut redis = self.connection().await?;
            redis::cmd("ZADD")
                .arg(self.index_key(profile))
                .arg(0)
                .arg(digest)
                .exec_async(&mut redis)
                .await?;
            Ok(())
        }
        .await;
        self.note(result)
    }

    /// After a connection's chain was started anew: deletes the token shared from the
    /// chain it replaces, and tells every replica to drop its slot (as for a revocation),
    /// so that none serves a token of the old chain.
    pub(crate) async fn restart_connection(
        &self,
        profile: &str,
        digest: &str,
        keys: &ProfileStore,
    ) -> Result<(), StoreError> {
        let result = async {
            let mut redis = self.connection().await?;
            redis::pipe()
                .atomic()
                .cmd("DEL")
                .arg(&keys.token_key)
                .ignore()
                .cmd("PUBLISH")
                .arg(self.revoked_channel())
                .arg(format!("{profile} {digest} {}", self.inner.origin))
                .ignore()
                .exec_async(&mut redis)
                .await?;
            Ok(())
        }
        .await;
        self.note(result)
    }

    /// After a person authorized a (non-template) profile on this replica: tells the
    /// others, whose slots may be waiting out the backoff of the chain's failures, to try
    /// the new chain now. `-` stands where a connection's digest would (a digest is hex).
    pub(crate) async fn announce_authorized(&self, profile: &str) -> Result<(), StoreError> {
        let result = async {
            let mut redis = self.connection().await?;
            redis::cmd("PUBLISH")
                .arg(self.revoked_channel())
                .arg(format!("{profile} {PROFILE_ITSELF} {}", self.inner.origin))
                .exec_async(&mut redis)
                .await?;
            Ok(())
        }
        .await;
        self.note(result)
    }

    /// Up to `limit` digests of a profile's connections after `after`, in order.
    pub(crate) async fn connection_digests(
        &self,
        profile: &str,
        after: Option<&str>,
        limit: usize,
    ) -> Result<Vec<String>, StoreError> {
        let start = after.map_or_else(|| "-".to_owned(), |a| format!("({a}"));
        let result = async {
            let mut redis = self.connection().await?;
            let digests: Vec<String> = redis::cmd("ZRANGE")
                .arg(self.index_key(profile))
                .arg(start)
                .arg("+")
                .arg("BYLEX")
                .arg("LIMIT")
                .arg(0)
                .arg(limit)
                .query_async(&mut redis)
                .await?;
            Ok(digests)
        }
        .await;
        self.note(result)
    }

    /// Deletes a connection (its chain, its shared token, its index entry) and tells every
    /// replica to drop it; whether it had a chain. A rotation under way finds its chain
    /// gone, and its compare-and-set stores nothing.
    pub(crate) async fn remove_connection(
        &self,
        profile: &str,
        digest: &str,
        keys: &ProfileStore,
    ) -> Result<bool, StoreError> {
        let result = async {
            let mut redis = self.connection().await?;
            let (deleted,): (i64,) = redis::pipe()
                .atomic()
                .cmd("DEL")
                .arg(&keys.chain_key)
                .cmd("DEL")
                .arg(&keys.token_key)
                .ignore()
                .cmd("ZREM")
                .arg(self.index_key(profile))
                .arg(digest)
                .ignore()
                .cmd("PUBLISH")
                .arg(self.revoked_channel())
                .arg(format!("{profile} {digest} {}", self.inner.origin))
                .ignore()
                .query_async(&mut redis)
                .await?;
            Ok(deleted > 0)
        }
        .await;
        self.note(result)
    }

    /// Until `stop`: calls `revoked(profile, digest)` for each connection another replica
    /// revokes or authorizes anew (this server's own messages are skipped: it has acted
    /// already), and `lost()` whenever the subscription was down (revocations may have been
    /// missed then, so whatever the replica holds must be checked again).
    pub(crate) async fn watch_revocations(
        &self,
        stop: CancellationToken,
        revoked: impl Fn(&str, &str) + Send,
        lost: impl Fn() + Send,
    ) {
        let mut wait = Duration::from_millis(500);
        let mut first = true;
        loop {
            let subscribed = async {
                let client = self.inner.primary.connected().await?.client.clone();
                let mut pubsub = tokio::time::timeout(REDIS_TIMEOUT, client.get_async_pubsub())
                    .await
                    .map_err(|_| StoreError::Redis("timed out connecting".into()))??;
                pubsub.subscribe(self.revoked_channel()).await?;
                Ok::<_, StoreError>(pubsub)
            };
            let pubsub = tokio::select! {
                () = stop.cancelled() => return,
                subscribed = subscribed => subscribed,
            };
            match pubsub {
                Ok(mut pubsub) => {
                    if !first {
                        lost();
                    }
                    first = false;
                    wait = Duration::from_millis(500);
                    let mut messages = pubsub.on_message();
                    loop {
                        let message = tokio::select! {
                            () = stop.cancelled() => return,
                            message = messages.next() => message,
                        };
                        let Some(message) = message else { break };
                        let Ok(text) = message.get_payload::<String>() else {
                            continue;
                        };
                        let mut parts = text.split(' ');
                        if let (Some(profile), Some(digest), origin) =
                            (parts.next(), parts.next(), parts.next())
                            && origin != Some(self.inner.origin.as_str())
                        {
                            revoked(profile, digest);
                        }
                    }
                    tracing::debug!("the revocation channel closed; subscribing again");
                }
                Err(error) => {
                    first = false;
                    tracing::debug!(%error, "cannot subscribe to revocations; trying again");
                    tokio::select! {
                        () = stop.cancelled() => return,
                        () = tokio::time::sleep(wait) => {}
                    }
                    wait = (wait * 2).min(Duration::from_secs(30));
                }
            }
        }
    }
}
