//! [`Health`]: what each reader is doing, for readiness probes and fault reports.

use std::sync::Mutex;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};

/// A snapshot of every reader of a [`RunningBus`](crate::RunningBus).
///
/// ```no_run
/// # async fn f(bus: eventbus::Bus) -> eventbus::Result<()> {
/// let running = bus.start().await?;
/// let health = running.health();
/// if !health.is_healthy() {
///     for r in &health.readers {
///         eprintln!("{}: connected={} last error: {:?}", r.handler, r.connected, r.last_error);
///     }
/// }
/// # Ok(()) }
/// ```
#[derive(Debug, Clone)]
#[non_exhaustive]
pub struct Health {
    /// One entry per handler (durable and broadcast), sorted by handler name.
    pub readers: Vec<ReaderHealth>,
}

impl Health {
    /// True when every reader is connected and its last read succeeded.
    pub fn is_healthy(&self) -> bool {
        self.readers
            .iter()
            .all(|r| r.connected && r.last_error.is_none())
    }
}

/// The state and counters of one handler's reader (or, for broadcast handlers, of the bus's
/// subscriber and the handler's queue), since the bus started.
#[derive(Debug, Clone)]
#[non_exhaustive]
pub struct ReaderHealth {
    /// The handler (consumer group).
    pub handler: &'static str,
    /// Whether the reader's blocking connection is up.
    pub connected: bool,
    /// The error of the last failed read or reconnect, until a read succeeds again.
    pub last_error: Option<String>,
    /// Reconnect attempts of the reader's blocking connection.
    pub reconnects: u64,
    /// Reads that failed.
    pub read_errors: u64,
    /// Times the consumer group was found missing (`NOGROUP`) and created again.
    pub groups_recreated: u64,
    /// Pending entries found deleted or trimmed from the stream before they were handled.
    pub lost_entries: u64,
    /// Entries claimed from silent consumers.
    pub claimed: u64,
    /// Events dead-lettered.
    pub dead_lettered: u64,
    /// Events handled successfully (acknowledged).
    pub handled: u64,
    /// Failed attempts to claim a silent consumer's entries or to renew leases (e.g. an ACL
    /// that denies XAUTOCLAIM or XCLAIM): while they fail, crashed consumers' entries wait.
    pub claim_errors: u64,
    /// Broadcast only: events dropped because the handler's queue was full.
    pub dropped: u64,
    /// Broadcast only: times the subscriber was disconnected; events published until it
    /// resubscribed were not received.
    pub gaps: u64,
}

/// Live counters, shared by a reader and its tasks.
#[derive(Debug, Default)]
pub(crate) struct Stats {
    pub(crate) connected: AtomicBool,
    pub(crate) last_error: Mutex<Option<String>>,
    pub(crate) reconnects: AtomicU64,
    pub(crate) read_errors: AtomicU64,
    pub(crate) groups_recreated: AtomicU64,
    pub(crate) lost_entries: AtomicU64,
    pub(crate) claimed: AtomicU64,
    pub(crate) dead_lettered: AtomicU64,
    pub(crate) handled: AtomicU64,
    pub(crate) claim_errors: AtomicU64,
    pub(crate) dropped: AtomicU64,
    pub(crate) gaps: AtomicU64,
}

impl Stats {
    pub(crate) fn add(counter: &AtomicU64, n: u64) {
        counter.fetch_add(n, Ordering::Relaxed);
    }

    pub(crate) fn set_error(&self, error: Option<String>) {
        if let Ok(mut e) = self.last_error.lock() {
            *e = error;
        }
    }

    pub(crate) fn snapshot(&self, handler: &'static str) -> ReaderHealth {
        let get = |c: &AtomicU64| c.load(Ordering::Relaxed);
        ReaderHealth {
            handler,
            connected: self.connected.load(Ordering::Relaxed),
            last_error: self.last_error.lock().ok().and_then(|e| e.clone()),
            reconnects: get(&self.reconnects),
            read_errors: get(&self.read_errors),
            groups_recreated: get(&self.groups_recreated),
            lost_entries: get(&self.lost_entries),
            claimed: get(&self.claimed),
            dead_lettered: get(&self.dead_lettered),
            handled: get(&self.handled),
            claim_errors: get(&self.claim_errors),
            dropped: get(&self.dropped),
            gaps: get(&self.gaps),
        }
    }
}
