//! The token cache: a slot per profile holding its current token.
//!
//! - A hit reads the slot's current token through an `ArcSwap`: no lock, no allocation,
//!   nothing shared with other profiles.
//! - A miss joins the slot's one in-flight fetch or starts it (single flight), so any
//!   number of concurrent misses make one identity provider request. The fetch runs as its
//!   own task: a caller that gives up does not cancel it for the others.
//! - A ceiling on provider requests per profile per minute holds whatever callers ask
//!   (`rejected_token`, `min_ttl`), so that no caller can drain the provider's quota. It
//!   is checked only where a request would start, never on the hot path.
//! - The refresher replaces each token in the background before it expires (see
//!   [`refresh`]); while the provider fails, the still-valid token keeps being served and
//!   requests are retried with backoff.

mod connections;
mod refresh;

use std::{
    collections::{HashMap, VecDeque},
    panic::AssertUnwindSafe,
    path::{Path, PathBuf},
    sync::{
        Arc, Mutex, MutexGuard, OnceLock, PoisonError,
        atomic::{AtomicBool, Ordering},
    },
    time::{Duration, SystemTime},
};

use arc_swap::{ArcSwap, ArcSwapOption};
use futures::{
    FutureExt as _,
    future::{BoxFuture, Shared},
};
use tokenvend::{pb, wire::EncodedToken};
use tokio::{
    sync::{Semaphore, mpsc, watch},
    time::Instant,
};
use tokio_util::sync::{CancellationToken, DropGuard};
use tracing::Instrument as _;

use crate::{
    audit::{self, Fingerprint, TokenDigest},
    chain::FileStore,
    config::{Profile, Retry},
    connections::ConnectionStore,
    credential::CredentialError,
    error::ServeError,
    idp::{IdpClient, IssuedToken},
    metrics::{CacheLookup, Metrics, ProfileMetrics, Trigger},
    secret::Secret,
    source::{FetchError, TokenSource},
    state::StateDir,
    store::SharedStore,
};

/// Profiles by name. Hashed with foldhash, not SipHash: every call looks a name up, and
/// the keys come from the configuration, not from callers, so there is no flooding to
/// resist.
type Slots = HashMap<Arc<str>, Arc<Slot>, foldhash::fast::RandomState>;

/// The tokens of all profiles. Dropping it stops every background task it started.
pub(crate) struct TokenCache {
    /// The profile map, swapped whole when the configuration is reloaded. Readers take a
    /// lock-free snapshot, so the hot path never waits for a reload.
    slots: ArcSwap<Slots>,
    /// Serialises reloads, so that two of them cannot both build from the same old map;
    /// held only while a new map is built and stored, never across an await.
    reloading: Mutex<()>,
    idp: IdpClient,
    /// Where refresh-token chains are kept (the directory is locked by the server).
    state_dir: Option<PathBuf>,
    /// The store shared with other replicas, consulted on a miss (never on a hit).
    store: Option<SharedStore>,
    /// Where the connections of template profiles are kept; `None` without a
    /// connections key (then no profile is a template).
    connections: Option<ConnectionStore>,
    metrics: Metrics,
    /// Where slots ask the refresher to work out their next refresh again.
    wakes: refresh::Wakes,
    stop: CancellationToken,
    _stop_on_drop: DropGuard,
}

/// How many background fetches run at once. Ten thousand profiles warming up together
/// would otherwise open ten thousand connections to a provider (which throttles them) and
/// hold their buffers; 64 at a time warm 10,000 profiles in about 16 s against a provider
/// answering in 100 ms. A caller's miss never waits for a permit.
const BACKGROUND_FETCHES: usize = 64;

/// The shortest time between a token request and the background refresh that replaces
/// its token: a provider issuing short-lived tokens cannot set the refresher asking in a
/// loop. (Tokens shorter than a second are refused outright, `config::MIN_LIFETIME`.)
const MIN_REFRESH_INTERVAL: Duration = Duration::from_secs(1);

/// What a reload changed, by profile name.
#[derive(Debug, Default, Clone, PartialEq, Eq)]
pub(crate) struct Changes {
    /// New profiles.
    pub added: Vec<Arc<str>>,
    /// Profiles configured differently: they start afresh, with an empty cache.
    pub changed: Vec<Arc<str>>,
    /// Profiles no longer configured.
    pub removed: Vec<Arc<str>>,
    /// Profiles configured as before: they keep their cached token and refresher.
    pub unchanged: Vec<Arc<str>>,
}

impl TokenCache {
    /// A cache for these profiles, and the refresher that keeps them. Refresh-token profiles
    /// keep their chains in `state`. Must be called within a Tokio runtime.
    #[cfg(test)]
    pub(crate) fn new(
        profiles: &[Arc<Profile>],
        idp: IdpClient,
        state: Option<&StateDir>,
        metrics: Metrics,
    ) -> Self {
        Self::with_store(profiles, idp, state, metrics, None)
    }

