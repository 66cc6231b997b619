//! Envoy's external authorization service, `envoy.service.auth.v3.Authorization/Check`, on
//! the gRPC port: Envoy asks before it forwards a request, and tokenvend answers with the
//! headers of a profile's token (`authorization` and the companion headers), which Envoy
//! sets on the request on its way upstream. The application behind Envoy never holds a
//! token and needs no client library.
//!
//! The gRPC caller is Envoy, authenticated, limited and audited exactly as a `GetToken`
//! caller (it is the same [`TokenService`] underneath). Which profile a request gets is
//! chosen from the request: the route's `context_extensions`, then a request header, then
//! `server.ext_authz.routes`.

use std::{sync::Arc, task::Poll};

use arc_swap::ArcSwap;
use tokenvend::{
    envoy_pb::{
        envoy::{
            config::core::v3::{
                HeaderValue, HeaderValueOption, header_value_option::HeaderAppendAction,
            },
            service::auth::v3::{
                CheckRequest, CheckResponse, DeniedHttpResponse, OkHttpResponse,
                attribute_context::HttpRequest,
                authorization_server::{Authorization, AuthorizationServer},
                check_response::HttpResponse,
            },
            r#type::v3::{HttpStatus, StatusCode},
        },
        google::rpc,
    },
    pb,
};
use tonic::{Code, Request, Response, Status};
use tracing::Instrument as _;

use crate::{config::ExtAuthzConfig, error::ServeError, metrics::Rpc, service::TokenService};

/// The service for one configuration: replaced whole by a reload, like [`TokenService`].
pub(crate) struct ExtAuthz {
    tokens: Arc<TokenService>,
    settings: ExtAuthzConfig,
}

#[tonic::async_trait]
impl Authorization for ExtAuthz {
    async fn check(
        &self,
        request: Request<CheckRequest>,
    ) -> Result<Response<CheckResponse>, Status> {
        const RPC: Rpc = Rpc::Check;
        if !self.settings.enabled {
            return Err(Status::unimplemented(
                "Envoy's external authorization is turned off here (`server.ext_authz.enabled`)",
            ));
        }
        let http = request
            .get_ref()
            .attributes
            .as_ref()
            .and_then(|a| a.request.as_ref())
            .and_then(|r| r.http.as_ref());
        let chosen = choose(&self.settings, request.get_ref());
        let profile = chosen.unwrap_or_default();
        // A caller that is not authenticated gets a gRPC error, not a denied response: the
        // caller is the proxy, and its operator reads Envoy's logs. One over its rate is
        // denied with 429 and `retry-after`, which the proxy's clients can act on.
        let (span, deadline, caller) = match self.tokens.begin(RPC, &request, profile).await {
            Ok(begun) => begun,
            Err(status) if status.code() == Code::ResourceExhausted => {
                return Ok(Response::new(denied(&status)));
            }
            Err(status) => return Err(status),
        };
        if chosen.is_none() {
            let error = ServeError::InvalidArgument("no profile chosen for the request".into());
            let status = self
                .tokens
                .refused(RPC, Some(&caller), profile, error, &span);
            return Ok(Response::new(denied(&status)));
        }
        let get = pb::GetTokenRequest {
            profile: profile.to_owned(),
            ..Default::default()
        };
        let (token, fingerprint, result, _hint) = match self
            .tokens
            .get(RPC, &caller, &get, deadline)
            .instrument(span.clone())
            .await
        {
            Ok(got) => got,
            Err(error) => {
                let status = self
                    .tokens
                    .refused(RPC, Some(&caller), profile, error, &span);
                return Ok(Response::new(denied(&status)));
            }
        };
        // The reply was encoded for `GetToken`; its headers are read back from it.
        let Ok(token) = <pb::Token as prost::Message>::decode(token.to_bytes()) else {
            tracing::error!(profile, "a cached token does not decode");
            let status =
                self.tokens
                    .refused(RPC, Some(&caller), profile, ServeError::Internal, &span);
            return Ok(Response::new(denied(&status)));
        };
        TokenService::served(RPC, &caller, profile, result, fingerprint, &span);
        let remove = self
            .settings
            .profile_header
            .as_ref()
            .filter(|name| http.is_some_and(|h| header(h, name.as_str()).is_some()));
        Ok(Response::new(allowed(token, remove.map(|n| n.as_str()))))
    }
}

