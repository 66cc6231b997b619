//! Interoperability with a third-party OAuth 2.0 server: `oidc-provider` from npm, run on
//! loopback by `tests/interop/oidc-provider.mjs`. Needs `npm ci` in `tests/interop`
//! (`scripts/test` does it); skipped without it unless TOKENVEND_REQUIRE_INTEROP=1.
//!
//! Every token tokenvend hands out is checked at the provider's introspection endpoint
//! (RFC 7662): the provider itself says it is active and whose it is.

use std::{
    io::{BufRead, BufReader},
    path::Path,
    process::{Child, Command, Stdio},
};

use base64::{Engine as _, engine::general_purpose::URL_SAFE_NO_PAD};
use serde_json::{Value, json};
use tonic::Code;

use crate::support::{
    Server,
    browser::authorize,
    eventually, seconds_left,
    security::{ClientCert, Pki},
};

pub(super) const SECRET: &str = "s3cr+t/=:%&?-interop-secret";

pub(super) struct OidcProvider {
    child: Child,
    pub(super) issuer: String,
    token_endpoint: String,
    pub(super) authorization_endpoint: String,
    introspection_endpoint: String,
}

impl Drop for OidcProvider {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// Starts `oidc-provider.mjs` with extra environment variables, or returns `None` (the
/// test skips) when its dependencies are not installed.
pub(super) fn start_oidc_provider(env: &[(&str, &str)]) -> Option<OidcProvider> {
    let dir = Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/interop");
    if !dir.join("node_modules/oidc-provider").exists() {
        assert!(
            std::env::var_os("TOKENVEND_REQUIRE_INTEROP").is_none(),
            "TOKENVEND_REQUIRE_INTEROP is set but tests/interop has no node_modules: run npm ci there"
        );
        eprintln!("skipping: run `npm ci` in tests/interop to test against oidc-provider");
        return None;
    }
    let mut child = Command::new("node")
        .arg("oidc-provider.mjs")
        .current_dir(&dir)
        .envs(env.iter().copied())
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::inherit())
        .spawn()
        .expect("node runs");
    let mut line = String::new();
    BufReader::new(child.stdout.take().unwrap())
        .read_line(&mut line)
        .unwrap();
    let started: Value = serde_json::from_str(&line).expect("oidc-provider prints its endpoints");
    let field = |name: &str| {
        started[name]
            .as_str()
            .unwrap_or_else(|| panic!("no {name} in {line}"))
            .to_owned()
    };
    Some(OidcProvider {
        issuer: field("issuer"),
        token_endpoint: field("token_endpoint"),
        authorization_endpoint: field("authorization_endpoint"),
        introspection_endpoint: field("introspection_endpoint"),
        child,
    })
}

impl OidcProvider {
    /// What the provider's introspection endpoint says about a token, asked by `tv-post`.
    pub(super) async fn introspect(&self, token: &str) -> Value {
        let response = reqwest::Client::new()
            .post(&self.introspection_endpoint)
            .form(&[
                ("token", token),
                ("client_id", "tv-post"),
                ("client_secret", SECRET),
            ])
            .send()
            .await
            .unwrap();
        assert_eq!(response.status(), 200, "introspection");
        response.json().await.unwrap()
    }

    /// Asserts that the provider knows `token` as an active token of `client_id`.
    pub(super) async fn assert_active(&self, token: &str, client_id: &str) -> Value {
        let answer = self.introspect(token).await;
        assert_eq!(answer["active"], true, "{answer}");
        assert_eq!(answer["client_id"], client_id, "{answer}");
        answer
    }
}

fn profile(name: &str, client_id: &str, auth_method: &str, secret: &str, url: &str) -> String {
    format!(
        "  {name}:\n    token_url: {url}\n    client_id: {client_id}\n    client_secret: {{ value: \"{secret}\" }}\n    auth_method: {auth_method}\n    scopes: [\"api:read\"]\n"
    )
}

