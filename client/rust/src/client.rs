//! The client: its settings, the local copy of each profile's token, and the calls that
//! refresh them (one in flight per profile and purpose, shared by every caller waiting).

use std::{
    collections::HashMap,
    fmt,
    hash::{BuildHasher, RandomState},
    path::PathBuf,
    sync::{
        Arc, Mutex, PoisonError,
        atomic::{AtomicU64, Ordering},
    },
    time::{Duration, Instant},
};

use futures::{
    FutureExt as _,
    future::{BoxFuture, Shared, WeakShared},
};
use tokenvend::pb::{GetTokenRequest, WatchTokenRequest, token_service_client::TokenServiceClient};
use tokio_util::sync::{CancellationToken, DropGuard};
use tonic::{
    Status,
    service::interceptor::InterceptedService,
    transport::{Channel, ClientTlsConfig, Endpoint},
};

use crate::{
    Error, Token,
    error::{Chain, deadline_status, is_retryable},
    token_file::CallCredentials,
};

/// How long one call to tokenvend may take when the caller sets no deadline.
const DEFAULT_TIMEOUT: Duration = Duration::from_secs(10);
/// The most a local copy is refreshed ahead of its expiry, by default.
const DEFAULT_MAX_REFRESH_MARGIN: Duration = Duration::from_secs(60);
/// A copy inside its margin is asked about at most this often: when tokenvend could not
/// refresh it (or cannot be reached), asking on every call would only add load.
const REFRESH_INTERVAL: Duration = Duration::from_secs(1);

/// Settings for a [`TokenClient`].
#[derive(Debug, Clone)]
pub struct Builder {
    source: Source,
    tls: Option<ClientTlsConfig>,
    max_refresh_margin: Duration,
    timeout: Duration,
    token_file: Option<PathBuf>,
}

#[derive(Debug, Clone)]
enum Source {
    Target(String),
    Channel(Channel),
}

impl Builder {
    fn new(source: Source) -> Self {
        Self {
            source,
            tls: None,
            max_refresh_margin: DEFAULT_MAX_REFRESH_MARGIN,
            timeout: DEFAULT_TIMEOUT,
            token_file: None,
        }
    }

    /// Connects over TLS (or mutual TLS, with an identity in the config). An `https://`
    /// address without this trusts the system's roots; an address without a scheme is
    /// taken as `https://` when this is set.
    pub fn tls(mut self, tls: ClientTlsConfig) -> Self {
        self.tls = Some(tls);
        self
    }

    /// Sends the token in this file as `authorization: Bearer` on every call: a Kubernetes
    /// projected ServiceAccount token, which tokenvend verifies to know the caller. The
    /// file is read again when it changes (the kubelet rotates it) and at least every
    /// minute.
    pub fn service_account_token_file(mut self, path: impl Into<PathBuf>) -> Self {
        self.token_file = Some(path.into());
        self
    }

    /// The most a local copy is refreshed ahead of its expiry (default 60 s). A copy is
    /// used while it has more left than its margin: a tenth of its lifetime, at most this.
    pub fn max_refresh_margin(mut self, cap: Duration) -> Self {
        self.max_refresh_margin = cap;
        self
    }

