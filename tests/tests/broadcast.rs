//! Broadcast events (`#[event(broadcast)]`, Redis Pub/Sub): every bus instance gets every event,
//! the same retry and dead-letter pipeline as durable handlers, resubscription with gap counting,
//! bounded per-handler queues, malformed messages, at-most-once semantics and graceful shutdown.

use std::collections::HashSet;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use eventbus::prelude::*;
use eventbus::{Delivery, Overflow, ReaderHealth, RunningBus};
use eventbus_tests::{
    RedisServer, dlq_key, init_tracing, namespace, pending_count, stream_key, wait_until,
};
use redis::aio::MultiplexedConnection;
use serde_json::json;
use tokio::sync::Semaphore;

// ---------------------------------------------------------------------------------------------
// Events and handlers of this file (each test selects its own with `.handlers([...])`).

/// A cache entry became stale in every instance.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, DomainEvent)]
#[event(name = "bc.cache_invalidated", broadcast)]
struct CacheInvalidated {
    key: String,
}

/// A configuration reload, handled by two handlers in one instance.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, DomainEvent)]
#[event(name = "bc.config_reloaded", broadcast)]
struct ConfigReloaded {
    revision: u64,
}

/// Delivered to a handler that fails a few times.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, DomainEvent)]
#[event(name = "bc.presence_changed", broadcast)]
struct PresenceChanged {
    user: String,
    online: bool,
}

/// Delivered to a handler that always fails.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, DomainEvent)]
#[event(name = "bc.socket_push", broadcast)]
struct SocketPush {
    room: String,
}

/// Numbered ticks for the slow (gated) handler.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, DomainEvent)]
#[event(name = "bc.tick", broadcast)]
struct Tick {
    n: u64,
}

/// A durable event, handled next to a broadcast one in the same bus.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, DomainEvent)]
#[event(name = "bc.order_placed")]
struct OrderPlaced {
    order: u64,
}

/// A room closed: one handler that can be broken, one that audits.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, DomainEvent)]
#[event(name = "bc.room_closed", broadcast)]
struct RoomClosed {
    room: String,
}

/// What a handler ran for: event id, attempt and a label taken from the event.
#[derive(Clone, Default)]
struct Seen(Arc<Mutex<Vec<(EventId, u32, String)>>>);

impl Seen {
    fn push(&self, ctx: &Context, label: impl Into<String>) {
        self.0
            .lock()
            .expect("lock")
            .push((ctx.event_id(), ctx.attempt(), label.into()));
    }
    fn all(&self) -> Vec<(EventId, u32, String)> {
        self.0.lock().expect("lock").clone()
    }
    fn ids(&self) -> Vec<EventId> {
        self.all().into_iter().map(|r| r.0).collect()
    }
    fn len(&self) -> usize {
        self.0.lock().expect("lock").len()
    }
}

#[event_handler(name = "bc.record")]
async fn record(ev: CacheInvalidated, ctx: Context, seen: State<Seen>) -> anyhow::Result<()> {
    seen.push(&ctx, ev.key);
    Ok(())
}

#[derive(Clone, Default)]
struct FirstRuns(Seen);

#[derive(Clone, Default)]
struct SecondRuns(Seen);

#[event_handler(name = "bc.reload_first")]
async fn reload_first(
    ev: ConfigReloaded,
    ctx: Context,
    runs: State<FirstRuns>,
) -> anyhow::Result<()> {
    runs.0.0.push(&ctx, ev.revision.to_string());
    Ok(())
}

#[event_handler(name = "bc.reload_second")]
async fn reload_second(
    ev: ConfigReloaded,
    ctx: Context,
    runs: State<SecondRuns>,
) -> anyhow::Result<()> {
    runs.0.0.push(&ctx, ev.revision.to_string());
    Ok(())
}

/// Every attempt of the flaky handler, and its successful runs.
#[derive(Clone, Default)]
struct Flaky {
    attempts: Seen,
    handled: Seen,
}

#[event_handler(name = "bc.flaky", retries = 3, backoff = "10ms")]
async fn flaky(ev: PresenceChanged, ctx: Context, state: State<Flaky>) -> anyhow::Result<()> {
    state.attempts.push(&ctx, ev.user.clone());
    if ctx.attempt() <= 2 {
        anyhow::bail!("presence store busy (attempt {})", ctx.attempt());
    }
    state.handled.push(&ctx, ev.user);
    Ok(())
}

#[derive(Clone, Default)]
struct Doomed(Seen);

#[event_handler(name = "bc.doomed", retries = 2, backoff = "10ms")]
async fn doomed(ev: SocketPush, ctx: Context, state: State<Doomed>) -> anyhow::Result<()> {
    state.0.0.push(&ctx, ev.room.clone());
    anyhow::bail!("websocket room {} is gone", ev.room)
}

/// Holds every run of the gated handler until the test opens it.
#[derive(Clone)]
struct Gate {
    open: Arc<Semaphore>,
    entered: Arc<Mutex<Vec<u64>>>,
    finished: Arc<Mutex<Vec<u64>>>,
}

impl Default for Gate {
    fn default() -> Self {
        Gate {
            open: Arc::new(Semaphore::new(0)),
            entered: Arc::default(),
            finished: Arc::default(),
        }
    }
}

impl Gate {
    fn release(&self) {
        self.open.add_permits(1_000);
    }
    fn entered(&self) -> Vec<u64> {
        self.entered.lock().expect("lock").clone()
    }
    fn finished(&self) -> Vec<u64> {
        let mut v = self.finished.lock().expect("lock").clone();
        v.sort_unstable();
        v
    }
}

#[event_handler(name = "bc.gated")]
async fn gated(ev: Tick, gate: State<Gate>) -> anyhow::Result<()> {
    gate.entered.lock().expect("lock").push(ev.n);
    let _permit = gate.open.acquire().await?;
    gate.finished.lock().expect("lock").push(ev.n);
    Ok(())
}

/// Ticks seen by an ungated handler of the same event: once it saw a tick, the subscriber has
/// queued that tick for every handler.
#[derive(Clone, Default)]
struct TicksSeen(Arc<Mutex<Vec<u64>>>);

#[event_handler(name = "bc.tick_observer")]
async fn tick_observer(ev: Tick, seen: State<TicksSeen>) -> anyhow::Result<()> {
    seen.0.0.lock().expect("lock").push(ev.n);
    Ok(())
}

/// Fails while `broken` is set.
#[derive(Clone, Default)]
struct RoomMailer {
    broken: Arc<AtomicBool>,
    attempts: Seen,
    handled: Seen,
}

