//! From configuration to a running application: the one place where the data of
//! [`crate::config`] meets the world. [`App::build`] reads every secret, key, certificate
//! and key set the configuration names and builds the live objects from them; `serve`,
//! `check` and a reload all go through it, so they cannot disagree about what is valid.
//! [`Live::apply`] swaps a new build into a running server, section by section, and
//! [`keep_restart_only`] is the one list of settings that only a restart changes.

use std::{net::SocketAddr, sync::Arc};

use arc_swap::ArcSwap;
use tokio_util::{sync::CancellationToken, task::TaskTracker};

use crate::{
    assertion::Signer,
    auth::{Authenticator, jwt::KeySet},
    cache::TokenCache,
    config::{ClientAuth, Config, ConfigError, ConfigErrors, JwksSource, Profile, ServerConfig},
    conn::Rules,
    ext_authz::LiveExtAuthz,
    idp::IdpClient,
    limit::{Holdings, RateLimiter},
    metrics::Metrics,
    service::{LiveService, TokenService},
    store::decode_key,
    tls::{self, ConnectionLimit},
};

#[cfg(test)]
mod tests;

/// A configuration with everything it names loaded and built, ready to serve or to swap
/// into a running server.
pub(crate) struct App {
    config: Config,
    auth: Arc<Authenticator>,
    limiter: Arc<RateLimiter>,
    tls: Option<Arc<rustls::ServerConfig>>,
    warnings: Vec<ConfigError>,
}

impl std::fmt::Debug for App {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("App")
            .field("config", &self.config)
            .field("tls", &self.tls.is_some())
            .finish_non_exhaustive()
    }
}

impl App {
    /// Loads what `config` names and builds the live objects, for a gRPC port on `grpc`
    /// (which decides whether callers must authenticate) and an admin port on `admin`
    /// (`None` when there are no admin endpoints; which decides whether `/metrics` needs
    /// a token), and a forward-auth port on `forward_auth` (`None` when it is not served;
    /// judged as the gRPC port is). Reports every error found, each with its key.
    pub(crate) fn build(
        config: Config,
        grpc: SocketAddr,
        admin: Option<SocketAddr>,
        forward_auth: Option<SocketAddr>,
    ) -> Result<Self, ConfigErrors> {
        let mut errors = Vec::new();
        for profile in &config.profiles {
            check_profile(profile, &mut errors);
        }
        let server = &config.server;
        let tls = match &server.tls {
            None => None,
            Some(files) => tls::server_config(files)
                .map_err(|e| errors.push(ConfigError::new(e.key, e.message)))
                .ok(),
        };
        check_service_account(server, &mut errors);
        check_store(server, &mut errors);
        if let Some(key) = &server.connections.key
            && let Err(e) = decode_key(key)
        {
            errors.push(ConfigError::new("server.connections.key", e.to_string()));
        }
        // Checked here as well as at load: a reload keeps the running server's
        // `server.connections` (restart-only), which may have no key for a new template.
        if server.connections.key.is_none()
            && let Some(template) = config.profiles.iter().find(|p| p.template)
        {
            errors.push(ConfigError::new(
                "server.connections.key",
                format!(
                    "is required for template profile `{}`, and takes effect only after a restart",
                    template.name
                ),
            ));
        }
        let mut warnings = config.warnings();
        let forward_auth = forward_auth
            .filter(|_| server.forward_auth.is_some())
            .map(|address| check_listener(server, address, "server.forward_auth.listen"));
        let checks = [
            Some(check_listener(server, grpc, "server.listen")),
            Some(check_admin(server, admin)),
            forward_auth,
        ];
        crate::web::check(server, admin, &config.profiles, &mut errors, &mut warnings);
        for check in checks.into_iter().flatten() {
            match check {
                Ok(None) => {}
                Ok(Some(warning)) => warnings.push(warning),
                Err(error) => errors.push(error),
            }
        }
        let auth = Authenticator::new(server)
            .map_err(|e| {
                errors.push(ConfigError::new(
                    "server.auth.service_account",
                    format!("cannot build the key set client: {e}"),
                ));
            })
            .ok();
        let (Some(auth), true) = (auth, errors.is_empty()) else {
            return Err(errors.into());
        };
        Ok(Self {
            limiter: Arc::new(RateLimiter::new(&server.limits)),
            auth: Arc::new(auth),
            tls,
            warnings,
            config,
        })
    }

