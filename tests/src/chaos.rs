//! The chaos checker: proves "at least once, nothing lost" under injected faults.
//!
//! Every event a chaos test publishes carries a unique number `n` in its payload. The test
//! records, per `n`:
//!
//! - **acked**: some `publish` of it returned `Ok` (Redis stored it at least once; a publish that
//!   retried internally may have stored it twice, both copies with one event id);
//! - **uncertain**: every `publish` of it returned `Err` (it may or may not be stored);
//! - **handled**: how many times a handler ran to completion on it. In-process handlers call
//!   [`Checker::handled`]; consumer processes `RPUSH "<n>:<consumer>"` to a list in a *separate*
//!   `redis-server` that the fault never touches (see [`record_key`] and [`handled_from_list`]),
//!   which the test feeds in with [`Checker::set_handled`].
//!
//! - **dead-lettered**: the `n` of every dead letter (read back from the dead-letter stream with
//!   [`stream_payload_ids`] and fed in with [`Checker::set_dead_lettered`]). Only a **culprit**
//!   ([`Checker::culprit`]: an event that fails on its own, e.g. a job that aborts its process)
//!   may be dead-lettered; any other dead letter is *innocent*.
//!
//! The [`Verdict`] is `lost` = acked but never handled, plus every innocent dead letter (must be
//! empty; a culprit that was dead-lettered is accounted for), `unexpected` = handled but never
//! published (must be empty), and `duplicates` = handler runs beyond the first per `n`
//! (counted, reported, bounded per scenario). Everything is deduplicated by the payload's `n`,
//! never by the Redis entry id, so a publish stored twice counts once.

use std::collections::{BTreeMap, BTreeSet};
use std::fmt::Write as _;
use std::future::Future;
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::{Duration, Instant};

use eventbus::{Bus, DomainEvent};
use tokio::sync::watch;
use tokio::task::JoinSet;

/// Whether `EVENTBUS_CHAOS_FULL=1` asks for the full counts.
pub fn full() -> bool {
    std::env::var("EVENTBUS_CHAOS_FULL").is_ok_and(|v| v == "1")
}

/// `full_count` under `EVENTBUS_CHAOS_FULL=1`, else the smaller CI count.
pub fn count(ci: u64, full_count: u64) -> u64 {
    if full() { full_count } else { ci }
}

/// Runs chaos scenarios of one test binary one at a time: each one starts several processes and
/// loads the (small) machine, and its fault timings should not be skewed by a neighbour's.
/// Hold the guard for the whole test; it does not poison when a test fails.
pub async fn exclusive() -> tokio::sync::MutexGuard<'static, ()> {
    static LOCK: tokio::sync::Mutex<()> = tokio::sync::Mutex::const_new(());
    LOCK.lock().await
}

#[derive(Debug, Default)]
struct Inner {
    /// `n` → when its first successful publish returned.
    acked: BTreeMap<u64, Instant>,
    /// Publish calls that returned `Err`, per `n` (whether or not a later one succeeded).
    failed: BTreeMap<u64, u32>,
    /// `n` → completed handler runs.
    handled: BTreeMap<u64, u64>,
    /// `n` → dead letters written for it.
    dead_lettered: BTreeMap<u64, u64>,
    /// Events that fail on their own and may be dead-lettered.
    culprits: BTreeSet<u64>,
}

impl Inner {
    /// Acked, not handled, and not a culprit that was dead-lettered.
    fn unresolved(&self, n: u64) -> bool {
        !self.handled.contains_key(&n)
            && !(self.culprits.contains(&n) && self.dead_lettered.contains_key(&n))
    }

    /// Dead-lettered without being a culprit.
    fn innocent_dead_letters(&self) -> BTreeSet<u64> {
        self.dead_lettered
            .keys()
            .filter(|n| !self.culprits.contains(n))
            .copied()
            .collect()
    }
}

/// Records what was published and what was handled; cheap to clone (clones share the record),
/// usable as handler state (`State<Checker>`).
#[derive(Debug, Clone, Default)]
pub struct Checker {
    inner: Arc<Mutex<Inner>>,
}

