//! The forward-auth HTTP port (`server.forward_auth`): `GET /v1/headers/{profile}` answers
//! with the headers of the profile's token, for proxies that add them to requests on the
//! way out (nginx `auth_request`, Traefik `ForwardAuth`, Envoy's HTTP ext_authz).
//!
//! A request is a GetToken in another dress: it goes through the gRPC service's own
//! steps (caller, rate, `allow`, cache, audit, metrics, span), so the two ports cannot
//! disagree about who gets what. The connections are accepted as the gRPC port's are
//! (TLS with the same files, the same limits and watchdog), each served by hyper's
//! HTTP/1.1 with small header buffers and a deadline for the request head.

use std::{convert::Infallible, sync::Arc, time::Duration};

use bytes::Bytes;
use http::{HeaderMap, HeaderName, HeaderValue, Response, StatusCode, header};
use http_body::Body as _;
use http_body_util::Full;
use hyper::body::Incoming;
use hyper_util::rt::{TokioIo, TokioTimer};
use prost::Message as _;
use tokenvend::pb;
use tokio::net::TcpListener;
use tokio_stream::StreamExt as _;
use tokio_util::{sync::CancellationToken, task::TaskTracker};
use tonic::{Code, Status, metadata::MetadataMap, transport::server::Connected as _};

use crate::{
    config::ForwardAuthConfig,
    conn::Peer,
    metrics::Rpc,
    service::LiveService,
    tls::{self, ConnectionLimit, Protocol},
};

/// The path under which profiles are served.
const PREFIX: &str = "/v1/headers/";

/// How long a client has to send a request's head (the line and the headers), counted
/// from the first byte: a peer that trickles one never gets to hold its connection.
const HEAD_TIMEOUT: Duration = Duration::from_secs(10);

/// The largest request head, in bytes (hyper's smallest read buffer). A proxy's
/// subrequest carries its client's headers too; 16 KiB is nginx's own default ceiling
/// for a header line (`large_client_header_buffers 4 8k` allows longer ones in total, but
/// a subrequest that big has something else wrong with it).
const MAX_HEAD_BYTES: usize = 16 * 1024;

/// The most header fields in a request.
const MAX_HEADERS: usize = 100;

/// How long before a token expires a proxy must stop using its cached answer: the
/// token must still work when the proxy's last request with it arrives upstream.
const EXPIRY_MARGIN: Duration = Duration::from_secs(10);

/// What every request needs besides the service.
struct Settings {
    service: LiveService,
    caller_header: HeaderName,
    rejected_token_header: HeaderName,
    max_age: Duration,
}

/// Serves the port until `drain` (no new connections; open ones finish the request they
/// are on and close) or `stop` (everything closes). The connections are tracked by the
/// returned tracker, which is closed once the accept loop ends: waiting on it waits for
/// the last of them.
// Each argument is a handle `server::run` already holds; a struct made for this one call
// would only rename them.
#[allow(clippy::too_many_arguments)]
pub(crate) fn serve(
    listener: TcpListener,
    tls: Option<Arc<tls::Reloading>>,
    connections: Arc<ConnectionLimit>,
    service: LiveService,
    config: &ForwardAuthConfig,
    drain: CancellationToken,
    stop: CancellationToken,
    tasks: &TaskTracker,
) -> TaskTracker {
    let settings = Arc::new(Settings {
        service,
        caller_header: config.caller_header.clone(),
        rejected_token_header: config.rejected_token_header.clone(),
        max_age: config.max_age,
    });
    let mut incoming = tls::incoming(
        listener,
        tls,
        Protocol::Http1,
        connections,
        drain.clone(),
        tasks,
    );
    let open = TaskTracker::new();
    let tracker = open.clone();
    let mut http = hyper::server::conn::http1::Builder::new();
    http.timer(TokioTimer::new())
        .header_read_timeout(HEAD_TIMEOUT)
        .max_buf_size(MAX_HEAD_BYTES)
        .max_headers(MAX_HEADERS)
        .keep_alive(true);
    tasks.spawn(async move {
        while let Some(conn) = incoming.next().await {
            let Ok(conn) = conn else { continue };
            let peer = conn.connect_info();
            let settings = settings.clone();
            let service = hyper::service::service_fn(move |request| {
                let settings = settings.clone();
                let peer = peer.clone();
                async move {
                    // Open until answered: the connection's watchdog leaves it alone.
                    let _call = peer.activity.call();
                    Ok::<_, Infallible>(answer(&settings, peer.clone(), request).await)
                }
            });
            let connection = http.serve_connection(TokioIo::new(conn), service);
            let (drain, stop) = (drain.clone(), stop.clone());
            open.spawn(async move {
                tokio::pin!(connection);
                tokio::select! {
                    result = connection.as_mut() => return finished(result),
                    () = drain.cancelled() => connection.as_mut().graceful_shutdown(),
                }
                tokio::select! {
                    result = connection => finished(result),
                    () = stop.cancelled() => {}
                }
            });
        }
        open.close();
    });
    tracker
}

