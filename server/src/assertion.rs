//! Client assertions for `auth_method: private_key_jwt` and `client_secret_jwt` (RFC 7523
//! §2.2, OpenID Connect Core §9): a short-lived JWT signed with the client's private key,
//! or with its secret as an HMAC key, sent instead of the secret itself.

use std::time::{SystemTime, UNIX_EPOCH};

use base64::{Engine as _, engine::general_purpose::URL_SAFE_NO_PAD};
use jsonwebtoken::{Algorithm, EncodingKey, Header};
use serde::Serialize;
use sha1::{Digest as _, Sha1};
use sha2::Sha256;

use crate::{
    config::{PrivateKeyJwt, SigningAlgorithm},
    secret::{Secret, SecretError},
};

/// How long an assertion is valid: long enough to cross a slow network, short enough that
/// a captured one is soon useless.
const LIFETIME_SECS: u64 = 60;

/// Why a key or certificate cannot be used. Never includes key material.
#[derive(Debug, thiserror::Error)]
pub(crate) enum KeyError {
    /// The private key could not be read.
    #[error("{0}")]
    KeySource(SecretError),
    /// The private key is not a PEM key of the algorithm's kind.
    #[error("is not a PEM {kind} private key for {algorithm:?} ({reason})")]
    Key {
        /// RSA or EC.
        kind: &'static str,
        /// The configured algorithm.
        algorithm: SigningAlgorithm,
        /// What the parser said.
        reason: String,
    },
    /// The certificate could not be read.
    #[error("{0}")]
    CertificateSource(SecretError),
    /// The certificate is not a PEM certificate.
    #[error("is not a PEM certificate")]
    Certificate,
}

impl KeyError {
    /// The profile key the error is about.
    pub(crate) fn key(&self) -> &'static str {
        match self {
            Self::KeySource(_) | Self::Key { .. } => "private_key",
            Self::CertificateSource(_) | Self::Certificate => "certificate",
        }
    }
}

/// Why an assertion could not be made. Never includes key material.
#[derive(Debug, thiserror::Error)]
pub(crate) enum AssertionError {
    /// No randomness for the `jti`.
    #[error(transparent)]
    Random(getrandom::Error),
    /// The key would not sign.
    #[error(transparent)]
    Sign(jsonwebtoken::errors::Error),
}

/// Signs assertions for one client.
pub(crate) struct Signer {
    key: EncodingKey,
    header: Header,
}

#[derive(Serialize)]
struct Claims<'a> {
    iss: &'a str,
    sub: &'a str,
    aud: &'a str,
    /// Google reads a `jwt_bearer` grant's scopes from the assertion, not the form.
    #[serde(skip_serializing_if = "Option::is_none")]
    scope: Option<&'a str>,
    jti: String,
    iat: u64,
    nbf: u64,
    exp: u64,
}

impl Signer {
    /// Reads the key (and certificate) now, so that a rotated file is picked up.
    pub(crate) fn load(config: &PrivateKeyJwt) -> Result<Self, KeyError> {
        let pem = config.private_key.load().map_err(KeyError::KeySource)?;
        let (algorithm, kind) = match config.algorithm {
            SigningAlgorithm::RS256 => (Algorithm::RS256, "RSA"),
            SigningAlgorithm::PS256 => (Algorithm::PS256, "RSA"),
            SigningAlgorithm::ES256 => (Algorithm::ES256, "EC"),
        };
        let key_error = |reason: String| KeyError::Key {
            kind,
            algorithm: config.algorithm,
            reason,
        };
        let key = match kind {
            "EC" => EncodingKey::from_ec_pem(pem.expose().as_bytes()),
            _ => EncodingKey::from_rsa_pem(pem.expose().as_bytes()),
        }
        .map_err(|e| key_error(e.to_string()))?;

        let mut header = Header::new(algorithm);
        header.kid = config.key_id.clone();
        if let Some(source) = &config.certificate {
            let certificate = source.load().map_err(KeyError::CertificateSource)?;
            let der = pem::parse(certificate.expose())
                .ok()
                .filter(|p| p.tag() == "CERTIFICATE")
                .ok_or(KeyError::Certificate)?;
            // Entra ID identifies the key by certificate thumbprint: SHA-1 (`x5t`) in
            // older setups, SHA-256 (`x5t#S256`) in newer ones. Both are public.
            header.x5t = Some(URL_SAFE_NO_PAD.encode(Sha1::digest(der.contents())));
            header.x5t_s256 = Some(URL_SAFE_NO_PAD.encode(Sha256::digest(der.contents())));
        }
        let signer = Self { key, header };
        // A key that parses can still fail to sign (wrong curve, broken structure): find
        // out at load rather than at the first token request.
        signer
            .assertion("check", "https://check.invalid/token")
            .map_err(|e| key_error(e.to_string()))?;
        Ok(signer)
    }

