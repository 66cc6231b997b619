//! `server.store`: where state shared by replicas lives. Absent, each server keeps its own
//! (the embedded mode: memory, plus `state_dir` for refresh-token chains).

use std::time::Duration;

use serde::Deserialize;
use url::Url;

use super::{ConfigError, Dur, nonzero};
use crate::secret::{RawSecretSource, SecretSource};

/// How long a chain write waits for replicas by default: replication on a healthy network
/// takes a millisecond; much longer means the replica is gone, not slow.
const DEFAULT_ACK_TIMEOUT: Duration = Duration::from_millis(500);
/// The longest a chain write may wait for replicas: the access token that came with the
/// rotated refresh token waits for it (five tries, when no replica answers).
const MAX_ACK_TIMEOUT: Duration = Duration::from_secs(10);

/// A Redis shared by all replicas: one address, or a primary that Sentinel names.
#[derive(Clone, PartialEq, Eq)]
pub struct RedisConfig {
    /// Where the primary is.
    pub target: RedisTarget,
    /// Prepended to every key, so that several deployments can share one Redis.
    pub key_prefix: String,
    /// The password (`AUTH`) of the Redis servers, if they require one.
    pub password: Option<SecretSource>,
    /// The AES-256-GCM keys tokens are encrypted with; the first encrypts, all decrypt,
    /// so a key can be rotated without losing what the old one wrote.
    pub encryption_keys: Vec<EncryptionKey>,
    /// How many replicas must have a refresh-token chain's new link before the access
    /// token that came with it is served (`WAIT`); 0 does not wait.
    pub replicas_to_ack: u32,
    /// How long a chain write waits for them.
    pub ack_timeout: Duration,
}

/// Where the shared store's primary is.
#[derive(Clone, PartialEq, Eq)]
pub enum RedisTarget {
    /// `redis://host:port/db` or `rediss://` (TLS). Never logged: it may hold a password.
    Url(Url),
    /// Whichever server the sentinels name as the primary of a master group.
    Sentinel(SentinelConfig),
}

/// The sentinels that watch the shared store and promote a replica when its primary fails.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SentinelConfig {
    /// The master group's name (`sentinel monitor <name> ...`).
    pub master: String,
    /// The sentinels' addresses, asked in order.
    pub nodes: Vec<SentinelNode>,
    /// The sentinels' own password (their `requirepass`), if they require one.
    pub password: Option<SecretSource>,
    /// TLS to the sentinels and to the servers they name.
    pub tls: bool,
}

/// One sentinel's address.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SentinelNode {
    /// A host name or IP address.
    pub host: String,
    /// Its port (26379 unless given).
    pub port: u16,
}

impl std::fmt::Debug for RedisConfig {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let mut debug = f.debug_struct("RedisConfig");
        match &self.target {
            RedisTarget::Url(url) => {
                // The URL without its password, if it has one.
                let mut url = url.clone();
                if url.password().is_some() {
                    let _ = url.set_password(Some("<redacted>"));
                }
                debug.field("url", &url.as_str())
            }
            RedisTarget::Sentinel(sentinel) => debug.field("sentinel", sentinel),
        };
        debug
            .field("key_prefix", &self.key_prefix)
            .field("password", &self.password)
            .field("encryption_keys", &self.encryption_keys)
            .field("replicas_to_ack", &self.replicas_to_ack)
            .field("ack_timeout", &self.ack_timeout)
            .finish()
    }
}

/// One encryption key, named so that a stored value says which key wrote it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct EncryptionKey {
    /// The key id written into each value it encrypts.
    pub id: String,
    /// 32 bytes, base64.
    pub key: SecretSource,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