    /// The configuration it was built from.
    pub(crate) fn config(&self) -> &Config {
        &self.config
    }

    /// Settings that are valid but probably not meant, each with its key.
    pub(crate) fn warnings(&self) -> &[ConfigError] {
        &self.warnings
    }

    pub(crate) fn tls(&self) -> Option<Arc<rustls::ServerConfig>> {
        self.tls.clone()
    }

    pub(crate) fn auth(&self) -> Arc<Authenticator> {
        self.auth.clone()
    }

    pub(crate) fn limiter(&self) -> Arc<RateLimiter> {
        self.limiter.clone()
    }
}

/// Every secret of a profile can be read now, and its key, certificate and header values
/// can be used. They are read again at each use (a rotated file is picked up then); this
/// is so that a missing one stops the start, or the reload, with its key named.
fn check_profile(profile: &Profile, errors: &mut Vec<ConfigError>) {
    let key = |k: &str| format!("profiles.{}.{k}", profile.name);
    match &profile.client_auth {
        ClientAuth::SecretPost(secret)
        | ClientAuth::SecretBasic(secret)
        | ClientAuth::SecretJwt(secret) => {
            if let Err(e) = secret.load() {
                errors.push(ConfigError::new(key("client_secret"), e.to_string()));
            }
        }
        ClientAuth::Assertion(assertion) => match assertion.load() {
            Err(e) => errors.push(ConfigError::new(key("client_assertion"), e.to_string())),
            // Only the shape: whether it is signed, current and for this provider is the
            // provider's to say, and the file is read again at each request.
            Ok(jwt) if !is_compact_jwt(jwt.expose()) => errors.push(ConfigError::new(
                key("client_assertion"),
                "does not hold a JWT (three base64url parts joined by `.`)",
            )),
            Ok(_) => {}
        },
        ClientAuth::PrivateKeyJwt(jwt) => {
            if let Err(e) = Signer::load(jwt) {
                errors.push(ConfigError::new(key(e.key()), e.to_string()));
            }
        }
        ClientAuth::None => {}
        ClientAuth::Tls(tls) => {
            if let Err(e) = crate::credential::tls_identity(profile, tls) {
                errors.push(ConfigError::new(e.key, e.reason));
            }
        }
    }
    if let Some(bearer) = &profile.jwt_bearer
        && let Err(e) = Signer::load(&bearer.key)
    {
        errors.push(ConfigError::new(key(e.key()), e.to_string()));
    }
    if let Some(ca) = &profile.provider_ca
        && let Err(e) = crate::idp::provider_roots(ca)
    {
        errors.push(ConfigError::new(key("provider_ca"), e));
    }
    if let Some(seed) = &profile.refresh_token
        && let Err(e) = seed.load()
    {
        errors.push(ConfigError::new(key("refresh_token"), e.to_string()));
    }
    for (name, source) in &profile.headers {
        let header_key = key(&format!("headers.{name}"));
        match source.load() {
            Err(e) => errors.push(ConfigError::new(header_key, e.to_string())),
            Ok(value) => {
                if http::HeaderValue::try_from(value.expose()).is_err() {
                    errors.push(ConfigError::new(
                        header_key,
                        "holds characters a header value cannot carry (a newline?)",
                    ));
                }
            }
        }
    }
}

fn is_compact_jwt(text: &str) -> bool {
    let parts: Vec<&str> = text.split('.').collect();
    parts.len() == 3
        && parts.iter().all(|p| {
            !p.is_empty()
                && p.bytes()
                    .all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'_')
        })
}

