//! The admin HTTP endpoints: `/metrics` (Prometheus text), and `/livez` and `/readyz` for
//! Kubernetes probes.

use std::sync::{
    Arc,
    atomic::{AtomicBool, Ordering},
};

use axum::{
    Router,
    extract::State,
    http::{StatusCode, header},
    response::IntoResponse,
    routing::get,
};
use tokio::net::TcpListener;
use tokio_util::sync::CancellationToken;

use crate::{cache::TokenCache, metrics::Metrics};

/// Whether the server should get traffic.
///
/// Ready means: the configuration is loaded (it is, once a server exists), the gRPC
/// listener is bound and being served, and every profile with `warm_up: true` has
/// obtained its first token. Warm-up is judged once: after it, a profile whose token
/// lapses (the provider is down) does not make the pod unready, since every replica
/// would then leave the load balancer together and callers would lose even the
/// cached tokens of the other profiles; the metrics show such a profile instead. Profiles
/// added by a reload do not make a ready server unready either. A shutdown does.
pub(crate) struct Readiness {
    serving: AtomicBool,
    warmed: AtomicBool,
    stopping: AtomicBool,
    cache: Arc<TokenCache>,
}

impl Readiness {
    pub(crate) fn new(cache: Arc<TokenCache>) -> Self {
        Self {
            serving: AtomicBool::new(false),
            warmed: AtomicBool::new(false),
            stopping: AtomicBool::new(false),
            cache,
        }
    }

    /// The gRPC server is running on its listener.
    pub(crate) fn serving(&self) {
        self.serving.store(true, Ordering::SeqCst);
    }

    /// A shutdown has begun.
    pub(crate) fn stopping(&self) {
        self.stopping.store(true, Ordering::SeqCst);
    }

    /// `Ok` when ready, else why not.
    fn check(&self) -> Result<(), NotReady> {
        if self.stopping.load(Ordering::SeqCst) {
            return Err(NotReady::Stopping);
        }
        if !self.serving.load(Ordering::SeqCst) {
            return Err(NotReady::Starting);
        }
        if !self.warmed.load(Ordering::SeqCst) {
            let cold: Vec<String> = self
                .cache
                .slots()
                .iter()
                .filter(|slot| slot.profile().warm_up && !slot.has_had_token())
                .map(|slot| slot.profile().name.to_string())
                .collect();
            if !cold.is_empty() {
                return Err(NotReady::WarmingUp(cold));
            }
            self.warmed.store(true, Ordering::SeqCst);
        }
        Ok(())
    }
}

/// Why the server is not ready, as `/readyz` says it.
#[derive(Debug, PartialEq, Eq, thiserror::Error)]
enum NotReady {
    #[error("shutting down")]
    Stopping,
    #[error("starting: the gRPC listener is not served yet")]
    Starting,
    /// The profiles with `warm_up: true` that have no token yet.
    #[error("warming up: no token yet for {}", .0.join(", "))]
    WarmingUp(Vec<String>),
}

#[derive(Clone)]
struct AdminState {
    readiness: Arc<Readiness>,
    metrics: Metrics,
}

/// Serves until `stop` is cancelled.
pub(crate) async fn serve(
    listener: TcpListener,
    readiness: Arc<Readiness>,
    metrics: Metrics,
    stop: CancellationToken,
) {
    if let Err(error) = axum::serve(listener, app(readiness, metrics))
        .with_graceful_shutdown(stop.cancelled_owned())
        .await
    {
        tracing::error!(%error, "admin endpoint failed");
    }
}

fn app(readiness: Arc<Readiness>, metrics: Metrics) -> Router {
    Router::new()
        .route("/livez", get(|| async { "ok\n" }))
        .route("/readyz", get(readyz))
        .route("/metrics", get(metrics_text))
        .with_state(AdminState { readiness, metrics })
}

async fn readyz(State(state): State<AdminState>) -> (StatusCode, String) {
    match state.readiness.check() {
        Ok(()) => (StatusCode::OK, "ready\n".into()),
        Err(reason) => (StatusCode::SERVICE_UNAVAILABLE, format!("{reason}\n")),
    }
}

async fn metrics_text(State(state): State<AdminState>) -> impl IntoResponse {
    (
        [(
            header::CONTENT_TYPE,
            "text/plain; version=0.0.4; charset=utf-8",
        )],
        state.metrics.prometheus_text(),
    )
}

#[cfg(test)]
mod tests {
    use std::time::Duration;

    use super::*;
    use crate::{config::Config, idp::IdpClient};

    /// A readiness over one profile whose provider is a closed port on loopback.
    fn readiness(extra: &str) -> Readiness {
        let profiles = Config::from_yaml(&format!(
            "profiles:\n  p:\n    token_url: http://127.0.0.1:9/token\n    client_id: a\n    client_secret: {{ value: s }}\n{extra}"
        ))
        .unwrap()
        .profiles;
        let idp = IdpClient::new(Duration::from_secs(1)).unwrap();
        let metrics = Metrics::new(&crate::metrics::Export::default()).unwrap();
        Readiness::new(Arc::new(TokenCache::new(&profiles, idp, None, metrics)))
    }

    #[tokio::test]
    async fn not_ready_until_the_listener_is_served_nor_once_stopping() {
        let readiness = readiness("");
        assert_eq!(readiness.check(), Err(NotReady::Starting));
        readiness.serving();
        assert_eq!(readiness.check(), Ok(()));
        readiness.stopping();
        assert_eq!(readiness.check(), Err(NotReady::Stopping));
    }

    #[tokio::test]
    async fn not_ready_while_a_warm_up_profile_has_no_token() {
        let readiness = readiness("    warm_up: true\n    retry: { initial: 1h, max: 1h }\n");
        readiness.serving();
        // Nothing listens there: the warm-up fails, and stays failed.
        let reason = readiness.check().unwrap_err();
        assert_eq!(reason, NotReady::WarmingUp(vec!["p".into()]));
        assert_eq!(reason.to_string(), "warming up: no token yet for p");
    }
}
