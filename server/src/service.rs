//! The `tokenvend.v1.TokenService` implementation: request → caller check → profile →
//! cache → reply, and for every token asked for an audit event, a count in the profile's
//! metrics and, when tracing is on, a server span.

use std::{future::Future, pin::Pin, sync::Arc, time::Duration};

use arc_swap::ArcSwap;
use futures::Stream;
use tokenvend::{
    pb::{self, token_service_server::TokenServiceServer},
    wire::EncodedToken,
};
use tokio::sync::watch;
use tokio_util::sync::CancellationToken;
use tonic::{Code, Request, Response, Status, metadata::MetadataMap};
use tracing::{Instrument as _, Span, field::Empty};
use tracing_opentelemetry::OpenTelemetrySpanExt as _;

use crate::{
    audit::{self, TokenDigest},
    auth::{Authenticator, Caller, Peer},
    cache::{CacheResult, CacheState, CachedToken, Hint, Need, Served, Slot, TokenCache, Variant},
    config::{Grant, Limits, Profile},
    connections::check_subject,
    error::{self, ServeError},
    limit::{HeldGuard, Holdings, RateLimiter},
    metrics::{Metrics, Rpc},
    secret::Secret,
    source::FetchError,
    web::{LinkError, Web},
};

mod connections;

/// The gRPC service.
pub(crate) struct TokenService {
    cache: Arc<TokenCache>,
    stop: CancellationToken,
    auth: Arc<Authenticator>,
    limiter: Arc<RateLimiter>,
    holdings: Holdings,
    request_timeout: Duration,
    max_watches: usize,
    max_pending: usize,
    metrics: Metrics,
    /// The admin web, which signs connect links; `None` without an admin listener.
    links: Option<Arc<Web>>,
}

impl TokenService {
    /// A service over this cache. Cancelling `stop` ends every `WatchToken` stream, so
    /// that a shutdown is not held up by clients that would watch forever. `holdings`
    /// counts what callers hold open, across the services a reload replaces.
    pub(crate) fn new(
        cache: Arc<TokenCache>,
        stop: CancellationToken,
        auth: Arc<Authenticator>,
        limiter: Arc<RateLimiter>,
        holdings: Holdings,
        limits: &Limits,
        metrics: Metrics,
    ) -> Self {
        Self {
            cache,
            stop,
            auth,
            limiter,
            holdings,
            request_timeout: limits.request_timeout,
            max_watches: limits.max_watches_per_caller,
            max_pending: limits.max_pending_per_caller,
            metrics,
            links: None,
        }
    }

    /// The same service, making connect links with `web`'s key.
    pub(crate) fn with_links(mut self, web: Option<Arc<Web>>) -> Self {
        self.links = web;
        self
    }

    /// Who is calling, and whether they are within their rate. A caller that fails to
    /// authenticate is held to the rate too, by its address: else guessing tokens, or
    /// making the server verify bad ones, would be free.
    async fn caller<T>(&self, request: &Request<T>) -> Result<Caller, ServeError> {
        let peer = request.extensions().get::<Peer>();
        let caller = match self.auth.caller(request.metadata(), peer).await {
            Ok(caller) => caller,
            Err(error) => {
                let address = Caller::Anonymous(peer.and_then(|p| p.remote).map(|a| a.ip()));
                self.limiter
                    .check(&address)
                    .map_err(|retry_in| ServeError::RateLimited { retry_in })?;
                return Err(ServeError::Unauthenticated(error));
            }
        };
        if let Some(peer) = peer {
            // The connection has proved who it is: its watchdog no longer closes it early.
            peer.activity.authenticated();
        }
        self.limiter
            .check(&caller)
            .map_err(|retry_in| ServeError::RateLimited { retry_in })?;
        Ok(caller)
    }

    /// A place for one more waiting call of this caller's.
    fn pending(&self, caller: &Caller) -> Result<HeldGuard, ServeError> {
        self.holdings
            .pending
            .take(caller, self.max_pending)
            .ok_or(ServeError::TooMany {
                what: "calls waiting on an identity provider",
                max: self.max_pending,
                key: "max_pending_per_caller",
                advice: "retry once they are answered",
            })
    }

