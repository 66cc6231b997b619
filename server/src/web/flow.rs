//! The hosted authorization of a refresh-token profile: `POST /authorize/{profile}` seals
//! a fresh `state` and PKCE verifier into a cookie scoped to the callback and sends the
//! browser to the provider; `GET /oauth/callback` accepts the redirect only from the
//! browser holding that cookie, only with its `state`, and only once, then exchanges the
//! code at once and stores the refresh token where `tokenvend authorize` stores it.

use std::{sync::Arc, time::Duration};

use axum::{
    body::Bytes,
    extract::{Path, RawQuery, State},
    http::{HeaderMap, HeaderValue, StatusCode, header},
    response::{IntoResponse, Response},
};
use serde::{Deserialize, Serialize};
use url::Url;

use super::{
    CALLBACK_PATH, CertIdentity, Web, cookie, csrf_ok, form_field, html, html_response, see_other,
};
use crate::{
    authorize::{self, AuthorizeError, Request},
    secret::Secret,
};

/// The authorization in progress in this browser.
const FLOW: &str = "tv_flow";
/// How long a person has to approve at the provider.
const FLOW_TTL: Duration = Duration::from_secs(600);
/// A one-time message for the page after a redirect.
pub(super) const NOTICE: &str = "tv_notice";
/// The longest callback query read: a code and a state are far shorter.
const MAX_QUERY: usize = 8 * 1024;

/// What the flow cookie holds (sealed: the browser can neither read the verifier nor
/// change the profile).
#[derive(Serialize, Deserialize)]
struct Flow {
    profile: String,
    /// The connection being made, for a template profile.
    subject: Option<String>,
    state: String,
    verifier: String,
    /// Who started it, for the log line.
    by: Option<String>,
}

/// `POST /authorize/{profile}`: an admin starts the flow.
pub(super) async fn start(
    State(web): State<Arc<Web>>,
    Path(name): Path<String>,
    headers: HeaderMap,
    cert: CertIdentity,
    form: Bytes,
) -> Response {
    let viewer = match web.viewer(&headers, cert.0.as_deref()) {
        Ok(viewer) => viewer,
        Err(denied) => return web.refuse(denied, &headers),
    };
    // A session made just now holds no form's token, so it fails here as it should.
    if !csrf_ok(&viewer, form_field(&form, "csrf").as_deref()) {
        return refused(
            StatusCode::FORBIDDEN,
            "This form is stale or came from another site: reload the page and try again.",
        );
    }
    if !viewer.admin {
        return refused(StatusCode::FORBIDDEN, "Only admins may authorize profiles.");
    }
    begin(&web, &name, None, viewer.identity)
}

/// Sends the browser to the provider to authorize `name` (for the connection `subject`
/// of a template profile), with the flow sealed in a cookie only the callback receives.
pub(super) fn begin(
    web: &Web,
    name: &str,
    subject: Option<String>,
    by: Option<String>,
) -> Response {
    let slot = web.cache.slot(name);
    let Some((profile, authorize)) = slot
        .as_ref()
        .map(|s| s.profile())
        .filter(|p| web.hosted(p) && p.template == subject.is_some())
        .and_then(|p| p.authorize.as_ref().map(|a| (p, a)))
    else {
        return refused(
            StatusCode::NOT_FOUND,
            &format!(
                "No profile here can be authorized as <code>{}</code>{}: it must use <code>grant: refresh_token</code> with <code>redirect_uri: {}</code>{}.",
                html::Text(name),
                if subject.is_some() {
                    " with a subject"
                } else {
                    ""
                },
                html::Text(&web.callback_url()),
                if subject.is_some() {
                    " and <code>template: true</code>"
                } else {
                    " and not be a template"
                },
            ),
        );
    };
    let request = match Request::new(profile, authorize) {
        Ok(request) => request,
        Err(error) => {
            tracing::error!(%error, "cannot start an authorization");
            return refused(
                StatusCode::INTERNAL_SERVER_ERROR,
                "Cannot start an authorization here.",
            );
        }
    };
    let (state, verifier) = request.parts();
    let flow = Flow {
        profile: profile.name.to_string(),
        subject,
        state: state.to_owned(),
        verifier: verifier.expose().to_owned(),
        by,
    };
    let sealed = web.keys.seal(FLOW, &flow, FLOW_TTL);
    tracing::info!(profile = %profile.name, connection = flow.subject.is_some(), by = flow.by.as_deref().unwrap_or("anonymous"), "authorization started from the admin web");
    see_other(
        request.url.as_str(),
        Some(web.cookie(FLOW, &sealed, CALLBACK_PATH, FLOW_TTL)),
    )
}

