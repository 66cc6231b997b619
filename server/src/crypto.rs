//! Sealing values at rest: tokens and chains in the shared store, and connection records
//! in `state_dir`.
//!
//! Values are sealed with AES-256-GCM: `v1:<key id>:<base64 of
//! nonce ‖ ciphertext>`. The first configured key seals; every configured key opens, so a
//! key can be rotated by putting the new one first and dropping the old one once every
//! value it sealed has expired or been rewritten.
//!
//! The Redis key a value is stored under is bound in as associated data, so a value copied
//! to another profile's key does not open.

use aes_gcm::{
    Aes256Gcm, KeyInit as _, Nonce,
    aead::{Aead as _, Payload},
};
use base64::{Engine as _, engine::general_purpose::STANDARD_NO_PAD as B64};
use zeroize::Zeroizing;

use crate::{
    config::EncryptionKey,
    secret::{SecretError, SecretSource},
};

const VERSION: &str = "v1";
const NONCE_LEN: usize = 12;

/// The keys, current first.
pub(crate) struct Keyring {
    keys: Vec<(String, Aes256Gcm)>,
}

impl std::fmt::Debug for Keyring {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let ids: Vec<_> = self.keys.iter().map(|(id, _)| id.as_str()).collect();
        f.debug_struct("Keyring").field("ids", &ids).finish()
    }
}

/// Why a stored value cannot be opened. Never carries the value.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub(crate) enum OpenError {
    /// Not something this version wrote.
    #[error("not a sealed value")]
    Format,
    /// Sealed with a key that is no longer configured.
    #[error("sealed with key `{0}`, which is not configured")]
    UnknownKey(String),
    /// Tampered with, or sealed for another key name.
    #[error("does not authenticate with key `{0}`")]
    Forged(String),
}

/// Why the configured keys cannot be used. Names the key, never its value.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum KeyError {
    /// A key cannot be read, or is not 32 bytes of base64.
    #[error("key `{id}` {reason}")]
    Unusable {
        /// The key's id.
        id: String,
        /// Why.
        reason: BadKey,
    },
    /// No key is configured: nothing could be sealed.
    #[error("no encryption key")]
    None,
}

/// Why a key's value cannot be used. Never includes the value.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum BadKey {
    /// Its source cannot be read.
    #[error("{0}")]
    Source(SecretError),
    /// It is not base64.
    #[error("is not base64 (generate one with `openssl rand -base64 32`)")]
    NotBase64,
    /// It is not 32 bytes long.
    #[error("must be 32 bytes (base64 of `openssl rand -base64 32`), not {0}")]
    Length(usize),
}

/// Reads a key: 32 bytes, base64 (standard alphabet, padded or not).
pub(crate) fn decode_key(source: &SecretSource) -> Result<Zeroizing<[u8; 32]>, BadKey> {
    let text = source.load().map_err(BadKey::Source)?;
    let bytes = Zeroizing::new(
        base64::engine::general_purpose::STANDARD_NO_PAD
            .decode(text.expose().trim().trim_end_matches('='))
            .map_err(|_| BadKey::NotBase64)?,
    );
    let mut key = Zeroizing::new([0; 32]);
    if bytes.len() != key.len() {
        return Err(BadKey::Length(bytes.len()));
    }
    key.copy_from_slice(&bytes);
    Ok(key)
}

impl Keyring {
    /// Reads the keys from their sources.
    pub(crate) fn load(keys: &[EncryptionKey]) -> Result<Self, KeyError> {
        let keys = keys
            .iter()
            .map(|k| {
                let bytes = decode_key(&k.key).map_err(|reason| KeyError::Unusable {
                    id: k.id.clone(),
                    reason,
                })?;
                Ok((k.id.clone(), Aes256Gcm::new((&*bytes).into())))
            })
            .collect::<Result<Vec<_>, KeyError>>()?;
        if keys.is_empty() {
            return Err(KeyError::None);
        }
        Ok(Self { keys })
    }

    /// One key, given as bytes (the connections' sealing key, derived from
    /// `server.connections.key`).
    pub(crate) fn single(id: &str, key: &[u8; 32]) -> Self {
        Self {
            keys: vec![(id.to_owned(), Aes256Gcm::new(key.into()))],
        }
    }