    /// A place for one more `WatchToken` stream of this caller's.
    fn watch(&self, caller: &Caller) -> Result<HeldGuard, ServeError> {
        self.holdings
            .watches
            .take(caller, self.max_watches)
            .ok_or(ServeError::TooMany {
                what: "WatchToken streams",
                max: self.max_watches,
                key: "max_watches_per_caller",
                advice: "close one, or share one stream per profile within the process",
            })
    }

    /// The profile's slot, if the caller may use it. A profile the caller may not use
    /// reads exactly like one that does not exist, so callers cannot list profiles by
    /// probing; the audit event tells the two apart.
    fn slot(&self, caller: &Caller, profile: &str) -> Result<Arc<Slot>, ServeError> {
        if profile.is_empty() {
            return Err(ServeError::InvalidArgument("`profile` is required".into()));
        }
        self.cache
            .slot(profile)
            .filter(|slot| caller.may_use(slot.profile()))
            .ok_or_else(|| ServeError::NotFound(profile.to_owned()))
    }

    /// What every token RPC starts with: its server span (in the caller's trace), its
    /// deadline, and the caller, checked and within its rate.
    pub(crate) async fn begin<T>(
        &self,
        rpc: Rpc,
        request: &Request<T>,
        profile: &str,
    ) -> Result<(Span, Duration, Caller), Status> {
        let span = server_span(rpc.as_str(), request.metadata());
        let deadline = self.deadline(request.metadata());
        if !span.is_disabled() {
            span.record("tokenvend.profile", profile);
        }
        let caller = match self.caller(request).instrument(span.clone()).await {
            Ok(caller) => caller,
            Err(error) => return Err(self.refused(rpc, None, profile, error, &span)),
        };
        record_caller(&span, &caller);
        Ok((span, deadline, caller))
    }

    /// The caller's deadline, or the server's request timeout if it is sooner.
    fn deadline(&self, metadata: &MetadataMap) -> Duration {
        deadline(metadata).map_or(self.request_timeout, |d| d.min(self.request_timeout))
    }

    /// A call got no token: the audit event, the count, the span; and its status.
    pub(crate) fn refused(
        &self,
        rpc: Rpc,
        caller: Option<&Caller>,
        profile: &str,
        error: ServeError,
        span: &Span,
    ) -> Status {
        let slot = self.cache.slot(profile);
        let reason: &dyn std::fmt::Display = match &error {
            ServeError::NotFound(_) if slot.is_some() => {
                &"the caller is not in the profile's `allow` list"
            }
            ServeError::NotFound(_) => &"no such profile",
            other => other,
        };
        audit::refused(rpc.as_str(), caller, profile, error.outcome(), reason);
        let outcome = error.outcome();
        let status = Status::from(error);
        let counters =
            slot.map_or_else(|| self.metrics.unknown_profile(), |s| s.counters().clone());
        counters.refused(rpc, outcome, status.code());
        record_status(span, status.code());
        status
    }

    /// A call got its token: the audit event and the span (the count is the cache's).
    pub(crate) fn served(
        rpc: Rpc,
        caller: &Caller,
        profile: &str,
        result: CacheResult,
        fingerprint: audit::Fingerprint,
        span: &Span,
    ) {
        audit::served(rpc.as_str(), caller, profile, result.into(), fingerprint);
        if !span.is_disabled() {
            span.record("tokenvend.cache", result.as_str());
            record_status(span, Code::Ok);
        }
    }

