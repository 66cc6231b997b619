//! Configuration: the YAML file parsed into typed structs, validated once at load into a
//! form that cannot be invalid later. Every error names the key it is about.
//!
//! This is data at the bottom of the house: nothing here reads a secret, a key, a
//! certificate or any file but the configuration itself. Whether the things it names can
//! be used is decided where they are built, in [`crate::app`], which `serve`, `check` and
//! a reload share.

use std::{
    collections::BTreeMap,
    fmt,
    net::{IpAddr, SocketAddr},
    path::{Path, PathBuf},
    sync::Arc,
    time::Duration,
};

mod allow;
mod ext_authz;
mod profile;
mod server;
mod store;
mod unique;

use http::HeaderName;
use serde::Deserialize;
use url::Url;

pub use allow::{Pattern, PatternError};
pub use store::{EncryptionKey, RedisConfig, RedisTarget, SentinelConfig, SentinelNode};

use crate::secret::{RawSecretSource, SecretSource};

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
    /// The admin HTTP listen address (`/metrics`, `/livez`, `/readyz`).
    pub admin_listen: SocketAddr,
    /// Who may read `/metrics` on it.
    pub admin: AdminConfig,
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
    /// Envoy's external authorization service on the gRPC port.
    pub ext_authz: ExtAuthzConfig,
    /// The forward-auth HTTP listener (`server.forward_auth`), if it is on.
    pub forward_auth: Option<ForwardAuthConfig>,
    /// How the connections of template profiles are kept (`server.connections`).
    pub connections: ConnectionsConfig,
}

/// `server.connections`: the key that hides the connections of `template: true` profiles
/// at rest, and how many of them are kept in memory.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ConnectionsConfig {
    /// 32 random bytes, base64. Seals connection records in `state_dir`, and keys the
    /// digest that names a connection in either store, so that no file or Redis key name
    /// shows a subject. Required with a template profile.
    pub key: Option<SecretSource>,
    /// The most connections of one template profile kept in memory; the least recently
    /// used go first (their chains stay stored).
    pub max_cached: u64,
    /// A connection not asked for this long is dropped from memory (its chain stays
    /// stored, and the next call fetches a token again).
    pub idle: Duration,
}

impl Default for ConnectionsConfig {
    fn default() -> Self {
        Self {
            key: None,
            max_cached: 10_000,
            idle: Duration::from_secs(3600),
        }
    }
}

/// Envoy's external authorization service (`envoy.service.auth.v3.Authorization`) on the
/// gRPC port: which profile a checked request gets the headers of. Callers are
/// authenticated and held to `allow` lists exactly as for `GetToken`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ExtAuthzConfig {
    /// Whether `Check` answers at all (it answers UNIMPLEMENTED when off).
    pub enabled: bool,
    /// The key of the route's `context_extensions` that names the profile; looked at first.
    pub context_extension: String,
    /// The request header that names the profile, looked at second; `None` when the
    /// request may not choose. It is removed before the request goes upstream.
    pub profile_header: Option<HeaderName>,
    /// Host and path prefixes mapped to profiles, looked at last, in order.
    pub routes: Vec<ExtAuthzRoute>,
    /// The largest `CheckRequest`: it carries every header of the checked request.
    pub max_request_bytes: usize,
}

impl Default for ExtAuthzConfig {
    fn default() -> Self {
        Self {
            enabled: true,
            context_extension: "tokenvend_profile".to_owned(),
            profile_header: Some(HeaderName::from_static("x-tokenvend-profile")),
            routes: Vec::new(),
            // Envoy's default limit on request headers (`max_request_headers_kb`) is
            // 60 KiB; the rest is room for the addresses and other attributes.
            max_request_bytes: 96 * 1024,
        }
    }
}

/// One entry of `server.ext_authz.routes`: requests to this host and path get this profile.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ExtAuthzRoute {
    /// The request's host (`:authority` without its port), lower case; any host if `None`.
    pub host: Option<String>,
    /// A prefix of the request's path; any path if `None`.
    pub path_prefix: Option<String>,
    /// The profile.
    pub profile: String,
}

/// The forward-auth HTTP listener: `GET /v1/headers/{profile}` for proxies that add the
/// token on the way out (nginx `auth_request`, Traefik `ForwardAuth`, Envoy's HTTP
/// ext_authz). It serves with the gRPC port's TLS, caller authentication and limits.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ForwardAuthConfig {
    /// The listen address.
    pub listen: SocketAddr,
    /// The request header in which the proxy forwards its ServiceAccount token, as
    /// `Bearer <token>`. Not `authorization`: a proxy passes its client's own
    /// `authorization` on to the subrequest.
    pub caller_header: http::HeaderName,
    /// The request header in which the proxy reports a token its upstream refused.
    pub rejected_token_header: http::HeaderName,
    /// The longest `Cache-Control: max-age` of an answer; zero sends `no-store`.
    pub max_age: Duration,
}

