//! Configuration: the YAML file parsed into typed structs, validated once at load into a
//! form that cannot be invalid later. Every error names the key it is about.

use std::{
    collections::BTreeMap,
    fmt,
    net::{IpAddr, SocketAddr},
    path::{Path, PathBuf},
    sync::Arc,
    time::Duration,
};

mod store;

use http::HeaderName;
use serde::Deserialize;
use url::Url;

pub(crate) use store::decode_key;
pub use store::{EncryptionKey, RedisConfig};

use crate::{
    auth::Pattern,
    secret::{RawSecretSource, SecretSource},
};

/// A validated configuration.
#[derive(Debug, Clone)]
pub struct Config {
    /// Server-wide settings.
    pub server: ServerConfig,
    /// The profiles, sorted by name.
    pub profiles: Vec<Arc<Profile>>,
    /// The file it was loaded from; a running server watches it and reloads on change.
    /// `None` for a configuration built in code or from text.
    pub path: Option<PathBuf>,
    /// A hash of the text it was parsed from, so that a watcher can tell a change of the
    /// file from the text it already runs (a hash rather than the text: the text may hold
    /// inline `value:` secrets, and they need not stay in memory).
    pub(crate) digest: u64,
}

/// Server-wide settings.
#[derive(Debug, Clone)]
pub struct ServerConfig {
    /// The gRPC listen address.
    pub listen: SocketAddr,
    /// The admin HTTP listen address (`/livez`, `/readyz`).
    pub admin_listen: SocketAddr,
    /// How long in-flight calls may take to finish after a shutdown signal.
    pub shutdown_grace: Duration,
    /// After a shutdown signal, how long the server goes on accepting and serving calls
    /// while reporting not ready, so that load balancers stop sending it calls before
    /// its listener closes.
    pub shutdown_delay: Duration,
    /// How often the configuration file is checked for changes; zero turns polling off
    /// (SIGHUP still reloads).
    pub reload_interval: Duration,
    /// How long to wait for a TCP (and TLS) connection to an identity provider.
    pub idp_connect_timeout: Duration,
    /// Where durable state (rotated refresh tokens) is kept; one server per directory.
    pub state_dir: Option<PathBuf>,
    /// The Redis shared by all replicas, if they share state (`server.store.redis`).
    pub store: Option<RedisConfig>,
    /// TLS for the gRPC port, and mutual TLS if it has a client CA.
    pub tls: Option<TlsConfig>,
    /// How callers prove who they are.
    pub auth: AuthConfig,
    /// Limits that keep one caller from starving the others or the identity providers.
    pub limits: Limits,
}

/// TLS for the gRPC port. The files are read again when they change.
#[derive(Debug, Clone)]
pub struct TlsConfig {
    /// The server's certificate chain (PEM).
    pub cert: PathBuf,
    /// The server's private key (PEM: PKCS#8, PKCS#1 or SEC1).
    pub key: PathBuf,
    /// CA certificates for client certificates (PEM). Setting it turns on mutual TLS.
    pub client_ca: Option<PathBuf>,
    /// How often the files are checked for changes.
    pub reload_interval: Duration,
}

/// Caller authentication.
#[derive(Debug, Clone, Default)]
pub struct AuthConfig {
    /// Serve callers nobody authenticated on a non-loopback address, on purpose.
    pub allow_unauthenticated: bool,
    /// Kubernetes ServiceAccount token verification.
    pub service_account: Option<ServiceAccountConfig>,
}

/// Verification of Kubernetes projected ServiceAccount tokens.
#[derive(Debug, Clone)]
pub struct ServiceAccountConfig {
    /// The cluster's token issuer; a token's `iss` must equal it.
    pub issuer: String,
    /// The audience a token must carry in `aud`.
    pub audience: String,
    /// Where the signing keys come from.
    pub jwks: JwksSource,
    /// CA certificates for the HTTPS fetch of discovery and JWKS (the cluster CA).
    pub jwks_ca: Option<PathBuf>,
    /// A bearer token file sent with the fetch (the API server asks for one).
    pub jwks_token_file: Option<PathBuf>,
    /// Tolerance for clock skew on `exp` and `nbf`.
    pub leeway: Duration,
    /// The shortest time between two fetches of the keys for an unknown `kid`.
    pub refetch_interval: Duration,
}

/// Where ServiceAccount token signing keys come from.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum JwksSource {
    /// OpenID discovery at the issuer: `<issuer>/.well-known/openid-configuration`.
    Discovery(Url),
    /// A JWKS URL.
    Url(Url),
    /// A JWKS file.
    File(PathBuf),
}

