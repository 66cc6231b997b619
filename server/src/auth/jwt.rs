//! Kubernetes ServiceAccount tokens: signature against the cluster issuer's JWKS, `iss`,
//! `aud`, `exp` and `nbf` with a leeway; `alg: none` and symmetric algorithms (algorithm
//! confusion) are refused. A verified token is remembered until it expires, so a caller's
//! calls after the first cost one cache lookup, not a signature check.

use std::{
    collections::HashMap,
    io,
    path::{Path, PathBuf},
    sync::{Arc, Mutex, PoisonError},
    time::{Duration, Instant, SystemTime, UNIX_EPOCH},
};

use arc_swap::ArcSwap;
use jsonwebtoken::{
    Algorithm, DecodingKey, Validation,
    jwk::{AlgorithmParameters, EllipticCurve, Jwk},
};
use serde::Deserialize;
use serde_json::Value;

use super::AuthError;
use crate::{
    bounded,
    config::{JwksSource, ServiceAccountConfig},
};

/// Tokens longer than this are refused unread; projected tokens are about 1 KiB.
const MAX_TOKEN_BYTES: usize = 16 * 1024;
/// The most of a discovery document or JWKS that is read.
const MAX_DOCUMENT_BYTES: usize = 1024 * 1024;
/// Signing keys are fetched again after this even when every `kid` is known, so that a
/// removed key stops being trusted.
const KEYS_MAX_AGE: Duration = Duration::from_secs(3600);
/// A verified token is remembered at most this long (and never past its `exp`).
const VERIFIED_MAX_AGE: Duration = Duration::from_secs(600);

/// Asymmetric algorithms only: an HMAC algorithm would let anyone holding the public key
/// sign tokens (algorithm confusion), and `none` is not an algorithm.
const ACCEPTED: &[Algorithm] = &[
    Algorithm::RS256,
    Algorithm::RS384,
    Algorithm::RS512,
    Algorithm::PS256,
    Algorithm::PS384,
    Algorithm::PS512,
    Algorithm::ES256,
    Algorithm::ES384,
];

/// Why a token was refused. The text never holds the token.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum Rejection {
    /// Not three Base64url parts with a JSON header naming an accepted algorithm.
    #[error(
        "it is not a JWT signed with an accepted algorithm (RS256, ES256, ...; never `none` or HMAC)"
    )]
    Malformed,
    /// The header names an algorithm tokenvend does not accept, or one the key is not for.
    #[error("its algorithm {0:?} is not accepted for its key")]
    Algorithm(Algorithm),
    /// No signing key with the token's `kid`.
    #[error("it is signed with a key the cluster issuer does not publish")]
    UnknownKey,
    /// The signature does not verify.
    #[error("its signature does not verify")]
    Signature,
    /// Expired, beyond the leeway.
    #[error("it has expired")]
    Expired,
    /// `nbf` is in the future, beyond the leeway.
    #[error("it is not valid yet")]
    NotYetValid,
    /// `aud` does not hold the configured audience.
    #[error("its audience is not `{0}`")]
    Audience(String),
    /// `iss` is not the configured issuer.
    #[error("its issuer is not `{0}`")]
    Issuer(String),
    /// A required claim is missing or has the wrong shape.
    #[error("its `{0}` claim is missing or malformed")]
    Claim(&'static str),
}

/// Why a document is not a JWKS tokenvend can use.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
pub enum InvalidJwks {
    /// Not JSON, or without a `keys` array.
    #[error("is not a JWKS: a JSON object with a `keys` array")]
    NotJwks,
    /// No key of a kind that can sign ServiceAccount tokens.
    #[error("holds no RSA, P-256 or P-384 signing key")]
    NoSigningKey,
}