fn finished(result: Result<(), hyper::Error>) {
    if let Err(error) = result {
        tracing::debug!(%error, "forward-auth connection ended");
    }
}

type Answer = Response<Full<Bytes>>;

/// The answer to one request.
///
/// Any method is answered as `GET` (hyper leaves the body out of a `HEAD` answer), and the
/// path may go on after the profile: Envoy's HTTP ext_authz sends the proxied request's
/// own method, and its path after the configured `path_prefix`
/// (`/v1/headers/floriday` + `/orders/1`).
async fn answer(settings: &Settings, peer: Peer, request: http::Request<Incoming>) -> Answer {
    let Some(rest) = request.uri().path().strip_prefix(PREFIX) else {
        return plain(StatusCode::NOT_FOUND, "the path is /v1/headers/{profile}\n");
    };
    let profile = rest.split('/').next().unwrap_or_default();
    if !request.body().is_end_stream() {
        // A body is never read: close rather than leave it in the connection.
        let mut answer = plain(StatusCode::PAYLOAD_TOO_LARGE, "send no request body\n");
        answer
            .headers_mut()
            .insert(header::CONNECTION, HeaderValue::from_static("close"));
        return answer;
    }
    let headers = request.headers();
    let rejected_token = match headers.get(&settings.rejected_token_header) {
        None => String::new(),
        Some(value) => match rejected_token(value) {
            Some(token) => token.to_owned(),
            None => {
                let message = format!(
                    "`{}` must be a token or `<type> <token>` in printable ASCII\n",
                    settings.rejected_token_header
                );
                return plain(StatusCode::BAD_REQUEST, &message);
            }
        },
    };
    let mut extensions = http::Extensions::new();
    extensions.insert(peer);
    let call = tonic::Request::from_parts(
        metadata(settings, headers),
        extensions,
        pb::GetTokenRequest {
            profile: profile.to_owned(),
            rejected_token,
            ..Default::default()
        },
    );
    let service = settings.service.current();
    match service.token(Rpc::Headers, &call).await {
        Ok((token, _)) => served(settings, &token.to_bytes()),
        Err(status) => refused(&status, settings),
    }
}

/// What the service reads of a call, from the request: the caller's ServiceAccount token
/// from the configured header, as gRPC callers send it in `authorization` (the request's
/// own `authorization` belongs to the proxy's client, and is not looked at), and the
/// trace context.
fn metadata(settings: &Settings, headers: &HeaderMap) -> MetadataMap {
    let mut read = HeaderMap::with_capacity(3);
    if let Some(value) = headers.get(&settings.caller_header) {
        read.insert(header::AUTHORIZATION, value.clone());
    }
    for name in ["traceparent", "tracestate"] {
        if let Some(value) = headers.get(name) {
            read.insert(name, value.clone());
        }
    }
    MetadataMap::from_headers(read)
}

/// The token a proxy reports as refused by its upstream: the header's value as the proxy
/// sent it upstream (`Bearer <token>`) or the token alone.
fn rejected_token(value: &HeaderValue) -> Option<&str> {
    let text = value.to_str().ok()?.trim_start();
    let token = text.split_once(' ').map_or(text, |(_, token)| token).trim();
    (!token.is_empty()).then_some(token)
}

