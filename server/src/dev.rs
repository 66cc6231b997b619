//! `serve --dev`: a small OAuth 2.0 issuer on loopback and a `demo` profile that uses it,
//! so that a newcomer gets a real token with one command and no identity provider.
//!
//! The issuer signs ES256 JWTs with a key made at start, and serves discovery and JWKS
//! so that the tokens can be verified like real ones.

use std::{
    collections::HashMap,
    io,
    net::SocketAddr,
    sync::Arc,
    time::{Duration, SystemTime, UNIX_EPOCH},
};

use axum::{
    Form, Json, Router,
    extract::State,
    http::{HeaderMap, StatusCode, header},
    response::{IntoResponse, Response},
    routing::{get, post},
};
use base64::{
    Engine as _,
    engine::general_purpose::{STANDARD, URL_SAFE_NO_PAD},
};
use p256::ecdsa::{Signature, SigningKey, signature::Signer as _};
use serde_json::{Value, json};
use tokio::{net::TcpListener, task::JoinHandle};
use url::{Url, form_urlencoded};

use crate::{
    config::{ClientAuth, Config, Endpoint, Grant, Profile, RefreshAhead, Retry, ServerConfig},
    secret::{Secret, SecretSource},
};

/// The client id of the demo profile.
pub const DEMO_CLIENT_ID: &str = "tokenvend-demo";
/// The audience of the demo issuer's tokens.
pub const DEMO_AUDIENCE: &str = "tokenvend-demo-api";
const KEY_ID: &str = "dev-1";

/// A running dev issuer. Dropping it stops it.
pub struct DevIssuer {
    addr: SocketAddr,
    client_secret: Secret,
    task: JoinHandle<()>,
}

struct Issuer {
    url: String,
    key: SigningKey,
    client_secret: Secret,
    lifetime: Duration,
}

impl DevIssuer {
    /// Starts an issuer on `127.0.0.1` at a free port, issuing tokens for `lifetime`.
    pub async fn start(lifetime: Duration) -> io::Result<Self> {
        let listener = TcpListener::bind((std::net::Ipv4Addr::LOCALHOST, 0)).await?;
        let addr = listener.local_addr()?;
        let client_secret = Secret::new(random_hex(24)?);
        let issuer = Arc::new(Issuer {
            url: format!("http://{addr}"),
            key: signing_key()?,
            client_secret: client_secret.clone(),
            lifetime,
        });
        let app = Router::new()
            .route("/.well-known/openid-configuration", get(discovery))
            .route("/.well-known/oauth-authorization-server", get(discovery))
            .route("/jwks", get(jwks))
            .route("/token", post(token))
            .with_state(issuer);
        let task = tokio::spawn(async move {
            if let Err(error) = axum::serve(listener, app).await {
                tracing::error!(%error, "dev issuer failed");
            }
        });
        Ok(Self {
            addr,
            client_secret,
            task,
        })
    }

    /// The issuer's URL.
    pub fn url(&self) -> String {
        format!("http://{}", self.addr)
    }

    /// What `serve --dev` runs: the demo profile, on loopback only (it has an open profile
    /// and no caller checks), stopping at once on Ctrl-C (no load balancer to wait for).
    pub fn demo_config(&self) -> Config {
        self.config(ServerConfig {
            listen: SocketAddr::from(([127, 0, 0, 1], 50051)),
            admin_listen: SocketAddr::from(([127, 0, 0, 1], 9090)),
            shutdown_delay: Duration::ZERO,
            ..ServerConfig::default()
        })
    }

    /// A configuration with one profile, `demo`, that gets its tokens from this issuer.
    pub fn config(&self, server: ServerConfig) -> Config {
        let token_url = Url::parse(&format!("{}/token", self.url()))
            .unwrap_or_else(|_| unreachable!("a loopback URL parses"));
        let demo = Profile {
            name: "demo".into(),
            grant: Grant::ClientCredentials,
            endpoint: Endpoint::TokenUrl(token_url),
            client_id: DEMO_CLIENT_ID.to_owned(),
            jwt_bearer: None,
            provider_ca: None,
            per_call: None,
            client_auth: ClientAuth::SecretBasic(SecretSource::Value(self.client_secret.clone())),
            refresh_token: None,
            authorize: None,
            scopes: vec!["demo.read".to_owned()],
            audience: None,
            resource: None,
            params: Default::default(),
            headers: Vec::new(),
            refresh_ahead: RefreshAhead::Fraction(0.8),
            min_ttl: Duration::ZERO,
            default_lifetime: Duration::from_secs(3600),
            max_lifetime: Duration::from_secs(24 * 3600),
            // Every reported token is replaced: the demo is where a client's 401 path is
            // tried (the client suites run against it), one rejection after another.
            rejected_token_min_interval: Duration::ZERO,
            timeout: Duration::from_secs(5),
            warm_up: true,
            template: false,
            idle_refresh: Duration::from_secs(24 * 3600),
            retry: Retry::default(),
            allow: None,
            idp_requests_per_minute: 60,
        };
        Config::new(server, vec![Arc::new(demo)])
    }
}