    /// A cache whose misses go through a store shared with other replicas.
    pub(crate) fn with_store(
        profiles: &[Arc<Profile>],
        idp: IdpClient,
        state: Option<&StateDir>,
        metrics: Metrics,
        store: Option<SharedStore>,
    ) -> Self {
        let stop = CancellationToken::new();
        let (wakes, woken) = mpsc::unbounded_channel();
        tokio::spawn(refresh::run(
            woken,
            Arc::new(Semaphore::new(BACKGROUND_FETCHES)),
            stop.clone(),
        ));
        let cache = Self {
            slots: ArcSwap::default(),
            reloading: Mutex::default(),
            idp,
            state_dir: state.map(StateDir::path).map(Path::to_path_buf),
            store,
            connections: None,
            metrics,
            wakes,
            _stop_on_drop: stop.clone().drop_guard(),
            stop,
        };
        let slots = profiles
            .iter()
            .map(|profile| (profile.name.clone(), cache.start_slot(profile)))
            .collect();
        cache.slots.store(Arc::new(slots));
        cache
    }

    fn start_slot(&self, profile: &Arc<Profile>) -> Arc<Slot> {
        let chain = self
            .state_dir
            .as_deref()
            .map(|dir| FileStore::new(dir, &profile.name));
        let source = TokenSource::new(profile.clone(), self.idp.clone(), chain)
            .with_store(self.store.as_ref().map(|s| s.profile(&profile.name)));
        let counters = self.metrics.profile(&profile.name);
        // A new slot starts empty, whatever the one it replaces held.
        counters.token_expires_at(None);
        let slot = Arc::new(Slot::new(
            profile.clone(),
            source,
            &self.stop,
            self.wakes.clone(),
            self.metrics.clone(),
            counters,
        ));
        slot.reschedule();
        slot
    }

    /// Keeps the connections of template profiles in `store`.
    pub(crate) fn with_connections(mut self, store: Option<ConnectionStore>) -> Self {
        self.connections = store;
        self
    }

    /// The slot of a profile.
    pub(crate) fn slot(&self, profile: &str) -> Option<Arc<Slot>> {
        self.slots.load().get(profile).cloned()
    }

    /// All slots, sorted by profile name.
    pub(crate) fn slots(&self) -> Vec<Arc<Slot>> {
        let mut slots: Vec<_> = self.slots.load().values().cloned().collect();
        slots.sort_by(|a, b| a.profile.name.cmp(&b.profile.name));
        slots
    }

    /// How every profile stands, sorted by profile name: what the notices' scan and the
    /// admin page read. Takes each slot's lock for a moment, never the hot path's.
    #[allow(dead_code, reason = "read by the notices' scan and the admin page")]
    pub(crate) async fn health(&self) -> Vec<Health> {
        self.slots()
            .into_iter()
            .map(|slot| Health {
                profile: slot.profile.name.clone(),
                subject: None,
                status: slot.status(),
            })
            .collect()
    }

    /// Switches to a new set of profiles in one atomic step. A profile configured exactly
    /// as before keeps its slot (its cached token, its refresher, its watchers); a new or
    /// changed one gets a new slot; the slots of removed and changed profiles are retired:
    /// their refresher stops and their `WatchToken` streams end, while calls already
    /// waiting on them finish.
    pub(crate) fn replace_profiles(&self, profiles: &[Arc<Profile>]) -> Changes {
        let _reloading = self
            .reloading
            .lock()
            .unwrap_or_else(PoisonError::into_inner);
        let old = self.slots.load_full();
        let mut changes = Changes::default();
        let mut slots = Slots::with_capacity_and_hasher(profiles.len(), Default::default());
        for profile in profiles {
            let name = profile.name.clone();
            let slot = match old.get(&name) {
                Some(slot) if *slot.profile == **profile => {
                    changes.unchanged.push(name.clone());
                    slot.clone()
                }
                Some(_) => {
                    changes.changed.push(name.clone());
                    self.start_slot(profile)
                }
                None => {
                    changes.added.push(name.clone());
                    self.start_slot(profile)
                }
            };
            slots.insert(name, slot);
        }
        let slots = Arc::new(slots);
        self.slots.store(slots.clone());
        // Looked up in the new map, not in the lists of changes: a reload of 10,000 profiles
        // would otherwise compare names 50 million times.
        for (name, slot) in old.iter() {
            match slots.get(name) {
                Some(new) if Arc::ptr_eq(new, slot) => {}
                Some(_) => slot.retire(),
                None => {
                    slot.retire();
                    slot.counters.token_expires_at(None);
                    changes.removed.push(name.clone());
                }
            }
        }
        changes.removed.sort();
        changes
    }

    /// Stops background refreshes and fetches, for shutdown.
    pub(crate) fn stop(&self) {
        self.stop.cancel();
    }
}

/// A token as the cache holds it, with its reply encoded once.
pub(crate) struct CachedToken {
    /// Recognises the token when a caller reports it rejected.
    digest: TokenDigest,
    expires_at: SystemTime,
    /// The monotonic twin of `expires_at`: wall-clock jumps cannot stretch a token's life.
    expires: Instant,
    refresh_at: Instant,
    issued: Instant,
    lifetime: Duration,
    encoded: EncodedToken,
}

