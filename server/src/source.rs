//! How a profile's token is obtained: the endpoint (given, or discovered from the issuer
//! and cached) and the grant (client credentials, or the next link of a refresh-token
//! chain, stored durably before it is needed again).

use std::{
    sync::{Arc, Mutex, PoisonError, Weak},
    time::Duration,
};

use arc_swap::ArcSwapOption;
use tokio_util::task::AbortOnDropHandle;
use url::Url;

use crate::{
    audit::Fingerprint,
    chain::{Cas, ChainError, ChainStore, FileStore, Link, Record, RefreshChain, Version},
    config::{Endpoint, Grant, Profile},
    credential::{self, CredentialError},
    idp::{Grant as GrantRequest, IdpClient, IdpError, IssuedToken, discovery::Metadata},
    secret::Secret,
    store::{ProfileStore, StoreDown, WhenDown},
};

/// Why a profile's token could not be obtained: the provider's answer, or one of the
/// things around the request (the profile's credentials, its refresh-token chain, the
/// store shared with other replicas), each its own kind.
#[derive(Debug, thiserror::Error)]
pub enum FetchError {
    /// The provider refused, failed or did not answer.
    #[error(transparent)]
    Idp(#[from] IdpError),
    /// A credential of the profile cannot be used.
    #[error(transparent)]
    Credential(#[from] CredentialError),
    /// No usable refresh token: a person must authorize again.
    #[error("{}", reauthorize_message(profile, reason, *connection))]
    Reauthorize {
        /// The profile.
        profile: String,
        /// Why, with the provider's error if it gave one.
        reason: String,
        /// Whether it is a connection of a template profile (authorized per subject,
        /// not with `tokenvend authorize PROFILE` alone).
        connection: bool,
    },
    /// The store shared by replicas cannot be reached, and this request needs it (a
    /// refresh-token chain must not be rotated by one replica alone).
    #[error("the shared store is unavailable ({0}); retry when it is back")]
    StoreUnavailable(String),
}

fn reauthorize_message(profile: &str, reason: &str, connection: bool) -> String {
    if connection {
        format!("{reason}: authorize it")
    } else {
        format!(
            "{reason}; re-authorization is needed: use Authorize on the admin page, or run `tokenvend authorize {profile}`"
        )
    }
}

impl From<StoreDown> for FetchError {
    fn from(down: StoreDown) -> Self {
        Self::StoreUnavailable(down.0)
    }
}

impl FetchError {
    /// Whether trying again later may succeed without a change of configuration.
    pub(crate) fn is_transient(&self) -> bool {
        match self {
            Self::Idp(error) => error.is_transient(),
            Self::Credential(_) | Self::Reauthorize { .. } => false,
            Self::StoreUnavailable(_) => true,
        }
    }

    /// A short name for metrics: the provider error's, or `credential`, `reauthorize`,
    /// `store_unavailable`.
    pub(crate) fn kind(&self) -> &'static str {
        match self {
            Self::Idp(error) => error.kind(),
            Self::Credential(_) => "credential",
            Self::Reauthorize { .. } => "reauthorize",
            Self::StoreUnavailable(_) => "store_unavailable",
        }
    }

    /// How long the provider asked us to wait before trying again.
    pub(crate) fn retry_after(&self) -> Option<Duration> {
        match self {
            Self::Idp(error) => error.retry_after(),
            _ => None,
        }
    }
}

/// Gets tokens for one profile.
#[derive(Debug)]
pub(crate) struct TokenSource {
    profile: Arc<Profile>,
    idp: IdpClient,
    /// Discovery metadata, kept until a request to its token endpoint fails; shared by a
    /// template profile's connections.
    metadata: Arc<ArcSwapOption<Metadata>>,
    // Boxed, as most profiles have neither: inline they made every slot 200 bytes larger.
    chain: Option<Arc<Chain>>,
    /// The store shared with other replicas, if any.
    shared: Option<Box<ProfileStore>>,
    /// For a token-exchange variant: the caller's subject token and its type.
    subject: Option<Box<(Secret, String)>>,
    /// The token this source last produced: the slot holds it, so a fetch means it no
    /// longer serves and the shared store must not hand it back. Locked only to copy.
    last: Mutex<Option<Fingerprint>>,
    /// Whether this is a connection of a template profile.
    connection: bool,
}

impl TokenSource {
    /// A source for a profile; `chain` (its record in `state_dir`) is required for
    /// `grant: refresh_token` unless [`Self::with_store`] gives a shared store.
    pub(crate) fn new(profile: Arc<Profile>, idp: IdpClient, chain: Option<FileStore>) -> Self {
        Self {
            chain: chain
                .filter(|_| profile.grant == Grant::RefreshToken)
                .map(|file| Arc::new(Chain::new(&profile, Storage::Dir(file)))),
            profile,
            idp,
            metadata: Arc::default(),
            shared: None,
            subject: None,
            last: Mutex::new(None),
            connection: false,
        }
    }

