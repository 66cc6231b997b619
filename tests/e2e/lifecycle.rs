//! WatchToken, ListProfiles and graceful shutdown.

use std::time::Duration;

use tokenvend::pb::{CacheState, ListProfilesRequest, WatchTokenRequest};
use tokio::time::timeout;

use crate::support::{Behaviour, Server, TestIdp, idp::CLIENT_SECRET, profile};

#[tokio::test]
async fn watch_token_streams_the_current_token_then_each_refresh() {
    let idp = TestIdp::start(Behaviour::issue(2)).await;
    let server = Server::start(&format!("profiles:\n{}", profile("p", &idp, ""))).await;
    let mut stream = server
        .client
        .clone()
        .watch_token(WatchTokenRequest {
            profile: "p".into(),
            ..Default::default()
        })
        .await
        .unwrap()
        .into_inner();
    let first = stream.message().await.unwrap().unwrap();
    assert_eq!(first.access_token, "tok-1");
    let second = timeout(Duration::from_secs(3), stream.message())
        .await
        .expect("a refreshed token arrives")
        .unwrap()
        .unwrap();
    assert_eq!(second.access_token, "tok-2");
    server.stop().await;
}

#[tokio::test]
async fn list_profiles_shows_state_and_never_a_secret_or_token() {
    let idp = TestIdp::start(Behaviour::issue(3600)).await;
    let yaml = format!(
        "profiles:\n{}{}",
        profile("used", &idp, "    scopes: [read]\n"),
        profile("idle", &idp, "")
    );
    let server = Server::start(&yaml).await;
    let token = server.get("used").await.unwrap();
    let reply = server
        .client
        .clone()
        .list_profiles(ListProfilesRequest {})
        .await
        .unwrap()
        .into_inner();
    let names: Vec<_> = reply.profiles.iter().map(|p| p.name.as_str()).collect();
    assert_eq!(names, ["idle", "used"]);
    let used = &reply.profiles[1];
    assert_eq!(used.grant, "client_credentials");
    assert_eq!(used.token_endpoint_host, "127.0.0.1");
    assert_eq!(used.scopes, ["read"]);
    assert_eq!(used.cache_state(), CacheState::Valid);
    assert!(used.expires_at.is_some() && used.last_refresh.is_some());
    assert_eq!(reply.profiles[0].cache_state(), CacheState::Empty);

    let printed = format!("{reply:?}");
    assert!(!printed.contains(&token.access_token));
    assert!(!printed.contains(CLIENT_SECRET));
    server.stop().await;
}

#[tokio::test]
async fn shutdown_drains_in_flight_calls_and_ends_watch_streams() {
    let idp = TestIdp::start(Behaviour::issue(3600)).await;
    let yaml = format!(
        "profiles:\n{}{}",
        profile("watched", &idp, ""),
        profile("slow", &idp, "")
    );
    let mut server = Server::start(&yaml).await;
    let mut stream = server
        .client
        .clone()
        .watch_token(WatchTokenRequest {
            profile: "watched".into(),
            ..Default::default()
        })
        .await
        .unwrap()
        .into_inner();
    stream.message().await.unwrap().unwrap();

    idp.set(Behaviour::slow(3600, Duration::from_millis(1500)));
    let mut client = server.client.clone();
    let in_flight = tokio::spawn(async move { crate::support::get(&mut client, "slow").await });
    tokio::time::sleep(Duration::from_millis(300)).await;
    server.signal_shutdown();
    tokio::time::sleep(Duration::from_millis(200)).await;

    let readyz = reqwest::get(format!("http://{}/readyz", server.admin_addr))
        .await
        .unwrap();
    assert_eq!(readyz.status(), 503, "not ready while draining");
    let ended = timeout(Duration::from_secs(2), stream.message())
        .await
        .expect("the watch stream ends on shutdown");
    // UNAVAILABLE, so that the client watches again, on another replica.
    let status = ended.expect_err("the stream ends with a status to reconnect on");
    assert_eq!(status.code(), tonic::Code::Unavailable, "{status:?}");
    assert!(matches!(stream.message().await, Ok(None)));

    let token = in_flight
        .await
        .unwrap()
        .expect("the in-flight call finishes");
    assert_eq!(token.access_token, "tok-2");
    server.stop().await;
}
