//! The dead-letter write fails (issue 3, scenario 10): the ACL denies the dead-letter key, or
//! Redis is out of memory with `noeviction`. The original entry is never acked without its dead
//! letter: it stays pending, the error is logged, the reader retries the write in process (the
//! handler does not run again, no other consumer takes the entry over), and once the cause is
//! removed the dead letter lands and the original is acked.

use std::sync::{Arc, Mutex};
use std::time::Duration;

use eventbus::RunningBus;
use eventbus::prelude::*;
use eventbus_tests::acl;
use eventbus_tests::logs;
use eventbus_tests::{RedisServer, dlq_key, namespace, pending_count, stream_key, wait_until};
use redis::AsyncCommands;
use redis::aio::MultiplexedConnection;

#[derive(Debug, Clone, Serialize, Deserialize, DomainEvent)]
#[event(name = "chaos.payment")]
struct Payment {
    cents: u64,
}

/// Runs of the handler, and a gate it waits at before failing.
#[derive(Clone)]
struct Gate {
    runs: Arc<Mutex<Vec<u64>>>,
    open: Arc<tokio::sync::Semaphore>,
}

impl Gate {
    fn new(open: bool) -> Gate {
        Gate {
            runs: Arc::default(),
            open: Arc::new(tokio::sync::Semaphore::new(if open {
                tokio::sync::Semaphore::MAX_PERMITS
            } else {
                0
            })),
        }
    }
    fn runs(&self) -> Vec<u64> {
        self.runs.lock().expect("lock").clone()
    }
}

const HANDLER: &str = "chaos.payment_gateway";

#[event_handler(name = "chaos.payment_gateway", retries = 0)]
async fn payment_gateway(ev: Payment, gate: State<Gate>) -> anyhow::Result<()> {
    gate.runs.lock().expect("lock").push(ev.cents);
    let _pass = gate.open.acquire().await?;
    anyhow::bail!("card declined for {} cents", ev.cents)
}

async fn start(url: &str, ns: &str, consumer: &str, gate: &Gate) -> (Bus, RunningBus) {
    let bus = Bus::builder()
        .redis_url(url)
        .namespace(ns)
        .consumer(consumer)
        .handlers([HANDLER])
        .visibility_timeout(Duration::from_secs(1))
        .claim_interval(Duration::from_millis(200))
        .block_time(Duration::from_millis(200))
        .drain_timeout(Duration::from_secs(2))
        .state(gate.clone())
        .build()
        .await
        .expect("build");
    let running = bus.start().await.expect("start");
    (bus, running)
}

async fn dead_letters(conn: &mut MultiplexedConnection, ns: &str) -> usize {
    conn.xlen(dlq_key(ns, Payment::NAME)).await.expect("XLEN")
}

/// While the dead-letter write keeps failing with `code` errors: the original stays pending, no
/// dead letter exists, the handler ran once, and the failure is logged and retried.
async fn assert_held_while_failing(
    admin: &mut MultiplexedConnection,
    ns: &str,
    code: &str,
    gate: &Gate,
    captured: &logs::Captured,
) {
    let stream = stream_key(ns, Payment::NAME);
    let before = acl::error_count(admin, code).await;
    // 5 failed writes at 100, 200, 400, 800 ms backoff: longer than the visibility timeout, so
    // a consumer that let go of the entry would see it claimed.
    wait_until(
        Duration::from_secs(10),
        &format!("the dead-letter write was retried 5 times ({code})"),
        || {
            let mut admin = admin.clone();
            let code = code.to_owned();
            async move { acl::error_count(&mut admin, &code).await >= before + 4 }
        },
    )
    .await;
    assert_eq!(
        pending_count(admin, &stream, HANDLER).await,
        1,
        "the original stays pending"
    );
    assert_eq!(dead_letters(admin, ns).await, 0, "no dead letter yet");
    assert_eq!(gate.runs(), [42], "the handler ran once");
    let errors = captured.find("ERROR", "cannot write dead letter");
    assert!(
        errors.len() >= 2,
        "the failed write is logged each time: {}",
        captured.text()
    );
    let e = &errors[0]["fields"];
    assert_eq!(e["handler"], HANDLER);
    assert_eq!(e["dlq"], dlq_key(ns, Payment::NAME));
    assert!(
        e["error"]
            .as_str()
            .is_some_and(|t| t.to_ascii_lowercase().contains(&code.to_ascii_lowercase())),
        "the log names the cause: {e}"
    );
}