fn check_service_account(server: &ServerConfig, errors: &mut Vec<ConfigError>) {
    let Some(sa) = &server.auth.service_account else {
        return;
    };
    let key = |k: &str| format!("server.auth.service_account.{k}");
    if let JwksSource::File(file) = &sa.jwks
        && let Err(m) = KeySet::read_file(file)
    {
        errors.push(ConfigError::new(key("jwks_file"), m.to_string()));
    }
    for (k, path) in [
        ("jwks_ca", &sa.jwks_ca),
        ("jwks_token_file", &sa.jwks_token_file),
    ] {
        if let Some(path) = path
            && let Err(e) = std::fs::metadata(path)
        {
            errors.push(ConfigError::new(
                key(k),
                format!("cannot read {}: {}", path.display(), e.kind()),
            ));
        }
    }
}

fn check_store(server: &ServerConfig, errors: &mut Vec<ConfigError>) {
    const KEY: &str = "server.store.redis";
    let Some(redis) = &server.store else {
        return;
    };
    if let Some(password) = &redis.password
        && let Err(e) = password.load()
    {
        errors.push(ConfigError::new(format!("{KEY}.password"), e.to_string()));
    }
    if let crate::config::RedisTarget::Sentinel(sentinel) = &redis.target
        && let Some(password) = &sentinel.password
        && let Err(e) = password.load()
    {
        errors.push(ConfigError::new(
            format!("{KEY}.sentinel.password"),
            e.to_string(),
        ));
    }
    for (i, key) in redis.encryption_keys.iter().enumerate() {
        if let Err(e) = decode_key(&key.key) {
            errors.push(ConfigError::new(
                format!("{KEY}.encryption_keys[{i}].key"),
                e.to_string(),
            ));
        }
    }
}

/// A port that anyone on the network can reach hands out every token unless callers
/// prove who they are: refused, unless the configuration says a network policy guards it.
/// The gRPC port and the forward-auth port (`listen_key`) are judged alike.
fn check_listener(
    server: &ServerConfig,
    address: SocketAddr,
    listen_key: &str,
) -> Result<Option<ConfigError>, ConfigError> {
    if server.authenticates_callers() || address.ip().is_loopback() {
        return Ok(None);
    }
    if !server.auth.allow_unauthenticated {
        return Err(ConfigError::new(
            "server.auth",
            format!(
                "refusing to serve on {address} without caller authentication \
                 (`{listen_key}`): anyone who can reach it would get every token. Configure \
                 `server.auth.service_account` or mutual TLS (`server.tls.client_ca`), listen \
                 on loopback, or set `server.auth.allow_unauthenticated: true` if a network \
                 policy guards the port"
            ),
        ));
    }
    Ok(Some(ConfigError::new(
        "server.auth.allow_unauthenticated",
        format!(
            "serving {address} without caller authentication (`{listen_key}`): anyone who can reach it gets every token"
        ),
    )))
}

/// `/metrics` names every profile and how much each is used: on an address others can
/// reach it needs a bearer token, unless the configuration opens it on purpose. The token
/// must be readable now; it is read again at each scrape, so a rotated one is picked up.
fn check_admin(
    server: &ServerConfig,
    admin: Option<SocketAddr>,
) -> Result<Option<ConfigError>, ConfigError> {
    const KEY: &str = "server.admin.metrics_token";
    if let Some(token) = &server.admin.metrics_token {
        return match token.load() {
            Ok(_) => Ok(None),
            Err(e) => Err(ConfigError::new(KEY, e.to_string())),
        };
    }
    let Some(admin) = admin.filter(|a| !a.ip().is_loopback()) else {
        return Ok(None);
    };
    if !server.admin.unauthenticated_metrics {
        return Err(ConfigError::new(
            KEY,
            format!(
                "refusing to serve /metrics on {admin} without a token: anyone who can reach \
                 it would read every profile's name and use. Set `server.admin.metrics_token` \
                 (the bearer token the scraper sends), listen on loopback \
                 (`server.admin_listen: 127.0.0.1:9090`), or set \
                 `server.admin.unauthenticated_metrics: true` if a network policy guards the port"
            ),
        ));
    }
    Ok(Some(ConfigError::new(
        "server.admin.unauthenticated_metrics",
        format!(
            "serving /metrics on {admin} without a token: anyone who can reach it reads every profile's name"
        ),
    )))
}