impl std::fmt::Debug for CachedToken {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("CachedToken")
            .field("expires_at", &self.expires_at)
            .field("lifetime", &self.lifetime)
            .finish_non_exhaustive()
    }
}

impl CachedToken {
    fn new(profile: &Profile, issued: IssuedToken, sent: Instant) -> Result<Self, FetchError> {
        // A token another replica obtained was issued before this request was sent.
        let sent = sent.checked_sub(issued.age).unwrap_or(sent);
        let mut headers = std::collections::HashMap::with_capacity(1 + profile.headers.len());
        headers.insert(
            "authorization".to_owned(),
            format!("{} {}", issued.token_type, issued.access_token.expose()),
        );
        for (name, source) in &profile.headers {
            let value = source.load().map_err(|e| {
                CredentialError::new(profile, &format!("headers.{name}"), e.to_string())
            })?;
            headers.insert(name.as_str().to_owned(), value.expose().to_owned());
        }
        let access_token = issued.access_token.expose();
        let encoded = EncodedToken::encode_sharing(
            &pb::Token {
                access_token: access_token.to_owned(),
                token_type: issued.token_type,
                expires_at: Some(issued.expires_at.into()),
                scopes: issued.scopes,
                headers,
                profile: profile.name.to_string(),
            },
            access_token,
        );

        // Refresh ahead at the configured fraction of the lifetime, less up to 5% of it so
        // that profiles started together do not refresh together. A provider that says
        // when to come back (Entra ID's `refresh_in`) is taken at its word.
        let ahead = issued
            .refresh_in
            .unwrap_or_else(|| {
                let jitter = issued.lifetime.mul_f64(fastrand::f64() * 0.05);
                profile
                    .refresh_ahead
                    .after(issued.lifetime)
                    .saturating_sub(jitter)
            })
            // However short-lived the tokens, the refresher does not ask more often.
            .max(MIN_REFRESH_INTERVAL.min(issued.lifetime));
        Ok(Self {
            digest: TokenDigest::of(issued.access_token.expose()),
            expires_at: issued.expires_at,
            expires: sent + issued.lifetime,
            refresh_at: sent + ahead,
            issued: sent,
            lifetime: issued.lifetime,
            encoded,
        })
    }

    /// The reply to send.
    pub(crate) fn encoded(&self) -> &EncodedToken {
        &self.encoded
    }

    /// The token's fingerprint, for audit events.
    pub(crate) fn fingerprint(&self) -> Fingerprint {
        self.digest.fingerprint()
    }

    /// A hit, or stale: served past its refresh time, because the refresh failed or is
    /// late.
    fn freshness(&self, now: Instant) -> CacheResult {
        if now < self.refresh_at {
            CacheResult::Hit
        } else {
            CacheResult::Stale
        }
    }

    fn remaining(&self, now: Instant) -> Duration {
        self.expires.saturating_duration_since(now)
    }

    /// Whether this token may be served to a caller with these needs.
    fn serves(&self, now: Instant, min_ttl: Duration, rejected: Option<TokenDigest>) -> bool {
        let left = self.remaining(now);
        !left.is_zero() && left >= min_ttl && rejected.is_none_or(|r| r != self.digest)
    }
}

/// What a caller needs of a token.
#[derive(Debug, Default, Clone, Copy)]
pub(crate) struct Need {
    /// The token must stay valid at least this long.
    pub min_ttl: Duration,
    /// The digest of the token the resource API rejected (hashed once per call, however
    /// often it is compared): never serve that token again.
    pub rejected: Option<TokenDigest>,
}

/// How a flight ended without a token.
#[derive(Debug, Clone)]
enum FlightError {
    Failed(Arc<FetchError>),
    Stopped,
    Panicked,
}

type FetchResult = Result<Arc<CachedToken>, FlightError>;
type Flight = Shared<BoxFuture<'static, FetchResult>>;

enum Step {
    /// A token that meets the need was there after all.
    Ready(Arc<CachedToken>),
    /// This call started a provider request.
    Started(Flight),
    /// A provider request was in flight already.
    Joined(Flight),
    /// The caller reported the current token rejected, but it is fresh and was itself the
    /// replacement of a rejected one: it is served again rather than replaced (see
    /// `rejected_token_min_interval`). `first` is set for the first such call since that
    /// replacement, which logs it.
    Held {
        token: Arc<CachedToken>,
        first: bool,
    },
}

/// Something the caller should know about the token it got, sent as `tokenvend-hint`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Hint {
    /// The token was reported rejected, but fresh tokens are being rejected: another one
    /// would be too, so the current one came back.
    FreshTokensRejected,
}

impl Hint {
    /// The text of the hint.
    pub(crate) fn as_str(self) -> &'static str {
        match self {
            Self::FreshTokensRejected => {
                "fresh tokens are being rejected: check the API's permissions for this client"
            }
        }
    }
}

/// A token for a caller: how the cache answered, and anything the caller should know.
#[derive(Debug)]
pub(crate) struct Served {
    pub token: Arc<CachedToken>,
    pub result: CacheResult,
    pub hint: Option<Hint>,
}

