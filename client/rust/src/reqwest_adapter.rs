//! reqwest adapters: [`TokenClient::send`] for one request, and [`TokenMiddleware`] for
//! every request of a `reqwest_middleware` client. Both set the token's headers, report a
//! 401 and send the request once more with the replacement, within the request's timeout.

use std::sync::Arc;

use reqwest::StatusCode;

use crate::{
    Error, Token, TokenClient,
    deadline::{Deadline, options},
};

/// What the first attempt leaves for the one after a 401.
struct Attempt {
    token: Arc<Token>,
    retry: Option<reqwest::Request>,
    deadline: Option<Deadline>,
}

impl TokenClient {
    /// Sends a reqwest request with the profile's headers. On a 401 it reports the token
    /// as rejected and sends the request once more with the new token; a request whose
    /// body cannot be replayed (a stream) is sent once. A timeout set on the request
    /// (`RequestBuilder::timeout`) bounds the token calls too.
    pub async fn send(
        &self,
        profile: &str,
        request: reqwest::RequestBuilder,
    ) -> Result<reqwest::Response, Error> {
        let (http, request) = request.build_split();
        let (request, attempt) = self.authorize(profile, request?).await?;
        let response = http.execute(request).await?;
        if response.status() != StatusCode::UNAUTHORIZED {
            return Ok(response);
        }
        match self.after_401(profile, attempt).await? {
            Some(retry) => {
                drop(response);
                Ok(http.execute(retry).await?)
            }
            None => Ok(response),
        }
    }

    async fn authorize(
        &self,
        profile: &str,
        mut request: reqwest::Request,
    ) -> Result<(reqwest::Request, Attempt), Error> {
        let deadline = request.timeout().copied().map(Deadline::after);
        let token = self
            .get_token_with(profile, options(deadline.as_ref())?)
            .await?;
        token.apply(request.headers_mut())?;
        spend(&mut request, deadline.as_ref())?;
        let retry = request.try_clone();
        let attempt = Attempt {
            token,
            retry,
            deadline,
        };
        Ok((request, attempt))
    }

    /// Reports the token; the request to send again, when its body can be.
    async fn after_401(
        &self,
        profile: &str,
        attempt: Attempt,
    ) -> Result<Option<reqwest::Request>, Error> {
        let Attempt {
            token,
            retry,
            deadline,
        } = attempt;
        let options = options(deadline.as_ref())?;
        let Some(mut retry) = retry else {
            // Not sent again, but the next request gets the replacement.
            if let Err(error) = self
                .reject_with(profile, &token.access_token, options)
                .await
            {
                tracing::debug!(profile, %error, "reporting a rejected token failed");
            }
            return Ok(None);
        };
        let token = self
            .reject_with(profile, &token.access_token, options)
            .await?;
        token.apply(retry.headers_mut())?;
        spend(&mut retry, deadline.as_ref())?;
        Ok(Some(retry))
    }
}

/// Gives the request what is left of its timeout after the token calls.
fn spend(request: &mut reqwest::Request, deadline: Option<&Deadline>) -> Result<(), Error> {
    if let Some(deadline) = deadline {
        *request.timeout_mut() = Some(deadline.left()?);
    }
    Ok(())
}

/// A [`reqwest_middleware::Middleware`] that puts a profile's token on every request
/// and, on a 401, reports it and retries once with the replacement (when the body can be
/// cloned; a streamed body is sent once). The request's timeout
/// (`RequestBuilder::timeout`) bounds the token calls and the request together.
///
/// A failure of tokenvend is a `reqwest_middleware::Error::Middleware` holding an
/// [`Error`]; [`Error::from_middleware`] finds it, for its code and
/// [`is_retryable`](Error::is_retryable).
///
/// ```no_run
/// # async fn example() -> Result<(), Box<dyn std::error::Error>> {
/// use tokenvend_client::{TokenClient, TokenMiddleware};
///
/// let tokens = TokenClient::new("http://tokenvend:50051")?;
/// let http = reqwest_middleware::ClientBuilder::new(reqwest::Client::new())
///     .with(TokenMiddleware::new(tokens, "jama"))
///     .build();
/// let response = http.get("https://example.jamacloud.com/rest/v1/projects").send().await?;
/// # let _ = response;
/// # Ok(())
/// # }
/// ```
#[cfg(feature = "reqwest-middleware")]
#[derive(Clone)]
pub struct TokenMiddleware {
    client: TokenClient,
    profile: Arc<str>,
}

#[cfg(feature = "reqwest-middleware")]
impl TokenMiddleware {
    /// Puts tokens of `profile` from `client` on every request.
    pub fn new(client: TokenClient, profile: impl Into<String>) -> Self {
        Self {
            client,
            profile: profile.into().into(),
        }
    }
}

#[cfg(feature = "reqwest-middleware")]
impl std::fmt::Debug for TokenMiddleware {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("TokenMiddleware")
            .field("profile", &self.profile)
            .finish_non_exhaustive()
    }
}

#[cfg(feature = "reqwest-middleware")]
#[async_trait::async_trait]
impl reqwest_middleware::Middleware for TokenMiddleware {
    async fn handle(
        &self,
        request: reqwest::Request,
        extensions: &mut http::Extensions,
        next: reqwest_middleware::Next<'_>,
    ) -> reqwest_middleware::Result<reqwest::Response> {
        let fail = reqwest_middleware::Error::middleware;
        let (request, attempt) = self
            .client
            .authorize(&self.profile, request)
            .await
            .map_err(fail)?;
        let response = next.clone().run(request, extensions).await?;
        if response.status() != StatusCode::UNAUTHORIZED {
            return Ok(response);
        }
        match self
            .client
            .after_401(&self.profile, attempt)
            .await
            .map_err(fail)?
        {
            Some(retry) => {
                drop(response);
                next.run(retry, extensions).await
            }
            None => Ok(response),
        }
    }
}
