//! Hot reload: the configuration file of a running server is edited (as a ConfigMap update
//! does) and each outcome is observed over gRPC and at the identity provider.

use std::time::Duration;

use tokenvend::pb::{ListProfilesRequest, WatchTokenRequest};
use tokio::time::timeout;
use tonic::Code;

use crate::support::{Behaviour, ConfigFile, Logs, Server, TestIdp, eventually, profile};

const HEADER: &str = "server:\n  shutdown_delay: 0s\n  reload_interval: 50ms\nprofiles:\n";

/// Waits until a reload has made `profile` appear in `ListProfiles`.
async fn until_listed(server: &Server, profile: &str) {
    eventually(Duration::from_secs(10), profile, || async {
        profile_names(server)
            .await
            .iter()
            .any(|p| p == profile)
            .then_some(())
    })
    .await;
}

async fn profile_names(server: &Server) -> Vec<String> {
    server
        .client
        .clone()
        .list_profiles(ListProfilesRequest {})
        .await
        .unwrap()
        .into_inner()
        .profiles
        .into_iter()
        .map(|p| p.name)
        .collect()
}

/// Token requests the IdP received for these scopes.
fn requests_for(idp: &TestIdp, scope: &str) -> usize {
    idp.requests()
        .iter()
        .filter(|r| r.form.get("scope").map(String::as_str) == Some(scope))
        .count()
}

#[tokio::test]
async fn edits_to_the_config_file_take_effect_and_a_broken_file_is_refused() {
    let (logs, _logging) = Logs::capture();
    let idp = TestIdp::start(Behaviour::issue(3600)).await;
    let kept = profile("kept", &idp, "    scopes: [kept.read]\n");
    let mut file = ConfigFile::new(&format!(
        "{HEADER}{kept}{}",
        profile("changed", &idp, "    scopes: [old.read]\n")
    ));
    let server = Server::start_file(&file).await;

    let kept_token = server.get("kept").await.unwrap().access_token;
    let old_token = server.get("changed").await.unwrap().access_token;
    let mut watch = server
        .client
        .clone()
        .watch_token(WatchTokenRequest {
            profile: "changed".into(),
            ..Default::default()
        })
        .await
        .unwrap()
        .into_inner();
    watch.message().await.unwrap().unwrap();
    assert_eq!(idp.count(), 2);

    // Add a profile, change one, leave one as it was.
    file.update(&format!(
        "{HEADER}{kept}{}{}",
        profile("changed", &idp, "    scopes: [new.read]\n"),
        profile("added", &idp, "")
    ));
    until_listed(&server, "added").await;
    assert_eq!(profile_names(&server).await, ["added", "changed", "kept"]);
    server.get("added").await.expect("the added profile serves");

    let new = server.get("changed").await.unwrap();
    assert_ne!(
        new.access_token, old_token,
        "a changed profile starts afresh"
    );
    assert_eq!(new.scopes, ["new.read"]);
    assert_eq!(
        requests_for(&idp, "new.read"),
        1,
        "the IdP got the new scopes"
    );
    let ended = timeout(Duration::from_secs(2), watch.message())
        .await
        .expect("a watch on a changed profile ends, so the client watches the new one");
    assert!(matches!(ended, Ok(None)), "{ended:?}");

    assert_eq!(server.get("kept").await.unwrap().access_token, kept_token);
    assert_eq!(
        requests_for(&idp, "kept.read"),
        1,
        "an unchanged profile keeps its cached token: the IdP sees no new request"
    );

    // Break the file: the running configuration keeps serving.
    let refused_before = reloads(&server, "refused").await;
    let requests_before = idp.count();
    file.update(&format!(
        "{HEADER}{kept}    scope: [typo]\n{}",
        profile("changed", &idp, "")
    ));
    eventually(Duration::from_secs(10), "the refusal", || async {
        logs.text().contains("profiles.kept.scope").then_some(())
    })
    .await;
    let log = logs.text();
    assert!(log.contains("ERROR"), "{log}");
    assert!(log.contains("new configuration refused"), "{log}");
    assert!(log.contains("unknown field `scope`"), "{log}");
    assert!(reloads(&server, "refused").await > refused_before);
    assert_eq!(profile_names(&server).await, ["added", "changed", "kept"]);
    assert_eq!(server.get("kept").await.unwrap().access_token, kept_token);
    assert_eq!(server.get("changed").await.unwrap().scopes, ["new.read"]);
    server.get("added").await.unwrap();
    assert_eq!(idp.count(), requests_before, "nothing was refetched");

    // Fixed again, without `added`: it is gone.
    file.update(&format!(
        "{HEADER}{kept}{}",
        profile("changed", &idp, "    scopes: [new.read]\n")
    ));
    eventually(Duration::from_secs(10), "the removal", || async {
        (profile_names(&server).await == ["changed", "kept"]).then_some(())
    })
    .await;
    assert_eq!(
        server.get("added").await.unwrap_err().code(),
        Code::NotFound
    );
    assert_eq!(server.get("kept").await.unwrap().access_token, kept_token);
    assert_eq!(requests_for(&idp, "kept.read"), 1);

    let log = logs.text();
    assert!(
        !log.contains(crate::support::idp::CLIENT_SECRET),
        "no secret in reload logs"
    );
    server.stop().await;
}

