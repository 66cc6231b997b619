//! Connections in the admin web: the signed link a product hands to its user
//! (`/connect/{profile}?subject=…&expires=…&sig=…`, the signature being the permission),
//! the list of a template profile's connections, and their revocation by an admin.

use std::{fmt::Write as _, sync::Arc, time::Duration};

use axum::{
    body::Bytes,
    extract::{Path, Query, State},
    http::{HeaderMap, StatusCode},
    response::Response,
};
use serde::Deserialize;
use url::Url;

use super::{
    CertIdentity, Web, csrf_ok, flow, form_field, html, html_response, see_other, state_text,
};
use crate::connections::check_subject;

/// The longest a connect link may live.
pub(crate) const MAX_LINK_TTL: Duration = Duration::from_secs(24 * 3600);
/// How long a connect link lives unless asked otherwise.
pub(crate) const DEFAULT_LINK_TTL: Duration = Duration::from_secs(15 * 60);
/// Connections listed on one page.
const PAGE: usize = 200;

/// Why a connect link cannot be made.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub(crate) enum LinkError {
    /// `public_url` or `session_key` is missing: a link would not work for the person.
    #[error(
        "connect links need `server.admin.public_url` and `server.admin.session_key` configured"
    )]
    NotConfigured,
    /// The profile is no template authorized through this listener.
    #[error("{0}")]
    Profile(String),
    /// The subject or the time to live cannot be used.
    #[error("{0}")]
    Invalid(String),
}

impl Web {
    /// A signed link that lets whoever opens it authorize the connection `subject` of the
    /// template profile `profile`, until `ttl` from now; and when it expires (seconds
    /// since the Unix epoch).
    pub(crate) fn connect_link(
        &self,
        profile: &str,
        subject: &str,
        ttl: Option<Duration>,
    ) -> Result<(Url, u64), LinkError> {
        if self.settings.public_url.is_none() || self.settings.session_key.is_none() {
            return Err(LinkError::NotConfigured);
        }
        let ttl = ttl.unwrap_or(DEFAULT_LINK_TTL);
        if ttl.is_zero() || ttl > MAX_LINK_TTL {
            return Err(LinkError::Invalid(
                "`ttl_seconds` must be between 1 second and 24 hours".into(),
            ));
        }
        check_subject(subject).map_err(|e| LinkError::Invalid(e.into()))?;
        let slot = self
            .cache
            .slot(profile)
            .ok_or_else(|| LinkError::Profile(format!("no profile named `{profile}`")))?;
        if !(slot.profile().template && self.hosted(slot.profile())) {
            return Err(LinkError::Profile(format!(
                "profile `{profile}` is not a template (`template: true`) whose `redirect_uri` is `{}`",
                self.callback_url()
            )));
        }
        let expires = super::seal::unix_now() + ttl.as_secs();
        let mut url = Url::parse(&format!(
            "{}/connect/{profile}",
            self.base.as_str().trim_end_matches('/')
        ))
        .map_err(|e| LinkError::Invalid(e.to_string()))?;
        url.query_pairs_mut()
            .append_pair("subject", subject)
            .append_pair("expires", &expires.to_string())
            .append_pair("sig", &self.keys.sign_link(profile, subject, expires));
        Ok((url, expires))
    }
}

#[derive(Deserialize)]
pub(super) struct LinkQuery {
    subject: Option<String>,
    expires: Option<String>,
    sig: Option<String>,
}

/// `GET /connect/{profile}`: a person follows a connect link to authorize their
/// connection. No login: the signature is the permission, so anything wrong with it is
/// one plain refusal that says nothing of what was wrong.
pub(super) async fn connect(
    State(web): State<Arc<Web>>,
    Path(profile): Path<String>,
    Query(query): Query<LinkQuery>,
) -> Response {
    let now = super::seal::unix_now();
    let valid = match (&query.subject, &query.expires, &query.sig) {
        (Some(subject), Some(expires), Some(sig)) => expires
            .parse::<u64>()
            .ok()
            .filter(|e| *e > now && *e <= now + MAX_LINK_TTL.as_secs())
            .is_some_and(|e| web.keys.link_signed(&profile, subject, e, sig)),
        _ => false,
    };
    let Some(subject) = query.subject.filter(|_| valid) else {
        return html_response(
            StatusCode::FORBIDDEN,
            html::message(
                "Link not valid",
                "This link has expired or is not valid. Ask for a new one.",
            ),
        );
    };
    flow::begin(&web, &profile, Some(subject), None)
}

#[derive(Deserialize)]
pub(super) struct ListQuery {
    after: Option<String>,
}

