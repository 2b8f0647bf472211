//! Graceful shutdown: in-flight runs finish within the drain timeout and are acked; runs that do
//! not stay pending and are handled by the next consumer; nothing is lost or handled twice.

use std::collections::BTreeSet;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use eventbus::prelude::*;
use eventbus_tests::{
    ChildProcess, RedisServer, init_tracing, namespace, pending_count, stream_key, wait_until,
};
use redis::AsyncCommands;

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
enum Kind {
    /// Returns at once.
    Quick,
    /// Takes a little while: in flight at shutdown, done well within the drain timeout.
    Medium,
    /// Hangs (far beyond the drain timeout) on a bus whose state says `stall`.
    Stuck,
}

#[derive(Debug, Clone, Serialize, Deserialize, DomainEvent)]
#[event(name = "shutdown.task")]
struct Task {
    n: u64,
    kind: Kind,
}

#[derive(Clone, Default)]
struct Worker {
    stall: bool,
    started: Arc<Mutex<BTreeSet<u64>>>,
    finished: Arc<Mutex<Vec<u64>>>,
}

impl Worker {
    fn started(&self) -> BTreeSet<u64> {
        self.started.lock().expect("lock").clone()
    }
    fn finished(&self) -> Vec<u64> {
        self.finished.lock().expect("lock").clone()
    }
}

