//! Reading a token endpoint's answer (RFC 6749 §5.1, §5.2) as providers really send it:
//! `expires_in` as a number or a string or not at all, `scope: null`, extra fields, HTML
//! error pages, `200 OK` with an error body.

use std::time::{Duration, SystemTime, UNIX_EPOCH};

use base64::{Engine as _, engine::general_purpose::URL_SAFE_NO_PAD};
use serde_json::{Map, Value};

use super::{IdpError, is_transient_status};
use crate::{config::Profile, secret::Secret};

/// A token as the provider issued it.
#[derive(Debug)]
pub(crate) struct IssuedToken {
    /// The access token.
    pub access_token: Secret,
    /// `Bearer`, or the provider's type if it is another.
    pub token_type: String,
    /// How long the token lives, counted from when the request was sent.
    pub lifetime: Duration,
    /// How long ago it was issued: zero from the provider, more for a token another
    /// replica obtained and shared.
    pub age: Duration,
    /// When the token expires.
    pub expires_at: SystemTime,
    /// When the provider asks to be asked again (Entra ID's `refresh_in`), if it does.
    pub refresh_in: Option<Duration>,
    /// The granted scopes, or the requested ones when the provider does not say.
    pub scopes: Vec<String>,
    /// A new refresh token, when the provider issued (rotated) one.
    pub refresh_token: Option<Secret>,
    /// The provider's `scope`, as it wrote it, if it did.
    pub granted_scope: Option<String>,
}

/// What came back from the token endpoint.
pub(super) struct Answer<'a> {
    pub(super) status: u16,
    pub(super) content_type: Option<String>,
    pub(super) retry_after: Option<Duration>,
    pub(super) body: &'a [u8],
    pub(super) sent_at: SystemTime,
}

/// OAuth error codes that mean "try again later" rather than "fix the configuration".
const TRANSIENT_ERRORS: &[&str] = &["temporarily_unavailable", "server_error", "slow_down"];

/// The longest error text passed on to callers.
const MAX_DETAIL_CHARS: usize = 300;

