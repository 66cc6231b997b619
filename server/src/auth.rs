//! Caller authentication: who is calling — from the connection's client certificate or a
//! Kubernetes ServiceAccount token — and which profiles they may use.

pub(crate) mod jwt;

use std::{
    fmt,
    net::{IpAddr, Ipv4Addr},
    sync::Arc,
};

use tonic::metadata::MetadataMap;

use crate::config::{Profile, ServerConfig};
pub(crate) use crate::conn::Peer;

/// Who is calling.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub(crate) enum Caller {
    /// A verified identity: a SPIFFE ID, a DNS name or `system:serviceaccount:<ns>:<name>`.
    Identified(Arc<str>),
    /// Nobody authenticated the caller (authentication is off); keyed by address.
    Anonymous(Option<IpAddr>),
}

impl fmt::Display for Caller {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Self::Identified(identity) => f.write_str(identity),
            Self::Anonymous(Some(IpAddr::V4(ip))) => write_anonymous_v4(f, *ip),
            Self::Anonymous(Some(ip)) => write!(f, "anonymous@{ip}"),
            Self::Anonymous(None) => f.write_str("anonymous"),
        }
    }
}

/// Writes `anonymous@a.b.c.d` by hand: every GetToken's audit line has it, and `{ip}`
/// spends about 900 instructions on four small numbers.
fn write_anonymous_v4(f: &mut fmt::Formatter<'_>, ip: Ipv4Addr) -> fmt::Result {
    const PREFIX: &[u8] = b"anonymous@";
    let mut text = [0; PREFIX.len() + "255.255.255.255".len()];
    text[..PREFIX.len()].copy_from_slice(PREFIX);
    let mut len = PREFIX.len();
    let mut push = |b: u8| {
        text[len] = b;
        len += 1;
    };
    for (i, octet) in ip.octets().into_iter().enumerate() {
        if i > 0 {
            push(b'.');
        }
        if octet >= 100 {
            push(b'0' + octet / 100);
        }
        if octet >= 10 {
            push(b'0' + octet / 10 % 10);
        }
        push(b'0' + octet % 10);
    }
    f.write_str(std::str::from_utf8(&text[..len]).map_err(|_| fmt::Error)?)
}

impl Caller {
    /// Whether this caller may use the profile: every caller when the profile has no
    /// `allow` list, else an identified caller that matches an entry.
    pub(crate) fn may_use(&self, profile: &Profile) -> bool {
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
    /// A client certificate from the client CA that names no identity tokenvend accepts.
    #[error("{0}")]
    Certificate(crate::conn::CertificateRefusal),
    /// A ServiceAccount token that does not verify.
    #[error("the ServiceAccount token was refused: {0}")]
    Token(jwt::Rejection),
    /// The signing keys cannot be had, so no token can be checked.
    #[error("cannot verify callers now: {0}")]
    KeysUnavailable(Arc<jwt::KeysError>),
}

/// Turns a request's transport and metadata into a [`Caller`].
pub(crate) struct Authenticator {
    required: bool,
    what_to_send: &'static str,
    service_accounts: Option<jwt::Verifier>,
}

impl Authenticator {
    /// An authenticator for the server's configuration.
    pub(crate) fn new(server: &ServerConfig) -> Result<Self, reqwest::Error> {
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
    /// does (a certificate whose name is refused refuses the call); else the caller is
    /// anonymous, which is refused when authentication is on.
    pub(crate) async fn caller(
        &self,
        metadata: &MetadataMap,
        peer: Option<&Peer>,
    ) -> Result<Caller, AuthError> {
        if let Some(verifier) = &self.service_accounts
            && let Some(token) = bearer(metadata)
        {
            // Boxed: verifying (and perhaps fetching keys) is a large future, and every
            // call's future, including the anonymous and mTLS ones, would otherwise carry
            // its size and copy it at each await (~1.5 KB).
            return Box::pin(verifier.verify(token))
                .await
                .map(Caller::Identified);
        }
        if let Some(peer) = peer {
            if let Some(identity) = &peer.identity {
                return Ok(Caller::Identified(identity.clone()));
            }
            if let Some(refused) = peer.refused {
                return Err(AuthError::Certificate(refused));
            }
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

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn an_anonymous_caller_reads_as_its_address() {
        for ip in [
            "0.0.0.0",
            "10.20.255.9",
            "127.0.0.1",
            "100.99.10.1",
            "255.255.255.255",
            "::1",
            "fd00::a:1",
        ] {
            let ip: IpAddr = ip.parse().unwrap();
            let caller = Caller::Anonymous(Some(ip));
            assert_eq!(caller.to_string(), format!("anonymous@{ip}"));
        }
        assert_eq!(Caller::Anonymous(None).to_string(), "anonymous");
    }
}