/// Access to the admin endpoints. `/livez` and `/readyz` are open to all (the kubelet
/// probes them); `/metrics` names every profile, so on an address other than loopback it
/// needs a bearer token, or an explicit choice to serve it to anyone.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct AdminConfig {
    /// The bearer token a scraper must send for `/metrics`.
    pub metrics_token: Option<SecretSource>,
    /// Serve `/metrics` without a token on a non-loopback address, on purpose.
    pub unauthenticated_metrics: bool,
    /// The admin listener's address as browsers reach it (`https://tokenvend.example.com`),
    /// without a trailing `/`: the hosted authorization's callback is
    /// `{public_url}/oauth/callback`.
    pub public_url: Option<Url>,
    /// Seals the admin page's cookies and signs its links; shared by every replica.
    pub session_key: Option<SecretSource>,
    /// How people log in to the admin page.
    pub login: AdminLogin,
    /// The identities that may authorize and revoke; everyone else who logs in reads.
    pub admins: Vec<String>,
    /// Mutual TLS on the admin listener: a client certificate's identity is the person.
    pub tls: Option<TlsConfig>,
}

/// The ways to log in to the admin page; any that is set is offered.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct AdminLogin {
    /// A bearer token (for scripts) that also logs a browser in through `/login`.
    pub token: Option<SecretSource>,
    /// An OpenID Connect issuer people log in at.
    pub oidc: Option<AdminOidc>,
}

/// `server.admin.login.oidc`: the admin page as an OpenID Connect relying party.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct AdminOidc {
    /// The issuer, compared as written with the ID token's `iss`.
    pub issuer: String,
    /// The client registered at the issuer for the admin page.
    pub client_id: String,
    /// Its secret.
    pub client_secret: SecretSource,
    /// Scopes asked for besides `openid`.
    pub scopes: Vec<String>,
}

/// TLS for the gRPC port. The files are read again when they change.
#[derive(Debug, Clone, PartialEq, Eq)]
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
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct AuthConfig {
    /// Serve callers nobody authenticated on a non-loopback address, on purpose.
    pub allow_unauthenticated: bool,
    /// Kubernetes ServiceAccount token verification.
    pub service_account: Option<ServiceAccountConfig>,
}

/// Verification of Kubernetes projected ServiceAccount tokens.
#[derive(Debug, Clone, PartialEq, Eq)]
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
    /// Open connections from one remote address; more are closed as they arrive.
    pub max_connections_per_peer: usize,
    /// How long a connection with no call open is kept.
    pub idle_timeout: Duration,
    /// On a port that requires caller authentication, how long a connection is kept
    /// before a call on it has authenticated.
    pub unauthenticated_timeout: Duration,
    /// Concurrent HTTP/2 streams per connection.
    pub max_concurrent_streams: u32,
    /// The largest request message.
    pub max_request_bytes: usize,
    /// The longest a unary call (or the first message of a watch) may take.
    pub request_timeout: Duration,
    /// `WatchToken` streams open at once per caller identity.
    pub max_watches_per_caller: usize,
    /// Calls per caller identity waiting on an identity provider at once.
    pub max_pending_per_caller: usize,
}

impl Default for Limits {
    fn default() -> Self {
        Self {
            rate: 100.0,
            burst: 1000,
            max_connections: 1024,
            max_connections_per_peer: 64,
            idle_timeout: Duration::from_secs(60),
            unauthenticated_timeout: Duration::from_secs(10),
            max_concurrent_streams: 128,
            max_request_bytes: 16 * 1024,
            request_timeout: Duration::from_secs(30),
            max_watches_per_caller: 64,
            max_pending_per_caller: 1024,
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
            // Loopback: `/metrics` names every profile. A pod's probes need the pod
            // address, which the Helm chart sets with a token for `/metrics`.
            admin_listen: SocketAddr::from(([127, 0, 0, 1], 9090)),
            admin: AdminConfig::default(),
            shutdown_grace: Duration::from_secs(20),
            shutdown_delay: Duration::from_secs(5),
            reload_interval: Duration::from_secs(2),
            idp_connect_timeout: Duration::from_secs(5),
            state_dir: None,
            store: None,
            tls: None,
            auth: AuthConfig::default(),
            limits: Limits::default(),
            ext_authz: ExtAuthzConfig::default(),
            forward_auth: None,
            connections: ConnectionsConfig::default(),
        }
    }
}

