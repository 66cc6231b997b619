use std::path::Path;

use super::*;

fn profile_yaml(extra: &str) -> String {
    format!(
        "profiles:\n  jama:\n    token_url: https://example.jamacloud.com/rest/oauth/token\n    client_id: abc\n    client_secret: {{ value: s3cret }}\n{extra}"
    )
}

fn error(yaml: &str) -> ConfigError {
    Config::from_yaml(yaml).unwrap_err().first().clone()
}

#[test]
fn contract_example_profile_parses_with_defaults() {
    let config = Config::from_yaml(&profile_yaml(
        "    auth_method: client_secret_basic\n    scopes: [a, b]\n    headers: { X-Api-Key: { value: k } }\n",
    ))
    .unwrap();
    let profile = &config.profiles[0];
    assert_eq!(&*profile.name, "jama");
    assert!(matches!(profile.client_auth, ClientAuth::SecretBasic(_)));
    assert_eq!(profile.grant, Grant::ClientCredentials);
    assert_eq!(profile.scopes, ["a", "b"]);
    assert_eq!(profile.headers[0].0.as_str(), "x-api-key");
    assert_eq!(profile.refresh_ahead, RefreshAhead::Fraction(0.8));
    assert_eq!(config.server.listen, "0.0.0.0:50051".parse().unwrap());
    assert_eq!(
        config.server.admin_listen,
        "127.0.0.1:9090".parse().unwrap()
    );
}

#[test]
fn unknown_keys_are_named_with_their_profile() {
    let e = error(&profile_yaml("    scope: [a]\n"));
    assert_eq!(e.key, "profiles.jama.scope");
    assert!(e.message.contains("unknown field `scope`"), "{e}");

    let e = error("server:\n  listen: 0.0.0.0:1\n  colour: blue\nprofiles: {}\n");
    assert_eq!(e.key, "server.colour");
    assert!(e.message.contains("unknown field `colour`"), "{e}");
}

#[test]
fn secret_source_needs_exactly_one_kind() {
    let yaml = "profiles:\n  p:\n    token_url: https://x/t\n    client_id: a\n    client_secret: { env: A, value: b }\n";
    assert_eq!(error(yaml).key, "profiles.p.client_secret");
}

#[test]
fn plain_http_only_to_loopback() {
    for ok in [
        "http://127.0.0.1:8080/token",
        "http://localhost/t",
        "http://[::1]:1/t",
    ] {
        let yaml = profile_yaml("").replace("https://example.jamacloud.com/rest/oauth/token", ok);
        Config::from_yaml(&yaml).unwrap_or_else(|e| panic!("{ok}: {e}"));
    }
    let yaml = profile_yaml("").replace(
        "https://example.jamacloud.com/rest/oauth/token",
        "http://idp.example.com/t",
    );
    let e = error(&yaml);
    assert_eq!(e.key, "profiles.jama.token_url");
    assert!(e.message.contains("use https"), "{e}");
}

#[test]
fn bad_values_are_named() {
    assert_eq!(
        error(&profile_yaml("    min_ttl: soon\n")).key,
        "profiles.jama.min_ttl"
    );
    assert_eq!(
        error(&profile_yaml("    refresh_ahead: 1.5\n")).key,
        "profiles.jama.refresh_ahead"
    );
    assert_eq!(
        error(&profile_yaml("    auth_method: magic\n")).key,
        "profiles.jama.auth_method"
    );
    assert_eq!(
        error(&profile_yaml("    params: { grant_type: password }\n")).key,
        "profiles.jama.params.grant_type"
    );
    assert_eq!(
        error(&profile_yaml(
            "    headers: { Authorization: { value: x } }\n"
        ))
        .key,
        "profiles.jama.headers.Authorization"
    );
    assert_eq!(
        error(&profile_yaml("    scopes: [\"a b\"]\n")).key,
        "profiles.jama.scopes"
    );
    assert_eq!(
        error("server:\n  listen: localhost\nprofiles: {}\n").key,
        "server.listen"
    );
}

#[test]
fn refresh_token_profiles_need_a_state_dir() {
    let e = error(&profile_yaml(
        "    grant: refresh_token\n    refresh_token: { value: rt }\n",
    ));
    assert_eq!(e.key, "server.state_dir");
    assert!(e.message.contains("`jama`"), "{e}");
    let yaml = format!(
        "server: {{ state_dir: /tmp/x }}\n{}",
        profile_yaml("    grant: refresh_token\n    refresh_token: { value: rt }\n")
    );
    assert_eq!(
        Config::from_yaml(&yaml).unwrap().profiles[0].grant,
        Grant::RefreshToken
    );
}

