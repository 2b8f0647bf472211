//! Crash recovery across processes: a consumer killed with SIGKILL loses nothing, and a message
//! that kills its consumer every time ends in the dead letters instead of looping.

use std::collections::{BTreeMap, BTreeSet};
use std::time::Duration;

use eventbus::prelude::*;
use eventbus_tests::{
    ChildProcess, RedisServer, init_tracing, namespace, pending_count, stream_key, wait_until,
};
use redis::AsyncCommands;

/// The `consumer` binary's event (same name and fields).
#[derive(Debug, Clone, Serialize, Deserialize, DomainEvent)]
#[event(name = "test.job")]
struct Job {
    n: u64,
    crash: bool,
    sleep_ms: u64,
}

const GROUP: &str = "consumer.job";

/// Starts a `consumer` process on `ns` (1 s visibility timeout, 200 ms claim interval).
fn start_consumer(server: &RedisServer, ns: &str, extra: &[(&str, &str)]) -> ChildProcess {
    let url = server.url();
    let mut env = vec![
        ("REDIS_URL", url.as_str()),
        ("EVENTBUS_NAMESPACE", ns),
        ("EVENTBUS_HANDLERS", GROUP),
        ("EVENTBUS_VISIBILITY_TIMEOUT", "1s"),
        ("EVENTBUS_CLAIM_INTERVAL", "200ms"),
        ("EVENTBUS_BLOCK_TIME", "200ms"),
        ("EVENTBUS_RETRIES", "1"),
    ];
    env.extend_from_slice(extra);
    ChildProcess::spawn(env!("CARGO_BIN_EXE_consumer"), &env)
}

