//! Each status code of the contract, from the situation that causes it.

use std::time::{Duration, Instant};

use tokenvend::pb::GetTokenRequest;
use tonic::{Code, Request};

use crate::support::{Behaviour, Server, TestIdp, config, idp::CLIENT_SECRET};

#[tokio::test]
async fn refused_credentials_are_failed_precondition_naming_the_oauth_error() {
    let idp = TestIdp::start(Behaviour::oauth_error(
        401,
        "invalid_client",
        "AADSTS7000215: Invalid client secret provided.",
    ))
    .await;
    let server = Server::start(&config("p", &idp, "")).await;
    let status = server.get("p").await.unwrap_err();
    assert_eq!(status.code(), Code::FailedPrecondition);
    assert!(
        status.message().contains("profile `p`"),
        "{}",
        status.message()
    );
    assert!(
        status.message().contains("invalid_client"),
        "{}",
        status.message()
    );
    assert!(
        status.message().contains("AADSTS7000215"),
        "{}",
        status.message()
    );
    assert!(!status.message().contains(CLIENT_SECRET));

    // A second call inside the backoff gets the same answer without a second request.
    let again = server.get("p").await.unwrap_err();
    assert_eq!(again.code(), Code::FailedPrecondition);
    assert!(
        again.message().contains("next attempt in"),
        "{}",
        again.message()
    );
    assert_eq!(idp.count(), 1, "no retry storm against refused credentials");
    server.stop().await;
}

#[tokio::test]
async fn a_secret_echoed_by_the_idp_is_redacted() {
    let idp = TestIdp::start(Behaviour::oauth_error(
        400,
        "invalid_request",
        &format!("client_secret {CLIENT_SECRET} is malformed"),
    ))
    .await;
    let server = Server::start(&config("p", &idp, "")).await;
    let status = server.get("p").await.unwrap_err();
    assert_eq!(status.code(), Code::FailedPrecondition);
    assert!(
        !status.message().contains(CLIENT_SECRET),
        "{}",
        status.message()
    );
    assert!(
        status.message().contains("<redacted>"),
        "{}",
        status.message()
    );
    server.stop().await;
}

#[tokio::test]
async fn an_html_500_is_unavailable() {
    let idp = TestIdp::start(Behaviour::html(500)).await;
    let server = Server::start(&config("p", &idp, "")).await;
    let status = server.get("p").await.unwrap_err();
    assert_eq!(status.code(), Code::Unavailable);
    assert!(
        status.message().contains("HTTP 500 with a text/html body"),
        "{}",
        status.message()
    );
    server.stop().await;
}

#[tokio::test]
async fn retry_after_holds_back_the_next_request() {
    let idp = TestIdp::start(Behaviour::Fail {
        status: 429,
        content_type: "application/json",
        body: r#"{"error":"temporarily_unavailable"}"#.into(),
        retry_after: Some(60),
    })
    .await;
    let server = Server::start(&config("p", &idp, "")).await;
    assert_eq!(server.get("p").await.unwrap_err().code(), Code::Unavailable);
    let status = server.get("p").await.unwrap_err();
    assert_eq!(status.code(), Code::Unavailable);
    assert!(
        status.message().contains("next attempt in 5"),
        "{}",
        status.message()
    );
    assert_eq!(idp.count(), 1);
    server.stop().await;
}

#[tokio::test]
async fn an_unreachable_idp_is_unavailable_and_the_server_stays_up() {
    let closed = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let url = format!("http://{}/token", closed.local_addr().unwrap());
    drop(closed);
    let yaml = format!(
        "profiles:\n  p:\n    token_url: {url}\n    client_id: a\n    client_secret: {{ value: s }}\n"
    );
    let server = Server::start(&yaml).await;
    let status = server.get("p").await.unwrap_err();
    assert_eq!(status.code(), Code::Unavailable);
    assert!(
        status.message().contains("cannot reach"),
        "{}",
        status.message()
    );
    // Still serving.
    assert_eq!(server.get("nope").await.unwrap_err().code(), Code::NotFound);
    server.stop().await;
}

#[tokio::test]
async fn malformed_requests_are_invalid_argument_and_unknown_profiles_not_found() {
    let idp = TestIdp::start(Behaviour::issue(3600)).await;
    let server = Server::start(&config("p", &idp, "")).await;

    let status = server.get("").await.unwrap_err();
    assert_eq!(status.code(), Code::InvalidArgument);
    assert!(status.message().contains("profile"));

    let status = server.get("nope").await.unwrap_err();
    assert_eq!(status.code(), Code::NotFound);
    assert!(status.message().contains("nope"));

    let status = server
        .client
        .clone()
        .get_token(GetTokenRequest {
            profile: "p".into(),
            min_ttl: Some(prost_types::Duration {
                seconds: -5,
                nanos: 0,
            }),
            ..Default::default()
        })
        .await
        .unwrap_err();
    assert_eq!(status.code(), Code::InvalidArgument);
    assert_eq!(idp.count(), 0);
    server.stop().await;
}

#[tokio::test]
async fn a_caller_deadline_is_deadline_exceeded_and_the_fetch_still_lands() {
    let idp = TestIdp::start(Behaviour::slow(3600, Duration::from_millis(800))).await;
    let server = Server::start(&config("p", &idp, "")).await;
    let mut request = Request::new(GetTokenRequest {
        profile: "p".into(),
        ..Default::default()
    });
    // As metadata rather than `set_timeout`, which would also arm the test client's own
    // timer: this checks what the server answers, not which timer fires first.
    request
        .metadata_mut()
        .insert("grpc-timeout", "200m".parse().unwrap());
    let status = server.client.clone().get_token(request).await.unwrap_err();
    assert_eq!(status.code(), Code::DeadlineExceeded, "{status:?}");

    tokio::time::sleep(Duration::from_millis(800)).await;
    let started = Instant::now();
    assert_eq!(server.get("p").await.unwrap().access_token, "tok-1");
    assert!(started.elapsed() < Duration::from_millis(300));
    assert_eq!(idp.count(), 1);
    server.stop().await;
}
