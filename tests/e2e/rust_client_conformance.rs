//! The conformance scenarios every client passes (client/README.md), for the Rust client:
//! the real server, a real HTTP identity provider and a real HTTP upstream on loopback.
//! The client reaches the server through a recording gRPC proxy, so each test counts the
//! calls the client made and sees what it asked for.

use std::{
    net::SocketAddr,
    pin::Pin,
    sync::{
        Arc, Mutex,
        atomic::{AtomicUsize, Ordering},
    },
    time::{Duration, Instant},
};

use axum::{Router, extract::State, http::HeaderMap, http::StatusCode, routing::get};
use futures::{Stream, StreamExt as _};
use tokenvend::{
    pb::{
        GetTokenRequest, ListProfilesRequest, ListProfilesResponse, WatchTokenRequest,
        token_service_client::TokenServiceClient,
        token_service_server::{TokenService, TokenServiceServer},
    },
    wire::EncodedToken,
};
use tokenvend_client::{
    Error, TokenClient, TokenLayer, TokenMiddleware, reqwest, reqwest_middleware,
};
use tokenvend_client::{tower_layer, tower_service::Service as _};
use tokio::{net::TcpListener, task::JoinHandle};
use tokio_stream::wrappers::TcpListenerStream;
use tonic::{Code, Request, Response, Status, transport::Channel};

use crate::support::{Behaviour, Server, TestIdp, config, profile};

/// A GetToken call as the proxy received it.
#[derive(Clone, Debug)]
struct Call {
    profile: String,
    min_ttl: Option<prost_types::Duration>,
    rejected: bool,
    at: Instant,
}

#[derive(Default)]
struct Seen {
    calls: Mutex<Vec<Call>>,
    watches: AtomicUsize,
}

/// A gRPC proxy in front of the real server that records every call.
struct Spy {
    addr: SocketAddr,
    seen: Arc<Seen>,
    task: JoinHandle<()>,
}

struct Forward {
    upstream: TokenServiceClient<Channel>,
    seen: Arc<Seen>,
}

fn forwarded<T>(request: Request<T>) -> Request<T> {
    // The caller's metadata (its ServiceAccount token) goes along.
    let (metadata, _, message) = request.into_parts();
    Request::from_parts(metadata, Default::default(), message)
}

#[tonic::async_trait]
impl TokenService for Forward {
    async fn get_token(
        &self,
        request: Request<GetTokenRequest>,
    ) -> Result<Response<EncodedToken>, Status> {
        let message = request.get_ref();
        self.seen.calls.lock().unwrap().push(Call {
            profile: message.profile.clone(),
            min_ttl: message.min_ttl,
            rejected: !message.rejected_token.is_empty(),
            at: Instant::now(),
        });
        let token = self
            .upstream
            .clone()
            .get_token(forwarded(request))
            .await?
            .into_inner();
        Ok(Response::new(EncodedToken::encode(&token)))
    }

    async fn list_profiles(
        &self,
        request: Request<ListProfilesRequest>,
    ) -> Result<Response<ListProfilesResponse>, Status> {
        self.upstream
            .clone()
            .list_profiles(forwarded(request))
            .await
    }

    async fn list_connections(
        &self,
        _: Request<tokenvend::pb::ListConnectionsRequest>,
    ) -> Result<Response<tokenvend::pb::ListConnectionsResponse>, Status> {
        Err(Status::unimplemented("not forwarded"))
    }

    async fn revoke_connection(
        &self,
        _: Request<tokenvend::pb::RevokeConnectionRequest>,
    ) -> Result<Response<tokenvend::pb::RevokeConnectionResponse>, Status> {
        Err(Status::unimplemented("not forwarded"))
    }

    async fn put_connection(
        &self,
        _: Request<tokenvend::pb::PutConnectionRequest>,
    ) -> Result<Response<tokenvend::pb::PutConnectionResponse>, Status> {
        Err(Status::unimplemented("not forwarded"))
    }

    async fn create_connect_link(
        &self,
        request: Request<tokenvend::pb::CreateConnectLinkRequest>,
    ) -> Result<Response<tokenvend::pb::CreateConnectLinkResponse>, Status> {
        self.upstream
            .clone()
            .create_connect_link(forwarded(request))
            .await
    }