#[derive(Clone, Default)]
struct RoomAudit(Seen);

#[event_handler(name = "bc.room_mailer", retries = 0)]
async fn room_mailer(ev: RoomClosed, ctx: Context, state: State<RoomMailer>) -> anyhow::Result<()> {
    state.attempts.push(&ctx, ev.room.clone());
    if state.broken.load(Ordering::SeqCst) {
        anyhow::bail!("mail relay down; cannot announce closing of {}", ev.room);
    }
    state.handled.push(&ctx, ev.room);
    Ok(())
}

#[event_handler(name = "bc.room_audit")]
async fn room_audit(ev: RoomClosed, ctx: Context, audit: State<RoomAudit>) -> anyhow::Result<()> {
    audit.0.0.push(&ctx, ev.room);
    Ok(())
}

#[derive(Clone, Default)]
struct Orders(Seen);

#[event_handler(name = "bc.orders")]
async fn orders(ev: OrderPlaced, ctx: Context, orders: State<Orders>) -> anyhow::Result<()> {
    orders.0.0.push(&ctx, ev.order.to_string());
    Ok(())
}

/// A broadcast event whose size the test chooses (`pad`), for the byte bound of the queues.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, DomainEvent)]
#[event(name = "bc.blob", broadcast)]
struct Blob {
    n: u64,
    pad: String,
}

/// One run at a time, held by the gate: everything else waits in the queue.
#[event_handler(name = "bc.blob_gated", concurrency = 1)]
async fn blob_gated(ev: Blob, gate: State<Gate>) -> anyhow::Result<()> {
    gate.entered.lock().expect("lock").push(ev.n);
    let _permit = gate.open.acquire().await?;
    gate.finished.lock().expect("lock").push(ev.n);
    Ok(())
}

// ---------------------------------------------------------------------------------------------

fn builder(server: &RedisServer, ns: &str) -> eventbus::BusBuilder {
    let mut b = Bus::builder();
    b.redis_url(server.url())
        .namespace(ns)
        .block_time(Duration::from_millis(200))
        .drain_timeout(Duration::from_secs(10));
    b
}

/// The health of one handler.
fn health(running: &RunningBus, handler: &str) -> ReaderHealth {
    running
        .health()
        .readers
        .into_iter()
        .find(|r| r.handler == handler)
        .unwrap_or_else(|| panic!("no health entry for {handler}"))
}

/// `<ns>:<event name>`, the channel of a broadcast event.
fn channel(ns: &str, event: &str) -> String {
    format!("{ns}:{event}")
}

/// The connections Redis counts as Pub/Sub clients (`CLIENT LIST TYPE pubsub`).
async fn pubsub_clients(conn: &mut MultiplexedConnection) -> usize {
    let list: String = redis::cmd("CLIENT")
        .arg("LIST")
        .arg("TYPE")
        .arg("pubsub")
        .query_async(conn)
        .await
        .expect("CLIENT LIST");
    list.lines().filter(|l| !l.trim().is_empty()).count()
}

/// `PUBSUB NUMSUB <channel>`.
async fn subscribers(conn: &mut MultiplexedConnection, channel: &str) -> i64 {
    let reply: (String, i64) = redis::cmd("PUBSUB")
        .arg("NUMSUB")
        .arg(channel)
        .query_async(conn)
        .await
        .expect("PUBSUB NUMSUB");
    reply.1
}

/// Every field of every entry of a dead-letter stream, as text.
async fn raw_dead_letters(
    conn: &mut MultiplexedConnection,
    key: &str,
) -> Vec<std::collections::HashMap<String, String>> {
    let reply: redis::streams::StreamRangeReply = redis::cmd("XRANGE")
        .arg(key)
        .arg("-")
        .arg("+")
        .query_async(conn)
        .await
        .expect("XRANGE");
    reply
        .ids
        .into_iter()
        .map(|e| {
            e.map
                .into_iter()
                .map(|(k, v)| {
                    let text = redis::from_redis_value::<String>(v).unwrap_or_default();
                    (k, text)
                })
                .collect()
        })
        .collect()
}

/// Publishes `CacheInvalidated` events in the background (ignoring errors while Redis is down)
/// until stopped; returns how many were published.
struct Flow {
    stop: Arc<AtomicBool>,
    task: tokio::task::JoinHandle<u64>,
}

impl Flow {
    fn start(bus: Bus) -> Flow {
        let stop = Arc::new(AtomicBool::new(false));
        let flag = stop.clone();
        let task = tokio::spawn(async move {
            let mut published = 0;
            while !flag.load(Ordering::SeqCst) {
                let ev = CacheInvalidated {
                    key: format!("flow-{published}"),
                };
                if bus.publish(&ev).await.is_ok() {
                    published += 1;
                }
                tokio::time::sleep(Duration::from_millis(2)).await; // ok: paces the background publisher
            }
            published
        });
        Flow { stop, task }
    }

    async fn stop(self) -> u64 {
        self.stop.store(true, Ordering::SeqCst);
        self.task.await.expect("publisher task")
    }
}

// ---------------------------------------------------------------------------------------------

#[test]
fn broadcast_is_part_of_the_event_definition() {
    assert_eq!(CacheInvalidated::DELIVERY, Delivery::Broadcast);
    assert_eq!(OrderPlaced::DELIVERY, Delivery::Durable);
    assert_eq!(Delivery::Broadcast.as_str(), "broadcast");
}