#[test]
fn refresh_ahead_is_a_fraction_or_a_duration_before_expiry() {
    let config = Config::from_yaml(&profile_yaml("    refresh_ahead: 5m\n")).unwrap();
    let ahead = config.profiles[0].refresh_ahead;
    assert_eq!(ahead, RefreshAhead::Before(Duration::from_secs(300)));
    assert_eq!(
        ahead.after(Duration::from_secs(3600)),
        Duration::from_secs(3300)
    );
    // Never later than half the lifetime, for tokens shorter than the margin.
    assert_eq!(
        ahead.after(Duration::from_secs(400)),
        Duration::from_secs(200)
    );
    assert_eq!(
        error(&profile_yaml("    refresh_ahead: soon\n")).key,
        "profiles.jama.refresh_ahead"
    );
}

#[test]
fn issuer_or_token_url_but_not_both() {
    let yaml = profile_yaml("    issuer: https://idm.example.com/oauth2/aus1\n");
    assert_eq!(error(&yaml).key, "profiles.jama.issuer");
    let yaml = "profiles:\n  okta:\n    issuer: https://idm.example.com/oauth2/aus1\n    client_id: a\n    client_secret: { value: s }\n";
    let config = Config::from_yaml(yaml).unwrap();
    assert!(matches!(config.profiles[0].endpoint, Endpoint::Issuer(_)));
    assert_eq!(config.profiles[0].endpoint_host(), "idm.example.com");
}

#[test]
fn key_options_need_private_key_jwt() {
    let yaml = "profiles:\n  p:\n    token_url: https://x/t\n    client_id: a\n    client_secret: { value: s }\n    key_id: k1\n";
    assert_eq!(error(yaml).key, "profiles.p.auth_method");
}

#[test]
fn each_auth_method_takes_its_own_credential_and_no_other() {
    let yaml = |keys: &str| {
        format!("profiles:\n  p:\n    token_url: https://x/t\n    client_id: a\n{keys}")
    };
    let cases = [
        (
            "    auth_method: client_secret_jwt\n",
            "profiles.p.client_secret",
        ),
        (
            "    auth_method: client_assertion\n",
            "profiles.p.client_assertion",
        ),
        (
            "    auth_method: client_secret_jwt\n    client_secret: { value: s }\n    private_key: { value: k }\n",
            "profiles.p.private_key",
        ),
        (
            "    client_secret: { value: s }\n    client_assertion: { file: /t }\n",
            "profiles.p.client_secret",
        ),
        (
            "    auth_method: client_assertion\n    client_assertion: { file: /t }\n    client_secret: { value: s }\n",
            "profiles.p.client_secret",
        ),
        (
            "    private_key: { value: k }\n    client_assertion: { file: /t }\n",
            "profiles.p.client_assertion",
        ),
    ];
    for (keys, key) in cases {
        assert_eq!(error(&yaml(keys)).key, key, "{keys}");
    }
    let config = Config::from_yaml(&yaml(
        "    auth_method: client_secret_jwt\n    client_secret: { env: S }\n",
    ))
    .unwrap();
    assert_eq!(
        config.profiles[0].client_auth,
        ClientAuth::SecretJwt(SecretSource::Env("S".into()))
    );
}

#[test]
fn a_client_assertion_profile_needs_no_client_id() {
    // `auth_method` follows from `client_assertion`, as it does from `private_key`.
    let yaml = "profiles:\n  fed:\n    token_url: https://x/t\n    client_assertion: { file: /var/run/secrets/tokens/idp }\n";
    let profile = &Config::from_yaml(yaml).unwrap().profiles[0];
    assert_eq!(
        profile.client_auth,
        ClientAuth::Assertion(SecretSource::File("/var/run/secrets/tokens/idp".into()))
    );
    assert_eq!(profile.client_id, "", "none configured, none sent");
    let with_id = yaml.replace(
        "    client_assertion",
        "    client_id: app-1\n    client_assertion",
    );
    assert_eq!(
        Config::from_yaml(&with_id).unwrap().profiles[0].client_id,
        "app-1"
    );
    // Every other method needs one, and so does the authorization request.
    let secret = "profiles:\n  p:\n    token_url: https://x/t\n    client_secret: { value: s }\n";
    assert_eq!(error(secret).key, "profiles.p.client_id");
    let authorize = format!(
        "server: {{ state_dir: /tmp/x }}\n{}    grant: refresh_token\n    authorize_url: https://x/a\n    redirect_uri: https://y/cb\n",
        yaml.replace("fed", "p")
    );
    assert_eq!(error(&authorize).key, "profiles.p.client_id");
}

