//! `profiles.<name>`: the YAML of one profile, validated concern by concern (endpoint,
//! client authentication, grant, request shape, headers, timing, retry, callers). Each
//! concern reports its own error, so one pass names every broken key of a profile.

use std::{collections::BTreeMap, sync::Arc, time::Duration};

use http::HeaderName;
use serde::Deserialize;
use url::Url;

use super::{
    AuthMethod, Authorize, ClientAuth, ConfigError, Dur, Endpoint, Found, Grant, JwtBearer,
    MIN_LIFETIME, Pattern, PerCall, PrivateKeyJwt, Profile, RefreshAhead, Retry, SigningAlgorithm,
    TlsClientAuth, nonzero, parse_endpoint_url, secret_source,
};
use crate::secret::{RawSecretSource, SecretSource};

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
pub(super) struct RawProfile {
    token_url: Option<String>,
    issuer: Option<String>,
    grant: Option<Grant>,
    client_id: Option<String>,
    client_secret: Option<RawSecretSource>,
    auth_method: Option<AuthMethod>,
    private_key: Option<RawSecretSource>,
    signing_alg: Option<SigningAlgorithm>,
    key_id: Option<String>,
    certificate: Option<RawSecretSource>,
    client_assertion: Option<RawSecretSource>,
    client_certificate: Option<RawSecretSource>,
    client_key: Option<RawSecretSource>,
    provider_ca: Option<std::path::PathBuf>,
    assertion_subject: Option<String>,
    assertion_audience: Option<String>,
    refresh_token: Option<RawSecretSource>,
    authorize_url: Option<String>,
    redirect_uri: Option<String>,
    revocation_url: Option<String>,
    idle_refresh: Option<Dur>,
    #[serde(default)]
    scopes: Vec<String>,
    audience: Option<String>,
    resource: Option<String>,
    allowed_scopes: Option<Vec<String>>,
    allowed_audiences: Option<Vec<String>>,
    allowed_resources: Option<Vec<String>>,
    #[serde(default)]
    params: BTreeMap<String, String>,
    #[serde(default)]
    headers: BTreeMap<String, RawSecretSource>,
    refresh_ahead: Option<RawRefreshAhead>,
    min_ttl: Option<Dur>,
    #[serde(alias = "default_expires_in")]
    default_lifetime: Option<Dur>,
    max_lifetime: Option<Dur>,
    rejected_token_min_interval: Option<Dur>,
    timeout: Option<Dur>,
    #[serde(default)]
    warm_up: bool,
    #[serde(default)]
    template: bool,
    retry: Option<RawRetry>,
    allow: Option<Vec<String>>,
    idp_requests_per_minute: Option<u32>,
}

/// `refresh_ahead: 0.8` (a fraction of the lifetime) or `refresh_ahead: 5m` (before expiry).
#[derive(Deserialize)]
#[serde(untagged)]
enum RawRefreshAhead {
    Fraction(f64),
    Before(String),
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RawRetry {
    initial: Option<Dur>,
    max: Option<Dur>,
}

/// Form fields that tokenvend sets itself; a profile cannot override them through `params`.
const RESERVED_PARAMS: &[&str] = &[
    "grant_type",
    "client_id",
    "client_secret",
    "client_assertion",
    "client_assertion_type",
    "scope",
    "refresh_token",
    "code",
    "code_verifier",
    "redirect_uri",
    "audience",
    "resource",
];

/// Names keys of one profile.
struct Keys<'a>(&'a str);

impl Keys<'_> {
    fn key(&self, k: &str) -> String {
        format!("profiles.{}.{k}", self.0)
    }

    fn err(&self, k: &str, message: impl Into<String>) -> ConfigError {
        ConfigError::new(self.key(k), message)
    }
}

