//! The admin web on the admin listener: a server-rendered page of every profile's state,
//! the hosted authorization of refresh-token profiles (`POST /authorize/{profile}` →
//! provider → `GET /oauth/callback`), and the login that guards both off loopback.
//!
//! Who sees what:
//! - No login method configured and the listener on loopback: the page is open, as
//!   `/metrics` is, and every visitor is an admin unless `server.admin.admins` is set.
//! - A login method configured (`server.admin.login`): a visitor must log in, with the
//!   bearer token (header for scripts, `/login` form for browsers) or at the OpenID
//!   Connect issuer. The token holder is an admin; an OIDC identity is one if listed in
//!   `admins`, and reads the page without buttons otherwise.
//! - Off loopback without a login method the page is not served at all.
//!
//! State between requests lives in the browser, sealed ([`seal`]): the session (identity
//! and CSRF token) and an authorization in progress (profile, `state`, PKCE verifier).
//! The server keeps only the set of `state`s already used, so that a redirect works once.

mod connections;
mod flow;
pub(crate) mod html;
mod login;
mod seal;

use std::{
    collections::HashMap,
    net::SocketAddr,
    sync::{Arc, Mutex, PoisonError},
    time::{Duration, SystemTime},
};

use axum::{
    Router,
    extract::{DefaultBodyLimit, State},
    http::{HeaderMap, HeaderValue, StatusCode, header},
    response::{IntoResponse, Response},
    routing::{get, post},
};
use serde::{Deserialize, Serialize};
use sha2::{Digest, Sha256};
use url::Url;

use crate::{
    cache::{CacheState, TokenCache},
    config::{AdminConfig, ConfigError, Grant, Profile, ServerConfig},
    conn::Peer,
    idp::IdpClient,
    store::SharedStore,
};

pub(crate) use connections::LinkError;
pub(crate) use seal::Keys;

/// The session cookie: identity and CSRF token, for the whole admin site.
const SESSION: &str = "tv_session";
/// How long a login lasts.
const SESSION_TTL: Duration = Duration::from_secs(12 * 3600);
/// The largest form body accepted (a CSRF token, or the login token).
const MAX_FORM_BYTES: usize = 8 * 1024;
/// The callback's path under `public_url`.
pub(crate) const CALLBACK_PATH: &str = "/oauth/callback";

/// The admin web, as built at start (its settings change only with a restart).
pub(crate) struct Web {
    settings: AdminConfig,
    /// Where browsers reach the listener: `public_url`, or the listener's own address.
    base: Url,
    /// Whether the page is served at all.
    served: bool,
    /// No login is asked for: every visitor is a viewer.
    open: bool,
    keys: Keys,
    cache: Arc<TokenCache>,
    idp: IdpClient,
    shared: Option<SharedStore>,
    used: Mutex<UsedStates>,
    oidc: Option<login::Oidc>,
}

impl std::fmt::Debug for Web {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Web")
            .field("base", &self.base.as_str())
            .field("served", &self.served)
            .field("open", &self.open)
            .finish_non_exhaustive()
    }
}

impl Web {
    /// The admin web for a listener on `listen`, over the running cache.
    pub(crate) fn new(
        server: &ServerConfig,
        listen: SocketAddr,
        cache: Arc<TokenCache>,
        idp: IdpClient,
        shared: Option<SharedStore>,
    ) -> Result<Self, ConfigError> {
        let settings = server.admin.clone();
        let keys = session_keys(&settings)?;
        let loopback = listen.ip().is_loopback();
        let login = logs_in(&settings);
        let base = match &settings.public_url {
            Some(url) => url.clone(),
            // Parsing an address printed as `http://ip:port` does not fail.
            None => Url::parse(&format!(
                "{}://{listen}",
                if settings.tls.is_some() {
                    "https"
                } else {
                    "http"
                }
            ))
            .map_err(|e| ConfigError::new("server.admin.public_url", e.to_string()))?,
        };
        let oidc = settings
            .login
            .oidc
            .as_ref()
            .map(|oidc| login::Oidc::new(oidc, &base))
            .transpose()?;
        Ok(Self {
            served: loopback || login,
            open: !login,
            base,
            keys,
            cache,
            idp,
            shared,
            used: Mutex::new(UsedStates::default()),
            oidc,
            settings,
        })
    }