impl Checker {
    /// An empty record.
    pub fn new() -> Checker {
        Checker::default()
    }

    fn lock(&self) -> MutexGuard<'_, Inner> {
        // A panic while holding the lock leaves consistent maps behind: keep using them.
        self.inner
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
    }

    /// A publish of `n` returned `Ok`.
    pub fn published(&self, n: u64) {
        self.lock().acked.entry(n).or_insert_with(Instant::now);
    }

    /// A publish of `n` returned `Err`: it may or may not be stored.
    pub fn publish_failed(&self, n: u64) {
        *self.lock().failed.entry(n).or_default() += 1;
    }

    /// A handler completed on `n` (in-process handlers).
    pub fn handled(&self, n: u64) {
        *self.lock().handled.entry(n).or_default() += 1;
    }

    /// Replaces the handled record with `ns` (one item per completed run), e.g. read back from
    /// the recording server with [`handled_from_list`].
    pub fn set_handled(&self, ns: impl IntoIterator<Item = u64>) {
        let mut handled = BTreeMap::new();
        for n in ns {
            *handled.entry(n).or_default() += 1;
        }
        self.lock().handled = handled;
    }

    /// Marks `n` as a culprit: an event that fails on its own (its handler errs, or it aborts its
    /// process) and may therefore end in the dead letters.
    pub fn culprit(&self, n: u64) {
        self.lock().culprits.insert(n);
    }

    /// Replaces the dead-letter record with `ns` (one item per dead letter), e.g. read back from
    /// the dead-letter stream with [`stream_payload_ids`].
    pub fn set_dead_lettered(&self, ns: impl IntoIterator<Item = u64>) {
        let mut dead = BTreeMap::new();
        for n in ns {
            *dead.entry(n).or_default() += 1;
        }
        self.lock().dead_lettered = dead;
    }

    /// Events dead-lettered without being a culprit (a failure of the promise).
    pub fn innocent_dead_letters(&self) -> BTreeSet<u64> {
        self.lock().innocent_dead_letters()
    }

    /// How many distinct events were acked.
    pub fn acked_count(&self) -> usize {
        self.lock().acked.len()
    }

    /// The acked events with the time their publish returned `Ok`.
    pub fn acked(&self) -> BTreeMap<u64, Instant> {
        self.lock().acked.clone()
    }

    /// How many distinct events were handled at least once.
    pub fn handled_unique(&self) -> usize {
        self.lock().handled.len()
    }

    /// Publish calls that returned `Err` (each was retried by the load until one succeeded or it
    /// gave up).
    pub fn publish_errors(&self) -> u64 {
        self.lock().failed.values().map(|&c| u64::from(c)).sum()
    }

    /// Acked events not handled yet (a culprit that was dead-lettered is not missing).
    pub fn missing(&self) -> BTreeSet<u64> {
        let inner = self.lock();
        inner
            .acked
            .keys()
            .filter(|n| inner.unresolved(**n))
            .copied()
            .collect()
    }

    /// True when every acked event was handled at least once (or, for a culprit, handled or
    /// dead-lettered).
    pub fn all_acked_handled(&self) -> bool {
        let inner = self.lock();
        inner.acked.keys().all(|n| !inner.unresolved(*n))
    }

    /// The verdict over everything acked.
    pub fn verdict(&self, scenario: &str) -> Verdict {
        self.verdict_excusing(scenario, &BTreeSet::new())
    }

    /// The verdict, with `excused` acked events allowed to be missing (a documented loss window,
    /// e.g. writes Redis never made durable); they are reported as `excused=`.
    pub fn verdict_excusing(&self, scenario: &str, excused: &BTreeSet<u64>) -> Verdict {
        let inner = self.lock();
        let uncertain: BTreeSet<u64> = inner
            .failed
            .keys()
            .filter(|n| !inner.acked.contains_key(n))
            .copied()
            .collect();
        let innocent_dead_letters = inner.innocent_dead_letters();
        let lost = inner
            .acked
            .keys()
            .filter(|n| inner.unresolved(**n) && !excused.contains(n))
            .chain(innocent_dead_letters.iter())
            .copied()
            .collect();
        let excused_missing = inner
            .acked
            .keys()
            .filter(|n| inner.unresolved(**n) && excused.contains(n))
            .count();
        let unexpected = inner
            .handled
            .keys()
            .filter(|n| !inner.acked.contains_key(n) && !uncertain.contains(n))
            .copied()
            .collect();
        let handled_total: u64 = inner.handled.values().sum();
        Verdict {
            scenario: scenario.to_owned(),
            published_acked: inner.acked.len(),
            published_uncertain: uncertain.len(),
            handled_unique: inner.handled.len(),
            handled_total,
            lost,
            unexpected,
            duplicates: handled_total - inner.handled.len() as u64,
            excused: excused_missing,
            dead_letters: inner.dead_lettered.values().sum(),
            innocent_dead_letters,
            extra: Vec::new(),
        }
    }
}

