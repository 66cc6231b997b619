//! The slots of a template profile's connections, one per subject.
//!
//! Each connection's slot is a slot like a profile's: its own token, single flight,
//! refresh ahead through the one refresher's timetable, and its own chain (durable
//! rotation by the chain rule). They are made at the first call for a subject and kept in
//! a bounded cache under the profile's own slot (`server.connections.max_cached`, least
//! recently used first, and dropped after `server.connections.idle` without a call): an
//! evicted connection loses only its cached access token, its chain stays stored. Tokens
//! are never shared across subjects. All connections of a profile share its
//! `idp_requests_per_minute`, as variants do.
//!
//! This is also the Rust API through which a person's authorization reaches a running
//! server ([`TokenCache::authorized`]) and through which connections are listed and
//! revoked.

use std::sync::{Arc, Mutex};

use super::{CacheState, Recent, Slot, SlotStatus, TokenCache};
use crate::{
    config::{Grant, Profile},
    connections::{ConnectionError, ConnectionStore, StoredConnection, check_subject},
    secret::Secret,
    source::TokenSource,
    store::PROFILE_ITSELF,
};

/// A template profile's connections in memory.
pub(super) struct ConnectionSlots {
    slots: moka::sync::Cache<Arc<str>, Arc<Slot>, foldhash::fast::RandomState>,
    /// The provider requests of all its connections in the last minute.
    recent: Arc<Mutex<Recent>>,
    /// The profile as refreshes send it, made once for all connections.
    refreshing: Arc<Profile>,
}

impl ConnectionSlots {
    /// Retires and drops every connection's slot (the profile was reloaded or removed).
    pub(super) fn retire_all(&self) {
        for (_, slot) in self.slots.iter() {
            slot.retire();
        }
        self.slots.invalidate_all();
    }

    fn forget(&self, subject: &str) {
        if let Some(slot) = self.slots.remove(subject) {
            slot.retire();
        }
    }
}

/// A connection as listed: what is stored, and how its slot stands if it is in memory.
#[derive(Debug, Clone)]
pub(crate) struct ConnectionStatus {
    /// What the store holds (never the token).
    pub stored: StoredConnection,
    /// The slot's status, or what the store says when it is not in memory: `Empty` (no
    /// token cached) or `Failed` when the provider refused its refresh token.
    pub status: SlotStatus,
}

impl Slot {
    /// The connections of this template profile now in memory, with their subjects.
    pub(super) fn connections_in_memory(&self) -> Vec<(Arc<str>, Arc<Slot>)> {
        self.connections
            .get()
            .map(|c| c.slots.iter().map(|(k, v)| (Arc::clone(&*k), v)).collect())
            .unwrap_or_default()
    }
}

impl TokenCache {
    fn connection_store(&self) -> Result<&ConnectionStore, ConnectionError> {
        self.connections.as_ref().ok_or_else(|| {
            ConnectionError::Invalid("server.connections.key is not configured".into())
        })
    }

    /// The template profile's own slot, checking that `profile` is a template.
    fn template(&self, profile: &str) -> Result<Arc<Slot>, ConnectionError> {
        let slot = self
            .slot(profile)
            .ok_or_else(|| ConnectionError::NoProfile(profile.to_owned()))?;
        if !slot.profile.template {
            return Err(ConnectionError::Invalid(format!(
                "profile `{profile}` is not a template (`template: true`): it has no connections"
            )));
        }
        Ok(slot)
    }

    /// The slot of the connection for `subject` of the template profile whose own slot is
    /// `root`: the one in memory, or a new one (which starts fetching at once). The
    /// subject must have been checked ([`check_subject`]).
    pub(crate) fn connection(
        &self,
        root: &Arc<Slot>,
        subject: &str,
    ) -> Result<Arc<Slot>, ConnectionError> {
        let store = self.connection_store()?;
        let connections = root.connections.get_or_init(|| {
            Box::new(ConnectionSlots {
                slots: moka::sync::Cache::builder()
                    .max_capacity(store.limits().max_cached)
                    .time_to_idle(store.limits().idle)
                    .build_with_hasher(foldhash::fast::RandomState::default()),
                recent: Arc::default(),
                refreshing: TokenSource::refreshing(&root.profile),
            })
        });
        // The common case, a connection in memory, allocates nothing.
        if let Some(slot) = connections.slots.get(subject) {
            return Ok(slot);
        }
        let subject: Arc<str> = subject.into();
        // One slot per subject however many callers ask at once: moka runs one init.
        Ok(connections.slots.get_with(subject.clone(), || {
            let name = &root.profile.name;
            let digest = store.digest(name, &subject);
            let (storage, shared) = store.storage(name, &subject, &digest);
            let source = root
                .source
                .connection(storage, shared, connections.refreshing.clone());
            let slot = Arc::new(Slot {
                family: Some(connections.recent.clone()),
                ..Slot::new(
                    root.profile.clone(),
                    source,
                    &self.stop,
                    self.wakes.clone(),
                    self.metrics.clone(),
                    root.counters.clone(),
                )
            });
            if root.is_retired() {
                slot.retire();
            }
            slot.reschedule();
            slot
        }))
    }

