//! `server`: the listeners, timings, TLS files, caller authentication and limits, checked
//! for shape. The files they name are read by the runtime (`app`), not here.

use std::{net::SocketAddr, path::PathBuf, time::Duration};

use serde::Deserialize;
use url::Url;

use crate::secret::RawSecretSource;

use super::{
    AdminConfig, AdminLogin, AdminOidc, AuthConfig, ConfigError, ConnectionsConfig, Dur,
    ForwardAuthConfig, Found, JwksSource, Limits, ServerConfig, ServiceAccountConfig, TlsConfig,
    ext_authz::RawExtAuthz, nonzero, parse_endpoint_url, store::RawStore,
};

#[derive(Deserialize, Default)]
#[serde(deny_unknown_fields)]
pub(super) struct RawServer {
    listen: Option<String>,
    admin_listen: Option<String>,
    #[serde(default)]
    admin: RawAdmin,
    shutdown_grace: Option<Dur>,
    shutdown_delay: Option<Dur>,
    reload_interval: Option<Dur>,
    idp_connect_timeout: Option<Dur>,
    state_dir: Option<PathBuf>,
    store: Option<RawStore>,
    tls: Option<RawTls>,
    #[serde(default)]
    auth: RawAuth,
    #[serde(default)]
    limits: RawLimits,
    #[serde(default)]
    ext_authz: RawExtAuthz,
    forward_auth: Option<RawForwardAuth>,
    #[serde(default)]
    connections: RawConnections,
}

