//! Connections of a template profile (`template: true`): one refresh-token chain per
//! subject, imported with `PutConnection`, served by `GetToken` with a `subject`, listed
//! and revoked; sealed at rest in `state_dir` and Redis; per-subject single flight; and
//! the same against `oidc-provider`, with a restart between rotations.

use std::{path::Path, time::Duration};

use futures::future::join_all;
use tokenvend::pb::{
    CacheState, GetTokenRequest, ListConnectionsRequest, PutConnectionRequest,
    RevokeConnectionRequest, Token,
};
use tonic::Code;

use crate::support::{Behaviour, Server, TestIdp, eventually, profile, redis::RedisServer};

/// base64 of 32 bytes of 0x07: the connections key of these tests.
const KEY: &str = "BwcHBwcHBwcHBwcHBwcHBwcHBwcHBwcHBwcHBwcHBwc=";

/// A template profile `t` and a plain refresh-token profile `plain` at `idp`, chains in
/// `dir` (or in `redis`, if given).
fn config(idp: &TestIdp, dir: &Path, redis: Option<&RedisServer>, extra: &str) -> String {
    let store = redis.map_or_else(String::new, |redis| {
        format!(
            "  store:\n    redis:\n      url: {}\n      key_prefix: tv\n      encryption_keys:\n        - {{ id: k1, key: {{ value: \"{KEY}\" }} }}\n",
            redis.url()
        )
    });
    format!(
        "server:\n  state_dir: {dir}\n{store}  connections: {{ key: {{ value: \"{KEY}\" }} }}\nprofiles:\n{template}{plain}",
        dir = dir.display(),
        template = profile(
            "t",
            idp,
            &format!(
                "    grant: refresh_token\n    template: true\n    authorize_url: https://idp.example.com/auth\n    redirect_uri: https://app.example.com/cb\n    revocation_url: {}\n{extra}",
                idp.token_url()
            ),
        ),
        plain = profile("plain", idp, "    grant: refresh_token\n"),
    )
}

/// A provider that takes any refresh token.
fn refreshing() -> Behaviour {
    Behaviour::AnyRefresh {
        lifetime: 3600,
        delay: Duration::ZERO,
    }
}

fn ask(profile: &str, subject: &str) -> GetTokenRequest {
    GetTokenRequest {
        profile: profile.into(),
        subject: subject.into(),
        ..Default::default()
    }
}

async fn get(server: &Server, subject: &str) -> Result<Token, tonic::Status> {
    server
        .client
        .clone()
        .get_token(ask("t", subject))
        .await
        .map(tonic::Response::into_inner)
}

async fn put(
    server: &Server,
    subject: &str,
    token: &str,
    replace: bool,
) -> Result<(), tonic::Status> {
    server
        .client
        .clone()
        .put_connection(PutConnectionRequest {
            profile: "t".into(),
            subject: subject.into(),
            refresh_token: token.into(),
            replace,
            ..Default::default()
        })
        .await
        .map(|_| ())
}

/// The refresh tokens the IdP was sent, in order.
fn refresh_tokens_sent(idp: &TestIdp) -> Vec<String> {
    idp.requests()
        .iter()
        .filter(|r| r.form.get("grant_type").map(String::as_str) == Some("refresh_token"))
        .filter_map(|r| r.form.get("refresh_token").cloned())
        .collect()
}

/// Every file under `dir`, with its content.
fn files(dir: &Path) -> Vec<(String, Vec<u8>)> {
    let mut found = Vec::new();
    for entry in std::fs::read_dir(dir).unwrap() {
        let path = entry.unwrap().path();
        if path.is_dir() {
            found.extend(files(&path));
        } else {
            found.push((path.display().to_string(), std::fs::read(&path).unwrap()));
        }
    }
    found
}

#[tokio::test]
async fn each_subject_gets_its_own_token_from_its_own_refresh_token() {
    let idp = TestIdp::start(refreshing()).await;
    let dir = tempfile::tempdir().unwrap();
    let server = Server::start(&config(&idp, dir.path(), None, "")).await;
    put(&server, "alice@example.com", "rt-alice-secret", false)
        .await
        .unwrap();
    put(&server, "tenant bob", "rt-bob-secret", false)
        .await
        .unwrap();

    let alice = get(&server, "alice@example.com").await.unwrap();
    let bob = get(&server, "tenant bob").await.unwrap();
    assert_ne!(alice.access_token, bob.access_token);
    assert_eq!(alice.profile, "t");
    // Served from each one's cache from now on.
    assert_eq!(
        get(&server, "alice@example.com")
            .await
            .unwrap()
            .access_token,
        alice.access_token
    );
    assert_eq!(
        get(&server, "tenant bob").await.unwrap().access_token,
        bob.access_token
    );
    let mut sent = refresh_tokens_sent(&idp);
    sent.sort();
    assert_eq!(sent, ["rt-alice-secret", "rt-bob-secret"]);

    // Neither a refresh token nor a subject is readable in the state directory.
    let stored = files(dir.path());
    assert!(
        stored
            .iter()
            .any(|(name, _)| name.contains("/connections/t/"))
    );
    for (name, content) in stored {
        let text = String::from_utf8_lossy(&content);
        for clear in ["rt-alice", "rt-bob", "alice", "bob", "example.com"] {
            assert!(!name.contains(clear), "{name} shows {clear}");
            assert!(!text.contains(clear), "{name} holds {clear}");
        }
    }
    server.stop().await;
}

