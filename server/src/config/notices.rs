//! `server.notices`: the webhook told when a profile needs a person, or has failed for
//! long. Checked for shape here; the secret is read by the runtime (`app`, `notice`).

use std::{fmt, time::Duration};

use serde::Deserialize;
use url::Url;

use crate::secret::{RawSecretSource, SecretSource};

use super::{ConfigError, Dur, EndpointError, nonzero, parse_endpoint_url};

/// Where notices go and how they are signed (see `docs/notices.md`).
#[derive(Clone, PartialEq, Eq)]
pub struct NoticesConfig {
    /// The receiver: https, or http to loopback.
    pub webhook: Url,
    /// The shared secret the body is signed with (Standard Webhooks): `whsec_` and
    /// base64, or any other text taken as the key's bytes. Read again at each notice.
    pub secret: SecretSource,
    /// How long a profile fails without a break before a `failing` notice.
    pub failing_after: Duration,
    /// How long one delivery attempt may take, answer included.
    pub timeout: Duration,
    /// The CloudEvents `source` of every notice.
    pub source: String,
}

// By hand: a webhook URL often carries its own credential in its path or query (chat
// services' incoming webhooks do), so only its scheme and host are ever printed.
impl fmt::Debug for NoticesConfig {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("NoticesConfig")
            .field("webhook", &WebhookOrigin(&self.webhook))
            .field("secret", &self.secret)
            .field("failing_after", &self.failing_after)
            .field("timeout", &self.timeout)
            .field("source", &self.source)
            .finish()
    }
}

/// A webhook URL as logs may show it: scheme, host and port, no path or query.
pub(crate) struct WebhookOrigin<'a>(pub(crate) &'a Url);

impl fmt::Debug for WebhookOrigin<'_> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        fmt::Display::fmt(self, f)
    }
}

impl fmt::Display for WebhookOrigin<'_> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0.origin().ascii_serialization())
    }
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
pub(super) struct RawNotices {
    webhook: String,
    secret: RawSecretSource,
    failing_after: Option<Dur>,
    timeout: Option<Dur>,
    source: Option<String>,
}

/// The default `failing_after`: long enough that a provider's short outage, which the
/// cache rides out on its still-valid tokens, wakes nobody.
const FAILING_AFTER: Duration = Duration::from_secs(15 * 60);
const TIMEOUT: Duration = Duration::from_secs(5);

impl RawNotices {
    pub(super) fn validate(self) -> Result<NoticesConfig, ConfigError> {
        let key = |k: &str| format!("server.notices.{k}");
        // The messages never repeat the URL: it may carry the receiver's credential.
        let webhook = parse_endpoint_url(&self.webhook).map_err(|e| {
            ConfigError::new(
                key("webhook"),
                match e {
                    EndpointError::NotUrl { reason, .. } => format!("is not a URL: {reason}"),
                    EndpointError::PlainHttp(_) => {
                        "is plain http to a host that is not loopback; use https".to_owned()
                    }
                    EndpointError::Credentials => {
                        "must not carry `user:password@`; the receiver checks the signature"
                            .to_owned()
                    }
                    other => other.to_string(),
                },
            )
        })?;
        let secret = self
            .secret
            .into_source()
            .map_err(|e| ConfigError::new(key("secret"), e.to_string()))?;
        let failing_after = nonzero(&key("failing_after"), self.failing_after, FAILING_AFTER)?;
        let timeout = nonzero(&key("timeout"), self.timeout, TIMEOUT)?;
        let source = match self.source {
            None => default_source(),
            Some(source) => {
                if source.is_empty()
                    || source.len() > 256
                    || source.chars().any(|c| c.is_whitespace() || c.is_control())
                {
                    return Err(ConfigError::new(
                        key("source"),
                        "must be a URI reference of 1 to 256 characters without spaces, such as `https://tokenvend.example.com` or `/tokenvend/prod`",
                    ));
                }
                source
            }
        };
        Ok(NoticesConfig {
            webhook,
            secret,
            failing_after,
            timeout,
            source,
        })
    }
}

/// `tokenvend://HOST`, HOST being the machine's (a pod's) name: which replica saw it.
fn default_source() -> String {
    let host = std::env::var("HOSTNAME")
        .ok()
        .or_else(|| std::fs::read_to_string("/etc/hostname").ok())
        .map(|h| h.trim().to_owned())
        .filter(|h| {
            !h.is_empty()
                && h.len() <= 253
                && h.bytes()
                    .all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'.')
        })
        .unwrap_or_else(|| "localhost".to_owned());
    format!("tokenvend://{}", host.to_ascii_lowercase())
}