#[derive(Deserialize, Default)]
#[serde(deny_unknown_fields)]
struct RawConnections {
    key: Option<RawSecretSource>,
    max_cached: Option<u64>,
    idle: Option<Dur>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RawForwardAuth {
    listen: String,
    caller_header: Option<String>,
    rejected_token_header: Option<String>,
    max_age: Option<Dur>,
}

#[derive(Deserialize, Default)]
#[serde(deny_unknown_fields)]
struct RawAdmin {
    metrics_token: Option<RawSecretSource>,
    #[serde(default)]
    unauthenticated_metrics: bool,
    public_url: Option<String>,
    session_key: Option<RawSecretSource>,
    #[serde(default)]
    login: RawLogin,
    #[serde(default)]
    admins: Vec<String>,
    tls: Option<RawAdminTls>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RawAdminTls {
    certificate: PathBuf,
    key: PathBuf,
    client_ca: PathBuf,
}

#[derive(Deserialize, Default)]
#[serde(deny_unknown_fields)]
struct RawLogin {
    token: Option<RawSecretSource>,
    oidc: Option<RawOidc>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RawOidc {
    issuer: String,
    client_id: String,
    client_secret: RawSecretSource,
    #[serde(default)]
    scopes: Vec<String>,
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
    max_connections_per_peer: Option<usize>,
    idle_timeout: Option<Dur>,
    unauthenticated_timeout: Option<Dur>,
    max_concurrent_streams: Option<u32>,
    max_request_bytes: Option<usize>,
    request_timeout: Option<Dur>,
    max_watches_per_caller: Option<usize>,
    max_pending_per_caller: Option<usize>,
}

impl RawAdmin {
    fn validate(self) -> Result<AdminConfig, ConfigError> {
        let metrics_token = self
            .metrics_token
            .map(RawSecretSource::into_source)
            .transpose()
            .map_err(|e| ConfigError::new("server.admin.metrics_token", e.to_string()))?;
        if metrics_token.is_some() && self.unauthenticated_metrics {
            return Err(ConfigError::new(
                "server.admin.unauthenticated_metrics",
                "give `metrics_token` or `unauthenticated_metrics: true`, not both",
            ));
        }
        let secret = |key: &str, raw: Option<RawSecretSource>| {
            raw.map(RawSecretSource::into_source)
                .transpose()
                .map_err(|e| ConfigError::new(format!("server.admin.{key}"), e.to_string()))
        };
        let public_url = self.public_url.map(|text| public_url(&text)).transpose()?;
        let oidc = self.login.oidc.map(RawOidc::validate).transpose()?;
        if let Some(admin) = self.admins.iter().find(|a| a.trim().is_empty()) {
            return Err(ConfigError::new(
                "server.admin.admins",
                format!(
                    "`{admin}` is not an identity (an e-mail address, a `sub` or a certificate's name)"
                ),
            ));
        }
        Ok(AdminConfig {
            metrics_token,
            unauthenticated_metrics: self.unauthenticated_metrics,
            public_url,
            session_key: secret("session_key", self.session_key)?,
            login: AdminLogin {
                token: secret("login.token", self.login.token)?,
                oidc,
            },
            admins: self.admins,
            tls: self.tls.map(|tls| TlsConfig {
                cert: tls.certificate,
                key: tls.key,
                client_ca: Some(tls.client_ca),
                reload_interval: Duration::from_secs(10),
            }),
        })
    }
}

/// The base browsers reach the admin listener at: http(s), no query, no fragment, kept
/// without a trailing `/` so that paths join onto it as written.
fn public_url(text: &str) -> Result<Url, ConfigError> {
    const KEY: &str = "server.admin.public_url";
    let url = Url::parse(text)
        .map_err(|e| ConfigError::new(KEY, format!("`{text}` is not a URL: {e}")))?;
    if !matches!(url.scheme(), "http" | "https") || url.host().is_none() {
        return Err(ConfigError::new(
            KEY,
            format!("`{text}` is not an http(s) URL with a host"),
        ));
    }
    if url.scheme() == "http" && !super::is_loopback(&url) {
        return Err(ConfigError::new(
            KEY,
            format!(
                "`{text}` is plain http off loopback: cookies and codes would cross the network in the clear; use https"
            ),
        ));
    }
    if url.query().is_some() || url.fragment().is_some() || !url.username().is_empty() {
        return Err(ConfigError::new(
            KEY,
            "give a base URL without query, fragment or user",
        ));
    }
    let trimmed = url.as_str().trim_end_matches('/').to_owned();
    Url::parse(&trimmed).map_err(|e| ConfigError::new(KEY, e.to_string()))
}

impl RawOidc {
    fn validate(self) -> Result<AdminOidc, ConfigError> {
        let key = |k: &str| format!("server.admin.login.oidc.{k}");
        parse_endpoint_url(&self.issuer)
            .map_err(|e| ConfigError::new(key("issuer"), e.to_string()))?;
        if self.client_id.is_empty() {
            return Err(ConfigError::new(key("client_id"), "must not be empty"));
        }
        let client_secret = self
            .client_secret
            .into_source()
            .map_err(|e| ConfigError::new(key("client_secret"), e.to_string()))?;
        Ok(AdminOidc {
            issuer: self.issuer,
            client_id: self.client_id,
            client_secret,
            scopes: self.scopes,
        })
    }
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
                parse_endpoint_url(&url)
                    .map_err(|e| ConfigError::new(key("jwks_url"), e.to_string()))?,
            ),
            (None, Some(file)) => JwksSource::File(file),
            (None, None) => JwksSource::Discovery(
                parse_endpoint_url(issuer.as_str())
                    .map_err(|e| ConfigError::new(key("issuer"), e.to_string()))?,
            ),
        };
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
            max_connections_per_peer: positive(
                "max_connections_per_peer",
                self.max_connections_per_peer,
                d.max_connections_per_peer,
            )?,
            idle_timeout: nonzero(
                "server.limits.idle_timeout",
                self.idle_timeout,
                d.idle_timeout,
            )?,
            unauthenticated_timeout: nonzero(
                "server.limits.unauthenticated_timeout",
                self.unauthenticated_timeout,
                d.unauthenticated_timeout,
            )?,
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
            max_watches_per_caller: positive(
                "max_watches_per_caller",
                self.max_watches_per_caller,
                d.max_watches_per_caller,
            )?,
            max_pending_per_caller: positive(
                "max_pending_per_caller",
                self.max_pending_per_caller,
                d.max_pending_per_caller,
            )?,
        })
    }
}