    /// The admin listener's settings, as the server started with them.
    pub(crate) fn settings(&self) -> &AdminConfig {
        &self.settings
    }

    /// Cookies are `Secure` when browsers reach the page over https.
    fn secure(&self) -> bool {
        self.base.scheme() == "https"
    }

    /// The URL the provider sends the person back to.
    fn callback_url(&self) -> String {
        format!(
            "{}{CALLBACK_PATH}",
            self.base.as_str().trim_end_matches('/')
        )
    }

    /// Whether the admin page can authorize this profile: a refresh-token profile whose
    /// `redirect_uri` is this listener's callback.
    fn hosted(&self, profile: &Profile) -> bool {
        profile.grant == Grant::RefreshToken
            && profile
                .authorize
                .as_ref()
                .is_some_and(|a| a.redirect_uri.as_str() == self.callback_url())
    }
}

/// The session key: the configured one, or a key of this process alone (App::build has
/// said where one is required).
fn session_keys(settings: &AdminConfig) -> Result<Keys, ConfigError> {
    const KEY: &str = "server.admin.session_key";
    match &settings.session_key {
        None => Ok(Keys::random()),
        Some(source) => {
            let secret = source
                .load()
                .map_err(|e| ConfigError::new(KEY, e.to_string()))?;
            Keys::derive(&secret).map_err(|e| ConfigError::new(KEY, e.to_string()))
        }
    }
}

/// Whether a login method is configured: a token, an OIDC issuer, or client certificates.
fn logs_in(settings: &AdminConfig) -> bool {
    settings.login.token.is_some() || settings.login.oidc.is_some() || settings.tls.is_some()
}

/// What `App::build` checks of the admin web: the same refusals for `check` and `serve`.
pub(crate) fn check(
    server: &ServerConfig,
    admin: Option<SocketAddr>,
    profiles: &[Arc<Profile>],
    errors: &mut Vec<ConfigError>,
    warnings: &mut Vec<ConfigError>,
) {
    let settings = &server.admin;
    if let Some(token) = &settings.login.token
        && let Err(e) = token.load()
    {
        errors.push(ConfigError::new("server.admin.login.token", e.to_string()));
    }
    if let Some(oidc) = &settings.login.oidc {
        if let Err(e) = oidc.client_secret.load() {
            errors.push(ConfigError::new(
                "server.admin.login.oidc.client_secret",
                e.to_string(),
            ));
        }
        if settings.admins.is_empty() {
            warnings.push(ConfigError::new(
                "server.admin.admins",
                "OpenID Connect login without `admins`: people who log in see the page but no one there may authorize",
            ));
        }
    }
    if settings.session_key.is_some()
        && let Err(e) = session_keys(settings)
    {
        errors.push(e);
    }
    if let Some(files) = &settings.tls
        && let Err(e) = crate::tls::server_config(files)
    {
        // The files are named as `server.tls`'s are; here they are the admin listener's.
        let key = e
            .key
            .replace("server.tls.cert", "server.admin.tls.certificate");
        let key = key.replace("server.tls.", "server.admin.tls.");
        errors.push(ConfigError::new(key, e.message));
    }
    let Some(admin) = admin else {
        return;
    };
    let login = logs_in(settings);
    let loopback = admin.ip().is_loopback();
    if !loopback && !login && (settings.public_url.is_some() || !settings.admins.is_empty()) {
        errors.push(ConfigError::new(
            "server.admin.login",
            format!(
                "refusing to serve the admin page on {admin} without a login: anyone who can \
                 reach it would see every profile and authorize them. Configure \
                 `server.admin.login.token` or `server.admin.login.oidc`, or listen on loopback"
            ),
        ));
    }
    let served = loopback || login;
    if served && settings.session_key.is_none() {
        // Off loopback there are replicas behind a balancer, or will be: a flow begun on
        // one and called back on another needs the same key.
        if !loopback || (server.store.is_some() && settings.public_url.is_some()) {
            errors.push(ConfigError::new(
                "server.admin.session_key",
                "required when the admin page is served off loopback or with a shared store: \
                 every replica must open the cookies the others seal (`openssl rand -base64 32`)",
            ));
        } else if server.store.is_some() {
            warnings.push(ConfigError::new(
                "server.admin.session_key",
                "not set: each replica seals the admin page's cookies with a key of its own, so a login or authorization works only on the replica it began on",
            ));
        }
    }
    if let Some(public_url) = &settings.public_url {
        let callback = format!(
            "{}{CALLBACK_PATH}",
            public_url.as_str().trim_end_matches('/')
        );
        for profile in profiles {
            let Some(authorize) = &profile.authorize else {
                continue;
            };
            let uri = &authorize.redirect_uri;
            if uri.as_str() != callback && uri.origin() == public_url.origin() {
                warnings.push(ConfigError::new(
                    format!("profiles.{}.redirect_uri", profile.name),
                    format!(
                        "points at the admin listener but not at its callback `{callback}`: the admin page cannot authorize this profile"
                    ),
                ));
            }
        }
    }
}

