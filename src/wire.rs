//! A `Token` reply that was encoded once, when the token was obtained.
//!
//! Every cache hit answers with the same bytes, so serving a token copies a buffer
//! reference instead of the token string, its headers map and its scopes.

use std::fmt;

use bytes::{Buf, BufMut, Bytes};
use prost::{
    DecodeError, Message,
    encoding::{DecodeContext, WireType, skip_field},
};

use crate::pb::Token;

/// A `tokenvend.v1.Token` in its protobuf encoding. It is the reply type of the generated
/// server stubs; clients decode it as a plain [`Token`].
#[derive(Clone, Default, PartialEq, Eq)]
pub struct EncodedToken(Bytes);

impl EncodedToken {
    /// Encodes a token.
    pub fn encode(token: &Token) -> Self {
        Self(Bytes::from(token.encode_to_vec()))
    }

    /// The encoded bytes.
    pub fn as_bytes(&self) -> &[u8] {
        &self.0
    }
}

impl fmt::Debug for EncodedToken {
    // The bytes hold an access token: never print them.
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "EncodedToken({} bytes)", self.0.len())
    }
}

impl Message for EncodedToken {
    fn encode_raw(&self, buf: &mut impl BufMut) {
        buf.put_slice(&self.0);
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
        self.0.len()
    }

    fn clear(&mut self) {
        self.0 = Bytes::new();
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
}
