//! Claiming under faults (issue 3, scenarios 7, 8 and 9): a slow but alive handler keeps its
//! lease, four consumers reclaim a thousand idle entries at once, and pending entries deleted or
//! trimmed from the stream are reported as lost instead of looping.

use std::collections::{BTreeMap, BTreeSet};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use eventbus::prelude::*;
use eventbus::{Health, RunningBus};
use eventbus_tests::acl::{self, command_calls};
use eventbus_tests::chaos;
use eventbus_tests::logs;
use eventbus_tests::{
    ChildProcess, RedisServer, dlq_key, init_tracing, namespace, pending_count, stream_ids,
    stream_key, wait_until,
};
use redis::AsyncCommands;
use redis::aio::MultiplexedConnection;

// ---------------------------------------------------------------------------------------------
// Events and handlers of this file.

#[derive(Debug, Clone, Serialize, Deserialize, DomainEvent)]
#[event(name = "chaos.claim_job")]
struct ClaimJob {
    n: u64,
}

#[derive(Debug, Clone, Serialize, Deserialize, DomainEvent)]
#[event(name = "chaos.slow_job")]
struct SlowJob {
    n: u64,
    millis: u64,
}

/// Which consumer ran which job, shared by every bus of a test.
#[derive(Clone, Default)]
struct Seen {
    who: String,
    runs: Arc<Mutex<Vec<(u64, String)>>>,
    started: Arc<Mutex<Vec<(u64, String)>>>,
}

impl Seen {
    fn for_consumer(&self, who: &str) -> Seen {
        Seen {
            who: who.to_owned(),
            ..self.clone()
        }
    }
    fn runs(&self) -> Vec<(u64, String)> {
        self.runs.lock().expect("lock").clone()
    }
    fn started(&self) -> Vec<(u64, String)> {
        self.started.lock().expect("lock").clone()
    }
    /// Runs per job number.
    fn counts(&self) -> BTreeMap<u64, usize> {
        let mut m = BTreeMap::new();
        for (n, _) in self.runs() {
            *m.entry(n).or_default() += 1;
        }
        m
    }
}

const CLAIMER: &str = "chaos.claimer";
const SLOW: &str = "chaos.slow_worker";

#[event_handler(name = "chaos.claimer")]
async fn claimer(ev: ClaimJob, seen: State<Seen>) -> anyhow::Result<()> {
    seen.runs
        .lock()
        .expect("lock")
        .push((ev.n, seen.who.clone()));
    Ok(())
}

#[event_handler(name = "chaos.slow_worker", retries = 0)]
async fn slow_worker(ev: SlowJob, seen: State<Seen>) -> anyhow::Result<()> {
    seen.started
        .lock()
        .expect("lock")
        .push((ev.n, seen.who.clone()));
    tokio::time::sleep(Duration::from_millis(ev.millis)).await; // ok: the handler under test is slow on purpose
    seen.runs
        .lock()
        .expect("lock")
        .push((ev.n, seen.who.clone()));
    Ok(())
}

// ---------------------------------------------------------------------------------------------

/// A bus running `handler` as `consumer`: 1 s visibility timeout, 200 ms claim interval and
/// block time.
async fn start_bus(
    server: &RedisServer,
    ns: &str,
    handler: &str,
    consumer: &str,
    seen: &Seen,
) -> (Bus, RunningBus) {
    start_bus_with(server, ns, handler, consumer, seen, Duration::from_secs(1)).await
}

async fn start_bus_with(
    server: &RedisServer,
    ns: &str,
    handler: &str,
    consumer: &str,
    seen: &Seen,
    visibility_timeout: Duration,
) -> (Bus, RunningBus) {
    let bus = Bus::builder()
        .redis_url(server.url())
        .namespace(ns)
        .consumer(consumer)
        .handlers([handler])
        .visibility_timeout(visibility_timeout)
        .claim_interval(Duration::from_millis(200))
        .block_time(Duration::from_millis(200))
        .drain_timeout(Duration::from_secs(5))
        .state(seen.for_consumer(consumer))
        .build()
        .await
        .expect("build");
    let running = bus.start().await.expect("start");
    (bus, running)
}

