//! Durable state: the newest refresh token of each `grant: refresh_token` profile, kept in
//! `server.state_dir` so that a restart never loses the only valid one.
//!
//! Each rotation is written to a temporary file, synced, and renamed over the old record
//! (then the directory is synced), so a crash leaves either the old record or the new one,
//! never a torn one. One server owns a state directory at a time: it holds an exclusive
//! lock on `<state_dir>/.lock`, because two servers rotating one refresh-token chain would
//! invalidate each other.

use std::{
    fs::{self, File, OpenOptions},
    io::{self, Write as _},
    os::unix::fs::{OpenOptionsExt as _, PermissionsExt as _},
    path::{Path, PathBuf},
    time::{SystemTime, UNIX_EPOCH},
};

use serde::{Deserialize, Serialize};
use sha2::{Digest as _, Sha256};

use crate::secret::{Secret, SecretSource};

/// Why the state directory cannot be used.
#[derive(Debug, thiserror::Error)]
pub enum StateError {
    /// Another process holds the lock.
    #[error(
        "state directory {0} is in use by another tokenvend; each server needs its own (refresh-token chains cannot be shared)"
    )]
    Locked(PathBuf),
    /// The directory or a file in it cannot be used.
    #[error("state directory {path}: {source}")]
    Io {
        /// The path.
        path: PathBuf,
        /// What failed.
        source: io::Error,
    },
}

/// An open, locked state directory. The lock is released when it is dropped.
#[derive(Debug)]
pub struct StateDir {
    dir: PathBuf,
    _lock: File,
}

impl StateDir {
    /// Creates (mode 0700) and locks the directory.
    pub fn open(dir: &Path) -> Result<Self, StateError> {
        let io_error = |source| StateError::Io {
            path: dir.to_owned(),
            source,
        };
        fs::create_dir_all(dir).map_err(io_error)?;
        fs::set_permissions(dir, fs::Permissions::from_mode(0o700)).map_err(io_error)?;
        let lock = OpenOptions::new()
            .create(true)
            .truncate(false)
            .write(true)
            .mode(0o600)
            .open(dir.join(".lock"))
            .map_err(io_error)?;
        match lock.try_lock() {
            Ok(()) => {}
            Err(fs::TryLockError::WouldBlock) => return Err(StateError::Locked(dir.to_owned())),
            Err(fs::TryLockError::Error(e)) => return Err(io_error(e)),
        }
        Ok(Self {
            dir: dir.to_owned(),
            _lock: lock,
        })
    }

    /// The directory.
    pub fn path(&self) -> &Path {
        &self.dir
    }
}

/// Why no refresh token can be used.
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
    Seed(crate::secret::SecretError),
    /// The shared store holding the chain cannot be reached.
    #[error("the shared store is unavailable: {0}")]
    Store(String),
    /// Another replica moved the chain on since this one read it.
    #[error("another replica rotated the refresh token first")]
    Conflict,
    /// The record could not be read or written.
    #[error("{path}: {source}")]
    Io {
        /// The record.
        path: PathBuf,
        /// What failed.
        source: io::Error,
    },
}

/// A refresh token and the scope the provider granted with it.
#[derive(Debug)]
pub struct Link {
    /// The refresh token.
    pub token: Secret,
    /// The granted scope, when the provider said; refreshes ask for exactly this, since
    /// asking for more than was granted is refused (RFC 6749 §6).
    pub scope: Option<String>,
}

/// The newest refresh token of one profile.
#[derive(Debug)]
pub struct RefreshChain {
    path: PathBuf,
    seed: Option<SecretSource>,
}

/// The file format of a chain record.
#[derive(Serialize, Deserialize)]
struct Record {
    refresh_token: String,
    /// A fingerprint of the configured seed this chain grew from, so that a new seed
    /// (after a re-authorization, say) takes over from a stale chain.
    seed: Option<String>,
    /// Set when the provider refused `refresh_token`: no request is made with it again.
    refused: bool,
    /// The scope granted with the chain.
    #[serde(default)]
    scope: Option<String>,
    updated_at: u64,
}

impl RefreshChain {
    /// The chain of `profile` in `dir`, which need not be locked (`tokenvend authorize`
    /// writes the first token while a server may run).
    pub fn new(dir: &Path, profile: &str, seed: Option<SecretSource>) -> Self {
        Self {
            path: dir.join(format!("{profile}.refresh.json")),
            seed,
        }
    }

    /// The refresh token to use next: the stored one, or the seed if nothing newer is
    /// stored for it.
    pub fn current(&self) -> Result<Link, ChainError> {
        let seed = self
            .seed
            .as_ref()
            .map(|s| s.load().map_err(ChainError::Seed))
            .transpose()?;
        let seed_print = seed.as_ref().map(fingerprint);
        match self.read()? {
            // The record wins unless it grew from another seed than the configured one.
            Some(record)
                if record.seed.is_none() || seed_print.is_none() || record.seed == seed_print =>
            {
                if record.refused {
                    Err(ChainError::Refused)
                } else {
                    Ok(Link {
                        token: Secret::new(record.refresh_token),
                        scope: record.scope,
                    })
                }
            }
            _ => seed
                .map(|token| Link { token, scope: None })
                .ok_or(ChainError::Missing),
        }
    }

    /// Stores a rotated refresh token durably, with the scope granted with it.
    pub fn rotate(&self, token: &Secret, scope: Option<&str>) -> Result<(), ChainError> {
        self.write(token, false, scope)
    }