    /// The token for a request, as `rpc` serves it: from the cache, or from the provider
    /// within `deadline`.
    pub(crate) async fn get(
        &self,
        rpc: Rpc,
        caller: &Caller,
        request: &pb::GetTokenRequest,
        deadline: Duration,
    ) -> Result<(EncodedToken, audit::Fingerprint, CacheResult, Option<Hint>), ServeError> {
        let mut slot = self.slot(caller, &request.profile)?;
        // A plain call (no per-call values) takes the profile's own slot, as before; the
        // rest is out of line, so that the hit path stays as short as it was.
        if !request.scopes.is_empty()
            || !request.audience.is_empty()
            || !request.resource.is_empty()
            || !request.subject_token.is_empty()
            || !request.subject_token_type.is_empty()
            || !request.subject.is_empty()
            || slot.profile().grant == Grant::TokenExchange
            || slot.profile().template
        {
            slot = self.per_call_slot(&slot, request)?;
        }
        let need = Need {
            min_ttl: min_ttl(request.min_ttl)?,
            rejected: Some(request.rejected_token.as_str())
                .filter(|t| !t.is_empty())
                .map(TokenDigest::of),
        };
        if let Some((token, fingerprint, result)) = slot.cached(&need) {
            slot.counters().served(rpc);
            return Ok((token, fingerprint, result, None));
        }
        let _pending = self.pending(caller)?;
        // Boxed: a miss waits on the provider anyway, and an inline future the size of the
        // fetch's would be carried, and copied, by every hit.
        let Served {
            token,
            result,
            hint,
        } = Box::pin(within(Some(deadline), slot.token(need)))
            .await
            .inspect_err(|error| self.unconnected(&slot, &request.subject, error))?;
        slot.counters().served(rpc);
        Ok((token.encoded().clone(), token.fingerprint(), result, hint))
    }
}

impl TokenService {
    /// A GetToken, whichever way it came (`rpc`: gRPC, or the forward-auth port): the
    /// caller, the token, and the audit event, count and span of either outcome.
    pub(crate) async fn token(
        &self,
        rpc: Rpc,
        request: &Request<pb::GetTokenRequest>,
    ) -> Result<(EncodedToken, Option<Hint>), Status> {
        let profile = &request.get_ref().profile;
        let (span, deadline, caller) = self.begin(rpc, request, profile).await?;
        match self
            .get(rpc, &caller, request.get_ref(), deadline)
            .instrument(span.clone())
            .await
        {
            Ok((token, fingerprint, result, hint)) => {
                Self::served(rpc, &caller, profile, result, fingerprint, &span);
                Ok((token, hint))
            }
            Err(error) => Err(self.refused(rpc, Some(&caller), profile, error, &span)),
        }
    }
}

impl TokenService {
    /// The slot a call with per-call values asks for: a variant's, or a connection's.
    #[cold]
    #[inline(never)]
    fn per_call_slot(
        &self,
        slot: &Arc<Slot>,
        request: &pb::GetTokenRequest,
    ) -> Result<Arc<Slot>, ServeError> {
        let profile = slot.profile();
        if !profile.template {
            if !request.subject.is_empty() {
                return Err(ServeError::InvalidArgument(format!(
                    "profile `{}` is not a template (`template: true`): `subject` is only for a template profile's connections",
                    profile.name
                )));
            }
            let (variant, subject) = variant(profile, request)?;
            return Ok(slot.variant(variant, subject));
        }
        // A connection is one person's grant: it takes no per-call values (`variant`
        // refuses each with its own message).
        variant(profile, request)?;
        self.connection_slot(slot, &request.subject)
    }

    /// The slot of a template profile's connection for `subject`.
    pub(crate) fn connection_slot(
        &self,
        slot: &Arc<Slot>,
        subject: &str,
    ) -> Result<Arc<Slot>, ServeError> {
        if subject.is_empty() {
            return Err(ServeError::InvalidArgument(format!(
                "profile `{}` is a template (`template: true`): `subject` is required",
                slot.profile().name
            )));
        }
        check_subject(subject).map_err(|e| ServeError::InvalidArgument(e.into()))?;
        self.cache.connection(slot, subject).map_err(|error| {
            tracing::error!(%error, "cannot make a connection's slot");
            ServeError::Internal
        })
    }