impl RawProfile {
    pub(super) fn validate(self, name: &str) -> Result<Profile, Vec<ConfigError>> {
        if name.is_empty()
            || name.len() > 128
            || !name
                .bytes()
                .all(|b| b.is_ascii_alphanumeric() || b"-_.".contains(&b))
        {
            return Err(vec![ConfigError::new(
                format!("profiles.{name}"),
                "a profile name is 1-128 characters of letters, digits, `-`, `_` and `.`",
            )]);
        }
        let keys = Keys(name);
        let mut found = Found::default();
        let endpoint = found.take(endpoint(&keys, self.token_url, self.issuer));
        let grant = self.grant.unwrap_or(Grant::ClientCredentials);
        let mut key = KeyKeys {
            private_key: self.private_key,
            signing_alg: self.signing_alg,
            key_id: self.key_id,
            certificate: self.certificate,
        };
        // The key of a `jwt_bearer` profile signs the grant's assertion; the client
        // authenticates (if at all) by other means.
        let jwt_bearer = if grant == Grant::JwtBearer {
            let bearer = found.take(jwt_bearer(
                &keys,
                std::mem::take(&mut key),
                self.assertion_subject,
                self.assertion_audience,
            ));
            Some(bearer)
        } else {
            for (k, given) in [
                ("assertion_subject", self.assertion_subject.is_some()),
                ("assertion_audience", self.assertion_audience.is_some()),
            ] {
                if given {
                    found
                        .0
                        .push(keys.err(k, "is only used with `grant: jwt_bearer`"));
                }
            }
            None
        };
        let client_auth = found.take(client_auth(
            &keys,
            grant,
            ClientAuthKeys {
                auth_method: self.auth_method,
                client_secret: self.client_secret,
                key,
                client_assertion: self.client_assertion,
                client_certificate: self.client_certificate,
                client_key: self.client_key,
            },
        ));
        let client_id = found.take(match self.client_id {
            Some(id) if !id.is_empty() => Ok(id),
            // The workload's assertion names the client; Keycloak refuses a `client_id`
            // that differs from its `sub`, so none is sent unless one is configured.
            None if matches!(client_auth, Some(ClientAuth::Assertion(_))) => Ok(String::new()),
            _ => Err(keys.err("client_id", "is required")),
        });
        let template_flags = (
            self.refresh_token.is_some(),
            self.authorize_url.is_some() && self.redirect_uri.is_some(),
        );
        if self.template {
            found.take(template(&keys, grant, template_flags, self.warm_up));
        }
        let chain = found.take(chain(
            &keys,
            grant,
            self.refresh_token,
            (self.authorize_url, self.redirect_uri, self.revocation_url),
        ));
        let shape = found.take(request_shape(&keys, &self.scopes, &self.params));
        let per_call = found.take(per_call(
            &keys,
            grant,
            self.allowed_scopes,
            self.allowed_audiences,
            self.allowed_resources,
        ));
        let headers = found.take(headers(&keys, self.headers));
        let timing = found.take(timing(
            &keys,
            RawTiming {
                refresh_ahead: self.refresh_ahead,
                min_ttl: self.min_ttl,
                default_lifetime: self.default_lifetime,
                max_lifetime: self.max_lifetime,
                rejected_token_min_interval: self.rejected_token_min_interval,
                timeout: self.timeout,
                idle_refresh: self.idle_refresh,
                idp_requests_per_minute: self.idp_requests_per_minute,
            },
        ));
        let retry = found.take(retry(&keys, self.retry));
        if grant == Grant::TokenExchange && self.warm_up {
            found.0.push(keys.err(
                "warm_up",
                "is not offered with `grant: token_exchange`: every token is for a caller's subject",
            ));
        }
        let allow = found.take(allow(&keys, self.allow));
        let jwt_bearer = match jwt_bearer {
            None => Some(None),
            Some(Some(bearer)) => Some(Some(Box::new(bearer))),
            Some(None) => None,
        };
        let (
            Some(per_call),
            Some(jwt_bearer),
            Some(endpoint),
            Some(client_id),
            Some(client_auth),
            Some((refresh_token, authorize)),
            Some(headers),
            Some(timing),
            Some(retry),
            Some(allow),
            Some(()),
        ) = (
            per_call,
            jwt_bearer,
            endpoint,
            client_id,
            client_auth,
            chain,
            headers,
            timing,
            retry,
            allow,
            shape,
        )
        else {
            return Err(found.0);
        };
        // Errors of keys that build nothing (the assertion keys of another grant).
        if !found.0.is_empty() {
            return Err(found.0);
        }
        if authorize.is_some() && client_id.is_empty() {
            // The authorization request names the client; there is no assertion in it.
            return Err(vec![
                keys.err("client_id", "is required with `authorize_url`"),
            ]);
        }
        Ok(Profile {
            name: name.into(),
            grant,
            endpoint,
            client_id,
            client_auth,
            refresh_token,
            jwt_bearer,
            provider_ca: self.provider_ca,
            authorize,
            scopes: self.scopes,
            audience: self.audience.filter(|a| !a.is_empty()),
            resource: self.resource.filter(|r| !r.is_empty()),
            params: self.params,
            per_call,
            headers,
            refresh_ahead: timing.refresh_ahead,
            min_ttl: timing.min_ttl,
            default_lifetime: timing.default_lifetime,
            max_lifetime: timing.max_lifetime,
            rejected_token_min_interval: timing.rejected_token_min_interval,
            timeout: timing.timeout,
            warm_up: self.warm_up,
            template: self.template,
            idle_refresh: timing.idle_refresh,
            retry,
            allow,
            idp_requests_per_minute: timing.idp_requests_per_minute,
        })
    }
}

