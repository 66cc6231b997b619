//! Secrets, API keys and tokens never reach a log line, even at `trace` for every crate
//! (hyper, h2, reqwest included), nor a `Debug` print of the configuration; nor do the
//! credentials of a request Envoy asks about.
//!
//! Its own test binary: it installs the process-wide log subscriber.

mod support;

use base64::{Engine as _, engine::general_purpose::STANDARD};
use serde_json::json;
use sha2::{Digest, Sha256};
use tokenvend::{
    envoy_pb::envoy::service::auth::v3::{
        AttributeContext, CheckRequest, attribute_context,
        authorization_client::AuthorizationClient,
    },
    pb::{
        GetTokenRequest, ListConnectionsRequest, ListProfilesRequest, PutConnectionRequest,
        RevokeConnectionRequest, WatchTokenRequest,
    },
};
use tokenvend_server::Config;

use support::{
    Behaviour, Server, TestIdp,
    idp::{CLIENT_ID, CLIENT_SECRET, EchoInto},
    profile,
    security::{SaIssuer, new_key, sign, unix_now, with_bearer},
};

const API_KEY: &str = "api-key-7f3a9c";
/// What the client behind Envoy sends in its own `authorization` and cookie.
const CLIENTS_OWN: &str = "clients-own-credential-9d41e0";
const SUBJECT_TOKEN: &str = "subject-token-3be1d07c94";
const CONNECTION_REFRESH_TOKEN: &str = "connection-refresh-token-5e1f";
/// A connection's subject: the test's listing prints it on purpose (the caller asked),
/// so it is checked apart from the forbidden secrets, in tokenvend's own lines only.
const PERSON: &str = "person.9c2@example.org";
const CONNECTIONS_KEY: &str = "BwcHBwcHBwcHBwcHBwcHBwcHBwcHBwcHBwcHBwcHBwc=";

