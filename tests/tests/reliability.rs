//! Reliability II (issue 9): attempts are charged by an event's own failures, not by deliveries;
//! a hung handler times out; shutdown starts nothing new and hands prefetched entries back; acks
//! that fail stop the reader; shutdown is bounded when Redis is frozen.

use std::collections::{BTreeMap, BTreeSet};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use eventbus::prelude::*;
use eventbus::{RunningBus, SHUTDOWN_MARGIN};
use eventbus_tests::{RedisServer, init_tracing, namespace, pending_count, stream_key, wait_until};
use tokio::sync::Notify;

/// A job for the handlers below: `hold` jobs wait for the test's gate (or hang, for `hang`).
#[derive(Debug, Clone, Serialize, Deserialize, DomainEvent)]
#[event(name = "rel.job")]
struct Job {
    n: u64,
    #[serde(default)]
    hang: bool,
    #[serde(default)]
    fail: bool,
}

/// What one bus's handler saw: started and finished jobs, with the attempt of each start.
#[derive(Clone, Default)]
struct Seen {
    started: Arc<Mutex<Vec<(u64, u32)>>>,
    finished: Arc<Mutex<BTreeSet<u64>>>,
    /// While set, every job waits for `gate` before finishing.
    hold: Arc<std::sync::atomic::AtomicBool>,
    gate: Arc<Notify>,
}

impl Seen {
    fn holding() -> Seen {
        let s = Seen::default();
        s.hold.store(true, std::sync::atomic::Ordering::SeqCst);
        s
    }
    fn started(&self) -> Vec<(u64, u32)> {
        self.started.lock().expect("lock").clone()
    }
    fn finished(&self) -> BTreeSet<u64> {
        self.finished.lock().expect("lock").clone()
    }
    fn open(&self) {
        self.hold.store(false, std::sync::atomic::Ordering::SeqCst);
        self.gate.notify_waiters();
    }
}

#[event_handler(name = "rel.worker", backoff = "10s")]
async fn worker(job: Job, ctx: Context, seen: State<Seen>) -> anyhow::Result<()> {
    seen.started
        .lock()
        .expect("lock")
        .push((job.n, ctx.attempt()));
    if job.hang {
        std::future::pending::<()>().await;
    }
    while seen.hold.load(std::sync::atomic::Ordering::SeqCst) {
        let notified = seen.gate.notified();
        if !seen.hold.load(std::sync::atomic::Ordering::SeqCst) {
            break;
        }
        notified.await;
    }
    if job.fail {
        anyhow::bail!("job {} fails here", job.n);
    }
    seen.finished.lock().expect("lock").insert(job.n);
    Ok(())
}

const GROUP: &str = "rel.worker";

fn builder(url: &str, ns: &str, consumer: &str, seen: &Seen) -> eventbus::BusBuilder {
    let mut b = Bus::builder();
    b.redis_url(url)
        .namespace(ns)
        .consumer(consumer)
        .handlers([GROUP])
        .state(seen.clone())
        .block_time(Duration::from_millis(200))
        .visibility_timeout(Duration::from_secs(1))
        .claim_interval(Duration::from_millis(200))
        .drain_timeout(Duration::from_secs(5));
    b
}

async fn publish_jobs(bus: &Bus, ns: impl IntoIterator<Item = Job>) {
    for job in ns {
        bus.publish(&job).await.expect("publish");
    }
}

fn job(n: u64) -> Job {
    Job {
        n,
        hang: false,
        fail: false,
    }
}

/// With `retries = 0`, a consumer that dies with 2 runs in flight and 18 entries prefetched
/// charges none of them: the next consumer handles all 20, dead-letters none. (Before: all 20
/// were dead-lettered as "delivered 2 times".)
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn entries_in_flight_or_prefetched_at_a_crash_are_not_charged_with_retries_zero() {
    init_tracing();
    let server = RedisServer::start();
    let ns = namespace("uncharged");
    let first = Seen::holding();
    let bus_a = builder(&server.url(), &ns, "a", &first)
        .retries(0)
        .concurrency(2)
        .batch_size(18)
        .build()
        .await
        .expect("build a");
    let running_a = bus_a.start().await.expect("start a");
    publish_jobs(&bus_a, (0..20).map(job)).await;
    wait_until(Duration::from_secs(10), "two runs in flight on a", || {
        let first = first.clone();
        async move { first.started().len() == 2 }
    })
    .await;
    // A crash: the bus is dropped with everything in flight (no drain, no hand-back).
    drop(running_a);
    drop(bus_a);

    let second = Seen::default();
    let bus_b = builder(&server.url(), &ns, "b", &second)
        .retries(0)
        .concurrency(4)
        .build()
        .await
        .expect("build b");
    let running_b = bus_b.start().await.expect("start b");
    wait_until(Duration::from_secs(30), "every job handled by b", || {
        let second = second.clone();
        async move { second.finished().len() == 20 }
    })
    .await;
    let letters = bus_b.dlq().list(100).await.expect("list");
    assert!(letters.is_empty(), "nothing dead-lettered: {letters:#?}");
    let health = running_b.health();
    assert_eq!(health.readers[0].dead_lettered, 0);
    assert!(health.readers[0].suspects >= 20, "{:?}", health.readers[0]);
    // Every run on b was the event's first charged attempt.
    assert!(
        second.started().iter().all(|&(_, attempt)| attempt == 1),
        "{:?}",
        second.started()
    );
    running_b.shutdown().await.expect("shutdown");
}