    /// Seals a value to be stored under `name`.
    pub(crate) fn seal(&self, name: &str, plaintext: &[u8]) -> String {
        let (id, cipher) = &self.keys[0];
        let mut nonce = [0u8; NONCE_LEN];
        // A fresh random nonce per value: 96 bits, far from the birthday bound for the
        // few values a token service writes under one key.
        getrandom::fill(&mut nonce).unwrap_or_else(|_| {
            nonce.iter_mut().for_each(|b| *b = fastrand::u8(..));
        });
        let sealed = cipher
            .encrypt(
                &Nonce::from(nonce),
                Payload {
                    msg: plaintext,
                    aad: name.as_bytes(),
                },
            )
            // AES-GCM fails only for messages longer than 64 GiB.
            .unwrap_or_default();
        let mut bytes = Vec::with_capacity(NONCE_LEN + sealed.len());
        bytes.extend_from_slice(&nonce);
        bytes.extend_from_slice(&sealed);
        format!("{VERSION}:{id}:{}", B64.encode(bytes))
    }

    /// Opens a value stored under `name`.
    pub(crate) fn open(&self, name: &str, value: &str) -> Result<Vec<u8>, OpenError> {
        let mut parts = value.splitn(3, ':');
        let (Some(VERSION), Some(id), Some(body)) = (parts.next(), parts.next(), parts.next())
        else {
            return Err(OpenError::Format);
        };
        let (_, cipher) = self
            .keys
            .iter()
            .find(|(k, _)| k == id)
            .ok_or_else(|| OpenError::UnknownKey(id.to_owned()))?;
        let bytes = B64.decode(body).map_err(|_| OpenError::Format)?;
        if bytes.len() < NONCE_LEN {
            return Err(OpenError::Format);
        }
        let (nonce, sealed) = bytes.split_at(NONCE_LEN);
        let nonce: [u8; NONCE_LEN] = nonce.try_into().map_err(|_| OpenError::Format)?;
        cipher
            .decrypt(
                &Nonce::from(nonce),
                Payload {
                    msg: sealed,
                    aad: name.as_bytes(),
                },
            )
            .map_err(|_| OpenError::Forged(id.to_owned()))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::secret::{Secret, SecretSource};

    fn key(id: &str, byte: u8) -> EncryptionKey {
        EncryptionKey {
            id: id.into(),
            key: SecretSource::Value(Secret::new(B64.encode([byte; 32]))),
        }
    }

    #[test]
    fn sealed_values_open_and_hide_the_plaintext() {
        let ring = Keyring::load(&[key("a", 1)]).unwrap();
        let sealed = ring.seal("tv:p:token", b"the-access-token");
        assert!(sealed.starts_with("v1:a:"));
        assert!(!sealed.contains("the-access-token"));
        assert_eq!(
            ring.open("tv:p:token", &sealed).unwrap(),
            b"the-access-token"
        );
        assert_ne!(ring.seal("tv:p:token", b"x"), ring.seal("tv:p:token", b"x"));
    }

    #[test]
    fn old_keys_open_and_the_first_key_seals() {
        let old = Keyring::load(&[key("old", 1)]).unwrap();
        let sealed_old = old.seal("n", b"v");
        let rotated = Keyring::load(&[key("new", 2), key("old", 1)]).unwrap();
        assert_eq!(rotated.open("n", &sealed_old).unwrap(), b"v");
        assert!(rotated.seal("n", b"v").starts_with("v1:new:"));
        let dropped = Keyring::load(&[key("new", 2)]).unwrap();
        assert_eq!(
            dropped.open("n", &sealed_old),
            Err(OpenError::UnknownKey("old".into()))
        );
    }

    #[test]
    fn a_value_moved_to_another_name_or_altered_does_not_open() {
        let ring = Keyring::load(&[key("a", 1)]).unwrap();
        let sealed = ring.seal("tv:p:token", b"v");
        assert_eq!(
            ring.open("tv:q:token", &sealed),
            Err(OpenError::Forged("a".into()))
        );
        let wrong = Keyring::load(&[key("a", 3)]).unwrap();
        assert_eq!(
            wrong.open("tv:p:token", &sealed),
            Err(OpenError::Forged("a".into()))
        );
        assert_eq!(ring.open("n", "plain"), Err(OpenError::Format));
    }

    #[test]
    fn an_unusable_key_is_named_without_its_value() {
        let short = EncryptionKey {
            id: "short".into(),
            key: SecretSource::Value(Secret::new(B64.encode([7u8; 16]))),
        };
        let error = Keyring::load(&[short]).unwrap_err();
        assert!(
            matches!(&error, KeyError::Unusable { id, .. } if id == "short"),
            "{error:?}"
        );
        assert!(!error.to_string().contains(&B64.encode([7u8; 16])));
        assert_eq!(Keyring::load(&[]).unwrap_err(), KeyError::None);
    }
}
