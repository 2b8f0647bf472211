//! One set of operations over two transports: [`Harness`] makes buses from a `BusBuilder`,
//! either over the in-memory transport (`build_test`, feature `testing`) or over a real
//! `redis-server` the harness starts for the test; [`Node`] is one consumer (one bus instance)
//! with the operations the behaviours use.
//!
//! Two ways for a consumer to die:
//!
//! - [`Node::crash`]: on Redis the running bus is dropped without shutdown. That is not a
//!   `kill -9`: the dropped bus still has its connections, so what its abort path sends (the
//!   take-back of a suspect's charge, `pipeline/mod.rs`) reaches Redis. The handlers the crash
//!   tests use never finish a run that started while the log held them, so an abandoned run can
//!   neither finish nor be acked; a second consumer under another name must claim it after the
//!   visibility timeout. The memory side does the same with `TestBus::crash` (which kills the
//!   consumer's session first: nothing it sends afterwards lands) and `TestBus::another`.
//! - [`Node::kill`], for consumers made by [`Harness::start_killable`]: as `kill -9` does, the
//!   consumer's connections are cut first and nothing it sends afterwards reaches Redis. Such a
//!   Redis consumer talks to Redis through a TCP proxy of its own; the kill drops the proxy
//!   (closing every connection and the listener), then the bus. On memory it is
//!   `TestBus::crash`, which already works that way.

use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::Duration;

use eventbus::prelude::*;
use eventbus::testing::TestBus;
use eventbus::{BusBuilder, DeadLetter, Health, ReaderHealth, RunningBus};
use eventbus_tests::proxy::Proxy;
use eventbus_tests::{RedisServer, init_tracing, namespace, stream_key, wait_until};

/// The visibility timeout of every bus of the suite, unless a test sets another.
pub(crate) const VISIBILITY: Duration = Duration::from_millis(300);
/// The claim interval of every bus of the suite.
pub(crate) const CLAIM_INTERVAL: Duration = Duration::from_millis(50);
/// The bus-level retry backoff (floor) and its cap.
pub(crate) const BACKOFF: Duration = Duration::from_millis(10);
pub(crate) const MAX_BACKOFF: Duration = Duration::from_millis(50);
/// The blocking read time.
pub(crate) const BLOCK: Duration = Duration::from_millis(50);
/// The drain timeout of shutdowns.
pub(crate) const DRAIN: Duration = Duration::from_secs(5);
/// The deadline of every wait for something that should happen within milliseconds.
pub(crate) const DEADLINE: Duration = Duration::from_secs(15);

/// Which transport a test runs on, with what it needs.
pub(crate) enum Harness {
    /// The in-memory transport.
    Memory { ns: String },
    /// A real `redis-server`, owned by this test.
    Redis { ns: String, server: RedisServer },
}

impl Harness {
    /// Over the in-memory transport.
    pub(crate) fn memory() -> Harness {
        init_tracing();
        Harness::Memory {
            ns: namespace("conf-memory"),
        }
    }

    /// Over a `redis-server` started for this test (stopped when the harness is dropped).
    pub(crate) fn redis() -> Harness {
        init_tracing();
        Harness::Redis {
            ns: namespace("conf-redis"),
            server: RedisServer::start(),
        }
    }

    /// `"memory"` or `"redis"`, for messages.
    pub(crate) fn name(&self) -> &'static str {
        match self {
            Harness::Memory { .. } => "memory",
            Harness::Redis { .. } => "redis",
        }
    }

    /// A builder with the suite's short settings in this test's namespace (and, for Redis, the
    /// server's URL). The test adds `.handlers([...])`, its state and its own settings.
    pub(crate) fn builder(&self) -> BusBuilder {
        let mut b = Bus::builder();
        b.visibility_timeout(VISIBILITY)
            .claim_interval(CLAIM_INTERVAL)
            .backoff(BACKOFF)
            .max_backoff(MAX_BACKOFF)
            .block_time(BLOCK)
            .drain_timeout(DRAIN);
        match self {
            Harness::Memory { ns } => {
                b.namespace(ns);
            }
            Harness::Redis { ns, server } => {
                b.namespace(ns).redis_url(server.url());
            }
        }
        b
    }

    /// Builds a consumer from `builder` without starting it.
    pub(crate) async fn build(&self, builder: &BusBuilder) -> Node {
        match self {
            Harness::Memory { .. } => {
                let test = builder
                    .clone()
                    .build_test()
                    .await
                    .expect("build a test bus");
                Node::Memory(Box::new(test))
            }
            Harness::Redis { server, ns } => {
                Node::redis(
                    builder.clone(),
                    server.url(),
                    ns.clone(),
                    Arc::default(),
                    None,
                )
                .await
            }
        }
    }

    /// As [`start`](Self::start), for a consumer that can be [`kill`](Node::kill)ed: on Redis it
    /// connects through a proxy of its own (see the module docs).
    pub(crate) async fn start_killable(&self, builder: &BusBuilder) -> Node {
        let mut node = match self {
            Harness::Memory { .. } => self.build(builder).await,
            Harness::Redis { server, ns } => {
                Node::redis(
                    builder.clone(),
                    server.url(),
                    ns.clone(),
                    Arc::default(),
                    Some(Proxy::start(server.port())),
                )
                .await
            }
        };
        node.start().await;
        node
    }

    /// Builds a consumer from `builder` and starts it.
    pub(crate) async fn start(&self, builder: &BusBuilder) -> Node {
        let mut node = self.build(builder).await;
        node.start().await;
        node
    }
}

