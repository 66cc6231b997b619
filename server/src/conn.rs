//! One connection on the gRPC port as the calls on it see it: who the peer is, whether a
//! call on it has authenticated, how many calls are open; the watchdog that closes a
//! connection holding its slot for nothing, and the layer that counts the calls.

use std::{
    future::Future,
    io,
    net::SocketAddr,
    pin::Pin,
    sync::{
        Arc,
        atomic::{AtomicBool, AtomicU64, Ordering},
    },
    task::{Context, Poll},
    time::Duration,
};

use tokio::time::{Instant, Sleep};
use tonic::body::Body;

/// What the transport knows about a connection. tonic puts a copy in every request's
/// extensions, so the certificate is read once per connection, not once per call.
#[derive(Debug, Clone)]
pub(crate) struct Peer {
    /// The caller's address.
    pub remote: Option<SocketAddr>,
    /// The identity in the client certificate (URI SAN, else DNS SAN), if one was verified.
    pub identity: Option<Arc<str>>,
    /// Why a verified client certificate gave no identity, if it did not.
    pub refused: Option<CertificateRefusal>,
    /// The calls on the connection, as its watchdog reads them.
    pub activity: Arc<Activity>,
}

/// Why a client certificate that chains to the client CA identifies nobody. Certificate
/// identities are SPIFFE IDs (`scheme://...`) or host names, ServiceAccount identities are
/// `system:serviceaccount:...`: refusing every other form keeps the two kinds apart, so
/// that no certificate is taken for a ServiceAccount and an `allow` pattern matches one
/// kind only.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
pub enum CertificateRefusal {
    /// Neither a URI SAN nor a DNS SAN.
    #[error("the client certificate has no URI or DNS SAN")]
    NoName,
    /// A SAN that starts with `system:`, the prefix of Kubernetes identities.
    #[error(
        "the client certificate's SAN starts with `system:`, which only ServiceAccount tokens may carry"
    )]
    ServiceAccountName,
    /// A URI SAN that is not `scheme://...` in printable ASCII.
    #[error("the client certificate's URI SAN is not a URI such as spiffe://trust-domain/path")]
    NotUri,
    /// A DNS SAN that is not a host name.
    #[error("the client certificate's DNS SAN is not a host name")]
    NotHostName,
}

/// The calls on one connection: how many have started, how many are open, and whether
/// one has authenticated.
#[derive(Debug, Default)]
pub(crate) struct Activity {
    /// Calls started (high 32 bits, wrapping) and calls open (low 32 bits), in one word
    /// so that a call costs one atomic add at each end and the watchdog one load.
    calls: AtomicU64,
    authenticated: AtomicBool,
}

const STARTED: u64 = 1 << 32;

impl Activity {
    /// A new connection's; `authenticated` when the handshake already proved who it is.
    pub(crate) fn new(authenticated: bool) -> Arc<Self> {
        Arc::new(Self {
            calls: AtomicU64::new(0),
            authenticated: AtomicBool::new(authenticated),
        })
    }

    /// A call started; it is open until the guard is dropped.
    pub(crate) fn call(self: &Arc<Self>) -> CallGuard {
        self.calls.fetch_add(STARTED + 1, Ordering::Relaxed);
        CallGuard(self.clone())
    }

    /// A call on the connection authenticated. Read before written: every call of an
    /// authenticated connection comes here, and a load leaves the cache line shared.
    pub(crate) fn authenticated(&self) {
        if !self.authenticated.load(Ordering::Relaxed) {
            self.authenticated.store(true, Ordering::Relaxed);
        }
    }

    fn is_authenticated(&self) -> bool {
        self.authenticated.load(Ordering::Relaxed)
    }

    /// (calls started, calls open).
    fn calls(&self) -> (u32, u32) {
        let calls = self.calls.load(Ordering::Relaxed);
        ((calls >> 32) as u32, calls as u32)
    }
}

/// An open call; closes it when dropped.
#[derive(Debug)]
pub(crate) struct CallGuard(Arc<Activity>);

impl Drop for CallGuard {
    fn drop(&mut self) {
        self.0.calls.fetch_sub(1, Ordering::Relaxed);
    }
}

