use std::time::{Duration, SystemTime, UNIX_EPOCH};

use super::*;
use crate::{cache::SlotStatus, config::Config};

#[test]
fn the_signature_matches_the_standard_webhooks_example() {
    // The example of the Standard Webhooks specification, checked independently with
    //   python3 -c 'import hmac,hashlib,base64; print(base64.b64encode(hmac.new(
    //     base64.b64decode("MfKQ9r8GKYqrTwjUPD8ILPZIo2LaLaSw"),
    //     b"msg_p5jXN8AQM9LWM0D4loKWxJek.1614265330.{\"test\": 2432232314}",
    //     hashlib.sha256).digest()).decode())'
    let key = signing_key(&Secret::new("whsec_MfKQ9r8GKYqrTwjUPD8ILPZIo2LaLaSw")).unwrap();
    assert_eq!(
        sign(
            &key,
            "msg_p5jXN8AQM9LWM0D4loKWxJek",
            1_614_265_330,
            br#"{"test": 2432232314}"#
        ),
        "v1,g0hM9SsE+OTPJTGt/tmIKtSyZlE3uFJELVlNIOLJ1OE="
    );
    // A secret without the prefix is the key's bytes as they are (same Python, with
    // b"a raw secret of some length" as the key and b"ntc_1.1700000000.{}").
    let raw = signing_key(&Secret::new("a raw secret of some length")).unwrap();
    assert_eq!(&*raw, b"a raw secret of some length");
    assert_eq!(
        sign(&raw, "ntc_1", 1_700_000_000, b"{}"),
        "v1,plqIUGbPP9HRgzgsBDiV5kZmmYSNY2m9aNDRBQZZoBY="
    );
}

#[test]
fn unusable_secrets_are_refused_without_showing_them() {
    assert_eq!(
        signing_key(&Secret::new("whsec_not base64!")).unwrap_err(),
        KeyError::NotBase64
    );
    assert_eq!(
        signing_key(&Secret::new("short")).unwrap_err(),
        KeyError::TooShort(5)
    );
    // `whsec_` and the base64 of 8 bytes: the decoded key is what counts.
    let error = signing_key(&Secret::new("whsec_AAAAAAAAAAA=")).unwrap_err();
    assert_eq!(error, KeyError::TooShort(8));
    assert!(!error.to_string().contains("AAAA"));
}

fn status(state: CacheState, needs: bool, since: Option<SystemTime>) -> SlotStatus {
    SlotStatus {
        state,
        expires_at: None,
        last_refresh: None,
        last_error: since.map(|_| "the provider refused the refresh token (invalid_grant)".into()),
        needs_authorization: needs,
        failing_since: since,
    }
}

fn health(profile: &str, subject: Option<&str>, status: SlotStatus) -> Health {
    Health {
        profile: profile.into(),
        subject: subject.map(str::to_owned),
        // Stands for the keyed digest: one per subject, and not the subject.
        connection: subject.map(|s| s.bytes().map(|b| format!("{:02x}", b ^ 0x5a)).collect()),
        status,
    }
}

#[test]
fn each_episode_gives_one_notice_of_each_kind() {
    let mut watch = Watch::default();
    let after = Duration::from_secs(60);
    let t0 = UNIX_EPOCH + Duration::from_secs(1_800_000_000);
    let at = |s: u64| t0 + Duration::from_secs(s);
    let kinds = |due: Vec<(Event, Health)>| due.into_iter().map(|(e, _)| e).collect::<Vec<_>>();
    let failed = |since| {
        vec![health(
            "p",
            None,
            status(CacheState::Failed, false, Some(since)),
        )]
    };
    let refused = |since| {
        vec![health(
            "p",
            None,
            status(CacheState::NeedsAuthorization, true, Some(since)),
        )]
    };

    assert!(
        watch
            .scan(
                vec![health("p", None, status(CacheState::Valid, false, None))],
                at(0),
                after
            )
            .is_empty()
    );
    // Failing, not yet for `failing_after`; then for long enough: one notice, once.
    assert!(watch.scan(failed(at(1)), at(30), after).is_empty());
    assert_eq!(
        kinds(watch.scan(failed(at(1)), at(61), after)),
        [Event::Failing]
    );
    assert!(watch.scan(failed(at(1)), at(200), after).is_empty());
    // The same episode turning into one a person must fix: that notice too, once.
    assert_eq!(
        kinds(watch.scan(refused(at(1)), at(201), after)),
        [Event::NeedsReauthorization]
    );
    assert!(watch.scan(refused(at(1)), at(202), after).is_empty());
    // Recovery, then a new failure: a new episode notifies again.
    assert!(
        watch
            .scan(
                vec![health("p", None, status(CacheState::Valid, false, None))],
                at(203),
                after
            )
            .is_empty()
    );
    assert_eq!(
        kinds(watch.scan(refused(at(204)), at(205), after)),
        [Event::NeedsReauthorization]
    );
    // A recovery and a new failure between two scans still show as a new episode; one
    // that needs a person is not announced as failing as well.
    assert_eq!(
        kinds(watch.scan(refused(at(300)), at(400), after)),
        [Event::NeedsReauthorization]
    );
    assert!(watch.scan(refused(at(300)), at(450), after).is_empty());
    // A still-valid token whose refresh was refused: the person is told at once.
    let stale = vec![health(
        "p",
        None,
        status(CacheState::Stale, true, Some(at(500))),
    )];
    let due = watch.scan(stale, at(501), after);
    assert_eq!(due.len(), 1);
    assert_eq!(due[0].1.status.state, CacheState::Stale);
}