/// The profile for a checked request: the route's `context_extensions` entry, else the
/// request's profile header, else the first of `routes` that matches its host and path.
fn choose<'a>(settings: &'a ExtAuthzConfig, request: &'a CheckRequest) -> Option<&'a str> {
    let attributes = request.attributes.as_ref()?;
    let from_route = attributes
        .context_extensions
        .get(&settings.context_extension)
        .map(String::as_str)
        .filter(|p| !p.is_empty());
    if from_route.is_some() {
        return from_route;
    }
    let http = attributes.request.as_ref()?.http.as_ref()?;
    if let Some(name) = &settings.profile_header
        && let Some(profile) = header(http, name.as_str()).filter(|p| !p.is_empty())
    {
        return Some(profile);
    }
    let host = host_name(&http.host);
    let path = http.path.split(['?', '#']).next().unwrap_or_default();
    settings
        .routes
        .iter()
        .find(|route| {
            route
                .host
                .as_deref()
                .is_none_or(|h| h.eq_ignore_ascii_case(host))
                && route
                    .path_prefix
                    .as_deref()
                    .is_none_or(|prefix| path.starts_with(prefix))
        })
        .map(|route| route.profile.as_str())
}

/// A request header's value. Envoy sends header names in lower case, in `headers`, or in
/// `header_map` when it is set to encode raw headers.
fn header<'a>(http: &'a HttpRequest, name: &str) -> Option<&'a str> {
    if let Some(value) = http.headers.get(name) {
        return Some(value);
    }
    let map = http.header_map.as_ref()?;
    let found = map.headers.iter().find(|h| h.key == name)?;
    if found.raw_value.is_empty() {
        Some(&found.value)
    } else {
        std::str::from_utf8(&found.raw_value).ok()
    }
}

/// The host of an `:authority`, without its port.
fn host_name(authority: &str) -> &str {
    if let Some(rest) = authority.strip_prefix('[') {
        // An IPv6 literal: `[::1]:8443`.
        return rest.split(']').next().unwrap_or(rest);
    }
    match authority.rsplit_once(':') {
        Some((host, port)) if port.bytes().all(|b| b.is_ascii_digit()) => host,
        _ => authority,
    }
}

/// Allowed: Envoy sets each of the token's headers on the request, replacing any value the
/// client sent, so that a client cannot put its own `authorization` past tokenvend.
fn allowed(token: pb::Token, remove: Option<&str>) -> CheckResponse {
    let mut headers: Vec<_> = token.headers.into_iter().collect();
    headers.sort_unstable_by(|a, b| a.0.cmp(&b.0));
    let headers = headers
        .into_iter()
        .map(|(key, value)| HeaderValueOption {
            header: Some(HeaderValue {
                key,
                value,
                raw_value: Vec::new(),
            }),
            // `append` (deprecated) stays unset: Envoys that predate `append_action` read
            // an unset `append` as "replace", later ones follow the action, and one that
            // finds both set refuses the header.
            append_action: HeaderAppendAction::OverwriteIfExistsOrAdd as i32,
            ..Default::default()
        })
        .collect();
    CheckResponse {
        status: Some(rpc::Status {
            code: Code::Ok as i32,
            ..Default::default()
        }),
        http_response: Some(HttpResponse::OkResponse(OkHttpResponse {
            headers,
            headers_to_remove: remove.map(str::to_owned).into_iter().collect(),
            ..Default::default()
        })),
        dynamic_metadata: None,
    }
}

