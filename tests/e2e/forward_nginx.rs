//! A real nginx (from Debian's packages) in front of a resource server, adding the token
//! with `auth_request` against the forward-auth port, as docs/injection.md configures it:
//! the resource server gets the right `authorization` and companion header, a refreshed
//! token is picked up, a profile the proxy may not use is refused by nginx, and an
//! upstream 401 is reported as a rejected token and retried once with its replacement.
//!
//! nginx runs as a child process with its own prefix, configuration, pid and temp paths in
//! a temporary directory, on free loopback ports, as the current user.

use std::{
    net::SocketAddr,
    path::Path,
    process::{Child, Command, Stdio},
    sync::{Arc, Mutex},
    time::Duration,
};

use axum::{
    Router,
    extract::State,
    http::{HeaderMap, StatusCode, Uri},
};
use tokenvend::pb::token_service_client::TokenServiceClient;
use tonic::transport::Channel;

use crate::support::{Behaviour, Server, TestIdp, eventually, profile};

/// The nginx program, if installed (Debian puts it in /usr/sbin, which a user's `PATH` may
/// lack); if not, says so, or fails when `TOKENVEND_REQUIRE_NGINX` is set (`scripts/test`
/// sets it, so CI never skips).
fn nginx_program() -> Option<&'static str> {
    let found = ["nginx", "/usr/sbin/nginx"].into_iter().find(|program| {
        Command::new(program)
            .arg("-v")
            .stderr(Stdio::null())
            .status()
            .is_ok_and(|s| s.success())
    });
    if found.is_none() {
        assert!(
            std::env::var_os("TOKENVEND_REQUIRE_NGINX").is_none(),
            "TOKENVEND_REQUIRE_NGINX is set but nginx is not installed"
        );
        eprintln!("skipping: nginx is not installed (apt-get install nginx-light)");
    }
    found
}

fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .and_then(|l| l.local_addr())
        .expect("a free port")
        .port()
}

/// nginx as a child process, stopped when dropped.
struct Nginx {
    addr: SocketAddr,
    child: Child,
    dir: tempfile::TempDir,
}

impl Nginx {
    /// Starts nginx with `server` (the body of its `server` block, with the upstreams
    /// `tokenvend` and `resource`) and waits until it answers.
    async fn start(
        program: &str,
        server: &str,
        tokenvend: SocketAddr,
        resource: SocketAddr,
    ) -> Self {
        let dir = tempfile::tempdir().unwrap();
        let port = free_port();
        let path = |name: &str| dir.path().join(name).display().to_string();
        // One process (no master, no privilege drop), in the foreground, every path of
        // its own in the temporary directory.
        let conf = format!(
            "daemon off;\nmaster_process off;\nworker_processes 1;\npid {pid};\n\
             error_log {log} info;\nevents {{ worker_connections 64; }}\nhttp {{\n\
             access_log off;\nclient_body_temp_path {tmp}/body;\nproxy_temp_path {tmp}/proxy;\n\
             fastcgi_temp_path {tmp}/fastcgi;\nuwsgi_temp_path {tmp}/uwsgi;\n\
             scgi_temp_path {tmp}/scgi;\n\
             upstream tokenvend {{ server {tokenvend}; keepalive 4; }}\n\
             upstream resource {{ server {resource}; }}\n\
             server {{\nlisten 127.0.0.1:{port};\n{server}\n}}\n}}\n",
            pid = path("nginx.pid"),
            log = path("error.log"),
            tmp = dir.path().display(),
        );
        std::fs::write(dir.path().join("nginx.conf"), conf).unwrap();
        let child = Command::new(program)
            .args([
                "-p",
                &path(""),
                "-c",
                &path("nginx.conf"),
                "-e",
                &path("error.log"),
            ])
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .expect("nginx starts");
        let nginx = Self {
            addr: SocketAddr::from(([127, 0, 0, 1], port)),
            child,
            dir,
        };
        let addr = nginx.addr;
        let log = nginx.log_path();
        eventually(Duration::from_secs(10), "nginx listening", || async {
            let log = std::fs::read_to_string(&log).unwrap_or_default();
            assert!(!log.contains("[emerg]"), "nginx refused to start:\n{log}");
            tokio::net::TcpStream::connect(addr).await.ok().map(|_| ())
        })
        .await;
        nginx
    }