/// The routes of the admin web, to merge into the admin listener's router.
pub(crate) fn routes(web: Arc<Web>) -> Router {
    Router::new()
        .route("/", get(index))
        .route("/admin.css", get(css))
        .route("/authorize/{profile}", post(flow::start))
        .route(CALLBACK_PATH, get(flow::callback))
        .route("/login", get(login::form).post(login::with_token))
        .route("/login/oidc", get(login::oidc_start))
        .route("/login/callback", get(login::oidc_callback))
        .route("/logout", post(login::logout))
        .route("/connect/{profile}", get(connections::connect))
        .route("/connections/{profile}", get(connections::list))
        .route("/connections/{profile}/revoke", post(connections::revoke))
        .layer(DefaultBodyLimit::max(MAX_FORM_BYTES))
        .layer(axum::middleware::map_response(protect))
        .with_state(web)
}

/// Headers on every answer of the admin web: nothing runs but what this origin serves
/// (and it serves no script), nothing frames the page, nothing is cached or leaks the
/// callback's query in a `Referer`. No `form-action`: a browser applies it to the
/// redirect to the provider that an Authorize form answers with.
async fn protect(mut response: Response) -> Response {
    let headers = response.headers_mut();
    for (name, value) in [
        (
            header::CONTENT_SECURITY_POLICY,
            "default-src 'none'; style-src 'self'; img-src 'self'; frame-ancestors 'none'; base-uri 'none'",
        ),
        (header::X_FRAME_OPTIONS, "DENY"),
        (header::CACHE_CONTROL, "no-store"),
        (header::X_CONTENT_TYPE_OPTIONS, "nosniff"),
        (header::REFERRER_POLICY, "no-referrer"),
    ] {
        headers.insert(name, HeaderValue::from_static(value));
    }
    response
}

async fn css() -> Response {
    (
        [(header::CONTENT_TYPE, "text/css; charset=utf-8")],
        html::CSS,
    )
        .into_response()
}

/// A person's session, sealed in [`SESSION`].
#[derive(Serialize, Deserialize)]
struct Session {
    /// How they came: `open` (no login configured), `token` or `oidc`.
    m: String,
    /// Who: the OIDC identity; `token` for the token holder; empty when open.
    id: String,
    /// The CSRF token every form of this session carries.
    csrf: String,
}

/// The identity of the connection's verified client certificate, on a TLS admin
/// listener (its accept loop puts the connection's [`Peer`] on each request).
pub(crate) struct CertIdentity(Option<Arc<str>>);

impl<S: Send + Sync> axum::extract::FromRequestParts<S> for CertIdentity {
    type Rejection = std::convert::Infallible;

    async fn from_request_parts(
        parts: &mut axum::http::request::Parts,
        _: &S,
    ) -> Result<Self, Self::Rejection> {
        Ok(Self(
            parts
                .extensions
                .get::<Peer>()
                .and_then(|peer| peer.identity.clone()),
        ))
    }
}