    /// A source for a connection of this source's template profile: its chain in
    /// `storage`, its token shared with other replicas through `shared`, and the
    /// provider's metadata shared with the profile's other connections. `refreshing` is
    /// the profile as refreshes send it ([`Chain`]), made once for all connections.
    pub(crate) fn connection(
        &self,
        storage: Storage,
        shared: Option<ProfileStore>,
        refreshing: Arc<Profile>,
    ) -> Self {
        Self {
            profile: self.profile.clone(),
            idp: self.idp.clone(),
            metadata: self.metadata.clone(),
            chain: Some(Arc::new(Chain::with_profile(
                &self.profile,
                refreshing,
                storage,
            ))),
            shared: shared.map(Box::new),
            subject: None,
            last: Mutex::new(None),
            connection: true,
        }
    }

    /// The profile as a refresh sends it: see [`REFRESH_TIMEOUT_FACTOR`].
    pub(crate) fn refreshing(profile: &Profile) -> Arc<Profile> {
        let mut refreshing = Profile::clone(profile);
        refreshing.timeout = profile.timeout.saturating_mul(REFRESH_TIMEOUT_FACTOR);
        Arc::new(refreshing)
    }

    /// The profile's own refresh-token chain, if it has one.
    pub(crate) fn chain(&self) -> Option<&RefreshChain<Storage>> {
        self.chain.as_deref().map(|chain| &chain.rule)
    }

    /// A source for a variant of this source's profile (other scopes, audience or
    /// resource): the same provider client, no store shared with other replicas.
    /// `subject` is the subject token to exchange, with its type, for token exchange.
    pub(crate) fn variant(&self, profile: Arc<Profile>, subject: Option<(Secret, String)>) -> Self {
        Self {
            subject: subject.map(Box::new),
            ..Self::new(profile, self.idp.clone(), None)
        }
    }

    /// Shares tokens with other replicas through this store, which then also holds the
    /// refresh-token chain (instead of `state_dir`).
    pub(crate) fn with_store(mut self, shared: Option<ProfileStore>) -> Self {
        if let Some(store) = &shared
            && self.profile.grant == Grant::RefreshToken
        {
            self.chain = Some(Arc::new(Chain::new(
                &self.profile,
                Storage::Shared(store.clone()),
            )));
        }
        self.shared = shared.map(Box::new);
        self
    }

    /// Obtains a token: from the store shared with other replicas if there is one and it
    /// holds a usable token, else from the provider.
    /// `rejected` is a token a caller reported rejected: another replica may have shared
    /// it, and this replica may not hold it, so the shared store must not hand it back.
    pub(crate) async fn fetch(
        &self,
        rejected: Option<Fingerprint>,
    ) -> Result<IssuedToken, FetchError> {
        let result = match &self.shared {
            None => self.request().await,
            Some(shared) => {
                let when_down = match self.profile.grant {
                    Grant::ClientCredentials | Grant::JwtBearer | Grant::TokenExchange => {
                        WhenDown::FetchAlone
                    }
                    Grant::RefreshToken => WhenDown::Refuse,
                };
                let skip = [
                    *self.last.lock().unwrap_or_else(PoisonError::into_inner),
                    rejected,
                ];
                shared
                    .obtain(&self.profile, skip, when_down, async || {
                        self.request().await
                    })
                    .await
            }
        };
        if let Ok(issued) = &result {
            *self.last.lock().unwrap_or_else(PoisonError::into_inner) =
                Some(Fingerprint::of(issued.access_token.expose()));
        }
        result
    }

