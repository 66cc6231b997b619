//! The identity provider client: one OAuth 2.0 token request (RFC 6749 §4.4), sent the way
//! the profile says, and its answer read the way real providers write it.

pub(crate) mod discovery;
mod redact;
mod response;

use std::time::{Duration, Instant, SystemTime};

use base64::{Engine as _, engine::general_purpose::STANDARD};
use http::{HeaderValue, header};
use tracing::{Instrument as _, field::Empty};
use tracing_opentelemetry::OpenTelemetrySpanExt as _;
use url::{Url, form_urlencoded};

use crate::{
    config::Profile,
    metrics::{IdpRequest, Metrics},
    secret::Secret,
};

pub(crate) use response::IssuedToken;

/// The most of a token response that is read; real ones are a few KiB.
const MAX_RESPONSE_BYTES: usize = 256 * 1024;

/// A client for token endpoints; cheap to clone (it shares one connection pool).
///
/// The HTTP client is shared by every clone and can be replaced while they run, so that a
/// reload that changes `server.idp_connect_timeout` reaches every profile at its next
/// request, without rebuilding the profiles that hold a clone.
#[derive(Clone, Debug)]
pub(crate) struct IdpClient {
    http: std::sync::Arc<arc_swap::ArcSwap<reqwest::Client>>,
    /// The connect timeout of `http`, for the clients built per request.
    connect_timeout_ms: std::sync::Arc<std::sync::atomic::AtomicU64>,
    metrics: Option<Metrics>,
}

/// Redirects are not followed: a token endpoint that redirects is misconfigured, and
/// following would resend credentials.
fn http_builder(connect_timeout: Duration) -> reqwest::ClientBuilder {
    reqwest::Client::builder()
        .connect_timeout(connect_timeout)
        .redirect(reqwest::redirect::Policy::none())
        .user_agent(concat!("tokenvend/", env!("CARGO_PKG_VERSION")))
}

fn http_client(connect_timeout: Duration) -> Result<reqwest::Client, reqwest::Error> {
    http_builder(connect_timeout).build()
}

/// The CA certificates in a `provider_ca` file; an error names the file, never more.
pub(crate) fn provider_roots(path: &std::path::Path) -> Result<Vec<reqwest::Certificate>, String> {
    let pem = crate::bounded::read(path, crate::bounded::DOCUMENT_BYTES)
        .map_err(|e| format!("cannot read {}: {e}", path.display()))?;
    match reqwest::Certificate::from_pem_bundle(&pem) {
        Ok(roots) if !roots.is_empty() => Ok(roots),
        _ => Err(format!("{} holds no PEM certificate", path.display())),
    }
}

/// Why a token request failed. The text never holds a secret or a token.
#[derive(Debug, thiserror::Error)]
pub enum IdpError {
    /// The provider answered with an OAuth error (RFC 6749 §5.2) that retrying won't fix.
    #[error("identity provider refused the request (HTTP {status}): {error}{}", describe(.description))]
    Rejected {
        /// The HTTP status.
        status: u16,
        /// The OAuth `error` code, such as `invalid_client`.
        error: String,
        /// The provider's `error_description`, cleaned and shortened.
        description: Option<String>,
    },
    /// The provider answered with a transient OAuth error or an HTTP status and no OAuth
    /// error body (an HTML error page, a gateway error).
    #[error("identity provider answered HTTP {status}{}{}", describe_body(.content_type), describe(.error))]
    Status {
        /// The HTTP status.
        status: u16,
        /// The body's content type, if it had one.
        content_type: Option<String>,
        /// The OAuth `error` code, if the body had one.
        error: Option<String>,
        /// The provider's `Retry-After`.
        retry_after: Option<Duration>,
    },
    /// No answer: connection refused, reset, TLS failure, DNS.
    #[error("cannot reach the identity provider at {host}: {reason}")]
    Unreachable {
        /// The token endpoint's host.
        host: String,
        /// What went wrong.
        reason: String,
    },
    /// No answer within the profile's timeout.
    #[error("identity provider at {host} did not answer within {timeout:?}")]
    Timeout {
        /// The token endpoint's host.
        host: String,
        /// The profile's timeout.
        timeout: Duration,
    },
    /// An answer that is not a usable token response.
    #[error("identity provider sent an unusable token response: {0}")]
    Malformed(String),
    /// The provider's metadata cannot be trusted for this profile (another issuer, a
    /// plain-http endpoint): a configuration problem, not a passing one.
    #[error("{0}")]
    Misconfigured(String),
}

