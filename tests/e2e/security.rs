//! Caller identity and abuse limits: mutual TLS with SPIFFE IDs, Kubernetes
//! ServiceAccount tokens, per-profile `allow`, the start-up refusal, the per-caller rate
//! limit and the ceiling on identity provider requests.

use std::time::Duration;

use serde_json::json;
use tokenvend::pb::{GetTokenRequest, ListProfilesRequest};
use tokenvend_server::{Config, Listeners};
use tokio::net::TcpListener;
use tonic::Code;

use crate::support::{
    Behaviour, Server, TestIdp, get, profile,
    security::{Pki, SaIssuer, new_key, sign, unix_now, with_bearer},
};

const ORDERS: &str = "spiffe://cluster.local/ns/orders/sa/api";

fn request(profile: &str) -> GetTokenRequest {
    GetTokenRequest {
        profile: profile.into(),
        ..Default::default()
    }
}

fn two_profiles(idp: &TestIdp, orders_allow: &str, billing_allow: &str) -> String {
    format!(
        "profiles:\n{}{}",
        profile("orders", idp, &format!("    allow: [\"{orders_allow}\"]\n")),
        profile(
            "billing",
            idp,
            &format!("    allow: [\"{billing_allow}\"]\n")
        ),
    )
}

#[tokio::test]
async fn mtls_caller_gets_only_the_profiles_it_is_allowed() {
    let idp = TestIdp::start(Behaviour::issue(3600)).await;
    let pki = Pki::new();
    let yaml = format!(
        "server:\n{}{}",
        pki.tls_yaml(),
        two_profiles(
            &idp,
            "spiffe://cluster.local/ns/orders/sa/*",
            "spiffe://cluster.local/ns/billing/sa/*"
        )
    );
    let server = Server::start_secured(&yaml).await;
    let mut orders = pki
        .client_to(server.addr, Some(&pki.client(ORDERS)))
        .await
        .unwrap();

    let token = get(&mut orders, "orders").await.unwrap();
    assert_eq!(token.access_token, "tok-1");

    // Another team's profile reads exactly like one that does not exist.
    let denied = get(&mut orders, "billing").await.unwrap_err();
    let unknown = get(&mut orders, "nope").await.unwrap_err();
    assert_eq!(denied.code(), Code::NotFound);
    assert_eq!(
        denied.message().replace("billing", "X"),
        unknown.message().replace("nope", "X")
    );
    let listed = orders
        .list_profiles(ListProfilesRequest {})
        .await
        .unwrap()
        .into_inner();
    let names: Vec<_> = listed.profiles.iter().map(|p| p.name.as_str()).collect();
    assert_eq!(names, ["orders"]);

    // A caller of another namespace gets nothing of orders.
    let mut billing = pki
        .client_to(
            server.addr,
            Some(&pki.client("spiffe://cluster.local/ns/billing/sa/api")),
        )
        .await
        .unwrap();
    assert_eq!(
        get(&mut billing, "orders").await.unwrap_err().code(),
        Code::NotFound
    );
    assert_eq!(
        idp.count(),
        1,
        "only the allowed caller's request reached the IdP"
    );
    server.stop().await;
}

#[tokio::test]
async fn no_certificate_wrong_ca_and_plaintext_get_no_token() {
    let idp = TestIdp::start(Behaviour::issue(3600)).await;
    let pki = Pki::new();
    let yaml = format!(
        "server:\n{}{}",
        pki.tls_yaml(),
        two_profiles(&idp, ORDERS, ORDERS)
    );
    let server = Server::start_secured(&yaml).await;

    let mut anonymous = pki.client_to(server.addr, None).await.unwrap();
    let status = get(&mut anonymous, "orders").await.unwrap_err();
    assert_eq!(status.code(), Code::Unauthenticated);
    assert!(
        status.message().contains("client certificate"),
        "{}",
        status.message()
    );

    // A certificate from a CA the server does not trust fails the handshake.
    let rogue = Pki::new();
    let rogue_cert = rogue.client(ORDERS);
    let wrong_ca = async {
        let mut client = pki.client_to(server.addr, Some(&rogue_cert)).await?;
        Ok::<_, Box<dyn std::error::Error>>(get(&mut client, "orders").await?)
    }
    .await;
    assert!(
        wrong_ca.is_err(),
        "a rogue CA's certificate got {wrong_ca:?}"
    );

    // Plaintext to the TLS port gets nothing either.
    assert!(server.get("orders").await.is_err());
    assert_eq!(idp.count(), 0);
    server.stop().await;
}

#[tokio::test]
async fn a_rotated_server_certificate_is_served_without_restart() {
    let idp = TestIdp::start(Behaviour::issue(3600)).await;
    let pki = Pki::new();
    let yaml = format!(
        "server:\n{}{}",
        pki.tls_yaml(),
        two_profiles(&idp, ORDERS, ORDERS)
    );
    let server = Server::start_secured(&yaml).await;
    let client_cert = pki.client(ORDERS);
    let first = peer_certificate(server.addr, &pki, &client_cert).await;
    let rotated = pki.write_server_cert();
    let mut served = first.clone();
    for _ in 0..50 {
        tokio::time::sleep(Duration::from_millis(100)).await;
        served = peer_certificate(server.addr, &pki, &client_cert).await;
        if served != first {
            break;
        }
    }
    let rotated_der = rustls_pki_der(&rotated);
    assert_eq!(served, rotated_der, "the new certificate is served");
    let mut client = pki
        .client_to(server.addr, Some(&client_cert))
        .await
        .unwrap();
    assert!(get(&mut client, "orders").await.is_ok());
    server.stop().await;
}