/// Test 1: every bus instance gets every event, each exactly once.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn every_instance_handles_every_event_exactly_once() {
    init_tracing();
    const N: usize = 1_000;
    let server = RedisServer::start();
    let ns = namespace("bc-fanout");
    let (seen_a, seen_b) = (Seen::default(), Seen::default());
    let bus_a = builder(&server, &ns)
        .consumer("instance-a")
        .handlers(["bc.record"])
        .state(seen_a.clone())
        .build()
        .await
        .expect("build a");
    let bus_b = builder(&server, &ns)
        .consumer("instance-b")
        .handlers(["bc.record"])
        .state(seen_b.clone())
        .build()
        .await
        .expect("build b");
    let running_a = bus_a.start().await.expect("start a");
    let running_b = bus_b.start().await.expect("start b");

    let started = Instant::now();
    let mut published = Vec::with_capacity(N);
    for i in 0..N {
        published.push(
            bus_a
                .publish(&CacheInvalidated {
                    key: format!("user:{i}"),
                })
                .await
                .expect("publish"),
        );
    }
    wait_until(
        Duration::from_secs(20),
        "both instances handled all events",
        || {
            let (a, b) = (seen_a.clone(), seen_b.clone());
            async move { a.len() >= N && b.len() >= N }
        },
    )
    .await;
    let elapsed = started.elapsed();
    let (ha, hb) = (
        health(&running_a, "bc.record"),
        health(&running_b, "bc.record"),
    );
    running_a.shutdown().await.expect("shutdown a");
    running_b.shutdown().await.expect("shutdown b");

    let expected: HashSet<EventId> = published.iter().cloned().collect();
    assert_eq!(expected.len(), N, "distinct ids");
    for (name, seen, h) in [("a", &seen_a, &ha), ("b", &seen_b, &hb)] {
        let runs = seen.all();
        assert_eq!(
            runs.len(),
            N,
            "instance {name} handled each event exactly once"
        );
        let ids: HashSet<EventId> = runs.iter().map(|r| r.0.clone()).collect();
        assert_eq!(ids, expected, "instance {name} handled the published ids");
        assert!(runs.iter().all(|r| r.1 == 1), "first attempt each time");
        let labels: HashSet<&str> = runs.iter().map(|r| r.2.as_str()).collect();
        assert!(labels.contains("user:0") && labels.contains("user:999"));
        assert_eq!(h.handled, N as u64, "instance {name} health: {h:?}");
        assert_eq!((h.dropped, h.gaps, h.dead_lettered), (0, 0, 0), "{h:?}");
        assert!(h.connected, "{h:?}");
    }
    eprintln!("1000 events to 2 instances in {elapsed:?}");
}

/// Test 2: within one instance every handler of the event runs.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_handler_of_a_broadcast_event_runs_in_one_instance() {
    init_tracing();
    const N: u64 = 50;
    let server = RedisServer::start();
    let ns = namespace("bc-two-handlers");
    let (first, second) = (FirstRuns::default(), SecondRuns::default());
    let bus = builder(&server, &ns)
        .handlers(["bc.reload_first", "bc.reload_second"])
        .state(first.clone())
        .state(second.clone())
        .build()
        .await
        .expect("build");
    let running = bus.start().await.expect("start");
    let mut conn = server.conn().await;
    assert_eq!(
        pubsub_clients(&mut conn).await,
        1,
        "one subscriber connection per bus"
    );
    assert_eq!(
        subscribers(&mut conn, &channel(&ns, ConfigReloaded::NAME)).await,
        1,
        "the channel is subscribed once for both handlers"
    );
    let mut published = Vec::new();
    for revision in 0..N {
        published.push(
            bus.publish(&ConfigReloaded { revision })
                .await
                .expect("publish"),
        );
    }
    wait_until(Duration::from_secs(10), "both handlers ran", || {
        let (a, b) = (first.clone(), second.clone());
        async move { a.0.len() >= N as usize && b.0.len() >= N as usize }
    })
    .await;
    running.shutdown().await.expect("shutdown");

    let expected: HashSet<EventId> = published.into_iter().collect();
    for (name, runs) in [("first", &first.0), ("second", &second.0)] {
        let ids = runs.ids();
        assert_eq!(ids.len(), N as usize, "{name} ran once per event");
        assert_eq!(
            ids.into_iter().collect::<HashSet<_>>(),
            expected,
            "{name} ran for every event"
        );
    }
}

/// Test 3a: retries with backoff, as for durable handlers.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn failing_broadcast_handler_is_retried_with_backoff() {
    init_tracing();
    let server = RedisServer::start();
    let ns = namespace("bc-retry");
    let state = Flaky::default();
    let bus = builder(&server, &ns)
        .handlers(["bc.flaky"])
        .state(state.clone())
        .build()
        .await
        .expect("build");
    let running = bus.start().await.expect("start");
    let id = bus
        .publish(&PresenceChanged {
            user: "ada".into(),
            online: true,
        })
        .await
        .expect("publish");
    wait_until(Duration::from_secs(10), "handled after retries", || {
        let state = state.clone();
        async move { state.handled.len() >= 1 }
    })
    .await;
    let h = health(&running, "bc.flaky");
    running.shutdown().await.expect("shutdown");

    let attempts: Vec<u32> = state.attempts.all().iter().map(|r| r.1).collect();
    assert_eq!(attempts, [1, 2, 3], "fails twice, succeeds on the third");
    assert!(state.attempts.all().iter().all(|r| r.0 == id));
    assert_eq!(state.handled.ids(), [id], "handled once");
    assert_eq!((h.handled, h.dead_lettered), (1, 0), "{h:?}");
    assert!(
        bus.dlq().list(10).await.expect("list").is_empty(),
        "no dead letter"
    );
}

/// Test 3b: a dead letter after the last attempt, marked as broadcast.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn always_failing_broadcast_handler_is_dead_lettered_as_broadcast() {
    init_tracing();
    let server = RedisServer::start();
    let ns = namespace("bc-dlq");
    let state = Doomed::default();
    let bus = builder(&server, &ns)
        .handlers(["bc.doomed"])
        .state(state.clone())
        .build()
        .await
        .expect("build");
    let running = bus.start().await.expect("start");
    let id = bus
        .publish(&SocketPush {
            room: "lobby".into(),
        })
        .await
        .expect("publish");
    wait_until(Duration::from_secs(10), "one dead letter", || {
        let bus = bus.clone();
        async move { !bus.dlq().list(10).await.expect("list").is_empty() }
    })
    .await;
    let h = health(&running, "bc.doomed");
    running.shutdown().await.expect("shutdown");

    let attempts: Vec<u32> = state.0.all().iter().map(|r| r.1).collect();
    assert_eq!(attempts, [1, 2, 3], "retries = 2 means 3 attempts");
    assert_eq!((h.handled, h.dead_lettered), (0, 1), "{h:?}");

    let letters = bus.dlq().list(10).await.expect("list");
    assert_eq!(letters.len(), 1, "{letters:#?}");
    let l = &letters[0];
    assert_eq!(l.handler, "bc.doomed");
    assert_eq!(l.event_name, "bc.socket_push");
    assert_eq!(l.event_id.as_ref(), Some(&id));
    assert_eq!(l.attempts, 3);
    assert!(
        l.error.contains("websocket room lobby is gone"),
        "{}",
        l.error
    );
    assert_eq!(l.stream_id, "", "no stream entry behind a broadcast event");
    assert_eq!(l.envelope["id"], json!(id.as_str()));
    assert_eq!(l.envelope["data"], json!({"room": "lobby"}));

    let mut conn = server.conn().await;
    let raw = raw_dead_letters(&mut conn, &dlq_key(&ns, SocketPush::NAME)).await;
    assert_eq!(raw.len(), 1);
    assert_eq!(raw[0]["delivery"], "broadcast", "{:?}", raw[0]);
    assert_eq!(raw[0]["stream_id"], "", "{:?}", raw[0]);
    assert_eq!(raw[0]["handler"], "bc.doomed");
    assert_eq!(raw[0]["attempts"], "3");
    let exists: i64 = redis::cmd("EXISTS")
        .arg(stream_key(&ns, SocketPush::NAME))
        .query_async(&mut conn)
        .await
        .expect("EXISTS");
    assert_eq!(exists, 0, "a broadcast event never creates a stream");
}

