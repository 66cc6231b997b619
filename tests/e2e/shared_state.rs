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
async fn a_rejected_token_is_replaced_once_across_replicas() {
    let Some(redis) = RedisServer::start() else {
        return;
    };
    let idp = TestIdp::start(Behaviour::issue(3600)).await;
    let servers = replicas(2, &shared_config(&redis, &idp)).await;
    let first = servers[0].get("p").await.unwrap().access_token;
    assert_eq!(servers[1].get("p").await.unwrap().access_token, first);
    assert_eq!(idp.count(), 1);

    let reject = |server: &Server, token: String| {
        let mut client = server.client.clone();
        async move {
            client
                .get_token(tokenvend::pb::GetTokenRequest {
                    profile: "p".into(),
                    rejected_token: token,
                    ..Default::default()
                })
                .await
                .unwrap()
                .into_inner()
                .access_token
        }
    };
    // The shared copy of the rejected token is not handed back...
    let second = reject(&servers[0], first.clone()).await;
    assert_ne!(second, first);
    assert_eq!(idp.count(), 2);
    // ...and the other replica, told of the same rejection, takes the newer shared one.
    assert_eq!(reject(&servers[1], first).await, second);
    assert_eq!(idp.count(), 2, "one replacement for both replicas");
    for server in servers {
        server.stop().await;
    }
}