#[test]
fn a_jwt_bearer_profile_signs_its_grant_and_may_authenticate_no_client() {
    let bearer = "profiles:\n  sf:\n    token_url: https://login.salesforce.com/services/oauth2/token\n    grant: jwt_bearer\n    client_id: consumer-key\n    private_key: { file: /k.pem }\n    key_id: k1\n    assertion_subject: integration@example.com\n";
    let profile = &Config::from_yaml(bearer).unwrap().profiles[0];
    assert_eq!(profile.grant, Grant::JwtBearer);
    assert_eq!(
        profile.client_auth,
        ClientAuth::None,
        "the assertion is the proof"
    );
    let jwt = profile.jwt_bearer.as_deref().unwrap();
    assert_eq!(jwt.subject, "integration@example.com");
    assert_eq!(jwt.audience, None, "the token endpoint");
    assert_eq!(jwt.key.key_id.as_deref(), Some("k1"));
    assert_eq!(jwt.key.private_key, SecretSource::File("/k.pem".into()));

    // With a client secret beside it, the client authenticates too (Keycloak).
    let with_secret = format!(
        "{bearer}    client_secret: {{ env: S }}\n    assertion_audience: https://sso.example.com/realms/r\n"
    );
    let profile = &Config::from_yaml(&with_secret).unwrap().profiles[0];
    assert_eq!(
        profile.client_auth,
        ClientAuth::SecretPost(SecretSource::Env("S".into()))
    );
    assert_eq!(
        profile.jwt_bearer.as_deref().unwrap().audience.as_deref(),
        Some("https://sso.example.com/realms/r")
    );

    let cases = [
        (
            bearer.replace("    private_key: { file: /k.pem }\n", ""),
            "profiles.sf.private_key",
        ),
        (
            bearer.replace("    assertion_subject: integration@example.com\n", ""),
            "profiles.sf.assertion_subject",
        ),
        (
            format!("{bearer}    auth_method: private_key_jwt\n"),
            "profiles.sf.auth_method",
        ),
        (
            format!("{bearer}    refresh_token: {{ env: R }}\n"),
            "profiles.sf.refresh_token",
        ),
        (
            profile_yaml("    assertion_subject: x\n"),
            "profiles.jama.assertion_subject",
        ),
        (
            profile_yaml("    auth_method: none\n"),
            "profiles.jama.auth_method",
        ),
    ];
    for (yaml, key) in cases {
        assert_eq!(error(&yaml).key, key, "{yaml}");
    }
}

#[test]
fn mutual_tls_needs_a_certificate_and_key_and_nothing_else() {
    let tls = "profiles:\n  m:\n    token_url: https://x/t\n    client_id: a\n    auth_method: tls_client_auth\n    client_certificate: { file: /c.crt }\n    client_key: { file: /c.key }\n    provider_ca: /ca.crt\n";
    let profile = &Config::from_yaml(tls).unwrap().profiles[0];
    assert_eq!(
        profile.client_auth,
        ClientAuth::Tls(Box::new(TlsClientAuth {
            certificate: SecretSource::File("/c.crt".into()),
            key: SecretSource::File("/c.key".into()),
            self_signed: false,
        }))
    );
    assert_eq!(profile.provider_ca.as_deref(), Some(Path::new("/ca.crt")));
    let self_signed = tls.replace("tls_client_auth", "self_signed_tls_client_auth");
    assert!(matches!(
        &Config::from_yaml(&self_signed).unwrap().profiles[0].client_auth,
        ClientAuth::Tls(t) if t.self_signed
    ));
    let cases = [
        (
            tls.replace("    client_key: { file: /c.key }\n", ""),
            "profiles.m.client_certificate",
        ),
        (
            format!("{tls}    client_secret: {{ value: s }}\n"),
            "profiles.m.client_secret",
        ),
        (
            profile_yaml("    client_certificate: { file: /c.crt }\n"),
            "profiles.jama.client_certificate",
        ),
    ];
    for (yaml, key) in cases {
        assert_eq!(error(&yaml).key, key, "{yaml}");
    }
}

