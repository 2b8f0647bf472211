//! Claims: entries handed back at another consumer's shutdown, entries of silent consumers
//! (after the visibility timeout), handing back at shutdown, and the schedule that runs them.

use std::sync::Arc;
use std::time::Duration;

use tokio::sync::Semaphore;
use tokio::time::Instant;

use super::Shared;
use crate::error::{TransportError, TransportErrorKind};
use crate::telemetry::{Path, Stats};
use crate::transport::stream::TrimWatch;

impl Shared {
    /// Takes entries another consumer handed back at shutdown (never started there): claimed
    /// with `XCLAIM ... JUSTID` (no delivery counted) from the hand-back pseudo-consumer, then
    /// read with `XRANGE`. They are not suspects. `min-idle` guards against two consumers
    /// taking the same entry: the first claim resets its idle time.
    pub(super) async fn take_handed_back(
        self: &Arc<Self>,
    ) -> std::result::Result<(), TransportError> {
        let room = self
            .window_capacity()
            .saturating_sub(self.inflight.lock().map(|s| s.len()).unwrap_or(0));
        if room == 0 {
            return Ok(());
        }
        let ids = self
            .stream
            .handed_back(room.min(self.config.batch_size))
            .await?;
        if ids.is_empty() {
            return Ok(());
        }
        let claimed = self
            .stream
            .take(&ids, Duration::from_millis(HANDBACK_MIN_IDLE_MS))
            .await?;
        if claimed.is_empty() {
            return Ok(());
        }
        // Trimmed or deleted meanwhile: an entry without fields is acked away as lost.
        let entries = self.stream.entries(&claimed).await?;
        Stats::add(&self.stats.taken_over, entries.len() as u64);
        tracing::info!(
            handler = self.handler.name,
            entries = entries.len(),
            "took over entries another consumer handed back at shutdown"
        );
        let entries = self.redelivered(entries).await;
        self.dispatch(entries, None, false);
        Ok(())
    }

    /// Hands the entries shutdown kept from starting back to the group: claimed to the hand-back
    /// pseudo-consumer with a long idle time (`XCLAIM ... IDLE ... JUSTID`: no delivery
    /// counted), so another consumer takes them at its next check instead of waiting for the
    /// visibility timeout, and runs them without suspicion.
    pub(super) async fn hand_back(&self) {
        let all: Vec<String> = match self.handback.lock() {
            Ok(mut h) => std::mem::take(&mut *h),
            Err(_) => return,
        };
        if all.is_empty() {
            return;
        }
        self.hand_back_owned(&all).await;
        if let Ok(mut s) = self.inflight.lock() {
            for id in &all {
                s.remove(id);
            }
        }
    }

    /// The `XCLAIM` of [`hand_back`](Self::hand_back), for the ids still owned here.
    pub(super) async fn hand_back_owned(&self, ids: &[String]) {
        // Only what this consumer still owns: an entry another consumer claimed meanwhile (after
        // a freeze) is theirs, maybe running.
        let ids = match self.still_owned(ids).await {
            Some(owned) if !owned.is_empty() => owned,
            _ => return,
        };
        // Biased: once the drain is abandoned (or the process "crashed" in a test bus), nothing
        // more is handed back.
        let r = tokio::select! {
            biased;
            () = self.runner.abort.cancelled() => Err(TransportError::new(
                TransportErrorKind::Closed,
                "drain timeout passed",
            )),
            r = self.stream.hand_back(&ids, Duration::from_millis(HANDBACK_IDLE_MS)) => r,
        };
        match r {
            Ok(moved) => {
                Stats::add(&self.stats.handed_back, moved as u64);
                tracing::info!(
                    handler = self.handler.name,
                    entries = moved,
                    "handed prefetched entries back to the group at shutdown"
                );
            }
            Err(e) => tracing::warn!(
                handler = self.handler.name,
                entries = ids.len(),
                error = %e,
                "cannot hand prefetched entries back; they stay pending and are claimed after the visibility timeout"
            ),
        }
    }

    /// Of `ids`, the ones still pending for this consumer; `None` when XPENDING failed.
    pub(super) async fn still_owned(&self, ids: &[String]) -> Option<Vec<String>> {
        if ids.is_empty() {
            return None;
        }
        let owned = tokio::select! {
            biased;
            () = self.runner.abort.cancelled() => return None,
            r = self.stream.owned(ids, self.window_capacity()) => r.ok()?,
        };
        Some(
            ids.iter()
                .filter(|id| owned.contains(*id))
                .cloned()
                .collect(),
        )
    }

