//! Chaos scenarios 5–6 (issue 3): faults of consumer processes.
//!
//! Three `consumer` processes (the `consumer.job` handler, `tests/src/bin/consumer.rs`) share one
//! consumer group; the test publishes numbered jobs from several publisher tasks. Each process
//! records every completed run as `<n>:<consumer>` in a list on a *second* `redis-server` that no
//! fault touches (`RECORD_URL`), and the [`Checker`] reads it back. One `chaos scenario=...`
//! verdict line is printed per test (run with `--nocapture` to see it).
//!
//! Counts: CI sizes by default, 10,000 jobs with `EVENTBUS_CHAOS_FULL=1`. Timeouts are small:
//! block time 200 ms, visibility timeout 1 s, claim interval 200 ms.

use std::collections::BTreeSet;
use std::time::{Duration, Instant};

use eventbus::prelude::*;
use eventbus_tests::chaos::{
    self, Checker, Load, LoadOptions, consumer_pending, handled_from_list, record_key, time_until,
};
use eventbus_tests::{
    ChildProcess, RedisServer, init_tracing, namespace, pending_count, stream_key, wait_until,
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
/// Concurrency of each consumer process in scenario 5.
const KILL_SLOTS: u32 = 100;

/// The Redis under test, the recording Redis, and what the consumers need to reach them.
struct Rig {
    server: RedisServer,
    record: RedisServer,
    ns: String,
    stream: String,
    checker: Checker,
}

impl Rig {
    fn new(test: &str) -> Rig {
        let ns = namespace(test);
        Rig {
            server: RedisServer::start(),
            record: RedisServer::start(),
            stream: stream_key(&ns, Job::NAME),
            ns,
            checker: Checker::new(),
        }
    }

    /// Starts consumer process `name` with `concurrency` slots and waits until it is ready.
    fn consumer(&self, name: &str, concurrency: u32) -> ChildProcess {
        let url = self.server.url();
        let record_url = self.record.url();
        let concurrency = concurrency.to_string();
        let mut child = ChildProcess::spawn(
            env!("CARGO_BIN_EXE_consumer"),
            &[
                ("REDIS_URL", url.as_str()),
                ("RECORD_URL", record_url.as_str()),
                ("EVENTBUS_NAMESPACE", self.ns.as_str()),
                ("EVENTBUS_HANDLERS", GROUP),
                ("EVENTBUS_CONSUMER", name),
                ("EVENTBUS_CONCURRENCY", concurrency.as_str()),
                ("EVENTBUS_VISIBILITY_TIMEOUT", "1s"),
                ("EVENTBUS_CLAIM_INTERVAL", "200ms"),
                ("EVENTBUS_BLOCK_TIME", "200ms"),
                ("EVENTBUS_DRAIN_TIMEOUT", "20s"),
            ],
        );
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
    async fn sync(&self, conn: &mut redis::aio::MultiplexedConnection) -> Vec<(u64, String)> {
        let records = handled_from_list(conn, &record_key(&self.ns)).await;
        self.checker.set_handled(records.iter().map(|r| r.0));
        records
    }

    /// Waits until every acked job was handled and the group has nothing pending.
    async fn settle(&self, timeout: Duration) {
        let rec = self.record.conn().await;
        wait_until(timeout, "every acked job handled", || {
            let mut rec = rec.clone();
            async move {
                self.sync(&mut rec).await;
                self.checker.all_acked_handled()
            }
        })
        .await;
        let conn = self.server.conn().await;
        wait_until(Duration::from_secs(30), "nothing pending", || {
            let mut conn = conn.clone();
            async move { pending_count(&mut conn, &self.stream, GROUP).await == 0 }
        })
        .await;
    }
}

/// Scenario 5. One of 3 consumer processes is killed with SIGKILL while it has many jobs in
/// flight: jobs take 100–400 ms, each process has 100 slots, and jobs arrive at 800/s, so about
/// 67 are in flight per process (hundreds in all) and the two survivors run at full capacity
/// after the kill: the claim of the victim's entries must not wait behind new work.
///
/// Right before the kill the victim is frozen with SIGSTOP and its pending entries are read
/// with XPENDING: that is exactly its in-flight set (it can neither take nor finish anything
/// while stopped). Asserts: lost = ∅, unexpected = ∅, duplicates ≤ that in-flight count (only a
/// job the victim finished and recorded but did not ack can run twice), and the victim's pending
/// entries drain to 0 within visibility timeout + claim interval (+ 3 s slack for a loaded
/// machine); the whole group then drains to 0.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sigkill_of_one_of_three_consumers_loses_nothing_and_its_pending_drains() {
    init_tracing();
    let _serial = chaos::exclusive().await;
    let started = Instant::now();
    let scenario = "consumer-kill9";
    let total = chaos::count(2_000, 10_000);
    let rig = Rig::new("chaos-kill9");
    let mut victim = rig.consumer("victim", KILL_SLOTS);
    let _c1 = rig.consumer("c1", KILL_SLOTS);
    let _c2 = rig.consumer("c2", KILL_SLOTS);
    let bus = rig.publisher().await;
    let load = Load::start(
        &bus,
        &rig.checker,
        0..total,
        LoadOptions {
            rate_per_sec: 800,
            hold_at: total * 3 / 4,
            ..LoadOptions::default()
        },
        |n| Job {
            n,
            crash: false,
            sleep_ms: 100 + (n * 37) % 300,
        },
    );

    let mut conn = rig.server.conn().await;
    let mut rec = rig.record.conn().await;
    wait_until(
        Duration::from_secs(60),
        "a third of the jobs handled, and the victim has at least 50 in flight",
        || {
            let mut conn = conn.clone();
            let mut rec = rec.clone();
            let rig = &rig;
            async move {
                rig.sync(&mut rec).await.len() as u64 >= total / 3
                    && consumer_pending(&mut conn, &rig.stream, GROUP, "victim").await >= 50
            }
        },
    )
    .await;
    victim.signal("STOP");
    let in_flight = consumer_pending(&mut conn, &rig.stream, GROUP, "victim").await;
    let total_pending = pending_count(&mut conn, &rig.stream, GROUP).await;
    victim.kill();
    let drain = time_until(
        Duration::from_secs(15),
        "the killed consumer's pending entries are claimed and handled",
        || {
            let mut conn = conn.clone();
            let rig = &rig;
            async move { consumer_pending(&mut conn, &rig.stream, GROUP, "victim").await == 0 }
        },
    )
    .await;
    load.finish(Duration::from_secs(120)).await;
    rig.settle(Duration::from_secs(60)).await;
    let records = rig.sync(&mut rec).await;
    let by: BTreeSet<&str> = records.iter().map(|r| r.1.as_str()).collect();

    let verdict = rig
        .checker
        .verdict(scenario)
        .with("victim_in_flight", in_flight)
        .with("group_pending_at_kill", total_pending)
        .with("victim_pending_drained_ms", drain.as_millis())
        .with("elapsed_ms", started.elapsed().as_millis());
    verdict.print();
    verdict.assert_ok(in_flight as u64);
    let bound = VISIBILITY + CLAIM_INTERVAL + Duration::from_secs(3);
    assert!(
        drain <= bound,
        "the victim's pending entries drained in {drain:?}, more than {bound:?}"
    );
    assert!(
        by.contains("c1") && by.contains("c2") && by.contains("victim"),
        "all three consumers worked: {by:?}"
    );
    assert!(
        bus.dlq().list(10).await.expect("list").is_empty(),
        "a crash alone does not dead-letter anything"
    );
}

/// Scenario 6. Rolling graceful restarts: each of 3 consumer processes in turn gets a
/// replacement, then SIGTERM, while jobs keep flowing (the tail of the stream is held back
/// until the last restart, so every restart happens mid-stream).
///
/// Asserts: each stopped process exits successfully after printing `stopped` and leaves nothing
/// pending under its name (a clean shutdown acks what it finished); lost = ∅ and duplicates = 0.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn rolling_sigterm_restarts_lose_nothing_and_duplicate_nothing() {
    init_tracing();
    let _serial = chaos::exclusive().await;
    let started = Instant::now();
    let scenario = "consumer-rolling-sigterm";
    let total = chaos::count(2_000, 10_000);
    let rig = Rig::new("chaos-rolling");
    let mut consumers: Vec<ChildProcess> =
        (0..3).map(|i| rig.consumer(&format!("c{i}"), 32)).collect();
    let bus = rig.publisher().await;
    let load = Load::start(
        &bus,
        &rig.checker,
        0..total,
        LoadOptions {
            rate_per_sec: 600,
            hold_at: total * 3 / 4,
            ..LoadOptions::default()
        },
        |n| Job {
            n,
            crash: false,
            sleep_ms: 20 + (n * 37) % 80,
        },
    );

    let conn = rig.server.conn().await;
    let rec = rig.record.conn().await;
    let mut replaced = Vec::new();
    for i in 0..3u64 {
        let at = total * (i + 1) / 5;
        wait_until(
            Duration::from_secs(60),
            "jobs handled up to the next restart",
            || {
                let mut rec = rec.clone();
                let rig = &rig;
                async move { rig.sync(&mut rec).await.len() as u64 >= at }
            },
        )
        .await;
        let replacement = rig.consumer(&format!("r{i}"), 32);
        let mut old = std::mem::replace(&mut consumers[i as usize], replacement);
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
            "c{i} shut down cleanly: {status}; stdout {:?}; stderr:\n{}",
            old.stdout(),
            old.stderr()
        );
        let mut conn = conn.clone();
        let left = consumer_pending(&mut conn, &rig.stream, GROUP, &format!("c{i}")).await;
        assert_eq!(left, 0, "c{i} left nothing pending after SIGTERM");
        replaced.push(rig.checker.acked_count());
    }
    load.finish(Duration::from_secs(120)).await;
    rig.settle(Duration::from_secs(60)).await;

    let verdict = rig
        .checker
        .verdict(scenario)
        .with("restarts", 3)
        .with(
            "acked_at_restarts",
            replaced
                .iter()
                .map(ToString::to_string)
                .collect::<Vec<_>>()
                .join("/"),
        )
        .with("elapsed_ms", started.elapsed().as_millis());
    verdict.print();
    verdict.assert_ok(0);
    assert!(
        replaced.iter().all(|&a| (a as u64) < total),
        "every restart happened while jobs were still being published: {replaced:?}"
    );
}
