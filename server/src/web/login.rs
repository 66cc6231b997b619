//! Logging in to the admin page: the bearer token through a form, or OpenID Connect
//! (authorization code with PKCE, `state` and `nonce`, the ID token verified against the
//! issuer's keys). Either ends in a sealed session cookie holding the identity.

use std::{sync::Arc, time::Duration};

use axum::{
    body::Bytes,
    extract::{RawQuery, State},
    http::{HeaderMap, HeaderValue, StatusCode, header},
    response::Response,
};
use base64::{Engine as _, engine::general_purpose::URL_SAFE_NO_PAD};
use serde::{Deserialize, Serialize};
use serde_json::Value;
use sha2::{Digest as _, Sha256};
use tokio::sync::OnceCell;
use url::Url;

use super::{
    CertIdentity, SESSION, Session, Web, cookie, csrf_ok, form_field, html, html_response,
    same_secret, seal, see_other,
};
use crate::{
    auth::jwt::IdTokens,
    config::{AdminOidc, ConfigError},
    idp::discovery::Metadata,
};

/// The OIDC login in progress in this browser.
const LOGIN: &str = "tv_login";
const LOGIN_TTL: Duration = Duration::from_secs(600);
const LOGIN_PATH: &str = "/login/callback";
/// The most of a token response read.
const MAX_RESPONSE_BYTES: usize = 64 * 1024;

/// The admin page as an OpenID Connect relying party.
pub(super) struct Oidc {
    config: AdminOidc,
    redirect_uri: String,
    issuer: Url,
    id_tokens: IdTokens,
    metadata: OnceCell<Metadata>,
    http: reqwest::Client,
}

impl Oidc {
    pub(super) fn new(config: &AdminOidc, base: &Url) -> Result<Self, ConfigError> {
        let key = "server.admin.login.oidc.issuer";
        let issuer = crate::config::parse_endpoint_url(&config.issuer)
            .map_err(|e| ConfigError::new(key, e.to_string()))?;
        let id_tokens = IdTokens::new(&config.issuer, &config.client_id)
            .map_err(|e| ConfigError::new(key, e.to_string()))?;
        let http = reqwest::Client::builder()
            .timeout(Duration::from_secs(10))
            .redirect(reqwest::redirect::Policy::none())
            .user_agent(concat!("tokenvend/", env!("CARGO_PKG_VERSION")))
            .build()
            .map_err(|e| ConfigError::new(key, e.to_string()))?;
        Ok(Self {
            config: config.clone(),
            redirect_uri: format!("{}{LOGIN_PATH}", base.as_str().trim_end_matches('/')),
            issuer,
            id_tokens,
            metadata: OnceCell::new(),
            http,
        })
    }
}

/// `GET /login`: the token form, a link to the issuer, or straight to the issuer when it
/// is the only way.
pub(super) async fn form(State(web): State<Arc<Web>>, headers: HeaderMap) -> Response {
    if !web.served {
        return web.refuse(super::Denied::NotServed, &headers);
    }
    if web.settings.login.token.is_none() && web.oidc.is_some() {
        return see_other("/login/oidc", None);
    }
    html_response(StatusCode::OK, login_page(&web, None))
}

fn login_page(web: &Web, problem: Option<&str>) -> String {
    let mut body = String::from("<h1>Log in</h1>\n");
    if let Some(problem) = problem {
        body.push_str(&format!("<p id=\"message\">{}</p>\n", html::Text(problem)));
    }
    if web.settings.login.token.is_some() {
        body.push_str("<form method=\"post\" action=\"/login\"><label>Admin token <input type=\"password\" name=\"token\" autocomplete=\"off\" required></label> <button type=\"submit\">Log in</button></form>\n");
    }
    if web.oidc.is_some() {
        body.push_str("<p><a href=\"/login/oidc\">Log in with your identity provider</a></p>\n");
    }
    if web.open {
        body.push_str("<p>No login is needed here: <a href=\"/\">see the profiles</a>.</p>\n");
    }
    html::page("Log in", &body)
}

/// `POST /login`: the token, typed into the form.
pub(super) async fn with_token(
    State(web): State<Arc<Web>>,
    headers: HeaderMap,
    form: Bytes,
) -> Response {
    let Some(source) = web.settings.login.token.as_ref().filter(|_| web.served) else {
        return web.refuse(super::Denied::NotServed, &headers);
    };
    let matches = match source.load() {
        Ok(expected) => form_field(&form, "token")
            .is_some_and(|t| same_secret(t.trim().as_bytes(), expected.expose().as_bytes())),
        Err(error) => {
            tracing::warn!(key = "server.admin.login.token", %error, "cannot read the admin login token; refusing");
            false
        }
    };
    if !matches {
        tracing::warn!("admin login with a wrong token refused");
        return html_response(
            StatusCode::UNAUTHORIZED,
            login_page(&web, Some("That is not the admin token.")),
        );
    }
    tracing::info!(identity = "token", "admin login");
    let session = Session {
        m: "token".into(),
        id: "token".into(),
        csrf: seal::random(24),
    };
    see_other("/", Some(web.session_cookie(&session)))
}

