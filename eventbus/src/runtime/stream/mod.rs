//! One reader per durable handler: fetch, decode, run under the concurrency limit, retry,
//! ack or dead-letter, and claim what silent consumers left pending.

use std::collections::HashSet;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use tokio::sync::{OwnedSemaphorePermit, Semaphore, mpsc};
use tokio::time::Instant;
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;

use crate::config::Config;
use crate::envelope;
use crate::error::Result;
use crate::error::{TransportError, TransportErrorKind};
use crate::handler::HandlerRegistration;
use crate::pipeline::Failure;
use crate::pipeline::{Charges, Marks, Outcome, Runner};
use crate::runtime::Handles;
use crate::runtime::settle::dead_letter;
use crate::telemetry::Path;
use crate::telemetry::Stats;
use crate::transport::source::Entry;
use crate::transport::stream::{ReadFrom, Reading, Stream, TrimWatch};

/// What one reader shares with the tasks it spawns.
struct Shared {
    runner: Runner,
    config: Arc<Config>,
    /// The handler's consumer group on its event's stream.
    stream: Stream,
    /// The process-wide lock suspects run under (see [`Handles::alone`]).
    alone: Arc<tokio::sync::RwLock<()>>,
    handler: &'static HandlerRegistration,
    /// Handler runs in flight (the handler's concurrency). FIFO: entries claimed from silent
    /// consumers queue for it ahead of entries read later.
    running: Arc<Semaphore>,
    /// Entries read but not finished (concurrency + one batch): bounds what a reader fetches
    /// ahead of its handler, so a backlog never fills memory, while reads stay full batches.
    window: Arc<Semaphore>,
    /// Entry ids being handled by this reader, so a re-read of our own pending entries or a
    /// claim does not start a second run of an entry that is still running here.
    inflight: Arc<Mutex<HashSet<String>>>,
    /// Entries to start, in the order they were read or claimed ([`start_loop`]).
    starts: mpsc::UnboundedSender<Start>,
    /// Entries to acknowledge, batched by [`ack_loop`], each with its prefetch-window permit
    /// (released only once the ack lands: while acks fail, the reader stops taking entries).
    acks: mpsc::UnboundedSender<Settled>,
    /// Entries that shutdown kept from starting: handed back to the group at once.
    handback: Mutex<Vec<String>>,
    /// Gets a permit once the first check for entries trimmed before they were read has run:
    /// the reader waits for it (briefly), so it cannot read past such a gap unseen at start.
    first_trim_check: Semaphore,
    /// Set once the reader has re-read its own pending entries after the process started:
    /// later re-reads (after a reconnect) find only entries this process never started.
    own_pending_read: std::sync::atomic::AtomicBool,
    cancel: CancellationToken,
    tracker: TaskTracker,
    stats: Arc<Stats>,
    /// Set when the read loop has ended: no read can add entries to our pending list any more.
    reader_done: std::sync::atomic::AtomicBool,
}

/// The reader of one durable handler.
pub(crate) struct Reader {
    shared: Arc<Shared>,
    /// The dedicated connection for blocking reads.
    conn: Option<Reading>,
    /// The starter's end of [`Shared::starts`], until [`run`](Self::run) spawns it.
    starts: Option<mpsc::UnboundedReceiver<Start>>,
}

