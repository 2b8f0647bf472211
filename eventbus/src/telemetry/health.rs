//! [`Health`]: what each reader and the bus's shared connection are doing, for readiness probes
//! and fault reports.

use std::sync::Mutex;
use std::sync::atomic::{AtomicBool, AtomicU8, AtomicU64, Ordering};

/// A snapshot of a bus: its shared connection (publishes, acks, claims, dead letters) and every
/// reader of a [`RunningBus`](crate::RunningBus).
///
/// ```no_run
/// # async fn f(bus: eventbus::Bus) -> eventbus::Result<()> {
/// let running = bus.start().await?;
/// let health = running.health();
/// if !health.is_healthy() {
///     eprintln!("connection: {:?}", health.connection.last_error);
///     for r in &health.readers {
///         eprintln!("{}: connected={} problems: {:?}", r.handler, r.connected, r.problems());
///     }
/// }
/// # Ok(()) }
/// ```
#[derive(Debug, Clone)]
#[non_exhaustive]
pub struct Health {
    /// The shared connection: publishing, and the short commands of every reader.
    pub connection: ConnectionHealth,
    /// One entry per handler (durable and broadcast), sorted by handler name. Empty for a bus
    /// that was not started ([`Bus::health`](crate::Bus::health)).
    pub readers: Vec<ReaderHealth>,
}

impl Health {
    /// True when the shared connection works (its last publish or probe succeeded) and every
    /// reader is connected with nothing failing: reads, acks, claims and dead-letter writes.
    pub fn is_healthy(&self) -> bool {
        self.connection.is_healthy() && self.readers.iter().all(ReaderHealth::is_healthy)
    }
}

/// The state of the bus's shared connection (publishing and short commands), since the bus was
/// built.
#[derive(Debug, Clone)]
#[non_exhaustive]
pub struct ConnectionHealth {
    /// Whether the connection answered its last command or probe.
    pub connected: bool,
    /// The error of the last failed publish or probe, until one succeeds again. Caller errors
    /// (an oversized or unencodable event) never set it.
    pub last_error: Option<String>,
    /// Publish calls (`publish`, `publish_batch`, `ctx.publish`) that returned a Redis or
    /// timeout error.
    pub publish_errors: u64,
    /// Periodic probes (`PING`) that failed or timed out.
    pub probe_failures: u64,
    /// Times the connection was replaced by a new one (after `READONLY`, `MASTERDOWN`, repeated
    /// timeouts or a failed probe).
    pub replaced: u64,
}

impl ConnectionHealth {
    /// True when connected with no failing path.
    pub fn is_healthy(&self) -> bool {
        self.connected && self.last_error.is_none()
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
    /// The error of the last failed `XACK`, until an ack lands again. While acks fail, handled
    /// entries stay in the prefetch window and the reader stops taking new ones.
    pub ack_error: Option<String>,
    /// The error of the last failed claim or lease renewal, until one succeeds again.
    pub claim_error: Option<String>,
    /// The error of the last failed dead-letter write, until one succeeds again (the event
    /// stays pending meanwhile).
    pub dead_letter_error: Option<String>,
    /// Reconnect attempts of the reader's blocking connection.
    pub reconnects: u64,
    /// Reads that failed.
    pub read_errors: u64,
    /// Times the consumer group was found missing (`NOGROUP`) and created again.
    pub groups_recreated: u64,
    /// Pending entries found deleted or trimmed from the stream before they were handled.
    pub lost_entries: u64,
    /// Entries trimmed from the stream (`MAXLEN`) before this handler's group read them.
    pub trimmed_unread: u64,
    /// Entries claimed from silent consumers.
    pub claimed: u64,
    /// Entries another consumer handed back at shutdown (never started) and this one took.
    pub taken_over: u64,
    /// Prefetched entries this reader handed back at shutdown without starting them.
    pub handed_back: u64,
    /// Redelivered entries that may have been running when a consumer crashed, run alone.
    pub suspects: u64,
    /// Events dead-lettered.
    pub dead_lettered: u64,
    /// Events handled successfully (acknowledged).
    pub handled: u64,
    /// Entries handled whose `XACK` has not landed yet (a gauge).
    pub unacked: u64,
    /// Handler attempts that ran past the handler's timeout.
    pub timeouts: u64,
    /// Failed `XACK` calls.
    pub ack_errors: u64,
    /// Failed attempts to claim a silent consumer's entries or to renew leases (e.g. an ACL
    /// that denies XAUTOCLAIM or XCLAIM): while they fail, crashed consumers' entries wait.
    pub claim_errors: u64,
    /// Failed dead-letter writes (retried; the event stays pending).
    pub dead_letter_errors: u64,
    /// Broadcast only: events dropped because the handler's queue was full.
    pub dropped: u64,
    /// Broadcast only: times the subscriber was disconnected; events published until it
    /// resubscribed were not received.
    pub gaps: u64,
}

impl ReaderHealth {
    /// True when connected and no path (read, ack, claim, dead letter) is failing.
    pub fn is_healthy(&self) -> bool {
        self.connected && self.problems().is_empty()
    }

    /// The paths failing now, each with its last error.
    pub fn problems(&self) -> Vec<(&'static str, &str)> {
        [
            ("read", &self.last_error),
            ("ack", &self.ack_error),
            ("claim", &self.claim_error),
            ("dead letter", &self.dead_letter_error),
        ]
        .into_iter()
        .filter_map(|(path, e)| e.as_deref().map(|e| (path, e)))
        .collect()
    }
}

/// A path whose failures health reports, each with its last error.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Path {
    Read,
    Ack,
    Claim,
    DeadLetter,
}