fn endpoint(
    keys: &Keys<'_>,
    token_url: Option<String>,
    issuer: Option<String>,
) -> Result<Endpoint, ConfigError> {
    match (token_url, issuer) {
        (Some(url), None) => parse_endpoint_url(&url)
            .map(Endpoint::TokenUrl)
            .map_err(|e| keys.err("token_url", e.to_string())),
        (None, Some(issuer)) => parse_endpoint_url(&issuer)
            .map(Endpoint::Issuer)
            .map_err(|e| keys.err("issuer", e.to_string())),
        (Some(_), Some(_)) => Err(keys.err("issuer", "give `token_url` or `issuer`, not both")),
        (None, None) => Err(keys.err(
            "token_url",
            "is required (or `issuer`, to find it by discovery)",
        )),
    }
}

struct ClientAuthKeys {
    auth_method: Option<AuthMethod>,
    client_secret: Option<RawSecretSource>,
    key: KeyKeys,
    client_assertion: Option<RawSecretSource>,
    client_certificate: Option<RawSecretSource>,
    client_key: Option<RawSecretSource>,
}

/// A private key and its settings: for `private_key_jwt`, or for a `jwt_bearer` grant.
#[derive(Default)]
struct KeyKeys {
    private_key: Option<RawSecretSource>,
    signing_alg: Option<SigningAlgorithm>,
    key_id: Option<String>,
    certificate: Option<RawSecretSource>,
}

impl KeyKeys {
    fn uses_options(&self) -> bool {
        self.signing_alg.is_some() || self.key_id.is_some() || self.certificate.is_some()
    }

    fn into_config(
        self,
        keys: &Keys<'_>,
        private_key: SecretSource,
    ) -> Result<PrivateKeyJwt, ConfigError> {
        let certificate = self
            .certificate
            .map(|c| secret_source(c, &keys.key("certificate")))
            .transpose()?;
        Ok(PrivateKeyJwt {
            private_key,
            algorithm: self.signing_alg.unwrap_or(SigningAlgorithm::RS256),
            key_id: self.key_id.filter(|k| !k.is_empty()),
            certificate,
        })
    }
}

/// The assertion of a `jwt_bearer` grant: a key to sign it, and whom it is for.
fn jwt_bearer(
    keys: &Keys<'_>,
    mut key: KeyKeys,
    subject: Option<String>,
    audience: Option<String>,
) -> Result<JwtBearer, ConfigError> {
    let Some(private_key) = key.private_key.take() else {
        return Err(keys.err(
            "private_key",
            "is required with `grant: jwt_bearer`: it signs the grant's assertion",
        ));
    };
    let private_key = secret_source(private_key, &keys.key("private_key"))?;
    let subject = match subject {
        Some(s) if !s.is_empty() => s,
        _ => {
            return Err(keys.err(
                "assertion_subject",
                "is required with `grant: jwt_bearer`: the user or account the token is for",
            ));
        }
    };
    Ok(JwtBearer {
        key: key.into_config(keys, private_key)?,
        subject,
        audience: audience.filter(|a| !a.is_empty()),
    })
}