#[test]
fn connections_and_profiles_are_watched_apart_and_removed_ones_forgotten() {
    let mut watch = Watch::default();
    let after = Duration::from_secs(1);
    let since = UNIX_EPOCH + Duration::from_secs(1_800_000_000);
    let now = since + Duration::from_secs(5);
    let failing = |subject| health("t", subject, status(CacheState::Failed, false, Some(since)));
    let due = watch.scan(
        vec![
            failing(None),
            failing(Some("acme")),
            failing(Some("globex")),
        ],
        now,
        after,
    );
    let who: Vec<_> = due.iter().map(|(_, h)| h.subject.clone()).collect();
    assert_eq!(who, [None, Some("acme".into()), Some("globex".into())]);
    assert!(
        watch
            .scan(vec![failing(Some("acme"))], now, after)
            .is_empty()
    );
    assert_eq!(watch.seen.len(), 1, "what is no longer listed is forgotten");
    // Listed again (a reload brought it back): it is a new profile to the watch.
    assert_eq!(
        watch
            .scan(vec![failing(None), failing(Some("acme"))], now, after)
            .len(),
        1
    );
}

#[test]
fn the_body_is_a_structured_cloudevent_without_secrets() {
    let since = UNIX_EPOCH + Duration::from_millis(1_800_000_000_250);
    let now = since + Duration::from_secs(90);
    let mut status = status(CacheState::NeedsAuthorization, true, Some(since));
    status.last_error = Some(format!("refused: {}é", "x".repeat(2000)));
    let notice = Notice::new(
        Event::NeedsReauthorization,
        &health("jadu", None, status.clone()),
        "tokenvend://pod-1",
        now,
    );
    let body: serde_json::Value = serde_json::from_slice(&notice.body).unwrap();
    assert_eq!(body["specversion"], "1.0");
    assert_eq!(body["id"], notice.id.as_str());
    assert!(
        notice.id.starts_with("ntc_") && notice.id.len() == 36,
        "{}",
        notice.id
    );
    assert_eq!(body["source"], "tokenvend://pod-1");
    assert_eq!(
        body["type"],
        "dev.tokenvend.profile.needs_reauthorization.v1"
    );
    assert_eq!(body["time"], "2027-01-15T08:01:30.250Z");
    assert_eq!(body["subject"], "jadu");
    assert_eq!(body["datacontenttype"], "application/json");
    let data = &body["data"];
    assert_eq!(data["profile"], "jadu");
    assert!(
        data.get("subject").is_none(),
        "no subject for a profile: {data}"
    );
    assert_eq!(data["state"], "needs_authorization");
    assert_eq!(data["since"], "2027-01-15T08:00:00.250Z");
    assert_eq!(data["last_error"].as_str().unwrap().len(), MAX_ERROR);
    assert_eq!(data.as_object().unwrap().len(), 4);

    let connection = Notice::new(
        Event::Failing,
        &health("crm", Some("tenant-42"), status),
        "s",
        now,
    );
    let body: serde_json::Value = serde_json::from_slice(&connection.body).unwrap();
    assert_eq!(body["type"], "dev.tokenvend.profile.failing.v1");
    assert_eq!(body["subject"], "crm/tenant-42");
    assert_eq!(body["data"]["subject"], "tenant-42");
    assert_ne!(connection.id, notice.id, "every notice has its own id");
}

