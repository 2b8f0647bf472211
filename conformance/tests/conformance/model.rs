//! The events, handlers and the run log every behaviour of the suite uses. Handlers are linked
//! into the test binary; each test selects its own with `.handlers([...])` and runs in its own
//! namespace (and, for Redis, its own server), so tests never see each other's events.
//!
//! Counting happens inside the handlers, into a [`Log`] given as state, on both transports:
//! the bodies are identical and the count does not depend on what a transport reports.

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use eventbus::prelude::*;
use tokio::sync::{Semaphore, watch};

// ---------------------------------------------------------------------------------------------
// The run log.

/// One handler run, as the handler saw it.
#[derive(Debug, Clone)]
pub(crate) struct Run {
    pub(crate) handler: &'static str,
    pub(crate) id: EventId,
    pub(crate) attempt: u32,
    /// The event's own number (its `n` field).
    pub(crate) n: u64,
    pub(crate) started: Instant,
    /// `Some(true)` when the run returned `Ok`, `Some(false)` when it failed, `None` while it
    /// runs (or when it was abandoned).
    pub(crate) ok: Option<bool>,
    /// The run started while [`Log::hold`] was set: it never finishes.
    pub(crate) held: bool,
}

/// Every run of every handler of one test, with the switches the handlers obey. Cheap to clone;
/// clones share everything (a second consumer built from the same settings shares the log).
#[derive(Clone)]
pub(crate) struct Log(Arc<Inner>);

struct Inner {
    runs: Mutex<Vec<Run>>,
    /// How many runs finished with `Ok`.
    finished: watch::Sender<usize>,
    /// While set, a run that starts never finishes: the stand-in for a process that dies with
    /// runs in flight.
    hold: AtomicBool,
    /// Gated handlers wait for a permit.
    gate: Semaphore,
    /// While set, the breakable handlers fail.
    broken: AtomicBool,
}

impl Default for Log {
    fn default() -> Self {
        Log(Arc::new(Inner {
            runs: Mutex::default(),
            finished: watch::Sender::new(0),
            hold: AtomicBool::new(false),
            gate: Semaphore::new(0),
            broken: AtomicBool::new(false),
        }))
    }
}

impl Log {
    /// Records the start of a run; returns its index.
    fn start(&self, ctx: &Context, n: u64) -> usize {
        let mut runs = self.0.runs.lock().expect("lock");
        runs.push(Run {
            handler: ctx.handler(),
            id: ctx.event_id(),
            attempt: ctx.attempt(),
            n,
            started: Instant::now(),
            ok: None,
            held: self.0.hold.load(Ordering::SeqCst),
        });
        runs.len() - 1
    }

    fn held(&self, run: usize) -> bool {
        self.0.runs.lock().expect("lock")[run].held
    }

    fn end(&self, run: usize, ok: bool) {
        self.0.runs.lock().expect("lock")[run].ok = Some(ok);
        if ok {
            self.0.finished.send_modify(|n| *n += 1);
        }
    }

    /// Every run so far, in start order.
    pub(crate) fn runs(&self) -> Vec<Run> {
        self.0.runs.lock().expect("lock").clone()
    }

    /// The runs of one handler, in start order.
    pub(crate) fn runs_of(&self, handler: &str) -> Vec<Run> {
        self.runs()
            .into_iter()
            .filter(|r| r.handler == handler)
            .collect()
    }

    /// The events a handler finished with `Ok`, in start order of those runs.
    pub(crate) fn handled(&self, handler: &str) -> Vec<EventId> {
        self.runs_of(handler)
            .into_iter()
            .filter(|r| r.ok == Some(true))
            .map(|r| r.id)
            .collect()
    }

    /// The numbers of the events a handler finished with `Ok`, sorted.
    pub(crate) fn handled_numbers(&self, handler: &str) -> Vec<u64> {
        let mut v: Vec<u64> = self
            .runs_of(handler)
            .into_iter()
            .filter(|r| r.ok == Some(true))
            .map(|r| r.n)
            .collect();
        v.sort_unstable();
        v
    }

    /// The numbers of the events whose runs of `handler` started, in start order.
    pub(crate) fn entered(&self, handler: &str) -> Vec<u64> {
        self.runs_of(handler).into_iter().map(|r| r.n).collect()
    }

