//! The state directory (`server.state_dir`): where one server keeps the refresh-token
//! chains of its `grant: refresh_token` profiles (see [`crate::chain`]), so that a restart
//! never loses the only valid token.
//!
//! One server owns a state directory at a time: it holds an exclusive lock on
//! `<state_dir>/.lock`, because two servers rotating one refresh-token chain would
//! invalidate each other.

use std::{
    fs::{self, File, OpenOptions},
    io,
    os::unix::fs::{OpenOptionsExt as _, PermissionsExt as _},
    path::{Path, PathBuf},
};

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
pub(crate) struct StateDir {
    dir: PathBuf,
    _lock: File,
}

impl StateDir {
    /// Creates (mode 0700) and locks the directory.
    pub(crate) fn open(dir: &Path) -> Result<Self, StateError> {
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
    pub(crate) fn path(&self) -> &Path {
        &self.dir
    }
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
}