/// One profile's cache entry.
pub(crate) struct Slot {
    profile: Arc<Profile>,
    source: TokenSource,
    current: ArcSwapOption<CachedToken>,
    // Guards the decision to start or join a fetch and the publication of its result, so
    // that a caller never misses both. Held for a few instructions, never across an await.
    state: Mutex<SlotState>,
    /// New tokens for `WatchToken` streams; made by the first of them (most profiles are
    /// never watched, and a channel is 350 bytes). Set and sent to under `state`.
    updates: OnceLock<watch::Sender<Option<Arc<CachedToken>>>>,
    /// The refresher, and this slot's entry in its timetable.
    wakes: refresh::Wakes,
    scheduled: refresh::Scheduled,
    /// Cancels fetches: the whole cache is stopping.
    stop: CancellationToken,
    /// Set when a reload replaces or removes the profile: stops its refreshes and ends its
    /// watchers, but lets a fetch in flight finish. A flag and a wake through `updates`
    /// rather than a cancellation token of its own, which would cost 120 bytes a profile.
    retired: AtomicBool,
    metrics: Metrics,
    /// This profile's counters, so that counting a hit is one atomic add.
    counters: Arc<ProfileMetrics>,
    /// The slots of the per-call variants callers asked for (other scopes, audience or
    /// resource), made at the first such call: most profiles never have one.
    variants: OnceLock<Box<Variants>>,
    /// For a template profile's own slot: the slots of its connections, made at the first
    /// call for one (see [`connections`]).
    connections: OnceLock<Box<connections::ConnectionSlots>>,
    /// For a variant or a connection: the provider requests of all the profile's variants
    /// (or connections) in the last minute, so that callers asking for ever new variants (subject tokens, scope sets)
    /// cannot take `idp_requests_per_minute` once per variant. Locked inside `state`
    /// (never the other way round), for a few instructions.
    family: Option<Arc<Mutex<Recent>>>,
}

/// A profile's variants, and the record of their provider requests.
struct Variants {
    slots: moka::sync::Cache<Variant, Arc<Slot>, foldhash::fast::RandomState>,
    recent: Arc<Mutex<Recent>>,
}

/// What a call asks for instead of the profile's own scopes, audience and resource:
/// scopes sorted and without repeats, so that the same set is one variant.
#[derive(Clone, Debug, PartialEq, Eq, Hash)]
pub(crate) struct Variant {
    pub(crate) scopes: Option<Vec<String>>,
    pub(crate) audience: Option<String>,
    pub(crate) resource: Option<String>,
    /// For token exchange: the caller's subject token, by digest, and its type. Each
    /// subject token is its own variant: an exchanged token is never served for another.
    pub(crate) subject: Option<(TokenDigest, String)>,
}

/// The most variants of one profile kept at once; the least used go first. Each holds a
/// token and a refresher entry; a caller whose variant was evicted gets a new token.
const MAX_VARIANTS: u64 = 1024;

/// A variant's slot is dropped after this long without a call, so that a variant asked
/// for once is not refreshed for ever.
const VARIANT_IDLE: Duration = Duration::from_secs(3600);

#[derive(Default)]
struct SlotState {
    flight: Option<Flight>,
    failures: u32,
    last_error: Option<Arc<FetchError>>,
    /// No request to the provider before this, after a failure.
    retry_at: Option<Instant>,
    last_refresh: Option<SystemTime>,
    /// When the current run of failed requests began; cleared by a success. Written only
    /// where an outcome is published, for the health a notice or the admin page reads.
    failing_since: Option<SystemTime>,
    /// The lifetime of the last token, to refuse a min_ttl no token can meet without
    /// asking the provider.
    lifetime: Option<Duration>,
    /// When a token reported rejected was last replaced, and whether a report of its fresh
    /// replacement has been logged since: a resource API that rejects every token gets one
    /// replacement per `rejected_token_min_interval`, not one per report.
    rejection_replaced_at: Option<Instant>,
    rejection_logged: bool,
    /// When the provider requests of the last minute started, oldest first; at most
    /// `idp_requests_per_minute` of them.
    recent: Recent,
    /// The span of the last background refresh, linked from the next one so that a
    /// profile's refreshes can be followed from one to the next.
    /// Boxed: only profiles traced while OpenTelemetry export is on have one.
    refresh_span: Option<Box<opentelemetry::trace::SpanContext>>,
}

const MINUTE: Duration = Duration::from_secs(60);

/// A queue of times that holds its oldest one inline. Most profiles make one request per
/// token lifetime, so the queue holds one time for good, and a heap block for it would
/// cost 80 bytes a profile.
#[derive(Default)]
struct Recent {
    first: Option<Instant>,
    rest: VecDeque<Instant>,
}

impl Recent {
    fn front(&self) -> Option<&Instant> {
        self.first.as_ref()
    }

    fn pop_front(&mut self) {
        self.first = self.rest.pop_front();
        if self.rest.is_empty() {
            // A burst's block is given back once the burst has aged out.
            self.rest = VecDeque::new();
        }
    }

    fn push_back(&mut self, time: Instant) {
        if self.first.is_none() {
            self.first = Some(time);
        } else {
            self.rest.push_back(time);
        }
    }

