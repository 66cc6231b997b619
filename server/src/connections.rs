//! Connections: the per-subject refresh-token chains of a `template: true` profile.
//!
//! A template profile is one client at one provider whose end users (tenants, customers,
//! people) each authorize it once; each authorization is a connection, named by the
//! subject the product gives it. A connection's chain is kept like a profile's (see
//! [`crate::chain`]), in `state_dir` or the shared store, with two differences:
//!
//! - it is named by a keyed digest of (profile, subject), HMAC-SHA-256 under a key derived
//!   from `server.connections.key`, so that no file or Redis key name shows a subject;
//! - its record is sealed with the subject inside it (AES-256-GCM: in `state_dir` under a
//!   key derived from `server.connections.key`, in Redis under the store's own keys), so
//!   that neither the refresh token nor the subject is readable at rest, while a listing
//!   can still name each connection's subject.
//!
//! Serving is the cache's ([`crate::cache`]): each connection has a slot of its own,
//! made when first asked for and kept in a bounded cache per template profile.

use std::{
    path::{Path, PathBuf},
    sync::Arc,
    time::SystemTime,
};

use hmac::{Hmac, Mac as _};
use sha2::Sha256;

use crate::{
    chain::{ChainError, FileError, FileStore, Record, RefreshChain},
    config::{ConnectionsConfig, ServerConfig},
    source::Storage,
    store::{KeyError, Keyring, ProfileStore, SharedStore, StoreError, decode_key},
};

/// The longest subject, in bytes.
pub(crate) const MAX_SUBJECT_BYTES: usize = 256;

/// Whether `subject` can name a connection: 1–256 bytes of printable text, no control
/// characters (it is shown on the admin page and in listings).
pub(crate) fn check_subject(subject: &str) -> Result<(), &'static str> {
    if subject.is_empty() {
        return Err("`subject` is empty");
    }
    if subject.len() > MAX_SUBJECT_BYTES {
        return Err("`subject` is longer than 256 bytes");
    }
    if subject.chars().any(char::is_control) {
        return Err("`subject` holds a control character");
    }
    Ok(())
}

/// Why a connection cannot be stored, read or removed. Never carries a token or a subject.
#[derive(Debug, thiserror::Error)]
pub enum ConnectionError {
    /// No such profile.
    #[error("no profile named `{0}`")]
    NoProfile(String),
    /// The profile does not take what was asked (a subject on a plain profile, none on a
    /// template, a profile that does not use refresh tokens).
    #[error("{0}")]
    Invalid(String),
    /// The connection exists and the caller did not ask to replace it.
    #[error(
        "profile `{0}` already has a connection for this subject (give `replace` to overwrite it)"
    )]
    Exists(String),
    /// There is no connection for this subject.
    #[error("profile `{0}` has no connection for this subject")]
    Missing(String),
    /// The chain cannot be read or stored.
    #[error(transparent)]
    Chain(#[from] ChainError),
    /// The connections key cannot be used.
    #[error("server.connections.key: {0}")]
    Key(String),
    /// Neither `state_dir` nor a shared store is configured.
    #[error("server.state_dir or server.store is required")]
    NoStorage,
}

impl From<StoreError> for ConnectionError {
    fn from(error: StoreError) -> Self {
        Self::Chain(error.into())
    }
}

impl From<FileError> for ConnectionError {
    fn from(error: FileError) -> Self {
        Self::Chain(error.into())
    }
}

/// Where connections are kept, and the keys that name and seal them. Cheap to clone.
#[derive(Clone)]
pub(crate) struct ConnectionStore {
    inner: Arc<Inner>,
}

struct Inner {
    /// Keys the digest that names a connection.
    names: Hmac<Sha256>,
    /// Seals records in `state_dir` (the shared store seals with its own keys).
    seal: Arc<Keyring>,
    where_: Where,
    /// How many connections of one profile are kept in memory, and for how long unused.
    pub(crate) limits: ConnectionsConfig,
}

enum Where {
    Dir(PathBuf),
    Shared(SharedStore),
}

impl std::fmt::Debug for ConnectionStore {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ConnectionStore").finish_non_exhaustive()
    }
}

/// A connection as stored, for listings: never its token.
#[derive(Debug, Clone)]
pub(crate) struct StoredConnection {
    /// The subject.
    pub subject: String,
    /// When a person authorized it, if known.
    pub created_at: Option<SystemTime>,
    /// When its chain was last written (authorized or rotated).
    pub updated_at: Option<SystemTime>,
    /// Whether the provider refused its refresh token: it needs authorizing again.
    pub refused: bool,
}