/// When a connection is closed for holding a slot without using it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct Rules {
    /// No call open and none started for this long: closed.
    pub idle_timeout: Duration,
    /// No call authenticated this long after the connection was accepted: closed. `None`
    /// on a port where callers need not authenticate.
    pub unauthenticated_timeout: Option<Duration>,
}

/// Decides when a connection has held its slot for nothing, polled from the connection's
/// reads (hyper always has one pending), so that it needs no task of its own.
///
/// The idle check runs every `idle_timeout` and closes a connection that had no call open
/// at this check and the one before, and started none in between: one with no call for
/// between one and two `idle_timeout`s. A timer reset per call would take the timer
/// wheel's lock on every call; this takes it once per `idle_timeout`.
pub(crate) struct Watchdog {
    activity: Arc<Activity>,
    timer: Pin<Box<Sleep>>,
    idle_timeout: Duration,
    next_idle_check: Instant,
    /// Calls started at the last idle check, and whether none was open then.
    seen: (u32, bool),
    /// Until when the connection may go unauthenticated, while it has not.
    unauthenticated_until: Option<Instant>,
}

impl Watchdog {
    pub(crate) fn new(activity: Arc<Activity>, rules: Rules) -> Self {
        let now = Instant::now();
        let next_idle_check = now + rules.idle_timeout;
        let unauthenticated_until = rules
            .unauthenticated_timeout
            .filter(|_| !activity.is_authenticated())
            .map(|t| now + t);
        let first = unauthenticated_until.map_or(next_idle_check, |u| u.min(next_idle_check));
        Self {
            activity,
            timer: Box::pin(tokio::time::sleep_until(first)),
            idle_timeout: rules.idle_timeout,
            next_idle_check,
            // A new connection counts as idle since it was accepted.
            seen: (0, true),
            unauthenticated_until,
        }
    }

    /// Ready with the reason once the connection should be closed.
    pub(crate) fn poll_expired(&mut self, cx: &mut Context<'_>) -> Poll<io::Error> {
        while self.timer.as_mut().poll(cx).is_ready() {
            let now = self.timer.deadline();
            if let Some(until) = self.unauthenticated_until {
                if self.activity.is_authenticated() {
                    self.unauthenticated_until = None;
                } else if now >= until {
                    return Poll::Ready(io::Error::new(
                        io::ErrorKind::TimedOut,
                        "no call authenticated on the connection in time",
                    ));
                }
            }
            if now >= self.next_idle_check {
                let (started, open) = self.activity.calls();
                let idle = open == 0;
                if idle && self.seen == (started, true) {
                    return Poll::Ready(io::Error::new(
                        io::ErrorKind::TimedOut,
                        "the connection was idle",
                    ));
                }
                self.seen = (started, idle);
                self.next_idle_check = now + self.idle_timeout;
            }
            let next = match self.unauthenticated_until {
                Some(until) => until.min(self.next_idle_check),
                None => self.next_idle_check,
            };
            self.timer.as_mut().reset(next);
        }
        Poll::Pending
    }
}

/// Counts every call (TokenService, health, reflection) on its connection's [`Activity`]
/// for as long as it is open: a unary call until its reply is ready, a streaming one until
/// its reply stream ends.
#[derive(Debug, Clone)]
pub(crate) struct CountCalls<S>(pub S);

/// Methods whose reply is one message: their call is over once the reply is ready, so
/// their body needs no guard (wrapping it would cost an allocation per call).
fn is_unary(path: &str) -> bool {
    matches!(
        path,
        "/tokenvend.v1.TokenService/GetToken"
            | "/tokenvend.v1.TokenService/ListProfiles"
            | "/grpc.health.v1.Health/Check"
    )
}

impl<S> tonic::codegen::Service<http::Request<Body>> for CountCalls<S>
where
    S: tonic::codegen::Service<http::Request<Body>, Response = http::Response<Body>>,
{
    type Response = http::Response<Body>;
    type Error = S::Error;
    type Future = Counted<S::Future>;

    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), Self::Error>> {
        self.0.poll_ready(cx)
    }

    fn call(&mut self, request: http::Request<Body>) -> Self::Future {
        let guard = request
            .extensions()
            .get::<Peer>()
            .map(|peer| peer.activity.call());
        let streaming = !is_unary(request.uri().path());
        Counted {
            inner: self.0.call(request),
            guard,
            streaming,
        }
    }
}