#[tokio::test]
async fn subjects_are_required_exactly_on_template_profiles() {
    let idp = TestIdp::start(refreshing()).await;
    let dir = tempfile::tempdir().unwrap();
    let server = Server::start(&config(&idp, dir.path(), None, "")).await;
    let mut client = server.client.clone();

    let status = client.get_token(ask("t", "")).await.unwrap_err();
    assert_eq!(status.code(), Code::InvalidArgument, "{status:?}");
    assert!(
        status.message().contains("`subject` is required"),
        "{status:?}"
    );

    let status = client.get_token(ask("plain", "someone")).await.unwrap_err();
    assert_eq!(status.code(), Code::InvalidArgument, "{status:?}");
    assert!(status.message().contains("`subject`"), "{status:?}");

    for bad in ["line\nbreak", &"x".repeat(257)] {
        let status = client.get_token(ask("t", bad)).await.unwrap_err();
        assert_eq!(status.code(), Code::InvalidArgument, "{status:?}");
    }

    // Nobody authorized this subject: the answer says so, and names no subject.
    let status = client
        .get_token(ask("t", "carol-never-connected"))
        .await
        .unwrap_err();
    assert_eq!(status.code(), Code::FailedPrecondition, "{status:?}");
    assert!(
        status
            .message()
            .contains("no connection for this subject: authorize it"),
        "{status:?}"
    );
    assert!(!status.message().contains("carol"), "{status:?}");
    assert_eq!(idp.count(), 0, "nothing to ask the provider with");

    // A connection is refused per-call values: it is one person's grant.
    let mut scoped = ask("t", "carol-never-connected");
    scoped.scopes = vec!["other".into()];
    let status = client.get_token(scoped).await.unwrap_err();
    assert_eq!(status.code(), Code::InvalidArgument, "{status:?}");

    // Once imported it serves; imported again it is refused unless replaced.
    put(&server, "carol", "rt-carol-1", false).await.unwrap();
    assert!(get(&server, "carol").await.is_ok());
    let status = put(&server, "carol", "rt-carol-2", false)
        .await
        .unwrap_err();
    assert_eq!(status.code(), Code::AlreadyExists, "{status:?}");
    let status = put(&server, "", "rt", false).await.unwrap_err();
    assert_eq!(status.code(), Code::InvalidArgument, "{status:?}");
    let status = client
        .put_connection(PutConnectionRequest {
            profile: "plain".into(),
            subject: "carol".into(),
            refresh_token: "rt".into(),
            ..Default::default()
        })
        .await
        .unwrap_err();
    assert_eq!(status.code(), Code::InvalidArgument, "{status:?}");
    server.stop().await;
}

#[tokio::test]
async fn concurrent_calls_for_one_subject_make_one_provider_request_and_subjects_are_never_coalesced()
 {
    let idp = TestIdp::start(Behaviour::AnyRefresh {
        lifetime: 3600,
        delay: Duration::from_millis(300),
    })
    .await;
    let dir = tempfile::tempdir().unwrap();
    let server = Server::start(&config(&idp, dir.path(), None, "")).await;
    put(&server, "one", "rt-one", false).await.unwrap();
    put(&server, "two", "rt-two", false).await.unwrap();
    // The import starts a background fetch; let it land, then start cold again by
    // replacing the chain.
    eventually(Duration::from_secs(5), "both fetched", || async {
        (idp.count() == 2).then_some(())
    })
    .await;
    put(&server, "one", "rt-one-b", true).await.unwrap();
    put(&server, "two", "rt-two-b", true).await.unwrap();

    let calls = (0..50).map(|i| {
        let subject = if i % 2 == 0 { "one" } else { "two" };
        let server = &server;
        async move { (subject, get(server, subject).await.unwrap().access_token) }
    });
    let answers = join_all(calls).await;
    let token = |s: &str| {
        let mut tokens: Vec<_> = answers
            .iter()
            .filter(|(subject, _)| *subject == s)
            .map(|(_, token)| token.clone())
            .collect();
        tokens.dedup();
        tokens
    };
    assert_eq!(token("one").len(), 1, "one token for all of one's callers");
    assert_eq!(token("two").len(), 1);
    assert_ne!(token("one"), token("two"));
    assert_eq!(
        idp.count(),
        4,
        "50 callers on two subjects: one provider request per subject and chain"
    );
    server.stop().await;
}

