//! The person at the browser, for `tokenvend authorize` tests.

use std::collections::BTreeMap;

use axum::http::header;
use tokenvend_server::Config;

/// Runs `tokenvend authorize` in-process, with the test as the browser: it follows every
/// redirect from the authorization URL, carrying cookies (a provider's login and consent
/// steps, automatic in the test providers), to tokenvend's loopback redirect listener.
pub async fn authorize(yaml: &str, profile: &str) {
    authorize_for(yaml, profile, None).await;
}

/// [`authorize`] for the connection `subject` of a template profile
/// (`tokenvend authorize --subject`).
pub async fn authorize_for(yaml: &str, profile: &str, subject: Option<&str>) {
    let config = Config::from_yaml(yaml).unwrap();
    let redirect_uri = config.profiles[0]
        .authorize
        .as_ref()
        .unwrap()
        .redirect_uri
        .clone();
    let (url_tx, url_rx) = tokio::sync::oneshot::channel();
    let browser = tokio::spawn(async move {
        let mut url: url::Url = url_rx.await.unwrap();
        let http = reqwest::Client::builder()
            .redirect(reqwest::redirect::Policy::none())
            .build()
            .unwrap();
        // oidc-provider ties the interaction to signed cookies; scoping them by path
        // does not matter here, so one jar for the whole host does.
        let mut jar = BTreeMap::<String, String>::new();
        for _ in 0..10 {
            let cookies = jar
                .iter()
                .map(|(name, value)| format!("{name}={value}"))
                .collect::<Vec<_>>()
                .join("; ");
            let response = http
                .get(url.clone())
                .header(header::COOKIE, cookies)
                .send()
                .await
                .unwrap();
            for set in response.headers().get_all(header::SET_COOKIE) {
                let pair = set.to_str().unwrap().split(';').next().unwrap();
                let (name, value) = pair.split_once('=').unwrap();
                if value.is_empty() {
                    jar.remove(name);
                } else {
                    jar.insert(name.to_owned(), value.to_owned());
                }
            }
            if url.as_str().starts_with(redirect_uri.as_str()) {
                assert_eq!(response.status(), 200, "tokenvend's redirect listener");
                return;
            }
            let status = response.status();
            let Some(location) = response.headers().get(header::LOCATION) else {
                panic!(
                    "{url} answered {status} without a redirect: {}",
                    response.text().await.unwrap()
                );
            };
            url = url.join(location.to_str().unwrap()).unwrap();
        }
        panic!("too many redirects, at {url}");
    });
    tokenvend_server::authorize::run_for(
        &config,
        profile,
        subject,
        move |url| {
            let _ = url_tx.send(url.clone());
        },
        async || panic!("a loopback redirect needs no pasting"),
    )
    .await
    .unwrap_or_else(|e| panic!("authorize: {e}"));
    browser.await.unwrap();
}