/// Why the signing keys could not be loaded. The text names the file or URL; never the
/// token that authenticates the fetch, which is sent only as a header.
#[derive(Debug, thiserror::Error)]
pub enum KeysError {
    /// A file (the JWKS, or the token sent to fetch it) could not be read.
    #[error("cannot read {}: {kind}", path.display())]
    Read {
        /// The file.
        path: PathBuf,
        /// What went wrong, without the OS's wording.
        kind: io::ErrorKind,
    },
    /// The JWKS file is not a usable JWKS.
    #[error("{}: {reason}", path.display())]
    InvalidFile {
        /// The file.
        path: PathBuf,
        /// What is wrong with it.
        reason: InvalidJwks,
    },
    /// The fetched document is not a usable JWKS.
    #[error("{url}: {reason}")]
    Invalid {
        /// Where it came from.
        url: String,
        /// What is wrong with it.
        reason: InvalidJwks,
    },
    /// The issuer's discovery document names no JWKS.
    #[error("{url} has no `jwks_uri`")]
    NoJwksUri {
        /// The discovery document's URL.
        url: String,
    },
    /// The discovery document's `jwks_uri` is not a URL tokenvend fetches from.
    #[error("{0}")]
    JwksUri(crate::config::EndpointError),
    /// The request failed, or its answer could not be read.
    #[error("{url}: {error}")]
    Request {
        /// The URL asked.
        url: String,
        /// What the HTTP client said, without the URL (it is in `url`).
        error: reqwest::Error,
    },
    /// The answer was not a success.
    #[error("{url} answered HTTP {status}")]
    Status {
        /// The URL asked.
        url: String,
        /// The HTTP status.
        status: u16,
    },
    /// The answer was larger than a JWKS has reason to be.
    #[error("{url}: the document is too large")]
    TooLarge {
        /// The URL asked.
        url: String,
    },
}

/// Verifies ServiceAccount tokens and remembers the ones that verified.
pub(crate) struct Verifier {
    issuer: String,
    audience: String,
    leeway: Duration,
    keys: KeyStore,
    verified: moka::sync::Cache<Arc<str>, Verified>,
}

#[derive(Clone)]
struct Verified {
    identity: Arc<str>,
    until: Instant,
}

struct UntilExpiry;

impl moka::Expiry<Arc<str>, Verified> for UntilExpiry {
    fn expire_after_create(
        &self,
        _: &Arc<str>,
        value: &Verified,
        now: Instant,
    ) -> Option<Duration> {
        Some(value.until.saturating_duration_since(now))
    }
}

impl Verifier {
    /// A verifier for this configuration. Keys are fetched at the first token.
    pub(crate) fn new(config: &ServiceAccountConfig) -> Result<Self, reqwest::Error> {
        Ok(Self {
            issuer: config.issuer.clone(),
            audience: config.audience.clone(),
            leeway: config.leeway,
            keys: KeyStore::new(config)?,
            verified: moka::sync::Cache::builder()
                .max_capacity(10_000)
                .expire_after(UntilExpiry)
                .build(),
        })
    }

    /// The caller's identity, `system:serviceaccount:<namespace>:<name>`.
    pub(crate) async fn verify(&self, token: &str) -> Result<Arc<str>, AuthError> {
        // The hot path: a token seen before, still within its `exp`.
        if let Some(hit) = self.verified.get(token)
            && Instant::now() < hit.until
        {
            return Ok(hit.identity);
        }
        let (identity, until) = self.verify_signed(token).await?;
        self.verified.insert(
            token.into(),
            Verified {
                identity: identity.clone(),
                until,
            },
        );
        Ok(identity)
    }

    async fn verify_signed(&self, token: &str) -> Result<(Arc<str>, Instant), AuthError> {
        let (header, key) = self.keys.for_token(token).await?;
        let claims = check(token, header.alg, &key, self).map_err(AuthError::Token)?;
        let left = claims.exp.saturating_sub(unix_now());
        let until = Instant::now() + Duration::from_secs(left).min(VERIFIED_MAX_AGE);
        Ok((claims.sub.into(), until))
    }
}

