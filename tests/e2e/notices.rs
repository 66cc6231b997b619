//! Webhook notices (`server.notices`): a profile that needs a person, or keeps failing,
//! is announced once per episode to a real receiver on loopback, as a signed CloudEvent;
//! retried while the receiver fails; sent by one replica of several sharing a Redis.

use std::time::{Duration, SystemTime, UNIX_EPOCH};

use base64::{Engine as _, engine::general_purpose::STANDARD};
use tokenvend::pb::{CacheState, ListProfilesRequest};

use crate::support::{
    Behaviour, Server, TestIdp,
    idp::{CLIENT_ID, CLIENT_SECRET},
    profile,
    redis::RedisServer,
    webhook::{Received, Receiver},
};

/// The HMAC key, and the secret as configured: Standard Webhooks' `whsec_` form.
const KEY: [u8; 32] = *b"notice-signing-key-for-the-tests";
fn secret() -> String {
    format!("whsec_{}", STANDARD.encode(KEY))
}
/// Stands for a credential a receiver puts in its URL.
const URL_TOKEN: &str = "url-token-4f1c9a";
/// A refresh token the test provider refuses (it only takes `rt-0`).
const REFUSED_SEED: &str = "rt-refused-seed-83b2";

fn notices(receiver: &Receiver, failing_after: &str) -> String {
    format!(
        "  notices:\n    webhook: {}\n    secret: {{ value: \"{}\" }}\n    failing_after: {failing_after}\n    timeout: 2s\n    source: /tokenvend/test\n",
        receiver.url(URL_TOKEN),
        secret()
    )
}

/// A refresh-token profile whose seed the provider refuses (`invalid_grant`).
fn refused_profile(name: &str, idp: &TestIdp) -> String {
    format!(
        "  {name}:\n    token_url: {}\n    grant: refresh_token\n    client_id: {CLIENT_ID}\n    client_secret: {{ value: \"{CLIENT_SECRET}\" }}\n    refresh_token: {{ value: {REFUSED_SEED} }}\n    retry: {{ initial: 100ms, max: 200ms }}\n    timeout: 1s\n",
        idp.token_url()
    )
}

fn rotating() -> Behaviour {
    Behaviour::Rotate {
        lifetime: 3600,
        delay: Duration::ZERO,
    }
}

/// Checks what every notice must be: signed with the shared key, CloudEvents JSON,
/// carrying nothing secret.
fn check_notice(notice: &Received) {
    assert_eq!(
        notice.header("content-type"),
        "application/cloudevents+json"
    );
    assert!(notice.signed_by(&KEY), "the signature verifies");
    assert!(!notice.signed_by(b"another key of the same length!!"));
    let timestamp: u64 = notice.header("webhook-timestamp").parse().unwrap();
    let now = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .unwrap()
        .as_secs();
    assert!(now.abs_diff(timestamp) < 60, "{timestamp} is now");
    let body = notice.json();
    assert_eq!(body["specversion"], "1.0");
    assert_eq!(body["id"].as_str().unwrap(), notice.header("webhook-id"));
    assert_eq!(body["source"], "/tokenvend/test");
    let text = String::from_utf8_lossy(&notice.body);
    for secret in [
        REFUSED_SEED,
        CLIENT_SECRET,
        &secret(),
        &STANDARD.encode(KEY),
        URL_TOKEN,
    ] {
        assert!(!text.contains(secret), "`{secret}` in the notice: {text}");
    }
}

fn notices_total(metrics: &crate::support::metrics::Metrics, kind: &str, outcome: &str) -> f64 {
    metrics.value(
        "tokenvend_notices_total",
        &[("type", kind), ("outcome", outcome)],
    )
}

