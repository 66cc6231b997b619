//! Finding a token endpoint from an issuer: OAuth 2.0 Authorization Server Metadata
//! (RFC 8414) first, then OpenID Connect Discovery, as Okta custom authorization servers
//! and Entra ID (`https://login.microsoftonline.com/{tenant}/v2.0`) publish them.

use std::time::Duration;

use serde_json::Value;
use url::Url;

use super::{IdpClient, IdpError};
use crate::config::parse_endpoint_url;

/// What tokenvend uses of an issuer's metadata.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct Metadata {
    /// The issuer, as the metadata states it.
    pub issuer: String,
    /// The token endpoint.
    pub token_endpoint: Url,
    /// The authorization endpoint, if the issuer has one.
    pub authorization_endpoint: Option<Url>,
    /// The token revocation endpoint (RFC 7009), if the issuer has one.
    pub revocation_endpoint: Option<Url>,
}

const WELL_KNOWN: [&str; 2] = [
    "/.well-known/oauth-authorization-server",
    "/.well-known/openid-configuration",
];

impl IdpClient {
    /// Fetches an issuer's metadata and checks that it speaks for that issuer.
    pub(crate) async fn discover(
        &self,
        issuer: &Url,
        timeout: Duration,
    ) -> Result<Metadata, IdpError> {
        let base = issuer.as_str().trim_end_matches('/');
        let mut last_error = None;
        for suffix in WELL_KNOWN {
            let url = Url::parse(&format!("{base}{suffix}"))
                .map_err(|e| IdpError::Malformed(format!("bad metadata URL: {e}")))?;
            let answer = self.get_json(&url, timeout).await?;
            if !(200..300).contains(&answer.status) {
                last_error = Some(IdpError::Status {
                    status: answer.status,
                    content_type: answer
                        .content_type
                        .as_deref()
                        .map(super::redact::media_type),
                    error: None,
                    retry_after: answer.retry_after,
                });
                continue;
            }
            return parse(&answer.body, base);
        }
        Err(last_error.unwrap_or_else(|| IdpError::Malformed("no metadata".into())))
    }
}

fn parse(body: &[u8], expected_issuer: &str) -> Result<Metadata, IdpError> {
    let malformed = |what: String| IdpError::Malformed(format!("issuer metadata: {what}"));
    let Ok(Value::Object(map)) = serde_json::from_slice::<Value>(body) else {
        return Err(malformed("not a JSON object".into()));
    };
    let issuer = map
        .get("issuer")
        .and_then(Value::as_str)
        .ok_or_else(|| malformed("no `issuer`".into()))?;
    // RFC 8414 §3.3: metadata for another issuer must not be used (a mix-up attack, or a
    // misconfigured proxy).
    if issuer.trim_end_matches('/') != expected_issuer {
        return Err(IdpError::Misconfigured(format!(
            "the issuer metadata is for `{}`, not `{expected_issuer}`; check the profile's `issuer`",
            super::redact::sanitize(issuer)
        )));
    }
    let endpoint = |key: &str| -> Result<Option<Url>, IdpError> {
        map.get(key)
            .and_then(Value::as_str)
            .map(|text| {
                parse_endpoint_url(text).map_err(|m| {
                    // The provider's text, so shortened and made printable.
                    IdpError::Misconfigured(format!(
                        "the issuer metadata's `{key}`: {}",
                        super::redact::sanitize(&m.to_string())
                    ))
                })
            })
            .transpose()
    };
    Ok(Metadata {
        issuer: issuer.to_owned(),
        token_endpoint: endpoint("token_endpoint")?
            .ok_or_else(|| malformed("no `token_endpoint`".into()))?,
        authorization_endpoint: endpoint("authorization_endpoint")?,
        // Only used to revoke a deleted connection's token, best effort: a bad one must
        // not keep the token endpoint from being used.
        revocation_endpoint: endpoint("revocation_endpoint").ok().flatten(),
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn metadata_must_name_the_configured_issuer() {
        let body = br#"{"issuer":"https://idm.example.com/oauth2/aus1","token_endpoint":"https://idm.example.com/oauth2/aus1/v1/token"}"#;
        let metadata = parse(body, "https://idm.example.com/oauth2/aus1").unwrap();
        assert_eq!(
            metadata.token_endpoint.as_str(),
            "https://idm.example.com/oauth2/aus1/v1/token"
        );
        let error = parse(body, "https://idm.example.com/oauth2/other").unwrap_err();
        assert!(
            error
                .to_string()
                .contains("not `https://idm.example.com/oauth2/other`")
        );
    }

    #[test]
    fn a_plain_http_token_endpoint_off_loopback_is_refused() {
        let body = br#"{"issuer":"https://idm.example.com","token_endpoint":"http://idm.example.com/token"}"#;
        assert!(parse(body, "https://idm.example.com").is_err());
    }
}