async fn reloads(server: &Server, result: &str) -> f64 {
    server
        .metrics()
        .await
        .value("tokenvend_config_reloads_total", &[("result", result)])
}

/// The `server:` section of these tests, with `extra` lines inside it.
fn server_section(extra: &str) -> String {
    format!("server:\n  shutdown_delay: 0s\n  reload_interval: 50ms\n{extra}profiles:\n")
}

#[tokio::test]
async fn a_reload_of_server_limits_takes_effect() {
    let idp = TestIdp::start(Behaviour::issue(3600)).await;
    let demo = profile("demo", &idp, "");
    let mut file = ConfigFile::new(&format!("{}{demo}", server_section("")));
    let server = Server::start_file(&file).await;
    for _ in 0..20 {
        server.get("demo").await.expect("within the default rate");
    }

    // One call, then one every 1000 s: the next call is over the rate.
    file.update(&format!(
        "{}{demo}",
        server_section("  limits: { rate: 0.001, burst: 1 }\n")
    ));
    let status = eventually(Duration::from_secs(10), "the new rate", || async {
        server
            .get("demo")
            .await
            .err()
            .filter(|s| s.code() == Code::ResourceExhausted)
    })
    .await;
    assert!(status.message().contains("too many calls"), "{status:?}");

    // A request larger than the new `max_request_bytes` is refused before it is decoded.
    file.update(&format!(
        "{}{demo}",
        server_section("  limits: { max_request_bytes: 64 }\n")
    ));
    let long = "x".repeat(200);
    let status = eventually(Duration::from_secs(10), "the new message limit", || async {
        server
            .get(&long)
            .await
            .err()
            .filter(|s| s.message().contains("max_request_bytes"))
    })
    .await;
    assert_eq!(status.code(), Code::ResourceExhausted, "{status:?}");
    // The rate is the default again: the earlier limit went with its file.
    for _ in 0..5 {
        server.get("demo").await.expect("the default rate is back");
    }
    assert_eq!(reloads(&server, "refused").await, 0.0);
    server.stop().await;
}

#[tokio::test]
async fn a_reload_of_server_auth_takes_effect() {
    use crate::support::security::{SaIssuer, with_bearer};
    use tokenvend::pb::GetTokenRequest;

    let idp = TestIdp::start(Behaviour::issue(3600)).await;
    let issuer = SaIssuer::start().await;
    let demo = profile(
        "demo",
        &idp,
        "    allow: [\"system:serviceaccount:orders:*\"]\n",
    );
    let mut file = ConfigFile::new(&format!("{}{demo}", server_section("")));
    let server = Server::start_file(&file).await;
    // No caller authentication on loopback: anonymous callers are served, but the
    // profile's `allow` list lets only named ones use it.
    assert_eq!(server.get("demo").await.unwrap_err().code(), Code::NotFound);

    file.update(&format!("{}{demo}", server_section(&issuer.auth_yaml())));
    let request = || {
        with_bearer(
            GetTokenRequest {
                profile: "demo".into(),
                ..Default::default()
            },
            &issuer.token("orders", "api"),
        )
    };
    eventually(
        Duration::from_secs(10),
        "ServiceAccount callers",
        || async { server.client.clone().get_token(request()).await.ok() },
    )
    .await;
    assert_eq!(
        server.get("demo").await.unwrap_err().code(),
        Code::Unauthenticated,
        "a caller with no credentials is now refused"
    );
    assert_eq!(reloads(&server, "refused").await, 0.0);
    server.stop().await;
}

