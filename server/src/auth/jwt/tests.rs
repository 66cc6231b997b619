use base64::{Engine as _, engine::general_purpose::URL_SAFE_NO_PAD};
use p256::ecdsa::{Signature, SigningKey, signature::Signer as _};
use proptest::prelude::*;
use serde_json::json;

use super::*;

const ISSUER: &str = "https://kubernetes.default.svc.cluster.local";

struct Fixture {
    key: SigningKey,
    verifier: Verifier,
    _jwks: tempfile::NamedTempFile,
}

fn jwk(key: &SigningKey, kid: &str) -> Value {
    let point = key.verifying_key().to_encoded_point(false);
    json!({
        "kty": "EC", "crv": "P-256", "kid": kid, "use": "sig", "alg": "ES256",
        "x": URL_SAFE_NO_PAD.encode(point.x().unwrap()),
        "y": URL_SAFE_NO_PAD.encode(point.y().unwrap()),
    })
}

fn fixture() -> Fixture {
    let key = SigningKey::random(&mut p256::elliptic_curve::rand_core::OsRng);
    let jwks = tempfile::NamedTempFile::new().unwrap();
    std::fs::write(jwks.path(), json!({"keys": [jwk(&key, "k1")]}).to_string()).unwrap();
    let config = ServiceAccountConfig {
        issuer: ISSUER.into(),
        audience: "tokenvend".into(),
        jwks: JwksSource::File(jwks.path().to_owned()),
        jwks_ca: None,
        jwks_token_file: None,
        leeway: Duration::from_secs(5),
        refetch_interval: Duration::from_secs(10),
    };
    Fixture {
        key,
        verifier: Verifier::new(&config).unwrap(),
        _jwks: jwks,
    }
}

fn claims(over: Value) -> Value {
    let now = unix_now();
    let mut claims = json!({
        "iss": ISSUER, "aud": ["tokenvend"], "sub": "system:serviceaccount:orders:api",
        "iat": now, "nbf": now, "exp": now + 600,
    });
    for (k, v) in over.as_object().unwrap() {
        claims[k] = v.clone();
    }
    claims
}

fn sign(key: &SigningKey, header: Value, claims: &Value) -> String {
    let input = format!(
        "{}.{}",
        URL_SAFE_NO_PAD.encode(header.to_string()),
        URL_SAFE_NO_PAD.encode(claims.to_string())
    );
    let signature: Signature = key.sign(input.as_bytes());
    format!("{input}.{}", URL_SAFE_NO_PAD.encode(signature.to_bytes()))
}

fn es256(key: &SigningKey, claims: &Value) -> String {
    sign(
        key,
        json!({"alg": "ES256", "kid": "k1", "typ": "JWT"}),
        claims,
    )
}

fn rejection(f: &Fixture, token: &str) -> Rejection {
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap();
    match rt.block_on(f.verifier.verify(token)) {
        Err(AuthError::Token(r)) => r,
        other => panic!("expected a rejection, got {other:?}"),
    }
}

#[tokio::test]
async fn a_valid_token_names_its_service_account_and_is_remembered() {
    let f = fixture();
    let token = es256(&f.key, &claims(json!({})));
    let identity = f.verifier.verify(&token).await.unwrap();
    assert_eq!(&*identity, "system:serviceaccount:orders:api");
    assert!(f.verifier.verified.contains_key(token.as_str()));
}

#[test]
fn expired_early_wrong_audience_issuer_subject_are_refused() {
    let f = fixture();
    let now = unix_now();
    let cases = [
        (json!({"exp": now - 60}), Rejection::Expired),
        (json!({"nbf": now + 60}), Rejection::NotYetValid),
        (
            json!({"aud": "other"}),
            Rejection::Audience("tokenvend".into()),
        ),
        (
            json!({"iss": "https://evil"}),
            Rejection::Issuer(ISSUER.into()),
        ),
        (json!({"sub": "alice"}), Rejection::Claim("sub")),
    ];
    for (over, expected) in cases {
        let token = es256(&f.key, &claims(over.clone()));
        assert_eq!(rejection(&f, &token), expected, "{over}");
    }
    // Within the leeway, an expired token still passes.
    let token = es256(&f.key, &claims(json!({"exp": now - 2})));
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap();
    assert!(rt.block_on(f.verifier.verify(&token)).is_ok());
}

