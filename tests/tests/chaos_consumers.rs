//! Chaos scenarios 5–6 (issue 3, issue 9): faults of consumer processes, each run with
//! `retries = 0` and with the default retry limit (3).
//!
//! Three `consumer` processes (the `consumer.job` handler, `tests/src/bin/consumer.rs`) share one
//! consumer group; the test publishes numbered jobs from several publisher tasks. Each process
//! records every run it starts (with `ctx.attempt()`) and every run it completes in lists on a
//! *second* `redis-server` that no fault touches (`RECORD_URL`), and the [`Checker`] reads them
//! back, together with the dead-letter stream: no job fails on its own here, so any dead letter
//! is innocent and counts as lost. One `chaos scenario=...` verdict line is printed per test
//! (run with `--nocapture` to see it).
//!
//! Counts: CI sizes by default, 10,000 jobs with `EVENTBUS_CHAOS_FULL=1`. Timeouts are small:
//! block time 200 ms, visibility timeout 1 s, claim interval 200 ms.

use std::collections::{BTreeMap, BTreeSet};
use std::time::{Duration, Instant};

use eventbus::prelude::*;
use eventbus_tests::chaos::{
    self, Checker, Load, LoadOptions, consumer_pending, handled_from_list, pending_ids,
    record_key, started_key, starts_from_list, stream_payload_ids, time_until,
};
use eventbus_tests::{
    ChildProcess, RedisServer, dlq_key, init_tracing, namespace, pending_count, stream_key,
    wait_until,
};

/// The `consumer` binary's event (same name and fields).
#[derive(Debug, Clone, Serialize, Deserialize, DomainEvent)]
#[event(name = "test.job")]
struct Job {
    n: u64,
    crash: bool,
    sleep_ms: u64,
}

const GROUP: &str = "consumer.job";
const VISIBILITY: Duration = Duration::from_secs(1);
const CLAIM_INTERVAL: Duration = Duration::from_millis(200);
/// Run slots of each consumer process.
const SLOTS: u32 = 16;
/// Batch size of each consumer process: with [`SLOTS`], a saturated consumer holds 16 running
/// and 100 prefetched entries.
const BATCH: usize = 100;
/// Jobs sleep 40–120 ms: three consumers handle about 600 jobs/s, less than the load publishes,
/// so a backlog builds and every consumer's prefetch window is full.
const MAX_JOB_MS: u64 = 120;

fn job(n: u64) -> Job {
    Job {
        n,
        crash: false,
        sleep_ms: 40 + (n * 37) % (MAX_JOB_MS - 40 + 1),
    }
}

/// Jobs of the rolling restarts: 80–240 ms, so three consumers handle about 300/s and the
/// backlog outlasts the three restarts.
fn slow_job(n: u64) -> Job {
    Job {
        n,
        crash: false,
        sleep_ms: 80 + (n * 37) % 161,
    }
}

/// `retries0` or `retries-default`, for scenario names.
fn label(retries: Option<u32>) -> String {
    retries.map_or_else(|| "retries-default".to_owned(), |r| format!("retries{r}"))
}

/// The Redis under test, the recording Redis, and what the consumers need to reach them.
struct Rig {
    server: RedisServer,
    record: RedisServer,
    ns: String,
    stream: String,
    /// `EVENTBUS_RETRIES` of the consumers; `None` leaves the bus default.
    retries: Option<u32>,
    checker: Checker,
}

impl Rig {
    fn new(test: &str, retries: Option<u32>) -> Rig {
        let ns = namespace(test);
        Rig {
            server: RedisServer::start(),
            record: RedisServer::start(),
            stream: stream_key(&ns, Job::NAME),
            ns,
            retries,
            checker: Checker::new(),
        }
    }