#[tokio::test]
async fn a_refused_refresh_token_is_announced_once_signed_and_without_secrets() {
    let receiver = Receiver::start().await;
    let idp = TestIdp::start(rotating()).await;
    let dir = tempfile::tempdir().unwrap();
    let server = Server::start(&format!(
        "server:\n  state_dir: {}\n{}profiles:\n{}",
        dir.path().display(),
        notices(&receiver, "1h"),
        refused_profile("jadu", &idp),
    ))
    .await;

    // The profile warms up by itself, is refused, and the scan notices it.
    let got = receiver
        .wait_for("needs_reauthorization", 1, Duration::from_secs(15))
        .await;
    let notice = &got[0];
    check_notice(notice);
    let body = notice.json();
    assert_eq!(
        body["type"],
        "dev.tokenvend.profile.needs_reauthorization.v1"
    );
    assert_eq!(body["subject"], "jadu");
    assert_eq!(body["datacontenttype"], "application/json");
    let data = &body["data"];
    assert_eq!(data["profile"], "jadu");
    assert_eq!(data["state"], "needs_authorization");
    assert!(data["since"].as_str().unwrap().ends_with('Z'), "{data}");
    let error = data["last_error"].as_str().unwrap();
    assert!(error.contains("re-authorization is needed"), "{error}");

    let profiles = server
        .client
        .clone()
        .list_profiles(ListProfilesRequest {})
        .await
        .unwrap()
        .into_inner()
        .profiles;
    assert_eq!(profiles[0].cache_state(), CacheState::NeedsAuthorization);

    // Retries go on (and keep failing); the episode is announced once.
    tokio::time::sleep(Duration::from_secs(6)).await;
    assert_eq!(receiver.received().len(), 1, "one notice per episode");
    let metrics = server.metrics().await;
    assert_eq!(
        notices_total(&metrics, "needs_reauthorization", "sent"),
        1.0
    );
    server.stop().await;
}

#[tokio::test]
async fn a_profile_failing_for_failing_after_is_announced_once_per_episode() {
    let receiver = Receiver::start().await;
    let idp = TestIdp::start(Behaviour::html(503)).await;
    let server = Server::start(&format!(
        "server:\n{}profiles:\n{}",
        notices(&receiver, "2s"),
        profile("p", &idp, "    retry: { initial: 100ms, max: 200ms }\n"),
    ))
    .await;
    server.get("p").await.unwrap_err();
    let asked = SystemTime::now();

    let got = receiver
        .wait_for("failing", 1, Duration::from_secs(10))
        .await;
    assert!(
        asked.elapsed().unwrap() >= Duration::from_millis(1900),
        "not before failing_after"
    );
    check_notice(&got[0]);
    let first = got[0].json();
    assert_eq!(first["type"], "dev.tokenvend.profile.failing.v1");
    assert_eq!(first["data"]["state"], "failed");
    assert!(
        first["data"]["last_error"]
            .as_str()
            .unwrap()
            .contains("HTTP 503")
    );
    tokio::time::sleep(Duration::from_secs(1)).await;
    assert_eq!(receiver.received().len(), 1, "once per episode");

    // Recovery (a success), then a new run of failures: a new episode, a new notice.
    idp.set(Behaviour::issue(3));
    crate::support::eventually(Duration::from_secs(5), "recovery", || async {
        server.get("p").await.ok()
    })
    .await;
    idp.set(Behaviour::html(503));
    // The 3 s token's background refresh fails at ~2.3 s; 2 s later it is announced.
    let got = receiver
        .wait_for("failing", 2, Duration::from_secs(15))
        .await;
    let second = got[1].json();
    check_notice(&got[1]);
    assert_ne!(second["id"], first["id"]);
    assert!(second["data"]["since"].as_str() > first["data"]["since"].as_str());
    tokio::time::sleep(Duration::from_secs(1)).await;
    assert_eq!(receiver.received().len(), 2);
    let metrics = server.metrics().await;
    assert_eq!(notices_total(&metrics, "failing", "sent"), 2.0);
    server.stop().await;
}