    /// Signs with the client secret as an HMAC SHA-256 key (`client_secret_jwt`).
    pub(crate) fn hmac(secret: &Secret) -> Self {
        Self {
            key: EncodingKey::from_secret(secret.expose().as_bytes()),
            header: Header::new(Algorithm::HS256),
        }
    }

    /// A client assertion for `client_id` at the token endpoint `audience` (RFC 7523 §3:
    /// the client is both issuer and subject).
    pub(crate) fn assertion(
        &self,
        client_id: &str,
        audience: &str,
    ) -> Result<Secret, AssertionError> {
        self.sign(client_id, client_id, audience, None)
    }

    /// An assertion by `issuer` about `subject` for `audience`, with the `scope` asked for:
    /// the `jwt_bearer` grant's.
    pub(crate) fn sign(
        &self,
        issuer: &str,
        subject: &str,
        audience: &str,
        scope: Option<&str>,
    ) -> Result<Secret, AssertionError> {
        let now = SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .unwrap_or_default()
            .as_secs();
        let mut jti = [0u8; 16];
        getrandom::fill(&mut jti).map_err(AssertionError::Random)?;
        let claims = Claims {
            iss: issuer,
            sub: subject,
            aud: audience,
            scope,
            jti: URL_SAFE_NO_PAD.encode(jti),
            iat: now,
            nbf: now,
            exp: now + LIFETIME_SECS,
        };
        jsonwebtoken::encode(&self.header, &claims, &self.key)
            .map(Secret::new)
            .map_err(AssertionError::Sign)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn claims(jwt: &Secret) -> serde_json::Value {
        let payload = jwt.expose().split('.').nth(1).unwrap();
        serde_json::from_slice(&URL_SAFE_NO_PAD.decode(payload).unwrap()).unwrap()
    }

    #[test]
    fn a_bearer_assertion_names_issuer_subject_audience_and_scope() {
        let signer = Signer::hmac(&Secret::new("k".repeat(32)));
        let jwt = signer
            .sign("svc@p.iam", "admin@example.com", "https://t", Some("a b"))
            .unwrap();
        let c = claims(&jwt);
        assert_eq!(
            (&c["iss"], &c["sub"], &c["aud"], &c["scope"]),
            (
                &"svc@p.iam".into(),
                &"admin@example.com".into(),
                &"https://t".into(),
                &"a b".into()
            )
        );
        assert_eq!(
            c["exp"].as_u64().unwrap() - c["iat"].as_u64().unwrap(),
            LIFETIME_SECS
        );
        // A client assertion has no scope, and the client is issuer and subject both.
        let c = claims(&signer.assertion("app", "https://t").unwrap());
        assert_eq!((&c["iss"], &c["sub"]), (&"app".into(), &"app".into()));
        assert!(c.get("scope").is_none(), "{c}");
        assert_ne!(
            claims(&signer.assertion("app", "https://t").unwrap())["jti"],
            c["jti"],
            "a fresh jti each time"
        );
    }
}