/// The outcome of one scenario.
#[derive(Debug, Clone)]
pub struct Verdict {
    /// The scenario's short name.
    pub scenario: String,
    /// Distinct events some publish of which returned `Ok`.
    pub published_acked: usize,
    /// Distinct events every publish of which returned `Err`.
    pub published_uncertain: usize,
    /// Distinct events handled at least once.
    pub handled_unique: usize,
    /// Completed handler runs.
    pub handled_total: u64,
    /// Acked, never handled (and not excused), plus every innocent dead letter.
    pub lost: BTreeSet<u64>,
    /// Handled, never published.
    pub unexpected: BTreeSet<u64>,
    /// Handler runs beyond the first per event.
    pub duplicates: u64,
    /// Acked events missing but excused (a documented loss window).
    pub excused: usize,
    /// Dead letters written (culprits' and innocent ones).
    pub dead_letters: u64,
    /// Events dead-lettered without being a culprit: dead-lettered for failures not their own
    /// (also counted in `lost`).
    pub innocent_dead_letters: BTreeSet<u64>,
    /// Scenario-specific measurements printed after the counts.
    pub extra: Vec<(String, String)>,
}

impl Verdict {
    /// Adds a `key=value` measurement to the printed line.
    #[must_use]
    pub fn with(mut self, key: &str, value: impl std::fmt::Display) -> Verdict {
        self.extra.push((key.to_owned(), value.to_string()));
        self
    }

    /// The one-line summary, e.g.
    /// `chaos scenario=redis-restart published=2000 uncertain=0 handled_unique=2000 lost=0
    /// innocent_dead_letters=0 dead_letters=0 unexpected=0 duplicates=3`.
    pub fn line(&self) -> String {
        let mut line = format!(
            "chaos scenario={} published={} uncertain={} handled_unique={} lost={} innocent_dead_letters={} dead_letters={} unexpected={} duplicates={}",
            self.scenario,
            self.published_acked,
            self.published_uncertain,
            self.handled_unique,
            self.lost.len(),
            self.innocent_dead_letters.len(),
            self.dead_letters,
            self.unexpected.len(),
            self.duplicates
        );
        if self.excused > 0 {
            let _ = write!(line, " excused={}", self.excused);
        }
        for (k, v) in &self.extra {
            let _ = write!(line, " {k}={v}");
        }
        line
    }

    /// Prints [`line`](Self::line) to the test output.
    pub fn print(&self) {
        println!("{}", self.line());
    }

    /// Asserts no innocent dead letter, lost = ∅, unexpected = ∅ and duplicates ≤
    /// `max_duplicates`.
    ///
    /// # Panics
    ///
    /// When one of them does not hold; the message has the line and the first offending ids.
    pub fn assert_ok(&self, max_duplicates: u64) {
        let first = |s: &BTreeSet<u64>| s.iter().take(20).copied().collect::<Vec<_>>();
        assert!(
            self.innocent_dead_letters.is_empty(),
            "{}: dead-lettered without a failure of their own (first 20): {:?}",
            self.line(),
            first(&self.innocent_dead_letters)
        );
        assert!(
            self.lost.is_empty(),
            "{}: acked but never handled (first 20): {:?}",
            self.line(),
            first(&self.lost)
        );
        assert!(
            self.unexpected.is_empty(),
            "{}: handled but never published (first 20): {:?}",
            self.line(),
            first(&self.unexpected)
        );
        assert!(
            self.duplicates <= max_duplicates,
            "{}: more duplicates than the {max_duplicates} allowed",
            self.line()
        );
    }
}

