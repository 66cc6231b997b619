//! Webhook notices (`server.notices`): a person is told when a profile needs authorizing
//! again, or has failed for `failing_after` without a break. See `docs/notices.md`.
//!
//! - One task scans every slot's status every few seconds ([`TokenCache::health`]) and
//!   compares it with what it saw before ([`Watch`]): the hot path does no work for it.
//! - An episode is a run of failures, from the first to the next success; each episode
//!   gives at most one notice of each kind, and no `failing` one after a
//!   `needs_reauthorization`.
//! - Notices wait in a bounded queue ([`Queue`]); when it is full the oldest is dropped,
//!   and counted, so a flood of failing profiles cannot grow memory.
//! - Another task sends them one at a time: CloudEvents 1.0 JSON, signed as Standard
//!   Webhooks sign, retried with backoff on 5xx, 429, timeouts and connection errors.
//! - With a shared store, a replica claims a notice before sending it (`SET NX` with a
//!   TTL, on a key naming the profile, event and episode), so that one replica sends it.

use std::{
    collections::{HashMap, VecDeque},
    sync::{Arc, Mutex, PoisonError},
    time::{Duration, SystemTime, UNIX_EPOCH},
};

use base64::{Engine as _, engine::general_purpose::STANDARD};
use hmac::{Hmac, Mac as _};
use serde::Serialize;
use sha2::Sha256;
use tokio::sync::Notify;
use tokio_util::{sync::CancellationToken, task::TaskTracker};
use zeroize::Zeroizing;

use crate::{
    cache::{CacheState, Health, TokenCache},
    config::{NoticesConfig, WebhookOrigin},
    metrics::Metrics,
    secret::Secret,
    store::SharedStore,
};

/// What a notice says happened.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub(crate) enum Event {
    /// Only a person can fix the profile: no refresh token yet, or the provider refused it.
    NeedsReauthorization,
    /// The profile has failed for `failing_after` without a break.
    Failing,
}

impl Event {
    /// The metrics' and the claim key's name.
    pub(crate) fn as_str(self) -> &'static str {
        match self {
            Self::NeedsReauthorization => "needs_reauthorization",
            Self::Failing => "failing",
        }
    }

    /// The CloudEvents `type`.
    fn cloud_type(self) -> &'static str {
        match self {
            Self::NeedsReauthorization => "dev.tokenvend.profile.needs_reauthorization.v1",
            Self::Failing => "dev.tokenvend.profile.failing.v1",
        }
    }
}

/// What became of a notice, for `tokenvend_notices_total`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Outcome {
    /// The receiver answered 2xx.
    Sent,
    /// Every attempt failed, or the receiver refused it.
    Failed,
    /// The queue was full: a newer notice took its place.
    Dropped,
    /// Another replica claimed it.
    SkippedOtherReplica,
}

impl Outcome {
    /// The metrics' name.
    pub(crate) fn as_str(self) -> &'static str {
        match self {
            Self::Sent => "sent",
            Self::Failed => "failed",
            Self::Dropped => "dropped",
            Self::SkippedOtherReplica => "skipped_other_replica",
        }
    }
}

/// How many notices wait at most; beyond, the oldest is dropped. Each is a few hundred
/// bytes, and a receiver that is down holds the queue for its retries.
const QUEUE: usize = 256;
/// Delivery attempts per notice, and the pause before the second; it doubles after.
const ATTEMPTS: u32 = 5;
const FIRST_RETRY: Duration = Duration::from_millis(500);
/// The longest pause between attempts, whatever `Retry-After` asks.
const MAX_RETRY: Duration = Duration::from_secs(60);
/// How long a claim on a `needs_reauthorization` notice lasts: its episode is named by
/// the chain's version, which only a person's authorization or a refusal moves.
const REAUTH_CLAIM: Duration = Duration::from_secs(7 * 24 * 3600);
/// The longest `last_error` a notice carries.
const MAX_ERROR: usize = 1024;
/// A key shorter than this is refused: Standard Webhooks secrets are 24 to 64 bytes.
const MIN_KEY: usize = 16;

