//! One Keycloak for the whole test binary: started at the first test that needs it, on a
//! free loopback port, with an in-memory database; each test makes its own realm in it.
//!
//! Installed by `tests/keycloak/install.sh` (`scripts/test` runs it); without it the
//! tests skip, unless TOKENVEND_REQUIRE_KEYCLOAK=1. TOKENVEND_KEYCLOAK_URL points the tests
//! at a Keycloak already running instead (admin `admin`/`admin` in `master`).

use std::{
    io::Write as _,
    os::unix::process::CommandExt as _,
    path::PathBuf,
    process::{Command, Stdio},
    sync::OnceLock,
    time::{Duration, Instant},
};

use jsonwebtoken::{DecodingKey, Validation, jwk::JwkSet};
use serde_json::{Value, json};

const VERSION: &str = "26.5.6";
const ADMIN: &str = "admin";
const ADMIN_PASSWORD: &str = "admin-password-for-tests";

/// A running Keycloak.
pub(crate) struct Keycloak {
    pub(crate) base: String,
    admin_password: String,
}

/// The suite's Keycloak, started on first use; `None` when it is not installed (the test
/// skips).
pub(crate) fn keycloak() -> Option<&'static Keycloak> {
    static KEYCLOAK: OnceLock<Option<Keycloak>> = OnceLock::new();
    KEYCLOAK.get_or_init(start).as_ref()
}

fn start() -> Option<Keycloak> {
    if let Ok(base) = std::env::var("TOKENVEND_KEYCLOAK_URL") {
        return Some(Keycloak {
            base,
            admin_password: "admin".into(),
        });
    }
    let cache = std::env::var_os("TOKENVEND_KEYCLOAK_CACHE")
        .map(PathBuf::from)
        .unwrap_or_else(|| {
            PathBuf::from(std::env::var_os("HOME").unwrap()).join(".cache/tokenvend")
        });
    let home = cache.join(format!("keycloak-{VERSION}"));
    let Ok(java_home) = std::fs::read_to_string(home.join(".tokenvend-built")) else {
        assert!(
            std::env::var_os("TOKENVEND_REQUIRE_KEYCLOAK").is_none(),
            "TOKENVEND_REQUIRE_KEYCLOAK is set but Keycloak is not installed: run tests/keycloak/install.sh"
        );
        eprintln!("skipping: run tests/keycloak/install.sh to test against Keycloak");
        return None;
    };
    let port = std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port();
    let log = std::env::temp_dir().join(format!("tokenvend-keycloak-{}.log", std::process::id()));
    // The shell leads a process group of its own with Keycloak (kc.sh and its JVM) in it,
    // and holds the read end of a pipe whose write end only this process has: when this
    // process ends, however it ends, `read` returns and the group is stopped. Statics are
    // never dropped, so no destructor could do it.
    let script = format!(
        "'{kc}' start --optimized --http-enabled=true --http-host=127.0.0.1 --http-port={port} \
         --hostname-strict=false >'{log}' 2>&1 & read -r _; kill -- -$$",
        kc = home.join("bin/kc.sh").display(),
        log = log.display(),
    );
    let mut child = Command::new("sh")
        .args(["-c", &script])
        .process_group(0)
        .env("JAVA_HOME", java_home.lines().next().unwrap_or_default())
        .env("KC_BOOTSTRAP_ADMIN_USERNAME", ADMIN)
        .env("KC_BOOTSTRAP_ADMIN_PASSWORD", ADMIN_PASSWORD)
        .stdin(Stdio::piped())
        .stdout(Stdio::null())
        .spawn()
        .expect("sh runs");
    // Leaked on purpose: the pipe must stay open as long as this process lives.
    std::mem::forget(child.stdin.take());
    std::mem::forget(child);

    let base = format!("http://127.0.0.1:{port}");
    let started = Instant::now();
    // On two busy cores Keycloak takes 25-60 s to start; the wait allows for far worse.
    while started.elapsed() < Duration::from_secs(300) {
        if let Ok(mut stream) = std::net::TcpStream::connect(("127.0.0.1", port)) {
            let _ = write!(
                stream,
                "GET /realms/master HTTP/1.1\r\nHost: 127.0.0.1:{port}\r\nConnection: close\r\n\r\n"
            );
            let mut head = [0u8; 12];
            if std::io::Read::read_exact(&mut stream, &mut head).is_ok()
                && head.starts_with(b"HTTP/1.1 200")
            {
                eprintln!(
                    "Keycloak {VERSION} started in {:.1} s",
                    started.elapsed().as_secs_f64()
                );
                return Some(Keycloak {
                    base,
                    admin_password: ADMIN_PASSWORD.into(),
                });
            }
        }
        std::thread::sleep(Duration::from_millis(500));
    }
    let tail = std::fs::read_to_string(&log).unwrap_or_default();
    panic!(
        "Keycloak did not start within 300 s; its log:\n{}",
        &tail[tail.len().saturating_sub(4000)..]
    );
}