#[tokio::test]
async fn client_credentials_against_oidc_provider_with_both_auth_methods() {
    let Some(provider) = start_oidc_provider(&[]) else {
        return;
    };
    let url = &provider.token_endpoint;
    let yaml = format!(
        "profiles:\n{}{}{}",
        profile("basic", "tv-basic", "client_secret_basic", SECRET, url),
        profile("post", "tv-post", "client_secret_post", SECRET, url),
        profile(
            "wrong",
            "tv-post",
            "client_secret_post",
            "not-the-secret",
            url
        ),
    );
    let server = Server::start(&yaml).await;
    for (name, client_id) in [("basic", "tv-basic"), ("post", "tv-post")] {
        let token = server
            .get(name)
            .await
            .unwrap_or_else(|status| panic!("{name}: {status:?}"));
        assert!(!token.access_token.is_empty(), "{name}");
        assert_eq!(token.token_type, "Bearer", "{name}");
        assert_eq!(token.scopes, ["api:read"], "{name}");
        let left = seconds_left(&token);
        assert!((250.0..=300.0).contains(&left), "{name}: {left}");
        let answer = provider.assert_active(&token.access_token, client_id).await;
        assert_eq!(answer["scope"], "api:read", "{name}: {answer}");
    }
    let status = server.get("wrong").await.unwrap_err();
    assert_eq!(status.code(), Code::FailedPrecondition);
    assert!(
        status.message().contains("invalid_client"),
        "{}",
        status.message()
    );
    server.stop().await;
}

#[tokio::test]
async fn discovery_from_the_issuer_falls_back_to_openid_configuration() {
    let Some(provider) = start_oidc_provider(&[]) else {
        return;
    };
    // oidc-provider serves only /.well-known/openid-configuration; the RFC 8414 document
    // tokenvend asks for first is a 404 there.
    let rfc8414 = reqwest::get(format!(
        "{}/.well-known/oauth-authorization-server",
        provider.issuer
    ))
    .await
    .unwrap();
    assert_eq!(rfc8414.status(), 404);

    let server = Server::start(&format!(
        "profiles:\n  discovered:\n    issuer: {issuer}\n    client_id: tv-basic\n    client_secret: {{ value: \"{SECRET}\" }}\n    auth_method: client_secret_basic\n    scopes: [\"api:read\"]\n",
        issuer = provider.issuer,
    ))
    .await;
    let token = server
        .get("discovered")
        .await
        .unwrap_or_else(|status| panic!("{status:?}"));
    assert_eq!(token.scopes, ["api:read"]);
    let answer = provider
        .assert_active(&token.access_token, "tv-basic")
        .await;
    assert_eq!(answer["scope"], "api:read", "{answer}");
    server.stop().await;
}

/// The public JWK of a P-256 key pair, from its uncompressed point `04 || x || y`.
fn p256_public_jwk(key: &rcgen::KeyPair, kid: &str) -> Value {
    let point = key.public_key_raw();
    assert_eq!(
        (point.len(), point[0]),
        (65, 4),
        "an uncompressed P-256 point"
    );
    json!({
        "kty": "EC",
        "crv": "P-256",
        "x": URL_SAFE_NO_PAD.encode(&point[1..33]),
        "y": URL_SAFE_NO_PAD.encode(&point[33..]),
        "kid": kid,
        "alg": "ES256",
        "use": "sig",
    })
}