/// Abuse limits.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Limits {
    /// Sustained calls per second per caller.
    pub rate: f64,
    /// Calls a caller may make at once above its rate.
    pub burst: u32,
    /// Open connections on the gRPC port; more wait to be accepted.
    pub max_connections: usize,
    /// Concurrent HTTP/2 streams per connection.
    pub max_concurrent_streams: u32,
    /// The largest request message.
    pub max_request_bytes: usize,
    /// The longest a unary call (or the first message of a watch) may take.
    pub request_timeout: Duration,
}

impl Default for Limits {
    fn default() -> Self {
        Self {
            rate: 100.0,
            burst: 1000,
            max_connections: 1024,
            max_concurrent_streams: 128,
            max_request_bytes: 16 * 1024,
            request_timeout: Duration::from_secs(30),
        }
    }
}

impl ServerConfig {
    /// Whether some form of caller authentication is configured.
    pub fn authenticates_callers(&self) -> bool {
        self.auth.service_account.is_some()
            || self.tls.as_ref().is_some_and(|t| t.client_ca.is_some())
    }
}

impl Default for ServerConfig {
    fn default() -> Self {
        Self {
            listen: SocketAddr::from(([0, 0, 0, 0], 50051)),
            admin_listen: SocketAddr::from(([0, 0, 0, 0], 9090)),
            shutdown_grace: Duration::from_secs(20),
            shutdown_delay: Duration::from_secs(5),
            reload_interval: Duration::from_secs(2),
            idp_connect_timeout: Duration::from_secs(5),
            state_dir: None,
            store: None,
            tls: None,
            auth: AuthConfig::default(),
            limits: Limits::default(),
        }
    }
}

/// One profile: the credentials and request shape for one kind of token.
///
/// `PartialEq` tells whether a reloaded profile is configured the same way, so that it
/// keeps its cached token. Secrets compare by source (`env`, `file`), not by the value
/// they hold now: a rotated secret file is picked up at the next token request anyway.
#[derive(Debug, PartialEq)]
pub struct Profile {
    /// The profile's name, as callers ask for it.
    pub name: Arc<str>,
    /// The OAuth 2.0 grant.
    pub grant: Grant,
    /// Where the token endpoint is.
    pub endpoint: Endpoint,
    /// The client identifier.
    pub client_id: String,
    /// How the client authenticates to the token endpoint.
    pub client_auth: ClientAuth,
    /// For `grant: refresh_token`: the first refresh token, until a rotated one is stored.
    pub refresh_token: Option<SecretSource>,
    /// For `tokenvend authorize`: where the user approves, and where the code comes back.
    /// Boxed: two URLs few profiles have would otherwise add 180 bytes to every profile.
    pub authorize: Option<Box<Authorize>>,
    /// The scopes to request.
    pub scopes: Vec<String>,
    /// `audience` form field (Auth0, some Okta setups).
    pub audience: Option<String>,
    /// `resource` form field (RFC 8707; Entra ID v1 endpoints, ADFS).
    pub resource: Option<String>,
    /// Extra form fields, sent as given.
    pub params: BTreeMap<String, String>,
    /// Companion headers for the resource API, such as an API key, lower-cased.
    pub headers: Vec<(HeaderName, SecretSource)>,
    /// When a token is replaced in the background.
    pub refresh_ahead: RefreshAhead,
    /// No token with less than this left is ever served.
    pub min_ttl: Duration,
    /// The lifetime assumed when the provider gives neither `expires_in` nor a JWT `exp`.
    pub default_lifetime: Duration,
    /// How long one token request to the provider may take.
    pub timeout: Duration,
    /// Fetch a token at start-up instead of at the first request.
    pub warm_up: bool,
    /// For `grant: refresh_token`: the longest time between two refreshes, so that a
    /// provider does not revoke a refresh token left idle.
    pub idle_refresh: Duration,
    /// How failed token requests are retried.
    pub retry: Retry,
    /// The callers that may use the profile; `None` lets every caller use it.
    pub allow: Option<Vec<Pattern>>,
    /// The most requests to the identity provider in any minute, whatever callers ask.
    pub idp_requests_per_minute: u32,
}

impl Profile {
    /// The host named in `ListProfiles`: the token endpoint's, or the issuer's.
    pub fn endpoint_host(&self) -> &str {
        match &self.endpoint {
            Endpoint::TokenUrl(url) | Endpoint::Issuer(url) => url.host_str().unwrap_or(""),
        }
    }
}

/// Where a profile's token endpoint is.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Endpoint {
    /// Given directly.
    TokenUrl(Url),
    /// Found from the issuer's metadata (RFC 8414, OpenID Connect Discovery).
    Issuer(Url),
}

/// How a client authenticates to the token endpoint (RFC 6749 §2.3, RFC 7523 §2.2).
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ClientAuth {
    /// `client_id` and `client_secret` in the form body.
    SecretPost(SecretSource),
    /// HTTP Basic with the form-urlencoded id and secret.
    SecretBasic(SecretSource),
    /// A JWT client assertion signed with the client's private key.
    /// Boxed: the key's settings would otherwise make every profile 60 bytes larger.
    PrivateKeyJwt(Box<PrivateKeyJwt>),
}

