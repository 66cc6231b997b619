//! A real HTTP identity provider on loopback for the tests. It authenticates the client
//! the way RFC 6749 §2.3.1 says (HTTP Basic with form-urlencoded parts, or the form body),
//! issues numbered opaque tokens, records every request, and can be told to fail.

use std::{
    collections::HashMap,
    net::SocketAddr,
    sync::{
        Arc, Mutex,
        atomic::{AtomicUsize, Ordering},
    },
    time::Duration,
};

use axum::{
    Json, Router,
    body::Bytes,
    extract::State,
    http::{HeaderMap, StatusCode, header},
    response::{IntoResponse, Response},
    routing::post,
};
use base64::{Engine as _, engine::general_purpose::STANDARD};
use serde_json::json;
use tokio::{net::TcpListener, task::JoinHandle};

pub const CLIENT_ID: &str = "client-1";
/// Holds the characters that break naive HTTP Basic encoding.
pub const CLIENT_SECRET: &str = "pa+ss/w=rd:%&?x";

/// How the IdP answers token requests.
#[derive(Clone, Debug)]
pub enum Behaviour {
    /// Issue `tok-N` valid for `lifetime` seconds, after `delay`.
    Issue { lifetime: u64, delay: Duration },
    /// Answer with this status, content type and body (and Retry-After, if given).
    Fail {
        status: u16,
        content_type: &'static str,
        body: String,
        retry_after: Option<u64>,
    },
    /// Answer 200 with this JSON body, as is.
    Raw(String),
    /// The refresh-token grant, rotating: the live refresh token (`rt-0` first) is spent
    /// as soon as the request arrives, then `tok-N` and `rt-N` are issued after `delay`.
    /// Any other refresh token is refused with `invalid_grant`.
    Rotate { lifetime: u64, delay: Duration },
    /// The refresh-token grant with any refresh token, not rotating: `tok-N` after
    /// `delay`. A revocation (RFC 7009: a `token` and no `grant_type`) is answered 200.
    AnyRefresh { lifetime: u64, delay: Duration },
    /// Copy the request (headers first, then the form body, as received) into the
    /// answer, as careless or hostile providers do.
    Echo(EchoInto),
}

/// Where an echoing IdP puts the request it received.
#[derive(Clone, Copy, Debug)]
pub enum EchoInto {
    /// A 401 `{"error": "invalid_client", "error_description": <echo>}`.
    Description,
    /// A 400 whose OAuth `error` code is the echo.
    ErrorCode,
    /// A 500 HTML error page that shows the request.
    HtmlPage,
    /// A 500 whose `Content-Type` carries the echo.
    ContentType,
}

impl Behaviour {
    pub fn issue(lifetime: u64) -> Self {
        Self::Issue {
            lifetime,
            delay: Duration::ZERO,
        }
    }

    pub fn slow(lifetime: u64, delay: Duration) -> Self {
        Self::Issue { lifetime, delay }
    }

    pub fn html(status: u16) -> Self {
        Self::Fail {
            status,
            content_type: "text/html",
            body: "<html><body><h1>Service Unavailable</h1></body></html>".into(),
            retry_after: None,
        }
    }

    pub fn oauth_error(status: u16, error: &str, description: &str) -> Self {
        Self::Fail {
            status,
            content_type: "application/json",
            body: json!({"error": error, "error_description": description}).to_string(),
            retry_after: None,
        }
    }
}

/// One token request as the IdP received it.
#[derive(Clone, Debug)]
pub struct Recorded {
    pub authorization: Option<String>,
    pub content_type: Option<String>,
    pub form: HashMap<String, String>,
    pub traceparent: Option<String>,
}

struct IdpState {
    behaviour: Mutex<Behaviour>,
    requests: Mutex<Vec<Recorded>>,
    issued: AtomicUsize,
    /// The refresh token `Behaviour::Rotate` accepts next.
    live_refresh: Mutex<String>,
    /// Requests being answered now, and the most there ever were at once.
    in_flight: AtomicUsize,
    peak: AtomicUsize,
}