    /// The former name of [`max_refresh_margin`](Self::max_refresh_margin).
    #[deprecated(
        note = "use `max_refresh_margin`: the margin is now a tenth of the lifetime, capped"
    )]
    pub fn refresh_margin(self, cap: Duration) -> Self {
        self.max_refresh_margin(cap)
    }

    /// How long one call to tokenvend may take, connecting included, when the caller
    /// gives no deadline of its own (default 10 s).
    pub fn timeout(mut self, timeout: Duration) -> Self {
        self.timeout = timeout;
        self
    }

    /// The client, connecting on first use: a service can start while tokenvend is down,
    /// and its first call reports why tokenvend could not be reached.
    pub fn build(self) -> Result<TokenClient, Error> {
        let channel = match &self.source {
            Source::Channel(channel) => channel.clone(),
            Source::Target(target) => {
                endpoint(target, self.tls.clone(), self.timeout)?.connect_lazy()
            }
        };
        Ok(self.client(channel))
    }

    /// The client, once a connection to tokenvend is up (within the timeout): for tools
    /// that should fail at once when it cannot be reached. Services should prefer
    /// [`build`](Self::build).
    pub async fn connect(self) -> Result<TokenClient, Error> {
        let channel = match &self.source {
            Source::Channel(channel) => channel.clone(),
            Source::Target(target) => {
                let endpoint = endpoint(target, self.tls.clone(), self.timeout)?;
                tokio::time::timeout(self.timeout, endpoint.connect())
                    .await
                    .map_err(|_| Error::deadline(self.timeout))?
                    .map_err(|source| Error::Connect {
                        target: endpoint.uri().to_string(),
                        source,
                    })?
            }
        };
        Ok(self.client(channel))
    }

    fn client(self, channel: Channel) -> TokenClient {
        let credentials = CallCredentials::new(self.token_file);
        TokenClient {
            inner: Arc::new(Inner {
                rpc: TokenServiceClient::with_interceptor(channel, credentials),
                timeout: self.timeout,
                max_refresh_margin: self.max_refresh_margin,
                fingerprints: RandomState::new(),
                profiles: Mutex::default(),
                flight_ids: AtomicU64::new(0),
            }),
        }
    }
}

/// The endpoint for an address, with `http://` (or `https://` when TLS is configured)
/// assumed when it has no scheme.
fn endpoint(
    target: &str,
    tls: Option<ClientTlsConfig>,
    timeout: Duration,
) -> Result<Endpoint, Error> {
    let invalid = |reason: String| Error::InvalidAddress {
        target: target.to_owned(),
        reason,
    };
    let full = if target.contains("://") {
        target.to_owned()
    } else if tls.is_some() {
        format!("https://{target}")
    } else {
        format!("http://{target}")
    };
    let uri: http::Uri = full.parse().map_err(|e| invalid(format!("{e}")))?;
    if uri.host().is_none_or(str::is_empty) {
        return Err(invalid("it names no host".into()));
    }
    // `http::Uri` takes `host:port` with a port that is no number as a host alone.
    let authority = uri.authority().map_or("", |a| a.as_str());
    let after_host = authority.rsplit(']').next().unwrap_or_default();
    if after_host.contains(':') && uri.port().is_none() {
        return Err(invalid("the port is not a number from 0 to 65535".into()));
    }
    let https = match uri.scheme_str() {
        Some("http") => false,
        Some("https") => true,
        other => {
            return Err(invalid(format!(
                "the scheme must be http or https, not {}",
                other.unwrap_or_default()
            )));
        }
    };
    if !https && tls.is_some() {
        return Err(invalid(
            "TLS is configured but the address says http://".into(),
        ));
    }
    let mut endpoint = Endpoint::from(uri)
        .connect_timeout(timeout)
        // A WatchToken stream may be quiet for as long as a token lives; pings find a
        // connection that died without a word.
        .http2_keep_alive_interval(Duration::from_secs(30))
        .keep_alive_timeout(timeout);
    if https {
        let tls = tls.unwrap_or_else(|| ClientTlsConfig::new().with_enabled_roots());
        endpoint = endpoint
            .tls_config(tls)
            .map_err(|e| invalid(Chain(&e).to_string()))?;
    }
    Ok(endpoint)
}

/// Per-call settings for [`TokenClient::get_token_with`] and [`TokenClient::reject_with`].
#[derive(Debug, Clone, Copy, Default)]
pub struct GetOptions {
    min_ttl: Option<Duration>,
    timeout: Option<Duration>,
}

impl GetOptions {
    /// No minimum lifetime and the client's timeout.
    pub fn new() -> Self {
        Self::default()
    }

    /// The token must stay valid at least this long; tokenvend is asked for one that
    /// does when the local copy does not.
    pub fn min_ttl(mut self, min_ttl: Duration) -> Self {
        self.min_ttl = Some(min_ttl);
        self
    }

    /// The call gives up (with `DeadlineExceeded`) after this long instead of the
    /// client's timeout. A call to tokenvend itself never runs longer than the client's
    /// timeout ([`Builder::timeout`]): callers waiting for the same answer share it.
    pub fn timeout(mut self, timeout: Duration) -> Self {
        self.timeout = Some(timeout);
        self
    }
}

