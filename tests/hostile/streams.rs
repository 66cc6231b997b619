//! What one caller can hold open: `WatchToken` streams and calls waiting on a provider,
//! each capped per caller and given back when closed.

use std::time::Duration;

use tokenvend::pb::WatchTokenRequest;
use tonic::Code;

use crate::support::{Behaviour, Server, TestIdp, eventually, get, profile};

async fn gauge(server: &Server, name: &str) -> f64 {
    server.metrics().await.value(name, &[])
}

#[tokio::test]
async fn watch_streams_are_capped_per_caller_and_released_when_closed() {
    let idp = TestIdp::start(Behaviour::issue(3600)).await;
    let yaml = format!(
        "server:\n  limits: {{ max_watches_per_caller: 3 }}\nprofiles:\n{}",
        profile("demo", &idp, "")
    );
    let server = Server::start(&yaml).await;
    let watch = || async {
        server
            .client
            .clone()
            .watch_token(WatchTokenRequest {
                profile: "demo".into(),
                ..Default::default()
            })
            .await
    };
    let mut streams = Vec::new();
    for _ in 0..3 {
        let mut stream = watch().await.unwrap().into_inner();
        stream.message().await.unwrap().expect("the first token");
        streams.push(stream);
    }
    let refused = watch().await.unwrap_err();
    assert_eq!(refused.code(), Code::ResourceExhausted, "{refused:?}");
    assert!(
        refused.message().contains("max_watches_per_caller"),
        "{refused:?}"
    );
    assert_eq!(gauge(&server, "tokenvend_watch_streams").await, 3.0);

    // Closing the streams gives their places back: nothing of them stays.
    drop(streams);
    eventually(Duration::from_secs(5), "the streams released", || async {
        (gauge(&server, "tokenvend_watch_streams").await == 0.0).then_some(())
    })
    .await;
    let mut stream = watch().await.expect("a place again").into_inner();
    stream.message().await.unwrap().expect("the first token");
    server.stop().await;
}

#[tokio::test]
async fn calls_waiting_on_the_provider_are_capped_per_caller() {
    let idp = TestIdp::start(Behaviour::slow(3600, Duration::from_secs(2))).await;
    let yaml = format!(
        "server:\n  limits: {{ max_pending_per_caller: 2 }}\nprofiles:\n{}",
        profile("demo", &idp, "")
    );
    let server = Server::start(&yaml).await;
    let waiting: Vec<_> = (0..2)
        .map(|_| {
            let mut client = server.client.clone();
            tokio::spawn(async move { get(&mut client, "demo").await })
        })
        .collect();
    eventually(Duration::from_secs(5), "two calls waiting", || async {
        (gauge(&server, "tokenvend_calls_waiting").await == 2.0).then_some(())
    })
    .await;
    let refused = server.get("demo").await.unwrap_err();
    assert_eq!(refused.code(), Code::ResourceExhausted, "{refused:?}");
    assert!(
        refused.message().contains("max_pending_per_caller"),
        "{refused:?}"
    );
    for call in waiting {
        call.await.unwrap().expect("the waiting calls are answered");
    }
    assert_eq!(gauge(&server, "tokenvend_calls_waiting").await, 0.0);
    // A cache hit waits on nothing and is not counted.
    server.get("demo").await.unwrap();
    server.stop().await;
}