/// Counts a request as in flight while it lives.
struct InFlight<'a>(&'a IdpState);

impl<'a> InFlight<'a> {
    fn enter(state: &'a IdpState) -> Self {
        let now = state.in_flight.fetch_add(1, Ordering::SeqCst) + 1;
        state.peak.fetch_max(now, Ordering::SeqCst);
        Self(state)
    }
}

impl Drop for InFlight<'_> {
    fn drop(&mut self) {
        self.0.in_flight.fetch_sub(1, Ordering::SeqCst);
    }
}

pub struct TestIdp {
    addr: SocketAddr,
    state: Arc<IdpState>,
    task: JoinHandle<()>,
}

impl TestIdp {
    pub async fn start(behaviour: Behaviour) -> Self {
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let state = Arc::new(IdpState {
            behaviour: Mutex::new(behaviour),
            requests: Mutex::default(),
            issued: AtomicUsize::new(0),
            live_refresh: Mutex::new("rt-0".into()),
            in_flight: AtomicUsize::new(0),
            peak: AtomicUsize::new(0),
        });
        let app = Router::new()
            .route("/token", post(token))
            .with_state(state.clone());
        let task = tokio::spawn(async move {
            axum::serve(listener, app).await.unwrap();
        });
        Self { addr, state, task }
    }

    pub fn token_url(&self) -> String {
        format!("http://{}/token", self.addr)
    }

    pub fn set(&self, behaviour: Behaviour) {
        *self.state.behaviour.lock().unwrap() = behaviour;
    }

    /// Token requests received so far.
    pub fn count(&self) -> usize {
        self.state.requests.lock().unwrap().len()
    }

    /// The most token requests the IdP was answering at the same time.
    pub fn peak_concurrency(&self) -> usize {
        self.state.peak.load(Ordering::SeqCst)
    }

    pub fn requests(&self) -> Vec<Recorded> {
        self.state.requests.lock().unwrap().clone()
    }
}

impl Drop for TestIdp {
    fn drop(&mut self) {
        self.task.abort();
    }
}

async fn token(State(state): State<Arc<IdpState>>, headers: HeaderMap, body: Bytes) -> Response {
    let form: HashMap<String, String> = url::form_urlencoded::parse(&body).into_owned().collect();
    let text = |name| {
        headers
            .get(name)
            .and_then(|v: &header::HeaderValue| v.to_str().ok())
            .map(str::to_owned)
    };
    state.requests.lock().unwrap().push(Recorded {
        authorization: text(header::AUTHORIZATION),
        content_type: text(header::CONTENT_TYPE),
        form: form.clone(),
        traceparent: text(header::HeaderName::from_static("traceparent")),
    });
    let behaviour = state.behaviour.lock().unwrap().clone();
    let _in_flight = InFlight::enter(&state);
    match behaviour {
        Behaviour::Issue { lifetime, delay } => {
            tokio::time::sleep(delay).await;
            if form.get("grant_type").map(String::as_str) != Some("client_credentials") {
                return error(400, "unsupported_grant_type");
            }
            if client(&headers, &form) != Some((CLIENT_ID.into(), CLIENT_SECRET.into())) {
                return error(401, "invalid_client");
            }
            let n = state.issued.fetch_add(1, Ordering::SeqCst) + 1;
            Json(json!({
                "access_token": format!("tok-{n}"),
                "token_type": "bearer",
                "expires_in": lifetime,
                "scope": form.get("scope"),
            }))
            .into_response()
        }
        Behaviour::AnyRefresh { lifetime, delay } => {
            if client(&headers, &form) != Some((CLIENT_ID.into(), CLIENT_SECRET.into())) {
                return error(401, "invalid_client");
            }
            if form.contains_key("token") && !form.contains_key("grant_type") {
                return Json(json!({})).into_response();
            }
            if form.get("grant_type").map(String::as_str) != Some("refresh_token")
                || !form.contains_key("refresh_token")
            {
                return error(400, "unsupported_grant_type");
            }
            tokio::time::sleep(delay).await;
            let n = state.issued.fetch_add(1, Ordering::SeqCst) + 1;
            Json(json!({
                "access_token": format!("tok-{n}"),
                "token_type": "bearer",
                "expires_in": lifetime,
            }))
            .into_response()
        }
        Behaviour::Fail {
            status,
            content_type,
            body,
            retry_after,
        } => {
            let mut response = (
                StatusCode::from_u16(status).unwrap(),
                [(header::CONTENT_TYPE, content_type)],
                body,
            )
                .into_response();
            if let Some(seconds) = retry_after {
                response
                    .headers_mut()
                    .insert(header::RETRY_AFTER, seconds.into());
            }
            response
        }
        Behaviour::Rotate { lifetime, delay } => {
            if form.get("grant_type").map(String::as_str) != Some("refresh_token") {
                return error(400, "unsupported_grant_type");
            }
            let n = {
                let mut live = state.live_refresh.lock().unwrap();
                if form.get("refresh_token") != Some(&*live) {
                    return error(400, "invalid_grant");
                }
                let n = state.issued.fetch_add(1, Ordering::SeqCst) + 1;
                *live = format!("rt-{n}");
                n
            };
            tokio::time::sleep(delay).await;
            Json(json!({
                "access_token": format!("tok-{n}"),
                "token_type": "bearer",
                "expires_in": lifetime,
                "refresh_token": format!("rt-{n}"),
            }))
            .into_response()
        }
        Behaviour::Raw(body) => (
            StatusCode::OK,
            [(header::CONTENT_TYPE, "application/json")],
            body,
        )
            .into_response(),
        Behaviour::Echo(into) => echo(into, &headers, &body),
    }
}