/// Replaying a broadcast dead letter publishes it again on the channel for the handler that gave
/// up only; the dead letter is removed.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn replayed_broadcast_dead_letter_reaches_only_the_handler_that_gave_up() {
    init_tracing();
    let server = RedisServer::start();
    let ns = namespace("bc-replay");
    let (mailer, audit) = (RoomMailer::default(), RoomAudit::default());
    mailer.broken.store(true, Ordering::SeqCst);
    let bus = builder(&server, &ns)
        .handlers(["bc.room_mailer", "bc.room_audit"])
        .state(mailer.clone())
        .state(audit.clone())
        // One run at a time per handler: each handler sees the channel's messages in order.
        .concurrency(1)
        .build()
        .await
        .expect("build");
    let running = bus.start().await.expect("start");
    let id = bus
        .publish(&RoomClosed {
            room: "lobby".into(),
        })
        .await
        .expect("publish");
    wait_until(Duration::from_secs(10), "dead-lettered and audited", || {
        let (bus, audit) = (bus.clone(), audit.clone());
        async move { audit.0.len() == 1 && bus.dlq().list(10).await.expect("list").len() == 1 }
    })
    .await;
    let letter = bus.dlq().list(10).await.expect("list").remove(0);
    assert_eq!(letter.handler, "bc.room_mailer");
    assert_eq!(letter.event_id.as_ref(), Some(&id));
    assert_eq!(letter.attempts, 1);

    mailer.broken.store(false, Ordering::SeqCst);
    bus.dlq().replay(&letter.id).await.expect("replay");
    assert!(
        bus.dlq().list(10).await.expect("list").is_empty(),
        "the dead letter is removed"
    );
    let marker = bus
        .publish(&RoomClosed {
            room: "marker".into(),
        })
        .await
        .expect("publish");
    wait_until(
        Duration::from_secs(10),
        "the replay and then the marker went through both handlers",
        || {
            let (mailer, audit, marker) = (mailer.clone(), audit.clone(), marker.clone());
            async move { mailer.handled.ids().contains(&marker) && audit.0.ids().contains(&marker) }
        },
    )
    .await;
    running.shutdown().await.expect("shutdown");

    assert_eq!(
        mailer.handled.ids(),
        [id.clone(), marker.clone()],
        "the fixed handler ran the replayed event (same id), then the marker"
    );
    assert_eq!(
        audit.0.ids(),
        [id, marker],
        "the other handler did not run the replayed event again"
    );
    assert!(bus.dlq().list(10).await.expect("list").is_empty());
}

/// Waits until the subscriber has reconnected after a gap, then publishes until an event sent
/// after the resubscription is handled.
async fn expect_recovery(bus: &Bus, running: &RunningBus, seen: &Seen, what: &str) {
    wait_until(
        Duration::from_secs(15),
        &format!("{what}: the gap is counted and the subscriber is back"),
        || {
            let h = health(running, "bc.record");
            async move { h.gaps >= 1 && h.reconnects >= 1 && h.connected }
        },
    )
    .await;
    // `connected` is set only once Redis confirmed the subscriptions: from here on every event
    // published is delivered.
    let after: Arc<Mutex<Vec<EventId>>> = Arc::default();
    wait_until(
        Duration::from_secs(15),
        &format!("{what}: an event published after resubscription is handled"),
        || {
            let (bus, after, seen) = (bus.clone(), after.clone(), seen.clone());
            async move {
                if let Ok(id) = bus
                    .publish(&CacheInvalidated {
                        key: "after-gap".into(),
                    })
                    .await
                {
                    after.lock().expect("lock").push(id);
                }
                let after = after.lock().expect("lock").clone();
                seen.ids().iter().any(|id| after.contains(id))
            }
        },
    )
    .await;
}

/// Test 4a: `CLIENT KILL TYPE pubsub` while events flow.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn subscriber_resubscribes_after_client_kill_and_counts_the_gap() {
    init_tracing();
    let server = RedisServer::start();
    let ns = namespace("bc-kill");
    let seen = Seen::default();
    let bus = builder(&server, &ns)
        .handlers(["bc.record"])
        .state(seen.clone())
        .build()
        .await
        .expect("build");
    let running = bus.start().await.expect("start");
    let flow = Flow::start(bus.clone());
    wait_until(Duration::from_secs(10), "events flow", || {
        let seen = seen.clone();
        async move { seen.len() >= 20 }
    })
    .await;
    assert_eq!(health(&running, "bc.record").gaps, 0);

    let mut conn = server.conn().await;
    let killed: i64 = redis::cmd("CLIENT")
        .arg("KILL")
        .arg("TYPE")
        .arg("pubsub")
        .query_async(&mut conn)
        .await
        .expect("CLIENT KILL");
    assert_eq!(killed, 1, "the bus's one subscriber connection was killed");

    expect_recovery(&bus, &running, &seen, "CLIENT KILL").await;
    let published = flow.stop().await;
    let h = health(&running, "bc.record");
    assert!(h.gaps >= 1 && h.reconnects >= 1, "{h:?}");
    assert!(h.connected && h.last_error.is_none(), "{h:?}");
    assert!(running.health().is_healthy());
    assert_eq!(pubsub_clients(&mut conn).await, 1, "resubscribed once");
    assert_eq!(
        subscribers(&mut conn, &channel(&ns, CacheInvalidated::NAME)).await,
        1
    );
    running.shutdown().await.expect("shutdown");
    eprintln!(
        "client kill: published {published} in the background, handled {}, gaps {}",
        seen.len(),
        h.gaps
    );
}

