//! Caller authentication: who is calling — from the connection's client certificate or a
//! Kubernetes ServiceAccount token — and which profiles they may use.

mod allow;
pub mod jwt;

use std::{
    fmt,
    net::{IpAddr, SocketAddr},
    sync::Arc,
};

use tonic::metadata::MetadataMap;

pub use allow::Pattern;

use crate::config::{Profile, ServerConfig};

/// What the transport knows about a connection. tonic puts a copy in every request's
/// extensions, so the certificate is read once per connection, not once per call.
#[derive(Debug, Clone)]
pub struct Peer {
    /// The caller's address.
    pub remote: Option<SocketAddr>,
    /// The identity in the client certificate (URI SAN, else DNS SAN), if one was verified.
    pub identity: Option<Arc<str>>,
}

/// Who is calling.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub enum Caller {
    /// A verified identity: a SPIFFE ID, a DNS name or `system:serviceaccount:<ns>:<name>`.
    Identified(Arc<str>),
    /// Nobody authenticated the caller (authentication is off); keyed by address.
    Anonymous(Option<IpAddr>),
}

impl fmt::Display for Caller {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Self::Identified(identity) => f.write_str(identity),
            Self::Anonymous(Some(ip)) => write!(f, "anonymous@{ip}"),
            Self::Anonymous(None) => f.write_str("anonymous"),
        }
    }
}

impl Caller {
    /// Whether this caller may use the profile: every caller when the profile has no
    /// `allow` list, else an identified caller that matches an entry.
    pub fn may_use(&self, profile: &Profile) -> bool {
        match (&profile.allow, self) {
            (None, _) => true,
            (Some(allow), Self::Identified(identity)) => allow.iter().any(|p| p.matches(identity)),
            (Some(_), Self::Anonymous(_)) => false,
        }
    }
}

/// Why a caller is not authenticated. The text is sent to the caller; it never holds
/// the token.
#[derive(Debug, Clone, thiserror::Error)]
pub enum AuthError {
    /// No credentials at all.
    #[error("no caller credentials: {0}")]
    Missing(&'static str),
    /// A ServiceAccount token that does not verify.
    #[error("the ServiceAccount token was refused: {0}")]
    Token(jwt::Rejection),
    /// The signing keys cannot be had, so no token can be checked.
    #[error("cannot verify callers now: {0}")]
    KeysUnavailable(String),
}

/// Turns a request's transport and metadata into a [`Caller`].
pub struct Authenticator {
    required: bool,
    what_to_send: &'static str,
    service_accounts: Option<jwt::Verifier>,
}

impl Authenticator {
    /// An authenticator for the server's configuration.
    pub fn new(server: &ServerConfig) -> Result<Self, reqwest::Error> {
        let mtls = server.tls.as_ref().is_some_and(|t| t.client_ca.is_some());
        let service_accounts = server
            .auth
            .service_account
            .as_ref()
            .map(jwt::Verifier::new)
            .transpose()?;
        let what_to_send = match (mtls, service_accounts.is_some()) {
            (true, true) => {
                "present a client certificate, or a ServiceAccount token as `authorization: Bearer <token>`"
            }
            (true, false) => "present a client certificate with a URI or DNS SAN",
            _ => "send a ServiceAccount token as `authorization: Bearer <token>`",
        };
        Ok(Self {
            required: server.authenticates_callers(),
            what_to_send,
            service_accounts,
        })
    }

    /// Who is calling. A bearer token, when ServiceAccount authentication is on and the
    /// caller sends one, must verify and names the caller; else the client certificate
    /// does; else the caller is anonymous, which is refused when authentication is on.
    pub async fn caller(
        &self,
        metadata: &MetadataMap,
        peer: Option<&Peer>,
    ) -> Result<Caller, AuthError> {
        if let Some(verifier) = &self.service_accounts
            && let Some(token) = bearer(metadata)
        {
            return verifier.verify(token).await.map(Caller::Identified);
        }
        if let Some(identity) = peer.and_then(|p| p.identity.as_ref()) {
            return Ok(Caller::Identified(identity.clone()));
        }
        if self.required {
            return Err(AuthError::Missing(self.what_to_send));
        }
        Ok(Caller::Anonymous(
            peer.and_then(|p| p.remote).map(|a| a.ip()),
        ))
    }
}

fn bearer(metadata: &MetadataMap) -> Option<&str> {
    let value = metadata.get("authorization")?.to_str().ok()?;
    let (scheme, token) = value.split_once(' ')?;
    scheme
        .eq_ignore_ascii_case("bearer")
        .then(|| token.trim())
        .filter(|t| !t.is_empty())
}
