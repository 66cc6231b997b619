//! Envoy's external authorization service on the gRPC port: Check answered with the
//! profile's headers, set to replace the client's; the profile chosen from the route's
//! context_extensions, a header, or the route map; denials that give nothing away; the
//! caller (the proxy) authenticated as a GetToken caller; reloads followed. The client is
//! generated from Envoy's own protos (vendored under proto/).

use std::{collections::HashMap, time::Duration};

use prost::Message as _;
use tokenvend::envoy_pb::envoy::{
    config::core::v3::header_value_option::HeaderAppendAction,
    service::auth::v3::{
        AttributeContext, CheckRequest, CheckResponse, DeniedHttpResponse, OkHttpResponse,
        attribute_context, authorization_client::AuthorizationClient, check_response::HttpResponse,
    },
    r#type::v3::StatusCode,
};
use tonic::{
    Code,
    transport::{Certificate, Channel, ClientTlsConfig, Identity},
};

use crate::support::{
    Behaviour, ConfigFile, Server, TestIdp, eventually, profile,
    security::{ClientCert, Pki, SaIssuer, with_bearer},
};

const ENVOY: (&str, &str) = ("mesh", "envoy");

/// What Envoy sends for a request: the route's context_extensions, and the request's
/// host, path and headers.
fn check(
    extensions: &[(&str, &str)],
    host: &str,
    path: &str,
    headers: &[(&str, &str)],
) -> CheckRequest {
    let map = |pairs: &[(&str, &str)]| -> HashMap<String, String> {
        pairs
            .iter()
            .map(|(k, v)| ((*k).to_owned(), (*v).to_owned()))
            .collect()
    };
    CheckRequest {
        attributes: Some(AttributeContext {
            context_extensions: map(extensions),
            request: Some(attribute_context::Request {
                http: Some(attribute_context::HttpRequest {
                    method: "GET".into(),
                    host: host.into(),
                    path: path.into(),
                    headers: map(headers),
                    ..Default::default()
                }),
                ..Default::default()
            }),
            ..Default::default()
        }),
    }
}

/// A profile whose companion header `x-profile` names it, so that a reply shows which
/// profile was chosen.
fn named(name: &str, idp: &TestIdp, allow: &str) -> String {
    profile(
        name,
        idp,
        &format!("    allow: [\"{allow}\"]\n    headers: {{ x-profile: {{ value: {name} }} }}\n"),
    )
}

struct Envoy {
    client: AuthorizationClient<Channel>,
    token: String,
}

impl Envoy {
    async fn new(server: &Server, issuer: &SaIssuer) -> Self {
        Self {
            client: AuthorizationClient::new(server.channel().await),
            token: issuer.token(ENVOY.0, ENVOY.1),
        }
    }

    async fn check(&self, request: CheckRequest) -> Result<CheckResponse, tonic::Status> {
        self.client
            .clone()
            .check(with_bearer(request, &self.token))
            .await
            .map(tonic::Response::into_inner)
    }

    async fn ok(&self, request: CheckRequest) -> OkHttpResponse {
        let response = self.check(request).await.expect("Check answers");
        assert_eq!(
            response.status.as_ref().map(|s| s.code),
            Some(0),
            "{response:?}"
        );
        match response.http_response {
            Some(HttpResponse::OkResponse(ok)) => ok,
            other => panic!("not allowed: {other:?}"),
        }
    }

    /// The profile an allowed request got, from its `x-profile` header.
    async fn chosen(&self, request: CheckRequest) -> String {
        headers(&self.ok(request).await)["x-profile"].clone()
    }
}

fn headers(ok: &OkHttpResponse) -> HashMap<String, String> {
    ok.headers
        .iter()
        .map(|h| {
            let header = h.header.as_ref().unwrap();
            (header.key.clone(), header.value.clone())
        })
        .collect()
}

fn denied(response: &CheckResponse) -> (&DeniedHttpResponse, i32) {
    match &response.http_response {
        Some(HttpResponse::DeniedResponse(denied)) => {
            (denied, denied.status.as_ref().map_or(0, |s| s.code))
        }
        other => panic!("not denied: {other:?}"),
    }
}

fn sa_config(issuer: &SaIssuer, ext_authz: &str, profiles: &str) -> String {
    format!(
        "server:\n  shutdown_delay: 0s\n  reload_interval: 50ms\n{}{ext_authz}profiles:\n{profiles}",
        issuer.auth_yaml()
    )
}