impl Reader {
    pub(crate) fn new(
        handles: &Handles,
        handler: &'static HandlerRegistration,
        cancel: CancellationToken,
        abort: CancellationToken,
        tracker: TaskTracker,
    ) -> Reader {
        let config = handles.env.config.clone();
        let runner = Runner::new(&handles.env, handler, cancel.clone(), abort.clone());
        let stream = handles.transport.stream(
            &config.namespace,
            handler.event_name,
            handler.name,
            &config.consumer,
        );
        let inflight = Arc::new(Mutex::new(HashSet::new()));
        let (acks, rx) = mpsc::unbounded_channel();
        let (starts, starts_rx) = mpsc::unbounded_channel();
        tracker.spawn(ack_loop(
            rx,
            stream.clone(),
            inflight.clone(),
            runner.stats.clone(),
            abort.clone(),
        ));
        let shared = Shared {
            running: Arc::new(Semaphore::new(runner.concurrency())),
            // Runs in flight, a batch read ahead, and a batch whose acks are in flight: entries
            // keep their permit until their ack lands, so reads stay full batches while one
            // XACK is out, and stop when acks fail.
            window: Arc::new(Semaphore::new(runner.concurrency() + 2 * config.batch_size)),
            inflight,
            starts,
            acks,
            handback: Mutex::new(Vec::new()),
            first_trim_check: Semaphore::new(0),
            own_pending_read: std::sync::atomic::AtomicBool::new(false),
            stats: runner.stats.clone(),
            runner,
            config,
            stream,
            alone: handles.alone.clone(),
            handler,
            cancel,
            tracker,
            reader_done: std::sync::atomic::AtomicBool::new(false),
        };
        Reader {
            shared: Arc::new(shared),
            conn: None,
            starts: Some(starts_rx),
        }
    }

