//! Bench-only credentials, made fresh for each run: a self-signed server certificate for
//! the TLS figures, and a ServiceAccount-like signing key, its JWKS and a token for the
//! caller-authentication figures.

use std::{
    path::Path,
    time::{SystemTime, UNIX_EPOCH},
};

use base64::{Engine as _, engine::general_purpose::URL_SAFE_NO_PAD};
use p256::ecdsa::{Signature, SigningKey, signature::Signer as _};
use serde_json::{Value, json};

/// The issuer the bench tokens name (never contacted: the keys come from a file).
pub(crate) const ISSUER: &str = "https://kubernetes.default.svc.cluster.local";

/// A server certificate for `localhost` and 127.0.0.1, written as `server.crt`/`server.key`;
/// returns the certificate PEM, which clients trust directly.
pub(crate) fn write_server_cert(dir: &Path) -> Result<String, String> {
    let key = rcgen::KeyPair::generate().map_err(|e| e.to_string())?;
    let params =
        rcgen::CertificateParams::new(vec!["localhost".to_owned(), "127.0.0.1".to_owned()])
            .map_err(|e| e.to_string())?;
    let cert = params.self_signed(&key).map_err(|e| e.to_string())?;
    let write = |name: &str, pem: &str| {
        std::fs::write(dir.join(name), pem).map_err(|e| format!("{name}: {e}"))
    };
    write("server.crt", &cert.pem())?;
    write("server.key", &key.serialize_pem())?;
    Ok(cert.pem())
}

/// Writes `jwks.json` with a new ES256 key and returns a token it signed for
/// `system:serviceaccount:bench:loadgen`, audience `tokenvend`, valid for an hour.
pub(crate) fn write_jwks_and_token(dir: &Path) -> Result<String, String> {
    let key = loop {
        let mut bytes = [0u8; 32];
        getrandom(&mut bytes)?;
        if let Ok(key) = SigningKey::from_slice(&bytes) {
            break key;
        }
    };
    let point = key.verifying_key().to_encoded_point(false);
    let coordinate = |c: Option<&p256::FieldBytes>| c.map(|c| URL_SAFE_NO_PAD.encode(c));
    let jwks = json!({"keys": [{
        "kty": "EC", "crv": "P-256", "kid": "bench", "use": "sig", "alg": "ES256",
        "x": coordinate(point.x()), "y": coordinate(point.y()),
    }]});
    std::fs::write(dir.join("jwks.json"), jwks.to_string()).map_err(|e| e.to_string())?;
    let now = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_err(|e| e.to_string())?
        .as_secs();
    // The shape of a projected ServiceAccount token.
    let claims = json!({
        "iss": ISSUER, "aud": ["tokenvend"],
        "sub": "system:serviceaccount:bench:loadgen",
        "iat": now, "nbf": now, "exp": now + 3600,
        "kubernetes.io": {"namespace": "bench", "serviceaccount": {"name": "loadgen", "uid": "00000000-0000-0000-0000-000000000000"},
                          "pod": {"name": "loadgen-7d9f8b6c5-abcde", "uid": "00000000-0000-0000-0000-000000000001"}},
    });
    Ok(sign(
        &key,
        &json!({"alg": "ES256", "kid": "bench"}),
        &claims,
    ))
}

fn sign(key: &SigningKey, header: &Value, claims: &Value) -> String {
    let input = format!(
        "{}.{}",
        URL_SAFE_NO_PAD.encode(header.to_string()),
        URL_SAFE_NO_PAD.encode(claims.to_string())
    );
    let signature: Signature = key.sign(input.as_bytes());
    format!("{input}.{}", URL_SAFE_NO_PAD.encode(signature.to_bytes()))
}

fn getrandom(buf: &mut [u8]) -> Result<(), String> {
    use std::io::Read as _;
    std::fs::File::open("/dev/urandom")
        .and_then(|mut f| f.read_exact(buf))
        .map_err(|e| format!("/dev/urandom: {e}"))
}
