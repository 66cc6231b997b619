//! Single flight, refresh ahead, stale-if-error, min_ttl and rejected_token.

use std::time::{Duration, Instant};

use futures::future::join_all;
use tokenvend::pb::{GetTokenRequest, ListProfilesRequest};
use tonic::Code;

use crate::support::{Behaviour, Server, TestIdp, config, seconds_left};

#[tokio::test]
async fn concurrent_misses_make_one_idp_request_and_hits_make_none() {
    let idp = TestIdp::start(Behaviour::slow(3600, Duration::from_millis(300))).await;
    let server = Server::start(&config("p", &idp, "")).await;

    // Five connections, a hundred streams each, all asking before the IdP has answered.
    let mut calls = Vec::new();
    for _ in 0..5 {
        let client = server.new_client().await;
        for _ in 0..100 {
            let mut client = client.clone();
            calls.push(async move { crate::support::get(&mut client, "p").await });
        }
    }
    let tokens = join_all(calls).await;
    assert_eq!(tokens.len(), 500);
    for token in &tokens {
        assert_eq!(token.as_ref().unwrap().access_token, "tok-1");
    }
    assert_eq!(idp.count(), 1, "500 cold callers make one IdP request");

    for _ in 0..100 {
        assert_eq!(server.get("p").await.unwrap().access_token, "tok-1");
    }
    assert_eq!(idp.count(), 1, "hits make no IdP request");
    server.stop().await;
}