    /// Drops a connection's slot, if it is in memory: its cached token is no longer
    /// served, and the next call reads the chain from the store again.
    pub(crate) fn forget_connection(&self, profile: &str, subject: &str) {
        if let Some(slot) = self.slot(profile)
            && let Some(connections) = slot.connections.get()
        {
            connections.forget(subject);
        }
    }

    /// Stores the refresh token a person just authorized (the `authorization_code` grant's
    /// answer, by `/oauth/callback` or `tokenvend authorize`) for `profile`, or for the
    /// connection `subject` of a template profile, in the chain store the server reads,
    /// and has the live slot use it at once: a failing profile's backoff is cut short, and
    /// a connection's slot is made afresh and fetches a token straight away.
    ///
    /// `scope` is the scope the provider granted with it, if it said. The refresh token
    /// is never logged. Refused: an unknown profile, one that is not
    /// `grant: refresh_token`, a subject on a plain profile or none on a template, and a
    /// subject that is not 1–256 bytes of printable text.
    pub(crate) async fn authorized(
        &self,
        profile: &str,
        subject: Option<&str>,
        refresh_token: Secret,
        scope: Option<String>,
    ) -> Result<(), ConnectionError> {
        let slot = self
            .slot(profile)
            .ok_or_else(|| ConnectionError::NoProfile(profile.to_owned()))?;
        if slot.profile.grant != Grant::RefreshToken {
            return Err(ConnectionError::Invalid(format!(
                "profile `{profile}` uses `grant: {}`; only `refresh_token` profiles are authorized",
                slot.profile.grant.as_str()
            )));
        }
        match subject {
            None if slot.profile.template => Err(ConnectionError::Invalid(format!(
                "profile `{profile}` is a template: name the connection's `subject`"
            ))),
            None => {
                let chain = slot.source.chain().ok_or(ConnectionError::NoStorage)?;
                chain.start(&refresh_token, scope.as_deref()).await?;
                slot.reauthorized();
                tracing::info!(profile, "refresh token authorized and stored");
                // The other replicas read the same chain, but may be waiting out a backoff.
                if let Some(store) = &self.store
                    && let Err(error) = store.announce_authorized(profile).await
                {
                    tracing::warn!(profile, %error, "cannot tell the other replicas of the new authorization; they use it at their next attempt");
                }
                Ok(())
            }
            Some(_) if !slot.profile.template => Err(ConnectionError::Invalid(format!(
                "profile `{profile}` is not a template (`template: true`): it takes no `subject`"
            ))),
            Some(subject) => {
                check_subject(subject).map_err(|e| ConnectionError::Invalid(e.into()))?;
                let store = self.connection_store()?;
                store
                    .start(profile, subject, &refresh_token, scope.as_deref())
                    .await?;
                // The slot in memory may hold a token of the chain this one replaces.
                if let Some(connections) = slot.connections.get() {
                    connections.forget(subject);
                }
                self.connection(&slot, subject)?;
                tracing::info!(
                    profile,
                    connection = %store.digest(profile, subject),
                    "connection authorized and stored"
                );
                Ok(())
            }
        }
    }

    /// Imports a refresh token for a connection (`PutConnection`); refuses to overwrite a
    /// stored one unless `replace`.
    pub(crate) async fn put_connection(
        &self,
        profile: &str,
        subject: &str,
        refresh_token: Secret,
        scope: Option<String>,
        replace: bool,
    ) -> Result<(), ConnectionError> {
        self.template(profile)?;
        check_subject(subject).map_err(|e| ConnectionError::Invalid(e.into()))?;
        if !replace && self.connection_store()?.exists(profile, subject).await? {
            return Err(ConnectionError::Exists(profile.to_owned()));
        }
        self.authorized(profile, Some(subject), refresh_token, scope)
            .await
    }