/// Which keys go with which `auth_method`. Whether the secrets and keys can be read and
/// used is the runtime's question (`app`), asked when the configuration is built.
fn client_auth(
    keys: &Keys<'_>,
    grant: Grant,
    raw: ClientAuthKeys,
) -> Result<ClientAuth, ConfigError> {
    let bearer = grant == Grant::JwtBearer;
    let auth_method = raw.auth_method.unwrap_or(if raw.key.private_key.is_some() {
        AuthMethod::PrivateKeyJwt
    } else if raw.client_assertion.is_some() {
        AuthMethod::ClientAssertion
    } else if bearer && raw.client_secret.is_none() {
        // Salesforce and Google take the grant's assertion as the only proof.
        AuthMethod::None
    } else {
        AuthMethod::ClientSecretPost
    });
    let method = auth_method.as_str();
    if auth_method != AuthMethod::PrivateKeyJwt && raw.key.uses_options() {
        return Err(keys.err(
            "auth_method",
            "`signing_alg`, `key_id` and `certificate` need `auth_method: private_key_jwt`",
        ));
    }
    if bearer && auth_method == AuthMethod::PrivateKeyJwt {
        return Err(keys.err(
            "auth_method",
            "`private_key_jwt` is not offered with `grant: jwt_bearer`, whose `private_key` signs the grant",
        ));
    }
    if !bearer && auth_method == AuthMethod::None {
        return Err(keys.err("auth_method", "`none` is only for `grant: jwt_bearer`"));
    }
    let tls = matches!(
        auth_method,
        AuthMethod::TlsClientAuth | AuthMethod::SelfSignedTlsClientAuth
    );
    if !tls {
        for (key, given) in [
            ("client_certificate", raw.client_certificate.is_some()),
            ("client_key", raw.client_key.is_some()),
        ] {
            if given {
                return Err(keys.err(
                    key,
                    "is only used with `auth_method: tls_client_auth` or `self_signed_tls_client_auth`",
                ));
            }
        }
    }
    // Each method takes exactly one credential; any other given is a mistake that would
    // otherwise be silently ignored.
    let secret = ("client_secret", raw.client_secret.is_some());
    let private_key = ("private_key", raw.key.private_key.is_some());
    let assertion = ("client_assertion", raw.client_assertion.is_some());
    let (wanted, unused) = match auth_method {
        AuthMethod::ClientSecretPost
        | AuthMethod::ClientSecretBasic
        | AuthMethod::ClientSecretJwt => (
            Some(("client_secret", raw.client_secret)),
            vec![private_key, assertion],
        ),
        AuthMethod::PrivateKeyJwt => (
            Some(("private_key", raw.key.private_key)),
            vec![secret, assertion],
        ),
        AuthMethod::ClientAssertion => (
            Some(("client_assertion", raw.client_assertion)),
            vec![secret, private_key],
        ),
        AuthMethod::None | AuthMethod::TlsClientAuth | AuthMethod::SelfSignedTlsClientAuth => {
            (None, vec![secret, private_key, assertion])
        }
    };
    if let Some((key, _)) = unused.iter().find(|(_, given)| *given) {
        return Err(keys.err(
            key,
            format!("is not used with `auth_method: {method}`; remove it"),
        ));
    }
    let Some((key, source)) = wanted else {
        if !tls {
            return Ok(ClientAuth::None);
        }
        let (Some(certificate), Some(key)) = (raw.client_certificate, raw.client_key) else {
            return Err(keys.err(
                "client_certificate",
                format!("and `client_key` are required with `auth_method: {method}`"),
            ));
        };
        return Ok(ClientAuth::Tls(Box::new(TlsClientAuth {
            certificate: secret_source(certificate, &keys.key("client_certificate"))?,
            key: secret_source(key, &keys.key("client_key"))?,
            self_signed: auth_method == AuthMethod::SelfSignedTlsClientAuth,
        })));
    };
    let Some(source) = source else {
        return Err(keys.err(key, format!("is required with `auth_method: {method}`")));
    };
    let source = secret_source(source, &keys.key(key))?;
    Ok(match auth_method {
        AuthMethod::ClientSecretPost => ClientAuth::SecretPost(source),
        AuthMethod::ClientSecretBasic => ClientAuth::SecretBasic(source),
        AuthMethod::ClientSecretJwt => ClientAuth::SecretJwt(source),
        AuthMethod::ClientAssertion => ClientAuth::Assertion(source),
        AuthMethod::None | AuthMethod::TlsClientAuth | AuthMethod::SelfSignedTlsClientAuth => {
            ClientAuth::None
        }
        AuthMethod::PrivateKeyJwt => ClientAuth::PrivateKeyJwt(Box::new(
            KeyKeys {
                private_key: None,
                ..raw.key
            }
            .into_config(keys, source)?,
        )),
    })
}