    fn len(&self) -> usize {
        usize::from(self.first.is_some()) + self.rest.len()
    }

    /// How long until `limit` allows another request, if it does not now.
    fn wait(&mut self, now: Instant, limit: u32) -> Option<Duration> {
        while self
            .front()
            .is_some_and(|t| now.saturating_duration_since(*t) >= MINUTE)
        {
            self.pop_front();
        }
        (self.len() >= limit as usize)
            .then(|| self.front().map_or(Duration::ZERO, |t| *t + MINUTE - now))
    }
}

impl SlotState {
    /// How long until the ceiling allows another provider request, if it does not now.
    fn ceiling_wait(&mut self, now: Instant, limit: u32) -> Option<Duration> {
        self.recent.wait(now, limit)
    }

    /// Whether a report that `token`, the current one, was rejected is answered with the
    /// token itself: it is fresh (issued within `interval`), and a rejected token was
    /// already replaced within `interval`. Another one would most likely be rejected too,
    /// and replacing each would turn a resource API that refuses every token into a storm
    /// of provider requests.
    fn holds_rejected(&self, token: &CachedToken, now: Instant, interval: Duration) -> bool {
        let recent = |at: Instant| now.saturating_duration_since(at) < interval;
        recent(token.issued) && self.rejection_replaced_at.is_some_and(recent)
    }

    /// When the ceiling next allows a request, if it is reached.
    fn ceiling_free_at(&self, limit: u32) -> Option<Instant> {
        (self.recent.len() >= limit as usize)
            .then(|| self.recent.front().map(|t| *t + MINUTE))
            .flatten()
    }
}

/// What a call's cache lookup found.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum CacheResult {
    /// A valid token, before its refresh time.
    Hit,
    /// A valid token past its refresh time: the background refresh failed or is late.
    Stale,
    /// No usable token: this call started a provider request, or was refused one
    /// (backoff, request ceiling).
    Miss,
    /// No usable token, and a provider request was already in flight: the call joined it.
    Coalesced,
}

impl CacheResult {
    /// The span attribute value: the metrics' label, so that traces and metrics agree.
    pub(crate) fn as_str(self) -> &'static str {
        CacheLookup::from(self).as_str()
    }
}

// A match from one enum onto another of the same order: it compiles to nothing, so the
// hot path's count costs what it did when the counters were indexed by `CacheResult`.
impl From<CacheResult> for CacheLookup {
    fn from(result: CacheResult) -> Self {
        match result {
            CacheResult::Hit => Self::Hit,
            CacheResult::Stale => Self::Stale,
            CacheResult::Miss => Self::Miss,
            CacheResult::Coalesced => Self::Coalesced,
        }
    }
}

impl From<CacheResult> for audit::Source {
    fn from(result: CacheResult) -> Self {
        match result {
            CacheResult::Hit | CacheResult::Stale => Self::Cache,
            CacheResult::Miss | CacheResult::Coalesced => Self::Idp,
        }
    }
}

/// A profile's cache state, for `ListProfiles`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum CacheState {
    /// No token has been requested.
    Empty,
    /// A valid token, and the last request succeeded.
    Valid,
    /// A valid token, but the last refresh failed.
    Stale,
    /// No valid token, and the last request failed.
    Failed,
    /// No valid token, and the last request failed in a way only a person can fix: there
    /// is no refresh token yet, or the provider refused the stored one.
    NeedsAuthorization,
}

/// How one profile, or one connection of a template profile, stands.
#[allow(dead_code, reason = "read by the notices' scan and the admin page")]
#[derive(Debug, Clone)]
pub(crate) struct Health {
    /// The profile.
    pub profile: Arc<str>,
    /// The connection's subject, for a connection.
    pub subject: Option<String>,
    /// Its slot's status.
    pub status: SlotStatus,
}

/// A snapshot of a slot, for `ListProfiles`.
#[derive(Debug, Clone)]
pub(crate) struct SlotStatus {
    /// The state.
    pub state: CacheState,
    /// When the cached token expires, if there is a valid one.
    pub expires_at: Option<SystemTime>,
    /// When the last token was obtained.
    pub last_refresh: Option<SystemTime>,
    /// Why the last request failed, if it did.
    pub last_error: Option<String>,
    /// Whether the last request failed in a way only a person can fix (no refresh token
    /// yet, or the provider refused the stored one): it needs authorizing again.
    #[allow(dead_code, reason = "read by the notices' scan and the admin page")]
    pub needs_authorization: bool,
    /// When the current run of failures began; `None` once a request succeeds.
    #[allow(dead_code, reason = "read by the notices' scan and the admin page")]
    pub failing_since: Option<SystemTime>,
}

impl Slot {
    fn new(
        profile: Arc<Profile>,
        source: TokenSource,
        stop: &CancellationToken,
        wakes: refresh::Wakes,
        metrics: Metrics,
        counters: Arc<ProfileMetrics>,
    ) -> Self {
        Self {
            metrics,
            counters,
            profile,
            source,
            current: ArcSwapOption::empty(),
            state: Mutex::default(),
            updates: OnceLock::new(),
            wakes,
            scheduled: refresh::Scheduled::default(),
            stop: stop.clone(),
            retired: AtomicBool::new(false),
            variants: OnceLock::new(),
            connections: OnceLock::new(),
            family: None,
        }
    }

