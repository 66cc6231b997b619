//! Each seed integration as a tokenvend profile, against a fixture that behaves the way
//! that provider's documentation says: Entra ID (discovery, `.default` scopes,
//! `ext_expires_in`, a certificate-bound private_key_jwt), Okta (RFC 8414 discovery,
//! several scopes, `Accept: application/json`, an API key beside the token), Jama (HTTP
//! Basic, extra response fields), Jadu (authorization code + PKCE, `scope: null`,
//! single-use 30 s codes, refresh-token rotation with reuse detection).

use std::{
    collections::{HashMap, HashSet},
    net::SocketAddr,
    path::Path,
    sync::{
        Arc, Mutex,
        atomic::{AtomicBool, AtomicUsize, Ordering},
    },
    time::{Duration, Instant},
};

use axum::{
    Form, Json, Router,
    extract::{Query, State},
    http::{HeaderMap, StatusCode, header},
    response::{IntoResponse, Redirect, Response},
    routing::{get, post},
};
use base64::{
    Engine as _,
    engine::general_purpose::{STANDARD, URL_SAFE_NO_PAD},
};
use serde_json::{Value, json};
use sha2::Digest as _;
use tokenvend::pb::GetTokenRequest;
use tokenvend_server::Config;
use tokio::{net::TcpListener, task::JoinHandle};
use tonic::Code;

use crate::support::{Server, browser::authorize, redis::RedisServer};

const CLIENT_ID: &str = "app-1";
const SECRET: &str = "s3cr:t+%/=";

/// A provider fixture: every route of every provider, with the state they need.
struct Provider {
    addr: SocketAddr,
    state: Arc<ProviderState>,
    task: JoinHandle<()>,
}

#[derive(Default)]
struct ProviderState {
    base: Mutex<String>,
    token_requests: AtomicUsize,
    seen: Mutex<Vec<(HeaderMap, HashMap<String, String>)>>,
    // Entra: the client's public key and certificate thumbprint, and the jtis seen.
    entra_key: Mutex<Option<(String, String)>>,
    jtis: Mutex<HashSet<String>>,
    // Okta: the token endpoint moved to /v2.
    okta_moved: AtomicBool,
    // Jadu: issued codes, the refresh-token chain (the last one is live), revocation.
    codes: Mutex<HashMap<String, (String, String, Instant)>>,
    chain: Mutex<Vec<String>>,
    revoked: AtomicBool,
    reused: AtomicBool,
}

impl Drop for Provider {
    fn drop(&mut self) {
        self.task.abort();
    }
}

impl Provider {
    async fn start() -> Self {
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let state = Arc::new(ProviderState::default());
        *state.base.lock().unwrap() = format!("http://{addr}");
        let app = Router::new()
            .route(
                "/tenant-1/v2.0/.well-known/openid-configuration",
                get(entra_metadata),
            )
            .route("/tenant-1/oauth2/v2.0/token", post(entra_token))
            .route(
                "/oauth2/aus1/.well-known/oauth-authorization-server",
                get(okta_metadata),
            )
            .route(
                "/impostor/.well-known/oauth-authorization-server",
                get(okta_metadata),
            )
            .route("/oauth2/aus1/v1/token", post(okta_token_v1))
            .route("/oauth2/aus1/v2/token", post(okta_token_v2))
            .route("/rest/oauth/token", post(jama_token))
            .route("/q/oauth/v2/auth", get(jadu_authorize))
            .route("/q/oauth/v2/token", post(jadu_token))
            .with_state(state.clone());
        let task = tokio::spawn(async move { axum::serve(listener, app).await.unwrap() });
        Self { addr, state, task }
    }

    fn url(&self, path: &str) -> String {
        format!("http://{}{path}", self.addr)
    }

    fn requests(&self) -> usize {
        self.state.token_requests.load(Ordering::SeqCst)
    }
}

fn record(state: &ProviderState, headers: &HeaderMap, form: &HashMap<String, String>) {
    state.token_requests.fetch_add(1, Ordering::SeqCst);
    state
        .seen
        .lock()
        .unwrap()
        .push((headers.clone(), form.clone()));
}

fn oauth_error(status: u16, error: &str, description: &str) -> Response {
    (
        StatusCode::from_u16(status).unwrap(),
        Json(json!({ "error": error, "error_description": description })),
    )
        .into_response()
}

fn secret_post_ok(form: &HashMap<String, String>) -> bool {
    form.get("client_id").map(String::as_str) == Some(CLIENT_ID)
        && form.get("client_secret").map(String::as_str) == Some(SECRET)
}