/// Verifies OpenID Connect ID tokens for the admin page's login: the same key handling
/// and algorithm rules as ServiceAccount tokens (keys found by discovery), with `iss`,
/// `aud` (the admin client) and `exp` checked; the caller checks the `nonce`.
pub(crate) struct IdTokens {
    issuer: String,
    audience: String,
    leeway: Duration,
    keys: KeyStore,
}

impl IdTokens {
    /// A verifier for tokens `issuer` issues to `client_id`.
    pub(crate) fn new(issuer: &str, client_id: &str) -> Result<Self, KeysError> {
        let discovery = crate::config::parse_endpoint_url(issuer).map_err(KeysError::JwksUri)?;
        let config = ServiceAccountConfig {
            issuer: issuer.to_owned(),
            audience: client_id.to_owned(),
            jwks: JwksSource::Discovery(discovery),
            jwks_ca: None,
            jwks_token_file: None,
            leeway: Duration::from_secs(30),
            refetch_interval: Duration::from_secs(10),
        };
        let keys = KeyStore::new(&config).map_err(|error| KeysError::Request {
            url: issuer.to_owned(),
            error,
        })?;
        Ok(Self {
            issuer: config.issuer,
            audience: config.audience,
            leeway: config.leeway,
            keys,
        })
    }

    /// The claims of a token that verifies.
    pub(crate) async fn verify(&self, token: &str) -> Result<Value, AuthError> {
        let (header, key) = self.keys.for_token(token).await?;
        if !key.accepts(header.alg) {
            return Err(AuthError::Token(Rejection::Algorithm(header.alg)));
        }
        let mut validation = Validation::new(header.alg);
        validation.leeway = self.leeway.as_secs();
        validation.set_issuer(&[&self.issuer]);
        validation.set_audience(&[&self.audience]);
        validation.set_required_spec_claims(&["exp", "iss", "aud", "sub"]);
        jsonwebtoken::decode::<Value>(token, &key.decoding, &validation)
            .map(|data| data.claims)
            .map_err(|e| {
                use jsonwebtoken::errors::ErrorKind as K;
                AuthError::Token(match e.kind() {
                    K::InvalidSignature => Rejection::Signature,
                    K::ExpiredSignature => Rejection::Expired,
                    K::InvalidAudience => Rejection::Audience(self.audience.clone()),
                    K::InvalidIssuer => Rejection::Issuer(self.issuer.clone()),
                    _ => Rejection::Malformed,
                })
            })
    }
}

/// The claims tokenvend reads; `iss`, `aud`, `nbf` are checked by the validation.
#[derive(Deserialize)]
struct Claims {
    sub: String,
    exp: u64,
}

/// Checks a token's signature and claims against one key. Pure, for property tests.
fn check(token: &str, alg: Algorithm, key: &Key, verifier: &Verifier) -> Result<Claims, Rejection> {
    if !key.accepts(alg) {
        return Err(Rejection::Algorithm(alg));
    }
    let mut validation = Validation::new(alg);
    validation.leeway = verifier.leeway.as_secs();
    validation.validate_nbf = true;
    validation.set_issuer(&[&verifier.issuer]);
    validation.set_audience(&[&verifier.audience]);
    validation.set_required_spec_claims(&["exp", "iss", "aud", "sub"]);
    use jsonwebtoken::errors::ErrorKind as K;
    let data = jsonwebtoken::decode::<Claims>(token, &key.decoding, &validation).map_err(|e| {
        match e.kind() {
            K::InvalidSignature => Rejection::Signature,
            K::ExpiredSignature => Rejection::Expired,
            K::ImmatureSignature => Rejection::NotYetValid,
            K::InvalidAudience => Rejection::Audience(verifier.audience.clone()),
            K::InvalidIssuer => Rejection::Issuer(verifier.issuer.clone()),
            K::InvalidAlgorithm => Rejection::Algorithm(alg),
            K::MissingRequiredClaim(claim) => Rejection::Claim(match claim.as_str() {
                "exp" => "exp",
                "iss" => "iss",
                "aud" => "aud",
                _ => "sub",
            }),
            _ => Rejection::Malformed,
        }
    })?;
    if !is_service_account(&data.claims.sub) {
        return Err(Rejection::Claim("sub"));
    }
    Ok(data.claims)
}

