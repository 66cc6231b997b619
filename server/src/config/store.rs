//! `server.store`: where state shared by replicas lives. Absent, each server keeps its own
//! (the embedded mode: memory, plus `state_dir` for refresh-token chains).

use base64::Engine as _;
use serde::Deserialize;
use url::Url;

use super::ConfigError;
use crate::secret::{RawSecretSource, SecretSource};

/// A Redis server shared by all replicas.
#[derive(Clone, PartialEq, Eq)]
pub struct RedisConfig {
    /// `redis://host:port/db` or `rediss://` (TLS). Never logged: it may hold a password.
    pub url: Url,
    /// Prepended to every key, so that several deployments can share one Redis.
    pub key_prefix: String,
    /// The password (`AUTH`), if Redis requires one.
    pub password: Option<SecretSource>,
    /// The AES-256-GCM keys tokens are encrypted with; the first encrypts, all decrypt,
    /// so a key can be rotated without losing what the old one wrote.
    pub encryption_keys: Vec<EncryptionKey>,
}

impl std::fmt::Debug for RedisConfig {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        // The URL without its password, if it has one.
        let mut url = self.url.clone();
        if url.password().is_some() {
            let _ = url.set_password(Some("<redacted>"));
        }
        f.debug_struct("RedisConfig")
            .field("url", &url.as_str())
            .field("key_prefix", &self.key_prefix)
            .field("password", &self.password)
            .field("encryption_keys", &self.encryption_keys)
            .finish()
    }
}

/// One encryption key, named so that a stored value says which key wrote it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct EncryptionKey {
    /// The key id written into each value it encrypts.
    pub id: String,
    /// 32 bytes, base64.
    pub key: SecretSource,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
pub(super) struct RawStore {
    redis: Option<RawRedis>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RawRedis {
    url: String,
    key_prefix: Option<String>,
    password: Option<RawSecretSource>,
    #[serde(default)]
    tls: bool,
    #[serde(default)]
    encryption_keys: Vec<RawEncryptionKey>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RawEncryptionKey {
    id: String,
    key: RawSecretSource,
}

impl RawStore {
    pub(super) fn validate(self) -> Result<Option<RedisConfig>, ConfigError> {
        self.redis.map(RawRedis::validate).transpose()
    }
}

impl RawRedis {
    fn validate(self) -> Result<RedisConfig, ConfigError> {
        const KEY: &str = "server.store.redis";
        // The text is never echoed: a Redis URL may carry a password.
        let mut url = Url::parse(&self.url).map_err(|e| {
            ConfigError::new(
                format!("{KEY}.url"),
                format!("is not a URL like redis://host:6379: {e}"),
            )
        })?;
        match (url.scheme(), self.tls) {
            ("rediss", _) => {}
            ("redis", true) => url
                .set_scheme("rediss")
                .map_err(|()| ConfigError::new(format!("{KEY}.url"), "cannot use TLS"))?,
            ("redis", false) => {}
            (other, _) => {
                return Err(ConfigError::new(
                    format!("{KEY}.url"),
                    format!("scheme `{other}` is not redis or rediss"),
                ));
            }
        }
        if url.host_str().is_none_or(str::is_empty) {
            return Err(ConfigError::new(format!("{KEY}.url"), "has no host"));
        }
        let key_prefix = self.key_prefix.unwrap_or_else(|| "tokenvend".into());
        if key_prefix.is_empty() {
            return Err(ConfigError::new(
                format!("{KEY}.key_prefix"),
                "must not be empty",
            ));
        }
        let password = self
            .password
            .map(|raw| super::secret_source(raw, &format!("{KEY}.password")))
            .transpose()?;
        if self.encryption_keys.is_empty() {
            return Err(ConfigError::new(
                format!("{KEY}.encryption_keys"),
                "at least one key is required: tokens are stored encrypted",
            ));
        }
        let mut encryption_keys = Vec::with_capacity(self.encryption_keys.len());
        for (i, raw) in self.encryption_keys.into_iter().enumerate() {
            let key = format!("{KEY}.encryption_keys[{i}]");
            if raw.id.is_empty()
                || !raw
                    .id
                    .chars()
                    .all(|c| c.is_ascii_alphanumeric() || "-_.".contains(c))
            {
                return Err(ConfigError::new(
                    format!("{key}.id"),
                    "must be letters, digits, `-`, `_` or `.`",
                ));
            }
            if encryption_keys
                .iter()
                .any(|k: &EncryptionKey| k.id == raw.id)
            {
                return Err(ConfigError::new(
                    format!("{key}.id"),
                    format!("`{}` is used twice", raw.id),
                ));
            }
            let source = super::secret_source(raw.key, &format!("{key}.key"))?;
            encryption_keys.push(EncryptionKey {
                id: raw.id,
                key: source,
            });
        }
        Ok(RedisConfig {
            url,
            key_prefix,
            password,
            encryption_keys,
        })
    }
}

/// Reads a key: 32 bytes, base64 (standard alphabet, padded or not).
pub(crate) fn decode_key(source: &SecretSource) -> Result<zeroize::Zeroizing<[u8; 32]>, String> {
    let text = source.load().map_err(|e| e.to_string())?;
    let bytes = zeroize::Zeroizing::new(
        base64::engine::general_purpose::STANDARD_NO_PAD
            .decode(text.expose().trim().trim_end_matches('='))
            .map_err(|_| {
                "is not base64 (generate one with `openssl rand -base64 32`)".to_owned()
            })?,
    );
    let mut key = zeroize::Zeroizing::new([0; 32]);
    if bytes.len() != key.len() {
        return Err(format!(
            "must be 32 bytes (base64 of `openssl rand -base64 32`), not {}",
            bytes.len()
        ));
    }
    key.copy_from_slice(&bytes);
    Ok(key)
}
