//! The shared store survives its own failover: a refresh token the provider rotated is
//! not served on until a replica has its successor, so a primary that dies right after a
//! rotation, before passing it on, takes no link of the chain with it. tokenvend finds the
//! promoted replica through Sentinel.
//!
//! Redis replicates asynchronously. "Right after a rotation" is made certain rather than
//! raced: the replica is stopped and cut off from the primary before the rotation, so the
//! primary alone receives the rotated link, and dies with it.

use std::{collections::HashSet, sync::Mutex, time::Duration};

use crate::support::{
    Behaviour, Server, TestIdp, eventually,
    redis::{RedisServer, Sentinels},
};

/// base64 of 32 bytes of 0x07: a fixed test key.
const KEY: &str = "BwcHBwcHBwcHBwcHBwcHBwcHBwcHBwcHBwcHBwcHBwc=";

/// A refresh-token profile `p` over the shared store given by `store` (`url: ...` or
/// `sentinel: ...`, with what else it needs).
fn config(idp: &TestIdp, store: &str) -> String {
    format!(
        "server:\n  store:\n    redis:\n{store}      key_prefix: tv\n      ack_timeout: 200ms\n      encryption_keys:\n        - {{ id: k1, key: {{ value: \"{KEY}\" }} }}\nprofiles:\n  p:\n    token_url: {url}\n    grant: refresh_token\n    client_id: c\n    client_secret: {{ value: s }}\n    refresh_token: {{ value: rt-0 }}\n    retry: {{ initial: 50ms, max: 200ms }}\n    rejected_token_min_interval: 0s\n",
        url = idp.token_url(),
    )
}

/// The refresh tokens the IdP was sent, in order.
fn sent(idp: &TestIdp) -> Vec<String> {
    idp.requests()
        .iter()
        .filter_map(|r| r.form.get("refresh_token").cloned())
        .collect()
}

/// Rejects the token `server` serves until it serves `want`: a rejected token is
/// replaced by the one in the shared store if that is another, else by a rotation.
/// Calls that fail (the store moving) are tried again; a spent refresh token sent to the
/// provider fails the test at once.
async fn rotate_to(server: &Server, idp: &TestIdp, last: &str, want: &str) {
    let last = Mutex::new(last.to_owned());
    eventually(
        Duration::from_secs(15),
        &format!("{want} to be served"),
        || async {
            let rejected = last.lock().unwrap().clone();
            let served = server.reject("p", &rejected).await;
            let sent = sent(idp);
            let unique: HashSet<_> = sent.iter().collect();
            assert_eq!(
                unique.len(),
                sent.len(),
                "a spent refresh token was sent to the provider: {sent:?}"
            );
            let token = served.ok()?.access_token;
            if token == want {
                return Some(());
            }
            *last.lock().unwrap() = token;
            None
        },
    )
    .await;
}

