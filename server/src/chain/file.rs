//! A chain kept in `state_dir`: `<profile>.refresh.json`, the record with its version.
//!
//! A write is made to a temporary file, synced, and renamed over the old record (then the
//! directory is synced), so a crash leaves either the old record or the new one, never a
//! torn one. The version is compared and the file replaced under `<profile>.refresh.lock`:
//! the server holds `state_dir` alone, but `tokenvend authorize`, and a slot retired by a
//! reload that is still finishing its rotation, write the same record.
//!
//! A connection's record (a template profile's, one per subject) is kept under
//! `connections/<profile>/<digest>.refresh.json`, sealed with the connections key: the
//! file holds its version and `sealed`, the subject and the record encrypted together, so
//! that neither the refresh token nor the subject can be read from the directory.

use std::{
    fs::{self, File, OpenOptions},
    io::{self, Write as _},
    os::unix::fs::{DirBuilderExt as _, OpenOptionsExt as _},
    path::{Path, PathBuf},
};

use std::sync::Arc;

use serde::{Deserialize, Serialize};
use zeroize::Zeroizing;

use super::{Cas, ChainStore, Envelope, OwnedEnvelope, Record, Version};
use crate::{bounded, crypto::Keyring};

/// Why a record in `state_dir` cannot be used. Never carries the record's content.
#[derive(Debug, thiserror::Error)]
pub enum FileError {
    /// The file cannot be read or written.
    #[error("{path}: {source}")]
    Io {
        /// The file.
        path: PathBuf,
        /// What failed.
        source: io::Error,
    },
    /// The file is not a chain record (edited by hand, or not written by tokenvend).
    #[error(
        "{path}: not a refresh-token record (line {line}, column {column}); remove it and run `tokenvend authorize`"
    )]
    Corrupt {
        /// The file.
        path: PathBuf,
        /// Where reading it failed.
        line: usize,
        /// Where reading it failed.
        column: usize,
    },
    /// A sealed record does not open with the configured key (another key, or altered).
    #[error("{path}: {reason}; is `server.connections.key` the key it was written with?")]
    Sealed {
        /// The file.
        path: PathBuf,
        /// Why.
        reason: String,
    },
}

/// One profile's chain record in `state_dir`.
#[derive(Debug, Clone)]
pub(crate) struct FileStore {
    path: PathBuf,
    lock: PathBuf,
    /// For a connection: how its record is sealed. Boxed: profiles have none.
    sealing: Option<Box<Sealing>>,
}

/// How a connection's record is sealed: the key, the name bound in as associated data (so
/// a file copied over another connection's does not open), and the subject sealed with it.
#[derive(Clone)]
pub(crate) struct Sealing {
    keys: Arc<Keyring>,
    name: String,
    subject: Arc<str>,
}

impl std::fmt::Debug for Sealing {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Sealing")
            .field("name", &self.name)
            .finish_non_exhaustive()
    }
}

/// A sealed record on disk.
#[derive(Serialize, Deserialize)]
struct SealedOnDisk {
    sealed: String,
    version: u64,
}

/// The file: the record and its version. Records written before versions were kept have
/// none, and read as the default version.
#[derive(Serialize, Deserialize)]
struct OnDisk<R> {
    #[serde(flatten)]
    record: R,
    #[serde(default)]
    version: u64,
}

impl FileStore {
    /// The chain of `profile` in `dir`, which need not be locked: `tokenvend authorize`
    /// writes the first link while a server may run.
    pub(crate) fn new(dir: &Path, profile: &str) -> Self {
        Self {
            path: dir.join(format!("{profile}.refresh.json")),
            lock: dir.join(format!("{profile}.refresh.lock")),
            sealing: None,
        }
    }

    /// The sealed record of a connection, `<dir>/<digest>.refresh.json`; `name` is bound
    /// into the seal, and `subject` sealed with the record.
    pub(crate) fn sealed(
        dir: &Path,
        digest: &str,
        keys: Arc<Keyring>,
        name: String,
        subject: Arc<str>,
    ) -> Self {
        Self {
            sealing: Some(Box::new(Sealing {
                keys,
                name,
                subject,
            })),
            ..Self::new(dir, digest)
        }
    }

