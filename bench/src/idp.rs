//! A loopback identity provider for the benchmark: answers every client-credentials request
//! with a token of realistic size after a set delay, and counts the requests.

use std::{
    net::SocketAddr,
    sync::{
        Arc,
        atomic::{AtomicU64, Ordering},
    },
    time::Duration,
};

use axum::{Json, Router, extract::State, routing::post};
use serde_json::{Value, json};
use tokio::{net::TcpListener, task::JoinHandle};

/// The length of the access tokens issued: an Entra ID or Okta JWT is 1–2 KiB.
pub(crate) const TOKEN_BYTES: usize = 1200;

/// A running IdP. Dropping it stops it.
pub(crate) struct Idp {
    addr: SocketAddr,
    state: Arc<Counters>,
    task: JoinHandle<()>,
}

#[derive(Default)]
struct Counters {
    requests: AtomicU64,
    delay_micros: AtomicU64,
}

impl Idp {
    pub(crate) async fn start() -> std::io::Result<Self> {
        let listener = TcpListener::bind("127.0.0.1:0").await?;
        let addr = listener.local_addr()?;
        let state = Arc::new(Counters::default());
        let app = Router::new()
            .route("/token", post(token))
            .with_state(state.clone());
        let task = tokio::spawn(async move {
            let _ = axum::serve(listener, app).await;
        });
        Ok(Self { addr, state, task })
    }

    pub(crate) fn token_url(&self) -> String {
        format!("http://{}/token", self.addr)
    }

    /// Token requests answered or in progress so far.
    pub(crate) fn requests(&self) -> u64 {
        self.state.requests.load(Ordering::SeqCst)
    }

    /// How long each answer takes from now on.
    pub(crate) fn set_delay(&self, delay: Duration) {
        self.state
            .delay_micros
            .store(delay.as_micros() as u64, Ordering::SeqCst);
    }
}

impl Drop for Idp {
    fn drop(&mut self) {
        self.task.abort();
    }
}

async fn token(State(state): State<Arc<Counters>>) -> Json<Value> {
    let n = state.requests.fetch_add(1, Ordering::SeqCst);
    let delay = state.delay_micros.load(Ordering::SeqCst);
    if delay > 0 {
        tokio::time::sleep(Duration::from_micros(delay)).await;
    }
    // Unique per request, so a replaced token is visibly a new one.
    let prefix = format!("bench-{n:012}-");
    let access_token = format!("{prefix}{}", "x".repeat(TOKEN_BYTES - prefix.len()));
    Json(json!({
        "access_token": access_token,
        "token_type": "Bearer",
        "expires_in": 3600,
        "scope": "bench.read",
    }))
}
