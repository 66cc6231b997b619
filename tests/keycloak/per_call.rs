//! Per-call scopes against Keycloak: one client, a token per set of scopes asked for,
//! each granted exactly what it asked.

use serde_json::json;
use tokenvend::pb::GetTokenRequest;
use tonic::Code;

use super::server::keycloak;
use crate::support::Server;

#[tokio::test]
async fn each_scope_set_asked_for_is_its_own_token_with_those_scopes() {
    let Some(keycloak) = keycloak() else {
        return;
    };
    let realm = keycloak.realm("per-call").await;
    for scope in ["orders:read", "orders:write"] {
        realm
            .admin_post(
                "/client-scopes",
                json!({
                    "name": scope,
                    "protocol": "openid-connect",
                    "attributes": { "include.in.token.scope": "true" },
                }),
            )
            .await;
    }
    realm
        .client(json!({
            "clientId": "tv-scoped",
            "publicClient": false,
            "serviceAccountsEnabled": true,
            "standardFlowEnabled": false,
            "secret": "scoped-secret",
            "optionalClientScopes": ["orders:read", "orders:write"],
        }))
        .await;
    let server = Server::start(&format!(
        "profiles:\n  p:\n    token_url: {}\n    client_id: tv-scoped\n    client_secret: {{ value: scoped-secret }}\n    scopes: [\"orders:read\"]\n    allowed_scopes: [\"orders:read\", \"orders:write\"]\n",
        realm.token_endpoint()
    ))
    .await;
    let mut client = server.client.clone();
    let mut ask = async |scopes: &[&str]| {
        client
            .get_token(GetTokenRequest {
                profile: "p".into(),
                scopes: scopes.iter().map(|s| (*s).to_owned()).collect(),
                ..Default::default()
            })
            .await
            .map(|r| r.into_inner())
    };
    let granted = |claims: &serde_json::Value| -> Vec<String> {
        claims["scope"]
            .as_str()
            .unwrap_or_default()
            .split(' ')
            .filter(|s| s.starts_with("orders:"))
            .map(str::to_owned)
            .collect()
    };

    let own = server.get("p").await.unwrap_or_else(|s| panic!("{s:?}"));
    assert_eq!(
        granted(&realm.verify(&own.access_token).await),
        ["orders:read"]
    );
    let write = ask(&["orders:write"])
        .await
        .unwrap_or_else(|s| panic!("{s:?}"));
    assert_eq!(
        granted(&realm.verify(&write.access_token).await),
        ["orders:write"]
    );
    let both = ask(&["orders:write", "orders:read"]).await.unwrap();
    let mut scopes = granted(&realm.verify(&both.access_token).await);
    scopes.sort();
    assert_eq!(scopes, ["orders:read", "orders:write"]);
    assert_ne!(write.access_token, own.access_token);
    assert_ne!(both.access_token, write.access_token);

    let refused = ask(&["orders:admin"]).await.unwrap_err();
    assert_eq!(refused.code(), Code::InvalidArgument, "{refused:?}");
    server.stop().await;
}
