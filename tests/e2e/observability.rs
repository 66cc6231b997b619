//! `/metrics` and `/readyz`: the counters move exactly as the calls made dictate, the
//! scrape parses as Prometheus text, and readiness waits for warm-up.

use std::time::Duration;

use futures::future::join_all;
use tonic::Code;

use crate::support::{Behaviour, Server, TestIdp, config, eventually, seconds_left};

const LOOKUPS: &str = "tokenvend_cache_lookups_total";
const REQUESTS: &str = "tokenvend_requests_total";

#[tokio::test]
async fn cache_lookups_count_misses_coalesced_hits_and_stale_exactly() {
    // Tokens live 3 s and are refreshed at about half of that; the IdP takes 200 ms.
    let idp = TestIdp::start(Behaviour::slow(3, Duration::from_millis(200))).await;
    let server = Server::start(&config("p", &idp, "    refresh_ahead: 0.5\n")).await;

    // Five callers before the IdP answers: the first misses, the others join its request.
    let calls = (0..5).map(|_| async {
        let mut client = server.new_client().await;
        crate::support::get(&mut client, "p").await
    });
    for token in join_all(calls).await {
        assert_eq!(token.unwrap().access_token, "tok-1");
    }
    // Before the refresh time: a hit.
    server.get("p").await.unwrap();
    // The background refresh (due 1.35–1.5 s after the request) fails; the token still
    // has over a second to live, so it is served stale.
    idp.set(Behaviour::html(503));
    eventually(
        Duration::from_secs(5),
        "the failed background refresh",
        || async { (idp.count() >= 2).then_some(()) },
    )
    .await;
    let stale = server.get("p").await.unwrap();
    assert_eq!(stale.access_token, "tok-1");
    assert!(seconds_left(&stale) > 0.0);
    server.get("missing").await.unwrap_err();

    let metrics = server.metrics().await;
    let lookups = |result| metrics.value(LOOKUPS, &[("profile", "p"), ("result", result)]);
    assert_eq!(lookups("miss"), 1.0, "{}", metrics.text);
    assert_eq!(lookups("coalesced"), 4.0, "{}", metrics.text);
    assert_eq!(lookups("hit"), 1.0, "{}", metrics.text);
    assert_eq!(lookups("stale"), 1.0, "{}", metrics.text);

    let served = [
        ("rpc", "GetToken"),
        ("profile", "p"),
        ("outcome", "served"),
        ("code", "OK"),
    ];
    assert_eq!(metrics.value(REQUESTS, &served), 7.0);
    let unknown = [
        ("profile", "(unknown)"),
        ("outcome", "not_found"),
        ("code", "NOT_FOUND"),
    ];
    assert_eq!(
        metrics.value(REQUESTS, &unknown),
        1.0,
        "a profile name callers made up is not a label of its own"
    );
    assert!(!metrics.text.contains("missing"), "{}", metrics.text);

    let idp_requests = "tokenvend_idp_requests_total";
    assert_eq!(
        metrics.value(idp_requests, &[("profile", "p"), ("outcome", "ok")]),
        1.0
    );
    assert!(metrics.value(idp_requests, &[("outcome", "http_error")]) >= 1.0);
    let refreshes = "tokenvend_refreshes_total";
    assert_eq!(metrics.value(refreshes, &[("trigger", "caller")]), 1.0);
    assert!(metrics.value(refreshes, &[("trigger", "background")]) >= 1.0);
    let failures = [
        ("profile", "p"),
        ("trigger", "background"),
        ("reason", "http_error"),
    ];
    assert!(metrics.value("tokenvend_refresh_failures_total", &failures) >= 1.0);

    let duration = "http_client_request_duration_seconds";
    assert_eq!(
        metrics.observations(
            duration,
            &[("profile", "p"), ("http_response_status_code", "200")]
        ),
        1.0,
        "{}",
        metrics.text
    );
    assert!(metrics.observations(duration, &[("error_type", "http_error")]) >= 1.0);
    let waits = "tokenvend_cache_wait_duration_seconds";
    assert_eq!(metrics.observations(waits, &[("result", "miss")]), 1.0);
    assert_eq!(metrics.observations(waits, &[("result", "coalesced")]), 4.0);

    let left = metrics.value(
        "tokenvend_token_time_to_expiry_seconds",
        &[("profile", "p")],
    );
    assert!(left > 0.0 && left <= 3.0, "{left}");
    assert_eq!(
        metrics.value(
            "tokenvend_build_info",
            &[("version", env!("CARGO_PKG_VERSION"))]
        ),
        1.0,
        "{:?}",
        metrics.names()
    );
    server.stop().await;
}