/// The request as a provider that echoes it would write it: the credentials first, so
/// that they fall within any excerpt.
fn echo(into: EchoInto, headers: &HeaderMap, body: &[u8]) -> Response {
    let mut text = String::new();
    for name in [header::AUTHORIZATION.as_str(), "x-api-key"] {
        if let Some(value) = headers.get(name).and_then(|v| v.to_str().ok()) {
            text += &format!("{name}: {value}; ");
        }
    }
    text += &format!("body: {}", String::from_utf8_lossy(body));
    match into {
        EchoInto::Description => (
            StatusCode::UNAUTHORIZED,
            Json(json!({"error": "invalid_client", "error_description": text})),
        )
            .into_response(),
        EchoInto::ErrorCode => {
            (StatusCode::BAD_REQUEST, Json(json!({"error": text}))).into_response()
        }
        EchoInto::HtmlPage => (
            StatusCode::INTERNAL_SERVER_ERROR,
            [(header::CONTENT_TYPE, "text/html")],
            format!("<html><body><h1>Error</h1><pre>{text}</pre></body></html>"),
        )
            .into_response(),
        EchoInto::ContentType => {
            let mut response = StatusCode::INTERNAL_SERVER_ERROR.into_response();
            if let Ok(value) = header::HeaderValue::try_from(text) {
                response.headers_mut().insert(header::CONTENT_TYPE, value);
            }
            response
        }
    }
}

fn error(status: u16, code: &str) -> Response {
    (
        StatusCode::from_u16(status).unwrap(),
        Json(json!({ "error": code, "error_description": format!("test IdP: {code}") })),
    )
        .into_response()
}

/// The client's credentials: HTTP Basic with form-urldecoded parts, or the form body.
fn client(headers: &HeaderMap, form: &HashMap<String, String>) -> Option<(String, String)> {
    if let Some(value) = headers.get(header::AUTHORIZATION) {
        let encoded = value.to_str().ok()?.strip_prefix("Basic ")?;
        let decoded = String::from_utf8(STANDARD.decode(encoded).ok()?).ok()?;
        let (id, secret) = decoded.split_once(':')?;
        return Some((form_decode(id), form_decode(secret)));
    }
    Some((
        form.get("client_id")?.clone(),
        form.get("client_secret")?.clone(),
    ))
}

fn form_decode(text: &str) -> String {
    url::form_urlencoded::parse(format!("v={text}").as_bytes())
        .next()
        .map(|(_, v)| v.into_owned())
        .unwrap_or_default()
}