    fn group(&self) -> &'static str {
        self.shared.handler.name
    }

    /// The reader's live counters, for [`Health`](crate::Health).
    pub(crate) fn stats(&self) -> (&'static str, Arc<Stats>) {
        (self.group(), self.shared.stats.clone())
    }

    /// Creates the handler's consumer group unless it exists: a new group starts at the beginning
    /// of the stream, so events published before the handler's first start are handled too.
    pub(crate) async fn ensure_group(&self) -> Result<()> {
        self.shared
            .stream
            .ensure_group()
            .await
            .map_err(crate::error::Error::transport_key(
                "XGROUP CREATE",
                &self.shared.stream.keys.stream,
            ))
    }

    /// Opens the dedicated connection for blocking reads.
    pub(crate) async fn connect(mut self) -> Result<Reader> {
        self.reconnect()
            .await
            .map_err(|source| crate::error::Error::Unreachable {
                url: crate::config::redact(&self.shared.config.redis_url),
                hint: "start redis-server there or set REDIS_URL",
                source,
            })?;
        Ok(self)
    }

    async fn reconnect(&mut self) -> std::result::Result<(), TransportError> {
        self.conn = Some(self.shared.stream.reader().await?);
        self.shared
            .stats
            .connected
            .store(true, std::sync::atomic::Ordering::Relaxed);
        Ok(())
    }

    /// The read loop; ends on shutdown.
    pub(crate) async fn run(mut self) {
        let shared = self.shared.clone();
        let config = shared.config.clone();
        let stats = &shared.stats;
        let mut retry_delay = Duration::from_millis(100);
        // Start by re-reading our own pending entries (a restart under a stable consumer name,
        // or deliveries a dropped connection never showed us), then switch to new entries.
        let mut pending_cursor: Option<String> = Some("0".to_owned());
        // Leases and claims run beside the read loop, so neither waits while the prefetch window
        // is full, and leases keep being renewed through the drain at shutdown.
        if let Some(starts) = self.starts.take() {
            shared.tracker.spawn(start_loop(shared.clone(), starts));
        }
        shared.tracker.spawn(maintain(shared.clone()));
        tokio::select! {
            _ = tokio::time::timeout(Duration::from_secs(2), shared.first_trim_check.acquire()) => {}
            () = shared.cancel.cancelled() => {}
        }
        while !shared.cancel.is_cancelled() {
            if self.conn.is_none() {
                Stats::add(&stats.reconnects, 1);
                match self.reconnect().await {
                    Ok(()) => {
                        tracing::info!(handler = self.group(), "reader reconnected");
                        pending_cursor = Some("0".to_owned());
                        retry_delay = Duration::from_millis(100);
                    }
                    Err(e) => {
                        tracing::warn!(handler = self.group(), error = %e, "reader cannot connect; retrying");
                        stats.set_error(Some(format!("cannot connect: {e}")));
                        if !self.pause(&mut retry_delay).await {
                            break;
                        }
                        continue;
                    }
                }
            }
            let first = tokio::select! {
                p = shared.window.clone().acquire_owned() => match p {
                    Ok(p) => p,
                    Err(_) => break,
                },
                () = shared.cancel.cancelled() => break,
            };
            let count = config.batch_size.min(1 + shared.window.available_permits());
            let block = config.block_time.max(Duration::from_millis(1));
            let result = match &pending_cursor {
                Some(cursor) => {
                    self.read(ReadFrom::PendingAfter(cursor.clone()), count, None)
                        .await
                }
                None => self.read(ReadFrom::New, count, Some(block)).await,
            };
            match result {
                Ok(entries) => {
                    retry_delay = Duration::from_millis(100);
                    stats.set_error(None);
                    if pending_cursor.is_some() {
                        match entries.last() {
                            Some(last) => pending_cursor = Some(last.id.clone()),
                            None => {
                                pending_cursor = None;
                                shared
                                    .own_pending_read
                                    .store(true, std::sync::atomic::Ordering::Release);
                            }
                        }
                        // Re-read at start-up: a previous process under this name may have been
                        // running them when it died, so they are suspects. After a reconnect in
                        // this process they were never started here (else they would be in
                        // flight): not suspects.
                        let suspect = !shared
                            .own_pending_read
                            .load(std::sync::atomic::Ordering::Acquire);
                        let entries = shared.redelivered(entries).await;
                        shared.dispatch(entries, Some(first), suspect);
                    } else if !entries.is_empty() {
                        let entries = entries.into_iter().map(|e| (e, 0)).collect();
                        shared.dispatch(entries, Some(first), false);
                        // Let the runs just spawned start before this task sends its next read:
                        // the handler then does not wait behind that write.
                        tokio::task::yield_now().await;
                    }
                }
                Err(e) => {
                    drop(first);
                    Stats::add(&stats.read_errors, 1);
                    stats.set_error(Some(e.to_string()));
                    if e.kind() == TransportErrorKind::NoGroup {
                        tracing::warn!(handler = self.group(), stream = %shared.stream.keys.stream, "consumer group or stream is gone; recreating it");
                        match shared.stream.ensure_group().await {
                            Ok(()) => Stats::add(&stats.groups_recreated, 1),
                            Err(e) => {
                                tracing::warn!(handler = self.group(), error = %e, "cannot recreate consumer group");
                            }
                        }
                        pending_cursor = Some("0".to_owned());
                    } else if e.kind() == TransportErrorKind::Permission {
                        tracing::error!(
                            handler = self.group(),
                            stream = %shared.stream.keys.stream,
                            error = %e,
                            "permission denied by the Redis ACL: grant this user the namespace's keys and the stream commands (see the README's ACL section)"
                        );
                    } else if e.needs_new_connection() {
                        tracing::warn!(handler = self.group(), error = %e, "reader connection lost; reconnecting");
                        self.conn = None;
                        stats
                            .connected
                            .store(false, std::sync::atomic::Ordering::Relaxed);
                    } else {
                        tracing::warn!(handler = self.group(), error = %e, "read failed; retrying");
                    }
                    if !self.pause(&mut retry_delay).await {
                        break;
                    }
                }
            }
        }
        stats
            .connected
            .store(false, std::sync::atomic::Ordering::Relaxed);
        shared
            .reader_done
            .store(true, std::sync::atomic::Ordering::Release);
        tracing::debug!(handler = self.group(), "reader stopped");
    }

    /// Waits out a retry delay (doubling up to 5 s); false when shutdown came first.
    async fn pause(&self, delay: &mut Duration) -> bool {
        let d = *delay;
        *delay = (*delay * 2).min(Duration::from_secs(5));
        tokio::select! {
            () = tokio::time::sleep(d) => true,
            () = self.shared.cancel.cancelled() => false,
        }
    }

    /// One read on the reader's own connection (released at shutdown: what it had already
    /// delivered is still handled).
    async fn read(
        &mut self,
        from: ReadFrom,
        count: usize,
        block: Option<Duration>,
    ) -> std::result::Result<Vec<Entry>, TransportError> {
        let Some(conn) = self.conn.as_mut() else {
            return Ok(Vec::new());
        };
        conn.read(&self.shared.stream, from, count, block, &self.shared.cancel)
            .await
    }
}