/// The list in the recording server where consumer processes record handled events.
pub fn record_key(namespace: &str) -> String {
    format!("{namespace}:handled")
}

/// The recorded `(n, consumer)` pairs of `key` (items are `"<n>:<consumer>"`), in record order.
///
/// # Panics
///
/// When Redis fails or an item is malformed.
pub async fn handled_from_list(
    conn: &mut redis::aio::MultiplexedConnection,
    key: &str,
) -> Vec<(u64, String)> {
    let raw: Vec<String> = redis::cmd("LRANGE")
        .arg(key)
        .arg(0)
        .arg(-1)
        .query_async(conn)
        .await
        .expect("LRANGE of the record list");
    raw.iter()
        .map(|s| {
            let (n, who) = s.split_once(':').expect("record item is n:consumer");
            (
                n.parse().expect("record item starts with n"),
                who.to_owned(),
            )
        })
        .collect()
}

/// The list in the recording server where consumer processes record every run they start.
pub fn started_key(namespace: &str) -> String {
    format!("{namespace}:started")
}

/// The list in the recording server where a consumer process records a job that aborts it,
/// right before the abort.
pub fn crash_key(namespace: &str) -> String {
    format!("{namespace}:crashes")
}

/// One handler run a consumer process started: an item `"<n>:<attempt>:<pid>:<consumer>"` of
/// [`started_key`].
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Start {
    /// The job.
    pub n: u64,
    /// `ctx.attempt()` of the run.
    pub attempt: u32,
    /// The process (one life of a consumer name).
    pub pid: u32,
    /// The consumer name.
    pub consumer: String,
}

/// One job that aborted its consumer process: an item
/// `"<n>:<attempt>:<others>:<pid>:<consumer>"` of [`crash_key`].
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Crash {
    /// The job.
    pub n: u64,
    /// `ctx.attempt()` of the run that crashed.
    pub attempt: u32,
    /// Other runs of the handler in flight in that process when it aborted (0: it ran alone).
    pub others: usize,
    /// The process that aborted.
    pub pid: u32,
    /// The consumer name.
    pub consumer: String,
}

async fn lrange(conn: &mut redis::aio::MultiplexedConnection, key: &str) -> Vec<String> {
    redis::cmd("LRANGE")
        .arg(key)
        .arg(0)
        .arg(-1)
        .query_async(conn)
        .await
        .unwrap_or_else(|e| panic!("LRANGE {key}: {e}"))
}

/// `n` leading `:`-separated numbers of `item`, and the rest (a consumer name may hold `:`).
fn split_record(item: &str, n: usize) -> (Vec<u64>, String) {
    let parts: Vec<&str> = item.splitn(n + 1, ':').collect();
    assert_eq!(parts.len(), n + 1, "malformed record item {item:?}");
    let numbers = parts[..n]
        .iter()
        .map(|p| {
            p.parse()
                .unwrap_or_else(|e| panic!("record item {item:?}: {p:?} is not a number: {e}"))
        })
        .collect();
    (numbers, parts[n].to_owned())
}

/// The runs recorded in `key` (see [`started_key`]), in record order.
///
/// # Panics
///
/// When Redis fails or an item is malformed.
pub async fn starts_from_list(
    conn: &mut redis::aio::MultiplexedConnection,
    key: &str,
) -> Vec<Start> {
    lrange(conn, key)
        .await
        .iter()
        .map(|item| {
            let (v, consumer) = split_record(item, 3);
            Start {
                n: v[0],
                attempt: u32::try_from(v[1]).expect("attempt fits u32"),
                pid: u32::try_from(v[2]).expect("pid fits u32"),
                consumer,
            }
        })
        .collect()
}

