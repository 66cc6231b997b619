//! The admin port as anyone on the network reaches it: `/metrics` names every profile, so
//! it is served only to a scraper holding the metrics token (or on loopback, or where the
//! configuration opens it on purpose); the probes stay open and name no profile; and an
//! admin port open to the network with nothing guarding `/metrics` does not start.

use std::net::SocketAddr;

use reqwest::StatusCode;
use tokenvend_server::{Config, Listeners};
use tokio::{net::TcpListener, sync::oneshot, task::JoinHandle};

use crate::support::{Behaviour, Server, TestIdp, config, eventually, profile};

/// A profile name that must not leak to someone without the token.
const SECRET_NAME: &str = "payroll-export";

/// GET `path` on the admin port, with `authorization` if given: the status and body.
async fn admin_get(
    admin: SocketAddr,
    path: &str,
    authorization: Option<&str>,
) -> (StatusCode, String) {
    let mut request = reqwest::Client::new().get(format!("http://{admin}{path}"));
    if let Some(value) = authorization {
        request = request.header("authorization", value);
    }
    let response = request.send().await.unwrap();
    (response.status(), response.text().await.unwrap())
}

#[tokio::test]
async fn metrics_need_the_token_and_probes_name_no_profile() {
    let idp = TestIdp::start(Behaviour::issue(3600)).await;
    let dir = tempfile::tempdir().unwrap();
    let token_file = dir.path().join("metrics-token");
    std::fs::write(&token_file, "scrape-me-7f3a\n").unwrap();
    // A second profile that never gets a token keeps the server warming up.
    let down = TestIdp::start(Behaviour::html(503)).await;
    let server = Server::start(&format!(
        "server:\n  admin: {{ metrics_token: {{ file: {} }} }}\nprofiles:\n{}{}",
        token_file.display(),
        profile(SECRET_NAME, &idp, ""),
        profile(
            "warm-payroll",
            &down,
            "    warm_up: true\n    retry: { initial: 1h, max: 1h }\n"
        ),
    ))
    .await;
    server.get(SECRET_NAME).await.unwrap();
    let admin = server.admin_addr;

    for authorization in [
        None,
        Some("Bearer wrong"),
        Some("Bearer scrape-me-7f3"),
        Some("Bearer scrape-me-7f3ab"),
        Some("Basic c2NyYXBlLW1lLTdmM2E="),
        Some("scrape-me-7f3a"),
    ] {
        let (status, body) = admin_get(admin, "/metrics", authorization).await;
        assert_eq!(status, StatusCode::UNAUTHORIZED, "{authorization:?}");
        assert!(!body.contains("payroll"), "{authorization:?}: {body}");
    }
    let (status, body) = admin_get(admin, "/metrics", Some("Bearer scrape-me-7f3a")).await;
    assert_eq!(status, StatusCode::OK);
    assert!(
        body.contains(SECRET_NAME),
        "the token holder sees the profiles"
    );
    let (status, _) = admin_get(admin, "/metrics", Some("bearer scrape-me-7f3a")).await;
    assert_eq!(status, StatusCode::OK, "the scheme is case-insensitive");

    // The probes answer anyone, and say no profile's name.
    let (status, body) = admin_get(admin, "/livez", None).await;
    assert_eq!(status, StatusCode::OK);
    assert!(!body.contains("payroll"), "{body}");
    let (status, body) = admin_get(admin, "/readyz", None).await;
    assert_eq!(status, StatusCode::SERVICE_UNAVAILABLE);
    assert!(body.contains("warming up: 1 profile"), "{body}");
    assert!(!body.contains("payroll"), "{body}");

    // A rotated token file is the token from the next scrape on.
    std::fs::write(&token_file, "rotated-91c2").unwrap();
    let (status, _) = admin_get(admin, "/metrics", Some("Bearer scrape-me-7f3a")).await;
    assert_eq!(status, StatusCode::UNAUTHORIZED);
    let (status, _) = admin_get(admin, "/metrics", Some("Bearer rotated-91c2")).await;
    assert_eq!(status, StatusCode::OK);
    server.stop().await;
}

/// `serve` with the admin listener on every address (reached here through loopback).
async fn serve_admin_on_any_address(
    yaml: &str,
) -> (
    SocketAddr,
    JoinHandle<Result<(), tokenvend_server::server::ServerError>>,
    oneshot::Sender<()>,
) {
    let config = Config::from_yaml(yaml).unwrap();
    let grpc = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let admin = TcpListener::bind("0.0.0.0:0").await.unwrap();
    let port = admin.local_addr().unwrap().port();
    let (stop, stopped) = oneshot::channel::<()>();
    let task = tokio::spawn(tokenvend_server::serve(
        Listeners {
            grpc,
            admin: Some(admin),
            forward_auth: None,
        },
        config,
        async move {
            let _ = stopped.await;
        },
    ));
    (SocketAddr::from(([127, 0, 0, 1], port)), task, stop)
}

#[tokio::test]
async fn an_admin_port_open_to_the_network_starts_only_with_metrics_guarded_or_opened_on_purpose() {
    let idp = TestIdp::start(Behaviour::issue(3600)).await;
    let profiles = config(SECRET_NAME, &idp, "");

    let (_, refused, _stop) = serve_admin_on_any_address(&profiles).await;
    let error = refused.await.unwrap().unwrap_err().to_string();
    assert!(error.contains("server.admin.metrics_token"), "{error}");
    assert!(error.contains("unauthenticated_metrics"), "{error}");

    // With a token: started, and the token is asked for.
    let (admin, task, stop) = serve_admin_on_any_address(&format!(
        "server:\n  admin: {{ metrics_token: {{ value: t0k }} }}\n{profiles}"
    ))
    .await;
    let status = eventually(
        std::time::Duration::from_secs(10),
        "the admin port",
        || async {
            let response = reqwest::get(format!("http://{admin}/metrics")).await.ok()?;
            Some(response.status())
        },
    )
    .await;
    assert_eq!(status, StatusCode::UNAUTHORIZED);
    assert_eq!(
        admin_get(admin, "/metrics", Some("Bearer t0k")).await.0,
        StatusCode::OK
    );
    stop.send(()).unwrap();
    task.await.unwrap().unwrap();

    // Opened on purpose: served to anyone.
    let (admin, task, stop) = serve_admin_on_any_address(&format!(
        "server:\n  admin: {{ unauthenticated_metrics: true }}\n{profiles}"
    ))
    .await;
    let (status, body) = eventually(
        std::time::Duration::from_secs(10),
        "the admin port",
        || async {
            let response = reqwest::get(format!("http://{admin}/metrics")).await.ok()?;
            Some((response.status(), response.text().await.ok()?))
        },
    )
    .await;
    assert_eq!(status, StatusCode::OK);
    assert!(body.contains("tokenvend"), "{body}");
    stop.send(()).unwrap();
    task.await.unwrap().unwrap();
}
