//! Configuration edits cannot open a door: a file caught half-written is never applied,
//! a key given twice is an error naming it, and no file read (configuration, secrets, key
//! sets, chain records) can be made to eat memory.

use std::{
    io::Write as _,
    time::{Duration, Instant},
};

use tokenvend::pb::ListProfilesRequest;
use tokenvend_server::{Config, Listeners};

use crate::support::{Behaviour, Server, TestIdp, eventually, profile};

fn profile_text(name: &str, extra: &str) -> String {
    format!(
        "  {name}:\n    token_url: https://idp.example.com/token\n    client_id: id\n    client_secret: {{ env: TOKENVEND_HOSTILE_UNSET }}\n{extra}"
    )
}

/// The key and message of the first error of `yaml`.
fn first_error(yaml: &str) -> (String, String) {
    let errors = Config::from_yaml(yaml).expect_err("the configuration must be refused");
    let first = errors.first();
    (first.key.clone(), first.message.clone())
}

#[test]
fn a_profile_named_twice_is_an_error_naming_it() {
    // The second `billing` would silently replace the first, `allow` list and all.
    let yaml = format!(
        "profiles:\n{}{}",
        profile_text("billing", "    allow: [billing-svc]\n"),
        profile_text("billing", "    allow: [\"*\"]\n"),
    );
    let (key, message) = first_error(&yaml);
    assert_eq!(key, "profiles.billing", "{message}");
    assert!(message.contains("twice"), "{message}");
}

#[test]
fn a_key_given_twice_inside_a_profile_is_an_error_naming_it() {
    let yaml = format!(
        "profiles:\n{}    allow: [\"*\"]\n",
        profile_text("billing", "    allow: [billing-svc]\n"),
    );
    let (key, message) = first_error(&yaml);
    assert_eq!(key, "profiles.billing.allow", "{message}");
}

#[test]
fn a_header_or_parameter_given_twice_is_an_error_naming_it() {
    let yaml = format!(
        "profiles:\n{}",
        profile_text(
            "billing",
            "    params:\n      audience: a\n      audience: b\n"
        ),
    );
    let (key, message) = first_error(&yaml);
    assert_eq!(key, "profiles.billing.params.audience", "{message}");

    let yaml = "server:\n  shutdown_delay: 0s\n  shutdown_delay: 5s\nprofiles:\n".to_owned()
        + &profile_text("billing", "");
    let (key, message) = first_error(&yaml);
    assert_eq!(key, "server.shutdown_delay", "{message}");
}

/// The names `ListProfiles` reports.
async fn profile_names(server: &Server) -> Vec<String> {
    let mut client = server.client.clone();
    let reply = client.list_profiles(ListProfilesRequest {}).await.unwrap();
    reply
        .into_inner()
        .profiles
        .into_iter()
        .map(|p| p.name)
        .collect()
}

#[tokio::test]
async fn a_config_file_caught_half_written_is_never_applied() {
    let idp = TestIdp::start(Behaviour::issue(3600)).await;
    let header = "server:\n  shutdown_delay: 0s\n  reload_interval: 50ms\nprofiles:\n";
    let [a, b, c] = ["a", "b", "c"].map(|name| profile(name, &idp, ""));
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("config.yaml");
    std::fs::write(&path, format!("{header}{a}{b}")).unwrap();
    let server = Server::start_with(Config::load(&path).unwrap()).await;
    assert_eq!(profile_names(&server).await, ["a", "b"]);

    // An editor saving in place: the file is cut, and the new text written in two parts
    // with a pause between them. After the first part it parses, with `a` alone.
    let mut file = std::fs::OpenOptions::new()
        .write(true)
        .truncate(true)
        .open(&path)
        .unwrap();
    file.write_all(format!("{header}{a}").as_bytes()).unwrap();
    file.flush().unwrap();
    let cut = Instant::now();
    // Several polls (50 ms apart) see the cut file while the writer pauses.
    while cut.elapsed() < Duration::from_millis(200) {
        assert_eq!(
            profile_names(&server).await,
            ["a", "b"],
            "a cut file was applied"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    file.write_all(format!("{b}{c}").as_bytes()).unwrap();
    drop(file);

    eventually(
        Duration::from_secs(5),
        "the whole file to be applied",
        || async { (profile_names(&server).await == ["a", "b", "c"]).then_some(()) },
    )
    .await;
    let metrics = server.metrics().await;
    assert_eq!(
        metrics.value("tokenvend_config_reloads_total", &[("result", "applied")]),
        1.0,
        "only the whole file was applied"
    );
    server.stop().await;
}

/// What `tokenvend check` (and `serve`) say of a configuration: the same build, in process.
async fn build_errors(yaml: &str) -> String {
    let config = Config::from_yaml(yaml).unwrap_or_else(|e| panic!("test config: {e}"));
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let started = Instant::now();
    let error = tokenvend_server::serve(
        Listeners {
            grpc: listener,
            admin: None,
            forward_auth: None,
        },
        config,
        std::future::pending(),
    )
    .await
    .expect_err("the configuration must be refused");
    assert!(
        started.elapsed() < Duration::from_secs(2),
        "refused fast, not after reading a huge file"
    );
    error.to_string()
}

#[tokio::test]
async fn a_secret_file_without_end_fails_fast_naming_its_key() {
    let yaml = "profiles:\n  p:\n    token_url: https://idp.example.com/token\n    client_id: id\n    client_secret: { file: /dev/zero }\n";
    let error = build_errors(yaml).await;
    assert!(error.contains("profiles.p.client_secret"), "{error}");
    assert!(error.contains("larger than 65536 bytes"), "{error}");
}

#[tokio::test]
async fn a_huge_sparse_jwks_file_fails_fast_naming_its_key() {
    let jwks = tempfile::NamedTempFile::new().unwrap();
    jwks.as_file().set_len(2 << 30).unwrap();
    let yaml = format!(
        "server:\n  auth:\n    service_account:\n      issuer: https://kubernetes.default.svc\n      jwks_file: {}\nprofiles:\n  p:\n    token_url: https://idp.example.com/token\n    client_id: id\n    client_secret: {{ value: s }}\n",
        jwks.path().display()
    );
    let error = build_errors(&yaml).await;
    assert!(
        error.contains("server.auth.service_account.jwks_file"),
        "{error}"
    );
    assert!(error.contains("too large"), "{error}");
}

#[test]
fn a_huge_config_file_is_refused_unread() {
    let file = tempfile::NamedTempFile::new().unwrap();
    file.as_file().set_len(2 << 30).unwrap();
    let started = Instant::now();
    let errors = Config::load(file.path()).expect_err("a 2 GB file must be refused");
    assert!(started.elapsed() < Duration::from_secs(1));
    assert!(
        errors.to_string().contains("larger than 4194304 bytes"),
        "{errors}"
    );
}