    /// Runs that started while held (they never finish).
    pub(crate) fn held_runs(&self) -> Vec<Run> {
        self.runs().into_iter().filter(|r| r.held).collect()
    }

    /// While `on`, runs that start never finish.
    pub(crate) fn hold(&self, on: bool) {
        self.0.hold.store(on, Ordering::SeqCst);
    }

    /// Lets every gated run (now and later) through.
    pub(crate) fn open_gate(&self) {
        self.0.gate.add_permits(Semaphore::MAX_PERMITS / 2);
    }

    /// While `on`, the breakable handlers fail.
    pub(crate) fn set_broken(&self, on: bool) {
        self.0.broken.store(on, Ordering::SeqCst);
    }

    fn broken(&self) -> bool {
        self.0.broken.load(Ordering::SeqCst)
    }

    async fn gate(&self) {
        self.0
            .gate
            .acquire()
            .await
            .expect("gate is never closed")
            .forget();
    }

    /// Waits (at most 30 s, then the run fails) until `k` runs of any handler finished `Ok`.
    async fn finished_at_least(&self, k: usize) -> anyhow::Result<()> {
        let mut rx = self.0.finished.subscribe();
        tokio::time::timeout(Duration::from_secs(30), rx.wait_for(|n| *n >= k))
            .await
            .map_err(|_| anyhow::anyhow!("no other run finished within 30 s"))?
            .map_err(|_| anyhow::anyhow!("log dropped"))?;
        Ok(())
    }
}

// ---------------------------------------------------------------------------------------------
// Durable events and their handlers.

/// Fan-out: two handlers of one event.
#[derive(Debug, Clone, Serialize, Deserialize, DomainEvent)]
#[event(name = "conf.order")]
pub(crate) struct Order {
    pub(crate) n: u64,
}

#[event_handler(name = "conf.fanout_a")]
async fn fanout_a(ev: Order, ctx: Context, log: State<Log>) -> anyhow::Result<()> {
    let run = log.start(&ctx, ev.n);
    log.end(run, true);
    Ok(())
}

#[event_handler(name = "conf.fanout_b")]
async fn fanout_b(ev: Order, ctx: Context, log: State<Log>) -> anyhow::Result<()> {
    let run = log.start(&ctx, ev.n);
    log.end(run, true);
    Ok(())
}

/// Competing consumers: one handler, two consumers.
#[derive(Debug, Clone, Serialize, Deserialize, DomainEvent)]
#[event(name = "conf.task")]
pub(crate) struct Task {
    pub(crate) n: u64,
}

/// The first run of the test waits until some other run finished: whichever consumer took the
/// first event, the other one must handle something meanwhile, so both take part.
#[event_handler(name = "conf.compete")]
async fn compete(ev: Task, ctx: Context, log: State<Log>) -> anyhow::Result<()> {
    let run = log.start(&ctx, ev.n);
    if run == 0 {
        log.finished_at_least(1).await?;
    }
    log.end(run, true);
    Ok(())
}

/// Retry: fails twice, then succeeds.
#[derive(Debug, Clone, Serialize, Deserialize, DomainEvent)]
#[event(name = "conf.payment")]
pub(crate) struct Payment {
    pub(crate) n: u64,
}

/// Retry policy: the bus's (the test sets it).
#[event_handler(name = "conf.flaky")]
async fn flaky(ev: Payment, ctx: Context, log: State<Log>) -> anyhow::Result<()> {
    let run = log.start(&ctx, ev.n);
    if ctx.attempt() <= 2 {
        log.end(run, false);
        anyhow::bail!("payment gateway unavailable (attempt {})", ctx.attempt());
    }
    log.end(run, true);
    Ok(())
}

/// Dead letters: always fails.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, DomainEvent)]
#[event(name = "conf.ledger")]
pub(crate) struct Ledger {
    pub(crate) n: u64,
    pub(crate) account: String,
    pub(crate) cents: i64,
}

#[event_handler(name = "conf.doomed", retries = 2, backoff = "10ms")]
async fn doomed(ev: Ledger, ctx: Context, log: State<Log>) -> anyhow::Result<()> {
    let run = log.start(&ctx, ev.n);
    log.end(run, false);
    anyhow::bail!("ledger rejected account {}", ev.account)
}