/// `system:serviceaccount:<namespace>:<name>`, with a namespace and a name as Kubernetes
/// writes them (lower-case letters, digits, `-`, and `.` in names). Any other `sub`, a
/// SPIFFE ID or a host name above all, is refused: those are certificate identities, and a
/// token must not pass for one.
fn is_service_account(sub: &str) -> bool {
    let kubernetes_name = |s: &str, dots: bool| {
        !s.is_empty()
            && s.len() <= 253
            && s.bytes().all(|b| {
                b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'-' || (dots && b == b'.')
            })
    };
    sub.strip_prefix("system:serviceaccount:")
        .and_then(|rest| rest.split_once(':'))
        .is_some_and(|(ns, name)| kubernetes_name(ns, false) && kubernetes_name(name, true))
}

fn unix_now() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| d.as_secs())
}

/// A public signing key and what it may verify.
struct Key {
    decoding: DecodingKey,
    kind: KeyKind,
    /// The JWK's `alg`, when it names one: then only that algorithm.
    alg: Option<Algorithm>,
}

#[derive(Clone, Copy, PartialEq, Eq)]
enum KeyKind {
    Rsa,
    P256,
    P384,
}

impl Key {
    fn accepts(&self, alg: Algorithm) -> bool {
        use Algorithm::*;
        let family = match self.kind {
            KeyKind::Rsa => matches!(alg, RS256 | RS384 | RS512 | PS256 | PS384 | PS512),
            KeyKind::P256 => alg == ES256,
            KeyKind::P384 => alg == ES384,
        };
        family && self.alg.is_none_or(|a| a == alg)
    }

    /// A key from one JWK; `None` for keys that cannot sign ServiceAccount tokens
    /// (symmetric keys above all, which would re-open algorithm confusion).
    fn from_jwk(value: Value) -> Option<(String, Self)> {
        let jwk: Jwk = serde_json::from_value(value).ok()?;
        let kind = match &jwk.algorithm {
            AlgorithmParameters::RSA(_) => KeyKind::Rsa,
            AlgorithmParameters::EllipticCurve(ec) => match ec.curve {
                EllipticCurve::P256 => KeyKind::P256,
                EllipticCurve::P384 => KeyKind::P384,
                _ => return None,
            },
            _ => return None,
        };
        let alg = match &jwk.common.key_algorithm {
            None => None,
            Some(a) => Some(format!("{a:?}").parse::<Algorithm>().ok()?),
        };
        let decoding = DecodingKey::from_jwk(&jwk).ok()?;
        let kid = jwk.common.key_id.clone().unwrap_or_default();
        Some((
            kid,
            Self {
                decoding,
                kind,
                alg,
            },
        ))
    }
}

/// A parsed JWKS.
pub(crate) struct KeySet {
    keys: HashMap<String, Arc<Key>>,
    fetched: Option<Instant>,
}

impl KeySet {
    fn parse(bytes: &[u8]) -> Result<Self, InvalidJwks> {
        #[derive(Deserialize)]
        struct Document {
            keys: Vec<Value>,
        }
        let document: Document = serde_json::from_slice(bytes).map_err(|_| InvalidJwks::NotJwks)?;
        // A key tokenvend cannot use is skipped, not fatal: issuers publish several kinds.
        let keys: HashMap<_, _> = document
            .keys
            .into_iter()
            .filter_map(Key::from_jwk)
            .map(|(kid, key)| (kid, Arc::new(key)))
            .collect();
        if keys.is_empty() {
            return Err(InvalidJwks::NoSigningKey);
        }
        Ok(Self {
            keys,
            fetched: Some(Instant::now()),
        })
    }

