//! The refresher: replaces each slot's token before it expires, and retries with backoff
//! while the provider fails, so that after warm-up no caller waits.
//!
//! One task keeps a timetable of all slots and starts a short-lived task for each refresh
//! that falls due. A task per slot, asleep until its refresh time, would do the same, but
//! at 10,000 profiles its sleeping tasks alone held 5 MB; a timetable entry is 32 bytes.

use std::{
    cmp::Reverse,
    collections::BinaryHeap,
    sync::{
        Arc, Weak,
        atomic::{AtomicU64, Ordering},
    },
    time::Duration,
};

use tokio::{
    sync::{Semaphore, mpsc},
    time::{Instant, sleep_until},
};
use tokio_util::sync::CancellationToken;
use tracing::Instrument as _;
use tracing_opentelemetry::OpenTelemetrySpanExt as _;

use super::{Slot, Step, lock};
use crate::{config::Grant, metrics::Trigger};

/// Where a slot asks to have its next refresh worked out again.
pub(super) type Wakes = mpsc::UnboundedSender<Weak<Slot>>;

/// A slot's place in the timetable, ordered by time (and by id between equal times). The
/// slot's `scheduled` id tells whether it is still the slot's current place: a slot
/// rescheduled since has a newer one, and the old one is skipped.
struct Entry {
    at: Instant,
    id: u64,
    slot: Weak<Slot>,
}

impl Entry {
    fn key(&self) -> (Instant, u64) {
        (self.at, self.id)
    }
}

impl PartialEq for Entry {
    fn eq(&self, other: &Self) -> bool {
        self.key() == other.key()
    }
}
impl Eq for Entry {}
impl PartialOrd for Entry {
    fn partial_cmp(&self, other: &Self) -> Option<std::cmp::Ordering> {
        Some(self.cmp(other))
    }
}
impl Ord for Entry {
    fn cmp(&self, other: &Self) -> std::cmp::Ordering {
        self.key().cmp(&other.key())
    }
}

/// A slot's part in the timetable: the id of its current entry.
#[derive(Debug, Default)]
pub(super) struct Scheduled(AtomicU64);

/// Runs until `stop`: keeps the timetable, and starts each refresh that falls due once one
/// of the `permits` shared by all profiles is free.
pub(super) async fn run(
    mut wakes: mpsc::UnboundedReceiver<Weak<Slot>>,
    permits: Arc<Semaphore>,
    stop: CancellationToken,
) {
    let mut timetable = BinaryHeap::<Reverse<Entry>>::new();
    let mut ids = 0_u64;
    loop {
        let next = timetable.peek().map(|Reverse(e)| e.at);
        tokio::select! {
            biased;
            () = stop.cancelled() => return,
            woken = wakes.recv() => {
                let Some(slot) = woken.as_ref().and_then(Weak::upgrade) else {
                    if woken.is_none() {
                        return;
                    }
                    continue;
                };
                ids += 1;
                schedule(&mut timetable, &slot, ids);
            }
            () = sleep_until(next.unwrap_or_else(Instant::now)), if next.is_some() => {
                let Some(Reverse(entry)) = timetable.pop() else { continue };
                let Some(slot) = entry.slot.upgrade() else { continue };
                if slot.scheduled.0.load(Ordering::Relaxed) != entry.id || slot.is_retired() {
                    continue;
                }
                // Worked out again: the slot may have changed since the entry was made.
                match next_refresh(&slot) {
                    None => continue,
                    Some(at) if at > Instant::now() => {
                        timetable.push(Reverse(Entry { at, ..entry }));
                        continue;
                    }
                    Some(_) => {}
                }
                let permit = tokio::select! {
                    () = stop.cancelled() => return,
                    permit = permits.clone().acquire_owned() => match permit {
                        Ok(permit) => permit,
                        Err(_) => return,
                    },
                };
                if slot.is_retired() {
                    continue;
                }
                tokio::spawn(async move {
                    let span = refresh_span(&slot);
                    refresh_due(&slot).instrument(span).await;
                    drop(permit);
                    slot.reschedule();
                });
            }
        }
    }
}

/// Enters a slot in the timetable at its next refresh, replacing its previous entry.
fn schedule(timetable: &mut BinaryHeap<Reverse<Entry>>, slot: &Arc<Slot>, id: u64) {
    if slot.is_retired() {
        return;
    }
    slot.scheduled.0.store(id, Ordering::Relaxed);
    if let Some(at) = next_refresh(slot) {
        timetable.push(Reverse(Entry {
            at,
            id,
            slot: Arc::downgrade(slot),
        }));
    }
}

/// When the slot next needs a request: at the token's refresh time, or after the backoff
/// of a failure. `None` while nobody has asked for the profile (unless it warms up).
fn next_refresh(slot: &Slot) -> Option<Instant> {
    // A template profile's own slot has no chain: only its connections (which have a
    // family, the profile's request ceiling) are refreshed.
    if slot.profile.template && slot.family.is_none() {
        return None;
    }
    let state = lock(&slot.state);
    // A connection a person must authorize (again) is not retried in the background:
    // nothing changes until they do, and then the connection is made afresh. A caller's
    // call still asks, after the backoff.
    if slot.profile.template
        && state
            .last_error
            .as_ref()
            .is_some_and(|error| !error.is_transient())
    {
        return None;
    }
    // A refresh-token profile is always kept warm: its chain must be exercised, or the
    // provider may revoke the idle refresh token.
    let chained = slot.profile.grant == Grant::RefreshToken;
    let due = match slot.current.load().as_ref() {
        Some(token) if chained => token
            .refresh_at
            .min(token.issued + slot.profile.idle_refresh),
        Some(token) => token.refresh_at,
        None if chained || slot.profile.warm_up || state.last_error.is_some() => Instant::now(),
        None => return None,
    };
    let due = state.retry_at.map_or(due, |retry_at| retry_at.max(due));
    let ceiling = state.ceiling_free_at(slot.profile.idp_requests_per_minute);
    Some(ceiling.map_or(due, |free| free.max(due)))
}

/// A background refresh is a trace of its own (no caller waits on it), linked to the
/// previous refresh of the same profile.
fn refresh_span(slot: &Slot) -> tracing::Span {
    let span = tracing::info_span!(
        target: "tokenvend::refresh",
        parent: None,
        "tokenvend.refresh",
        tokenvend.profile = %slot.profile.name,
        tokenvend.trigger = "background",
    );
    if !span.is_disabled() {
        let mut state = lock(&slot.state);
        if let Some(previous) = state.refresh_span.take() {
            span.add_link(*previous);
        }
        state.refresh_span = Some(Box::new(
            opentelemetry::trace::TraceContextExt::span(&span.context())
                .span_context()
                .clone(),
        ));
    }
    span
}

async fn refresh_due(slot: &Arc<Slot>) {
    let idle_limit =
        (slot.profile.grant == Grant::RefreshToken).then_some(slot.profile.idle_refresh);
    let fresh = |token: &super::CachedToken, now: Instant| {
        now < token.refresh_at && idle_limit.is_none_or(|limit| now < token.issued + limit)
    };
    match slot.join_or_start(fresh, Duration::ZERO, None, Trigger::Background) {
        Ok(Step::Started(flight) | Step::Joined(flight)) => {
            // The outcome is published and logged by the fetch itself.
            let _ = flight.await;
        }
        // A new token arrived meanwhile, or a backoff is running: rescheduling works out
        // when to come back.
        Ok(Step::Ready(_) | Step::Held { .. }) | Err(_) => {}
    }
}