/// The shortest lifetime of a token tokenvend accepts. A shorter-lived token cannot be
/// handed to a caller and used before it expires, and refreshing it ahead of expiry would
/// mean asking the provider again at once, in a loop.
pub(crate) const MIN_LIFETIME: Duration = Duration::from_secs(1);

/// One profile: the credentials and request shape for one kind of token.
///
/// `PartialEq` tells whether a reloaded profile is configured the same way, so that it
/// keeps its cached token. Secrets compare by source (`env`, `file`), not by the value
/// they hold now: a rotated secret file is picked up at the next token request anyway.
#[derive(Debug, Clone, PartialEq)]
pub struct Profile {
    /// The profile's name, as callers ask for it.
    pub name: Arc<str>,
    /// The OAuth 2.0 grant.
    pub grant: Grant,
    /// Where the token endpoint is.
    pub endpoint: Endpoint,
    /// The client identifier. Empty only with `auth_method: client_assertion` and no
    /// `client_id` configured: the workload's assertion names the client, and no
    /// `client_id` is sent (Keycloak refuses one that differs from the assertion's `sub`).
    pub client_id: String,
    /// How the client authenticates to the token endpoint.
    pub client_auth: ClientAuth,
    /// For `grant: refresh_token`: the first refresh token, until a rotated one is stored.
    pub refresh_token: Option<SecretSource>,
    /// For `grant: jwt_bearer` (and only then): how the grant's assertion is made. Boxed,
    /// as few profiles have one.
    pub jwt_bearer: Option<Box<JwtBearer>>,
    /// For `tokenvend authorize`: where the user approves, and where the code comes back.
    /// Boxed: two URLs few profiles have would otherwise add 180 bytes to every profile.
    pub authorize: Option<Box<Authorize>>,
    /// CA certificates (PEM) that the provider's HTTPS certificate is checked against,
    /// instead of the system's, for a provider with a private CA.
    pub provider_ca: Option<PathBuf>,
    /// The scopes to request.
    pub scopes: Vec<String>,
    /// `audience` form field (Auth0, some Okta setups).
    pub audience: Option<String>,
    /// `resource` form field (RFC 8707; Entra ID v1 endpoints, ADFS).
    pub resource: Option<String>,
    /// What a call may ask for instead of `scopes`, `audience` and `resource`; `None`
    /// when a call may ask for nothing else. Boxed, as few profiles have it.
    pub per_call: Option<Box<PerCall>>,
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
    /// The longest a token is used, whatever lifetime the provider gives it.
    pub max_lifetime: Duration,
    /// A token reported rejected that was issued less than this ago is replaced at most
    /// once in this time; zero turns the spacing off (the request ceiling still holds).
    pub rejected_token_min_interval: Duration,
    /// How long one token request to the provider may take.
    pub timeout: Duration,
    /// Fetch a token at start-up instead of at the first request.
    pub warm_up: bool,
    /// `template: true`: the profile holds one connection (refresh-token chain) per
    /// subject, and every call names its subject (see `docs/connections.md`).
    pub template: bool,
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
    /// A JWT client assertion signed with the client secret (HMAC SHA-256), which itself
    /// never leaves the server.
    SecretJwt(SecretSource),
    /// No client authentication: the `jwt_bearer` grant's assertion is the proof.
    None,
    /// Mutual TLS with the client's certificate (RFC 8705), and `client_id` in the form.
    /// Boxed: two sources would otherwise make every profile larger.
    Tls(Box<TlsClientAuth>),
    /// A JWT issued to the workload by someone else (a projected Kubernetes
    /// ServiceAccount token, a SPIFFE JWT-SVID), read afresh for each request and sent
    /// as the client assertion: workload identity federation, no secret of our own.
    Assertion(SecretSource),
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

/// The certificate of a client that authenticates with mutual TLS (RFC 8705).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TlsClientAuth {
    /// The PEM certificate (chain) presented to the provider.
    pub certificate: SecretSource,
    /// Its PEM private key.
    pub key: SecretSource,
    /// `self_signed_tls_client_auth` (the provider knows the certificate itself) rather
    /// than `tls_client_auth` (the provider trusts its CA and matches its subject).
    pub self_signed: bool,
}

/// The values a `GetTokenRequest` may ask for instead of the profile's own. An empty list
/// allows nothing of its kind.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct PerCall {
    /// A call may ask for any subset of these scopes.
    pub scopes: Vec<String>,
    /// A call may ask for one of these audiences.
    pub audiences: Vec<String>,
    /// A call may ask for one of these resources.
    pub resources: Vec<String>,
}