#[tokio::test]
async fn nothing_secret_is_logged_at_trace() {
    let captured = support::logs::Logs::capture();

    let idp = TestIdp::start(Behaviour::issue(3600)).await;
    let failing = TestIdp::start(Behaviour::oauth_error(
        401,
        "invalid_client",
        &format!("secret {CLIENT_SECRET} and key {API_KEY} refused"),
    ))
    .await;
    // A provider that echoes the request into its error, for the methods whose credential
    // is an assertion: a workload's JWT from a file, one signed with the secret, and the
    // `jwt_bearer` grant's.
    let echoing = TestIdp::start(Behaviour::Echo(EchoInto::Description)).await;
    let assertion_dir = tempfile::tempdir().unwrap();
    let assertion_file = assertion_dir.path().join("token");
    let issuer = SaIssuer::start().await;
    let workload_jwt = issuer.token("orders", "workload");
    std::fs::write(&assertion_file, &workload_jwt).unwrap();
    let headers = format!("    headers: {{ X-Api-Key: {{ value: {API_KEY} }} }}\n");
    let bearer_key = assertion_dir.path().join("bearer.key");
    std::fs::write(
        &bearer_key,
        rcgen::KeyPair::generate().unwrap().serialize_pem(),
    )
    .unwrap();
    let bearer = format!(
        "  bearer:\n    token_url: {}\n    grant: jwt_bearer\n    client_id: c\n    private_key: {{ file: {} }}\n    signing_alg: ES256\n    assertion_subject: someone\n",
        echoing.token_url(),
        bearer_key.display()
    );
    // A mutual-TLS client: its key is never sent, and must never be printed either.
    let tls_key = rcgen::KeyPair::generate().unwrap();
    let tls_cert = rcgen::CertificateParams::new(vec!["c".to_string()])
        .unwrap()
        .self_signed(&tls_key)
        .unwrap();
    let (tls_crt_file, tls_key_file) = (
        assertion_dir.path().join("tls.crt"),
        assertion_dir.path().join("tls.key"),
    );
    std::fs::write(&tls_crt_file, tls_cert.pem()).unwrap();
    std::fs::write(&tls_key_file, tls_key.serialize_pem()).unwrap();
    let mtls = format!(
        "  mtls:\n    token_url: {}\n    client_id: c\n    auth_method: tls_client_auth\n    client_certificate: {{ file: {} }}\n    client_key: {{ file: {} }}\n",
        echoing.token_url(),
        tls_crt_file.display(),
        tls_key_file.display()
    );
    let exchange = format!(
        "  exchange:\n    token_url: {}\n    grant: token_exchange\n    client_id: c\n    client_secret: {{ value: s }}\n",
        echoing.token_url()
    );
    let federated = format!(
        "  federated:\n    token_url: {}\n    client_assertion: {{ file: {} }}\n",
        echoing.token_url(),
        assertion_file.display()
    );
    let yaml = format!(
        "profiles:\n{}{}{}{}{federated}{bearer}{mtls}{exchange}",
        profile("post", &idp, &headers),
        profile(
            "basic",
            &idp,
            &format!("    auth_method: client_secret_basic\n{headers}")
        ),
        profile("failing", &failing, &headers),
        profile("hmac", &echoing, "    auth_method: client_secret_jwt\n"),
    );
    let config = Config::from_yaml(&yaml).unwrap();
    tracing::debug!(?config, "loaded");
    let server = Server::start_with(config).await;

    let mut tokens = Vec::new();
    for name in ["post", "basic"] {
        tokens.push(server.get(name).await.unwrap().access_token);
    }
    for name in ["failing", "hmac", "federated", "bearer", "mtls"] {
        let status = server.get(name).await.unwrap_err();
        tracing::info!(?status, "a failure as a caller would log it");
    }
    // A caller's token to exchange, echoed back by the provider.
    let status = server
        .client
        .clone()
        .get_token(GetTokenRequest {
            profile: "exchange".into(),
            subject_token: SUBJECT_TOKEN.into(),
            ..Default::default()
        })
        .await
        .unwrap_err();
    tracing::info!(?status, "a failed exchange as a caller would log it");
    let assertions: Vec<String> = echoing
        .requests()
        .iter()
        .filter_map(|r| {
            let form = &r.form;
            form.get("client_assertion")
                .or(form.get("assertion"))
                .cloned()
        })
        .collect();
    assert_eq!(assertions.len(), 3, "every assertion profile asked");
    assert!(assertions.contains(&workload_jwt));
    let mut stream = server
        .client
        .clone()
        .watch_token(WatchTokenRequest {
            profile: "post".into(),
            ..Default::default()
        })
        .await
        .unwrap()
        .into_inner();
    stream.message().await.unwrap().unwrap();
    server
        .client
        .clone()
        .list_profiles(ListProfilesRequest {})
        .await
        .unwrap();
    drop(stream);
    // The metrics, too, are a place where nothing secret may show.
    let mut scraped = server.metrics().await.text;
    server.stop().await;

    // Connections: a refresh token imported, refreshed with, listed, revoked at the
    // provider; a subject that may be personal data, which logs name only by digest.
    let refreshing = TestIdp::start(Behaviour::AnyRefresh {
        lifetime: 3600,
        delay: std::time::Duration::ZERO,
    })
    .await;
    let state = tempfile::tempdir().unwrap();
    let connections = Server::start(&format!(
        "server:\n  state_dir: {}\n  connections: {{ key: {{ value: \"{CONNECTIONS_KEY}\" }} }}\nprofiles:\n{}",
        state.path().display(),
        profile(
            "people",
            &refreshing,
            &format!(
                "    grant: refresh_token\n    template: true\n    authorize_url: https://idp.example.com/auth\n    redirect_uri: https://app.example.com/cb\n    revocation_url: {}\n",
                refreshing.token_url()
            ),
        ),
    ))
    .await;
    let mut client = connections.client.clone();
    client
        .put_connection(PutConnectionRequest {
            profile: "people".into(),
            subject: PERSON.into(),
            refresh_token: CONNECTION_REFRESH_TOKEN.into(),
            ..Default::default()
        })
        .await
        .unwrap();
    let person = GetTokenRequest {
        profile: "people".into(),
        subject: PERSON.into(),
        ..Default::default()
    };
    tokens.push(
        client
            .get_token(person.clone())
            .await
            .unwrap()
            .into_inner()
            .access_token,
    );
    let listed = client
        .list_connections(ListConnectionsRequest {
            profile: "people".into(),
            ..Default::default()
        })
        .await
        .unwrap();
    tracing::info!(?listed, "a listing as a caller would log it");
    client
        .revoke_connection(RevokeConnectionRequest {
            profile: "people".into(),
            subject: PERSON.into(),
        })
        .await
        .unwrap();
    let status = client.get_token(person).await.unwrap_err();
    tracing::info!(?status, "a revoked connection as a caller would log it");
    assert!(
        refreshing
            .requests()
            .iter()
            .any(|r| r.form.get("token").map(String::as_str) == Some(CONNECTION_REFRESH_TOKEN)),
        "the refresh token was revoked at the provider"
    );
    connections.stop().await;

    // Caller authentication: a good ServiceAccount token and bad ones of every kind.
    let guarded = Server::start(&format!(
        "server:\n{}profiles:\n{}",
        issuer.auth_yaml(),
        profile(
            "guarded",
            &idp,
            "    allow: [\"system:serviceaccount:orders:*\"]\n"
        ),
    ))
    .await;
    let request = || GetTokenRequest {
        profile: "guarded".into(),
        ..Default::default()
    };
    let good = issuer.token("orders", "api");
    let claims = issuer.claims("orders", "api", json!({}));
    let es256 = json!({"alg": "ES256", "kid": "k1"});
    let mut jwts = vec![
        good.clone(),
        issuer.token("billing", "api"),
        sign(&new_key(), es256.clone(), &claims),
        sign(
            &issuer.key(),
            es256.clone(),
            &issuer.claims("orders", "api", json!({"exp": unix_now() - 600})),
        ),
        sign(
            &issuer.key(),
            json!({"alg": "ES256", "kid": "unknown"}),
            &claims,
        ),
    ];
    jwts.push(format!(
        "{}.",
        jwts[2].rsplit_once('.').unwrap().0.replace("ES256", "none")
    ));
    let mut client = guarded.client.clone();
    let mut guarded_token = None;
    for jwt in &jwts {
        match client.get_token(with_bearer(request(), jwt)).await {
            Ok(token) => guarded_token = Some(token.into_inner().access_token),
            Err(status) => tracing::info!(?status, "a refusal as a caller would log it"),
        }
    }
    let guarded_token = guarded_token.expect("the good token got a token");
    // Envoy's Check: the checked request carries its client's own credentials, which are
    // nobody's business here.
    let mut envoy = AuthorizationClient::new(guarded.channel().await);
    for (caller, profile) in [
        (&good, "guarded"),
        (&jwts[1], "guarded"),
        (&good, "no-such-profile"),
        (&good, ""),
    ] {
        let checked = CheckRequest {
            attributes: Some(AttributeContext {
                context_extensions: [("tokenvend_profile".to_owned(), profile.to_owned())].into(),
                request: Some(attribute_context::Request {
                    http: Some(attribute_context::HttpRequest {
                        headers: [
                            ("authorization".to_owned(), format!("Bearer {CLIENTS_OWN}")),
                            ("cookie".to_owned(), format!("session={CLIENTS_OWN}")),
                        ]
                        .into(),
                        ..Default::default()
                    }),
                    ..Default::default()
                }),
                ..Default::default()
            }),
        };
        let reply = envoy.check(with_bearer(checked, caller)).await.unwrap();
        tracing::info!(reply = ?reply.into_inner().status, "Envoy's view of a Check");
    }
    tokens.push(guarded_token.clone());
    scraped.push_str(&guarded.metrics().await.text);
    guarded.stop().await;

    let logs = captured.text();
    assert!(logs.contains("token obtained"), "the capture works");
    assert!(logs.contains("h2"), "dependencies log at trace too");
    let encoded_secret: String =
        url::form_urlencoded::byte_serialize(CLIENT_SECRET.as_bytes()).collect();
    let basic = STANDARD.encode(format!("{CLIENT_ID}:{encoded_secret}"));
    let mut forbidden = vec![
        CLIENTS_OWN.to_owned(),
        CLIENT_SECRET.to_owned(),
        encoded_secret,
        basic,
        API_KEY.to_owned(),
    ];
    forbidden.extend(tokens);
    forbidden.push(SUBJECT_TOKEN.to_owned());
    forbidden.push(CONNECTION_REFRESH_TOKEN.to_owned());
    forbidden.push(CONNECTIONS_KEY.to_owned());
    // Every line of the client key's base64.
    forbidden.extend(
        tls_key
            .serialize_pem()
            .lines()
            .filter(|l| !l.starts_with("-----"))
            .map(str::to_owned),
    );
    // Whole JWTs (callers' and client assertions), and their signatures on their own.
    for jwt in jwts.iter().chain(&assertions) {
        forbidden.push(jwt.clone());
        let signature = jwt.rsplit('.').next().unwrap();
        if signature.len() > 16 {
            forbidden.push(signature.to_owned());
        }
    }

    // The audit trail: who got which token (by fingerprint), who was refused and why.
    let fingerprint: String = Sha256::digest(guarded_token.as_bytes())[..8]
        .iter()
        .map(|b| format!("{b:02x}"))
        .collect();
    let audit: Vec<&str> = logs
        .lines()
        .filter(|l| l.contains("tokenvend::audit"))
        .collect();
    assert!(
        audit
            .iter()
            .any(|l| l.contains("caller=system:serviceaccount:orders:api")
                && l.contains("outcome=\"served\"")
                && l.contains(&fingerprint)),
        "an audit event names the caller and the token's fingerprint: {audit:#?}"
    );
    assert!(
        audit
            .iter()
            .any(|l| l.contains("caller=system:serviceaccount:billing:api") && l.contains("allow")),
        "a refusal by `allow` is audited with its reason: {audit:#?}"
    );
    assert!(
        audit
            .iter()
            .any(|l| l.contains("unauthenticated") && l.contains("expired")),
        "a refused token is audited: {audit:#?}"
    );
    // Envoy's Check is audited as GetToken is: unknown and forbidden told apart here,
    // though Envoy got the same denial for both.
    for event in [
        "token served rpc=\"Check\" caller=system:serviceaccount:orders:api profile=\"guarded\" outcome=\"served\" source=\"cache\"",
        "no token rpc=\"Check\" caller=system:serviceaccount:billing:api profile=\"guarded\" outcome=\"not_found\" reason=the caller is not in the profile's `allow` list",
        "no token rpc=\"Check\" caller=system:serviceaccount:orders:api profile=\"no-such-profile\" outcome=\"not_found\" reason=no such profile",
        "no token rpc=\"Check\" caller=system:serviceaccount:orders:api profile=\"\" outcome=\"invalid_argument\" reason=no profile chosen for the request",
    ] {
        assert!(
            audit.iter().any(|l| l.contains(event)),
            "{event}: {audit:#?}"
        );
    }
    // A connection is named in tokenvend's logs by its digest, never by its subject.
    assert!(
        logs.lines()
            .any(|l| l.contains("connection revoked") && l.contains("connection=")),
        "the revocation is logged"
    );
    let person: Vec<&str> = logs
        .lines()
        .filter(|l| l.contains(PERSON) && !l.contains("a listing as a caller would log it"))
        .collect();
    assert!(person.is_empty(), "the subject is logged: {person:#?}");
    for needle in &forbidden {
        let line = logs.lines().find(|l| l.contains(needle.as_str()));
        assert!(line.is_none(), "`{needle}` is in the logs: {line:?}");
        let line = scraped.lines().find(|l| l.contains(needle.as_str()));
        assert!(line.is_none(), "`{needle}` is in /metrics: {line:?}");
    }
    assert!(
        scraped.contains("tokenvend_requests_total"),
        "the scrape works"
    );
}

