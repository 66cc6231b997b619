//! Connections that hold a slot for nothing: idle ones, ones that never authenticate, many
//! from one address; and callers that fail to authenticate, again and again.

use std::{
    net::{IpAddr, Ipv4Addr},
    time::{Duration, Instant},
};

use tokenvend::pb::{GetTokenRequest, WatchTokenRequest, token_service_client::TokenServiceClient};
use tokio::net::TcpStream;
use tonic::{Code, transport::Channel};

use crate::support::{
    Behaviour, Server, TestIdp, get, profile,
    raw::closed_within,
    security::{SaIssuer, with_bearer},
};

/// A client whose connections come from `ip` (any 127.0.0.0/8 address is loopback).
async fn client_from(server: &Server, ip: Ipv4Addr) -> TokenServiceClient<Channel> {
    let channel = Channel::from_shared(format!("http://{}", server.addr))
        .unwrap()
        .local_address(Some(IpAddr::V4(ip)))
        .connect_lazy();
    TokenServiceClient::new(channel)
}

#[tokio::test]
async fn idle_connections_holding_every_slot_do_not_starve_a_caller() {
    let idp = TestIdp::start(Behaviour::issue(3600)).await;
    let yaml = format!(
        "server:\n  limits: {{ max_connections: 4, idle_timeout: 1s }}\nprofiles:\n{}",
        profile("demo", &idp, "")
    );
    let server = Server::start_secured(&yaml).await;
    // The attacker takes every slot: two connections that never speak, two HTTP/2
    // connections that never call.
    let mut silent = Vec::new();
    for _ in 0..2 {
        silent.push(TcpStream::connect(server.addr).await.unwrap());
    }
    let mut idle = Vec::new();
    for _ in 0..2 {
        let channel = Channel::from_shared(format!("http://{}", server.addr))
            .unwrap()
            .connect()
            .await
            .unwrap();
        idle.push(channel);
    }

    let started = Instant::now();
    let mut caller = client_from(&server, Ipv4Addr::LOCALHOST).await;
    let token = tokio::time::timeout(Duration::from_secs(5), get(&mut caller, "demo"))
        .await
        .expect("the caller is served while the attacker holds every slot")
        .unwrap();
    assert!(!token.access_token.is_empty());
    assert!(started.elapsed() < Duration::from_secs(5));
    for stream in &mut silent {
        assert!(
            closed_within(stream, Duration::from_secs(3)).await,
            "an idle connection is closed"
        );
    }
    server.stop().await;
}

#[tokio::test]
async fn one_address_cannot_take_more_than_its_connections() {
    let idp = TestIdp::start(Behaviour::issue(3600)).await;
    let yaml = format!(
        "server:\n  limits: {{ max_connections_per_peer: 2 }}\nprofiles:\n{}",
        profile("demo", &idp, "")
    );
    // No connection of the harness's own: the port starts empty.
    let server = Server::start_secured(&yaml).await;
    let mut held = Vec::new();
    for _ in 0..2 {
        held.push(TcpStream::connect(server.addr).await.unwrap());
    }
    let mut third = TcpStream::connect(server.addr).await.unwrap();
    assert!(
        closed_within(&mut third, Duration::from_secs(3)).await,
        "the address's third connection is closed at once"
    );
    let refused = get(&mut client_from(&server, Ipv4Addr::LOCALHOST).await, "demo")
        .await
        .unwrap_err();
    // The client sees its connection closed (hyper reports it as CANCELLED).
    assert!(
        matches!(refused.code(), Code::Unavailable | Code::Cancelled),
        "{refused:?}"
    );
    for stream in &mut held {
        assert!(
            !closed_within(stream, Duration::from_millis(200)).await,
            "the connections within the cap stay open"
        );
    }

    // Another address is served as if nothing happened.
    get(
        &mut client_from(&server, Ipv4Addr::new(127, 0, 0, 2)).await,
        "demo",
    )
    .await
    .expect("another address has its own cap");
    // And the first gets its place back as its connections close.
    held.pop();
    crate::support::eventually(Duration::from_secs(5), "a free place", || async {
        get(&mut client_from(&server, Ipv4Addr::LOCALHOST).await, "demo")
            .await
            .ok()
    })
    .await;
    server.stop().await;
}

#[tokio::test]
async fn a_connection_that_never_authenticates_is_closed_early() {
    let idp = TestIdp::start(Behaviour::issue(3600)).await;
    let issuer = SaIssuer::start().await;
    let yaml = format!(
        "server:\n{}  limits: {{ unauthenticated_timeout: 500ms, idle_timeout: 1h }}\nprofiles:\n{}",
        issuer.auth_yaml(),
        profile("demo", &idp, "")
    );
    let server = Server::start_secured(&yaml).await;
    let mut silent = TcpStream::connect(server.addr).await.unwrap();
    assert!(
        closed_within(&mut silent, Duration::from_secs(3)).await,
        "closed after `unauthenticated_timeout`, long before `idle_timeout`"
    );

    // A caller that authenticated keeps its connection past it: its watch goes on.
    let mut watch = server
        .client
        .clone()
        .watch_token(with_bearer(
            WatchTokenRequest {
                profile: "demo".into(),
                ..Default::default()
            },
            &issuer.token("orders", "api"),
        ))
        .await
        .unwrap()
        .into_inner();
    watch.message().await.unwrap().expect("the first token");
    // Time for the watchdog to act, were it to close this connection too.
    tokio::time::sleep(Duration::from_secs(1)).await;
    let quiet = tokio::time::timeout(Duration::from_millis(300), watch.message()).await;
    assert!(quiet.is_err(), "the stream is still open: {quiet:?}");
    server.stop().await;
}

#[tokio::test]
async fn failed_authentication_is_rate_limited_by_address() {
    let idp = TestIdp::start(Behaviour::issue(3600)).await;
    let issuer = SaIssuer::start().await;
    let yaml = format!(
        "server:\n{}  limits: {{ rate: 0.001, burst: 3 }}\nprofiles:\n{}",
        issuer.auth_yaml(),
        profile("demo", &idp, "")
    );
    let server = Server::start_secured(&yaml).await;
    let bad = || {
        with_bearer(
            GetTokenRequest {
                profile: "demo".into(),
                ..Default::default()
            },
            "not-a-token",
        )
    };
    let mut client = server.client.clone();
    for _ in 0..3 {
        let status = client.get_token(bad()).await.unwrap_err();
        assert_eq!(status.code(), Code::Unauthenticated, "{status:?}");
    }
    let status = client.get_token(bad()).await.unwrap_err();
    assert_eq!(status.code(), Code::ResourceExhausted, "{status:?}");
    assert!(status.metadata().get("retry-after").is_some(), "{status:?}");

    // A caller that authenticates has a bucket of its own, even from the same address.
    let good = with_bearer(
        GetTokenRequest {
            profile: "demo".into(),
            ..Default::default()
        },
        &issuer.token("orders", "api"),
    );
    client
        .get_token(good)
        .await
        .expect("an authenticated caller is not held to the address's failures");
    server.stop().await;
}
