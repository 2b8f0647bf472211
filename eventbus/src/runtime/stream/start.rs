//! Starting entries: in dispatch order, each with its run slots and the process-wide lock;
//! running one to its outcome.

use std::sync::Arc;

use tokio::sync::{OwnedSemaphorePermit, mpsc};

use super::{Settled, Shared};
use crate::envelope;
use crate::pipeline::{Charges, Failure, Marks, Outcome};
use crate::runtime::settle::dead_letter;
use crate::telemetry::Stats;
use crate::transport::source::Entry;

impl Shared {
    /// Spawns a run per entry (with the attempts charged to it so far). Each takes a window
    /// permit if one is free (`first` for the first one; claims may go past the window by a
    /// page) and waits its turn for a run slot; a suspect waits for every slot, so it runs
    /// alone. Once shutdown has begun, an entry that has not started is handed back instead.
    pub(super) fn dispatch(
        self: &Arc<Self>,
        entries: Vec<(Entry, u32)>,
        mut first: Option<OwnedSemaphorePermit>,
        suspect: bool,
    ) {
        // One lock for the whole batch: the entries not running here yet.
        let fresh: Vec<bool> = match self.inflight.lock() {
            Ok(mut s) => entries
                .iter()
                .map(|(e, _)| s.insert(e.id.clone()))
                .collect(),
            Err(_) => vec![true; entries.len()],
        };
        for ((entry, charged), fresh) in entries.into_iter().zip(fresh) {
            if !fresh {
                continue; // still running here since an earlier delivery
            }
            if suspect {
                Stats::add(&self.stats.suspects, 1);
            }
            let window = first
                .take()
                .or_else(|| self.window.clone().try_acquire_owned().ok());
            let start = Start {
                entry,
                charged,
                suspect,
                window,
            };
            // In stream order, through the reader's one starter: with `concurrency = 1` entries
            // start in the order they were read.
            if let Err(mpsc::error::SendError(start)) = self.starts.send(start) {
                self.release(start.entry.id, start.suspect);
            }
        }
    }

    /// An entry shutdown kept from starting: queued for [`hand_back`](Self::hand_back) (it stays
    /// in the in-flight set, leased, until then). A suspect is not handed back (whoever takes a
    /// handed-back entry runs it without suspicion): it stays pending, and is claimed as a
    /// suspect after the visibility timeout.
    pub(super) fn release(&self, id: String, suspect: bool) {
        if !suspect && let Ok(mut h) = self.handback.lock() {
            h.push(id);
            return;
        }
        if let Ok(mut s) = self.inflight.lock() {
            s.remove(&id);
        }
    }
}

/// What a run holds of the process-wide lock ([`Handles::alone`]),
/// held only to be dropped when the run ends.
#[allow(dead_code)]
enum Guard {
    /// A normal run: shared with every other normal run.
    Shared(tokio::sync::OwnedRwLockReadGuard<()>),
    /// A suspect: alone in the process.
    Alone(tokio::sync::OwnedRwLockWriteGuard<()>),
}

/// One entry waiting for its run slots.
pub(super) struct Start {
    entry: Entry,
    /// Attempts charged to it before this delivery.
    charged: u32,
    /// Redelivered after a possible crash: runs alone.
    suspect: bool,
    /// Its prefetch-window permit, if it got one.
    window: Option<OwnedSemaphorePermit>,
}

/// Starts the reader's entries one after the other, in the order they were dispatched: each
/// waits for its run slot (every slot for a suspect), then the process-wide lock (exclusive for
/// a suspect), always in this order so no two waiters hold what the other waits for; then its
/// run is spawned. At shutdown, entries not started are released (handed back).
pub(super) async fn start_loop(shared: Arc<Shared>, mut starts: mpsc::UnboundedReceiver<Start>) {
    let all = u32::try_from(shared.runner.concurrency()).unwrap_or(u32::MAX);
    loop {
        let start = tokio::select! {
            biased;
            () = shared.cancel.cancelled() => break,
            s = starts.recv() => match s {
                Some(s) => s,
                None => break,
            },
        };
        let slots = if start.suspect { all } else { 1 };
        let slots_and_lock = async {
            let running = shared
                .running
                .clone()
                .acquire_many_owned(slots)
                .await
                .ok()?;
            let lock = shared.alone.clone();
            let guard = if start.suspect {
                Guard::Alone(lock.write_owned().await)
            } else {
                Guard::Shared(lock.read_owned().await)
            };
            Some((running, guard))
        };
        let held = tokio::select! {
            biased;
            () = shared.cancel.cancelled() => None,
            r = slots_and_lock => r,
        };
        match held {
            Some(held) if !shared.cancel.is_cancelled() => {
                let run = shared.clone();
                shared.tracker.spawn(async move {
                    let Start {
                        entry,
                        charged,
                        suspect,
                        window,
                    } = start;
                    handle_entry(&run, entry, charged, suspect, window, held).await;
                });
            }
            _ => {
                shared.release(start.entry.id, start.suspect);
                break;
            }
        }
    }
    // Shutdown: nothing more starts here.
    starts.close();
    while let Ok(start) = starts.try_recv() {
        shared.release(start.entry.id, start.suspect);
    }
}

