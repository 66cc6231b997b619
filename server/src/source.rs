//! How a profile's token is obtained: the endpoint (given, or discovered from the issuer
//! and cached) and the grant (client credentials, or the next link of a refresh-token
//! chain, stored durably before it is needed again).

use std::sync::{Arc, Mutex, PoisonError};

use arc_swap::ArcSwapOption;
use url::Url;

use crate::{
    audit::Fingerprint,
    chain::{Cas, ChainError, ChainStore, FileStore, Record, RefreshChain, Version},
    config::{Endpoint, Grant, Profile},
    idp::{Grant as GrantRequest, IdpClient, IdpError, IssuedToken, discovery::Metadata},
    store::{ProfileStore, WhenDown},
};

/// Gets tokens for one profile.
#[derive(Debug)]
pub(crate) struct TokenSource {
    profile: Arc<Profile>,
    idp: IdpClient,
    /// Discovery metadata, kept until a request to its token endpoint fails.
    metadata: ArcSwapOption<Metadata>,
    // Boxed, as most profiles have neither: inline they made every slot 200 bytes larger.
    chain: Option<Box<RefreshChain<Storage>>>,
    /// The store shared with other replicas, if any.
    shared: Option<Box<ProfileStore>>,
    /// The token this source last produced: the slot holds it, so a fetch means it no
    /// longer serves and the shared store must not hand it back. Locked only to copy.
    last: Mutex<Option<Fingerprint>>,
}

impl TokenSource {
    /// A source for a profile; `chain` (its record in `state_dir`) is required for
    /// `grant: refresh_token` unless [`Self::with_store`] gives a shared store.
    pub(crate) fn new(profile: Arc<Profile>, idp: IdpClient, chain: Option<FileStore>) -> Self {
        let seed = profile.refresh_token.clone();
        Self {
            profile,
            idp,
            metadata: ArcSwapOption::empty(),
            chain: chain.map(|file| Box::new(RefreshChain::new(Storage::Dir(file), seed))),
            shared: None,
            last: Mutex::new(None),
        }
    }

    /// Shares tokens with other replicas through this store, which then also holds the
    /// refresh-token chain (instead of `state_dir`).
    pub(crate) fn with_store(mut self, shared: Option<ProfileStore>) -> Self {
        if let Some(store) = &shared
            && self.profile.grant == Grant::RefreshToken
        {
            self.chain = Some(Box::new(RefreshChain::new(
                Storage::Shared(store.clone()),
                self.profile.refresh_token.clone(),
            )));
        }
        self.shared = shared.map(Box::new);
        self
    }

    /// Obtains a token: from the store shared with other replicas if there is one and it
    /// holds a usable token, else from the provider.
    pub(crate) async fn fetch(&self) -> Result<IssuedToken, IdpError> {
        let result = match &self.shared {
            None => self.request().await,
            Some(shared) => {
                let when_down = match self.profile.grant {
                    Grant::ClientCredentials => WhenDown::FetchAlone,
                    Grant::RefreshToken => WhenDown::Refuse,
                };
                let skip = *self.last.lock().unwrap_or_else(PoisonError::into_inner);
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
    async fn request(&self) -> Result<IssuedToken, IdpError> {
        let token_url = self.token_url().await?;
        let result = match (&self.profile.grant, &self.chain) {
            (Grant::RefreshToken, Some(chain)) => self.refresh(chain, &token_url).await,
            (Grant::RefreshToken, None) => Err(IdpError::Credential {
                key: "server.state_dir".into(),
                reason: "(or server.store) is required for refresh-token profiles".into(),
            }),
            (Grant::ClientCredentials, _) => {
                self.idp
                    .request_token(&self.profile, &token_url, GrantRequest::ClientCredentials)
                    .await
            }
        };
        if let Err(error) = &result
            && !matches!(
                error,
                IdpError::Rejected { .. }
                    | IdpError::Credential { .. }
                    | IdpError::Reauthorize { .. }
            )
            && self.metadata.load().is_some()
        {
            // The endpoint may have moved: ask the issuer again next time.
            self.metadata.store(None);
        }
        result
    }

    async fn refresh(
        &self,
        chain: &RefreshChain<Storage>,
        token_url: &Url,
    ) -> Result<IssuedToken, IdpError> {
        let profile = &self.profile;
        let link = chain.current().await.map_err(|e| self.chain_error(e))?;
        let grant = GrantRequest::RefreshToken {
            token: &link.token,
            scope: link.scope.as_deref(),
        };
        let result = self.idp.request_token(profile, token_url, grant).await;
        match result {
            Ok(issued) => {
                if let Some(rotated) = &issued.refresh_token {
                    // Stored before the token is handed out: the old refresh token is
                    // spent, and this one is the only way to the next access token.
                    let scope = issued.granted_scope.as_deref().or(link.scope.as_deref());
                    if let Err(error) = chain.rotate(&link, rotated, scope).await {
                        tracing::error!(
                            profile = %profile.name,
                            %error,
                            "cannot store the rotated refresh token; the chain is lost if the server stops"
                        );
                        return Err(IdpError::Credential {
                            key: format!("profiles.{}.refresh_token", profile.name),
                            reason: format!("cannot store the rotated refresh token: {error}"),
                        });
                    }
                }
                Ok(issued)
            }
            Err(IdpError::Rejected {
                error, description, ..
            }) if error == "invalid_grant" => {
                if let Err(store_error) = chain.refuse(&link).await {
                    tracing::error!(profile = %profile.name, %store_error, "cannot record the refused refresh token");
                }
                Err(IdpError::Reauthorize {
                    profile: profile.name.to_string(),
                    reason: match description {
                        Some(d) => {
                            format!("the provider refused the refresh token (invalid_grant: {d})")
                        }
                        None => "the provider refused the refresh token (invalid_grant)".into(),
                    },
                })
            }
            Err(other) => Err(other),
        }
    }

    fn chain_error(&self, error: ChainError) -> IdpError {
        let profile = self.profile.name.to_string();
        match error {
            ChainError::Refused => IdpError::Reauthorize {
                profile,
                reason: "the provider refused the stored refresh token".into(),
            },
            ChainError::Missing => IdpError::Reauthorize {
                profile,
                reason: "there is no refresh token yet".into(),
            },
            ChainError::Store(error) => IdpError::StoreUnavailable(error.to_string()),
            other => IdpError::Credential {
                key: format!("profiles.{profile}.refresh_token"),
                reason: other.to_string(),
            },
        }
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
