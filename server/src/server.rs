//! Running the service: gRPC (TokenService, Envoy's ext_authz, health, reflection) and the
//! admin endpoints, on listeners the caller has bound, reloading the configuration file as
//! it changes, until the shutdown future completes; then a delay while still serving, and
//! a drain.

use std::{future::Future, sync::Arc};

use arc_swap::ArcSwap;
use tokenvend::{
    ENVOY_FILE_DESCRIPTOR_SET, FILE_DESCRIPTOR_SET, pb::token_service_server::TokenServiceServer,
};
use tokio::{net::TcpListener, sync::oneshot};
use tokio_util::{sync::CancellationToken, task::TaskTracker};
use tonic::transport::Server;
use tonic_health::ServingStatus;

use crate::{
    admin::{self, Readiness},
    app::{self, App, Live},
    cache::TokenCache,
    config::{Config, ConfigErrors},
    conn::CountCalls,
    connections::ConnectionStore,
    ext_authz::LiveExtAuthz,
    forward,
    idp::IdpClient,
    limit::Holdings,
    metrics::{self, Metrics},
    reload,
    service::{LiveService, TokenService},
    state::StateDir,
    store::SharedStore,
    tls::{self, ConnectionLimit},
    web::Web,
};

/// The listeners to serve on, bound by the caller (the command line, or a test on port 0).
pub struct Listeners {
    /// gRPC.
    pub grpc: TcpListener,
    /// The admin HTTP endpoints, if wanted.
    pub admin: Option<TcpListener>,
    /// The forward-auth HTTP port; served when `server.forward_auth` is set, which then
    /// requires it.
    pub forward_auth: Option<TcpListener>,
}