    /// Stores a refresh token given by a person (`tokenvend authorize`); it starts a new
    /// chain, whatever the configured seed.
    pub fn start(&self, token: &Secret, scope: Option<&str>) -> Result<(), ChainError> {
        let record = Record {
            refresh_token: token.expose().to_owned(),
            seed: None,
            refused: false,
            scope: scope.map(str::to_owned),
            updated_at: now(),
        };
        self.write_record(&record)
    }

    /// Remembers that the provider refused `token`, so that it is never sent again.
    pub fn refuse(&self, token: &Secret) -> Result<(), ChainError> {
        self.write(token, true, None)
    }

    fn write(&self, token: &Secret, refused: bool, scope: Option<&str>) -> Result<(), ChainError> {
        // A chain started by `authorize` keeps no seed, so that a seed left in the
        // configuration does not take over from the newer chain.
        let seed = match self.read()? {
            Some(record) if record.seed.is_none() => None,
            _ => self
                .seed
                .as_ref()
                .and_then(|s| s.load().ok())
                .map(|s| fingerprint(&s)),
        };
        self.write_record(&Record {
            refresh_token: token.expose().to_owned(),
            seed,
            refused,
            scope: scope.map(str::to_owned),
            updated_at: now(),
        })
    }

    fn read(&self) -> Result<Option<Record>, ChainError> {
        match fs::read(&self.path) {
            Ok(bytes) => serde_json::from_slice(&bytes)
                .map(Some)
                .map_err(|e| ChainError::Io {
                    path: self.path.clone(),
                    source: io::Error::new(io::ErrorKind::InvalidData, e.to_string()),
                }),
            Err(e) if e.kind() == io::ErrorKind::NotFound => Ok(None),
            Err(source) => Err(ChainError::Io {
                path: self.path.clone(),
                source,
            }),
        }
    }

    /// Write, fsync, rename, fsync the directory: the record is either the old one or the
    /// new one after a crash at any point.
    fn write_record(&self, record: &Record) -> Result<(), ChainError> {
        let io_error = |source| ChainError::Io {
            path: self.path.clone(),
            source,
        };
        let bytes = serde_json::to_vec(record)
            .map_err(|e| io_error(io::Error::new(io::ErrorKind::InvalidData, e.to_string())))?;
        let temporary = self.path.with_extension("json.tmp");
        let mut file = OpenOptions::new()
            .create(true)
            .truncate(true)
            .write(true)
            .mode(0o600)
            .open(&temporary)
            .map_err(io_error)?;
        file.write_all(&bytes).map_err(io_error)?;
        file.sync_all().map_err(io_error)?;
        drop(file);
        fs::rename(&temporary, &self.path).map_err(io_error)?;
        if let Some(dir) = self.path.parent() {
            File::open(dir)
                .and_then(|d| d.sync_all())
                .map_err(io_error)?;
        }
        Ok(())
    }
}

fn fingerprint(secret: &Secret) -> String {
    let digest = Sha256::digest(secret.expose().as_bytes());
    digest[..16].iter().map(|b| format!("{b:02x}")).collect()
}

fn now() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .unwrap_or_default()
        .as_secs()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_second_server_cannot_open_a_locked_directory() {
        let dir = tempfile::tempdir().unwrap();
        let first = StateDir::open(dir.path()).unwrap();
        assert!(matches!(
            StateDir::open(dir.path()),
            Err(StateError::Locked(_))
        ));
        drop(first);
        StateDir::open(dir.path()).unwrap();
    }

    #[test]
    fn rotation_survives_reopening_and_a_new_seed_takes_over() {
        let dir = tempfile::tempdir().unwrap();
        let seed = |v: &str| Some(SecretSource::Value(Secret::new(v)));
        let chain = RefreshChain::new(dir.path(), "p", seed("seed-1"));
        assert_eq!(chain.current().unwrap().token.expose(), "seed-1");
        chain.rotate(&Secret::new("rt-2"), Some("read")).unwrap();

        let reopened = RefreshChain::new(dir.path(), "p", seed("seed-1"));
        let link = reopened.current().unwrap();
        assert_eq!(link.token.expose(), "rt-2");
        assert_eq!(link.scope.as_deref(), Some("read"));
        let mode = fs::metadata(dir.path().join("p.refresh.json"))
            .unwrap()
            .permissions()
            .mode();
        assert_eq!(mode & 0o777, 0o600);

        let reseeded = RefreshChain::new(dir.path(), "p", seed("seed-2"));
        assert_eq!(reseeded.current().unwrap().token.expose(), "seed-2");
    }

    #[test]
    fn a_refused_token_is_never_offered_again() {
        let dir = tempfile::tempdir().unwrap();
        let chain = RefreshChain::new(dir.path(), "p", Some(SecretSource::Value(Secret::new("s"))));
        chain.refuse(&Secret::new("s")).unwrap();
        assert!(matches!(chain.current(), Err(ChainError::Refused)));

        // `tokenvend authorize` starts a new chain.
        chain.start(&Secret::new("fresh"), None).unwrap();
        assert_eq!(chain.current().unwrap().token.expose(), "fresh");
        chain.rotate(&Secret::new("fresh-2"), None).unwrap();
        assert_eq!(chain.current().unwrap().token.expose(), "fresh-2");
    }
}
