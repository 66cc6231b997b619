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
use tokenvend::pb::{
    CreateConnectLinkRequest, GetTokenRequest, Token, token_service_client::TokenServiceClient,
};
use tokenvend_server::Listeners;
use tokio::{
    net::TcpListener,
    sync::{mpsc, oneshot},
    task::JoinHandle,
};
use tonic::transport::Channel;

use crate::support::{Server, eventually, redis::RedisServer};

const SECRET: &str = "s3cr+t/=:%&?-interop-secret";
/// The one account on the provider's login page.
const USERNAME: &str = "interop-user";
const PASSWORD: &str = "interop-password";
/// The key connections are sealed with at rest (32 bytes, base64).
const CONNECTIONS_KEY: &str = "Y29ubmVjdGlvbnMta2V5LWZvci1icm93c2VyLXRlc3Q=";

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
        Self::start_with(redirect_uris, &[])
    }

    /// Starts the provider with more environment variables.
    fn start_with(redirect_uris: &[&str], env: &[(&str, &str)]) -> Self {
        let mut child = Command::new("node")
            .arg("oidc-provider.mjs")
            .current_dir(repo().join("tests/interop"))
            .env("TV_INTERACTIVE", "1")
            .env("TV_CODE_REDIRECT_URIS", redirect_uris.join(" "))
            .envs(env.iter().copied())
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

/// tokenvend with its admin listener on a socket the test bound: the page's callback URL
/// (`redirect_uri`) names that port, so it must be known before the configuration is.
struct Tokenvend {
    client: TokenServiceClient<Channel>,
    shutdown: Option<oneshot::Sender<()>>,
    task: JoinHandle<Result<(), tokenvend_server::server::ServerError>>,
}

impl Tokenvend {
    async fn start(admin: TcpListener, yaml: &str) -> Self {
        let mut config = tokenvend_server::Config::from_yaml(yaml)
            .unwrap_or_else(|e| panic!("test config: {e}"));
        config.server.shutdown_delay = Duration::ZERO;
        let grpc = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = grpc.local_addr().unwrap();
        let (shutdown, signal) = oneshot::channel::<()>();
        let task = tokio::spawn(tokenvend_server::serve(
            Listeners {
                grpc,
                admin: Some(admin),
                forward_auth: None,
            },
            config,
            async move {
                let _ = signal.await;
            },
        ));
        let channel = match Channel::from_shared(format!("http://{addr}"))
            .unwrap()
            .connect()
            .await
        {
            Ok(channel) => channel,
            // The server gave up at start: say why.
            Err(error) => panic!("{error}: serve returned {:?}", task.await),
        };
        Self {
            client: TokenServiceClient::new(channel),
            shutdown: Some(shutdown),
            task,
        }
    }

    async fn get(&self, profile: &str) -> Result<Token, tonic::Status> {
        crate::support::get(&mut self.client.clone(), profile).await
    }

    /// GetToken for a template profile's connection.
    async fn get_for(&self, profile: &str, subject: &str) -> Result<Token, tonic::Status> {
        self.client
            .clone()
            .get_token(GetTokenRequest {
                profile: profile.to_owned(),
                subject: subject.to_owned(),
                ..Default::default()
            })
            .await
            .map(tonic::Response::into_inner)
    }

    /// A connect link for a template profile's subject, as a product asks for one.
    async fn connect_link(&self, profile: &str, subject: &str) -> String {
        self.client
            .clone()
            .create_connect_link(CreateConnectLinkRequest {
                profile: profile.to_owned(),
                subject: subject.to_owned(),
                ttl_seconds: 0,
            })
            .await
            .unwrap_or_else(|status| panic!("{status:?}"))
            .into_inner()
            .url
    }

    async fn stop(mut self) {
        if let Some(shutdown) = self.shutdown.take() {
            let _ = shutdown.send(());
        }
        tokio::time::timeout(Duration::from_secs(30), self.task)
            .await
            .expect("serve returns after shutdown")
            .unwrap()
            .unwrap();
    }
}

/// A refresh-token profile for `tv-code` that the admin page at `base` can authorize.
fn hosted_profile(name: &str, provider: &Provider, base: &str) -> String {
    format!(
        "  {name}:\n    issuer: {issuer}\n    grant: refresh_token\n    client_id: tv-code\n    client_secret: {{ value: \"{SECRET}\" }}\n    auth_method: client_secret_post\n    authorize_url: \"{auth}?prompt=consent\"\n    redirect_uri: {base}/oauth/callback\n    scopes: [openid, offline_access, \"api:read\"]\n",
        issuer = provider.issuer,
        auth = provider.authorization_endpoint,
    )
}

/// A client-credentials profile at the provider, with `secret` as its client secret.
fn client_credentials_profile(name: &str, provider: &Provider, secret: &str) -> String {
    format!(
        "  {name}:\n    issuer: {issuer}\n    client_id: tv-basic\n    client_secret: {{ value: \"{secret}\" }}\n    auth_method: client_secret_basic\n    scopes: [\"api:read\"]\n",
        issuer = provider.issuer,
    )
}

/// The refresh token tokenvend has stored for a profile in its state directory.
fn stored_refresh_token(state_dir: &Path, profile: &str) -> String {
    let path = state_dir.join(format!("{profile}.refresh.json"));
    let record: Value = serde_json::from_str(&std::fs::read_to_string(&path).unwrap()).unwrap();
    record["refresh_token"].as_str().unwrap().to_owned()
}

/// Asserts that none of `secrets` is anywhere in what the browser got for each page: its
/// HTML (hidden fields and attributes included), its visible text and its URL.
fn assert_nothing_secret(pages: &[&Value], secrets: &[&str]) {
    for page in pages {
        for secret in secrets {
            assert!(secret.len() >= 8, "a secret worth looking for");
            for field in ["html", "text", "url"] {
                assert!(
                    !page[field].as_str().unwrap_or_default().contains(secret),
                    "the page at {} shows a secret or token in its {field}",
                    page["url"]
                );
            }
        }
    }
}

/// The URLs a command's page went through, as strings.
fn history(page: &Value) -> Vec<String> {
    page["history"]
        .as_array()
        .unwrap()
        .iter()
        .map(|url| url.as_str().unwrap().to_owned())
        .collect()
}

/// Reloads the page at `url` until `profile`'s row shows `state`.
async fn until_state(browser: &mut Browser, url: &str, profile: &str, state: &str) -> Value {
    until_row(browser, url, "profiles", profile, state).await
}

/// Reloads the page at `url` until the row `name` of `rows` (`profiles`, `subjects`)
/// shows `state`.
async fn until_row(browser: &mut Browser, url: &str, rows: &str, name: &str, state: &str) -> Value {
    let deadline = tokio::time::Instant::now() + Duration::from_secs(10);
    loop {
        let page = browser.open(url, url).await;
        if page[rows][name] == state {
            return page;
        }
        assert!(
            tokio::time::Instant::now() < deadline,
            "{name} never showed {state}: {}",
            page["text"]
        );
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
}

/// The whole hosted flow, as an admin does it: the page lists the profile as not
/// authorized, its Authorize button leads to the provider's real login and consent pages
/// (denied once: the page says so), and the browser comes back to the page, which says
/// so and shows the profile valid; GetToken then serves a token of the account that
/// signed in. No page shows the client secret, the access token or the refresh token,
/// and the callback works once.
#[tokio::test]
async fn admin_page_authorize_button_signs_in_at_the_provider_then_valid() {
    if !installed() {
        return;
    }
    let admin = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let base = format!("http://{}", admin.local_addr().unwrap());
    let home = format!("{base}/");
    let callback = format!("{base}/oauth/callback");
    let provider = Provider::start(&[&callback]);
    let state_dir = tempfile::tempdir().unwrap();
    let yaml = format!(
        "server:\n  state_dir: {dir}\nprofiles:\n{ledger}",
        dir = state_dir.path().display(),
        ledger = hosted_profile("ledger", &provider, &base),
    );
    let tokenvend = Tokenvend::start(admin, &yaml).await;
    let mut browser = Browser::start().await;

    let before = browser.open(&home, &home).await;
    assert_eq!(before["status"], 200, "{}", before["text"]);
    let state = before["profiles"]["ledger"].as_str().unwrap_or_default();
    assert!(
        ["empty", "needs re-authorization"].contains(&state),
        "not authorized yet: {}",
        before["text"]
    );
    assert!(
        before["forms"]
            .as_array()
            .unwrap()
            .contains(&json!("/authorize/ledger")),
        "{}",
        before["html"]
    );
    assert!(before["notice"].is_null());

    let authorize =
        r#"tr[data-profile="ledger"] form[action="/authorize/ledger"] button[type="submit"]"#;
    // First the person denies at the provider: the page says so, and nothing is stored.
    let login = browser.click(authorize, &provider.interaction()).await;
    assert_eq!(login["title"], "Sign in - interop provider");
    browser.sign_in(&provider).await;
    let denied = browser.click("#deny", &callback).await;
    assert!(
        (400..500).contains(&denied["status"].as_u64().unwrap()),
        "{}: {}",
        denied["status"],
        denied["text"]
    );
    assert!(
        denied["text"].as_str().unwrap().contains("access_denied"),
        "{}",
        denied["text"]
    );
    assert!(!state_dir.path().join("ledger.refresh.json").exists());

    // Then tries again and approves; still signed in at the provider, the person goes
    // straight to its consent page.
    browser.open(&home, &home).await;
    let consent = browser.click(authorize, &provider.interaction()).await;
    assert_eq!(
        consent["title"], "Allow access - interop provider",
        "{}",
        consent["text"]
    );
    let authorize_url = history(&consent)
        .into_iter()
        .find(|url| url.starts_with(&provider.authorization_endpoint))
        .expect("through the provider's authorization endpoint");
    assert_eq!(
        param(&authorize_url, "code_challenge_method").as_deref(),
        Some("S256")
    );
    assert_eq!(
        param(&authorize_url, "redirect_uri"),
        Some(callback.clone())
    );

    let landed = browser.click("#approve", &home).await;
    assert_eq!(landed["url"], home.as_str(), "{}", landed["text"]);
    assert_eq!(landed["status"], 200, "{}", landed["text"]);
    let back = history(&landed)
        .into_iter()
        .find(|url| url.starts_with(&callback))
        .expect("through tokenvend's callback");
    assert_eq!(param(&back, "state"), param(&authorize_url, "state"));
    let notice = landed["notice"].as_str().expect("a notice");
    assert!(notice.contains("ledger"), "{notice}");

    // The live slot uses the new refresh token at once, with no wait for a backoff left
    // from before.
    let token = tokenvend
        .get("ledger")
        .await
        .unwrap_or_else(|status| panic!("{status:?}"));
    let valid = until_state(&mut browser, &home, "ledger", "valid").await;
    let answer = provider.introspect(&token.access_token).await;
    assert_eq!(answer["active"], true, "{answer}");
    assert_eq!(
        answer["sub"], USERNAME,
        "the account that signed in: {answer}"
    );
    let refresh_token = stored_refresh_token(state_dir.path(), "ledger");
    assert_eq!(provider.introspect(&refresh_token).await["active"], true);

    let after = browser.open(&home, &home).await;
    assert_eq!(after["profiles"]["ledger"], "valid", "{}", after["text"]);
    assert!(after["notice"].is_null(), "the notice shows once");
    assert_nothing_secret(
        &[&before, &landed, &valid, &after],
        &[SECRET, &token.access_token, &refresh_token],
    );

    // The provider's redirect, replayed in the same browser, is refused and changes
    // nothing.
    let replay = browser.open(&back, &callback).await;
    assert!(
        (400..500).contains(&replay["status"].as_u64().unwrap()),
        "{}: {}",
        replay["status"],
        replay["text"]
    );
    assert!(replay["notice"].is_null());
    assert_eq!(
        stored_refresh_token(state_dir.path(), "ledger"),
        refresh_token
    );
    tokenvend.stop().await;
}

/// Off loopback, with an OpenID Connect login for the admin page: a browser without a
/// session is sent to log in and sees no profile on the way, from the page or from the
/// Authorize form's target; once signed in at the issuer as a listed admin, it sees the
/// profiles and may authorize.
#[tokio::test]
async fn off_loopback_admin_page_sends_a_stranger_to_log_in_and_shows_nothing() {
    if !installed() {
        return;
    }
    // Every address, connected to on loopback: the listener is not on loopback, so the
    // page is not open.
    let admin = TcpListener::bind("0.0.0.0:0").await.unwrap();
    let base = format!("http://127.0.0.1:{}", admin.local_addr().unwrap().port());
    let home = format!("{base}/");
    let provider = Provider::start_with(
        &[&format!("{base}/oauth/callback")],
        &[("TV_ADMIN_WEB", "1")],
    );
    let state_dir = tempfile::tempdir().unwrap();
    let session_key = "k".repeat(32);
    let metrics_token = "m".repeat(32);
    // Names no page would show by chance.
    let (hosted, plain) = ("ledger-q7x2", "billing-z4k9");
    let yaml = format!(
        "server:\n  state_dir: {dir}\n  admin:\n    public_url: {base}\n    session_key: {{ value: \"{session_key}\" }}\n    metrics_token: {{ value: \"{metrics_token}\" }}\n    login:\n      oidc:\n        issuer: {issuer}\n        client_id: tv-admin\n        client_secret: {{ value: \"{SECRET}\" }}\n        scopes: [openid]\n    admins: [{USERNAME}]\nprofiles:\n{hosted_profile}{plain_profile}",
        dir = state_dir.path().display(),
        issuer = provider.issuer,
        hosted_profile = hosted_profile(hosted, &provider, &base),
        plain_profile = client_credentials_profile(plain, &provider, SECRET),
    );
    let tokenvend = Tokenvend::start(admin, &yaml).await;
    let mut browser = Browser::start().await;

    let sent = browser.open(&home, &provider.interaction()).await;
    let went = history(&sent);
    assert!(
        went.iter()
            .any(|url| url.starts_with(&format!("{base}/login"))),
        "through the admin login: {went:?}"
    );
    assert_eq!(sent["title"], "Sign in - interop provider");
    assert!(sent["profiles"].as_object().unwrap().is_empty());
    // Straight at the Authorize form's target: no flow starts, and nothing is named.
    let post = browser
        .run(json!({
            "do": "post",
            "url": format!("{base}/authorize/{hosted}"),
            "form": {"csrf": "x"},
        }))
        .await;
    let status = post["status"].as_u64().unwrap();
    let location = post["location"].as_str().unwrap_or_default();
    assert!(
        (400..500).contains(&status) || location == "/login",
        "{status} {location}"
    );
    for page in [&sent, &post] {
        for name in [hosted, plain] {
            assert!(
                !page["html"].as_str().unwrap().contains(name),
                "{} shows {name} to a stranger",
                page["url"]
            );
        }
    }

    browser.sign_in(&provider).await;
    let landed = browser.click("#approve", &home).await;
    assert_eq!(landed["url"], home.as_str(), "{}", landed["text"]);
    assert!(
        landed["text"].as_str().unwrap().contains(USERNAME),
        "who is logged in: {}",
        landed["text"]
    );
    for name in [hosted, plain] {
        assert!(landed["profiles"].get(name).is_some(), "{}", landed["text"]);
    }
    assert!(
        landed["forms"]
            .as_array()
            .unwrap()
            .contains(&json!(format!("/authorize/{hosted}"))),
        "an admin may authorize: {}",
        landed["html"]
    );
    assert_nothing_secret(&[&landed], &[SECRET, &session_key, &metrics_token]);
    tokenvend.stop().await;
}

/// The page with profiles in each state a person meets: one authorized from the page
/// (valid), one not authorized yet, a client-credentials profile that works (valid) and
/// one whose secret the provider refuses (failed). Screenshots of it go to the docs
/// (`TOKENVEND_SCREENSHOTS=docs/images`).
#[tokio::test]
async fn admin_page_shows_each_profile_state() {
    if !installed() {
        return;
    }
    let admin = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let base = format!("http://{}", admin.local_addr().unwrap());
    let home = format!("{base}/");
    let provider = Provider::start(&[&format!("{base}/oauth/callback")]);
    let state_dir = tempfile::tempdir().unwrap();
    let wrong_secret = "not-the-interop-secret";
    let yaml = format!(
        "server:\n  state_dir: {dir}\nprofiles:\n{ledger}{reports}{billing}{legacy}",
        dir = state_dir.path().display(),
        ledger = hosted_profile("jadu-ledger", &provider, &base),
        reports = hosted_profile("jet-admin-reports", &provider, &base),
        billing = client_credentials_profile("billing-api", &provider, SECRET),
        legacy = client_credentials_profile("legacy-crm", &provider, wrong_secret),
    );
    let tokenvend = Tokenvend::start(admin, &yaml).await;
    let billing = tokenvend.get("billing-api").await.unwrap();
    let refused = tokenvend.get("legacy-crm").await.unwrap_err();
    assert!(refused.message().contains("invalid_client"), "{refused:?}");

    let mut browser = Browser::start().await;
    browser.open(&home, &home).await;
    browser
        .click(
            r#"form[action="/authorize/jadu-ledger"] button[type="submit"]"#,
            &provider.interaction(),
        )
        .await;
    browser.sign_in(&provider).await;
    browser.click("#approve", &home).await;
    let ledger = tokenvend.get("jadu-ledger").await.unwrap();
    let page = until_state(&mut browser, &home, "jadu-ledger", "valid").await;

    let states = page["profiles"].as_object().unwrap();
    assert_eq!(states["jadu-ledger"], "valid", "{}", page["text"]);
    assert!(
        ["empty", "needs re-authorization"]
            .contains(&states["jet-admin-reports"].as_str().unwrap()),
        "{}",
        page["text"]
    );
    assert_eq!(states["billing-api"], "valid", "{}", page["text"]);
    assert_eq!(states["legacy-crm"], "failed", "{}", page["text"]);
    // The provider's refusal is shown, not the secret that was refused.
    assert!(
        page["text"].as_str().unwrap().contains("invalid_client"),
        "{}",
        page["text"]
    );
    assert_nothing_secret(
        &[&page],
        &[
            SECRET,
            wrong_secret,
            &billing.access_token,
            &ledger.access_token,
            &stored_refresh_token(state_dir.path(), "jadu-ledger"),
        ],
    );
    browser
        .run(json!({"do": "screenshot", "name": "admin-page"}))
        .await;
    tokenvend.stop().await;
}

/// Opaque tokens as oidc-provider issues them (43 characters of base64url): whatever
/// access or refresh token of a connection a page might show, whichever it is.
fn assert_no_token_shaped_text(pages: &[&Value]) {
    for page in pages {
        let html = page["html"].as_str().unwrap_or_default();
        let token_char = |c: char| c.is_ascii_alphanumeric() || c == '-' || c == '_';
        for run in html.split(|c: char| !token_char(c)) {
            assert!(
                run.len() != 43,
                "the page at {} shows something shaped like a token: {run}",
                page["url"]
            );
        }
    }
}

/// A connection, as a product's user makes one: the product asks tokenvend for a signed
/// link (CreateConnectLink), the user opens it in a browser without any admin login,
/// signs in at the provider and approves, and lands on a page that says they are
/// connected; GetToken with that subject then serves a token of theirs. The admin page
/// lists the connections under their template profile, and revokes one with its button,
/// after which its subject gets no token. Screenshots of the list go to the docs (`TOKENVEND_SCREENSHOTS=docs/images`).
#[tokio::test]
async fn connect_link_in_chromium_makes_a_connection_listed_on_the_admin_page() {
    if !installed() {
        return;
    }
    let admin = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let base = format!("http://{}", admin.local_addr().unwrap());
    let home = format!("{base}/");
    let callback = format!("{base}/oauth/callback");
    let provider = Provider::start(&[&callback]);
    let state_dir = tempfile::tempdir().unwrap();
    let session_key = "s".repeat(32);
    let yaml = format!(
        "server:\n  state_dir: {dir}\n  connections: {{ key: {{ value: \"{CONNECTIONS_KEY}\" }} }}\n  admin:\n    public_url: {base}\n    session_key: {{ value: \"{session_key}\" }}\nprofiles:\n{customers}    template: true\n",
        dir = state_dir.path().display(),
        customers = hosted_profile("customers", &provider, &base),
    );
    let tokenvend = Tokenvend::start(admin, &yaml).await;
    let mut browser = Browser::start().await;

    // Each person at their own browser: no cookie from the one before.
    let mut seen = Vec::new();
    for subject in ["customer-42", "customer-7", "tenant-acme"] {
        browser.run(json!({"do": "forget"})).await;
        let link = tokenvend.connect_link("customers", subject).await;
        assert!(
            link.starts_with(&format!("{base}/connect/customers?")),
            "{link}"
        );
        let login = browser.open(&link, &provider.interaction()).await;
        assert_eq!(login["title"], "Sign in - interop provider");
        browser.sign_in(&provider).await;
        let page = browser.click("#approve", &format!("{base}/")).await;
        assert_eq!(page["status"], 200, "{}", page["text"]);
        let said = page["connected"].as_str().expect("a connected page");
        assert!(said.contains(subject), "{said}");
        assert!(
            page["profiles"].as_object().unwrap().is_empty(),
            "the person at a link sees no admin page: {}",
            page["text"]
        );
        seen.push(page);
    }

    // Each subject's token is the one its person authorized, and a subject nobody
    // authorized has none.
    let mut tokens = Vec::new();
    for subject in ["customer-42", "customer-7", "tenant-acme"] {
        let token = tokenvend
            .get_for("customers", subject)
            .await
            .unwrap_or_else(|status| panic!("{subject}: {status:?}"));
        let answer = provider.introspect(&token.access_token).await;
        assert_eq!(answer["active"], true, "{subject}: {answer}");
        assert_eq!(answer["sub"], USERNAME, "{subject}: {answer}");
        assert!(
            !tokens.contains(&token.access_token),
            "{subject}: its own token"
        );
        tokens.push(token.access_token);
    }
    let none = tokenvend
        .get_for("customers", "customer-nobody")
        .await
        .unwrap_err();
    assert_eq!(none.code(), tonic::Code::FailedPrecondition, "{none:?}");

    // The admin, on the page (open on loopback), follows the template's link.
    browser.run(json!({"do": "forget"})).await;
    let page = browser.open(&home, &home).await;
    assert!(
        page["profiles"].get("customers").is_some(),
        "{}",
        page["text"]
    );
    assert!(
        !page["forms"]
            .as_array()
            .unwrap()
            .contains(&json!("/authorize/customers")),
        "a template is authorized per connection, not from the page"
    );
    let connections = format!("{base}/connections/customers");
    let list = browser
        .click(
            r#"tr[data-profile="customers"] a[href="/connections/customers"]"#,
            &connections,
        )
        .await;
    assert_eq!(list["status"], 200, "{}", list["text"]);
    for subject in ["customer-42", "customer-7", "tenant-acme"] {
        assert!(list["subjects"].get(subject).is_some(), "{}", list["text"]);
    }
    let list = until_row(
        &mut browser,
        &connections,
        "subjects",
        "customer-42",
        "valid",
    )
    .await;
    browser
        .run(json!({"do": "screenshot", "name": "connections"}))
        .await;
    // The admin revokes one from the page: it is gone, the others stay.
    let revoked = browser
        .click(
            r#"tr[data-subject="tenant-acme"] button[type="submit"]"#,
            &connections,
        )
        .await;
    assert_eq!(revoked["status"], 200, "{}", revoked["text"]);
    let rows = revoked["subjects"].as_object().unwrap();
    assert!(!rows.contains_key("tenant-acme"), "{}", revoked["text"]);
    assert!(
        rows.contains_key("customer-42") && rows.contains_key("customer-7"),
        "{}",
        revoked["text"]
    );
    let gone = tokenvend
        .get_for("customers", "tenant-acme")
        .await
        .unwrap_err();
    assert_eq!(gone.code(), tonic::Code::FailedPrecondition, "{gone:?}");
    tokenvend
        .get_for("customers", "customer-42")
        .await
        .unwrap_or_else(|status| panic!("{status:?}"));
    seen.extend([page, list, revoked]);
    let seen: Vec<&Value> = seen.iter().collect();
    let mut secrets = vec![SECRET, &session_key, CONNECTIONS_KEY];
    secrets.extend(tokens.iter().map(String::as_str));
    assert_nothing_secret(&seen, &secrets);
    assert_no_token_shaped_text(&seen);
    tokenvend.stop().await;
}

/// Off loopback with the admin token as the login: a stranger is sent to the login form
/// and sees no profile, a wrong token is refused there, and the right one typed into the
/// form opens the page, from which the admin authorizes a profile through the provider
/// (public URL, sealed cookies and all, as a deployment behind a balancer has them).
#[tokio::test]
async fn off_loopback_admin_token_login_then_hosted_authorization() {
    if !installed() {
        return;
    }
    let admin = TcpListener::bind("0.0.0.0:0").await.unwrap();
    let base = format!("http://127.0.0.1:{}", admin.local_addr().unwrap().port());
    let home = format!("{base}/");
    let login_url = format!("{base}/login");
    let provider = Provider::start(&[&format!("{base}/oauth/callback")]);
    let state_dir = tempfile::tempdir().unwrap();
    let login_token = "admin-login-token-0123456789";
    let session_key = "k".repeat(32);
    let metrics_token = "m".repeat(32);
    let hosted = "ledger-q7x2";
    let yaml = format!(
        "server:\n  state_dir: {dir}\n  admin:\n    public_url: {base}\n    session_key: {{ value: \"{session_key}\" }}\n    metrics_token: {{ value: \"{metrics_token}\" }}\n    login:\n      token: {{ value: \"{login_token}\" }}\nprofiles:\n{profile}",
        dir = state_dir.path().display(),
        profile = hosted_profile(hosted, &provider, &base),
    );
    let tokenvend = Tokenvend::start(admin, &yaml).await;
    let mut browser = Browser::start().await;

    let form = browser.open(&home, &login_url).await;
    assert_eq!(form["url"], login_url.as_str());
    assert!(
        form["forms"].as_array().unwrap().contains(&json!("/login")),
        "{}",
        form["html"]
    );
    browser
        .run(json!({"do": "fill", "selector": "input[name=token]", "value": "not-the-token"}))
        .await;
    let wrong = browser
        .click(r#"form[action="/login"] button[type="submit"]"#, &login_url)
        .await;
    assert_eq!(wrong["status"], 401, "{}", wrong["text"]);
    for page in [&form, &wrong] {
        assert!(
            !page["html"].as_str().unwrap().contains(hosted),
            "{} names a profile to a stranger",
            page["url"]
        );
    }
    // Still a stranger: the page sends them back.
    let again = browser.open(&home, &login_url).await;
    assert!(again["profiles"].as_object().unwrap().is_empty());

    browser
        .run(json!({"do": "fill", "selector": "input[name=token]", "value": login_token}))
        .await;
    let page = browser
        .click(r#"form[action="/login"] button[type="submit"]"#, &home)
        .await;
    assert_eq!(page["url"], home.as_str(), "{}", page["text"]);
    let authorize = format!(r#"form[action="/authorize/{hosted}"] button[type="submit"]"#);
    browser.click(&authorize, &provider.interaction()).await;
    browser.sign_in(&provider).await;
    let landed = browser.click("#approve", &home).await;
    let notice = landed["notice"].as_str().expect("a notice");
    assert!(notice.contains(hosted), "{notice}");
    let token = tokenvend
        .get(hosted)
        .await
        .unwrap_or_else(|status| panic!("{status:?}"));
    assert_eq!(
        provider.introspect(&token.access_token).await["active"],
        true
    );
    let after = until_state(&mut browser, &home, hosted, "valid").await;
    assert_nothing_secret(
        &[&form, &wrong, &again, &page, &landed, &after],
        &[
            SECRET,
            login_token,
            &session_key,
            &metrics_token,
            &token.access_token,
            &stored_refresh_token(state_dir.path(), hosted),
        ],
    );
    tokenvend.stop().await;
}

/// Two replicas sharing Redis: a person authorizes on one replica's page, and the other
/// serves tokens from that authorization and shows it valid on its own page.
#[tokio::test]
async fn authorized_on_one_replica_served_by_another_through_redis() {
    if !installed() {
        return;
    }
    let Some(redis) = RedisServer::start() else {
        return;
    };
    let admin_a = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let admin_b = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let base = format!("http://{}", admin_a.local_addr().unwrap());
    let home = format!("{base}/");
    let home_b = format!("http://{}/", admin_b.local_addr().unwrap());
    let provider = Provider::start(&[&format!("{base}/oauth/callback")]);
    let session_key = "k".repeat(32);
    // Both replicas send people to the first one's address, as to a balancer's.
    let yaml = format!(
        "server:\n  store:\n    redis:\n      url: {url}\n      encryption_keys:\n        - {{ id: k1, key: {{ value: \"{CONNECTIONS_KEY}\" }} }}\n  admin:\n    public_url: {base}\n    session_key: {{ value: \"{session_key}\" }}\nprofiles:\n{ledger}",
        url = redis.url(),
        // A long backoff: the other replica must not wait it out once a person authorized.
        ledger =
            hosted_profile("ledger", &provider, &base) + "    retry: { initial: 1m, max: 1m }\n",
    );
    let a = Tokenvend::start(admin_a, &yaml).await;
    let b = Tokenvend::start(admin_b, &yaml).await;
    // The other replica has failed once already (no refresh token yet), and backs off.
    assert!(b.get("ledger").await.is_err());
    let mut browser = Browser::start().await;

    browser.open(&home, &home).await;
    browser
        .click(
            r#"form[action="/authorize/ledger"] button[type="submit"]"#,
            &provider.interaction(),
        )
        .await;
    browser.sign_in(&provider).await;
    let landed = browser.click("#approve", &home).await;
    assert!(
        landed["notice"]
            .as_str()
            .unwrap_or_default()
            .contains("ledger"),
        "{}",
        landed["text"]
    );

    // The authorizing replica tells the other through the store's channel, which cuts its
    // backoff short: it serves within moments, not after the minute.
    let token = eventually(
        Duration::from_secs(5),
        "a token from the other replica",
        || async { b.get("ledger").await.ok() },
    )
    .await;
    let answer = provider.introspect(&token.access_token).await;
    assert_eq!(answer["active"], true, "{answer}");
    assert_eq!(answer["sub"], USERNAME, "{answer}");
    let page_b = until_state(&mut browser, &home_b, "ledger", "valid").await;
    assert_nothing_secret(
        &[&landed, &page_b],
        &[SECRET, &session_key, &token.access_token],
    );
    assert_no_token_shaped_text(&[&landed, &page_b]);
    a.stop().await;
    b.stop().await;
}