/// `POST /logout`.
pub(super) async fn logout(
    State(web): State<Arc<Web>>,
    headers: HeaderMap,
    cert: CertIdentity,
    form: Bytes,
) -> Response {
    if let Ok(viewer) = web.viewer(&headers, cert.0.as_deref())
        && !csrf_ok(&viewer, form_field(&form, "csrf").as_deref())
    {
        return html_response(
            StatusCode::FORBIDDEN,
            html::message(
                "Not logged out",
                "This form is stale or came from another site.",
            ),
        );
    }
    let to = if web.open { "/" } else { "/login" };
    see_other(to, Some(web.clear(SESSION, "/")))
}

/// An OIDC login in progress, sealed in [`LOGIN`].
#[derive(Serialize, Deserialize)]
struct Pending {
    state: String,
    nonce: String,
    verifier: String,
}

/// `GET /login/oidc`: off to the issuer.
pub(super) async fn oidc_start(State(web): State<Arc<Web>>, headers: HeaderMap) -> Response {
    let Some(oidc) = web.oidc.as_ref().filter(|_| web.served) else {
        return web.refuse(super::Denied::NotServed, &headers);
    };
    let metadata = match metadata(&web, oidc).await {
        Ok(metadata) => metadata,
        Err(problem) => return problem,
    };
    let Some(mut url) = metadata.authorization_endpoint.clone() else {
        return unavailable("The identity provider publishes no authorization endpoint.");
    };
    let pending = Pending {
        state: seal::random(16),
        nonce: seal::random(16),
        verifier: seal::random(32),
    };
    let challenge = URL_SAFE_NO_PAD.encode(Sha256::digest(pending.verifier.as_bytes()));
    let scope = std::iter::once("openid")
        .chain(
            oidc.config
                .scopes
                .iter()
                .map(String::as_str)
                .filter(|s| *s != "openid"),
        )
        .collect::<Vec<_>>()
        .join(" ");
    url.query_pairs_mut()
        .append_pair("response_type", "code")
        .append_pair("client_id", &oidc.config.client_id)
        .append_pair("redirect_uri", &oidc.redirect_uri)
        .append_pair("scope", &scope)
        .append_pair("state", &pending.state)
        .append_pair("nonce", &pending.nonce)
        .append_pair("code_challenge", &challenge)
        .append_pair("code_challenge_method", "S256");
    let sealed = web.keys.seal(LOGIN, &pending, LOGIN_TTL);
    see_other(
        url.as_str(),
        Some(web.cookie(LOGIN, &sealed, LOGIN_PATH, LOGIN_TTL)),
    )
}

async fn metadata<'a>(web: &Web, oidc: &'a Oidc) -> Result<&'a Metadata, Response> {
    oidc.metadata
        .get_or_try_init(|| web.idp.discover(&oidc.issuer, Duration::from_secs(10)))
        .await
        .map_err(|error| {
            tracing::warn!(%error, "cannot discover the admin login's issuer");
            unavailable("The identity provider cannot be reached; try again.")
        })
}

fn unavailable(text: &str) -> Response {
    html_response(
        StatusCode::SERVICE_UNAVAILABLE,
        html::message("Cannot log in", &html::escape(text)),
    )
}

fn login_refused(text: &str) -> Response {
    html_response(
        StatusCode::FORBIDDEN,
        html::message("Not logged in", &html::escape(text)),
    )
}

/// `GET /login/callback`: the issuer sends the person back.
pub(super) async fn oidc_callback(
    State(web): State<Arc<Web>>,
    headers: HeaderMap,
    RawQuery(query): RawQuery,
) -> Response {
    let mut response = oidc_finish(&web, &headers, query.as_deref().unwrap_or_default()).await;
    if let Ok(clear) = HeaderValue::try_from(web.clear(LOGIN, LOGIN_PATH)) {
        response.headers_mut().append(header::SET_COOKIE, clear);
    }
    response
}