async fn publisher(server: &RedisServer, ns: &str) -> Bus {
    Bus::builder()
        .redis_url(server.url())
        .namespace(ns)
        .handlers(Vec::<String>::new())
        .build()
        .await
        .expect("publish-only bus")
}

/// Creates `group` at the start of `stream` and reads every entry as `consumer` without ever
/// acknowledging: the entries sit in that (dead) consumer's pending list.
async fn strand_in_dead_consumer(
    conn: &mut MultiplexedConnection,
    stream: &str,
    group: &str,
    consumer: &str,
) -> usize {
    let _: () = redis::cmd("XGROUP")
        .arg("CREATE")
        .arg(stream)
        .arg(group)
        .arg("0")
        .arg("MKSTREAM")
        .query_async(conn)
        .await
        .expect("XGROUP CREATE");
    let reply: redis::streams::StreamReadReply = redis::cmd("XREADGROUP")
        .arg("GROUP")
        .arg(group)
        .arg(consumer)
        .arg("COUNT")
        .arg(100_000)
        .arg("STREAMS")
        .arg(stream)
        .arg(">")
        .query_async(conn)
        .await
        .expect("XREADGROUP");
    reply.keys.iter().map(|k| k.ids.len()).sum()
}

/// (entry id, consumer, times delivered) of every pending entry of `group`.
async fn pending_entries(
    conn: &mut MultiplexedConnection,
    stream: &str,
    group: &str,
) -> Vec<(String, String, usize)> {
    let reply: redis::streams::StreamPendingCountReply = redis::cmd("XPENDING")
        .arg(stream)
        .arg(group)
        .arg("-")
        .arg("+")
        .arg(10_000)
        .query_async(conn)
        .await
        .expect("XPENDING");
    reply
        .ids
        .into_iter()
        .map(|p| (p.id, p.consumer, p.times_delivered))
        .collect()
}

fn total(healths: &[Health], f: impl Fn(&eventbus::ReaderHealth) -> u64) -> u64 {
    healths.iter().flat_map(|h| h.readers.iter()).map(f).sum()
}

// ---------------------------------------------------------------------------------------------
// Scenario 7: a slow but alive handler.

/// A handler that runs three times the visibility timeout keeps its lease (the reader renews it
/// with `XCLAIM ... JUSTID`): the second consumer never claims it, it runs once, its delivery
/// count stays 1, and it is acknowledged when it finishes.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn slow_but_alive_handler_keeps_its_lease_and_runs_once() {
    init_tracing();
    let server = RedisServer::start();
    let ns = namespace("slow-lease");
    let stream = stream_key(&ns, SlowJob::NAME);
    let mut conn = server.conn().await;
    let seen = Seen::default();
    let (_a, running_a) = start_bus(&server, &ns, SLOW, "slow-a", &seen).await;
    let (_b, running_b) = start_bus(&server, &ns, SLOW, "slow-b", &seen).await;

    let bus = publisher(&server, &ns).await;
    let jobs = 3u64;
    for n in 0..jobs {
        bus.publish(&SlowJob { n, millis: 3_000 })
            .await
            .expect("publish");
    }
    wait_until(Duration::from_secs(10), "every slow job started", || {
        let seen = seen.clone();
        async move { seen.started().len() >= jobs as usize }
    })
    .await;
    // While the jobs run (3 × the visibility timeout), watch their pending entries.
    let mut max_delivered = 0;
    let mut owners: BTreeMap<String, BTreeSet<String>> = BTreeMap::new();
    let mut samples = 0;
    while seen.runs().len() < jobs as usize {
        for (id, consumer, delivered) in pending_entries(&mut conn, &stream, SLOW).await {
            max_delivered = max_delivered.max(delivered);
            owners.entry(id).or_default().insert(consumer);
        }
        samples += 1;
        tokio::time::sleep(Duration::from_millis(50)).await; // ok: sampling XPENDING while the handlers run
    }
    wait_until(Duration::from_secs(10), "nothing pending", || {
        let mut conn = conn.clone();
        let stream = stream.clone();
        async move { pending_count(&mut conn, &stream, SLOW).await == 0 }
    })
    .await;
    let healths = [running_a.health(), running_b.health()];
    running_a.shutdown().await.expect("shutdown a");
    running_b.shutdown().await.expect("shutdown b");

    let counts = seen.counts();
    println!(
        "slow jobs: runs per job {counts:?}; max delivery count {max_delivered} over {samples} XPENDING samples; owners {owners:?}"
    );
    assert!(samples >= 10, "sampled while running: {samples}");
    assert_eq!(
        counts,
        (0..jobs).map(|n| (n, 1)).collect(),
        "every slow job ran exactly once: {:?}",
        seen.runs()
    );
    assert_eq!(seen.started().len(), jobs as usize, "no second start");
    assert_eq!(
        max_delivered, 1,
        "the lease renewal never counts a delivery"
    );
    assert!(
        owners.values().all(|o| o.len() == 1),
        "no entry changed owner while running: {owners:?}"
    );
    assert_eq!(total(&healths, |r| r.claimed), 0, "nothing claimed");
    assert_eq!(total(&healths, |r| r.handled), jobs);
    assert_eq!(total(&healths, |r| r.dead_lettered), 0);
    let dead: usize = conn.xlen(dlq_key(&ns, SlowJob::NAME)).await.expect("XLEN");
    assert_eq!(dead, 0, "no dead letter");
}