    type WatchTokenStream = Pin<Box<dyn Stream<Item = Result<EncodedToken, Status>> + Send>>;

    async fn watch_token(
        &self,
        request: Request<WatchTokenRequest>,
    ) -> Result<Response<Self::WatchTokenStream>, Status> {
        self.seen.watches.fetch_add(1, Ordering::SeqCst);
        let stream = self
            .upstream
            .clone()
            .watch_token(forwarded(request))
            .await?
            .into_inner();
        Ok(Response::new(Box::pin(
            stream.map(|token| token.map(|t| EncodedToken::encode(&t))),
        )))
    }
}

impl Spy {
    async fn start(server: &Server) -> Self {
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let seen = Arc::new(Seen::default());
        let service = TokenServiceServer::new(Forward {
            upstream: TokenServiceClient::new(server.channel().await),
            seen: seen.clone(),
        });
        let task = tokio::spawn(async move {
            tonic::transport::Server::builder()
                .add_service(service)
                .serve_with_incoming(TcpListenerStream::new(listener))
                .await
                .unwrap();
        });
        Self { addr, seen, task }
    }

    fn calls(&self) -> Vec<Call> {
        self.seen.calls.lock().unwrap().clone()
    }

    fn count(&self) -> usize {
        self.seen.calls.lock().unwrap().len()
    }

    fn rejects(&self) -> usize {
        self.calls().iter().filter(|c| c.rejected).count()
    }

    /// A client of the proxy, given as `host:port`: plaintext is assumed.
    fn client(&self) -> TokenClient {
        TokenClient::new(self.addr.to_string()).unwrap()
    }
}

impl Drop for Spy {
    fn drop(&mut self) {
        self.task.abort();
    }
}

/// A resource API on loopback that records the `authorization` of every request and
/// answers 401 to the first one, or to all.
#[derive(Default)]
struct Upstream {
    seen: Mutex<Vec<String>>,
    always_401: bool,
}

async fn answer(State(state): State<Arc<Upstream>>, headers: HeaderMap) -> StatusCode {
    let authorization = headers["authorization"].to_str().unwrap().to_owned();
    let mut seen = state.seen.lock().unwrap();
    seen.push(authorization);
    if state.always_401 || seen.len() == 1 {
        StatusCode::UNAUTHORIZED
    } else {
        StatusCode::OK
    }
}

async fn start_upstream(always_401: bool) -> (String, Arc<Upstream>) {
    let state = Arc::new(Upstream {
        always_401,
        ..Default::default()
    });
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let url = format!("http://{}/api", listener.local_addr().unwrap());
    let app = Router::new()
        .route("/api", get(answer).post(answer))
        .with_state(state.clone());
    tokio::spawn(async move { axum::serve(listener, app).await.unwrap() });
    (url, state)
}

fn middleware_client(
    tokens: &TokenClient,
    profile: &str,
) -> reqwest_middleware::ClientWithMiddleware {
    reqwest_middleware::ClientBuilder::new(reqwest::Client::new())
        .with(TokenMiddleware::new(tokens.clone(), profile))
        .build()
}

type HyperClient = hyper_util::client::legacy::Client<
    hyper_util::client::legacy::connect::HttpConnector,
    http_body_util::Full<bytes::Bytes>,
>;

fn hyper_client() -> HyperClient {
    hyper_util::client::legacy::Client::builder(hyper_util::rt::TokioExecutor::new()).build_http()
}

fn hyper_request(url: &str) -> http::Request<http_body_util::Full<bytes::Bytes>> {
    http::Request::post(url)
        .body(http_body_util::Full::new(bytes::Bytes::from_static(b"{}")))
        .unwrap()
}