/// The signing key of a `private_key_jwt` client.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PrivateKeyJwt {
    /// The PEM private key (PKCS#8, or PKCS#1 RSA, or SEC1 EC).
    pub private_key: SecretSource,
    /// The signing algorithm.
    pub algorithm: SigningAlgorithm,
    /// The `kid` header, if the provider identifies keys by id.
    pub key_id: Option<String>,
    /// The PEM certificate of the key, for the `x5t` and `x5t#S256` headers (Entra ID).
    pub certificate: Option<SecretSource>,
}

/// Signing algorithms for client assertions.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize)]
pub enum SigningAlgorithm {
    /// RSASSA-PKCS1-v1_5 with SHA-256.
    RS256,
    /// RSASSA-PSS with SHA-256.
    PS256,
    /// ECDSA P-256 with SHA-256.
    ES256,
}

/// The authorization-code bootstrap of a refresh-token profile.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Authorize {
    /// The provider's authorization endpoint.
    pub authorize_url: Url,
    /// The redirect URI registered with the provider.
    pub redirect_uri: Url,
}

/// When a token is replaced in the background.
#[derive(Debug, Clone, Copy, PartialEq)]
pub enum RefreshAhead {
    /// After this fraction of its lifetime.
    Fraction(f64),
    /// This long before it expires (or at half its lifetime, if that is sooner).
    Before(Duration),
}

impl RefreshAhead {
    /// How long after issue a token of this lifetime is replaced, before jitter.
    pub fn after(self, lifetime: Duration) -> Duration {
        match self {
            Self::Fraction(fraction) => lifetime.mul_f64(fraction),
            Self::Before(before) => lifetime.saturating_sub(before).max(lifetime / 2),
        }
    }
}

/// The OAuth 2.0 grant a profile uses.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Grant {
    /// RFC 6749 §4.4.
    ClientCredentials,
    /// RFC 6749 §6.
    RefreshToken,
}

impl Grant {
    /// The name used in configuration and in `ListProfiles`.
    pub fn as_str(self) -> &'static str {
        match self {
            Self::ClientCredentials => "client_credentials",
            Self::RefreshToken => "refresh_token",
        }
    }
}

/// How a client authenticates to the token endpoint (RFC 6749 §2.3, RFC 7523).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum AuthMethod {
    /// `client_id` and `client_secret` in the form body.
    ClientSecretPost,
    /// HTTP Basic with the form-urlencoded id and secret.
    ClientSecretBasic,
    /// A signed JWT client assertion.
    PrivateKeyJwt,
}

impl AuthMethod {
    fn as_str(self) -> &'static str {
        match self {
            Self::ClientSecretPost => "client_secret_post",
            Self::ClientSecretBasic => "client_secret_basic",
            Self::PrivateKeyJwt => "private_key_jwt",
        }
    }
}

/// Backoff for failed token requests: exponential from `initial` up to `max`, with jitter,
/// and never sooner than the provider's `Retry-After`.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Retry {
    /// The delay after the first failure.
    pub initial: Duration,
    /// The longest delay.
    pub max: Duration,
}

impl Default for Retry {
    fn default() -> Self {
        Self {
            initial: Duration::from_secs(1),
            max: Duration::from_secs(30),
        }
    }
}

/// A configuration error: the key it is about and what is wrong.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub struct ConfigError {
    /// The dotted path of the key, such as `profiles.jama.token_url`; empty for the file.
    pub key: String,
    /// What is wrong, never including a secret.
    pub message: String,
}

impl fmt::Display for ConfigError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        if self.key.is_empty() {
            f.write_str(&self.message)
        } else {
            write!(f, "{}: {}", self.key, self.message)
        }
    }
}

impl ConfigError {
    fn new(key: impl Into<String>, message: impl Into<String>) -> Self {
        Self {
            key: key.into(),
            message: message.into(),
        }
    }
}

impl Config {
    /// Reads and validates a configuration file.
    pub fn load(path: &Path) -> Result<Self, ConfigError> {
        let text = std::fs::read_to_string(path).map_err(|e| {
            ConfigError::new("", format!("cannot read {}: {}", path.display(), e.kind()))
        })?;
        let mut config = Self::from_yaml(&text)?;
        config.path = Some(path.to_owned());
        Ok(config)
    }

    /// A configuration built in code, such as the `--dev` demo's: nothing to reload.
    pub fn new(server: ServerConfig, profiles: Vec<Arc<Profile>>) -> Self {
        Self {
            server,
            profiles,
            path: None,
            digest: 0,
        }
    }