/// Who is looking, and what they may do.
pub(crate) struct Viewer {
    /// Shown on the page and in the logs; `None` for an anonymous visitor on loopback.
    identity: Option<String>,
    admin: bool,
    /// The CSRF token forms must carry; `None` for a bearer-token request, which no
    /// other site can make a browser send.
    csrf: Option<String>,
    /// A session cookie to set (a first visit to an open page).
    set_cookie: Option<String>,
}

/// Why a request is not served.
pub(crate) enum Denied {
    /// The page is off on this listener.
    NotServed,
    /// Not logged in.
    Login,
    /// A bearer token that is not the configured one.
    BadToken,
}

impl Web {
    /// Who sent the request, from its client certificate, bearer token or session cookie.
    fn viewer(&self, headers: &HeaderMap, cert: Option<&str>) -> Result<Viewer, Denied> {
        if !self.served {
            return Err(Denied::NotServed);
        }
        // On a TLS admin listener a verified client certificate names the person. A
        // browser presents it on other sites' posts to this origin too, so forms still
        // carry a CSRF token, kept in a session cookie bound to that identity.
        if self.settings.tls.is_some()
            && let Some(identity) = cert
        {
            let session = cookie(headers, SESSION)
                .and_then(|sealed| self.keys.open::<Session>(SESSION, sealed))
                .filter(|s| s.m == "tls" && s.id == identity);
            let (csrf, set_cookie) = match session {
                Some(session) => (session.csrf, None),
                None => {
                    let session = Session {
                        m: "tls".into(),
                        id: identity.to_owned(),
                        csrf: seal::random(24),
                    };
                    let set = self.session_cookie(&session);
                    (session.csrf, Some(set))
                }
            };
            return Ok(Viewer {
                identity: Some(identity.to_owned()),
                admin: self.settings.admins.iter().any(|a| a == identity),
                csrf: Some(csrf),
                set_cookie,
            });
        }
        if let Some(presented) = bearer(headers) {
            let Some(source) = &self.settings.login.token else {
                return Err(Denied::BadToken);
            };
            return match source.load() {
                Ok(expected) if same_secret(presented, expected.expose().as_bytes()) => {
                    Ok(Viewer {
                        identity: Some("token".to_owned()),
                        admin: true,
                        csrf: None,
                        set_cookie: None,
                    })
                }
                Ok(_) => Err(Denied::BadToken),
                Err(error) => {
                    tracing::warn!(key = "server.admin.login.token", %error, "cannot read the admin login token; refusing");
                    Err(Denied::BadToken)
                }
            };
        }
        let session = cookie(headers, SESSION)
            .and_then(|sealed| self.keys.open::<Session>(SESSION, sealed))
            // A session of a mode no longer configured is no session.
            .filter(|s| match s.m.as_str() {
                "open" => self.open,
                "token" => self.settings.login.token.is_some(),
                "oidc" => self.settings.login.oidc.is_some(),
                // A certificate's session holds only its CSRF token: the certificate
                // itself must come with every request.
                "tls" => false,
                _ => false,
            });
        match session {
            Some(session) => Ok(self.viewer_of(session, None)),
            None if self.open => {
                let session = Session {
                    m: "open".into(),
                    id: String::new(),
                    csrf: seal::random(24),
                };
                let set = self.session_cookie(&session);
                Ok(self.viewer_of(session, Some(set)))
            }
            None => Err(Denied::Login),
        }
    }

    fn viewer_of(&self, session: Session, set_cookie: Option<String>) -> Viewer {
        let admins = &self.settings.admins;
        let admin = match session.m.as_str() {
            "token" => true,
            "open" => admins.is_empty(),
            _ => admins.contains(&session.id),
        };
        Viewer {
            identity: (!session.id.is_empty()).then_some(session.id),
            admin,
            csrf: Some(session.csrf),
            set_cookie,
        }
    }