    /// Reads and checks a JWKS file.
    pub(crate) fn read_file(path: &Path) -> Result<Self, KeysError> {
        let bytes = bounded::read(path, bounded::DOCUMENT_BYTES).map_err(|e| KeysError::Read {
            path: path.to_owned(),
            kind: e.kind(),
        })?;
        Self::parse(&bytes).map_err(|reason| KeysError::InvalidFile {
            path: path.to_owned(),
            reason,
        })
    }

    fn get(&self, kid: &str) -> Option<&Arc<Key>> {
        // A token without `kid` may use the one key of a set that has only one.
        match self.keys.get(kid) {
            Some(key) => Some(key),
            None if kid.is_empty() && self.keys.len() == 1 => self.keys.values().next(),
            None => None,
        }
    }

    fn fresh(&self) -> bool {
        self.fetched.is_some_and(|f| f.elapsed() < KEYS_MAX_AGE)
    }
}

/// The issuer's keys: read once, read again when a token names an unknown `kid` (at most
/// once per `refetch_interval`, so a flood of forged `kid`s cannot hammer the issuer) and
/// when they are older than an hour.
struct KeyStore {
    source: JwksSource,
    http: reqwest::Client,
    token_file: Option<std::path::PathBuf>,
    refetch_interval: Duration,
    current: ArcSwap<KeySet>,
    // Guards only the decision whether a fetch may start now; never held across an await.
    last_attempt: Mutex<Option<Instant>>,
    // One fetch at a time; later callers wait for it and use its result.
    fetching: tokio::sync::Mutex<()>,
}

impl KeyStore {
    /// A token's header and the key it names, for a token of a bounded size signed with
    /// an algorithm we accept: what every verification starts with.
    async fn for_token(&self, token: &str) -> Result<(jsonwebtoken::Header, Arc<Key>), AuthError> {
        if token.len() > MAX_TOKEN_BYTES {
            return Err(AuthError::Token(Rejection::Malformed));
        }
        let header = jsonwebtoken::decode_header(token)
            .map_err(|_| AuthError::Token(Rejection::Malformed))?;
        if !ACCEPTED.contains(&header.alg) {
            return Err(AuthError::Token(Rejection::Algorithm(header.alg)));
        }
        let key = self.key(header.kid.as_deref().unwrap_or("")).await?;
        Ok((header, key))
    }

    fn new(config: &ServiceAccountConfig) -> Result<Self, reqwest::Error> {
        let mut http = reqwest::Client::builder()
            .timeout(Duration::from_secs(10))
            .redirect(reqwest::redirect::Policy::none())
            .user_agent(concat!("tokenvend/", env!("CARGO_PKG_VERSION")));
        if let Some(ca) = &config.jwks_ca {
            // Validated at load; an unreadable file here leaves the default roots.
            if let Ok(pem) = bounded::read(ca, bounded::DOCUMENT_BYTES) {
                for cert in reqwest::Certificate::from_pem_bundle(&pem)? {
                    http = http.add_root_certificate(cert);
                }
            }
        }
        Ok(Self {
            source: config.jwks.clone(),
            http: http.build()?,
            token_file: config.jwks_token_file.clone(),
            refetch_interval: config.refetch_interval,
            current: ArcSwap::from_pointee(KeySet {
                keys: HashMap::new(),
                fetched: None,
            }),
            last_attempt: Mutex::new(None),
            fetching: tokio::sync::Mutex::new(()),
        })
    }

    async fn key(&self, kid: &str) -> Result<Arc<Key>, AuthError> {
        {
            let set = self.current.load();
            if set.fresh()
                && let Some(key) = set.get(kid)
            {
                return Ok(key.clone());
            }
        }
        let before = self.current.load_full();
        let _one_at_a_time = self.fetching.lock().await;
        // Someone else may have fetched while this caller waited.
        if !Arc::ptr_eq(&before, &self.current.load_full()) {
            let set = self.current.load();
            return set
                .get(kid)
                .cloned()
                .ok_or(AuthError::Token(Rejection::UnknownKey));
        }
        if self.may_fetch() {
            match self.fetch().await {
                Ok(set) => {
                    tracing::info!(keys = set.keys.len(), "ServiceAccount signing keys loaded");
                    self.current.store(Arc::new(set));
                }
                Err(reason) => {
                    tracing::warn!(%reason, "cannot load ServiceAccount signing keys");
                    if before.keys.is_empty() {
                        return Err(AuthError::KeysUnavailable(Arc::new(reason)));
                    }
                    // Keep the old keys: an issuer outage must not lock every caller out.
                }
            }
        }
        let set = self.current.load();
        set.get(kid)
            .cloned()
            .ok_or(AuthError::Token(Rejection::UnknownKey))
    }