/// The refresh-token seed and the `tokenvend authorize` endpoints, which only a
/// `grant: refresh_token` profile has.
#[allow(clippy::type_complexity)]
fn chain(
    keys: &Keys<'_>,
    grant: Grant,
    refresh_token: Option<RawSecretSource>,
    (authorize_url, redirect_uri, revocation_url): (Option<String>, Option<String>, Option<String>),
) -> Result<(Option<SecretSource>, Option<Box<Authorize>>), ConfigError> {
    let refresh_token = refresh_token
        .map(|raw| secret_source(raw, &keys.key("refresh_token")))
        .transpose()?;
    if revocation_url.is_some() && authorize_url.is_none() {
        return Err(keys.err(
            "revocation_url",
            "is only used with `authorize_url`: it revokes the refresh tokens people authorized",
        ));
    }
    let authorize = match (authorize_url, redirect_uri) {
        (None, None) => None,
        (Some(url), Some(redirect)) => Some(Box::new(Authorize {
            authorize_url: Url::parse(&url)
                .map_err(|e| keys.err("authorize_url", format!("`{url}` is not a URL: {e}")))?,
            redirect_uri: Url::parse(&redirect)
                .map_err(|e| keys.err("redirect_uri", format!("`{redirect}` is not a URL: {e}")))?,
            revocation_url: revocation_url
                .map(|url| {
                    parse_endpoint_url(&url).map_err(|e| keys.err("revocation_url", e.to_string()))
                })
                .transpose()?,
        })),
        (Some(_), None) => return Err(keys.err("redirect_uri", "is required with `authorize_url`")),
        (None, Some(_)) => return Err(keys.err("authorize_url", "is required with `redirect_uri`")),
    };
    if grant != Grant::RefreshToken && (refresh_token.is_some() || authorize.is_some()) {
        let k = if refresh_token.is_some() {
            "refresh_token"
        } else {
            "authorize_url"
        };
        return Err(keys.err(k, "is only used with `grant: refresh_token`"));
    }
    Ok((refresh_token, authorize))
}

/// `template: true`: a profile that holds one connection per subject, each its own
/// refresh-token chain started by a person. Only a refresh-token profile can be one, with
/// the `authorize` endpoints a person approves at; a seed would be one person's token
/// for every subject, and warming up has no subject to warm.
fn template(
    keys: &Keys<'_>,
    grant: Grant,
    (seeded, authorizes): (bool, bool),
    warm_up: bool,
) -> Result<(), ConfigError> {
    if grant != Grant::RefreshToken {
        return Err(keys.err(
            "template",
            "is only offered with `grant: refresh_token`: each connection is a person's refresh token",
        ));
    }
    if !authorizes {
        return Err(keys.err(
            "template",
            "needs `authorize_url` and `redirect_uri`: each connection is started by a person authorizing",
        ));
    }
    if seeded {
        return Err(keys.err(
            "refresh_token",
            "is not used with `template: true`: each connection has its own refresh token",
        ));
    }
    if warm_up {
        return Err(keys.err(
            "warm_up",
            "is not offered with `template: true`: tokens are fetched per subject, when asked for",
        ));
    }
    Ok(())
}