/// Live counters, shared by a reader and its tasks.
#[derive(Debug, Default)]
pub(crate) struct Stats {
    pub(crate) connected: AtomicBool,
    errors: Mutex<[Option<String>; 4]>,
    /// One bit per [`Path`] with an error set: clearing a clear path takes no lock.
    failing: AtomicU8,
    pub(crate) reconnects: AtomicU64,
    pub(crate) read_errors: AtomicU64,
    pub(crate) groups_recreated: AtomicU64,
    pub(crate) lost_entries: AtomicU64,
    pub(crate) trimmed_unread: AtomicU64,
    pub(crate) claimed: AtomicU64,
    pub(crate) taken_over: AtomicU64,
    pub(crate) handed_back: AtomicU64,
    pub(crate) suspects: AtomicU64,
    pub(crate) dead_lettered: AtomicU64,
    pub(crate) handled: AtomicU64,
    pub(crate) unacked: AtomicU64,
    pub(crate) timeouts: AtomicU64,
    pub(crate) ack_errors: AtomicU64,
    pub(crate) claim_errors: AtomicU64,
    pub(crate) dead_letter_errors: AtomicU64,
    pub(crate) dropped: AtomicU64,
    pub(crate) gaps: AtomicU64,
}

impl Stats {
    pub(crate) fn add(counter: &AtomicU64, n: u64) {
        counter.fetch_add(n, Ordering::Relaxed);
    }

    pub(crate) fn sub(counter: &AtomicU64, n: u64) {
        let _ = counter.fetch_update(Ordering::Relaxed, Ordering::Relaxed, |v| {
            Some(v.saturating_sub(n))
        });
    }

    /// Sets (or with `None` clears) the read path's error.
    pub(crate) fn set_error(&self, error: Option<String>) {
        self.set(Path::Read, error);
    }

    /// Sets (or with `None` clears) the error of one path.
    pub(crate) fn set(&self, path: Path, error: Option<String>) {
        if let Ok(mut e) = self.errors.lock() {
            let bit = 1u8 << (path as u8);
            if error.is_some() {
                self.failing.fetch_or(bit, Ordering::Relaxed);
            } else {
                self.failing.fetch_and(!bit, Ordering::Relaxed);
            }
            e[path as usize] = error;
        }
    }

    /// Clears a path's error; cheap when it is clear already (the hot path).
    pub(crate) fn clear(&self, path: Path) {
        if self.failing.load(Ordering::Relaxed) & (1u8 << (path as u8)) != 0 {
            self.set(path, None);
        }
    }

    pub(crate) fn snapshot(&self, handler: &'static str) -> ReaderHealth {
        let get = |c: &AtomicU64| c.load(Ordering::Relaxed);
        let errors = self.errors.lock().map(|e| e.clone()).unwrap_or_default();
        let [read, ack, claim, dead_letter] = errors;
        ReaderHealth {
            handler,
            connected: self.connected.load(Ordering::Relaxed),
            last_error: read,
            ack_error: ack,
            claim_error: claim,
            dead_letter_error: dead_letter,
            reconnects: get(&self.reconnects),
            read_errors: get(&self.read_errors),
            groups_recreated: get(&self.groups_recreated),
            lost_entries: get(&self.lost_entries),
            trimmed_unread: get(&self.trimmed_unread),
            claimed: get(&self.claimed),
            taken_over: get(&self.taken_over),
            handed_back: get(&self.handed_back),
            suspects: get(&self.suspects),
            dead_lettered: get(&self.dead_lettered),
            handled: get(&self.handled),
            unacked: get(&self.unacked),
            timeouts: get(&self.timeouts),
            ack_errors: get(&self.ack_errors),
            claim_errors: get(&self.claim_errors),
            dead_letter_errors: get(&self.dead_letter_errors),
            dropped: get(&self.dropped),
            gaps: get(&self.gaps),
        }
    }
}

/// Live state of the shared connection, shared by the bus, its publisher and the connection's
/// supervisor.
#[derive(Debug)]
pub(crate) struct ConnStats {
    pub(crate) connected: AtomicBool,
    last_error: Mutex<Option<String>>,
    /// Whether `last_error` is set: clearing a clear error takes no lock.
    failing: AtomicBool,
    pub(crate) publish_errors: AtomicU64,
    pub(crate) probe_failures: AtomicU64,
    pub(crate) replaced: AtomicU64,
}

impl Default for ConnStats {
    fn default() -> Self {
        ConnStats {
            connected: AtomicBool::new(true),
            last_error: Mutex::new(None),
            failing: AtomicBool::new(false),
            publish_errors: AtomicU64::new(0),
            probe_failures: AtomicU64::new(0),
            replaced: AtomicU64::new(0),
        }
    }
}

impl ConnStats {
    /// Records a failure of the publish path or of a probe.
    pub(crate) fn failed(&self, error: String) {
        if let Ok(mut e) = self.last_error.lock() {
            *e = Some(error);
            self.failing.store(true, Ordering::Relaxed);
        }
    }

    /// Records that the connection works again; cheap when nothing was failing (the hot path).
    pub(crate) fn ok(&self) {
        self.connected.store(true, Ordering::Relaxed);
        if self.failing.load(Ordering::Relaxed)
            && let Ok(mut e) = self.last_error.lock()
        {
            *e = None;
            self.failing.store(false, Ordering::Relaxed);
        }
    }

    pub(crate) fn snapshot(&self) -> ConnectionHealth {
        let get = |c: &AtomicU64| c.load(Ordering::Relaxed);
        ConnectionHealth {
            connected: self.connected.load(Ordering::Relaxed),
            last_error: self.last_error.lock().ok().and_then(|e| e.clone()),
            publish_errors: get(&self.publish_errors),
            probe_failures: get(&self.probe_failures),
            replaced: get(&self.replaced),
        }
    }
}