// --- Entra ID --------------------------------------------------------------------------

async fn entra_metadata(State(state): State<Arc<ProviderState>>) -> Json<Value> {
    let base = state.base.lock().unwrap().clone();
    Json(json!({
        "issuer": format!("{base}/tenant-1/v2.0"),
        "token_endpoint": format!("{base}/tenant-1/oauth2/v2.0/token"),
        "authorization_endpoint": format!("{base}/tenant-1/oauth2/v2.0/authorize"),
        "jwks_uri": format!("{base}/tenant-1/discovery/v2.0/keys"),
    }))
}

async fn entra_token(
    State(state): State<Arc<ProviderState>>,
    headers: HeaderMap,
    Form(form): Form<HashMap<String, String>>,
) -> Response {
    record(&state, &headers, &form);
    if !form.get("scope").is_some_and(|s| s.ends_with("/.default")) {
        return oauth_error(
            400,
            "invalid_scope",
            "AADSTS1002012: scope must end in /.default",
        );
    }
    if form.get("client_assertion_type").map(String::as_str)
        != Some("urn:ietf:params:oauth:client-assertion-type:jwt-bearer")
    {
        return oauth_error(
            401,
            "invalid_client",
            "AADSTS7000218: client_assertion required",
        );
    }
    let assertion = &form["client_assertion"];
    let (public_pem, thumbprint) = state.entra_key.lock().unwrap().clone().unwrap();
    let header = jsonwebtoken::decode_header(assertion).unwrap();
    if header.x5t.as_deref() != Some(thumbprint.as_str()) {
        return oauth_error(
            401,
            "invalid_client",
            "AADSTS700027: unknown certificate thumbprint",
        );
    }
    let token_endpoint = format!("{}/tenant-1/oauth2/v2.0/token", state.base.lock().unwrap());
    let mut validation = jsonwebtoken::Validation::new(header.alg);
    validation.set_audience(&[token_endpoint]);
    validation.set_issuer(&[CLIENT_ID]);
    validation.sub = Some(CLIENT_ID.into());
    validation.set_required_spec_claims(&["exp", "aud", "iss", "sub"]);
    let key = jsonwebtoken::DecodingKey::from_ec_pem(public_pem.as_bytes()).unwrap();
    let claims = match jsonwebtoken::decode::<Value>(assertion, &key, &validation) {
        Ok(data) => data.claims,
        Err(e) => return oauth_error(401, "invalid_client", &format!("AADSTS700027: {e}")),
    };
    assert!(claims["exp"].as_u64().unwrap() - claims["iat"].as_u64().unwrap() <= 120);
    if !state
        .jtis
        .lock()
        .unwrap()
        .insert(claims["jti"].as_str().unwrap().to_owned())
    {
        return oauth_error(401, "invalid_client", "AADSTS700024: assertion replayed");
    }
    let n = state.token_requests.load(Ordering::SeqCst);
    Json(json!({
        "token_type": "Bearer",
        "expires_in": 3599,
        "ext_expires_in": 3599,
        "access_token": format!("entra-{n}"),
    }))
    .into_response()
}

#[tokio::test]
async fn entra_by_discovery_with_a_certificate_bound_private_key_jwt() {
    let provider = Provider::start().await;
    let certified = rcgen::generate_simple_self_signed(vec!["app-1.example.com".into()]).unwrap();
    let thumbprint = URL_SAFE_NO_PAD.encode(sha1::Sha1::digest(certified.cert.der()));
    *provider.state.entra_key.lock().unwrap() =
        Some((certified.key_pair.public_key_pem(), thumbprint));
    let dir = tempfile::tempdir().unwrap();
    let key = write(
        dir.path(),
        "client.key",
        &certified.key_pair.serialize_pem(),
    );
    let cert = write(dir.path(), "client.crt", &certified.cert.pem());

    let server = Server::start(&format!(
        "profiles:\n  jakamo:\n    issuer: {issuer}\n    client_id: {CLIENT_ID}\n    auth_method: private_key_jwt\n    private_key: {{ file: {key} }}\n    certificate: {{ file: {cert} }}\n    signing_alg: ES256\n    scopes: [\"https://demo.jakamoapp.com/.default\"]\n",
        issuer = provider.url("/tenant-1/v2.0"),
    ))
    .await;
    let token = server.get("jakamo").await.unwrap();
    assert_eq!(token.access_token, "entra-1");
    assert_eq!(token.scopes, ["https://demo.jakamoapp.com/.default"]);

    // A second request signs a new assertion (Entra refuses a replayed jti).
    let token = server.reject("jakamo", "entra-1").await.unwrap();
    assert_eq!(token.access_token, "entra-2");
    assert_eq!(provider.requests(), 2);
    server.stop().await;
}