impl Shared {
    /// After a clean drain: removes this consumer from the group when it holds nothing pending,
    /// so per-process consumer names do not pile up in the group. A consumer that still has
    /// pending entries (an ack that did not land) stays, so they can be claimed.
    async fn leave_group(&self) {
        self.stream.leave_group().await;
    }

    /// Counts and reports a failed claim (of a silent consumer's or handed-back entries).
    fn claim_failed(&self, e: &TransportError) {
        Stats::add(&self.stats.claim_errors, 1);
        self.stats
            .set(Path::Claim, Some(format!("cannot claim entries: {e}")));
        tracing::warn!(handler = self.handler.name, error = %e, "claiming abandoned entries failed");
    }

    /// How many entries this reader may hold at once (plus a page of claims): the count for
    /// XPENDING queries over a range of our own pending entries, so none is cut off.
    fn window_capacity(&self) -> usize {
        self.runner.concurrency() + self.config.batch_size * 3
    }

    /// Renews the lease of every entry running here: `XCLAIM ... JUSTID` resets its idle time
    /// without counting a delivery, so a slow but alive handler keeps its entry and no other
    /// consumer claims it after the visibility timeout.
    async fn renew_leases(&self) {
        let ids: Vec<String> = self
            .inflight
            .lock()
            .map(|s| s.iter().cloned().collect())
            .unwrap_or_default();
        if ids.is_empty() {
            return;
        }
        // Renew only what this consumer still owns: an entry another consumer claimed while
        // this one was frozen is theirs now.
        let result = match self.stream.owned(&ids, self.window_capacity()).await {
            Ok(owned) => {
                let mine: Vec<String> = ids.into_iter().filter(|id| owned.contains(id)).collect();
                if mine.is_empty() {
                    return;
                }
                self.stream.renew(&mine).await
            }
            Err(e) => Err(e),
        };
        if let Err(e) = result {
            Stats::add(&self.stats.claim_errors, 1);
            self.stats
                .set(Path::Claim, Some(format!("cannot renew leases: {e}")));
            tracing::warn!(
                handler = self.handler.name,
                error = %e,
                "cannot renew the lease of running entries; a slow handler's entry may be claimed by another consumer"
            );
        }
    }

    /// Of entries re-read from our own pending list or just claimed: the ones to run now, each
    /// with the attempts charged to it so far. An entry still running here is skipped, and so is
    /// one that is no longer pending. The in-flight check comes first: a run that finishes (and
    /// acks) after it is then seen as no longer pending by XPENDING, instead of being started a
    /// second time.
    async fn redelivered(&self, entries: Vec<Entry>) -> Vec<(Entry, u32)> {
        let running: HashSet<String> = self
            .inflight
            .lock()
            .map(|s| {
                entries
                    .iter()
                    .filter(|e| s.contains(&e.id))
                    .map(|e| e.id.clone())
                    .collect()
            })
            .unwrap_or_default();
        let entries: Vec<Entry> = entries
            .into_iter()
            .filter(|e| !running.contains(&e.id))
            .collect();
        let (pending, charged) = self.pending_and_charged(&entries).await;
        entries
            .into_iter()
            .zip(charged)
            .filter(|(e, _)| pending.as_ref().is_none_or(|p| p.contains(&e.id)))
            .collect()
    }

