//! Running the service: gRPC (TokenService, health, reflection) and the admin endpoints,
//! on listeners the caller has bound, until the shutdown future completes; then a drain.

use std::{
    future::Future,
    sync::{
        Arc,
        atomic::{AtomicBool, Ordering},
    },
};

use tokenvend::{FILE_DESCRIPTOR_SET, pb::token_service_server::TokenServiceServer};
use tokio::{net::TcpListener, sync::oneshot};
use tokio_util::sync::CancellationToken;
use tonic::transport::{Server, server::TcpIncoming};
use tonic_health::ServingStatus;

use crate::{
    admin, cache::TokenCache, config::Config, idp::IdpClient, service::TokenService,
    state::StateDir,
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
}

/// Serves until `shutdown` completes. Then health turns NOT_SERVING, the listener stops
/// accepting, `WatchToken` streams end, and in-flight calls get up to
/// `server.shutdown_grace` to finish.
pub async fn serve(
    listeners: Listeners,
    config: Config,
    shutdown: impl Future<Output = ()> + Send + 'static,
) -> Result<(), ServerError> {
    let idp = IdpClient::new(config.server.idp_connect_timeout)?;
    let state = config
        .server
        .state_dir
        .as_deref()
        .map(StateDir::open)
        .transpose()?;
    let cache = Arc::new(TokenCache::new(&config.profiles, idp, state.as_ref()));
    let streams = CancellationToken::new();
    let ready = Arc::new(AtomicBool::new(true));

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

    let admin_stop = CancellationToken::new();
    let admin = listeners
        .admin
        .map(|listener| tokio::spawn(admin::serve(listener, ready.clone(), admin_stop.clone())));

    let (draining, drain_started) = oneshot::channel();
    let signal = {
        let streams = streams.clone();
        async move {
            shutdown.await;
            tracing::info!("shutting down: no new calls, draining in-flight ones");
            ready.store(false, Ordering::SeqCst);
            health
                .set_not_serving::<TokenServiceServer<TokenService>>()
                .await;
            health
                .set_service_status("", ServingStatus::NotServing)
                .await;
            streams.cancel();
            let _ = draining.send(());
        }
    };

    let grpc = Server::builder()
        .add_service(health_service)
        .add_service(reflection_v1)
        .add_service(reflection_v1alpha)
        .add_service(TokenServiceServer::new(TokenService::new(
            cache.clone(),
            streams,
        )))
        .serve_with_incoming_shutdown(
            TcpIncoming::from(listeners.grpc).with_nodelay(Some(true)),
            signal,
        );
    let grace = config.server.shutdown_grace;
    let drain_deadline = async move {
        match drain_started.await {
            Ok(()) => tokio::time::sleep(grace).await,
            Err(_) => std::future::pending().await,
        }
    };
    let result = tokio::select! {
        result = grpc => result.map_err(ServerError::from),
        () = drain_deadline => {
            tracing::warn!(?grace, "drain period over; closing the remaining calls");
            Ok(())
        }
    };

    cache.stop();
    admin_stop.cancel();
    if let Some(admin) = admin {
        let _ = admin.await;
    }
    tracing::info!("stopped");
    result
}