/// Starts the scan and the sender, both ending with `stop`. `settings` is read at each
/// scan, so that a reload that changes `server.notices` (or turns it off) takes effect.
pub(crate) fn spawn(
    cache: Arc<TokenCache>,
    settings: impl Fn() -> Option<NoticesConfig> + Send + Sync + 'static,
    store: Option<SharedStore>,
    metrics: Metrics,
    stop: CancellationToken,
    tasks: &TaskTracker,
) -> Result<(), reqwest::Error> {
    let http = reqwest::Client::builder()
        // A receiver that redirects is misconfigured; following could send the signed
        // body somewhere else.
        .redirect(reqwest::redirect::Policy::none())
        .user_agent(concat!("tokenvend/", env!("CARGO_PKG_VERSION")))
        .build()?;
    let queue = Arc::new(Queue::new(QUEUE, metrics.clone()));
    let settings = Arc::new(settings);
    tasks.spawn(scan(cache, settings.clone(), queue.clone(), stop.clone()));
    tasks.spawn(send(http, settings, store, queue, metrics, stop));
    Ok(())
}

/// How often statuses are compared: a fraction of `failing_after`, so that a notice comes
/// close to on time, but at most every 250 ms and at least every 5 s.
fn scan_interval(failing_after: Duration) -> Duration {
    (failing_after / 4).clamp(Duration::from_millis(250), Duration::from_secs(5))
}

async fn scan(
    cache: Arc<TokenCache>,
    settings: Arc<impl Fn() -> Option<NoticesConfig>>,
    queue: Arc<Queue>,
    stop: CancellationToken,
) {
    let mut watch = Watch::default();
    loop {
        let config = settings();
        let interval = config
            .as_ref()
            .map_or(Duration::from_secs(5), |c| scan_interval(c.failing_after));
        if let Some(config) = config {
            let now = SystemTime::now();
            for (event, health) in watch.scan(cache.health().await, now, config.failing_after) {
                queue.push(Notice::new(event, &health, &config.source, now));
            }
        }
        tokio::select! {
            () = stop.cancelled() => return,
            () = tokio::time::sleep(interval) => {}
        }
    }
}

/// What the scan saw of each profile (and connection) last time.
#[derive(Default)]
struct Watch {
    seen: HashMap<(Arc<str>, Option<String>), Seen>,
}

#[derive(Default)]
struct Seen {
    /// The `failing_since` of the episode the flags are about.
    since: Option<SystemTime>,
    reauthorization_noticed: bool,
    failing_noticed: bool,
}

impl Watch {
    /// The notices due now. A new episode is one whose `failing_since` differs from the
    /// last seen: a success in between clears it, so even a recovery and a new failure
    /// between two scans count as a new episode.
    fn scan(
        &mut self,
        health: Vec<Health>,
        now: SystemTime,
        failing_after: Duration,
    ) -> Vec<(Event, Health)> {
        let mut due = Vec::new();
        let mut seen = HashMap::with_capacity(health.len());
        for item in health {
            let key = (item.profile.clone(), item.subject.clone());
            let mut entry = self.seen.remove(&key).unwrap_or_default();
            let status = &item.status;
            if entry.since != status.failing_since {
                entry = Seen {
                    since: status.failing_since,
                    ..Seen::default()
                };
            }
            let reauthorization = status.needs_authorization && !entry.reauthorization_noticed;
            entry.reauthorization_noticed |= reauthorization;
            // An episode already announced as needing a person is not announced again as
            // failing: that notice said what to do. The other way round, both are sent.
            let failing = !entry.failing_noticed
                && !entry.reauthorization_noticed
                && status.failing_since.is_some_and(|since| {
                    now.duration_since(since).unwrap_or_default() >= failing_after
                });
            entry.failing_noticed |= failing;
            seen.insert(key, entry);
            if reauthorization {
                due.push((Event::NeedsReauthorization, item));
            } else if failing {
                due.push((Event::Failing, item));
            }
        }
        // Profiles no longer configured are forgotten.
        self.seen = seen;
        due
    }
}

/// One notice, ready to send: its body is fixed, so that every attempt sends the same.
struct Notice {
    event: Event,
    profile: Arc<str>,
    /// A connection's keyed digest: what logs and claim keys name it by.
    connection: Option<String>,
    /// When the episode began: names it for the `failing` claim.
    since: Option<SystemTime>,
    id: String,
    body: Vec<u8>,
}

