//! Fan-out and competing consumers without faults: every handler of an event handles every event
//! exactly once, and bus instances that share a namespace share the work.

use std::collections::{BTreeSet, HashMap};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use eventbus::prelude::*;
use eventbus_tests::{RedisServer, init_tracing, namespace, pending_count, stream_key, wait_until};

#[derive(Debug, Clone, Serialize, Deserialize, DomainEvent)]
#[event(name = "dispatch.order_placed")]
struct OrderPlaced {
    n: u64,
}

/// What one bus instance handled: handler name → event ids, in handling order.
#[derive(Clone, Default)]
struct Seen(Arc<Mutex<HashMap<&'static str, Vec<EventId>>>>);

impl Seen {
    fn record(&self, handler: &'static str, id: EventId) {
        self.0
            .lock()
            .expect("lock")
            .entry(handler)
            .or_default()
            .push(id);
    }
    fn of(&self, handler: &str) -> Vec<EventId> {
        self.0
            .lock()
            .expect("lock")
            .get(handler)
            .cloned()
            .unwrap_or_default()
    }
    fn count(&self, handler: &str) -> usize {
        self.0
            .lock()
            .expect("lock")
            .get(handler)
            .map_or(0, Vec::len)
    }
}

#[event_handler(name = "dispatch.billing")]
async fn billing(_ev: OrderPlaced, ctx: Context, seen: State<Seen>) -> anyhow::Result<()> {
    seen.record(ctx.handler(), ctx.event_id());
    Ok(())
}

#[event_handler(name = "dispatch.shipping")]
async fn shipping(_ev: OrderPlaced, ctx: Context, seen: State<Seen>) -> anyhow::Result<()> {
    seen.record(ctx.handler(), ctx.event_id());
    Ok(())
}

const HANDLERS: [&str; 2] = ["dispatch.billing", "dispatch.shipping"];

/// Asserts that `ids` has no duplicates and is exactly `published`.
fn assert_exactly_once(handler: &str, ids: &[EventId], published: &BTreeSet<EventId>) {
    let set: BTreeSet<EventId> = ids.iter().cloned().collect();
    assert_eq!(
        set.len(),
        ids.len(),
        "{handler} handled {} runs for {} distinct events (duplicates)",
        ids.len(),
        set.len()
    );
    let missing: Vec<_> = published.difference(&set).take(5).collect();
    let extra: Vec<_> = set.difference(published).take(5).collect();
    assert!(
        missing.is_empty() && extra.is_empty(),
        "{handler}: missing {missing:?}, unexpected {extra:?}"
    );
}

async fn wait_all_acked(server: &RedisServer, ns: &str, n: usize) {
    let stream = stream_key(ns, OrderPlaced::NAME);
    let mut conn = server.conn().await;
    wait_until(
        Duration::from_secs(30),
        "every group has acked everything",
        || {
            let mut conn = conn.clone();
            let stream = stream.clone();
            async move {
                for h in HANDLERS {
                    if pending_count(&mut conn, &stream, h).await != 0 {
                        return false;
                    }
                }
                true
            }
        },
    )
    .await;
    let len: usize = redis::cmd("XLEN")
        .arg(&stream)
        .query_async(&mut conn)
        .await
        .expect("XLEN");
    assert_eq!(len, n, "the stream holds every published event");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn two_handlers_each_handle_every_event_exactly_once() {
    init_tracing();
    let server = RedisServer::start();
    let ns = namespace("fanout");
    let seen = Seen::default();
    let bus = Bus::builder()
        .redis_url(server.url())
        .namespace(&ns)
        .handlers(HANDLERS)
        .state(seen.clone())
        .visibility_timeout(Duration::from_secs(30))
        .block_time(Duration::from_millis(200))
        .build()
        .await
        .expect("build bus");
    assert_eq!(bus.handler_names(), HANDLERS);
    let running = bus.start().await.expect("start bus");

    let mut published = BTreeSet::new();
    for n in 0..1000 {
        let id = bus.publish(&OrderPlaced { n }).await.expect("publish");
        assert!(published.insert(id), "publish returned a duplicate id");
    }

    wait_until(
        Duration::from_secs(60),
        "both handlers saw 1000 events",
        || {
            let seen = seen.clone();
            async move { HANDLERS.iter().all(|h| seen.count(h) >= 1000) }
        },
    )
    .await;
    wait_all_acked(&server, &ns, 1000).await;
    running.shutdown().await.expect("shutdown");

    for h in HANDLERS {
        assert_exactly_once(h, &seen.of(h), &published);
    }
    assert!(
        bus.dlq()
            .list(10)
            .await
            .expect("list dead letters")
            .is_empty(),
        "no dead letters"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn two_bus_instances_share_the_work_of_each_handler() {
    init_tracing();
    let server = RedisServer::start();
    let ns = namespace("compete");
    let mut instances = Vec::new();
    for consumer in ["instance-a", "instance-b"] {
        let seen = Seen::default();
        let bus = Bus::builder()
            .redis_url(server.url())
            .namespace(&ns)
            .consumer(consumer)
            .handlers(HANDLERS)
            .state(seen.clone())
            .visibility_timeout(Duration::from_secs(30))
            .block_time(Duration::from_millis(200))
            // Small reads and few runs at once, so that neither instance takes everything.
            .batch_size(5)
            .concurrency(2)
            .build()
            .await
            .expect("build bus");
        assert_eq!(bus.consumer_name(), consumer);
        let running = bus.start().await.expect("start bus");
        instances.push((bus, running, seen));
    }

    let publisher = instances[0].0.clone();
    let mut published = BTreeSet::new();
    for n in 0..500 {
        published.insert(
            publisher
                .publish(&OrderPlaced { n })
                .await
                .expect("publish"),
        );
    }

    let seens: Vec<Seen> = instances.iter().map(|(_, _, s)| s.clone()).collect();
    wait_until(
        Duration::from_secs(60),
        "every event handled by each handler across instances",
        || {
            let seens = seens.clone();
            async move {
                HANDLERS
                    .iter()
                    .all(|h| seens.iter().map(|s| s.count(h)).sum::<usize>() >= 500)
            }
        },
    )
    .await;
    wait_all_acked(&server, &ns, 500).await;
    for (_, running, _) in instances {
        running.shutdown().await.expect("shutdown");
    }

    for h in HANDLERS {
        let all: Vec<EventId> = seens.iter().flat_map(|s| s.of(h)).collect();
        assert_exactly_once(h, &all, &published);
    }
    for (seen, consumer) in seens.iter().zip(["instance-a", "instance-b"]) {
        let total: usize = HANDLERS.iter().map(|h| seen.count(h)).sum();
        assert!(
            total > 0,
            "{consumer} handled nothing: the instances did not share the work"
        );
        for h in HANDLERS {
            assert!(seen.count(h) > 0, "{consumer} handled nothing for {h}");
        }
    }
}