#[tokio::test]
async fn refresh_ahead_means_no_caller_waits_and_none_gets_an_expired_token() {
    let idp_delay = Duration::from_millis(500);
    let idp = TestIdp::start(Behaviour::slow(5, idp_delay)).await;
    let server = Server::start(&config("p", &idp, "")).await;
    server.get("p").await.unwrap();

    let mut tokens = std::collections::BTreeSet::new();
    let mut slowest = Duration::ZERO;
    let started = Instant::now();
    while started.elapsed() < Duration::from_secs(15) {
        let asked = Instant::now();
        let token = server.get("p").await.unwrap();
        slowest = slowest.max(asked.elapsed());
        assert!(seconds_left(&token) > 0.0, "served an expired token");
        tokens.insert(token.access_token);
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    // A caller that waited for the IdP would take at least its 500 ms; the margin absorbs
    // a loaded CI machine.
    assert!(
        slowest < idp_delay - Duration::from_millis(150),
        "a caller waited {slowest:?}, as long as the IdP takes"
    );
    // 5 s tokens refreshed at ~75-80% of their life: a new one every ~4 s.
    assert!(tokens.len() >= 4, "tokens were refreshed: {tokens:?}");
    assert!(idp.count() <= 6, "{} IdP requests in 15 s", idp.count());
    server.stop().await;
}

#[tokio::test]
async fn stale_if_error_serves_the_cached_token_until_expiry_then_recovers() {
    let idp = TestIdp::start(Behaviour::issue(3)).await;
    let server = Server::start(&config(
        "p",
        &idp,
        "    retry: { initial: 200ms, max: 400ms }\n",
    ))
    .await;
    let first = server.get("p").await.unwrap().access_token;
    idp.set(Behaviour::html(503));

    // The background refresh at ~2.3 s fails; callers keep getting the cached token.
    let started = Instant::now();
    while started.elapsed() < Duration::from_millis(2800) {
        assert_eq!(server.get("p").await.unwrap().access_token, first);
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    assert!(idp.count() >= 2, "the refresh was tried");

    tokio::time::sleep(Duration::from_millis(400)).await;
    let status = server.get("p").await.unwrap_err();
    assert_eq!(status.code(), Code::Unavailable, "{status:?}");
    assert!(
        status.message().contains("HTTP 503"),
        "{}",
        status.message()
    );

    let profiles = server
        .client
        .clone()
        .list_profiles(ListProfilesRequest {})
        .await
        .unwrap()
        .into_inner()
        .profiles;
    assert_eq!(profiles[0].cache_state(), tokenvend::pb::CacheState::Failed);
    assert!(profiles[0].last_error.contains("HTTP 503"));

    // Retries go on in the background, a few per second at most.
    let failures_before = idp.count();
    tokio::time::sleep(Duration::from_secs(1)).await;
    let retries = idp.count() - failures_before;
    assert!((1..=6).contains(&retries), "{retries} retries in 1 s");

    idp.set(Behaviour::issue(3));
    let recovered = Instant::now();
    let token = loop {
        match server.get("p").await {
            Ok(token) => break token,
            Err(_) if recovered.elapsed() < Duration::from_secs(3) => {
                tokio::time::sleep(Duration::from_millis(50)).await;
            }
            Err(status) => panic!("did not recover: {status:?}"),
        }
    };
    assert_ne!(token.access_token, first);
    server.stop().await;
}

#[tokio::test]
async fn min_ttl_replaces_a_token_that_would_expire_too_soon() {
    let idp = TestIdp::start(Behaviour::issue(10)).await;
    let server = Server::start(&config("p", &idp, "")).await;
    let mut client = server.client.clone();
    let ask = |min_ttl: u64| GetTokenRequest {
        profile: "p".into(),
        min_ttl: Some(prost_types::Duration {
            seconds: min_ttl as i64,
            nanos: 0,
        }),
        ..Default::default()
    };

    assert_eq!(server.get("p").await.unwrap().access_token, "tok-1");
    tokio::time::sleep(Duration::from_millis(1500)).await;
    // tok-1 has ~8.5 s left.
    let token = client.get_token(ask(9)).await.unwrap().into_inner();
    assert_eq!(token.access_token, "tok-2");
    assert!(seconds_left(&token) >= 9.0);
    let token = client.get_token(ask(5)).await.unwrap().into_inner();
    assert_eq!(token.access_token, "tok-2");
    assert_eq!(idp.count(), 2);

    // No token of this profile can live an hour: refused without asking the IdP.
    let status = client.get_token(ask(3600)).await.unwrap_err();
    assert_eq!(status.code(), Code::OutOfRange, "{status:?}");
    client.get_token(ask(3600)).await.unwrap_err();
    assert_eq!(idp.count(), 2);
    server.stop().await;
}

#[tokio::test]
async fn a_rejected_token_is_replaced_once_however_many_report_it() {
    let idp = TestIdp::start(Behaviour::slow(3600, Duration::from_millis(200))).await;
    let server = Server::start(&config("p", &idp, "")).await;
    assert_eq!(server.get("p").await.unwrap().access_token, "tok-1");

    let reject = |token: &str| GetTokenRequest {
        profile: "p".into(),
        rejected_token: token.into(),
        ..Default::default()
    };
    let calls = (0..50).map(|_| {
        let mut client = server.client.clone();
        let request = reject("tok-1");
        async move { client.get_token(request).await }
    });
    for reply in join_all(calls).await {
        assert_eq!(reply.unwrap().into_inner().access_token, "tok-2");
    }
    assert_eq!(idp.count(), 2, "50 reports of one token make one refresh");

    // A late report of the old token gets the new one, with no IdP request.
    let token = server
        .client
        .clone()
        .get_token(reject("tok-1"))
        .await
        .unwrap();
    assert_eq!(token.into_inner().access_token, "tok-2");
    assert_eq!(idp.count(), 2);
    server.stop().await;
}

#[tokio::test]
async fn warm_up_of_many_profiles_is_paced_and_a_callers_miss_does_not_wait_for_it() {
    let idp = TestIdp::start(Behaviour::slow(3600, Duration::from_millis(100))).await;
    let mut config = String::from("profiles:\n");
    for i in 0..300 {
        config += &crate::support::profile(&format!("warm-{i:03}"), &idp, "    warm_up: true\n");
    }
    config += &crate::support::profile("cold", &idp, "");
    let server = Server::start(&config).await;

    // 300 warm-ups at 64 at a time take five rounds of 100 ms; a caller's miss is not queued
    // behind them.
    tokio::time::sleep(Duration::from_millis(50)).await;
    let asked = Instant::now();
    server.get("cold").await.unwrap();
    assert!(
        asked.elapsed() < Duration::from_millis(450),
        "the miss waited {:?} behind the warm-up",
        asked.elapsed()
    );

    let started = Instant::now();
    while idp.count() < 301 {
        assert!(
            started.elapsed() < Duration::from_secs(30),
            "warm-up stalled at {}",
            idp.count()
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    for i in [0, 150, 299] {
        server.get(&format!("warm-{i:03}")).await.unwrap();
    }
    assert_eq!(
        idp.count(),
        301,
        "every warm profile was served from its warm-up token"
    );
    assert!(
        (2..=65).contains(&idp.peak_concurrency()),
        "background fetches at once: {} (64 permits, and the caller's miss)",
        idp.peak_concurrency()
    );
    server.stop().await;
}
