//! A person in a real browser: Debian's Chromium, driven by playwright-core
//! (`tests/browser/driver.mjs`), signs in and consents on the real pages of `oidc-provider`
//! (`tests/interop/oidc-provider.mjs` with `TV_INTERACTIVE=1`), and tokenvend then serves
//! tokens from what the person authorized.
//!
//! Needs `npm ci` in `tests/browser` and `tests/interop`, and Chromium (`scripts/test`
//! installs all three); skipped without them unless TOKENVEND_REQUIRE_BROWSER=1.

use std::{
    io::{BufRead, BufReader, Write},
    os::unix::process::CommandExt,
    path::{Path, PathBuf},
    process::{Child, ChildStdin, Command, Stdio},
    time::Duration,
};

use serde_json::{Value, json};
use tokio::sync::mpsc;

use crate::support::Server;

const SECRET: &str = "s3cr+t/=:%&?-interop-secret";
/// The one account on the provider's login page.
const USERNAME: &str = "interop-user";
const PASSWORD: &str = "interop-password";

fn repo() -> &'static Path {
    Path::new(env!("CARGO_MANIFEST_DIR"))
}

fn chromium() -> PathBuf {
    std::env::var_os("TOKENVEND_CHROMIUM").map_or_else(|| "/usr/bin/chromium".into(), Into::into)
}

/// Whether everything a browser test needs is installed; if not, says what is missing,
/// or fails when TOKENVEND_REQUIRE_BROWSER is set (`scripts/test` sets it, so CI never
/// skips).
fn installed() -> bool {
    let missing: Vec<String> = [
        (
            repo().join("tests/browser/node_modules/playwright-core"),
            "run `npm ci` in tests/browser",
        ),
        (
            repo().join("tests/interop/node_modules/oidc-provider"),
            "run `npm ci` in tests/interop",
        ),
        (chromium(), "install Chromium (apt-get install chromium)"),
    ]
    .into_iter()
    .filter(|(path, _)| !path.exists())
    .map(|(path, fix)| format!("{} is missing: {fix}", path.display()))
    .collect();
    if missing.is_empty() {
        return true;
    }
    assert!(
        std::env::var_os("TOKENVEND_REQUIRE_BROWSER").is_none(),
        "TOKENVEND_REQUIRE_BROWSER is set but {}",
        missing.join("; ")
    );
    eprintln!("skipping: {}", missing.join("; "));
    false
}

/// Kills a child started in its own process group, with everything it started.
fn kill_group(child: &mut Child) {
    let _ = Command::new("kill")
        .args(["-KILL", "--", &format!("-{}", child.id())])
        .stderr(Stdio::null())
        .status();
    let _ = child.kill();
    let _ = child.wait();
}

/// `oidc-provider` with real login and consent pages.
struct Provider {
    child: Child,
    issuer: String,
    authorization_endpoint: String,
    introspection_endpoint: String,
}

impl Drop for Provider {
    fn drop(&mut self) {
        kill_group(&mut self.child);
    }
}

impl Provider {
    /// Starts the provider; `redirect_uris` are added to `tv-code`'s.
    fn start(redirect_uris: &[&str]) -> Self {
        let mut child = Command::new("node")
            .arg("oidc-provider.mjs")
            .current_dir(repo().join("tests/interop"))
            .env("TV_INTERACTIVE", "1")
            .env("TV_CODE_REDIRECT_URIS", redirect_uris.join(" "))
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(Stdio::inherit())
            .process_group(0)
            .spawn()
            .expect("node runs");
        let mut line = String::new();
        BufReader::new(child.stdout.take().unwrap())
            .read_line(&mut line)
            .unwrap();
        let started: Value =
            serde_json::from_str(&line).expect("oidc-provider prints its endpoints");
        let field = |name: &str| started[name].as_str().unwrap().to_owned();
        Self {
            issuer: field("issuer"),
            authorization_endpoint: field("authorization_endpoint"),
            introspection_endpoint: field("introspection_endpoint"),
            child,
        }
    }