#[test]
fn token_exchange_profiles_fetch_nothing_of_their_own() {
    let yaml = "profiles:\n  x:\n    token_url: https://x/t\n    grant: token_exchange\n    client_id: a\n    client_secret: { value: s }\n";
    assert_eq!(
        Config::from_yaml(yaml).unwrap().profiles[0].grant,
        Grant::TokenExchange
    );
    assert_eq!(
        error(&format!("{yaml}    warm_up: true\n")).key,
        "profiles.x.warm_up"
    );
}

#[test]
fn per_call_values_are_listed_one_by_one_and_not_for_refresh_tokens() {
    let config = Config::from_yaml(&profile_yaml(
        "    allowed_scopes: [a, b]\n    allowed_audiences: [\"https://x\"]\n",
    ))
    .unwrap();
    let per_call = config.profiles[0].per_call.as_deref().unwrap();
    assert_eq!(per_call.scopes, ["a", "b"]);
    assert_eq!(per_call.audiences, ["https://x"]);
    assert!(per_call.resources.is_empty());
    assert_eq!(
        error(&profile_yaml("    allowed_scopes: [\"a b\"]\n")).key,
        "profiles.jama.allowed_scopes"
    );
    let chained = format!(
        "server: {{ state_dir: /tmp/x }}\n{}    grant: refresh_token\n    allowed_resources: [r]\n",
        profile_yaml("").trim_end_matches('\n').to_owned() + "\n"
    );
    assert_eq!(error(&chained).key, "profiles.jama.allowed_resources");
}

#[test]
fn errors_never_echo_a_secret() {
    let yaml = "profiles:\n  p:\n    token_url: http://idp.example.com/t\n    client_id: a\n    client_secret: { value: TOPSECRET }\n    colour: 1\n";
    assert!(!error(yaml).to_string().contains("TOPSECRET"));
}

#[test]
fn no_profiles_is_an_error() {
    assert_eq!(error("server: {}\n").key, "profiles");
}

#[test]
fn shutdown_and_reload_timings_have_defaults_and_can_be_set() {
    let config = Config::from_yaml(&profile_yaml("")).unwrap();
    assert_eq!(config.server.shutdown_delay, Duration::from_secs(5));
    assert_eq!(config.server.reload_interval, Duration::from_secs(2));
    assert_eq!(config.path, None);

    let yaml = format!(
        "server:\n  shutdown_delay: 0s\n  reload_interval: 250ms\n{}",
        profile_yaml("")
    );
    let config = Config::from_yaml(&yaml).unwrap();
    assert_eq!(config.server.shutdown_delay, Duration::ZERO);
    assert_eq!(config.server.reload_interval, Duration::from_millis(250));
}

#[test]
fn load_remembers_the_path_for_reloading() {
    let file = tempfile::NamedTempFile::new().unwrap();
    std::fs::write(file.path(), profile_yaml("")).unwrap();
    let config = Config::load(file.path()).unwrap();
    assert_eq!(config.path.as_deref(), Some(file.path()));
    assert_eq!(config.digest, digest(profile_yaml("").as_bytes()));
}

#[test]
fn a_digest_fed_in_pieces_is_the_digest_of_the_whole() {
    let text = profile_yaml("    scopes: [a, b]\n");
    let mut pieces = Digest::default();
    for chunk in text.as_bytes().chunks(7) {
        pieces.update(chunk);
    }
    assert_eq!(pieces.finish(), digest(text.as_bytes()));
    assert_ne!(digest(text.as_bytes()), digest(profile_yaml("").as_bytes()));
}