/// The crashes recorded in `key` (see [`crash_key`]), in record order.
///
/// # Panics
///
/// When Redis fails or an item is malformed.
pub async fn crashes_from_list(
    conn: &mut redis::aio::MultiplexedConnection,
    key: &str,
) -> Vec<Crash> {
    lrange(conn, key)
        .await
        .iter()
        .map(|item| {
            let (v, consumer) = split_record(item, 4);
            Crash {
                n: v[0],
                attempt: u32::try_from(v[1]).expect("attempt fits u32"),
                others: usize::try_from(v[2]).expect("count fits usize"),
                pid: u32::try_from(v[3]).expect("pid fits u32"),
                consumer,
            }
        })
        .collect()
}

/// The payload numbers (`data.n` of each envelope) of every entry in `stream`, one item per
/// entry (an event stored twice appears twice). An empty list when the stream does not exist.
///
/// # Panics
///
/// When Redis fails or an entry is not an eventbus envelope with a numeric `data.n`.
pub async fn stream_payload_ids(
    conn: &mut redis::aio::MultiplexedConnection,
    stream: &str,
) -> Vec<u64> {
    let mut out = Vec::new();
    let mut start = "-".to_owned();
    loop {
        let reply: redis::streams::StreamRangeReply = redis::cmd("XRANGE")
            .arg(stream)
            .arg(&start)
            .arg("+")
            .arg("COUNT")
            .arg(5000)
            .query_async(conn)
            .await
            .expect("XRANGE");
        let Some(last) = reply.ids.last() else {
            return out;
        };
        start = format!("({}", last.id);
        for entry in &reply.ids {
            let raw: String = entry.get("envelope").expect("entry has an envelope field");
            let env: serde_json::Value = serde_json::from_str(&raw).expect("envelope is JSON");
            out.push(env["data"]["n"].as_u64().expect("envelope data has n"));
        }
    }
}

/// How a [`Load`] publishes.
#[derive(Debug, Clone)]
pub struct LoadOptions {
    /// Concurrent publisher tasks; task `k` publishes `n = start + k, start + k + tasks, ...` in
    /// order.
    pub tasks: u64,
    /// Target publish rate over all tasks (events per second); the faults of a scenario are
    /// timed against it, so it keeps the stream flowing while they happen.
    pub rate_per_sec: u64,
    /// How long one event is retried after failed publishes before it is left uncertain.
    pub give_up_after: Duration,
    /// Events `n >= hold_at` are not published until [`Load::release`]: a test holds back the
    /// tail of the stream until its faults are done, so they are sure to happen mid-stream.
    pub hold_at: u64,
}

impl Default for LoadOptions {
    fn default() -> Self {
        LoadOptions {
            tasks: 4,
            rate_per_sec: 1000,
            give_up_after: Duration::from_secs(30),
            hold_at: u64::MAX,
        }
    }
}

/// Publisher tasks that publish a range of event numbers, each event retried until `publish` returns `Ok` or
/// [`LoadOptions::give_up_after`] passes, recording every outcome in a [`Checker`].
#[derive(Debug)]
pub struct Load {
    tasks: JoinSet<()>,
    gate: watch::Sender<u64>,
    total: u64,
}

