//! Grants other than client credentials: the JWT bearer grant (RFC 7523 §2.1).

use serde_json::json;
use tonic::Code;

use super::{
    client_auth::{KEY_ID, WorkloadIssuer},
    server::keycloak,
};
use crate::support::Server;

const SECRET: &str = "bearer-client-secret";

/// Keycloak's JWT authorization grant: the realm trusts an issuer's keys, and an assertion
/// whose `sub` is linked to a user gets a token for that user. tokenvend signs the
/// assertion with the profile's key (`iss` = the client id), the client authenticating
/// with its secret beside it.
#[tokio::test]
async fn jwt_bearer_gets_a_token_for_the_assertion_subject() {
    let Some(keycloak) = keycloak() else {
        return;
    };
    let realm = keycloak.realm("jwt-bearer").await;
    // The key whose public half the realm trusts, served as a JWKS on loopback.
    let keys = WorkloadIssuer::start().await;
    realm
        .admin_post(
            "/identity-provider/instances",
            json!({
                "alias": "partner",
                "providerId": "oidc",
                "enabled": true,
                "hideOnLogin": true,
                "config": {
                    // The assertion's `iss`: the client id.
                    "issuer": "tv-bearer",
                    "jwksUrl": format!("{}/jwks", keys.url),
                    "useJwksUrl": "true",
                    "validateSignature": "true",
                    "jwtAuthorizationGrantEnabled": "true",
                    "clientId": "unused",
                    "clientSecret": "unused",
                    "authorizationUrl": format!("{}/unused", keys.url),
                    "tokenUrl": format!("{}/unused", keys.url),
                },
            }),
        )
        .await;
    realm
        .admin_post(
            "/users",
            json!({
                "username": "alice",
                "enabled": true,
                "federatedIdentities": [{
                    "identityProvider": "partner",
                    "userId": "alice@partner",
                    "userName": "alice@partner",
                }],
            }),
        )
        .await;
    realm
        .client(json!({
            "clientId": "tv-bearer",
            "publicClient": false,
            "standardFlowEnabled": false,
            "secret": SECRET,
            "attributes": {
                "oauth2.jwt.authorization.grant.enabled": "true",
                "oauth2.jwt.authorization.grant.idp": "partner",
            },
        }))
        .await;
    let dir = tempfile::tempdir().unwrap();
    let key_file = dir.path().join("bearer.key");
    std::fs::write(&key_file, &keys.key_pem).unwrap();
    let profile = |name: &str, subject: &str| {
        format!(
            "  {name}:\n    token_url: {url}\n    grant: jwt_bearer\n    client_id: tv-bearer\n    client_secret: {{ value: {SECRET} }}\n    private_key: {{ file: {key} }}\n    signing_alg: ES256\n    key_id: {KEY_ID}\n    assertion_subject: \"{subject}\"\n    assertion_audience: {aud}\n",
            url = realm.token_endpoint(),
            key = key_file.display(),
            aud = realm.issuer(),
        )
    };
    let server = Server::start(&format!(
        "profiles:\n{}{}",
        profile("alice", "alice@partner"),
        profile("nobody", "nobody@partner")
    ))
    .await;

    let token = server
        .get("alice")
        .await
        .unwrap_or_else(|s| panic!("{s:?}"));
    let claims = realm.verify(&token.access_token).await;
    assert_eq!(claims["preferred_username"], "alice", "{claims}");
    assert_eq!(claims["azp"], "tv-bearer", "{claims}");

    let refused = server.get("nobody").await.unwrap_err();
    assert_eq!(refused.code(), Code::FailedPrecondition, "{refused:?}");
    assert!(
        refused.message().contains("invalid_grant"),
        "Keycloak's error is passed on: {}",
        refused.message()
    );
    server.stop().await;
}