/// `GET /connections/{profile}`: a template profile's connections.
pub(super) async fn list(
    State(web): State<Arc<Web>>,
    Path(profile): Path<String>,
    Query(query): Query<ListQuery>,
    headers: HeaderMap,
    cert: CertIdentity,
) -> Response {
    let viewer = match web.viewer(&headers, cert.0.as_deref()) {
        Ok(viewer) => viewer,
        Err(denied) => return web.refuse(denied, &headers),
    };
    let listed = web
        .cache
        .list_connections(&profile, query.after.as_deref(), PAGE)
        .await;
    let (connections, next) = match listed {
        Ok(page) => page,
        Err(error) => {
            return html_response(
                StatusCode::NOT_FOUND,
                html::message("No connections", &html::shortened(&error.to_string(), 300)),
            );
        }
    };
    let notice = super::cookie(&headers, flow::NOTICE)
        .and_then(|sealed| web.keys.open::<String>(flow::NOTICE, sealed));
    let mut body = String::new();
    if let Some(notice) = &notice {
        let _ = writeln!(body, "<p id=\"notice\">{}</p>", html::Text(notice));
    }
    let _ = writeln!(
        body,
        "<h1>Connections of <code>{}</code></h1>\n<table id=\"connections\">\n<thead><tr><th>Subject</th><th>State</th><th>Time left</th><th>Authorized</th><th>Last written</th><th>Last error</th><th></th></tr></thead>\n<tbody>",
        html::Text(&profile)
    );
    let now = std::time::SystemTime::now();
    for connection in &connections {
        let subject = &connection.stored.subject;
        let status = &connection.status;
        let state = state_text(status.state);
        let left = status
            .expires_at
            .and_then(|at| at.duration_since(now).ok())
            .map(html::duration)
            .unwrap_or_default();
        let when = |t: Option<std::time::SystemTime>| t.map(html::moment).unwrap_or_default();
        let error = status
            .last_error
            .as_deref()
            .map(|e| html::shortened(e, 300))
            .unwrap_or_default();
        let action = match (&viewer.csrf, viewer.admin) {
            (Some(csrf), true) => format!(
                "<form method=\"post\" action=\"/connections/{}/revoke\"><input type=\"hidden\" name=\"csrf\" value=\"{}\"><input type=\"hidden\" name=\"subject\" value=\"{}\"><button type=\"submit\">Revoke</button></form>",
                html::Text(&profile),
                html::Text(csrf),
                html::Text(subject)
            ),
            _ => String::new(),
        };
        let _ = writeln!(
            body,
            "<tr data-subject=\"{subject}\" data-state=\"{state_attr}\"><td class=\"subject\">{subject}</td><td class=\"state\">{state}</td><td class=\"left\">{left}</td><td class=\"created\">{created}</td><td class=\"updated\">{updated}</td><td class=\"error\">{error}</td><td class=\"actions\">{action}</td></tr>",
            subject = html::Text(subject),
            state_attr = state.replace(' ', "-"),
            created = when(connection.stored.created_at),
            updated = when(connection.stored.updated_at),
        );
    }
    body.push_str("</tbody>\n</table>\n");
    if let Some(after) = next {
        let mut next = Url::parse("http://x/").expect("a constant URL");
        next.query_pairs_mut().append_pair("after", &after);
        let _ = writeln!(
            body,
            "<p><a href=\"/connections/{}?{}\">Next</a></p>",
            html::Text(&profile),
            html::Text(next.query().unwrap_or_default())
        );
    }
    let mut response = html_response(StatusCode::OK, html::page("Connections", &body));
    let cookies = viewer
        .set_cookie
        .into_iter()
        .chain(notice.map(|_| web.clear(flow::NOTICE, "/")));
    for set in cookies {
        if let Ok(value) = axum::http::HeaderValue::try_from(set) {
            response
                .headers_mut()
                .append(axum::http::header::SET_COOKIE, value);
        }
    }
    response
}

/// `POST /connections/{profile}/revoke`: an admin deletes a connection.
pub(super) async fn revoke(
    State(web): State<Arc<Web>>,
    Path(profile): Path<String>,
    headers: HeaderMap,
    cert: CertIdentity,
    form: Bytes,
) -> Response {
    let viewer = match web.viewer(&headers, cert.0.as_deref()) {
        Ok(viewer) => viewer,
        Err(denied) => return web.refuse(denied, &headers),
    };
    if !csrf_ok(&viewer, form_field(&form, "csrf").as_deref()) || !viewer.admin {
        return html_response(
            StatusCode::FORBIDDEN,
            html::message(
                "Not revoked",
                "Only admins may revoke, from a page of this site: reload it and try again.",
            ),
        );
    }
    let Some(subject) = form_field(&form, "subject") else {
        return html_response(
            StatusCode::BAD_REQUEST,
            html::message("Not revoked", "The form names no connection."),
        );
    };
    // As RevokeConnection does: dropped here and on every replica, then revoked at the
    // provider when it has a revocation endpoint (best effort, logged).
    match web.cache.revoke_connection(&profile, &subject).await {
        Ok(token) => {
            web.cache.revoke_at_provider(&profile, &token).await;
        }
        Err(error) => {
            return html_response(
                StatusCode::BAD_REQUEST,
                html::message("Not revoked", &html::shortened(&error.to_string(), 300)),
            );
        }
    }
    tracing::info!(%profile, by = viewer.identity.as_deref().unwrap_or("anonymous"), "connection revoked from the admin web");
    let notice = format!("Revoked the connection {subject}.");
    let sealed = web
        .keys
        .seal(flow::NOTICE, &notice, Duration::from_secs(60));
    see_other(
        &format!("/connections/{profile}"),
        Some(web.cookie(flow::NOTICE, &sealed, "/", Duration::from_secs(60))),
    )
}