impl ConnectionStore {
    /// The store for a server with this configuration, if it has a connections key.
    /// `store` is the shared store the server uses, if any: connections go where the
    /// server's chains go.
    pub(crate) fn new(
        server: &ServerConfig,
        store: Option<&SharedStore>,
    ) -> Result<Option<Self>, ConnectionError> {
        let Some(key) = &server.connections.key else {
            return Ok(None);
        };
        let key = decode_key(key).map_err(|e| ConnectionError::Key(e.to_string()))?;
        // Two keys from one: the digest and the seal never share key material.
        let derive = |label: &[u8]| {
            let mut mac = <Hmac<Sha256> as hmac::Mac>::new_from_slice(&key[..])
                .unwrap_or_else(|_| unreachable!("HMAC takes keys of any length"));
            mac.update(label);
            let bytes: [u8; 32] = mac.finalize().into_bytes().into();
            zeroize::Zeroizing::new(bytes)
        };
        let names =
            <Hmac<Sha256> as hmac::Mac>::new_from_slice(&derive(b"tokenvend connection names")[..])
                .unwrap_or_else(|_| unreachable!("HMAC takes keys of any length"));
        let seal = Arc::new(Keyring::single(
            "connections",
            &derive(b"tokenvend connection records"),
        ));
        let where_ = match (store, &server.state_dir) {
            (Some(store), _) => Where::Shared(store.clone()),
            (None, Some(dir)) => Where::Dir(dir.join("connections")),
            (None, None) => return Err(ConnectionError::NoStorage),
        };
        Ok(Some(Self {
            inner: Arc::new(Inner {
                names,
                seal,
                where_,
                limits: server.connections.clone(),
            }),
        }))
    }

    /// The configured bounds of the in-memory connections.
    pub(crate) fn limits(&self) -> &ConnectionsConfig {
        &self.inner.limits
    }

    /// The name of a connection in the store: a keyed digest, 32 hex digits.
    pub(crate) fn digest(&self, profile: &str, subject: &str) -> String {
        let mut mac = self.inner.names.clone();
        mac.update(profile.as_bytes());
        mac.update(&[0]);
        mac.update(subject.as_bytes());
        let digest = mac.finalize().into_bytes();
        digest[..16].iter().map(|b| format!("{b:02x}")).collect()
    }

    /// Where a connection's chain is kept, and (with a shared store) the keys through
    /// which replicas share its token and single flight.
    pub(crate) fn storage(
        &self,
        profile: &str,
        subject: &Arc<str>,
        digest: &str,
    ) -> (Storage, Option<ProfileStore>) {
        match &self.inner.where_ {
            Where::Dir(dir) => (
                Storage::Dir(self.file(dir, profile, digest, subject.clone())),
                None,
            ),
            Where::Shared(store) => {
                let keys = store.connection_keys(profile, digest, subject.clone());
                (Storage::Shared(keys.clone()), Some(keys))
            }
        }
    }

    fn file(&self, dir: &Path, profile: &str, digest: &str, subject: Arc<str>) -> FileStore {
        FileStore::sealed(
            &dir.join(profile),
            digest,
            self.inner.seal.clone(),
            format!("connections/{profile}/{digest}"),
            subject,
        )
    }

    /// The chain a person's authorization starts, for `(profile, subject)`.
    pub(crate) fn chain(&self, profile: &str, subject: &str) -> RefreshChain<Storage> {
        let subject: Arc<str> = subject.into();
        let digest = self.digest(profile, &subject);
        RefreshChain::new(self.storage(profile, &subject, &digest).0, None)
    }

    /// Whether a chain is stored for `(profile, subject)`.
    pub(crate) async fn exists(
        &self,
        profile: &str,
        subject: &str,
    ) -> Result<bool, ConnectionError> {
        let digest = self.digest(profile, subject);
        Ok(self.read(profile, &digest).await?.is_some())
    }