    /// The slot of a variant of this profile: its own token, its own single flight, its
    /// own refresh, never shared with the profile's or another variant's. Not shared with
    /// other replicas either (the shared store holds one token per profile).
    /// `subject` is the subject token itself, for a token-exchange variant.
    pub(crate) fn variant(
        self: &Arc<Self>,
        variant: Variant,
        subject: Option<Secret>,
    ) -> Arc<Slot> {
        let variants = self.variants.get_or_init(|| {
            Box::new(Variants {
                slots: moka::sync::Cache::builder()
                    .max_capacity(MAX_VARIANTS)
                    .time_to_idle(VARIANT_IDLE)
                    .build_with_hasher(foldhash::fast::RandomState::default()),
                recent: Arc::default(),
            })
        });
        // One slot per variant however many callers ask at once: moka runs one init.
        variants.slots.get_with_by_ref(&variant, || {
            let mut profile = Profile::clone(&self.profile);
            if let Some(scopes) = &variant.scopes {
                profile.scopes.clone_from(scopes);
            }
            if variant.audience.is_some() {
                profile.audience.clone_from(&variant.audience);
            }
            if variant.resource.is_some() {
                profile.resource.clone_from(&variant.resource);
            }
            let profile = Arc::new(profile);
            let subject = subject
                .clone()
                .zip(variant.subject.as_ref().map(|(_, kind)| kind.clone()));
            let slot = Arc::new(Slot {
                family: Some(variants.recent.clone()),
                ..Slot::new(
                    profile.clone(),
                    self.source.variant(profile, subject),
                    &self.stop,
                    self.wakes.clone(),
                    self.metrics.clone(),
                    self.counters.clone(),
                )
            });
            if self.is_retired() {
                slot.retire();
            }
            slot.reschedule();
            slot
        })
    }

    /// Whether this slot no longer serves its profile: a reload replaced or removed it, or
    /// the server is stopping.
    pub(crate) fn is_retired(&self) -> bool {
        self.retired.load(Ordering::Relaxed) || self.stop.is_cancelled()
    }

    /// Stops serving the profile, and wakes its watchers so that they see it.
    fn retire(&self) {
        // Under the lock that `subscribe` takes: a watcher subscribed before this is woken,
        // and one subscribed after it sees the flag.
        let state = lock(&self.state);
        self.retired.store(true, Ordering::Relaxed);
        if let Some(updates) = self.updates.get() {
            updates.send_modify(|_| {});
        }
        drop(state);
        if let Some(variants) = self.variants.get() {
            for (_, variant) in variants.slots.iter() {
                variant.retire();
            }
            variants.slots.invalidate_all();
        }
        if let Some(connections) = self.connections.get() {
            connections.retire_all();
        }
    }

    /// The profile.
    pub(crate) fn profile(&self) -> &Arc<Profile> {
        &self.profile
    }

    /// Whether the slot has ever held a token (it may have expired since).
    pub(crate) fn has_had_token(&self) -> bool {
        self.current.load().is_some()
    }

    /// This profile's counters.
    pub(crate) fn counters(&self) -> &Arc<ProfileMetrics> {
        &self.counters
    }

    /// The hot path: the cached token if it meets the need, with its fingerprint, and
    /// whether it is past its refresh time. Counts the lookup if it found one; a miss is
    /// counted by [`Slot::token`], which the caller goes on to.
    pub(crate) fn cached(&self, need: &Need) -> Option<(EncodedToken, Fingerprint, CacheResult)> {
        let min_ttl = need.min_ttl.max(self.profile.min_ttl);
        let now = Instant::now();
        let current = self.current.load();
        let token = current
            .as_ref()
            .filter(|t| t.serves(now, min_ttl, need.rejected))?;
        let result = token.freshness(now);
        self.counters.cache(result.into());
        Some((token.encoded.clone(), token.fingerprint(), result))
    }

    /// A token that meets the need: the cached one, or a fresh one from the provider; and
    /// how the cache answered.
    pub(crate) async fn token(self: &Arc<Self>, need: Need) -> Result<Served, ServeError> {
        let min_ttl = need.min_ttl.max(self.profile.min_ttl);
        let accept = |t: &CachedToken, now| t.serves(now, min_ttl, need.rejected);
        let step = self
            .join_or_start(accept, min_ttl, need.rejected, Trigger::Caller)
            .inspect_err(|_| self.counters.cache(CacheResult::Miss.into()))?;
        let (flight, result) = match step {
            Step::Ready(token) => {
                let result = token.freshness(Instant::now());
                self.counters.cache(result.into());
                return Ok(Served {
                    token,
                    result,
                    hint: None,
                });
            }
            Step::Held { token, first } => {
                let result = token.freshness(Instant::now());
                self.counters.cache(result.into());
                if first {
                    tracing::warn!(
                        profile = %self.profile.name,
                        interval_s = self.profile.rejected_token_min_interval.as_secs(),
                        "the resource API rejects fresh tokens of this profile; until the \
                         interval has passed, reports get the current token back"
                    );
                }
                return Ok(Served {
                    token,
                    result,
                    hint: Some(Hint::FreshTokensRejected),
                });
            }
            Step::Started(flight) => (flight, CacheResult::Miss),
            Step::Joined(flight) => (flight, CacheResult::Coalesced),
        };
        self.counters.cache(result.into());
        let waiting = Instant::now();
        let outcome = flight.await;
        self.metrics
            .waited(&self.profile.name, result.into(), waiting.elapsed());
        let token = outcome.map_err(|e| self.serve_error(e))?;
        if token.remaining(Instant::now()) < min_ttl.max(Duration::from_nanos(1)) {
            return Err(self.too_short(token.lifetime, min_ttl));
        }
        Ok(Served {
            token,
            result,
            hint: None,
        })
    }