// --- Okta (Floriday) -------------------------------------------------------------------

async fn okta_metadata(State(state): State<Arc<ProviderState>>) -> Json<Value> {
    let base = state.base.lock().unwrap().clone();
    let version = if state.okta_moved.load(Ordering::SeqCst) {
        "v2"
    } else {
        "v1"
    };
    Json(json!({
        "issuer": format!("{base}/oauth2/aus1"),
        "token_endpoint": format!("{base}/oauth2/aus1/{version}/token"),
        "grant_types_supported": ["client_credentials"],
    }))
}

async fn okta_token(
    state: &ProviderState,
    headers: &HeaderMap,
    form: &HashMap<String, String>,
) -> Response {
    record(state, headers, form);
    if headers.get(header::ACCEPT).and_then(|v| v.to_str().ok()) != Some("application/json") {
        return (
            StatusCode::NOT_ACCEPTABLE,
            "Accept: application/json is required",
        )
            .into_response();
    }
    if !secret_post_ok(form) {
        return oauth_error(
            401,
            "invalid_client",
            "The client secret supplied is invalid.",
        );
    }
    let n = state.token_requests.load(Ordering::SeqCst);
    Json(json!({
        "token_type": "Bearer",
        "expires_in": 3600,
        "access_token": format!("okta-{n}"),
        "scope": form["scope"],
    }))
    .into_response()
}

async fn okta_token_v1(
    State(state): State<Arc<ProviderState>>,
    headers: HeaderMap,
    Form(form): Form<HashMap<String, String>>,
) -> Response {
    if state.okta_moved.load(Ordering::SeqCst) {
        state.token_requests.fetch_add(1, Ordering::SeqCst);
        return (
            StatusCode::NOT_FOUND,
            [(header::CONTENT_TYPE, "text/html")],
            "<h1>Not found</h1>",
        )
            .into_response();
    }
    okta_token(&state, &headers, &form).await
}

async fn okta_token_v2(
    State(state): State<Arc<ProviderState>>,
    headers: HeaderMap,
    Form(form): Form<HashMap<String, String>>,
) -> Response {
    okta_token(&state, &headers, &form).await
}

#[tokio::test]
async fn floriday_on_okta_by_discovery_with_an_api_key_and_rediscovery_when_it_moves() {
    let provider = Provider::start().await;
    let server = Server::start(&format!(
        "profiles:\n  floriday:\n    issuer: {issuer}\n    client_id: {CLIENT_ID}\n    client_secret: {{ value: \"{SECRET}\" }}\n    scopes: [\"role:app\", \"catalog:read\", \"sales-order:write\"]\n    headers: {{ X-Api-Key: {{ value: fl-api-key }} }}\n    retry: {{ initial: 50ms, max: 100ms }}\n",
        issuer = provider.url("/oauth2/aus1"),
    ))
    .await;
    let token = server.get("floriday").await.unwrap();
    assert_eq!(token.access_token, "okta-1");
    assert_eq!(token.headers["authorization"], "Bearer okta-1");
    assert_eq!(token.headers["x-api-key"], "fl-api-key");
    assert_eq!(
        token.scopes,
        ["role:app", "catalog:read", "sales-order:write"]
    );
    let (headers, form) = provider.state.seen.lock().unwrap()[0].clone();
    assert_eq!(headers[header::ACCEPT], "application/json");
    assert_eq!(form["scope"], "role:app catalog:read sales-order:write");

    // The authorization server moves its token endpoint: the request to the old one fails,
    // the metadata is fetched again, and the next attempt goes to the new one.
    provider.state.okta_moved.store(true, Ordering::SeqCst);
    let reject = GetTokenRequest {
        profile: "floriday".into(),
        rejected_token: "okta-1".into(),
        ..Default::default()
    };
    let status = server
        .client
        .clone()
        .get_token(reject.clone())
        .await
        .unwrap_err();
    assert_eq!(status.code(), Code::FailedPrecondition, "{status:?}");
    tokio::time::sleep(Duration::from_millis(150)).await;
    let token = server
        .client
        .clone()
        .get_token(reject)
        .await
        .unwrap()
        .into_inner();
    assert!(
        token.access_token.starts_with("okta-"),
        "{}",
        token.access_token
    );
    assert_ne!(token.access_token, "okta-1");
    server.stop().await;
}