    /// Requests a token from the provider.
    async fn request(&self) -> Result<IssuedToken, FetchError> {
        let token_url = self.token_url().await?;
        let result = match (&self.profile.grant, &self.chain) {
            (Grant::RefreshToken, Some(chain)) => self.refresh(chain, &token_url).await,
            (Grant::RefreshToken, None) => Err(FetchError::Credential(CredentialError {
                key: "server.state_dir".into(),
                reason: "(or server.store) is required for refresh-token profiles".into(),
            })),
            (Grant::TokenExchange, _) => {
                // The profile's own slot has no subject: only its variants ask.
                let Some(subject) = &self.subject else {
                    return Err(FetchError::Credential(CredentialError::new(
                        &self.profile,
                        "grant",
                        "is `token_exchange`: a call must give `subject_token`",
                    )));
                };
                let credential = credential::load(&self.profile, &token_url)?;
                self.idp
                    .request_token(
                        &self.profile,
                        &token_url,
                        &credential,
                        GrantRequest::TokenExchange {
                            subject_token: &subject.0,
                            subject_token_type: &subject.1,
                        },
                    )
                    .await
                    .map_err(FetchError::from)
            }
            (Grant::JwtBearer, _) => {
                let assertion = credential::bearer_assertion(&self.profile, &token_url)?;
                let credential = credential::load(&self.profile, &token_url)?;
                self.idp
                    .request_token(
                        &self.profile,
                        &token_url,
                        &credential,
                        GrantRequest::JwtBearer {
                            assertion: &assertion,
                        },
                    )
                    .await
                    .map_err(FetchError::from)
            }
            (Grant::ClientCredentials, _) => {
                let credential = credential::load(&self.profile, &token_url)?;
                self.idp
                    .request_token(
                        &self.profile,
                        &token_url,
                        &credential,
                        GrantRequest::ClientCredentials,
                    )
                    .await
                    .map_err(FetchError::from)
            }
        };
        // Only the provider's failures to answer can mean that the endpoint moved.
        if let Err(FetchError::Idp(error)) = &result
            && !matches!(error, IdpError::Rejected { .. })
            && self.metadata.load().is_some()
        {
            // The endpoint may have moved: ask the issuer again next time.
            self.metadata.store(None);
        }
        result
    }

    async fn refresh(
        &self,
        chain: &Arc<Chain>,
        token_url: &Url,
    ) -> Result<IssuedToken, FetchError> {
        let profile = &self.profile;
        let (link, unsaved) = match chain.take_unsaved() {
            None => (self.current(chain).await?, false),
            Some(unsaved) => match chain.rule.persist(&unsaved).await {
                Ok(()) => {
                    tracing::info!(profile = %profile.name, "the rotated refresh token is stored at last");
                    (self.current(chain).await?, false)
                }
                Err(ChainError::Conflict) => {
                    tracing::warn!(
                        profile = %profile.name,
                        "the chain was written anew (`tokenvend authorize`?) while a rotated refresh token waited to be stored; the stored one is used"
                    );
                    (self.current(chain).await?, false)
                }
                Err(error) => {
                    tracing::error!(
                        profile = %profile.name,
                        %error,
                        "still cannot store the rotated refresh token; it is sent from memory"
                    );
                    (unsaved, true)
                }
            },
        };
        let grant = GrantRequest::RefreshToken {
            token: &link.token,
            scope: link.scope.as_deref(),
        };
        // With the longer read deadline: the provider may spend the old token before it
        // answers, and an answer given up on would take the new one with it.
        let credential = credential::load(&chain.profile, token_url)?;
        let result = self
            .idp
            .request_token(&chain.profile, token_url, &credential, grant)
            .await;
        match result {
            Ok(issued) => {
                match &issued.refresh_token {
                    Some(rotated) => {
                        // Stored before the token is handed out: the old refresh token is
                        // spent, and this one is the only way to the next access token.
                        let scope = issued
                            .granted_scope
                            .as_deref()
                            .or(link.scope.as_deref())
                            .map(str::to_owned);
                        match chain.rule.rotate(&link, rotated, scope.as_deref()).await {
                            Ok(()) => {}
                            Err(error @ ChainError::Conflict) => {
                                return Err(FetchError::Credential(CredentialError::new(
                                    profile,
                                    "refresh_token",
                                    format!("cannot store the rotated refresh token: {error}"),
                                )));
                            }
                            Err(error) => {
                                // The access token is served: it is valid whatever becomes
                                // of the store, and withholding it would not bring the
                                // store back. The new link stays in memory, is sent next
                                // instead of the spent one, and is written again then.
                                tracing::error!(
                                    profile = %profile.name,
                                    %error,
                                    "cannot store the rotated refresh token; it is kept in memory and written again at the next refresh, and the chain is lost if the server stops before then"
                                );
                                chain.keep(Link::rotated(link, rotated.clone(), scope));
                            }
                        }
                    }
                    // Not rotated: an unsaved link is still the way on, and still unsaved.
                    None if unsaved => chain.keep(link),
                    None => {}
                }
                Ok(issued)
            }
            Err(IdpError::Rejected {
                error, description, ..
            }) if error == "invalid_grant" => {
                if let Err(store_error) = chain.rule.refuse(&link).await {
                    tracing::error!(profile = %profile.name, %store_error, "cannot record the refused refresh token");
                }
                Err(FetchError::Reauthorize {
                    profile: profile.name.to_string(),
                    connection: self.connection,
                    reason: match description {
                        Some(d) => {
                            format!("the provider refused the refresh token (invalid_grant: {d})")
                        }
                        None => "the provider refused the refresh token (invalid_grant)".into(),
                    },
                })
            }
            Err(other) => {
                if unsaved {
                    chain.keep(link);
                }
                Err(other.into())
            }
        }
    }