fn describe(detail: &Option<String>) -> String {
    detail
        .as_deref()
        .map(|d| format!(": {d}"))
        .unwrap_or_default()
}

fn describe_body(content_type: &Option<String>) -> String {
    content_type
        .as_deref()
        .map(|t| format!(" with a {t} body"))
        .unwrap_or_default()
}

impl IdpError {
    /// Whether trying again later may succeed without a change of configuration.
    pub fn is_transient(&self) -> bool {
        match self {
            Self::Rejected { .. } | Self::Misconfigured(_) => false,
            // An OAuth error code in a `Status` is one of the transient ones.
            Self::Status { status, error, .. } => is_transient_status(*status) || error.is_some(),
            Self::Unreachable { .. } | Self::Timeout { .. } | Self::Malformed(_) => true,
        }
    }

    /// A short name for metrics: `rejected`, `http_error`, `unreachable`, `timeout`,
    /// `malformed`, `misconfigured`.
    pub fn kind(&self) -> &'static str {
        match self {
            Self::Rejected { .. } => "rejected",
            Self::Status { .. } => "http_error",
            Self::Unreachable { .. } => "unreachable",
            Self::Timeout { .. } => "timeout",
            Self::Malformed(_) => "malformed",
            Self::Misconfigured(_) => "misconfigured",
        }
    }

    /// How long the provider asked us to wait before trying again.
    pub fn retry_after(&self) -> Option<Duration> {
        match self {
            Self::Status { retry_after, .. } => *retry_after,
            _ => None,
        }
    }
}

fn millis(duration: Duration) -> u64 {
    u64::try_from(duration.as_millis()).unwrap_or(u64::MAX)
}

fn is_transient_status(status: u16) -> bool {
    status >= 500 || status == 429 || status == 408
}

impl IdpClient {
    /// A client with the given connect timeout.
    pub(crate) fn new(connect_timeout: Duration) -> Result<Self, reqwest::Error> {
        Ok(Self {
            http: std::sync::Arc::new(arc_swap::ArcSwap::from_pointee(http_client(
                connect_timeout,
            )?)),
            connect_timeout_ms: std::sync::Arc::new(std::sync::atomic::AtomicU64::new(millis(
                connect_timeout,
            ))),
            metrics: None,
        })
    }

    /// Replaces the HTTP client of this client and all its clones with one that waits
    /// `connect_timeout` for a connection. Requests under way finish on the old one.
    pub(crate) fn set_connect_timeout(
        &self,
        connect_timeout: Duration,
    ) -> Result<(), reqwest::Error> {
        self.http
            .store(std::sync::Arc::new(http_client(connect_timeout)?));
        self.connect_timeout_ms.store(
            millis(connect_timeout),
            std::sync::atomic::Ordering::Relaxed,
        );
        Ok(())
    }

    /// The same client, recording each token request in `metrics`.
    pub(crate) fn with_metrics(self, metrics: Metrics) -> Self {
        Self {
            metrics: Some(metrics),
            ..self
        }
    }

    /// Requests a token from `token_url`, the client authenticated by `credential`
    /// (see [`crate::credential`]).
    pub(crate) async fn request_token(
        &self,
        profile: &Profile,
        token_url: &Url,
        credential: &Credential,
        grant: Grant<'_>,
    ) -> Result<IssuedToken, IdpError> {
        let (body, authorization) = token_request(profile, credential, &grant);
        let host = token_url.host_str().unwrap_or_default();
        // A client span per the HTTP semantic conventions. The URL is shown without its
        // query and fragment, which might carry something sensitive.
        let span = tracing::info_span!(
            target: "tokenvend::idp",
            "POST",
            otel.kind = "client",
            http.request.method = "POST",
            url.full = %without_query(token_url),
            server.address = host,
            server.port = token_url.port_or_known_default().map(i64::from),
            http.response.status_code = Empty,
            error.type = Empty,
            otel.status_code = Empty,
            tokenvend.profile = %profile.name,
        );
        let started = Instant::now();
        let result = self
            .exchange(profile, token_url, credential, &grant, body, authorization)
            .instrument(span.clone())
            .await;
        let (status, result) = match result {
            Ok((status, issued)) => (Some(status), Ok(issued)),
            Err((status, error)) => (status, Err(error)),
        };
        if let Some(status) = status {
            span.record("http.response.status_code", i64::from(status));
        }
        if let Err(error) = &result {
            span.record("error.type", error.kind());
            span.record("otel.status_code", "ERROR");
        }
        if let Some(metrics) = &self.metrics {
            metrics.idp_request(&IdpRequest {
                profile: &profile.name,
                host,
                status,
                error: result.as_ref().err().map(IdpError::kind),
                duration: started.elapsed(),
            });
        }
        result
    }

