//! Token exchange (RFC 8693) against Keycloak's standard token exchange: a caller's user
//! token traded for one for tokenvend's client, cached per subject.

use serde_json::{Value, json};
use tokenvend::pb::GetTokenRequest;
use tonic::Code;

use super::server::{Realm, keycloak};
use crate::support::Server;

const SECRET: &str = "exchanger-secret";

/// A user of the realm, and an access token the `frontend` client got for them.
async fn user_token(realm: &Realm, name: &str) -> String {
    realm
        .admin_post(
            "/users",
            json!({
                "username": name,
                "enabled": true,
                "email": format!("{name}@example.com"),
                "emailVerified": true,
                "firstName": name,
                "lastName": "Test",
                "credentials": [{ "type": "password", "value": "pw-1234", "temporary": false }],
            }),
        )
        .await;
    let answer: Value = reqwest::Client::new()
        .post(realm.token_endpoint())
        .form(&[
            ("grant_type", "password"),
            ("client_id", "frontend"),
            ("username", name),
            ("password", "pw-1234"),
        ])
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    answer["access_token"]
        .as_str()
        .unwrap_or_else(|| panic!("{name}'s token: {answer}"))
        .to_owned()
}

fn exchange(subject_token: &str) -> GetTokenRequest {
    GetTokenRequest {
        profile: "exchange".into(),
        subject_token: subject_token.into(),
        ..Default::default()
    }
}

#[tokio::test]
async fn a_callers_token_is_exchanged_once_per_subject_and_never_served_to_another() {
    let Some(keycloak) = keycloak() else {
        return;
    };
    let realm = keycloak.realm("exchange").await;
    realm
        .client(json!({
            "clientId": "tv-exchanger",
            "publicClient": false,
            "standardFlowEnabled": false,
            "secret": SECRET,
            "attributes": { "standard.token.exchange.enabled": "true" },
        }))
        .await;
    // The user's token must name tokenvend's client as an audience to be exchanged by it.
    realm
        .client(json!({
            "clientId": "frontend",
            "publicClient": true,
            "standardFlowEnabled": false,
            "directAccessGrantsEnabled": true,
            "protocolMappers": [{
                "name": "tokenvend audience",
                "protocol": "openid-connect",
                "protocolMapper": "oidc-audience-mapper",
                "config": {
                    "included.client.audience": "tv-exchanger",
                    "access.token.claim": "true",
                },
            }],
        }))
        .await;
    let alice = user_token(&realm, "alice").await;
    let bob = user_token(&realm, "bob").await;

    let server = Server::start(&format!(
        "profiles:\n  exchange:\n    token_url: {}\n    grant: token_exchange\n    client_id: tv-exchanger\n    client_secret: {{ value: {SECRET} }}\n",
        realm.token_endpoint()
    ))
    .await;
    let mut client = server.client.clone();
    let mut get = async |request| client.get_token(request).await.map(|r| r.into_inner());

    let for_alice = get(exchange(&alice))
        .await
        .unwrap_or_else(|s| panic!("{s:?}"));
    let claims = realm.verify(&for_alice.access_token).await;
    assert_eq!(claims["preferred_username"], "alice", "{claims}");
    assert_eq!(claims["azp"], "tv-exchanger", "{claims}");
    let for_bob = get(exchange(&bob))
        .await
        .unwrap_or_else(|s| panic!("{s:?}"));
    assert_eq!(
        realm.verify(&for_bob.access_token).await["preferred_username"],
        "bob"
    );
    // Alice again: her exchanged token, from the cache.
    let again = get(exchange(&alice)).await.unwrap();
    assert_eq!(again.access_token, for_alice.access_token);

    let refused = get(exchange("not-a-token")).await.unwrap_err();
    assert_eq!(refused.code(), Code::FailedPrecondition, "{refused:?}");
    assert!(
        refused.message().contains("invalid"),
        "{}",
        refused.message()
    );
    assert!(!refused.message().contains(&alice));
    let missing = get(GetTokenRequest {
        profile: "exchange".into(),
        ..Default::default()
    })
    .await
    .unwrap_err();
    assert_eq!(missing.code(), Code::InvalidArgument, "{missing:?}");
    server.stop().await;
}