    /// Starts consumer process `name` ([`SLOTS`] slots, batch size [`BATCH`]) and waits until it
    /// is ready.
    fn consumer(&self, name: &str) -> ChildProcess {
        let url = self.server.url();
        let record_url = self.record.url();
        let concurrency = SLOTS.to_string();
        let batch = BATCH.to_string();
        let retries = self.retries.map(|r| r.to_string());
        let mut env = vec![
            ("REDIS_URL", url.as_str()),
            ("RECORD_URL", record_url.as_str()),
            ("EVENTBUS_NAMESPACE", self.ns.as_str()),
            ("EVENTBUS_HANDLERS", GROUP),
            ("EVENTBUS_CONSUMER", name),
            ("EVENTBUS_CONCURRENCY", concurrency.as_str()),
            ("EVENTBUS_BATCH_SIZE", batch.as_str()),
            ("EVENTBUS_VISIBILITY_TIMEOUT", "1s"),
            ("EVENTBUS_CLAIM_INTERVAL", "200ms"),
            ("EVENTBUS_BLOCK_TIME", "200ms"),
            ("EVENTBUS_DRAIN_TIMEOUT", "20s"),
        ];
        if let Some(r) = &retries {
            env.push(("EVENTBUS_RETRIES", r.as_str()));
        }
        let mut child = ChildProcess::spawn(env!("CARGO_BIN_EXE_consumer"), &env);
        child.wait_for_line("ready", Duration::from_secs(20));
        child
    }

    async fn publisher(&self) -> Bus {
        Bus::builder()
            .redis_url(self.server.url())
            .namespace(&self.ns)
            .handlers(Vec::<String>::new())
            .build()
            .await
            .expect("publish-only bus")
    }

    /// Reads the record list into the checker; returns the `(n, consumer)` pairs.
    async fn sync(&self, rec: &mut redis::aio::MultiplexedConnection) -> Vec<(u64, String)> {
        let records = handled_from_list(rec, &record_key(&self.ns)).await;
        self.checker.set_handled(records.iter().map(|r| r.0));
        records
    }

    /// Reads the dead letters into the checker; returns how many there are.
    async fn sync_dead_letters(&self, conn: &mut redis::aio::MultiplexedConnection) -> usize {
        let dead = stream_payload_ids(conn, &dlq_key(&self.ns, Job::NAME)).await;
        let count = dead.len();
        self.checker.set_dead_lettered(dead);
        count
    }

    /// Waits until every acked job was handled (or dead-lettered: the verdict then reports it)
    /// and the group has nothing pending.
    async fn settle(&self, timeout: Duration) {
        let rec = self.record.conn().await;
        let conn = self.server.conn().await;
        wait_until(timeout, "every acked job handled or dead-lettered", || {
            let mut rec = rec.clone();
            let mut conn = conn.clone();
            async move {
                self.sync(&mut rec).await;
                self.sync_dead_letters(&mut conn).await;
                self.checker.all_acked_handled()
                    || self
                        .checker
                        .missing()
                        .is_subset(&self.checker.innocent_dead_letters())
            }
        })
        .await;
        wait_until(Duration::from_secs(30), "nothing pending", || {
            let mut conn = conn.clone();
            async move { pending_count(&mut conn, &self.stream, GROUP).await == 0 }
        })
        .await;
        let mut rec = rec.clone();
        let mut conn = conn.clone();
        self.sync(&mut rec).await;
        self.sync_dead_letters(&mut conn).await;
    }

    /// `ctx.attempt()` of every recorded run: attempt → runs.
    async fn attempts(&self) -> BTreeMap<u32, usize> {
        let mut rec = self.record.conn().await;
        let mut by = BTreeMap::new();
        for s in starts_from_list(&mut rec, &started_key(&self.ns)).await {
            *by.entry(s.attempt).or_default() += 1;
        }
        by
    }
}

