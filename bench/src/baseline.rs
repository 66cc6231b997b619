//! The baseline: a bare tonic server that answers `GetToken` with a fixed reply of the same
//! bytes tokenvend sends, and does nothing else. It is the floor a gRPC cache hit can reach
//! with tonic on this machine: no caller check, no lookup, no audit; the reply is already
//! encoded (as tokenvend's is), so the comparison charges tokenvend for exactly what it
//! does beyond tonic.

use std::{net::SocketAddr, path::Path, pin::Pin};

use futures::Stream;
use tokenvend::{
    pb::{self, token_service_server::TokenServiceServer},
    wire::EncodedToken,
};
use tonic::{Request, Response, Status};

struct Bare(EncodedToken);

type Never = Pin<Box<dyn Stream<Item = Result<EncodedToken, Status>> + Send>>;

#[tonic::async_trait]
impl pb::token_service_server::TokenService for Bare {
    async fn get_token(
        &self,
        _: Request<pb::GetTokenRequest>,
    ) -> Result<Response<EncodedToken>, Status> {
        Ok(Response::new(self.0.clone()))
    }

    async fn list_profiles(
        &self,
        _: Request<pb::ListProfilesRequest>,
    ) -> Result<Response<pb::ListProfilesResponse>, Status> {
        Err(Status::unimplemented("baseline"))
    }

    async fn list_connections(
        &self,
        _: Request<pb::ListConnectionsRequest>,
    ) -> Result<Response<pb::ListConnectionsResponse>, Status> {
        Err(Status::unimplemented("baseline"))
    }

    async fn revoke_connection(
        &self,
        _: Request<pb::RevokeConnectionRequest>,
    ) -> Result<Response<pb::RevokeConnectionResponse>, Status> {
        Err(Status::unimplemented("baseline"))
    }

    async fn put_connection(
        &self,
        _: Request<pb::PutConnectionRequest>,
    ) -> Result<Response<pb::PutConnectionResponse>, Status> {
        Err(Status::unimplemented("baseline"))
    }

    async fn create_connect_link(
        &self,
        _: Request<pb::CreateConnectLinkRequest>,
    ) -> Result<Response<pb::CreateConnectLinkResponse>, Status> {
        Err(Status::unimplemented("baseline"))
    }

    type WatchTokenStream = Never;

    async fn watch_token(
        &self,
        _: Request<pb::WatchTokenRequest>,
    ) -> Result<Response<Never>, Status> {
        Err(Status::unimplemented("baseline"))
    }
}

/// Serves until killed, interrupted or terminated. `reply` holds an encoded
/// `tokenvend.v1.Token`.
pub(crate) async fn serve(listen: SocketAddr, reply: &Path) -> Result<(), String> {
    let bytes = std::fs::read(reply).map_err(|e| format!("{}: {e}", reply.display()))?;
    let token = <pb::Token as prost::Message>::decode(bytes.as_slice())
        .map_err(|e| format!("{}: {e}", reply.display()))?;
    let (health, health_service) = tonic_health::server::health_reporter();
    health.set_serving::<TokenServiceServer<Bare>>().await;
    tonic::transport::Server::builder()
        .add_service(health_service)
        .add_service(TokenServiceServer::new(Bare(EncodedToken::encode(&token))))
        // SIGTERM (as the harness stops servers) and Ctrl-C end it cleanly, so that an
        // instrumented build (PGO) writes its profile on the way out.
        .serve_with_shutdown(listen, async {
            use tokio::signal::unix::{SignalKind, signal};
            match signal(SignalKind::terminate()) {
                Ok(mut term) => tokio::select! {
                    _ = term.recv() => {}
                    _ = tokio::signal::ctrl_c() => {}
                },
                Err(_) => {
                    let _ = tokio::signal::ctrl_c().await;
                }
            }
        })
        .await
        .map_err(|e| e.to_string())
}