/// Leases are renewed even while a reader's prefetch window is full: with concurrency 1 and
/// batch size 1, each bus holds one running and one queued entry, and the queued one waits longer
/// than the visibility timeout for its turn. Neither bus claims the other's entries, and every
/// job runs exactly once.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn leases_are_renewed_while_the_prefetch_window_is_full() {
    init_tracing();
    let server = RedisServer::start();
    let ns = namespace("full-window");
    let seen = Seen::default();
    let bus = publisher(&server, &ns).await;
    let jobs = 4u64;
    for n in 0..jobs {
        bus.publish(&SlowJob { n, millis: 1_500 })
            .await
            .expect("publish");
    }
    let mut running = Vec::new();
    for consumer in ["window-a", "window-b"] {
        let bus = Bus::builder()
            .redis_url(server.url())
            .namespace(&ns)
            .consumer(consumer)
            .handlers([SLOW])
            .concurrency(1)
            .batch_size(1)
            .visibility_timeout(Duration::from_secs(1))
            .claim_interval(Duration::from_millis(200))
            .block_time(Duration::from_millis(200))
            .state(seen.for_consumer(consumer))
            .build()
            .await
            .expect("build");
        running.push(bus.start().await.expect("start"));
    }
    wait_until(Duration::from_secs(20), "every job ran", || {
        let seen = seen.clone();
        async move { seen.runs().len() >= jobs as usize }
    })
    .await;
    let claimed: u64 = running
        .iter()
        .map(|r| total(&[r.health()], |h| h.claimed))
        .sum();
    for r in running {
        r.shutdown().await.expect("shutdown");
    }
    let counts = seen.counts();
    println!("full window: runs per job {counts:?}, claimed {claimed}");
    assert_eq!(
        counts,
        (0..jobs).map(|n| (n, 1)).collect(),
        "every job ran once: {:?}",
        seen.runs()
    );
    assert_eq!(seen.started().len(), jobs as usize, "no second start");
    assert_eq!(claimed, 0, "no entry was claimed from a live consumer");
}

/// A consumer frozen mid-handler (SIGSTOP: it cannot renew its lease) loses the entry to another
/// consumer after the visibility timeout; the entry runs twice (the documented duplicate) and the
/// frozen consumer's late ack, after SIGCONT, loses nothing.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn frozen_consumer_is_taken_over_and_its_late_ack_loses_nothing() {
    frozen_consumer_is_taken_over("1").await;
}

/// As above with `retries = 0`: the claim is a delivery, not a failure of the job, so the taker
/// runs it instead of dead-lettering it ("delivered 2 times"), and `ctx.attempt()` is 1 in both
/// runs.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn frozen_consumer_is_taken_over_with_retries_0_and_nothing_is_dead_lettered() {
    frozen_consumer_is_taken_over("0").await;
}

