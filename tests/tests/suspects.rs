//! Suspects (entries redelivered after a possible crash) run alone in the whole process, so a
//! crash is charged only to the suspect that was running; a suspect whose charge Redis refuses
//! does not stall its handler; a failing `HDEL` of charged attempts does not stall acks.
//! (Regressions found by the review of issue 9.)

use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use eventbus::prelude::*;
use eventbus_tests::{RedisServer, init_tracing, namespace, pending_count, stream_key, wait_until};

#[derive(Debug, Clone, Serialize, Deserialize, DomainEvent)]
#[event(name = "sus.job")]
struct Job {
    n: u64,
    #[serde(default)]
    fail_first: bool,
}

#[derive(Clone, Default)]
struct Seen {
    handled: Arc<AtomicU64>,
}

#[event_handler(name = "sus.worker", backoff = "1s")]
async fn worker(job: Job, ctx: Context, seen: State<Seen>) -> anyhow::Result<()> {
    if job.fail_first && ctx.attempt() == 1 {
        anyhow::bail!("first attempt of {} fails", job.n);
    }
    seen.handled.fetch_add(1, Ordering::SeqCst);
    Ok(())
}

const GROUP: &str = "sus.worker";

fn builder(url: &str, ns: &str, seen: &Seen) -> eventbus::BusBuilder {
    let mut b = Bus::builder();
    b.redis_url(url)
        .namespace(ns)
        .consumer("live")
        .handlers([GROUP])
        .state(seen.clone())
        .block_time(Duration::from_millis(100))
        .drain_timeout(Duration::from_secs(2));
    b
}

async fn publisher(url: &str, ns: &str) -> Bus {
    Bus::builder()
        .redis_url(url)
        .namespace(ns)
        .handlers(Vec::<String>::new())
        .build()
        .await
        .expect("publisher")
}

async fn create_group(conn: &mut redis::aio::MultiplexedConnection, stream: &str, group: &str) {
    let _: () = redis::cmd("XGROUP")
        .arg("CREATE")
        .arg(stream)
        .arg(group)
        .arg("0")
        .arg("MKSTREAM")
        .query_async(conn)
        .await
        .expect("XGROUP CREATE");
}

/// Delivers every new entry of `stream` to consumer `who`, which never runs them (a consumer
/// that died right after reading).
async fn strand(
    conn: &mut redis::aio::MultiplexedConnection,
    stream: &str,
    group: &str,
    who: &str,
) {
    let _: redis::Value = redis::cmd("XREADGROUP")
        .arg("GROUP")
        .arg(group)
        .arg(who)
        .arg("COUNT")
        .arg(1000)
        .arg("STREAMS")
        .arg(stream)
        .arg(">")
        .query_async(conn)
        .await
        .expect("XREADGROUP");
}

/// The attempts key of `sus.job` holds a string: no suspect can be charged. The suspects stay
/// pending (they must not run uncharged), health says why, and fresh events are still handled.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_suspect_that_cannot_be_charged_does_not_stall_the_handler() {
    init_tracing();
    let server = RedisServer::start();
    let ns = namespace("sus-charge");
    let stream = stream_key(&ns, Job::NAME);
    let mut conn = server.conn().await;
    create_group(&mut conn, &stream, GROUP).await;
    let p = publisher(&server.url(), &ns).await;
    for n in 0..3 {
        p.publish(&Job {
            n,
            fail_first: false,
        })
        .await
        .expect("publish");
    }
    strand(&mut conn, &stream, GROUP, "dead").await;
    let _: () = redis::cmd("SET")
        .arg(format!("{ns}:{{sus.job}}:attempts"))
        .arg("not a hash")
        .query_async(&mut conn)
        .await
        .expect("SET");
    let seen = Seen::default();
    let bus = builder(&server.url(), &ns, &seen)
        .concurrency(4)
        .visibility_timeout(Duration::from_millis(200))
        .claim_interval(Duration::from_millis(50))
        .build()
        .await
        .expect("bus");
    let running = bus.start().await.expect("start");
    wait_until(
        Duration::from_secs(10),
        "health reports the charge error",
        || {
            let h = running.health();
            async move {
                !h.is_healthy()
                    && h.readers[0]
                        .claim_error
                        .as_deref()
                        .is_some_and(|e| e.contains("cannot record"))
            }
        },
    )
    .await;
    for n in 10..20 {
        p.publish(&Job {
            n,
            fail_first: false,
        })
        .await
        .expect("publish");
    }
    wait_until(
        Duration::from_secs(20),
        "the fresh events are handled",
        || {
            let seen = seen.clone();
            async move { seen.handled.load(Ordering::SeqCst) >= 10 }
        },
    )
    .await;
    assert_eq!(
        pending_count(&mut conn, &stream, GROUP).await,
        3,
        "the uncharged suspects stay pending"
    );
    running.shutdown().await.expect("shutdown");
}