/// As [`start_consumer`], and waits until it printed `ready`.
fn spawn_ready_consumer(server: &RedisServer, ns: &str, extra: &[(&str, &str)]) -> ChildProcess {
    let mut child = start_consumer(server, ns, extra);
    child.wait_for_line("ready", Duration::from_secs(20));
    child
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

/// `<ns>:handled` as (job number, consumer) pairs.
async fn handled(conn: &mut redis::aio::MultiplexedConnection, ns: &str) -> Vec<(u64, String)> {
    let raw: Vec<String> = conn
        .lrange(format!("{ns}:handled"), 0, -1)
        .await
        .expect("LRANGE");
    raw.iter()
        .map(|s| {
            let (n, who) = s.split_once(':').expect("n:consumer");
            (n.parse().expect("job number"), who.to_owned())
        })
        .collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sigkill_of_a_consumer_process_loses_no_job() {
    init_tracing();
    let server = RedisServer::start();
    let ns = namespace("sigkill");
    let stream = stream_key(&ns, Job::NAME);
    let mut conn = server.conn().await;
    let mut first = spawn_ready_consumer(
        &server,
        &ns,
        &[
            ("EVENTBUS_CONCURRENCY", "8"),
            ("EVENTBUS_CONSUMER", "victim"),
        ],
    );

    let bus = publisher(&server, &ns).await;
    let total = 40;
    for n in 0..total {
        // Staggered run times keep the consumer's 8 slots busy: jobs are always in flight.
        bus.publish(&Job {
            n,
            crash: false,
            sleep_ms: 100 + (n % 7) * 50,
        })
        .await
        .expect("publish");
    }
    wait_until(
        Duration::from_secs(20),
        "the first consumer handled some jobs and has others in flight",
        || {
            let mut conn = conn.clone();
            let ns = ns.clone();
            let stream = stream.clone();
            async move {
                handled(&mut conn, &ns).await.len() >= 5
                    && pending_count(&mut conn, &stream, GROUP).await >= 6
            }
        },
    )
    .await;
    first.kill(); // SIGKILL
    let before_kill = handled(&mut conn, &ns).await;
    assert!(
        before_kill.len() < total as usize,
        "the first consumer was killed before finishing: {before_kill:?}"
    );
    let orphaned = pending_count(&mut conn, &stream, GROUP).await;
    assert!(orphaned > 0, "jobs were in flight in the killed consumer");

    let _second = spawn_ready_consumer(&server, &ns, &[("EVENTBUS_CONSUMER", "rescuer")]);
    let all: BTreeSet<u64> = (0..total).collect();
    wait_until(Duration::from_secs(30), "every job handled", || {
        let mut conn = conn.clone();
        let ns = ns.clone();
        let all = all.clone();
        async move {
            handled(&mut conn, &ns)
                .await
                .iter()
                .map(|h| h.0)
                .collect::<BTreeSet<u64>>()
                == all
        }
    })
    .await;
    wait_until(Duration::from_secs(10), "nothing pending", || {
        let mut conn = conn.clone();
        let stream = stream.clone();
        async move { pending_count(&mut conn, &stream, GROUP).await == 0 }
    })
    .await;

    let done = handled(&mut conn, &ns).await;
    let mut times: BTreeMap<u64, Vec<String>> = BTreeMap::new();
    for (n, who) in &done {
        times.entry(*n).or_default().push(who.clone());
    }
    let duplicates: Vec<_> = times.iter().filter(|(_, who)| who.len() > 1).collect();
    eprintln!(
        "sigkill: {} jobs, {} pending at the kill, {} handled before it, {} handled in all; duplicates (allowed, at least once): {duplicates:?}",
        total,
        orphaned,
        before_kill.len(),
        done.len()
    );
    assert!(
        done.iter().any(|h| h.1 == "rescuer"),
        "the second consumer took over"
    );
    assert!(
        done.iter().all(|h| h.1 == "victim" || h.1 == "rescuer"),
        "only the two consumers handled jobs: {done:?}"
    );
    assert!(
        bus.dlq().list(10).await.expect("list").is_empty(),
        "a crash alone does not dead-letter anything"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_message_that_crashes_every_consumer_is_dead_lettered_after_the_attempt_limit() {
    init_tracing();
    let server = RedisServer::start();
    let ns = namespace("poison");
    let stream = stream_key(&ns, Job::NAME);
    let mut conn = server.conn().await;
    let bus = publisher(&server, &ns).await;
    let poison = bus
        .publish(&Job {
            n: 0,
            crash: true,
            sleep_ms: 0,
        })
        .await
        .expect("publish");

    // Keep replacing crashed consumers while the dead letters are empty (bounded).
    let mut crashes = 0;
    let mut survivor = None;
    for round in 0..6 {
        // Not waiting for `ready`: a consumer may claim the poison job and crash before it
        // prints it.
        let mut consumer = start_consumer(
            &server,
            &ns,
            &[("EVENTBUS_CONSUMER", &format!("poisoned-{round}"))],
        );
        let mut status = None;
        wait_until(
            Duration::from_secs(20),
            "the consumer crashes or the message is dead-lettered",
            || {
                if status.is_none() {
                    status = consumer.try_wait();
                }
                let exited = status.is_some();
                let bus = bus.clone();
                async move { exited || !bus.dlq().list(10).await.expect("list").is_empty() }
            },
        )
        .await;
        let dead_lettered = !bus.dlq().list(10).await.expect("list").is_empty();
        if dead_lettered && status.is_none() {
            survivor = Some(consumer);
            break;
        }
        let status = status.expect("the consumer exited");
        assert!(!status.success(), "the consumer crashed: {status}");
        assert!(
            consumer.stderr().contains("crashes this consumer"),
            "it crashed on the poison job: {}",
            consumer.stderr()
        );
        crashes += 1;
    }
    let mut survivor =
        survivor.expect("the poison message was dead-lettered within 6 consumer processes");
    assert_eq!(
        crashes, 3,
        "retries = 1: the first crash is not charged (it was not running alone: it may have been \
         a bystander), then 2 charged crashes while running alone; the next delivery is \
         dead-lettered without running"
    );

    let letters = bus.dlq().list(10).await.expect("list");
    assert_eq!(letters.len(), 1, "{letters:#?}");
    let letter = &letters[0];
    assert_eq!(letter.event_id.as_ref(), Some(&poison));
    assert_eq!(letter.handler, GROUP);
    assert!(
        letter.error.contains("crashed") && letter.error.contains("limit is 2"),
        "{}",
        letter.error
    );
    assert_eq!(letter.attempts, 2);
    assert_eq!(letter.envelope["data"]["crash"], serde_json::json!(true));
    assert_eq!(
        pending_count(&mut conn, &stream, GROUP).await,
        0,
        "the poison message is no longer pending"
    );

    // The surviving consumer goes on with normal work.
    bus.publish(&Job {
        n: 1,
        crash: false,
        sleep_ms: 0,
    })
    .await
    .expect("publish");
    wait_until(
        Duration::from_secs(15),
        "a normal job after the poison one is handled",
        || {
            let mut conn = conn.clone();
            let ns = ns.clone();
            async move { handled(&mut conn, &ns).await.iter().any(|h| h.0 == 1) }
        },
    )
    .await;
    assert!(
        survivor.try_wait().is_none(),
        "the surviving consumer is still running"
    );
    let done = handled(&mut conn, &ns).await;
    assert!(
        done.iter().all(|h| h.0 != 0),
        "the poison job never completed: {done:?}"
    );
}