/// Replay: one breakable handler and one that always works.
#[derive(Debug, Clone, Serialize, Deserialize, DomainEvent)]
#[event(name = "conf.invoice")]
pub(crate) struct Invoice {
    pub(crate) n: u64,
}

#[event_handler(name = "conf.mailer", retries = 1, backoff = "10ms")]
async fn mailer(ev: Invoice, ctx: Context, log: State<Log>) -> anyhow::Result<()> {
    let run = log.start(&ctx, ev.n);
    if log.broken() {
        log.end(run, false);
        anyhow::bail!("smtp relay refused invoice {}", ev.n);
    }
    log.end(run, true);
    Ok(())
}

#[event_handler(name = "conf.audit")]
async fn audit(ev: Invoice, ctx: Context, log: State<Log>) -> anyhow::Result<()> {
    let run = log.start(&ctx, ev.n);
    log.end(run, true);
    Ok(())
}

/// Version checks and poison input: the handler knows schema versions 1 and 2.
#[derive(Debug, Clone, Serialize, Deserialize, DomainEvent)]
#[event(name = "conf.parcel", version = 2)]
pub(crate) struct Parcel {
    pub(crate) n: u64,
    pub(crate) parcel: String,
    pub(crate) grams: u32,
}

#[event_handler(name = "conf.parcels")]
async fn parcels(ev: Parcel, ctx: Context, log: State<Log>) -> anyhow::Result<()> {
    let run = log.start(&ctx, ev.n);
    log.end(run, true);
    Ok(())
}

// What other producers write under the name `conf.parcel`: a newer deploy (schema version 3),
// an older one (version 1), and a broken one (data that does not decode into `Parcel`). They
// implement `DomainEvent` by hand on purpose: a derive would register a second type for the
// name in this binary, which is a start-up error for every bus here, and in production these
// producers live in other binaries. Publishing them through the bus is the same injection on
// both transports; entries that are not envelopes at all are written with `Node::publish_raw`.

/// `conf.parcel` as a newer producer writes it.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub(crate) struct NewerParcel {
    pub(crate) n: u64,
    pub(crate) parcel: String,
    pub(crate) grams: u32,
    pub(crate) fragile: bool,
}

impl DomainEvent for NewerParcel {
    const NAME: &'static str = "conf.parcel";
    const VERSION: u32 = 3;
}

/// `conf.parcel` as an older producer writes it.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub(crate) struct OlderParcel {
    pub(crate) n: u64,
    pub(crate) parcel: String,
    pub(crate) grams: u32,
}

impl DomainEvent for OlderParcel {
    const NAME: &'static str = "conf.parcel";
    const VERSION: u32 = 1;
}

/// `conf.parcel` from a broken producer: `parcel` is a number, `grams` is missing.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub(crate) struct BrokenParcel {
    pub(crate) n: u64,
    pub(crate) parcel: u64,
    pub(crate) weight: String,
}

impl DomainEvent for BrokenParcel {
    const NAME: &'static str = "conf.parcel";
    const VERSION: u32 = 2;
}

/// Crashes: a worker whose runs never finish while the log holds them.
#[derive(Debug, Clone, Serialize, Deserialize, DomainEvent)]
#[event(name = "conf.job")]
pub(crate) struct Job {
    pub(crate) n: u64,
}

/// Retry policy: the bus's (the test sets `retries`).
#[event_handler(name = "conf.worker")]
async fn worker(ev: Job, ctx: Context, log: State<Log>) -> anyhow::Result<()> {
    let run = log.start(&ctx, ev.n);
    if log.held(run) {
        std::future::pending::<()>().await;
    }
    log.end(run, true);
    Ok(())
}

/// Shutdown: a run that waits for the gate.
#[derive(Debug, Clone, Serialize, Deserialize, DomainEvent)]
#[event(name = "conf.slow")]
pub(crate) struct Slow {
    pub(crate) n: u64,
}

#[event_handler(name = "conf.slow_worker", concurrency = 1)]
async fn slow(ev: Slow, ctx: Context, log: State<Log>) -> anyhow::Result<()> {
    let run = log.start(&ctx, ev.n);
    log.gate().await;
    log.end(run, true);
    Ok(())
}