#[derive(Serialize)]
struct CloudEvent<'a> {
    specversion: &'static str,
    id: &'a str,
    source: &'a str,
    #[serde(rename = "type")]
    kind: &'static str,
    time: String,
    subject: String,
    datacontenttype: &'static str,
    data: Data<'a>,
}

#[derive(Serialize)]
struct Data<'a> {
    profile: &'a str,
    #[serde(skip_serializing_if = "Option::is_none")]
    subject: Option<&'a str>,
    state: &'static str,
    since: Option<String>,
    last_error: Option<&'a str>,
}

fn state_name(state: CacheState) -> &'static str {
    match state {
        CacheState::Empty => "empty",
        CacheState::Valid => "valid",
        CacheState::Stale => "stale",
        CacheState::Failed => "failed",
        CacheState::NeedsAuthorization => "needs_authorization",
    }
}

fn rfc3339(time: SystemTime) -> String {
    humantime::format_rfc3339_millis(time).to_string()
}

impl Notice {
    fn new(event: Event, health: &Health, source: &str, now: SystemTime) -> Self {
        let id = new_id();
        let status = &health.status;
        // `last_error` is what ListProfiles shows: the provider's answer already cleaned
        // and cut short, never a token or a secret. Cut again here, on a char boundary.
        let last_error = status.last_error.as_deref().map(|e| {
            let mut end = e.len().min(MAX_ERROR);
            while !e.is_char_boundary(end) {
                end -= 1;
            }
            &e[..end]
        });
        let event_body = CloudEvent {
            specversion: "1.0",
            id: &id,
            source,
            kind: event.cloud_type(),
            time: rfc3339(now),
            subject: match &health.subject {
                None => health.profile.to_string(),
                Some(subject) => format!("{}/{subject}", health.profile),
            },
            datacontenttype: "application/json",
            data: Data {
                profile: &health.profile,
                subject: health.subject.as_deref(),
                state: state_name(status.state),
                since: status.failing_since.map(rfc3339),
                last_error,
            },
        };
        let body = serde_json::to_vec(&event_body).unwrap_or_default();
        Self {
            event,
            profile: health.profile.clone(),
            connection: health.connection.clone(),
            since: status.failing_since,
            id,
            body,
        }
    }

    /// The claim keys that make one replica its sender, and how long they are held.
    ///
    /// - `needs_reauthorization` of a profile: the episode is the chain's version in the
    ///   store, which every replica reads alike, and which moves only when a person
    ///   authorizes again or a refresh token is refused.
    /// - `failing` (and connections, which have no single chain key here): the episode is
    ///   the window of `failing_after` its run of failures began in. Replicas begin to fail
    ///   at slightly different times, so the claim takes that window and the next together
    ///   and fails if either is taken: two replicas whose failures began less than
    ///   `failing_after` apart always meet on a key.
    async fn claim_keys(
        &self,
        store: &SharedStore,
        failing_after: Duration,
    ) -> Result<(Vec<String>, Duration), crate::store::StoreError> {
        let who = match &self.connection {
            None => self.profile.to_string(),
            Some(connection) => format!("{}:{connection}", self.profile),
        };
        let event = self.event.as_str();
        if self.event == Event::NeedsReauthorization && self.connection.is_none() {
            let version = store.chain_version(&self.profile).await?;
            return Ok((
                vec![store.notice_key(&format!("{who}:{event}:v{version}"))],
                REAUTH_CLAIM,
            ));
        }
        let window = failing_after.as_millis().max(1) as u64;
        let since = self.since.map_or(0, |s| {
            s.duration_since(UNIX_EPOCH).unwrap_or_default().as_millis() as u64
        });
        let bucket = since / window;
        let keys = [bucket, bucket + 1]
            .iter()
            .map(|b| store.notice_key(&format!("{who}:{event}:w{b}")))
            .collect();
        Ok((keys, (failing_after * 3).max(Duration::from_secs(60))))
    }
}

/// 16 random bytes in hex, prefixed: unique per notice, the same across its retries.
fn new_id() -> String {
    let mut bytes = [0u8; 16];
    getrandom::fill(&mut bytes).unwrap_or_else(|_| bytes.fill_with(|| fastrand::u8(..)));
    let hex: String = bytes.iter().map(|b| format!("{b:02x}")).collect();
    format!("ntc_{hex}")
}