fn rustls_pki_der(pem: &str) -> Vec<u8> {
    use base64::{Engine as _, engine::general_purpose::STANDARD};
    let body: String = pem.lines().filter(|l| !l.starts_with("-----")).collect();
    STANDARD.decode(body).unwrap()
}

/// The certificate the server presents, read with a raw TLS handshake.
async fn peer_certificate(
    addr: std::net::SocketAddr,
    pki: &Pki,
    cert: &crate::support::security::ClientCert,
) -> Vec<u8> {
    use tokio_rustls::rustls::{
        self,
        pki_types::{CertificateDer, PrivateKeyDer, ServerName, pem::PemObject},
    };
    let mut roots = rustls::RootCertStore::empty();
    roots
        .add(CertificateDer::from_pem_slice(pki.ca_pem.as_bytes()).unwrap())
        .unwrap();
    let config = rustls::ClientConfig::builder_with_provider(std::sync::Arc::new(
        rustls::crypto::ring::default_provider(),
    ))
    .with_safe_default_protocol_versions()
    .unwrap()
    .with_root_certificates(roots)
    .with_client_auth_cert(
        vec![CertificateDer::from_pem_slice(cert.cert.as_bytes()).unwrap()],
        PrivateKeyDer::from_pem_slice(cert.key.as_bytes()).unwrap(),
    )
    .unwrap();
    let tcp = tokio::net::TcpStream::connect(addr).await.unwrap();
    let tls = tokio_rustls::TlsConnector::from(std::sync::Arc::new(config))
        .connect(ServerName::try_from("localhost").unwrap(), tcp)
        .await
        .unwrap();
    tls.get_ref().1.peer_certificates().unwrap()[0].to_vec()
}

#[tokio::test]
async fn service_account_tokens_are_verified() {
    let idp = TestIdp::start(Behaviour::issue(3600)).await;
    let issuer = SaIssuer::start().await;
    let yaml = format!(
        "server:\n{}{}",
        issuer.auth_yaml(),
        two_profiles(
            &idp,
            "system:serviceaccount:orders:*",
            "system:serviceaccount:billing:api"
        )
    );
    let server = Server::start(&yaml).await;
    let client = server.client.clone();
    let call = |token: String| {
        let mut client = client.clone();
        async move {
            client
                .get_token(with_bearer(request("orders"), &token))
                .await
        }
    };

    let ok = call(issuer.token("orders", "api"))
        .await
        .unwrap()
        .into_inner();
    assert_eq!(ok.access_token, "tok-1");
    // The same token again is answered from the verification cache: no JWKS fetch.
    call(issuer.token("orders", "api")).await.unwrap();
    assert_eq!(
        issuer
            .jwks_fetches
            .load(std::sync::atomic::Ordering::SeqCst),
        1
    );

    let key = issuer.key();
    let now = unix_now();
    let es256 = json!({"alg": "ES256", "kid": "k1"});
    let cases = [
        (
            "expired",
            sign(
                &key,
                es256.clone(),
                &issuer.claims("orders", "api", json!({"exp": now - 120})),
            ),
            "expired",
        ),
        (
            "wrong audience",
            sign(
                &key,
                es256.clone(),
                &issuer.claims("orders", "api", json!({"aud": "kubernetes"})),
            ),
            "audience",
        ),
        (
            "wrong key",
            sign(
                &new_key(),
                es256.clone(),
                &issuer.claims("orders", "api", json!({})),
            ),
            "signature",
        ),
        (
            "alg none",
            format!(
                "{}.{}.",
                b64(&json!({"alg": "none", "kid": "k1"})),
                b64(&issuer.claims("orders", "api", json!({})))
            ),
            "accepted algorithm",
        ),
        ("not a JWT", "hello".to_owned(), "accepted algorithm"),
    ];
    for (what, token, says) in cases {
        let status = call(token).await.unwrap_err();
        assert_eq!(status.code(), Code::Unauthenticated, "{what}: {status:?}");
        assert!(
            status.message().contains(says),
            "{what}: {}",
            status.message()
        );
    }
    // No token at all.
    let status = client
        .clone()
        .get_token(request("orders"))
        .await
        .unwrap_err();
    assert_eq!(status.code(), Code::Unauthenticated);
    // Another namespace is not allowed.
    let status = call(issuer.token("billing", "api")).await.unwrap_err();
    assert_eq!(status.code(), Code::NotFound);

    // A key rotation: a token under a new `kid` makes tokenvend fetch the keys again.
    let rotated = issuer.rotate("k2");
    tokio::time::sleep(Duration::from_millis(250)).await;
    let token = sign(
        &rotated,
        json!({"alg": "ES256", "kid": "k2"}),
        &issuer.claims("orders", "web", json!({})),
    );
    assert!(call(token).await.is_ok());
    // Unknown kids in a flood cause at most one fetch per refetch interval.
    let before = issuer
        .jwks_fetches
        .load(std::sync::atomic::Ordering::SeqCst);
    for i in 0..20 {
        let forged = sign(
            &new_key(),
            json!({"alg": "ES256", "kid": format!("x{i}")}),
            &issuer.claims("orders", "api", json!({})),
        );
        assert_eq!(
            call(forged).await.unwrap_err().code(),
            Code::Unauthenticated
        );
    }
    let after = issuer
        .jwks_fetches
        .load(std::sync::atomic::Ordering::SeqCst);
    assert!(
        after - before <= 2,
        "{} fetches for 20 forged kids",
        after - before
    );
    assert_eq!(idp.count(), 1);
    call(issuer.token("orders", "api")).await.unwrap();
    server.stop().await;
}