#[tokio::test]
async fn conformance_cache_hit_no_rpc() {
    let idp = TestIdp::start(Behaviour::issue(3600)).await;
    let server = Server::start(&config("p", &idp, "")).await;
    let spy = Spy::start(&server).await;
    let tokens = spy.client();
    let first = tokens.get_token("p").await.unwrap();
    for _ in 0..10 {
        let again = tokens.get_token("p").await.unwrap();
        assert!(Arc::ptr_eq(&first, &again));
    }
    assert_eq!(spy.count(), 1, "only the first get reaches tokenvend");
    server.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn conformance_single_flight() {
    let idp = TestIdp::start(Behaviour::slow(3600, Duration::from_millis(300))).await;
    let server = Server::start(&config("p", &idp, "")).await;
    let spy = Spy::start(&server).await;
    let tokens = spy.client();
    let gets: Vec<_> = (0..25)
        .map(|_| {
            let tokens = tokens.clone();
            tokio::spawn(async move { tokens.get_token("p").await.unwrap() })
        })
        .collect();
    for get in gets {
        assert_eq!(get.await.unwrap().access_token, "tok-1");
    }
    assert_eq!(
        spy.count(),
        1,
        "25 concurrent gets of a cold profile, one call"
    );
    server.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn conformance_reject_coalesced() {
    let idp = TestIdp::start(Behaviour::issue(3600)).await;
    let server = Server::start(&config("p", &idp, "")).await;
    let spy = Spy::start(&server).await;
    let tokens = spy.client();
    let old = tokens.get_token("p").await.unwrap();
    idp.set(Behaviour::slow(3600, Duration::from_millis(300)));

    let rejects: Vec<_> = (0..60)
        .map(|_| {
            let tokens = tokens.clone();
            let old = old.access_token.clone();
            tokio::spawn(async move { tokens.reject("p", &old).await.unwrap() })
        })
        .collect();
    for reject in rejects {
        let new = reject.await.unwrap();
        assert_ne!(new.access_token, old.access_token);
    }
    assert!(spy.rejects() <= 2, "{} calls for 60 rejects", spy.rejects());
    assert_eq!(spy.rejects(), spy.count() - 1);

    // A late report of the old token: it is no longer the local copy, so no call.
    let before = spy.count();
    let current = tokens.reject("p", &old.access_token).await.unwrap();
    assert_eq!(current.access_token, "tok-2");
    assert_eq!(spy.count(), before);
    assert_eq!(tokens.get_token("p").await.unwrap().access_token, "tok-2");
    assert_eq!(spy.count(), before);
    server.stop().await;
}

#[tokio::test]
async fn conformance_http_401_retried_once() {
    let idp = TestIdp::start(Behaviour::issue(3600)).await;
    // Every report gets a new token, even of a token that replaced another moments ago.
    let fresh = "    rejected_token_min_interval: 0s\n";
    let server = Server::start(&config("p", &idp, fresh)).await;
    let spy = Spy::start(&server).await;
    let tokens = spy.client();

    // reqwest-middleware.
    let (url, upstream) = start_upstream(false).await;
    let response = middleware_client(&tokens, "p")
        .post(&url)
        .body("a body that can be sent twice")
        .send()
        .await
        .unwrap();
    assert_eq!(response.status(), 200);
    assert_eq!(
        *upstream.seen.lock().unwrap(),
        ["Bearer tok-1", "Bearer tok-2"]
    );

    // A tower layer over hyper-util's client.
    let (url, upstream) = start_upstream(false).await;
    let mut http = tower_layer::Layer::layer(&TokenLayer::new(tokens.clone(), "p"), hyper_client());
    let response = http.call(hyper_request(&url)).await.unwrap();
    assert_eq!(response.status(), 200);
    assert_eq!(
        *upstream.seen.lock().unwrap(),
        ["Bearer tok-2", "Bearer tok-3"]
    );

    // A streamed body cannot be sent again: the 401 is the caller's, and the token is
    // still reported so that the next request carries its replacement.
    let (url, upstream) = start_upstream(false).await;
    let frame = http_body::Frame::data(bytes::Bytes::from_static(b"streamed"));
    let stream = futures::stream::iter([Ok::<_, std::io::Error>(frame)]);
    let response = middleware_client(&tokens, "p")
        .post(&url)
        .body(reqwest::Body::wrap(http_body_util::StreamBody::new(stream)))
        .send()
        .await
        .unwrap();
    assert_eq!(response.status(), 401);
    assert_eq!(*upstream.seen.lock().unwrap(), ["Bearer tok-3"]);
    assert_eq!(tokens.cached("p").unwrap().access_token, "tok-4");
    assert_eq!(spy.rejects(), 3);
    server.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn conformance_always_401_bounded() {
    let idp = TestIdp::start(Behaviour::issue(3600)).await;
    let server = Server::start(&config("p", &idp, "")).await;
    let spy = Spy::start(&server).await;
    let tokens = spy.client();
    let (url, upstream) = start_upstream(true).await;
    let http = middleware_client(&tokens, "p");

    for call in 1..=5 {
        let response = http.get(&url).send().await.unwrap();
        assert_eq!(response.status(), 401, "a second 401 is the caller's");
        assert_eq!(
            upstream.seen.lock().unwrap().len(),
            2 * call,
            "one retry per call"
        );
        assert!(
            spy.count() <= 2 * call,
            "{} calls to tokenvend",
            spy.count()
        );
    }

    let before = spy.count();
    let idp_before = idp.count();
    let calls: Vec<_> = (0..20)
        .map(|_| {
            let http = http.clone();
            let url = url.clone();
            tokio::spawn(async move { http.get(&url).send().await.unwrap().status() })
        })
        .collect();
    for call in calls {
        assert_eq!(call.await.unwrap(), 401);
    }
    assert_eq!(upstream.seen.lock().unwrap().len(), 10 + 40);
    let concurrent = spy.count() - before;
    assert!(concurrent <= 4, "{concurrent} calls for 20 concurrent 401s");
    assert!(idp.count() - idp_before <= concurrent);
    server.stop().await;
}

/// A loopback listener that accepts connections and never answers.
async fn unresponsive() -> (SocketAddr, JoinHandle<()>) {
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let task = tokio::spawn(async move {
        let mut held = Vec::new();
        while let Ok((socket, _)) = listener.accept().await {
            held.push(socket);
        }
    });
    (addr, task)
}

#[tokio::test]
async fn conformance_deadline_bounds_fetch() {
    let (addr, silent) = unresponsive().await;
    let (url, upstream) = start_upstream(false).await;
    let tokens = TokenClient::new(format!("http://{addr}")).unwrap();

    // reqwest-middleware: the request's own timeout bounds the token fetch.
    let started = Instant::now();
    let error = middleware_client(&tokens, "p")
        .get(&url)
        .timeout(Duration::from_secs(1))
        .send()
        .await
        .unwrap_err();
    let took = started.elapsed();
    assert!(took < Duration::from_millis(1500), "failed after {took:?}");
    assert!(took >= Duration::from_millis(900), "failed after {took:?}");
    let cause = Error::from_middleware(&error).expect("a tokenvend error inside");
    assert_eq!(cause.code(), Code::DeadlineExceeded);
    assert!(cause.is_retryable());
    assert!(
        error
            .to_string()
            .contains("DeadlineExceeded: no answer from tokenvend within"),
        "{error}"
    );

    // The tower layer: the gRPC deadline of the request.
    let started = Instant::now();
    let mut http = tower_layer::Layer::layer(&TokenLayer::new(tokens.clone(), "p"), hyper_client());
    let mut request = hyper_request(&url);
    request
        .headers_mut()
        .insert("grpc-timeout", http::HeaderValue::from_static("1000m"));
    let error = http.call(request).await.unwrap_err();
    assert!(started.elapsed() < Duration::from_millis(1500));
    let cause = error.downcast_ref::<Error>().expect("a tokenvend error");
    assert_eq!(cause.code(), Code::DeadlineExceeded);
    assert!(cause.is_retryable());

    // get_token with the builder's timeout.
    let tokens = TokenClient::builder(addr.to_string())
        .timeout(Duration::from_secs(1))
        .build()
        .unwrap();
    let started = Instant::now();
    let error = tokens.get_token("p").await.unwrap_err();
    assert!(started.elapsed() < Duration::from_millis(1500));
    assert_eq!(error.code(), Code::DeadlineExceeded);
    assert!(upstream.seen.lock().unwrap().is_empty());
    silent.abort();
}

#[tokio::test]
async fn conformance_error_categories() {
    let idp = TestIdp::start(Behaviour::issue(3600)).await;
    let server = Server::start(&config("p", &idp, "")).await;
    let spy = Spy::start(&server).await;
    let error = spy.client().get_token("nope").await.unwrap_err();
    assert_eq!(error.code(), Code::NotFound);
    assert!(!error.is_retryable());

    let (url, _) = start_upstream(false).await;
    let error = middleware_client(&spy.client(), "nope")
        .get(&url)
        .send()
        .await
        .unwrap_err();
    let cause = Error::from_middleware(&error).unwrap();
    assert_eq!(cause.code(), Code::NotFound);

    // Nothing listens: the client still builds (it connects on first use), and the call
    // says why it failed.
    let closed = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = closed.local_addr().unwrap();
    drop(closed);
    let tokens = TokenClient::new(format!("http://{addr}")).unwrap();
    let error = tokens.get_token("p").await.unwrap_err();
    assert_eq!(error.code(), Code::Unavailable, "{error}");
    assert!(error.is_retryable());
    let text = error.to_string();
    assert!(text.contains("Connection refused"), "{text}");
    server.stop().await;
}

#[tokio::test]
async fn conformance_refresh_margin_fraction() {
    // "p": tokens of 20 s, which tokenvend replaces at 80 %. "q": the provider fails
    // after the first token, so tokenvend can only hand back the same one.
    let p_idp = TestIdp::start(Behaviour::issue(20)).await;
    let q_idp = TestIdp::start(Behaviour::issue(20)).await;
    let yaml = format!(
        "profiles:\n{}{}",
        profile("p", &p_idp, ""),
        profile("q", &q_idp, "")
    );
    let server = Server::start(&yaml).await;
    let spy = Spy::start(&server).await;
    let tokens = spy.client();
    let started = Instant::now();
    let first = tokens.get_token("p").await.unwrap();
    let expires = Instant::now() + first.remaining();
    tokens.get_token("q").await.unwrap();
    q_idp.set(Behaviour::html(503));

    let mut gets = 0;
    while started.elapsed() < Duration::from_millis(19_500) {
        let p = tokens.get_token("p").await.unwrap();
        let q = tokens.get_token("q").await.unwrap();
        assert!(!p.remaining().is_zero() && !q.remaining().is_zero());
        gets += 1;
        tokio::time::sleep(Duration::from_millis(10)).await;
    }

    let calls = spy.calls();
    assert!(
        calls.iter().all(|c| c.min_ttl.is_none()),
        "no min_ttl of the client's own"
    );
    let p: Vec<&Call> = calls.iter().filter(|c| c.profile == "p").collect();
    let q: Vec<&Call> = calls.iter().filter(|c| c.profile == "q").collect();
    // The margin of a 20 s token is 2 s: nothing is asked before 18 s.
    for call in p.iter().skip(1).chain(q.iter().skip(1)) {
        let left = expires.saturating_duration_since(call.at);
        assert!(
            left <= Duration::from_millis(2_100),
            "asked with {left:?} left"
        );
    }
    // At 90 % tokenvend has replaced "p": one call brings the new token.
    assert_eq!(p.len(), 2, "{gets} gets of p");
    assert_eq!(tokens.get_token("p").await.unwrap().access_token, "tok-2");
    // "q" comes back within its margin: asked again at most once a second.
    assert!(q.len() <= 4, "{} calls for {gets} gets of q", q.len());
    server.stop().await;
}

#[tokio::test]
async fn conformance_watch_live_copy() {
    let idp = TestIdp::start(Behaviour::issue(6)).await;
    let server = Server::start(&config("p", &idp, "")).await;
    let spy = Spy::start(&server).await;
    let tokens = spy.client();
    let _watch = tokens.watch("p");
    let first = crate::support::eventually(Duration::from_secs(5), "the first token", || async {
        tokens.cached("p")
    })
    .await;
    for _ in 0..50 {
        let token = tokens.get_token("p").await.unwrap();
        assert_eq!(token.access_token, tokens.cached("p").unwrap().access_token);
    }
    // tokenvend replaces the token at 80 % of its 6 s, and the stream brings it.
    crate::support::eventually(Duration::from_secs(8), "the replacement", || async {
        tokens
            .cached("p")
            .filter(|t| t.access_token != first.access_token)
    })
    .await;
    assert_ne!(
        tokens.get_token("p").await.unwrap().access_token,
        first.access_token
    );
    assert_eq!(spy.count(), 0, "no GetToken while watching");
    assert_eq!(spy.seen.watches.load(Ordering::SeqCst), 1);
    server.stop().await;
}

#[tokio::test]
async fn conformance_stale_copy_while_unreachable() {
    let idp = TestIdp::start(Behaviour::issue(10)).await;
    let server = Server::start(&config("p", &idp, "")).await;
    let spy = Spy::start(&server).await;
    let tokens = spy.client();
    let token = tokens.get_token("p").await.unwrap();
    server.stop().await;
    drop(spy);

    // Inside its margin (a tenth of 10 s) the copy would be refreshed; with tokenvend
    // gone it is served while it is valid.
    tokio::time::sleep(token.remaining().saturating_sub(Duration::from_millis(600))).await;
    let stale = tokens.get_token("p").await.unwrap();
    assert!(Arc::ptr_eq(&token, &stale));
    assert!(stale.remaining() < Duration::from_secs(1));

    // Expired, it is not.
    tokio::time::sleep(stale.remaining() + Duration::from_millis(50)).await;
    let error = tokens.get_token("p").await.unwrap_err();
    assert_eq!(error.code(), Code::Unavailable, "{error}");
}

#[tokio::test]
async fn conformance_service_account_token() {
    use crate::support::security::SaIssuer;

    let idp = TestIdp::start(Behaviour::issue(3600)).await;
    let issuer = SaIssuer::start().await;
    let yaml = format!(
        "server:\n{}profiles:\n{}",
        issuer.auth_yaml(),
        profile(
            "p",
            &idp,
            "    allow: [\"system:serviceaccount:orders:*\"]\n"
        )
    );
    let server = Server::start(&yaml).await;
    let spy = Spy::start(&server).await;
    let dir = tempfile::tempdir().unwrap();
    let token_file = dir.path().join("token");
    std::fs::write(&token_file, issuer.token("billing", "api")).unwrap();
    let tokens = TokenClient::builder(spy.addr.to_string())
        .service_account_token_file(&token_file)
        .build()
        .unwrap();
    // billing may not use the profile: it reads as not there.
    let error = tokens.get_token("p").await.unwrap_err();
    assert_eq!(error.code(), Code::NotFound, "{error}");

    // The kubelet rotates the file; the next call carries the new token.
    std::fs::write(&token_file, format!("{}\n", issuer.token("orders", "api"))).unwrap();
    assert_eq!(tokens.get_token("p").await.unwrap().access_token, "tok-1");

    // A client over a channel of its own keeps the file.
    let channel = Channel::from_shared(format!("http://{}", spy.addr))
        .unwrap()
        .connect_lazy();
    let over_channel = TokenClient::from_channel(channel.clone(), Some(token_file.clone()));
    assert_eq!(
        over_channel.get_token("p").await.unwrap().access_token,
        "tok-1"
    );

    // Without the file the caller has no identity at all.
    let anonymous = TokenClient::from_channel(channel, None);
    let error = anonymous.get_token("p").await.unwrap_err();
    assert_eq!(error.code(), Code::Unauthenticated);
    server.stop().await;
}

#[tokio::test]
async fn a_get_given_up_leaves_no_call_behind() {
    let idp = TestIdp::start(Behaviour::slow(3600, Duration::from_millis(600))).await;
    let server = Server::start(&config("p", &idp, "")).await;
    let spy = Spy::start(&server).await;
    let tokens = spy.client();
    let quick = tokenvend_client::GetOptions::new().timeout(Duration::from_millis(100));
    let error = tokens.get_token_with("p", quick).await.unwrap_err();
    assert_eq!(error.code(), Code::DeadlineExceeded, "{error}");
    assert!(error.is_retryable());
    // Its only caller gave up, so the call was dropped: the next get makes its own
    // rather than join one nobody polls.
    assert_eq!(tokens.get_token("p").await.unwrap().access_token, "tok-1");
    assert_eq!(spy.count(), 2);
    server.stop().await;
}