/// A client of tokenvend with a local copy of each profile's token. Cheap to clone;
/// clones share the copies.
#[derive(Clone)]
pub struct TokenClient {
    inner: Arc<Inner>,
}

type Rpc = TokenServiceClient<InterceptedService<Channel, CallCredentials>>;
type Flight = BoxFuture<'static, Result<Arc<Token>, Status>>;

struct Inner {
    rpc: Rpc,
    timeout: Duration,
    max_refresh_margin: Duration,
    /// Rejected tokens are remembered by a keyed hash, not kept as text.
    fingerprints: RandomState,
    // Held only to look at or change an entry, never across an await.
    profiles: Mutex<HashMap<String, Entry>>,
    flight_ids: AtomicU64,
}

#[derive(Default)]
struct Entry {
    copy: Option<Copy>,
    /// The last token reported as rejected: an answer that started before the report
    /// may still carry it, and must not become the copy again.
    rejected: Option<u64>,
    /// Before this, a copy inside its margin is served without asking tokenvend.
    next_refresh: Option<Instant>,
    /// The calls in flight. Only the callers waiting hold them: when all have given up,
    /// the call is dropped, which cancels it.
    flights: HashMap<FlightKey, (u64, WeakShared<Flight>)>,
}

struct Copy {
    token: Arc<Token>,
    fingerprint: u64,
    margin: Duration,
}

/// What a call asks for: callers asking the same share one call.
#[derive(Clone, Copy, PartialEq, Eq, Hash)]
struct FlightKey {
    rejected: Option<u64>,
    min_ttl: Duration,
}

enum Plan {
    Serve(Arc<Token>),
    Wait {
        flight: Shared<Flight>,
        /// A still-valid copy to serve if tokenvend cannot be reached.
        fallback: Option<Arc<Token>>,
    },
}

/// How far ahead of its expiry a copy is refreshed: a tenth of its lifetime, so that the
/// next call reaches tokenvend after it replaced the token (at about 80 %), capped.
pub(crate) fn refresh_margin(lifetime: Duration, cap: Duration) -> Duration {
    (lifetime / 10).min(cap)
}

impl fmt::Debug for TokenClient {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("TokenClient")
            .field("timeout", &self.inner.timeout)
            .field("max_refresh_margin", &self.inner.max_refresh_margin)
            .finish_non_exhaustive()
    }
}

impl TokenClient {
    /// Settings for a client of the server at `target`: `http://tokenvend:50051`,
    /// `https://tokenvend:50051`, or `tokenvend:50051` (plaintext unless TLS is set).
    pub fn builder(target: impl Into<String>) -> Builder {
        Builder::new(Source::Target(target.into()))
    }

    /// Settings for a client over a channel built elsewhere (its TLS settings are the
    /// channel's: [`Builder::tls`] is ignored).
    pub fn builder_with_channel(channel: Channel) -> Builder {
        Builder::new(Source::Channel(channel))
    }

    /// A client with default settings that connects on first use.
    pub fn new(target: impl Into<String>) -> Result<Self, Error> {
        Self::builder(target).build()
    }

    /// A client with default settings, once a connection is up. See [`Builder::connect`].
    pub async fn connect(target: impl Into<String>) -> Result<Self, Error> {
        Self::builder(target).connect().await
    }

    /// A client over an existing channel with default settings, sending the
    /// ServiceAccount token in `service_account_token_file` when given.
    pub fn from_channel(channel: Channel, service_account_token_file: Option<PathBuf>) -> Self {
        let mut builder = Self::builder_with_channel(channel.clone());
        builder.token_file = service_account_token_file;
        builder.client(channel)
    }

    /// A token for a profile: the local copy while it has more left than its refresh
    /// margin, else one from tokenvend, within the client's timeout. While tokenvend
    /// cannot be reached, a copy that has not expired is served.
    pub async fn get_token(&self, profile: &str) -> Result<Arc<Token>, Error> {
        self.get_token_with(profile, GetOptions::new()).await
    }

