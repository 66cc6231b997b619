//! Identities that pass for another kind: a client certificate whose SAN is written as a
//! ServiceAccount name, and a ServiceAccount token whose `sub` is a SPIFFE ID or a host
//! name. Each kind of identity comes from its own credential, so an `allow` entry of one
//! kind is never met by a credential of the other.

use serde_json::json;
use tokenvend::pb::GetTokenRequest;
use tonic::Code;

use crate::support::{
    Behaviour, Server, TestIdp, get, profile,
    security::{Pki, SaIssuer, sign, with_bearer},
};

const SERVICE_ACCOUNT: &str = "system:serviceaccount:orders:api";

/// One profile `orders` allowed to `allow`, on a server with mutual TLS.
async fn mtls_server(pki: &Pki, idp: &TestIdp, allow: &str) -> Server {
    let yaml = format!(
        "server:\n{}profiles:\n{}",
        pki.tls_yaml(),
        profile("orders", idp, &format!("    allow: [\"{allow}\"]\n"))
    );
    Server::start_secured(&yaml).await
}

#[tokio::test]
async fn a_certificate_named_like_a_service_account_is_not_that_service_account() {
    let idp = TestIdp::start(Behaviour::issue(3600)).await;
    let pki = Pki::new();
    let server = mtls_server(&pki, &idp, SERVICE_ACCOUNT).await;
    for (how, cert) in [
        ("URI SAN", pki.client(SERVICE_ACCOUNT)),
        ("DNS SAN", pki.client_dns(SERVICE_ACCOUNT)),
        (
            "URI SAN, other case",
            pki.client("SYSTEM:serviceaccount:orders:api"),
        ),
    ] {
        let mut client = pki.client_to(server.addr, Some(&cert)).await.unwrap();
        let refused = get(&mut client, "orders").await.unwrap_err();
        assert_eq!(refused.code(), Code::Unauthenticated, "{how}: {refused:?}");
        assert!(
            refused.message().contains("starts with `system:`"),
            "{how}: the caller is told why: {}",
            refused.message()
        );
    }
    assert!(idp.requests().is_empty(), "no token was fetched for anyone");
    server.stop().await;
}

#[tokio::test]
async fn certificate_names_of_no_known_form_are_refused_and_proper_ones_accepted() {
    let idp = TestIdp::start(Behaviour::issue(3600)).await;
    let pki = Pki::new();
    // `*:*:*:*` would match a ServiceAccount name: only a credential of that kind may.
    let server = mtls_server(&pki, &idp, "*:*:*:*").await;
    for (cert, reason) in [
        (
            pki.client("urn:serviceaccount:orders:api"),
            "URI SAN is not a URI",
        ),
        (
            pki.client_dns("x:serviceaccount:orders:api"),
            "DNS SAN is not a host name",
        ),
    ] {
        let mut client = pki.client_to(server.addr, Some(&cert)).await.unwrap();
        let refused = get(&mut client, "orders").await.unwrap_err();
        assert_eq!(refused.code(), Code::Unauthenticated);
        assert!(refused.message().contains(reason), "{}", refused.message());
    }
    server.stop().await;

    // Each proper kind is still its own identity.
    for (allow, cert) in [
        (
            "spiffe://cluster.local/ns/orders/sa/*",
            pki.client("spiffe://cluster.local/ns/orders/sa/api"),
        ),
        ("api.orders.svc", pki.client_dns("api.orders.svc")),
    ] {
        let server = mtls_server(&pki, &idp, allow).await;
        let mut client = pki.client_to(server.addr, Some(&cert)).await.unwrap();
        assert!(get(&mut client, "orders").await.is_ok(), "{allow}");
        server.stop().await;
    }
}

#[tokio::test]
async fn a_service_account_token_cannot_name_a_certificate_identity() {
    let idp = TestIdp::start(Behaviour::issue(3600)).await;
    let issuer = SaIssuer::start().await;
    let subjects = [
        "spiffe://cluster.local/ns/orders/sa/api",
        "api.orders.svc",
        // Not names Kubernetes gives: a separator of the other kind, upper case.
        "system:serviceaccount:orders:api/x",
        "system:serviceaccount:Orders:api",
    ];
    let mut yaml = format!("server:\n{}profiles:\n", issuer.auth_yaml());
    for (i, sub) in subjects.iter().enumerate() {
        yaml += &profile(&format!("p{i}"), &idp, &format!("    allow: [\"{sub}\"]\n"));
    }
    let server = Server::start(&yaml).await;
    for (i, sub) in subjects.iter().enumerate() {
        let token = sign(
            &issuer.key(),
            json!({"alg": "ES256", "kid": "k1"}),
            &issuer.claims("orders", "api", json!({ "sub": sub })),
        );
        let request = GetTokenRequest {
            profile: format!("p{i}"),
            ..Default::default()
        };
        let refused = server
            .client
            .clone()
            .get_token(with_bearer(request, &token))
            .await
            .unwrap_err();
        assert_eq!(refused.code(), Code::Unauthenticated, "{sub}");
        assert!(
            refused.message().contains("`sub`"),
            "{sub}: {}",
            refused.message()
        );
    }
    assert!(idp.requests().is_empty());
    server.stop().await;
}