    /// What the provider's introspection endpoint says about a token.
    async fn introspect(&self, token: &str) -> Value {
        reqwest::Client::new()
            .post(&self.introspection_endpoint)
            .form(&[
                ("token", token),
                ("client_id", "tv-post"),
                ("client_secret", SECRET),
            ])
            .send()
            .await
            .unwrap()
            .json()
            .await
            .unwrap()
    }

    /// The provider's login page, at any step of an interaction.
    fn interaction(&self) -> String {
        format!("{}/interaction/", self.issuer)
    }
}

/// Chromium, one window for the whole test, driven one command at a time.
struct Browser {
    child: Child,
    stdin: Option<ChildStdin>,
    answers: mpsc::UnboundedReceiver<String>,
}

impl Drop for Browser {
    fn drop(&mut self) {
        // Closing stdin lets the driver close Chromium itself; the kill is for a driver
        // that does not (a hung page), and takes Chromium's processes with it.
        self.stdin.take();
        for _ in 0..50 {
            if matches!(self.child.try_wait(), Ok(Some(_))) {
                return;
            }
            std::thread::sleep(Duration::from_millis(100));
        }
        kill_group(&mut self.child);
    }
}

impl Browser {
    async fn start() -> Self {
        let mut child = Command::new("node")
            .arg("driver.mjs")
            .current_dir(repo().join("tests/browser"))
            .env("TOKENVEND_CHROMIUM", chromium())
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(Stdio::inherit())
            .process_group(0)
            .spawn()
            .expect("node runs");
        let stdout = child.stdout.take().unwrap();
        // A thread reads, so that a test's single-threaded runtime keeps serving the
        // browser's requests while it waits for an answer.
        let (tx, answers) = mpsc::unbounded_channel();
        std::thread::spawn(move || {
            for line in BufReader::new(stdout).lines() {
                let Ok(line) = line else { break };
                if tx.send(line).is_err() {
                    break;
                }
            }
        });
        let mut browser = Self {
            stdin: child.stdin.take(),
            child,
            answers,
        };
        let ready = browser.answer().await;
        assert_eq!(ready["ready"], true, "{ready}");
        browser
    }

    async fn answer(&mut self) -> Value {
        let line = tokio::time::timeout(Duration::from_secs(60), self.answers.recv())
            .await
            .expect("the browser answers within a minute")
            .expect("the browser driver exited");
        serde_json::from_str(&line).unwrap_or_else(|e| panic!("{e}: {line}"))
    }

    /// Runs a command and returns the page it left the browser on; panics, with the page,
    /// if it failed.
    async fn run(&mut self, command: Value) -> Value {
        let stdin = self.stdin.as_mut().unwrap();
        writeln!(stdin, "{command}").unwrap();
        stdin.flush().unwrap();
        let answer = self.answer().await;
        assert_eq!(
            answer["ok"], true,
            "{command} failed: {} at {}\n{}",
            answer["error"], answer["url"], answer["text"]
        );
        answer
    }

    async fn open(&mut self, url: &str, until: &str) -> Value {
        self.run(json!({"do": "open", "url": url, "until": until}))
            .await
    }

    async fn click(&mut self, selector: &str, until: &str) -> Value {
        self.run(json!({"do": "click", "selector": selector, "until": until}))
            .await
    }

    /// Signs in at the provider's login page and expects its consent page.
    async fn sign_in(&mut self, provider: &Provider) -> Value {
        let consent = self
            .run(json!({
                "do": "sign_in",
                "username": USERNAME,
                "password": PASSWORD,
                "until": provider.interaction(),
            }))
            .await;
        assert_eq!(
            consent["title"], "Allow access - interop provider",
            "{}",
            consent["text"]
        );
        consent
    }
}

fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}

/// The query parameter `name` of a URL.
fn param(url: &str, name: &str) -> Option<String> {
    url::Url::parse(url)
        .unwrap()
        .query_pairs()
        .find(|(key, _)| key == name)
        .map(|(_, value)| value.into_owned())
}

