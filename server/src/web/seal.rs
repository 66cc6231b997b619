//! Values the admin page hands to a browser and takes back: cookies sealed with
//! AES-256-GCM (the browser can neither read nor change them), each bound to its cookie's
//! name and carrying its own expiry, so that a cookie moved to another name or kept past
//! its time does not open.

use std::time::{Duration, SystemTime, UNIX_EPOCH};

use aes_gcm::{
    Aes256Gcm, KeyInit as _, Nonce,
    aead::{Aead as _, Payload},
};
use base64::{Engine as _, engine::general_purpose::URL_SAFE_NO_PAD as B64};
use hmac::{Hmac, Mac};
use serde::{Serialize, de::DeserializeOwned};
use sha2::{Digest as _, Sha256};

use crate::secret::Secret;

const NONCE_LEN: usize = 12;
/// A sealed cookie longer than this is not opened (browsers cap a cookie near 4 KiB).
const MAX_SEALED: usize = 4096;
/// The shortest `session_key` accepted: 32 bytes, as `openssl rand -base64 32` makes.
pub(crate) const MIN_KEY_BYTES: usize = 32;

/// The keys derived from `server.admin.session_key`, one per use, so that a value made
/// for one purpose is never accepted for another.
pub(crate) struct Keys {
    cookies: Aes256Gcm,
    links: [u8; 32],
}

impl std::fmt::Debug for Keys {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("Keys")
    }
}

/// Why a `session_key` cannot be used. Never carries the key.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
#[error("must be at least {MIN_KEY_BYTES} bytes (e.g. `openssl rand -base64 32`), not {0}")]
pub(crate) struct ShortKey(usize);

impl Keys {
    /// Keys derived from a configured secret.
    pub(crate) fn derive(secret: &Secret) -> Result<Self, ShortKey> {
        let bytes = secret.expose().trim().as_bytes();
        if bytes.len() < MIN_KEY_BYTES {
            return Err(ShortKey(bytes.len()));
        }
        Ok(Self::from_material(bytes))
    }

    /// Keys of this process alone, for an admin page that no other replica shares.
    pub(crate) fn random() -> Self {
        Self::from_material(random(32).as_bytes())
    }

    fn from_material(material: &[u8]) -> Self {
        let cookie_key = derive(b"tokenvend admin cookies v1", material);
        Self {
            cookies: Aes256Gcm::new((&cookie_key).into()),
            links: derive(b"tokenvend connect links v1", material),
        }
    }

    /// The signature of a connect link: HMAC-SHA256 over the profile, the subject and
    /// the expiry, each length-prefixed so that no two triples sign alike.
    pub(crate) fn sign_link(&self, profile: &str, subject: &str, expires: u64) -> String {
        B64.encode(
            self.link_mac(profile, subject, expires)
                .finalize()
                .into_bytes(),
        )
    }

    /// Whether `sig` is the signature of this link (compared in constant time).
    pub(crate) fn link_signed(
        &self,
        profile: &str,
        subject: &str,
        expires: u64,
        sig: &str,
    ) -> bool {
        B64.decode(sig).is_ok_and(|sig| {
            self.link_mac(profile, subject, expires)
                .verify_slice(&sig)
                .is_ok()
        })
    }

    fn link_mac(&self, profile: &str, subject: &str, expires: u64) -> Hmac<Sha256> {
        // HMAC takes a key of any length.
        let mut mac =
            <Hmac<Sha256> as Mac>::new_from_slice(&self.links).expect("HMAC takes any key");
        for part in [profile.as_bytes(), subject.as_bytes()] {
            mac.update(&(part.len() as u64).to_be_bytes());
            mac.update(part);
        }
        mac.update(&expires.to_be_bytes());
        mac
    }

    /// `value` sealed for the cookie `name`, to be opened until `ttl` from now.
    pub(crate) fn seal<T: Serialize>(&self, name: &str, value: &T, ttl: Duration) -> String {
        let until = unix_now() + ttl.as_secs();
        // Serialising a struct of strings and numbers does not fail.
        let mut plain = serde_json::to_vec(&(until, value)).unwrap_or_default();
        let nonce_bytes: [u8; NONCE_LEN] = random_bytes();
        let sealed = self.cookies.encrypt(
            &Nonce::from(nonce_bytes),
            Payload {
                msg: &plain,
                aad: name.as_bytes(),
            },
        );
        zeroize::Zeroize::zeroize(&mut plain);
        // AES-GCM fails only on inputs of gigabytes.
        let mut out = nonce_bytes.to_vec();
        out.extend(sealed.unwrap_or_default());
        B64.encode(out)
    }