// ---------------------------------------------------------------------------------------------
// Broadcast events and their handlers.

/// Broadcast fan-out: two handlers, in every instance.
#[derive(Debug, Clone, Serialize, Deserialize, DomainEvent)]
#[event(name = "conf.ping", broadcast)]
pub(crate) struct Ping {
    pub(crate) n: u64,
}

#[event_handler(name = "conf.ping_one")]
async fn ping_one(ev: Ping, ctx: Context, log: State<Log>) -> anyhow::Result<()> {
    let run = log.start(&ctx, ev.n);
    log.end(run, true);
    Ok(())
}

#[event_handler(name = "conf.ping_two")]
async fn ping_two(ev: Ping, ctx: Context, log: State<Log>) -> anyhow::Result<()> {
    let run = log.start(&ctx, ev.n);
    log.end(run, true);
    Ok(())
}

/// Broadcast queue bounds: one run at a time, held by the gate.
#[derive(Debug, Clone, Serialize, Deserialize, DomainEvent)]
#[event(name = "conf.tick", broadcast)]
pub(crate) struct Tick {
    pub(crate) n: u64,
}

#[event_handler(name = "conf.tick_gated", concurrency = 1)]
async fn tick_gated(ev: Tick, ctx: Context, log: State<Log>) -> anyhow::Result<()> {
    let run = log.start(&ctx, ev.n);
    log.gate().await;
    log.end(run, true);
    Ok(())
}

/// Order: one run at a time.
#[derive(Debug, Clone, Serialize, Deserialize, DomainEvent)]
#[event(name = "conf.step")]
pub(crate) struct Step {
    pub(crate) n: u64,
}

#[event_handler(name = "conf.sequential", concurrency = 1)]
async fn sequential(ev: Step, ctx: Context, log: State<Log>) -> anyhow::Result<()> {
    let run = log.start(&ctx, ev.n);
    tokio::task::yield_now().await;
    log.end(run, true);
    Ok(())
}

/// Crash accounting: an event whose handler takes the process down (`crash: true`) every time it
/// runs, and a harmless one of the same type.
#[derive(Debug, Clone, Serialize, Deserialize, DomainEvent)]
#[event(name = "conf.bomb")]
pub(crate) struct Bomb {
    pub(crate) n: u64,
    pub(crate) crash: bool,
}

/// Retry policy: the bus's (the test sets `retries`, or keeps the default). A `crash: true` run
/// never finishes: it stands for a process that dies inside the handler, and the test kills the
/// consumer as soon as it has started.
#[event_handler(name = "conf.bomber")]
async fn bomber(ev: Bomb, ctx: Context, log: State<Log>) -> anyhow::Result<()> {
    let run = log.start(&ctx, ev.n);
    if ev.crash {
        std::future::pending::<()>().await;
    }
    log.end(run, true);
    Ok(())
}

/// A failure, then a crash before the retry.
#[derive(Debug, Clone, Serialize, Deserialize, DomainEvent)]
#[event(name = "conf.refund")]
pub(crate) struct Refund {
    pub(crate) n: u64,
}

/// Fails its first attempt and works after that. The 10 s backoff keeps the in-process retry
/// far away: the test kills the consumer while it waits.
#[event_handler(name = "conf.refunder", backoff = "10s")]
async fn refunder(ev: Refund, ctx: Context, log: State<Log>) -> anyhow::Result<()> {
    let run = log.start(&ctx, ev.n);
    if ctx.attempt() == 1 {
        log.end(run, false);
        anyhow::bail!("card network unavailable for refund {}", ev.n);
    }
    log.end(run, true);
    Ok(())
}

/// Broadcast queue byte bound: an event with a padding to make it large, one run at a time,
/// held by the gate.
#[derive(Debug, Clone, Serialize, Deserialize, DomainEvent)]
#[event(name = "conf.blob", broadcast)]
pub(crate) struct Blob {
    pub(crate) n: u64,
    pub(crate) pad: String,
}

#[event_handler(name = "conf.blob_gated", concurrency = 1)]
async fn blob_gated(ev: Blob, ctx: Context, log: State<Log>) -> anyhow::Result<()> {
    let run = log.start(&ctx, ev.n);
    log.gate().await;
    log.end(run, true);
    Ok(())
}