    /// Which of `entries` are pending for this consumer (`None` when XPENDING failed), and the
    /// attempts charged to each (`HMGET` on the attempts hash; 0 when unknown). One round trip,
    /// on the redelivery path only.
    async fn pending_and_charged(&self, entries: &[Entry]) -> (Option<HashSet<String>>, Vec<u32>) {
        if entries.is_empty() {
            return (Some(HashSet::new()), Vec::new());
        }
        match self
            .stream
            .owned_and_charged(entries, self.window_capacity())
            .await
        {
            Ok((pending, charged)) => (Some(pending), charged),
            Err(e) => {
                tracing::warn!(handler = self.handler.name, error = %e, "cannot read pending entries and their charged attempts");
                (None, vec![0; entries.len()])
            }
        }
    }

    /// Takes entries another consumer handed back at shutdown (never started there): claimed
    /// with `XCLAIM ... JUSTID` (no delivery counted) from the hand-back pseudo-consumer, then
    /// read with `XRANGE`. They are not suspects. `min-idle` guards against two consumers
    /// taking the same entry: the first claim resets its idle time.
    async fn take_handed_back(self: &Arc<Self>) -> std::result::Result<(), TransportError> {
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
    async fn hand_back(&self) {
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
    async fn hand_back_owned(&self, ids: &[String]) {
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
    async fn still_owned(&self, ids: &[String]) -> Option<Vec<String>> {
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
    async fn claim_abandoned(self: &Arc<Self>) -> std::result::Result<(), TransportError> {
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
                let _ = shared.stream.ack(&reply.deleted, &[]).await;
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

    /// Spawns a run per entry (with the attempts charged to it so far). Each takes a window
    /// permit if one is free (`first` for the first one; claims may go past the window by a
    /// page) and waits its turn for a run slot; a suspect waits for every slot, so it runs
    /// alone. Once shutdown has begun, an entry that has not started is handed back instead.
    fn dispatch(
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
    fn release(&self, id: String, suspect: bool) {
        if !suspect && let Ok(mut h) = self.handback.lock() {
            h.push(id);
            return;
        }
        if let Ok(mut s) = self.inflight.lock() {
            s.remove(&id);
        }
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
async fn maintain(shared: Arc<Shared>) {
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
struct Start {
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
async fn start_loop(shared: Arc<Shared>, mut starts: mpsc::UnboundedReceiver<Start>) {
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

/// One settled entry on its way to the ack batcher.
struct Settled {
    id: String,
    /// Its prefetch-window permit, released (dropped) once the ack lands.
    _window: Option<OwnedSemaphorePermit>,
    /// Whether its attempts hash field exists and must be deleted with the ack.
    marked: bool,
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

/// Sends the acks of one reader: entries queue up while an XACK is in flight and go out together
/// in the next one, so a busy reader acks in batches and an idle one at once (no timer, no
/// added latency). Charged entries' attempts fields are deleted in the same round trip. An
/// entry's window permit is released only when its ack lands: while acks fail, the reader stops
/// taking new entries (the entries at risk of a second run stay bounded by the window). Ends,
/// after sending everything queued, when the reader and all its runs are done.
async fn ack_loop(
    mut rx: mpsc::UnboundedReceiver<Settled>,
    stream: Stream,
    inflight: Arc<Mutex<HashSet<String>>>,
    stats: Arc<Stats>,
    abort: CancellationToken,
) {
    const MAX_BATCH: usize = 1000;
    let group = stream.group;
    let mut batch: Vec<Settled> = Vec::with_capacity(64);
    let mut ids: Vec<String> = Vec::with_capacity(64);
    let mut marked: Vec<String> = Vec::new();
    while let Some(first) = rx.recv().await {
        batch.push(first);
        while batch.len() < MAX_BATCH {
            match rx.try_recv() {
                Ok(settled) => batch.push(settled),
                Err(_) => break,
            }
        }
        ids.clear();
        marked.clear();
        for settled in &batch {
            ids.push(settled.id.clone());
            if settled.marked {
                marked.push(settled.id.clone());
            }
        }
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
