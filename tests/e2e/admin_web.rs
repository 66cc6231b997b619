//! The admin web on the admin listener: the hosted authorization against a real
//! authorization server (oidc-provider, whose login and consent are automatic, so a
//! client that follows redirects and keeps cookies is the browser), the page, and who may
//! see and do what.

use std::{collections::BTreeMap, net::SocketAddr, time::Duration};

use reqwest::{StatusCode, header};
use tokenvend::pb::{GetTokenRequest, token_service_client::TokenServiceClient};
use tokenvend_server::{Config, Listeners};
use tokio::{net::TcpListener, sync::oneshot, task::JoinHandle};
use url::Url;

use super::interop::{SECRET, start_oidc_provider, stored_refresh_token};

const SESSION_KEY: &str = "0123456789abcdef0123456789abcdef-session";
const LOGIN_TOKEN: &str = "admin-login-token-9f8e7d6c5b4a";

/// tokenvend with its admin listener bound first, so that the configuration can name
/// its address (`public_url`, `redirect_uri`).
struct Running {
    base: String,
    grpc: SocketAddr,
    shutdown: Option<oneshot::Sender<()>>,
    task: JoinHandle<Result<(), tokenvend_server::server::ServerError>>,
}

impl Running {
    /// Binds the admin listener on `bind`, then serves `yaml(base)`, `base` being the
    /// listener's address on loopback.
    async fn start(bind: &str, yaml: impl FnOnce(&str) -> String) -> Self {
        let admin = TcpListener::bind(bind).await.unwrap();
        let base = format!("http://127.0.0.1:{}", admin.local_addr().unwrap().port());
        let grpc = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let grpc_addr = grpc.local_addr().unwrap();
        let mut config = Config::from_yaml(&yaml(&base)).unwrap_or_else(|e| panic!("{e}"));
        config.server.shutdown_delay = Duration::ZERO;
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
        Self {
            base,
            grpc: grpc_addr,
            shutdown: Some(shutdown),
            task,
        }
    }

    fn url(&self, path: &str) -> String {
        format!("{}{path}", self.base)
    }

    async fn stop(mut self) {
        if let Some(shutdown) = self.shutdown.take() {
            let _ = shutdown.send(());
        }
        tokio::time::timeout(Duration::from_secs(30), self.task)
            .await
            .unwrap()
            .unwrap()
            .unwrap();
    }
}

/// What a page answered.
struct Page {
    status: StatusCode,
    url: Url,
    body: String,
}

/// A browser: follows redirects and keeps cookies, one jar per host as browsers do
/// (cookies do not depend on the port), remembering every URL it went through.
#[derive(Default)]
struct Browser {
    jar: BTreeMap<String, String>,
    visited: Vec<Url>,
}

impl Browser {
    fn http() -> reqwest::Client {
        reqwest::Client::builder()
            .redirect(reqwest::redirect::Policy::none())
            .build()
            .unwrap()
    }

    fn cookies(&self) -> String {
        self.jar
            .iter()
            .map(|(n, v)| format!("{n}={v}"))
            .collect::<Vec<_>>()
            .join("; ")
    }

    async fn get(&mut self, url: &str) -> Page {
        self.go(reqwest::Method::GET, Url::parse(url).unwrap(), None)
            .await
    }

    async fn post(&mut self, url: &str, form: &[(&str, &str)]) -> Page {
        let body = url::form_urlencoded::Serializer::new(String::new())
            .extend_pairs(form)
            .finish();
        self.go(reqwest::Method::POST, Url::parse(url).unwrap(), Some(body))
            .await
    }

    async fn go(
        &mut self,
        mut method: reqwest::Method,
        mut url: Url,
        mut body: Option<String>,
    ) -> Page {
        let http = Self::http();
        for _ in 0..15 {
            self.visited.push(url.clone());
            let mut request = http
                .request(method.clone(), url.clone())
                .header(header::ACCEPT, "text/html")
                .header(header::COOKIE, self.cookies());
            if let Some(body) = body.take() {
                request = request
                    .header(header::CONTENT_TYPE, "application/x-www-form-urlencoded")
                    .body(body);
            }
            let response = request.send().await.unwrap();
            for set in response.headers().get_all(header::SET_COOKIE) {
                let text = set.to_str().unwrap();
                let pair = text.split(';').next().unwrap();
                let (name, value) = pair.split_once('=').unwrap();
                if value.is_empty() || text.contains("Max-Age=0") {
                    self.jar.remove(name);
                } else {
                    self.jar.insert(name.to_owned(), value.to_owned());
                }
            }
            let status = response.status();
            if status.is_redirection() {
                let location = response.headers()[header::LOCATION].to_str().unwrap();
                url = url.join(location).unwrap();
                method = reqwest::Method::GET;
                continue;
            }
            return Page {
                status,
                url,
                body: response.text().await.unwrap(),
            };
        }
        panic!("too many redirects, at {url}");
    }
}