    /// Revokes a refresh token at `url` (RFC 7009), the client authenticated as for a token
    /// request: whether the provider answered with success. RFC 7009 has the provider
    /// answer 200 also for a token it did not know, so success means only that the token
    /// is no longer valid there.
    pub(crate) async fn revoke(
        &self,
        profile: &Profile,
        url: &Url,
        credential: &Credential,
        token: &Secret,
    ) -> Result<bool, IdpError> {
        // The serializer is not `Send`: finished before the request is awaited.
        let (body, authorization) = {
            let mut form = form_urlencoded::Serializer::new(String::new());
            form.append_pair("token", token.expose());
            form.append_pair("token_type_hint", "refresh_token");
            let authorization = client_authentication(&mut form, profile, credential);
            (form.finish(), authorization)
        };
        let http = self.client_for(profile, credential)?;
        let answer = self
            .post_form(&http, url, profile.timeout, body, authorization)
            .await?;
        Ok((200..300).contains(&answer.status))
    }

    /// Sends the request and reads the answer: the token, or the error with the HTTP
    /// status if an answer came.
    async fn exchange(
        &self,
        profile: &Profile,
        token_url: &Url,
        credential: &Credential,
        grant: &Grant<'_>,
        body: String,
        authorization: Option<HeaderValue>,
    ) -> Result<(u16, IssuedToken), (Option<u16>, IdpError)> {
        let http = self
            .client_for(profile, credential)
            .map_err(|e| (None, e))?;
        let answer = self
            .post_form(&http, token_url, profile.timeout, body, authorization)
            .await
            .map_err(|e| (None, e))?;

        response::parse(
            answer.as_answer(),
            profile,
            &redactor(profile, credential, grant),
        )
        .map(|issued| (answer.status, issued))
        .map_err(|e| (Some(answer.status), e))
    }

    /// The HTTP client for a profile's token request: the shared one, or, for mutual TLS
    /// or a private CA, one built for this request with the client's certificate and the
    /// CA, so that rotated files are used at once. Token requests are a few an hour; the
    /// build is a millisecond.
    fn client_for(
        &self,
        profile: &Profile,
        credential: &Credential,
    ) -> Result<reqwest::Client, IdpError> {
        let identity = match credential {
            Credential::Tls(pem) => Some(pem),
            _ => None,
        };
        if identity.is_none() && profile.provider_ca.is_none() {
            return Ok(reqwest::Client::clone(&self.http.load()));
        }
        let mut builder = http_builder(Duration::from_millis(
            self.connect_timeout_ms
                .load(std::sync::atomic::Ordering::Relaxed),
        ));
        if let Some(pem) = identity {
            let identity = reqwest::Identity::from_pem(pem.expose().as_bytes()).map_err(|_| {
                IdpError::Misconfigured("client_certificate or client_key cannot be used".into())
            })?;
            builder = builder.identity(identity);
        }
        if let Some(ca) = &profile.provider_ca {
            for root in provider_roots(ca).map_err(IdpError::Misconfigured)? {
                builder = builder.add_root_certificate(root);
            }
            builder = builder.tls_built_in_root_certs(false);
        }
        builder
            .build()
            .map_err(|e| IdpError::Misconfigured(format!("cannot set up TLS: {e}")))
    }