/// Scenario 5. One of 3 consumer processes is killed with SIGKILL while it has 16 runs in flight
/// and about 100 entries prefetched (16 slots, batch size 100, jobs of 40–120 ms published faster
/// than the three handle them).
///
/// Right before the kill the victim is frozen with SIGSTOP and its pending entries are read with
/// XPENDING: that is exactly its in-flight set (running, prefetched, or finished but not acked;
/// it can neither take nor finish anything while stopped). The victim's runs were interrupted
/// by a crash that none of them caused alone, and its prefetched entries never started, so none
/// of them is charged an attempt: with `retries = 0` as with the default, every one must be
/// handled, none dead-lettered, and every run reports `ctx.attempt() == 1`.
///
/// Asserts: lost = ∅ (no innocent dead letter), unexpected = ∅, duplicates ≤ that in-flight
/// count (only a job the victim finished and recorded but did not ack can run twice), and
/// every entry the victim held is handled and acked (`kill9_drain_ms`, from the kill to none of
/// them pending) within visibility timeout + claim interval + the time to run them all one after
/// another on one survivor (entries redelivered after a crash may have to run alone) + 5 s slack.
async fn sigkill_of_one_of_three_consumers(retries: Option<u32>) {
    init_tracing();
    let _serial = chaos::exclusive().await;
    let started = Instant::now();
    let scenario = format!("consumer-kill9-{}", label(retries));
    let total = chaos::count(2_000, 10_000);
    let rig = Rig::new("chaos-kill9", retries);
    let mut victim = rig.consumer("victim");
    let _c1 = rig.consumer("c1");
    let _c2 = rig.consumer("c2");
    let bus = rig.publisher().await;
    let load = Load::start(
        &bus,
        &rig.checker,
        0..total,
        LoadOptions {
            rate_per_sec: 1_200,
            hold_at: total * 3 / 4,
            ..LoadOptions::default()
        },
        job,
    );

    let mut conn = rig.server.conn().await;
    let mut rec = rig.record.conn().await;
    wait_until(
        Duration::from_secs(60),
        "a fifth of the jobs handled, and the victim's prefetch window (16 + 100) nearly full",
        || {
            let mut conn = conn.clone();
            let mut rec = rec.clone();
            let rig = &rig;
            async move {
                rig.sync(&mut rec).await.len() as u64 >= total / 5
                    && consumer_pending(&mut conn, &rig.stream, GROUP, "victim").await
                        >= BATCH
            }
        },
    )
    .await;
    victim.signal("STOP");
    let held = pending_ids(&mut conn, &rig.stream, GROUP, Some("victim")).await;
    let in_flight = held.len();
    let total_pending = pending_count(&mut conn, &rig.stream, GROUP).await;
    let victim_pid = victim.id();
    victim.kill();
    let killed_at = Instant::now();
    let claimed = time_until(
        Duration::from_secs(30),
        "the killed consumer's pending entries are claimed",
        || {
            let mut conn = conn.clone();
            let rig = &rig;
            async move { consumer_pending(&mut conn, &rig.stream, GROUP, "victim").await == 0 }
        },
    )
    .await;
    wait_until(
        Duration::from_secs(60),
        "every entry the killed consumer held is handled and acked",
        || {
            let mut conn = conn.clone();
            let rig = &rig;
            let held = &held;
            async move {
                pending_ids(&mut conn, &rig.stream, GROUP, None)
                    .await
                    .is_disjoint(held)
            }
        },
    )
    .await;
    let drain = killed_at.elapsed();
    load.finish(Duration::from_secs(120)).await;
    rig.settle(Duration::from_secs(90)).await;
    let records = rig.sync(&mut rec).await;
    let by: BTreeSet<&str> = records.iter().map(|r| r.1.as_str()).collect();
    let starts = starts_from_list(&mut rec, &started_key(&rig.ns)).await;
    let victim_started: BTreeSet<u64> = starts
        .iter()
        .filter(|s| s.pid == victim_pid)
        .map(|s| s.n)
        .collect();
    let victim_done: BTreeSet<u64> = records
        .iter()
        .filter(|r| r.1 == "victim")
        .map(|r| r.0)
        .collect();
    let running_at_kill = victim_started.difference(&victim_done).count();
    let attempts = rig.attempts().await;

    let verdict = rig
        .checker
        .verdict(&scenario)
        .with("victim_in_flight", in_flight)
        .with("victim_running_at_kill", running_at_kill)
        .with("group_pending_at_kill", total_pending)
        .with("victim_claimed_ms", claimed.as_millis())
        .with("kill9_drain_ms", drain.as_millis())
        .with("attempts", format!("{attempts:?}").replace(' ', ""))
        .with("elapsed_ms", started.elapsed().as_millis());
    verdict.print();
    verdict.assert_ok(in_flight as u64);
    let bound = VISIBILITY
        + CLAIM_INTERVAL
        + Duration::from_millis(MAX_JOB_MS) * u32::try_from(in_flight).unwrap_or(u32::MAX)
        + Duration::from_secs(5);
    assert!(
        drain <= bound,
        "{}: the victim's entries drained in {drain:?}, more than {bound:?}",
        verdict.line()
    );
    assert!(
        by.contains("c1") && by.contains("c2") && by.contains("victim"),
        "all three consumers worked: {by:?}"
    );
    if running_at_kill > 1 {
        assert_eq!(
            attempts.keys().copied().collect::<Vec<_>>(),
            [1],
            "{}: no job failed and no crash was any job's alone, so nothing is charged and every run is attempt 1",
            verdict.line()
        );
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sigkill_of_one_of_three_consumers_with_retries_0_dead_letters_nothing() {
    sigkill_of_one_of_three_consumers(Some(0)).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sigkill_of_one_of_three_consumers_with_default_retries_loses_nothing() {
    sigkill_of_one_of_three_consumers(None).await;
}

/// Scenario 6. Rolling graceful restarts: each of 3 consumer processes (16 slots, batch size
/// 100, jobs of 80–240 ms, prefetch windows full) in turn gets a replacement, then SIGTERM, while jobs keep flowing
/// (the tail of the stream is held back until the last restart, so every restart happens
/// mid-stream).
///
/// Asserts: each stopped process exits successfully after printing `stopped` and starts no new
/// run after SIGTERM (at most [`SLOTS`] start while the signal is on its way; today its ~100
/// prefetched entries all start during the drain); whatever it left pending under its name
/// (entries handed back at shutdown) is taken by the others within visibility timeout + claim
/// interval + 3 s slack; lost = ∅ (no innocent dead letter, with `retries = 0` too: a
/// handed-back entry never started and is never charged), duplicates = 0, and every run reports
/// `ctx.attempt() == 1`.
async fn rolling_sigterm_restarts(retries: Option<u32>) {
    init_tracing();
    let _serial = chaos::exclusive().await;
    let started = Instant::now();
    let scenario = format!("consumer-rolling-sigterm-{}", label(retries));
    let total = chaos::count(2_000, 10_000);
    let rig = Rig::new("chaos-rolling", retries);
    let mut consumers: Vec<ChildProcess> = (0..3).map(|i| rig.consumer(&format!("c{i}"))).collect();
    let bus = rig.publisher().await;
    let load = Load::start(
        &bus,
        &rig.checker,
        0..total,
        LoadOptions {
            rate_per_sec: 1_200,
            hold_at: total * 9 / 10,
            ..LoadOptions::default()
        },
        slow_job,
    );

    let conn = rig.server.conn().await;
    let rec = rig.record.conn().await;
    let mut replaced = Vec::new();
    let mut held_at_sigterm = Vec::new();
    let mut handback = Duration::ZERO;
    let mut started_after_sigterm = Vec::new();
    for i in 0..3u64 {
        let at = total * (i + 1) / 10;
        let name = format!("c{i}");
        let replacement = rig.consumer(&format!("r{i}"));
        wait_until(
            Duration::from_secs(60),
            &format!("jobs handled up to restart {i} ({at}), and {name}'s prefetch window nearly full"),
            || {
                let mut rec = rec.clone();
                let mut conn = conn.clone();
                let (rig, name) = (&rig, &name);
                async move {
                    rig.sync(&mut rec).await.len() as u64 >= at
                        && consumer_pending(&mut conn, &rig.stream, GROUP, name).await >= BATCH
                }
            },
        )
        .await;
        let mut old = std::mem::replace(&mut consumers[i as usize], replacement);
        let pid = old.id();
        let mut c = conn.clone();
        let mut r = rec.clone();
        let starts_before = starts_of(&mut r, &rig.ns, pid).await;
        held_at_sigterm.push(consumer_pending(&mut c, &rig.stream, GROUP, &name).await);
        old.signal("TERM");
        let mut status = None;
        wait_until(Duration::from_secs(30), "the old consumer exits", || {
            status = old.try_wait();
            std::future::ready(status.is_some())
        })
        .await;
        let status = status.expect("exited");
        old.drain_stdout();
        assert!(
            status.success() && old.stdout().iter().any(|l| l == "stopped"),
            "{name} shut down cleanly: {status}; stdout {:?}; stderr:\n{}",
            old.stdout(),
            old.stderr()
        );
        let taken = time_until(
            VISIBILITY + CLAIM_INTERVAL + Duration::from_secs(3),
            "the stopped consumer's pending entries are taken by the others",
            || {
                let mut conn = conn.clone();
                let (rig, name) = (&rig, &name);
                async move { consumer_pending(&mut conn, &rig.stream, GROUP, name).await == 0 }
            },
        )
        .await;
        handback = handback.max(taken);
        started_after_sigterm.push(starts_of(&mut r, &rig.ns, pid).await - starts_before);
        replaced.push(rig.checker.acked_count());
    }
    load.finish(Duration::from_secs(120)).await;
    rig.settle(Duration::from_secs(90)).await;
    let attempts = rig.attempts().await;

    let verdict = rig
        .checker
        .verdict(&scenario)
        .with("restarts", 3)
        .with(
            "held_at_sigterm",
            held_at_sigterm
                .iter()
                .map(ToString::to_string)
                .collect::<Vec<_>>()
                .join("/"),
        )
        .with(
            "started_after_sigterm",
            started_after_sigterm
                .iter()
                .map(ToString::to_string)
                .collect::<Vec<_>>()
                .join("/"),
        )
        .with("handed_back_taken_max_ms", handback.as_millis())
        .with(
            "acked_at_restarts",
            replaced
                .iter()
                .map(ToString::to_string)
                .collect::<Vec<_>>()
                .join("/"),
        )
        .with("attempts", format!("{attempts:?}").replace(' ', ""))
        .with("elapsed_ms", started.elapsed().as_millis());
    verdict.print();
    verdict.assert_ok(0);
    assert!(
        replaced.iter().all(|&a| (a as u64) < total),
        "every restart happened while jobs were still being published: {replaced:?}"
    );
    assert_eq!(
        attempts.keys().copied().collect::<Vec<_>>(),
        [1],
        "{}: nothing failed, so every run is attempt 1",
        verdict.line()
    );
    assert!(
        started_after_sigterm.iter().all(|&n| n <= SLOTS as usize),
        "{}: a consumer starts no new run after SIGTERM (its prefetched entries are handed back), beyond the few that start while the signal is on its way",
        verdict.line()
    );
}

/// How many runs process `pid` has started so far.
async fn starts_of(rec: &mut redis::aio::MultiplexedConnection, ns: &str, pid: u32) -> usize {
    starts_from_list(rec, &started_key(ns))
        .await
        .iter()
        .filter(|s| s.pid == pid)
        .count()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn rolling_sigterm_restarts_with_retries_0_lose_and_duplicate_nothing() {
    rolling_sigterm_restarts(Some(0)).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn rolling_sigterm_restarts_with_default_retries_lose_and_duplicate_nothing() {
    rolling_sigterm_restarts(None).await;
}