/// The value of the page's first CSRF field.
fn csrf(body: &str) -> String {
    let at = body
        .find("name=\"csrf\" value=\"")
        .expect("a form with a CSRF field")
        + 19;
    body[at..at + body[at..].find('"').unwrap()].to_owned()
}

/// The `<td class="state">` of a profile's row.
fn state_of(body: &str, profile: &str) -> String {
    let row = &body[body
        .find(&format!("<tr data-profile=\"{profile}\""))
        .unwrap_or_else(|| panic!("no row for {profile}: {body}"))..];
    let at = row.find("<td class=\"state\">").unwrap() + 18;
    row[at..at + row[at..].find('<').unwrap()].to_owned()
}

/// A refresh-token profile of oidc-provider's `tv-code`, authorized through this admin
/// listener's callback.
fn hosted_yaml(
    base: &str,
    issuer: &str,
    auth: &str,
    state_dir: &std::path::Path,
    admin: &str,
) -> String {
    format!(
        "server:\n  state_dir: {dir}\n  admin:\n{admin}profiles:\n  code:\n    issuer: {issuer}\n    grant: refresh_token\n    client_id: tv-code\n    client_secret: {{ value: \"{SECRET}\" }}\n    auth_method: client_secret_post\n    authorize_url: \"{auth}?prompt=consent\"\n    redirect_uri: {base}/oauth/callback\n    scopes: [openid, offline_access, \"api:read\"]\n  plain:\n    token_url: http://127.0.0.1:9/token\n    client_id: a\n    client_secret: {{ value: plain-client-secret-123 }}\n",
        dir = state_dir.display(),
    )
}

async fn get_token(grpc: SocketAddr, profile: &str) -> Result<tokenvend::pb::Token, tonic::Status> {
    let mut client = TokenServiceClient::connect(format!("http://{grpc}"))
        .await
        .unwrap();
    client
        .get_token(GetTokenRequest {
            profile: profile.into(),
            ..Default::default()
        })
        .await
        .map(|r| r.into_inner())
}

/// A raw request to the callback with exactly these cookies.
async fn callback_with(url: &Url, cookies: &str) -> (StatusCode, String) {
    let response = Browser::http()
        .get(url.clone())
        .header(header::COOKIE, cookies)
        .send()
        .await
        .unwrap();
    (response.status(), response.text().await.unwrap())
}