impl Load {
    /// Starts publishing `make(n)` for `n` in `ids` on `bus`.
    pub fn start<E, F>(
        bus: &Bus,
        checker: &Checker,
        ids: std::ops::Range<u64>,
        opts: LoadOptions,
        make: F,
    ) -> Load
    where
        E: DomainEvent,
        F: Fn(u64) -> E + Clone + Send + Sync + 'static,
    {
        let (gate, _) = watch::channel(opts.hold_at);
        let mut tasks = JoinSet::new();
        let tasks_n = opts.tasks.max(1);
        let period = Duration::from_secs_f64(tasks_n as f64 / opts.rate_per_sec.max(1) as f64);
        for k in 0..tasks_n {
            let bus = bus.clone();
            let checker = checker.clone();
            let make = make.clone();
            let mut gate = gate.subscribe();
            let give_up = opts.give_up_after;
            let ids = ids.clone();
            tasks.spawn(async move {
                let mut pace = tokio::time::interval(period);
                pace.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
                let mut n = ids.start + k;
                while n < ids.end {
                    if gate.wait_for(|&limit| n < limit).await.is_err() {
                        return; // the load was dropped
                    }
                    pace.tick().await;
                    let ev = make(n);
                    let started = Instant::now();
                    let mut backoff = Duration::from_millis(20);
                    loop {
                        match bus.publish(&ev).await {
                            Ok(_) => {
                                checker.published(n);
                                break;
                            }
                            Err(e) => {
                                checker.publish_failed(n);
                                if started.elapsed() > give_up {
                                    tracing::warn!(n, error = %e, "giving up publishing");
                                    break;
                                }
                                tokio::time::sleep(backoff).await; // ok: backoff before retrying a failed publish
                                backoff = (backoff * 2).min(Duration::from_millis(500));
                            }
                        }
                    }
                    n += tasks_n;
                }
            });
        }
        Load {
            tasks,
            gate,
            total: ids.end.saturating_sub(ids.start),
        }
    }

    /// Lets the held-back tail (`n >= hold_at`) be published.
    pub fn release(&self) {
        self.gate.send_replace(u64::MAX);
    }

    /// The number of events this load publishes.
    pub fn total(&self) -> u64 {
        self.total
    }

    /// Releases any held-back tail and waits until every event was published or given up.
    ///
    /// # Panics
    ///
    /// When that takes longer than `timeout`, or a publisher task panicked.
    pub async fn finish(mut self, timeout: Duration) {
        self.release();
        let all = async {
            while let Some(r) = self.tasks.join_next().await {
                r.expect("publisher task");
            }
        };
        tokio::time::timeout(timeout, all)
            .await
            .unwrap_or_else(|_| panic!("publishing did not finish within {timeout:?}"));
    }
}

/// Waits (under a deadline) until `cond` holds and returns how long that took.
///
/// # Panics
///
/// As [`wait_until`](crate::wait_until).
pub async fn time_until<F, Fut>(timeout: Duration, what: &str, cond: F) -> Duration
where
    F: FnMut() -> Fut,
    Fut: Future<Output = bool>,
{
    let started = Instant::now();
    crate::wait_until(timeout, what, cond).await;
    started.elapsed()
}

/// The number of pending entries of one consumer of a group (`XPENDING <stream> <group> - + N
/// <consumer>`); 0 when the stream or group does not exist.
///
/// # Panics
///
/// When Redis fails.
pub async fn consumer_pending(
    conn: &mut redis::aio::MultiplexedConnection,
    stream: &str,
    group: &str,
    consumer: &str,
) -> usize {
    let reply: redis::RedisResult<redis::streams::StreamPendingCountReply> = redis::cmd("XPENDING")
        .arg(stream)
        .arg(group)
        .arg("-")
        .arg("+")
        .arg(1_000_000)
        .arg(consumer)
        .query_async(conn)
        .await;
    match reply {
        Ok(r) => r.ids.len(),
        Err(e) if e.code() == Some("NOGROUP") => 0,
        Err(e) => panic!("XPENDING {stream} {group} - + N {consumer}: {e}"),
    }
}