#[tokio::test]
async fn metadata_for_another_issuer_is_refused() {
    let provider = Provider::start().await;
    // The metadata served for `/impostor` names `/oauth2/aus1`.
    let server = Server::start(&format!(
        "profiles:\n  p:\n    issuer: {issuer}\n    client_id: {CLIENT_ID}\n    client_secret: {{ value: \"{SECRET}\" }}\n",
        issuer = provider.url("/impostor"),
    ))
    .await;
    let status = server.get("p").await.unwrap_err();
    assert_eq!(status.code(), Code::FailedPrecondition, "{status:?}");
    assert!(
        status.message().contains("metadata is for"),
        "{}",
        status.message()
    );
    assert_eq!(
        provider.requests(),
        0,
        "no credentials sent to an unverified endpoint"
    );
    server.stop().await;
}

// --- Jama --------------------------------------------------------------------------------

async fn jama_token(
    State(state): State<Arc<ProviderState>>,
    headers: HeaderMap,
    Form(form): Form<HashMap<String, String>>,
) -> Response {
    record(&state, &headers, &form);
    let decoded = headers
        .get(header::AUTHORIZATION)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.strip_prefix("Basic "))
        .and_then(|v| STANDARD.decode(v).ok())
        .and_then(|v| String::from_utf8(v).ok());
    let expected = format!(
        "{CLIENT_ID}:{}",
        url::form_urlencoded::byte_serialize(SECRET.as_bytes()).collect::<String>()
    );
    if decoded.as_deref() != Some(expected.as_str()) {
        return oauth_error(401, "invalid_client", "Bad client credentials");
    }
    Json(json!({
        "access_token": "eyJhbGciOiJSUzI1NiIs.jama.token",
        "token_type": "bearer",
        "expires_in": 3599,
        "scope": "token_information",
        "application_data": { "JAMA_CORE": "example" },
        "tenant": "jamatenant00000",
        "jti": "5dcb814c-d31c-438b-95b7-c7f30bdfcbd2",
    }))
    .into_response()
}

#[tokio::test]
async fn jama_with_http_basic_and_extra_response_fields() {
    let provider = Provider::start().await;
    let server = Server::start(&format!(
        "profiles:\n  jama:\n    token_url: {url}\n    client_id: {CLIENT_ID}\n    client_secret: {{ value: \"{SECRET}\" }}\n    auth_method: client_secret_basic\n",
        url = provider.url("/rest/oauth/token"),
    ))
    .await;
    let token = server.get("jama").await.unwrap();
    assert_eq!(token.token_type, "Bearer");
    assert_eq!(token.scopes, ["token_information"]);
    let left = crate::support::seconds_left(&token);
    assert!((3590.0..=3599.0).contains(&left), "{left}");
    let (_, form) = provider.state.seen.lock().unwrap()[0].clone();
    assert_eq!(
        form.get("grant_type").map(String::as_str),
        Some("client_credentials")
    );
    assert!(!form.contains_key("client_secret"));
    server.stop().await;
}

// --- Jadu --------------------------------------------------------------------------------

async fn jadu_authorize(
    State(state): State<Arc<ProviderState>>,
    Query(query): Query<HashMap<String, String>>,
) -> Response {
    assert_eq!(query["response_type"], "code");
    assert_eq!(query["client_id"], CLIENT_ID);
    assert_eq!(query["code_challenge_method"], "S256");
    let code = format!("code-{}", state.codes.lock().unwrap().len() + 1);
    state.codes.lock().unwrap().insert(
        code.clone(),
        (
            query["code_challenge"].clone(),
            query["redirect_uri"].clone(),
            Instant::now(),
        ),
    );
    let location = format!(
        "{}?code={code}&state={}",
        query["redirect_uri"], query["state"]
    );
    Redirect::to(&location).into_response()
}

fn jadu_issue(state: &ProviderState, lifetime: u64) -> Response {
    let mut chain = state.chain.lock().unwrap();
    let refresh = format!("rt-{}", chain.len() + 1);
    chain.push(refresh.clone());
    Json(json!({
        "access_token": format!("jadu-at-{}", chain.len()),
        "expires_in": lifetime,
        "token_type": "bearer",
        "scope": null,
        "refresh_token": refresh,
    }))
    .into_response()
}

