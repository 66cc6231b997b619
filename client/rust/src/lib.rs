//! A Rust client for tokenvend, the gRPC token vending service.
//!
//! Ask for a token by profile name; the client keeps a local copy until it comes close to
//! expiring, so most calls make no round trip at all.
//!
//! ```no_run
//! # async fn example() -> Result<(), tokenvend_client::Error> {
//! use tokenvend_client::TokenClient;
//!
//! let tokens = TokenClient::connect("http://127.0.0.1:50051").await?;
//! let token = tokens.get_token("jama").await?;
//! let request = http::Request::get("https://example.jamacloud.com/rest/v1/projects");
//! let request = tokenvend_client::apply_headers(&token, request).body(())?;
//! # let _ = request;
//! # Ok(())
//! # }
//! ```
//!
//! With reqwest, [`TokenClient::send`] sets the headers and, when the API answers 401,
//! reports the token as rejected and retries once with a fresh one:
//!
//! ```no_run
//! # async fn example() -> Result<(), tokenvend_client::Error> {
//! # let tokens = tokenvend_client::TokenClient::connect("http://127.0.0.1:50051").await?;
//! let http = reqwest::Client::new();
//! let response = tokens
//!     .send("jama", http.get("https://example.jamacloud.com/rest/v1/projects"))
//!     .await?;
//! # let _ = response;
//! # Ok(())
//! # }
//! ```

mod token_file;

use std::{
    collections::HashMap,
    fmt,
    path::PathBuf,
    sync::{Arc, Mutex, PoisonError},
    time::{Duration, SystemTime},
};

use tokenvend::pb::{GetTokenRequest, WatchTokenRequest, token_service_client::TokenServiceClient};
use tokio_util::sync::{CancellationToken, DropGuard};
use tonic::{
    service::interceptor::InterceptedService,
    transport::{Channel, ClientTlsConfig, Endpoint},
};

use token_file::CallCredentials;

/// A token as tokenvend vends it.
#[derive(Clone, PartialEq)]
pub struct Token {
    /// The access token.
    pub access_token: String,
    /// `Bearer`, or the provider's type.
    pub token_type: String,
    /// When the token expires.
    pub expires_at: SystemTime,
    /// The granted scopes.
    pub scopes: Vec<String>,
    /// The headers to put on the call to the resource API (`authorization` and any
    /// companion headers), names in lower case.
    pub headers: HashMap<String, String>,
    /// The profile.
    pub profile: String,
}

impl fmt::Debug for Token {
    // Tokens and header values (which hold the token and API keys) are never printed.
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Token")
            .field("profile", &self.profile)
            .field("token_type", &self.token_type)
            .field("expires_at", &self.expires_at)
            .field("scopes", &self.scopes)
            .field("headers", &self.headers.keys().collect::<Vec<_>>())
            .finish_non_exhaustive()
    }
}

impl Token {
    fn from_pb(token: tokenvend::pb::Token) -> Self {
        let expires_at = token
            .expires_at
            .and_then(|t| SystemTime::try_from(t).ok())
            .unwrap_or(SystemTime::UNIX_EPOCH);
        Self {
            access_token: token.access_token,
            token_type: token.token_type,
            expires_at,
            scopes: token.scopes,
            headers: token.headers,
            profile: token.profile,
        }
    }

    /// How long the token stays valid from now.
    pub fn remaining(&self) -> Duration {
        self.expires_at
            .duration_since(SystemTime::now())
            .unwrap_or_default()
    }
}