#[tokio::test]
async fn a_replica_that_never_held_a_rejected_token_does_not_hand_back_the_shared_copy() {
    let Some(redis) = RedisServer::start() else {
        return;
    };
    let idp = TestIdp::start(Behaviour::issue(3600)).await;
    let servers = replicas(2, &shared_config(&redis, &idp)).await;
    let first = servers[0].get("p").await.unwrap().access_token;
    // The second replica has no token of its own; the store holds `first`, which the
    // caller reports rejected.
    let fresh = servers[1].reject("p", &first).await.unwrap().access_token;
    assert_ne!(
        fresh, first,
        "the rejected token came back from the shared store"
    );
    assert_eq!(idp.count(), 2);
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

/// A refresh-token provider like Jadu: each refresh rotates the refresh token, and
/// presenting a spent one revokes the chain (reuse detection).
struct RotatingIdp {
    addr: std::net::SocketAddr,
    state: std::sync::Arc<Rotation>,
    task: tokio::task::JoinHandle<()>,
}

#[derive(Default)]
struct Rotation {
    live: std::sync::Mutex<String>,
    refreshes: std::sync::atomic::AtomicUsize,
    reused: std::sync::atomic::AtomicBool,
}

impl RotatingIdp {
    async fn start(lifetime: u64) -> Self {
        use axum::{Form, Json, extract::State, http::StatusCode, response::IntoResponse};
        use std::{collections::HashMap, sync::atomic::Ordering};

        let state = std::sync::Arc::new(Rotation::default());
        *state.live.lock().unwrap() = "rt-0".into();
        let token = move |State(state): State<std::sync::Arc<Rotation>>,
                          Form(form): Form<HashMap<String, String>>| async move {
            let mut live = state.live.lock().unwrap();
            if state.reused.load(Ordering::SeqCst) || form.get("refresh_token") != Some(&*live) {
                state.reused.store(true, Ordering::SeqCst);
                let body = serde_json::json!({ "error": "invalid_grant", "error_description": "Refresh token reused" });
                return (StatusCode::BAD_REQUEST, Json(body)).into_response();
            }
            let n = state.refreshes.fetch_add(1, Ordering::SeqCst) + 1;
            *live = format!("rt-{n}");
            Json(serde_json::json!({
                "access_token": format!("at-{n}"),
                "expires_in": lifetime,
                "token_type": "bearer",
                "refresh_token": format!("rt-{n}"),
            }))
            .into_response()
        };
        let app = axum::Router::new()
            .route("/token", axum::routing::post(token))
            .with_state(state.clone());
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let task = tokio::spawn(async move { axum::serve(listener, app).await.unwrap() });
        Self { addr, state, task }
    }

    fn refreshes(&self) -> usize {
        self.state
            .refreshes
            .load(std::sync::atomic::Ordering::SeqCst)
    }

    fn reused(&self) -> bool {
        self.state.reused.load(std::sync::atomic::Ordering::SeqCst)
    }
}

impl Drop for RotatingIdp {
    fn drop(&mut self) {
        self.task.abort();
    }
}

#[tokio::test]
async fn replicas_rotate_one_refresh_token_chain_without_reuse_while_replicas_die() {
    let Some(redis) = RedisServer::start() else {
        return;
    };
    let idp = RotatingIdp::start(3).await;
    let yaml = format!(
        "server:\n  store:\n    redis:\n      url: {url}\n      key_prefix: tv\n      encryption_keys:\n        - {{ id: k1, key: {{ value: \"{KEY}\" }} }}\nprofiles:\n  jadu:\n    token_url: http://{addr}/token\n    grant: refresh_token\n    client_id: c\n    client_secret: {{ value: s }}\n    refresh_token: {{ value: rt-0 }}\n",
        url = redis.url(),
        addr = idp.addr,
    );
    let mut servers = replicas(3, &yaml).await;

    // 14 s of 3 s tokens, a replica killed (without a graceful stop) and replaced every
    // few seconds, callers on every replica throughout.
    let started = Instant::now();
    let mut next_kill = Duration::from_secs(3);
    let mut victim = 0;
    while started.elapsed() < Duration::from_secs(14) {
        if started.elapsed() >= next_kill {
            let dead = std::mem::replace(&mut servers[victim], Server::start(&yaml).await);
            dead.abort().await;
            victim = (victim + 1) % servers.len();
            next_kill += Duration::from_millis(2500 + fastrand_ms());
        }
        for server in &servers {
            let token = server
                .get("jadu")
                .await
                .unwrap_or_else(|status| panic!("calls keep succeeding: {status:?}"));
            assert!(seconds_left(&token) > 0.0, "served an expired token");
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    assert!(
        !idp.reused(),
        "a spent refresh token was presented: the chain forked"
    );
    let refreshes = idp.refreshes();
    // One at start and about one per 2.4 s window; replicas each rotating would be ~17.
    assert!(
        (4..=9).contains(&refreshes),
        "{refreshes} refreshes in 14 s of 3 s tokens across 3 replicas"
    );
    // The chain in Redis is sealed: the live refresh token is not readable in it.
    let chain = redis.command(&["HGET", "tv:jadu:chain", "value"]).unwrap();
    assert!(chain.starts_with("v1:k1:") && !chain.contains("rt-"));
    for server in servers {
        server.stop().await;
    }
}

#[tokio::test]
async fn without_redis_a_refresh_token_profile_serves_its_token_but_does_not_rotate() {
    let Some(mut redis) = RedisServer::start() else {
        return;
    };
    let idp = RotatingIdp::start(3).await;
    let yaml = format!(
        "server:\n  store:\n    redis:\n      url: {url}\n      encryption_keys:\n        - {{ id: k1, key: {{ value: \"{KEY}\" }} }}\nprofiles:\n  jadu:\n    token_url: http://{addr}/token\n    grant: refresh_token\n    client_id: c\n    client_secret: {{ value: s }}\n    refresh_token: {{ value: rt-0 }}\n    retry: {{ initial: 100ms, max: 200ms }}\n",
        url = redis.url(),
        addr = idp.addr,
    );
    let server = Server::start(&yaml).await;
    let token = server.get("jadu").await.unwrap();
    assert_eq!(idp.refreshes(), 1);

    redis.kill();
    // The cached token is served while it is valid...
    assert_eq!(
        server.get("jadu").await.unwrap().access_token,
        token.access_token
    );
    tokio::time::sleep(Duration::from_secs_f64(seconds_left(&token) + 0.2)).await;
    // ...and then the caller is told the store is down, rather than the chain forked.
    let status = server.get("jadu").await.unwrap_err();
    assert_eq!(status.code(), tonic::Code::Unavailable, "{status:?}");
    assert!(status.message().contains("shared store"), "{status:?}");
    assert_eq!(idp.refreshes(), 1, "no rotation without the store");
    assert!(!idp.reused());
    server.stop().await;
}

/// Up to a second, varied per run without a random-number dependency.
fn fastrand_ms() -> u64 {
    u64::from(
        std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .unwrap()
            .subsec_millis(),
    )
}
