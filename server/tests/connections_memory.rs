//! A real `tokenvend` process holding 5,000 connections of a template profile, each with
//! a cached 1,200-byte access token, stays within a memory bound: connections are slots in
//! a bounded cache, not tasks, and share their profile's configuration.
//!
//! The bound is set from the measured growth (BENCHMARKS.md: the release figure, and this
//! debug build's) with headroom: it fails if a connection starts costing, say, a task, a
//! profile clone or a copy of the provider's metadata.

use std::{
    net::SocketAddr,
    process::{Child, Command, Stdio},
    time::{Duration, Instant},
};

use axum::{Json, Router, routing::post};
use futures::{StreamExt as _, stream};
use serde_json::{Value, json};
use tokenvend::pb::{
    GetTokenRequest, PutConnectionRequest, token_service_client::TokenServiceClient,
};
use tokio::net::TcpListener;
use tonic::transport::Channel;

const CONNECTIONS: usize = 5_000;
/// The most the server's resident memory may grow for them: measured at 18.2 MiB (3.8 KB
/// a connection) in a debug build and 17.8 MiB in a release build, so about twice that.
const BOUND_MIB: f64 = 40.0;
/// base64 of 32 bytes of 0x07.
const KEY: &str = "BwcHBwcHBwcHBwcHBwcHBwcHBwcHBwcHBwcHBwcHBwc=";

/// A provider that takes any refresh token and issues a token the size of a real JWT.
async fn token() -> Json<Value> {
    use std::sync::atomic::{AtomicU64, Ordering};
    static ISSUED: AtomicU64 = AtomicU64::new(0);
    let n = ISSUED.fetch_add(1, Ordering::Relaxed);
    let prefix = format!("at-{n:012}-");
    Json(json!({
        "access_token": format!("{prefix}{}", "x".repeat(1200 - prefix.len())),
        "token_type": "Bearer",
        "expires_in": 3600,
    }))
}

fn free_addr() -> SocketAddr {
    std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
}

struct Running(Child);

impl Drop for Running {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

impl Running {
    fn rss_mib(&self) -> f64 {
        let status = std::fs::read_to_string(format!("/proc/{}/status", self.0.id())).unwrap();
        let kib: f64 = status
            .lines()
            .find_map(|l| l.strip_prefix("VmRSS:"))
            .and_then(|v| v.trim().trim_end_matches("kB").trim().parse().ok())
            .expect("VmRSS");
        kib / 1024.0
    }
}

async fn connect(grpc: SocketAddr) -> TokenServiceClient<Channel> {
    let deadline = Instant::now() + Duration::from_secs(20);
    loop {
        match TokenServiceClient::connect(format!("http://{grpc}")).await {
            Ok(client) => return client,
            Err(_) if Instant::now() < deadline => {
                tokio::time::sleep(Duration::from_millis(50)).await
            }
            Err(e) => panic!("tokenvend did not come up: {e}"),
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn five_thousand_connections_with_tokens_stay_within_the_memory_bound() {
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let idp = listener.local_addr().unwrap();
    tokio::spawn(async move {
        axum::serve(listener, Router::new().route("/token", post(token)))
            .await
            .unwrap()
    });
    let dir = tempfile::tempdir().unwrap();
    let config = dir.path().join("tokenvend.yaml");
    std::fs::write(
        &config,
        format!(
            "server:\n  state_dir: {state}\n  limits: {{ rate: 1000000, burst: 1000000 }}\n  connections: {{ key: {{ value: \"{KEY}\" }} }}\nprofiles:\n  people:\n    token_url: http://{idp}/token\n    grant: refresh_token\n    template: true\n    client_id: c\n    client_secret: {{ value: s }}\n    authorize_url: https://idp.example.com/auth\n    redirect_uri: https://app.example.com/cb\n    idp_requests_per_minute: 100000\n",
            state = dir.path().join("state").display()
        ),
    )
    .unwrap();
    let grpc = free_addr();
    let server = Running(
        Command::new(env!("CARGO_BIN_EXE_tokenvend"))
            .args(["serve", "--config"])
            .arg(&config)
            .args(["--listen", &grpc.to_string()])
            .args(["--admin-listen", &free_addr().to_string()])
            .env("RUST_LOG", "warn")
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .expect("the tokenvend binary starts"),
    );
    let client = connect(grpc).await;
    // One call first, so that the connection machinery itself (the profile's cache of
    // connections, the HTTP client) is not counted as the connections' cost.
    let warm = |i: usize| {
        let mut client = client.clone();
        async move {
            let subject = format!("tenant-{i:05}@example.com");
            client
                .put_connection(PutConnectionRequest {
                    profile: "people".into(),
                    subject: subject.clone(),
                    refresh_token: format!("rt-{i:05}-{}", "r".repeat(40)),
                    ..Default::default()
                })
                .await
                .unwrap();
            let token = client
                .get_token(GetTokenRequest {
                    profile: "people".into(),
                    subject,
                    ..Default::default()
                })
                .await
                .unwrap()
                .into_inner();
            assert_eq!(token.access_token.len(), 1200);
        }
    };
    warm(CONNECTIONS).await;
    tokio::time::sleep(Duration::from_millis(500)).await;
    let before = server.rss_mib();
    stream::iter(0..CONNECTIONS)
        .map(warm)
        .buffer_unordered(32)
        .collect::<Vec<()>>()
        .await;
    tokio::time::sleep(Duration::from_secs(1)).await;
    let after = server.rss_mib();
    let growth = after - before;
    let per_connection = growth * 1024.0 * 1024.0 / CONNECTIONS as f64;
    eprintln!(
        "RSS {before:.1} MiB -> {after:.1} MiB for {CONNECTIONS} connections: {growth:.1} MiB, {per_connection:.0} bytes each"
    );
    assert!(
        growth < BOUND_MIB,
        "{CONNECTIONS} connections grew the server by {growth:.1} MiB ({per_connection:.0} bytes each), more than {BOUND_MIB} MiB"
    );
}
