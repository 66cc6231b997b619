//! A chain kept in `state_dir`: `<profile>.refresh.json`, the record with its version.
//!
//! A write is made to a temporary file, synced, and renamed over the old record (then the
//! directory is synced), so a crash leaves either the old record or the new one, never a
//! torn one. The version is compared and the file replaced under `<profile>.refresh.lock`:
//! the server holds `state_dir` alone, but `tokenvend authorize`, and a slot retired by a
//! reload that is still finishing its rotation, write the same record.

use std::{
    fs::{self, File, OpenOptions},
    io::{self, Write as _},
    os::unix::fs::{DirBuilderExt as _, OpenOptionsExt as _},
    path::{Path, PathBuf},
};

use serde::{Deserialize, Serialize};
use zeroize::Zeroizing;

use super::{Cas, ChainStore, Record, Version};
use crate::bounded;

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
}

/// One profile's chain record in `state_dir`.
#[derive(Debug, Clone)]
pub(crate) struct FileStore {
    path: PathBuf,
    lock: PathBuf,
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
        }
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
        read(&self.path)
    }

    // Two fsyncs and perhaps a wait for the lock: done on a blocking thread, not on a
    // worker that serves callers.
    async fn write(&self, from: Version, record: &Record) -> Result<Cas, FileError> {
        let bytes = serde_json::to_vec(&OnDisk {
            record,
            version: from.next().0,
        })
        .map(Zeroizing::new)
        .map_err(|e| self.io_error(io::Error::other(e)))?;
        let (path, lock) = (self.path.clone(), self.lock.clone());
        tokio::task::spawn_blocking(move || write_if_at(&path, &lock, from, &bytes))
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
    // Bounded: a record is a few hundred bytes, and whatever else sits at its path is not
    // one.
    let bytes = match bounded::read(path, bounded::SECRET_BYTES) {
        Ok(bytes) => Zeroizing::new(bytes),
        Err(e) if e.kind() == io::ErrorKind::NotFound => return Ok((Version::default(), None)),
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
    // serde_json's messages may quote the offending value; only its position is kept.
    let on_disk: OnDisk<Record> =
        serde_json::from_slice(&bytes).map_err(|e| FileError::Corrupt {
            path: path.to_owned(),
            line: e.line(),
            column: e.column(),
        })?;
    Ok((Version(on_disk.version), Some(on_disk.record)))
}

/// Replaces the record with `bytes` if it is still at `from`: write, fsync, rename, fsync
/// the directory, so that after a crash at any point the record is the old one or the new.
fn write_if_at(path: &Path, lock: &Path, from: Version, bytes: &[u8]) -> Result<Cas, FileError> {
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
    if read(path)?.0 != from {
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