    /// A connection nobody has authorized is not kept in memory: callers asking for
    /// subjects that do not exist would otherwise push out the ones that do.
    fn unconnected(&self, slot: &Slot, subject: &str, error: &ServeError) {
        if let ServeError::Fetch { error, .. } | ServeError::Backoff { error, .. } = error
            && let FetchError::Reauthorize {
                connection: true, ..
            } = **error
            && !slot.has_had_token()
        {
            self.cache.forget_connection(&slot.profile().name, subject);
        }
    }
}

/// The variant of a profile a call asks for, if the profile allows it.
fn variant(
    profile: &Profile,
    request: &pb::GetTokenRequest,
) -> Result<(Variant, Option<Secret>), ServeError> {
    let (subject, subject_token) = subject(profile, request)?;
    let allowed = profile.per_call.as_deref();
    let refuse = |what: &str, value: &str, key: &str| {
        ServeError::InvalidArgument(format!(
            "profile `{}` does not allow {what} `{value}` (its `{key}`)",
            profile.name
        ))
    };
    let scopes = if request.scopes.is_empty() {
        None
    } else {
        let allowed = allowed.map(|a| a.scopes.as_slice()).unwrap_or_default();
        if let Some(scope) = request.scopes.iter().find(|s| !allowed.contains(s)) {
            return Err(refuse("the scope", scope, "allowed_scopes"));
        }
        let mut scopes = request.scopes.clone();
        scopes.sort_unstable();
        scopes.dedup();
        Some(scopes)
    };
    let one_of = |value: &str, allowed: &[String], what: &str, key: &str| {
        if value.is_empty() {
            Ok(None)
        } else if allowed.iter().any(|a| a == value) {
            Ok(Some(value.to_owned()))
        } else {
            Err(refuse(what, value, key))
        }
    };
    let variant = Variant {
        subject,
        scopes,
        audience: one_of(
            &request.audience,
            allowed.map(|a| a.audiences.as_slice()).unwrap_or_default(),
            "the audience",
            "allowed_audiences",
        )?,
        resource: one_of(
            &request.resource,
            allowed.map(|a| a.resources.as_slice()).unwrap_or_default(),
            "the resource",
            "allowed_resources",
        )?,
    };
    Ok((variant, subject_token))
}

/// The token types of RFC 8693 §3 a caller may exchange.
const SUBJECT_TOKEN_TYPES: &[&str] = &[
    "urn:ietf:params:oauth:token-type:access_token",
    "urn:ietf:params:oauth:token-type:refresh_token",
    "urn:ietf:params:oauth:token-type:id_token",
    "urn:ietf:params:oauth:token-type:jwt",
    "urn:ietf:params:oauth:token-type:saml1",
    "urn:ietf:params:oauth:token-type:saml2",
];

/// The subject of a token exchange: given exactly when the profile exchanges tokens.
#[allow(clippy::type_complexity)]
fn subject(
    profile: &Profile,
    request: &pb::GetTokenRequest,
) -> Result<(Option<(TokenDigest, String)>, Option<Secret>), ServeError> {
    let exchanges = profile.grant == Grant::TokenExchange;
    match (exchanges, request.subject_token.is_empty()) {
        (false, true) if request.subject_token_type.is_empty() => Ok((None, None)),
        (false, _) => Err(ServeError::InvalidArgument(format!(
            "profile `{}` does not exchange tokens: `subject_token` is only for a profile with `grant: token_exchange`",
            profile.name
        ))),
        (true, true) => Err(ServeError::InvalidArgument(format!(
            "profile `{}` exchanges tokens: give the token to exchange in `subject_token`",
            profile.name
        ))),
        (true, false) => {
            let kind = match request.subject_token_type.as_str() {
                "" => SUBJECT_TOKEN_TYPES[0],
                kind if SUBJECT_TOKEN_TYPES.contains(&kind) => kind,
                other => {
                    return Err(ServeError::InvalidArgument(format!(
                        "`subject_token_type` `{}` is not a token type of RFC 8693",
                        other.chars().take(100).collect::<String>()
                    )));
                }
            };
            Ok((
                Some((TokenDigest::of(&request.subject_token), kind.to_owned())),
                Some(Secret::new(request.subject_token.clone())),
            ))
        }
    }
}