/// One consumer: a bus instance with its own consumer name.
pub(crate) enum Node {
    Memory(Box<TestBus>),
    Redis(Box<RedisNode>),
}

/// A bus over Redis, with what it takes to make another consumer like it.
pub(crate) struct RedisNode {
    /// The settings, with this consumer's name (and the server's URL: a killable consumer's bus
    /// is built with its proxy's).
    builder: BusBuilder,
    /// The server's URL.
    url: String,
    ns: String,
    /// Consumers made so far from the first one's settings (names `conformance-<n>`).
    consumers: Arc<AtomicUsize>,
    bus: Bus,
    running: Option<RunningBus>,
    /// A killable consumer talks to Redis through a proxy of its own, to this port (the
    /// server's); `None` for the others.
    upstream: Option<u16>,
    /// That proxy while the consumer lives; `None` once killed, until the restart.
    proxy: Option<Proxy>,
}

/// Builds a Redis bus from `builder`, through `proxy` when there is one.
async fn build_redis(builder: &BusBuilder, proxy: Option<&Proxy>) -> Bus {
    let mut builder = builder.clone();
    if let Some(proxy) = proxy {
        builder.redis_url(proxy.url());
    }
    builder.build().await.expect("build a Redis bus")
}

impl Node {
    async fn redis(
        mut builder: BusBuilder,
        url: String,
        ns: String,
        consumers: Arc<AtomicUsize>,
        proxy: Option<Proxy>,
    ) -> Node {
        let n = consumers.fetch_add(1, Ordering::SeqCst);
        builder.consumer(format!("conformance-{n}")).redis_url(&url);
        let bus = build_redis(&builder, proxy.as_ref()).await;
        Node::Redis(Box::new(RedisNode {
            builder,
            url,
            ns,
            consumers,
            bus,
            running: None,
            upstream: proxy.as_ref().map(Proxy::upstream),
            proxy,
        }))
    }

    /// Starts the selected handlers (once).
    pub(crate) async fn start(&mut self) {
        match self {
            Node::Memory(test) => test.start().await.expect("start the test bus"),
            Node::Redis(node) => {
                if node.running.is_none() {
                    node.running = Some(node.bus.start().await.expect("start the Redis bus"));
                }
            }
        }
    }

    /// The bus: publishing and dead letters.
    pub(crate) fn bus(&self) -> &Bus {
        match self {
            Node::Memory(test) => test.bus(),
            Node::Redis(node) => &node.bus,
        }
    }

    /// Publishes `event`.
    pub(crate) async fn publish<E: DomainEvent>(&self, event: &E) -> EventId {
        match self {
            Node::Memory(test) => test.publish(event).await.expect("publish"),
            Node::Redis(node) => node.bus.publish(event).await.expect("publish"),
        }
    }

    /// Every dead letter of the namespace.
    pub(crate) async fn dead_letters(&self) -> Vec<DeadLetter> {
        match self {
            Node::Memory(test) => test.dead_letters().await.expect("dead letters"),
            Node::Redis(node) => node.bus.dlq().list(1_000).await.expect("dead letters"),
        }
    }

    /// Waits until there are at least `n` dead letters; returns them all.
    pub(crate) async fn wait_dead_letters(&self, n: usize) -> Vec<DeadLetter> {
        let deadline = tokio::time::Instant::now() + DEADLINE;
        loop {
            let letters = self.dead_letters().await;
            if letters.len() >= n {
                return letters;
            }
            assert!(
                tokio::time::Instant::now() < deadline,
                "timed out after {DEADLINE:?} waiting for {n} dead letter(s); have {letters:#?}"
            );
            tokio::time::sleep(Duration::from_millis(10)).await; // ok: poll interval under a deadline
        }
    }

