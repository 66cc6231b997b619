//! Running the service: gRPC (TokenService, health, reflection) and the admin endpoints,
//! on listeners the caller has bound, reloading the configuration file as it changes, until
//! the shutdown future completes; then a delay while still serving, and a drain.

use std::{future::Future, net::SocketAddr, sync::Arc};

use arc_swap::ArcSwap;
use tokenvend::{FILE_DESCRIPTOR_SET, pb::token_service_server::TokenServiceServer};
use tokio::{net::TcpListener, sync::oneshot};
use tokio_util::sync::CancellationToken;
use tonic::transport::Server;
use tonic_health::ServingStatus;

use crate::{
    admin::{self, Readiness},
    auth::Authenticator,
    cache::TokenCache,
    config::Config,
    idp::IdpClient,
    limit::RateLimiter,
    metrics::{self, Metrics},
    reload,
    service::TokenService,
    state::StateDir,
    store::SharedStore,
    tls,
};

/// The listeners to serve on, bound by the caller (the command line, or a test on port 0).
pub struct Listeners {
    /// gRPC.
    pub grpc: TcpListener,
    /// The admin HTTP endpoints, if wanted.
    pub admin: Option<TcpListener>,
}

/// Why the server could not run.
#[derive(Debug, thiserror::Error)]
pub enum ServerError {
    /// The HTTP client for identity providers could not be built.
    #[error("cannot build the identity provider client: {0}")]
    HttpClient(#[from] reqwest::Error),
    /// Reflection could not load the descriptors (a build problem).
    #[error("cannot set up gRPC reflection: {0}")]
    Reflection(#[from] tonic_reflection::server::Error),
    /// The state directory cannot be used.
    #[error(transparent)]
    State(#[from] crate::state::StateError),
    /// The gRPC server failed.
    #[error("gRPC server failed: {0}")]
    Transport(#[from] tonic::transport::Error),
    /// The listener's address cannot be read.
    #[error("cannot read the gRPC listener's address: {0}")]
    Listener(#[from] std::io::Error),
    /// The TLS files cannot be used.
    #[error("{0}")]
    Tls(#[from] tls::TlsError),
    /// Metrics could not be set up.
    #[error(transparent)]
    Metrics(#[from] metrics::MetricsError),
    /// A non-loopback address with no caller authentication and no explicit opt-out.
    #[error(
        "refusing to serve on {0} without caller authentication: anyone who can reach it \
         would get every token. Configure `server.auth.service_account` or mutual TLS \
         (`server.tls.client_ca`), listen on loopback, or set \
         `server.auth.allow_unauthenticated: true` if a network policy guards the port"
    )]
    Unauthenticated(SocketAddr),
    /// The shared store's settings cannot be used (its password or keys cannot be read).
    #[error(transparent)]
    Store(#[from] crate::store::SetupError),
}

/// Serves until `shutdown` completes, reloading the configuration while it runs if it came
/// from a file (see [`crate::reload`]).
///
/// On shutdown, readiness fails first: health turns NOT_SERVING and `/readyz` 503, while
/// the server goes on accepting and serving calls for `server.shutdown_delay`, the time
/// load balancers (Kubernetes endpoints, client-side balancers) take to stop sending it
/// calls. Then the listener closes, `WatchToken` streams end, and in-flight calls get up
/// to `server.shutdown_grace` to finish.
pub async fn serve(
    listeners: Listeners,
    config: Config,
    shutdown: impl Future<Output = ()> + Send + 'static,
) -> Result<(), ServerError> {
    let addr = listeners.grpc.local_addr()?;
    if !config.server.authenticates_callers() && !addr.ip().is_loopback() {
        if !config.server.auth.allow_unauthenticated {
            return Err(ServerError::Unauthenticated(addr));
        }
        tracing::warn!(
            %addr,
            "serving without caller authentication (server.auth.allow_unauthenticated): \
             anyone who can reach this port gets every token"
        );
    }
    let limits = config.server.limits;
    let auth = Authenticator::new(&config.server)?;
    let accepting = CancellationToken::new();
    let tls = config
        .server
        .tls
        .clone()
        .map(|tls| tls::Reloading::start(tls, accepting.clone()))
        .transpose()?;
    // Prometheus at `/metrics` always; OTLP too if the environment asks for it.
    let metrics = Metrics::new(&metrics::Export::from_env())?;
    let idp = IdpClient::new(config.server.idp_connect_timeout)?.with_metrics(metrics.clone());
    // Held until the server stops: the lock that keeps a second server off these chains.
    let state = config
        .server
        .state_dir
        .as_deref()
        .map(StateDir::open)
        .transpose()?;
    // Connects on first use, so that the server starts (degraded) while Redis is down.
    let store = config
        .server
        .store
        .as_ref()
        .map(SharedStore::new)
        .transpose()
        .map_err(ServerError::Store)?;
    let cache = Arc::new(TokenCache::with_store(
        &config.profiles,
        idp,
        state.as_ref(),
        metrics.clone(),
        store,
    ));
    // The server settings in force; a reload may change the shutdown timings.
    let settings = Arc::new(ArcSwap::from_pointee(config.server.clone()));
    let streams = CancellationToken::new();
    let readiness = Arc::new(Readiness::new(cache.clone()));

    let (health, health_service) = tonic_health::server::health_reporter();
    health
        .set_serving::<TokenServiceServer<TokenService>>()
        .await;
    // Both reflection versions: grpcurl and most tools speak v1, older ones v1alpha.
    let reflection = || {
        tonic_reflection::server::Builder::configure()
            .register_encoded_file_descriptor_set(FILE_DESCRIPTOR_SET)
            .register_encoded_file_descriptor_set(tonic_health::pb::FILE_DESCRIPTOR_SET)
    };
    let reflection_v1 = reflection().build_v1()?;
    let reflection_v1alpha = reflection().build_v1alpha()?;

    let reload_stop = CancellationToken::new();
    let reloader = config.path.clone().map(|path| {
        let configs = reload::watch(
            path,
            config.server.reload_interval,
            config.digest,
            reload::hangups(),
            metrics.clone(),
        );
        tokio::spawn(reload::run(
            configs,
            cache.clone(),
            settings.clone(),
            reload_stop.clone(),
            metrics.clone(),
        ))
    });

    let admin_stop = CancellationToken::new();
    let admin = listeners.admin.map(|listener| {
        tokio::spawn(admin::serve(
            listener,
            readiness.clone(),
            metrics.clone(),
            admin_stop.clone(),
        ))
    });

    let (draining, drain_started) = oneshot::channel();
    let signal = {
        let streams = streams.clone();
        let settings = settings.clone();
        let reload_stop = reload_stop.clone();
        let accepting = accepting.clone();
        let readiness = readiness.clone();
        async move {
            shutdown.await;
            reload_stop.cancel();
            let delay = settings.load().shutdown_delay;
            tracing::info!(
                ?delay,
                "shutting down: reporting not ready, still serving until load balancers have noticed"
            );
            readiness.stopping();
            health
                .set_not_serving::<TokenServiceServer<TokenService>>()
                .await;
            health
                .set_service_status("", ServingStatus::NotServing)
                .await;
            tokio::time::sleep(delay).await;
            tracing::info!("no new calls; draining in-flight ones");
            accepting.cancel();
            streams.cancel();
            let _ = draining.send(());
        }
    };

    let service = TokenService::new(
        cache.clone(),
        streams,
        auth,
        RateLimiter::new(&limits),
        limits.request_timeout,
        metrics.clone(),
    );
    let incoming = tls::incoming(
        listeners.grpc,
        tls,
        limits.max_connections,
        accepting.clone(),
    );
    let grpc = Server::builder()
        .max_concurrent_streams(Some(limits.max_concurrent_streams))
        // No HTTP/2 PING keepalive: the accept loop sets TCP keepalive (tls::KEEPALIVE).
        .add_service(health_service)
        .add_service(reflection_v1)
        .add_service(reflection_v1alpha)
        .add_service(
            TokenServiceServer::new(service).max_decoding_message_size(limits.max_request_bytes),
        )
        .serve_with_incoming_shutdown(incoming, signal);
    let drain_deadline = {
        let settings = settings.clone();
        async move {
            match drain_started.await {
                Ok(()) => {
                    let grace = settings.load().shutdown_grace;
                    tokio::time::sleep(grace).await;
                    grace
                }
                Err(_) => std::future::pending().await,
            }
        }
    };
    // The listener was bound by our caller; from here on its connections are served.
    readiness.serving();
    let result = tokio::select! {
        result = grpc => result.map_err(ServerError::from),
        grace = drain_deadline => {
            tracing::warn!(?grace, "drain period over; closing the remaining calls");
            Ok(())
        }
    };

    reload_stop.cancel();
    if let Some(reloader) = reloader {
        let _ = reloader.await;
    }
    cache.stop();
    accepting.cancel();
    admin_stop.cancel();
    if let Some(admin) = admin {
        let _ = admin.await;
    }
    metrics.shutdown().await;
    tracing::info!("stopped");
    result
}
