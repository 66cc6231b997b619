//! The admin HTTP endpoints: `/metrics` (Prometheus text, behind a bearer token when one
//! is configured), and `/livez` and `/readyz` for Kubernetes probes, open to all and
//! naming no profile; and the admin web ([`crate::web`]): the page and the hosted
//! authorization.

use std::{
    sync::{
        Arc,
        atomic::{AtomicBool, Ordering},
    },
    time::Duration,
};

use axum::{
    Router,
    extract::State,
    http::{HeaderMap, StatusCode, header},
    response::{IntoResponse, Response},
    routing::get,
};
use hyper::body::Incoming;
use hyper_util::rt::{TokioIo, TokioTimer};
use tokio::net::TcpListener;
use tokio_stream::StreamExt as _;
use tokio_util::{sync::CancellationToken, task::TaskTracker};
use tonic::codegen::Service as _;
use tonic::transport::server::Connected as _;

use crate::{
    cache::TokenCache,
    config::TlsConfig,
    metrics::Metrics,
    secret::SecretSource,
    tls::{self, ConnectionLimit, Protocol},
    web::{self, Web, same_secret},
};

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
            let cold = self
                .cache
                .slots()
                .iter()
                .filter(|slot| slot.profile().warm_up && !slot.has_had_token())
                .count();
            if cold > 0 {
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
    /// How many profiles with `warm_up: true` have no token yet. Not which: the probe is
    /// open to anyone who reaches the port, and the names are in `/metrics` and the logs.
    #[error("warming up: {0} profile(s) with warm_up have no token yet")]
    WarmingUp(usize),
}

#[derive(Clone)]
struct AdminState {
    readiness: Arc<Readiness>,
    metrics: Metrics,
    /// The bearer token `/metrics` asks for (`server.admin.metrics_token`); without one it
    /// is open, which `App::build` allows only on loopback or when configured so.
    metrics_token: Option<Arc<SecretSource>>,
}

/// Serves until `stop` is cancelled.
pub(crate) async fn serve(
    listener: TcpListener,
    readiness: Arc<Readiness>,
    metrics: Metrics,
    web: Arc<Web>,
    stop: CancellationToken,
    tasks: TaskTracker,
) {
    let settings = web.settings().clone();
    let state = AdminState {
        readiness,
        metrics,
        metrics_token: settings.metrics_token.map(Arc::new),
    };
    let app = app(state).merge(web::routes(web));
    if let Some(files) = settings.tls {
        // App::build has read these files; read again for the listener's own reloader.
        match tls::server_config(&files) {
            Ok(config) => serve_tls(listener, app, files, config, stop, &tasks).await,
            Err(error) => {
                tracing::error!(key = %error.key, "{}; the admin listener is not served", error.message);
            }
        }
        return;
    }
    if let Err(error) = axum::serve(listener, app)
        .with_graceful_shutdown(stop.cancelled_owned())
        .await
    {
        tracing::error!(%error, "admin endpoint failed");
    }
}

/// The most connections the admin listener holds open over TLS, in all and per address:
/// people and a scraper, not a crowd.
const TLS_CONNECTIONS: usize = 256;
const TLS_CONNECTIONS_PER_PEER: usize = 32;
/// A connection with no request for this long is closed.
const TLS_IDLE: Duration = Duration::from_secs(120);
/// How long a client may take to send a request's head.
const HEAD_TIMEOUT: Duration = Duration::from_secs(10);