async fn jadu_token(
    State(state): State<Arc<ProviderState>>,
    headers: HeaderMap,
    Form(form): Form<HashMap<String, String>>,
) -> Response {
    record(&state, &headers, &form);
    if !secret_post_ok(&form) {
        return oauth_error(401, "invalid_client", "Client authentication failed");
    }
    match form.get("grant_type").map(String::as_str) {
        Some("authorization_code") => {
            // Codes work once, for 30 seconds, with the verifier of their challenge.
            let Some((challenge, redirect, issued)) =
                state.codes.lock().unwrap().remove(&form["code"])
            else {
                return oauth_error(400, "invalid_grant", "Authorization code is invalid");
            };
            let verified =
                URL_SAFE_NO_PAD.encode(sha2::Sha256::digest(form["code_verifier"].as_bytes()));
            if issued.elapsed() > Duration::from_secs(30)
                || redirect != form["redirect_uri"]
                || verified != challenge
            {
                return oauth_error(400, "invalid_grant", "Authorization code is invalid");
            }
            jadu_issue(&state, 3600)
        }
        Some("refresh_token") => {
            let presented = &form["refresh_token"];
            let live = state.chain.lock().unwrap().last().cloned();
            if state.revoked.load(Ordering::SeqCst) {
                return oauth_error(400, "invalid_grant", "Refresh token revoked");
            }
            if live.as_deref() != Some(presented.as_str()) {
                // Reuse of a rotated token: revoke the whole chain, as providers with reuse
                // detection do.
                state.reused.store(true, Ordering::SeqCst);
                state.revoked.store(true, Ordering::SeqCst);
                return oauth_error(400, "invalid_grant", "Refresh token reused");
            }
            jadu_issue(&state, 3600)
        }
        _ => oauth_error(400, "unsupported_grant_type", ""),
    }
}

fn jadu_config(provider: &Provider, state_dir: &Path, redirect_port: u16, extra: &str) -> String {
    format!(
        "server:\n  state_dir: {dir}\nprofiles:\n  jadu:\n    token_url: {token}\n    grant: refresh_token\n    client_id: {CLIENT_ID}\n    client_secret: {{ value: \"{SECRET}\" }}\n    authorize_url: {auth}\n    redirect_uri: http://127.0.0.1:{redirect_port}/oauth-handler\n    retry: {{ initial: 100ms, max: 200ms }}\n{extra}",
        dir = state_dir.display(),
        token = provider.url("/q/oauth/v2/token"),
        auth = provider.url("/q/oauth/v2/auth"),
    )
}

fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}

#[tokio::test]
async fn jadu_authorized_once_then_rotating_refresh_tokens_survive_a_crash() {
    let provider = Provider::start().await;
    let dir = tempfile::tempdir().unwrap();
    // Each report below must rotate the chain, fresh token or not.
    let yaml = jadu_config(
        &provider,
        dir.path(),
        free_port(),
        "    rejected_token_min_interval: 0s\n",
    );
    authorize(&yaml, "jadu").await;
    assert_eq!(*provider.state.chain.lock().unwrap(), ["rt-1"]);

    let server = Server::start(&yaml).await;
    // Started warm: the chain is exercised at once.
    let token = server.get("jadu").await.unwrap();
    assert_eq!(token.token_type, "Bearer");
    assert!(token.scopes.is_empty(), "scope: null and none requested");
    for n in 0..3 {
        let current = server.get("jadu").await.unwrap().access_token;
        let fresh = server
            .reject("jadu", &current)
            .await
            .unwrap_or_else(|s| panic!("refresh {n}: {s:?}"));
        assert_ne!(fresh.access_token, current);
    }
    let newest = provider
        .state
        .chain
        .lock()
        .unwrap()
        .last()
        .cloned()
        .unwrap();
    let stored = std::fs::read_to_string(dir.path().join("jadu.refresh.json")).unwrap();
    assert!(
        stored.contains(&newest),
        "the newest refresh token is on disk"
    );

    // The process dies without any shutdown; a new one continues the chain.
    server.abort().await;
    let server = Server::start(&yaml).await;
    server.get("jadu").await.unwrap();
    assert!(
        !provider.state.reused.load(Ordering::SeqCst),
        "an old refresh token was sent"
    );
    server.stop().await;
}