#[tokio::test]
async fn the_hosted_flow_authorizes_a_profile_once_and_only_from_the_browser_that_began_it() {
    let Some(provider) = start_oidc_provider(&[("TV_ADMIN_WEB", "1")]) else {
        return;
    };
    let dir = tempfile::tempdir().unwrap();
    let server = Running::start("127.0.0.1:0", |base| {
        hosted_yaml(
            base,
            &provider.issuer,
            &provider.authorization_endpoint,
            dir.path(),
            "    admins: []\n",
        )
    })
    .await;

    let mut browser = Browser::default();
    let page = browser.get(&server.url("/")).await;
    assert_eq!(page.status, 200, "{}", page.body);
    assert_eq!(state_of(&page.body, "code"), "empty");
    assert!(
        page.body
            .contains("<form method=\"post\" action=\"/authorize/code\">"),
        "{}",
        page.body
    );
    // Only refresh-token profiles get the button.
    assert!(!page.body.contains("action=\"/authorize/plain\""));

    // CSRF: the form without its token, or with another, starts nothing.
    for form in [&[][..], &[("csrf", "forged")][..]] {
        let refused = browser.post(&server.url("/authorize/code"), form).await;
        assert_eq!(refused.status, 403, "{}", refused.body);
        assert!(!browser.jar.contains_key("tv_flow"));
    }

    // Another browser starts a flow of its own and stops at the provider's door.
    let mut other = Browser::default();
    let other_page = other.get(&server.url("/")).await;
    let started = Browser::http()
        .post(server.url("/authorize/code"))
        .header(header::COOKIE, other.cookies())
        .form(&[("csrf", csrf(&other_page.body))])
        .send()
        .await
        .unwrap();
    assert_eq!(started.status(), 303);
    let to_provider = Url::parse(started.headers()[header::LOCATION].to_str().unwrap()).unwrap();
    assert!(
        to_provider
            .as_str()
            .starts_with(&provider.authorization_endpoint)
    );
    let query: BTreeMap<_, _> = to_provider.query_pairs().into_owned().collect();
    assert_eq!(query["code_challenge_method"], "S256");
    assert_eq!(query["redirect_uri"], server.url("/oauth/callback"));
    let set_cookie = started.headers()[header::SET_COOKIE].to_str().unwrap();
    assert!(
        set_cookie.contains("Path=/oauth/callback")
            && set_cookie.contains("HttpOnly")
            && set_cookie.contains("SameSite=Lax"),
        "{set_cookie}"
    );
    let other_flow = set_cookie.split(';').next().unwrap().to_owned();

    // This browser goes all the way: provider, consent, callback, back to the page.
    let authorized = browser
        .post(
            &server.url("/authorize/code"),
            &[("csrf", &csrf(&page.body))],
        )
        .await;
    assert_eq!(authorized.status, 200, "{}", authorized.body);
    assert_eq!(authorized.url.as_str(), server.url("/"));
    assert!(
        authorized
            .body
            .contains("<p id=\"notice\">Authorized profile code.</p>"),
        "{}",
        authorized.body
    );
    let callback = browser
        .visited
        .iter()
        .find(|u| u.path() == "/oauth/callback")
        .unwrap()
        .clone();
    // The live slot uses the new refresh token at once (no backoff from before).
    let token = get_token(server.grpc, "code").await.unwrap();
    provider.assert_active(&token.access_token, "tv-code").await;
    // tv-code rotates its refresh tokens: the stored one is the current one.
    let refresh_token = stored_refresh_token(dir.path(), "code");
    provider.assert_active(&refresh_token, "tv-code").await;
    let page = browser.get(&server.url("/")).await;
    assert_eq!(state_of(&page.body, "code"), "valid");
    // The notice shows once.
    assert!(!page.body.contains("id=\"notice\""));
    for secret in [
        SECRET,
        "plain-client-secret-123",
        &refresh_token,
        &token.access_token,
    ] {
        assert!(
            !page.body.contains(secret),
            "the page shows a secret: {secret}"
        );
    }

    // This browser's redirect, brought by another browser (with its own flow cookie, or
    // with none), is refused: the state is bound to the browser that began the flow.
    let (status, body) = callback_with(&callback, &other_flow).await;
    assert_eq!(status, 400, "{body}");
    assert!(
        body.contains("does not match"),
        "another browser's flow: {body}"
    );
    let (status, body) = callback_with(&callback, "").await;
    assert_eq!(status, 400, "{body}");
    assert!(body.contains("no authorization in progress"), "{body}");
    // A tampered cookie opens as nothing.
    let (name, value) = other_flow.split_once('=').unwrap();
    let mut bytes = value.as_bytes().to_vec();
    bytes[20] = if bytes[20] == b'A' { b'B' } else { b'A' };
    let tampered = format!("{name}={}", String::from_utf8(bytes).unwrap());
    let other_callback = Url::parse(&format!(
        "{}?code=x&state={}",
        server.url("/oauth/callback"),
        query["state"]
    ))
    .unwrap();
    let (status, body) = callback_with(&other_callback, &tampered).await;
    assert_eq!(status, 400, "{body}");
    assert!(body.contains("no authorization in progress"), "{body}");
    // Provider errors are shown escaped, never as markup.
    let denied = Url::parse(&format!(
        "{}?error=access_denied&error_description=%3Cscript%3Ex%3C%2Fscript%3E&state={}",
        server.url("/oauth/callback"),
        query["state"]
    ))
    .unwrap();
    let (status, body) = callback_with(&denied, &other_flow).await;
    assert_eq!(status, 400, "{body}");
    assert!(
        body.contains("access_denied") && body.contains("&lt;script&gt;"),
        "{body}"
    );
    assert!(!body.contains("<script>"), "{body}");
    server.stop().await;
}