#[tokio::test]
async fn a_failover_right_after_a_rotation_loses_no_refresh_token() {
    let Some(mut primary) = RedisServer::start() else {
        return;
    };
    // The replica first: the sentinels learn of replicas from the primary, at once when
    // they start and then only every ten seconds.
    let replica = primary.replica();
    let Some(sentinels) = Sentinels::start("tv", &primary, 3) else {
        return;
    };
    eventually(
        Duration::from_secs(10),
        "the sentinels to know the replica and each other",
        || async { sentinels.ready(1).then_some(()) },
    )
    .await;
    let idp = TestIdp::start(Behaviour::Rotate {
        lifetime: 3600,
        delay: Duration::ZERO,
    })
    .await;
    let yaml = config(
        &idp,
        &format!(
            "      sentinel:\n        master: tv\n        nodes: {}\n",
            sentinels.nodes()
        ),
    );
    let server = Server::start(&yaml).await;

    // A rotation the replica receives.
    assert_eq!(server.get("p").await.unwrap().access_token, "tok-1");

    // The replica falls behind: stopped, and its replication link cut, so that rt-2
    // reaches the primary alone.
    replica.pause();
    assert_eq!(
        primary
            .command(&["CLIENT", "KILL", "TYPE", "replica"])
            .as_deref(),
        Some(":1")
    );
    let second = server.reject("p", "tok-1").await.unwrap();
    assert_eq!(
        second.access_token, "tok-2",
        "the access token is served although no replica has its refresh token"
    );

    // The primary dies with rt-2; Sentinel promotes the replica, which has only rt-1
    // (spent). The old primary comes back empty, as a replica of the new one.
    primary.kill();
    replica.resume();
    eventually(
        Duration::from_secs(15),
        "Sentinel to promote the replica",
        || async { (sentinels.primary() == Some(replica.port)).then_some(()) },
    )
    .await;
    primary.restart_as_replica_of(replica.port);

    // The next rotation, through the new primary, sends rt-2: tokenvend kept it in memory
    // because no replica acknowledged it, and stores it now.
    rotate_to(&server, &idp, "tok-2", "tok-3").await;
    assert_eq!(
        sent(&idp),
        ["rt-0", "rt-1", "rt-2"],
        "the provider was never sent a spent refresh token"
    );
    server.stop().await;

    // The chain the new primary holds is the newest: a server with nothing in memory
    // continues it.
    let fresh = Server::start(&yaml).await;
    rotate_to(&fresh, &idp, "tok-3", "tok-4").await;
    assert_eq!(sent(&idp), ["rt-0", "rt-1", "rt-2", "rt-3"]);
    fresh.stop().await;
}

#[tokio::test]
async fn a_chain_write_no_replica_acknowledged_is_taken_back_and_kept_in_memory() {
    let Some(primary) = RedisServer::start() else {
        return;
    };
    let idp = TestIdp::start(Behaviour::Rotate {
        lifetime: 3600,
        delay: Duration::ZERO,
    })
    .await;
    let yaml = config(
        &idp,
        &format!("      url: {}\n      replicas_to_ack: 1\n", primary.url()),
    );
    let server = Server::start(&yaml).await;

    // No replica: the rotated link is not stored (the primary had it, and gave it back),
    // yet the access token is served, and the next refresh sends rt-1 from memory.
    assert_eq!(server.get("p").await.unwrap().access_token, "tok-1");
    assert_eq!(
        primary.command(&["HGET", "tv:p:chain", "value"]).as_deref(),
        Some("$-1"),
        "a link no replica acknowledged was taken back"
    );
    assert_eq!(
        server.reject("p", "tok-1").await.unwrap().access_token,
        "tok-2"
    );

    // A replica arrives: the kept link is stored at last, and the chain goes on from it.
    let _replica = primary.replica();
    rotate_to(&server, &idp, "tok-2", "tok-3").await;
    assert_eq!(sent(&idp), ["rt-0", "rt-1", "rt-2"]);
    server.stop().await;

    let fresh = Server::start(&yaml).await;
    rotate_to(&fresh, &idp, "tok-3", "tok-4").await;
    assert_eq!(sent(&idp), ["rt-0", "rt-1", "rt-2", "rt-3"]);
    fresh.stop().await;
}

#[tokio::test]
async fn a_sentinel_password_that_cannot_be_read_is_named_before_serving() {
    let idp = TestIdp::start(Behaviour::issue(3600)).await;
    let yaml = config(
        &idp,
        "      sentinel:\n        master: tv\n        nodes: [\"127.0.0.1:1\"]\n        password: { env: TOKENVEND_TEST_UNSET_SENTINEL_PASSWORD }\n",
    );
    let config = tokenvend_server::Config::from_yaml(&yaml).unwrap();
    let error = tokenvend_server::serve(
        tokenvend_server::Listeners {
            grpc: tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap(),
            admin: None,
            forward_auth: None,
        },
        config,
        std::future::pending(),
    )
    .await
    .expect_err("the configuration must be refused");
    // Found by the build `tokenvend check` runs too, not only when connecting.
    assert!(
        matches!(error, tokenvend_server::server::ServerError::Config(_)),
        "{error:?}"
    );
    assert!(
        error
            .to_string()
            .contains("server.store.redis.sentinel.password"),
        "{error}"
    );
}
