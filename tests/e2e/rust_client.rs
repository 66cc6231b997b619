//! The Rust client against the real server: local cache, rejected tokens, the 401 retry,
//! and the WatchToken background mode.

use std::{
    sync::{Arc, Mutex},
    time::Duration,
};

use axum::{Router, extract::State, http::HeaderMap, http::StatusCode, routing::get};
use tokenvend_client::{GetOptions, TokenClient, reqwest};
use tokio::net::TcpListener;
use tonic::Code;

use crate::support::{Behaviour, Server, TestIdp, config};

async fn client(server: &Server) -> TokenClient {
    TokenClient::connect(format!("http://{}", server.addr))
        .await
        .unwrap()
}

#[tokio::test]
async fn connect_waits_for_the_server_and_build_does_not() {
    let closed = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = closed.local_addr().unwrap();
    drop(closed);
    let error = TokenClient::connect(addr.to_string()).await.unwrap_err();
    assert_eq!(error.code(), Code::Unavailable);
    let text = error.to_string();
    assert!(
        text.starts_with(&format!("cannot connect to tokenvend at http://{addr}/")),
        "{text}"
    );
    assert!(text.contains("Connection refused"), "{text}");

    // A service starting before tokenvend: the client builds now and works once the
    // server is up.
    let tokens = TokenClient::new(addr.to_string()).unwrap();
    assert_eq!(
        tokens.get_token("p").await.unwrap_err().code(),
        Code::Unavailable
    );
    let idp = TestIdp::start(Behaviour::issue(3600)).await;
    // The same port again: nothing else on this machine takes loopback ports this fast.
    let grpc = TcpListener::bind(addr).await.unwrap();
    let config = tokenvend_server::Config::from_yaml(&config("p", &idp, "")).unwrap();
    let (stop, stopped) = tokio::sync::oneshot::channel::<()>();
    let server = tokio::spawn(tokenvend_server::serve(
        tokenvend_server::Listeners {
            grpc,
            admin: None,
            forward_auth: None,
        },
        config,
        async move {
            let _ = stopped.await;
        },
    ));
    assert_eq!(tokens.get_token("p").await.unwrap().access_token, "tok-1");
    let _ = stop.send(());
    let _ = server.await;
}

#[tokio::test]
async fn the_local_copy_serves_without_a_round_trip_until_the_margin() {
    let idp = TestIdp::start(Behaviour::issue(3600)).await;
    let server = Server::start(&config("p", &idp, "")).await;
    let tokens = client(&server).await;
    let first = tokens.get_token("p").await.unwrap();
    assert_eq!(first.headers["authorization"], "Bearer tok-1");
    assert!(
        !format!("{first:?}").contains("tok-1"),
        "Debug hides the token"
    );

    server.stop().await;
    // The server is gone: only the local copy can answer.
    let again = tokens.get_token("p").await.unwrap();
    assert!(Arc::ptr_eq(&first, &again));
    let needs_more = tokens
        .get_token_with("p", GetOptions::new().min_ttl(Duration::from_secs(3601)))
        .await
        .unwrap_err();
    assert_eq!(needs_more.code(), Code::Unavailable, "{needs_more}");
}

#[derive(Default)]
struct Upstream {
    seen: Mutex<Vec<String>>,
    always_401: bool,
}

async fn upstream(State(state): State<Arc<Upstream>>, headers: HeaderMap) -> StatusCode {
    let authorization = headers["authorization"].to_str().unwrap().to_owned();
    let mut seen = state.seen.lock().unwrap();
    seen.push(authorization);
    if state.always_401 || seen.len() == 1 {
        StatusCode::UNAUTHORIZED
    } else {
        StatusCode::OK
    }
}

async fn start_upstream(always_401: bool) -> (String, Arc<Upstream>) {
    let state = Arc::new(Upstream {
        always_401,
        ..Default::default()
    });
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let url = format!("http://{}/api", listener.local_addr().unwrap());
    let app = Router::new()
        .route("/api", get(upstream))
        .with_state(state.clone());
    tokio::spawn(async move { axum::serve(listener, app).await.unwrap() });
    (url, state)
}

#[tokio::test]
async fn a_401_reports_the_token_and_retries_once_with_a_new_one() {
    let idp = TestIdp::start(Behaviour::issue(3600)).await;
    let server = Server::start(&config("p", &idp, "")).await;
    let tokens = client(&server).await;
    let http = reqwest::Client::new();

    let (url, state) = start_upstream(false).await;
    let response = tokens.send("p", http.get(&url)).await.unwrap();
    assert_eq!(response.status(), 200);
    assert_eq!(
        *state.seen.lock().unwrap(),
        ["Bearer tok-1", "Bearer tok-2"]
    );
    assert_eq!(tokens.get_token("p").await.unwrap().access_token, "tok-2");

    let (url, state) = start_upstream(true).await;
    let response = tokens.send("p", http.get(&url)).await.unwrap();
    assert_eq!(response.status(), 401, "a second 401 is the caller's");
    assert_eq!(state.seen.lock().unwrap().len(), 2);
    // tok-2 was itself the replacement of a rejected token moments ago: the server hands
    // it back rather than ask the IdP again (`rejected_token_min_interval`).
    assert_eq!(idp.count(), 2);
    server.stop().await;
}

#[tokio::test]
async fn mutual_tls_with_a_client_certificate() {
    use crate::support::security::Pki;
    use tonic::transport::{Certificate, ClientTlsConfig, Identity};

    let idp = TestIdp::start(Behaviour::issue(3600)).await;
    let pki = Pki::new();
    let yaml = format!(
        "server:\n{}profiles:\n{}",
        pki.tls_yaml(),
        crate::support::profile(
            "p",
            &idp,
            "    allow: [\"spiffe://cluster.local/ns/orders/sa/*\"]\n"
        )
    );
    let server = Server::start_secured(&yaml).await;
    let identity = pki.client("spiffe://cluster.local/ns/orders/sa/api");
    let tls = ClientTlsConfig::new()
        .ca_certificate(Certificate::from_pem(&pki.ca_pem))
        .domain_name("localhost")
        .identity(Identity::from_pem(&identity.cert, &identity.key));
    let tokens = TokenClient::builder(format!("https://localhost:{}", server.addr.port()))
        .tls(tls.clone())
        .connect()
        .await
        .unwrap();
    assert_eq!(tokens.get_token("p").await.unwrap().access_token, "tok-1");

    // Without a scheme, TLS settings mean https://.
    let tokens = TokenClient::builder(format!("localhost:{}", server.addr.port()))
        .tls(tls.clone())
        .build()
        .unwrap();
    assert_eq!(tokens.get_token("p").await.unwrap().access_token, "tok-1");

    // TLS settings with an http:// address are a contradiction, not a plaintext call.
    let error = TokenClient::builder(format!("http://localhost:{}", server.addr.port()))
        .tls(tls)
        .build()
        .unwrap_err();
    assert!(
        error
            .to_string()
            .contains("TLS is configured but the address says http://"),
        "{error}"
    );
    server.stop().await;
}
