//! Interoperability with a third-party OAuth 2.0 server: `oidc-provider` from npm, run on
//! loopback by `tests/interop/oidc-provider.mjs`. Needs `npm ci` in `tests/interop`
//! (`scripts/test` does it); skipped without it unless TOKENVEND_REQUIRE_INTEROP=1.

use std::{
    io::{BufRead, BufReader},
    path::Path,
    process::{Child, Command, Stdio},
};

use serde_json::Value;
use tonic::Code;

use crate::support::{Server, seconds_left};

const SECRET: &str = "s3cr+t/=:%&?-interop-secret";

struct OidcProvider {
    child: Child,
    token_endpoint: String,
}

impl Drop for OidcProvider {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

fn start_oidc_provider() -> Option<OidcProvider> {
    let dir = Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/interop");
    if !dir.join("node_modules/oidc-provider").exists() {
        assert!(
            std::env::var_os("TOKENVEND_REQUIRE_INTEROP").is_none(),
            "TOKENVEND_REQUIRE_INTEROP is set but tests/interop has no node_modules: run npm ci there"
        );
        eprintln!("skipping: run `npm ci` in tests/interop to test against oidc-provider");
        return None;
    }
    let mut child = Command::new("node")
        .arg("oidc-provider.mjs")
        .current_dir(&dir)
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::inherit())
        .spawn()
        .expect("node runs");
    let mut line = String::new();
    BufReader::new(child.stdout.take().unwrap())
        .read_line(&mut line)
        .unwrap();
    let started: Value = serde_json::from_str(&line).expect("oidc-provider prints its endpoints");
    Some(OidcProvider {
        token_endpoint: started["token_endpoint"].as_str().unwrap().to_owned(),
        child,
    })
}

fn profile(name: &str, client_id: &str, auth_method: &str, secret: &str, url: &str) -> String {
    format!(
        "  {name}:\n    token_url: {url}\n    client_id: {client_id}\n    client_secret: {{ value: \"{secret}\" }}\n    auth_method: {auth_method}\n    scopes: [\"api:read\"]\n"
    )
}

#[tokio::test]
async fn client_credentials_against_oidc_provider_with_both_auth_methods() {
    let Some(provider) = start_oidc_provider() else {
        return;
    };
    let url = &provider.token_endpoint;
    let yaml = format!(
        "profiles:\n{}{}{}",
        profile("basic", "tv-basic", "client_secret_basic", SECRET, url),
        profile("post", "tv-post", "client_secret_post", SECRET, url),
        profile(
            "wrong",
            "tv-post",
            "client_secret_post",
            "not-the-secret",
            url
        ),
    );
    let server = Server::start(&yaml).await;
    for name in ["basic", "post"] {
        let token = server
            .get(name)
            .await
            .unwrap_or_else(|status| panic!("{name}: {status:?}"));
        assert!(!token.access_token.is_empty(), "{name}");
        assert_eq!(token.token_type, "Bearer", "{name}");
        assert_eq!(token.scopes, ["api:read"], "{name}");
        let left = seconds_left(&token);
        assert!((250.0..=300.0).contains(&left), "{name}: {left}");
    }
    let status = server.get("wrong").await.unwrap_err();
    assert_eq!(status.code(), Code::FailedPrecondition);
    assert!(
        status.message().contains("invalid_client"),
        "{}",
        status.message()
    );
    server.stop().await;
}