    /// Updates of the current token, for `WatchToken`.
    pub(crate) fn subscribe(&self) -> watch::Receiver<Option<Arc<CachedToken>>> {
        // Under the lock that publication takes, so that no token is published between
        // reading the current one and being able to send the next.
        let _state = lock(&self.state);
        self.updates
            .get_or_init(|| watch::Sender::new(self.current.load_full()))
            .subscribe()
    }

    /// Asks the refresher to work out this slot's next refresh again.
    fn reschedule(self: &Arc<Self>) {
        // Fails only once the refresher has stopped, at shutdown: nothing is left to do.
        let _ = self.wakes.send(Arc::downgrade(self));
    }

    /// How the slot stands.
    pub(crate) fn status(&self) -> SlotStatus {
        let state = lock(&self.state);
        let valid = self
            .current
            .load_full()
            .filter(|t| !t.remaining(Instant::now()).is_zero());
        let failing = state.last_error.is_some();
        let needs_authorization = state
            .last_error
            .as_deref()
            .is_some_and(|e| matches!(e, FetchError::Reauthorize { .. }));
        SlotStatus {
            state: match (&valid, failing) {
                (Some(_), false) => CacheState::Valid,
                (Some(_), true) => CacheState::Stale,
                (None, true) if needs_authorization => CacheState::NeedsAuthorization,
                (None, true) => CacheState::Failed,
                (None, false) => CacheState::Empty,
            },
            expires_at: valid.map(|t| t.expires_at),
            last_refresh: state.last_refresh,
            last_error: state.last_error.as_ref().map(|e| e.to_string()),
            needs_authorization,
            failing_since: state.failing_since,
        }
    }

    fn join_or_start(
        self: &Arc<Self>,
        accept: impl Fn(&CachedToken, Instant) -> bool,
        min_ttl: Duration,
        rejected: Option<TokenDigest>,
        trigger: Trigger,
    ) -> Result<Step, ServeError> {
        let mut state = lock(&self.state);
        let now = Instant::now();
        let current = self.current.load_full();
        if let Some(token) = &current
            && accept(token, now)
        {
            return Ok(Step::Ready(token.clone()));
        }
        // Only the current token's rejection asks for a new one (an older token's is
        // answered by `accept`).
        let rejection = rejected.is_some() && rejected == current.as_ref().map(|t| t.digest);
        if rejection
            && let Some(token) = current
            && token.serves(now, min_ttl, None)
            && state.holds_rejected(&token, now, self.profile.rejected_token_min_interval)
        {
            let first = !std::mem::replace(&mut state.rejection_logged, true);
            return Ok(Step::Held { token, first });
        }
        if let Some(flight) = &state.flight {
            return Ok(Step::Joined(flight.clone()));
        }
        if let Some(lifetime) = state.lifetime
            && !min_ttl.is_zero()
            && min_ttl >= lifetime
        {
            return Err(self.too_short(lifetime, min_ttl));
        }
        if let (Some(retry_at), Some(error)) = (state.retry_at, &state.last_error)
            && now < retry_at
        {
            return Err(ServeError::Backoff {
                profile: self.profile.name.clone(),
                error: error.clone(),
                retry_in: retry_at - now,
            });
        }
        let limit = self.profile.idp_requests_per_minute;
        if let Some(retry_in) = state.ceiling_wait(now, limit) {
            return Err(ServeError::IdpCeiling {
                profile: self.profile.name.clone(),
                limit,
                retry_in,
            });
        }
        if let Some(family) = &self.family {
            let mut family = family.lock().unwrap_or_else(PoisonError::into_inner);
            if let Some(retry_in) = family.wait(now, limit) {
                return Err(ServeError::IdpCeiling {
                    profile: self.profile.name.clone(),
                    limit,
                    retry_in,
                });
            }
            family.push_back(now);
        }
        state.recent.push_back(now);
        let slot = Arc::clone(self);
        // The fetch belongs to the span of whoever started it (a call's server span, or a
        // background refresh's), so its provider request shows as a child of that span.
        let task = tokio::spawn(
            slot.fetch(trigger, rejection, rejected.map(|r| r.fingerprint()))
                .instrument(tracing::Span::current()),
        );
        let flight = async move { task.await.unwrap_or(Err(FlightError::Stopped)) }
            .boxed()
            .shared();
        state.flight = Some(flight.clone());
        Ok(Step::Started(flight))
    }