/// The admin API of one realm.
pub(crate) struct Realm {
    pub(crate) keycloak: &'static Keycloak,
    pub(crate) name: String,
    http: reqwest::Client,
    token: String,
}

impl Keycloak {
    /// Creates a realm named after `name` (and this process, so that runs against one
    /// long-lived Keycloak do not collide), and a client to administer it.
    pub(crate) async fn realm(&'static self, name: &str) -> Realm {
        let name = &format!("{name}-{}", std::process::id());
        let http = reqwest::Client::new();
        let answer: Value = http
            .post(format!(
                "{}/realms/master/protocol/openid-connect/token",
                self.base
            ))
            .form(&[
                ("grant_type", "password"),
                ("client_id", "admin-cli"),
                ("username", ADMIN),
                ("password", &self.admin_password),
            ])
            .send()
            .await
            .unwrap()
            .json()
            .await
            .unwrap();
        let token = answer["access_token"]
            .as_str()
            .unwrap_or_else(|| panic!("admin token: {answer}"))
            .to_owned();
        let realm = Realm {
            keycloak: self,
            name: name.to_owned(),
            http,
            token,
        };
        realm
            .admin_post("", json!({ "realm": name, "enabled": true }))
            .await;
        realm
    }
}

impl Realm {
    /// `POST /admin/realms/{realm}{path}`; `path` empty creates the realm itself.
    pub(crate) async fn admin_post(&self, path: &str, body: Value) {
        let url = if path.is_empty() {
            format!("{}/admin/realms", self.keycloak.base)
        } else {
            format!("{}/admin/realms/{}{path}", self.keycloak.base, self.name)
        };
        let response = self
            .http
            .post(&url)
            .bearer_auth(&self.token)
            .json(&body)
            .send()
            .await
            .unwrap();
        let status = response.status();
        assert!(
            status.is_success(),
            "POST {url}: {status} {}",
            response.text().await.unwrap_or_default()
        );
    }

    /// Creates a client from its representation.
    pub(crate) async fn client(&self, client: Value) {
        self.admin_post("/clients", client).await;
    }

    /// The realm's issuer: the `iss` of its tokens, and the `aud` workload tokens for it
    /// carry.
    pub(crate) fn issuer(&self) -> String {
        format!("{}/realms/{}", self.keycloak.base, self.name)
    }

    pub(crate) fn token_endpoint(&self) -> String {
        format!("{}/protocol/openid-connect/token", self.issuer())
    }

    /// Checks an access token's signature against the realm's published keys, and its
    /// issuer; returns its claims.
    pub(crate) async fn verify(&self, token: &str) -> Value {
        let jwks: JwkSet = self
            .http
            .get(format!("{}/protocol/openid-connect/certs", self.issuer()))
            .send()
            .await
            .unwrap()
            .json()
            .await
            .unwrap();
        let header = jsonwebtoken::decode_header(token).expect("a JWT access token");
        let kid = header.kid.expect("Keycloak names its key");
        let jwk = jwks
            .find(&kid)
            .expect("the token's key is in the realm's JWKS");
        let key = DecodingKey::from_jwk(jwk).unwrap();
        let mut validation = Validation::new(header.alg);
        validation.set_issuer(&[self.issuer()]);
        validation.validate_aud = false;
        jsonwebtoken::decode::<Value>(token, &key, &validation)
            .unwrap_or_else(|e| panic!("the token does not verify: {e}"))
            .claims
    }
}