/// `ctx.attempt()` counts attempts charged before a crash: a failure on the first consumer is
/// charged, so the second consumer's run is attempt 2, and with `retries = 1` its failure is the
/// last one (one dead letter, 2 attempts).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_failure_before_a_crash_is_charged_and_ctx_attempt_counts_it() {
    init_tracing();
    let server = RedisServer::start();
    let ns = namespace("charged");
    let first = Seen::default();
    let bus_a = builder(&server.url(), &ns, "a", &first)
        .retries(1)
        .build()
        .await
        .expect("build a");
    let running_a = bus_a.start().await.expect("start a");
    let failing = Job {
        n: 1,
        hang: false,
        fail: true,
    };
    publish_jobs(&bus_a, [failing]).await;
    // The handler's backoff is 10 s: the consumer dies while waiting to retry.
    wait_until(Duration::from_secs(10), "the first attempt failed", || {
        let first = first.clone();
        async move { first.started().len() == 1 }
    })
    .await;
    // Give the failure's charge time to land (it is written before the backoff starts).
    let mut conn = server.conn().await;
    let marks = format!("{ns}:{{rel.job}}:attempts");
    wait_until(Duration::from_secs(5), "the failure is charged", || {
        let mut conn = conn.clone();
        let marks = marks.clone();
        async move {
            redis::cmd("HLEN")
                .arg(&marks)
                .query_async::<u64>(&mut conn)
                .await
                .unwrap_or(0)
                == 1
        }
    })
    .await;
    drop(running_a);
    drop(bus_a);

    let second = Seen::default();
    let bus_b = builder(&server.url(), &ns, "b", &second)
        .retries(1)
        .build()
        .await
        .expect("build b");
    let running_b = bus_b.start().await.expect("start b");
    wait_until(Duration::from_secs(20), "one dead letter", || {
        let bus = bus_b.clone();
        async move { bus.dlq().list(10).await.expect("list").len() == 1 }
    })
    .await;
    assert_eq!(
        second.started(),
        vec![(1, 2)],
        "b ran the event once, as attempt 2"
    );
    let letters = bus_b.dlq().list(10).await.expect("list");
    assert_eq!(letters[0].attempts, 2);
    assert!(
        letters[0].error.contains("fails here"),
        "{}",
        letters[0].error
    );
    let left: u64 = redis::cmd("HLEN")
        .arg(&marks)
        .query_async(&mut conn)
        .await
        .expect("HLEN");
    assert_eq!(left, 0, "the charge is deleted with the dead letter");
    running_b.shutdown().await.expect("shutdown");
}

/// A handler that hangs: each attempt times out (`handler_timeout`), the event is retried and
/// then dead-lettered, and the run slot is freed for the next event.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_hung_handler_times_out_retries_and_frees_its_slot() {
    init_tracing();
    let server = RedisServer::start();
    let ns = namespace("hung");
    let seen = Seen::default();
    let bus = builder(&server.url(), &ns, "a", &seen)
        .retries(1)
        .backoff(Duration::from_millis(10))
        .concurrency(1)
        .handler_timeout(Duration::from_millis(300))
        .build()
        .await
        .expect("build");
    let running = bus.start().await.expect("start");
    let hung = Job {
        n: 0,
        hang: true,
        fail: false,
    };
    publish_jobs(&bus, [hung, job(1), job(2)]).await;
    wait_until(
        Duration::from_secs(20),
        "the jobs behind the hung one are handled",
        || {
            let seen = seen.clone();
            async move { seen.finished() == BTreeSet::from([1, 2]) }
        },
    )
    .await;
    wait_until(
        Duration::from_secs(10),
        "the hung job is dead-lettered",
        || {
            let bus = bus.clone();
            async move { bus.dlq().list(10).await.expect("list").len() == 1 }
        },
    )
    .await;
    let letter = &bus.dlq().list(10).await.expect("list")[0];
    assert!(letter.error.contains("timed out"), "{}", letter.error);
    assert_eq!(letter.attempts, 2);
    let attempts_of_hung: Vec<u32> = seen
        .started()
        .iter()
        .filter(|(n, _)| *n == 0)
        .map(|(_, a)| *a)
        .collect();
    assert_eq!(attempts_of_hung, [1, 2]);
    assert_eq!(running.health().readers[0].timeouts, 2);
    running.shutdown().await.expect("shutdown");
}