/// Reads an answer. `secrets` are values that must not appear in an error even if the
/// provider echoes them.
pub(super) fn parse(
    answer: Answer<'_>,
    profile: &Profile,
    secrets: &[&str],
) -> Result<IssuedToken, IdpError> {
    // Parsing into a `Value` first means a type mismatch cannot put part of the body
    // (a token) into an error message, as serde's own messages would.
    let json = match serde_json::from_slice::<Value>(answer.body) {
        Ok(Value::Object(map)) => Some(map),
        _ => None,
    };
    let has_token = json
        .as_ref()
        .is_some_and(|m| m.contains_key("access_token"));
    let oauth_error = json
        .as_ref()
        .and_then(|m| m.get("error"))
        .and_then(Value::as_str);

    if !(200..300).contains(&answer.status) || (oauth_error.is_some() && !has_token) {
        let description = json
            .as_ref()
            .and_then(|m| m.get("error_description"))
            .and_then(Value::as_str)
            .map(|d| clean(d, secrets));
        return Err(match oauth_error {
            Some(error)
                if !is_transient_status(answer.status) && !TRANSIENT_ERRORS.contains(&error) =>
            {
                IdpError::Rejected {
                    status: answer.status,
                    error: clean(error, secrets),
                    description,
                }
            }
            error => IdpError::Status {
                status: answer.status,
                content_type: if json.is_some() {
                    None
                } else {
                    answer.content_type.map(|t| clean(&t, secrets))
                },
                error: error.map(|e| clean(e, secrets)),
                retry_after: answer.retry_after,
            },
        });
    }

    let Some(map) = json else {
        return Err(IdpError::Malformed(format!(
            "the body is not a JSON object (content type {})",
            answer.content_type.as_deref().unwrap_or("not given")
        )));
    };
    let access_token = match map.get("access_token") {
        Some(Value::String(token)) if !token.is_empty() => Secret::new(token.as_str()),
        _ => return Err(IdpError::Malformed("no access_token string".into())),
    };
    let token_type = match map.get("token_type").and_then(Value::as_str) {
        None => "Bearer".to_owned(),
        Some(t) if t.eq_ignore_ascii_case("bearer") => "Bearer".to_owned(),
        Some(t) => clean(t, secrets),
    };

    let (lifetime, expires_at) = match seconds(&map, "expires_in") {
        Some(lifetime) => (lifetime, answer.sent_at + lifetime),
        None => match jwt_expiry(access_token.expose()) {
            Some(expires_at) => {
                let lifetime = expires_at.duration_since(answer.sent_at).map_err(|_| {
                    IdpError::Malformed(
                        "the token's JWT `exp` is in the past (is the clock right?)".into(),
                    )
                })?;
                (lifetime, expires_at)
            }
            None => (
                profile.default_lifetime,
                answer.sent_at + profile.default_lifetime,
            ),
        },
    };
    if lifetime.is_zero() {
        return Err(IdpError::Malformed("the token has no lifetime left".into()));
    }
    let refresh_in = seconds(&map, "refresh_in").filter(|r| *r < lifetime);

    let scopes = match map.get("scope") {
        Some(Value::String(scope)) => scope.split_whitespace().map(str::to_owned).collect(),
        // Not RFC 6749, but some providers send a list.
        Some(Value::Array(items)) => items
            .iter()
            .filter_map(Value::as_str)
            .map(str::to_owned)
            .collect(),
        _ => profile.scopes.clone(),
    };

    let granted_scope = match map.get("scope") {
        Some(Value::String(scope)) if !scope.trim().is_empty() => Some(scope.trim().to_owned()),
        _ => None,
    };
    let refresh_token = match map.get("refresh_token") {
        Some(Value::String(token)) if !token.is_empty() => Some(Secret::new(token.as_str())),
        _ => None,
    };

    Ok(IssuedToken {
        access_token,
        token_type,
        lifetime,
        age: Duration::ZERO,
        expires_at,
        refresh_in,
        scopes,
        refresh_token,
        granted_scope,
    })
}

/// A positive number of seconds, given as a JSON number or a numeric string.
fn seconds(map: &Map<String, Value>, key: &str) -> Option<Duration> {
    let value = match map.get(key)? {
        Value::Number(n) => n.as_f64()?,
        Value::String(s) => s.trim().parse::<f64>().ok()?,
        _ => return None,
    };
    // Bounds keep `Duration` arithmetic from overflowing on absurd values.
    (value > 0.0 && value < 1e10).then(|| Duration::from_secs_f64(value))
}

/// The `exp` claim of a JWT access token, if the token is a JWT with one.
fn jwt_expiry(token: &str) -> Option<SystemTime> {
    let mut parts = token.split('.');
    let (_, payload, _, None) = (parts.next()?, parts.next()?, parts.next()?, parts.next()) else {
        return None;
    };
    let payload = URL_SAFE_NO_PAD.decode(payload.trim_end_matches('=')).ok()?;
    let claims: Value = serde_json::from_slice(&payload).ok()?;
    let exp = claims.get("exp")?.as_f64()?;
    (exp > 0.0 && exp < 1e11).then(|| UNIX_EPOCH + Duration::from_secs_f64(exp))
}

/// Makes provider text safe to pass on: no secret it may echo, no control characters,
/// not too long.
fn clean(text: &str, secrets: &[&str]) -> String {
    let mut text = text.to_owned();
    for secret in secrets.iter().filter(|s| !s.is_empty()) {
        text = text.replace(secret, "<redacted>");
    }
    let mut cleaned: String = text
        .chars()
        .map(|c| if c.is_control() { ' ' } else { c })
        .take(MAX_DETAIL_CHARS)
        .collect();
    if text.chars().count() > MAX_DETAIL_CHARS {
        cleaned.push('…');
    }
    cleaned
}