/// The admin web's hosted flow and login: the code, the state, the sealed cookies, the
/// tokens the exchange returns, the session key and the login token stay out of the logs.
#[tokio::test]
async fn the_admin_web_logs_no_secret() {
    use reqwest::header;

    const SESSION_KEY: &str = "web-session-key-5e1f0c9a7b3d2e4f6a8c";
    const LOGIN_TOKEN: &str = "web-login-token-0d9c8b7a6f5e";
    const REFRESH: &str = "web-refresh-token-77c1a9e3";
    const ACCESS: &str = "web-access-token-4b2d8f61";
    const CODE: &str = "web-code-a81f3c5d";
    let captured = support::logs::Logs::capture();
    // Answers every request, the code exchange and the refreshes after it, alike.
    let idp = TestIdp::start(Behaviour::Raw(
        json!({"access_token": ACCESS, "token_type": "Bearer", "expires_in": 3600, "refresh_token": REFRESH})
            .to_string(),
    ))
    .await;
    let state_dir = tempfile::tempdir().unwrap();
    let admin = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let base = format!("http://{}", admin.local_addr().unwrap());
    let grpc = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let yaml = format!(
        "server:\n  state_dir: {dir}\n  admin:\n    session_key: {{ value: {SESSION_KEY} }}\n    login:\n      token: {{ value: {LOGIN_TOKEN} }}\nprofiles:\n  hosted:\n    token_url: {url}\n    grant: refresh_token\n    client_id: {CLIENT_ID}\n    client_secret: {{ value: \"{CLIENT_SECRET}\" }}\n    authorize_url: https://idp.example.com/auth\n    redirect_uri: {base}/oauth/callback\n",
        dir = state_dir.path().display(),
        url = idp.token_url(),
    );
    let mut config = Config::from_yaml(&yaml).unwrap();
    config.server.shutdown_delay = std::time::Duration::ZERO;
    let (stop, stopped) = tokio::sync::oneshot::channel::<()>();
    let server = tokio::spawn(tokenvend_server::serve(
        tokenvend_server::Listeners {
            grpc,
            admin: Some(admin),
            forward_auth: None,
        },
        config,
        async move {
            let _ = stopped.await;
        },
    ));
    let http = reqwest::Client::builder()
        .redirect(reqwest::redirect::Policy::none())
        .build()
        .unwrap();
    let cookie_of = |response: &reqwest::Response| {
        response.headers()[header::SET_COOKIE]
            .to_str()
            .unwrap()
            .split(';')
            .next()
            .unwrap()
            .to_owned()
    };
    // A wrong login, then the right one.
    let wrong = http
        .post(format!("{base}/login"))
        .form(&[("token", "web-wrong-token-31f0")])
        .send()
        .await
        .unwrap();
    assert_eq!(wrong.status(), 401);
    let login = http
        .post(format!("{base}/login"))
        .form(&[("token", LOGIN_TOKEN)])
        .send()
        .await
        .unwrap();
    let session = cookie_of(&login);
    let page = http
        .get(format!("{base}/"))
        .header(header::COOKIE, &session)
        .send()
        .await
        .unwrap()
        .text()
        .await
        .unwrap();
    let at = page.find("name=\"csrf\" value=\"").unwrap() + 19;
    let csrf = &page[at..at + page[at..].find('"').unwrap()];
    let started = http
        .post(format!("{base}/authorize/hosted"))
        .header(header::COOKIE, &session)
        .form(&[("csrf", csrf)])
        .send()
        .await
        .unwrap();
    let flow = cookie_of(&started);
    let to_provider =
        url::Url::parse(started.headers()[header::LOCATION].to_str().unwrap()).unwrap();
    let state = to_provider
        .query_pairs()
        .find(|(k, _)| k == "state")
        .unwrap()
        .1
        .into_owned();
    let back = http
        .get(format!("{base}/oauth/callback?code={CODE}&state={state}"))
        .header(header::COOKIE, format!("{session}; {flow}"))
        .send()
        .await
        .unwrap();
    assert_eq!(back.status(), 303, "{}", back.text().await.unwrap());
    let exchanged = idp
        .requests()
        .iter()
        .any(|r| r.form.get("code").map(String::as_str) == Some(CODE));
    assert!(exchanged, "the code was exchanged");
    let _ = stop.send(());
    server.await.unwrap().unwrap();

    let logs = captured.text();
    assert!(
        logs.contains("authorized from the admin web"),
        "the capture works"
    );
    let (_, session_value) = session.split_once('=').unwrap();
    let (_, flow_value) = flow.split_once('=').unwrap();
    for needle in [
        SESSION_KEY,
        LOGIN_TOKEN,
        "web-wrong-token-31f0",
        REFRESH,
        ACCESS,
        CODE,
        &state,
        csrf,
        session_value,
        flow_value,
        CLIENT_SECRET,
    ] {
        let line = logs.lines().find(|l| l.contains(needle));
        assert!(line.is_none(), "`{needle}` is in the logs: {line:?}");
    }
}