    fn log_path(&self) -> std::path::PathBuf {
        self.dir.path().join("error.log")
    }

    async fn get(&self, path: &str) -> (u16, String) {
        let answer = reqwest::get(format!("http://{}{path}", self.addr))
            .await
            .unwrap();
        let status = answer.status().as_u16();
        (status, answer.text().await.unwrap())
    }

    fn log(&self) -> String {
        std::fs::read_to_string(self.log_path()).unwrap_or_default()
    }
}

impl Drop for Nginx {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// What the resource server was sent: the path, and the two headers nginx added.
#[derive(Debug, Clone, PartialEq, Eq)]
struct Seen {
    path: String,
    authorization: Option<String>,
    api_key: Option<String>,
    status: u16,
}

/// A resource API that accepts only the current token of the profile named by the path's
/// first segment (it asks tokenvend, as an API would check with its issuer), and refuses
/// a token it was told to treat as revoked.
struct Resource {
    tokenvend: TokenServiceClient<Channel>,
    revoked: Mutex<Option<String>>,
    seen: Mutex<Vec<Seen>>,
}

async fn resource(State(state): State<Arc<Resource>>, uri: Uri, headers: HeaderMap) -> StatusCode {
    let header = |name: &str| headers.get(name).map(|v| v.to_str().unwrap().to_owned());
    let (authorization, api_key) = (header("authorization"), header("x-api-key"));
    let profile = uri
        .path()
        .trim_start_matches('/')
        .split('/')
        .next()
        .unwrap();
    let current = crate::support::get(&mut state.tokenvend.clone(), profile)
        .await
        .ok()
        .map(|t| t.headers["authorization"].clone());
    let revoked = state.revoked.lock().unwrap().clone();
    let accepted = authorization.is_some()
        && authorization == current
        && authorization != revoked
        && api_key.as_deref() == Some("key-123");
    let status = if accepted {
        StatusCode::OK
    } else {
        StatusCode::UNAUTHORIZED
    };
    state.seen.lock().unwrap().push(Seen {
        path: uri.path().to_owned(),
        authorization,
        api_key,
        status: status.as_u16(),
    });
    status
}

/// The locations of docs/injection.md's nginx example, as they are there (the API is the
/// upstream `resource` here). The upstream 401 handling is the docs' too: intercepted,
/// reported in a second auth subrequest with the value sent, and retried once.
const DOCUMENTED: &str = r#"
location /floriday/ {
    auth_request /_tokenvend/floriday;
    auth_request_set $tokenvend_authorization $upstream_http_authorization;
    auth_request_set $tokenvend_api_key $upstream_http_x_api_key;
    proxy_set_header Authorization $tokenvend_authorization;
    proxy_set_header X-Api-Key $tokenvend_api_key;
    proxy_pass http://resource;
    proxy_intercept_errors on;
    error_page 401 = @floriday_rejected;
}

location @floriday_rejected {
    auth_request /_tokenvend/floriday-rejected;
    auth_request_set $tokenvend_retry_authorization $upstream_http_authorization;
    auth_request_set $tokenvend_retry_api_key $upstream_http_x_api_key;
    proxy_set_header Authorization $tokenvend_retry_authorization;
    proxy_set_header X-Api-Key $tokenvend_retry_api_key;
    proxy_pass http://resource;
}

location = /_tokenvend/floriday {
    internal;
    proxy_pass http://tokenvend/v1/headers/floriday;
    proxy_http_version 1.1;
    proxy_set_header Connection "";
    proxy_pass_request_body off;
    proxy_set_header Content-Length "";
    # None of the client's headers: see "Who the proxy is".
    proxy_pass_request_headers off;
}

location = /_tokenvend/floriday-rejected {
    internal;
    proxy_pass http://tokenvend/v1/headers/floriday;
    proxy_http_version 1.1;
    proxy_set_header Connection "";
    proxy_pass_request_body off;
    proxy_set_header Content-Length "";
    proxy_pass_request_headers off;
    proxy_set_header X-Tokenvend-Rejected-Token $tokenvend_authorization;
}
"#;

/// More of the same, for the test's other profiles.
const OTHERS: &str = r#"
location /rotating/ {
    auth_request /_tokenvend/rotating;
    auth_request_set $tokenvend_rotating $upstream_http_authorization;
    auth_request_set $tokenvend_rotating_key $upstream_http_x_api_key;
    proxy_set_header Authorization $tokenvend_rotating;
    proxy_set_header X-Api-Key $tokenvend_rotating_key;
    proxy_pass http://resource;
}
location = /_tokenvend/rotating {
    internal;
    proxy_pass http://tokenvend/v1/headers/rotating;
    proxy_pass_request_body off;
    proxy_set_header Content-Length "";
    proxy_set_header X-Tokenvend-Rejected-Token "";
}

location /secret/ {
    auth_request /_tokenvend/secret;
    proxy_pass http://resource;
}
location = /_tokenvend/secret {
    internal;
    proxy_pass http://tokenvend/v1/headers/secret;
    proxy_pass_request_body off;
    proxy_set_header Content-Length "";
}

location /unknown/ {
    auth_request /_tokenvend/unknown;
    proxy_pass http://resource;
}
location = /_tokenvend/unknown {
    internal;
    proxy_pass http://tokenvend/v1/headers/no-such-profile;
    proxy_pass_request_body off;
    proxy_set_header Content-Length "";
}
"#;

#[tokio::test]
async fn nginx_adds_the_current_headers_and_retries_an_upstream_401_once() {
    let Some(program) = nginx_program() else {
        return;
    };
    let idp = TestIdp::start(Behaviour::issue(3600)).await;
    let rotating_idp = TestIdp::start(Behaviour::issue(4)).await;
    let key = "    headers: { X-Api-Key: { value: key-123 } }\n";
    let yaml = format!(
        "server:\n  forward_auth:\n    listen: 127.0.0.1:0\nprofiles:\n{}{}{}",
        profile("floriday", &idp, key),
        profile(
            "rotating",
            &rotating_idp,
            &format!("{key}    refresh_ahead: 0.5\n")
        ),
        profile("secret", &idp, "    allow: [\"spiffe://test/only\"]\n"),
    );
    let server = Server::start(&yaml).await;

    let state = Arc::new(Resource {
        tokenvend: server.new_client().await,
        revoked: Mutex::new(None),
        seen: Mutex::new(Vec::new()),
    });
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let resource_addr = listener.local_addr().unwrap();
    let app = Router::new().fallback(resource).with_state(state.clone());
    let resource_task = tokio::spawn(async move { axum::serve(listener, app).await });
    let locations = format!("{DOCUMENTED}{OTHERS}");
    let nginx = Nginx::start(
        program,
        &locations,
        server.forward_addr.unwrap(),
        resource_addr,
    )
    .await;
    let last_seen = || state.seen.lock().unwrap().last().cloned().unwrap();

    // The token and its companion header reach the resource server.
    assert_eq!(
        nginx.get("/floriday/orders").await.0,
        200,
        "{}",
        nginx.log()
    );
    assert_eq!(
        last_seen(),
        Seen {
            path: "/floriday/orders".into(),
            authorization: Some("Bearer tok-1".into()),
            api_key: Some("key-123".into()),
            status: 200,
        }
    );
    assert_eq!(idp.count(), 1);

    // A profile the proxy may not use, and one that does not exist: nginx refuses both
    // with tokenvend's 403, and the resource server never sees the request.
    let before = state.seen.lock().unwrap().len();
    assert_eq!(nginx.get("/secret/x").await.0, 403);
    assert_eq!(nginx.get("/unknown/x").await.0, 403);
    assert_eq!(state.seen.lock().unwrap().len(), before);

    // The refreshed token is what nginx sends next.
    assert_eq!(nginx.get("/rotating/a").await.0, 200, "{}", nginx.log());
    let first = last_seen().authorization.unwrap();
    eventually(Duration::from_secs(10), "a background refresh", || async {
        let now = server.get("rotating").await.unwrap().headers["authorization"].clone();
        (now != first).then_some(())
    })
    .await;
    assert_eq!(nginx.get("/rotating/b").await.0, 200, "{}", nginx.log());
    let second = last_seen();
    assert_eq!(second.path, "/rotating/b");
    assert_ne!(second.authorization.unwrap(), first);
    assert_eq!(second.api_key.as_deref(), Some("key-123"));

    // A client cannot report the token itself, nor speak for the proxy: nginx passes
    // none of its headers to tokenvend.
    let spoofed = reqwest::Client::new()
        .get(format!("http://{}/floriday/orders", nginx.addr))
        .header("x-tokenvend-rejected-token", "Bearer tok-1")
        .header("x-tokenvend-authorization", "Bearer forged")
        .send()
        .await
        .unwrap();
    assert_eq!(spoofed.status(), 200);
    assert_eq!(last_seen().authorization.as_deref(), Some("Bearer tok-1"));
    assert_eq!(idp.count(), 1);

    // The API revokes tok-1: nginx gets a 401, reports tok-1 to tokenvend, and retries
    // once with the replacement, which the API accepts. One provider request.
    *state.revoked.lock().unwrap() = Some("Bearer tok-1".into());
    let before = state.seen.lock().unwrap().len();
    assert_eq!(
        nginx.get("/floriday/orders").await.0,
        200,
        "{}",
        nginx.log()
    );
    let seen: Vec<_> = state.seen.lock().unwrap()[before..]
        .iter()
        .map(|s| (s.authorization.clone().unwrap(), s.status))
        .collect();
    assert_eq!(
        seen,
        [
            ("Bearer tok-1".to_owned(), 401),
            ("Bearer tok-2".to_owned(), 200)
        ]
    );
    assert_eq!(idp.count(), 2);
    // From then on the replacement is sent at the first attempt.
    assert_eq!(nginx.get("/floriday/more").await.0, 200);
    assert_eq!(last_seen().authorization.as_deref(), Some("Bearer tok-2"));

    // An upstream that refuses the replacement too is not asked a third time.
    *state.revoked.lock().unwrap() = Some("Bearer tok-2".into());
    let before = state.seen.lock().unwrap().len();
    let (status, _) = nginx.get("/floriday/again").await;
    let attempts = state.seen.lock().unwrap().len() - before;
    assert_eq!(attempts, 2, "one retry, no loop");
    assert_eq!(status, 401);
    // Reported again within `rejected_token_min_interval`: no new provider request.
    assert_eq!(idp.count(), 2);

    resource_task.abort();
    drop(nginx);
    server.stop().await;
}

/// The nginx configuration in docs/injection.md is the one tested here, line for line but
/// for where the API is.
#[test]
fn the_documented_configuration_is_the_tested_one() {
    let docs = Path::new(env!("CARGO_MANIFEST_DIR")).join("docs/injection.md");
    let docs = std::fs::read_to_string(docs).unwrap();
    let documented: Vec<&str> = docs.lines().map(str::trim).collect();
    for line in DOCUMENTED
        .lines()
        .map(str::trim)
        .filter(|l| !l.is_empty() && *l != "proxy_pass http://resource;")
    {
        assert!(
            documented.contains(&line),
            "docs/injection.md lacks `{line}`"
        );
    }
}