    /// Stores a refresh token a person just authorized as the start of the connection's
    /// chain, whatever was stored before.
    pub(crate) async fn start(
        &self,
        profile: &str,
        subject: &str,
        refresh_token: &crate::secret::Secret,
        scope: Option<&str>,
    ) -> Result<(), ConnectionError> {
        let digest = self.digest(profile, subject);
        if let Where::Shared(store) = &self.inner.where_ {
            // Listed first: a chain is never stored where no listing finds it.
            store.index_connection(profile, &digest).await?;
        }
        self.chain(profile, subject)
            .start(refresh_token, scope)
            .await?;
        if let Where::Shared(store) = &self.inner.where_ {
            let keys = store.connection_keys(profile, &digest, subject.into());
            if let Err(error) = store.restart_connection(profile, &digest, &keys).await {
                // The chain is stored; other replicas use it at their next refresh.
                tracing::warn!(profile, connection = %digest, %error, "cannot tell other replicas of a new authorization");
            }
        }
        Ok(())
    }

    /// The stored connection named `digest`, if any.
    async fn read(
        &self,
        profile: &str,
        digest: &str,
    ) -> Result<Option<(String, Record)>, ConnectionError> {
        let found = match &self.inner.where_ {
            Where::Dir(dir) => {
                self.file(dir, profile, digest, "".into())
                    .read_connection()?
                    .1
            }
            Where::Shared(store) => {
                store
                    .connection_keys(profile, digest, "".into())
                    .read_connection()
                    .await?
                    .1
            }
        };
        Ok(found)
    }

    /// Up to `limit` connections of a profile after the digest `after`, in digest order,
    /// and the cursor of the next page (`None` on the last). A record that cannot be
    /// opened (written under another key) is skipped and logged, so a page may hold
    /// fewer than `limit` with more to come.
    pub(crate) async fn list(
        &self,
        profile: &str,
        after: Option<&str>,
        limit: usize,
    ) -> Result<(Vec<StoredConnection>, Option<String>), ConnectionError> {
        let digests = match &self.inner.where_ {
            Where::Dir(dir) => list_dir(&dir.join(profile), after, limit)?,
            Where::Shared(store) => store.connection_digests(profile, after, limit).await?,
        };
        let next = (digests.len() == limit)
            .then(|| digests.last().cloned())
            .flatten();
        let mut found = Vec::with_capacity(digests.len());
        for digest in digests {
            match self.read(profile, &digest).await {
                Ok(Some((subject, record))) => found.push(StoredConnection {
                    subject,
                    created_at: record.started_at(),
                    updated_at: record.updated_at(),
                    refused: record.refused(),
                }),
                // Listed, then revoked before it was read.
                Ok(None) => {}
                Err(error) => {
                    tracing::warn!(profile, connection = %digest, %error, "cannot read a stored connection; it is left out of the listing");
                }
            }
        }
        Ok((found, next))
    }

    /// Deletes a connection's chain (and, with a shared store, tells every replica);
    /// the refresh token it held, if any, so that it can be revoked at the provider.
    pub(crate) async fn remove(
        &self,
        profile: &str,
        subject: &str,
    ) -> Result<Option<crate::secret::Secret>, ConnectionError> {
        let digest = self.digest(profile, subject);
        let token = self
            .read(profile, &digest)
            .await?
            .map(|(_, record)| record.into_token());
        let removed = match &self.inner.where_ {
            Where::Dir(dir) => self.file(dir, profile, &digest, subject.into()).remove()?,
            Where::Shared(store) => {
                let keys = store.connection_keys(profile, &digest, subject.into());
                store.remove_connection(profile, &digest, &keys).await?
            }
        };
        Ok(if removed { token } else { None })
    }
}

/// Digests of the connection records in a profile's directory, sorted, after `after`.
fn list_dir(dir: &Path, after: Option<&str>, limit: usize) -> Result<Vec<String>, FileError> {
    let entries = match std::fs::read_dir(dir) {
        Ok(entries) => entries,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(Vec::new()),
        Err(source) => {
            return Err(FileError::Io {
                path: dir.to_owned(),
                source,
            });
        }
    };
    let mut digests: Vec<String> = entries
        .filter_map(Result::ok)
        .filter_map(|entry| {
            let name = entry.file_name().into_string().ok()?;
            let digest = name.strip_suffix(".refresh.json")?;
            (digest.len() == 32 && digest.bytes().all(|b| b.is_ascii_hexdigit()))
                .then(|| digest.to_owned())
        })
        .filter(|digest| after.is_none_or(|after| digest.as_str() > after))
        .collect();
    digests.sort_unstable();
    digests.truncate(limit);
    Ok(digests)
}