    /// The value sealed for the cookie `name`, if it is one, unchanged and unexpired.
    pub(crate) fn open<T: DeserializeOwned>(&self, name: &str, sealed: &str) -> Option<T> {
        if sealed.len() > MAX_SEALED {
            return None;
        }
        let bytes = B64.decode(sealed).ok()?;
        if bytes.len() <= NONCE_LEN {
            return None;
        }
        let (nonce, ciphertext) = bytes.split_at(NONCE_LEN);
        let nonce: [u8; NONCE_LEN] = nonce.try_into().ok()?;
        let plain = zeroize::Zeroizing::new(
            self.cookies
                .decrypt(
                    &Nonce::from(nonce),
                    Payload {
                        msg: ciphertext,
                        aad: name.as_bytes(),
                    },
                )
                .ok()?,
        );
        let (until, value): (u64, T) = serde_json::from_slice(&plain).ok()?;
        (unix_now() < until).then_some(value)
    }
}

fn derive(label: &[u8], material: &[u8]) -> [u8; 32] {
    let mut hash = Sha256::new();
    hash.update((label.len() as u64).to_be_bytes());
    hash.update(label);
    hash.update(material);
    hash.finalize().into()
}

fn random_bytes<const N: usize>() -> [u8; N] {
    let mut bytes = [0u8; N];
    // The operating system's generator; without it nothing here can be made safely.
    getrandom::fill(&mut bytes).expect("the operating system's random number generator");
    bytes
}

/// `bytes` random bytes, base64url: states, verifiers, nonces and CSRF tokens.
pub(crate) fn random(bytes: usize) -> String {
    let mut buf = vec![0u8; bytes];
    getrandom::fill(&mut buf).expect("the operating system's random number generator");
    B64.encode(buf)
}

pub(crate) fn unix_now() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| d.as_secs())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn keys() -> Keys {
        Keys::derive(&Secret::new("k".repeat(32))).unwrap()
    }

    #[test]
    fn a_sealed_value_opens_only_under_its_name_and_key() {
        let keys = keys();
        let sealed = keys.seal("tv_flow", &("jadu", "state-1"), Duration::from_secs(60));
        assert!(!sealed.contains("jadu") && !sealed.contains("state-1"));
        let opened: (String, String) = keys.open("tv_flow", &sealed).unwrap();
        assert_eq!(opened, ("jadu".to_owned(), "state-1".to_owned()));
        assert!(
            keys.open::<(String, String)>("tv_session", &sealed)
                .is_none()
        );
        let other = Keys::derive(&Secret::new("j".repeat(32))).unwrap();
        assert!(other.open::<(String, String)>("tv_flow", &sealed).is_none());
    }

    #[test]
    fn a_tampered_or_expired_value_does_not_open() {
        let keys = keys();
        let sealed = keys.seal("c", &"v", Duration::from_secs(60));
        let mut bytes = B64.decode(&sealed).unwrap();
        for i in [0, NONCE_LEN, bytes.len() - 1] {
            bytes[i] ^= 1;
            assert!(
                keys.open::<String>("c", &B64.encode(&bytes)).is_none(),
                "{i}"
            );
            bytes[i] ^= 1;
        }
        assert_eq!(keys.open::<String>("c", &B64.encode(&bytes)).unwrap(), "v");
        let expired = keys.seal("c", &"v", Duration::ZERO);
        assert!(keys.open::<String>("c", &expired).is_none());
        assert!(keys.open::<String>("c", "").is_none());
        assert!(keys.open::<String>("c", "not base64!").is_none());
    }

    #[test]
    fn a_link_verifies_only_as_signed() {
        let keys = keys();
        let sig = keys.sign_link("jadu", "tenant-1", 1_900_000_000);
        assert!(keys.link_signed("jadu", "tenant-1", 1_900_000_000, &sig));
        assert!(!keys.link_signed("jadu", "tenant-2", 1_900_000_000, &sig));
        assert!(!keys.link_signed("jadu", "tenant-1", 1_900_000_001, &sig));
        assert!(!keys.link_signed("jadux", "tenant-1", 1_900_000_000, &sig));
        // Moving bytes between fields does not keep the signature.
        let shifted = keys.sign_link("jadut", "enant-1", 1_900_000_000);
        assert_ne!(sig, shifted);
        assert!(!keys.link_signed("jadu", "tenant-1", 1_900_000_000, "AAAA"));
        assert!(!keys.link_signed("jadu", "tenant-1", 1_900_000_000, "not base64!"));
        let other = Keys::derive(&Secret::new("j".repeat(32))).unwrap();
        assert!(!other.link_signed("jadu", "tenant-1", 1_900_000_000, &sig));
    }

    #[test]
    fn a_short_session_key_is_refused() {
        assert_eq!(
            Keys::derive(&Secret::new("short")).unwrap_err(),
            ShortKey(5)
        );
    }
}