#[tokio::test]
async fn a_failing_receiver_is_retried_and_a_refusing_one_is_not() {
    let receiver = Receiver::start().await;
    receiver.answer(&[500, 503]);
    let idp = TestIdp::start(Behaviour::html(503)).await;
    let server = Server::start(&format!(
        "server:\n{}profiles:\n{}",
        notices(&receiver, "1s"),
        profile("p", &idp, "    retry: { initial: 100ms, max: 200ms }\n"),
    ))
    .await;
    server.get("p").await.unwrap_err();

    // Two failures, then the third attempt is taken: the same notice each time.
    let got = receiver
        .wait_for("failing", 3, Duration::from_secs(15))
        .await;
    for attempt in &got {
        check_notice(attempt);
        assert_eq!(attempt.header("webhook-id"), got[0].header("webhook-id"));
        assert_eq!(attempt.body, got[0].body);
    }
    tokio::time::sleep(Duration::from_secs(2)).await;
    assert_eq!(receiver.received().len(), 3, "delivered once, not again");
    let metrics = server.metrics().await;
    assert_eq!(notices_total(&metrics, "failing", "sent"), 1.0);
    assert_eq!(notices_total(&metrics, "failing", "failed"), 0.0);
    server.stop().await;

    // A 4xx other than 429 says the receiver will never take it: no retry.
    let receiver = Receiver::start().await;
    receiver.answer(&[400]);
    let server = Server::start(&format!(
        "server:\n{}profiles:\n{}",
        notices(&receiver, "1s"),
        profile("p", &idp, "    retry: { initial: 100ms, max: 200ms }\n"),
    ))
    .await;
    server.get("p").await.unwrap_err();
    receiver
        .wait_for("failing", 1, Duration::from_secs(10))
        .await;
    tokio::time::sleep(Duration::from_secs(2)).await;
    assert_eq!(receiver.received().len(), 1, "a refusal is not retried");
    let metrics = server.metrics().await;
    assert_eq!(notices_total(&metrics, "failing", "failed"), 1.0);
    assert_eq!(notices_total(&metrics, "failing", "sent"), 0.0);
    server.stop().await;
}

#[tokio::test]
async fn replicas_sharing_a_redis_send_each_notice_once() {
    let Some(redis) = RedisServer::start() else {
        return;
    };
    let receiver = Receiver::start().await;
    let down = TestIdp::start(Behaviour::html(503)).await;
    let refusing = TestIdp::start(rotating()).await;
    let yaml = format!(
        "server:\n  store:\n    redis:\n      url: {}\n      key_prefix: tv\n      encryption_keys:\n        - {{ id: k1, key: {{ value: \"BwcHBwcHBwcHBwcHBwcHBwcHBwcHBwcHBwcHBwcHBwc=\" }} }}\n{}profiles:\n{}{}",
        redis.url(),
        notices(&receiver, "2s"),
        profile("down", &down, "    retry: { initial: 100ms, max: 200ms }\n"),
        refused_profile("jadu", &refusing),
    );
    let servers = futures::future::join_all((0..2).map(|_| Server::start(&yaml))).await;
    for server in &servers {
        server.get("down").await.unwrap_err();
    }

    receiver
        .wait_for("needs_reauthorization", 1, Duration::from_secs(15))
        .await;
    receiver
        .wait_for("failing", 1, Duration::from_secs(15))
        .await;
    // Both replicas see both episodes (the second replica tries `jadu` once the lock
    // the first held has expired), and scan them past failing_after.
    for server in &servers {
        crate::support::eventually(Duration::from_secs(10), "both episodes seen", || async {
            let profiles = server
                .client
                .clone()
                .list_profiles(ListProfilesRequest {})
                .await
                .unwrap()
                .into_inner()
                .profiles;
            let states: Vec<_> = profiles.iter().map(|p| p.cache_state()).collect();
            (states == [CacheState::Failed, CacheState::NeedsAuthorization]).then_some(())
        })
        .await;
    }
    tokio::time::sleep(Duration::from_secs(3)).await;
    assert_eq!(receiver.of("needs_reauthorization").len(), 1);
    // `jadu`'s episode was announced as needing a person, not as failing too.
    let failing = receiver.of("failing");
    assert_eq!(failing.len(), 1);
    assert_eq!(failing[0].json()["subject"], "down");
    for notice in receiver.received() {
        check_notice(&notice);
    }

    let mut total = std::collections::HashMap::new();
    for server in &servers {
        let metrics = server.metrics().await;
        for kind in ["needs_reauthorization", "failing"] {
            for outcome in ["sent", "skipped_other_replica", "failed"] {
                *total.entry((kind, outcome)).or_insert(0.0) +=
                    notices_total(&metrics, kind, outcome);
            }
        }
    }
    for kind in ["needs_reauthorization", "failing"] {
        assert_eq!(total[&(kind, "sent")], 1.0, "{kind}: {total:?}");
        assert_eq!(
            total[&(kind, "skipped_other_replica")],
            1.0,
            "{kind}: {total:?}"
        );
        assert_eq!(total[&(kind, "failed")], 0.0, "{kind}: {total:?}");
    }
    // The claim names the chain's version: every replica read the same one.
    // (version 1: the refusal of the seed was the chain's first write).
    assert_eq!(
        redis
            .command(&["EXISTS", "tv:notice:jadu:needs_reauthorization:v1"])
            .as_deref(),
        Some(":1")
    );
    for server in servers {
        server.stop().await;
    }
}

