use std::{net::SocketAddr, time::Duration};

use super::*;

fn profile_yaml(extra: &str) -> String {
    format!(
        "profiles:\n  jama:\n    token_url: https://example.jamacloud.com/rest/oauth/token\n    client_id: abc\n    client_secret: {{ value: s3cret }}\n{extra}"
    )
}

const LOOPBACK: &str = "127.0.0.1:50051";
const ANY: &str = "0.0.0.0:50051";

fn build(yaml: &str, grpc: &str) -> Result<App, ConfigErrors> {
    let config = Config::from_yaml(yaml).unwrap_or_else(|e| panic!("{e}"));
    let admin = config.server.admin_listen;
    App::build(
        config,
        grpc.parse::<SocketAddr>().unwrap(),
        Some(admin),
        None,
    )
}

fn error(yaml: &str) -> ConfigError {
    build(yaml, LOOPBACK).unwrap_err().first().clone()
}

#[test]
fn missing_secrets_name_profile_key_and_source() {
    let yaml = "profiles:\n  jakamo:\n    token_url: https://login.example.com/t\n    client_id: a\n    client_secret: { env: TOKENVEND_TEST_NOT_SET_ANYWHERE }\n";
    assert_eq!(
        error(yaml).to_string(),
        "profiles.jakamo.client_secret: environment variable TOKENVEND_TEST_NOT_SET_ANYWHERE is not set"
    );
    let yaml = profile_yaml("    headers: { X-Api-Key: { file: /nonexistent/key } }\n");
    let e = error(&yaml);
    // Header names are case-insensitive; the key names the header as it is sent.
    assert_eq!(e.key, "profiles.jama.headers.x-api-key");
    assert!(e.message.contains("/nonexistent/key"), "{e}");
}

#[test]
fn header_values_must_be_sendable() {
    let yaml = profile_yaml("    headers: { X-Api-Key: { value: \"a\\nb\" } }\n");
    assert_eq!(error(&yaml).key, "profiles.jama.headers.x-api-key");
}

#[test]
fn private_key_jwt_needs_a_usable_key() {
    let yaml = "profiles:\n  p:\n    token_url: https://x/t\n    client_id: a\n    auth_method: private_key_jwt\n    private_key: { value: not-a-pem }\n";
    let e = error(yaml);
    assert_eq!(e.key, "profiles.p.private_key");
    assert!(e.message.contains("RSA private key"), "{e}");
    assert!(!e.message.contains("not-a-pem"));
}

#[test]
fn a_client_assertion_must_be_readable_and_shaped_like_a_jwt() {
    let yaml = |source: &str| {
        format!(
            "profiles:\n  fed:\n    token_url: https://x/t\n    auth_method: client_assertion\n    client_assertion: {source}\n"
        )
    };
    let e = error(&yaml("{ file: /nonexistent/token }"));
    assert_eq!(e.key, "profiles.fed.client_assertion");
    assert!(e.message.contains("/nonexistent/token"), "{e}");
    for not_a_jwt in ["opaque-token", "a.b", "a..c", "a.b.c.d", "a.b+.c"] {
        let e = error(&yaml(&format!("{{ value: \"{not_a_jwt}\" }}")));
        assert_eq!(e.key, "profiles.fed.client_assertion");
        assert!(
            !e.message.contains(not_a_jwt),
            "the value is not shown: {e}"
        );
    }
    build(
        &yaml("{ value: eyJhbGciOiJFUzI1NiJ9.eyJzdWIiOiJ4In0.c2ln }"),
        LOOPBACK,
    )
    .unwrap_or_else(|e| panic!("{e}"));
}

#[test]
fn mutual_tls_files_are_read_and_must_make_an_identity() {
    let yaml = |cert: &str, key: &str, ca: &str| {
        format!(
            "profiles:\n  m:\n    token_url: https://x/t\n    client_id: a\n    auth_method: tls_client_auth\n    client_certificate: {cert}\n    client_key: {key}\n    provider_ca: {ca}\n"
        )
    };
    let key = rcgen::KeyPair::generate().unwrap();
    let cert = rcgen::CertificateParams::new(vec!["client".to_string()])
        .unwrap()
        .self_signed(&key)
        .unwrap();
    let dir = tempfile::tempdir().unwrap();
    let path = |name: &str, text: &str| {
        let p = dir.path().join(name);
        std::fs::write(&p, text).unwrap();
        p.display().to_string()
    };
    let (crt, pem_key) = (
        path("c.crt", &cert.pem()),
        path("c.key", &key.serialize_pem()),
    );
    let junk = path("junk", "not pem");
    let file = |p: &str| format!("{{ file: {p} }}");
    build(&yaml(&file(&crt), &file(&pem_key), &crt), LOOPBACK).unwrap_or_else(|e| panic!("{e}"));
    for (yaml, key) in [
        (
            yaml(&file(&junk), &file(&pem_key), &crt),
            "profiles.m.client_certificate",
        ),
        (
            yaml(&file(&crt), &file(&junk), &crt),
            "profiles.m.client_key",
        ),
        (
            yaml(&file(&crt), &file(&pem_key), &junk),
            "profiles.m.provider_ca",
        ),
        (
            yaml(&file(&crt), &file("/nonexistent.key"), &crt),
            "profiles.m.client_key",
        ),
    ] {
        let e = error(&yaml);
        assert_eq!(e.key, key, "{e}");
        assert!(!e.message.contains("PRIVATE KEY"), "{e}");
    }
}

