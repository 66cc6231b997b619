//! Reading a file with a ceiling on its size, so that no input (a `/dev/zero` secret, a
//! sparse 2 GB key set, a configuration that grew without end) costs more memory than its
//! kind has reason to need.

use std::{
    fmt,
    fs::File,
    io::{self, Read as _},
    path::Path,
};

/// The most a configuration file may hold: 10,000 profiles take about 1.6 MiB.
pub(crate) const CONFIG_BYTES: u64 = 4 * 1024 * 1024;
/// The most a secret file (a client secret, a key, a refresh token) may hold.
pub(crate) const SECRET_BYTES: u64 = 64 * 1024;
/// The most a key set or a CA bundle may hold.
pub(crate) const DOCUMENT_BYTES: u64 = 1024 * 1024;

/// Why a bounded read failed.
#[derive(Debug)]
pub(crate) enum ReadError {
    /// The file could not be opened or read.
    Io(io::Error),
    /// The file holds more than the limit; nothing past the limit was read.
    TooLarge {
        /// The limit, in bytes.
        limit: u64,
    },
}

impl fmt::Display for ReadError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            // The kind, not the OS's text: the same wording on every platform.
            Self::Io(error) => write!(f, "{}", error.kind()),
            Self::TooLarge { limit } => write!(f, "larger than {limit} bytes"),
        }
    }
}

impl ReadError {
    /// The I/O error's kind; `FileTooLarge` for a file over the limit.
    pub(crate) fn kind(&self) -> io::ErrorKind {
        match self {
            Self::Io(error) => error.kind(),
            Self::TooLarge { .. } => io::ErrorKind::FileTooLarge,
        }
    }
}

/// The whole of the file at `path`, if it holds at most `limit` bytes. A regular file's
/// size is checked before anything is read; a device or a pipe (which has none) is read
/// up to one byte past the limit, and no further.
pub(crate) fn read(path: &Path, limit: u64) -> Result<Vec<u8>, ReadError> {
    let file = File::open(path).map_err(ReadError::Io)?;
    let size = file.metadata().map_err(ReadError::Io)?.len();
    if size > limit {
        return Err(ReadError::TooLarge { limit });
    }
    let mut bytes = Vec::with_capacity(usize::try_from(size).unwrap_or_default());
    file.take(limit + 1)
        .read_to_end(&mut bytes)
        .map_err(ReadError::Io)?;
    if bytes.len() as u64 > limit {
        // The bytes may be a secret's first 64 KiB: wipe them before they go back.
        zeroize::Zeroize::zeroize(&mut bytes);
        return Err(ReadError::TooLarge { limit });
    }
    Ok(bytes)
}

/// [`read`], as UTF-8 text.
pub(crate) fn read_to_string(path: &Path, limit: u64) -> Result<String, ReadError> {
    let bytes = read(path, limit)?;
    String::from_utf8(bytes).map_err(|e| {
        let mut bytes = e.into_bytes();
        zeroize::Zeroize::zeroize(&mut bytes);
        ReadError::Io(io::Error::new(io::ErrorKind::InvalidData, "not UTF-8"))
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_device_without_end_is_read_no_further_than_the_limit() {
        let error = read(Path::new("/dev/zero"), 1024).unwrap_err();
        assert!(matches!(error, ReadError::TooLarge { limit: 1024 }));
        assert_eq!(error.to_string(), "larger than 1024 bytes");
    }

    #[test]
    fn a_sparse_file_is_refused_by_its_size_before_it_is_read() {
        let file = tempfile::NamedTempFile::new().unwrap();
        file.as_file().set_len(2 << 30).unwrap();
        let started = std::time::Instant::now();
        let error = read(file.path(), DOCUMENT_BYTES).unwrap_err();
        assert!(matches!(error, ReadError::TooLarge { .. }));
        assert!(started.elapsed() < std::time::Duration::from_secs(1));
    }

    #[test]
    fn a_file_at_the_limit_is_read_whole() {
        let file = tempfile::NamedTempFile::new().unwrap();
        std::fs::write(file.path(), [b'a'; 16]).unwrap();
        assert_eq!(read(file.path(), 16).unwrap(), [b'a'; 16]);
        assert!(matches!(
            read(file.path(), 15),
            Err(ReadError::TooLarge { limit: 15 })
        ));
    }
}