/// Why the server could not run.
#[derive(Debug, thiserror::Error)]
pub enum ServerError {
    /// The configuration cannot be built: every error found, each with its key.
    #[error("{0}")]
    Config(#[from] ConfigErrors),
    /// The HTTP client for identity providers could not be built.
    #[error("cannot build the identity provider client: {0}")]
    HttpClient(#[from] reqwest::Error),
    /// `server.forward_auth` is set but no listener was given for it.
    #[error("server.forward_auth is set but no listener was bound for it")]
    NoForwardAuthListener,
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
    /// Metrics could not be set up.
    #[error(transparent)]
    Metrics(#[from] metrics::MetricsError),
    /// The shared store's settings cannot be used (its password or keys cannot be read).
    #[error(transparent)]
    Store(#[from] crate::store::SetupError),
    /// The connections of template profiles cannot be kept (their key cannot be read).
    #[error(transparent)]
    Connections(#[from] crate::connections::ConnectionError),
}

/// Serves until `shutdown` completes, reloading the configuration while it runs if it came
/// from a file (see [`crate::reload`]). The configuration is built first ([`App::build`]),
/// as `tokenvend check` builds it: what one refuses, the other does.
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
    let admin = listeners
        .admin
        .as_ref()
        .map(TcpListener::local_addr)
        .transpose()?;
    if config.server.forward_auth.is_some() && listeners.forward_auth.is_none() {
        return Err(ServerError::NoForwardAuthListener);
    }
    let forward_auth = listeners
        .forward_auth
        .as_ref()
        .filter(|_| config.server.forward_auth.is_some())
        .map(TcpListener::local_addr)
        .transpose()?;
    let app = App::build(config, addr, admin, forward_auth)?;
    for warning in app.warnings() {
        tracing::warn!(key = %warning.key, "{}", warning.message);
    }
    // Only now: a configuration refused above never said it was listening.
    let profiles = app
        .config()
        .profiles
        .iter()
        .map(|p| &*p.name)
        .collect::<Vec<_>>()
        .join(", ");
    tracing::info!(grpc = %addr, admin = ?admin, forward_auth = ?forward_auth, %profiles, "tokenvend listening");
    run(listeners, app, shutdown).await
}

/// Runs a built application.
///
/// Every task it starts is spawned on one tracker and stopped through one root
/// cancellation token, so that when it returns nothing it started is still running.
/// `drain`, a child of the root, ends the accept loop and `WatchToken` streams first.
async fn run(
    listeners: Listeners,
    app: App,
    shutdown: impl Future<Output = ()> + Send + 'static,
) -> Result<(), ServerError> {
    let config = app.config();
    let grpc_addr = listeners.grpc.local_addr()?;
    let admin_addr = listeners
        .admin
        .as_ref()
        .map(TcpListener::local_addr)
        .transpose()?;
    // Present exactly when `server.forward_auth` is set (checked by `serve`).
    let forward = listeners
        .forward_auth
        .zip(config.server.forward_auth.clone());
    let forward_addr = forward
        .as_ref()
        .map(|(listener, _)| listener.local_addr())
        .transpose()?;
    let limits = config.server.limits;
    let root = CancellationToken::new();
    let drain = root.child_token();
    let tasks = TaskTracker::new();
    let tls = match (&config.server.tls, app.tls()) {
        (Some(files), Some(built)) => Some(tls::Reloading::start(
            files.clone(),
            built,
            root.child_token(),
            &tasks,
        )),
        _ => None,
    };
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
    let connections = ConnectionStore::new(&config.server, store.as_ref())?;
    let cache = Arc::new(
        TokenCache::with_store(
            &config.profiles,
            idp.clone(),
            state.as_ref(),
            metrics.clone(),
            store.clone(),
        )
        .with_connections(connections),
    );
    cache.follow_revocations();
    let web = admin_addr
        .map(|addr| {
            Web::new(
                &config.server,
                addr,
                cache.clone(),
                idp.clone(),
                store.clone(),
            )
        })
        .transpose()
        .map_err(|e| ServerError::Config(vec![e].into()))?
        .map(Arc::new);
    let readiness = Arc::new(Readiness::new(cache.clone()));
    let connections = ConnectionLimit::new(
        limits.max_connections,
        limits.max_connections_per_peer,
        app::connection_rules(&config.server),
    );
    // The forward-auth port's own caps, so that neither port can crowd out the other.
    let forward_connections = forward.as_ref().map(|_| {
        ConnectionLimit::new(
            limits.max_connections,
            limits.max_connections_per_peer,
            app::connection_rules(&config.server),
        )
    });
    let streams = drain.child_token();
    let holdings = Holdings::default();
    let watches = holdings.watches.clone();
    metrics.observe(
        "tokenvend.watch.streams",
        "{stream}",
        "WatchToken streams open.",
        move || watches.total() as u64,
    );
    let pending = holdings.pending.clone();
    metrics.observe(
        "tokenvend.calls.waiting",
        "{call}",
        "Calls waiting on an identity provider for a token.",
        move || pending.total() as u64,
    );
    let tokens = Arc::new(
        TokenService::new(
            cache.clone(),
            streams.clone(),
            app.auth(),
            app.limiter(),
            holdings.clone(),
            &limits,
            metrics.clone(),
        )
        .with_links(web.clone()),
    );
    let service = LiveService::new(tokens.clone(), limits.max_request_bytes);
    let ext_authz = LiveExtAuthz::new(tokens, &config.server.ext_authz);
    let live = Arc::new(Live {
        settings: ArcSwap::from_pointee(config.server.clone()),
        service: service.clone(),
        ext_authz: ext_authz.clone(),
        tls: tls.clone(),
        connections: connections.clone(),
        forward_connections: forward_connections.clone(),
        cache: cache.clone(),
        idp,
        auth: ArcSwap::new(app.auth()),
        limiter: ArcSwap::new(app.limiter()),
        holdings,
        grpc: grpc_addr,
        admin: admin_addr,
        forward_auth: forward_addr,
        streams,
        metrics: metrics.clone(),
        web: web.clone(),
        tasks: tasks.clone(),
        stop: root.clone(),
    });

    let (health, health_service) = tonic_health::server::health_reporter();
    health
        .set_serving::<TokenServiceServer<TokenService>>()
        .await;
    // Both reflection versions: grpcurl and most tools speak v1, older ones v1alpha.
    let reflection = || {
        tonic_reflection::server::Builder::configure()
            .register_encoded_file_descriptor_set(FILE_DESCRIPTOR_SET)
            .register_encoded_file_descriptor_set(tonic_health::pb::FILE_DESCRIPTOR_SET)
            .register_encoded_file_descriptor_set(ENVOY_FILE_DESCRIPTOR_SET)
    };
    let reflection_v1 = reflection().build_v1()?;
    let reflection_v1alpha = reflection().build_v1alpha()?;

    // Always running, reading `server.notices` at each scan: a reload may turn them on.
    {
        let live = live.clone();
        crate::notice::spawn(
            cache.clone(),
            move || live.settings.load().notices.clone(),
            store,
            metrics.clone(),
            root.child_token(),
            &tasks,
        )?;
    }

    // A reload stops at the shutdown signal, so that nothing changes while draining.
    let reloads = root.child_token();
    if let Some(path) = config.path.clone() {
        let watcher = reload::watch(
            path,
            config.server.reload_interval,
            config.digest,
            reload::hangups(),
            metrics.clone(),
        );
        tasks.spawn(reload::run(watcher, live.clone(), reloads.clone()));
    }
    if let (Some(listener), Some(web)) = (listeners.admin, web) {
        tasks.spawn(admin::serve(
            listener,
            readiness.clone(),
            metrics.clone(),
            web,
            root.child_token(),
            tasks.clone(),
        ));
    }

    let forward_open = match (forward, forward_connections) {
        (Some((listener, settings)), Some(connections)) => Some(forward::serve(
            listener,
            tls.clone(),
            connections,
            service.clone(),
            &settings,
            drain.clone(),
            root.clone(),
            &tasks,
        )),
        _ => None,
    };

    let (draining, drain_started) = oneshot::channel();
    let signal = {
        let live = live.clone();
        let drain = drain.clone();
        let readiness = readiness.clone();
        async move {
            shutdown.await;
            reloads.cancel();
            let delay = live.settings.load().shutdown_delay;
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
            drain.cancel();
            let _ = draining.send(());
        }
    };

    let incoming = tls::incoming(
        listeners.grpc,
        tls,
        tls::Protocol::Grpc,
        connections,
        drain.clone(),
        &tasks,
    );
    let grpc = Server::builder()
        .max_concurrent_streams(Some(limits.max_concurrent_streams))
        // No HTTP/2 PING keepalive: the accept loop sets TCP keepalive (tls::KEEPALIVE).
        // Every call counts on its connection, whose watchdog closes it once unused.
        .layer(tower_layer::layer_fn(CountCalls))
        .add_service(health_service)
        .add_service(reflection_v1)
        .add_service(reflection_v1alpha)
        .add_service(service)
        .add_service(ext_authz)
        .serve_with_incoming_shutdown(incoming, signal);
    let drain_deadline = {
        let live = live.clone();
        async move {
            match drain_started.await {
                Ok(()) => {
                    let grace = live.settings.load().shutdown_grace;
                    tokio::time::sleep(grace).await;
                    grace
                }
                Err(_) => std::future::pending().await,
            }
        }
    };
    // The listener was bound by our caller; from here on its connections are served.
    readiness.serving();
    // Both ports drain together: the forward-auth port's last request is joined too.
    let forward_drained = {
        let open = forward_open.clone();
        async move {
            if let Some(open) = open {
                open.wait().await;
            }
        }
    };
    let served = async {
        let result = grpc.await;
        if result.is_ok() {
            forward_drained.await;
        }
        result
    };
    let result = tokio::select! {
        result = served => result.map_err(ServerError::from),
        grace = drain_deadline => {
            tracing::warn!(?grace, "drain period over; closing the remaining calls");
            Ok(())
        }
    };

    root.cancel();
    tasks.close();
    tasks.wait().await;
    if let Some(open) = forward_open {
        open.wait().await;
    }
    cache.stop();
    metrics.shutdown().await;
    tracing::info!("stopped");
    result
}