    /// Asks the provider; `rejection` when a caller reported the current token rejected,
    /// `rejected` the fingerprint of any token a caller reported (this slot may not hold
    /// it, but another replica may have shared it).
    async fn fetch(
        self: Arc<Self>,
        trigger: Trigger,
        rejection: bool,
        rejected: Option<Fingerprint>,
    ) -> FetchResult {
        let sent = Instant::now();
        let request = AssertUnwindSafe(self.source.fetch(rejected)).catch_unwind();
        let outcome = tokio::select! {
            () = self.stop.cancelled() => Err(FlightError::Stopped),
            result = request => match result {
                Ok(Ok(issued)) => CachedToken::new(&self.profile, issued, sent)
                    .map(Arc::new)
                    .map_err(|e| FlightError::Failed(Arc::new(e))),
                Ok(Err(e)) => Err(FlightError::Failed(Arc::new(e))),
                Err(_) => Err(FlightError::Panicked),
            },
        };
        self.finish(outcome, trigger, rejection)
    }

    /// Publishes a fetch's outcome and ends the flight, in one step under the lock.
    fn finish(
        self: &Arc<Self>,
        outcome: FetchResult,
        trigger: Trigger,
        rejection: bool,
    ) -> FetchResult {
        let failure = match &outcome {
            Ok(_) => Some(None),
            Err(FlightError::Failed(error)) => Some(Some(error.kind())),
            Err(FlightError::Panicked) => Some(Some("panicked")),
            Err(FlightError::Stopped) => None,
        };
        if let Some(failure) = failure {
            self.metrics.refreshed(&self.profile.name, trigger, failure);
        }
        let mut state = lock(&self.state);
        state.flight = None;
        match &outcome {
            Ok(token) => {
                self.current.store(Some(token.clone()));
                state.failures = 0;
                state.last_error = None;
                state.retry_at = None;
                state.last_refresh = Some(SystemTime::now());
                state.failing_since = None;
                state.lifetime = Some(token.lifetime);
                // Counted from a replacement that worked: a failed one backs off anyway,
                // and must not keep the next report from trying again.
                if rejection {
                    state.rejection_replaced_at = Some(Instant::now());
                    state.rejection_logged = false;
                }
                if let Some(updates) = self.updates.get() {
                    updates.send_replace(Some(token.clone()));
                }
                drop(state);
                self.reschedule();
                self.counters.token_expires_at(Some(token.expires_at));
                tracing::info!(
                    profile = %self.profile.name,
                    lifetime_s = token.lifetime.as_secs(),
                    "token obtained"
                );
            }
            Err(FlightError::Failed(error)) => {
                state.failures += 1;
                let delay = backoff(self.profile.retry, state.failures)
                    .max(error.retry_after().unwrap_or_default());
                state.retry_at = Some(Instant::now() + delay);
                state.last_error = Some(error.clone());
                state.failing_since.get_or_insert_with(SystemTime::now);
                let failures = state.failures;
                drop(state);
                tracing::warn!(
                    profile = %self.profile.name,
                    %error,
                    failures,
                    retry_in_ms = delay.as_millis() as u64,
                    "token request failed"
                );
            }
            Err(FlightError::Panicked) => {
                // Backing off keeps a bug from turning into a request storm.
                state.failures += 1;
                state.retry_at = Some(Instant::now() + backoff(self.profile.retry, state.failures));
                state.failing_since.get_or_insert_with(SystemTime::now);
                drop(state);
                tracing::error!(profile = %self.profile.name, "token request panicked");
            }
            Err(FlightError::Stopped) => {}
        }
        outcome
    }

    fn serve_error(&self, error: FlightError) -> ServeError {
        match error {
            FlightError::Failed(error) => ServeError::Fetch {
                profile: self.profile.name.clone(),
                error,
            },
            FlightError::Stopped => ServeError::ShuttingDown,
            FlightError::Panicked => ServeError::Internal,
        }
    }

    fn too_short(&self, lifetime: Duration, min_ttl: Duration) -> ServeError {
        ServeError::TooShort {
            profile: self.profile.name.clone(),
            lifetime,
            min_ttl,
        }
    }
}

/// Exponential backoff with jitter: `initial · 2^(failures-1)` capped at `max`, then a
/// random 50–100% of that, so that many slots failing together spread their retries.
fn backoff(retry: Retry, failures: u32) -> Duration {
    let doubled = retry
        .initial
        .saturating_mul(1 << failures.saturating_sub(1).min(20));
    doubled.min(retry.max).mul_f64(0.5 + fastrand::f64() * 0.5)
}

fn lock(state: &Mutex<SlotState>) -> MutexGuard<'_, SlotState> {
    // The state is consistent after every statement that changes it, so a panic elsewhere
    // while it was held leaves nothing half-done.
    state.lock().unwrap_or_else(PoisonError::into_inner)
}

#[cfg(test)]
mod tests;