impl From<KeyError> for ConnectionError {
    fn from(error: KeyError) -> Self {
        Self::Key(error.to_string())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn store(dir: &Path) -> ConnectionStore {
        let key = base64::Engine::encode(&base64::engine::general_purpose::STANDARD, [7u8; 32]);
        let config = crate::config::Config::from_yaml(&format!(
            "server:\n  state_dir: {}\n  connections: {{ key: {{ value: \"{key}\" }} }}\nprofiles:\n  p:\n    token_url: https://idp.example.com/token\n    grant: refresh_token\n    template: true\n    client_id: a\n    client_secret: {{ value: s }}\n    authorize_url: https://idp.example.com/auth\n    redirect_uri: https://app.example.com/cb\n",
            dir.display()
        ))
        .unwrap();
        ConnectionStore::new(&config.server, None).unwrap().unwrap()
    }

    #[tokio::test]
    async fn state_dir_connections_are_sealed_listed_and_removed() {
        let dir = tempfile::tempdir().unwrap();
        let store = store(dir.path());
        let subject = "customer-one@example.com";
        assert!(!store.exists("p", subject).await.unwrap());
        store
            .start(
                "p",
                subject,
                &crate::secret::Secret::new("rt-secret-1"),
                Some("read"),
            )
            .await
            .unwrap();
        store
            .start(
                "p",
                "customer-two",
                &crate::secret::Secret::new("rt-secret-2"),
                None,
            )
            .await
            .unwrap();
        assert!(store.exists("p", subject).await.unwrap());
        // Neither the token nor the subject is readable from the directory.
        for entry in walk(dir.path()) {
            let text = String::from_utf8_lossy(&std::fs::read(&entry).unwrap()).into_owned();
            let name = entry.display().to_string();
            for clear in ["rt-secret", "customer-", "example.com"] {
                assert!(!text.contains(clear), "{name} holds {clear}");
                assert!(!name.contains(clear), "{name} names {clear}");
            }
        }
        let (listed, next) = store.list("p", None, 10).await.unwrap();
        assert_eq!(next, None);
        let mut subjects: Vec<_> = listed.iter().map(|c| c.subject.as_str()).collect();
        subjects.sort_unstable();
        assert_eq!(subjects, ["customer-one@example.com", "customer-two"]);
        assert!(listed.iter().all(|c| c.created_at.is_some() && !c.refused));
        // Paged by digest.
        let (first, next) = store.list("p", None, 1).await.unwrap();
        assert_eq!(next.as_deref().map(str::len), Some(32));
        let (second, last) = store.list("p", next.as_deref(), 1).await.unwrap();
        assert_eq!(second.len(), 1);
        assert_ne!(first[0].subject, second[0].subject);
        assert!(
            store
                .list("p", last.as_deref(), 1)
                .await
                .unwrap()
                .0
                .is_empty()
        );

        let token = store.remove("p", subject).await.unwrap().unwrap();
        assert_eq!(token.expose(), "rt-secret-1");
        assert!(!store.exists("p", subject).await.unwrap());
        assert!(store.remove("p", subject).await.unwrap().is_none());
        assert_eq!(store.list("p", None, 10).await.unwrap().0.len(), 1);
    }

    #[test]
    fn digests_are_keyed_and_per_profile() {
        let dir = tempfile::tempdir().unwrap();
        let store = store(dir.path());
        let digest = store.digest("p", "s");
        assert_eq!(digest.len(), 32);
        assert_eq!(digest, store.digest("p", "s"));
        assert_ne!(digest, store.digest("q", "s"));
        assert_ne!(digest, store.digest("p", "t"));
        // Not a plain hash of the subject: without the key it cannot be recomputed.
        let plain: String = <Sha256 as sha2::Digest>::digest(b"p\0s")[..16]
            .iter()
            .map(|b| format!("{b:02x}"))
            .collect();
        assert_ne!(digest, plain);
    }

    fn walk(dir: &Path) -> Vec<PathBuf> {
        let mut files = Vec::new();
        for entry in std::fs::read_dir(dir).unwrap() {
            let path = entry.unwrap().path();
            if path.is_dir() {
                files.extend(walk(&path));
            } else {
                files.push(path);
            }
        }
        files
    }

    #[test]
    fn subjects_are_printable_and_bounded() {
        assert!(check_subject("tenant-42").is_ok());
        assert!(check_subject("Zoë Müller <zoe@example.com>").is_ok());
        assert!(check_subject(&"x".repeat(256)).is_ok());
        assert!(check_subject("").is_err());
        assert!(check_subject(&"x".repeat(257)).is_err());
        assert!(check_subject("a\nb").is_err());
        assert!(check_subject("a\u{7f}b").is_err());
        assert!(check_subject("a\0b").is_err());
    }
}
