//! Reading a token endpoint's answer (RFC 6749 §5.1, §5.2) as providers really send it:
//! `expires_in` as a number or a string or not at all, `scope: null`, extra fields, HTML
//! error pages, `200 OK` with an error body.

use std::time::{Duration, SystemTime, UNIX_EPOCH};

use base64::{Engine as _, engine::general_purpose::URL_SAFE_NO_PAD};
use serde_json::{Map, Value};

use super::{
    IdpError, is_transient_status,
    redact::{Redactor, is_token, media_type},
};
use crate::{
    config::{MIN_LIFETIME, Profile},
    secret::Secret,
};

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

/// The largest access token passed on. Real ones are a few KiB (an Entra ID JWT with
/// group claims is about 8 KiB); callers send it in a header, which servers cap far lower.
pub(crate) const MAX_ACCESS_TOKEN_BYTES: usize = 64 * 1024;

/// The longest `token_type`: the registered ones (`Bearer`, `DPoP`, `N_A`) are a few
/// characters, and it is sent in the caller's `Authorization` header.
const MAX_TOKEN_TYPE_BYTES: usize = 64;

/// Reads an answer. `redactor` knows the values that must not appear in an error even if
/// the provider echoes them.
pub(super) fn parse(
    answer: Answer<'_>,
    profile: &Profile,
    redactor: &Redactor,
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
            .map(|d| redactor.excerpt(d));
        return Err(match oauth_error {
            Some(error)
                if !is_transient_status(answer.status) && !TRANSIENT_ERRORS.contains(&error) =>
            {
                IdpError::Rejected {
                    status: answer.status,
                    error: redactor.excerpt(error),
                    description,
                }
            }
            error => IdpError::Status {
                status: answer.status,
                content_type: if json.is_some() {
                    None
                } else {
                    answer.content_type.as_deref().map(media_type)
                },
                error: error.map(|e| redactor.excerpt(e)),
                retry_after: answer.retry_after,
            },
        });
    }

    let Some(map) = json else {
        return Err(IdpError::Malformed(format!(
            "the body is not a JSON object (content type {})",
            answer
                .content_type
                .as_deref()
                .map_or("not given".into(), media_type)
        )));
    };
    let access_token = match map.get("access_token") {
        Some(Value::String(token)) if !token.is_empty() => checked_access_token(token)?,
        _ => return Err(IdpError::Malformed("no access_token string".into())),
    };
    let token_type = match map.get("token_type").and_then(Value::as_str) {
        None => "Bearer".to_owned(),
        Some(t) if t.eq_ignore_ascii_case("bearer") => "Bearer".to_owned(),
        Some(t) if t.len() <= MAX_TOKEN_TYPE_BYTES && is_token(t) => t.to_owned(),
        Some(_) => {
            return Err(IdpError::Malformed(format!(
                "the token_type is not 1-{MAX_TOKEN_TYPE_BYTES} token characters \
                 (RFC 9110 §5.6.2), so it cannot go into an Authorization header"
            )));
        }
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
    // Refused rather than used: the profile then backs off, where a token this short would
    // have the refresher asking again at once.
    if lifetime < MIN_LIFETIME {
        return Err(IdpError::Malformed(format!(
            "the token lives {lifetime:?}, less than the {MIN_LIFETIME:?} tokenvend needs \
             to hand it out and replace it in time"
        )));
    }
    // A provider cannot make a token live longer in tokenvend than the profile allows: a
    // century-long `expires_in` would otherwise serve one token, revoked or not, forever.
    let (lifetime, expires_at) = if lifetime > profile.max_lifetime {
        (profile.max_lifetime, answer.sent_at + profile.max_lifetime)
    } else {
        (lifetime, expires_at)
    };
    // Entra ID asks to come back at half the lifetime; an earlier `refresh_in` would let a
    // provider set tokenvend asking again and again, so it is taken no earlier than that.
    let refresh_in = seconds(&map, "refresh_in")
        .filter(|r| *r < lifetime)
        .map(|r| r.max(lifetime / 2));

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

/// An access token that can go into an HTTP header as it is: visible ASCII only (no
/// CR/LF to forge a header line, no space to end the credential), and bounded in size.
fn checked_access_token(token: &str) -> Result<Secret, IdpError> {
    if token.len() > MAX_ACCESS_TOKEN_BYTES {
        return Err(IdpError::Malformed(format!(
            "the access_token is {} bytes, more than the {MAX_ACCESS_TOKEN_BYTES} accepted",
            token.len()
        )));
    }
    if !token.bytes().all(|b| b.is_ascii_graphic()) {
        return Err(IdpError::Malformed(
            "the access_token holds characters an HTTP header cannot carry (control \
             characters, spaces or non-ASCII)"
                .into(),
        ));
    }
    Ok(Secret::new(token))
}