#[tokio::test]
async fn refused_calls_are_counted_by_outcome_and_code() {
    let idp = TestIdp::start(Behaviour::oauth_error(401, "invalid_client", "bad secret")).await;
    let server = Server::start(&config("p", &idp, "")).await;
    assert_eq!(
        server.get("p").await.unwrap_err().code(),
        Code::FailedPrecondition
    );
    // In backoff: refused at once, with no IdP request, and counted as a miss.
    assert_eq!(
        server.get("p").await.unwrap_err().code(),
        Code::FailedPrecondition
    );
    assert_eq!(idp.count(), 1);

    let metrics = server.metrics().await;
    let refused = [
        ("profile", "p"),
        ("outcome", "idp_error"),
        ("code", "FAILED_PRECONDITION"),
    ];
    assert_eq!(metrics.value(REQUESTS, &refused), 2.0, "{}", metrics.text);
    assert_eq!(
        metrics.value(LOOKUPS, &[("profile", "p"), ("result", "miss")]),
        2.0
    );
    let failures = [("trigger", "caller"), ("reason", "rejected")];
    assert_eq!(
        metrics.value("tokenvend_refresh_failures_total", &failures),
        1.0
    );
    assert!(
        !metrics.has(
            "tokenvend_token_time_to_expiry_seconds",
            &[("profile", "p")]
        ),
        "no token, no time to expiry"
    );
    server.stop().await;
}

#[tokio::test]
async fn readyz_waits_for_warm_up() {
    let idp = TestIdp::start(Behaviour::slow(3600, Duration::from_millis(800))).await;
    let yaml = format!(
        "profiles:\n{}{}",
        crate::support::profile("warm", &idp, "    warm_up: true\n"),
        crate::support::profile("lazy", &idp, ""),
    );
    let server = Server::start(&yaml).await;
    let readyz = format!("http://{}/readyz", server.admin_addr);

    let response = reqwest::get(&readyz).await.unwrap();
    assert_eq!(response.status(), 503);
    let body = response.text().await.unwrap();
    assert!(
        body.contains("warming up") && body.contains("warm"),
        "{body}"
    );
    assert!(
        !body.contains("lazy"),
        "a lazy profile is not waited for: {body}"
    );

    eventually(Duration::from_secs(5), "ready after warm-up", || async {
        let response = reqwest::get(&readyz).await.ok()?;
        (response.status() == 200).then_some(())
    })
    .await;
    assert_eq!(idp.count(), 1, "the lazy profile was not fetched");
    let livez = reqwest::get(format!("http://{}/livez", server.admin_addr))
        .await
        .unwrap();
    assert_eq!(livez.status(), 200);
    server.stop().await;
}

#[tokio::test]
async fn readyz_is_ready_at_once_without_warm_up() {
    let idp = TestIdp::start(Behaviour::issue(3600)).await;
    let server = Server::start(&config("p", &idp, "")).await;
    let response = reqwest::get(format!("http://{}/readyz", server.admin_addr))
        .await
        .unwrap();
    assert_eq!(response.status(), 200);
    assert_eq!(idp.count(), 0);
    server.stop().await;
}
