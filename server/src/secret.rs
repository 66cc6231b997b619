//! Secrets: where a profile's secrets come from, and a type that holds one without ever
//! printing it.

use std::{fmt, path::PathBuf};

use serde::Deserialize;
use zeroize::Zeroize;

use crate::bounded;

/// A secret value: a client secret, an API key or a token.
///
/// It has no `Display`, its `Debug` prints a placeholder, and its memory is wiped on drop,
/// so it cannot reach a log line by accident.
#[derive(Clone, PartialEq, Eq)]
pub struct Secret(String);

impl Secret {
    /// Wraps a value.
    pub fn new(value: impl Into<String>) -> Self {
        Self(value.into())
    }

    /// The value, for the one place that must send it.
    pub fn expose(&self) -> &str {
        &self.0
    }
}

impl fmt::Debug for Secret {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("Secret(<redacted>)")
    }
}

impl Drop for Secret {
    fn drop(&mut self) {
        self.0.zeroize();
    }
}

impl<'de> Deserialize<'de> for Secret {
    fn deserialize<D: serde::Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        String::deserialize(deserializer).map(Secret)
    }
}

/// Where a secret is read from. Read again at every use, so a rotated Kubernetes Secret
/// (a file that changes) or a new environment takes effect at the next token request.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum SecretSource {
    /// An environment variable.
    Env(String),
    /// A file; one trailing newline is ignored.
    File(PathBuf),
    /// The value itself, in the configuration (for development only).
    Value(Secret),
}

/// Why a secret could not be read. Names the source, never the value.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum SecretError {
    /// The environment variable is not set.
    #[error("environment variable {0} is not set")]
    EnvMissing(String),
    /// The environment variable holds bytes that are not UTF-8.
    #[error("environment variable {0} is not valid UTF-8")]
    EnvNotUnicode(String),
    /// The file could not be read.
    #[error("cannot read {path}: {reason}")]
    File {
        /// The file.
        path: PathBuf,
        /// The operating system's reason.
        reason: String,
    },
    /// The source is empty.
    #[error("{0} is empty")]
    Empty(String),
}

impl SecretSource {
    /// Reads the secret now.
    pub fn load(&self) -> Result<Secret, SecretError> {
        let (value, described) = match self {
            Self::Env(name) => {
                let value = std::env::var(name).map_err(|e| match e {
                    std::env::VarError::NotPresent => SecretError::EnvMissing(name.clone()),
                    std::env::VarError::NotUnicode(_) => SecretError::EnvNotUnicode(name.clone()),
                })?;
                (value, format!("environment variable {name}"))
            }
            // Secret files are a few bytes and read once per token request, so a blocking
            // read costs less than handing it to a thread pool. Bounded: a path to a device
            // or a huge file fails at once instead of filling memory.
            Self::File(path) => {
                let mut value =
                    bounded::read_to_string(path, bounded::SECRET_BYTES).map_err(|e| {
                        SecretError::File {
                            path: path.clone(),
                            reason: e.to_string(),
                        }
                    })?;
                // `echo secret > file` and `kubectl create secret --from-file` keep a newline.
                if value.ends_with('\n') {
                    value.pop();
                    if value.ends_with('\r') {
                        value.pop();
                    }
                }
                (value, format!("file {}", path.display()))
            }
            Self::Value(secret) => (secret.expose().to_owned(), "value".to_owned()),
        };
        if value.is_empty() {
            return Err(SecretError::Empty(described));
        }
        Ok(Secret(value))
    }
}

/// The YAML form of a secret source: `{ env: NAME }`, `{ file: PATH }` or `{ value: "..." }`.
#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
pub(crate) struct RawSecretSource {
    env: Option<String>,
    file: Option<PathBuf>,
    value: Option<Secret>,
}

/// A secret source that names no source, or more than one.
#[derive(Debug, thiserror::Error)]
#[error("give exactly one of `env: NAME`, `file: PATH` or `value: ...`")]
pub(crate) struct NotOneSource;

impl RawSecretSource {
    pub(crate) fn into_source(self) -> Result<SecretSource, NotOneSource> {
        match (self.env, self.file, self.value) {
            (Some(env), None, None) if !env.is_empty() => Ok(SecretSource::Env(env)),
            (None, Some(file), None) => Ok(SecretSource::File(file)),
            (None, None, Some(value)) => Ok(SecretSource::Value(value)),
            _ => Err(NotOneSource),
        }
    }
}

#[cfg(test)]
mod tests {
    use std::io::Write;

    use super::*;

    #[test]
    fn debug_never_shows_the_value() {
        let secret = Secret::new("hunter2");
        assert_eq!(format!("{secret:?}"), "Secret(<redacted>)");
        let source = SecretSource::Value(secret);
        assert!(!format!("{source:?}").contains("hunter2"));
    }

    #[test]
    fn file_source_drops_one_trailing_newline_and_rereads() {
        let mut file = tempfile::NamedTempFile::new().unwrap();
        writeln!(file, "s3cret ").unwrap();
        let source = SecretSource::File(file.path().to_owned());
        assert_eq!(source.load().unwrap().expose(), "s3cret ");

        std::fs::write(file.path(), "rotated\r\n").unwrap();
        assert_eq!(source.load().unwrap().expose(), "rotated");
    }

    #[test]
    fn missing_sources_name_what_is_missing() {
        let err = SecretSource::Env("TOKENVEND_TEST_SURELY_UNSET".into())
            .load()
            .unwrap_err();
        assert_eq!(
            err.to_string(),
            "environment variable TOKENVEND_TEST_SURELY_UNSET is not set"
        );
        let err = SecretSource::File("/nonexistent/secret".into())
            .load()
            .unwrap_err();
        assert!(
            err.to_string()
                .starts_with("cannot read /nonexistent/secret")
        );
    }
}