/// The admin endpoints over TLS with client certificates (`server.admin.tls`): the same
/// accept loop as the gRPC and forward-auth ports (handshake limits, reloaded files, the
/// certificate's identity), each request carrying its connection's [`Peer`], from which
/// the admin web reads who is looking.
async fn serve_tls(
    listener: TcpListener,
    app: Router,
    files: TlsConfig,
    config: Arc<rustls::ServerConfig>,
    stop: CancellationToken,
    tasks: &TaskTracker,
) {
    let reloading = tls::Reloading::start(files, config, stop.clone(), tasks);
    let limit = ConnectionLimit::new(
        TLS_CONNECTIONS,
        TLS_CONNECTIONS_PER_PEER,
        crate::conn::Rules {
            idle_timeout: TLS_IDLE,
            unauthenticated_timeout: None,
        },
    );
    let mut incoming = tls::incoming(
        listener,
        Some(reloading),
        Protocol::Http1,
        limit,
        stop.clone(),
        tasks,
    );
    let mut http = hyper::server::conn::http1::Builder::new();
    http.timer(TokioTimer::new())
        .header_read_timeout(HEAD_TIMEOUT)
        .keep_alive(true);
    while let Some(conn) = incoming.next().await {
        let Ok(conn) = conn else { continue };
        let peer = conn.connect_info();
        let app = app.clone();
        let service = hyper::service::service_fn(move |mut request: http::Request<Incoming>| {
            let peer = peer.clone();
            let mut app = app.clone();
            async move {
                // Open until answered: the connection's watchdog leaves it alone.
                let _call = peer.activity.call();
                request.extensions_mut().insert(peer.clone());
                // A router is always ready.
                app.call(request.map(axum::body::Body::new)).await
            }
        });
        let connection = http.serve_connection(TokioIo::new(conn), service);
        let stop = stop.clone();
        tasks.spawn(async move {
            tokio::pin!(connection);
            tokio::select! {
                result = connection.as_mut() => {
                    if let Err(error) = result {
                        tracing::debug!(%error, "admin connection ended");
                    }
                }
                () = stop.cancelled() => connection.as_mut().graceful_shutdown(),
            }
        });
    }
}

fn app(state: AdminState) -> Router {
    Router::new()
        .route("/livez", get(|| async { "ok\n" }))
        .route("/readyz", get(readyz))
        .route("/metrics", get(metrics_text))
        .with_state(state)
}

async fn readyz(State(state): State<AdminState>) -> (StatusCode, String) {
    match state.readiness.check() {
        Ok(()) => (StatusCode::OK, "ready\n".into()),
        Err(reason) => (StatusCode::SERVICE_UNAVAILABLE, format!("{reason}\n")),
    }
}

async fn metrics_text(State(state): State<AdminState>, headers: HeaderMap) -> Response {
    if let Some(token) = &state.metrics_token
        && let Some(refused) = refusal(token, &headers)
    {
        return refused;
    }
    (
        [(
            header::CONTENT_TYPE,
            "text/plain; version=0.0.4; charset=utf-8",
        )],
        state.metrics.prometheus_text(),
    )
        .into_response()
}

/// The answer to a request without the metrics token as `authorization: Bearer <token>`;
/// `None` for one with it. The token is read at each scrape (a few bytes), so a rotated
/// Secret is picked up at once.
fn refusal(token: &SecretSource, headers: &HeaderMap) -> Option<Response> {
    let expected = match token.load() {
        Ok(expected) => expected,
        Err(error) => {
            tracing::warn!(key = "server.admin.metrics_token", %error, "cannot read the metrics token; refusing /metrics");
            let answer = (
                StatusCode::SERVICE_UNAVAILABLE,
                "the metrics token cannot be read\n",
            );
            return Some(answer.into_response());
        }
    };
    if web::bearer(headers).is_some_and(|p| same_secret(p, expected.expose().as_bytes())) {
        return None;
    }
    let challenge = [(
        header::WWW_AUTHENTICATE,
        "Bearer realm=\"tokenvend-metrics\"",
    )];
    let answer = (
        StatusCode::UNAUTHORIZED,
        challenge,
        "send the metrics token as `authorization: Bearer <token>`\n",
    );
    Some(answer.into_response())
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

    #[test]
    fn the_metrics_token_must_match_whole() {
        assert!(same_secret(b"s3cret", b"s3cret"));
        for wrong in [&b""[..], b"s3cre", b"s3cret ", b"S3cret", b"s3cret\0"] {
            assert!(!same_secret(wrong, b"s3cret"));
        }
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
        assert_eq!(reason, NotReady::WarmingUp(1));
        assert_eq!(
            reason.to_string(),
            "warming up: 1 profile(s) with warm_up have no token yet"
        );
    }
}