#[tokio::test]
async fn a_replayed_callback_is_refused_even_with_its_cookie() {
    let Some(provider) = start_oidc_provider(&[("TV_ADMIN_WEB", "1")]) else {
        return;
    };
    let dir = tempfile::tempdir().unwrap();
    let server = Running::start("127.0.0.1:0", |base| {
        hosted_yaml(
            base,
            &provider.issuer,
            &provider.authorization_endpoint,
            dir.path(),
            "    admins: []\n",
        )
    })
    .await;
    let mut browser = Browser::default();
    let page = browser.get(&server.url("/")).await;
    // Walk the flow by hand up to the callback, to keep the cookie it carries.
    let http = Browser::http();
    let started = http
        .post(server.url("/authorize/code"))
        .header(header::COOKIE, browser.cookies())
        .form(&[("csrf", csrf(&page.body))])
        .send()
        .await
        .unwrap();
    let flow = started.headers()[header::SET_COOKIE]
        .to_str()
        .unwrap()
        .split(';')
        .next()
        .unwrap()
        .to_owned();
    let mut at_provider = Browser::default();
    let location = started.headers()[header::LOCATION]
        .to_str()
        .unwrap()
        .to_owned();
    // The provider sends the browser on to the callback; stop there by giving this
    // browser no flow cookie (its callback is refused, the URL is what we want).
    at_provider.get(&location).await;
    let callback = at_provider
        .visited
        .iter()
        .find(|u| u.path() == "/oauth/callback")
        .unwrap()
        .clone();
    let (first, body) = callback_with(&callback, &flow).await;
    assert_eq!(first, 303, "{body}");
    let (again, body) = callback_with(&callback, &flow).await;
    assert_eq!(again, 400, "{body}");
    assert!(body.contains("already"), "{body}");
    get_token(server.grpc, "code").await.unwrap();
    server.stop().await;
}

#[tokio::test]
async fn a_login_token_guards_the_page_and_only_admins_may_authorize() {
    let dir = tempfile::tempdir().unwrap();
    let dir = dir.path().display();
    let server = Running::start("127.0.0.1:0", |base| {
        format!(
            "server:\n  state_dir: {dir}\n  admin:\n    session_key: {{ value: {SESSION_KEY} }}\n    login:\n      token: {{ value: {LOGIN_TOKEN} }}\nprofiles:\n  secret-profile-name:\n    token_url: https://idp.example.com/token\n    grant: refresh_token\n    client_id: a\n    client_secret: {{ value: s3cret-value-xyz }}\n    authorize_url: https://idp.example.com/auth\n    redirect_uri: {base}/oauth/callback\n"
        )
    })
    .await;
    let http = Browser::http();
    // Not logged in: a script gets 401, a browser is sent to /login, neither a name.
    let answer = http.get(server.url("/")).send().await.unwrap();
    assert_eq!(answer.status(), 401);
    assert!(!answer.text().await.unwrap().contains("secret-profile-name"));
    let mut browser = Browser::default();
    let page = browser.get(&server.url("/")).await;
    assert_eq!(page.url.path(), "/login");
    assert!(!page.body.contains("secret-profile-name"));
    // The callback and the authorize endpoint give nothing away either.
    let answer = http
        .post(server.url("/authorize/secret-profile-name"))
        .send()
        .await
        .unwrap();
    assert_eq!(answer.status(), 401);

    // Bearer token, for scripts.
    let wrong = http
        .get(server.url("/"))
        .bearer_auth("not-it")
        .send()
        .await
        .unwrap();
    assert_eq!(wrong.status(), 401);
    assert!(!wrong.text().await.unwrap().contains("secret-profile-name"));
    let right = http
        .get(server.url("/"))
        .bearer_auth(LOGIN_TOKEN)
        .send()
        .await
        .unwrap();
    assert_eq!(right.status(), 200);
    let headers = right.headers().clone();
    let body = right.text().await.unwrap();
    assert!(
        body.contains("<tr data-profile=\"secret-profile-name\""),
        "{body}"
    );
    assert!(!body.contains("s3cret-value-xyz") && !body.contains(LOGIN_TOKEN));
    let csp = headers[header::CONTENT_SECURITY_POLICY].to_str().unwrap();
    assert!(
        csp.contains("default-src 'none'") && csp.contains("frame-ancestors 'none'"),
        "{csp}"
    );
    assert_eq!(headers[header::X_FRAME_OPTIONS], "DENY");
    assert_eq!(headers[header::CACHE_CONTROL], "no-store");
    assert!(!body.contains("<script"), "no script on the page");

    // The login form: a wrong token is refused, the right one logs the browser in.
    let refused = browser
        .post(&server.url("/login"), &[("token", "wrong")])
        .await;
    assert_eq!(refused.status, 401);
    assert!(!browser.jar.contains_key("tv_session"));
    let page = browser
        .post(&server.url("/login"), &[("token", LOGIN_TOKEN)])
        .await;
    assert_eq!(page.status, 200, "{}", page.body);
    assert!(
        page.body
            .contains("action=\"/authorize/secret-profile-name\""),
        "{}",
        page.body
    );
    // A tampered session cookie is no session.
    let mut tampered = Browser::default();
    let value = browser.jar["tv_session"].clone();
    let flipped: String = value
        .chars()
        .enumerate()
        .map(|(i, c)| {
            if i == 30 {
                if c == 'A' { 'B' } else { 'A' }
            } else {
                c
            }
        })
        .collect();
    tampered.jar.insert("tv_session".into(), flipped);
    assert_eq!(tampered.get(&server.url("/")).await.url.path(), "/login");

    // CSRF: without the form's token, nothing starts.
    let refused = browser
        .post(&server.url("/authorize/secret-profile-name"), &[])
        .await;
    assert_eq!(refused.status, 403);
    let started = http
        .post(server.url("/authorize/secret-profile-name"))
        .header(header::COOKIE, browser.cookies())
        .form(&[("csrf", csrf(&page.body))])
        .send()
        .await
        .unwrap();
    assert_eq!(started.status(), 303);
    assert!(
        started.headers()[header::LOCATION]
            .to_str()
            .unwrap()
            .starts_with("https://idp.example.com/auth?")
    );
    server.stop().await;
}