    /// The `Set-Cookie` value of a session.
    fn session_cookie(&self, session: &Session) -> String {
        self.cookie(
            SESSION,
            &self.keys.seal(SESSION, session, SESSION_TTL),
            "/",
            SESSION_TTL,
        )
    }

    /// A `Set-Cookie` value: never readable by script, sent on top-level navigations
    /// (the provider's redirect back is one) but not on other sites' subrequests or posts.
    fn cookie(&self, name: &str, value: &str, path: &str, ttl: Duration) -> String {
        let secure = if self.secure() { "; Secure" } else { "" };
        format!(
            "{name}={value}; Path={path}; Max-Age={}; HttpOnly; SameSite=Lax{secure}",
            ttl.as_secs()
        )
    }

    /// A `Set-Cookie` value that removes a cookie.
    fn clear(&self, name: &str, path: &str) -> String {
        self.cookie(name, "", path, Duration::ZERO)
    }

    /// The answer to a request that is not served, without a profile's name.
    fn refuse(&self, denied: Denied, headers: &HeaderMap) -> Response {
        match denied {
            Denied::NotServed => (
                StatusCode::NOT_FOUND,
                "the admin page is off on this listener: it is not on loopback and no `server.admin.login` is configured\n",
            )
                .into_response(),
            Denied::BadToken => (
                StatusCode::UNAUTHORIZED,
                [(header::WWW_AUTHENTICATE, "Bearer realm=\"tokenvend-admin\"")],
                "send the admin login token as `authorization: Bearer <token>`\n",
            )
                .into_response(),
            Denied::Login if wants_html(headers) => see_other("/login", None),
            Denied::Login => (
                StatusCode::UNAUTHORIZED,
                [(header::WWW_AUTHENTICATE, "Bearer realm=\"tokenvend-admin\"")],
                "log in at /login, or send the admin login token as `authorization: Bearer <token>`\n",
            )
                .into_response(),
        }
    }
}

/// The set of `state`s already used, each kept until its flow could no longer complete;
/// bounded: when full of live entries, new callbacks are refused rather than forgotten.
#[derive(Default)]
struct UsedStates {
    until: HashMap<String, u64>,
}

/// More unexpired authorizations than this in one flow lifetime is not people at work.
const MAX_USED_STATES: usize = 10_000;

impl UsedStates {
    /// Records `state`; false if it was used before or no room is left.
    fn claim(&mut self, state: &str, until: u64, now: u64) -> bool {
        if self.until.contains_key(state) {
            return false;
        }
        if self.until.len() >= MAX_USED_STATES {
            self.until.retain(|_, until| *until > now);
            if self.until.len() >= MAX_USED_STATES {
                return false;
            }
        }
        self.until.insert(state.to_owned(), until);
        true
    }
}

impl Web {
    /// Claims a `state` once: in this process, and across replicas through the shared
    /// store when there is one (a replay landing on another replica is refused there).
    async fn claim_state(&self, state: &str, ttl: Duration) -> Result<(), &'static str> {
        let now = seal::unix_now();
        let fresh = self
            .used
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .claim(state, now + ttl.as_secs(), now);
        if !fresh {
            return Err(
                "this authorization was already completed (a replayed redirect); start again from the page",
            );
        }
        if let Some(store) = &self.shared {
            match store.claim_once(&format!("state:{state}"), ttl).await {
                Ok(true) => {}
                Ok(false) => {
                    return Err(
                        "this authorization was already completed on another replica; start again from the page",
                    );
                }
                Err(error) => {
                    tracing::warn!(%error, "cannot claim an authorization's state in the shared store; refusing it");
                    return Err(
                        "the shared store cannot be reached to check that this redirect is used once; try again",
                    );
                }
            }
        }
        Ok(())
    }
}