    /// The chain's stored link (or seed).
    async fn current(&self, chain: &Chain) -> Result<Link, FetchError> {
        chain.rule.current().await.map_err(|e| self.chain_error(e))
    }

    fn chain_error(&self, error: ChainError) -> FetchError {
        let profile = self.profile.name.to_string();
        match error {
            ChainError::Refused => FetchError::Reauthorize {
                profile,
                reason: "the provider refused the stored refresh token".into(),
                connection: self.connection,
            },
            ChainError::Missing if self.connection => FetchError::Reauthorize {
                profile,
                reason: "no connection for this subject".into(),
                connection: true,
            },
            ChainError::Missing => FetchError::Reauthorize {
                profile,
                reason: "there is no refresh token yet".into(),
                connection: false,
            },
            ChainError::Store(error) => FetchError::StoreUnavailable(error.to_string()),
            other => FetchError::Credential(CredentialError::new(
                &self.profile,
                "refresh_token",
                other.to_string(),
            )),
        }
    }

    /// Revokes a refresh token at the provider (RFC 7009): at the profile's
    /// `revocation_url`, else at its issuer's `revocation_endpoint`. `Ok(false)` if there
    /// is neither, or the provider did not confirm.
    pub(crate) async fn revoke(&self, token: &Secret) -> Result<bool, FetchError> {
        let configured = self
            .profile
            .authorize
            .as_ref()
            .and_then(|a| a.revocation_url.clone());
        let url = match (configured, &self.profile.endpoint) {
            (Some(url), _) => url,
            (None, Endpoint::Issuer(issuer)) => {
                match self.metadata(issuer).await?.revocation_endpoint.clone() {
                    Some(url) => url,
                    None => return Ok(false),
                }
            }
            (None, Endpoint::TokenUrl(_)) => return Ok(false),
        };
        // A client assertion names the token endpoint as its audience, as for a refresh.
        let token_url = self.token_url().await?;
        let credential = credential::load(&self.profile, &token_url)?;
        Ok(self
            .idp
            .revoke(&self.profile, &url, &credential, token)
            .await?)
    }

    /// The token endpoint: configured, or from the issuer's metadata.
    pub(crate) async fn token_url(&self) -> Result<Url, IdpError> {
        match &self.profile.endpoint {
            Endpoint::TokenUrl(url) => Ok(url.clone()),
            Endpoint::Issuer(issuer) => Ok(self.metadata(issuer).await?.token_endpoint.clone()),
        }
    }