/// The ids of the pending entries of a group (`XPENDING <stream> <group> - + N [consumer]`), of
/// one consumer when `consumer` is given; empty when the stream or group does not exist.
///
/// # Panics
///
/// When Redis fails.
pub async fn pending_ids(
    conn: &mut redis::aio::MultiplexedConnection,
    stream: &str,
    group: &str,
    consumer: Option<&str>,
) -> BTreeSet<String> {
    let mut cmd = redis::cmd("XPENDING");
    cmd.arg(stream).arg(group).arg("-").arg("+").arg(1_000_000);
    if let Some(consumer) = consumer {
        cmd.arg(consumer);
    }
    let reply: redis::RedisResult<redis::streams::StreamPendingCountReply> =
        cmd.query_async(conn).await;
    match reply {
        Ok(r) => r.ids.into_iter().map(|p| p.id).collect(),
        Err(e) if e.code() == Some("NOGROUP") => BTreeSet::new(),
        Err(e) => panic!("XPENDING {stream} {group} - + N {consumer:?}: {e}"),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn verdict_counts_lost_unexpected_duplicates_and_uncertain() {
        let c = Checker::new();
        for n in 0..5 {
            c.published(n);
        }
        c.publish_failed(5); // never acked: uncertain
        c.publish_failed(6);
        c.published(6); // failed once, then acked
        for n in [0, 1, 1, 2, 5, 6, 9] {
            c.handled(n);
        }
        let v = c.verdict("unit");
        assert_eq!(v.published_acked, 6);
        assert_eq!(v.published_uncertain, 1);
        assert_eq!(v.handled_unique, 6);
        assert_eq!(v.lost, BTreeSet::from([3, 4]));
        assert_eq!(v.unexpected, BTreeSet::from([9]), "5 was maybe published");
        assert_eq!(v.duplicates, 1);
        assert_eq!(c.missing(), BTreeSet::from([3, 4]));
        assert!(!c.all_acked_handled());
        assert_eq!(c.publish_errors(), 2);

        let v = c.verdict_excusing("unit", &BTreeSet::from([3]));
        assert_eq!(v.lost, BTreeSet::from([4]));
        assert_eq!(v.excused, 1);
        assert!(v.with("k", 7).line().ends_with("excused=1 k=7"));

        c.set_handled([0, 1, 2, 3, 4, 6, 6, 6]);
        let v = c.verdict("unit");
        assert!(v.lost.is_empty() && v.unexpected.is_empty());
        assert_eq!(v.duplicates, 2);
        v.assert_ok(2);
    }

    #[test]
    fn dead_letters_count_as_lost_unless_the_event_is_a_culprit() {
        let c = Checker::new();
        for n in 0..4 {
            c.published(n);
        }
        c.culprit(3);
        c.set_handled([0, 1, 2]);
        assert!(!c.all_acked_handled(), "the culprit is not dead-lettered yet");
        assert_eq!(c.missing(), BTreeSet::from([3]));
        c.set_dead_lettered([3, 1]);
        assert!(c.all_acked_handled(), "a dead-lettered culprit is accounted for");
        assert_eq!(c.innocent_dead_letters(), BTreeSet::from([1]));
        let v = c.verdict("unit");
        assert_eq!(v.lost, BTreeSet::from([1]), "handled, but also dead-lettered");
        assert_eq!(v.innocent_dead_letters, BTreeSet::from([1]));
        assert_eq!(v.dead_letters, 2);
        assert!(
            v.line().contains(" lost=1 innocent_dead_letters=1 dead_letters=2 "),
            "{}",
            v.line()
        );
        c.set_dead_lettered([3]);
        c.verdict("unit").assert_ok(0);
    }

    #[test]
    #[should_panic(expected = "dead-lettered without a failure of their own")]
    fn assert_ok_fails_on_an_innocent_dead_letter() {
        let c = Checker::new();
        c.published(1);
        c.handled(1);
        c.set_dead_lettered([1]);
        c.verdict("unit").assert_ok(u64::MAX);
    }

    #[test]
    fn record_items_split_into_numbers_and_a_consumer_name() {
        assert_eq!(
            split_record("7:2:4242:c:1", 3),
            (vec![7, 2, 4242], "c:1".to_owned())
        );
    }

    #[test]
    #[should_panic(expected = "acked but never handled")]
    fn assert_ok_fails_on_a_lost_event() {
        let c = Checker::new();
        c.published(1);
        c.verdict("unit").assert_ok(u64::MAX);
    }

    #[test]
    #[should_panic(expected = "more duplicates than the 0 allowed")]
    fn assert_ok_fails_on_too_many_duplicates() {
        let c = Checker::new();
        c.published(1);
        c.handled(1);
        c.handled(1);
        c.verdict("unit").assert_ok(0);
    }
}