#[tokio::test]
async fn off_loopback_without_a_login_the_page_shows_nothing() {
    let server = Running::start("0.0.0.0:0", |_| {
        "server:\n  admin:\n    unauthenticated_metrics: true\nprofiles:\n  hidden-profile:\n    token_url: http://127.0.0.1:9/token\n    client_id: a\n    client_secret: { value: s }\n".to_owned()
    })
    .await;
    let http = Browser::http();
    for path in ["/", "/login", "/oauth/callback?code=a&state=b"] {
        let answer = http
            .get(server.url(path))
            .header(header::ACCEPT, "text/html")
            .send()
            .await
            .unwrap();
        assert_eq!(answer.status(), 404, "{path}");
        assert!(
            !answer.text().await.unwrap().contains("hidden-profile"),
            "{path}"
        );
    }
    let answer = http
        .post(server.url("/authorize/hidden-profile"))
        .send()
        .await
        .unwrap();
    assert_eq!(answer.status(), 404);
    // The probes and metrics are as before.
    assert_eq!(
        http.get(server.url("/livez"))
            .send()
            .await
            .unwrap()
            .status(),
        200
    );
    assert_eq!(
        http.get(server.url("/metrics"))
            .send()
            .await
            .unwrap()
            .status(),
        200
    );
    server.stop().await;

    // Asking for the hosted flow there without a login is refused at start.
    let admin = TcpListener::bind("0.0.0.0:0").await.unwrap();
    let grpc = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let config = Config::from_yaml(
        "server:\n  admin:\n    unauthenticated_metrics: true\n    public_url: https://tokenvend.example.com\n    session_key: { value: 0123456789abcdef0123456789abcdef }\nprofiles:\n  p:\n    token_url: http://127.0.0.1:9/token\n    client_id: a\n    client_secret: { value: s }\n",
    )
    .unwrap();
    let error = tokenvend_server::serve(
        Listeners {
            grpc,
            admin: Some(admin),
            forward_auth: None,
        },
        config,
        async {},
    )
    .await
    .unwrap_err();
    assert!(error.to_string().contains("server.admin.login"), "{error}");
}