#[tokio::test]
async fn a_reload_of_timeouts_takes_effect() {
    let idp = TestIdp::start(Behaviour::slow(3600, Duration::from_secs(3))).await;
    let first = profile("first", &idp, "");
    let mut file = ConfigFile::new(&format!("{}{first}", server_section("")));
    let server = Server::start_file(&file).await;

    // With the new request timeout comes a new profile, so that the first call to it is
    // a miss that waits on the slow provider.
    file.update(&format!(
        "{}{first}{}",
        server_section("  limits: { request_timeout: 200ms }\n"),
        profile("late", &idp, "")
    ));
    until_listed(&server, "late").await;
    let started = std::time::Instant::now();
    let status = server.get("late").await.unwrap_err();
    assert_eq!(status.code(), Code::DeadlineExceeded, "{status:?}");
    assert!(
        started.elapsed() < Duration::from_secs(2),
        "the server's new timeout, not the provider's delay, ended the call: {:?}",
        started.elapsed()
    );
    server.stop().await;
}

#[tokio::test]
async fn a_reload_of_tls_files_takes_effect() {
    use crate::support::security::Pki;

    let idp = TestIdp::start(Behaviour::issue(3600)).await;
    let (old, new) = (Pki::new(), Pki::new());
    let demo = profile("demo", &idp, "    allow: [\"spiffe://test/*\"]\n");
    let mut file = ConfigFile::new(&format!("{}{demo}", server_section(&old.tls_yaml())));
    let server = Server::start_secured_file(&file).await;
    let old_id = old.client("spiffe://test/old");
    let mut client = old.client_to(server.addr, Some(&old_id)).await.unwrap();
    client
        .get_token(tokenvend::pb::GetTokenRequest {
            profile: "demo".into(),
            ..Default::default()
        })
        .await
        .expect("the old CA's client is served");

    // Other files: another server certificate, and another CA for client certificates.
    file.update(&format!("{}{demo}", server_section(&new.tls_yaml())));
    let new_id = new.client("spiffe://test/new");
    eventually(Duration::from_secs(10), "the new TLS files", || async {
        let mut client = new.client_to(server.addr, Some(&new_id)).await.ok()?;
        client
            .get_token(tokenvend::pb::GetTokenRequest {
                profile: "demo".into(),
                ..Default::default()
            })
            .await
            .ok()
    })
    .await;
    assert!(
        old.client_to(server.addr, Some(&old_id)).await.is_err(),
        "a client that trusts only the old CA no longer connects"
    );
    server.stop().await;
}

#[tokio::test]
async fn a_restart_only_change_is_named_and_the_rest_applied() {
    let (logs, _logging) = Logs::capture();
    let idp = TestIdp::start(Behaviour::issue(3600)).await;
    let demo = profile("demo", &idp, "");
    let mut file = ConfigFile::new(&format!("{}{demo}", server_section("")));
    let server = Server::start_file(&file).await;

    file.update(&format!(
        "{}{demo}{}",
        server_section("  listen: 127.0.0.1:1\n  limits: { max_concurrent_streams: 7 }\n"),
        profile("added", &idp, "")
    ));
    until_listed(&server, "added").await;
    let log = logs.text();
    for key in ["server.listen", "server.limits.max_concurrent_streams"] {
        assert!(
            log.lines()
                .any(|l| l.contains("WARN") && l.contains(key) && l.contains("after a restart")),
            "{key} named in a warning: {log}"
        );
    }
    // Still on the address it was started on.
    server.get("added").await.unwrap();
    server.stop().await;
}