/// The gRPC service as a running server serves it: replaced whole by a reload (caller
/// authentication, rate limits, request timeout, the largest request), while calls under
/// way finish on the one they started with.
#[derive(Clone)]
pub(crate) struct LiveService(Arc<ArcSwap<Current>>);

/// The service in force, and the generated server over it.
struct Current {
    service: Arc<TokenService>,
    server: TokenServiceServer<TokenService>,
}

impl LiveService {
    pub(crate) fn new(service: Arc<TokenService>, max_request_bytes: usize) -> Self {
        Self(Arc::new(ArcSwap::from_pointee(Self::server(
            service,
            max_request_bytes,
        ))))
    }

    pub(crate) fn replace(&self, service: Arc<TokenService>, max_request_bytes: usize) {
        self.0
            .store(Arc::new(Self::server(service, max_request_bytes)));
    }

    /// The service in force, for the forward-auth port.
    pub(crate) fn current(&self) -> Arc<TokenService> {
        self.0.load().service.clone()
    }

    fn server(service: Arc<TokenService>, max_request_bytes: usize) -> Current {
        Current {
            server: TokenServiceServer::from_arc(service.clone())
                .max_decoding_message_size(max_request_bytes),
            service,
        }
    }
}

impl tonic::server::NamedService for LiveService {
    const NAME: &'static str =
        <TokenServiceServer<TokenService> as tonic::server::NamedService>::NAME;
}

impl tonic::codegen::Service<http::Request<tonic::body::Body>> for LiveService {
    type Response = http::Response<tonic::body::Body>;
    type Error = std::convert::Infallible;
    type Future = DecodeStatus<
        <TokenServiceServer<TokenService> as tonic::codegen::Service<
            http::Request<tonic::body::Body>,
        >>::Future,
    >;

    fn poll_ready(
        &mut self,
        _: &mut std::task::Context<'_>,
    ) -> std::task::Poll<Result<(), Self::Error>> {
        // The generated server is always ready.
        std::task::Poll::Ready(Ok(()))
    }

    fn call(&mut self, request: http::Request<tonic::body::Body>) -> Self::Future {
        // A clone of the current server: two reference counts, no copy of the service.
        DecodeStatus(TokenServiceServer::clone(&self.0.load().server).call(request))
    }
}

/// A reply on its way, its status rewritten if tonic could not decode the request (see
/// [`error::rewrite_decode_status`]). A future of its own rather than a boxed one: no
/// allocation per call.
pub(crate) struct DecodeStatus<F>(F);

impl<F, E> Future for DecodeStatus<F>
where
    F: Future<Output = Result<http::Response<tonic::body::Body>, E>> + Unpin,
{
    type Output = F::Output;

    fn poll(
        mut self: Pin<&mut Self>,
        cx: &mut std::task::Context<'_>,
    ) -> std::task::Poll<Self::Output> {
        let mut reply = std::task::ready!(Pin::new(&mut self.0).poll(cx));
        if let Ok(response) = &mut reply {
            error::rewrite_decode_status(response.headers_mut());
        }
        std::task::Poll::Ready(reply)
    }
}

/// The server span of one call, a child of the caller's trace if it sent one. Disabled,
/// and then nearly free, when tracing is off.
fn server_span(method: &'static str, metadata: &MetadataMap) -> Span {
    let span = tracing::info_span!(
        target: "tokenvend::rpc",
        "rpc",
        otel.name = method_name(method),
        otel.kind = "server",
        otel.status_code = Empty,
        rpc.system = "grpc",
        rpc.service = service_name(method),
        rpc.method = method,
        rpc.grpc.status_code = Empty,
        tokenvend.profile = Empty,
        tokenvend.cache = Empty,
        tokenvend.caller = Empty,
    );
    if !span.is_disabled() {
        // An absent or malformed `traceparent` leaves the span a root.
        let _ = span.set_parent(crate::telemetry::remote_context(metadata));
    }
    span
}