/// Scopes and extra form fields.
fn request_shape(
    keys: &Keys<'_>,
    scopes: &[String],
    params: &BTreeMap<String, String>,
) -> Result<(), ConfigError> {
    if let Some(scope) = scopes.iter().find(|s| s.is_empty() || s.contains(' ')) {
        return Err(keys.err(
            "scopes",
            format!("`{scope}` is not one scope: list each scope as its own item"),
        ));
    }
    if let Some(param) = params
        .keys()
        .find(|p| RESERVED_PARAMS.contains(&p.as_str()))
    {
        return Err(keys.err(
            &format!("params.{param}"),
            "is set by tokenvend; use the profile's own key for it",
        ));
    }
    Ok(())
}

/// What calls may ask for instead of the profile's scopes, audience and resource.
fn per_call(
    keys: &Keys<'_>,
    grant: Grant,
    scopes: Option<Vec<String>>,
    audiences: Option<Vec<String>>,
    resources: Option<Vec<String>>,
) -> Result<Option<Box<PerCall>>, ConfigError> {
    if scopes.is_none() && audiences.is_none() && resources.is_none() {
        return Ok(None);
    }
    if grant == Grant::RefreshToken {
        // One refresh token is one grant; a variant would need a chain of its own.
        let k = if scopes.is_some() {
            "allowed_scopes"
        } else if audiences.is_some() {
            "allowed_audiences"
        } else {
            "allowed_resources"
        };
        return Err(keys.err(k, "is not offered with `grant: refresh_token`"));
    }
    let check = |k: &str, values: &Option<Vec<String>>| -> Result<(), ConfigError> {
        let values = values.as_deref().unwrap_or_default();
        if let Some(v) = values.iter().find(|v| v.is_empty() || v.contains(' ')) {
            return Err(keys.err(
                k,
                format!("`{v}` is not one value: list each as its own item"),
            ));
        }
        Ok(())
    };
    check("allowed_scopes", &scopes)?;
    check("allowed_audiences", &audiences)?;
    check("allowed_resources", &resources)?;
    Ok(Some(Box::new(PerCall {
        scopes: scopes.unwrap_or_default(),
        audiences: audiences.unwrap_or_default(),
        resources: resources.unwrap_or_default(),
    })))
}

/// Companion headers: their names here; whether their values can be sent is known only
/// once the values are read (`app`).
fn headers(
    keys: &Keys<'_>,
    headers: BTreeMap<String, RawSecretSource>,
) -> Result<Vec<(HeaderName, SecretSource)>, ConfigError> {
    let mut out = Vec::with_capacity(headers.len());
    for (header, raw) in headers {
        let key = keys.key(&format!("headers.{header}"));
        let name = HeaderName::try_from(header.as_str())
            .map_err(|_| ConfigError::new(&key, "is not a valid header name"))?;
        if name == http::header::AUTHORIZATION {
            return Err(ConfigError::new(key, "is set by tokenvend from the token"));
        }
        out.push((name, secret_source(raw, &key)?));
    }
    Ok(out)
}

struct RawTiming {
    refresh_ahead: Option<RawRefreshAhead>,
    min_ttl: Option<Dur>,
    default_lifetime: Option<Dur>,
    max_lifetime: Option<Dur>,
    rejected_token_min_interval: Option<Dur>,
    timeout: Option<Dur>,
    idle_refresh: Option<Dur>,
    idp_requests_per_minute: Option<u32>,
}

struct Timing {
    refresh_ahead: RefreshAhead,
    min_ttl: Duration,
    default_lifetime: Duration,
    max_lifetime: Duration,
    rejected_token_min_interval: Duration,
    timeout: Duration,
    idle_refresh: Duration,
    idp_requests_per_minute: u32,
}