    /// The bus's health, with its readers once started.
    pub(crate) fn health(&self) -> Health {
        match self {
            Node::Memory(test) => test.health(),
            Node::Redis(node) => match &node.running {
                Some(running) => running.health(),
                None => node.bus.health(),
            },
        }
    }

    /// The health of one handler's reader.
    pub(crate) fn reader(&self, handler: &str) -> ReaderHealth {
        let health = self.health();
        health
            .readers
            .iter()
            .find(|r| r.handler == handler)
            .cloned()
            .unwrap_or_else(|| panic!("no reader for {handler}: {health:?}"))
    }

    /// A second consumer with the same settings, under its own name, not started (not killable).
    pub(crate) async fn another(&self) -> Node {
        match self {
            Node::Memory(test) => Node::Memory(Box::new(test.another().expect("another test bus"))),
            Node::Redis(node) => {
                Node::redis(
                    node.builder.clone(),
                    node.url.clone(),
                    node.ns.clone(),
                    node.consumers.clone(),
                    None,
                )
                .await
            }
        }
    }

    /// Appends a raw entry to the stream of durable event `event`, as another producer might:
    /// on memory `TestBus::publish_raw`, on Redis `XADD <ns>:{<event>} * <fields>`. Returns the
    /// entry id.
    pub(crate) async fn publish_raw(&self, event: &str, fields: &[(&str, &[u8])]) -> String {
        match self {
            Node::Memory(test) => test.publish_raw(event, fields).await.expect("publish_raw"),
            Node::Redis(node) => {
                let mut conn = node.conn().await;
                let mut cmd = redis::cmd("XADD");
                cmd.arg(stream_key(&node.ns, event)).arg("*");
                for (k, v) in fields {
                    cmd.arg(*k).arg(*v);
                }
                cmd.query_async::<String>(&mut conn)
                    .await
                    .expect("raw XADD")
            }
        }
    }

    /// Waits (under [`DEADLINE`]) until the entries of durable event `event` have `total`
    /// attempts charged in all (`<ns>:{<event>}:attempts`): on Redis the hash is read, on memory
    /// `TestBus::charged_attempts`.
    pub(crate) async fn wait_charged(&self, event: &str, total: i64) {
        match self {
            Node::Memory(bus) => {
                let want = u64::try_from(total).unwrap_or(0);
                wait_until(DEADLINE, &format!("{total} attempt(s) charged"), || {
                    let charged = bus.charged_attempts(event);
                    async move { charged == want }
                })
                .await;
            }
            Node::Redis(node) => {
                let conn = node.conn().await;
                let key = format!("{}:attempts", stream_key(&node.ns, event));
                wait_until(DEADLINE, &format!("{total} attempt(s) charged"), || {
                    let mut conn = conn.clone();
                    let key = key.clone();
                    async move { charged(&mut conn, &key).await == total }
                })
                .await;
            }
        }
    }

    /// The attempts charged in all to the entries of durable event `event` (always `Some`).
    pub(crate) async fn charged(&self, event: &str) -> Option<i64> {
        match self {
            Node::Memory(bus) => {
                Some(i64::try_from(bus.charged_attempts(event)).unwrap_or(i64::MAX))
            }
            Node::Redis(node) => {
                let mut conn = node.conn().await;
                let key = format!("{}:attempts", stream_key(&node.ns, event));
                Some(charged(&mut conn, &key).await)
            }
        }
    }

    /// The consumer dies: nothing is drained, acked or handed back by a shutdown. (On Redis the
    /// running bus is dropped; the runs it abandons never finish, see the module docs.)
    pub(crate) fn crash(&mut self) {
        match self {
            Node::Memory(test) => test.crash(),
            Node::Redis(node) => drop(node.running.take()),
        }
    }

    /// The consumer is killed as by `kill -9`: its connections are cut first, so nothing it
    /// sends afterwards (a take-back, an ack, a hand-back) reaches the store; then it stops.
    /// On memory `TestBus::crash` (its session is killed first). On Redis the consumer's proxy
    /// is dropped (every connection closed, new ones refused), then its running bus.
    pub(crate) fn kill(&mut self) {
        match self {
            Node::Memory(test) => test.crash(),
            Node::Redis(node) => {
                assert!(node.upstream.is_some(), "kill: made by start_killable");
                drop(node.proxy.take().expect("kill a live consumer"));
                drop(node.running.take());
            }
        }
    }

    /// After [`crash`](Self::crash) or [`kill`](Self::kill): the process comes back under the
    /// same consumer name.
    pub(crate) async fn restart(&mut self) {
        match self {
            Node::Memory(test) => test.start().await.expect("restart the test bus"),
            Node::Redis(node) => {
                assert!(node.running.is_none(), "restart after a crash only");
                // A new process: new connections, the same consumer name.
                if let Some(port) = node.upstream {
                    node.proxy = Some(Proxy::start(port));
                }
                node.bus = build_redis(&node.builder, node.proxy.as_ref()).await;
                node.running = Some(node.bus.start().await.expect("restart the Redis bus"));
            }
        }
    }