#[test]
fn profiles_compare_by_configuration_and_secret_source() {
    let profile = |extra: &str| {
        Config::from_yaml(&profile_yaml(extra))
            .unwrap()
            .profiles
            .remove(0)
    };
    assert_eq!(profile("    scopes: [a]\n"), profile("    scopes: [a]\n"));
    assert_ne!(profile("    scopes: [a]\n"), profile("    scopes: [b]\n"));
    assert_ne!(profile(""), profile("    timeout: 3s\n"));

    // A file source is the same source whatever the file holds now.
    let file = tempfile::NamedTempFile::new().unwrap();
    let yaml = |path: &Path| {
        format!(
            "profiles:\n  p:\n    token_url: https://idp.example.com/t\n    client_id: a\n    client_secret: {{ file: {} }}\n",
            path.display()
        )
    };
    std::fs::write(file.path(), "before").unwrap();
    let before = Config::from_yaml(&yaml(file.path()))
        .unwrap()
        .profiles
        .remove(0);
    std::fs::write(file.path(), "after").unwrap();
    let after = Config::from_yaml(&yaml(file.path()))
        .unwrap()
        .profiles
        .remove(0);
    assert_eq!(before, after);
}

mod properties {
    use proptest::prelude::*;

    use super::*;

    proptest! {
        #[test]
        fn arbitrary_text_never_panics(text in "\\PC{0,300}") {
            let _ = Config::from_yaml(&text);
        }

        #[test]
        fn arbitrary_values_under_known_keys_are_errors_or_valid(
            key in prop_oneof![
                Just("token_url"), Just("client_id"), Just("scopes"), Just("timeout"),
                Just("refresh_ahead"), Just("allow"), Just("idp_requests_per_minute"),
                Just("headers"), Just("retry"), Just("min_ttl"),
            ],
            value in "[ -~]{0,40}",
        ) {
            let yaml = format!(
                "profiles:\n  p:\n    token_url: https://idp.example.com/token\n    client_id: a\n    client_secret: {{ value: s }}\n    {key}: {value}\n"
            );
            match Config::from_yaml(&yaml) {
                Ok(config) => prop_assert_eq!(config.profiles.len(), 1),
                Err(e) => prop_assert!(!e.to_string().contains("value: s"), "{}", e),
            }
        }
    }
}

#[test]
fn allow_patterns_and_idp_ceiling_parse() {
    let config = Config::from_yaml(&profile_yaml(
        "    allow: [\"system:serviceaccount:orders:*\", \"spiffe://cluster.local/ns/a/sa/b\"]\n    idp_requests_per_minute: 5\n",
    ))
    .unwrap();
    let profile = &config.profiles[0];
    assert_eq!(profile.allow.as_ref().unwrap().len(), 2);
    assert_eq!(profile.idp_requests_per_minute, 5);

    let e = error(&profile_yaml(
        "    allow: [\"system:serviceaccount:ord*\"]\n",
    ));
    assert_eq!(e.key, "profiles.jama.allow[0]");
    let e = error(&profile_yaml("    idp_requests_per_minute: 0\n"));
    assert_eq!(e.key, "profiles.jama.idp_requests_per_minute");
}

#[test]
fn server_auth_tls_and_limits_name_their_keys() {
    let e = error(&format!(
        "server:\n  auth: {{ service_account: {{ issuer: \"http://10.0.0.1\" }} }}\n{}",
        &profile_yaml("")
    ));
    assert_eq!(e.key, "server.auth.service_account.issuer");
    let e = error(&format!(
        "server:\n  limits: {{ rate: 0 }}\n{}",
        &profile_yaml("")
    ));
    assert_eq!(e.key, "server.limits.rate");
    let config = Config::from_yaml(&format!(
        "server:\n  auth: {{ allow_unauthenticated: true }}\n  limits: {{ rate: 5, burst: 2 }}\n{}",
        &profile_yaml("")
    ))
    .unwrap();
    assert!(config.server.auth.allow_unauthenticated);
    assert_eq!(config.server.limits.burst, 2);
}

const STORE_KEY: &str = "BwcHBwcHBwcHBwcHBwcHBwcHBwcHBwcHBwcHBwcHBwc=";

fn store_yaml(redis: &str) -> String {
    format!(
        "server:\n  store:\n    redis:\n{redis}\n{}",
        profile_yaml("")
    )
}

#[test]
fn redis_store_parses_with_defaults_and_tls_switches_the_scheme() {
    let config = Config::from_yaml(&store_yaml(&format!(
        "      url: redis://redis.example:6379/2\n      tls: true\n      password: {{ value: pw }}\n      encryption_keys:\n        - {{ id: k2, key: {{ value: \"{STORE_KEY}\" }} }}\n        - {{ id: k1, key: {{ value: \"{STORE_KEY}\" }} }}"
    )))
    .unwrap();
    let store = config.server.store.unwrap();
    assert!(
        matches!(&store.target, super::RedisTarget::Url(url) if url.as_str() == "rediss://redis.example:6379/2")
    );
    assert_eq!(store.key_prefix, "tokenvend");
    assert!(store.password.is_some());
    let ids: Vec<_> = store
        .encryption_keys
        .iter()
        .map(|k| k.id.as_str())
        .collect();
    assert_eq!(ids, ["k2", "k1"]);
    assert!(
        Config::from_yaml(&profile_yaml(""))
            .unwrap()
            .server
            .store
            .is_none()
    );
}