#[tokio::test]
async fn check_sets_the_profiles_headers_over_the_clients_and_shares_the_cache() {
    let idp = TestIdp::start(Behaviour::issue(3600)).await;
    let issuer = SaIssuer::start().await;
    let server = Server::start(&sa_config(
        &issuer,
        "",
        &named("orders", &idp, "system:serviceaccount:mesh:envoy"),
    ))
    .await;
    let envoy = Envoy::new(&server, &issuer).await;

    let ok = envoy
        .ok(check(
            &[("tokenvend_profile", "orders")],
            "api.example.com",
            "/orders",
            &[
                ("authorization", "Bearer smuggled-by-the-client"),
                ("x-profile", "forged"),
                ("x-tokenvend-profile", "orders"),
            ],
        ))
        .await;
    assert_eq!(
        headers(&ok),
        HashMap::from([
            ("authorization".to_owned(), "Bearer tok-1".to_owned()),
            ("x-profile".to_owned(), "orders".to_owned()),
        ])
    );
    for header in &ok.headers {
        assert_eq!(
            header.append_action,
            HeaderAppendAction::OverwriteIfExistsOrAdd as i32,
            "every header replaces the client's: {header:?}"
        );
        #[allow(deprecated)]
        let append = header.append;
        assert_eq!(append, None, "`append` would override the action");
    }
    assert_eq!(
        ok.headers_to_remove,
        ["x-tokenvend-profile"],
        "the selection header does not go upstream"
    );

    // GetToken and Check share one cache: the provider was asked once.
    let token = server
        .client
        .clone()
        .get_token(with_bearer(
            tokenvend::pb::GetTokenRequest {
                profile: "orders".into(),
                ..Default::default()
            },
            &envoy.token,
        ))
        .await
        .unwrap()
        .into_inner();
    assert_eq!(token.access_token, "tok-1");
    envoy
        .ok(check(&[("tokenvend_profile", "orders")], "h", "/", &[]))
        .await;
    assert_eq!(idp.count(), 1);

    let metrics = server.metrics().await;
    let served = [
        ("rpc", "Check"),
        ("profile", "orders"),
        ("outcome", "served"),
        ("code", "OK"),
    ];
    assert_eq!(
        metrics.value("tokenvend_requests_total", &served),
        2.0,
        "{}",
        metrics.text
    );
    server.stop().await;
}

#[tokio::test]
async fn the_profile_comes_from_context_extensions_then_the_header_then_the_route_map() {
    let idp = TestIdp::start(Behaviour::issue(3600)).await;
    let issuer = SaIssuer::start().await;
    let caller = "system:serviceaccount:mesh:envoy";
    let ext_authz = "  ext_authz:\n    routes:\n      - { host: api.example.com, path_prefix: /v2/, profile: v2 }\n      - { host: api.example.com, profile: api }\n";
    let profiles = ["route", "header", "v2", "api"]
        .map(|p| named(p, &idp, caller))
        .concat();
    let server = Server::start(&sa_config(&issuer, ext_authz, &profiles)).await;
    let envoy = Envoy::new(&server, &issuer).await;
    let header = [("x-tokenvend-profile", "header")];
    let route = [("tokenvend_profile", "route")];

    assert_eq!(
        envoy
            .chosen(check(&route, "api.example.com", "/v2/x", &header))
            .await,
        "route"
    );
    assert_eq!(
        envoy
            .chosen(check(&[], "api.example.com", "/v2/x", &header))
            .await,
        "header"
    );
    assert_eq!(
        envoy
            .chosen(check(&[], "API.example.com:443", "/v2/x?y", &[]))
            .await,
        "v2"
    );
    assert_eq!(
        envoy
            .chosen(check(&[], "api.example.com", "/v1/v2/", &[]))
            .await,
        "api"
    );
    let unmatched = envoy
        .check(check(&[], "other.example.com", "/v2/x", &[]))
        .await
        .unwrap();
    assert_eq!(denied(&unmatched).1, StatusCode::Forbidden as i32);
    server.stop().await;
}

