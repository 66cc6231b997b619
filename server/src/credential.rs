//! A profile's proof of identity for one token request: its client secret, or a client
//! assertion signed with its key, read (and signed) afresh for each request so that a
//! rotated secret or key file is used at once. A credential that cannot be had is a
//! [`CredentialError`], a problem of the profile's configuration, never of the provider.

use url::Url;

use crate::{
    assertion::Signer,
    config::{ClientAuth, Profile, TlsClientAuth},
    idp::Credential,
    secret::Secret,
};

/// A credential of a profile (secret, key, companion header) cannot be used.
#[derive(Debug, Clone, thiserror::Error)]
#[error("{key}: {reason}")]
pub struct CredentialError {
    /// The configuration key of the credential.
    pub(crate) key: String,
    /// Why, never including its value.
    pub(crate) reason: String,
}

impl CredentialError {
    pub(crate) fn new(profile: &Profile, key: &str, reason: impl ToString) -> Self {
        Self {
            key: format!("profiles.{}.{key}", profile.name),
            reason: reason.to_string(),
        }
    }
}

/// The `jwt_bearer` grant's assertion for a request to `token_url`, signed now with the
/// profile's key (read now, so that a rotated key file is used).
pub(crate) fn bearer_assertion(
    profile: &Profile,
    token_url: &Url,
) -> Result<Secret, CredentialError> {
    let Some(bearer) = &profile.jwt_bearer else {
        return Err(CredentialError::new(
            profile,
            "grant",
            "is not `jwt_bearer`: there is no assertion to make",
        ));
    };
    let signer =
        Signer::load(&bearer.key).map_err(|e| CredentialError::new(profile, e.key(), e))?;
    let audience = bearer.audience.as_deref().unwrap_or(token_url.as_str());
    let scope = (!profile.scopes.is_empty()).then(|| profile.scopes.join(" "));
    signer
        .sign(
            &profile.client_id,
            &bearer.subject,
            audience,
            scope.as_deref(),
        )
        .map_err(|e| CredentialError::new(profile, "private_key", e))
}

/// The client certificate and key of a mutual-TLS client as one PEM, read now (so that a
/// rotated certificate is used at the next request) and checked to make an identity.
pub(crate) fn tls_identity(
    profile: &Profile,
    tls: &TlsClientAuth,
) -> Result<Secret, CredentialError> {
    let certificate = tls
        .certificate
        .load()
        .map_err(|e| CredentialError::new(profile, "client_certificate", e))?;
    let key = tls
        .key
        .load()
        .map_err(|e| CredentialError::new(profile, "client_key", e))?;
    if pem::parse_many(certificate.expose())
        .ok()
        .is_none_or(|p| !p.iter().any(|p| p.tag() == "CERTIFICATE"))
    {
        return Err(CredentialError::new(
            profile,
            "client_certificate",
            "holds no PEM certificate",
        ));
    }
    let identity = Secret::new(format!("{}\n{}\n", certificate.expose(), key.expose()));
    reqwest::Identity::from_pem(identity.expose().as_bytes()).map_err(|_| {
        CredentialError::new(
            profile,
            "client_key",
            "is not a PEM private key (PKCS#8, PKCS#1 RSA or SEC1 EC) for the certificate",
        )
    })?;
    Ok(identity)
}

/// The credential for a request to `token_url` (the audience of an assertion).
pub(crate) fn load(profile: &Profile, token_url: &Url) -> Result<Credential, CredentialError> {
    let error = |key: &str, reason: String| CredentialError::new(profile, key, reason);
    Ok(match &profile.client_auth {
        ClientAuth::SecretPost(source) => Credential::Post(
            source
                .load()
                .map_err(|e| error("client_secret", e.to_string()))?,
        ),
        ClientAuth::SecretBasic(source) => Credential::Basic(
            source
                .load()
                .map_err(|e| error("client_secret", e.to_string()))?,
        ),
        ClientAuth::SecretJwt(source) => {
            let secret = source
                .load()
                .map_err(|e| error("client_secret", e.to_string()))?;
            Credential::Assertion(
                Signer::hmac(&secret)
                    .assertion(&profile.client_id, token_url.as_str())
                    .map_err(|e| error("client_secret", e.to_string()))?,
            )
        }
        ClientAuth::None => Credential::None,
        ClientAuth::Tls(tls) => Credential::Tls(tls_identity(profile, tls)?),
        ClientAuth::Assertion(source) => Credential::Assertion(
            source
                .load()
                .map_err(|e| error("client_assertion", e.to_string()))?,
        ),
        ClientAuth::PrivateKeyJwt(config) => {
            // Loaded per request (a few an hour) so that a rotated key file is used.
            let signer = Signer::load(config).map_err(|e| error(e.key(), e.to_string()))?;
            Credential::Assertion(
                signer
                    .assertion(&profile.client_id, token_url.as_str())
                    .map_err(|e| error("private_key", e.to_string()))?,
            )
        }
    })
}