    /// Sends a form POST and reads the answer, capped in size.
    async fn post_form(
        &self,
        http: &reqwest::Client,
        url: &Url,
        timeout: Duration,
        body: String,
        authorization: Option<HeaderValue>,
    ) -> Result<RawAnswer, IdpError> {
        let host = url.host_str().unwrap_or_default().to_owned();
        let mut request = http
            .post(url.clone())
            .timeout(timeout)
            .header(header::CONTENT_TYPE, "application/x-www-form-urlencoded")
            .header(header::ACCEPT, "application/json")
            .body(body);
        if let Some(value) = authorization {
            request = request.header(header::AUTHORIZATION, value);
        }
        let span = tracing::Span::current();
        if !span.is_disabled() {
            // W3C trace context, so the provider's own traces join ours.
            let mut headers = http::HeaderMap::new();
            crate::telemetry::inject(&span.context(), &mut headers);
            request = request.headers(headers);
        }
        let sent_at = SystemTime::now();
        let response = request
            .send()
            .await
            .map_err(|e| transport_error(e, &host, timeout))?;
        RawAnswer::read(response, sent_at, &host, timeout).await
    }

    /// GETs a JSON document (discovery metadata), capped in size.
    async fn get_json(&self, url: &Url, timeout: Duration) -> Result<RawAnswer, IdpError> {
        let host = url.host_str().unwrap_or_default().to_owned();
        let response = self
            .http
            .load()
            .get(url.clone())
            .timeout(timeout)
            .header(header::ACCEPT, "application/json")
            .send()
            .await
            .map_err(|e| transport_error(e, &host, timeout))?;
        RawAnswer::read(response, SystemTime::now(), &host, timeout).await
    }
}

/// What the token request asks for.
pub(crate) enum Grant<'a> {
    /// RFC 6749 §4.4.
    ClientCredentials,
    /// RFC 6749 §6, with the current refresh token.
    RefreshToken {
        /// The refresh token.
        token: &'a Secret,
        /// The scope to ask for: the one granted with the chain, if known, else the
        /// profile's.
        scope: Option<&'a str>,
    },
    /// RFC 8693, with the caller's token.
    TokenExchange {
        /// The token to exchange.
        subject_token: &'a Secret,
        /// Its type, a URN of RFC 8693 §3.
        subject_token_type: &'a str,
    },
    /// RFC 7523 §2.1, with the signed assertion.
    JwtBearer {
        /// The assertion.
        assertion: &'a Secret,
    },
    /// RFC 6749 §4.1.3 with PKCE (RFC 7636).
    AuthorizationCode {
        /// The code from the redirect.
        code: &'a str,
        /// The redirect URI used in the authorization request.
        redirect_uri: &'a str,
        /// The PKCE verifier.
        code_verifier: &'a str,
    },
}

/// Everything secret the request carried, in every form it went on the wire: providers
/// sometimes echo the request into their error text.
fn redactor(profile: &Profile, credential: &Credential, grant: &Grant<'_>) -> redact::Redactor {
    let mut redactor = redact::Redactor::default();
    if let Some(secret) = credential.secret() {
        redactor.secret(secret.expose());
    }
    if let Credential::Basic(secret) = credential {
        redactor.basic(&profile.client_id, secret.expose());
    }
    if let Grant::RefreshToken { token, .. } = grant {
        redactor.secret(token.expose());
    }
    if let Grant::JwtBearer { assertion } = grant {
        redactor.secret(assertion.expose());
    }
    if let Grant::TokenExchange { subject_token, .. } = grant {
        redactor.secret(subject_token.expose());
    }
    if let Grant::AuthorizationCode {
        code,
        code_verifier,
        ..
    } = grant
    {
        redactor.secret(code);
        redactor.secret(code_verifier);
    }
    for (_, source) in &profile.headers {
        if let Ok(value) = source.load() {
            redactor.secret(value.expose());
        }
    }
    redactor
}

/// The client's proof of identity for one request.
pub(crate) enum Credential {
    /// None: the `jwt_bearer` grant's assertion is the proof.
    None,
    /// Mutual TLS: the client certificate and its key, one PEM.
    Tls(Secret),
    /// `client_secret` in the form body.
    Post(Secret),
    /// HTTP Basic.
    Basic(Secret),
    /// A signed JWT client assertion.
    Assertion(Secret),
}

impl Credential {
    fn secret(&self) -> Option<&Secret> {
        match self {
            Self::Post(s) | Self::Basic(s) | Self::Assertion(s) => Some(s),
            Self::None | Self::Tls(_) => None,
        }
    }
}

/// A response read off the wire.
struct RawAnswer {
    status: u16,
    content_type: Option<String>,
    retry_after: Option<Duration>,
    body: Vec<u8>,
    sent_at: SystemTime,
}