    /// The stored record with the subject sealed in it, if this is a connection's.
    pub(crate) fn read_connection(&self) -> Result<(Version, Option<(String, Record)>), FileError> {
        let Some(sealing) = &self.sealing else {
            return Ok((Version::default(), None));
        };
        read_sealed(&self.path, sealing)
    }

    /// Removes the record; whether there was one. A rotation under way finds the chain
    /// moved on (its compare-and-set fails) and stores nothing.
    pub(crate) fn remove(&self) -> Result<bool, FileError> {
        let removed = match fs::remove_file(&self.path) {
            Ok(()) => true,
            Err(e) if e.kind() == io::ErrorKind::NotFound => false,
            Err(e) => return Err(self.io_error(e)),
        };
        let _ = fs::remove_file(&self.lock);
        Ok(removed)
    }
}

impl FileStore {
    /// Makes sure a record can be written here: creates the directory if it is missing and
    /// writes and removes the record's temporary file. `tokenvend authorize` asks this before
    /// sending anyone to the provider, so that an approval is never wasted on a directory
    /// that cannot keep its answer.
    pub(crate) fn probe(&self) -> Result<(), FileError> {
        if let Some(dir) = self.path.parent() {
            fs::DirBuilder::new()
                .recursive(true)
                .mode(0o700)
                .create(dir)
                .map_err(|e| self.io_error(e))?;
        }
        let temporary = self.path.with_extension("json.tmp");
        let written = OpenOptions::new()
            .create(true)
            .truncate(true)
            .write(true)
            .mode(0o600)
            .open(&temporary)
            .and_then(|mut file| {
                file.write_all(b"{}")?;
                file.sync_all()
            });
        let removed = fs::remove_file(&temporary);
        written.and(removed).map_err(|source| FileError::Io {
            path: temporary,
            source,
        })
    }
}

impl ChainStore for FileStore {
    type Error = FileError;

    // Read in place: a record is a few hundred bytes, cheaper to read than to hand to a
    // thread.
    async fn read(&self) -> Result<(Version, Option<Record>), FileError> {
        match &self.sealing {
            None => read(&self.path),
            Some(sealing) => {
                let (version, found) = read_sealed(&self.path, sealing)?;
                Ok((version, found.map(|(_, record)| record)))
            }
        }
    }

    // Two fsyncs and perhaps a wait for the lock: done on a blocking thread, not on a
    // worker that serves callers.
    async fn write(&self, from: Version, record: &Record) -> Result<Cas, FileError> {
        let bytes = match &self.sealing {
            None => serde_json::to_vec(&OnDisk {
                record,
                version: from.next().0,
            }),
            Some(sealing) => serde_json::to_vec(&Envelope {
                subject: &sealing.subject,
                record,
            })
            .map(Zeroizing::new)
            .and_then(|plain| {
                serde_json::to_vec(&SealedOnDisk {
                    sealed: sealing.keys.seal(&sealing.name, &plain),
                    version: from.next().0,
                })
            }),
        }
        .map(Zeroizing::new)
        .map_err(|e| self.io_error(io::Error::other(e)))?;
        let (path, lock) = (self.path.clone(), self.lock.clone());
        let sealing = self.sealing.clone();
        tokio::task::spawn_blocking(move || {
            if let Some(dir) = path.parent().filter(|_| sealing.is_some()) {
                // A profile's first connection makes its directory.
                fs::DirBuilder::new()
                    .recursive(true)
                    .mode(0o700)
                    .create(dir)
                    .map_err(|source| FileError::Io {
                        path: dir.to_owned(),
                        source,
                    })?;
            }
            write_if_at(&path, &lock, from, &bytes, sealing.as_deref())
        })
        .await
        .map_err(|e| self.io_error(io::Error::other(e)))?
    }
}

