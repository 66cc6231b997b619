//! Client authentication without a secret on the wire: `client_secret_jwt`, and a
//! workload's own JWT as a federated client assertion.

use std::{
    net::SocketAddr,
    path::Path,
    sync::atomic::{AtomicU64, Ordering},
    time::{Duration, SystemTime},
};

use axum::{Json, Router, routing::get};
use base64::{Engine as _, engine::general_purpose::URL_SAFE_NO_PAD};
use jsonwebtoken::{Algorithm, EncodingKey, Header};
use serde_json::json;
use tonic::Code;

use super::server::{Realm, keycloak};
use crate::support::{Server, eventually};

/// The `kid` of a [`WorkloadIssuer`]'s key.
pub(super) const KEY_ID: &str = "workload-1";

const SECRET: &str = "s3cr+t/=:%&?-keycloak-hmac-secret-of-32-bytes-or-more";

#[tokio::test]
async fn client_secret_jwt_is_accepted_and_a_wrong_secret_is_refused() {
    let Some(keycloak) = keycloak() else {
        return;
    };
    let realm = keycloak.realm("client-secret-jwt").await;
    realm
        .client(json!({
            "clientId": "tv-hs",
            "publicClient": false,
            "serviceAccountsEnabled": true,
            "standardFlowEnabled": false,
            "clientAuthenticatorType": "client-secret-jwt",
            "secret": SECRET,
        }))
        .await;
    let profile = |name: &str, secret: &str| {
        format!(
            "  {name}:\n    token_url: {url}\n    client_id: tv-hs\n    auth_method: client_secret_jwt\n    client_secret: {{ value: \"{secret}\" }}\n    rejected_token_min_interval: 0s\n",
            url = realm.token_endpoint(),
        )
    };
    let server = Server::start(&format!(
        "profiles:\n{}{}",
        profile("hs", SECRET),
        profile("wrong", "a-different-secret-of-at-least-thirty-two-bytes")
    ))
    .await;

    let first = server.get("hs").await.unwrap_or_else(|s| panic!("{s:?}"));
    let claims = realm.verify(&first.access_token).await;
    assert_eq!(claims["azp"], "tv-hs", "{claims}");
    // Keycloak refuses an assertion it has seen (`jti`): the next token needs a new one.
    let second = server
        .reject("hs", &first.access_token)
        .await
        .unwrap_or_else(|s| panic!("{s:?}"));
    assert_ne!(second.access_token, first.access_token);
    realm.verify(&second.access_token).await;

    let refused = server.get("wrong").await.unwrap_err();
    assert_eq!(refused.code(), Code::FailedPrecondition, "{refused:?}");
    assert!(
        refused.message().contains("unauthorized_client"),
        "Keycloak's error is passed on: {}",
        refused.message()
    );
    server.stop().await;
}

/// A workload identity issuer on loopback, as a Kubernetes API server or a SPIFFE server
/// is: it signs JWTs for its workloads and publishes its keys.
pub(super) struct WorkloadIssuer {
    pub(super) url: String,
    /// The signing key, PEM (PKCS#8), as tokenvend's `private_key` reads it.
    pub(super) key_pem: String,
    key: EncodingKey,
    _task: tokio::task::JoinHandle<()>,
}

impl WorkloadIssuer {
    pub(super) async fn start() -> Self {
        let pair = rcgen::KeyPair::generate().unwrap();
        let point = pair.public_key_raw();
        let jwks = json!({ "keys": [{
            "kty": "EC",
            "crv": "P-256",
            "x": URL_SAFE_NO_PAD.encode(&point[1..33]),
            "y": URL_SAFE_NO_PAD.encode(&point[33..]),
            "kid": KEY_ID,
            "alg": "ES256",
            "use": "sig",
        }]});
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr: SocketAddr = listener.local_addr().unwrap();
        let app = Router::new().route("/jwks", get(move || async move { Json(jwks.clone()) }));
        let task = tokio::spawn(async move {
            axum::serve(listener, app).await.unwrap();
        });
        Self {
            url: format!("http://{addr}"),
            key: EncodingKey::from_ec_pem(pair.serialize_pem().as_bytes()).unwrap(),
            key_pem: pair.serialize_pem(),
            _task: task,
        }
    }

    /// A token for the workload `sub`, for the audience `aud`, as a projected
    /// ServiceAccount token is.
    fn token(&self, sub: &str, aud: &str) -> String {
        self.sign(&self.url, sub, aud)
    }