#[test]
fn redis_store_errors_name_the_key_and_never_show_the_url_password() {
    let e = error(&store_yaml(&format!(
        "      url: \"redis://:hunter2@[bad\"\n      encryption_keys: [{{ id: k, key: {{ value: \"{STORE_KEY}\" }} }}]"
    )));
    assert_eq!(e.key, "server.store.redis.url");
    assert!(!e.to_string().contains("hunter2"), "{e}");

    let e = error(&store_yaml("      url: redis://r:6379"));
    assert_eq!(e.key, "server.store.redis.encryption_keys");

    let config = Config::from_yaml(&store_yaml(&format!(
        "      url: redis://:hunter2@r:6379\n      encryption_keys: [{{ id: k, key: {{ value: \"{STORE_KEY}\" }} }}]"
    )))
    .unwrap();
    let debug = format!("{config:?}");
    assert!(!debug.contains("hunter2"), "{debug}");
    assert!(!debug.contains(STORE_KEY), "{debug}");
}

#[test]
fn refresh_token_profiles_need_state_dir_or_a_store() {
    let chained = "    grant: refresh_token\n    refresh_token: { value: rt }\n";
    let e = error(&profile_yaml(chained));
    assert_eq!(e.key, "server.state_dir");
    assert!(e.message.contains("server.store"), "{e}");
    let with_store = format!(
        "server:\n  store:\n    redis:\n      url: redis://r:6379\n      encryption_keys: [{{ id: k, key: {{ value: \"{STORE_KEY}\" }} }}]\n{}",
        profile_yaml(chained)
    );
    Config::from_yaml(&with_store).unwrap();
}

#[test]
fn every_broken_profile_and_section_is_reported() {
    let yaml = "server:\n  listen: nowhere\n  limits: { rate: 0 }\nprofiles:\n  a:\n    client_id: x\n    client_secret: { env: A }\n  b:\n    token_url: https://x/t\n    client_secret: { env: B }\n    retry: { initial: 1m, max: 1s }\n";
    let errors = Config::from_yaml(yaml).unwrap_err();
    let keys: Vec<_> = errors.iter().map(|e| e.key.as_str()).collect();
    assert_eq!(
        keys,
        [
            "server.listen",
            "server.limits.rate",
            "profiles.a.token_url",
            "profiles.b.client_id",
            "profiles.b.retry.initial",
        ]
    );
    assert_eq!(errors.to_string().lines().count(), 5, "{errors}");
}

#[test]
fn validation_reads_no_secret_and_no_file() {
    // Everything named here is missing; the configuration is still well-formed data, and
    // only building it (crate::app) reads what it names.
    let yaml = "server:\n  tls: { cert: /nonexistent.pem, key: /nonexistent.key }\n  auth:\n    service_account: { issuer: https://k8s.example, jwks_file: /nonexistent.json }\nprofiles:\n  p:\n    token_url: https://x/t\n    client_id: a\n    private_key: { file: /nonexistent.key }\n    headers: { X-Api-Key: { env: TOKENVEND_TEST_NOT_SET_ANYWHERE } }\n";
    let config = Config::from_yaml(yaml).unwrap();
    assert!(matches!(
        config.profiles[0].client_auth,
        ClientAuth::PrivateKeyJwt(_)
    ));
}