impl FileStore {
    fn io_error(&self, source: io::Error) -> FileError {
        FileError::Io {
            path: self.path.clone(),
            source,
        }
    }
}

fn read(path: &Path) -> Result<(Version, Option<Record>), FileError> {
    let Some(bytes) = read_bytes(path)? else {
        return Ok((Version::default(), None));
    };
    // serde_json's messages may quote the offending value; only its position is kept.
    let on_disk: OnDisk<Record> =
        serde_json::from_slice(&bytes).map_err(|e| FileError::Corrupt {
            path: path.to_owned(),
            line: e.line(),
            column: e.column(),
        })?;
    Ok((Version(on_disk.version), Some(on_disk.record)))
}

fn read_sealed(
    path: &Path,
    sealing: &Sealing,
) -> Result<(Version, Option<(String, Record)>), FileError> {
    let Some(bytes) = read_bytes(path)? else {
        return Ok((Version::default(), None));
    };
    let on_disk: SealedOnDisk = serde_json::from_slice(&bytes).map_err(|e| FileError::Corrupt {
        path: path.to_owned(),
        line: e.line(),
        column: e.column(),
    })?;
    let plain = Zeroizing::new(
        sealing
            .keys
            .open(&sealing.name, &on_disk.sealed)
            .map_err(|e| FileError::Sealed {
                path: path.to_owned(),
                reason: e.to_string(),
            })?,
    );
    let envelope: OwnedEnvelope =
        serde_json::from_slice(&plain).map_err(|e| FileError::Corrupt {
            path: path.to_owned(),
            line: e.line(),
            column: e.column(),
        })?;
    Ok((
        Version(on_disk.version),
        Some((envelope.subject, envelope.record)),
    ))
}

/// The file's bytes, or `None` if there is none.
fn read_bytes(path: &Path) -> Result<Option<Zeroizing<Vec<u8>>>, FileError> {
    // Bounded: a record is a few hundred bytes, and whatever else sits at its path is not
    // one.
    let bytes = match bounded::read(path, bounded::SECRET_BYTES) {
        Ok(bytes) => Zeroizing::new(bytes),
        Err(e) if e.kind() == io::ErrorKind::NotFound => return Ok(None),
        Err(e) => {
            return Err(FileError::Io {
                path: path.to_owned(),
                source: match e {
                    bounded::ReadError::Io(source) => source,
                    too_large => io::Error::new(too_large.kind(), too_large.to_string()),
                },
            });
        }
    };
    Ok(Some(bytes))
}

/// Replaces the record with `bytes` if it is still at `from`: write, fsync, rename, fsync
/// the directory, so that after a crash at any point the record is the old one or the new.
fn write_if_at(
    path: &Path,
    lock: &Path,
    from: Version,
    bytes: &[u8],
    sealing: Option<&Sealing>,
) -> Result<Cas, FileError> {
    let io_error = |source| FileError::Io {
        path: path.to_owned(),
        source,
    };
    let lock = OpenOptions::new()
        .create(true)
        .truncate(false)
        .write(true)
        .mode(0o600)
        .open(lock)
        .map_err(io_error)?;
    // Released when `lock` is dropped, on every return below.
    lock.lock().map_err(io_error)?;
    let at = match sealing {
        None => read(path)?.0,
        Some(sealing) => read_sealed(path, sealing)?.0,
    };
    if at != from {
        return Ok(Cas::Conflict);
    }
    let temporary = path.with_extension("json.tmp");
    let mut file = OpenOptions::new()
        .create(true)
        .truncate(true)
        .write(true)
        .mode(0o600)
        .open(&temporary)
        .map_err(io_error)?;
    file.write_all(bytes).map_err(io_error)?;
    file.sync_all().map_err(io_error)?;
    drop(file);
    fs::rename(&temporary, path).map_err(io_error)?;
    if let Some(dir) = path.parent() {
        File::open(dir)
            .and_then(|d| d.sync_all())
            .map_err(io_error)?;
    }
    Ok(Cas::Written)
}