    /// The name of a connection in the store and in logs (a keyed digest, never the
    /// subject); empty without a connections key.
    pub(crate) fn connection_digest(&self, profile: &str, subject: &str) -> String {
        self.connections
            .as_ref()
            .map(|store| store.digest(profile, subject))
            .unwrap_or_default()
    }

    /// Revokes a refresh token at the profile's provider (RFC 7009), best effort: whether
    /// the provider confirmed it. Failures are logged, without the token.
    pub(crate) async fn revoke_at_provider(&self, profile: &str, token: &Secret) -> bool {
        let Some(slot) = self.slot(profile) else {
            return false;
        };
        match slot.source.revoke(token).await {
            Ok(revoked) => revoked,
            Err(error) => {
                tracing::warn!(profile, %error, "cannot revoke the refresh token at the provider; it is deleted here");
                false
            }
        }
    }

    /// Deletes a connection: its chain leaves the store, every replica drops its slot
    /// (this one at once, the others through the shared store's channel), and the refresh
    /// token it held is returned, for revocation at the provider.
    pub(crate) async fn revoke_connection(
        &self,
        profile: &str,
        subject: &str,
    ) -> Result<Secret, ConnectionError> {
        let slot = self.template(profile)?;
        check_subject(subject).map_err(|e| ConnectionError::Invalid(e.into()))?;
        let removed = self.connection_store()?.remove(profile, subject).await;
        // Dropped whatever the store said: a slot must not outlive its revocation here.
        if let Some(connections) = slot.connections.get() {
            connections.forget(subject);
        }
        removed?.ok_or_else(|| ConnectionError::Missing(profile.to_owned()))
    }

    /// A page of a template profile's connections: up to `limit` after the cursor `after`,
    /// with each one's status, and the cursor of the next page (`None` on the last).
    pub(crate) async fn list_connections(
        &self,
        profile: &str,
        after: Option<&str>,
        limit: usize,
    ) -> Result<(Vec<ConnectionStatus>, Option<String>), ConnectionError> {
        let slot = self.template(profile)?;
        let (stored, next) = self.connection_store()?.list(profile, after, limit).await?;
        let in_memory = slot.connections.get();
        let page = stored
            .into_iter()
            .map(|stored| {
                let status = in_memory
                    .and_then(|c| c.slots.get(stored.subject.as_str()))
                    .map(|slot| slot.status())
                    .unwrap_or_else(|| stored_status(&stored));
                ConnectionStatus { stored, status }
            })
            .collect();
        Ok((page, next))
    }

    /// Every connection of a template profile with its status, for the admin page and
    /// notices: from memory for the connections there, from the store for the others.
    // The admin page and the notices call it; they merge after this.
    #[cfg_attr(not(test), allow(dead_code))]
    pub(crate) async fn connection_statuses(
        &self,
        profile: &str,
    ) -> Result<Vec<(String, SlotStatus)>, ConnectionError> {
        const PAGE: usize = 500;
        let mut all = Vec::new();
        let mut after: Option<String> = None;
        loop {
            let (page, next) = self
                .list_connections(profile, after.as_deref(), PAGE)
                .await?;
            all.extend(page.into_iter().map(|c| (c.stored.subject, c.status)));
            match next {
                Some(next) => after = Some(next),
                None => return Ok(all),
            }
        }
    }

    /// Follows revocations made by other replicas, until the cache stops: each drops the
    /// connection's slot here. While the channel is down, revocations may be missed, so
    /// every connection in memory is dropped when it comes back (each reads its chain
    /// again at its next call). Without a shared store there is nothing to follow.
    pub(crate) fn follow_revocations(self: &Arc<Self>) {
        let Some(store) = &self.store else {
            return;
        };
        let store = store.clone();
        let cache = Arc::downgrade(self);
        let lost = cache.clone();
        let stop = self.stop.clone();
        tokio::spawn(async move {
            store
                .watch_revocations(
                    stop,
                    move |profile, digest| {
                        let Some(cache) = cache.upgrade() else { return };
                        if digest == PROFILE_ITSELF {
                            if let Some(slot) = cache.slot(profile) {
                                slot.reauthorized();
                            }
                        } else {
                            cache.forget_digest(profile, digest);
                        }
                    },
                    move || {
                        if let Some(cache) = lost.upgrade() {
                            for slot in cache.slots.load().values() {
                                if let Some(connections) = slot.connections.get() {
                                    connections.retire_all();
                                }
                            }
                        }
                    },
                )
                .await;
        });
    }