#[tokio::test]
async fn private_key_jwt_with_an_es256_key_registered_as_a_jwk() {
    let key = rcgen::KeyPair::generate().unwrap();
    let jwks = json!({ "keys": [p256_public_jwk(&key, "tv-jwt-1")] }).to_string();
    let Some(provider) = start_oidc_provider(&[("TV_JWT_JWKS", &jwks)]) else {
        return;
    };
    let dir = tempfile::tempdir().unwrap();
    let key_file = dir.path().join("tv-jwt.key");
    std::fs::write(&key_file, key.serialize_pem()).unwrap();

    let server = Server::start(&format!(
        "profiles:\n  jwt:\n    token_url: {url}\n    client_id: tv-jwt\n    auth_method: private_key_jwt\n    private_key: {{ file: {key} }}\n    signing_alg: ES256\n    key_id: tv-jwt-1\n    scopes: [\"api:read\"]\n",
        url = provider.token_endpoint,
        key = key_file.display(),
    ))
    .await;
    let first = server
        .get("jwt")
        .await
        .unwrap_or_else(|status| panic!("{status:?}"));
    provider.assert_active(&first.access_token, "tv-jwt").await;

    // The next token needs a new assertion: oidc-provider refuses a replayed `jti`.
    let second = server
        .reject("jwt", &first.access_token)
        .await
        .unwrap_or_else(|status| panic!("{status:?}"));
    assert_ne!(second.access_token, first.access_token);
    provider.assert_active(&second.access_token, "tv-jwt").await;
    server.stop().await;
}

pub(super) fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}

/// A `grant: refresh_token` profile for `tv-code`, found by discovery, whose first refresh
/// token comes from `tokenvend authorize`. OpenID providers grant `offline_access` (and so
/// a refresh token) only with `prompt=consent`, which the authorize URL carries.
/// Rejections are not spaced (`rejected_token_min_interval: 0s`): these tests drive each
/// refresh by reporting the current token rejected.
fn code_profile(provider: &OidcProvider, state_dir: &Path) -> String {
    format!(
        "server:\n  state_dir: {dir}\nprofiles:\n  code:\n    issuer: {issuer}\n    grant: refresh_token\n    client_id: tv-code\n    client_secret: {{ value: \"{SECRET}\" }}\n    auth_method: client_secret_post\n    authorize_url: \"{auth}?prompt=consent\"\n    redirect_uri: http://127.0.0.1:{port}/cb\n    scopes: [openid, offline_access, \"api:read\"]\n    rejected_token_min_interval: 0s\n",
        dir = state_dir.display(),
        issuer = provider.issuer,
        auth = provider.authorization_endpoint,
        port = free_port(),
    )
}

/// The refresh token tokenvend has stored for a profile.
pub(super) fn stored_refresh_token(state_dir: &Path, profile: &str) -> String {
    let path = state_dir.join(format!("{profile}.refresh.json"));
    let record: Value = serde_json::from_str(&std::fs::read_to_string(&path).unwrap()).unwrap();
    record["refresh_token"].as_str().unwrap().to_owned()
}

#[tokio::test]
async fn authorization_code_with_pkce_end_to_end_then_tokens_from_the_stored_refresh_token() {
    let Some(provider) = start_oidc_provider(&[]) else {
        return;
    };
    let dir = tempfile::tempdir().unwrap();
    let yaml = code_profile(&provider, dir.path());
    authorize(&yaml, "code").await;
    let authorized = stored_refresh_token(dir.path(), "code");
    let answer = provider.assert_active(&authorized, "tv-code").await;
    assert_eq!(
        answer["scope"], "openid offline_access api:read",
        "{answer}"
    );

    let server = Server::start(&yaml).await;
    let token = server
        .get("code")
        .await
        .unwrap_or_else(|status| panic!("{status:?}"));
    assert_eq!(token.token_type, "Bearer");
    let answer = provider.assert_active(&token.access_token, "tv-code").await;
    assert_eq!(answer["sub"], "interop-user", "{answer}");
    let scopes: Vec<&str> = answer["scope"].as_str().unwrap().split(' ').collect();
    assert!(scopes.contains(&"api:read"), "{answer}");
    server.stop().await;
}