/// The assertion of a `grant: jwt_bearer` profile (RFC 7523 §2.1): `iss` is the client
/// id, `sub` whom the token is for, `aud` the provider.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct JwtBearer {
    /// The signing key, its algorithm, `kid` and certificate, as for `private_key_jwt`.
    pub key: PrivateKeyJwt,
    /// The `sub` claim: the user or service the token acts for.
    pub subject: String,
    /// The `aud` claim; `None` for the token endpoint.
    pub audience: Option<String>,
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
    /// Where a deleted connection's refresh token is revoked (RFC 7009); else the
    /// issuer's `revocation_endpoint`, if it has one.
    pub revocation_url: Option<Url>,
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
    /// RFC 7523 §2.1: a signed JWT as the authorization grant.
    JwtBearer,
    /// RFC 8693: a caller's token exchanged for one for this client.
    TokenExchange,
}

impl Grant {
    /// The name used in configuration and in `ListProfiles`.
    pub fn as_str(self) -> &'static str {
        match self {
            Self::ClientCredentials => "client_credentials",
            Self::RefreshToken => "refresh_token",
            Self::JwtBearer => "jwt_bearer",
            Self::TokenExchange => "token_exchange",
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
    /// A JWT client assertion signed with the client secret.
    ClientSecretJwt,
    /// A workload's JWT from a file, sent as the client assertion.
    ClientAssertion,
    /// No client authentication, for `grant: jwt_bearer`.
    None,
    /// Mutual TLS with a certificate from a CA the provider trusts (RFC 8705 §2.1).
    TlsClientAuth,
    /// Mutual TLS with a certificate the provider has registered (RFC 8705 §2.2).
    SelfSignedTlsClientAuth,
}

impl AuthMethod {
    pub(crate) fn as_str(self) -> &'static str {
        match self {
            Self::ClientSecretPost => "client_secret_post",
            Self::ClientSecretBasic => "client_secret_basic",
            Self::PrivateKeyJwt => "private_key_jwt",
            Self::ClientSecretJwt => "client_secret_jwt",
            Self::ClientAssertion => "client_assertion",
            Self::None => "none",
            Self::TlsClientAuth => "tls_client_auth",
            Self::SelfSignedTlsClientAuth => "self_signed_tls_client_auth",
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
#[derive(Debug, Clone, thiserror::Error, PartialEq, Eq)]
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
    pub(crate) fn new(key: impl Into<String>, message: impl Into<String>) -> Self {
        Self {
            key: key.into(),
            message: message.into(),
        }
    }
}

/// Collects the errors of independent checks, so that one pass reports them all.
#[derive(Default)]
struct Found(Vec<ConfigError>);

impl Found {
    fn take<T>(&mut self, result: Result<T, ConfigError>) -> Option<T> {
        result.map_err(|e| self.0.push(e)).ok()
    }
}

/// Every error found in a configuration: at least one, each naming its key.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ConfigErrors(Vec<ConfigError>);

impl ConfigErrors {
    /// The first error found.
    pub fn first(&self) -> &ConfigError {
        // Built only from a non-empty list (`From<Vec<_>>` guarantees one).
        &self.0[0]
    }