/// Test 4b: Redis restarted (SIGKILL, then started again on the same port) while events flow.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn subscriber_resubscribes_after_redis_restart_and_counts_the_gap() {
    init_tracing();
    let mut server = RedisServer::start();
    let ns = namespace("bc-restart");
    let seen = Seen::default();
    let bus = builder(&server, &ns)
        .handlers(["bc.record"])
        .state(seen.clone())
        .build()
        .await
        .expect("build");
    let running = bus.start().await.expect("start");
    let flow = Flow::start(bus.clone());
    wait_until(Duration::from_secs(10), "events flow", || {
        let seen = seen.clone();
        async move { seen.len() >= 20 }
    })
    .await;

    tokio::task::block_in_place(|| server.restart());

    expect_recovery(&bus, &running, &seen, "Redis restart").await;
    let published = flow.stop().await;
    let h = health(&running, "bc.record");
    assert!(h.gaps >= 1 && h.reconnects >= 1, "{h:?}");
    assert!(h.connected && h.last_error.is_none(), "{h:?}");
    let mut conn = server.conn().await;
    assert_eq!(pubsub_clients(&mut conn).await, 1);
    running.shutdown().await.expect("shutdown");
    eprintln!(
        "restart: published {published} in the background, handled {}, gaps {}, reconnects {}",
        seen.len(),
        h.gaps,
        h.reconnects
    );
}