    /// Claims entries that other (silent) consumers left pending longer than the visibility
    /// timeout, and drops entries that were deleted or trimmed while pending.
    pub(super) async fn claim_abandoned(
        self: &Arc<Self>,
    ) -> std::result::Result<(), TransportError> {
        let shared = self;
        let config = &shared.config;
        let min_idle = config.visibility_timeout;
        let mut cursor = "0-0".to_owned();
        // Claims come before new reads, even when every run slot is busy: the oldest work of a
        // dead consumer must not wait behind new work. One page per cycle when the window is
        // full (bounded memory), more while it has room.
        for page in 0..16 {
            if page > 0 && shared.window.available_permits() < config.batch_size {
                break;
            }
            // Bounded: at most one page of claims beyond the prefetch window is held here.
            let held = shared.inflight.lock().map(|s| s.len()).unwrap_or(0);
            if held >= shared.window_capacity() {
                break;
            }
            let reply = shared
                .stream
                .autoclaim(min_idle, &cursor, config.batch_size)
                .await?;
            if !reply.deleted.is_empty() {
                Stats::add(&shared.stats.lost_entries, reply.deleted.len() as u64);
                tracing::warn!(
                    handler = self.handler.name,
                    lost = reply.deleted.len(),
                    "pending entries were deleted or trimmed from the stream before they were handled; they are lost"
                );
                let deleted: Vec<&str> = reply.deleted.iter().map(String::as_str).collect();
                let _ = shared.stream.ack(&deleted, &[]).await;
            }
            if !reply.entries.is_empty() {
                Stats::add(&shared.stats.claimed, reply.entries.len() as u64);
                tracing::info!(
                    handler = self.handler.name,
                    claimed = reply.entries.len(),
                    "claimed entries of a silent consumer"
                );
                let claimed = self.redelivered(reply.entries).await;
                // Their consumer went silent: any of them may have been running when it died.
                self.dispatch(claimed, None, true);
            }
            if reply.next == "0-0" || reply.next.is_empty() {
                break;
            }
            cursor = reply.next;
        }
        Ok(())
    }
}

/// The idle time given to handed-back entries: enough for a take-over claim, far below the
/// visibility timeout's floor (100 ms), so `XAUTOCLAIM` does not take them as a silent
/// consumer's entries (suspects) before a take-over check (every 500 ms at most) does.
const HANDBACK_IDLE_MS: u64 = 50;
/// The `min-idle` of a take-over claim: after the first consumer's claim an entry's idle time
/// restarts at 0, so a second consumer's claim in the same moment finds nothing to take.
const HANDBACK_MIN_IDLE_MS: u64 = 50;

/// Renews the leases of this reader's entries every third of the visibility timeout, and claims
/// silent consumers' entries every claim interval (until shutdown starts). Runs until shutdown
/// has begun and nothing is in flight any more, or until the drain is abandoned.
pub(super) async fn maintain(shared: Arc<Shared>) {
    let config = shared.config.clone();
    let lease_interval = (config.visibility_timeout / 3).max(Duration::from_millis(10));
    let mut next_lease = Instant::now() + lease_interval;
    let mut next_claim = Instant::now();
    // Entries handed back at another consumer's shutdown are looked for more often than silent
    // consumers' entries: they are known not to have started, and take one XPENDING to find.
    let takeover_interval = config.claim_interval.min(Duration::from_millis(500));
    let mut next_takeover = Instant::now();
    let mut trim_watch = TrimWatch::default();
    // While claims fail (an ACL edit, Redis down), both schedules back off up to 5 s: no storm.
    let mut failing_for = 0u32;
    let backoff = |interval: Duration, failures: u32| {
        if failures == 0 {
            interval
        } else {
            interval
                .saturating_mul(2u32.saturating_pow(failures.min(16)))
                .clamp(Duration::from_millis(500), Duration::from_secs(5))
                .max(interval)
        }
    };
    loop {
        let now = Instant::now();
        if now >= next_lease {
            shared.renew_leases().await;
            next_lease = Instant::now() + lease_interval;
        }
        if now >= next_takeover && !shared.cancel.is_cancelled() {
            if let Err(e) = shared.take_handed_back().await {
                shared.claim_failed(&e);
                failing_for = failing_for.saturating_add(1);
            }
            next_takeover = Instant::now() + backoff(takeover_interval, failing_for);
        }
        if now >= next_claim && !shared.cancel.is_cancelled() {
            // Entries trimmed before this group read them (health `trimmed_unread`).
            shared
                .stream
                .check_trimmed(&mut trim_watch, &shared.stats)
                .await;
            if shared.first_trim_check.available_permits() == 0 {
                shared
                    .first_trim_check
                    .add_permits(Semaphore::MAX_PERMITS / 2);
            }
            match shared.claim_abandoned().await {
                Ok(()) => {
                    shared.stats.clear(Path::Claim);
                    failing_for = 0;
                }
                Err(e) => {
                    shared.claim_failed(&e);
                    failing_for = failing_for.saturating_add(1);
                }
            }
            next_claim = Instant::now() + backoff(config.claim_interval, failing_for);
        }
        if shared.cancel.is_cancelled() {
            shared.hand_back().await;
        }
        let idle = shared.inflight.lock().map(|s| s.is_empty()).unwrap_or(true);
        let reader_done = shared
            .reader_done
            .load(std::sync::atomic::Ordering::Acquire);
        if shared.cancel.is_cancelled() && idle && reader_done {
            shared.leave_group().await;
            return;
        }
        let wake = if shared.cancel.is_cancelled() {
            next_lease
        } else {
            next_lease.min(next_claim).min(next_takeover)
        };
        tokio::select! {
            () = tokio::time::sleep_until(wake.min(Instant::now() + Duration::from_millis(100))) => {}
            () = shared.runner.abort.cancelled() => return,
        }
    }
}
