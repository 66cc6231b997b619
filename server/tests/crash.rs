//! A real `tokenvend` process, killed with SIGKILL right after it rotated a refresh token,
//! is restarted and carries on with the newest token: the provider never sees an old one
//! again (it would revoke the whole chain, as providers with reuse detection do).

use std::{
    collections::HashMap,
    net::SocketAddr,
    process::{Child, Command, Stdio},
    sync::{Arc, Mutex},
    time::{Duration, Instant},
};

use axum::{Form, Json, Router, extract::State, http::StatusCode, routing::post};
use serde_json::{Value, json};
use tokenvend_client::TokenClient;
use tokio::net::TcpListener;

#[derive(Default)]
struct Chain {
    issued: Vec<String>,
    replayed: bool,
}

/// A refresh-token endpoint that rotates on every use and revokes the chain on reuse.
async fn token(
    State(chain): State<Arc<Mutex<Chain>>>,
    Form(form): Form<HashMap<String, String>>,
) -> (StatusCode, Json<Value>) {
    let mut chain = chain.lock().unwrap();
    let presented = form.get("refresh_token").cloned().unwrap_or_default();
    if chain.replayed || chain.issued.last() != Some(&presented) {
        chain.replayed = true;
        return (
            StatusCode::BAD_REQUEST,
            Json(json!({"error": "invalid_grant", "error_description": "refresh token reused"})),
        );
    }
    let next = format!("rt-{}", chain.issued.len());
    chain.issued.push(next.clone());
    let n = chain.issued.len();
    (
        StatusCode::OK,
        Json(json!({
            "access_token": format!("at-{n}"),
            "token_type": "bearer",
            "expires_in": 3600,
            "refresh_token": next,
        })),
    )
}

fn free_addr() -> SocketAddr {
    std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
}

fn start(config: &std::path::Path, grpc: SocketAddr) -> Child {
    Command::new(env!("CARGO_BIN_EXE_tokenvend"))
        .args(["serve", "--config"])
        .arg(config)
        .args(["--listen", &grpc.to_string()])
        .args(["--admin-listen", &free_addr().to_string()])
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .expect("the tokenvend binary starts")
}

async fn connect(grpc: SocketAddr) -> TokenClient {
    let deadline = Instant::now() + Duration::from_secs(20);
    loop {
        match TokenClient::connect(format!("http://{grpc}")).await {
            Ok(client) => return client,
            Err(_) if Instant::now() < deadline => {
                tokio::time::sleep(Duration::from_millis(50)).await
            }
            Err(e) => panic!("tokenvend did not come up: {e}"),
        }
    }
}

#[tokio::test]
async fn sigkill_right_after_a_rotation_loses_nothing() {
    let chain = Arc::new(Mutex::new(Chain {
        issued: vec!["rt-0".into()],
        replayed: false,
    }));
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let idp = listener.local_addr().unwrap();
    let app = Router::new()
        .route("/token", post(token))
        .with_state(chain.clone());
    tokio::spawn(async move { axum::serve(listener, app).await.unwrap() });

    let dir = tempfile::tempdir().unwrap();
    let config = dir.path().join("tokenvend.yaml");
    std::fs::write(
        &config,
        format!(
            "server:\n  state_dir: {state}\nprofiles:\n  jadu:\n    token_url: http://{idp}/token\n    grant: refresh_token\n    client_id: c\n    client_secret: {{ value: s }}\n    refresh_token: {{ value: rt-0 }}\n",
            state = dir.path().join("state").display()
        ),
    )
    .unwrap();

    let grpc = free_addr();
    let mut server = start(&config, grpc);
    let client = connect(grpc).await;
    let mut token = client.get_token("jadu").await.unwrap();
    for _ in 0..3 {
        token = client.reject("jadu", &token.access_token).await.unwrap();
    }
    // The access token just served came with a rotation: kill without any warning.
    server.kill().unwrap();
    server.wait().unwrap();
    let rotations = chain.lock().unwrap().issued.len();

    let mut server = start(&config, grpc);
    let client = connect(grpc).await;
    let after = client.get_token("jadu").await.unwrap();
    assert_ne!(
        after.access_token, token.access_token,
        "a fresh refresh after restart"
    );
    assert_eq!(chain.lock().unwrap().issued.len(), rotations + 1);
    assert!(
        !chain.lock().unwrap().replayed,
        "an old refresh token was sent"
    );
    server.kill().unwrap();
    server.wait().unwrap();
}
