//! A tower layer for services of `http::Request` (hyper-util's client, axum or tonic
//! based HTTP clients): the token's headers on every request, and one retry after a 401.

use std::{
    fmt,
    future::Future,
    pin::Pin,
    sync::Arc,
    task::{Context, Poll},
    time::Duration,
};

use http::{HeaderMap, StatusCode};

use crate::{
    TokenClient,
    deadline::{Deadline, options},
};

/// The error type of [`TokenService`]: the inner service's error, or an
/// [`Error`](crate::Error) of tokenvend (downcast to it for the code and
/// [`is_retryable`](crate::Error::is_retryable)). Its `Display` names the cause.
pub type BoxError = Box<dyn std::error::Error + Send + Sync>;

/// Makes a copy of a request body for the retry after a 401, when it can.
pub trait ReplayBody<B> {
    /// A copy of `body`, or `None` when it cannot be sent twice.
    fn replay(&self, body: &B) -> Option<B>;
}

/// Replays bodies that are `Clone` (`String`, `Bytes`, `Full<Bytes>`, `()`...); the
/// default of [`TokenLayer::new`].
#[derive(Debug, Clone, Copy, Default)]
pub struct CloneBody;

impl<B: Clone> ReplayBody<B> for CloneBody {
    fn replay(&self, body: &B) -> Option<B> {
        Some(body.clone())
    }
}

/// Replays no body: a 401 is reported (so the next request has the new token) and
/// returned to the caller. For streamed bodies.
#[derive(Debug, Clone, Copy, Default)]
pub struct NoRetry;

impl<B> ReplayBody<B> for NoRetry {
    fn replay(&self, _: &B) -> Option<B> {
        None
    }
}

/// Replays bodies with a function of the caller's.
#[derive(Clone, Copy)]
pub struct ReplayWith<F>(pub F);

impl<B, F: Fn(&B) -> Option<B>> ReplayBody<B> for ReplayWith<F> {
    fn replay(&self, body: &B) -> Option<B> {
        (self.0)(body)
    }
}

impl<F> fmt::Debug for ReplayWith<F> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("ReplayWith")
    }
}

/// A [`tower_layer::Layer`] that puts a profile's token on every request and, on a 401,
/// reports it and sends the request once more with the replacement.
///
/// The token calls are bounded by the request's `grpc-timeout` header when it has one
/// (tonic sets it from a request's timeout), else by the client's timeout; an outer
/// timeout layer that drops the call cancels them.
///
/// ```no_run
/// # fn example<S>(http: S) -> Result<(), tokenvend_client::Error>
/// # where S: tower_service::Service<http::Request<String>, Response = http::Response<()>> {
/// use tokenvend_client::{TokenClient, TokenLayer};
/// use tower_layer::Layer as _;
///
/// let tokens = TokenClient::new("http://tokenvend:50051")?;
/// let http = TokenLayer::new(tokens, "jama").layer(http);
/// # let _ = http;
/// # Ok(())
/// # }
/// ```
#[derive(Clone)]
pub struct TokenLayer<R = CloneBody> {
    client: TokenClient,
    profile: Arc<str>,
    replay: R,
}

impl TokenLayer {
    /// Puts tokens of `profile` from `client` on every request; bodies must be `Clone`
    /// (see [`without_retry`](Self::without_retry) and [`retry_with`](Self::retry_with)
    /// for others).
    pub fn new(client: TokenClient, profile: impl Into<String>) -> Self {
        Self {
            client,
            profile: profile.into().into(),
            replay: CloneBody,
        }
    }
}

impl<R> TokenLayer<R> {
    /// Never sends a request twice: for bodies that cannot be copied.
    pub fn without_retry(self) -> TokenLayer<NoRetry> {
        self.replay_by(NoRetry)
    }

    /// Copies bodies for the retry with `replay`, which returns `None` for one that
    /// cannot be sent twice.
    pub fn retry_with<F>(self, replay: F) -> TokenLayer<ReplayWith<F>> {
        self.replay_by(ReplayWith(replay))
    }

    fn replay_by<N>(self, replay: N) -> TokenLayer<N> {
        TokenLayer {
            client: self.client,
            profile: self.profile,
            replay,
        }
    }
}

impl<R> fmt::Debug for TokenLayer<R> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("TokenLayer")
            .field("profile", &self.profile)
            .finish_non_exhaustive()
    }
}

impl<S, R: Clone> tower_layer::Layer<S> for TokenLayer<R> {
    type Service = TokenService<S, R>;