#[tokio::test]
async fn unknown_forbidden_and_unchosen_profiles_are_denied_alike() {
    let idp = TestIdp::start(Behaviour::issue(3600)).await;
    let issuer = SaIssuer::start().await;
    let profiles = [
        named("orders", &idp, "system:serviceaccount:mesh:envoy"),
        named("billing", &idp, "system:serviceaccount:billing:api"),
    ]
    .concat();
    let server = Server::start(&sa_config(&issuer, "", &profiles)).await;
    let envoy = Envoy::new(&server, &issuer).await;

    let mut replies = Vec::new();
    for request in [
        check(&[("tokenvend_profile", "billing")], "h", "/", &[]),
        check(&[("tokenvend_profile", "no-such-profile")], "h", "/", &[]),
        check(&[], "h", "/", &[("x-tokenvend-profile", "billing")]),
        check(&[], "h", "/", &[]),
    ] {
        replies.push(envoy.check(request).await.expect("a denial is an answer"));
    }
    let (first, http) = denied(&replies[0]);
    assert_eq!(http, StatusCode::Forbidden as i32);
    assert_eq!(
        replies[0].status.as_ref().unwrap().code,
        Code::PermissionDenied as i32
    );
    assert!(
        first.body.is_empty() && first.headers.is_empty(),
        "{first:?}"
    );
    assert!(replies[0].status.as_ref().unwrap().message.is_empty());
    for reply in &replies[1..] {
        assert_eq!(
            reply.encode_to_vec(),
            replies[0].encode_to_vec(),
            "the replies are the same, byte for byte"
        );
    }
    assert_eq!(idp.count(), 0, "no token was fetched for a refused profile");
    // The audit trail tells them apart (tests/no_secrets_in_logs.rs, which owns the
    // process's log subscriber).
    server.stop().await;
}

#[tokio::test]
async fn the_caller_is_authenticated_by_its_own_metadata_never_by_the_checked_request() {
    let idp = TestIdp::start(Behaviour::issue(3600)).await;
    let issuer = SaIssuer::start().await;
    let server = Server::start(&sa_config(
        &issuer,
        "",
        &named("orders", &idp, "system:serviceaccount:mesh:envoy"),
    ))
    .await;
    let mut client = AuthorizationClient::new(server.channel().await);
    // A valid ServiceAccount token of the allowed identity, but in the checked request's
    // headers (where any client of the proxy can put one), not in the call's metadata.
    let smuggled = format!("Bearer {}", issuer.token(ENVOY.0, ENVOY.1));
    let status = client
        .check(check(
            &[("tokenvend_profile", "orders")],
            "h",
            "/",
            &[("authorization", &smuggled)],
        ))
        .await
        .unwrap_err();
    assert_eq!(status.code(), Code::Unauthenticated, "{status:?}");
    let forged = client
        .check(with_bearer(
            check(&[("tokenvend_profile", "orders")], "h", "/", &[]),
            "not-a-jwt",
        ))
        .await
        .unwrap_err();
    assert_eq!(forged.code(), Code::Unauthenticated, "{forged:?}");

    // Another identity, authenticated but not in the profile's `allow`: denied.
    let other = issuer.token("mesh", "other");
    let reply = client
        .check(with_bearer(
            check(&[("tokenvend_profile", "orders")], "h", "/", &[]),
            &other,
        ))
        .await
        .unwrap()
        .into_inner();
    assert_eq!(denied(&reply).1, StatusCode::Forbidden as i32);
    assert_eq!(idp.count(), 0);
    server.stop().await;
}

#[tokio::test]
async fn a_provider_failure_is_a_503_with_status_unavailable() {
    let idp = TestIdp::start(Behaviour::html(503)).await;
    let issuer = SaIssuer::start().await;
    let server = Server::start(&sa_config(
        &issuer,
        "",
        &named("orders", &idp, "system:serviceaccount:mesh:envoy"),
    ))
    .await;
    let envoy = Envoy::new(&server, &issuer).await;
    let reply = envoy
        .check(check(&[("tokenvend_profile", "orders")], "h", "/", &[]))
        .await
        .unwrap();
    let (response, http) = denied(&reply);
    assert_eq!(http, StatusCode::ServiceUnavailable as i32);
    assert!(
        response.body.is_empty(),
        "the provider's answer is not passed on"
    );
    assert_eq!(
        reply.status.as_ref().unwrap().code,
        Code::Unavailable as i32
    );
    assert!(idp.count() >= 1);
    server.stop().await;
}