impl RawConnections {
    fn validate(self) -> Result<ConnectionsConfig, ConfigError> {
        let defaults = ConnectionsConfig::default();
        let key = self
            .key
            .map(RawSecretSource::into_source)
            .transpose()
            .map_err(|e| ConfigError::new("server.connections.key", e.to_string()))?;
        let max_cached = match self.max_cached {
            Some(0) => {
                return Err(ConfigError::new(
                    "server.connections.max_cached",
                    "must be at least 1",
                ));
            }
            Some(n) => n,
            None => defaults.max_cached,
        };
        Ok(ConnectionsConfig {
            key,
            max_cached,
            idle: nonzero("server.connections.idle", self.idle, defaults.idle)?,
        })
    }
}

impl RawForwardAuth {
    fn validate(self) -> Result<ForwardAuthConfig, ConfigError> {
        let key = |k: &str| format!("server.forward_auth.{k}");
        let listen = self.listen.parse::<SocketAddr>().map_err(|_| {
            ConfigError::new(
                key("listen"),
                format!("`{}` is not an address like 0.0.0.0:8080", self.listen),
            )
        })?;
        let header = |k: &str, value: Option<String>, default: &'static str| {
            let Some(text) = value else {
                return Ok(http::HeaderName::from_static(default));
            };
            http::HeaderName::from_bytes(text.as_bytes())
                .map_err(|_| ConfigError::new(key(k), format!("`{text}` is not a header name")))
        };
        let caller_header = header(
            "caller_header",
            self.caller_header,
            "x-tokenvend-authorization",
        )?;
        let rejected_token_header = header(
            "rejected_token_header",
            self.rejected_token_header,
            "x-tokenvend-rejected-token",
        )?;
        if caller_header == rejected_token_header {
            return Err(ConfigError::new(
                key("rejected_token_header"),
                "must differ from `caller_header`",
            ));
        }
        Ok(ForwardAuthConfig {
            listen,
            caller_header,
            rejected_token_header,
            max_age: self.max_age.map_or(Duration::from_secs(30), |d| d.0),
        })
    }
}

impl RawServer {
    pub(super) fn validate(self) -> Result<ServerConfig, Vec<ConfigError>> {
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
        let mut found = Found::default();
        let listen = found.take(addr("listen", self.listen, defaults.listen));
        let admin_listen = found.take(addr(
            "admin_listen",
            self.admin_listen,
            defaults.admin_listen,
        ));
        let admin = found.take(self.admin.validate());
        let idp_connect_timeout = found.take(nonzero(
            "server.idp_connect_timeout",
            self.idp_connect_timeout,
            defaults.idp_connect_timeout,
        ));
        let store = found.take(
            self.store
                .map(RawStore::validate)
                .transpose()
                .map(Option::flatten),
        );
        let tls = found.take(self.tls.map(RawTls::validate).transpose());
        let service_account = found.take(
            self.auth
                .service_account
                .map(RawServiceAccount::validate)
                .transpose(),
        );
        let limits = found.take(self.limits.validate());
        let ext_authz = found.take(self.ext_authz.validate());
        let forward_auth = found.take(self.forward_auth.map(RawForwardAuth::validate).transpose());
        let connections = found.take(self.connections.validate());
        let (
            Some(listen),
            Some(admin_listen),
            Some(admin),
            Some(idp_connect_timeout),
            Some(store),
            Some(tls),
            Some(service_account),
            Some(limits),
            Some(ext_authz),
            Some(forward_auth),
            Some(connections),
        ) = (
            listen,
            admin_listen,
            admin,
            idp_connect_timeout,
            store,
            tls,
            service_account,
            limits,
            ext_authz,
            forward_auth,
            connections,
        )
        else {
            return Err(found.0);
        };
        Ok(ServerConfig {
            listen,
            admin_listen,
            admin,
            shutdown_grace: self.shutdown_grace.map_or(defaults.shutdown_grace, |d| d.0),
            shutdown_delay: self.shutdown_delay.map_or(defaults.shutdown_delay, |d| d.0),
            reload_interval: self
                .reload_interval
                .map_or(defaults.reload_interval, |d| d.0),
            idp_connect_timeout,
            state_dir: self.state_dir,
            store,
            tls,
            auth: AuthConfig {
                allow_unauthenticated: self.auth.allow_unauthenticated,
                service_account,
            },
            limits,
            ext_authz,
            forward_auth,
            connections,
        })
    }
}