#[tokio::test]
async fn connections_are_listed_without_tokens_and_revoked_at_the_provider() {
    let idp = TestIdp::start(refreshing()).await;
    let dir = tempfile::tempdir().unwrap();
    let server = Server::start(&config(&idp, dir.path(), None, "")).await;
    let mut client = server.client.clone();
    for (subject, token) in [("a-sub", "rt-a"), ("b-sub", "rt-b"), ("c-sub", "rt-c")] {
        put(&server, subject, token, false).await.unwrap();
    }
    get(&server, "a-sub").await.unwrap();

    // Two pages of two.
    let first = client
        .list_connections(ListConnectionsRequest {
            profile: "t".into(),
            page_size: 2,
            ..Default::default()
        })
        .await
        .unwrap()
        .into_inner();
    assert_eq!(first.connections.len(), 2);
    assert!(!first.next_page_token.is_empty());
    let second = client
        .list_connections(ListConnectionsRequest {
            profile: "t".into(),
            page_size: 2,
            page_token: first.next_page_token.clone(),
        })
        .await
        .unwrap()
        .into_inner();
    assert_eq!(second.connections.len(), 1);
    assert!(second.next_page_token.is_empty());
    let mut all: Vec<_> = first
        .connections
        .iter()
        .chain(&second.connections)
        .collect();
    all.sort_by(|x, y| x.subject.cmp(&y.subject));
    let subjects: Vec<_> = all.iter().map(|c| c.subject.as_str()).collect();
    assert_eq!(subjects, ["a-sub", "b-sub", "c-sub"]);
    assert!(
        all.iter()
            .all(|c| c.created_at.is_some() && c.updated_at.is_some())
    );
    let listed = format!("{first:?}{second:?}");
    assert!(
        !listed.contains("rt-") && !listed.contains("tok-"),
        "{listed}"
    );
    // a-sub was asked for (valid); the others were fetched in the background at import.
    assert_eq!(all[0].cache_state, CacheState::Valid as i32);

    let answer = client
        .revoke_connection(RevokeConnectionRequest {
            profile: "t".into(),
            subject: "a-sub".into(),
        })
        .await
        .unwrap()
        .into_inner();
    assert!(answer.revoked_at_provider);
    // RFC 7009: the refresh token, hinted as one, with the client's credentials.
    let revocation = idp
        .requests()
        .into_iter()
        .find(|r| r.form.contains_key("token"))
        .expect("a revocation request");
    assert_eq!(revocation.form["token"], "rt-a");
    assert_eq!(revocation.form["token_type_hint"], "refresh_token");
    assert!(revocation.form.contains_key("client_secret"));

    let status = get(&server, "a-sub").await.unwrap_err();
    assert_eq!(status.code(), Code::FailedPrecondition, "{status:?}");
    let status = client
        .revoke_connection(RevokeConnectionRequest {
            profile: "t".into(),
            subject: "a-sub".into(),
        })
        .await
        .unwrap_err();
    assert_eq!(status.code(), Code::NotFound, "{status:?}");
    let left = client
        .list_connections(ListConnectionsRequest {
            profile: "t".into(),
            ..Default::default()
        })
        .await
        .unwrap()
        .into_inner();
    assert_eq!(left.connections.len(), 2);
    server.stop().await;
}

#[tokio::test]
async fn a_revocation_stops_every_replica_sharing_redis() {
    let Some(redis) = RedisServer::start() else {
        return;
    };
    let idp = TestIdp::start(refreshing()).await;
    let (dir_a, dir_b) = (tempfile::tempdir().unwrap(), tempfile::tempdir().unwrap());
    let a = Server::start(&config(&idp, dir_a.path(), Some(&redis), "")).await;
    let b = Server::start(&config(&idp, dir_b.path(), Some(&redis), "")).await;
    put(&a, "shared-subject@example.com", "rt-shared", false)
        .await
        .unwrap();
    // Both replicas serve it, the same token (one provider request between them).
    let on_a = get(&a, "shared-subject@example.com").await.unwrap();
    let on_b = get(&b, "shared-subject@example.com").await.unwrap();
    assert_eq!(on_a.access_token, on_b.access_token);
    assert_eq!(refresh_tokens_sent(&idp), ["rt-shared"]);

    // Redis holds it sealed, under names that do not show the subject.
    for key in redis.keys() {
        assert!(
            !key.contains("shared-subject") && !key.contains("example"),
            "{key}"
        );
        if key.ends_with(":chain") {
            let value = redis.command(&["HGET", &key, "value"]).unwrap();
            assert!(value.contains("v1:k1:"), "{value:.20}");
            assert!(!value.contains("rt-shared") && !value.contains("shared-subject"));
        }
    }

    // A new authorization on one replica replaces the connection on both: the other
    // drops the token of the old chain.
    put(&a, "shared-subject@example.com", "rt-shared-2", true)
        .await
        .unwrap();
    eventually(
        Duration::from_secs(5),
        "replica b serves the new chain",
        || async {
            let token = get(&b, "shared-subject@example.com").await.ok()?;
            (token.access_token != on_b.access_token).then_some(())
        },
    )
    .await;
    assert_eq!(
        refresh_tokens_sent(&idp).last().map(String::as_str),
        Some("rt-shared-2")
    );

    a.client
        .clone()
        .revoke_connection(RevokeConnectionRequest {
            profile: "t".into(),
            subject: "shared-subject@example.com".into(),
        })
        .await
        .unwrap();
    // The other replica drops its cached token as soon as the revocation reaches it.
    eventually(
        Duration::from_secs(5),
        "replica b stops serving",
        || async {
            get(&b, "shared-subject@example.com")
                .await
                .err()
                .filter(|s| s.code() == Code::FailedPrecondition)
        },
    )
    .await;
    assert!(
        redis.keys().iter().all(|k| !k.contains(":c:")),
        "{:?}",
        redis.keys()
    );
    a.stop().await;
    b.stop().await;
}

