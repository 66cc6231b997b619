//! The connection RPCs: `ListConnections`, `RevokeConnection`, `PutConnection`. Each is
//! allowed to the callers in the template profile's `allow`, like `GetToken`, and a
//! profile a caller may not use reads as one that does not exist.
//!
//! Subjects are identifiers a product chose, and may be personal (an email address): logs
//! name a connection by its keyed digest, the name it has in the store, never by its
//! subject. Tokens are never logged or returned.

use tokenvend::pb;
use tonic::{Code, Request, Response, Status};
use tracing::Instrument as _;

use super::{TokenService, record_caller, record_status, server_span};
use crate::{
    auth::Caller, cache::CacheState, connections::ConnectionError, error::ServeError,
    secret::Secret,
};

/// The page size when none is asked for, and the largest.
const DEFAULT_PAGE: usize = 100;
const MAX_PAGE: usize = 1000;

impl TokenService {
    /// The caller of a connection RPC, checked, within its rate, and allowed the profile.
    async fn connection_caller<T>(
        &self,
        method: &'static str,
        request: &Request<T>,
        profile: &str,
    ) -> Result<(tracing::Span, Caller), Status> {
        let span = server_span(method, request.metadata());
        if !span.is_disabled() {
            span.record("tokenvend.profile", profile);
        }
        let checked = async {
            let caller = self.caller(request).await?;
            self.slot(&caller, profile)?;
            Ok::<_, ServeError>(caller)
        };
        match checked.instrument(span.clone()).await {
            Ok(caller) => {
                record_caller(&span, &caller);
                Ok((span, caller))
            }
            Err(error) => {
                let status = Status::from(error);
                record_status(&span, status.code());
                Err(status)
            }
        }
    }

    pub(super) async fn list_connections_rpc(
        &self,
        request: Request<pb::ListConnectionsRequest>,
    ) -> Result<Response<pb::ListConnectionsResponse>, Status> {
        let message = request.get_ref();
        let (span, _caller) = self
            .connection_caller("ListConnections", &request, &message.profile)
            .await?;
        let limit = match usize::try_from(message.page_size) {
            Ok(0) => DEFAULT_PAGE,
            Ok(n) => n.min(MAX_PAGE),
            Err(_) => {
                return Err(finish(
                    &span,
                    Status::invalid_argument("`page_size` must not be negative"),
                ));
            }
        };
        let after = Some(message.page_token.as_str()).filter(|t| !t.is_empty());
        if after.is_some_and(|t| t.len() != 32 || !t.bytes().all(|b| b.is_ascii_hexdigit())) {
            return Err(finish(
                &span,
                Status::invalid_argument("`page_token` is not one this server gave"),
            ));
        }
        let page = self
            .cache
            .list_connections(&message.profile, after, limit)
            .instrument(span.clone())
            .await
            .map_err(|e| finish(&span, status(e)))?;
        let next_page_token = if page.len() == limit {
            page.last()
                .map(|c| c.stored.digest.clone())
                .unwrap_or_default()
        } else {
            String::new()
        };
        let connections = page
            .into_iter()
            .map(|c| pb::ConnectionInfo {
                subject: c.stored.subject,
                cache_state: proto_state(c.status.state) as i32,
                created_at: c.stored.created_at.map(Into::into),
                updated_at: c.stored.updated_at.map(Into::into),
                expires_at: c.status.expires_at.map(Into::into),
                last_refresh: c.status.last_refresh.map(Into::into),
                last_error: c.status.last_error.unwrap_or_default(),
            })
            .collect();
        record_status(&span, Code::Ok);
        Ok(Response::new(pb::ListConnectionsResponse {
            connections,
            next_page_token,
        }))
    }

    pub(super) async fn revoke_connection_rpc(
        &self,
        request: Request<pb::RevokeConnectionRequest>,
    ) -> Result<Response<pb::RevokeConnectionResponse>, Status> {
        let message = request.get_ref();
        let (span, caller) = self
            .connection_caller("RevokeConnection", &request, &message.profile)
            .await?;
        let profile = message.profile.as_str();
        let work = async {
            let token = self
                .cache
                .revoke_connection(profile, &message.subject)
                .await?;
            let connection = self.cache.connection_digest(profile, &message.subject);
            tracing::info!(profile, connection, %caller, "connection revoked");
            Ok::<_, ConnectionError>(self.cache.revoke_at_provider(profile, &token).await)
        };
        let revoked_at_provider = work
            .instrument(span.clone())
            .await
            .map_err(|e| finish(&span, status(e)))?;
        record_status(&span, Code::Ok);
        Ok(Response::new(pb::RevokeConnectionResponse {
            revoked_at_provider,
        }))
    }

    pub(super) async fn put_connection_rpc(
        &self,
        request: Request<pb::PutConnectionRequest>,
    ) -> Result<Response<pb::PutConnectionResponse>, Status> {
        let (span, caller) = self
            .connection_caller("PutConnection", &request, &request.get_ref().profile)
            .await?;
        let message = request.into_inner();
        if message.refresh_token.is_empty() {
            return Err(finish(
                &span,
                Status::invalid_argument("`refresh_token` is required"),
            ));
        }
        let profile = message.profile.as_str();
        let scope = Some(message.scope).filter(|s| !s.is_empty());
        self.cache
            .put_connection(
                profile,
                &message.subject,
                Secret::new(message.refresh_token),
                scope,
                message.replace,
            )
            .instrument(span.clone())
            .await
            .map_err(|e| finish(&span, status(e)))?;
        let connection = self.cache.connection_digest(profile, &message.subject);
        tracing::info!(profile, connection, %caller, "connection imported");
        record_status(&span, Code::Ok);
        Ok(Response::new(pb::PutConnectionResponse {}))
    }
}

fn finish(span: &tracing::Span, status: Status) -> Status {
    record_status(span, status.code());
    status
}

/// The status of a connection RPC that failed. Store failures are logged here, once, and
/// sent as UNAVAILABLE.
fn status(error: ConnectionError) -> Status {
    let code = match &error {
        ConnectionError::NoProfile(_) | ConnectionError::Missing(_) => Code::NotFound,
        ConnectionError::Invalid(_) => Code::InvalidArgument,
        ConnectionError::Exists(_) => Code::AlreadyExists,
        ConnectionError::Chain(_) | ConnectionError::Key(_) | ConnectionError::NoStorage => {
            tracing::warn!(%error, "a connection RPC failed");
            Code::Unavailable
        }
    };
    Status::new(code, error.to_string())
}

pub(super) fn proto_state(state: CacheState) -> pb::CacheState {
    match state {
        CacheState::Empty => pb::CacheState::Empty,
        CacheState::Valid => pb::CacheState::Valid,
        CacheState::Stale => pb::CacheState::Stale,
        CacheState::Failed => pb::CacheState::Failed,
        CacheState::NeedsAuthorization => pb::CacheState::NeedsAuthorization,
    }
}