/// When a connection on the gRPC port is closed for holding its slot for nothing.
pub(crate) fn connection_rules(server: &ServerConfig) -> Rules {
    Rules {
        idle_timeout: server.limits.idle_timeout,
        unauthenticated_timeout: server
            .authenticates_callers()
            .then_some(server.limits.unauthenticated_timeout),
    }
}

/// The settings a running server cannot change: copied from `running` into `new`, so that
/// a reload builds what will actually run. Returns the keys that differed, to be named in
/// a warning. Everything else in the configuration takes effect on reload.
///
/// - `server.listen`, `server.admin_listen`: the sockets are bound once.
/// - `server.admin`: the admin endpoints' access, fixed with their socket (the token
///   file's content is read at each scrape, so a rotated token needs no restart).
/// - `server.state_dir`: locked at start; a running server cannot move its chains.
/// - `server.store`: the shared store's connection and the chains in it.
/// - `server.connections`: its key names and seals the stored connections, and the
///   caches of connections are sized when the server starts.
/// - `server.tls` turned on or off (its files may change): the listener's kind.
/// - `server.limits.max_concurrent_streams`: an HTTP/2 setting fixed when the server starts.
/// - `server.forward_auth`: its socket is bound once, and its headers and `max_age` are
///   fixed with it (the callers, limits and profiles it serves follow a reload).
pub(crate) fn keep_restart_only(
    new: &mut ServerConfig,
    running: &ServerConfig,
) -> Vec<&'static str> {
    let mut changed = Vec::new();
    let mut keep = |key, differs: bool| {
        if differs {
            changed.push(key);
        }
    };
    keep("server.listen", new.listen != running.listen);
    new.listen = running.listen;
    keep(
        "server.admin_listen",
        new.admin_listen != running.admin_listen,
    );
    new.admin_listen = running.admin_listen;
    keep("server.admin", new.admin != running.admin);
    new.admin.clone_from(&running.admin);
    keep("server.state_dir", new.state_dir != running.state_dir);
    new.state_dir.clone_from(&running.state_dir);
    keep("server.store", new.store != running.store);
    new.store.clone_from(&running.store);
    keep("server.connections", new.connections != running.connections);
    new.connections.clone_from(&running.connections);
    if new.tls.is_some() != running.tls.is_some() {
        keep("server.tls", true);
        new.tls.clone_from(&running.tls);
    }
    keep(
        "server.limits.max_concurrent_streams",
        new.limits.max_concurrent_streams != running.limits.max_concurrent_streams,
    );
    new.limits.max_concurrent_streams = running.limits.max_concurrent_streams;
    keep(
        "server.forward_auth",
        new.forward_auth != running.forward_auth,
    );
    new.forward_auth.clone_from(&running.forward_auth);
    changed
}

/// The handles of a running server through which a reload changes it.
pub(crate) struct Live {
    /// The server settings in force (the shutdown timings are read from here).
    pub(crate) settings: ArcSwap<ServerConfig>,
    pub(crate) service: LiveService,
    pub(crate) ext_authz: LiveExtAuthz,
    pub(crate) tls: Option<Arc<tls::Reloading>>,
    pub(crate) connections: Arc<ConnectionLimit>,
    /// The forward-auth port's connection limits, if it is served.
    pub(crate) forward_connections: Option<Arc<ConnectionLimit>>,
    pub(crate) cache: Arc<TokenCache>,
    pub(crate) idp: IdpClient,
    pub(crate) auth: ArcSwap<Authenticator>,
    pub(crate) limiter: ArcSwap<RateLimiter>,
    /// What callers hold open; shared by every service a reload builds.
    pub(crate) holdings: Holdings,
    pub(crate) grpc: SocketAddr,
    /// The admin port, if one is served.
    pub(crate) admin: Option<SocketAddr>,
    /// The forward-auth port, if one is served.
    pub(crate) forward_auth: Option<SocketAddr>,
    /// Ends `WatchToken` streams at shutdown; every service built shares it.
    pub(crate) streams: CancellationToken,
    pub(crate) metrics: Metrics,
    /// The admin web, if the admin listener is served: it signs connect links.
    pub(crate) web: Option<Arc<crate::web::Web>>,
    pub(crate) tasks: TaskTracker,
    pub(crate) stop: CancellationToken,
}

