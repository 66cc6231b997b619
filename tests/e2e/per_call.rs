//! Per-call scopes, audience and resource: a call may ask for what the profile allows,
//! and each different request is a token of its own, never coalesced with another.

use std::{collections::BTreeSet, time::Duration};

use futures::future::join_all;
use tokenvend::pb::GetTokenRequest;
use tonic::Code;

use crate::support::{Behaviour, Server, TestIdp, config, profile};

fn ask(scopes: &[&str], audience: &str) -> GetTokenRequest {
    GetTokenRequest {
        profile: "p".into(),
        scopes: scopes.iter().map(|s| (*s).to_owned()).collect(),
        audience: audience.into(),
        ..Default::default()
    }
}

#[tokio::test]
async fn different_scopes_and_audiences_are_tokens_of_their_own_never_coalesced() {
    // Slow enough that every call of a round is in flight at once.
    let idp = TestIdp::start(Behaviour::slow(3600, Duration::from_millis(300))).await;
    let server = Server::start(&config(
        "p",
        &idp,
        "    scopes: [read]\n    allowed_scopes: [read, write, admin]\n    allowed_audiences: [\"https://a.example\", \"https://b.example\"]\n",
    ))
    .await;
    // (which ask, scopes, audience): the third and fourth differ only in order and
    // repeats, so they are one ask.
    let asks: [(usize, &[&str], &str); 5] = [
        (0, &["read"], ""),
        (1, &["write"], ""),
        (2, &["write", "read", "write"], ""),
        (2, &["read", "write"], ""),
        (3, &[], "https://a.example"),
    ];
    let calls = (0..3).flat_map(|_| {
        asks.iter().map(|(i, scopes, audience)| {
            let mut client = server.client.clone();
            let request = ask(scopes, audience);
            async move { (*i, client.get_token(request).await.unwrap().into_inner()) }
        })
    });
    let replies = join_all(calls).await;

    // One provider request per distinct ask, whatever the number of callers.
    let requests = idp.requests();
    assert_eq!(requests.len(), 4, "{requests:#?}");
    let sent: BTreeSet<(String, Option<String>)> = requests
        .iter()
        .map(|r| (r.form["scope"].clone(), r.form.get("audience").cloned()))
        .collect();
    let expected: BTreeSet<(String, Option<String>)> = [
        ("read".to_owned(), None),
        ("write".to_owned(), None),
        ("read write".to_owned(), None),
        ("read".to_owned(), Some("https://a.example".to_owned())),
    ]
    .into();
    assert_eq!(sent, expected);
    // Every caller of an ask got that ask's token, and no two asks got the same one.
    let mut by_ask: Vec<BTreeSet<String>> = vec![BTreeSet::new(); 4];
    for (i, token) in &replies {
        by_ask[*i].insert(token.access_token.clone());
        let want: &[&str] = match i {
            0 | 3 => &["read"],
            1 => &["write"],
            _ => &["read", "write"],
        };
        assert_eq!(token.scopes, want, "ask {i}");
    }
    assert!(by_ask.iter().all(|tokens| tokens.len() == 1), "{by_ask:?}");
    let all: BTreeSet<_> = by_ask.iter().flatten().collect();
    assert_eq!(all.len(), 4, "never shared across asks");

    // A plain call is the profile's own token, not a variant's; a repeat is a hit.
    server.get("p").await.unwrap();
    assert_eq!(idp.count(), 5);
    let again = server
        .client
        .clone()
        .get_token(ask(&["write"], ""))
        .await
        .unwrap()
        .into_inner();
    assert!(
        by_ask[1].contains(&again.access_token),
        "served from its cache"
    );
    assert_eq!(idp.count(), 5);
    server.stop().await;
}

#[tokio::test]
async fn values_the_profile_does_not_allow_are_invalid_arguments() {
    let idp = TestIdp::start(Behaviour::issue(3600)).await;
    let server = Server::start(&format!(
        "profiles:\n{}{}",
        profile(
            "p",
            &idp,
            "    allowed_scopes: [read]\n    allowed_resources: [\"urn:orders\"]\n"
        ),
        profile("plain", &idp, ""),
    ))
    .await;
    let mut client = server.client.clone();
    let refused = [
        ask(&["read", "admin"], ""),
        ask(&[], "https://a.example"),
        GetTokenRequest {
            resource: "urn:billing".into(),
            ..ask(&[], "")
        },
        GetTokenRequest {
            profile: "plain".into(),
            ..ask(&["read"], "")
        },
        // A token type with no token to exchange, on a profile that exchanges none.
        GetTokenRequest {
            profile: "plain".into(),
            subject_token_type: "urn:ietf:params:oauth:token-type:jwt".into(),
            ..ask(&[], "")
        },
    ];
    for request in refused {
        let status = client.get_token(request.clone()).await.unwrap_err();
        assert_eq!(
            status.code(),
            Code::InvalidArgument,
            "{request:?}: {status:?}"
        );
    }
    assert_eq!(idp.count(), 0, "nothing refused reached the provider");
    let token = client
        .get_token(GetTokenRequest {
            resource: "urn:orders".into(),
            ..ask(&["read"], "")
        })
        .await
        .unwrap()
        .into_inner();
    assert_eq!(token.scopes, ["read"]);
    assert_eq!(idp.requests()[0].form["resource"], "urn:orders");
    server.stop().await;
}

/// Asking for ever new variants does not multiply the provider requests a profile may
/// make: its variants share one `idp_requests_per_minute`.
#[tokio::test]
async fn variants_share_one_ceiling_on_provider_requests() {
    let idp = TestIdp::start(Behaviour::issue(3600)).await;
    let server = Server::start(&config(
        "p",
        &idp,
        "    allowed_scopes: [a, b, c]\n    idp_requests_per_minute: 2\n",
    ))
    .await;
    let mut client = server.client.clone();
    for scope in ["a", "b"] {
        client.get_token(ask(&[scope], "")).await.unwrap();
    }
    let status = client.get_token(ask(&["c"], "")).await.unwrap_err();
    assert_eq!(status.code(), Code::ResourceExhausted, "{status:?}");
    assert_eq!(idp.count(), 2);
    // What was fetched is still served.
    client.get_token(ask(&["a"], "")).await.unwrap();
    assert_eq!(idp.count(), 2);
    server.stop().await;
}
