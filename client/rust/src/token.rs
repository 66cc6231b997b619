//! A vended token and how its headers go onto an HTTP request.

use std::{
    collections::HashMap,
    fmt,
    time::{Duration, SystemTime},
};

use http::{HeaderMap, HeaderName, HeaderValue};

use crate::Error;

/// A token as tokenvend vends it.
#[derive(Clone, PartialEq)]
pub struct Token {
    /// The access token.
    pub access_token: String,
    /// `Bearer`, or the provider's type.
    pub token_type: String,
    /// When the token expires.
    pub expires_at: SystemTime,
    /// The granted scopes.
    pub scopes: Vec<String>,
    /// The headers to put on the call to the resource API (`authorization` and any
    /// companion headers), names in lower case.
    pub headers: HashMap<String, String>,
    /// The profile.
    pub profile: String,
}

impl fmt::Debug for Token {
    // Tokens and header values (which hold the token and API keys) are never printed.
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Token")
            .field("profile", &self.profile)
            .field("token_type", &self.token_type)
            .field("expires_at", &self.expires_at)
            .field("scopes", &self.scopes)
            .field("headers", &self.headers.keys().collect::<Vec<_>>())
            .finish_non_exhaustive()
    }
}

impl Token {
    pub(crate) fn from_pb(token: tokenvend::pb::Token) -> Self {
        let expires_at = token
            .expires_at
            .and_then(|t| SystemTime::try_from(t).ok())
            .unwrap_or(SystemTime::UNIX_EPOCH);
        Self {
            access_token: token.access_token,
            token_type: token.token_type,
            expires_at,
            scopes: token.scopes,
            headers: token.headers,
            profile: token.profile,
        }
    }

    /// How long the token stays valid from now.
    pub fn remaining(&self) -> Duration {
        self.expires_at
            .duration_since(SystemTime::now())
            .unwrap_or_default()
    }

    /// Sets every header of the token on `headers`, replacing any of the same name. The
    /// values are marked sensitive, which keeps them out of `Debug` prints and HPACK
    /// tables.
    pub fn apply(&self, headers: &mut HeaderMap) -> Result<(), Error> {
        for (name, value) in &self.headers {
            let invalid = || Error::InvalidHeader { name: name.clone() };
            let header = HeaderName::from_bytes(name.as_bytes()).map_err(|_| invalid())?;
            let mut value = HeaderValue::from_str(value).map_err(|_| invalid())?;
            value.set_sensitive(true);
            headers.insert(header, value);
        }
        Ok(())
    }
}

/// Puts a token's headers on an `http` request being built.
pub fn apply_headers(token: &Token, mut request: http::request::Builder) -> http::request::Builder {
    if let Some(headers) = request.headers_mut()
        && let Err(error) = token.apply(headers)
    {
        // `http::request::Builder` keeps only its own error type; an invalid header
        // from tokenvend surfaces as such when the request is built.
        let name = match error {
            Error::InvalidHeader { name } => name,
            _ => String::new(),
        };
        request = request.header(name.as_str(), "\u{0}");
    }
    request
}

/// Puts a token's headers on a reqwest request being built.
#[cfg(feature = "reqwest")]
pub fn with_headers(token: &Token, request: reqwest::RequestBuilder) -> reqwest::RequestBuilder {
    let mut headers = HeaderMap::new();
    match token.apply(&mut headers) {
        Ok(()) => request.headers(headers),
        // reqwest keeps the error and reports it from `send`, without the value.
        Err(Error::InvalidHeader { name }) => request.header(name.as_str(), "\u{0}"),
        Err(_) => request,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn token(headers: &[(&str, &str)]) -> Token {
        Token {
            access_token: "secret-token".into(),
            token_type: "Bearer".into(),
            expires_at: SystemTime::now() + Duration::from_secs(60),
            scopes: vec![],
            headers: headers
                .iter()
                .map(|(n, v)| ((*n).to_owned(), (*v).to_owned()))
                .collect(),
            profile: "p".into(),
        }
    }

    #[test]
    fn headers_are_set_sensitive_and_replace_old_ones() {
        let mut headers = HeaderMap::new();
        headers.insert("authorization", HeaderValue::from_static("Bearer old"));
        token(&[("authorization", "Bearer secret-token"), ("x-api-key", "k")])
            .apply(&mut headers)
            .unwrap();
        assert_eq!(headers["authorization"], "Bearer secret-token");
        assert_eq!(headers.get_all("authorization").iter().count(), 1);
        assert!(headers["x-api-key"].is_sensitive());
        assert!(!format!("{headers:?}").contains("secret-token"));
    }

    #[test]
    fn an_invalid_header_is_named_without_its_value() {
        let error = token(&[("authorization", "Bearer secret-token\n")])
            .apply(&mut HeaderMap::new())
            .unwrap_err();
        assert_eq!(
            error.to_string(),
            "invalid header \"authorization\" from tokenvend"
        );
        let built = apply_headers(
            &token(&[("authorization", "Bearer secret-token\n")]),
            http::Request::get("http://x"),
        )
        .body(());
        assert!(built.is_err());
    }
}