/// `GET /oauth/callback`: the provider sends the person back.
pub(super) async fn callback(
    State(web): State<Arc<Web>>,
    headers: HeaderMap,
    RawQuery(query): RawQuery,
) -> Response {
    let mut response = finish(&web, &headers, query.as_deref().unwrap_or_default()).await;
    // Whatever happened, this browser's flow is over.
    if let Ok(clear) = HeaderValue::try_from(web.clear(FLOW, CALLBACK_PATH)) {
        response.headers_mut().append(header::SET_COOKIE, clear);
    }
    response
}

async fn finish(web: &Web, headers: &HeaderMap, query: &str) -> Response {
    if !web.served {
        return web.refuse(super::Denied::NotServed, headers);
    }
    if query.len() > MAX_QUERY {
        return refused(
            StatusCode::URI_TOO_LONG,
            "The redirect is too long to be an authorization.",
        );
    }
    let Some(flow) = cookie(headers, FLOW).and_then(|sealed| web.keys.open::<Flow>(FLOW, sealed))
    else {
        // Also a provider's error for a flow that this browser did not start: nothing of
        // the query is shown then.
        return refused(
            StatusCode::BAD_REQUEST,
            "This browser has no authorization in progress (it expired, was started in another browser, or was already completed). Start again from the page.",
        );
    };
    let slot = web.cache.slot(&flow.profile);
    let Some((profile, authorize)) = slot
        .as_ref()
        .map(|s| s.profile())
        .filter(|p| web.hosted(p) && p.template == flow.subject.is_some())
        .and_then(|p| p.authorize.as_ref().map(|a| (p, a)))
    else {
        return refused(
            StatusCode::CONFLICT,
            "The profile being authorized is no longer configured for the admin page.",
        );
    };
    let request = Request::resume(authorize, flow.state.clone(), Secret::new(flow.verifier));
    // Parsing the listener's own base URL with a query does not fail.
    let redirect = match Url::parse(&format!("{}?{query}", web.callback_url())) {
        Ok(url) => url,
        Err(_) => return refused(StatusCode::BAD_REQUEST, "The redirect is not a URL."),
    };
    let code = match request.code_from(&redirect) {
        Ok(code) => code,
        Err(AuthorizeError::Redirect(reason)) => {
            tracing::warn!(profile = %profile.name, "authorization refused at the callback: a provider error or a foreign state");
            return refused(StatusCode::BAD_REQUEST, &html::shortened(&reason, 400));
        }
        Err(error) => {
            return refused(
                StatusCode::BAD_REQUEST,
                &html::shortened(&error.to_string(), 400),
            );
        }
    };
    if let Err(reason) = web.claim_state(&flow.state, FLOW_TTL).await {
        tracing::warn!(profile = %profile.name, "{reason}");
        return refused(StatusCode::BAD_REQUEST, &html::escape(reason));
    }
    let stored = match authorize::exchange(&web.idp, profile, authorize, &request, &code).await {
        Ok((refresh_token, scope)) => web
            .cache
            .authorized(&profile.name, flow.subject.as_deref(), refresh_token, scope)
            .await
            .map_err(|e| e.to_string()),
        Err(error) => Err(error.to_string()),
    };
    if let Err(error) = stored {
        tracing::warn!(profile = %profile.name, %error, "authorization from the admin page failed");
        return refused(
            StatusCode::BAD_GATEWAY,
            &format!(
                "Authorizing <code>{}</code> failed: {}",
                html::Text(&profile.name),
                html::shortened(&error, 400)
            ),
        );
    }
    tracing::info!(profile = %profile.name, connection = flow.subject.is_some(), by = flow.by.as_deref().unwrap_or("connect link"), "authorized from the admin web");
    if let Some(subject) = &flow.subject {
        // The person at a connect link is no admin: their page is this one.
        let body = format!(
            "<h1>Connected</h1>\n<p id=\"connected\">Connected <strong>{}</strong> to <code>{}</code>. You can close this window.</p>\n",
            html::Text(subject),
            html::Text(&profile.name)
        );
        return html_response(StatusCode::OK, html::page("Connected", &body));
    }
    let notice = format!("Authorized profile {}.", profile.name);
    let sealed = web.keys.seal(NOTICE, &notice, Duration::from_secs(60));
    see_other(
        "/",
        Some(web.cookie(NOTICE, &sealed, "/", Duration::from_secs(60))),
    )
}

/// A plain page that says why, its message already HTML.
fn refused(status: StatusCode, message_html: &str) -> Response {
    html_response(status, html::message("Not authorized", message_html)).into_response()
}