/// 200 with the token's headers. `Cache-Control` lets a proxy keep the answer for at most
/// `max_age`, and never past the token's expiry less a margin.
fn served(settings: &Settings, encoded: &[u8]) -> Answer {
    let token = match pb::Token::decode(encoded) {
        Ok(token) => token,
        Err(error) => {
            // Our own encoding: a bug if it does not decode.
            tracing::error!(%error, "cannot decode a cached token's reply");
            return plain(StatusCode::INTERNAL_SERVER_ERROR, "internal error\n");
        }
    };
    let mut answer = Response::new(Full::default());
    let headers = answer.headers_mut();
    for (name, value) in &token.headers {
        // Both were checked when the configuration was loaded and the token issued.
        let (Ok(name), Ok(mut value)) = (
            HeaderName::from_bytes(name.as_bytes()),
            HeaderValue::from_str(value),
        ) else {
            tracing::error!(profile = %token.profile, header = %name, "a token header cannot be sent over HTTP");
            return plain(StatusCode::INTERNAL_SERVER_ERROR, "internal error\n");
        };
        value.set_sensitive(true);
        headers.insert(name, value);
    }
    let left = token
        .expires_at
        .and_then(|t| std::time::SystemTime::try_from(t).ok())
        .and_then(|t| t.duration_since(std::time::SystemTime::now()).ok())
        .unwrap_or_default();
    let max_age = settings
        .max_age
        .min(left.saturating_sub(EXPIRY_MARGIN))
        .as_secs();
    let cache_control = if max_age == 0 {
        HeaderValue::from_static("no-store")
    } else {
        HeaderValue::from_str(&format!("private, max-age={max_age}"))
            .unwrap_or(HeaderValue::from_static("no-store"))
    };
    headers.insert(header::CACHE_CONTROL, cache_control);
    answer
}

/// The answer to a call the service refused (already audited and counted). A profile
/// that does not exist and one the caller may not use get the same answer, body
/// included, as they do on the gRPC port.
fn refused(status: &Status, settings: &Settings) -> Answer {
    let code = match status.code() {
        Code::Unauthenticated => StatusCode::UNAUTHORIZED,
        Code::NotFound => {
            return plain(
                StatusCode::FORBIDDEN,
                "no such profile, or the caller may not use it\n",
            );
        }
        Code::PermissionDenied => StatusCode::FORBIDDEN,
        Code::InvalidArgument => StatusCode::BAD_REQUEST,
        Code::ResourceExhausted => StatusCode::TOO_MANY_REQUESTS,
        Code::DeadlineExceeded => StatusCode::GATEWAY_TIMEOUT,
        Code::Unavailable | Code::FailedPrecondition | Code::OutOfRange => {
            StatusCode::SERVICE_UNAVAILABLE
        }
        _ => StatusCode::INTERNAL_SERVER_ERROR,
    };
    // The service's messages are written for callers: no secret, no token. Those that say
    // how to send a ServiceAccount token name gRPC's header; here it is another.
    let message = status.message().replace(
        "`authorization: Bearer",
        &format!("`{}: Bearer", settings.caller_header),
    );
    let mut answer = plain(code, &format!("{message}\n"));
    let headers = answer.headers_mut();
    if code == StatusCode::UNAUTHORIZED {
        headers.insert(
            header::WWW_AUTHENTICATE,
            HeaderValue::from_static("Bearer realm=\"tokenvend\""),
        );
    }
    if let Some(after) = status.metadata().get("retry-after")
        && let Ok(after) = HeaderValue::from_bytes(after.as_encoded_bytes())
    {
        headers.insert(header::RETRY_AFTER, after);
    } else if code == StatusCode::TOO_MANY_REQUESTS {
        headers.insert(header::RETRY_AFTER, HeaderValue::from_static("1"));
    }
    answer
}

fn plain(code: StatusCode, text: &str) -> Answer {
    let mut answer = Response::new(Full::new(Bytes::copy_from_slice(text.as_bytes())));
    *answer.status_mut() = code;
    let headers = answer.headers_mut();
    headers.insert(
        header::CONTENT_TYPE,
        HeaderValue::from_static("text/plain; charset=utf-8"),
    );
    headers.insert(header::CACHE_CONTROL, HeaderValue::from_static("no-store"));
    answer
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_rejected_token_is_read_with_or_without_its_type() {
        for (value, token) in [
            ("Bearer abc.def", Some("abc.def")),
            ("abc.def", Some("abc.def")),
            ("  DPoP   abc ", Some("abc")),
            ("Bearer ", None),
            ("", None),
        ] {
            let value = HeaderValue::from_str(value).unwrap();
            assert_eq!(rejected_token(&value), token, "{value:?}");
        }
        let not_ascii = HeaderValue::from_bytes(b"Bearer \xff").unwrap();
        assert_eq!(rejected_token(&not_ascii), None);
    }
}
