//! What a provider puts in a token response is checked before it is served: tokens and
//! token types that cannot go into a header are refused, lifetimes are clamped to the
//! profile's `max_lifetime`, and short-lived tokens or an early `refresh_in` cannot set
//! tokenvend asking the provider in a loop.

use std::time::Duration;

use serde_json::json;
use tonic::Code;

use crate::support::{Behaviour, Server, TestIdp, config, profile, seconds_left};

#[tokio::test]
async fn tokens_and_token_types_a_header_cannot_carry_are_refused() {
    let huge = "a".repeat(64 * 1024 + 1);
    let bodies = [
        json!({"access_token": "zq9\r\nX-Injected: yes", "expires_in": 60}),
        json!({"access_token": "zq9 X-Injected", "expires_in": 60}),
        json!({"access_token": huge, "expires_in": 60}),
        json!({"access_token": "zq9", "token_type": "", "expires_in": 60}),
        json!({"access_token": "zq9", "token_type": "Bearer\r\nX-Injected: yes", "expires_in": 60}),
        json!({"access_token": "zq9", "token_type": "X".repeat(65), "expires_in": 60}),
    ];
    let mut idps = Vec::new();
    let mut yaml = String::from("profiles:\n");
    for (i, body) in bodies.iter().enumerate() {
        let idp = TestIdp::start(Behaviour::Raw(body.to_string())).await;
        yaml += &profile(&format!("p{i}"), &idp, "");
        idps.push(idp);
    }
    let server = Server::start(&yaml).await;
    for i in 0..bodies.len() {
        let status = server.get(&format!("p{i}")).await.unwrap_err();
        assert_eq!(status.code(), Code::Unavailable, "p{i}: {status:?}");
        let message = status.message();
        assert!(
            message.contains("unusable token response"),
            "p{i}: {message}"
        );
        assert!(
            !message.contains("zq9") && !message.contains("Injected") && !message.contains("aaaa"),
            "p{i}: {message}"
        );
    }
    server.stop().await;
}

#[tokio::test]
async fn a_lifetime_of_centuries_is_clamped_to_max_lifetime() {
    let century = json!({"access_token": "long", "expires_in": 3_000_000_000_u64}).to_string();
    let idp = TestIdp::start(Behaviour::Raw(century)).await;
    let yaml = format!(
        "profiles:\n{}{}",
        profile("default", &idp, ""),
        profile("short", &idp, "    max_lifetime: 2s\n")
    );
    let server = Server::start(&yaml).await;
    let token = server.get("default").await.unwrap();
    let left = seconds_left(&token);
    assert!(
        (86_000.0..=86_400.0).contains(&left),
        "24h by default: {left}"
    );

    let token = server.get("short").await.unwrap();
    assert!(seconds_left(&token) <= 2.0, "{}", seconds_left(&token));
    // Refreshed at ~80% of the clamped lifetime, not in a century.
    crate::support::eventually(Duration::from_secs(5), "a refresh", || async {
        (idp.count() >= 3).then_some(())
    })
    .await;
    server.stop().await;
}

#[tokio::test]
async fn a_millisecond_token_does_not_make_an_idp_storm() {
    let idp = TestIdp::start(Behaviour::Raw(
        json!({"access_token": "brief", "expires_in": 0.001}).to_string(),
    ))
    .await;
    let server = Server::start(&config("p", &idp, "")).await;
    for _ in 0..3 {
        let status = server.get("p").await.unwrap_err();
        assert_eq!(status.code(), Code::Unavailable, "{status:?}");
        assert!(
            status.message().contains("less than the 1s"),
            "{}",
            status.message()
        );
    }
    // Refused tokens put the profile in backoff (1 s, then 2 s, ...): a handful of
    // requests, where the refresher used to ask again at once up to the ceiling (60).
    tokio::time::sleep(Duration::from_millis(2500)).await;
    assert!(idp.count() <= 4, "{} IdP requests in 2.5 s", idp.count());
    server.stop().await;
}

#[tokio::test]
async fn short_lived_tokens_and_an_early_refresh_in_are_refreshed_at_a_bounded_pace() {
    let one_second = TestIdp::start(Behaviour::Raw(
        json!({"access_token": "short", "expires_in": 1}).to_string(),
    ))
    .await;
    let early = TestIdp::start(Behaviour::Raw(
        json!({"access_token": "early", "expires_in": 3600, "refresh_in": 0.001}).to_string(),
    ))
    .await;
    let yaml = format!(
        "profiles:\n{}{}",
        profile("short", &one_second, "    refresh_ahead: 0.1\n"),
        profile("early", &early, ""),
    );
    let server = Server::start(&yaml).await;
    server.get("short").await.unwrap();
    server.get("early").await.unwrap();
    tokio::time::sleep(Duration::from_millis(2500)).await;
    // At most one refresh a second, where 0.1 of a 1 s life made ten.
    assert!(
        one_second.count() <= 4,
        "{} requests in 2.5 s",
        one_second.count()
    );
    // `refresh_in` is taken no earlier than half the lifetime: 30 minutes.
    assert_eq!(early.count(), 1, "{} requests in 2.5 s", early.count());
    server.stop().await;
}