#[test]
fn none_hmac_and_foreign_keys_are_refused() {
    let f = fixture();
    let body = claims(json!({}));
    let unsigned = format!(
        "{}.{}.",
        URL_SAFE_NO_PAD.encode(json!({"alg": "none", "kid": "k1"}).to_string()),
        URL_SAFE_NO_PAD.encode(body.to_string())
    );
    assert_eq!(rejection(&f, &unsigned), Rejection::Malformed);

    // Algorithm confusion: an HMAC token keyed with the public key's bytes.
    let header = json!({"alg": "HS256", "kid": "k1"});
    let hs = jsonwebtoken::encode(
        &serde_json::from_value(header).unwrap(),
        &body,
        &jsonwebtoken::EncodingKey::from_secret(
            f.key.verifying_key().to_encoded_point(false).as_bytes(),
        ),
    )
    .unwrap();
    assert_eq!(rejection(&f, &hs), Rejection::Algorithm(Algorithm::HS256));

    // Signed by a key the issuer does not publish, under a published kid.
    let other = SigningKey::random(&mut p256::elliptic_curve::rand_core::OsRng);
    assert_eq!(rejection(&f, &es256(&other, &body)), Rejection::Signature);
    // An RSA algorithm on an EC key.
    let rs = sign(&f.key, json!({"alg": "RS256", "kid": "k1"}), &body);
    assert_eq!(rejection(&f, &rs), Rejection::Algorithm(Algorithm::RS256));
    // A kid nobody published.
    let unknown = sign(&f.key, json!({"alg": "ES256", "kid": "k9"}), &body);
    assert_eq!(rejection(&f, &unknown), Rejection::UnknownKey);
}

#[test]
fn symmetric_keys_in_a_jwks_are_ignored() {
    let set = KeySet::parse(br#"{"keys":[{"kty":"oct","k":"c2VjcmV0","kid":"h"}]}"#);
    assert!(matches!(set, Err(InvalidJwks::NoSigningKey)));
}

proptest! {
    #[test]
    fn arbitrary_input_is_never_accepted(token in ".{0,400}") {
        let f = fixture();
        let rt = tokio::runtime::Builder::new_current_thread().enable_all().build().unwrap();
        prop_assert!(rt.block_on(f.verifier.verify(&token)).is_err());
    }

    #[test]
    fn a_changed_byte_breaks_a_valid_token(index in 0usize..2000, byte in any::<u8>()) {
        let f = fixture();
        let token = es256(&f.key, &claims(json!({})));
        let mut bytes = token.clone().into_bytes();
        let index = index % bytes.len();
        prop_assume!(bytes[index] != byte);
        bytes[index] = byte;
        let changed = String::from_utf8_lossy(&bytes).into_owned();
        prop_assume!(changed != token);
        let rt = tokio::runtime::Builder::new_current_thread().enable_all().build().unwrap();
        // Base64url has a few encodings of the same last bits; those decode to the same
        // bytes and rightly verify. Anything else must fail.
        if let Ok(identity) = rt.block_on(f.verifier.verify(&changed)) {
            let same = changed.split('.').map(|p| URL_SAFE_NO_PAD.decode(p).ok()).collect::<Vec<_>>()
                == token.split('.').map(|p| URL_SAFE_NO_PAD.decode(p).ok()).collect::<Vec<_>>();
            prop_assert!(same, "a changed token verified as {identity}");
        }
    }

    #[test]
    fn arbitrary_jwks_never_panics(text in ".{0,300}") {
        let _ = KeySet::parse(text.as_bytes());
    }
}