/// Why the signing secret cannot be used. Never includes the secret.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub(crate) enum KeyError {
    /// `whsec_` followed by something that is not base64.
    #[error("starts with `whsec_` but the rest is not base64")]
    NotBase64,
    /// Too short to resist guessing.
    #[error(
        "the key is {0} bytes; use at least {MIN_KEY} (e.g. `whsec_` and the base64 of 32 random bytes)"
    )]
    TooShort(usize),
}

/// The HMAC key a secret stands for: after `whsec_`, the base64 of the key (as Standard
/// Webhooks libraries take it); otherwise the secret's bytes as they are.
pub(crate) fn signing_key(secret: &Secret) -> Result<Zeroizing<Vec<u8>>, KeyError> {
    let text = secret.expose();
    let key = Zeroizing::new(match text.strip_prefix("whsec_") {
        Some(encoded) => STANDARD.decode(encoded).map_err(|_| KeyError::NotBase64)?,
        None => text.as_bytes().to_vec(),
    });
    if key.len() < MIN_KEY {
        return Err(KeyError::TooShort(key.len()));
    }
    Ok(key)
}

/// The `webhook-signature` header: `v1,` and the base64 of HMAC-SHA256 over
/// `id.timestamp.body`.
pub(crate) fn sign(key: &[u8], id: &str, timestamp: u64, body: &[u8]) -> String {
    // HMAC takes a key of any length.
    let mut mac = Hmac::<Sha256>::new_from_slice(key).unwrap_or_else(|_| unreachable!());
    mac.update(id.as_bytes());
    mac.update(b".");
    mac.update(timestamp.to_string().as_bytes());
    mac.update(b".");
    mac.update(body);
    format!("v1,{}", STANDARD.encode(mac.finalize().into_bytes()))
}

/// Notices waiting to be sent, oldest first, at most `capacity` of them.
struct Queue {
    items: Mutex<VecDeque<Notice>>,
    ready: Notify,
    capacity: usize,
    metrics: Metrics,
}

impl Queue {
    fn new(capacity: usize, metrics: Metrics) -> Self {
        Self {
            items: Mutex::new(VecDeque::with_capacity(capacity.min(16))),
            ready: Notify::new(),
            capacity,
            metrics,
        }
    }

    fn push(&self, notice: Notice) {
        let dropped = {
            let mut items = self.items.lock().unwrap_or_else(PoisonError::into_inner);
            let dropped = (items.len() >= self.capacity)
                .then(|| items.pop_front())
                .flatten();
            items.push_back(notice);
            dropped
        };
        self.ready.notify_one();
        if let Some(dropped) = dropped {
            self.metrics
                .notice(dropped.event.as_str(), Outcome::Dropped.as_str());
            tracing::warn!(
                profile = %dropped.profile,
                connection = dropped.connection.as_deref(),
                event = dropped.event.as_str(),
                id = %dropped.id,
                "notice dropped: too many waiting to be sent"
            );
        }
    }

    async fn pop(&self) -> Notice {
        loop {
            let ready = self.ready.notified();
            if let Some(notice) = self
                .items
                .lock()
                .unwrap_or_else(PoisonError::into_inner)
                .pop_front()
            {
                return notice;
            }
            ready.await;
        }
    }
}

async fn send(
    http: reqwest::Client,
    settings: Arc<impl Fn() -> Option<NoticesConfig>>,
    store: Option<SharedStore>,
    queue: Arc<Queue>,
    metrics: Metrics,
    stop: CancellationToken,
) {
    loop {
        let notice = tokio::select! {
            () = stop.cancelled() => return,
            notice = queue.pop() => notice,
        };
        // Read now: a reload may have changed the receiver or turned notices off.
        let Some(config) = settings() else { continue };
        let outcome = tokio::select! {
            () = stop.cancelled() => return,
            outcome = handle(&http, &config, store.as_ref(), &notice) => outcome,
        };
        metrics.notice(notice.event.as_str(), outcome.as_str());
    }
}