#[tokio::test]
async fn a_reload_changes_the_route_map_and_can_turn_the_service_off() {
    let idp = TestIdp::start(Behaviour::issue(3600)).await;
    let issuer = SaIssuer::start().await;
    let caller = "system:serviceaccount:mesh:envoy";
    let routes = |profile: &str| {
        format!("  ext_authz:\n    routes: [{{ host: api.example.com, profile: {profile} }}]\n")
    };
    let profiles = [named("first", &idp, caller), named("second", &idp, caller)].concat();
    let mut file = ConfigFile::new(&sa_config(&issuer, &routes("first"), &profiles));
    let server = Server::start_file(&file).await;
    let envoy = Envoy::new(&server, &issuer).await;
    let request = || check(&[], "api.example.com", "/", &[]);
    assert_eq!(envoy.chosen(request()).await, "first");

    file.update(&sa_config(&issuer, &routes("second"), &profiles));
    eventually(Duration::from_secs(10), "the new route map", || async {
        (envoy.chosen(request()).await == "second").then_some(())
    })
    .await;

    // The caller's rate comes from the service the reload built, not the first one.
    let limited = format!("{}  limits: {{ rate: 0.01, burst: 1 }}\n", routes("second"));
    file.update(&sa_config(&issuer, &limited, &profiles));
    let reply = eventually(Duration::from_secs(10), "the new rate limit", || async {
        let reply = envoy.check(request()).await.unwrap();
        matches!(reply.http_response, Some(HttpResponse::DeniedResponse(_))).then_some(reply)
    })
    .await;
    let (response, http) = denied(&reply);
    assert_eq!(http, StatusCode::TooManyRequests as i32);
    let retry_after = response.headers[0].header.as_ref().unwrap();
    assert_eq!(retry_after.key, "retry-after");
    assert!(
        retry_after.value.parse::<u64>().unwrap() > 0,
        "{retry_after:?}"
    );

    // Off: Envoy sees an error, and denies (`failure_mode_allow: false`).
    file.update(&sa_config(
        &issuer,
        "  ext_authz:\n    enabled: false\n",
        &profiles,
    ));
    let status = eventually(Duration::from_secs(10), "ext_authz turned off", || async {
        envoy.check(request()).await.err()
    })
    .await;
    assert_eq!(status.code(), Code::Unimplemented, "{status:?}");
    server.stop().await;
}

#[tokio::test]
async fn a_check_request_over_its_size_limit_is_refused_unread() {
    let idp = TestIdp::start(Behaviour::issue(3600)).await;
    let issuer = SaIssuer::start().await;
    let server = Server::start(&sa_config(
        &issuer,
        "  ext_authz:\n    max_request_bytes: 2048\n",
        &named("orders", &idp, "system:serviceaccount:mesh:envoy"),
    ))
    .await;
    let envoy = Envoy::new(&server, &issuer).await;
    let extensions = [("tokenvend_profile", "orders")];
    let cookie = "c".repeat(4096);
    let status = envoy
        .check(check(&extensions, "h", "/", &[("cookie", &cookie)]))
        .await
        .unwrap_err();
    assert!(
        matches!(status.code(), Code::OutOfRange | Code::ResourceExhausted),
        "{status:?}"
    );
    assert_eq!(idp.count(), 0);
    // Under the limit, the same request is answered.
    envoy
        .ok(check(&extensions, "h", "/", &[("cookie", "c")]))
        .await;
    server.stop().await;
}

/// Envoy with a client certificate, as its `tokenvend` cluster's TLS context presents it.
async fn envoy_with_certificate(
    server: &Server,
    pki: &Pki,
    identity: &ClientCert,
) -> AuthorizationClient<Channel> {
    let tls = ClientTlsConfig::new()
        .ca_certificate(Certificate::from_pem(&pki.ca_pem))
        .domain_name("localhost")
        .identity(Identity::from_pem(&identity.cert, &identity.key));
    let channel = Channel::from_shared(format!("https://localhost:{}", server.addr.port()))
        .unwrap()
        .tls_config(tls)
        .unwrap()
        .connect()
        .await
        .unwrap();
    AuthorizationClient::new(channel)
}

#[tokio::test]
async fn envoy_authenticated_by_its_client_certificate_gets_its_profiles_only() {
    let idp = TestIdp::start(Behaviour::issue(3600)).await;
    let pki = Pki::new();
    let envoy_id = "spiffe://cluster.local/ns/edge/sa/envoy";
    let yaml = format!(
        "server:\n{}profiles:\n{}",
        pki.tls_yaml(),
        named("orders", &idp, envoy_id)
    );
    let server = Server::start_secured(&yaml).await;
    let request = || check(&[("tokenvend_profile", "orders")], "h", "/", &[]);

    let mut envoy = envoy_with_certificate(&server, &pki, &pki.client(envoy_id)).await;
    let reply = envoy.check(request()).await.unwrap().into_inner();
    let Some(HttpResponse::OkResponse(ok)) = &reply.http_response else {
        panic!("not allowed: {reply:?}");
    };
    assert_eq!(headers(ok)["authorization"], "Bearer tok-1");

    let other = pki.client("spiffe://cluster.local/ns/edge/sa/other");
    let mut other = envoy_with_certificate(&server, &pki, &other).await;
    let reply = other.check(request()).await.unwrap().into_inner();
    assert_eq!(denied(&reply).1, StatusCode::Forbidden as i32);
    assert_eq!(idp.count(), 1);
    server.stop().await;
}