/// `GET /`: every profile's state.
async fn index(State(web): State<Arc<Web>>, headers: HeaderMap, cert: CertIdentity) -> Response {
    let viewer = match web.viewer(&headers, cert.0.as_deref()) {
        Ok(viewer) => viewer,
        Err(denied) => return web.refuse(denied, &headers),
    };
    let notice = cookie(&headers, flow::NOTICE)
        .and_then(|sealed| web.keys.open::<String>(flow::NOTICE, sealed));
    let body = render_index(&web, &viewer, notice.as_deref());
    let mut response = html_response(StatusCode::OK, body);
    let cookies = viewer
        .set_cookie
        .iter()
        .cloned()
        .chain(notice.map(|_| web.clear(flow::NOTICE, "/")));
    for set in cookies {
        if let Ok(value) = HeaderValue::try_from(set) {
            response.headers_mut().append(header::SET_COOKIE, value);
        }
    }
    response
}

fn render_index(web: &Web, viewer: &Viewer, notice: Option<&str>) -> String {
    use html::Text;
    use std::fmt::Write as _;
    let now = SystemTime::now();
    let mut body = String::new();
    if let Some(identity) = &viewer.identity {
        let _ = write!(
            body,
            "<p class=\"viewer\">Logged in as <strong>{}</strong>{}.",
            Text(identity),
            if viewer.admin {
                " (admin)"
            } else {
                " (read only)"
            }
        );
        if let Some(csrf) = &viewer.csrf {
            body.push(' ');
            body.push_str(&html::button_form("/logout", csrf, "Log out"));
        }
        body.push_str("</p>\n");
    }
    if let Some(notice) = notice {
        let _ = writeln!(body, "<p id=\"notice\">{}</p>", Text(notice));
    }
    body.push_str("<h1>Profiles</h1>\n<table id=\"profiles\">\n<thead><tr><th>Profile</th><th>Grant</th><th>State</th><th>Time left</th><th>Last refresh</th><th>Last error</th><th>Provider requests, last hour</th><th></th></tr></thead>\n<tbody>\n");
    for slot in web.cache.slots() {
        let profile = slot.profile();
        let status = slot.status();
        let state = state_text(status.state);
        let left = status
            .expires_at
            .and_then(|at| at.duration_since(now).ok())
            .map(html::duration)
            .unwrap_or_default();
        let refreshed = status.last_refresh.map(html::moment).unwrap_or_default();
        let error = status
            .last_error
            .as_deref()
            .map(|e| html::shortened(e, 300))
            .unwrap_or_default();
        let requests = slot.counters().idp_requests_last_hour(now);
        let action = if profile.template {
            format!(
                "<a href=\"/connections/{}\">Connections</a>",
                Text(&profile.name)
            )
        } else if !web.hosted(profile) {
            if profile.grant == Grant::RefreshToken {
                format!(
                    "<span class=\"hint\">authorize with <code>tokenvend authorize {}</code></span>",
                    Text(&profile.name)
                )
            } else {
                String::new()
            }
        } else {
            match (&viewer.csrf, viewer.admin) {
                (Some(csrf), true) => {
                    html::button_form(&format!("/authorize/{}", profile.name), csrf, "Authorize")
                }
                _ => String::new(),
            }
        };
        let _ = writeln!(
            body,
            "<tr data-profile=\"{name}\" data-state=\"{state_attr}\"><td class=\"name\">{name}</td><td class=\"grant\">{grant}</td><td class=\"state\">{state}</td><td class=\"left\">{left}</td><td class=\"refreshed\">{refreshed}</td><td class=\"error\">{error}</td><td class=\"requests\">{requests}</td><td class=\"actions\">{action}</td></tr>",
            name = Text(&profile.name),
            state_attr = state.replace(' ', "-"),
            grant = Text(profile.grant.as_str()),
        );
    }
    body.push_str("</tbody>\n</table>\n");
    html::page("Profiles", &body)
}

/// The state as the page names it.
pub(crate) fn state_text(state: CacheState) -> &'static str {
    match state {
        CacheState::Empty => "empty",
        CacheState::Valid => "valid",
        CacheState::Stale => "stale",
        CacheState::Failed => "failed",
        CacheState::NeedsAuthorization => "needs re-authorization",
    }
}

fn html_response(status: StatusCode, body: String) -> Response {
    (
        status,
        [(header::CONTENT_TYPE, "text/html; charset=utf-8")],
        body,
    )
        .into_response()
}