    /// [`get_token`](Self::get_token) with a minimum lifetime or a deadline of its own.
    pub async fn get_token_with(
        &self,
        profile: &str,
        options: GetOptions,
    ) -> Result<Arc<Token>, Error> {
        let key = FlightKey {
            rejected: None,
            min_ttl: options.min_ttl.unwrap_or_default(),
        };
        match self.plan(profile, key, String::new()) {
            Plan::Serve(token) => Ok(token),
            Plan::Wait { flight, fallback } => {
                let limit = options.timeout.unwrap_or(self.inner.timeout);
                match wait(flight, limit).await {
                    Err(status) if is_retryable(status.code()) => fallback
                        .filter(|copy| copy.remaining() > key.min_ttl)
                        .inspect(|_| {
                            tracing::debug!(profile, code = ?status.code(), "tokenvend unreachable; serving the local copy");
                        })
                        .ok_or(Error::Status(status)),
                    result => Ok(result?),
                }
            }
        }
    }

    /// Reports that the resource API rejected `token` (HTTP 401) and returns its
    /// replacement. Concurrent reports of one token share one call; a report of a token
    /// that is no longer the local copy makes none and returns the copy.
    pub async fn reject(&self, profile: &str, token: &str) -> Result<Arc<Token>, Error> {
        self.reject_with(profile, token, GetOptions::new()).await
    }

    /// [`reject`](Self::reject) with a deadline of its own (`min_ttl` is not used).
    pub async fn reject_with(
        &self,
        profile: &str,
        token: &str,
        options: GetOptions,
    ) -> Result<Arc<Token>, Error> {
        let key = FlightKey {
            rejected: Some(self.fingerprint(token)),
            min_ttl: Duration::ZERO,
        };
        match self.plan(profile, key, token.to_owned()) {
            Plan::Serve(token) => Ok(token),
            Plan::Wait { flight, .. } => {
                let limit = options.timeout.unwrap_or(self.inner.timeout);
                Ok(wait(flight, limit).await?)
            }
        }
    }

    /// The local copy of a profile's token, if it has not expired.
    pub fn cached(&self, profile: &str) -> Option<Arc<Token>> {
        self.profiles()
            .get(profile)
            .and_then(|entry| entry.copy.as_ref())
            .filter(|copy| !copy.token.remaining().is_zero())
            .map(|copy| copy.token.clone())
    }

    /// Keeps the local copy of a profile's token current with a `WatchToken` stream, so
    /// that [`get_token`](Self::get_token) never waits. The stream is reopened after a
    /// failure, with backoff; it ends when the returned guard is dropped.
    pub fn watch(&self, profile: &str) -> WatchGuard {
        let stop = CancellationToken::new();
        let client = self.clone();
        let profile = profile.to_owned();
        let cancelled = stop.clone();
        tokio::spawn(async move {
            tokio::select! {
                () = cancelled.cancelled() => {}
                () = client.follow(&profile) => {}
            }
        });
        WatchGuard {
            _stop: stop.drop_guard(),
        }
    }