#[tokio::test]
async fn a_full_queue_drops_the_oldest_and_counts_it() {
    let metrics = Metrics::new(&crate::metrics::Export::default()).unwrap();
    let queue = Queue::new(2, metrics.clone());
    let now = SystemTime::now();
    let notice = |p: &str| {
        Notice::new(
            Event::Failing,
            &health(p, None, status(CacheState::Failed, false, Some(now))),
            "s",
            now,
        )
    };
    for p in ["a", "b", "c"] {
        queue.push(notice(p));
    }
    assert_eq!(&*queue.pop().await.profile, "b");
    assert_eq!(&*queue.pop().await.profile, "c");
    assert!(
        metrics
            .prometheus_text()
            .contains(r#"tokenvend_notices_total{outcome="dropped",type="failing"} 1"#),
        "{}",
        metrics.prometheus_text()
    );
}

fn notices(yaml: &str) -> Result<NoticesConfig, String> {
    Config::from_yaml(&format!(
        "server:\n  notices:\n{yaml}profiles:\n  p:\n    token_url: https://idp.example.com/token\n    client_id: a\n    client_secret: {{ value: s }}\n"
    ))
        .map(|c| c.server.notices.unwrap())
        .map_err(|e| e.to_string())
}

#[test]
fn the_settings_are_checked_with_their_keys_named() {
    let config = notices(
        "    webhook: https://hooks.example.com/tokenvend/T0K3N\n    secret: { env: HOOK_SECRET }\n",
    )
    .unwrap();
    assert_eq!(config.failing_after, Duration::from_secs(900));
    assert_eq!(config.timeout, Duration::from_secs(5));
    assert!(
        config.source.starts_with("tokenvend://"),
        "{}",
        config.source
    );
    let printed = format!("{config:?}");
    assert!(
        !printed.contains("T0K3N"),
        "the URL's path is never printed: {printed}"
    );
    assert!(printed.contains("https://hooks.example.com"), "{printed}");

    let config = notices(
        "    webhook: http://127.0.0.1:8080/hook\n    secret: { value: x }\n    failing_after: 2s\n    timeout: 1s\n    source: /tokenvend/prod\n",
    )
    .unwrap();
    assert_eq!(config.failing_after, Duration::from_secs(2));
    assert_eq!(config.source, "/tokenvend/prod");

    for (yaml, key, says) in [
        (
            "    webhook: http://hooks.example.com/S3CR3T\n    secret: { value: x }\n",
            "server.notices.webhook",
            "https",
        ),
        (
            "    webhook: not a url S3CR3T\n    secret: { value: x }\n",
            "server.notices.webhook",
            "not a URL",
        ),
        (
            "    webhook: https://u:S3CR3T@hooks.example.com/\n    secret: { value: x }\n",
            "server.notices.webhook",
            "user:password",
        ),
        (
            "    webhook: https://h.example.com/\n    secret: { value: x, env: Y }\n",
            "server.notices.secret",
            "exactly one",
        ),
        (
            "    webhook: https://h.example.com/\n    secret: { value: x }\n    failing_after: 0s\n",
            "server.notices.failing_after",
            "longer than zero",
        ),
        (
            "    webhook: https://h.example.com/\n    secret: { value: x }\n    timeout: 0s\n",
            "server.notices.timeout",
            "longer than zero",
        ),
        (
            "    webhook: https://h.example.com/\n    secret: { value: x }\n    source: a b\n",
            "server.notices.source",
            "URI reference",
        ),
        (
            "    webhook: https://h.example.com/\n",
            "server.notices",
            "secret",
        ),
    ] {
        let error = notices(yaml).unwrap_err();
        assert!(
            error.contains(key) && error.contains(says),
            "{yaml}: {error}"
        );
        assert!(!error.contains("S3CR3T"), "{error}");
    }
}

#[test]
fn the_scan_comes_often_enough_for_failing_after_and_no_more() {
    assert_eq!(
        scan_interval(Duration::from_secs(900)),
        Duration::from_secs(5)
    );
    assert_eq!(
        scan_interval(Duration::from_secs(2)),
        Duration::from_millis(500)
    );
    assert_eq!(
        scan_interval(Duration::from_millis(100)),
        Duration::from_millis(250)
    );
}

#[tokio::test]
async fn failing_claims_meet_when_episodes_begin_less_than_failing_after_apart() {
    let config = Config::from_yaml(
        "server:\n  store:\n    redis:\n      url: redis://127.0.0.1:1\n      key_prefix: tv\n      encryption_keys:\n        - { id: k1, key: { value: \"BwcHBwcHBwcHBwcHBwcHBwcHBwcHBwcHBwcHBwcHBwc=\" } }\nprofiles:\n  p:\n    token_url: https://idp.example.com/token\n    client_id: a\n    client_secret: { value: s }\n",
    )
    .unwrap();
    // Connects on first use: working out a `failing` claim's keys needs no Redis.
    let store = SharedStore::new(config.server.store.as_ref().unwrap()).unwrap();
    let after = Duration::from_secs(60);
    let keys = |since_s: u64, subject: Option<&'static str>| {
        let store = store.clone();
        async move {
            let since = UNIX_EPOCH + Duration::from_secs(since_s);
            let notice = Notice::new(
                Event::Failing,
                &health("p", subject, status(CacheState::Failed, false, Some(since))),
                "s",
                since,
            );
            notice.claim_keys(&store, after).await.unwrap()
        }
    };
    let (first, ttl) = keys(6_000, None).await;
    assert_eq!(
        first,
        ["tv:notice:p:failing:w100", "tv:notice:p:failing:w101"]
    );
    assert_eq!(ttl, Duration::from_secs(180));
    let meets = |a: &[String], b: &[String]| a.iter().any(|k| b.contains(k));
    // Less than `failing_after` apart, across a window's edge or not: they meet (and
    // up to two windows apart they may).
    assert!(meets(&first, &keys(6_059, None).await.0));
    assert!(meets(&first, &keys(6_119, None).await.0));
    assert!(meets(&keys(5_999, None).await.0, &first));
    // Two windows apart: a new episode.
    assert!(!meets(&first, &keys(6_120, None).await.0));
    // A connection's subject is in the key by digest only.
    let (connection, _) = keys(6_000, Some("tenant-42")).await;
    assert!(connection[0].starts_with("tv:notice:p:"), "{connection:?}");
    assert!(!connection[0].contains("tenant-42"));
    assert!(!meets(&first, &connection));
}