/// A `303 See Other` to `location`, setting a cookie if given.
fn see_other(location: &str, set_cookie: Option<String>) -> Response {
    let mut response = (StatusCode::SEE_OTHER, [(header::LOCATION, location)]).into_response();
    if let Some(value) = set_cookie.and_then(|v| HeaderValue::try_from(v).ok()) {
        response.headers_mut().append(header::SET_COOKIE, value);
    }
    response
}

/// The value of cookie `name`, from every `Cookie` header.
fn cookie<'a>(headers: &'a HeaderMap, name: &str) -> Option<&'a str> {
    headers
        .get_all(header::COOKIE)
        .iter()
        .filter_map(|v| v.to_str().ok())
        .flat_map(|v| v.split(';'))
        .filter_map(|pair| pair.trim().split_once('='))
        .find(|(n, _)| *n == name)
        .map(|(_, v)| v)
        .filter(|v| !v.is_empty())
}

/// The token of an `authorization: Bearer <token>` header (scheme case-insensitive), as
/// both the page's login and `/metrics` read it.
pub(crate) fn bearer(headers: &HeaderMap) -> Option<&[u8]> {
    headers
        .get(header::AUTHORIZATION)
        .and_then(|v| v.as_bytes().split_first_chunk::<7>())
        .filter(|(scheme, _)| scheme.eq_ignore_ascii_case(b"bearer "))
        .map(|(_, token)| token)
}

/// A browser's navigation asks for HTML; a script's request usually does not.
fn wants_html(headers: &HeaderMap) -> bool {
    headers
        .get(header::ACCEPT)
        .and_then(|v| v.to_str().ok())
        .is_some_and(|v| v.contains("text/html"))
}

/// Compares in time that depends on neither value: the digests of both are compared
/// byte by byte without stopping early, so neither the length nor a common prefix of
/// the token shows in how long a guess takes to refuse.
pub(crate) fn same_secret(presented: &[u8], expected: &[u8]) -> bool {
    let (a, b) = (Sha256::digest(presented), Sha256::digest(expected));
    let difference = a.iter().zip(b.iter()).fold(0u8, |d, (x, y)| d | (x ^ y));
    std::hint::black_box(difference) == 0
}

/// A field of a form body (`application/x-www-form-urlencoded`), read whatever the
/// request's content type says: the answer to a bad form is the same refusal as to a
/// missing field, and it comes after the caller is known.
fn form_field(body: &[u8], name: &str) -> Option<String> {
    url::form_urlencoded::parse(body)
        .find(|(k, _)| k == name)
        .map(|(_, v)| v.into_owned())
}

/// A form's CSRF field matches the session's (compared without a timing difference).
fn csrf_ok(viewer: &Viewer, presented: Option<&str>) -> bool {
    match &viewer.csrf {
        None => true,
        Some(expected) => presented.is_some_and(|p| same_secret(p.as_bytes(), expected.as_bytes())),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_state_is_claimed_once_and_the_set_stays_bounded() {
        let mut used = UsedStates::default();
        assert!(used.claim("s1", 100, 0));
        assert!(!used.claim("s1", 100, 0));
        for i in 1..MAX_USED_STATES {
            assert!(used.claim(&format!("x{i}"), 100, 0));
        }
        // Full of live entries: refused, not forgotten.
        assert!(!used.claim("new", 100, 50));
        // Once they have expired there is room again, and the old one is still known
        // while it lives.
        assert!(used.claim("new", 300, 150));
        assert!(!used.claim("new", 300, 150));
    }

    #[test]
    fn cookies_are_found_by_exact_name() {
        let mut headers = HeaderMap::new();
        headers.insert(
            header::COOKIE,
            HeaderValue::from_static("a=1; tv_session2=x; tv_session=abc"),
        );
        headers.append(header::COOKIE, HeaderValue::from_static("b=2"));
        assert_eq!(cookie(&headers, "tv_session"), Some("abc"));
        assert_eq!(cookie(&headers, "b"), Some("2"));
        assert_eq!(cookie(&headers, "c"), None);
    }
}