pin_project_lite::pin_project! {
    /// A call's reply on its way; see [`CountCalls`].
    pub(crate) struct Counted<F> {
        #[pin]
        inner: F,
        guard: Option<CallGuard>,
        streaming: bool,
    }
}

impl<F, E> Future for Counted<F>
where
    F: Future<Output = Result<http::Response<Body>, E>>,
{
    type Output = F::Output;

    fn poll(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Self::Output> {
        let this = self.project();
        let response = std::task::ready!(this.inner.poll(cx));
        let guard = this.guard.take();
        Poll::Ready(match (response, guard) {
            (Ok(response), Some(guard)) if *this.streaming => Ok(response.map(|body| {
                Body::new(GuardedBody {
                    inner: body,
                    _guard: guard,
                })
            })),
            (response, _) => response,
        })
    }
}

pin_project_lite::pin_project! {
    /// A streaming reply, holding its call open until it is dropped.
    struct GuardedBody {
        #[pin]
        inner: Body,
        _guard: CallGuard,
    }
}

impl http_body::Body for GuardedBody {
    type Data = bytes::Bytes;
    type Error = tonic::Status;

    fn poll_frame(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<http_body::Frame<Self::Data>, Self::Error>>> {
        self.project().inner.poll_frame(cx)
    }

    fn is_end_stream(&self) -> bool {
        self.inner.is_end_stream()
    }

    fn size_hint(&self) -> http_body::SizeHint {
        self.inner.size_hint()
    }
}

#[cfg(test)]
mod tests {
    use std::future::poll_fn;

    use super::*;

    const IDLE: Duration = Duration::from_secs(60);

    async fn expires(watchdog: &mut Watchdog) -> io::Error {
        poll_fn(|cx| watchdog.poll_expired(cx)).await
    }

    #[tokio::test(start_paused = true)]
    async fn a_connection_without_calls_closes_after_the_idle_timeout() {
        let start = Instant::now();
        let mut watchdog = Watchdog::new(
            Activity::new(false),
            Rules {
                idle_timeout: IDLE,
                unauthenticated_timeout: None,
            },
        );
        expires(&mut watchdog).await;
        assert_eq!(start.elapsed(), IDLE);
    }

    #[tokio::test(start_paused = true)]
    async fn an_open_call_keeps_the_connection_and_its_end_starts_the_idle_time() {
        let activity = Activity::new(false);
        let mut watchdog = Watchdog::new(
            activity.clone(),
            Rules {
                idle_timeout: IDLE,
                unauthenticated_timeout: None,
            },
        );
        let call = activity.call();
        let kept = tokio::time::timeout(10 * IDLE, expires(&mut watchdog)).await;
        assert!(kept.is_err(), "an open call keeps the connection");
        let ended = Instant::now();
        drop(call);
        expires(&mut watchdog).await;
        let idle = ended.elapsed();
        assert!(idle >= IDLE && idle <= 2 * IDLE, "{idle:?}");
    }

    #[tokio::test(start_paused = true)]
    async fn an_unauthenticated_connection_closes_early_unless_a_call_authenticates() {
        let rules = Rules {
            idle_timeout: IDLE,
            unauthenticated_timeout: Some(Duration::from_secs(10)),
        };
        let start = Instant::now();
        let activity = Activity::new(false);
        let _call = activity.call();
        let mut watchdog = Watchdog::new(activity, rules);
        let error = expires(&mut watchdog).await;
        assert_eq!(start.elapsed(), Duration::from_secs(10));
        assert!(error.to_string().contains("authenticated"), "{error}");

        let activity = Activity::new(false);
        let _call = activity.call();
        let mut watchdog = Watchdog::new(activity.clone(), rules);
        activity.authenticated();
        let kept = tokio::time::timeout(10 * IDLE, expires(&mut watchdog)).await;
        assert!(
            kept.is_err(),
            "an authenticated connection with a call open is kept"
        );
    }
}