async fn frozen_consumer_is_taken_over(retries: &str) {
    /// The `consumer` binary's event.
    #[derive(Debug, Clone, Serialize, Deserialize, DomainEvent)]
    #[event(name = "test.job")]
    struct Job {
        n: u64,
        crash: bool,
        sleep_ms: u64,
    }
    const GROUP: &str = "consumer.job";
    init_tracing();
    let server = RedisServer::start();
    let ns = namespace("frozen");
    let stream = stream_key(&ns, Job::NAME);
    let mut conn = server.conn().await;
    let url = server.url();
    let spawn = |name: &str| {
        let mut child = ChildProcess::spawn(
            env!("CARGO_BIN_EXE_consumer"),
            &[
                ("REDIS_URL", url.as_str()),
                ("EVENTBUS_NAMESPACE", ns.as_str()),
                ("EVENTBUS_HANDLERS", GROUP),
                ("EVENTBUS_CONSUMER", name),
                ("EVENTBUS_VISIBILITY_TIMEOUT", "1s"),
                ("EVENTBUS_CLAIM_INTERVAL", "200ms"),
                ("EVENTBUS_BLOCK_TIME", "200ms"),
                ("EVENTBUS_RETRIES", retries),
            ],
        );
        child.wait_for_line("ready", Duration::from_secs(20));
        child
    };
    let frozen = spawn("frozen");
    let bus = publisher(&server, &ns).await;
    bus.publish(&Job {
        n: 7,
        crash: false,
        sleep_ms: 1_500,
    })
    .await
    .expect("publish");
    // Frozen once the handler has started (its start is recorded) and sleeps: no request of its
    // own is in flight then, so none times out when the process resumes.
    let started_key = chaos::started_key(&ns);
    wait_until(Duration::from_secs(10), "the job is running", || {
        let mut conn = conn.clone();
        let stream = stream.clone();
        let started_key = started_key.clone();
        async move {
            let started: usize = conn.llen(&started_key).await.expect("LLEN");
            started == 1 && pending_count(&mut conn, &stream, GROUP).await == 1
        }
    })
    .await;
    frozen.signal("STOP");
    let _taker = spawn("taker");
    let dlq = dlq_key(&ns, Job::NAME);
    wait_until(
        Duration::from_secs(10),
        "the second consumer took the frozen consumer's entry (or dead-lettered it)",
        || {
            let mut conn = conn.clone();
            let (stream, dlq) = (stream.clone(), dlq.clone());
            async move {
                let dead: usize = conn.xlen(&dlq).await.expect("XLEN");
                dead > 0
                    || pending_entries(&mut conn, &stream, GROUP)
                        .await
                        .iter()
                        .any(|(_, c, _)| c == "taker")
            }
        },
    )
    .await;
    frozen.signal("CONT");
    let handled_key = format!("{ns}:handled");
    wait_until(
        Duration::from_secs(15),
        "both runs finished and nothing is pending",
        || {
            let mut conn = conn.clone();
            let (stream, dlq) = (stream.clone(), dlq.clone());
            let handled_key = handled_key.clone();
            async move {
                let n: usize = conn.llen(&handled_key).await.expect("LLEN");
                let dead: usize = conn.xlen(&dlq).await.expect("XLEN");
                n + dead >= 2 && pending_count(&mut conn, &stream, GROUP).await == 0
            }
        },
    )
    .await;
    let handled: Vec<String> = conn.lrange(&handled_key, 0, -1).await.expect("LRANGE");
    let starts = chaos::starts_from_list(&mut conn, &chaos::started_key(&ns)).await;
    let dead: usize = conn.xlen(dlq_key(&ns, Job::NAME)).await.expect("XLEN");
    println!(
        "frozen consumer (retries {retries}): handled {handled:?} (1 duplicate expected: the lease was lost); starts {starts:?}; dead letters {dead}"
    );
    assert_eq!(dead, 0, "no dead letter (retries {retries})");
    let mut by: Vec<&str> = handled.iter().map(String::as_str).collect();
    by.sort_unstable();
    assert_eq!(
        by,
        ["7:frozen", "7:taker"],
        "lost = 0, one counted duplicate"
    );
    assert!(
        starts.iter().all(|s| s.attempt == 1),
        "nothing failed: both runs are attempt 1: {starts:?}"
    );
}

// ---------------------------------------------------------------------------------------------
// Scenario 8: concurrent claimers.

/// Four consumers reclaim 1,000 entries left idle by a dead consumer, all at once. XAUTOCLAIM is
/// atomic, so each entry is claimed by one of them: every entry runs, and the documented bound on
/// duplicates is 0.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn four_consumers_reclaim_a_thousand_idle_entries_each_once() {
    four_consumers_reclaim(None).await;
}