/// Claims the notice if replicas share a store, then delivers it.
async fn handle(
    http: &reqwest::Client,
    config: &NoticesConfig,
    store: Option<&SharedStore>,
    notice: &Notice,
) -> Outcome {
    if let Some(store) = store {
        let claimed = match notice.claim_keys(store, config.failing_after).await {
            Ok((keys, ttl)) => store.claim(&keys, ttl).await,
            Err(error) => Err(error),
        };
        match claimed {
            Ok(true) => {}
            Ok(false) => {
                tracing::debug!(
                    profile = %notice.profile,
                    connection = notice.connection.as_deref(),
                    event = notice.event.as_str(),
                    "notice left to the replica that claimed it"
                );
                return Outcome::SkippedOtherReplica;
            }
            // Better twice than never: receivers can tell a repeat by the episode.
            Err(error) => tracing::warn!(
                %error,
                profile = %notice.profile,
                event = notice.event.as_str(),
                "cannot claim the notice in the shared store; this replica sends it anyway"
            ),
        }
    }
    match deliver(http, config, notice).await {
        Ok((status, attempts)) => {
            tracing::info!(
                profile = %notice.profile,
                connection = notice.connection.as_deref(),
                event = notice.event.as_str(),
                id = %notice.id,
                webhook = %WebhookOrigin(&config.webhook),
                status,
                attempts,
                "notice sent"
            );
            Outcome::Sent
        }
        Err((reason, attempts)) => {
            tracing::warn!(
                profile = %notice.profile,
                connection = notice.connection.as_deref(),
                event = notice.event.as_str(),
                id = %notice.id,
                webhook = %WebhookOrigin(&config.webhook),
                %reason,
                attempts,
                "notice not delivered"
            );
            Outcome::Failed
        }
    }
}

/// Sends the notice until the receiver takes it, refuses it, or the attempts run out:
/// the status and the attempts made, or why it failed.
async fn deliver(
    http: &reqwest::Client,
    config: &NoticesConfig,
    notice: &Notice,
) -> Result<(u16, u32), (String, u32)> {
    let mut reason = String::new();
    for attempt in 1..=ATTEMPTS {
        // Read at each attempt, so that a rotated secret is used at once.
        let key = config
            .secret
            .load()
            .map_err(|e| e.to_string())
            .and_then(|s| signing_key(&s).map_err(|e| e.to_string()))
            .map_err(|e| (format!("server.notices.secret: {e}"), attempt - 1))?;
        let timestamp = SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .unwrap_or_default()
            .as_secs();
        let signature = sign(&key, &notice.id, timestamp, &notice.body);
        drop(key);
        let sent = http
            .post(config.webhook.clone())
            .timeout(config.timeout)
            .header("content-type", "application/cloudevents+json")
            .header("webhook-id", &notice.id)
            .header("webhook-timestamp", timestamp.to_string())
            .header("webhook-signature", signature)
            .body(notice.body.clone())
            .send()
            .await;
        // The answer's body is never read: nothing in it matters, and a receiver could
        // make it as large as it likes.
        let mut wait = None;
        match sent {
            Ok(response) if response.status().is_success() => {
                return Ok((response.status().as_u16(), attempt));
            }
            Ok(response) => {
                let status = response.status();
                reason = format!("HTTP {}", status.as_u16());
                if status.is_redirection() {
                    reason.push_str(" (redirects are not followed)");
                }
                if !(status.is_server_error() || status.as_u16() == 429) {
                    return Err((reason, attempt));
                }
                wait = response
                    .headers()
                    .get("retry-after")
                    .and_then(|v| v.to_str().ok())
                    .and_then(|v| v.trim().parse::<u64>().ok())
                    .map(Duration::from_secs);
            }
            // Without the URL: it may carry the receiver's credential.
            Err(error) => reason = error.without_url().to_string(),
        }
        if attempt == ATTEMPTS {
            break;
        }
        let backoff = FIRST_RETRY * 2_u32.pow(attempt - 1);
        let jitter = backoff.mul_f64(fastrand::f64() * 0.25);
        tokio::time::sleep(wait.unwrap_or(backoff + jitter).min(MAX_RETRY)).await;
    }
    Err((reason, ATTEMPTS))
}

#[cfg(test)]
mod tests;