async fn oidc_finish(web: &Web, headers: &HeaderMap, query: &str) -> Response {
    let Some(oidc) = web.oidc.as_ref().filter(|_| web.served) else {
        return web.refuse(super::Denied::NotServed, headers);
    };
    if query.len() > 8 * 1024 {
        return login_refused("The redirect is too long to be a login.");
    }
    let Some(pending) =
        cookie(headers, LOGIN).and_then(|sealed| web.keys.open::<Pending>(LOGIN, sealed))
    else {
        return login_refused("This browser has no login in progress; start again at /login.");
    };
    let param = |name: &str| {
        url::form_urlencoded::parse(query.as_bytes())
            .find(|(k, _)| k == name)
            .map(|(_, v)| v.into_owned())
    };
    if let Some(error) = param("error") {
        return html_response(
            StatusCode::FORBIDDEN,
            html::message(
                "Not logged in",
                &format!(
                    "The identity provider answered <code>{}</code>.",
                    html::shortened(&error, 100)
                ),
            ),
        );
    }
    if !param("state").is_some_and(|s| same_secret(s.as_bytes(), pending.state.as_bytes())) {
        return login_refused("The redirect's state does not match this browser's login.");
    }
    let Some(code) = param("code") else {
        return login_refused("The redirect carries no code.");
    };
    if let Err(reason) = web
        .claim_state(&format!("login:{}", pending.state), LOGIN_TTL)
        .await
    {
        return login_refused(reason);
    }
    let metadata = match metadata(web, oidc).await {
        Ok(metadata) => metadata,
        Err(problem) => return problem,
    };
    let id_token = match exchange(oidc, metadata, &code, &pending.verifier).await {
        Ok(token) => token,
        Err(reason) => {
            tracing::warn!(reason, "admin login: the code exchange failed");
            return login_refused("The identity provider did not complete the login.");
        }
    };
    let claims = match oidc.id_tokens.verify(&id_token).await {
        Ok(claims) => claims,
        Err(error) => {
            tracing::warn!(%error, "admin login: the ID token was refused");
            return login_refused("The identity provider's ID token does not verify.");
        }
    };
    if claims.get("nonce").and_then(Value::as_str) != Some(pending.nonce.as_str()) {
        tracing::warn!("admin login: the ID token's nonce does not match");
        return login_refused("The ID token was not issued for this login.");
    }
    let Some(identity) = identity(&claims) else {
        return login_refused("The ID token names no one.");
    };
    let admin = web.settings.admins.contains(&identity);
    tracing::info!(%identity, admin, "admin login");
    let session = Session {
        m: "oidc".into(),
        id: identity,
        csrf: seal::random(24),
    };
    see_other("/", Some(web.session_cookie(&session)))
}

/// The person: their e-mail address when the issuer has verified it, else `sub`.
fn identity(claims: &Value) -> Option<String> {
    let verified = claims.get("email_verified").and_then(Value::as_bool) == Some(true);
    let email = claims
        .get("email")
        .and_then(Value::as_str)
        .filter(|_| verified);
    email
        .or_else(|| claims.get("sub").and_then(Value::as_str))
        .filter(|id| !id.is_empty() && id.len() <= 256)
        .map(str::to_owned)
}

/// The code for an ID token at the issuer's token endpoint, the client authenticating
/// with HTTP Basic (`client_secret_basic`, which OpenID Connect makes the default).
async fn exchange(
    oidc: &Oidc,
    metadata: &Metadata,
    code: &str,
    verifier: &str,
) -> Result<String, &'static str> {
    let secret = oidc
        .config
        .client_secret
        .load()
        .map_err(|_| "the client secret cannot be read")?;
    let form = [
        ("grant_type", "authorization_code"),
        ("code", code),
        ("redirect_uri", oidc.redirect_uri.as_str()),
        ("code_verifier", verifier),
    ];
    let encode = |s: &str| url::form_urlencoded::byte_serialize(s.as_bytes()).collect::<String>();
    let mut response = oidc
        .http
        .post(metadata.token_endpoint.clone())
        .basic_auth(
            encode(&oidc.config.client_id),
            Some(encode(secret.expose())),
        )
        .header(header::ACCEPT, "application/json")
        .form(&form)
        .send()
        .await
        .map_err(|_| "the token endpoint cannot be reached")?;
    if !response.status().is_success() {
        return Err("the token endpoint refused the code");
    }
    let mut body = Vec::new();
    while let Some(chunk) = response.chunk().await.map_err(|_| "the answer broke off")? {
        if body.len() + chunk.len() > MAX_RESPONSE_BYTES {
            return Err("the answer is too large");
        }
        body.extend_from_slice(&chunk);
    }
    let answer: Value = serde_json::from_slice(&body).map_err(|_| "the answer is not JSON")?;
    answer
        .get("id_token")
        .and_then(Value::as_str)
        .map(str::to_owned)
        .ok_or("the answer has no ID token")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_identity_is_a_verified_email_else_the_subject() {
        let claims =
            serde_json::json!({"sub": "u1", "email": "a@example.com", "email_verified": true});
        assert_eq!(identity(&claims).unwrap(), "a@example.com");
        let unverified = serde_json::json!({"sub": "u1", "email": "a@example.com"});
        assert_eq!(identity(&unverified).unwrap(), "u1");
        assert_eq!(identity(&serde_json::json!({"sub": ""})), None);
    }
}