impl RawAnswer {
    async fn read(
        response: reqwest::Response,
        sent_at: SystemTime,
        host: &str,
        timeout: Duration,
    ) -> Result<Self, IdpError> {
        let status = response.status().as_u16();
        let retry_after = response
            .headers()
            .get(header::RETRY_AFTER)
            .and_then(|v| parse_retry_after(v, SystemTime::now()));
        let content_type = response
            .headers()
            .get(header::CONTENT_TYPE)
            .and_then(|v| v.to_str().ok())
            .map(|v| v.split(';').next().unwrap_or(v).trim().to_ascii_lowercase());
        let body = read_capped(response)
            .await
            .map_err(|e| transport_error(e, host, timeout))?
            .ok_or_else(|| {
                IdpError::Malformed(format!(
                    "the body is larger than {MAX_RESPONSE_BYTES} bytes"
                ))
            })?;
        Ok(Self {
            status,
            content_type,
            retry_after,
            body,
            sent_at,
        })
    }

    fn as_answer(&self) -> response::Answer<'_> {
        response::Answer {
            status: self.status,
            content_type: self.content_type.clone(),
            retry_after: self.retry_after,
            body: &self.body,
            sent_at: self.sent_at,
        }
    }
}

/// The form body and, for `client_secret_basic`, the Authorization header.
/// The client's authentication, added to `form` or returned as an `Authorization` header.
fn client_authentication(
    form: &mut form_urlencoded::Serializer<'_, String>,
    profile: &Profile,
    credential: &Credential,
) -> Option<HeaderValue> {
    match credential {
        Credential::None => None,
        // RFC 8705 §2: the certificate authenticates; `client_id` says whose it is.
        Credential::Tls(_) => {
            form.append_pair("client_id", &profile.client_id);
            None
        }
        Credential::Basic(secret) => Some(basic_authorization(&profile.client_id, secret)),
        Credential::Post(secret) => {
            form.append_pair("client_id", &profile.client_id);
            form.append_pair("client_secret", secret.expose());
            None
        }
        Credential::Assertion(assertion) => {
            // Empty only for a workload's assertion with no `client_id` configured.
            if !profile.client_id.is_empty() {
                form.append_pair("client_id", &profile.client_id);
            }
            form.append_pair(
                "client_assertion_type",
                "urn:ietf:params:oauth:client-assertion-type:jwt-bearer",
            );
            form.append_pair("client_assertion", assertion.expose());
            None
        }
    }
}

fn token_request(
    profile: &Profile,
    credential: &Credential,
    grant: &Grant<'_>,
) -> (String, Option<HeaderValue>) {
    let mut form = form_urlencoded::Serializer::new(String::new());
    match grant {
        Grant::ClientCredentials => {
            form.append_pair("grant_type", "client_credentials");
        }
        Grant::RefreshToken { token, .. } => {
            form.append_pair("grant_type", "refresh_token");
            form.append_pair("refresh_token", token.expose());
        }
        Grant::TokenExchange {
            subject_token,
            subject_token_type,
        } => {
            form.append_pair(
                "grant_type",
                "urn:ietf:params:oauth:grant-type:token-exchange",
            );
            form.append_pair("subject_token", subject_token.expose());
            form.append_pair("subject_token_type", subject_token_type);
        }
        Grant::JwtBearer { assertion } => {
            form.append_pair("grant_type", "urn:ietf:params:oauth:grant-type:jwt-bearer");
            form.append_pair("assertion", assertion.expose());
        }
        Grant::AuthorizationCode {
            code,
            redirect_uri,
            code_verifier,
        } => {
            form.append_pair("grant_type", "authorization_code");
            form.append_pair("code", code);
            form.append_pair("redirect_uri", redirect_uri);
            form.append_pair("code_verifier", code_verifier);
        }
    }
    let authorization = client_authentication(&mut form, profile, credential);
    // The code exchange repeats nothing of the authorization request but the redirect
    // URI; the other grants carry the profile's request shape.
    if !matches!(grant, Grant::AuthorizationCode { .. }) {
        if let Grant::RefreshToken {
            scope: Some(granted),
            ..
        } = grant
        {
            form.append_pair("scope", granted);
        } else if !profile.scopes.is_empty() {
            form.append_pair("scope", &profile.scopes.join(" "));
        }
        if let Some(audience) = &profile.audience {
            form.append_pair("audience", audience);
        }
        if let Some(resource) = &profile.resource {
            form.append_pair("resource", resource);
        }
        for (name, value) in &profile.params {
            form.append_pair(name, value);
        }
    }
    (form.finish(), authorization)
}

