//! Poison crash (issue 9, items 1 and 2): a job that aborts its consumer process every time it
//! runs, published among dozens of ordinary jobs, with consumer processes restarted as they die.
//!
//! The promise: a crash is charged only to its culprit. Entries redelivered after a crash are
//! suspects and run alone until each has completed or crashed alone; the culprit is
//! dead-lettered after `retries + 1` crashes it caused running alone (a crash with other runs in
//! flight is not charged to anyone), and every bystander (delivered, queued or running beside
//! it) is handled, none dead-lettered. `ctx.attempt()` is the charged attempts plus the current
//! one, so every bystander run is attempt 1 and the culprit's crashes while alone are attempts
//! 1, 2, ..., `retries + 1`.
//!
//! A supervisor loop in the test restarts every consumer process that aborts, under the same
//! consumer name (the restarted process re-reads its own pending list; the other consumers may
//! claim its entries too) or under a new name each time (the entries are only reachable by
//! XAUTOCLAIM after the visibility timeout). The `consumer` binary records every run it starts
//! (with `ctx.attempt()` and its pid), every run it completes, and every crash (with the number
//! of other runs in flight in the process) on a second `redis-server`; see
//! `tests/src/bin/consumer.rs`. One `chaos scenario=...` verdict line is printed per test.
//!
//! Counts: 48 jobs by default, 200 with `EVENTBUS_CHAOS_FULL=1`. Timeouts are small: visibility
//! timeout 1 s, claim interval and block time 200 ms.

use std::collections::{BTreeMap, BTreeSet};
use std::time::{Duration, Instant};

use eventbus::prelude::*;
use eventbus_tests::chaos::{
    self, Checker, Crash, crash_key, crashes_from_list, handled_from_list, record_key,
    started_key, starts_from_list, stream_payload_ids,
};
use eventbus_tests::{
    ChildProcess, RedisServer, dlq_key, init_tracing, namespace, pending_count, stream_key,
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
/// Run slots of each consumer process: the first run of the culprit has company.
const SLOTS: u32 = 16;
/// The culprit's number: early in the stream, so it is in the first batch any consumer reads.
const CULPRIT: u64 = 5;
/// Bystanders sleep 30–100 ms, so several are in flight when the culprit first crashes.
const MAX_JOB_MS: u64 = 100;
/// Allowance for starting one consumer process on a loaded machine.
const RESTART: Duration = Duration::from_secs(2);

/// How a crashed consumer comes back.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Naming {
    /// Under the same consumer name: it re-reads its own pending list.
    Same,
    /// Under a new name each time: its entries are claimed after the visibility timeout.
    NewEachRestart,
}

struct Rig {
    server: RedisServer,
    record: RedisServer,
    ns: String,
    stream: String,
    retries: u32,
    checker: Checker,
}