#[test]
fn tls_files_key_sets_and_store_keys_are_read() {
    let e = error(&format!(
        "server:\n  tls: {{ cert: /nonexistent.pem, key: /nonexistent.key }}\n{}",
        profile_yaml("")
    ));
    assert_eq!(e.key, "server.tls.cert");
    let e = error(&format!(
        "server:\n  auth:\n    service_account: {{ issuer: https://k8s.example, jwks_file: /nonexistent.json }}\n{}",
        profile_yaml("")
    ));
    assert_eq!(e.key, "server.auth.service_account.jwks_file");
    let e = error(&format!(
        "server:\n  store:\n    redis:\n      url: redis://r:6379\n      encryption_keys: [{{ id: k, key: {{ value: c2hvcnQ= }} }}]\n{}",
        profile_yaml("")
    ));
    assert_eq!(e.key, "server.store.redis.encryption_keys[0].key");
    assert!(e.message.contains("32 bytes"), "{e}");
}

#[test]
fn every_error_is_reported_not_only_the_first() {
    let yaml = "server:\n  tls: { cert: /nonexistent.pem, key: /nonexistent.key }\nprofiles:\n  a:\n    token_url: https://x/t\n    client_id: a\n    client_secret: { env: TOKENVEND_TEST_NOT_SET_A }\n  b:\n    token_url: https://x/t\n    client_id: b\n    client_secret: { value: s }\n    headers: { X-Key: { env: TOKENVEND_TEST_NOT_SET_B } }\n";
    let errors = build(yaml, ANY).unwrap_err();
    let keys: Vec<_> = errors.iter().map(|e| e.key.as_str()).collect();
    assert_eq!(
        keys,
        [
            "profiles.a.client_secret",
            "profiles.b.headers.x-key",
            "server.tls.cert",
            "server.auth",
        ],
        "{errors}"
    );
}

#[test]
fn a_reachable_port_without_caller_authentication_is_refused() {
    let e = build(&profile_yaml(""), ANY).unwrap_err();
    assert_eq!(e.first().key, "server.auth");
    assert!(e.first().message.contains("0.0.0.0:50051"), "{e}");
    // Loopback: nobody else can reach it.
    build(&profile_yaml(""), LOOPBACK).unwrap();
    build(&profile_yaml(""), "[::1]:50051").unwrap();
    // Said on purpose: served, with a warning naming the key.
    let app = build(
        &format!(
            "server:\n  auth: {{ allow_unauthenticated: true }}\n{}",
            profile_yaml("")
        ),
        ANY,
    )
    .unwrap();
    let keys: Vec<_> = app.warnings().iter().map(|w| w.key.as_str()).collect();
    assert_eq!(keys, ["server.auth.allow_unauthenticated"]);
    // Callers that authenticate: no warning about the port, one about the open profile.
    let jwks = tempfile::NamedTempFile::new().unwrap();
    let key = p256::ecdsa::SigningKey::random(&mut p256::elliptic_curve::rand_core::OsRng);
    let point = key.verifying_key().to_encoded_point(false);
    let b64 = |bytes: &[u8]| {
        use base64::Engine as _;
        base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(bytes)
    };
    std::fs::write(
        jwks.path(),
        serde_json::json!({"keys": [{
            "kty": "EC", "crv": "P-256", "kid": "k", "use": "sig", "alg": "ES256",
            "x": b64(point.x().unwrap()), "y": b64(point.y().unwrap()),
        }]})
        .to_string(),
    )
    .unwrap();
    let app = build(
        &format!(
            "server:\n  auth:\n    service_account: {{ issuer: https://k8s.example, jwks_file: {} }}\n{}",
            jwks.path().display(),
            profile_yaml("")
        ),
        ANY,
    )
    .unwrap();
    let keys: Vec<_> = app.warnings().iter().map(|w| w.key.as_str()).collect();
    assert_eq!(keys, ["profiles.jama.allow"]);
}