    /// Every error found.
    pub fn iter(&self) -> impl Iterator<Item = &ConfigError> {
        self.0.iter()
    }
}

impl From<ConfigError> for ConfigErrors {
    fn from(error: ConfigError) -> Self {
        Self(vec![error])
    }
}

impl From<Vec<ConfigError>> for ConfigErrors {
    fn from(mut errors: Vec<ConfigError>) -> Self {
        if errors.is_empty() {
            errors.push(ConfigError::new("", "invalid configuration"));
        }
        Self(errors)
    }
}

impl fmt::Display for ConfigErrors {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        for (i, error) in self.0.iter().enumerate() {
            if i > 0 {
                f.write_str("\n")?;
            }
            fmt::Display::fmt(error, f)?;
        }
        Ok(())
    }
}

impl std::error::Error for ConfigErrors {}

impl Config {
    /// Reads and validates a configuration file.
    pub fn load(path: &Path) -> Result<Self, ConfigErrors> {
        let text = crate::bounded::read_to_string(path, crate::bounded::CONFIG_BYTES)
            .map_err(|e| ConfigError::new("", format!("cannot read {}: {e}", path.display())))?;
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

    /// Parses and validates a configuration: its shape, every section, every profile,
    /// reporting each error found. Nothing it names is read here (see [`crate::app`]).
    pub fn from_yaml(text: &str) -> Result<Self, ConfigErrors> {
        serde_path_to_error::deserialize::<_, unique::Unique>(serde_yaml::Deserializer::from_str(
            text,
        ))
        .map_err(yaml_error)?;
        let raw: RawConfig =
            serde_path_to_error::deserialize(serde_yaml::Deserializer::from_str(text))
                .map_err(yaml_error)?;
        let mut errors = Vec::new();
        let server = raw
            .server
            .validate()
            .map_err(|mut e| errors.append(&mut e))
            .ok();
        if raw.profiles.is_empty() {
            errors.push(ConfigError::new(
                "profiles",
                "at least one profile is required",
            ));
        }
        let profiles = profile::validate_all(raw.profiles)
            .map_err(|mut e| errors.append(&mut e))
            .ok();
        let (Some(server), Some(profiles), true) = (server, profiles, errors.is_empty()) else {
            return Err(errors.into());
        };
        for (i, route) in server.ext_authz.routes.iter().enumerate() {
            if !profiles.iter().any(|p| *p.name == *route.profile) {
                errors.push(ConfigError::new(
                    format!("server.ext_authz.routes[{i}].profile"),
                    format!("no profile named `{}` is configured", route.profile),
                ));
            }
        }
        if !errors.is_empty() {
            return Err(errors.into());
        }
        if server.connections.key.is_none()
            && let Some(template) = profiles.iter().find(|p| p.template)
        {
            return Err(ConfigError::new(
                "server.connections.key",
                format!(
                    "is required: profile `{}` is a template, whose connections are stored sealed and named by a keyed digest (generate one with `openssl rand -base64 32`)",
                    template.name
                ),
            )
            .into());
        }
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
            )
            .into());
        }
        Ok(Self {
            server,
            profiles,
            path: None,
            digest: digest(text.as_bytes()),
        })
    }

    /// Warnings about a configuration that is valid but probably not what was meant.
    pub(crate) fn warnings(&self) -> Vec<ConfigError> {
        let mut warnings = Vec::new();
        if self.server.authenticates_callers() {
            for profile in self.profiles.iter().filter(|p| p.allow.is_none()) {
                warnings.push(ConfigError::new(
                    format!("profiles.{}.allow", profile.name),
                    "is not set: every authenticated caller may use the profile",
                ));
            }
        }
        warnings
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
    server: server::RawServer,
    #[serde(default)]
    profiles: BTreeMap<String, profile::RawProfile>,
}

/// A secret's source, as written. Its value is read where it is used, not here; an
/// inline value is allowed and warned about, since it sits in a file many can read.
fn secret_source(raw: RawSecretSource, key: &str) -> Result<SecretSource, ConfigError> {
    let source = raw
        .into_source()
        .map_err(|e| ConfigError::new(key, e.to_string()))?;
    if matches!(source, SecretSource::Value(_)) {
        tracing::warn!(
            key,
            "secret given inline with `value`; use `env` or `file` outside development"
        );
    }
    Ok(source)
}

/// Why a URL cannot be a token endpoint, an issuer or a key set's address.
#[derive(Debug, Clone, thiserror::Error, PartialEq, Eq)]
pub enum EndpointError {
    /// Not a URL at all.
    #[error("`{text}` is not a URL: {reason}")]
    NotUrl {
        /// What was given (it is not a URL, so it carries no credentials to hide).
        text: String,
        /// The parser's reason.
        reason: url::ParseError,
    },
    /// `user:password@` in the URL.
    #[error("must not carry credentials; use client_id and client_secret")]
    Credentials,
    /// A `#fragment`.
    #[error("must not have a #fragment")]
    Fragment,
    /// `http://` to a host that is not loopback.
    #[error("`{0}` is plain http to a host that is not loopback; use https")]
    PlainHttp(String),
    /// Neither https nor http.
    #[error("scheme `{0}` is not supported; use https")]
    Scheme(String),
}

/// Token endpoints and issuers are https. Plain http is allowed only to a loopback host,
/// where the secret never crosses a network (tests, `serve --dev`, a local sidecar).
pub(crate) fn parse_endpoint_url(text: &str) -> Result<Url, EndpointError> {
    let url = Url::parse(text).map_err(|reason| EndpointError::NotUrl {
        text: text.to_owned(),
        reason,
    })?;
    if !url.username().is_empty() || url.password().is_some() {
        return Err(EndpointError::Credentials);
    }
    if url.fragment().is_some() {
        return Err(EndpointError::Fragment);
    }
    match url.scheme() {
        "https" => Ok(url),
        "http" if is_loopback(&url) => Ok(url),
        "http" => Err(EndpointError::PlainHttp(text.to_owned())),
        other => Err(EndpointError::Scheme(other.to_owned())),
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