    /// The broadcast subscriber loses its connection: on memory `disconnect_broadcast`; on
    /// Redis `CLIENT KILL TYPE pubsub` (this test's server has no other subscriber).
    pub(crate) async fn disconnect_broadcast(&self) {
        match self {
            Node::Memory(test) => test.disconnect_broadcast(),
            Node::Redis(node) => {
                let client = redis::Client::open(node.url.as_str()).expect("redis url");
                let mut conn = client
                    .get_multiplexed_async_connection()
                    .await
                    .expect("connect to the test redis");
                let killed: i64 = redis::cmd("CLIENT")
                    .arg("KILL")
                    .arg("TYPE")
                    .arg("pubsub")
                    .query_async(&mut conn)
                    .await
                    .expect("CLIENT KILL");
                assert_eq!(killed, 1, "one subscriber connection");
            }
        }
    }

    /// Graceful shutdown: drains like `RunningBus::shutdown`.
    pub(crate) async fn shutdown(self) {
        match self {
            Node::Memory(test) => test.shutdown().await.expect("shutdown"),
            Node::Redis(node) => {
                if let Some(running) = node.running {
                    running.shutdown().await.expect("shutdown");
                }
            }
        }
    }

    /// Waits (under [`DEADLINE`]) until nothing is unread, pending or being retried: on memory
    /// `run_until_idle`; on Redis every consumer group of every stream has read to the end of
    /// its stream and has nothing pending (an entry stays pending while it runs, while it waits
    /// for a retry and until a claim).
    pub(crate) async fn idle(&self) {
        match self {
            Node::Memory(test) => tokio::time::timeout(DEADLINE, test.run_until_idle())
                .await
                .unwrap_or_else(|_| panic!("memory: not idle within {DEADLINE:?}"))
                .expect("run_until_idle"),
            Node::Redis(node) => {
                let client = redis::Client::open(node.url.as_str()).expect("redis url");
                let conn = client
                    .get_multiplexed_async_connection()
                    .await
                    .expect("connect to the test redis");
                wait_until(DEADLINE, "redis: every group read and acked all", || {
                    let mut conn = conn.clone();
                    async move { redis_idle(&mut conn).await }
                })
                .await;
            }
        }
    }

    /// On memory, `TestBus::handled(handler)`; on Redis there is nothing like it.
    pub(crate) fn memory_handled(&self, handler: &str) -> Option<Vec<EventId>> {
        match self {
            Node::Memory(test) => Some(test.handled(handler)),
            Node::Redis(_) => None,
        }
    }
}

impl RedisNode {
    /// A connection of the test's own to the server (not through the consumer's proxy).
    async fn conn(&self) -> redis::aio::MultiplexedConnection {
        redis::Client::open(self.url.as_str())
            .expect("redis url")
            .get_multiplexed_async_connection()
            .await
            .expect("connect to the test redis")
    }
}

/// The sum of the attempts charged in hash `key` (0 when it does not exist).
async fn charged(conn: &mut redis::aio::MultiplexedConnection, key: &str) -> i64 {
    let values: Vec<i64> = redis::cmd("HVALS")
        .arg(key)
        .query_async(conn)
        .await
        .expect("HVALS");
    values.iter().sum()
}

/// True when every group of every stream on the server has delivered the stream's last entry
/// and has nothing pending.
async fn redis_idle(conn: &mut redis::aio::MultiplexedConnection) -> bool {
    use redis::AsyncCommands;
    let mut keys: Vec<String> = Vec::new();
    let mut cursor: u64 = 0;
    loop {
        let (next, batch): (u64, Vec<String>) = redis::cmd("SCAN")
            .arg(cursor)
            .arg("TYPE")
            .arg("stream")
            .arg("COUNT")
            .arg(1_000)
            .query_async(conn)
            .await
            .expect("SCAN");
        keys.extend(batch);
        cursor = next;
        if cursor == 0 {
            break;
        }
    }
    for key in keys {
        let stream: redis::streams::StreamInfoStreamReply =
            conn.xinfo_stream(&key).await.expect("XINFO STREAM");
        let groups: redis::streams::StreamInfoGroupsReply =
            conn.xinfo_groups(&key).await.expect("XINFO GROUPS");
        for g in groups.groups {
            if g.pending != 0 || g.last_delivered_id != stream.last_generated_id {
                return false;
            }
        }
    }
    true
}