/// Test 5: a handler far slower than the publish rate. Runs `CONCURRENCY` events, holds them,
/// then publishes `n` more; returns the handled tick numbers after the gate opens, and checks
/// that the queue stayed within its capacity and the subscriber stayed connected.
async fn slow_handler(overflow: Option<Overflow>, n: u64) -> Vec<u64> {
    const CAPACITY: usize = 16;
    const CONCURRENCY: u32 = 2;
    let server = RedisServer::start();
    let ns = namespace("bc-slow");
    let gate = Gate::default();
    let mut b = builder(&server, &ns);
    b.handlers(["bc.gated"])
        .state(gate.clone())
        .broadcast_queue(CAPACITY)
        .concurrency(CONCURRENCY);
    if let Some(overflow) = overflow {
        b.broadcast_overflow(overflow);
    }
    let bus = b.build().await.expect("build");
    let running = bus.start().await.expect("start");
    let mut conn = server.conn().await;

    // Fill every run slot first, so that which events survive does not depend on timing.
    let busy = u64::from(CONCURRENCY);
    for i in 0..busy {
        bus.publish(&Tick { n: i }).await.expect("publish");
    }
    wait_until(Duration::from_secs(10), "every run slot is busy", || {
        let gate = gate.clone();
        async move { gate.entered().len() == busy as usize }
    })
    .await;
    let started = Instant::now();
    for i in busy..busy + n {
        bus.publish(&Tick { n: i }).await.expect("publish");
    }
    let publish_time = started.elapsed();
    let expected_drops = n - CAPACITY as u64;
    wait_until(
        Duration::from_secs(20),
        "every event was received (queued or dropped)",
        || {
            let h = health(&running, "bc.gated");
            async move { h.dropped >= expected_drops }
        },
    )
    .await;
    let h = health(&running, "bc.gated");
    assert_eq!(
        h.dropped, expected_drops,
        "the queue holds {CAPACITY} and {busy} runs are in flight; everything else is dropped: {h:?}"
    );
    assert_eq!(h.gaps, 0, "the subscriber was never disconnected: {h:?}");
    assert!(h.connected, "{h:?}");
    assert_eq!(
        gate.entered().len(),
        busy as usize,
        "no more runs than the concurrency"
    );
    assert_eq!(
        pubsub_clients(&mut conn).await,
        1,
        "Redis kept the subscriber connected"
    );

    gate.release();
    let handled = busy as usize + CAPACITY;
    wait_until(
        Duration::from_secs(10),
        "the queued events are handled",
        || {
            let h = health(&running, "bc.gated");
            async move { h.handled >= handled as u64 }
        },
    )
    .await;
    running.shutdown().await.expect("shutdown");
    let finished = gate.finished();
    assert_eq!(
        finished.len(),
        handled,
        "only the runs in flight and the queue's capacity are handled: {finished:?}"
    );
    eprintln!(
        "slow handler ({overflow:?}): {n} events published in {publish_time:?}, {} dropped",
        h.dropped
    );
    finished
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn slow_handler_keeps_memory_bounded_and_drops_the_oldest_by_default() {
    init_tracing();
    let n = 5_000;
    let finished = slow_handler(None, n).await;
    // Runs 0 and 1 were in flight; the queue ends up holding the newest 16 events.
    let mut expected = vec![0, 1];
    expected.extend(2 + n - 16..2 + n);
    assert_eq!(finished, expected);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn slow_handler_with_drop_newest_keeps_the_first_queued_events() {
    init_tracing();
    let n = 1_000;
    let finished = slow_handler(Some(Overflow::DropNewest), n).await;
    // Runs 0 and 1 were in flight; the queue kept the first 16 events that came after them.
    let expected: Vec<u64> = (0..2 + 16).collect();
    assert_eq!(finished, expected);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn slow_handler_with_drop_oldest_keeps_the_newest_events() {
    init_tracing();
    let n = 1_000;
    let finished = slow_handler(Some(Overflow::DropOldest), n).await;
    let mut expected = vec![0, 1];
    expected.extend(2 + n - 16..2 + n);
    assert_eq!(finished, expected);
}

/// Test 6: garbage on the channel is dead-lettered with the reason; a good event still runs.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn malformed_messages_on_the_channel_are_dead_lettered_with_the_reason() {
    init_tracing();
    let server = RedisServer::start();
    let ns = namespace("bc-malformed");
    let seen = Seen::default();
    let bus = builder(&server, &ns)
        .handlers(["bc.record"])
        .state(seen.clone())
        .build()
        .await
        .expect("build");
    let running = bus.start().await.expect("start");
    let chan = channel(&ns, CacheInvalidated::NAME);
    let mut conn = server.conn().await;
    let not_json: &[u8] = b"{\"specversion\": \"1.0\", not json";
    let not_utf8: &[u8] = b"\xff\xfe\xfd garbage";
    let no_type = json!({
        "specversion": "1.0", "id": "no-type", "source": "/raw", "data": {"key": "k"}
    })
    .to_string();
    let newer = json!({
        "specversion": "1.0", "id": "from-the-future", "type": "bc.cache_invalidated",
        "source": "/newer", "schemaversion": 7, "data": {"key": "k", "region": "eu"}
    })
    .to_string();
    let wrong_type = json!({
        "specversion": "1.0", "id": "wrong-type", "type": "bc.something_else",
        "source": "/raw", "data": {"key": "k"}
    })
    .to_string();
    for payload in [
        not_json,
        not_utf8,
        no_type.as_bytes(),
        newer.as_bytes(),
        wrong_type.as_bytes(),
    ] {
        let receivers: i64 = redis::cmd("PUBLISH")
            .arg(&chan)
            .arg(payload)
            .query_async(&mut conn)
            .await
            .expect("raw PUBLISH");
        assert_eq!(receivers, 1, "the bus is subscribed");
    }
    let good = bus
        .publish(&CacheInvalidated { key: "good".into() })
        .await
        .expect("publish");
    wait_until(Duration::from_secs(10), "the good event is handled", || {
        let seen = seen.clone();
        let good = good.clone();
        async move { seen.ids().contains(&good) }
    })
    .await;
    wait_until(Duration::from_secs(10), "five dead letters", || {
        let bus = bus.clone();
        async move { bus.dlq().list(100).await.expect("list").len() >= 5 }
    })
    .await;
    let h = health(&running, "bc.record");
    running.shutdown().await.expect("shutdown");

    assert_eq!(seen.ids(), [good], "only the good event ran");
    assert_eq!((h.handled, h.dead_lettered), (1, 5), "{h:?}");
    let letters = bus.dlq().list(100).await.expect("list");
    assert_eq!(letters.len(), 5, "{letters:#?}");
    for l in &letters {
        assert_eq!(l.handler, "bc.record");
        assert_eq!(l.event_name, "bc.cache_invalidated");
        assert_eq!(l.attempts, 0, "rejected before any attempt: {l:?}");
        assert_eq!(l.stream_id, "");
    }
    let find = |needle: &str| {
        letters
            .iter()
            .find(|l| l.error.contains(needle))
            .unwrap_or_else(|| panic!("no dead letter with {needle:?}: {letters:#?}"))
    };
    let l = find("cannot decode envelope");
    assert_eq!(l.event_id, None);
    assert_eq!(l.envelope, json!("{\"specversion\": \"1.0\", not json"));
    find("UTF-8");
    let l = find("no `type`");
    assert_eq!(l.event_id.as_ref().map(EventId::as_str), Some("no-type"));
    let l = find("unknown schema version 7");
    assert_eq!(
        l.event_id.as_ref().map(EventId::as_str),
        Some("from-the-future")
    );
    let l = find("bc.something_else");
    assert_eq!(l.event_id.as_ref().map(EventId::as_str), Some("wrong-type"));

    let raw = raw_dead_letters(&mut conn, &dlq_key(&ns, CacheInvalidated::NAME)).await;
    assert_eq!(raw.len(), 5);
    assert!(raw.iter().all(|e| e["delivery"] == "broadcast"), "{raw:#?}");
}

/// Test 7: nothing is kept for a bus that is not listening (at most once).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_event_published_before_start_is_never_delivered() {
    init_tracing();
    let server = RedisServer::start();
    let ns = namespace("bc-before-start");
    let seen = Seen::default();
    let bus = builder(&server, &ns)
        .handlers(["bc.record"])
        .state(seen.clone())
        .build()
        .await
        .expect("build");
    let early = bus
        .publish(&CacheInvalidated {
            key: "early".into(),
        })
        .await
        .expect("publishing with no subscriber succeeds");
    let mut conn = server.conn().await;
    let keys: i64 = redis::cmd("DBSIZE")
        .query_async(&mut conn)
        .await
        .expect("DBSIZE");
    assert_eq!(keys, 0, "a broadcast event is stored nowhere");

    let running = bus.start().await.expect("start");
    // `start` returned: the subscription is confirmed, so this event must arrive.
    let marker = bus
        .publish(&CacheInvalidated {
            key: "marker".into(),
        })
        .await
        .expect("publish");
    wait_until(Duration::from_secs(10), "the marker is handled", || {
        let (seen, marker) = (seen.clone(), marker.clone());
        async move { seen.ids().contains(&marker) }
    })
    .await;
    running.shutdown().await.expect("shutdown");
    let ids = seen.ids();
    assert!(
        !ids.contains(&early),
        "at most once: the early event is gone"
    );
    assert_eq!(ids, [marker]);
}

/// Test 8: shutdown unsubscribes first, then lets in-flight and queued runs finish.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn shutdown_unsubscribes_first_then_drains_in_flight_runs() {
    init_tracing();
    let server = RedisServer::start();
    let ns = namespace("bc-shutdown");
    let gate = Gate::default();
    let observer = TicksSeen::default();
    let drain_timeout = Duration::from_secs(10);
    let bus = builder(&server, &ns)
        .handlers(["bc.gated", "bc.tick_observer"])
        .state(gate.clone())
        .state(observer.clone())
        .concurrency(1)
        .drain_timeout(drain_timeout)
        .build()
        .await
        .expect("build");
    let running = bus.start().await.expect("start");
    let mut conn = server.conn().await;
    let chan = channel(&ns, Tick::NAME);
    assert_eq!(subscribers(&mut conn, &chan).await, 1);

    bus.publish(&Tick { n: 0 }).await.expect("publish");
    wait_until(Duration::from_secs(10), "run 0 is in flight", || {
        let gate = gate.clone();
        async move { gate.entered() == [0] }
    })
    .await;
    // Two more wait in the gated handler's queue behind the one run allowed at a time. (Events
    // not yet received from Redis when shutdown begins are lost: at most once.)
    bus.publish(&Tick { n: 1 }).await.expect("publish");
    bus.publish(&Tick { n: 2 }).await.expect("publish");
    wait_until(
        Duration::from_secs(10),
        "ticks 1 and 2 are received (and queued for the gated handler)",
        || {
            let observer = observer.clone();
            async move { observer.0.lock().expect("lock").len() == 3 }
        },
    )
    .await;

    let started = Instant::now();
    let shutdown = tokio::spawn(running.shutdown());
    wait_until(
        Duration::from_secs(5),
        "the subscriber is gone while run 0 is still in flight",
        || {
            let mut conn = conn.clone();
            let chan = chan.clone();
            async move {
                pubsub_clients(&mut conn).await == 0 && subscribers(&mut conn, &chan).await == 0
            }
        },
    )
    .await;
    assert!(!shutdown.is_finished(), "shutdown waits for the run");
    assert!(gate.finished().is_empty(), "run 0 is still in flight");
    let receivers: i64 = redis::cmd("PUBLISH")
        .arg(&chan)
        .arg("{}")
        .query_async(&mut conn)
        .await
        .expect("PUBLISH");
    assert_eq!(receivers, 0, "nobody listens after shutdown began");

    gate.release();
    tokio::time::timeout(drain_timeout, shutdown)
        .await
        .expect("shutdown finishes within the drain timeout")
        .expect("shutdown task")
        .expect("shutdown");
    assert!(started.elapsed() < drain_timeout);
    assert_eq!(
        gate.finished(),
        [0, 1, 2],
        "the in-flight run and the queued events were drained"
    );
    assert_eq!(pubsub_clients(&mut conn).await, 0);
}