/// After `shutdown()` nothing new starts: the one run in flight finishes, the 9 prefetched
/// entries are handed back at once, and another consumer takes them in well under the
/// visibility timeout (30 s here), as first attempts.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn shutdown_starts_nothing_new_and_hands_prefetched_entries_back() {
    init_tracing();
    let server = RedisServer::start();
    let ns = namespace("handback");
    let first = Seen::holding();
    let bus_a = builder(&server.url(), &ns, "a", &first)
        .concurrency(1)
        .batch_size(10)
        .visibility_timeout(Duration::from_secs(30))
        .claim_interval(Duration::from_secs(10))
        .build()
        .await
        .expect("build a");
    let running_a = bus_a.start().await.expect("start a");
    publish_jobs(&bus_a, (0..10).map(job)).await;
    wait_until(Duration::from_secs(10), "one run in flight on a", || {
        let first = first.clone();
        async move { first.started().len() == 1 }
    })
    .await;
    let conn = server.conn().await;
    let stream = stream_key(&ns, Job::NAME);
    wait_until(Duration::from_secs(10), "a has prefetched all 10", || {
        let mut conn = conn.clone();
        let stream = stream.clone();
        async move { pending_count(&mut conn, &stream, GROUP).await == 10 }
    })
    .await;

    let second = Seen::default();
    // A smaller batch than the 9 handed back: the take-over takes several pages.
    let bus_b = builder(&server.url(), &ns, "b", &second)
        .batch_size(4)
        .visibility_timeout(Duration::from_secs(30))
        .claim_interval(Duration::from_secs(10))
        .build()
        .await
        .expect("build b");
    let running_b = bus_b.start().await.expect("start b");

    let stopping = Instant::now();
    let shutdown = tokio::spawn(running_a.shutdown());
    // The run in flight finishes during the drain.
    let first_gate = first.clone();
    tokio::spawn(async move {
        tokio::time::sleep(Duration::from_millis(300)).await; // ok: lets shutdown begin before the run ends
        first_gate.open();
    });
    tokio::time::timeout(Duration::from_secs(15), shutdown)
        .await
        .expect("shutdown returns")
        .expect("join")
        .expect("shutdown");
    assert_eq!(
        first.started().len(),
        1,
        "nothing new started after shutdown: {:?}",
        first.started()
    );
    wait_until(
        Duration::from_secs(10),
        "b handles the 9 handed-back entries",
        || {
            let second = second.clone();
            async move { second.finished().len() == 9 }
        },
    )
    .await;
    let took = stopping.elapsed();
    println!("recovery handback_takeover_ms={}", took.as_millis());
    assert!(
        took < Duration::from_secs(10),
        "well under the 30 s visibility timeout: {took:?}"
    );
    assert!(second.started().iter().all(|&(_, a)| a == 1));
    let health = running_b.health();
    assert_eq!(health.readers[0].taken_over, 9, "{:?}", health.readers[0]);
    assert_eq!(health.readers[0].suspects, 0, "handed back, not suspects");
    let all: BTreeSet<u64> = first
        .finished()
        .union(&second.finished())
        .copied()
        .collect();
    assert_eq!(all, (0..10).collect());
    wait_until(Duration::from_secs(10), "nothing pending", || {
        let mut conn = conn.clone();
        let stream = stream.clone();
        async move { pending_count(&mut conn, &stream, GROUP).await == 0 }
    })
    .await;
    running_b.shutdown().await.expect("shutdown b");
}

