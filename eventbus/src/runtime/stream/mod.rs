//! One reader per durable handler: fetch, decode, run under the concurrency limit, retry,
//! ack or dead-letter, and claim what silent consumers left pending.

use std::collections::HashSet;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use tokio::sync::{Semaphore, mpsc};
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;

use crate::config::Config;
use crate::error::Result;
use crate::error::{TransportError, TransportErrorKind};
use crate::handler::HandlerRegistration;
use crate::pipeline::Runner;
use crate::runtime::Handles;
use crate::telemetry::Path;
use crate::telemetry::Stats;
use crate::transport::source::Entry;
use crate::transport::stream::{ReadFrom, Reading, Stream};

mod ack;
mod claim;
mod lease;
mod start;

use self::ack::{Settled, ack_loop};
use self::claim::maintain;
use self::start::{Start, start_loop};

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
        self.reconnect().await.map_err(|source| {
            crate::error::Error::unreachable(
                crate::config::redact(&self.shared.config.redis_url),
                source,
            )
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
}