    /// The issuer's metadata, fetched once and kept.
    pub(crate) async fn metadata(&self, issuer: &Url) -> Result<Arc<Metadata>, IdpError> {
        if let Some(metadata) = self.metadata.load_full() {
            return Ok(metadata);
        }
        // Fetches are serialised by the slot's single flight, so no two race here.
        let metadata = Arc::new(self.idp.discover(issuer, self.profile.timeout).await?);
        self.metadata.store(Some(metadata.clone()));
        Ok(metadata)
    }
}

/// How much longer than the profile's `timeout` a refresh waits for its answer: a provider
/// that rotates spends the old refresh token when the request arrives, so an answer given
/// up on loses the chain, while a late one costs only a wait.
const REFRESH_TIMEOUT_FACTOR: u32 = 4;

/// A profile's refresh-token chain, and what its rotation needs beyond the rule.
#[derive(Debug)]
pub(crate) struct Chain {
    rule: RefreshChain<Storage>,
    /// The profile as refreshes send it: the read deadline is
    /// [`REFRESH_TIMEOUT_FACTOR`] × `timeout`.
    profile: Arc<Profile>,
    /// A rotated link whose write failed (disk full, store down): the only copy of the way
    /// on. It is sent next instead of the spent link, and written again at each fetch and
    /// by `retry` until a write lands. Its token is a [`Secret`](crate::secret::Secret):
    /// never printed, wiped on drop. Locked only to take, copy or put it back; fetches run
    /// one at a time (the slot's single flight).
    unsaved: Mutex<Option<Link>>,
    /// The task that writes `unsaved` again with backoff, so that the link is stored as
    /// soon as the store takes it, not only at the next refresh (hours away, perhaps, and
    /// after a restart that would lose it). Ends with the chain.
    retry: Mutex<Option<AbortOnDropHandle<()>>>,
}

/// The first wait before a kept link is written again; it doubles up to [`KEEP_RETRY_MAX`].
const KEEP_RETRY_FIRST: Duration = Duration::from_secs(1);
const KEEP_RETRY_MAX: Duration = Duration::from_secs(60);

/// Writes a chain's kept link until a write lands, the link is taken by a refresh, or the
/// chain is gone. A conflict means the link was written meanwhile (by a refresh) or a new
/// chain was started (`tokenvend authorize`): either way it is no longer needed.
async fn store_kept(chain: Weak<Chain>) {
    let mut wait = KEEP_RETRY_FIRST;
    loop {
        tokio::time::sleep(wait).await;
        let Some(chain) = chain.upgrade() else {
            return;
        };
        let Some(link) = chain
            .unsaved
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .clone()
        else {
            return;
        };
        let result = chain.rule.persist(&link).await;
        match result {
            Ok(()) | Err(ChainError::Conflict) => {
                let mut unsaved = chain.unsaved.lock().unwrap_or_else(PoisonError::into_inner);
                if unsaved.as_ref().is_some_and(|kept| kept.same(&link)) {
                    *unsaved = None;
                }
                drop(unsaved);
                if result.is_ok() {
                    tracing::info!(profile = %chain.profile.name, "the rotated refresh token is stored at last");
                }
                return;
            }
            Err(error) => {
                wait = (wait * 2).min(KEEP_RETRY_MAX);
                tracing::warn!(
                    profile = %chain.profile.name,
                    %error,
                    retry_in_s = wait.as_secs(),
                    "still cannot store the rotated refresh token; it is kept in memory"
                );
            }
        }
    }
}

impl Chain {
    fn new(profile: &Arc<Profile>, storage: Storage) -> Self {
        Self::with_profile(profile, TokenSource::refreshing(profile), storage)
    }

    fn with_profile(profile: &Profile, refreshing: Arc<Profile>, storage: Storage) -> Self {
        Self {
            rule: RefreshChain::new(storage, profile.refresh_token.clone()),
            profile: refreshing,
            unsaved: Mutex::new(None),
            retry: Mutex::new(None),
        }
    }

    fn take_unsaved(&self) -> Option<Link> {
        self.unsaved
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .take()
    }

    fn keep(self: &Arc<Self>, link: Link) {
        *self.unsaved.lock().unwrap_or_else(PoisonError::into_inner) = Some(link);
        let mut retry = self.retry.lock().unwrap_or_else(PoisonError::into_inner);
        if retry.as_ref().is_none_or(|task| task.is_finished()) {
            *retry = Some(AbortOnDropHandle::new(tokio::spawn(store_kept(
                Arc::downgrade(self),
            ))));
        }
    }
}

impl Drop for Chain {
    fn drop(&mut self) {
        if self.take_unsaved().is_some() {
            tracing::error!(
                profile = %self.profile.name,
                "a rotated refresh token was never stored and is lost; run `tokenvend authorize` for this profile"
            );
        }
    }
}

/// Where a profile's chain is kept: `state_dir` for one server, the shared store for
/// replicas.
#[derive(Debug)]
pub(crate) enum Storage {
    /// A file in `state_dir`.
    Dir(FileStore),
    /// The shared store.
    Shared(ProfileStore),
}

impl ChainStore for Storage {
    type Error = ChainError;

    async fn read(&self) -> Result<(Version, Option<Record>), ChainError> {
        match self {
            Self::Dir(store) => Ok(store.read().await?),
            Self::Shared(store) => Ok(store.read().await?),
        }
    }

    async fn write(&self, from: Version, record: &Record) -> Result<Cas, ChainError> {
        match self {
            Self::Dir(store) => Ok(store.write(from, record).await?),
            Self::Shared(store) => Ok(store.write(from, record).await?),
        }
    }
}
