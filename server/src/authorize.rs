//! `tokenvend authorize PROFILE`: the one-time authorization-code bootstrap of a
//! `grant: refresh_token` profile (RFC 6749 §4.1 with PKCE S256, RFC 7636).
//!
//! A person opens the printed URL and approves; the provider redirects to `redirect_uri`
//! with a code. If that URI is plain http on loopback, tokenvend receives the redirect
//! itself; otherwise the person pastes the URL the browser ended on. The code is checked
//! against `state`, exchanged at once (some providers' codes live 30 seconds and work
//! once), and the refresh token is stored where the server keeps the profile's chain (the
//! shared store if there is one, else the state directory), where a running server picks
//! it up at its next attempt.

use std::{sync::Arc, time::Duration};

use axum::{Router, extract::RawQuery, response::Html, routing::get};
use base64::{Engine as _, engine::general_purpose::URL_SAFE_NO_PAD};
use sha2::{Digest as _, Sha256};
use tokio::{net::TcpListener, sync::mpsc};
use url::Url;

use crate::{
    chain::{ChainError, FileStore, RefreshChain},
    config::{Authorize, Config, Grant, Profile, is_loopback},
    connections::ConnectionStore,
    credential::{self, CredentialError},
    idp::{Grant as GrantRequest, IdpClient, IdpError},
    secret::Secret,
    source::{Storage, TokenSource},
    store::{SetupError, SharedStore},
};

/// How long to wait for the person to approve.
const APPROVAL_TIMEOUT: Duration = Duration::from_secs(300);

