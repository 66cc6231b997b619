//! A resource API that rejects every token (the client lacks a permission there) must not
//! turn each `rejected_token` report into a request to the identity provider: a fresh
//! token reported rejected is replaced once per `rejected_token_min_interval`, and the
//! callers are told why they get the same token back.

use std::time::Duration;

use tokenvend::pb::GetTokenRequest;

use crate::support::{Behaviour, Server, TestIdp, config, logs::Logs};

const HINT: &str = "fresh tokens are being rejected: check the API's permissions for this client";

/// Reports `token` rejected; the token got back and the `tokenvend-hint`, if any.
async fn reject(server: &Server, profile: &str, token: &str) -> (String, Option<String>) {
    let response = server
        .client
        .clone()
        .get_token(GetTokenRequest {
            profile: profile.into(),
            rejected_token: token.into(),
            ..Default::default()
        })
        .await
        .unwrap();
    let hint = response
        .metadata()
        .get("tokenvend-hint")
        .map(|v| v.to_str().unwrap().to_owned());
    (response.into_inner().access_token, hint)
}

#[tokio::test]
async fn an_api_rejecting_every_token_gets_one_replacement_per_interval() {
    let logs = Logs::capture();
    let idp = TestIdp::start(Behaviour::issue(3600)).await;
    let server = Server::start(&config(
        "storm",
        &idp,
        "    rejected_token_min_interval: 2s\n",
    ))
    .await;
    let mut current = server.get("storm").await.unwrap().access_token;
    assert_eq!(current, "tok-1");

    // The first report replaces the token; its replacement is rejected too, and from then
    // on every report gets it back, with the hint.
    let (token, hint) = reject(&server, "storm", &current).await;
    assert_eq!((token.as_str(), hint), ("tok-2", None));
    current = token;
    for _ in 0..20 {
        let (token, hint) = reject(&server, "storm", &current).await;
        assert_eq!(token, "tok-2");
        assert_eq!(hint.as_deref(), Some(HINT));
    }
    assert_eq!(idp.count(), 2, "21 reports, one replacement");
    let warnings = logs
        .text()
        .lines()
        .filter(|l| l.contains("WARN") && l.contains("rejects fresh tokens") && l.contains("storm"))
        .count();
    assert_eq!(warnings, 1, "logged once, not once per report");

    // Once the interval has passed the token is no longer fresh: replaced again, once.
    tokio::time::sleep(Duration::from_millis(2100)).await;
    let (token, hint) = reject(&server, "storm", &current).await;
    assert_eq!((token.as_str(), hint), ("tok-3", None));
    let (token, hint) = reject(&server, "storm", &token).await;
    assert_eq!((token.as_str(), hint.as_deref()), ("tok-3", Some(HINT)));
    assert_eq!(idp.count(), 3);
    server.stop().await;
}

#[tokio::test]
async fn by_default_fresh_rejections_are_replaced_once_in_30_seconds() {
    let idp = TestIdp::start(Behaviour::issue(3600)).await;
    let server = Server::start(&config("storm-default", &idp, "")).await;
    let mut current = server.get("storm-default").await.unwrap().access_token;
    for _ in 0..10 {
        current = reject(&server, "storm-default", &current).await.0;
    }
    assert_eq!(current, "tok-2");
    assert_eq!(idp.count(), 2);
    // Callers asking without a report are not affected.
    assert_eq!(
        server.get("storm-default").await.unwrap().access_token,
        "tok-2"
    );
    server.stop().await;
}
