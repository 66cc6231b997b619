//! `serve --dev`: the demo issuer vends a verifiable JWT; health and reflection answer.

use std::time::Duration;

use base64::{Engine as _, engine::general_purpose::URL_SAFE_NO_PAD};
use p256::ecdsa::{Signature, VerifyingKey, signature::Verifier as _};
use serde_json::Value;
use tokenvend_server::{config::ServerConfig, dev::DevIssuer};
use tonic_health::pb::{
    HealthCheckRequest, health_check_response::ServingStatus, health_client::HealthClient,
};
use tonic_reflection::pb::v1::{
    ServerReflectionRequest, server_reflection_client::ServerReflectionClient,
    server_reflection_request::MessageRequest, server_reflection_response::MessageResponse,
};

use crate::support::{Server, seconds_left};

#[tokio::test]
async fn the_demo_profile_vends_a_jwt_signed_by_the_dev_issuer() {
    let issuer = DevIssuer::start(Duration::from_secs(300)).await.unwrap();
    let server = Server::start_with(issuer.config(ServerConfig::default())).await;
    let token = server.get("demo").await.unwrap();
    assert_eq!(token.token_type, "Bearer");
    assert!((290.0..=300.0).contains(&seconds_left(&token)));
    assert_eq!(
        token.headers["authorization"],
        format!("Bearer {}", token.access_token)
    );

    let discovery: Value =
        reqwest::get(format!("{}/.well-known/openid-configuration", issuer.url()))
            .await
            .unwrap()
            .json()
            .await
            .unwrap();
    let jwks: Value = reqwest::get(discovery["jwks_uri"].as_str().unwrap())
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    let key = &jwks["keys"][0];
    let coordinate = |name: &str| URL_SAFE_NO_PAD.decode(key[name].as_str().unwrap()).unwrap();
    let point = p256::EncodedPoint::from_affine_coordinates(
        coordinate("x").as_slice().into(),
        coordinate("y").as_slice().into(),
        false,
    );
    let verifier = VerifyingKey::from_encoded_point(&point).unwrap();

    let (input, signature) = token.access_token.rsplit_once('.').unwrap();
    let signature = Signature::from_slice(&URL_SAFE_NO_PAD.decode(signature).unwrap()).unwrap();
    verifier
        .verify(input.as_bytes(), &signature)
        .expect("signature verifies");
    let claims: Value = serde_json::from_slice(
        &URL_SAFE_NO_PAD
            .decode(input.split('.').nth(1).unwrap())
            .unwrap(),
    )
    .unwrap();
    assert_eq!(claims["iss"], issuer.url());
    assert_eq!(claims["scope"], "demo.read");
    server.stop().await;
}

#[tokio::test]
async fn health_and_reflection_answer() {
    let issuer = DevIssuer::start(Duration::from_secs(300)).await.unwrap();
    let server = Server::start_with(issuer.config(ServerConfig::default())).await;

    let mut health = HealthClient::new(server.channel().await);
    for service in ["", "tokenvend.v1.TokenService"] {
        let status = health
            .check(HealthCheckRequest {
                service: service.into(),
            })
            .await
            .unwrap()
            .into_inner()
            .status();
        assert_eq!(status, ServingStatus::Serving, "{service:?}");
    }

    let mut reflection = ServerReflectionClient::new(server.channel().await);
    let request = ServerReflectionRequest {
        host: String::new(),
        message_request: Some(MessageRequest::ListServices(String::new())),
    };
    let mut replies = reflection
        .server_reflection_info(futures::stream::iter([request]))
        .await
        .unwrap()
        .into_inner();
    let reply = replies.message().await.unwrap().unwrap();
    let Some(MessageResponse::ListServicesResponse(list)) = reply.message_response else {
        panic!("unexpected reflection reply: {reply:?}");
    };
    let names: Vec<_> = list.service.into_iter().map(|s| s.name).collect();
    for expected in [
        "tokenvend.v1.TokenService",
        "grpc.health.v1.Health",
        "envoy.service.auth.v3.Authorization",
    ] {
        assert!(names.iter().any(|n| n == expected), "{names:?}");
    }

    // Older tools speak v1alpha.
    use tonic_reflection::pb::v1alpha;
    let mut reflection =
        v1alpha::server_reflection_client::ServerReflectionClient::new(server.channel().await);
    let request = v1alpha::ServerReflectionRequest {
        host: String::new(),
        message_request: Some(
            v1alpha::server_reflection_request::MessageRequest::FileContainingSymbol(
                "tokenvend.v1.TokenService".into(),
            ),
        ),
    };
    let reply = reflection
        .server_reflection_info(futures::stream::iter([request]))
        .await
        .unwrap()
        .into_inner()
        .message()
        .await
        .unwrap()
        .unwrap();
    assert!(
        matches!(
            reply.message_response,
            Some(v1alpha::server_reflection_response::MessageResponse::FileDescriptorResponse(_))
        ),
        "{reply:?}"
    );
    server.stop().await;
}