/// Handles one delivered entry to the end: acked (through the ack batcher), dead-lettered,
/// handed back, or left pending. The entry stays in the in-flight set, and keeps its window
/// permit, until its ack lands.
async fn handle_entry(
    shared: &Shared,
    entry: Entry,
    charged: u32,
    suspect: bool,
    window: Option<OwnedSemaphorePermit>,
    held: (OwnedSemaphorePermit, Guard),
) {
    let marks = Marks {
        stream: &shared.stream,
        entry_id: &entry.id,
    };
    let mut charges = Charges {
        before: charged,
        marks: Some(&marks),
        alone: suspect,
        // A charged entry has a field to delete once it settles.
        wrote: charged > 0,
    };
    let outcome = run_entry(shared, &entry, &mut charges).await;
    // The run is over: its slots (and the process-wide lock) go to the next run, while the entry
    // keeps its window permit until it is acked or dead-lettered.
    drop(held);
    let marked = charges.wrote;
    match outcome {
        Outcome::Ack | Outcome::Lost | Outcome::Skip => {
            match outcome {
                Outcome::Lost => Stats::add(&shared.stats.lost_entries, 1),
                Outcome::Ack => Stats::add(&shared.stats.handled, 1),
                _ => {}
            }
            Stats::add(&shared.stats.unacked, 1);
            // The ack loop takes the entry out of the in-flight set once it is acked.
            let settled = Settled {
                id: entry.id,
                _window: window,
                marked,
            };
            if let Err(mpsc::error::SendError(settled)) = shared.acks.send(settled) {
                Stats::sub(&shared.stats.unacked, 1);
                if let Ok(mut s) = shared.inflight.lock() {
                    s.remove(&settled.id);
                }
            }
            return;
        }
        Outcome::DeadLetter(failure) => {
            dead_letter(&shared.runner, &shared.stream, Some(&entry.id), &failure).await;
        }
        Outcome::Released => {
            shared.release(entry.id, suspect);
            return;
        }
        Outcome::Abandoned => {}
    }
    drop(window);
    if let Ok(mut s) = shared.inflight.lock() {
        s.remove(&entry.id);
    }
}

/// Reads the envelope out of one entry and runs it through the handler's pipeline.
async fn run_entry(shared: &Shared, entry: &Entry, charges: &mut Charges<'_>) -> Outcome {
    let handler = shared.runner.handler;
    if entry.fields.is_empty() {
        // Re-read of a pending entry that was deleted from the stream: nothing to run.
        tracing::warn!(
            handler = handler.name,
            "pending entry was deleted from the stream before it was handled; it is lost"
        );
        return Outcome::Lost;
    }
    if let Some(target) = entry.field(envelope::FIELD_HANDLER)
        && target != handler.name.as_bytes()
    {
        return Outcome::Skip; // a replay meant for another handler
    }
    let Some(raw) = entry.field(envelope::FIELD_ENVELOPE) else {
        let fields: Vec<String> = entry
            .fields
            .iter()
            .map(|(k, _)| String::from_utf8_lossy(k).into_owned())
            .collect();
        return Outcome::DeadLetter(Failure {
            event_id: None,
            error: format!(
                "entry has no `envelope` field (fields: {})",
                fields.join(", ")
            ),
            attempts: 0,
            envelope: String::new(),
        });
    };
    shared.runner.run_charged(raw, charges).await
}