/// A charged entry whose attempts field cannot be deleted (the key turned into a string while
/// it waited to retry): its ack still lands, and the reader goes on with the next 39 events.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_failing_delete_of_charged_attempts_does_not_stall_acks() {
    init_tracing();
    let server = RedisServer::start();
    let ns = namespace("sus-hdel");
    let stream = stream_key(&ns, Job::NAME);
    let attempts = format!("{ns}:{{sus.job}}:attempts");
    let mut conn = server.conn().await;
    let seen = Seen::default();
    let bus = builder(&server.url(), &ns, &seen)
        .concurrency(2)
        .batch_size(4)
        .build()
        .await
        .expect("bus");
    let running = bus.start().await.expect("start");
    bus.publish(&Job {
        n: 0,
        fail_first: true,
    })
    .await
    .expect("publish");
    wait_until(Duration::from_secs(5), "the failure is charged", || {
        let mut conn = conn.clone();
        let attempts = attempts.clone();
        async move {
            redis::cmd("HLEN")
                .arg(&attempts)
                .query_async::<u64>(&mut conn)
                .await
                .unwrap_or(0)
                == 1
        }
    })
    .await;
    let _: () = redis::cmd("SET")
        .arg(&attempts)
        .arg("not a hash")
        .query_async(&mut conn)
        .await
        .expect("SET");
    for n in 1..40 {
        bus.publish(&Job {
            n,
            fail_first: false,
        })
        .await
        .expect("publish");
    }
    wait_until(Duration::from_secs(20), "all 40 handled and acked", || {
        let seen = seen.clone();
        let mut conn = conn.clone();
        let stream = stream.clone();
        async move {
            seen.handled.load(Ordering::SeqCst) == 40
                && pending_count(&mut conn, &stream, GROUP).await == 0
        }
    })
    .await;
    assert!(running.health().readers[0].ack_error.is_none());
    running.shutdown().await.expect("shutdown");
}

// A crash caused by one handler's event is not charged to another handler's suspect.

#[derive(Debug, Clone, Serialize, Deserialize, DomainEvent)]
#[event(name = "sus.a")]
struct JobA {
    n: u64,
}

#[derive(Debug, Clone, Serialize, Deserialize, DomainEvent)]
#[event(name = "sus.b")]
struct JobB {
    n: u64,
}

#[event_handler(name = "sus.ha")]
async fn ha(job: JobA) -> anyhow::Result<()> {
    if job.n == 666 && std::env::var("SUS_CRASH").as_deref() == Ok("1") {
        tokio::time::sleep(Duration::from_millis(300)).await; // ok: lets a neighbour run meanwhile
        std::process::abort();
    }
    Ok(())
}

#[event_handler(name = "sus.hb")]
async fn hb(_job: JobB) -> anyhow::Result<()> {
    tokio::time::sleep(Duration::from_millis(1000)).await; // ok: a long run beside the crash
    Ok(())
}

/// The child process of the test below (a no-op unless `SUS_ROLE=child`).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn cross_handler_child() {
    if std::env::var("SUS_ROLE").as_deref() != Ok("child") {
        return;
    }
    let var = |k: &str| std::env::var(k).unwrap_or_else(|_| panic!("{k} is set"));
    let bus = Bus::builder()
        .redis_url(var("SUS_URL"))
        .namespace(var("SUS_NS"))
        .consumer(var("SUS_CONSUMER"))
        .handlers(["sus.ha", "sus.hb"])
        .retries(0)
        .visibility_timeout(Duration::from_millis(200))
        .claim_interval(Duration::from_millis(50))
        .block_time(Duration::from_millis(100))
        .build()
        .await
        .expect("bus");
    let running = bus.start().await.expect("start");
    tokio::time::sleep(Duration::from_secs(4)).await; // ok: the child runs for a fixed time
    running.shutdown().await.expect("shutdown");
}

/// Two handlers each have a suspect (a dead consumer left both pending); handler A's event
/// aborts the process. With `retries = 0`, handler B's event must not be charged for it: it is
/// handled by the next process, and only A's event is dead-lettered.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_crash_is_not_charged_to_another_handlers_suspect() {
    if std::env::var("SUS_ROLE").is_ok() {
        return;
    }
    init_tracing();
    let server = RedisServer::start();
    let ns = namespace("sus-cross");
    let mut conn = server.conn().await;
    let (sa, sb) = (stream_key(&ns, JobA::NAME), stream_key(&ns, JobB::NAME));
    create_group(&mut conn, &sa, "sus.ha").await;
    create_group(&mut conn, &sb, "sus.hb").await;
    let p = publisher(&server.url(), &ns).await;
    p.publish(&JobA { n: 666 }).await.expect("publish a");
    p.publish(&JobB { n: 1 }).await.expect("publish b");
    strand(&mut conn, &sa, "sus.ha", "dead").await;
    strand(&mut conn, &sb, "sus.hb", "dead").await;
    let run = |crash: &str, consumer: &str| {
        std::process::Command::new(std::env::current_exe().expect("test binary"))
            .args(["cross_handler_child", "--exact", "--test-threads=1"])
            .env("SUS_ROLE", "child")
            .env("SUS_URL", server.url())
            .env("SUS_NS", &ns)
            .env("SUS_CRASH", crash)
            .env("SUS_CONSUMER", consumer)
            .output()
            .expect("run the child")
    };
    let first = run("1", "c1");
    assert!(
        !first.status.success(),
        "the first child crashed on A's event"
    );
    let b_charges: Vec<String> = redis::cmd("HGETALL")
        .arg(format!("{ns}:{{sus.b}}:attempts"))
        .query_async(&mut conn)
        .await
        .expect("HGETALL");
    assert!(
        b_charges.is_empty(),
        "B's suspect was not charged: {b_charges:?}"
    );
    let second = run("0", "c2");
    assert!(second.status.success(), "the second child ran to the end");
    let letters = |key: String| {
        let mut conn = conn.clone();
        async move {
            let ids: Vec<redis::Value> = redis::cmd("XRANGE")
                .arg(key)
                .arg("-")
                .arg("+")
                .query_async(&mut conn)
                .await
                .expect("XRANGE");
            ids.len()
        }
    };
    assert_eq!(
        letters(format!("{ns}:{{sus.b}}:dlq")).await,
        0,
        "B's event is not dead-lettered"
    );
    assert_eq!(
        letters(format!("{ns}:{{sus.a}}:dlq")).await,
        1,
        "A's event, the culprit, is"
    );
    assert_eq!(
        pending_count(&mut conn, &sb, "sus.hb").await,
        0,
        "B's event was handled"
    );
}
