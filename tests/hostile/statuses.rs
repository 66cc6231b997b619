//! Statuses within the contract for requests no honest client sends, for shutdown, and
//! for a configuration that is refused.

use std::time::Duration;

use tokenvend::pb::WatchTokenRequest;
use tokenvend_server::{Config, Listeners};
use tokio::net::TcpListener;
use tonic::Code;

use crate::support::{Behaviour, Logs, Server, TestIdp, profile, raw};

const GET_TOKEN: &str = "/tokenvend.v1.TokenService/GetToken";

#[tokio::test]
async fn a_message_that_cannot_be_decoded_is_an_invalid_argument() {
    let idp = TestIdp::start(Behaviour::issue(3600)).await;
    let server = Server::start(&format!("profiles:\n{}", profile("demo", &idp, ""))).await;
    for (what, message) in [
        // Field 1 (`profile`), length 100, and then nothing.
        ("a truncated field", vec![0x0a, 100, b'd']),
        // Field 1 holding bytes that are not UTF-8.
        ("a string that is not UTF-8", vec![0x0a, 2, 0xff, 0xfe]),
        // A wire type that does not exist (7).
        ("an unknown wire type", vec![0x0f, 1]),
    ] {
        let status = raw::unary(server.channel().await, GET_TOKEN, message)
            .await
            .unwrap_err();
        assert_eq!(status.code(), Code::InvalidArgument, "{what}: {status:?}");
    }
    // The same bytes, well formed, are served.
    let mut demo = vec![0x0a, 4];
    demo.extend_from_slice(b"demo");
    raw::unary(server.channel().await, GET_TOKEN, demo)
        .await
        .expect("a well-formed request");
    server.stop().await;
}

#[tokio::test]
async fn a_request_over_max_request_bytes_is_resource_exhausted() {
    let idp = TestIdp::start(Behaviour::issue(3600)).await;
    let server = Server::start(&format!(
        "server:\n  limits: {{ max_request_bytes: 64 }}\nprofiles:\n{}",
        profile("demo", &idp, "")
    ))
    .await;
    let status = server.get(&"x".repeat(200)).await.unwrap_err();
    assert_eq!(status.code(), Code::ResourceExhausted, "{status:?}");
    assert!(status.message().contains("max_request_bytes"), "{status:?}");
    let status = server
        .client
        .clone()
        .watch_token(WatchTokenRequest {
            profile: "y".repeat(200),
            ..Default::default()
        })
        .await
        .unwrap_err();
    assert_eq!(status.code(), Code::ResourceExhausted, "{status:?}");
    server.stop().await;
}

#[tokio::test]
async fn watch_streams_end_unavailable_on_shutdown() {
    let idp = TestIdp::start(Behaviour::issue(3600)).await;
    let mut server = Server::start(&format!("profiles:\n{}", profile("demo", &idp, ""))).await;
    let mut stream = server
        .client
        .clone()
        .watch_token(WatchTokenRequest {
            profile: "demo".into(),
            ..Default::default()
        })
        .await
        .unwrap()
        .into_inner();
    stream.message().await.unwrap().expect("the first token");
    server.signal_shutdown();
    let ended = tokio::time::timeout(Duration::from_secs(5), stream.message())
        .await
        .expect("the stream ends on shutdown");
    let status = ended.expect_err("a status the client reconnects on");
    assert_eq!(status.code(), Code::Unavailable, "{status:?}");
    server.stop().await;
}

#[tokio::test]
async fn listening_is_logged_only_once_the_configuration_is_accepted() {
    let idp = TestIdp::start(Behaviour::issue(3600)).await;
    let (logs, _guard) = Logs::capture();
    // Reachable from the network and no caller authentication: refused.
    let yaml = format!(
        "server:\n  shutdown_delay: 0s\nprofiles:\n{}",
        profile("demo", &idp, "")
    );
    let config = Config::from_yaml(&yaml).unwrap();
    let grpc = TcpListener::bind("0.0.0.0:0").await.unwrap();
    let refused = tokenvend_server::serve(
        Listeners {
            grpc,
            admin: None,
            forward_auth: None,
        },
        config.clone(),
        std::future::pending(),
    )
    .await
    .unwrap_err();
    assert!(
        refused.to_string().contains("refusing to serve"),
        "{refused}"
    );
    assert!(!logs.text().contains("listening"), "{}", logs.text());

    // On loopback the same configuration serves, and says so.
    let grpc = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = grpc.local_addr().unwrap();
    let served = tokenvend_server::serve(
        Listeners {
            grpc,
            admin: None,
            forward_auth: None,
        },
        config,
        async {},
    );
    served.await.unwrap();
    let text = logs.text();
    let line = text
        .lines()
        .find(|l| l.contains("tokenvend listening"))
        .unwrap_or_else(|| panic!("{text}"));
    assert!(line.contains(&addr.to_string()), "{line}");
    assert!(line.contains("demo"), "{line}");
}