#[tokio::test]
async fn rotating_refresh_tokens_across_several_refreshes() {
    let Some(provider) = start_oidc_provider(&[]) else {
        return;
    };
    let dir = tempfile::tempdir().unwrap();
    let yaml = code_profile(&provider, dir.path());
    authorize(&yaml, "code").await;

    let server = Server::start(&yaml).await;
    let mut current = server
        .get("code")
        .await
        .unwrap_or_else(|status| panic!("{status:?}"))
        .access_token;
    let mut seen = vec![current.clone()];
    for n in 0..4 {
        let before = stored_refresh_token(dir.path(), "code");
        provider.assert_active(&before, "tv-code").await;
        let fresh = server
            .reject("code", &current)
            .await
            .unwrap_or_else(|status| panic!("refresh {n}: {status:?}"));
        assert!(
            !seen.contains(&fresh.access_token),
            "refresh {n}: a new access token"
        );
        provider.assert_active(&fresh.access_token, "tv-code").await;

        // The provider rotated the refresh token: tokenvend stored the new one, and the
        // one it used is consumed (introspection does not use it, so the chain survives).
        let after = stored_refresh_token(dir.path(), "code");
        assert_ne!(
            after, before,
            "refresh {n}: the stored refresh token rotated"
        );
        provider.assert_active(&after, "tv-code").await;
        let old = provider.introspect(&before).await;
        assert_eq!(old["active"], false, "refresh {n}: {old}");

        seen.push(fresh.access_token.clone());
        current = fresh.access_token;
    }
    server.stop().await;
}

/// A provider may grant less than asked (RFC 6749 §3.3): oidc-provider drops a scope it
/// does not know. Refreshes must then ask for what was granted, not for the profile's
/// scopes, or every one is refused with `invalid_scope`.
#[tokio::test]
async fn refreshes_ask_for_the_scope_granted_not_the_scope_configured() {
    let Some(provider) = start_oidc_provider(&[]) else {
        return;
    };
    let dir = tempfile::tempdir().unwrap();
    let yaml = code_profile(&provider, dir.path())
        .replace("\"api:read\"]", "\"api:read\", \"api:write\"]");
    authorize(&yaml, "code").await;
    let stored = std::fs::read_to_string(dir.path().join("code.refresh.json")).unwrap();
    let record: Value = serde_json::from_str(&stored).unwrap();
    assert_eq!(
        record["scope"], "openid offline_access api:read",
        "{record}"
    );

    let server = Server::start(&yaml).await;
    let mut current = server.get("code").await.unwrap().access_token;
    for n in 0..2 {
        let fresh = server
            .reject("code", &current)
            .await
            .unwrap_or_else(|status| panic!("refresh {n}: {status:?}"));
        assert_ne!(fresh.access_token, current);
        provider.assert_active(&fresh.access_token, "tv-code").await;
        current = fresh.access_token;
    }
    server.stop().await;
}

fn write_pair(dir: &Path, name: &str, pair: &ClientCert) {
    // Replaced whole, as a cert-manager Secret is.
    for (ext, text) in [("crt", &pair.cert), ("key", &pair.key)] {
        let tmp = dir.join(format!("{name}.{ext}.tmp"));
        std::fs::write(&tmp, text).unwrap();
        std::fs::rename(&tmp, dir.join(format!("{name}.{ext}"))).unwrap();
    }
}

