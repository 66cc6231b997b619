//! A `Token` reply that was encoded once, when the token was obtained.
//!
//! Every cache hit answers with the same bytes, so serving a token copies those bytes
//! into the reply instead of building the token string, its headers map and its scopes.

use std::fmt;

use bytes::{Buf, BufMut, Bytes};
use prost::{
    DecodeError, Message,
    encoding::{DecodeContext, WireType, skip_field},
};

use crate::pb::Token;

/// A `tokenvend.v1.Token` in its protobuf encoding. It is the reply type of the generated
/// server stubs; clients decode it as a plain [`Token`].
///
/// The access token appears in a reply twice, as `access_token` and in the
/// `authorization` header, and a cache holds one reply per profile for as long as the
/// token lives. [`EncodedToken::encode_sharing`] keeps one copy of such a repeated piece
/// and writes it back into the encoding wherever it was cut out, which halves what a
/// cached token costs for the price of a few more slice copies per reply.
#[derive(Clone, Default)]
pub struct EncodedToken {
    /// The shared piece, then the encoding with its copies cut out.
    bytes: Bytes,
    /// The shared piece's length.
    shared: u32,
    /// Where, in the encoding without the piece, its copies go back, ascending.
    cuts: [u32; MAX_CUTS],
    /// How many of `cuts` are used.
    count: u8,
}

/// The copies cut out: the `access_token` field and the `authorization` header. A further
/// copy (a companion header with the same value) stays in place.
const MAX_CUTS: usize = 2;

/// Below this, a piece is not worth the extra slice copies per reply.
const MIN_SHARED: usize = 64;

impl EncodedToken {
    /// Encodes a token.
    pub fn encode(token: &Token) -> Self {
        Self::plain(token.encode_to_vec())
    }

    /// Encodes a token, holding the copies of `shared` (its access token) in its encoding
    /// once. The reply's bytes are exactly those of [`EncodedToken::encode`].
    pub fn encode_sharing(token: &Token, shared: &str) -> Self {
        let encoded = token.encode_to_vec();
        let shared = shared.as_bytes();
        if shared.len() < MIN_SHARED || u32::try_from(encoded.len()).is_err() {
            return Self::plain(encoded);
        }
        // Non-overlapping occurrences, so every cut-out byte is put back exactly once.
        let found: Vec<usize> = memchr::memmem::find_iter(&encoded, shared)
            .take(MAX_CUTS)
            .collect();
        if found.len() < 2 {
            return Self::plain(encoded);
        }
        let mut bytes = Vec::with_capacity(encoded.len() - (found.len() - 1) * shared.len());
        bytes.extend_from_slice(shared);
        let mut cuts = [0; MAX_CUTS];
        let mut from = 0;
        for (cut, &at) in cuts.iter_mut().zip(&found) {
            bytes.extend_from_slice(&encoded[from..at]);
            *cut = as_u32(bytes.len() - shared.len());
            from = at + shared.len();
        }
        bytes.extend_from_slice(&encoded[from..]);
        Self {
            bytes: Bytes::from(bytes),
            shared: as_u32(shared.len()),
            cuts,
            count: found.len() as u8,
        }
    }

    fn plain(encoded: Vec<u8>) -> Self {
        Self {
            bytes: Bytes::from(encoded),
            ..Self::default()
        }
    }

    /// The shared piece, and the encoding without its copies.
    fn parts(&self) -> (&[u8], &[u8]) {
        self.bytes.split_at(self.shared as usize)
    }

    /// The bytes sent: the encoding with its shared piece put back.
    pub fn to_bytes(&self) -> Bytes {
        if self.count == 0 {
            return self.bytes.clone();
        }
        let mut bytes = Vec::with_capacity(self.encoded_len());
        self.encode_raw(&mut bytes);
        Bytes::from(bytes)
    }
}

/// Lengths within an encoding already checked to fit in a `u32`.
fn as_u32(n: usize) -> u32 {
    u32::try_from(n).expect("the encoding's length fits in a u32")
}

impl PartialEq for EncodedToken {
    /// Equal when the bytes sent are, however they are held.
    fn eq(&self, other: &Self) -> bool {
        self.encoded_len() == other.encoded_len() && self.to_bytes() == other.to_bytes()
    }
}