/// Against `oidc-provider`: two people authorize (`tokenvend authorize --subject`), each
/// connection gets tokens for its own grant, and a rotated refresh token outlives a
/// restart (the provider spends each refresh token it rotates, so a chain not stored
/// durably would be refused after the restart).
#[tokio::test]
async fn oidc_provider_connections_rotate_and_survive_a_restart() {
    use super::interop::{SECRET, free_port, start_oidc_provider};
    let Some(provider) = start_oidc_provider(&[]) else {
        return;
    };
    let dir = tempfile::tempdir().unwrap();
    let yaml = format!(
        "server:\n  state_dir: {dir}\n  connections: {{ key: {{ value: \"{KEY}\" }} }}\nprofiles:\n  code:\n    issuer: {issuer}\n    grant: refresh_token\n    template: true\n    client_id: tv-code\n    client_secret: {{ value: \"{SECRET}\" }}\n    auth_method: client_secret_post\n    authorize_url: \"{auth}?prompt=consent\"\n    redirect_uri: http://127.0.0.1:{port}/cb\n    scopes: [openid, offline_access, \"api:read\"]\n    rejected_token_min_interval: 0s\n",
        dir = dir.path().display(),
        issuer = provider.issuer,
        auth = provider.authorization_endpoint,
        port = free_port(),
    );
    for subject in ["alice@example.com", "bob@example.com"] {
        crate::support::browser::authorize_for(&yaml, "code", Some(subject)).await;
    }
    let code = |subject: &str| GetTokenRequest {
        profile: "code".into(),
        subject: subject.into(),
        ..Default::default()
    };

    let server = Server::start(&yaml).await;
    let mut client = server.client.clone();
    let alice = client
        .get_token(code("alice@example.com"))
        .await
        .unwrap()
        .into_inner();
    let bob = client
        .get_token(code("bob@example.com"))
        .await
        .unwrap()
        .into_inner();
    assert_ne!(alice.access_token, bob.access_token);
    provider.assert_active(&alice.access_token, "tv-code").await;
    provider.assert_active(&bob.access_token, "tv-code").await;

    // Two refreshes of alice's connection, each rotating her refresh token.
    let mut current = alice.access_token.clone();
    for n in 0..2 {
        let mut again = code("alice@example.com");
        again.rejected_token = current.clone();
        let fresh = client.get_token(again).await.unwrap().into_inner();
        assert_ne!(fresh.access_token, current, "refresh {n}");
        current = fresh.access_token;
    }
    server.stop().await;

    // A new server, an empty cache: it refreshes from the stored (rotated) chain.
    let server = Server::start(&yaml).await;
    let mut client = server.client.clone();
    let after = client
        .get_token(code("alice@example.com"))
        .await
        .unwrap()
        .into_inner();
    assert_ne!(after.access_token, current);
    provider.assert_active(&after.access_token, "tv-code").await;
    let bob_after = client
        .get_token(code("bob@example.com"))
        .await
        .unwrap()
        .into_inner();
    provider
        .assert_active(&bob_after.access_token, "tv-code")
        .await;

    // The state directory names no subject and holds no token in the clear.
    for (name, content) in files(dir.path()) {
        let text = String::from_utf8_lossy(&content);
        assert!(!name.contains("alice") && !name.contains("bob"), "{name}");
        assert!(!text.contains("alice") && !text.contains("bob"), "{name}");
        assert!(!text.contains("refresh_token"), "{name}: a clear record");
    }
    server.stop().await;
}