    /// Drops the connection named `digest` from memory, if it is there.
    fn forget_digest(&self, profile: &str, digest: &str) {
        let (Some(store), Some(slot)) = (&self.connections, self.slot(profile)) else {
            return;
        };
        let Some(connections) = slot.connections.get() else {
            return;
        };
        // Subjects are kept, digests are not: a revocation is rare, hashing every
        // subject in memory (a few ms for thousands) is cheaper than a second map.
        let found = connections
            .slots
            .iter()
            .find(|(subject, _)| store.digest(profile, subject) == digest);
        if let Some((subject, _)) = found {
            connections.forget(&subject);
        }
    }
}

impl Slot {
    /// A person has just stored a new refresh token for this slot's chain: the next
    /// attempt is made now rather than after the backoff of the old chain's failures.
    pub(crate) fn reauthorized(self: &Arc<Self>) {
        let mut state = super::lock(&self.state);
        state.retry_at = None;
        state.failures = 0;
        drop(state);
        self.reschedule();
    }
}

/// The status of a connection not in memory, from its stored record.
fn stored_status(stored: &StoredConnection) -> SlotStatus {
    let (state, last_error) = if stored.refused {
        (
            CacheState::NeedsAuthorization,
            Some("the provider refused the stored refresh token: authorize it".to_owned()),
        )
    } else {
        (CacheState::Empty, None)
    };
    SlotStatus {
        state,
        expires_at: None,
        last_refresh: None,
        last_error,
        // Only a person can fix a refused refresh token. When the failures began is not
        // stored with the connection.
        needs_authorization: stored.refused,
        failing_since: None,
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::{config::Config, idp::IdpClient, metrics::Metrics, state::StateDir};

    #[tokio::test]
    async fn authorized_connections_are_listed_by_subject_and_plain_profiles_refuse_one() {
        let dir = tempfile::tempdir().unwrap();
        let key = base64::Engine::encode(&base64::engine::general_purpose::STANDARD, [9u8; 32]);
        // The provider is never reached (port 9 on loopback): only storage is under test.
        let config = Config::from_yaml(&format!(
            "server:\n  state_dir: {}\n  connections: {{ key: {{ value: \"{key}\" }} }}\nprofiles:\n  t:\n    token_url: http://127.0.0.1:9/token\n    grant: refresh_token\n    template: true\n    client_id: a\n    client_secret: {{ value: s }}\n    authorize_url: https://idp.example.com/auth\n    redirect_uri: https://app.example.com/cb\n  c:\n    token_url: http://127.0.0.1:9/token\n    client_id: a\n    client_secret: {{ value: s }}\n",
            dir.path().display()
        ))
        .unwrap();
        let state = StateDir::open(dir.path()).unwrap();
        let cache = TokenCache::with_store(
            &config.profiles,
            IdpClient::new(std::time::Duration::from_secs(1)).unwrap(),
            Some(&state),
            Metrics::new(&crate::metrics::Export::default()).unwrap(),
            None,
        )
        .with_connections(ConnectionStore::new(&config.server, None).unwrap());
        for subject in ["tenant-1", "tenant-2"] {
            cache
                .authorized("t", Some(subject), Secret::new("rt"), None)
                .await
                .unwrap();
        }
        let mut statuses = cache.connection_statuses("t").await.unwrap();
        statuses.sort_by(|a, b| a.0.cmp(&b.0));
        let subjects: Vec<_> = statuses.iter().map(|(s, _)| s.as_str()).collect();
        assert_eq!(subjects, ["tenant-1", "tenant-2"]);
        assert!(statuses.iter().all(|(_, s)| s.expires_at.is_none()));

        let refused =
            |r: Result<(), ConnectionError>| matches!(r, Err(ConnectionError::Invalid(_)));
        assert!(refused(
            cache.authorized("t", None, Secret::new("rt"), None).await
        ));
        assert!(refused(
            cache.authorized("c", None, Secret::new("rt"), None).await
        ));
        assert!(refused(
            cache
                .authorized("t", Some("bad\u{7}subject"), Secret::new("rt"), None)
                .await
        ));
        assert!(matches!(
            cache
                .authorized("nope", None, Secret::new("rt"), None)
                .await,
            Err(ConnectionError::NoProfile(_))
        ));
    }
}