    fn profiles(&self) -> std::sync::MutexGuard<'_, HashMap<String, Entry>> {
        self.inner
            .profiles
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
    }

    fn fingerprint(&self, token: &str) -> u64 {
        self.inner.fingerprints.hash_one(token)
    }

    /// Serve the copy, or join or start the call that answers `key`.
    fn plan(&self, profile: &str, key: FlightKey, rejected_token: String) -> Plan {
        let now = Instant::now();
        let mut profiles = self.profiles();
        let entry = profiles.entry(profile.to_owned()).or_default();
        let valid = entry
            .copy
            .as_ref()
            .filter(|copy| copy.token.remaining() > key.min_ttl);
        let in_flight = entry
            .flights
            .get(&key)
            .and_then(|(_, flight)| flight.upgrade())
            .or_else(|| {
                // A report of a rejected token brings the next token: a get without a
                // usable copy waits for that rather than ask for the rejected one.
                let plain_get = key.rejected.is_none() && key.min_ttl.is_zero();
                (plain_get && valid.is_none())
                    .then(|| {
                        entry
                            .flights
                            .iter()
                            .filter(|(k, _)| k.rejected.is_some())
                            .find_map(|(_, (_, flight))| flight.upgrade())
                    })
                    .flatten()
            });
        match (key.rejected, valid) {
            (None, Some(copy)) => {
                if copy.token.remaining() > copy.margin + key.min_ttl
                    // Inside its margin: one caller asks, at most once a second, and
                    // the others go on with the copy, which is still valid.
                    || in_flight.is_some()
                    || entry.next_refresh.is_some_and(|next| now < next)
                {
                    return Plan::Serve(copy.token.clone());
                }
            }
            (Some(rejected), Some(copy)) if copy.fingerprint != rejected => {
                return Plan::Serve(copy.token.clone());
            }
            (Some(rejected), _) => {
                // Nobody else gets the rejected token from here on.
                entry.rejected = Some(rejected);
                if entry
                    .copy
                    .as_ref()
                    .is_some_and(|c| c.fingerprint == rejected)
                {
                    entry.copy = None;
                }
            }
            (None, None) => {}
        }
        let fallback = entry.copy.as_ref().map(|copy| copy.token.clone());
        let flight = match in_flight {
            Some(flight) => flight,
            None => {
                entry.next_refresh = Some(now + REFRESH_INTERVAL);
                self.start(entry, profile, key, rejected_token)
            }
        };
        Plan::Wait { flight, fallback }
    }

    fn start(
        &self,
        entry: &mut Entry,
        profile: &str,
        key: FlightKey,
        rejected_token: String,
    ) -> Shared<Flight> {
        let id = self.inner.flight_ids.fetch_add(1, Ordering::Relaxed);
        let client = self.clone();
        let profile = profile.to_owned();
        let flight: Flight = Box::pin(async move {
            let result = client
                .call_get_token(&profile, key.min_ttl, rejected_token)
                .await;
            let mut profiles = client.profiles();
            let entry = profiles.entry(profile).or_default();
            if entry.flights.get(&key).is_some_and(|(i, _)| *i == id) {
                entry.flights.remove(&key);
            }
            entry.next_refresh = Some(Instant::now() + REFRESH_INTERVAL);
            if let Ok(token) = &result {
                client.keep(entry, token.clone(), key.rejected);
            }
            result
        });
        let flight = flight.shared();
        // Calls whose callers all gave up are gone; so are their entries.
        entry
            .flights
            .retain(|_, (_, weak)| weak.upgrade().is_some());
        if let Some(weak) = flight.downgrade() {
            entry.flights.insert(key, (id, weak));
        }
        flight
    }

    /// Makes `token` the local copy, unless it is a late answer carrying a token that
    /// was reported as rejected since.
    fn keep(&self, entry: &mut Entry, token: Arc<Token>, answers_reject: Option<u64>) {
        let fingerprint = self.fingerprint(&token.access_token);
        match answers_reject {
            // tokenvend kept the reported token (it replaced it moments ago, or the
            // provider hands out the same one): it is the current one after all.
            Some(rejected) if rejected == fingerprint => entry.rejected = None,
            Some(_) => {}
            None if entry.rejected == Some(fingerprint) => return,
            None => {}
        }
        let margin = refresh_margin(token.remaining(), self.inner.max_refresh_margin);
        entry.copy = Some(Copy {
            token,
            fingerprint,
            margin,
        });
    }

    async fn call_get_token(
        &self,
        profile: &str,
        min_ttl: Duration,
        rejected_token: String,
    ) -> Result<Arc<Token>, Status> {
        let timeout = self.inner.timeout;
        let request = tonic::Request::new(GetTokenRequest {
            profile: profile.to_owned(),
            // Only a caller's own minimum: one derived from the margin would make
            // tokenvend fetch a new token on every call near the margin.
            min_ttl: (!min_ttl.is_zero())
                .then(|| prost_types::Duration::try_from(min_ttl).ok())
                .flatten(),
            rejected_token,
            ..Default::default()
        });
        // No `grpc-timeout` header: tonic's channel would enforce it too, and report
        // it as `Cancelled`. Dropping the call on time resets the stream, which tells
        // tokenvend the answer is no longer wanted.
        let mut rpc = self.inner.rpc.clone();
        match tokio::time::timeout(timeout, rpc.get_token(request)).await {
            Ok(response) => Ok(Arc::new(Token::from_pb(response?.into_inner()))),
            Err(_) => Err(deadline_status(timeout)),
        }
    }

    async fn follow(&self, profile: &str) {
        const FIRST: Duration = Duration::from_millis(200);
        let mut backoff = FIRST;
        loop {
            let request = WatchTokenRequest {
                profile: profile.to_owned(),
                ..Default::default()
            };
            let opened = tokio::time::timeout(
                self.inner.timeout,
                self.inner.rpc.clone().watch_token(request),
            )
            .await
            .unwrap_or_else(|_| Err(deadline_status(self.inner.timeout)));
            match opened {
                Ok(stream) => {
                    let mut stream = stream.into_inner();
                    loop {
                        match stream.message().await {
                            Ok(Some(token)) => {
                                let token = Arc::new(Token::from_pb(token));
                                let mut profiles = self.profiles();
                                let entry = profiles.entry(profile.to_owned()).or_default();
                                self.keep(entry, token, None);
                                backoff = FIRST;
                            }
                            Ok(None) => break,
                            Err(status) => {
                                tracing::debug!(profile, code = ?status.code(), "WatchToken ended; reopening");
                                break;
                            }
                        }
                    }
                }
                Err(status) if is_retryable(status.code()) => {
                    tracing::debug!(profile, code = ?status.code(), "WatchToken failed; retrying");
                }
                Err(status) => {
                    tracing::warn!(profile, code = ?status.code(), message = status.message(), "WatchToken refused; retrying");
                }
            }
            // Up to half again, so that many clients do not come back at the same moment.
            let jitter = self.inner.fingerprints.hash_one(Instant::now()) % 500;
            tokio::time::sleep(backoff + backoff * u32::try_from(jitter).unwrap_or(0) / 1000).await;
            backoff = (backoff * 2).min(Duration::from_secs(10));
        }
    }
}