/// A durable and a broadcast handler side by side in one bus.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn durable_and_broadcast_handlers_work_side_by_side() {
    init_tracing();
    const N: u64 = 20;
    let server = RedisServer::start();
    let ns = namespace("bc-mixed");
    let (seen, orders) = (Seen::default(), Orders::default());
    let bus = builder(&server, &ns)
        .handlers(["bc.orders", "bc.record"])
        .state(seen.clone())
        .state(orders.clone())
        .build()
        .await
        .expect("build");
    let running = bus.start().await.expect("start");
    for i in 0..N {
        bus.publish(&OrderPlaced { order: i }).await.expect("order");
        bus.publish(&CacheInvalidated {
            key: format!("order:{i}"),
        })
        .await
        .expect("invalidate");
    }
    wait_until(Duration::from_secs(10), "both handlers ran", || {
        let (seen, orders) = (seen.clone(), orders.clone());
        async move { seen.len() >= N as usize && orders.0.len() >= N as usize }
    })
    .await;
    let mut conn = server.conn().await;
    let stream = stream_key(&ns, OrderPlaced::NAME);
    wait_until(Duration::from_secs(10), "orders acked", || {
        let mut conn = conn.clone();
        let stream = stream.clone();
        async move { pending_count(&mut conn, &stream, "bc.orders").await == 0 }
    })
    .await;
    let health = running.health();
    running.shutdown().await.expect("shutdown");

    let names: Vec<&str> = health.readers.iter().map(|r| r.handler).collect();
    assert_eq!(names, ["bc.orders", "bc.record"]);
    assert!(health.readers.iter().all(|r| r.handled == N), "{health:?}");
    let (xlen, broadcast_stream): (u64, i64) = redis::pipe()
        .cmd("XLEN")
        .arg(&stream)
        .cmd("EXISTS")
        .arg(stream_key(&ns, CacheInvalidated::NAME))
        .query_async(&mut conn)
        .await
        .expect("XLEN, EXISTS");
    assert_eq!(xlen, N, "durable events are in their stream");
    assert_eq!(broadcast_stream, 0, "broadcast events are not");
    assert_eq!(seen.len(), N as usize);
    assert_eq!(orders.0.len(), N as usize);
}

/// The health ping of an idle subscriber (every `block_time`) must not be taken for a failure.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_idle_subscriber_stays_subscribed_across_health_pings() {
    init_tracing();
    let server = RedisServer::start();
    let ns = namespace("bc-idle");
    let seen = Seen::default();
    let bus = builder(&server, &ns)
        .handlers(["bc.record"])
        .state(seen.clone())
        .block_time(Duration::from_millis(50))
        .build()
        .await
        .expect("build");
    let running = bus.start().await.expect("start");
    tokio::time::sleep(Duration::from_millis(500)).await; // ok: lets about ten ping intervals pass with no traffic
    let h = health(&running, "bc.record");
    assert_eq!((h.gaps, h.reconnects), (0, 0), "{h:?}");
    assert!(h.connected && h.last_error.is_none(), "{h:?}");
    let id = bus
        .publish(&CacheInvalidated {
            key: "after-idle".into(),
        })
        .await
        .expect("publish");
    wait_until(Duration::from_secs(10), "handled after idling", || {
        let (seen, id) = (seen.clone(), id.clone());
        async move { seen.ids().contains(&id) }
    })
    .await;
    running.shutdown().await.expect("shutdown");
}

/// A frozen Redis (SIGSTOP) shows only as silence: the ping notices it and counts a gap; once the
/// server runs again the subscriber is back. Shutdown while it is frozen does not hang.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn frozen_redis_is_detected_by_the_ping_and_shutdown_does_not_hang() {
    init_tracing();
    let server = RedisServer::start();
    let ns = namespace("bc-frozen");
    let seen = Seen::default();
    let bus = builder(&server, &ns)
        .handlers(["bc.record"])
        .state(seen.clone())
        .block_time(Duration::from_millis(100))
        .connect_timeout(Duration::from_secs(1))
        .drain_timeout(Duration::from_secs(1))
        .build()
        .await
        .expect("build");
    let running = bus.start().await.expect("start");

    server.signal("STOP");
    wait_until(
        Duration::from_secs(10),
        "the ping notices the frozen server",
        || {
            let h = health(&running, "bc.record");
            async move { h.gaps >= 1 && !h.connected }
        },
    )
    .await;
    server.signal("CONT");
    expect_recovery(&bus, &running, &seen, "SIGSTOP/SIGCONT").await;

    server.signal("STOP");
    wait_until(Duration::from_secs(10), "the ping notices it again", || {
        let h = health(&running, "bc.record");
        async move { h.gaps >= 2 && !h.connected }
    })
    .await;
    let started = Instant::now();
    let stopped = tokio::time::timeout(Duration::from_secs(10), running.shutdown()).await;
    server.signal("CONT");
    stopped
        .expect("shutdown returns while Redis is frozen")
        .expect("shutdown");
    eprintln!("shutdown with a frozen Redis took {:?}", started.elapsed());
}

/// A raw message on the `bc.blob` channel: a well-formed envelope of about `pad` bytes more.
fn raw_blob(id: &str, n: u64, pad: usize) -> String {
    json!({
        "specversion": "1.0", "id": id, "type": "bc.blob", "source": "/raw",
        "data": {"n": n, "pad": "x".repeat(pad)}
    })
    .to_string()
}

async fn raw_publish(conn: &mut MultiplexedConnection, channel: &str, payload: &str) {
    let receivers: i64 = redis::cmd("PUBLISH")
        .arg(channel)
        .arg(payload)
        .query_async(conn)
        .await
        .expect("raw PUBLISH");
    assert_eq!(receivers, 1, "the bus is subscribed");
}