#[tokio::test]
async fn oidc_login_makes_listed_identities_admins_and_others_readers() {
    let Some(provider) = start_oidc_provider(&[("TV_ADMIN_WEB", "1")]) else {
        return;
    };
    let dir = tempfile::tempdir().unwrap();
    for (admins, is_admin) in [
        ("[interop-user]", true),
        ("[someone-else@example.com]", false),
    ] {
        let server = Running::start("127.0.0.1:0", |base| {
            hosted_yaml(
                base,
                &provider.issuer,
                &provider.authorization_endpoint,
                dir.path(),
                &format!(
                    "    session_key: {{ value: {SESSION_KEY} }}\n    admins: {admins}\n    login:\n      oidc:\n        issuer: {issuer}\n        client_id: tv-admin\n        client_secret: {{ value: \"{SECRET}\" }}\n",
                    issuer = provider.issuer
                ),
            )
        })
        .await;
        let mut browser = Browser::default();
        let page = browser.get(&server.url("/")).await;
        assert!(
            browser
                .visited
                .iter()
                .any(|u| u.path() == "/login/callback"),
            "{:?}",
            browser.visited
        );
        assert_eq!(page.status, 200, "{}", page.body);
        assert_eq!(page.url.as_str(), server.url("/"));
        assert!(
            page.body
                .contains("Logged in as <strong>interop-user</strong>"),
            "{}",
            page.body
        );
        assert_eq!(
            page.body.contains("action=\"/authorize/code\""),
            is_admin,
            "{}",
            page.body
        );
        assert!(!page.body.contains(SECRET));
        if !is_admin {
            let refused = browser
                .post(
                    &server.url("/authorize/code"),
                    &[("csrf", &csrf(&page.body))],
                )
                .await;
            assert_eq!(refused.status, 403, "{}", refused.body);
        }
        // The login's redirect works once.
        let callback = browser
            .visited
            .iter()
            .find(|u| u.path() == "/login/callback")
            .unwrap()
            .clone();
        let (status, _) = callback_with(&callback, "").await;
        assert_eq!(status, 403);
        server.stop().await;
    }
}

const CONNECTIONS_KEY: &str = "MDEyMzQ1Njc4OWFiY2RlZjAxMjM0NTY3ODlhYmNkZWY=";

/// The row of a subject on a connections page, if it is there.
fn subject_state(body: &str, subject: &str) -> Option<String> {
    let row = &body[body.find(&format!("<tr data-subject=\"{subject}\""))?..];
    let at = row.find("<td class=\"state\">").unwrap() + 18;
    Some(row[at..at + row[at..].find('<').unwrap()].to_owned())
}

async fn connect_link(
    grpc: SocketAddr,
    profile: &str,
    subject: &str,
    ttl_seconds: u32,
) -> Result<tokenvend::pb::CreateConnectLinkResponse, tonic::Status> {
    let mut client = TokenServiceClient::connect(format!("http://{grpc}"))
        .await
        .unwrap();
    client
        .create_connect_link(tokenvend::pb::CreateConnectLinkRequest {
            profile: profile.into(),
            subject: subject.into(),
            ttl_seconds,
        })
        .await
        .map(|r| r.into_inner())
}