#[tokio::test]
async fn jadu_authorized_into_the_shared_store_is_carried_on_by_replicas() {
    let Some(redis) = RedisServer::start() else {
        return;
    };
    let provider = Provider::start().await;
    let dir = tempfile::tempdir().unwrap();
    // Replicas keep chains in the store, so that is where `authorize` must write; the
    // stale seed left in the configuration must not take over from the person's chain.
    let yaml = jadu_config(
        &provider,
        dir.path(),
        free_port(),
        "    refresh_token: { value: stale-seed }\n",
    )
    .replace(
        &format!("  state_dir: {}\n", dir.path().display()),
        &format!(
            "  store:\n    redis:\n      url: {}\n      encryption_keys:\n        - {{ id: k1, key: {{ value: \"{}\" }} }}\n",
            redis.url(),
            STANDARD.encode([7u8; 32]),
        ),
    );
    authorize(&yaml, "jadu").await;
    assert_eq!(*provider.state.chain.lock().unwrap(), ["rt-1"]);

    let first = Server::start(&yaml).await;
    let second = Server::start(&yaml).await;
    let current = first.get("jadu").await.unwrap().access_token;
    let fresh = second.reject("jadu", &current).await.unwrap();
    assert_ne!(fresh.access_token, current);
    let again = first.reject("jadu", &fresh.access_token).await.unwrap();
    assert_ne!(again.access_token, fresh.access_token);
    assert!(
        !provider.state.reused.load(Ordering::SeqCst),
        "an old refresh token or the stale seed was sent"
    );
    assert!(provider.state.chain.lock().unwrap().len() >= 3);
    first.stop().await;
    second.stop().await;
}

#[tokio::test]
async fn a_refused_refresh_token_asks_for_reauthorization_without_a_retry_storm() {
    let provider = Provider::start().await;
    let dir = tempfile::tempdir().unwrap();
    let yaml = jadu_config(&provider, dir.path(), free_port(), "");
    authorize(&yaml, "jadu").await;
    provider.state.revoked.store(true, Ordering::SeqCst);

    let server = Server::start(&yaml).await;
    let status = server.get("jadu").await.unwrap_err();
    assert_eq!(status.code(), Code::FailedPrecondition, "{status:?}");
    assert!(
        status.message().contains("re-authorization is needed"),
        "{}",
        status.message()
    );
    assert!(
        status.message().contains("tokenvend authorize jadu"),
        "{}",
        status.message()
    );
    let attempts = provider.requests();
    tokio::time::sleep(Duration::from_millis(600)).await;
    server.get("jadu").await.unwrap_err();
    assert_eq!(
        provider.requests(),
        attempts,
        "the refused token is never sent again"
    );

    // A person authorizes again; the running server picks the new chain up.
    provider.state.revoked.store(false, Ordering::SeqCst);
    authorize(&yaml, "jadu").await;
    let started = Instant::now();
    loop {
        match server.get("jadu").await {
            Ok(_) => break,
            Err(_) if started.elapsed() < Duration::from_secs(3) => {
                tokio::time::sleep(Duration::from_millis(100)).await;
            }
            Err(status) => panic!("not picked up: {status:?}"),
        }
    }
    server.stop().await;
}

#[tokio::test]
async fn a_state_dir_belongs_to_one_server() {
    let provider = Provider::start().await;
    let dir = tempfile::tempdir().unwrap();
    let yaml = jadu_config(
        &provider,
        dir.path(),
        free_port(),
        "    refresh_token: { value: rt-0 }\n",
    );
    let first = Server::start(&yaml).await;
    let config = Config::from_yaml(&yaml).unwrap();
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let error = tokenvend_server::serve(
        tokenvend_server::Listeners {
            grpc: listener,
            admin: None,
            forward_auth: None,
        },
        config,
        std::future::pending(),
    )
    .await
    .unwrap_err();
    assert!(
        error.to_string().contains("in use by another tokenvend"),
        "{error}"
    );
    first.stop().await;
}

#[tokio::test]
async fn an_idle_refresh_token_profile_is_refreshed_anyway() {
    let provider = Provider::start().await;
    let dir = tempfile::tempdir().unwrap();
    let yaml = jadu_config(&provider, dir.path(), free_port(), "    idle_refresh: 1s\n");
    authorize(&yaml, "jadu").await;
    let server = Server::start(&yaml).await;
    tokio::time::sleep(Duration::from_millis(2500)).await;
    let refreshes = provider.state.chain.lock().unwrap().len() - 1;
    assert!(
        (2..=4).contains(&refreshes),
        "{refreshes} refreshes of hour-long tokens in 2.5 s"
    );
    server.stop().await;
}

fn write(dir: &Path, name: &str, content: &str) -> String {
    let path = dir.join(name);
    std::fs::write(&path, content).unwrap();
    path.display().to_string()
}