fn b64(value: &serde_json::Value) -> String {
    use base64::{Engine as _, engine::general_purpose::URL_SAFE_NO_PAD};
    URL_SAFE_NO_PAD.encode(value.to_string())
}

#[tokio::test]
async fn open_non_loopback_listener_is_refused_unless_explicitly_allowed() {
    let idp = TestIdp::start(Behaviour::issue(3600)).await;
    let serve = |yaml: String| async move {
        let config = Config::from_yaml(&yaml).unwrap();
        let grpc = TcpListener::bind("0.0.0.0:0").await.unwrap();
        let (stop, stopped) = tokio::sync::oneshot::channel::<()>();
        let task = tokio::spawn(tokenvend_server::serve(
            Listeners {
                grpc,
                admin: None,
                forward_auth: None,
            },
            config,
            async move {
                let _ = stopped.await;
            },
        ));
        (task, stop)
    };
    let (refused, _stop) = serve(crate::support::config("p", &idp, "")).await;
    let error = refused.await.unwrap().unwrap_err().to_string();
    assert!(error.contains("without caller authentication"), "{error}");
    assert!(error.contains("allow_unauthenticated"), "{error}");

    let (open, stop) = serve(format!(
        "server:\n  auth:\n    allow_unauthenticated: true\n{}",
        crate::support::config("p", &idp, "")
    ))
    .await;
    tokio::time::sleep(Duration::from_millis(100)).await;
    assert!(!open.is_finished(), "it serves when told to");
    stop.send(()).unwrap();
    open.await.unwrap().unwrap();
}

#[tokio::test]
async fn a_caller_over_its_rate_is_told_when_to_retry_and_then_recovers() {
    let idp = TestIdp::start(Behaviour::issue(3600)).await;
    let server = Server::start(&format!(
        "server:\n  limits:\n    rate: 5\n    burst: 2\n{}",
        crate::support::config("p", &idp, "")
    ))
    .await;
    server.get("p").await.unwrap();
    server.get("p").await.unwrap();
    let status = server.get("p").await.unwrap_err();
    assert_eq!(status.code(), Code::ResourceExhausted);
    assert!(
        status.message().contains("retry in"),
        "{}",
        status.message()
    );
    assert_eq!(status.metadata().get("retry-after").unwrap(), "1");
    let pushback: u64 = status
        .metadata()
        .get("grpc-retry-pushback-ms")
        .unwrap()
        .to_str()
        .unwrap()
        .parse()
        .unwrap();
    assert!((1..=200).contains(&pushback), "{pushback}");
    tokio::time::sleep(Duration::from_millis(pushback + 10)).await;
    assert!(server.get("p").await.is_ok(), "the bucket refills");
    server.stop().await;
}

#[tokio::test]
async fn rejected_tokens_cannot_drain_the_idp_beyond_its_ceiling() {
    let idp = TestIdp::start(Behaviour::issue(3600)).await;
    let server = Server::start(&crate::support::config(
        "p",
        &idp,
        // Spacing off, so that every report of a fresh token asks the provider: the
        // ceiling alone must hold.
        "    idp_requests_per_minute: 3\n    rejected_token_min_interval: 0s\n",
    ))
    .await;
    let mut client = server.client.clone();
    let mut current = server.get("p").await.unwrap().access_token;
    let mut exhausted = None;
    for _ in 0..10 {
        match client
            .get_token(GetTokenRequest {
                profile: "p".into(),
                rejected_token: current.clone(),
                ..Default::default()
            })
            .await
        {
            Ok(token) => current = token.into_inner().access_token,
            Err(status) => {
                exhausted = Some(status);
                break;
            }
        }
    }
    let status = exhausted.expect("the ceiling is reached");
    assert_eq!(status.code(), Code::ResourceExhausted);
    assert!(
        status
            .message()
            .contains("3 identity provider requests per minute"),
        "{}",
        status.message()
    );
    assert!(status.metadata().get("retry-after").is_some());
    assert_eq!(idp.count(), 3);
    // Callers without special needs still get the cached token.
    assert_eq!(server.get("p").await.unwrap().access_token, current);
    server.stop().await;
}
