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

use http::HeaderName;
use serde::Deserialize;
use url::Url;

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
    /// How long to wait for a TCP (and TLS) connection to an identity provider.
    pub idp_connect_timeout: Duration,
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
            idp_connect_timeout: Duration::from_secs(5),
            tls: None,
            auth: AuthConfig::default(),
            limits: Limits::default(),
        }
    }
}

/// One profile: the credentials and request shape for one kind of token.
#[derive(Debug)]
pub struct Profile {
    /// The profile's name, as callers ask for it.
    pub name: Arc<str>,
    /// The OAuth 2.0 grant.
    pub grant: Grant,
    /// The token endpoint.
    pub token_url: Url,
    /// The client identifier.
    pub client_id: String,
    /// The client secret.
    pub client_secret: SecretSource,
    /// How the client authenticates to the token endpoint.
    pub auth_method: AuthMethod,
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
    /// The fraction of a token's lifetime after which it is replaced in the background.
    pub refresh_ahead: f64,
    /// No token with less than this left is ever served.
    pub min_ttl: Duration,
    /// The lifetime assumed when the provider gives neither `expires_in` nor a JWT `exp`.
    pub default_expires_in: Duration,
    /// How long one token request to the provider may take.
    pub timeout: Duration,
    /// Fetch a token at start-up instead of at the first request.
    pub warm_up: bool,
    /// How failed token requests are retried.
    pub retry: Retry,
    /// The callers that may use the profile; `None` lets every caller use it.
    pub allow: Option<Vec<Pattern>>,
    /// The most requests to the identity provider in any minute, whatever callers ask.
    pub idp_requests_per_minute: u32,
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
        Self::from_yaml(&text)
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
        let profiles = raw
            .profiles
            .into_iter()
            .map(|(name, profile)| profile.validate(&name).map(Arc::new))
            .collect::<Result<_, _>>()?;
        Ok(Self { server, profiles })
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
    idp_connect_timeout: Option<Dur>,
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
                parse_fetch_url(&url).map_err(|m| ConfigError::new(key("jwks_url"), m))?,
            ),
            (None, Some(file)) => {
                crate::auth::jwt::KeySet::read_file(&file)
                    .map_err(|m| ConfigError::new(key("jwks_file"), m))?;
                JwksSource::File(file)
            }
            (None, None) => JwksSource::Discovery(
                parse_fetch_url(issuer.as_str()).map_err(|m| ConfigError::new(key("issuer"), m))?,
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
            idp_connect_timeout: nonzero(
                "server.idp_connect_timeout",
                self.idp_connect_timeout,
                defaults.idp_connect_timeout,
            )?,
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
    #[serde(default)]
    scopes: Vec<String>,
    audience: Option<String>,
    resource: Option<String>,
    #[serde(default)]
    params: BTreeMap<String, String>,
    #[serde(default)]
    headers: BTreeMap<String, RawSecretSource>,
    refresh_ahead: Option<f64>,
    min_ttl: Option<Dur>,
    default_expires_in: Option<Dur>,
    timeout: Option<Dur>,
    #[serde(default)]
    warm_up: bool,
    retry: Option<RawRetry>,
    allow: Option<Vec<String>>,
    idp_requests_per_minute: Option<u32>,
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

        let grant = self.grant.unwrap_or(Grant::ClientCredentials);
        if grant == Grant::RefreshToken {
            return Err(err(
                "grant",
                "`refresh_token` is not supported by this version; use `client_credentials`".into(),
            ));
        }
        let auth_method = self.auth_method.unwrap_or(AuthMethod::ClientSecretPost);
        if auth_method == AuthMethod::PrivateKeyJwt {
            return Err(err(
                "auth_method",
                "`private_key_jwt` is not supported by this version; use `client_secret_post` or `client_secret_basic`".into(),
            ));
        }
        if self.issuer.is_some() {
            return Err(err(
                "issuer",
                "discovery from an issuer is not supported by this version; set `token_url`".into(),
            ));
        }

        let token_url = match self.token_url {
            Some(url) => parse_token_url(&url).map_err(|m| err("token_url", m))?,
            None => return Err(err("token_url", "is required".into())),
        };
        let client_id = match self.client_id {
            Some(id) if !id.is_empty() => id,
            _ => return Err(err("client_id", "is required".into())),
        };
        let client_secret = match self.client_secret {
            Some(raw) => load_checked(raw, &key("client_secret"))?,
            None => return Err(err("client_secret", "is required".into())),
        };

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
            headers.push((name, load_checked(raw, &header_key)?));
        }

        let refresh_ahead = self.refresh_ahead.unwrap_or(0.8);
        if !(0.1..=0.95).contains(&refresh_ahead) {
            return Err(err(
                "refresh_ahead",
                format!(
                    "{refresh_ahead} is out of range: give the fraction of a token's lifetime \
                     after which it is replaced, between 0.1 and 0.95 (default 0.8)"
                ),
            ));
        }

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
            token_url,
            client_id,
            client_secret,
            auth_method,
            scopes: self.scopes,
            audience: self.audience.filter(|a| !a.is_empty()),
            resource: self.resource.filter(|r| !r.is_empty()),
            params: self.params,
            headers,
            refresh_ahead,
            min_ttl: self.min_ttl.map_or(Duration::ZERO, |d| d.0),
            default_expires_in: nonzero(
                &key("default_expires_in"),
                self.default_expires_in,
                Duration::from_secs(3600),
            )?,
            timeout: nonzero(&key("timeout"), self.timeout, Duration::from_secs(10))?,
            warm_up: self.warm_up,
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

/// Token endpoints are https. Plain http is allowed only to a loopback host, where the
/// secret never crosses a network (tests, `serve --dev`, a local sidecar).
fn parse_token_url(text: &str) -> Result<Url, String> {
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

/// Discovery and JWKS URLs: https, or http to loopback (tests, a local proxy).
pub(crate) fn parse_fetch_url(text: &str) -> Result<Url, String> {
    let url = Url::parse(text).map_err(|e| format!("`{text}` is not a URL: {e}"))?;
    match url.scheme() {
        "https" => Ok(url),
        "http" if is_loopback(&url) => Ok(url),
        _ => Err(format!(
            "`{text}` must be https (plain http only to loopback)"
        )),
    }
}

fn is_loopback(url: &Url) -> bool {
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