#[test]
fn restart_only_settings_are_kept_and_named() {
    let running = Config::from_yaml(&format!(
        "server:\n  listen: 127.0.0.1:1\n  state_dir: /a\n  limits: {{ max_concurrent_streams: 8, rate: 5 }}\n{}",
        profile_yaml("")
    ))
    .unwrap()
    .server;
    let mut new = Config::from_yaml(&format!(
        "server:\n  listen: 127.0.0.1:2\n  admin_listen: 127.0.0.1:3\n  admin: {{ unauthenticated_metrics: true }}\n  state_dir: /b\n  tls: {{ cert: /c, key: /k }}\n  shutdown_grace: 1s\n  limits: {{ max_concurrent_streams: 9, rate: 7 }}\n{}",
        profile_yaml("")
    ))
    .unwrap()
    .server;
    let changed = keep_restart_only(&mut new, &running);
    assert_eq!(
        changed,
        [
            "server.listen",
            "server.admin_listen",
            "server.admin",
            "server.state_dir",
            "server.tls",
            "server.limits.max_concurrent_streams",
        ]
    );
    assert_eq!(new.listen, running.listen);
    assert_eq!(new.admin_listen, running.admin_listen);
    assert_eq!(new.admin, running.admin);
    assert_eq!(new.state_dir, running.state_dir);
    assert_eq!(new.tls, None);
    assert_eq!(new.limits.max_concurrent_streams, 8);
    // What a reload changes is left as the new file says.
    assert_eq!(new.limits.rate, 7.0);
    assert_eq!(new.shutdown_grace, Duration::from_secs(1));
    assert!(keep_restart_only(&mut new.clone(), &new).is_empty());
}

#[test]
fn only_a_port_that_requires_authentication_closes_unauthenticated_connections_early() {
    let server = |extra: &str| {
        Config::from_yaml(&format!(
            "server:\n  limits: {{ idle_timeout: 7s, unauthenticated_timeout: 2s }}\n{extra}{}",
            profile_yaml("")
        ))
        .unwrap()
        .server
    };
    let open = connection_rules(&server(""));
    assert_eq!(open.idle_timeout, Duration::from_secs(7));
    assert_eq!(open.unauthenticated_timeout, None);
    let required = connection_rules(&server(
        "  auth: { service_account: { issuer: \"https://kubernetes.default.svc\" } }\n",
    ));
    assert_eq!(
        required.unauthenticated_timeout,
        Some(Duration::from_secs(2))
    );
}

#[test]
fn metrics_on_a_reachable_admin_port_need_a_token_or_an_explicit_opening() {
    let build = |server: &str, admin: Option<&str>| {
        let yaml = format!("server:\n{server}{}", profile_yaml(""));
        let config = Config::from_yaml(&yaml).unwrap_or_else(|e| panic!("{e}"));
        let admin = admin.map(|a| a.parse::<SocketAddr>().unwrap());
        App::build(config, LOOPBACK.parse().unwrap(), admin, None)
    };
    let refused = build("  admin_listen: 0.0.0.0:9090\n", Some("0.0.0.0:9090")).unwrap_err();
    let e = refused.first();
    assert_eq!(e.key, "server.admin.metrics_token");
    assert!(e.message.contains("unauthenticated_metrics: true"), "{e}");
    // `check` judges the configured address as `serve` judges the bound one.
    let no_admin = build("  admin_listen: \"[::]:9090\"\n", None).unwrap();
    assert!(no_admin.warnings().is_empty());
    let config = Config::from_yaml(&format!(
        "server:\n  admin_listen: \"[::]:9090\"\n{}",
        profile_yaml("")
    ))
    .unwrap();
    assert_eq!(
        App::build(
            config,
            LOOPBACK.parse().unwrap(),
            Some("[::]:9090".parse().unwrap()),
            None,
        )
        .unwrap_err()
        .first()
        .key,
        "server.admin.metrics_token"
    );

    // Loopback needs nothing; an explicit opening is a warning; a token must be readable.
    assert!(build("  listen: 127.0.0.1:1\n", Some("127.0.0.1:9090")).is_ok());
    let open = build(
        "  admin: { unauthenticated_metrics: true }\n",
        Some("0.0.0.0:9090"),
    )
    .unwrap();
    assert_eq!(
        open.warnings()[0].key,
        "server.admin.unauthenticated_metrics"
    );
    assert!(
        build(
            "  admin: { metrics_token: { value: t } }\n",
            Some("0.0.0.0:9090")
        )
        .is_ok()
    );
    let e = build(
        "  admin: { metrics_token: { env: TOKENVEND_TEST_NOT_SET_ANYWHERE } }\n",
        Some("127.0.0.1:9090"),
    )
    .unwrap_err();
    assert_eq!(e.first().key, "server.admin.metrics_token");
}