#[test]
fn connection_and_per_caller_limits_have_safe_defaults_and_name_their_keys() {
    let limits = Config::from_yaml(&profile_yaml("")).unwrap().server.limits;
    assert_eq!(limits.idle_timeout, Duration::from_secs(60));
    assert_eq!(limits.unauthenticated_timeout, Duration::from_secs(10));
    assert_eq!(limits.max_connections_per_peer, 64);
    assert_eq!(limits.max_watches_per_caller, 64);
    assert_eq!(limits.max_pending_per_caller, 1024);
    let limits = Config::from_yaml(&format!(
        "server:\n  limits: {{ idle_timeout: 5s, unauthenticated_timeout: 1s, max_connections_per_peer: 3, max_watches_per_caller: 2, max_pending_per_caller: 7 }}\n{}",
        &profile_yaml("")
    ))
    .unwrap()
    .server
    .limits;
    assert_eq!(limits.idle_timeout, Duration::from_secs(5));
    assert_eq!(limits.unauthenticated_timeout, Duration::from_secs(1));
    assert_eq!(
        (
            limits.max_connections_per_peer,
            limits.max_watches_per_caller,
            limits.max_pending_per_caller
        ),
        (3, 2, 7)
    );
    for (yaml, key) in [
        ("idle_timeout: 0s", "server.limits.idle_timeout"),
        (
            "unauthenticated_timeout: 0s",
            "server.limits.unauthenticated_timeout",
        ),
        (
            "max_connections_per_peer: 0",
            "server.limits.max_connections_per_peer",
        ),
        (
            "max_watches_per_caller: 0",
            "server.limits.max_watches_per_caller",
        ),
        (
            "max_pending_per_caller: 0",
            "server.limits.max_pending_per_caller",
        ),
    ] {
        let e = error(&format!(
            "server:\n  limits: {{ {yaml} }}\n{}",
            &profile_yaml("")
        ));
        assert_eq!(e.key, key, "{yaml}");
    }
}

#[test]
fn lifetime_bounds_and_rejection_spacing_have_defaults_and_checks() {
    let config = Config::from_yaml(&profile_yaml("")).unwrap();
    let profile = &config.profiles[0];
    assert_eq!(profile.max_lifetime, Duration::from_secs(24 * 3600));
    assert_eq!(profile.default_lifetime, Duration::from_secs(3600));
    assert_eq!(profile.rejected_token_min_interval, Duration::from_secs(30));

    // A short `max_lifetime` lowers the default lifetime with it.
    let config = Config::from_yaml(&profile_yaml(
        "    max_lifetime: 10m\n    rejected_token_min_interval: 0s\n",
    ))
    .unwrap();
    let profile = &config.profiles[0];
    assert_eq!(profile.default_lifetime, Duration::from_secs(600));
    assert_eq!(profile.rejected_token_min_interval, Duration::ZERO);

    let e = error(&profile_yaml(
        "    max_lifetime: 10m\n    default_lifetime: 1h\n",
    ));
    assert_eq!(e.key, "profiles.jama.default_lifetime");
    let e = error(&profile_yaml("    max_lifetime: 500ms\n"));
    assert_eq!(e.key, "profiles.jama.max_lifetime");
}

#[test]
fn the_metrics_token_is_a_secret_source_and_excludes_open_metrics() {
    let server = |admin: &str| {
        Config::from_yaml(&format!("server:\n  admin: {admin}\n{}", profile_yaml("")))
            .map(|c| c.server.admin)
    };
    assert_eq!(server("{}").unwrap(), AdminConfig::default());
    let admin = server("{ metrics_token: { file: /run/token } }").unwrap();
    assert_eq!(
        admin.metrics_token,
        Some(SecretSource::File("/run/token".into()))
    );
    let e = server("{ metrics_token: { file: /t }, unauthenticated_metrics: true }").unwrap_err();
    assert_eq!(e.first().key, "server.admin.unauthenticated_metrics");
    let e = server("{ metrics_token: {} }").unwrap_err();
    assert_eq!(e.first().key, "server.admin.metrics_token");
    let e = server("{ metrics_tokens: { file: /t } }").unwrap_err();
    assert!(e.first().to_string().contains("metrics_tokens"), "{e}");
}