    /// Parses and validates a configuration. Secrets are read once to prove they are there.
    pub fn from_yaml(text: &str) -> Result<Self, ConfigError> {
        let raw: RawConfig =
            serde_path_to_error::deserialize(serde_yaml::Deserializer::from_str(text))
                .map_err(yaml_error)?;
        let server = raw.server.validate()?;
        if server.authenticates_callers()
            && let Some(name) = raw
                .profiles
                .iter()
                .find(|(_, p)| p.allow.is_none())
                .map(|(n, _)| n)
        {
            tracing::warn!(
                profile = %name,
                "profile has no `allow` list: every authenticated caller may use it"
            );
        }
        if raw.profiles.is_empty() {
            return Err(ConfigError::new(
                "profiles",
                "at least one profile is required",
            ));
        }
        let profiles: Vec<Arc<Profile>> = raw
            .profiles
            .into_iter()
            .map(|(name, profile)| profile.validate(&name).map(Arc::new))
            .collect::<Result<_, _>>()?;
        if server.state_dir.is_none()
            && server.store.is_none()
            && let Some(chained) = profiles.iter().find(|p| p.grant == Grant::RefreshToken)
        {
            return Err(ConfigError::new(
                "server.state_dir",
                format!(
                    "(or server.store) is required: profile `{}` rotates refresh tokens, which must survive a restart",
                    chained.name
                ),
            ));
        }
        Ok(Self {
            server,
            profiles,
            path: None,
            digest: digest(text.as_bytes()),
        })
    }
}

/// The hash a watcher compares to tell whether a configuration file changed.
pub(crate) fn digest(text: &[u8]) -> u64 {
    let mut digest = Digest::default();
    digest.update(text);
    digest.finish()
}

/// [`digest`] fed in pieces, so that a file can be compared without being held whole.
/// SHA-256 rather than SipHash: its result does not depend on how the input is split.
#[derive(Default)]
pub(crate) struct Digest(sha2::Sha256);

impl Digest {
    pub(crate) fn update(&mut self, bytes: &[u8]) {
        sha2::Digest::update(&mut self.0, bytes);
    }

    pub(crate) fn finish(self) -> u64 {
        let hash = sha2::Digest::finalize(self.0);
        u64::from_le_bytes(hash[..8].try_into().expect("SHA-256 is 32 bytes"))
    }
}

impl std::io::Write for Digest {
    fn write(&mut self, bytes: &[u8]) -> std::io::Result<usize> {
        self.update(bytes);
        Ok(bytes.len())
    }

    fn flush(&mut self) -> std::io::Result<()> {
        Ok(())
    }
}