/// After the cause is gone: the dead letter lands with the handler's own error and 1 attempt,
/// the original is acked, and nobody ran the handler again.
async fn assert_completes(
    bus: &Bus,
    admin: &mut MultiplexedConnection,
    ns: &str,
    gate: &Gate,
    runnings: Vec<RunningBus>,
) {
    let stream = stream_key(ns, Payment::NAME);
    wait_until(
        Duration::from_secs(10),
        "the dead letter exists and nothing is pending",
        || {
            let mut admin = admin.clone();
            let stream = stream.clone();
            let ns = ns.to_owned();
            async move {
                dead_letters(&mut admin, &ns).await == 1
                    && pending_count(&mut admin, &stream, HANDLER).await == 0
            }
        },
    )
    .await;
    let healths: Vec<_> = runnings.iter().map(RunningBus::health).collect();
    for r in runnings {
        r.shutdown().await.expect("shutdown");
    }
    let letters = bus.dlq().list(10).await.expect("list");
    assert_eq!(letters.len(), 1, "{letters:?}");
    assert!(
        letters[0].error.contains("card declined for 42 cents"),
        "the handler's error, not a redelivery count: {}",
        letters[0].error
    );
    assert_eq!(letters[0].attempts, 1);
    assert_eq!(gate.runs(), [42], "the handler never ran again");
    let claimed: u64 = healths
        .iter()
        .flat_map(|h| h.readers.iter())
        .map(|r| r.claimed)
        .sum();
    let dead_lettered: u64 = healths
        .iter()
        .flat_map(|h| h.readers.iter())
        .map(|r| r.dead_lettered)
        .sum();
    assert_eq!(claimed, 0, "no consumer took the entry over: {healths:?}");
    assert_eq!(dead_lettered, 1, "{healths:?}");
}

/// An ACL edit leaves the service's user the event stream but not its dead-letter key.
#[tokio::test(flavor = "current_thread")]
async fn acl_denied_dead_letter_write_keeps_the_original_pending_until_granted() {
    let (subscriber, captured) = logs::capture(tracing::Level::WARN);
    let _guard = tracing::subscriber::set_default(subscriber);
    let server = RedisServer::start();
    let ns = namespace("dlq-acl");
    let stream = stream_key(&ns, Payment::NAME);
    let mut admin = server.conn().await;
    let only_stream = format!("~{stream}");
    let whole_namespace = format!("~{ns}:*");
    acl::set_user(
        &mut admin,
        "svc",
        &["on", ">pw", &whole_namespace, "resetchannels", "+@all"],
    )
    .await;
    let url = format!("redis://svc:pw@127.0.0.1:{}", server.port());
    let gate = Gate::new(true);
    let (bus, running_a) = start(&url, &ns, "acl-a", &gate).await;
    let (_b, running_b) = start(&url, &ns, "acl-b", &gate).await;
    // An ACL edit after start-up (the start-up check would refuse a user that lacks the
    // dead-letter key): only the stream is left.
    acl::add_rules(&mut admin, "svc", &["resetkeys", &only_stream]).await;
    bus.publish(&Payment { cents: 42 }).await.expect("publish");

    assert_held_while_failing(&mut admin, &ns, "NOPERM", &gate, &captured).await;
    let denied = acl::log(&mut admin).await;
    let dlq = dlq_key(&ns, Payment::NAME);
    assert!(
        denied
            .iter()
            .any(|e| e.get("object") == Some(&dlq)
                && e.get("reason").map(String::as_str) == Some("key")),
        "the ACL denied the dead-letter key: {denied:?}"
    );

    acl::add_rules(&mut admin, "svc", &[&format!("~{ns}:*")]).await;
    assert_completes(&bus, &mut admin, &ns, &gate, vec![running_a, running_b]).await;
}

/// Redis runs out of memory (`maxmemory` tiny, `noeviction`) just before the dead-letter write.
#[tokio::test(flavor = "current_thread")]
async fn out_of_memory_dead_letter_write_keeps_the_original_pending_until_memory_frees() {
    let (subscriber, captured) = logs::capture(tracing::Level::WARN);
    let _guard = tracing::subscriber::set_default(subscriber);
    let server = RedisServer::start_with(
        eventbus_tests::Persistence::None,
        &["--maxmemory-policy", "noeviction"],
    );
    let ns = namespace("dlq-oom");
    let mut admin = server.conn().await;
    let gate = Gate::new(false);
    let (bus, running_a) = start(&server.url(), &ns, "oom-a", &gate).await;
    let (_b, running_b) = start(&server.url(), &ns, "oom-b", &gate).await;
    bus.publish(&Payment { cents: 42 }).await.expect("publish");
    wait_until(Duration::from_secs(10), "the handler is running", || {
        let gate = gate.clone();
        async move { !gate.runs().is_empty() }
    })
    .await;
    let _: () = redis::cmd("CONFIG")
        .arg("SET")
        .arg("maxmemory")
        .arg("1")
        .query_async(&mut admin)
        .await
        .expect("CONFIG SET maxmemory 1");
    gate.open.add_permits(1);

    assert_held_while_failing(&mut admin, &ns, "OOM", &gate, &captured).await;
    let published = bus.publish(&Payment { cents: 1 }).await;
    assert!(
        published.is_err(),
        "publishing fails while Redis is out of memory: {published:?}"
    );

    let _: () = redis::cmd("CONFIG")
        .arg("SET")
        .arg("maxmemory")
        .arg("0")
        .query_async(&mut admin)
        .await
        .expect("CONFIG SET maxmemory 0");
    assert_completes(&bus, &mut admin, &ns, &gate, vec![running_a, running_b]).await;
}
