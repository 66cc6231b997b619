//! Several replicas sharing one Redis (`server.store.redis`) behave like one tokenvend:
//! one provider request per profile per refresh, tokens at rest encrypted, and each
//! replica working alone while Redis is down.

use std::time::{Duration, Instant};

use futures::future::join_all;

use crate::support::{Behaviour, Server, TestIdp, profile, redis::RedisServer, seconds_left};

/// base64 of 32 bytes of 0x07: a fixed test key.
const KEY: &str = "BwcHBwcHBwcHBwcHBwcHBwcHBwcHBwcHBwcHBwcHBwc=";

fn shared_config(redis: &RedisServer, idp: &TestIdp) -> String {
    format!(
        "server:\n  store:\n    redis:\n      url: {url}\n      key_prefix: tv\n      encryption_keys:\n        - {{ id: k1, key: {{ value: \"{KEY}\" }} }}\nprofiles:\n{profile}",
        url = redis.url(),
        profile = profile("p", idp, ""),
    )
}

async fn replicas(n: usize, yaml: &str) -> Vec<Server> {
    join_all((0..n).map(|_| Server::start(yaml))).await
}

#[tokio::test]
async fn three_replicas_with_cold_callers_make_one_idp_request() {
    let Some(redis) = RedisServer::start() else {
        return;
    };
    let idp = TestIdp::start(Behaviour::slow(3600, Duration::from_millis(300))).await;
    let servers = replicas(3, &shared_config(&redis, &idp)).await;

    // 300 callers per replica, on three connections each, all before the IdP answers.
    let mut calls = Vec::new();
    for server in &servers {
        for _ in 0..3 {
            let client = server.new_client().await;
            for _ in 0..100 {
                let mut client = client.clone();
                calls.push(async move { crate::support::get(&mut client, "p").await });
            }
        }
    }
    let tokens = join_all(calls).await;
    assert_eq!(tokens.len(), 900);
    for token in &tokens {
        assert_eq!(token.as_ref().unwrap().access_token, "tok-1");
    }
    assert_eq!(
        idp.count(),
        1,
        "900 cold callers on 3 replicas make one IdP request"
    );

    // What Redis holds is sealed: the token is not in it.
    let stored = redis.command(&["GET", "tv:p:token"]).unwrap();
    assert!(
        stored.starts_with("v1:k1:"),
        "a sealed value, not {stored:.10}"
    );
    assert!(!stored.contains("tok-1"));
    assert_eq!(
        redis.command(&["EXISTS", "tv:p:lock"]).as_deref(),
        Some(":0"),
        "lock released"
    );
    for server in servers {
        server.stop().await;
    }
}

#[tokio::test]
async fn replicas_refresh_about_once_per_window_between_them() {
    let Some(redis) = RedisServer::start() else {
        return;
    };
    // 4 s tokens: refreshed at ~3.2 s.
    let idp = TestIdp::start(Behaviour::issue(4)).await;
    let servers = replicas(3, &shared_config(&redis, &idp)).await;

    let started = Instant::now();
    let mut tokens = std::collections::BTreeSet::new();
    while started.elapsed() < Duration::from_secs(13) {
        for server in &servers {
            let token = server.get("p").await.unwrap();
            assert!(seconds_left(&token) > 0.0, "served an expired token");
            tokens.insert(token.access_token);
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    // One at start and about four refreshes; three replicas on their own would make 15.
    let count = idp.count();
    assert!(
        (4..=6).contains(&count),
        "{count} IdP requests in 13 s of 4 s tokens across 3 replicas"
    );
    assert_eq!(tokens.len(), count, "every token obtained was served");
    for server in servers {
        server.stop().await;
    }
}

#[tokio::test]
async fn without_redis_each_replica_fetches_alone_and_shares_again_when_it_returns() {
    let Some(mut redis) = RedisServer::start() else {
        return;
    };
    let idp = TestIdp::start(Behaviour::issue(3)).await;
    let servers = replicas(3, &shared_config(&redis, &idp)).await;
    let run = async |seconds: u64| {
        let started = Instant::now();
        while started.elapsed() < Duration::from_secs(seconds) {
            for server in &servers {
                let token = server.get("p").await.expect("calls keep succeeding");
                assert!(seconds_left(&token) > 0.0, "served an expired token");
            }
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    };
    run(2).await;
    assert_eq!(idp.count(), 1);

    redis.kill();
    let before = idp.count();
    run(6).await;
    let alone = idp.count() - before;
    // Each replica refreshes on its own: about 2.5 windows × 3 replicas.
    assert!(alone >= 4, "{alone} IdP requests while Redis was down");

    redis.restart();
    run(4).await; // converge: every replica's next refresh goes through Redis again
    let before = idp.count();
    run(7).await;
    let shared = idp.count() - before;
    assert!(
        shared <= 4,
        "{shared} IdP requests in 7 s of 3 s tokens once Redis is back (3 replicas alone: ~9)"
    );
    for server in servers {
        server.stop().await;
    }
}