/// Test 8: an oversized message is dead-lettered as it is received, while the handler is busy:
/// it never waits in (or is copied into) the handler's queue, and evicts nothing from it.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn oversized_messages_are_dead_lettered_on_receipt_not_queued() {
    init_tracing();
    const MAX_PAYLOAD: usize = 4096;
    let server = RedisServer::start();
    let ns = namespace("bc-oversized");
    let gate = Gate::default();
    let bus = builder(&server, &ns)
        .handlers(["bc.blob_gated"])
        .state(gate.clone())
        .max_payload(MAX_PAYLOAD)
        .broadcast_queue_bytes(MAX_PAYLOAD)
        .build()
        .await
        .expect("build");
    let running = bus.start().await.expect("start");
    let mut conn = server.conn().await;
    let chan = channel(&ns, Blob::NAME);

    bus.publish(&Blob {
        n: 0,
        pad: String::new(),
    })
    .await
    .expect("publish");
    wait_until(Duration::from_secs(10), "the only run slot is busy", || {
        let gate = gate.clone();
        async move { gate.entered() == [0] }
    })
    .await;
    // One small event waits in the queue; three oversized ones, each larger than the queue's
    // whole byte bound, arrive behind it.
    bus.publish(&Blob {
        n: 1,
        pad: String::new(),
    })
    .await
    .expect("publish");
    for i in 0..3 {
        raw_publish(
            &mut conn,
            &chan,
            &raw_blob(&format!("big-{i}"), 100 + i, 20_000),
        )
        .await;
    }
    wait_until(
        Duration::from_secs(10),
        "three dead letters while the handler is still blocked",
        || {
            let h = health(&running, "bc.blob_gated");
            async move { h.dead_lettered >= 3 }
        },
    )
    .await;
    assert_eq!(gate.entered(), [0], "the handler is still blocked");
    let h = health(&running, "bc.blob_gated");
    assert_eq!(
        h.dropped, 0,
        "oversized messages neither queue nor evict: {h:?}"
    );
    assert_eq!(h.dead_lettered, 3, "{h:?}");

    gate.release();
    wait_until(
        Duration::from_secs(10),
        "the small events are handled",
        || {
            let h = health(&running, "bc.blob_gated");
            async move { h.handled >= 2 }
        },
    )
    .await;
    running.shutdown().await.expect("shutdown");
    assert_eq!(
        gate.finished(),
        [0, 1],
        "the queued event survived; no oversized one ran"
    );

    let letters = bus.dlq().list(100).await.expect("list");
    assert_eq!(letters.len(), 3, "{letters:#?}");
    for l in &letters {
        assert_eq!(l.handler, "bc.blob_gated");
        assert_eq!(l.attempts, 0, "rejected before any attempt: {l:?}");
        assert!(
            l.error.contains("more than the maximum payload of 4096"),
            "{}",
            l.error
        );
    }
    let raw = raw_dead_letters(&mut conn, &dlq_key(&ns, Blob::NAME)).await;
    for letter in &raw {
        assert!(
            letter["envelope"].len() <= 4096,
            "the envelope is cut to 4 KiB"
        );
        assert!(
            letter["envelope"].contains("\"n\":10"),
            "the envelope's start is kept"
        );
        assert_eq!(letter["delivery"], "broadcast");
    }
}

/// Publishes 1 KiB events behind a blocked run until `QUEUE_BYTES` is exceeded many times over;
/// an oversized sentinel, dead-lettered as it is received, shows that all were received. Returns
/// the events handled once the gate opens, and the drop count.
async fn byte_bounded_queue(overflow: Overflow) -> (Vec<u64>, u64) {
    const MAX_PAYLOAD: usize = 4096;
    const QUEUE_BYTES: usize = 8192;
    const PAD: usize = 1000;
    const N: u64 = 20;
    let server = RedisServer::start();
    let ns = namespace("bc-queue-bytes");
    let gate = Gate::default();
    let bus = builder(&server, &ns)
        .handlers(["bc.blob_gated"])
        .state(gate.clone())
        .max_payload(MAX_PAYLOAD)
        .broadcast_queue(1_000) // the count bound is far away: only bytes bind
        .broadcast_queue_bytes(QUEUE_BYTES)
        .broadcast_overflow(overflow)
        .build()
        .await
        .expect("build");
    let running = bus.start().await.expect("start");
    let mut conn = server.conn().await;
    bus.publish(&Blob {
        n: 0,
        pad: String::new(),
    })
    .await
    .expect("publish");
    wait_until(Duration::from_secs(10), "the only run slot is busy", || {
        let gate = gate.clone();
        async move { gate.entered() == [0] }
    })
    .await;
    for n in 1..=N {
        bus.publish(&Blob {
            n,
            pad: "x".repeat(PAD),
        })
        .await
        .expect("publish");
    }
    raw_publish(
        &mut conn,
        &channel(&ns, Blob::NAME),
        &raw_blob("sentinel", 999, 2 * MAX_PAYLOAD),
    )
    .await;
    wait_until(
        Duration::from_secs(10),
        "the sentinel is dead-lettered",
        || {
            let h = health(&running, "bc.blob_gated");
            async move { h.dead_lettered >= 1 }
        },
    )
    .await;
    let dropped = health(&running, "bc.blob_gated").dropped;
    gate.release();
    let queued = N - dropped;
    wait_until(
        Duration::from_secs(10),
        "the queued events are handled",
        || {
            let h = health(&running, "bc.blob_gated");
            async move { h.handled > queued }
        },
    )
    .await;
    running.shutdown().await.expect("shutdown");
    let finished = gate.finished();
    assert_eq!(finished.len() as u64, 1 + queued, "{finished:?}");
    // Each queued envelope carries more than PAD bytes, and less than twice that.
    let queued = queued as usize;
    assert!(
        queued * PAD <= QUEUE_BYTES && queued >= QUEUE_BYTES / (2 * PAD),
        "{queued} events of about {PAD} bytes fit {QUEUE_BYTES} bytes"
    );
    eprintln!(
        "byte-bounded queue ({overflow:?}): {QUEUE_BYTES} bytes held {queued} events of ~{PAD} bytes; {dropped} of {N} dropped"
    );
    (finished, dropped)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn byte_bound_with_drop_oldest_keeps_the_newest_events_that_fit() {
    init_tracing();
    let (finished, dropped) = byte_bounded_queue(Overflow::DropOldest).await;
    let kept = 20 - dropped;
    let mut expected = vec![0];
    expected.extend(21 - kept..=20);
    assert_eq!(
        finished, expected,
        "the newest {kept} events, after the one in flight"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn byte_bound_with_drop_newest_keeps_the_first_events_that_fit() {
    init_tracing();
    let (finished, dropped) = byte_bounded_queue(Overflow::DropNewest).await;
    let kept = 20 - dropped;
    let expected: Vec<u64> = (0..=kept).collect();
    assert_eq!(
        finished, expected,
        "the first {kept} events, after the one in flight"
    );
}