/// XACK revoked by an ACL edit mid-stream: runs stop once the prefetch window is full of
/// unacknowledged entries, health says why, and everything drains once XACK is granted again.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn revoked_xack_bounds_the_runs_and_everything_drains_after_the_grant() {
    init_tracing();
    let server = RedisServer::start();
    let ns = namespace("noack");
    let mut admin = server.conn().await;
    eventbus_tests::acl::set_user(&mut admin, "svc", &["on", ">pw", "~*", "&*", "+@all"]).await;
    let url = format!("redis://svc:pw@127.0.0.1:{}", server.port());
    let seen = Seen::default();
    const CONCURRENCY: u32 = 4;
    const BATCH: usize = 10;
    let bus = builder(&url, &ns, "a", &seen)
        .concurrency(CONCURRENCY)
        .batch_size(BATCH)
        .build()
        .await
        .expect("build");
    let running = bus.start().await.expect("start");
    publish_jobs(&bus, (0..5).map(job)).await;
    wait_until(
        Duration::from_secs(10),
        "the first jobs are handled",
        || {
            let seen = seen.clone();
            async move { seen.finished().len() == 5 }
        },
    )
    .await;

    eventbus_tests::acl::add_rules(&mut admin, "svc", &["-xack"]).await;
    publish_jobs(&bus, (5..305).map(job)).await;
    // The prefetch window: runs in flight, a batch read ahead, a batch of acks in flight.
    let window = CONCURRENCY as usize + 2 * BATCH;
    wait_until(
        Duration::from_secs(10),
        "health reports the failing acks",
        || {
            let h = running.health();
            async move { !h.is_healthy() && h.readers[0].ack_error.is_some() }
        },
    )
    .await;
    // Let the reader go as far as it would.
    wait_until(Duration::from_secs(10), "the window fills", || {
        let seen = seen.clone();
        async move { seen.finished().len() >= 5 + window - CONCURRENCY as usize }
    })
    .await;
    let mut stable = seen.finished().len();
    for _ in 0..10 {
        tokio::time::sleep(Duration::from_millis(100)).await; // ok: observing that nothing more runs
        stable = seen.finished().len();
    }
    let while_denied = stable - 5;
    println!("acks_denied runs_while_denied={while_denied} window={window}");
    assert!(
        while_denied <= window,
        "at most the prefetch window ({window}) ran while acks failed, not {while_denied}"
    );
    assert!(running.health().readers[0].unacked as usize <= window);

    eventbus_tests::acl::add_rules(&mut admin, "svc", &["+xack"]).await;
    let conn = server.conn().await;
    let stream = stream_key(&ns, Job::NAME);
    wait_until(
        Duration::from_secs(30),
        "every job handled and acked",
        || {
            let seen = seen.clone();
            let mut conn = conn.clone();
            let stream = stream.clone();
            async move {
                seen.finished().len() == 305 && pending_count(&mut conn, &stream, GROUP).await == 0
            }
        },
    )
    .await;
    wait_until(Duration::from_secs(5), "healthy again", || {
        let h = running.health();
        async move { h.is_healthy() }
    })
    .await;
    let runs: BTreeMap<u64, usize> =
        seen.started()
            .iter()
            .fold(BTreeMap::new(), |mut m, (n, _)| {
                *m.entry(*n).or_default() += 1;
                m
            });
    assert!(runs.values().all(|&c| c == 1), "each job ran once");
    running.shutdown().await.expect("shutdown");
}

/// Shutdown returns within the drain timeout plus the documented margin even when Redis is
/// frozen (SIGSTOP) with a run in flight and acks waiting.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn shutdown_is_bounded_when_redis_is_frozen() {
    init_tracing();
    let server = RedisServer::start();
    let ns = namespace("frozen-stop");
    let seen = Seen::holding();
    let drain = Duration::from_secs(1);
    let bus = builder(&server.url(), &ns, "a", &seen)
        .drain_timeout(drain)
        .build()
        .await
        .expect("build");
    let running: RunningBus = bus.start().await.expect("start");
    publish_jobs(&bus, (0..3).map(job)).await;
    wait_until(Duration::from_secs(10), "runs in flight", || {
        let seen = seen.clone();
        async move { seen.started().len() == 3 }
    })
    .await;
    server.signal("STOP");
    let started = Instant::now();
    let result = tokio::time::timeout(Duration::from_secs(30), running.shutdown()).await;
    let took = started.elapsed();
    server.signal("CONT");
    result.expect("shutdown returned").expect("shutdown");
    println!("shutdown frozen_redis_ms={}", took.as_millis());
    assert!(
        took <= drain + SHUTDOWN_MARGIN + Duration::from_millis(1500),
        "shutdown took {took:?} with a frozen Redis"
    );
}