async fn wait(flight: Shared<Flight>, limit: Duration) -> Result<Arc<Token>, Status> {
    tokio::time::timeout(limit, flight)
        .await
        .unwrap_or_else(|_| Err(deadline_status(limit)))
}

/// Stops a [`TokenClient::watch`] when dropped.
#[must_use = "the watch stops when the guard is dropped"]
pub struct WatchGuard {
    _stop: DropGuard,
}

impl fmt::Debug for WatchGuard {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("WatchGuard")
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_margin_is_a_tenth_of_the_lifetime_capped() {
        let cap = Duration::from_secs(60);
        assert_eq!(
            refresh_margin(Duration::from_secs(75), cap),
            Duration::from_millis(7500)
        );
        assert_eq!(refresh_margin(Duration::from_secs(3600), cap), cap);
        assert_eq!(
            refresh_margin(Duration::from_secs(20), cap),
            Duration::from_secs(2)
        );
    }

    #[test]
    fn addresses_without_a_scheme_get_one() {
        let timeout = Duration::from_secs(1);
        let plain = endpoint("localhost:50051", None, timeout).unwrap();
        assert_eq!(plain.uri().to_string(), "http://localhost:50051/");
        let tls = endpoint("localhost:50051", Some(ClientTlsConfig::new()), timeout).unwrap();
        assert_eq!(tls.uri().scheme_str(), Some("https"));
    }

    #[test]
    fn unusable_addresses_say_why() {
        let timeout = Duration::from_secs(1);
        let reason = |target: &str, tls: Option<ClientTlsConfig>| {
            endpoint(target, tls, timeout).unwrap_err().to_string()
        };
        assert!(reason("ftp://host:1", None).contains("must be http or https, not ftp"));
        assert!(reason("http://", None).contains("invalid tokenvend address"));
        assert!(
            reason("http://host:1", Some(ClientTlsConfig::new()))
                .contains("TLS is configured but the address says http://")
        );
        assert!(reason("host:port", None).contains("invalid tokenvend address \"host:port\""));
    }
}