/// Denied, for a refusal of the token service. No body and no message: the client behind
/// Envoy may be anyone, and a profile it may not use reads exactly like one that does not
/// exist. What happened is in tokenvend's audit log.
///
/// - 403: no profile chosen, no such profile, or one the caller may not use.
/// - 429 with `retry-after`: over a rate (the caller's, or the profile's provider ceiling).
/// - 503: no token could be had from the provider (down, refusing, too slow for Envoy's
///   deadline); a retry may succeed.
fn denied(status: &Status) -> CheckResponse {
    let (http, code) = match status.code() {
        Code::NotFound | Code::InvalidArgument | Code::PermissionDenied => {
            (StatusCode::Forbidden, Code::PermissionDenied)
        }
        Code::ResourceExhausted => (StatusCode::TooManyRequests, Code::ResourceExhausted),
        _ => (StatusCode::ServiceUnavailable, Code::Unavailable),
    };
    let headers = status
        .metadata()
        .get("retry-after")
        .and_then(|v| v.to_str().ok())
        .map(|seconds| HeaderValueOption {
            header: Some(HeaderValue {
                key: "retry-after".to_owned(),
                value: seconds.to_owned(),
                raw_value: Vec::new(),
            }),
            ..Default::default()
        })
        .into_iter()
        .collect();
    CheckResponse {
        status: Some(rpc::Status {
            code: code as i32,
            ..Default::default()
        }),
        http_response: Some(HttpResponse::DeniedResponse(DeniedHttpResponse {
            status: Some(HttpStatus { code: http as i32 }),
            headers,
            body: String::new(),
        })),
        dynamic_metadata: None,
    }
}

/// The ext_authz service as a running server serves it: replaced whole by a reload, so
/// that it uses the current [`TokenService`] (caller authentication, limits, profiles)
/// and the current `server.ext_authz`.
#[derive(Clone)]
pub(crate) struct LiveExtAuthz(Arc<ArcSwap<AuthorizationServer<ExtAuthz>>>);

impl LiveExtAuthz {
    pub(crate) fn new(tokens: Arc<TokenService>, settings: &ExtAuthzConfig) -> Self {
        Self(Arc::new(ArcSwap::from_pointee(Self::server(
            tokens, settings,
        ))))
    }

    pub(crate) fn replace(&self, tokens: Arc<TokenService>, settings: &ExtAuthzConfig) {
        self.0.store(Arc::new(Self::server(tokens, settings)));
    }

    fn server(
        tokens: Arc<TokenService>,
        settings: &ExtAuthzConfig,
    ) -> AuthorizationServer<ExtAuthz> {
        AuthorizationServer::new(ExtAuthz {
            tokens,
            settings: settings.clone(),
        })
        .max_decoding_message_size(settings.max_request_bytes)
    }
}

impl tonic::server::NamedService for LiveExtAuthz {
    const NAME: &'static str = <AuthorizationServer<ExtAuthz> as tonic::server::NamedService>::NAME;
}

impl tonic::codegen::Service<http::Request<tonic::body::Body>> for LiveExtAuthz {
    type Response = http::Response<tonic::body::Body>;
    type Error = std::convert::Infallible;
    type Future = <AuthorizationServer<ExtAuthz> as tonic::codegen::Service<
        http::Request<tonic::body::Body>,
    >>::Future;

    fn poll_ready(&mut self, _: &mut std::task::Context<'_>) -> Poll<Result<(), Self::Error>> {
        // The generated server is always ready.
        Poll::Ready(Ok(()))
    }

    fn call(&mut self, request: http::Request<tonic::body::Body>) -> Self::Future {
        AuthorizationServer::clone(&self.0.load()).call(request)
    }
}

#[cfg(test)]
mod tests {
    use std::collections::HashMap;

    use tokenvend::envoy_pb::envoy::service::auth::v3::{AttributeContext, attribute_context};

    use super::*;
    use crate::config::ExtAuthzRoute;

    fn request(
        extensions: &[(&str, &str)],
        headers: &[(&str, &str)],
        host: &str,
        path: &str,
    ) -> CheckRequest {
        let map = |pairs: &[(&str, &str)]| -> HashMap<String, String> {
            pairs
                .iter()
                .map(|(k, v)| ((*k).to_owned(), (*v).to_owned()))
                .collect()
        };
        CheckRequest {
            attributes: Some(AttributeContext {
                context_extensions: map(extensions),
                request: Some(attribute_context::Request {
                    http: Some(HttpRequest {
                        headers: map(headers),
                        host: host.to_owned(),
                        path: path.to_owned(),
                        ..Default::default()
                    }),
                    ..Default::default()
                }),
                ..Default::default()
            }),
        }
    }