#[tokio::test]
async fn a_reload_turns_notices_on_and_points_them_elsewhere() {
    let first = Receiver::start().await;
    let second = Receiver::start().await;
    let idp = TestIdp::start(Behaviour::html(503)).await;
    let profiles = format!(
        "profiles:\n{}",
        profile("p", &idp, "    retry: { initial: 100ms, max: 200ms }\n")
    );
    let mut file =
        crate::support::ConfigFile::new(&format!("server:\n  reload_interval: 100ms\n{profiles}"));
    let server = Server::start_file(&file).await;
    server.get("p").await.unwrap_err();
    tokio::time::sleep(Duration::from_secs(1)).await;

    // Turned on: the episode already going on is announced.
    file.update(&format!(
        "server:\n  reload_interval: 100ms\n{}{profiles}",
        notices(&first, "1s")
    ));
    first.wait_for("failing", 1, Duration::from_secs(10)).await;
    // A new receiver and a new episode: the next notice goes there.
    file.update(&format!(
        "server:\n  reload_interval: 100ms\n{}{profiles}",
        notices(&second, "1s")
    ));
    tokio::time::sleep(Duration::from_secs(1)).await;
    idp.set(Behaviour::issue(3600));
    crate::support::eventually(Duration::from_secs(5), "recovery", || async {
        server.get("p").await.ok()
    })
    .await;
    idp.set(Behaviour::html(503));
    server.reject("p", "tok-1").await.unwrap_err();
    let got = second.wait_for("failing", 1, Duration::from_secs(10)).await;
    check_notice(&got[0]);
    assert_eq!(first.received().len(), 1);
    server.stop().await;
}

/// A connection of a template profile whose refresh token the provider refuses is
/// announced like a profile, named `profile/subject`, once.
#[tokio::test]
async fn a_refused_connection_is_announced_with_its_subject() {
    const CONNECTIONS_KEY: &str = "BwcHBwcHBwcHBwcHBwcHBwcHBwcHBwcHBwcHBwcHBwc=";
    let receiver = Receiver::start().await;
    let idp = TestIdp::start(rotating()).await;
    let dir = tempfile::tempdir().unwrap();
    let server = Server::start(&format!(
        "server:\n  state_dir: {}\n  connections: {{ key: {{ value: \"{CONNECTIONS_KEY}\" }} }}\n{}profiles:\n{}",
        dir.path().display(),
        notices(&receiver, "1h"),
        profile(
            "users",
            &idp,
            "    grant: refresh_token\n    template: true\n    authorize_url: https://idp.example.com/auth\n    redirect_uri: https://app.example.com/cb\n    retry: { initial: 100ms, max: 200ms }\n",
        ),
    ))
    .await;
    let mut client = server.client.clone();
    client
        .put_connection(tokenvend::pb::PutConnectionRequest {
            profile: "users".into(),
            subject: "customer-42".into(),
            refresh_token: REFUSED_SEED.into(),
            ..Default::default()
        })
        .await
        .unwrap();
    // The connection fetches its first token at once, and is refused.
    let got = receiver
        .wait_for("needs_reauthorization", 1, Duration::from_secs(15))
        .await;
    check_notice(&got[0]);
    let body = got[0].json();
    assert_eq!(body["subject"], "users/customer-42");
    assert_eq!(body["data"]["profile"], "users");
    assert_eq!(body["data"]["subject"], "customer-42");
    assert_eq!(body["data"]["state"], "needs_authorization");
    let refused = client
        .get_token(tokenvend::pb::GetTokenRequest {
            profile: "users".into(),
            subject: "customer-42".into(),
            ..Default::default()
        })
        .await
        .unwrap_err();
    assert_eq!(
        refused.code(),
        tonic::Code::FailedPrecondition,
        "{refused:?}"
    );
    tokio::time::sleep(Duration::from_secs(2)).await;
    assert_eq!(receiver.received().len(), 1, "one notice per episode");
    server.stop().await;
}