#[event_handler(name = "shutdown.worker", retries = 3)]
async fn worker(task: Task, w: State<Worker>) -> anyhow::Result<()> {
    w.started.lock().expect("lock").insert(task.n);
    match task.kind {
        Kind::Quick => {}
        Kind::Medium => tokio::time::sleep(Duration::from_millis(300)).await, // ok: simulated in-flight work
        Kind::Stuck if w.stall => tokio::time::sleep(Duration::from_secs(120)).await, // ok: outlives the drain
        Kind::Stuck => {}
    }
    w.finished.lock().expect("lock").push(task.n);
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn shutdown_drains_what_it_can_and_the_next_consumer_handles_the_rest() {
    init_tracing();
    let server = RedisServer::start();
    let ns = namespace("drain");
    let stream = stream_key(&ns, Task::NAME);
    let mut conn = server.conn().await;

    let first = Worker {
        stall: true,
        ..Worker::default()
    };
    let bus1 = Bus::builder()
        .redis_url(server.url())
        .namespace(&ns)
        .consumer("first")
        .handlers(["shutdown.worker"])
        .state(first.clone())
        .concurrency(16)
        .block_time(Duration::from_millis(200))
        // Long enough that the first bus never reclaims its own stuck runs.
        .visibility_timeout(Duration::from_secs(60))
        .drain_timeout(Duration::from_secs(3))
        .build()
        .await
        .expect("build first bus");
    let running1 = bus1.start().await.expect("start first bus");

    let kinds = [
        (0..5, Kind::Quick),
        (5..9, Kind::Medium),
        (9..12, Kind::Stuck),
    ];
    for (range, kind) in kinds.clone() {
        for n in range {
            bus1.publish(&Task { n, kind }).await.expect("publish");
        }
    }
    let all: BTreeSet<u64> = (0..12).collect();
    let stuck: BTreeSet<u64> = (9..12).collect();
    let drained: BTreeSet<u64> = (0..9).collect();

    wait_until(
        Duration::from_secs(10),
        "every task started on the first bus",
        || {
            let first = first.clone();
            async move { first.started().len() == 12 }
        },
    )
    .await;
    running1.shutdown().await.expect("shutdown first bus");

    let finished1: BTreeSet<u64> = first.finished().into_iter().collect();
    assert_eq!(
        first.finished().len(),
        finished1.len(),
        "no task ran twice on the first bus"
    );
    assert_eq!(
        finished1, drained,
        "quick and medium tasks finished (medium ones during the drain)"
    );
    assert_eq!(
        pending_count(&mut conn, &stream, "shutdown.worker").await,
        3,
        "finished runs were acked; the abandoned stuck runs stay pending"
    );
    assert!(
        consumers(&mut conn, &stream)
            .await
            .contains(&"first".to_owned()),
        "a consumer that leaves pending entries stays in the group, so they can be claimed"
    );

    let second = Worker {
        stall: false,
        ..Worker::default()
    };
    let bus2 = Bus::builder()
        .redis_url(server.url())
        .namespace(&ns)
        .consumer("second")
        .handlers(["shutdown.worker"])
        .state(second.clone())
        .block_time(Duration::from_millis(200))
        .visibility_timeout(Duration::from_millis(500))
        .claim_interval(Duration::from_millis(100))
        .build()
        .await
        .expect("build second bus");
    let running2 = bus2.start().await.expect("start second bus");
    wait_until(
        Duration::from_secs(15),
        "the second bus handled the abandoned tasks",
        || {
            let second = second.clone();
            let stuck = stuck.clone();
            async move { second.finished().iter().copied().collect::<BTreeSet<u64>>() == stuck }
        },
    )
    .await;
    wait_until(Duration::from_secs(10), "nothing pending", || {
        let mut conn = conn.clone();
        let stream = stream.clone();
        async move { pending_count(&mut conn, &stream, "shutdown.worker").await == 0 }
    })
    .await;
    running2.shutdown().await.expect("shutdown second bus");
    let left = consumers(&mut conn, &stream).await;
    assert!(
        !left.contains(&"second".to_owned()),
        "a consumer that drained cleanly leaves the group: {left:?}"
    );

    let finished2 = second.finished();
    let mut sorted = finished2.clone();
    sorted.sort_unstable();
    assert_eq!(
        sorted,
        stuck.iter().copied().collect::<Vec<_>>(),
        "the second bus handled exactly the abandoned tasks, once each"
    );
    let everything: BTreeSet<u64> = finished1.union(&stuck).copied().collect();
    assert_eq!(everything, all, "nothing lost");
    assert!(
        bus2.dlq().list(10).await.expect("list").is_empty(),
        "no dead letters"
    );
}

/// The consumer names of the `shutdown.worker` group.
async fn consumers(conn: &mut redis::aio::MultiplexedConnection, stream: &str) -> Vec<String> {
    let reply: redis::streams::StreamInfoConsumersReply = redis::cmd("XINFO")
        .arg("CONSUMERS")
        .arg(stream)
        .arg("shutdown.worker")
        .query_async(conn)
        .await
        .expect("XINFO CONSUMERS");
    reply.consumers.into_iter().map(|c| c.name).collect()
}

#[derive(Debug, Clone, Serialize, Deserialize, DomainEvent)]
#[event(name = "test.job")]
struct Job {
    n: u64,
    crash: bool,
    sleep_ms: u64,
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sigterm_lets_a_consumer_process_finish_its_in_flight_jobs() {
    init_tracing();
    let server = RedisServer::start();
    let ns = namespace("sigterm");
    let url = server.url();
    let mut consumer = ChildProcess::spawn(
        env!("CARGO_BIN_EXE_consumer"),
        &[
            ("REDIS_URL", &url),
            ("EVENTBUS_NAMESPACE", &ns),
            ("EVENTBUS_HANDLERS", "consumer.job"),
            ("EVENTBUS_BLOCK_TIME", "200ms"),
            ("EVENTBUS_VISIBILITY_TIMEOUT", "30s"),
            ("EVENTBUS_DRAIN_TIMEOUT", "20s"),
            ("EVENTBUS_CONSUMER", "drainer"),
        ],
    );
    let ready = consumer.wait_for_line("ready", Duration::from_secs(20));
    assert_eq!(ready, "ready drainer");

    let bus = Bus::builder()
        .redis_url(&url)
        .namespace(&ns)
        .handlers(Vec::<String>::new())
        .build()
        .await
        .expect("publisher");
    for n in 0..4 {
        bus.publish(&Job {
            n,
            crash: false,
            sleep_ms: 1500,
        })
        .await
        .expect("publish");
    }
    let stream = stream_key(&ns, Job::NAME);
    let mut conn = server.conn().await;
    wait_until(
        Duration::from_secs(10),
        "all 4 jobs delivered to the consumer",
        || {
            let mut conn = conn.clone();
            let stream = stream.clone();
            async move { pending_count(&mut conn, &stream, "consumer.job").await == 4 }
        },
    )
    .await;
    consumer.signal("TERM");
    let mut status = None;
    wait_until(
        Duration::from_secs(30),
        "the consumer exits after SIGTERM",
        || {
            if status.is_none() {
                status = consumer.try_wait();
            }
            let exited = status.is_some();
            async move { exited }
        },
    )
    .await;
    let status = status.expect("exited");
    assert!(
        status.success(),
        "exit status {status}; stderr: {}",
        consumer.stderr()
    );
    // The process has exited; its last stdout line may still be in the pipe.
    consumer.wait_for_line("stopped", Duration::from_secs(5));

    let handled: Vec<String> = conn
        .lrange(format!("{ns}:handled"), 0, -1)
        .await
        .expect("LRANGE");
    let mut ns_handled: Vec<u64> = handled
        .iter()
        .map(|h| {
            h.split(':')
                .next()
                .and_then(|n| n.parse().ok())
                .expect("n:consumer")
        })
        .collect();
    ns_handled.sort_unstable();
    assert_eq!(
        ns_handled,
        [0, 1, 2, 3],
        "every in-flight job finished during the drain: {handled:?}"
    );
    assert_eq!(
        pending_count(&mut conn, &stream, "consumer.job").await,
        0,
        "and was acked"
    );
}