/// Why authorization failed.
#[derive(Debug, thiserror::Error)]
pub enum AuthorizeError {
    /// The profile cannot be authorized as configured.
    #[error("{0}")]
    Config(String),
    /// The redirect did not carry a usable answer.
    #[error("{0}")]
    Redirect(String),
    /// The provider refused or failed.
    #[error(transparent)]
    Idp(#[from] IdpError),
    /// The client's credential cannot be used.
    #[error(transparent)]
    Credential(#[from] CredentialError),
    /// Local I/O (listener, terminal).
    #[error("{0}")]
    Io(String),
    /// The shared store's settings cannot be used.
    #[error(transparent)]
    Store(#[from] SetupError),
    /// The refresh token cannot be stored.
    #[error(transparent)]
    Chain(#[from] ChainError),
    /// The connection cannot be stored.
    #[error(transparent)]
    Connection(#[from] crate::connections::ConnectionError),
}

/// An authorization request in progress.
pub struct Request {
    /// The URL to open in a browser.
    pub url: Url,
    state: String,
    verifier: Secret,
}

impl Request {
    /// A new request with a fresh `state` and PKCE verifier.
    pub fn new(profile: &Profile, authorize: &Authorize) -> Result<Self, AuthorizeError> {
        let state = random_token(16)?;
        let verifier = Secret::new(random_token(32)?);
        let challenge = URL_SAFE_NO_PAD.encode(Sha256::digest(verifier.expose().as_bytes()));
        let mut url = authorize.authorize_url.clone();
        {
            let mut query = url.query_pairs_mut();
            query
                .append_pair("response_type", "code")
                .append_pair("client_id", &profile.client_id)
                .append_pair("redirect_uri", authorize.redirect_uri.as_str())
                .append_pair("state", &state)
                .append_pair("code_challenge", &challenge)
                .append_pair("code_challenge_method", "S256");
            if !profile.scopes.is_empty() {
                query.append_pair("scope", &profile.scopes.join(" "));
            }
        }
        Ok(Self {
            url,
            state,
            verifier,
        })
    }

    /// A request started earlier, from its `state` and verifier, to finish it.
    pub(crate) fn resume(authorize: &Authorize, state: String, verifier: Secret) -> Self {
        Self {
            url: authorize.authorize_url.clone(),
            state,
            verifier,
        }
    }

    /// The `state` and the PKCE verifier, to keep until the redirect comes.
    pub(crate) fn parts(&self) -> (&str, &Secret) {
        (&self.state, &self.verifier)
    }

    /// The code from the redirect, once `state` matches.
    pub fn code_from(&self, redirect: &Url) -> Result<String, AuthorizeError> {
        let param = |name: &str| {
            redirect
                .query_pairs()
                .find(|(k, _)| k == name)
                .map(|(_, v)| v.into_owned())
        };
        if let Some(error) = param("error") {
            // RFC 6749 says `error_description`; Jadu Connect says `description`.
            let description = param("error_description").or_else(|| param("description"));
            return Err(AuthorizeError::Redirect(format!(
                "the provider answered `{error}`{}",
                description.map(|d| format!(": {d}")).unwrap_or_default()
            )));
        }
        if param("state").as_deref() != Some(self.state.as_str()) {
            return Err(AuthorizeError::Redirect(
                "the redirect's `state` does not match this request (an old or forged redirect); start again".into(),
            ));
        }
        param("code").ok_or_else(|| AuthorizeError::Redirect("the redirect has no `code`".into()))
    }
}

/// Runs the whole bootstrap for a profile. `show` is given the URL to open; `paste` is
/// asked for the redirect URL when tokenvend cannot receive it itself.
pub async fn run(
    config: &Config,
    name: &str,
    show: impl FnOnce(&Url),
    paste: impl AsyncFnOnce() -> std::io::Result<String>,
) -> Result<(), AuthorizeError> {
    run_for(config, name, None, show, paste).await
}

/// [`run`] for the connection `subject` of a template profile (`None` for a profile's
/// own chain).
pub async fn run_for(
    config: &Config,
    name: &str,
    subject: Option<&str>,
    show: impl FnOnce(&Url),
    paste: impl AsyncFnOnce() -> std::io::Result<String>,
) -> Result<(), AuthorizeError> {
    let profile = config
        .profiles
        .iter()
        .find(|p| &*p.name == name)
        .ok_or_else(|| AuthorizeError::Config(format!("no profile named `{name}`")))?;
    if profile.grant != Grant::RefreshToken {
        return Err(AuthorizeError::Config(format!(
            "profile `{name}` uses `grant: {}`; only `refresh_token` profiles are authorized",
            profile.grant.as_str()
        )));
    }
    let authorize = profile.authorize.as_ref().ok_or_else(|| {
        AuthorizeError::Config(format!(
            "profile `{name}` needs `authorize_url` and `redirect_uri`"
        ))
    })?;
    match (profile.template, subject) {
        (true, None) => {
            return Err(AuthorizeError::Config(format!(
                "profile `{name}` is a template: give the connection's `--subject`"
            )));
        }
        (false, Some(_)) => {
            return Err(AuthorizeError::Config(format!(
                "profile `{name}` is not a template (`template: true`): it takes no `--subject`"
            )));
        }
        (true, Some(subject)) => {
            crate::connections::check_subject(subject)
                .map_err(|e| AuthorizeError::Config(e.to_owned()))?;
        }
        (false, None) => {}
    }
    // Before the person approves: a store that cannot be set up would waste the approval.
    let chain = chain_of(config, name, subject)?;

    let request = Request::new(profile, authorize)?;
    let redirect = if receivable(&authorize.redirect_uri) {
        let listener = bind(&authorize.redirect_uri).await?;
        show(&request.url);
        receive(listener, &authorize.redirect_uri).await?
    } else {
        show(&request.url);
        let pasted = paste()
            .await
            .map_err(|e| AuthorizeError::Io(format!("cannot read the redirect URL: {e}")))?;
        Url::parse(pasted.trim())
            .map_err(|e| AuthorizeError::Redirect(format!("that is not a URL: {e}")))?
    };
    let code = request.code_from(&redirect)?;

    let idp = IdpClient::new(config.server.idp_connect_timeout)
        .map_err(|e| AuthorizeError::Io(e.to_string()))?;
    let (refresh_token, scope) = exchange(&idp, profile, authorize, &request, &code).await?;
    let scope = scope.as_deref();
    match chain {
        Chain::Profile(chain) => chain.start(&refresh_token, scope).await?,
        Chain::Connection(store, subject) => {
            store.start(name, &subject, &refresh_token, scope).await?;
        }
    }
    Ok(())
}

/// Exchanges the code at once (some providers' codes live 30 seconds and work once) for
/// the refresh token and the scope granted with it: the end of every authorization, from
/// the command line or the admin page's callback.
pub(crate) async fn exchange(
    idp: &IdpClient,
    profile: &Arc<Profile>,
    authorize: &Authorize,
    request: &Request,
    code: &str,
) -> Result<(Secret, Option<String>), AuthorizeError> {
    let source = TokenSource::new(profile.clone(), idp.clone(), None);
    let token_url = source.token_url().await?;
    let credential = credential::load(profile, &token_url)?;
    let issued = idp
        .request_token(
            profile,
            &token_url,
            &credential,
            GrantRequest::AuthorizationCode {
                code,
                redirect_uri: authorize.redirect_uri.as_str(),
                code_verifier: request.verifier.expose(),
            },
        )
        .await?;
    let refresh_token = issued.refresh_token.ok_or_else(|| {
        AuthorizeError::Redirect(
            "the provider issued no refresh token (does the client need an `offline_access` scope?)".into(),
        )
    })?;
    Ok((refresh_token, issued.granted_scope))
}

/// Where an authorization is stored.
enum Chain {
    Profile(RefreshChain<Storage>),
    Connection(ConnectionStore, String),
}

/// The chain a server with this configuration reads: a server with a shared store keeps
/// its chains there even when it has a state directory too. A connection's is found
/// through the same [`ConnectionStore`] the server uses.
fn chain_of(config: &Config, name: &str, subject: Option<&str>) -> Result<Chain, AuthorizeError> {
    if let Some(subject) = subject {
        let shared = config
            .server
            .store
            .as_ref()
            .map(SharedStore::new)
            .transpose()?;
        if shared.is_none()
            && let Some(dir) = &config.server.state_dir
        {
            FileStore::new(dir, name)
                .probe()
                .map_err(ChainError::from)?;
        }
        let store = ConnectionStore::new(&config.server, shared.as_ref())
            .map_err(|e| AuthorizeError::Config(e.to_string()))?
            .ok_or_else(|| AuthorizeError::Config("server.connections.key is required".into()))?;
        return Ok(Chain::Connection(store, subject.to_owned()));
    }
    let storage = match (&config.server.store, &config.server.state_dir) {
        (Some(redis), _) => Storage::Shared(SharedStore::new(redis)?.profile(name)),
        (None, Some(dir)) => {
            let file = FileStore::new(dir, name);
            file.probe().map_err(ChainError::from)?;
            Storage::Dir(file)
        }
        (None, None) => {
            return Err(AuthorizeError::Config(
                "server.state_dir or server.store is required".into(),
            ));
        }
    };
    // A person's chain carries no seed: see `RefreshChain::start`.
    Ok(Chain::Profile(RefreshChain::new(storage, None)))
}

/// tokenvend can be the redirect target itself only on plain http to loopback.
fn receivable(redirect_uri: &Url) -> bool {
    redirect_uri.scheme() == "http" && is_loopback(redirect_uri)
}

async fn bind(redirect_uri: &Url) -> Result<TcpListener, AuthorizeError> {
    let host = redirect_uri.host_str().unwrap_or("127.0.0.1");
    let host = host.trim_start_matches('[').trim_end_matches(']');
    let port = redirect_uri.port_or_known_default().unwrap_or(80);
    TcpListener::bind((host, port)).await.map_err(|e| {
        AuthorizeError::Io(format!(
            "cannot listen for the redirect on {host}:{port}: {e}"
        ))
    })
}

/// Serves the redirect URI until the provider's redirect arrives.
async fn receive(listener: TcpListener, redirect_uri: &Url) -> Result<Url, AuthorizeError> {
    let (tx, mut rx) = mpsc::channel::<Option<String>>(1);
    let base = Arc::new(redirect_uri.clone());
    let app = Router::new().route(
        redirect_uri.path(),
        get(move |RawQuery(query): RawQuery| async move {
            let _ = tx.send(query).await;
            Html("<p>tokenvend: authorization received. You can close this window.</p>")
        }),
    );
    let server = tokio::spawn(async move { axum::serve(listener, app).await });
    let received = tokio::time::timeout(APPROVAL_TIMEOUT, rx.recv()).await;
    // Let the browser get its page before the listener goes.
    tokio::time::sleep(Duration::from_millis(100)).await;
    server.abort();
    let query = received
        .map_err(|_| AuthorizeError::Redirect("no redirect arrived within 5 minutes".into()))?
        .flatten()
        .unwrap_or_default();
    let mut url = (*base).clone();
    url.set_query(Some(&query));
    Ok(url)
}

fn random_token(bytes: usize) -> Result<String, AuthorizeError> {
    let mut buf = vec![0u8; bytes];
    getrandom::fill(&mut buf).map_err(|e| AuthorizeError::Io(e.to_string()))?;
    Ok(URL_SAFE_NO_PAD.encode(buf))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn profile() -> Arc<Profile> {
        Config::from_yaml(
            "server: { state_dir: /tmp/unused }\nprofiles:\n  jadu:\n    token_url: https://cxm.example.com/q/oauth/v2/token\n    grant: refresh_token\n    client_id: abc\n    client_secret: { value: s }\n    authorize_url: https://cxm.example.com/q/oauth/v2/auth\n    redirect_uri: https://myapp.example.com/oauth-handler\n",
        )
        .unwrap()
        .profiles
        .remove(0)
    }

    #[test]
    fn the_url_carries_state_and_an_s256_challenge_of_the_verifier() {
        let profile = profile();
        let request = Request::new(&profile, profile.authorize.as_ref().unwrap()).unwrap();
        let query: std::collections::HashMap<_, _> =
            request.url.query_pairs().into_owned().collect();
        assert_eq!(query["response_type"], "code");
        assert_eq!(query["client_id"], "abc");
        assert_eq!(
            query["redirect_uri"],
            "https://myapp.example.com/oauth-handler"
        );
        assert_eq!(query["code_challenge_method"], "S256");
        let expected = URL_SAFE_NO_PAD.encode(Sha256::digest(request.verifier.expose().as_bytes()));
        assert_eq!(query["code_challenge"], expected);
        assert_eq!(query["state"], request.state);
    }

    #[test]
    fn state_must_match_and_provider_errors_are_reported() {
        let profile = profile();
        let request = Request::new(&profile, profile.authorize.as_ref().unwrap()).unwrap();
        let good = Url::parse(&format!(
            "https://myapp.example.com/oauth-handler?code=C0DE&state={}",
            request.state
        ))
        .unwrap();
        assert_eq!(request.code_from(&good).unwrap(), "C0DE");
        let forged =
            Url::parse("https://myapp.example.com/oauth-handler?code=C0DE&state=ABCDEF").unwrap();
        assert!(
            request
                .code_from(&forged)
                .unwrap_err()
                .to_string()
                .contains("state")
        );
        let denied = Url::parse(
            "https://myapp.example.com/oauth-handler?error=access_denied&description=The+user+denied+access",
        )
        .unwrap();
        assert_eq!(
            request.code_from(&denied).unwrap_err().to_string(),
            "the provider answered `access_denied`: The user denied access"
        );
    }
}