/// RFC 6749 §2.3.1: the id and the secret are each form-urlencoded before they are joined
/// with `:` and Base64-encoded, so a secret holding `:` or `%` survives the trip.
fn basic_authorization(client_id: &str, secret: &Secret) -> HeaderValue {
    let id: String = form_urlencoded::byte_serialize(client_id.as_bytes()).collect();
    let secret: String = form_urlencoded::byte_serialize(secret.expose().as_bytes()).collect();
    let credentials = STANDARD.encode(format!("{id}:{secret}"));
    let mut value = HeaderValue::try_from(format!("Basic {credentials}"))
        .unwrap_or_else(|_| unreachable!("Base64 is a valid header value"));
    // Keeps the value out of HPACK tables and out of `Debug` prints of the request.
    value.set_sensitive(true);
    value
}

fn without_query(url: &Url) -> Url {
    let mut url = url.clone();
    url.set_query(None);
    url.set_fragment(None);
    let _ = url.set_password(None);
    let _ = url.set_username("");
    url
}

fn transport_error(error: reqwest::Error, host: &str, timeout: Duration) -> IdpError {
    if error.is_timeout() {
        return IdpError::Timeout {
            host: host.to_owned(),
            timeout,
        };
    }
    // The URL is left out: the host says enough, and a query string might be sensitive.
    let error = error.without_url();
    let mut reason = error.to_string();
    let mut source = std::error::Error::source(&error);
    while let Some(cause) = source {
        reason.push_str(": ");
        reason.push_str(&cause.to_string());
        source = cause.source();
    }
    IdpError::Unreachable {
        host: host.to_owned(),
        reason,
    }
}

/// Reads the body up to [`MAX_RESPONSE_BYTES`]; `None` when it is larger.
async fn read_capped(mut response: reqwest::Response) -> Result<Option<Vec<u8>>, reqwest::Error> {
    if response
        .content_length()
        .is_some_and(|len| len > MAX_RESPONSE_BYTES as u64)
    {
        return Ok(None);
    }
    let mut body = Vec::new();
    while let Some(chunk) = response.chunk().await? {
        if body.len() + chunk.len() > MAX_RESPONSE_BYTES {
            return Ok(None);
        }
        body.extend_from_slice(&chunk);
    }
    Ok(Some(body))
}

/// `Retry-After` as delay-seconds or an HTTP date (RFC 9110 §10.2.3), capped at an hour.
fn parse_retry_after(value: &HeaderValue, now: SystemTime) -> Option<Duration> {
    let text = value.to_str().ok()?.trim();
    let delay = match text.parse::<u64>() {
        Ok(seconds) => Duration::from_secs(seconds),
        Err(_) => httpdate::parse_http_date(text)
            .ok()?
            .duration_since(now)
            .unwrap_or_default(),
    };
    Some(delay.min(Duration::from_secs(3600)))
}

/// Reads arbitrary bytes as a token endpoint's answer (the `fuzz/` target
/// `token_response`): the first two bytes are the HTTP status, the rest the body. The
/// result is checked for what must hold whatever the provider sends: no error text
/// carries the secret the request was made with.
#[cfg(feature = "fuzzing")]
pub(crate) fn fuzz_response(profile: &Profile, secret: &str, data: &[u8]) {
    let (status, body) = match data {
        [a, b, body @ ..] => (u16::from_be_bytes([*a, *b]) % 600, body),
        _ => (200, data),
    };
    let answer = response::Answer {
        status,
        content_type: Some("application/json".into()),
        retry_after: None,
        body,
        sent_at: SystemTime::now(),
    };
    let mut redactor = redact::Redactor::default();
    redactor.secret(secret);
    redactor.basic(&profile.client_id, secret);
    if let Err(error) = response::parse(answer, profile, &redactor) {
        assert!(
            !error.to_string().contains(secret),
            "the secret reached an error"
        );
    }
}

#[cfg(test)]
mod tests;