/// Why a call failed.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// The server address is not a valid URI.
    #[error("invalid server address: {0}")]
    InvalidAddress(String),
    /// The connection could not be set up.
    #[error("cannot connect to tokenvend: {0}")]
    Connect(#[from] tonic::transport::Error),
    /// tokenvend answered with an error status; [`tonic::Status::code`] says which.
    #[error("tokenvend: {}: {}", .0.code(), .0.message())]
    Status(#[from] tonic::Status),
    /// A header from tokenvend could not be put on an HTTP request.
    #[error("invalid header from tokenvend: {0}")]
    Header(#[from] http::Error),
    /// The HTTP request to the resource API failed.
    #[cfg(feature = "reqwest")]
    #[error("request failed: {0}")]
    Http(#[from] reqwest::Error),
}

impl Error {
    /// The gRPC status code, when tokenvend answered with an error.
    pub fn code(&self) -> Option<tonic::Code> {
        match self {
            Self::Status(status) => Some(status.code()),
            _ => None,
        }
    }
}

/// Settings for a [`TokenClient`].
#[derive(Debug, Clone)]
pub struct Builder {
    target: String,
    tls: Option<ClientTlsConfig>,
    refresh_margin: Duration,
    token_file: Option<PathBuf>,
}

impl Builder {
    /// Connects over TLS (or mutual TLS, with an identity in the config).
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

    /// A local copy is used while it has more than this left (default 60 s).
    pub fn refresh_margin(mut self, margin: Duration) -> Self {
        self.refresh_margin = margin;
        self
    }

    /// Connects.
    pub async fn connect(self) -> Result<TokenClient, Error> {
        let mut endpoint = Endpoint::from_shared(self.target.clone())
            .map_err(|_| Error::InvalidAddress(self.target.clone()))?;
        if let Some(tls) = self.tls {
            endpoint = endpoint.tls_config(tls)?;
        }
        let channel = endpoint.connect().await?;
        let credentials = CallCredentials::new(self.token_file);
        Ok(TokenClient {
            rpc: TokenServiceClient::with_interceptor(channel, credentials),
            shared: Arc::default(),
            refresh_margin: self.refresh_margin,
        })
    }
}

/// A client of tokenvend with a local token cache. Cheap to clone; clones share the cache.
#[derive(Clone)]
pub struct TokenClient {
    rpc: TokenServiceClient<InterceptedService<Channel, CallCredentials>>,
    shared: Arc<Shared>,
    refresh_margin: Duration,
}

#[derive(Default)]
struct Shared {
    // Held only to read or replace an entry, never across an await.
    tokens: Mutex<HashMap<String, Arc<Token>>>,
    // One in-flight GetToken per profile: callers queue here and then find the token cached.
    fetches: Mutex<HashMap<String, Arc<tokio::sync::Mutex<()>>>>,
}

impl fmt::Debug for TokenClient {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("TokenClient")
            .field("refresh_margin", &self.refresh_margin)
            .finish_non_exhaustive()
    }
}

impl TokenClient {
    /// Settings for a client of the server at `target`, such as `http://tokenvend:50051`.
    pub fn builder(target: impl Into<String>) -> Builder {
        Builder {
            target: target.into(),
            tls: None,
            refresh_margin: Duration::from_secs(60),
            token_file: None,
        }
    }

    /// Connects over plaintext with default settings.
    pub async fn connect(target: impl Into<String>) -> Result<Self, Error> {
        Self::builder(target).connect().await
    }

    /// A client over an existing channel.
    pub fn from_channel(channel: Channel, refresh_margin: Duration) -> Self {
        Self {
            rpc: TokenServiceClient::with_interceptor(channel, CallCredentials::new(None)),
            shared: Arc::default(),
            refresh_margin,
        }
    }

    /// A token for a profile: the local copy while it has more than the refresh margin
    /// left, else one from tokenvend.
    pub async fn get_token(&self, profile: &str) -> Result<Arc<Token>, Error> {
        self.get_token_with(profile, Duration::ZERO).await
    }

    /// A token that stays valid at least `min_ttl` (beyond the refresh margin locally).
    pub async fn get_token_with(
        &self,
        profile: &str,
        min_ttl: Duration,
    ) -> Result<Arc<Token>, Error> {
        let fresh = |token: &Token| token.remaining() > self.refresh_margin + min_ttl;
        if let Some(token) = self.cached(profile).filter(|t| fresh(t)) {
            return Ok(token);
        }
        let gate = self.fetch_gate(profile);
        let _turn = gate.lock().await;
        if let Some(token) = self.cached(profile).filter(|t| fresh(t)) {
            return Ok(token);
        }
        self.fetch(profile, min_ttl, String::new()).await
    }

    /// Reports that the resource API rejected `token` (HTTP 401) and returns its
    /// replacement. Reports of an already replaced token cost no new token.
    pub async fn reject(&self, profile: &str, token: &str) -> Result<Arc<Token>, Error> {
        let gate = self.fetch_gate(profile);
        let _turn = gate.lock().await;
        if let Some(current) = self.cached(profile)
            && current.access_token != token
            && !current.remaining().is_zero()
        {
            return Ok(current);
        }
        self.fetch(profile, Duration::ZERO, token.to_owned()).await
    }

    /// Keeps the local copy of a profile's token current with a `WatchToken` stream, so
    /// that [`get_token`](Self::get_token) never waits. The stream is reopened after a
    /// failure; it ends when the returned guard is dropped.
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

    async fn follow(&self, profile: &str) {
        let mut backoff = Duration::from_millis(200);
        loop {
            let request = WatchTokenRequest {
                profile: profile.to_owned(),
            };
            match self.rpc.clone().watch_token(request).await {
                Ok(stream) => {
                    let mut stream = stream.into_inner();
                    while let Ok(Some(token)) = stream.message().await {
                        self.store(profile, Token::from_pb(token));
                        backoff = Duration::from_millis(200);
                    }
                }
                Err(status) => {
                    tracing::debug!(profile, code = ?status.code(), "WatchToken failed; retrying");
                }
            }
            tokio::time::sleep(backoff).await;
            backoff = (backoff * 2).min(Duration::from_secs(10));
        }
    }

    async fn fetch(
        &self,
        profile: &str,
        min_ttl: Duration,
        rejected_token: String,
    ) -> Result<Arc<Token>, Error> {
        let request = GetTokenRequest {
            profile: profile.to_owned(),
            min_ttl: (!min_ttl.is_zero())
                .then(|| prost_types::Duration::try_from(min_ttl).ok())
                .flatten(),
            rejected_token,
            ..Default::default()
        };
        let token = self.rpc.clone().get_token(request).await?.into_inner();
        Ok(self.store(profile, Token::from_pb(token)))
    }

    fn store(&self, profile: &str, token: Token) -> Arc<Token> {
        let token = Arc::new(token);
        self.shared
            .tokens
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .insert(profile.to_owned(), token.clone());
        token
    }

    /// The local copy of a profile's token, if it has not expired.
    pub fn cached(&self, profile: &str) -> Option<Arc<Token>> {
        self.shared
            .tokens
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .get(profile)
            .filter(|t| !t.remaining().is_zero())
            .cloned()
    }

    fn fetch_gate(&self, profile: &str) -> Arc<tokio::sync::Mutex<()>> {
        self.shared
            .fetches
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .entry(profile.to_owned())
            .or_default()
            .clone()
    }

    /// Sends a reqwest request with the profile's headers. On a 401 it reports the token
    /// as rejected and sends the request once more with the new token; a request whose
    /// body cannot be replayed (a stream) is sent once.
    #[cfg(feature = "reqwest")]
    pub async fn send(
        &self,
        profile: &str,
        request: reqwest::RequestBuilder,
    ) -> Result<reqwest::Response, Error> {
        let token = self.get_token(profile).await?;
        let retry = request.try_clone();
        let response = with_headers(&token, request).send().await?;
        if response.status() != reqwest::StatusCode::UNAUTHORIZED {
            return Ok(response);
        }
        let Some(retry) = retry else {
            return Ok(response);
        };
        let token = self.reject(profile, &token.access_token).await?;
        Ok(with_headers(&token, retry).send().await?)
    }
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

/// Puts a token's headers on an `http` request.
pub fn apply_headers(token: &Token, mut request: http::request::Builder) -> http::request::Builder {
    for (name, value) in &token.headers {
        request = request.header(name, value);
    }
    request
}

/// Puts a token's headers on a reqwest request.
#[cfg(feature = "reqwest")]
pub fn with_headers(
    token: &Token,
    mut request: reqwest::RequestBuilder,
) -> reqwest::RequestBuilder {
    for (name, value) in &token.headers {
        request = match http::HeaderValue::try_from(value.as_str()) {
            Ok(mut value) => {
                // Keeps the token out of `Debug` prints of the request.
                value.set_sensitive(true);
                request.header(name.as_str(), value)
            }
            // reqwest keeps the error and reports it from `send`.
            Err(_) => request.header(name.as_str(), value.as_str()),
        };
    }
    request
}