fn method_name(method: &'static str) -> &'static str {
    match method {
        "GetToken" => "tokenvend.v1.TokenService/GetToken",
        "WatchToken" => "tokenvend.v1.TokenService/WatchToken",
        "Check" => "envoy.service.auth.v3.Authorization/Check",
        "Headers" => "GET /v1/headers/{profile}",
        _ => "tokenvend.v1.TokenService/ListProfiles",
    }
}

fn service_name(method: &'static str) -> &'static str {
    match method {
        "Check" => "envoy.service.auth.v3.Authorization",
        _ => "tokenvend.v1.TokenService",
    }
}

fn record_caller(span: &Span, caller: &Caller) {
    if !span.is_disabled() {
        span.record("tokenvend.caller", tracing::field::display(caller));
    }
}

/// The status code, and whether the call failed on the server's side (the codes the
/// gRPC semantic conventions count as server errors).
fn record_status(span: &Span, code: Code) {
    if span.is_disabled() {
        return;
    }
    span.record("rpc.grpc.status_code", code as i64);
    if matches!(
        code,
        Code::Unknown
            | Code::DeadlineExceeded
            | Code::Unimplemented
            | Code::Internal
            | Code::Unavailable
            | Code::DataLoss
    ) {
        span.record("otel.status_code", "ERROR");
    }
}

type TokenStream = Pin<Box<dyn Stream<Item = Result<EncodedToken, Status>> + Send>>;

#[tonic::async_trait]
impl pb::token_service_server::TokenService for TokenService {
    async fn get_token(
        &self,
        request: Request<pb::GetTokenRequest>,
    ) -> Result<Response<EncodedToken>, Status> {
        let (token, hint) = self.token(Rpc::GetToken, &request).await?;
        let mut response = Response::new(token);
        if let Some(hint) = hint {
            response.metadata_mut().insert(
                "tokenvend-hint",
                tonic::metadata::MetadataValue::from_static(hint.as_str()),
            );
        }
        Ok(response)
    }

    async fn list_profiles(
        &self,
        request: Request<pb::ListProfilesRequest>,
    ) -> Result<Response<pb::ListProfilesResponse>, Status> {
        let span = server_span("ListProfiles", request.metadata());
        let caller = match self.caller(&request).instrument(span.clone()).await {
            Ok(caller) => caller,
            Err(error) => {
                let status = Status::from(error);
                record_status(&span, status.code());
                return Err(status);
            }
        };
        record_caller(&span, &caller);
        record_status(&span, Code::Ok);
        let profiles = self
            .cache
            .slots()
            .into_iter()
            .filter(|slot| caller.may_use(slot.profile()))
            .map(|slot| {
                let profile = slot.profile();
                let status = slot.status();
                pb::ProfileInfo {
                    name: profile.name.to_string(),
                    grant: profile.grant.as_str().to_owned(),
                    token_endpoint_host: profile.endpoint_host().to_owned(),
                    scopes: profile.scopes.clone(),
                    cache_state: match status.state {
                        CacheState::Empty => pb::CacheState::Empty,
                        CacheState::Valid => pb::CacheState::Valid,
                        CacheState::Stale => pb::CacheState::Stale,
                        CacheState::Failed => pb::CacheState::Failed,
                        CacheState::NeedsAuthorization => pb::CacheState::NeedsAuthorization,
                    } as i32,
                    expires_at: status.expires_at.map(Into::into),
                    last_refresh: status.last_refresh.map(Into::into),
                    last_error: status.last_error.unwrap_or_default(),
                }
            })
            .collect();
        Ok(Response::new(pb::ListProfilesResponse { profiles }))
    }

    async fn list_connections(
        &self,
        request: Request<pb::ListConnectionsRequest>,
    ) -> Result<Response<pb::ListConnectionsResponse>, Status> {
        self.list_connections_rpc(request).await
    }

    async fn revoke_connection(
        &self,
        request: Request<pb::RevokeConnectionRequest>,
    ) -> Result<Response<pb::RevokeConnectionResponse>, Status> {
        self.revoke_connection_rpc(request).await
    }

    async fn put_connection(
        &self,
        request: Request<pb::PutConnectionRequest>,
    ) -> Result<Response<pb::PutConnectionResponse>, Status> {
        self.put_connection_rpc(request).await
    }

    async fn create_connect_link(
        &self,
        request: Request<pb::CreateConnectLinkRequest>,
    ) -> Result<Response<pb::CreateConnectLinkResponse>, Status> {
        let span = server_span("CreateConnectLink", request.metadata());
        let answer = async {
            let caller = self.caller(&request).await.map_err(Status::from)?;
            record_caller(&span, &caller);
            let asked = request.get_ref();
            self.slot(&caller, &asked.profile).map_err(Status::from)?;
            let web = self
                .links
                .as_ref()
                .ok_or_else(|| Status::failed_precondition(LinkError::NotConfigured.to_string()))?;
            let ttl =
                (asked.ttl_seconds > 0).then(|| Duration::from_secs(u64::from(asked.ttl_seconds)));
            let (url, expires) = web
                .connect_link(&asked.profile, &asked.subject, ttl)
                .map_err(|e| match e {
                    LinkError::Invalid(_) => Status::invalid_argument(e.to_string()),
                    LinkError::NotConfigured | LinkError::Profile(_) => {
                        Status::failed_precondition(e.to_string())
                    }
                })?;
            Ok(Response::new(pb::CreateConnectLinkResponse {
                url: url.into(),
                expires_at: Some((std::time::UNIX_EPOCH + Duration::from_secs(expires)).into()),
            }))
        }
        .instrument(span.clone())
        .await;
        record_status(
            &span,
            answer.as_ref().map_or_else(Status::code, |_| Code::Ok),
        );
        answer
    }

    type WatchTokenStream = TokenStream;

    async fn watch_token(
        &self,
        request: Request<pb::WatchTokenRequest>,
    ) -> Result<Response<TokenStream>, Status> {
        const RPC: Rpc = Rpc::WatchToken;
        let profile = &request.get_ref().profile;
        let (span, deadline, caller) = self.begin(RPC, &request, profile).await?;
        let first = async {
            let mut slot = self.slot(&caller, profile)?;
            if slot.profile().template || !request.get_ref().subject.is_empty() {
                if !slot.profile().template {
                    return Err(ServeError::InvalidArgument(format!(
                        "profile `{profile}` is not a template (`template: true`): `subject` is only for a template profile's connections"
                    )));
                }
                slot = self.connection_slot(&slot, &request.get_ref().subject)?;
            }
            let held = self.watch(&caller)?;
            // Subscribed before the first token is taken, so no refresh falls in between.
            let updates = slot.subscribe();
            let Served {
                token: first,
                result,
                ..
            } = within(Some(deadline), slot.token(Need::default())).await?;
            Ok::<_, ServeError>((slot, held, updates, first, result))
        };
        let (slot, held, updates, first, result) = match first.instrument(span.clone()).await {
            Ok(first) => first,
            Err(error) => return Err(self.refused(RPC, Some(&caller), profile, error, &span)),
        };
        slot.counters().served(RPC);
        audit::served(
            RPC.as_str(),
            &caller,
            profile,
            result.into(),
            first.fingerprint(),
        );
        if !span.is_disabled() {
            span.record("tokenvend.cache", result.as_str());
            record_status(&span, Code::Ok);
        }
        let watch = Watch {
            updates,
            last: first,
            sent_first: false,
            stop: self.stop.clone(),
            slot,
            _held: held,
            ended: false,
        };
        // The stream is dropped when the client leaves, which ends the watch quietly.
        let stream = futures::stream::unfold(watch, |mut watch| async move {
            let item = watch.next().await?;
            Some((item, watch))
        });
        Ok(Response::new(Box::pin(stream)))
    }
}

/// One `WatchToken` stream: the current token, then each one that replaces it.
struct Watch {
    updates: watch::Receiver<Option<Arc<CachedToken>>>,
    last: Arc<CachedToken>,
    sent_first: bool,
    stop: CancellationToken,
    /// Once a reload replaces or removes the profile, the stream ends, and a client that
    /// watches again gets the new configuration's token (or NOT_FOUND).
    slot: Arc<Slot>,
    /// The stream's place in its caller's `max_watches_per_caller`.
    _held: HeldGuard,
    ended: bool,
}

impl Watch {
    async fn next(&mut self) -> Option<Result<EncodedToken, Status>> {
        if self.ended {
            return None;
        }
        if !self.sent_first {
            self.sent_first = true;
            return Some(Ok(self.last.encoded().clone()));
        }
        loop {
            // Checked before each wait: retiring wakes the watchers already subscribed, not one
            // that subscribed after it.
            if self.slot.is_retired() {
                return None;
            }
            tokio::select! {
                () = self.stop.cancelled() => {
                    // UNAVAILABLE, not OK: a client reconnects on it, to another replica.
                    self.ended = true;
                    return Some(Err(ServeError::ShuttingDown.into()));
                }
                changed = self.updates.changed() => changed.ok()?,
            }
            let Some(token) = self.updates.borrow_and_update().clone() else {
                continue;
            };
            if !Arc::ptr_eq(&token, &self.last) {
                self.last = token;
                return Some(Ok(self.last.encoded().clone()));
            }
        }
    }
}

fn min_ttl(value: Option<prost_types::Duration>) -> Result<Duration, ServeError> {
    match value {
        None => Ok(Duration::ZERO),
        Some(d) => Duration::try_from(d).map_err(|_| {
            ServeError::InvalidArgument("`min_ttl` must be a non-negative duration".into())
        }),
    }
}

/// The caller's deadline from `grpc-timeout`, shortened by a tenth (at most 20 ms) so that
/// our DEADLINE_EXCEEDED reaches the caller before its own timer or tonic's server timer
/// (which would say CANCELLED) fires.
fn deadline(metadata: &MetadataMap) -> Option<Duration> {
    let value = metadata.get("grpc-timeout")?.to_str().ok()?;
    let (digits, unit) = value.split_at(value.len().checked_sub(1)?);
    let amount: u64 = digits.parse().ok()?;
    let timeout = match unit {
        "H" => Duration::from_secs(amount.saturating_mul(3600)),
        "M" => Duration::from_secs(amount.saturating_mul(60)),
        "S" => Duration::from_secs(amount),
        "m" => Duration::from_millis(amount),
        "u" => Duration::from_micros(amount),
        "n" => Duration::from_nanos(amount),
        _ => return None,
    };
    Some(timeout.saturating_sub((timeout / 10).min(Duration::from_millis(20))))
}

async fn within<T>(
    deadline: Option<Duration>,
    work: impl Future<Output = Result<T, ServeError>>,
) -> Result<T, ServeError> {
    match deadline {
        None => work.await,
        Some(deadline) => tokio::time::timeout(deadline, work)
            .await
            .map_err(|_| ServeError::DeadlineExceeded)?,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn grpc_timeout_units() {
        let mut metadata = MetadataMap::new();
        for (value, expected) in [
            ("2S", Duration::from_millis(1980)),
            ("100m", Duration::from_millis(90)),
            ("1M", Duration::from_millis(59_980)),
            ("10u", Duration::from_micros(9)),
        ] {
            metadata.insert("grpc-timeout", value.parse().unwrap());
            assert_eq!(deadline(&metadata), Some(expected), "{value}");
        }
        metadata.insert("grpc-timeout", "5x".parse().unwrap());
        assert_eq!(deadline(&metadata), None);
    }

    #[test]
    fn negative_min_ttl_is_invalid() {
        let negative = prost_types::Duration {
            seconds: -1,
            nanos: 0,
        };
        assert!(matches!(
            min_ttl(Some(negative)),
            Err(ServeError::InvalidArgument(_))
        ));
        assert_eq!(min_ttl(None).unwrap(), Duration::ZERO);
    }
}
