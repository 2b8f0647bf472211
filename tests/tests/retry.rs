//! In-process retries: attempt numbers, the backoff floor between attempts, panics as failures.

use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use eventbus::prelude::*;
use eventbus_tests::{RedisServer, init_tracing, namespace, pending_count, stream_key, wait_until};

#[derive(Debug, Clone, Serialize, Deserialize, DomainEvent)]
#[event(name = "retry.payment")]
struct Payment {
    amount: u64,
}

#[derive(Debug, Clone, Serialize, Deserialize, DomainEvent)]
#[event(name = "retry.panicky")]
struct Panicky {
    n: u64,
}

/// Every attempt a handler made, and how many succeeded.
#[derive(Clone, Default)]
struct Log {
    attempts: Arc<Mutex<Vec<(u32, Instant, EventId)>>>,
    successes: Arc<Mutex<Vec<EventId>>>,
}

impl Log {
    fn attempt(&self, ctx: &Context) {
        self.attempts
            .lock()
            .expect("lock")
            .push((ctx.attempt(), Instant::now(), ctx.event_id()));
    }
    fn success(&self, ctx: &Context) {
        self.successes.lock().expect("lock").push(ctx.event_id());
    }
    fn successes(&self) -> Vec<EventId> {
        self.successes.lock().expect("lock").clone()
    }
    fn attempts(&self) -> Vec<(u32, Instant, EventId)> {
        self.attempts.lock().expect("lock").clone()
    }
}

/// Fails its first two attempts of every event, then succeeds. Retry policy: the bus defaults.
#[event_handler(name = "retry.flaky")]
async fn flaky(_ev: Payment, ctx: Context, log: State<Log>) -> anyhow::Result<()> {
    log.attempt(&ctx);
    if ctx.attempt() <= 2 {
        anyhow::bail!("payment gateway unavailable (attempt {})", ctx.attempt());
    }
    log.success(&ctx);
    Ok(())
}

/// Panics on its first attempt, succeeds on the second.
#[event_handler(name = "retry.panics", retries = 2, backoff = "10ms")]
async fn panics(_ev: Panicky, ctx: Context, log: State<Log>) -> anyhow::Result<()> {
    log.attempt(&ctx);
    if ctx.attempt() == 1 {
        panic!("boom on attempt 1");
    }
    log.success(&ctx);
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn failing_twice_then_succeeding_is_handled_once_on_attempt_three_after_backoff() {
    init_tracing();
    let server = RedisServer::start();
    let ns = namespace("flaky");
    let log = Log::default();
    let backoff = Duration::from_millis(50);
    let bus = Bus::builder()
        .redis_url(server.url())
        .namespace(&ns)
        .handlers(["retry.flaky"])
        .state(log.clone())
        .retries(3)
        .backoff(backoff)
        .max_backoff(Duration::from_millis(200))
        .block_time(Duration::from_millis(200))
        .visibility_timeout(Duration::from_secs(30))
        .build()
        .await
        .expect("build bus");
    let running = bus.start().await.expect("start");
    let id = bus.publish(&Payment { amount: 42 }).await.expect("publish");

    wait_until(
        Duration::from_secs(10),
        "the flaky handler succeeded",
        || {
            let log = log.clone();
            async move { !log.successes().is_empty() }
        },
    )
    .await;
    let mut conn = server.conn().await;
    let stream = stream_key(&ns, Payment::NAME);
    wait_until(Duration::from_secs(10), "the event is acked", || {
        let mut conn = conn.clone();
        let stream = stream.clone();
        async move { pending_count(&mut conn, &stream, "retry.flaky").await == 0 }
    })
    .await;
    running.shutdown().await.expect("shutdown");

    assert_eq!(log.successes(), vec![id.clone()], "handled exactly once");
    let attempts = log.attempts();
    let numbers: Vec<u32> = attempts.iter().map(|a| a.0).collect();
    assert_eq!(numbers, [1, 2, 3], "attempt numbers");
    assert!(
        attempts.iter().all(|a| a.2 == id),
        "every attempt saw the published event id"
    );
    for pair in attempts.windows(2) {
        let gap = pair[1].1 - pair[0].1;
        assert!(
            gap >= backoff,
            "attempt {} came {gap:?} after attempt {}: less than the backoff {backoff:?}",
            pair[1].0,
            pair[0].0
        );
    }
    assert!(
        bus.dlq().list(10).await.expect("list").is_empty(),
        "no dead letter"
    );
    let len: usize = redis::cmd("XLEN")
        .arg(&stream)
        .query_async(&mut conn)
        .await
        .expect("XLEN");
    assert_eq!(len, 1, "retries happen in process, not by re-publishing");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_panicking_attempt_is_a_failure_that_is_retried() {
    init_tracing();
    let server = RedisServer::start();
    let ns = namespace("panics");
    let log = Log::default();
    let bus = Bus::builder()
        .redis_url(server.url())
        .namespace(&ns)
        .handlers(["retry.panics"])
        .state(log.clone())
        .block_time(Duration::from_millis(200))
        .build()
        .await
        .expect("build bus");
    let running = bus.start().await.expect("start");
    let first = bus.publish(&Panicky { n: 1 }).await.expect("publish");
    let second = bus.publish(&Panicky { n: 2 }).await.expect("publish");

    wait_until(
        Duration::from_secs(10),
        "both events handled after a panic each",
        || {
            let log = log.clone();
            async move { log.successes().len() >= 2 }
        },
    )
    .await;
    let conn = server.conn().await;
    let stream = stream_key(&ns, Panicky::NAME);
    wait_until(Duration::from_secs(10), "both events acked", || {
        let mut conn = conn.clone();
        let stream = stream.clone();
        async move { pending_count(&mut conn, &stream, "retry.panics").await == 0 }
    })
    .await;
    running.shutdown().await.expect("shutdown");

    let mut successes = log.successes();
    successes.sort();
    let mut expected = vec![first, second];
    expected.sort();
    assert_eq!(
        successes, expected,
        "each event handled once, on its second attempt"
    );
    let mut numbers: Vec<u32> = log.attempts().iter().map(|a| a.0).collect();
    numbers.sort_unstable();
    assert_eq!(
        numbers,
        [1, 1, 2, 2],
        "one panicking attempt and one good attempt per event"
    );
    assert!(
        bus.dlq().list(10).await.expect("list").is_empty(),
        "no dead letter"
    );
}