/// The exact key comes from serde_path_to_error; serde_yaml's own message starts with the
/// enclosing map's path, which is dropped so that every error reads `key: message`.
fn yaml_error(error: serde_path_to_error::Error<serde_yaml::Error>) -> ConfigError {
    let path = error.path().to_string();
    let key = if path == "." { String::new() } else { path };
    let text = error.inner().to_string();
    let message = match text.split_once(": ") {
        Some((prefix, rest)) if !prefix.contains(' ') => rest.to_owned(),
        _ => text,
    };
    ConfigError::new(key, message)
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RawConfig {
    #[serde(default)]
    server: RawServer,
    #[serde(default)]
    profiles: BTreeMap<String, RawProfile>,
}

#[derive(Deserialize, Default)]
#[serde(deny_unknown_fields)]
struct RawServer {
    listen: Option<String>,
    admin_listen: Option<String>,
    shutdown_grace: Option<Dur>,
    shutdown_delay: Option<Dur>,
    reload_interval: Option<Dur>,
    idp_connect_timeout: Option<Dur>,
    state_dir: Option<PathBuf>,
    store: Option<store::RawStore>,
    tls: Option<RawTls>,
    #[serde(default)]
    auth: RawAuth,
    #[serde(default)]
    limits: RawLimits,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RawTls {
    cert: PathBuf,
    key: PathBuf,
    client_ca: Option<PathBuf>,
    reload_interval: Option<Dur>,
}

#[derive(Deserialize, Default)]
#[serde(deny_unknown_fields)]
struct RawAuth {
    #[serde(default)]
    allow_unauthenticated: bool,
    service_account: Option<RawServiceAccount>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RawServiceAccount {
    issuer: String,
    audience: Option<String>,
    jwks_url: Option<String>,
    jwks_file: Option<PathBuf>,
    jwks_ca: Option<PathBuf>,
    jwks_token_file: Option<PathBuf>,
    leeway: Option<Dur>,
    refetch_interval: Option<Dur>,
}

#[derive(Deserialize, Default)]
#[serde(deny_unknown_fields)]
struct RawLimits {
    rate: Option<f64>,
    burst: Option<u32>,
    max_connections: Option<usize>,
    max_concurrent_streams: Option<u32>,
    max_request_bytes: Option<usize>,
    request_timeout: Option<Dur>,
}

impl RawTls {
    fn validate(self) -> Result<TlsConfig, ConfigError> {
        let tls = TlsConfig {
            cert: self.cert,
            key: self.key,
            client_ca: self.client_ca,
            reload_interval: nonzero(
                "server.tls.reload_interval",
                self.reload_interval,
                Duration::from_secs(10),
            )?,
        };
        // Loaded once here so that a bad file stops the start, with its key named.
        crate::tls::server_config(&tls).map_err(|e| ConfigError::new(e.key, e.message))?;
        Ok(tls)
    }
}

impl RawServiceAccount {
    fn validate(self) -> Result<ServiceAccountConfig, ConfigError> {
        let key = |k: &str| format!("server.auth.service_account.{k}");
        let issuer = Url::parse(&self.issuer).map_err(|e| {
            ConfigError::new(
                key("issuer"),
                format!("`{}` is not a URL: {e}", self.issuer),
            )
        })?;
        let jwks = match (self.jwks_url, self.jwks_file) {
            (Some(_), Some(_)) => {
                return Err(ConfigError::new(
                    key("jwks_file"),
                    "give `jwks_url` or `jwks_file`, not both",
                ));
            }
            (Some(url), None) => JwksSource::Url(
                parse_endpoint_url(&url).map_err(|m| ConfigError::new(key("jwks_url"), m))?,
            ),
            (None, Some(file)) => {
                crate::auth::jwt::KeySet::read_file(&file)
                    .map_err(|m| ConfigError::new(key("jwks_file"), m))?;
                JwksSource::File(file)
            }
            (None, None) => JwksSource::Discovery(
                parse_endpoint_url(issuer.as_str())
                    .map_err(|m| ConfigError::new(key("issuer"), m))?,
            ),
        };
        for (k, path) in [
            ("jwks_ca", &self.jwks_ca),
            ("jwks_token_file", &self.jwks_token_file),
        ] {
            if let Some(path) = path {
                std::fs::metadata(path).map_err(|e| {
                    ConfigError::new(
                        key(k),
                        format!("cannot read {}: {}", path.display(), e.kind()),
                    )
                })?;
            }
        }
        let audience = self.audience.unwrap_or_else(|| "tokenvend".to_owned());
        if audience.is_empty() {
            return Err(ConfigError::new(key("audience"), "must not be empty"));
        }
        Ok(ServiceAccountConfig {
            // Kept as written: `iss` is compared as a string, and `Url` would add a `/`.
            issuer: self.issuer,
            audience,
            jwks,
            jwks_ca: self.jwks_ca,
            jwks_token_file: self.jwks_token_file,
            leeway: self.leeway.map_or(Duration::from_secs(30), |d| d.0),
            refetch_interval: nonzero(
                &key("refetch_interval"),
                self.refetch_interval,
                Duration::from_secs(10),
            )?,
        })
    }
}

impl RawLimits {
    fn validate(self) -> Result<Limits, ConfigError> {
        let d = Limits::default();
        let positive = |k: &str, v: Option<usize>, default: usize| match v {
            Some(0) => Err(ConfigError::new(
                format!("server.limits.{k}"),
                "must be at least 1",
            )),
            Some(v) => Ok(v),
            None => Ok(default),
        };
        let rate = self.rate.unwrap_or(d.rate);
        if !(rate.is_finite() && rate > 0.0) {
            return Err(ConfigError::new(
                "server.limits.rate",
                "give calls per second per caller, above zero",
            ));
        }
        Ok(Limits {
            rate,
            burst: positive("burst", self.burst.map(|b| b as usize), d.burst as usize)? as u32,
            max_connections: positive("max_connections", self.max_connections, d.max_connections)?,
            max_concurrent_streams: positive(
                "max_concurrent_streams",
                self.max_concurrent_streams.map(|b| b as usize),
                d.max_concurrent_streams as usize,
            )? as u32,
            max_request_bytes: positive(
                "max_request_bytes",
                self.max_request_bytes,
                d.max_request_bytes,
            )?,
            request_timeout: nonzero(
                "server.limits.request_timeout",
                self.request_timeout,
                d.request_timeout,
            )?,
        })
    }
}

impl RawServer {
    fn validate(self) -> Result<ServerConfig, ConfigError> {
        let defaults = ServerConfig::default();
        let addr = |key: &str, value: Option<String>, default| match value {
            None => Ok(default),
            Some(text) => text.parse::<SocketAddr>().map_err(|_| {
                ConfigError::new(
                    format!("server.{key}"),
                    format!("`{text}` is not an address like 0.0.0.0:50051"),
                )
            }),
        };
        Ok(ServerConfig {
            listen: addr("listen", self.listen, defaults.listen)?,
            admin_listen: addr("admin_listen", self.admin_listen, defaults.admin_listen)?,
            shutdown_grace: self.shutdown_grace.map_or(defaults.shutdown_grace, |d| d.0),
            shutdown_delay: self.shutdown_delay.map_or(defaults.shutdown_delay, |d| d.0),
            reload_interval: self
                .reload_interval
                .map_or(defaults.reload_interval, |d| d.0),
            idp_connect_timeout: nonzero(
                "server.idp_connect_timeout",
                self.idp_connect_timeout,
                defaults.idp_connect_timeout,
            )?,
            state_dir: self.state_dir,
            store: self
                .store
                .map(store::RawStore::validate)
                .transpose()?
                .flatten(),
            tls: self.tls.map(RawTls::validate).transpose()?,
            auth: AuthConfig {
                allow_unauthenticated: self.auth.allow_unauthenticated,
                service_account: self
                    .auth
                    .service_account
                    .map(RawServiceAccount::validate)
                    .transpose()?,
            },
            limits: self.limits.validate()?,
        })
    }
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RawProfile {
    token_url: Option<String>,
    issuer: Option<String>,
    grant: Option<Grant>,
    client_id: Option<String>,
    client_secret: Option<RawSecretSource>,
    auth_method: Option<AuthMethod>,
    private_key: Option<RawSecretSource>,
    signing_alg: Option<SigningAlgorithm>,
    key_id: Option<String>,
    certificate: Option<RawSecretSource>,
    refresh_token: Option<RawSecretSource>,
    authorize_url: Option<String>,
    redirect_uri: Option<String>,
    idle_refresh: Option<Dur>,
    #[serde(default)]
    scopes: Vec<String>,
    audience: Option<String>,
    resource: Option<String>,
    #[serde(default)]
    params: BTreeMap<String, String>,
    #[serde(default)]
    headers: BTreeMap<String, RawSecretSource>,
    refresh_ahead: Option<RawRefreshAhead>,
    min_ttl: Option<Dur>,
    #[serde(alias = "default_expires_in")]
    default_lifetime: Option<Dur>,
    timeout: Option<Dur>,
    #[serde(default)]
    warm_up: bool,
    retry: Option<RawRetry>,
    allow: Option<Vec<String>>,
    idp_requests_per_minute: Option<u32>,
}

/// `refresh_ahead: 0.8` (a fraction of the lifetime) or `refresh_ahead: 5m` (before expiry).
#[derive(Deserialize)]
#[serde(untagged)]
enum RawRefreshAhead {
    Fraction(f64),
    Before(String),
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RawRetry {
    initial: Option<Dur>,
    max: Option<Dur>,
}

/// Form fields that tokenvend sets itself; a profile cannot override them through `params`.
const RESERVED_PARAMS: &[&str] = &[
    "grant_type",
    "client_id",
    "client_secret",
    "client_assertion",
    "client_assertion_type",
    "scope",
    "refresh_token",
    "code",
    "code_verifier",
    "redirect_uri",
    "audience",
    "resource",
];

impl RawProfile {
    fn validate(self, name: &str) -> Result<Profile, ConfigError> {
        let key = |k: &str| format!("profiles.{name}.{k}");
        let err = |k: &str, message: String| ConfigError::new(key(k), message);

        if name.is_empty()
            || name.len() > 128
            || !name
                .bytes()
                .all(|b| b.is_ascii_alphanumeric() || b"-_.".contains(&b))
        {
            return Err(ConfigError::new(
                format!("profiles.{name}"),
                "a profile name is 1-128 characters of letters, digits, `-`, `_` and `.`",
            ));
        }

        let endpoint = match (self.token_url, self.issuer) {
            (Some(url), None) => {
                Endpoint::TokenUrl(parse_endpoint_url(&url).map_err(|m| err("token_url", m))?)
            }
            (None, Some(issuer)) => {
                Endpoint::Issuer(parse_endpoint_url(&issuer).map_err(|m| err("issuer", m))?)
            }
            (Some(_), Some(_)) => {
                return Err(err(
                    "issuer",
                    "give `token_url` or `issuer`, not both".into(),
                ));
            }
            (None, None) => {
                return Err(err(
                    "token_url",
                    "is required (or `issuer`, to find it by discovery)".into(),
                ));
            }
        };
        let client_id = match self.client_id {
            Some(id) if !id.is_empty() => id,
            _ => return Err(err("client_id", "is required".into())),
        };

        let uses_key_options =
            self.signing_alg.is_some() || self.key_id.is_some() || self.certificate.is_some();
        let auth_method = self.auth_method.unwrap_or(if self.private_key.is_some() {
            AuthMethod::PrivateKeyJwt
        } else {
            AuthMethod::ClientSecretPost
        });
        let client_auth = match auth_method {
            AuthMethod::ClientSecretPost | AuthMethod::ClientSecretBasic => {
                if self.private_key.is_some() {
                    return Err(err(
                        "private_key",
                        format!(
                            "is only used with `auth_method: private_key_jwt`, not `{}`",
                            auth_method.as_str()
                        ),
                    ));
                }
                let secret = match self.client_secret {
                    Some(raw) => load_checked(raw, &key("client_secret"))?,
                    None => return Err(err("client_secret", "is required".into())),
                };
                if auth_method == AuthMethod::ClientSecretBasic {
                    ClientAuth::SecretBasic(secret)
                } else {
                    ClientAuth::SecretPost(secret)
                }
            }
            AuthMethod::PrivateKeyJwt => {
                if self.client_secret.is_some() {
                    return Err(err(
                        "client_secret",
                        "is not used with `auth_method: private_key_jwt`; remove it".into(),
                    ));
                }
                let private_key = match self.private_key {
                    Some(raw) => load_checked(raw, &key("private_key"))?,
                    None => {
                        return Err(err(
                            "private_key",
                            "is required with `auth_method: private_key_jwt`".into(),
                        ));
                    }
                };
                let certificate = self
                    .certificate
                    .map(|raw| load_checked(raw, &key("certificate")))
                    .transpose()?;
                let jwt = PrivateKeyJwt {
                    private_key,
                    algorithm: self.signing_alg.unwrap_or(SigningAlgorithm::RS256),
                    key_id: self.key_id.filter(|k| !k.is_empty()),
                    certificate,
                };
                // Proves the key and certificate parse and fit the algorithm.
                crate::assertion::Signer::load(&jwt).map_err(|e| err(e.key(), e.to_string()))?;
                ClientAuth::PrivateKeyJwt(Box::new(jwt))
            }
        };
        if auth_method != AuthMethod::PrivateKeyJwt && uses_key_options {
            return Err(err(
                "auth_method",
                "`signing_alg`, `key_id` and `certificate` need `auth_method: private_key_jwt`"
                    .into(),
            ));
        }

        let grant = self.grant.unwrap_or(Grant::ClientCredentials);
        let refresh_token = self
            .refresh_token
            .map(|raw| load_checked(raw, &key("refresh_token")))
            .transpose()?;
        let authorize = match (self.authorize_url, self.redirect_uri) {
            (None, None) => None,
            (Some(url), Some(redirect)) => Some(Box::new(Authorize {
                authorize_url: Url::parse(&url)
                    .map_err(|e| err("authorize_url", format!("`{url}` is not a URL: {e}")))?,
                redirect_uri: Url::parse(&redirect)
                    .map_err(|e| err("redirect_uri", format!("`{redirect}` is not a URL: {e}")))?,
            })),
            (Some(_), None) => {
                return Err(err(
                    "redirect_uri",
                    "is required with `authorize_url`".into(),
                ));
            }
            (None, Some(_)) => {
                return Err(err(
                    "authorize_url",
                    "is required with `redirect_uri`".into(),
                ));
            }
        };
        if grant == Grant::ClientCredentials && (refresh_token.is_some() || authorize.is_some()) {
            let k = if refresh_token.is_some() {
                "refresh_token"
            } else {
                "authorize_url"
            };
            return Err(err(k, "is only used with `grant: refresh_token`".into()));
        }

        if let Some(scope) = self.scopes.iter().find(|s| s.is_empty() || s.contains(' ')) {
            return Err(err(
                "scopes",
                format!("`{scope}` is not one scope: list each scope as its own item"),
            ));
        }
        if let Some(param) = self
            .params
            .keys()
            .find(|p| RESERVED_PARAMS.contains(&p.as_str()))
        {
            return Err(err(
                &format!("params.{param}"),
                "is set by tokenvend; use the profile's own key for it".into(),
            ));
        }

        let mut headers = Vec::with_capacity(self.headers.len());
        for (header, raw) in self.headers {
            let header_key = key(&format!("headers.{header}"));
            let name = HeaderName::try_from(header.as_str())
                .map_err(|_| ConfigError::new(&header_key, "is not a valid header name"))?;
            if name == http::header::AUTHORIZATION {
                return Err(ConfigError::new(
                    header_key,
                    "is set by tokenvend from the token",
                ));
            }
            let source = load_checked(raw, &header_key)?;
            let value = source
                .load()
                .map_err(|e| ConfigError::new(&header_key, e.to_string()))?;
            if http::HeaderValue::try_from(value.expose()).is_err() {
                return Err(ConfigError::new(
                    header_key,
                    "holds characters a header value cannot carry (a newline?)",
                ));
            }
            headers.push((name, source));
        }

        let refresh_ahead = match self.refresh_ahead {
            None => RefreshAhead::Fraction(0.8),
            Some(RawRefreshAhead::Fraction(f)) if (0.1..=0.95).contains(&f) => {
                RefreshAhead::Fraction(f)
            }
            Some(RawRefreshAhead::Fraction(f)) => {
                return Err(err(
                    "refresh_ahead",
                    format!(
                        "{f} is out of range: give a fraction of the lifetime between 0.1 and \
                         0.95 (default 0.8), or a duration before expiry such as 5m"
                    ),
                ));
            }
            Some(RawRefreshAhead::Before(text)) => match humantime::parse_duration(&text) {
                Ok(d) if !d.is_zero() => RefreshAhead::Before(d),
                _ => {
                    return Err(err(
                        "refresh_ahead",
                        format!("`{text}` is neither a fraction like 0.8 nor a duration like 5m"),
                    ));
                }
            },
        };

        let retry_defaults = Retry::default();
        let retry = match self.retry {
            None => retry_defaults,
            Some(raw) => Retry {
                initial: nonzero(&key("retry.initial"), raw.initial, retry_defaults.initial)?,
                max: nonzero(&key("retry.max"), raw.max, retry_defaults.max)?,
            },
        };
        if retry.initial > retry.max {
            return Err(err("retry.initial", "is longer than `retry.max`".into()));
        }

        let allow = match self.allow {
            None => None,
            Some(patterns) => Some(
                patterns
                    .iter()
                    .enumerate()
                    .map(|(i, p)| Pattern::parse(p).map_err(|m| err(&format!("allow[{i}]"), m)))
                    .collect::<Result<Vec<_>, _>>()?,
            ),
        };
        let idp_requests_per_minute = match self.idp_requests_per_minute {
            Some(0) => return Err(err("idp_requests_per_minute", "must be at least 1".into())),
            Some(n) => n,
            None => 60,
        };

        Ok(Profile {
            name: name.into(),
            grant,
            endpoint,
            client_id,
            client_auth,
            refresh_token,
            authorize,
            scopes: self.scopes,
            audience: self.audience.filter(|a| !a.is_empty()),
            resource: self.resource.filter(|r| !r.is_empty()),
            params: self.params,
            headers,
            refresh_ahead,
            min_ttl: self.min_ttl.map_or(Duration::ZERO, |d| d.0),
            default_lifetime: nonzero(
                &key("default_lifetime"),
                self.default_lifetime,
                Duration::from_secs(3600),
            )?,
            timeout: nonzero(&key("timeout"), self.timeout, Duration::from_secs(10))?,
            warm_up: self.warm_up,
            idle_refresh: nonzero(
                &key("idle_refresh"),
                self.idle_refresh,
                Duration::from_secs(24 * 3600),
            )?,
            retry,
            allow,
            idp_requests_per_minute,
        })
    }
}

fn load_checked(raw: RawSecretSource, key: &str) -> Result<SecretSource, ConfigError> {
    let source = raw.into_source().map_err(|m| ConfigError::new(key, m))?;
    source
        .load()
        .map_err(|e| ConfigError::new(key, e.to_string()))?;
    if matches!(source, SecretSource::Value(_)) {
        tracing::warn!(
            key,
            "secret given inline with `value`; use `env` or `file` outside development"
        );
    }
    Ok(source)
}

/// Token endpoints and issuers are https. Plain http is allowed only to a loopback host,
/// where the secret never crosses a network (tests, `serve --dev`, a local sidecar).
pub(crate) fn parse_endpoint_url(text: &str) -> Result<Url, String> {
    let url = Url::parse(text).map_err(|e| format!("`{text}` is not a URL: {e}"))?;
    if !url.username().is_empty() || url.password().is_some() {
        return Err("must not carry credentials; use client_id and client_secret".into());
    }
    if url.fragment().is_some() {
        return Err("must not have a #fragment".into());
    }
    match url.scheme() {
        "https" => Ok(url),
        "http" if is_loopback(&url) => Ok(url),
        "http" => Err(format!(
            "`{text}` is plain http to a host that is not loopback; use https"
        )),
        other => Err(format!("scheme `{other}` is not supported; use https")),
    }
}

pub(crate) fn is_loopback(url: &Url) -> bool {
    match url.host() {
        Some(url::Host::Domain(domain)) => domain.eq_ignore_ascii_case("localhost"),
        Some(url::Host::Ipv4(ip)) => IpAddr::V4(ip).is_loopback(),
        Some(url::Host::Ipv6(ip)) => IpAddr::V6(ip).is_loopback(),
        None => false,
    }
}

fn nonzero(key: &str, value: Option<Dur>, default: Duration) -> Result<Duration, ConfigError> {
    match value {
        None => Ok(default),
        Some(Dur(d)) if d.is_zero() => Err(ConfigError::new(key, "must be longer than zero")),
        Some(Dur(d)) => Ok(d),
    }
}

/// A duration written as `30s`, `5m`, `1h30m` or `250ms`.
struct Dur(Duration);

impl<'de> Deserialize<'de> for Dur {
    fn deserialize<D: serde::Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        let text = String::deserialize(deserializer)?;
        humantime::parse_duration(&text).map(Dur).map_err(|e| {
            serde::de::Error::custom(format!("`{text}` is not a duration like 30s or 5m: {e}"))
        })
    }
}

#[cfg(test)]
mod tests;