#[test]
fn ext_authz_is_on_by_default_and_its_routes_must_name_a_profile() {
    let config = Config::from_yaml(&profile_yaml("")).unwrap();
    let ext = &config.server.ext_authz;
    assert!(ext.enabled);
    assert_eq!(ext.context_extension, "tokenvend_profile");
    assert_eq!(
        ext.profile_header.as_ref().map(HeaderName::as_str),
        Some("x-tokenvend-profile")
    );
    let with = |ext: &str| format!("server:\n  ext_authz:\n{ext}\n{}", profile_yaml(""));
    let config = Config::from_yaml(&with(
        "    enabled: false\n    profile_header: \"\"\n    routes:\n      - { host: API.example.com, path_prefix: /v1/, profile: jama }",
    ))
    .unwrap();
    let ext = &config.server.ext_authz;
    assert!(!ext.enabled);
    assert_eq!(ext.profile_header, None);
    assert_eq!(ext.routes[0].host.as_deref(), Some("api.example.com"));
    for (yaml, key) in [
        (
            "    routes: [{ host: a.example, profile: nope }]",
            "server.ext_authz.routes[0].profile",
        ),
        (
            "    routes: [{ profile: jama }]",
            "server.ext_authz.routes[0]",
        ),
        (
            "    routes: [{ path_prefix: v1, profile: jama }]",
            "server.ext_authz.routes[0].path_prefix",
        ),
        (
            "    routes: [{ host: \"https://a.example\", profile: jama }]",
            "server.ext_authz.routes[0].host",
        ),
        (
            "    profile_header: \"bad header\"",
            "server.ext_authz.profile_header",
        ),
        (
            "    context_extension: \"\"",
            "server.ext_authz.context_extension",
        ),
        (
            "    max_request_bytes: 0",
            "server.ext_authz.max_request_bytes",
        ),
        ("    enable: true", "server.ext_authz.enable"),
    ] {
        assert_eq!(error(&with(yaml)).key, key, "{yaml}");
    }
}

#[test]
fn forward_auth_keys_are_checked() {
    let config = |forward: &str| {
        Config::from_yaml(&format!(
            "server:\n  forward_auth:\n{forward}profiles:\n  p:\n    token_url: https://idp.example.com/t\n    client_id: a\n    client_secret: {{ value: s }}\n"
        ))
    };
    let forward = config("    listen: 127.0.0.1:8080\n")
        .unwrap()
        .server
        .forward_auth
        .unwrap();
    assert_eq!(forward.caller_header, "x-tokenvend-authorization");
    assert_eq!(forward.rejected_token_header, "x-tokenvend-rejected-token");
    assert_eq!(forward.max_age, Duration::from_secs(30));
    let error = |forward: &str| config(forward).unwrap_err().first().to_string();
    assert!(error("    listen: nowhere\n").starts_with("server.forward_auth.listen:"));
    assert!(
        error("    listen: 127.0.0.1:8080\n    caller_header: \"bad header\"\n")
            .starts_with("server.forward_auth.caller_header:")
    );
    assert!(
        error("    listen: 127.0.0.1:8080\n    rejected_token_header: x-tokenvend-authorization\n")
            .contains("must differ")
    );
    assert!(error("    port: 8080\n").contains("port"));
}

#[test]
fn a_template_is_a_refresh_token_profile_authorized_per_subject() {
    let key = "server:\n  state_dir: /tmp/unused\n  connections: { key: { env: TV_CONNECTIONS_KEY }, max_cached: 500, idle: 10m }\n";
    let template = "profiles:\n  t:\n    token_url: https://x/t\n    grant: refresh_token\n    template: true\n    client_id: a\n    client_secret: { value: s }\n    authorize_url: https://x/auth\n    redirect_uri: https://app/cb\n";
    let config = Config::from_yaml(&format!("{key}{template}")).unwrap();
    assert!(config.profiles[0].template);
    assert_eq!(config.server.connections.max_cached, 500);
    assert_eq!(config.server.connections.idle, Duration::from_secs(600));
    // The key names and seals connections: required.
    assert_eq!(
        error(&format!("server:\n  state_dir: /tmp/unused\n{template}")).key,
        "server.connections.key"
    );
    let cases = [
        (
            template.replace("grant: refresh_token", "grant: client_credentials"),
            "profiles.t.template",
        ),
        (
            template.replace(
                "    authorize_url: https://x/auth\n    redirect_uri: https://app/cb\n",
                "",
            ),
            "profiles.t.template",
        ),
        (
            format!("{template}    refresh_token: {{ value: r }}\n"),
            "profiles.t.refresh_token",
        ),
        (
            format!("{template}    warm_up: true\n"),
            "profiles.t.warm_up",
        ),
    ];
    for (profile, wanted) in cases {
        assert_eq!(error(&format!("{key}{profile}")).key, wanted, "{profile}");
    }
    assert_eq!(
        error(&format!(
            "server:\n  connections: {{ max_cached: 0 }}\n{template}"
        ))
        .key,
        "server.connections.max_cached"
    );
}