    fn settings() -> ExtAuthzConfig {
        let route = |host: Option<&str>, prefix: Option<&str>, profile: &str| ExtAuthzRoute {
            host: host.map(str::to_owned),
            path_prefix: prefix.map(str::to_owned),
            profile: profile.to_owned(),
        };
        ExtAuthzConfig {
            routes: vec![
                route(Some("api.example.com"), Some("/v2/"), "v2"),
                route(Some("api.example.com"), None, "api"),
                route(None, Some("/billing"), "billing"),
            ],
            ..ExtAuthzConfig::default()
        }
    }

    #[test]
    fn context_extensions_then_the_header_then_the_routes() {
        let s = settings();
        let both = request(
            &[("tokenvend_profile", "route")],
            &[("x-tokenvend-profile", "header")],
            "api.example.com",
            "/",
        );
        assert_eq!(choose(&s, &both), Some("route"));
        let header = request(
            &[],
            &[("x-tokenvend-profile", "header")],
            "api.example.com",
            "/",
        );
        assert_eq!(choose(&s, &header), Some("header"));
        let mapped = request(&[], &[], "API.example.com:8443", "/v2/items?x=/v1/");
        assert_eq!(choose(&s, &mapped), Some("v2"));
        let mapped = request(&[], &[], "api.example.com", "/v1/v2/");
        assert_eq!(choose(&s, &mapped), Some("api"));
        let mapped = request(&[], &[], "other", "/billing/x");
        assert_eq!(choose(&s, &mapped), Some("billing"));
        let unmatched = request(&[], &[], "other", "/x?/billing");
        assert_eq!(choose(&s, &unmatched), None);
    }

    #[test]
    fn an_empty_profile_header_setting_lets_no_request_choose() {
        let s = ExtAuthzConfig {
            profile_header: None,
            ..settings()
        };
        let header = request(&[], &[("x-tokenvend-profile", "header")], "other", "/");
        assert_eq!(choose(&s, &header), None);
    }

    #[test]
    fn the_header_is_also_found_among_raw_headers() {
        use tokenvend::envoy_pb::envoy::config::core::v3::HeaderMap;
        let mut request = request(&[], &[], "other", "/");
        let http = request
            .attributes
            .as_mut()
            .and_then(|a| a.request.as_mut())
            .and_then(|r| r.http.as_mut())
            .unwrap();
        // Envoy with `encode_raw_headers` sends values as bytes in `header_map`.
        http.header_map = Some(HeaderMap {
            headers: vec![HeaderValue {
                key: "x-tokenvend-profile".into(),
                raw_value: b"raw".to_vec(),
                ..Default::default()
            }],
        });
        assert_eq!(choose(&settings(), &request), Some("raw"));
    }

    #[test]
    fn hosts_lose_their_port() {
        assert_eq!(host_name("a.example:80"), "a.example");
        assert_eq!(host_name("a.example"), "a.example");
        assert_eq!(host_name("[::1]:8443"), "::1");
        assert_eq!(host_name("[::1]"), "::1");
    }

    #[test]
    fn denials_hide_the_reason_and_keep_retry_after() {
        let forbidden = denied(&Status::not_found("no profile named `secret-one`"));
        let Some(HttpResponse::DeniedResponse(response)) = forbidden.http_response else {
            panic!("denied");
        };
        assert_eq!(response.status.unwrap().code, StatusCode::Forbidden as i32);
        assert!(response.body.is_empty());
        assert_eq!(
            forbidden.status.unwrap().code,
            Code::PermissionDenied as i32
        );
        let limited: Status = ServeError::RateLimited {
            retry_in: std::time::Duration::from_millis(1500),
        }
        .into();
        let Some(HttpResponse::DeniedResponse(response)) = denied(&limited).http_response else {
            panic!("denied");
        };
        assert_eq!(
            response.status.unwrap().code,
            StatusCode::TooManyRequests as i32
        );
        let retry = response.headers[0].header.as_ref().unwrap();
        assert_eq!(
            (retry.key.as_str(), retry.value.as_str()),
            ("retry-after", "2")
        );
    }
}