pub(super) struct RawStore {
    redis: Option<RawRedis>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RawRedis {
    url: Option<String>,
    sentinel: Option<RawSentinel>,
    key_prefix: Option<String>,
    password: Option<RawSecretSource>,
    #[serde(default)]
    tls: bool,
    #[serde(default)]
    encryption_keys: Vec<RawEncryptionKey>,
    replicas_to_ack: Option<u32>,
    ack_timeout: Option<Dur>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RawSentinel {
    master: String,
    nodes: Vec<String>,
    password: Option<RawSecretSource>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RawEncryptionKey {
    id: String,
    key: RawSecretSource,
}

impl RawStore {
    pub(super) fn validate(self) -> Result<Option<RedisConfig>, ConfigError> {
        self.redis.map(RawRedis::validate).transpose()
    }
}

impl RawRedis {
    fn validate(self) -> Result<RedisConfig, ConfigError> {
        const KEY: &str = "server.store.redis";
        let target = match (self.url, self.sentinel) {
            (Some(url), None) => RedisTarget::Url(redis_url(&url, self.tls)?),
            (None, Some(sentinel)) => RedisTarget::Sentinel(sentinel.validate(self.tls)?),
            (Some(_), Some(_)) => {
                return Err(ConfigError::new(
                    format!("{KEY}.sentinel"),
                    "give either `url` or `sentinel`, not both",
                ));
            }
            (None, None) => {
                return Err(ConfigError::new(
                    format!("{KEY}.url"),
                    "is required (or `sentinel`, to follow a primary that Sentinel fails over)",
                ));
            }
        };
        // With Sentinel there is a replica to fail over to, and a link it lacks is lost
        // with the primary; a plain URL is often a lone server, where waiting for a
        // replica would fail every write.
        let replicas_to_ack = self
            .replicas_to_ack
            .unwrap_or(u32::from(matches!(target, RedisTarget::Sentinel(_))));
        let ack_timeout = nonzero(
            &format!("{KEY}.ack_timeout"),
            self.ack_timeout,
            DEFAULT_ACK_TIMEOUT,
        )?;
        if ack_timeout > MAX_ACK_TIMEOUT {
            return Err(ConfigError::new(
                format!("{KEY}.ack_timeout"),
                "must be at most 10s: the access token of a rotation waits for it",
            ));
        }
        let key_prefix = self.key_prefix.unwrap_or_else(|| "tokenvend".into());
        if key_prefix.is_empty() {
            return Err(ConfigError::new(
                format!("{KEY}.key_prefix"),
                "must not be empty",
            ));
        }
        let password = self
            .password
            .map(|raw| super::secret_source(raw, &format!("{KEY}.password")))
            .transpose()?;
        if self.encryption_keys.is_empty() {
            return Err(ConfigError::new(
                format!("{KEY}.encryption_keys"),
                "at least one key is required: tokens are stored encrypted",
            ));
        }
        let mut encryption_keys = Vec::with_capacity(self.encryption_keys.len());
        for (i, raw) in self.encryption_keys.into_iter().enumerate() {
            let key = format!("{KEY}.encryption_keys[{i}]");
            if raw.id.is_empty()
                || !raw
                    .id
                    .chars()
                    .all(|c| c.is_ascii_alphanumeric() || "-_.".contains(c))
            {
                return Err(ConfigError::new(
                    format!("{key}.id"),
                    "must be letters, digits, `-`, `_` or `.`",
                ));
            }
            if encryption_keys
                .iter()
                .any(|k: &EncryptionKey| k.id == raw.id)
            {
                return Err(ConfigError::new(
                    format!("{key}.id"),
                    format!("`{}` is used twice", raw.id),
                ));
            }
            let source = super::secret_source(raw.key, &format!("{key}.key"))?;
            encryption_keys.push(EncryptionKey {
                id: raw.id,
                key: source,
            });
        }
        Ok(RedisConfig {
            target,
            key_prefix,
            password,
            encryption_keys,
            replicas_to_ack,
            ack_timeout,
        })
    }
}

/// `server.store.redis.url`, with `tls` applied. The text is never echoed: a Redis URL may
/// carry a password.
fn redis_url(text: &str, tls: bool) -> Result<Url, ConfigError> {
    const KEY: &str = "server.store.redis.url";
    let mut url = Url::parse(text)
        .map_err(|e| ConfigError::new(KEY, format!("is not a URL like redis://host:6379: {e}")))?;
    match (url.scheme(), tls) {
        ("rediss", _) => {}
        ("redis", true) => url
            .set_scheme("rediss")
            .map_err(|()| ConfigError::new(KEY, "cannot use TLS"))?,
        ("redis", false) => {}
        (other, _) => {
            return Err(ConfigError::new(
                KEY,
                format!("scheme `{other}` is not redis or rediss"),
            ));
        }
    }
    if url.host_str().is_none_or(str::is_empty) {
        return Err(ConfigError::new(KEY, "has no host"));
    }
    Ok(url)
}

impl RawSentinel {
    fn validate(self, tls: bool) -> Result<SentinelConfig, ConfigError> {
        const KEY: &str = "server.store.redis.sentinel";
        if self.master.is_empty()
            || !self
                .master
                .chars()
                .all(|c| c.is_ascii_graphic() && c != '"' && c != '\\')
        {
            return Err(ConfigError::new(
                format!("{KEY}.master"),
                "must be the master group's name as the sentinels know it (letters, digits, punctuation)",
            ));
        }
        if self.nodes.is_empty() {
            return Err(ConfigError::new(
                format!("{KEY}.nodes"),
                "at least one sentinel is required (three or more, so that they can agree on a failover)",
            ));
        }
        let mut nodes: Vec<SentinelNode> = Vec::with_capacity(self.nodes.len());
        for (i, text) in self.nodes.iter().enumerate() {
            let key = format!("{KEY}.nodes[{i}]");
            let node = sentinel_node(text).map_err(|e| ConfigError::new(&key, e.to_string()))?;
            if nodes.contains(&node) {
                return Err(ConfigError::new(key, format!("`{text}` is listed twice")));
            }
            nodes.push(node);
        }
        let password = self
            .password
            .map(|raw| super::secret_source(raw, &format!("{KEY}.password")))
            .transpose()?;
        Ok(SentinelConfig {
            master: self.master,
            nodes,
            password,
            tls,
        })
    }
}

/// A Sentinel node that is not an address. Its text is not echoed: one written as a URL
/// may carry a password.
#[derive(Debug, thiserror::Error)]
#[error("is not an address like sentinel-0.redis:26379")]
struct NotAnAddress;

/// `host:port`, `host` (port 26379) or `[v6]:port`: an address, nothing else.
fn sentinel_node(text: &str) -> Result<SentinelNode, NotAnAddress> {
    let shape = || NotAnAddress;
    if text.is_empty() || text.contains(['/', '@', '?', '#']) || text.contains(char::is_whitespace)
    {
        return Err(shape());
    }
    let url = Url::parse(&format!("redis://{text}")).map_err(|_| shape())?;
    let host = match url.host() {
        Some(url::Host::Domain(d)) if !d.is_empty() => d.to_owned(),
        Some(url::Host::Ipv4(ip)) => ip.to_string(),
        Some(url::Host::Ipv6(ip)) => ip.to_string(),
        _ => return Err(shape()),
    };
    Ok(SentinelNode {
        host,
        port: url.port().unwrap_or(26379),
    })
}

#[cfg(test)]
mod tests {
    use std::time::Duration;

    use super::{RedisTarget, SentinelNode};
    use crate::config::{Config, ConfigError};

    const KEY: &str = "BwcHBwcHBwcHBwcHBwcHBwcHBwcHBwcHBwcHBwcHBwc=";

    fn yaml(redis: &str) -> String {
        format!(
            "server:\n  store:\n    redis:\n{redis}      encryption_keys: [{{ id: k, key: {{ value: \"{KEY}\" }} }}]\nprofiles:\n  p:\n    token_url: https://idp.example.com/token\n    client_id: c\n    client_secret: {{ value: s }}\n"
        )
    }

    fn error(redis: &str) -> ConfigError {
        Config::from_yaml(&yaml(redis)).unwrap_err().first().clone()
    }

    #[test]
    fn sentinel_parses_and_waits_for_one_replica_by_default() {
        let config = Config::from_yaml(&yaml(
            "      sentinel:\n        master: tv-main\n        nodes: [\"s0.redis:26380\", s1.redis, \"[::1]:26379\"]\n        password: { env: SENTINEL_PW }\n      tls: true\n",
        ))
        .unwrap();
        let store = config.server.store.unwrap();
        let RedisTarget::Sentinel(sentinel) = &store.target else {
            panic!("not sentinel: {store:?}");
        };
        assert_eq!(sentinel.master, "tv-main");
        let node = |host: &str, port| SentinelNode {
            host: host.into(),
            port,
        };
        assert_eq!(
            sentinel.nodes,
            [
                node("s0.redis", 26380),
                node("s1.redis", 26379),
                node("::1", 26379)
            ]
        );
        assert!(sentinel.password.is_some() && sentinel.tls);
        assert_eq!(store.replicas_to_ack, 1);
        assert_eq!(store.ack_timeout, Duration::from_millis(500));

        // A plain URL is often a lone server: no wait unless asked.
        let plain = Config::from_yaml(&yaml("      url: redis://r:6379\n")).unwrap();
        assert_eq!(plain.server.store.unwrap().replicas_to_ack, 0);
        let asked = Config::from_yaml(&yaml(
            "      url: redis://r:6379\n      replicas_to_ack: 2\n      ack_timeout: 2s\n",
        ))
        .unwrap()
        .server
        .store
        .unwrap();
        assert_eq!(
            (asked.replicas_to_ack, asked.ack_timeout),
            (2, Duration::from_secs(2))
        );
    }

    #[test]
    fn url_or_sentinel_exactly_one_and_errors_name_the_key() {
        let sentinel = "      sentinel: { master: m, nodes: [\"s:26379\"] }\n";
        let e = error(&format!("      url: redis://r:6379\n{sentinel}"));
        assert_eq!(e.key, "server.store.redis.sentinel");
        assert_eq!(error("").key, "server.store.redis.url");

        let e = error("      sentinel: { master: \"\", nodes: [\"s:26379\"] }\n");
        assert_eq!(e.key, "server.store.redis.sentinel.master");
        let e = error("      sentinel: { master: m, nodes: [] }\n");
        assert_eq!(e.key, "server.store.redis.sentinel.nodes");
        let e = error("      sentinel: { master: m, nodes: [\"s:1\", \"user:pw@s:2\"] }\n");
        assert_eq!(e.key, "server.store.redis.sentinel.nodes[1]");
        assert!(!e.to_string().contains("pw@"), "{e}");
        let e = error("      sentinel: { master: m, nodes: [\"s:1\", \"s:99999\"] }\n");
        assert_eq!(e.key, "server.store.redis.sentinel.nodes[1]");
        let e = error("      sentinel: { master: m, nodes: [\"s:1\", \"s:1\"] }\n");
        assert_eq!(e.key, "server.store.redis.sentinel.nodes[1]");

        let e = error(&format!("{sentinel}      ack_timeout: 0s\n"));
        assert_eq!(e.key, "server.store.redis.ack_timeout");
        let e = error(&format!("{sentinel}      ack_timeout: 1m\n"));
        assert_eq!(e.key, "server.store.redis.ack_timeout");
    }
}
