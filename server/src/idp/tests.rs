use std::time::{Duration, SystemTime, UNIX_EPOCH};

use base64::{Engine as _, engine::general_purpose::URL_SAFE_NO_PAD};

use super::{response::*, *};
use crate::config::Config;

fn profile() -> std::sync::Arc<Profile> {
    Config::from_yaml(
        "profiles:\n  p:\n    token_url: https://idp.example.com/token\n    client_id: my id\n    client_secret: { value: 's+/=:%&?' }\n    scopes: [read, write]\n    default_lifetime: 120s\n",
    )
    .unwrap()
    .profiles
    .remove(0)
}

fn answer(status: u16, content_type: Option<&str>, body: &str) -> Result<IssuedToken, IdpError> {
    let now = SystemTime::now();
    response::parse(
        response::Answer {
            status,
            content_type: content_type.map(str::to_owned),
            retry_after: Some(Duration::from_secs(60)),
            body: body.as_bytes(),
            sent_at: now,
        },
        &profile(),
        &{
            let mut redactor = redact::Redactor::default();
            redactor.secret("s+/=:%&?");
            redactor
        },
    )
}

#[test]
fn expires_in_as_number_or_string() {
    let t = answer(
        200,
        None,
        r#"{"access_token":"a","token_type":"bearer","expires_in":3599}"#,
    )
    .unwrap();
    assert_eq!(t.lifetime, Duration::from_secs(3599));
    assert_eq!(t.token_type, "Bearer");
    let t = answer(200, None, r#"{"access_token":"a","expires_in":"3599"}"#).unwrap();
    assert_eq!(t.lifetime, Duration::from_secs(3599));
    assert_eq!(t.token_type, "Bearer");
}

#[test]
fn no_expires_in_falls_back_to_jwt_exp_then_default() {
    let exp = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .unwrap()
        .as_secs()
        + 600;
    let payload = URL_SAFE_NO_PAD.encode(format!(r#"{{"exp":{exp},"sub":"x"}}"#));
    let jwt = format!("eyJhbGciOiJub25lIn0.{payload}.sig");
    let t = answer(200, None, &format!(r#"{{"access_token":"{jwt}"}}"#)).unwrap();
    assert!(
        (595..=600).contains(&t.lifetime.as_secs()),
        "{:?}",
        t.lifetime
    );
    assert_eq!(
        t.expires_at.duration_since(UNIX_EPOCH).unwrap().as_secs(),
        exp
    );

    let t = answer(200, None, r#"{"access_token":"opaque","expires_in":null}"#).unwrap();
    assert_eq!(t.lifetime, Duration::from_secs(120));
}

#[test]
fn scope_null_means_the_requested_scopes() {
    let t = answer(
        200,
        None,
        r#"{"access_token":"a","expires_in":60,"scope":null}"#,
    )
    .unwrap();
    assert_eq!(t.scopes, ["read", "write"]);
    let t = answer(
        200,
        None,
        r#"{"access_token":"a","expires_in":60,"scope":"read  admin"}"#,
    )
    .unwrap();
    assert_eq!(t.scopes, ["read", "admin"]);
}

#[test]
fn extra_fields_and_entra_refresh_in() {
    let t = answer(
        200,
        Some("application/json"),
        r#"{"access_token":"a","expires_in":3599,"ext_expires_in":3599,"refresh_in":1800,"id_token":{"nested":[1,2]}}"#,
    )
    .unwrap();
    assert_eq!(t.refresh_in, Some(Duration::from_secs(1800)));
}

#[test]
fn oauth_errors_are_rejections_with_cleaned_detail() {
    let e = answer(
        401,
        Some("application/json"),
        r#"{"error":"invalid_client","error_description":"bad secret s+/=:%&? for\nclient"}"#,
    )
    .unwrap_err();
    assert!(!e.is_transient());
    let text = e.to_string();
    assert!(text.contains("invalid_client"), "{text}");
    assert!(text.contains("bad secret <redacted> for client"), "{text}");
    assert!(!text.contains("s+/=:%&?"));
}

#[test]
fn html_and_5xx_are_transient_with_retry_after() {
    let e = answer(503, Some("text/html"), "<html><body>down</body></html>").unwrap_err();
    assert!(e.is_transient());
    assert_eq!(e.retry_after(), Some(Duration::from_secs(60)));
    assert_eq!(
        e.to_string(),
        "identity provider answered HTTP 503 with a text/html body"
    );

    let e = answer(400, None, r#"{"error":"temporarily_unavailable"}"#).unwrap_err();
    assert!(e.is_transient());
    let e = answer(404, Some("text/html"), "<html>not found</html>").unwrap_err();
    assert!(!e.is_transient());
}

#[test]
fn ok_status_with_error_body_is_an_error() {
    let e = answer(200, None, r#"{"error":"invalid_scope"}"#).unwrap_err();
    assert!(matches!(e, IdpError::Rejected { ref error, .. } if error == "invalid_scope"));
}

#[test]
fn unusable_success_bodies_never_echo_the_token() {
    let e = answer(200, Some("text/html"), "<html>login page</html>").unwrap_err();
    assert!(matches!(e, IdpError::Malformed(_)));
    let e = answer(200, None, r#"{"access_token":12345678}"#).unwrap_err();
    assert!(!e.to_string().contains("12345678"));
    let e = answer(200, None, r#"{"access_token":"tok","expires_in":-5}"#).unwrap();
    assert_eq!(e.lifetime, Duration::from_secs(120));
}

/// Values a header cannot carry are refused whole, never cleaned and passed on.
#[test]
fn provider_values_a_header_cannot_carry_are_refused() {
    let body = |token: &str, token_type: &str| {
        serde_json::json!({"access_token": token, "token_type": token_type, "expires_in": 60})
            .to_string()
    };
    let huge = "a".repeat(response::MAX_ACCESS_TOKEN_BYTES + 1);
    for (token, token_type) in [
        ("zq9\r\nX-Injected: 1", "Bearer"),
        ("zq9 en", "Bearer"),
        ("zq9ö", "Bearer"),
        (huge.as_str(), "Bearer"),
        ("zq9", ""),
        ("zq9", "Bearer\r\nX-Injected: 1"),
        ("zq9", "Be arer"),
        ("zq9", &"X".repeat(65)),
    ] {
        let e = answer(200, None, &body(token, token_type)).unwrap_err();
        assert!(matches!(e, IdpError::Malformed(_)), "{e}");
        assert!(e.is_transient());
        let text = e.to_string();
        assert!(
            !text.contains("Injected") && !text.contains("zq9") && !text.contains("aaaa"),
            "{text}"
        );
    }
    let t = answer(200, None, &body(&"a".repeat(8192), "DPoP")).unwrap();
    assert_eq!(t.token_type, "DPoP");
}

#[test]
fn lifetimes_are_floored_and_clamped() {
    let e = answer(200, None, r#"{"access_token":"t","expires_in":0.001}"#).unwrap_err();
    assert!(e.to_string().contains("less than the 1s"), "{e}");
    let century = 100.0 * 365.0 * 86400.0;
    let t = answer(
        200,
        None,
        &format!(r#"{{"access_token":"t","expires_in":{century}}}"#),
    )
    .unwrap();
    assert_eq!(t.lifetime, Duration::from_secs(24 * 3600));
    let in_a_day = SystemTime::now() + Duration::from_secs(24 * 3600 + 5);
    assert!(t.expires_at < in_a_day);
    // A `refresh_in` that would have tokenvend ask again at once waits for half the life.
    let t = answer(
        200,
        None,
        r#"{"access_token":"t","expires_in":3600,"refresh_in":0.001}"#,
    )
    .unwrap();
    assert_eq!(t.refresh_in, Some(Duration::from_secs(1800)));
}

#[test]
fn basic_credentials_are_form_encoded_before_base64() {
    let value = basic_authorization("my id", &Secret::new("s+/=:%&?"));
    assert!(value.is_sensitive());
    let encoded = value.to_str().unwrap().strip_prefix("Basic ").unwrap();
    let decoded = String::from_utf8(
        base64::engine::general_purpose::STANDARD
            .decode(encoded)
            .unwrap(),
    )
    .unwrap();
    assert_eq!(decoded, "my+id:s%2B%2F%3D%3A%25%26%3F");
}

#[test]
fn form_body_carries_scopes_space_separated_and_params() {
    let (body, auth) = token_request(
        &profile(),
        &Credential::Post(Secret::new("x")),
        &Grant::ClientCredentials,
    );
    assert!(auth.is_none());
    assert_eq!(
        body,
        "grant_type=client_credentials&client_id=my+id&client_secret=x&scope=read+write"
    );
}

#[test]
fn a_client_assertion_goes_with_client_id_only_when_one_is_configured() {
    let assertion = Credential::Assertion(Secret::new("h.p.s"));
    let (body, auth) = token_request(&profile(), &assertion, &Grant::ClientCredentials);
    assert!(auth.is_none());
    assert_eq!(
        body,
        "grant_type=client_credentials&client_id=my+id&client_assertion_type=urn%3Aietf%3Aparams%3Aoauth%3Aclient-assertion-type%3Ajwt-bearer&client_assertion=h.p.s&scope=read+write"
    );
    let mut anonymous = Profile::clone(&profile());
    anonymous.client_id = String::new();
    let (body, _) = token_request(&anonymous, &assertion, &Grant::ClientCredentials);
    assert!(!body.contains("client_id"), "{body}");
    assert!(body.contains("&client_assertion=h.p.s"), "{body}");
}

#[test]
fn the_jwt_bearer_grant_sends_its_assertion_and_no_credential_of_its_own() {
    let assertion = Secret::new("h.p.s");
    let (body, auth) = token_request(
        &profile(),
        &Credential::None,
        &Grant::JwtBearer {
            assertion: &assertion,
        },
    );
    assert!(auth.is_none());
    assert_eq!(
        body,
        "grant_type=urn%3Aietf%3Aparams%3Aoauth%3Agrant-type%3Ajwt-bearer&assertion=h.p.s&scope=read+write"
    );
}

#[test]
fn retry_after_seconds_or_date() {
    let now = SystemTime::now();
    assert_eq!(
        parse_retry_after(&HeaderValue::from_static("60"), now),
        Some(Duration::from_secs(60))
    );
    let later = httpdate::fmt_http_date(now + Duration::from_secs(120));
    let parsed = parse_retry_after(&HeaderValue::try_from(later).unwrap(), now).unwrap();
    assert!((119..=120).contains(&parsed.as_secs()));
    assert_eq!(
        parse_retry_after(&HeaderValue::from_static("soon"), now),
        None
    );
}

mod properties {
    use proptest::prelude::*;

    use super::*;

    fn parse_any(status: u16, body: &[u8]) -> Result<IssuedToken, IdpError> {
        response::parse(
            response::Answer {
                status,
                content_type: Some("application/json".into()),
                retry_after: None,
                body,
                sent_at: SystemTime::now(),
            },
            &profile(),
            &redact::Redactor::default(),
        )
    }

    proptest! {
        #[test]
        fn arbitrary_bytes_never_panic_nor_make_a_token_from_nothing(
            status in 100u16..600,
            body in proptest::collection::vec(any::<u8>(), 0..512),
        ) {
            if let Ok(token) = parse_any(status, &body) {
                prop_assert!((200..300).contains(&status));
                prop_assert!(!token.access_token.expose().is_empty());
                let text = String::from_utf8_lossy(&body);
                prop_assert!(text.contains("access_token"));
            }
        }

        #[test]
        fn json_shaped_answers_yield_a_token_only_on_success_with_one(
            status in prop_oneof![Just(200u16), Just(400), Just(401), Just(429), Just(503)],
            token in proptest::option::of("[ -~]{0,40}"),
            expires_in in proptest::option::of(prop_oneof![
                any::<i64>().prop_map(|n| serde_json::json!(n)),
                "[0-9a-z.-]{0,12}".prop_map(|s| serde_json::json!(s)),
                Just(serde_json::Value::Null),
            ]),
            error in proptest::option::of("[a-z_]{0,20}"),
        ) {
            let mut body = serde_json::Map::new();
            if let Some(t) = &token { body.insert("access_token".into(), t.clone().into()); }
            if let Some(e) = expires_in { body.insert("expires_in".into(), e); }
            if let Some(e) = &error { body.insert("error".into(), e.clone().into()); }
            let text = serde_json::Value::Object(body).to_string();
            let result = parse_any(status, text.as_bytes());
            if status != 200 || token.is_none() {
                prop_assert!(result.is_err());
            }
            if let Err(e) = &result {
                // No error text carries the token it was given.
                if let Some(t) = token.filter(|t| t.len() > 8) {
                    prop_assert!(!e.to_string().contains(&t));
                }
            }
        }
    }
}