/// As above with `retries = 0`: entries read by a consumer that died before starting them, then
/// claimed, were never started, so none is charged: every one runs, none is dead-lettered (today
/// the claim's delivery count 2 dead-letters them all).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn four_consumers_reclaim_a_thousand_idle_entries_with_retries_0_and_dead_letter_none() {
    four_consumers_reclaim(Some(0)).await;
}

async fn four_consumers_reclaim(retries: Option<u32>) {
    init_tracing();
    let server = RedisServer::start();
    let ns = namespace("claimers");
    let stream = stream_key(&ns, ClaimJob::NAME);
    let mut conn = server.conn().await;
    let bus = publisher(&server, &ns).await;
    let total_jobs = 1_000u64;
    for n in 0..total_jobs {
        bus.publish(&ClaimJob { n }).await.expect("publish");
    }
    let stranded = strand_in_dead_consumer(&mut conn, &stream, CLAIMER, "dead").await;
    assert_eq!(stranded, total_jobs as usize);

    let seen = Seen::default();
    let mut buses = Vec::new();
    for i in 0..4 {
        let consumer = format!("claimer-{i}");
        let mut builder = Bus::builder();
        if let Some(r) = retries {
            builder.retries(r);
        }
        let bus = builder
            .redis_url(server.url())
            .namespace(&ns)
            .consumer(&consumer)
            .handlers([CLAIMER])
            .visibility_timeout(Duration::from_secs(1))
            .claim_interval(Duration::from_millis(200))
            .block_time(Duration::from_millis(200))
            .drain_timeout(Duration::from_secs(5))
            .state(seen.for_consumer(&consumer))
            .build()
            .await
            .expect("build");
        let running = bus.start().await.expect("start");
        buses.push((bus, running));
    }
    let dlq = dlq_key(&ns, ClaimJob::NAME);
    wait_until(
        Duration::from_secs(30),
        "every stranded entry handled (or dead-lettered) and nothing pending",
        || {
            let seen = seen.clone();
            let mut conn = conn.clone();
            let (stream, dlq) = (stream.clone(), dlq.clone());
            async move {
                let dead: usize = conn.xlen(&dlq).await.expect("XLEN");
                seen.counts().len() + dead >= total_jobs as usize
                    && pending_count(&mut conn, &stream, CLAIMER).await == 0
            }
        },
    )
    .await;
    let dead: usize = conn.xlen(&dlq).await.expect("XLEN");
    let healths: Vec<Health> = buses.iter().map(|(_, r)| r.health()).collect();
    for (_, running) in buses {
        running.shutdown().await.expect("shutdown");
    }

    let runs = seen.runs();
    let duplicates = runs.len().saturating_sub(seen.counts().len());
    let mut per_consumer: BTreeMap<String, usize> = BTreeMap::new();
    for (_, who) in &runs {
        *per_consumer.entry(who.clone()).or_default() += 1;
    }
    let claimed = total(&healths, |r| r.claimed);
    println!(
        "concurrent claimers (retries {retries:?}): {} runs of {total_jobs} entries, duplicates {duplicates}, claimed {claimed}, dead letters {dead}, per consumer {per_consumer:?}",
        runs.len()
    );
    assert_eq!(
        dead, 0,
        "claimed entries that never started are not charged: no dead letter"
    );
    assert_eq!(
        seen.counts().keys().copied().collect::<Vec<_>>(),
        (0..total_jobs).collect::<Vec<_>>(),
        "lost = 0"
    );
    assert_eq!(duplicates, 0, "XAUTOCLAIM hands each entry to one claimer");
    assert_eq!(claimed, total_jobs, "each entry claimed exactly once");
    assert!(
        per_consumer.len() >= 2,
        "the claimers shared the work: {per_consumer:?}"
    );
    assert_eq!(total(&healths, |r| r.dead_lettered), 0);
    assert_eq!(total(&healths, |r| r.lost_entries), 0);
}

// ---------------------------------------------------------------------------------------------
// Scenario 9: pending entries deleted or trimmed.