/// `tokenvend authorize`, with a loopback redirect URI it receives itself: the person
/// opens the URL it prints, signs in with a password, approves the scopes the provider
/// lists, and the browser lands on tokenvend's loopback page. The server then serves
/// tokens from the refresh token that flow stored.
#[tokio::test]
async fn tokenvend_authorize_in_chromium_then_get_token() {
    if !installed() {
        return;
    }
    let provider = Provider::start(&[]);
    let mut browser = Browser::start().await;
    let state_dir = tempfile::tempdir().unwrap();
    let redirect_uri = format!("http://127.0.0.1:{}/cb", free_port());
    let yaml = format!(
        "server:\n  state_dir: {dir}\nprofiles:\n  code:\n    issuer: {issuer}\n    grant: refresh_token\n    client_id: tv-code\n    client_secret: {{ value: \"{SECRET}\" }}\n    auth_method: client_secret_post\n    authorize_url: \"{auth}?prompt=consent\"\n    redirect_uri: {redirect_uri}\n    scopes: [openid, offline_access, \"api:read\"]\n",
        dir = state_dir.path().display(),
        issuer = provider.issuer,
        auth = provider.authorization_endpoint,
    );
    let config = tokenvend_server::Config::from_yaml(&yaml).unwrap();

    let (url_tx, url_rx) = tokio::sync::oneshot::channel::<url::Url>();
    let authorize = tokenvend_server::authorize::run(
        &config,
        "code",
        move |url| {
            let _ = url_tx.send(url.clone());
        },
        async || panic!("a loopback redirect needs no pasting"),
    );
    let person = async {
        let url = url_rx.await.unwrap();
        let login = browser.open(url.as_str(), &provider.interaction()).await;
        assert_eq!(login["status"], 200, "{}", login["text"]);
        assert_eq!(login["title"], "Sign in - interop provider");
        assert!(
            login["text"].as_str().unwrap().contains("tv-code"),
            "{}",
            login["text"]
        );

        let consent = browser.sign_in(&provider).await;
        for scope in ["openid", "offline_access", "api:read"] {
            assert!(
                consent["html"]
                    .as_str()
                    .unwrap()
                    .contains(&format!("<li>{scope}</li>")),
                "{scope} is listed: {}",
                consent["text"]
            );
        }

        let landed = browser.click("#approve", &redirect_uri).await;
        assert_eq!(landed["status"], 200, "{}", landed["text"]);
        assert!(
            landed["text"]
                .as_str()
                .unwrap()
                .contains("authorization received"),
            "{}",
            landed["text"]
        );
        // Through the provider's authorization endpoint, back to tokenvend with a code
        // and the state it sent.
        let history: Vec<&str> = landed["history"]
            .as_array()
            .unwrap()
            .iter()
            .map(|url| url.as_str().unwrap())
            .collect();
        let back = history.last().unwrap();
        assert!(back.starts_with(&redirect_uri), "{history:?}");
        assert!(param(back, "code").is_some(), "{back}");
        assert_eq!(param(back, "state"), param(url.as_str(), "state"));
    };
    let (authorized, ()) = tokio::join!(authorize, person);
    authorized.unwrap_or_else(|e| panic!("authorize: {e}"));

    let record: Value = serde_json::from_str(
        &std::fs::read_to_string(state_dir.path().join("code.refresh.json")).unwrap(),
    )
    .unwrap();
    let refresh_token = record["refresh_token"].as_str().unwrap();
    let answer = provider.introspect(refresh_token).await;
    assert_eq!(answer["active"], true, "{answer}");
    assert_eq!(
        answer["sub"], USERNAME,
        "the account that signed in: {answer}"
    );

    let server = Server::start(&yaml).await;
    let token = server
        .get("code")
        .await
        .unwrap_or_else(|status| panic!("{status:?}"));
    let answer = provider.introspect(&token.access_token).await;
    assert_eq!(answer["active"], true, "{answer}");
    assert_eq!(answer["client_id"], "tv-code", "{answer}");
    assert_eq!(answer["sub"], USERNAME, "{answer}");
    server.stop().await;
}
