//! The refresher: one task per slot that replaces the token before it expires, and retries
//! with backoff while the provider fails, so that after warm-up no caller waits.

use std::{sync::Arc, time::Duration};

use tokio::{
    sync::Semaphore,
    time::{Instant, sleep_until},
};
use tracing::Instrument as _;
use tracing_opentelemetry::OpenTelemetrySpanExt as _;

use super::{Slot, Step, lock};
use crate::{config::Grant, metrics::Trigger};

/// Runs until the slot is retired (by a reload, or at shutdown). A refresh waits for one
/// of the `permits` shared by all profiles.
pub(super) async fn run(slot: Arc<Slot>, permits: Arc<Semaphore>) {
    let mut updates = slot.subscribe();
    loop {
        let wake = next_refresh(&slot);
        tokio::select! {
            () = slot.retired.cancelled() => return,
            () = sleep_until(wake.unwrap_or_else(Instant::now)), if wake.is_some() => {
                let _permit = tokio::select! {
                    () = slot.retired.cancelled() => return,
                    permit = permits.acquire() => permit,
                };
                let span = refresh_span(&slot);
                refresh_due(&slot).instrument(span).await;
            }
            changed = updates.changed() => if changed.is_err() { return },
        }
    }
}

/// When the slot next needs a request: at the token's refresh time, or after the backoff
/// of a failure. `None` while nobody has asked for the profile (unless it warms up).
fn next_refresh(slot: &Slot) -> Option<Instant> {
    let state = lock(&slot.state);
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
            span.add_link(previous);
        }
        state.refresh_span = Some(
            opentelemetry::trace::TraceContextExt::span(&span.context())
                .span_context()
                .clone(),
        );
    }
    span
}

async fn refresh_due(slot: &Arc<Slot>) {
    let idle_limit =
        (slot.profile.grant == Grant::RefreshToken).then_some(slot.profile.idle_refresh);
    let fresh = |token: &super::CachedToken, now: Instant| {
        now < token.refresh_at && idle_limit.is_none_or(|limit| now < token.issued + limit)
    };
    match slot.join_or_start(fresh, Duration::ZERO, Trigger::Background) {
        Ok(Step::Started(flight) | Step::Joined(flight)) => {
            // The outcome is published and logged by the fetch itself.
            let _ = flight.await;
        }
        // A new token arrived meanwhile, or a backoff is running: the loop recomputes.
        Ok(Step::Ready(_)) | Err(_) => {}
    }
}