impl Drop for DevIssuer {
    fn drop(&mut self) {
        self.task.abort();
    }
}

async fn discovery(State(issuer): State<Arc<Issuer>>) -> Json<Value> {
    let url = &issuer.url;
    Json(json!({
        "issuer": url,
        "token_endpoint": format!("{url}/token"),
        "jwks_uri": format!("{url}/jwks"),
        "grant_types_supported": ["client_credentials"],
        "token_endpoint_auth_methods_supported": ["client_secret_basic", "client_secret_post"],
        "response_types_supported": ["token"],
    }))
}

async fn jwks(State(issuer): State<Arc<Issuer>>) -> Json<Value> {
    let point = issuer.key.verifying_key().to_encoded_point(false);
    let (x, y) = (point.x(), point.y());
    Json(json!({"keys": [{
        "kty": "EC",
        "crv": "P-256",
        "alg": "ES256",
        "use": "sig",
        "kid": KEY_ID,
        "x": x.map(|x| URL_SAFE_NO_PAD.encode(x)),
        "y": y.map(|y| URL_SAFE_NO_PAD.encode(y)),
    }]}))
}

async fn token(
    State(issuer): State<Arc<Issuer>>,
    headers: HeaderMap,
    Form(form): Form<HashMap<String, String>>,
) -> Response {
    if form.get("grant_type").map(String::as_str) != Some("client_credentials") {
        return oauth_error(StatusCode::BAD_REQUEST, "unsupported_grant_type");
    }
    let Some((client_id, secret)) = client_credentials(&headers, &form) else {
        return oauth_error(StatusCode::UNAUTHORIZED, "invalid_client");
    };
    if client_id != DEMO_CLIENT_ID || secret != issuer.client_secret.expose() {
        return oauth_error(StatusCode::UNAUTHORIZED, "invalid_client");
    }
    let scope = form.get("scope").cloned().unwrap_or_default();
    match issuer.sign(&client_id, &scope) {
        Ok(access_token) => Json(json!({
            "access_token": access_token,
            "token_type": "Bearer",
            "expires_in": issuer.lifetime.as_secs(),
            "scope": scope,
        }))
        .into_response(),
        Err(_) => oauth_error(StatusCode::INTERNAL_SERVER_ERROR, "server_error"),
    }
}

/// The client's id and secret from HTTP Basic (form-urldecoded, RFC 6749 §2.3.1) or the
/// form body.
fn client_credentials(
    headers: &HeaderMap,
    form: &HashMap<String, String>,
) -> Option<(String, String)> {
    if let Some(value) = headers.get(header::AUTHORIZATION) {
        let encoded = value.to_str().ok()?.strip_prefix("Basic ")?;
        let decoded = String::from_utf8(STANDARD.decode(encoded).ok()?).ok()?;
        let (id, secret) = decoded.split_once(':')?;
        let unescape = |s: &str| {
            form_urlencoded::parse(format!("v={s}").as_bytes())
                .next()
                .map(|(_, v)| v.into_owned())
        };
        return Some((unescape(id)?, unescape(secret)?));
    }
    Some((
        form.get("client_id")?.clone(),
        form.get("client_secret")?.clone(),
    ))
}

fn oauth_error(status: StatusCode, error: &str) -> Response {
    (status, Json(json!({ "error": error }))).into_response()
}

impl Issuer {
    fn sign(&self, client_id: &str, scope: &str) -> io::Result<String> {
        let now = SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .unwrap_or_default()
            .as_secs();
        let header = json!({"alg": "ES256", "typ": "at+jwt", "kid": KEY_ID});
        let claims = json!({
            "iss": self.url,
            "sub": client_id,
            "client_id": client_id,
            "aud": DEMO_AUDIENCE,
            "scope": scope,
            "iat": now,
            "exp": now + self.lifetime.as_secs(),
            "jti": random_hex(16)?,
        });
        let input = format!(
            "{}.{}",
            URL_SAFE_NO_PAD.encode(header.to_string()),
            URL_SAFE_NO_PAD.encode(claims.to_string())
        );
        let signature: Signature = self.key.sign(input.as_bytes());
        Ok(format!(
            "{input}.{}",
            URL_SAFE_NO_PAD.encode(signature.to_bytes())
        ))
    }
}

fn signing_key() -> io::Result<SigningKey> {
    loop {
        let mut bytes = [0u8; 32];
        getrandom::fill(&mut bytes).map_err(|e| io::Error::other(e.to_string()))?;
        // Fails only for the zero scalar or one above the curve order: draw again.
        if let Ok(key) = SigningKey::from_slice(&bytes) {
            return Ok(key);
        }
    }
}

fn random_hex(bytes: usize) -> io::Result<String> {
    let mut buf = vec![0u8; bytes];
    getrandom::fill(&mut buf).map_err(|e| io::Error::other(e.to_string()))?;
    Ok(buf.iter().map(|b| format!("{b:02x}")).collect())
}