/// Pending entries of a dead consumer are deleted (XDEL) and trimmed (XTRIM) before anyone handled
/// them. The claimers drain the pending list to 0, handle what is left once, count the loss in
/// `lost_entries` and log a warning; afterwards they idle (no claim loop) and keep handling.
#[tokio::test(flavor = "current_thread")]
async fn deleted_and_trimmed_pending_entries_are_reported_lost_without_a_claim_loop() {
    let (subscriber, captured) = logs::capture(tracing::Level::WARN);
    let _guard = tracing::subscriber::set_default(subscriber);
    let server = RedisServer::start();
    let ns = namespace("trimmed");
    let stream = stream_key(&ns, ClaimJob::NAME);
    let mut conn = server.conn().await;
    let bus = publisher(&server, &ns).await;
    for n in 0..100 {
        bus.publish(&ClaimJob { n }).await.expect("publish");
    }
    let ids = stream_ids(&mut conn, &stream).await;
    assert_eq!(
        strand_in_dead_consumer(&mut conn, &stream, CLAIMER, "dead").await,
        100
    );
    // XDEL jobs 40..60, then trim the stream to its newest 70 entries: jobs 0..10 go too.
    let deleted: usize = conn.xdel(&stream, &ids[40..60]).await.expect("XDEL");
    assert_eq!(deleted, 20);
    let trimmed: usize = redis::cmd("XTRIM")
        .arg(&stream)
        .arg("MAXLEN")
        .arg(70)
        .query_async(&mut conn)
        .await
        .expect("XTRIM");
    assert_eq!(trimmed, 10);
    assert_eq!(pending_count(&mut conn, &stream, CLAIMER).await, 100);
    let survivors: BTreeSet<u64> = (10..40).chain(60..100).collect();

    let seen = Seen::default();
    let (_a, running_a) = start_bus(&server, &ns, CLAIMER, "claimer-a", &seen).await;
    let (_b, running_b) = start_bus(&server, &ns, CLAIMER, "claimer-b", &seen).await;
    wait_until(
        Duration::from_secs(15),
        "the pending list drained to 0",
        || {
            let mut conn = conn.clone();
            let stream = stream.clone();
            async move { pending_count(&mut conn, &stream, CLAIMER).await == 0 }
        },
    )
    .await;
    wait_until(Duration::from_secs(5), "the survivors handled", || {
        let seen = seen.clone();
        let n = survivors.len();
        async move { seen.runs().len() >= n }
    })
    .await;

    // No claim loop: with nothing left to claim, the two readers issue a few commands per claim
    // interval, not thousands.
    let claims_before = command_calls(&mut conn, "xautoclaim").await;
    let reads_before = command_calls(&mut conn, "xreadgroup").await;
    tokio::time::sleep(Duration::from_secs(1)).await; // ok: measuring the command rate over a 1 s window
    let claims = command_calls(&mut conn, "xautoclaim").await - claims_before;
    let reads = command_calls(&mut conn, "xreadgroup").await - reads_before;

    // The readers keep going.
    bus.publish(&ClaimJob { n: 1_000 }).await.expect("publish");
    wait_until(Duration::from_secs(10), "a new job is handled", || {
        let seen = seen.clone();
        async move { seen.counts().contains_key(&1_000) }
    })
    .await;
    let healths = [running_a.health(), running_b.health()];
    running_a.shutdown().await.expect("shutdown a");
    running_b.shutdown().await.expect("shutdown b");

    let lost = total(&healths, |r| r.lost_entries);
    let warnings = captured.find("WARN", "deleted or trimmed");
    println!(
        "trimmed pending entries: lost_entries {lost}; runs {}; XAUTOCLAIM {claims}/s, XREADGROUP {reads}/s while idle; {} loss warnings",
        seen.runs().len(),
        warnings.len()
    );
    let counts = seen.counts();
    let handled: BTreeSet<u64> = counts.keys().copied().filter(|n| *n < 1_000).collect();
    assert_eq!(handled, survivors, "exactly the surviving entries ran");
    assert!(
        counts.values().all(|c| *c == 1),
        "no duplicates: {counts:?}"
    );
    assert_eq!(lost, 30, "20 deleted + 10 trimmed, counted: {healths:?}");
    assert!(
        !warnings.is_empty()
            && warnings
                .iter()
                .all(|w| w["fields"]["handler"] == CLAIMER && w["fields"]["lost"].is_u64()),
        "a warning names the handler and the count: {}",
        captured.text()
    );
    let warned: u64 = warnings
        .iter()
        .filter_map(|w| w["fields"]["lost"].as_u64())
        .sum();
    assert_eq!(warned, 30, "the warnings add up to the loss");
    assert!(claims <= 30, "no XAUTOCLAIM loop: {claims} calls in 1 s");
    assert!(reads <= 60, "no XREADGROUP loop: {reads} calls in 1 s");
    assert!(
        healths.iter().all(Health::is_healthy),
        "healthy: {healths:?}"
    );
}