impl Live {
    /// The gRPC service for these settings.
    pub(crate) fn token_service(
        &self,
        auth: Arc<Authenticator>,
        limiter: Arc<RateLimiter>,
        server: &ServerConfig,
    ) -> TokenService {
        TokenService::new(
            self.cache.clone(),
            self.streams.clone(),
            auth,
            limiter,
            self.holdings.clone(),
            &server.limits,
            self.metrics.clone(),
        )
        .with_links(self.web.clone())
    }

    /// Builds `config` as this server would run it and swaps it in; on an error nothing
    /// changes and the errors are returned. Called by the one reload task only, so two
    /// reloads never interleave.
    pub(crate) fn reload(&self, mut config: Config) -> Result<(), ConfigErrors> {
        let running = self.settings.load_full();
        let restart = keep_restart_only(&mut config.server, &running);
        let app = App::build(config, self.grpc, self.admin, self.forward_auth)?;
        for key in restart {
            tracing::warn!(
                key,
                "changed in the configuration; takes effect after a restart"
            );
        }
        for warning in app.warnings() {
            tracing::warn!(key = %warning.key, "{}", warning.message);
        }
        self.apply(app, &running);
        Ok(())
    }

    /// Swaps each section of a built configuration in. Caller authentication and the
    /// rate limiter are kept when their settings did not change, so that verified tokens,
    /// fetched keys and callers' buckets survive a reload that is about something else.
    fn apply(&self, app: App, running: &ServerConfig) {
        let server = &app.config.server;
        if server.idp_connect_timeout != running.idp_connect_timeout
            && let Err(error) = self.idp.set_connect_timeout(server.idp_connect_timeout)
        {
            tracing::error!(%error, key = "server.idp_connect_timeout", "cannot build the identity provider client; keeping the old timeout");
        }
        if let (Some(reloading), Some(files), Some(config)) = (&self.tls, &server.tls, app.tls())
            && server.tls != running.tls
        {
            reloading.replace(files.clone(), config);
        }
        // The forward-auth port has limits of its own, set from the same keys.
        let limits = std::iter::once(&self.connections).chain(&self.forward_connections);
        let rules = connection_rules(server);
        for connections in limits {
            if server.limits.max_connections != running.limits.max_connections {
                connections.resize(
                    server.limits.max_connections,
                    &self.tasks,
                    self.stop.clone(),
                );
            }
            if server.limits.max_connections_per_peer != running.limits.max_connections_per_peer
                || rules != connection_rules(running)
            {
                connections.set(server.limits.max_connections_per_peer, rules);
            }
        }
        let client_ca = |s: &ServerConfig| s.tls.as_ref().and_then(|t| t.client_ca.clone());
        if server.auth != running.auth || client_ca(server) != client_ca(running) {
            self.auth.store(app.auth());
        }
        if server.limits.rate != running.limits.rate || server.limits.burst != running.limits.burst
        {
            self.limiter.store(app.limiter());
        }
        let service =
            Arc::new(self.token_service(self.auth.load_full(), self.limiter.load_full(), server));
        self.service
            .replace(service.clone(), server.limits.max_request_bytes);
        self.ext_authz.replace(service, &server.ext_authz);
        self.settings.store(Arc::new(server.clone()));

        let changes = self.cache.replace_profiles(&app.config.profiles);
        tracing::info!(
            added = ?changes.added,
            changed = ?changes.changed,
            removed = ?changes.removed,
            unchanged = changes.unchanged.len(),
            "configuration reloaded"
        );
    }
}
