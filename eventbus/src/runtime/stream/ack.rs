//! Acks, batched: one `XACK` in flight per reader, the next batch queued behind it.

use std::collections::HashSet;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use tokio::sync::{OwnedSemaphorePermit, mpsc};
use tokio_util::sync::CancellationToken;

use crate::error::{TransportError, TransportErrorKind};
use crate::telemetry::{Path, Stats};
use crate::transport::stream::Stream;

/// One settled entry on its way to the ack batcher.
pub(super) struct Settled {
    pub(super) id: String,
    /// Its prefetch-window permit, released (dropped) once the ack lands.
    pub(super) _window: Option<OwnedSemaphorePermit>,
    /// Whether its attempts hash field exists and must be deleted with the ack.
    pub(super) marked: bool,
}

/// Sends the acks of one reader: entries queue up while an XACK is in flight and go out together
/// in the next one, so a busy reader acks in batches and an idle one at once (no timer, no
/// added latency). Charged entries' attempts fields are deleted in the same round trip. An
/// entry's window permit is released only when its ack lands: while acks fail, the reader stops
/// taking new entries (the entries at risk of a second run stay bounded by the window). Ends,
/// after sending everything queued, when the reader and all its runs are done.
pub(super) async fn ack_loop(
    mut rx: mpsc::UnboundedReceiver<Settled>,
    stream: Stream,
    inflight: Arc<Mutex<HashSet<String>>>,
    stats: Arc<Stats>,
    abort: CancellationToken,
) {
    const MAX_BATCH: usize = 1000;
    let group = stream.group;
    let mut batch: Vec<Settled> = Vec::with_capacity(64);
    while let Some(first) = rx.recv().await {
        batch.push(first);
        while batch.len() < MAX_BATCH {
            match rx.try_recv() {
                Ok(settled) => batch.push(settled),
                Err(_) => break,
            }
        }
        // Borrowed from the batch: no id is copied.
        let ids: Vec<&str> = batch.iter().map(|s| s.id.as_str()).collect();
        let marked: Vec<&str> = batch
            .iter()
            .filter(|s| s.marked)
            .map(|s| s.id.as_str())
            .collect();
        // XACK is idempotent: retry until it lands (the entries stay in the in-flight set, so
        // nothing re-runs them meanwhile), or until shutdown gives up on the drain.
        let mut delay = Duration::from_millis(50);
        let mut attempt = 0u32;
        loop {
            // Biased: once the drain is abandoned, no ack is sent any more.
            let r = tokio::select! {
                biased;
                () = abort.cancelled() => Err(TransportError::new(
                    TransportErrorKind::Closed,
                    "the drain timeout passed",
                )),
                r = stream.ack(&ids, &marked) => r,
            };
            let Err(e) = r else {
                stats.clear(Path::Ack);
                break;
            };
            attempt += 1;
            Stats::add(&stats.ack_errors, 1);
            stats.set(
                Path::Ack,
                Some(format!(
                    "cannot ack {} handled entries (the reader stops taking new ones until acks land): {e}",
                    batch.len()
                )),
            );
            if attempt == 1 || attempt.is_power_of_two() {
                tracing::warn!(handler = group, error = %e, entries = batch.len(), "cannot ack yet; retrying until the transport answers (no new entries are taken meanwhile)");
            }
            if abort.is_cancelled() {
                tracing::warn!(
                    handler = group,
                    entries = batch.len(),
                    "shutdown before these acks landed; the events will be delivered again"
                );
                break;
            }
            tokio::select! {
                () = tokio::time::sleep(delay) => {}
                () = abort.cancelled() => {}
            }
            delay = (delay * 2).min(Duration::from_secs(2));
        }
        Stats::sub(&stats.unacked, batch.len() as u64);
        if let Ok(mut s) = inflight.lock() {
            for settled in &batch {
                s.remove(&settled.id);
            }
        }
        batch.clear(); // releases the window permits
    }
}