/// RFC 8705 against oidc-provider over HTTPS: a certificate from a CA the provider trusts
/// (`tls_client_auth`, matched by subject), and one the client registered itself
/// (`self_signed_tls_client_auth`, matched by thumbprint). The provider's certificate is
/// from a private CA, trusted through `provider_ca`.
#[tokio::test]
async fn mutual_tls_client_authentication_both_ways_and_a_rotated_certificate() {
    let pki = Pki::new();
    let dir = pki.dir.path();
    let loopback = rcgen::SanType::IpAddress(std::net::Ipv4Addr::LOCALHOST.into());
    write_pair(dir, "provider", &pki.leaf_named(None, vec![loopback]));
    write_pair(dir, "mtls", &pki.leaf_named(Some("tv-mtls"), vec![]));
    let self_signed_key = rcgen::KeyPair::generate().unwrap();
    let mut params = rcgen::CertificateParams::new(Vec::<String>::new()).unwrap();
    params
        .distinguished_name
        .push(rcgen::DnType::CommonName, "tv-self-signed");
    let self_signed = ClientCert {
        cert: params.self_signed(&self_signed_key).unwrap().pem(),
        key: self_signed_key.serialize_pem(),
    };
    write_pair(dir, "self-signed", &self_signed);
    // From the CA the provider trusts, but for another client.
    write_pair(dir, "rotating", &pki.leaf_named(Some("tv-other"), vec![]));

    let path = |name: &str| dir.join(name).display().to_string();
    let Some(provider) = start_oidc_provider(&[
        ("TV_TLS_CERT", &path("provider.crt")),
        ("TV_TLS_KEY", &path("provider.key")),
        ("TV_TLS_CLIENT_CA", &path("ca.crt")),
        ("TV_SELF_SIGNED_CERT", &path("self-signed.crt")),
        ("NODE_EXTRA_CA_CERTS", &path("ca.crt")),
    ]) else {
        return;
    };
    assert!(provider.token_endpoint.starts_with("https://"));
    let profile = |name: &str, client_id: &str, method: &str, files: &str| {
        format!(
            "  {name}:\n    token_url: {url}\n    client_id: {client_id}\n    auth_method: {method}\n    client_certificate: {{ file: {crt} }}\n    client_key: {{ file: {key} }}\n    provider_ca: {ca}\n    scopes: [\"api:read\"]\n",
            url = provider.token_endpoint,
            crt = path(&format!("{files}.crt")),
            key = path(&format!("{files}.key")),
            ca = path("ca.crt"),
        )
    };
    let server = Server::start(&format!(
        "profiles:\n{}{}{}",
        profile("mtls", "tv-mtls", "tls_client_auth", "mtls"),
        profile(
            "self",
            "tv-self-signed",
            "self_signed_tls_client_auth",
            "self-signed"
        ),
        profile("rotating", "tv-mtls", "tls_client_auth", "rotating"),
    ))
    .await;

    let introspect = reqwest::Client::builder()
        .add_root_certificate(reqwest::Certificate::from_pem(pki.ca_pem.as_bytes()).unwrap())
        .build()
        .unwrap();
    let active = async |token: &str, client_id: &str| {
        let answer: Value = introspect
            .post(&provider.introspection_endpoint)
            .form(&[
                ("token", token),
                ("client_id", "tv-post"),
                ("client_secret", SECRET),
            ])
            .send()
            .await
            .unwrap()
            .json()
            .await
            .unwrap();
        assert_eq!(answer["active"], true, "{answer}");
        assert_eq!(answer["client_id"], client_id, "{answer}");
    };
    for (name, client_id) in [("mtls", "tv-mtls"), ("self", "tv-self-signed")] {
        let token = server
            .get(name)
            .await
            .unwrap_or_else(|status| panic!("{name}: {status:?}"));
        active(&token.access_token, client_id).await;
    }

    let refused = server.get("rotating").await.unwrap_err();
    assert_eq!(refused.code(), Code::FailedPrecondition, "{refused:?}");
    assert!(
        refused.message().contains("invalid_client"),
        "{}",
        refused.message()
    );
    // The certificate is replaced by one for this client (as cert-manager writes it): the
    // next request presents it, with no restart or reload.
    write_pair(dir, "rotating", &pki.leaf_named(Some("tv-mtls"), vec![]));
    let token = eventually(
        std::time::Duration::from_secs(10),
        "a token with the renewed certificate",
        || async { server.get("rotating").await.ok() },
    )
    .await;
    active(&token.access_token, "tv-mtls").await;
    server.stop().await;
}