impl Eq for EncodedToken {}

impl fmt::Debug for EncodedToken {
    // The bytes hold an access token: never print them.
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "EncodedToken({} bytes)", self.encoded_len())
    }
}

impl Message for EncodedToken {
    fn encode_raw(&self, buf: &mut impl BufMut) {
        let (shared, rest) = self.parts();
        let mut from = 0;
        for &cut in &self.cuts[..usize::from(self.count)] {
            buf.put_slice(&rest[from..cut as usize]);
            buf.put_slice(shared);
            from = cut as usize;
        }
        buf.put_slice(&rest[from..]);
    }

    // The server never decodes a Token; skipping keeps the trait honest without a second
    // decoder to maintain.
    fn merge_field(
        &mut self,
        tag: u32,
        wire_type: WireType,
        buf: &mut impl Buf,
        ctx: DecodeContext,
    ) -> Result<(), DecodeError> {
        skip_field(wire_type, tag, buf, ctx)
    }

    fn encoded_len(&self) -> usize {
        let (shared, rest) = self.parts();
        rest.len() + usize::from(self.count) * shared.len()
    }

    fn clear(&mut self) {
        *self = Self::default();
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn decodes_as_the_token_it_was_made_from() {
        let token = Token {
            access_token: "abc".into(),
            token_type: "Bearer".into(),
            scopes: vec!["a".into(), "b".into()],
            headers: [("authorization".to_string(), "Bearer abc".to_string())].into(),
            profile: "p".into(),
            expires_at: Some(prost_types::Timestamp {
                seconds: 10,
                nanos: 0,
            }),
        };
        let encoded = EncodedToken::encode(&token);
        let framed = encoded.encode_to_vec();
        assert_eq!(Token::decode(framed.as_slice()).unwrap(), token);
        assert!(!format!("{encoded:?}").contains("abc"));
    }

    fn token(access_token: &str, headers: &[(&str, String)]) -> Token {
        Token {
            access_token: access_token.into(),
            token_type: "Bearer".into(),
            scopes: vec!["read".into()],
            headers: headers
                .iter()
                .map(|(k, v)| ((*k).to_owned(), v.clone()))
                .collect(),
            profile: "jama".into(),
            expires_at: Some(prost_types::Timestamp {
                seconds: 1_700_000_000,
                nanos: 0,
            }),
        }
    }

    #[test]
    fn a_shared_access_token_is_held_once_and_sent_as_encoded() {
        let access = "eyJ0eXAiOiJKV1QifQ.".repeat(60);
        let token = token(&access, &[("authorization", format!("Bearer {access}"))]);
        let plain = EncodedToken::encode(&token);
        let shared = EncodedToken::encode_sharing(&token, &access);

        assert_eq!(shared.encode_to_vec(), token.encode_to_vec());
        assert_eq!(shared.encoded_len(), plain.encoded_len());
        assert_eq!(shared.to_bytes(), plain.to_bytes());
        assert_eq!(shared, plain);
        assert_eq!(shared.count, 2);
        assert_eq!(shared.bytes.len(), plain.encoded_len() - access.len());
        assert_eq!(Token::decode(shared.to_bytes()).unwrap(), token);
        assert!(!format!("{shared:?}").contains("eyJ"));
    }

    #[test]
    fn self_similar_tokens_and_a_third_copy_are_sent_unchanged() {
        // A token of one repeated byte matches at many offsets; a companion header with the
        // same value is a third copy, left in place.
        let access = "a".repeat(1200);
        let token = token(
            &access,
            &[
                ("authorization", format!("Bearer {access}")),
                ("x-api-key", access.clone()),
            ],
        );
        let shared = EncodedToken::encode_sharing(&token, &access);
        assert_eq!(shared.count, 2);
        assert_eq!(shared.encode_to_vec(), token.encode_to_vec());
        assert_eq!(Token::decode(shared.to_bytes()).unwrap(), token);
    }

    #[test]
    fn a_short_token_is_kept_as_one_encoding() {
        let token = token("abc", &[("authorization", "Bearer abc".into())]);
        let shared = EncodedToken::encode_sharing(&token, "abc");
        assert_eq!(shared.count, 0);
        assert_eq!(shared.encode_to_vec(), token.encode_to_vec());
    }
}