    fn layer(&self, inner: S) -> Self::Service {
        TokenService {
            inner,
            client: self.client.clone(),
            profile: self.profile.clone(),
            replay: self.replay.clone(),
        }
    }
}

/// The service [`TokenLayer`] makes.
#[derive(Clone)]
pub struct TokenService<S, R = CloneBody> {
    inner: S,
    client: TokenClient,
    profile: Arc<str>,
    replay: R,
}

impl<S, R> fmt::Debug for TokenService<S, R> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("TokenService")
            .field("profile", &self.profile)
            .finish_non_exhaustive()
    }
}

impl<S, R, B, RB> tower_service::Service<http::Request<B>> for TokenService<S, R>
where
    S: tower_service::Service<http::Request<B>, Response = http::Response<RB>>
        + Clone
        + Send
        + 'static,
    S::Future: Send,
    S::Error: Into<BoxError>,
    R: ReplayBody<B> + Clone + Send + 'static,
    B: Send + 'static,
    RB: Send + 'static,
{
    type Response = http::Response<RB>;
    type Error = BoxError;
    type Future = Pin<Box<dyn Future<Output = Result<Self::Response, BoxError>> + Send>>;

    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), BoxError>> {
        self.inner.poll_ready(cx).map_err(Into::into)
    }

    fn call(&mut self, request: http::Request<B>) -> Self::Future {
        // The ready service is the one this call uses; the clone waits for the next.
        let clone = self.inner.clone();
        let mut inner = std::mem::replace(&mut self.inner, clone);
        let client = self.client.clone();
        let profile = self.profile.clone();
        let replay = self.replay.clone();
        Box::pin(async move {
            let deadline = grpc_timeout(request.headers()).map(Deadline::after);
            let token = client
                .get_token_with(&profile, options(deadline.as_ref())?)
                .await?;
            let (mut parts, body) = request.into_parts();
            token.apply(&mut parts.headers)?;
            let retry = replay
                .replay(&body)
                .map(|body| http::Request::from_parts(parts.clone(), body));
            let response = inner
                .call(http::Request::from_parts(parts, body))
                .await
                .map_err(Into::into)?;
            if response.status() != StatusCode::UNAUTHORIZED {
                return Ok(response);
            }
            let options = options(deadline.as_ref())?;
            let Some(mut retry) = retry else {
                if let Err(error) = client
                    .reject_with(&profile, &token.access_token, options)
                    .await
                {
                    tracing::debug!(profile = &*profile, %error, "reporting a rejected token failed");
                }
                return Ok(response);
            };
            drop(response);
            let token = client
                .reject_with(&profile, &token.access_token, options)
                .await?;
            token.apply(retry.headers_mut())?;
            std::future::poll_fn(|cx| inner.poll_ready(cx))
                .await
                .map_err(Into::into)?;
            inner.call(retry).await.map_err(Into::into)
        })
    }
}

/// The deadline of a gRPC request: `grpc-timeout` is up to 8 digits and a unit.
fn grpc_timeout(headers: &HeaderMap) -> Option<Duration> {
    let value = headers.get("grpc-timeout")?.to_str().ok()?;
    let (digits, unit) = value.split_at(value.len().checked_sub(1)?);
    if digits.is_empty() || digits.len() > 8 || !digits.bytes().all(|b| b.is_ascii_digit()) {
        return None;
    }
    let amount: u64 = digits.parse().ok()?;
    Some(match unit {
        "H" => Duration::from_secs(amount * 3600),
        "M" => Duration::from_secs(amount * 60),
        "S" => Duration::from_secs(amount),
        "m" => Duration::from_millis(amount),
        "u" => Duration::from_micros(amount),
        "n" => Duration::from_nanos(amount),
        _ => return None,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn grpc_timeouts_parse_and_bad_ones_are_ignored() {
        let parse = |value: &str| {
            let mut headers = HeaderMap::new();
            headers.insert("grpc-timeout", value.parse().unwrap());
            grpc_timeout(&headers)
        };
        assert_eq!(parse("1500m"), Some(Duration::from_millis(1500)));
        assert_eq!(parse("2S"), Some(Duration::from_secs(2)));
        assert_eq!(parse("1H"), Some(Duration::from_secs(3600)));
        assert_eq!(parse("123456789S"), None);
        assert_eq!(parse("S"), None);
        assert_eq!(parse("-1S"), None);
        assert_eq!(parse("10x"), None);
    }
}