    fn may_fetch(&self) -> bool {
        let mut last = self
            .last_attempt
            .lock()
            .unwrap_or_else(PoisonError::into_inner);
        let now = Instant::now();
        if last.is_some_and(|l| now.duration_since(l) < self.refetch_interval) {
            return false;
        }
        *last = Some(now);
        true
    }

    async fn fetch(&self) -> Result<KeySet, KeysError> {
        let url = match &self.source {
            JwksSource::File(path) => return KeySet::read_file(path),
            JwksSource::Url(url) => url.clone(),
            JwksSource::Discovery(issuer) => {
                let well_known = format!(
                    "{}/.well-known/openid-configuration",
                    issuer.as_str().trim_end_matches('/')
                );
                let document = self.get(&well_known).await?;
                let jwks_uri = serde_json::from_slice::<Value>(&document)
                    .ok()
                    .and_then(|d| d.get("jwks_uri")?.as_str().map(str::to_owned))
                    .ok_or(KeysError::NoJwksUri { url: well_known })?;
                crate::config::parse_endpoint_url(&jwks_uri).map_err(KeysError::JwksUri)?
            }
        };
        let body = self.get(url.as_str()).await?;
        KeySet::parse(&body).map_err(|reason| KeysError::Invalid {
            url: url.into(),
            reason,
        })
    }

    async fn get(&self, url: &str) -> Result<Vec<u8>, KeysError> {
        let mut request = self
            .http
            .get(url)
            .header(http::header::ACCEPT, "application/json");
        if let Some(path) = &self.token_file {
            let token = bounded::read_to_string(path, bounded::SECRET_BYTES).map_err(|e| {
                KeysError::Read {
                    path: path.clone(),
                    kind: e.kind(),
                }
            })?;
            request = request.bearer_auth(token.trim());
        }
        let request_error = |error: reqwest::Error| KeysError::Request {
            url: url.to_owned(),
            error: error.without_url(),
        };
        let mut response = request.send().await.map_err(request_error)?;
        if !response.status().is_success() {
            return Err(KeysError::Status {
                url: url.to_owned(),
                status: response.status().as_u16(),
            });
        }
        if response
            .content_length()
            .is_some_and(|l| l > MAX_DOCUMENT_BYTES as u64)
        {
            return Err(KeysError::TooLarge {
                url: url.to_owned(),
            });
        }
        // Read chunk by chunk: an answer without a length (chunked) could otherwise grow
        // without end before its size was known.
        let mut body = Vec::new();
        while let Some(chunk) = response.chunk().await.map_err(request_error)? {
            if body.len() + chunk.len() > MAX_DOCUMENT_BYTES {
                return Err(KeysError::TooLarge {
                    url: url.to_owned(),
                });
            }
            body.extend_from_slice(&chunk);
        }
        Ok(body)
    }
}

/// Verifies arbitrary text as a caller's bearer token (the `fuzz/` target
/// `caller_token`) against a verifier whose key set is a file: nothing the caller sends
/// may panic it, and nothing but a token signed by that key may verify.
#[cfg(feature = "fuzzing")]
pub(crate) fn fuzz_verify(verifier: &Verifier, token: &str) -> bool {
    tokio::runtime::Builder::new_current_thread()
        .enable_time()
        .build()
        .map(|runtime| runtime.block_on(verifier.verify(token)).is_ok())
        .unwrap_or(false)
}

#[cfg(test)]
mod tests;