#[test]
fn tls_files_are_read_with_a_ceiling() {
    // A device that never ends: refused at once, naming the key, without eating memory.
    let e = error(&format!(
        "server:\n  tls: {{ cert: /dev/zero, key: /dev/zero }}\n{}",
        profile_yaml("")
    ));
    assert_eq!(e.key, "server.tls.cert");
    assert!(e.message.contains("/dev/zero: larger than"), "{e}");
}

#[test]
fn a_reachable_forward_auth_port_needs_caller_authentication_as_the_grpc_port_does() {
    let build = |server: &str, forward: &str| {
        let yaml = format!(
            "server:\n  forward_auth:\n    listen: {forward}\n{server}{}",
            profile_yaml("")
        );
        let config = Config::from_yaml(&yaml).unwrap_or_else(|e| panic!("{e}"));
        let forward = forward.parse::<SocketAddr>().unwrap();
        App::build(config, LOOPBACK.parse().unwrap(), None, Some(forward))
    };
    let refused = build("", "0.0.0.0:8080").unwrap_err();
    let e = refused.first();
    assert_eq!(e.key, "server.auth");
    assert!(e.message.contains("server.forward_auth.listen"), "{e}");
    assert!(build("", "127.0.0.1:8080").is_ok());
    let opened = build("  auth: { allow_unauthenticated: true }\n", "0.0.0.0:8080").unwrap();
    assert!(
        opened
            .warnings()
            .iter()
            .any(|w| w.message.contains("server.forward_auth.listen")),
        "{:?}",
        opened.warnings()
    );
    // Not served (`tokenvend check` passes the configured address; a server without the
    // port passes none): nothing to judge.
    let config = Config::from_yaml(&format!(
        "server:\n  forward_auth:\n    listen: 0.0.0.0:8080\n{}",
        profile_yaml("")
    ))
    .unwrap();
    assert!(App::build(config, LOOPBACK.parse().unwrap(), None, None).is_ok());
}

#[test]
fn forward_auth_is_restart_only() {
    let running = Config::from_yaml(&profile_yaml("")).unwrap().server;
    let mut new = Config::from_yaml(&format!(
        "server:\n  forward_auth:\n    listen: 127.0.0.1:8080\n{}",
        profile_yaml("")
    ))
    .unwrap()
    .server;
    assert_eq!(
        keep_restart_only(&mut new, &running),
        ["server.forward_auth"]
    );
    assert_eq!(new.forward_auth, None);
}

#[test]
fn a_template_added_by_a_reload_needs_the_connections_key_the_server_started_with() {
    let key = "BwcHBwcHBwcHBwcHBwcHBwcHBwcHBwcHBwcHBwcHBwc=";
    let template = "  t:\n    token_url: https://idp.example.com/token\n    grant: refresh_token\n    template: true\n    client_id: a\n    client_secret: { value: s }\n    authorize_url: https://idp.example.com/auth\n    redirect_uri: https://app.example.com/cb\n";
    let running = Config::from_yaml(&format!("server:\n  state_dir: /a\n{}", profile_yaml("")))
        .unwrap()
        .server;
    let mut new = Config::from_yaml(&format!(
        "server:\n  state_dir: /a\n  connections: {{ key: {{ value: \"{key}\" }} }}\n{}{template}",
        profile_yaml("")
    ))
    .unwrap();
    assert!(App::build(new.clone(), LOOPBACK.parse().unwrap(), None, None).is_ok());
    assert_eq!(
        keep_restart_only(&mut new.server, &running),
        ["server.connections"]
    );
    let refused = App::build(new, LOOPBACK.parse().unwrap(), None, None).unwrap_err();
    assert_eq!(refused.first().key, "server.connections.key");
    // A key that is not 32 bytes of base64 is refused by `check` as by `serve`.
    let short = format!(
        "server:\n  state_dir: /a\n  connections: {{ key: {{ value: c2hvcnQ= }} }}\n{}{template}",
        profile_yaml("")
    );
    assert_eq!(error(&short).key, "server.connections.key");
}