    /// A token signed with this issuer's key, whoever it claims to be from.
    fn sign(&self, iss: &str, sub: &str, aud: &str) -> String {
        static ISSUED: AtomicU64 = AtomicU64::new(0);
        let now = SystemTime::now()
            .duration_since(SystemTime::UNIX_EPOCH)
            .unwrap()
            .as_secs();
        let mut header = Header::new(Algorithm::ES256);
        header.kid = Some(KEY_ID.into());
        let claims = json!({
            "iss": iss,
            "sub": sub,
            "aud": [aud],
            "iat": now,
            "nbf": now,
            "exp": now + 600,
            "jti": format!("{now}-{}", ISSUED.fetch_add(1, Ordering::Relaxed)),
        });
        jsonwebtoken::encode(&header, &claims, &self.key).unwrap()
    }

    /// Registers this issuer in `realm` as an identity provider whose JWTs authenticate
    /// clients.
    async fn trust(&self, realm: &Realm, alias: &str) {
        realm
            .admin_post(
                "/identity-provider/instances",
                json!({
                    "alias": alias,
                    "providerId": "oidc",
                    "enabled": true,
                    "hideOnLogin": true,
                    "config": {
                        "issuer": self.url,
                        "jwksUrl": format!("{}/jwks", self.url),
                        "useJwksUrl": "true",
                        "validateSignature": "true",
                        "supportsClientAssertions": "true",
                        "clientId": "unused",
                        "clientSecret": "unused",
                        "authorizationUrl": format!("{}/unused", self.url),
                        "tokenUrl": format!("{}/unused", self.url),
                    },
                }),
            )
            .await;
    }
}

fn write(path: &Path, text: &str) {
    // Replaced whole, as the kubelet swaps a projected token in with a rename.
    let tmp = path.with_extension("tmp");
    std::fs::write(&tmp, text).unwrap();
    std::fs::rename(&tmp, path).unwrap();
}

#[tokio::test]
async fn a_workload_token_from_a_file_authenticates_a_federated_client() {
    let Some(keycloak) = keycloak() else {
        return;
    };
    let realm = keycloak.realm("federated").await;
    let issuer = WorkloadIssuer::start().await;
    issuer.trust(&realm, "cluster").await;
    let sub = "system:serviceaccount:orders:tokenvend";
    realm
        .client(json!({
            "clientId": "orders-api",
            "publicClient": false,
            "serviceAccountsEnabled": true,
            "standardFlowEnabled": false,
            "clientAuthenticatorType": "federated-jwt",
            "attributes": {
                "jwt.credential.issuer": "cluster",
                "jwt.credential.sub": sub,
            },
        }))
        .await;
    let dir = tempfile::tempdir().unwrap();
    let token_file = dir.path().join("token");
    write(&token_file, &issuer.token(sub, &realm.issuer()));
    let stranger = WorkloadIssuer::start().await;
    let forged_file = dir.path().join("forged");
    // Signed by a key Keycloak does not trust, with the same claims.
    write(
        &forged_file,
        &stranger.sign(&issuer.url, sub, &realm.issuer()),
    );

    let server = Server::start(&format!(
        "profiles:\n  fed:\n    token_url: {url}\n    auth_method: client_assertion\n    client_assertion: {{ file: {file} }}\n    rejected_token_min_interval: 0s\n  forged:\n    token_url: {url}\n    client_assertion: {{ file: {forged} }}\n",
        url = realm.token_endpoint(),
        file = token_file.display(),
        forged = forged_file.display(),
    ))
    .await;
    let first = server.get("fed").await.unwrap_or_else(|s| panic!("{s:?}"));
    let claims = realm.verify(&first.access_token).await;
    assert_eq!(claims["azp"], "orders-api", "{claims}");

    // Keycloak refuses an assertion it has seen (unless the identity provider allows
    // reuse): the same file gets no second token.
    let again = server.reject("fed", &first.access_token).await.unwrap_err();
    assert_eq!(again.code(), Code::FailedPrecondition, "{again:?}");
    assert!(again.message().contains("reuse"), "{}", again.message());

    // The kubelet rotates the token: the next request, once the backoff after the
    // refusal has passed, sends the new one.
    write(&token_file, &issuer.token(sub, &realm.issuer()));
    let second = eventually(
        Duration::from_secs(10),
        "a token for the rotated assertion",
        || async { server.reject("fed", &first.access_token).await.ok() },
    )
    .await;
    assert_ne!(second.access_token, first.access_token);
    realm.verify(&second.access_token).await;

    let refused = server.get("forged").await.unwrap_err();
    assert_eq!(refused.code(), Code::FailedPrecondition, "{refused:?}");
    assert!(
        refused.message().contains("invalid_client"),
        "Keycloak's error is passed on: {}",
        refused.message()
    );
    server.stop().await;
}