/// A consumer restarts under its stable name and re-reads its own pending list, in which some
/// entries were deleted from the stream meanwhile (XREADGROUP returns them with no fields): they
/// are acknowledged away and counted as lost, the rest run once. XAUTOCLAIM would drop deleted
/// entries first (Redis checks existence before idle time), so the consumer's user is denied
/// XAUTOCLAIM here to exercise the re-read path.
#[tokio::test(flavor = "current_thread")]
async fn restart_under_the_same_name_skips_its_own_deleted_pending_entries() {
    let (subscriber, captured) = logs::capture(tracing::Level::WARN);
    let _guard = tracing::subscriber::set_default(subscriber);
    let server = RedisServer::start();
    let ns = namespace("own-deleted");
    let stream = stream_key(&ns, ClaimJob::NAME);
    let mut conn = server.conn().await;
    let bus = publisher(&server, &ns).await;
    for n in 0..50 {
        bus.publish(&ClaimJob { n }).await.expect("publish");
    }
    let ids = stream_ids(&mut conn, &stream).await;
    // The previous life of "stable-1" read everything, then died.
    assert_eq!(
        strand_in_dead_consumer(&mut conn, &stream, CLAIMER, "stable-1").await,
        50
    );
    let deleted: usize = conn.xdel(&stream, &ids[..10]).await.expect("XDEL");
    assert_eq!(deleted, 10);
    acl::set_user(
        &mut conn,
        "noclaim",
        // Without `acl|dryrun` the start-up permission check is skipped (as on a managed Redis
        // that denies it), so the bus starts without XAUTOCLAIM.
        &[
            "on",
            ">pw",
            "~*",
            "&*",
            "+@all",
            "-xautoclaim",
            "-acl|dryrun",
        ],
    )
    .await;

    let seen = Seen::default();
    let port = server.port();
    let bus = Bus::builder()
        .redis_url(format!("redis://noclaim:pw@127.0.0.1:{port}"))
        .namespace(&ns)
        .consumer("stable-1")
        .handlers([CLAIMER])
        .visibility_timeout(Duration::from_secs(1))
        .claim_interval(Duration::from_millis(200))
        .block_time(Duration::from_millis(200))
        .state(seen.for_consumer("stable-1"))
        .build()
        .await
        .expect("build");
    let running = bus.start().await.expect("start");
    wait_until(
        Duration::from_secs(10),
        "the pending list drained to 0",
        || {
            let mut conn = conn.clone();
            let stream = stream.clone();
            async move { pending_count(&mut conn, &stream, CLAIMER).await == 0 }
        },
    )
    .await;
    wait_until(Duration::from_secs(5), "the rest handled", || {
        let seen = seen.clone();
        async move { seen.runs().len() >= 40 }
    })
    .await;
    let health = running.health();
    running.shutdown().await.expect("shutdown");

    let warnings = captured.find("WARN", "deleted from the stream");
    println!(
        "own deleted pending entries: {health:?}; warnings: {}",
        warnings.len()
    );
    let counts = seen.counts();
    assert_eq!(
        counts.keys().copied().collect::<Vec<_>>(),
        (10..50).collect::<Vec<_>>()
    );
    assert!(
        counts.values().all(|c| *c == 1),
        "no duplicates: {counts:?}"
    );
    assert_eq!(health.readers[0].lost_entries, 10, "{health:?}");
    assert_eq!(
        warnings.len(),
        10,
        "each lost entry is logged: {}",
        captured.text()
    );
    assert!(
        acl::log(&mut conn)
            .await
            .iter()
            .any(|e| e.get("object").map(String::as_str) == Some("xautoclaim")),
        "XAUTOCLAIM was tried and denied"
    );
}