#[tokio::test]
async fn a_signed_connect_link_makes_a_connection_and_an_altered_or_expired_one_is_refused() {
    let Some(provider) = start_oidc_provider(&[("TV_ADMIN_WEB", "1")]) else {
        return;
    };
    let dir = tempfile::tempdir().unwrap();
    let server = Running::start("127.0.0.1:0", |base| {
        format!(
            "server:\n  state_dir: {dir}\n  connections: {{ key: {{ value: \"{CONNECTIONS_KEY}\" }} }}\n  admin:\n    public_url: {base}\n    session_key: {{ value: {SESSION_KEY} }}\nprofiles:\n  tenants:\n    issuer: {issuer}\n    grant: refresh_token\n    template: true\n    client_id: tv-code\n    client_secret: {{ value: \"{SECRET}\" }}\n    auth_method: client_secret_post\n    authorize_url: \"{auth}?prompt=consent\"\n    redirect_uri: {base}/oauth/callback\n    scopes: [openid, offline_access, \"api:read\"]\n  plain:\n    token_url: http://127.0.0.1:9/token\n    client_id: a\n    client_secret: {{ value: s }}\n",
            dir = dir.path().display(),
            issuer = provider.issuer,
            auth = provider.authorization_endpoint,
        )
    })
    .await;

    // Links are made for template profiles only, for at most a day.
    let status = connect_link(server.grpc, "plain", "t", 0)
        .await
        .unwrap_err();
    assert_eq!(status.code(), tonic::Code::FailedPrecondition, "{status:?}");
    let status = connect_link(server.grpc, "tenants", "t", 2 * 86_400)
        .await
        .unwrap_err();
    assert_eq!(status.code(), tonic::Code::InvalidArgument, "{status:?}");
    let status = connect_link(server.grpc, "nope", "t", 0).await.unwrap_err();
    assert_eq!(status.code(), tonic::Code::NotFound, "{status:?}");

    let link = connect_link(server.grpc, "tenants", "tenant-42", 0)
        .await
        .unwrap();
    assert!(
        link.url.starts_with(&server.url("/connect/tenants?")),
        "{}",
        link.url
    );
    let left = link.expires_at.unwrap().seconds - tokenvend_now();
    assert!((890..=900).contains(&left), "{left}");

    // Altered: another subject, another expiry, another signature.
    let url = Url::parse(&link.url).unwrap();
    let query: BTreeMap<_, _> = url.query_pairs().into_owned().collect();
    let altered = |key: &str, value: &str| {
        let mut q = query.clone();
        q.insert(key.to_owned(), value.to_owned());
        let mut u = url.clone();
        u.query_pairs_mut().clear().extend_pairs(q.iter());
        u.to_string()
    };
    for bad in [
        altered("subject", "tenant-43"),
        altered("expires", &(tokenvend_now() + 3600).to_string()),
        altered("sig", "AAAA"),
        server.url("/connect/tenants?subject=tenant-42"),
    ] {
        let page = Browser::default().get(&bad).await;
        assert_eq!(page.status, 403, "{bad}: {}", page.body);
        assert!(page.body.contains("not valid"), "{}", page.body);
    }

    // The person follows the link: provider, consent, callback, a page of their own.
    let mut person = Browser::default();
    let page = person.get(&link.url).await;
    assert_eq!(page.status, 200, "{}", page.body);
    assert!(
        page.body
            .contains("<p id=\"connected\">Connected <strong>tenant-42</strong>"),
        "{}",
        page.body
    );

    // The connection serves tokens for its subject.
    let mut client = TokenServiceClient::connect(format!("http://{}", server.grpc))
        .await
        .unwrap();
    let token = client
        .get_token(GetTokenRequest {
            profile: "tenants".into(),
            subject: "tenant-42".into(),
            ..Default::default()
        })
        .await
        .unwrap()
        .into_inner();
    provider.assert_active(&token.access_token, "tv-code").await;

    // The admin page lists it, valid once its slot has its first token.
    let mut admin = Browser::default();
    let index = admin.get(&server.url("/")).await;
    assert!(
        index.body.contains("<a href=\"/connections/tenants\">"),
        "{}",
        index.body
    );
    assert!(!index.body.contains("action=\"/authorize/tenants\""));
    let mut listed = String::new();
    for _ in 0..100 {
        listed = admin.get(&server.url("/connections/tenants")).await.body;
        if subject_state(&listed, "tenant-42").as_deref() == Some("valid") {
            break;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    assert_eq!(
        subject_state(&listed, "tenant-42").as_deref(),
        Some("valid"),
        "{listed}"
    );
    assert!(!listed.contains(SECRET));

    // An admin revokes it.
    let revoked = admin
        .post(
            &server.url("/connections/tenants/revoke"),
            &[("csrf", &csrf(&listed)), ("subject", "tenant-42")],
        )
        .await;
    assert_eq!(revoked.status, 200, "{}", revoked.body);
    assert!(revoked.body.contains("id=\"notice\""), "{}", revoked.body);
    assert_eq!(
        subject_state(&revoked.body, "tenant-42"),
        None,
        "{}",
        revoked.body
    );

    // A link past its expiry is refused.
    let short = connect_link(server.grpc, "tenants", "tenant-7", 1)
        .await
        .unwrap();
    tokio::time::sleep(Duration::from_millis(2100)).await;
    let page = Browser::default().get(&short.url).await;
    assert_eq!(page.status, 403, "{}", page.body);
    server.stop().await;
}

fn tokenvend_now() -> i64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_secs() as i64
}

#[tokio::test]
async fn on_a_tls_admin_listener_a_client_certificate_is_the_person() {
    use crate::support::security::{ClientCert, Pki};

    let pki = Pki::new();
    let dir = tempfile::tempdir().unwrap();
    let mut port = 0;
    let server = Running::start("127.0.0.1:0", |base| {
        port = Url::parse(base).unwrap().port().unwrap();
        format!(
            "server:\n  state_dir: {dir}\n  admin:\n    public_url: https://localhost:{port}\n    session_key: {{ value: {SESSION_KEY} }}\n    admins: [\"spiffe://test/admin\"]\n    tls:\n      certificate: {crt}\n      key: {key}\n      client_ca: {ca}\nprofiles:\n  by-cert:\n    token_url: https://idp.example.com/token\n    grant: refresh_token\n    client_id: a\n    client_secret: {{ value: cert-secret-value-1 }}\n    authorize_url: https://idp.example.com/auth\n    redirect_uri: https://localhost:{port}/oauth/callback\n",
            dir = dir.path().display(),
            crt = pki.path("server.crt").display(),
            key = pki.path("server.key").display(),
            ca = pki.path("ca.crt").display(),
        )
    })
    .await;
    let admin_addr: SocketAddr = format!("127.0.0.1:{port}").parse().unwrap();
    let client = |identity: Option<&ClientCert>| {
        let mut builder = reqwest::Client::builder()
            .add_root_certificate(reqwest::Certificate::from_pem(pki.ca_pem.as_bytes()).unwrap())
            .resolve("localhost", admin_addr)
            .redirect(reqwest::redirect::Policy::none());
        if let Some(id) = identity {
            let pem = format!("{}{}", id.cert, id.key);
            builder = builder.identity(reqwest::Identity::from_pem(pem.as_bytes()).unwrap());
        }
        builder.build().unwrap()
    };
    let url = |path: &str| format!("https://localhost:{port}{path}");

    // No certificate: nothing but the way to log in, and the probes.
    let anonymous = client(None);
    let answer = anonymous.get(url("/")).send().await.unwrap();
    assert_eq!(answer.status(), 401);
    assert!(!answer.text().await.unwrap().contains("by-cert"));
    assert_eq!(
        anonymous.get(url("/livez")).send().await.unwrap().status(),
        200
    );

    // An admin's certificate: the page with its button, and the flow starts.
    let admin = client(Some(&pki.client("spiffe://test/admin")));
    let page = admin.get(url("/")).send().await.unwrap();
    assert_eq!(page.status(), 200);
    let session = page.headers()[header::SET_COOKIE]
        .to_str()
        .unwrap()
        .split(';')
        .next()
        .unwrap()
        .to_owned();
    let body = page.text().await.unwrap();
    assert!(
        body.contains("Logged in as <strong>spiffe://test/admin</strong> (admin)"),
        "{body}"
    );
    assert!(body.contains("action=\"/authorize/by-cert\""), "{body}");
    assert!(!body.contains("cert-secret-value-1"));
    // The certificate alone does not pass a form: the CSRF token must come too.
    let refused = admin
        .post(url("/authorize/by-cert"))
        .header(header::COOKIE, &session)
        .form(&[("csrf", "x")])
        .send()
        .await
        .unwrap();
    assert_eq!(refused.status(), 403);
    let started = admin
        .post(url("/authorize/by-cert"))
        .header(header::COOKIE, &session)
        .form(&[("csrf", csrf(&body))])
        .send()
        .await
        .unwrap();
    assert_eq!(started.status(), 303);
    assert!(
        started.headers()[header::LOCATION]
            .to_str()
            .unwrap()
            .starts_with("https://idp.example.com/auth?")
    );
    // The session cookie without the certificate is nobody.
    let answer = anonymous
        .get(url("/"))
        .header(header::COOKIE, &session)
        .send()
        .await
        .unwrap();
    assert_eq!(answer.status(), 401);

    // Another certificate from the same CA reads the page, and may not act.
    let reader = client(Some(&pki.client("spiffe://test/reader")));
    let page = reader.get(url("/")).send().await.unwrap();
    let session = page.headers()[header::SET_COOKIE]
        .to_str()
        .unwrap()
        .split(';')
        .next()
        .unwrap()
        .to_owned();
    let body = page.text().await.unwrap();
    assert!(body.contains("(read only)"), "{body}");
    assert!(!body.contains("action=\"/authorize/by-cert\""), "{body}");
    let refused = reader
        .post(url("/authorize/by-cert"))
        .header(header::COOKIE, &session)
        .form(&[("csrf", csrf(&body))])
        .send()
        .await
        .unwrap();
    assert_eq!(refused.status(), 403);
    server.stop().await;
}
