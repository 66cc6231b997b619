//! Audit events: one per GetToken and WatchToken, on the tracing target
//! `tokenvend::audit`, with the caller, the profile, the outcome, where the token came
//! from, and a fingerprint of the token — never the token.

use std::fmt;

use sha2::{Digest, Sha256};

use crate::auth::Caller;

/// The tracing target of audit events.
pub(crate) const TARGET: &str = "tokenvend::audit";

/// The first 8 bytes of a token's SHA-256, in hex: enough to tell tokens apart in logs and
/// to match a log line to a token a resource API received, useless for calling it.
#[derive(Clone, Copy, PartialEq, Eq)]
pub(crate) struct Fingerprint([u8; 8]);

impl Fingerprint {
    /// The fingerprint of a token.
    pub(crate) fn of(token: &str) -> Self {
        TokenDigest::of(token).fingerprint()
    }
}

/// A token's SHA-256: how the cache recognises a token a caller reports as rejected
/// without keeping a second copy of the token (the encoded reply holds the one copy).
#[derive(Clone, Copy, PartialEq, Eq, Hash)]
pub(crate) struct TokenDigest([u8; 32]);

impl TokenDigest {
    /// The digest of a token.
    pub(crate) fn of(token: &str) -> Self {
        Self(Sha256::digest(token.as_bytes()).into())
    }

    /// The token's fingerprint: the first 8 bytes of the digest.
    pub(crate) fn fingerprint(&self) -> Fingerprint {
        let mut bytes = [0; 8];
        bytes.copy_from_slice(&self.0[..8]);
        Fingerprint(bytes)
    }
}

impl fmt::Debug for TokenDigest {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "TokenDigest({}…)", self.fingerprint())
    }
}

impl fmt::Display for Fingerprint {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        // By hand: it is written once per GetToken, and `{:02x}` per byte costs ten times as
        // much.
        const HEX: &[u8; 16] = b"0123456789abcdef";
        let mut text = [0; 16];
        for (pair, b) in text.chunks_exact_mut(2).zip(self.0) {
            pair[0] = HEX[usize::from(b >> 4)];
            pair[1] = HEX[usize::from(b & 0xf)];
        }
        f.write_str(std::str::from_utf8(&text).map_err(|_| fmt::Error)?)
    }
}

impl fmt::Debug for Fingerprint {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "Fingerprint({self})")
    }
}

/// Where a served token came from.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Source {
    /// The cache, with no provider request.
    Cache,
    /// A provider request this call started or joined.
    Idp,
}

impl Source {
    fn as_str(self) -> &'static str {
        match self {
            Self::Cache => "cache",
            Self::Idp => "idp",
        }
    }
}

/// A token was handed out.
pub(crate) fn served(
    rpc: &'static str,
    caller: &Caller,
    profile: &str,
    source: Source,
    fingerprint: Fingerprint,
) {
    // The message as a `message` field: a string reaches the writer as one, where a
    // message argument arrives as `fmt::Arguments` and goes through the formatter.
    // Every log layer prints the two the same way.
    tracing::info!(
        target: TARGET,
        message = "token served",
        rpc,
        caller = %caller,
        profile,
        outcome = "served",
        source = source.as_str(),
        token_sha256 = %fingerprint,
    );
}

/// A call got no token. `reason` says why in the operator's terms, which may say more
/// than the caller was told (a profile the caller may not use reads as unknown to it).
pub(crate) fn refused(
    rpc: &'static str,
    caller: Option<&Caller>,
    profile: &str,
    outcome: &'static str,
    reason: &dyn fmt::Display,
) {
    let caller = caller.map_or(&"unauthenticated" as &dyn fmt::Display, |c| c as _);
    tracing::info!(
        target: TARGET,
        rpc,
        caller = %caller,
        profile,
        outcome,
        reason = %reason,
        "no token"
    );
}

#[cfg(test)]
mod tests {
    use super::Fingerprint;

    #[test]
    fn a_fingerprint_is_the_first_eight_bytes_of_the_sha256_in_hex() {
        // SHA-256("abc") = ba7816bf 8f01cfea 414140de …
        assert_eq!(Fingerprint::of("abc").to_string(), "ba7816bf8f01cfea");
        assert_eq!(
            format!("{:?}", Fingerprint::of("abc")),
            "Fingerprint(ba7816bf8f01cfea)"
        );
    }
}