fn timing(keys: &Keys<'_>, raw: RawTiming) -> Result<Timing, ConfigError> {
    let refresh_ahead = match raw.refresh_ahead {
        None => RefreshAhead::Fraction(0.8),
        Some(RawRefreshAhead::Fraction(f)) if (0.1..=0.95).contains(&f) => {
            RefreshAhead::Fraction(f)
        }
        Some(RawRefreshAhead::Fraction(f)) => {
            return Err(keys.err(
                "refresh_ahead",
                format!(
                    "{f} is out of range: give a fraction of the lifetime between 0.1 and \
                     0.95 (default 0.8), or a duration before expiry such as 5m"
                ),
            ));
        }
        Some(RawRefreshAhead::Before(text)) => match humantime::parse_duration(&text) {
            Ok(d) if !d.is_zero() => RefreshAhead::Before(d),
            _ => {
                return Err(keys.err(
                    "refresh_ahead",
                    format!("`{text}` is neither a fraction like 0.8 nor a duration like 5m"),
                ));
            }
        },
    };
    let idp_requests_per_minute = match raw.idp_requests_per_minute {
        Some(0) => return Err(keys.err("idp_requests_per_minute", "must be at least 1")),
        Some(n) => n,
        None => 60,
    };
    let max_lifetime = nonzero(
        &keys.key("max_lifetime"),
        raw.max_lifetime,
        Duration::from_secs(24 * 3600),
    )?;
    // The default of an hour gives way to a shorter `max_lifetime`; a default given as
    // well must fit under it.
    let default_lifetime = nonzero(
        &keys.key("default_lifetime"),
        raw.default_lifetime,
        Duration::from_secs(3600).min(max_lifetime),
    )?;
    // Shorter lifetimes are refused when a provider sends them; a configured one would
    // refuse every token.
    for (key, lifetime) in [
        ("max_lifetime", max_lifetime),
        ("default_lifetime", default_lifetime),
    ] {
        if lifetime < MIN_LIFETIME {
            return Err(keys.err(key, "must be at least 1s"));
        }
    }
    if default_lifetime > max_lifetime {
        return Err(keys.err(
            "default_lifetime",
            format!(
                "is longer than `max_lifetime` ({})",
                humantime::format_duration(max_lifetime)
            ),
        ));
    }
    Ok(Timing {
        refresh_ahead,
        min_ttl: raw.min_ttl.map_or(Duration::ZERO, |d| d.0),
        default_lifetime,
        max_lifetime,
        rejected_token_min_interval: raw
            .rejected_token_min_interval
            .map_or(Duration::from_secs(30), |d| d.0),
        timeout: nonzero(&keys.key("timeout"), raw.timeout, Duration::from_secs(10))?,
        idle_refresh: nonzero(
            &keys.key("idle_refresh"),
            raw.idle_refresh,
            Duration::from_secs(24 * 3600),
        )?,
        idp_requests_per_minute,
    })
}

fn retry(keys: &Keys<'_>, raw: Option<RawRetry>) -> Result<Retry, ConfigError> {
    let defaults = Retry::default();
    let retry = match raw {
        None => defaults,
        Some(raw) => Retry {
            initial: nonzero(&keys.key("retry.initial"), raw.initial, defaults.initial)?,
            max: nonzero(&keys.key("retry.max"), raw.max, defaults.max)?,
        },
    };
    if retry.initial > retry.max {
        return Err(keys.err("retry.initial", "is longer than `retry.max`"));
    }
    Ok(retry)
}

fn allow(
    keys: &Keys<'_>,
    patterns: Option<Vec<String>>,
) -> Result<Option<Vec<Pattern>>, ConfigError> {
    patterns
        .map(|patterns| {
            patterns
                .iter()
                .enumerate()
                .map(|(i, p)| {
                    Pattern::parse(p).map_err(|e| keys.err(&format!("allow[{i}]"), e.to_string()))
                })
                .collect()
        })
        .transpose()
}

/// The profiles of a configuration, each validated; errors of every profile, not only
/// the first one's.
pub(super) fn validate_all(
    raw: BTreeMap<String, RawProfile>,
) -> Result<Vec<Arc<Profile>>, Vec<ConfigError>> {
    let mut profiles = Vec::with_capacity(raw.len());
    let mut errors = Vec::new();
    for (name, profile) in raw {
        match profile.validate(&name) {
            Ok(profile) => profiles.push(Arc::new(profile)),
            Err(mut e) => errors.append(&mut e),
        }
    }
    if errors.is_empty() {
        Ok(profiles)
    } else {
        Err(errors)
    }
}