impl Rig {
    fn new(test: &str, retries: u32) -> Rig {
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

    /// Starts consumer process `name`, without waiting for `ready`: it may take the culprit
    /// and abort before it prints it.
    fn spawn(&self, name: &str) -> ChildProcess {
        let url = self.server.url();
        let record_url = self.record.url();
        let slots = SLOTS.to_string();
        let retries = self.retries.to_string();
        ChildProcess::spawn(
            env!("CARGO_BIN_EXE_consumer"),
            &[
                ("REDIS_URL", url.as_str()),
                ("RECORD_URL", record_url.as_str()),
                ("EVENTBUS_NAMESPACE", self.ns.as_str()),
                ("EVENTBUS_HANDLERS", GROUP),
                ("EVENTBUS_CONSUMER", name),
                ("EVENTBUS_RETRIES", retries.as_str()),
                ("EVENTBUS_CONCURRENCY", slots.as_str()),
                ("EVENTBUS_VISIBILITY_TIMEOUT", "1s"),
                ("EVENTBUS_CLAIM_INTERVAL", "200ms"),
                ("EVENTBUS_BLOCK_TIME", "200ms"),
                ("EVENTBUS_DRAIN_TIMEOUT", "5s"),
            ],
        )
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

    /// Reads the handled records and the dead letters into the checker; true when every job is
    /// handled or dead-lettered and nothing is pending.
    async fn sync(
        &self,
        conn: &mut redis::aio::MultiplexedConnection,
        rec: &mut redis::aio::MultiplexedConnection,
        jobs: u64,
    ) -> bool {
        let handled = handled_from_list(rec, &record_key(&self.ns)).await;
        self.checker.set_handled(handled.iter().map(|r| r.0));
        let dead = stream_payload_ids(conn, &dlq_key(&self.ns, Job::NAME)).await;
        let done: BTreeSet<u64> = handled.iter().map(|r| r.0).chain(dead.iter().copied()).collect();
        self.checker.set_dead_lettered(dead);
        done.len() as u64 == jobs && pending_count(conn, &self.stream, GROUP).await == 0
    }
}

/// One supervised consumer slot.
struct Slot {
    child: ChildProcess,
    name: String,
}

async fn poison_crash(scenario: &str, retries: u32, consumers: usize, naming: Naming) {
    use std::os::unix::process::ExitStatusExt as _;
    init_tracing();
    let _serial = chaos::exclusive().await;
    let started = Instant::now();
    let jobs = chaos::count(48, 200);
    let rig = Rig::new(scenario, retries);
    let mut conn = rig.server.conn().await;
    let mut rec = rig.record.conn().await;

    let mut restarts = 0usize;
    let name_of = |slot: usize, life: usize| match naming {
        Naming::Same => format!("c{slot}"),
        Naming::NewEachRestart => format!("c{slot}-life{life}"),
    };
    let mut slots: Vec<Slot> = (0..consumers)
        .map(|i| {
            let name = name_of(i, 0);
            let mut child = rig.spawn(&name);
            child.wait_for_line("ready", Duration::from_secs(20));
            Slot { child, name }
        })
        .collect();

    // All jobs in one pipeline: they arrive together, so the culprit's first run has company.
    let bus = rig.publisher().await;
    let batch: Vec<Job> = (0..jobs)
        .map(|n| Job {
            n,
            crash: n == CULPRIT,
            sleep_ms: 30 + (n * 37) % (MAX_JOB_MS - 30 + 1),
        })
        .collect();
    bus.publish_batch(&batch).await.expect("publish the jobs");
    for n in 0..jobs {
        rig.checker.published(n);
    }
    rig.checker.culprit(CULPRIT);

    // Every cycle: a crash, a restart, the visibility timeout and a claim, and in the worst case
    // every job run once more, one after another.
    let cycle = RESTART + VISIBILITY + CLAIM_INTERVAL + Duration::from_millis(MAX_JOB_MS) * (jobs as u32);
    let bound = cycle * (retries + 2) + Duration::from_secs(5);
    // (consumer name, pid, exit status) of every process that died.
    let mut exits: Vec<(String, u32, std::process::ExitStatus)> = Vec::new();
    let mut life = 0usize;
    let mut next_sync = Instant::now();
    loop {
        for (i, slot) in slots.iter_mut().enumerate() {
            let Some(status) = slot.child.try_wait() else {
                continue;
            };
            let stderr = slot.child.stderr();
            assert!(
                status.signal() == Some(6) && stderr.contains(&format!("job {CULPRIT} crashes this consumer")),
                "consumer {} exited for another reason than the culprit: {status}; stderr:\n{stderr}",
                slot.name
            );
            exits.push((slot.name.clone(), slot.child.id(), status));
            restarts += 1;
            life += 1;
            let name = name_of(i, life);
            *slot = Slot {
                child: rig.spawn(&name),
                name,
            };
        }
        if Instant::now() >= next_sync {
            if rig.sync(&mut conn, &mut rec, jobs).await {
                break;
            }
            next_sync = Instant::now() + Duration::from_millis(100);
        }
        if started.elapsed() > bound {
            let v = rig
                .checker
                .verdict(scenario)
                .with("restarts", restarts)
                .with("elapsed_ms", started.elapsed().as_millis());
            v.print();
            panic!(
                "{}: not every job was handled or dead-lettered within {bound:?} ({restarts} restarts)",
                v.line()
            );
        }
        tokio::time::sleep(Duration::from_millis(10)).await; // ok: supervisor poll interval under a deadline
    }
    let elapsed = started.elapsed();
    drop(slots);

    let crashes: Vec<Crash> = crashes_from_list(&mut rec, &crash_key(&rig.ns)).await;
    let starts = starts_from_list(&mut rec, &started_key(&rig.ns)).await;
    let alone: Vec<&Crash> = crashes.iter().filter(|c| c.others == 0).collect();
    let alone_attempts: Vec<u32> = alone.iter().map(|c| c.attempt).collect();
    let mut bystander_attempts: BTreeMap<u32, usize> = BTreeMap::new();
    for s in starts.iter().filter(|s| s.n != CULPRIT) {
        *bystander_attempts.entry(s.attempt).or_default() += 1;
    }
    let letters = bus.dlq().list(100).await.expect("list dead letters");
    let crash_line = crashes
        .iter()
        .map(|c| format!("{}@{}/{}", c.attempt, c.others, c.consumer))
        .collect::<Vec<_>>()
        .join(",");
    let verdict = rig
        .checker
        .verdict(scenario)
        .with("retries", retries)
        .with("consumers", consumers)
        .with("restarts", restarts)
        .with("crashes_alone", alone.len())
        .with("crashes", format!("[{crash_line}]"))
        .with("bystander_attempts", format!("{bystander_attempts:?}").replace(' ', ""))
        .with("poison_elapsed_ms", elapsed.as_millis())
        .with("bound_ms", bound.as_millis());
    verdict.print();

    // Bystanders: every one handled, none dead-lettered; a crash may re-run those a process
    // finished but did not ack.
    verdict.assert_ok(restarts as u64 * u64::from(SLOTS));
    assert_eq!(
        restarts,
        crashes.len(),
        "{}: every exit was a recorded crash of the culprit: {exits:?}",
        verdict.line()
    );
    assert!(
        crashes.iter().all(|c| c.n == CULPRIT),
        "only the culprit crashes: {crashes:?}"
    );
    // The culprit: exactly retries + 1 crashes alone, charged one by one.
    assert_eq!(
        alone.len(),
        retries as usize + 1,
        "{}: the culprit is dead-lettered after exactly retries + 1 crashes it caused running alone",
        verdict.line()
    );
    assert_eq!(
        alone_attempts,
        (1..=retries + 1).collect::<Vec<_>>(),
        "{}: ctx.attempt() of the culprit's crashes alone counts its charged crashes + 1",
        verdict.line()
    );
    assert!(
        crashes.len() <= retries as usize + 2,
        "{}: after its first crash the culprit is a suspect and runs alone: at most one crash in company",
        verdict.line()
    );
    assert!(
        crashes.iter().filter(|c| c.others > 0).all(|c| c.attempt == 1),
        "{}: a crash in company is charged to no one",
        verdict.line()
    );
    assert_eq!(
        bystander_attempts.keys().copied().collect::<Vec<_>>(),
        [1],
        "{}: no bystander is ever charged, so each of its runs is attempt 1",
        verdict.line()
    );
    // Exactly one dead letter: the culprit's, saying it crashed.
    assert_eq!(letters.len(), 1, "exactly one dead letter: {letters:#?}");
    let letter = &letters[0];
    let n = letter.envelope["data"]["n"].as_u64().or_else(|| {
        letter
            .envelope
            .as_str()
            .and_then(|s| serde_json::from_str::<serde_json::Value>(s).ok())
            .and_then(|v| v["data"]["n"].as_u64())
    });
    assert_eq!(n, Some(CULPRIT), "the dead letter is the culprit's: {letter:#?}");
    assert!(
        letter.error.to_lowercase().contains("crash"),
        "the dead letter's error says the event crashed its consumer: {:?}",
        letter.error
    );
    assert_eq!(
        letter.attempts,
        retries + 1,
        "the dead letter counts the culprit's charged attempts: {letter:#?}"
    );
    assert!(
        elapsed <= bound,
        "{}: took {elapsed:?}, more than {bound:?}",
        verdict.line()
    );
}

/// `retries = 0`, one consumer process restarted under its name: the culprit's first crash (in
/// company) charges no one; it is dead-lettered after its first crash alone, and all 47
/// bystanders are handled.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn poison_crash_with_retries_0_and_one_consumer_restarted_under_its_name() {
    poison_crash("poison-crash-retries0-1x-same-name", 0, 1, Naming::Same).await;
}

/// `retries = 2`, three consumer processes, each restarted under its name when it dies (the
/// restarted process re-reads its pending list; the others may claim it first).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn poison_crash_with_retries_2_and_three_consumers_restarted_under_their_names() {
    poison_crash("poison-crash-retries2-3x-same-name", 2, 3, Naming::Same).await;
}

/// A crash loop with a new consumer name each restart: the dead process's entries are reachable
/// only by XAUTOCLAIM after the visibility timeout, never by re-reading an own pending list; the
/// charges must survive that.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn poison_crash_loop_with_a_new_consumer_name_each_restart_and_retries_2() {
    poison_crash("poison-crash-retries2-1x-new-names", 2, 1, Naming::NewEachRestart).await;
}

/// As above with `retries = 0` and two consumers (one restarted under new names, one claiming).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn poison_crash_loop_with_new_consumer_names_and_retries_0() {
    poison_crash("poison-crash-retries0-2x-new-names", 0, 2, Naming::NewEachRestart).await;
}
