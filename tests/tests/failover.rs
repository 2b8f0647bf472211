//! Every connection heals (issue 9, items 5 and 6): a coordinated failover behind a stable
//! address, a half-open flow, a frozen Redis under `publish_timeout`, a publish-only bus's health
//! with no traffic, and TCP keepalive on every connection.
//!
//! The stable address is [`Proxy`] (tests/src/proxy.rs): new connections go to its current
//! upstream, existing ones stay, and existing ones can be black-holed. Recovery times are printed
//! as `recovery <name>_ms=<n>` lines (run with `--nocapture` to see them); the assertions use
//! generous bounds because the machine is shared.

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};

use eventbus::prelude::*;
use eventbus::{Error, RunningBus};
use eventbus_tests::chaos::{self, Checker, Load, LoadOptions, time_until};
use eventbus_tests::proxy::Proxy;
use eventbus_tests::{
    Persistence, RedisServer, init_tracing, namespace, pending_count, stream_key, wait_until,
};

#[derive(Debug, Clone, Serialize, Deserialize, DomainEvent)]
#[event(name = "failover.tick")]
struct Tick {
    n: u64,
}

/// A broadcast event, so a bus also holds a Pub/Sub connection.
#[derive(Debug, Clone, Serialize, Deserialize, DomainEvent)]
#[event(name = "failover.ping", broadcast)]
struct Ping {
    n: u64,
}

const GROUP: &str = "failover.record";
const PING_GROUP: &str = "failover.ping_seen";

#[event_handler(name = "failover.record", retries = 3, backoff = "10ms")]
async fn record(ev: Tick, checker: State<Checker>) -> anyhow::Result<()> {
    checker.handled(ev.n);
    Ok(())
}

#[event_handler(name = "failover.ping_seen")]
async fn ping_seen(_ev: Ping) -> anyhow::Result<()> {
    Ok(())
}

fn tick(n: u64) -> Tick {
    Tick { n }
}

/// A started bus at `url` running only `failover.record`, recording into `checker`.
async fn consumer(url: &str, ns: &str, checker: &Checker) -> (Bus, RunningBus) {
    let bus = Bus::builder()
        .redis_url(url)
        .namespace(ns)
        .consumer("c0")
        .handlers([GROUP])
        .state(checker.clone())
        .concurrency(16)
        .block_time(Duration::from_millis(200))
        .visibility_timeout(Duration::from_secs(2))
        .claim_interval(Duration::from_millis(200))
        .drain_timeout(Duration::from_secs(5))
        .build()
        .await
        .expect("build the consumer bus");
    let running = bus.start().await.expect("start the consumer bus");
    (bus, running)
}

async fn info(server: &RedisServer, section: &str) -> String {
    let mut conn = server.conn().await;
    redis::cmd("INFO")
        .arg(section)
        .query_async(&mut conn)
        .await
        .expect("INFO")
}

/// Publishes event `n` (a marker outside the load's range), retrying failed calls, and returns
/// how long after `since` a publish of it returned `Ok`: the first publish started after a
/// fault, so a publish sent before it cannot count.
async fn publish_marker(bus: &Bus, checker: &Checker, n: u64, since: Instant) -> Duration {
    let deadline = since + Duration::from_secs(60);
    loop {
        match bus.publish(&tick(n)).await {
            Ok(_) => {
                checker.published(n);
                return since.elapsed();
            }
            Err(e) => {
                checker.publish_failed(n);
                assert!(
                    Instant::now() < deadline,
                    "publishing did not resume within 60 s: {e}"
                );
                tokio::time::sleep(Duration::from_millis(20)).await; // ok: backoff before retrying a failed publish
            }
        }
    }
}

/// Waits until the acked event `n` was handled and returns how long after `since` that was.
async fn time_handled(checker: &Checker, n: u64, since: Instant, what: &str) -> Duration {
    wait_until(Duration::from_secs(60), what, || async {
        !checker.missing().contains(&n)
    })
    .await;
    since.elapsed()
}

/// Waits until every acked event was handled and `server` has nothing pending for the group.
async fn settle(server: &RedisServer, checker: &Checker, stream: &str, scenario: &str) {
    let deadline = Instant::now() + Duration::from_secs(60);
    while !checker.all_acked_handled() {
        if Instant::now() > deadline {
            let v = checker.verdict(scenario);
            v.print();
            v.assert_ok(u64::MAX);
        }
        tokio::time::sleep(Duration::from_millis(10)).await; // ok: poll interval under a deadline
    }
    let conn = server.conn().await;
    wait_until(
        Duration::from_secs(60),
        "nothing pending on the server",
        || {
            let mut conn = conn.clone();
            let stream = stream.to_owned();
            async move { pending_count(&mut conn, &stream, GROUP).await == 0 }
        },
    )
    .await;
}

/// Primary A with replica B behind a proxy; the bus (publisher and a durable handler) connects
/// through the proxy to A while a steady load publishes. A coordinated failover as managed
/// services do it (`FAILOVER` on A: pause writes, wait for B's offset, promote B, demote A), then
/// the proxy sends new connections to B.
///
/// Asserts: publishing, handling and acks resume on B with no operator action (B's pending list
/// drains to 0), nothing acknowledged is lost, the bus is healthy again; prints the time from
/// the switch to the first publish acked and handled on B.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn failover_behind_a_stable_address_resumes_on_the_new_primary() {
    init_tracing();
    let _serial = chaos::exclusive().await;
    let scenario = "failover";
    let a = RedisServer::start();
    let b = RedisServer::start_with(
        Persistence::None,
        &["--replicaof", "127.0.0.1", &a.port().to_string()],
    );
    wait_until(Duration::from_secs(20), "B in sync with A", || async {
        info(&b, "replication")
            .await
            .contains("master_link_status:up")
    })
    .await;
    let proxy = Proxy::start(a.port());
    let ns = namespace("failover");
    let stream = stream_key(&ns, Tick::NAME);
    let checker = Checker::new();
    let (bus, running) = consumer(&proxy.url(), &ns, &checker).await;
    let total = chaos::count(1_200, 10_000);
    let load = Load::start(
        &bus,
        &checker,
        0..total,
        LoadOptions {
            tasks: 4,
            rate_per_sec: 400,
            give_up_after: Duration::from_secs(60),
            hold_at: total / 2,
        },
        tick,
    );
    wait_until(Duration::from_secs(30), "events handled on A", || async {
        checker.handled_unique() >= 200
    })
    .await;

    let mut a_conn = a.conn().await;
    redis::cmd("FAILOVER")
        .arg("TIMEOUT")
        .arg(10_000)
        .query_async::<()>(&mut a_conn)
        .await
        .expect("FAILOVER on A");
    wait_until(
        Duration::from_secs(20),
        "A demoted and B promoted",
        || async {
            info(&a, "replication").await.contains("role:slave")
                && info(&b, "replication").await.contains("role:master")
        },
    )
    .await;
    proxy.set_upstream(b.port());
    let switched = Instant::now();

    // The publish side first (the shared connection), then handling (the reader's connection).
    let marker = total;
    let publish = publish_marker(&bus, &checker, marker, switched).await;
    println!("recovery failover_publish_ms={}", publish.as_millis());
    let resume = time_handled(
        &checker,
        marker,
        switched,
        "the marker published on B handled",
    )
    .await;
    println!("recovery failover_resume_ms={}", resume.as_millis());
    load.finish(Duration::from_secs(120)).await;
    settle(&b, &checker, &stream, scenario).await;
    wait_until(Duration::from_secs(30), "healthy again", || async {
        running.health().is_healthy()
    })
    .await;
    let health = running.health();
    assert!(
        health.connection.replaced >= 1,
        "the shared connection was replaced: {health:?}"
    );
    let verdict = checker
        .verdict(scenario)
        .with("failover_publish_ms", publish.as_millis())
        .with("failover_resume_ms", resume.as_millis())
        .with("replaced", health.connection.replaced);
    verdict.print();
    verdict.assert_ok(total);
    running.shutdown().await.expect("shutdown");
}

/// The bus (publisher and a durable handler) through a proxy; every connection open at that
/// moment is black-holed (bytes dropped both ways, sockets open), as a NAT or load balancer
/// that forgot the flows leaves them.
///
/// Asserts: publishing and handling resume within a bound (the shared connection's probe fails
/// and it is replaced; the reader's read times out and it reconnects), health reported the
/// failure and is healthy again after, nothing acknowledged is lost; prints the recovery time.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn half_open_flows_are_replaced() {
    init_tracing();
    let _serial = chaos::exclusive().await;
    let scenario = "half-open";
    let server = RedisServer::start();
    let proxy = Proxy::start(server.port());
    let ns = namespace("half-open");
    let stream = stream_key(&ns, Tick::NAME);
    let checker = Checker::new();
    let (bus, running) = consumer(&proxy.url(), &ns, &checker).await;
    let running = Arc::new(running);
    let total = chaos::count(1_200, 10_000);
    let load = Load::start(
        &bus,
        &checker,
        0..total,
        LoadOptions {
            tasks: 4,
            rate_per_sec: 400,
            give_up_after: Duration::from_secs(60),
            hold_at: total / 2,
        },
        tick,
    );
    wait_until(Duration::from_secs(30), "events handled", || async {
        checker.handled_unique() >= 200
    })
    .await;

    // Health is sampled from the black-holing on: it must report the failure at some point.
    let saw_unhealthy = Arc::new(AtomicBool::new(false));
    let stop_sampling = Arc::new(AtomicBool::new(false));
    let sampler = {
        let running = running.clone();
        let bus = bus.clone();
        let saw = saw_unhealthy.clone();
        let stop = stop_sampling.clone();
        tokio::spawn(async move {
            while !stop.load(Ordering::Relaxed) {
                if !running.health().is_healthy() || !bus.health().is_healthy() {
                    saw.store(true, Ordering::Relaxed);
                }
                tokio::time::sleep(Duration::from_millis(5)).await; // ok: sampling interval
            }
        })
    };
    let holed = proxy.blackhole_existing();
    let cut = Instant::now();
    assert!(
        holed >= 2,
        "the shared and the reader's connections are black-holed"
    );

    let marker = total;
    let publish = publish_marker(&bus, &checker, marker, cut).await;
    let resume = time_handled(
        &checker,
        marker,
        cut,
        "the marker published after the black-holing handled",
    )
    .await;
    println!(
        "recovery half_open_publish_ms={} half_open_resume_ms={}",
        publish.as_millis(),
        resume.as_millis()
    );
    load.finish(Duration::from_secs(120)).await;
    settle(&server, &checker, &stream, scenario).await;
    wait_until(Duration::from_secs(30), "healthy again", || async {
        running.health().is_healthy() && bus.health().is_healthy()
    })
    .await;
    stop_sampling.store(true, Ordering::Relaxed);
    tokio::time::timeout(Duration::from_secs(5), sampler)
        .await
        .expect("sampler stops")
        .expect("sampler task");
    let health = running.health();
    assert!(
        saw_unhealthy.load(Ordering::Relaxed),
        "health reported the dead flows"
    );
    assert!(
        health.connection.probe_failures >= 1 && health.connection.replaced >= 1,
        "the shared connection's probe failed and it was replaced: {health:?}"
    );
    assert!(
        resume < Duration::from_secs(20),
        "handling resumed within 20 s of the black-holing (took {resume:?})"
    );
    let verdict = checker
        .verdict(scenario)
        .with("half_open_publish_ms", publish.as_millis())
        .with("half_open_resume_ms", resume.as_millis())
        .with("probe_failures", health.connection.probe_failures)
        .with("replaced", health.connection.replaced);
    verdict.print();
    verdict.assert_ok(total);
    let running = Arc::into_inner(running).expect("the sampler let go of the running bus");
    running.shutdown().await.expect("shutdown");
}

/// A frozen Redis (SIGSTOP): a publish with `publish_timeout(1s)` returns `Error::Timeout` in
/// about a second instead of waiting out response timeouts and reconnects; health is false
/// meanwhile and true again after SIGCONT without any publish (the probe clears it).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn publish_timeout_bounds_a_publish_to_a_frozen_redis() {
    init_tracing();
    let server = RedisServer::start();
    let ns = namespace("frozen");
    let bus = Bus::builder()
        .redis_url(server.url())
        .namespace(&ns)
        .handlers(Vec::<String>::new())
        .publish_timeout(Duration::from_secs(1))
        .build()
        .await
        .expect("publish-only bus");
    bus.publish(&tick(0))
        .await
        .expect("publish before the freeze");
    assert!(bus.health().is_healthy(), "{:?}", bus.health());

    server.signal("STOP");
    let started = Instant::now();
    let result = tokio::time::timeout(Duration::from_secs(30), bus.publish(&tick(1)))
        .await
        .expect("publish returns");
    let took = started.elapsed();
    println!("recovery frozen_publish_timeout_ms={}", took.as_millis());
    let stopped = !bus.health().is_healthy();
    let health = bus.health();
    server.signal("CONT");
    match result {
        Err(Error::Timeout { limit, .. }) => assert_eq!(limit, Duration::from_secs(1)),
        other => panic!("expected Error::Timeout after {took:?}, got {other:?}"),
    }
    assert!(
        took < Duration::from_secs(3),
        "publish_timeout(1s) bounds the call (took {took:?})"
    );
    assert!(stopped, "health is false while Redis is frozen: {health:?}");
    assert!(health.connection.publish_errors >= 1, "{health:?}");

    wait_until(
        Duration::from_secs(20),
        "healthy again with no publish (the probe)",
        || async { bus.health().is_healthy() },
    )
    .await;
    bus.publish(&tick(2)).await.expect("publish after SIGCONT");
    assert!(bus.health().is_healthy(), "{:?}", bus.health());
}

/// A publish-only bus (`.handlers([])`) sees no traffic; its health still turns false when
/// Redis goes away (the periodic probe) and true again when it is back.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn publish_only_health_follows_the_server_without_traffic() {
    init_tracing();
    let mut server = RedisServer::start();
    let ns = namespace("publish-only");
    let bus = Bus::builder()
        .redis_url(server.url())
        .namespace(&ns)
        .handlers(Vec::<String>::new())
        .build()
        .await
        .expect("publish-only bus");
    assert!(bus.health().is_healthy(), "{:?}", bus.health());

    tokio::task::block_in_place(|| server.kill());
    let down = time_until(
        Duration::from_secs(20),
        "health false with no publish",
        || async { !bus.health().is_healthy() },
    )
    .await;
    let health = bus.health();
    assert!(health.connection.probe_failures >= 1, "{health:?}");
    assert!(health.connection.last_error.is_some(), "{health:?}");

    tokio::task::block_in_place(|| server.restart());
    let up = time_until(
        Duration::from_secs(30),
        "health true again with no publish",
        || async { bus.health().is_healthy() },
    )
    .await;
    println!(
        "recovery publish_only_health_down_ms={} publish_only_health_up_ms={}",
        down.as_millis(),
        up.as_millis()
    );
    bus.publish(&tick(1))
        .await
        .expect("publish after the restart");
}

/// Every connection the bus makes (shared, a reader's blocking one, the broadcast subscriber's)
/// has TCP keepalive on: the kernel shows its keepalive timer (`/proc/net/tcp`, timer 2).
#[cfg(target_os = "linux")]
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_connection_has_tcp_keepalive() {
    init_tracing();
    let server = RedisServer::start();
    let ns = namespace("keepalive");
    let checker = Checker::new();
    let bus = Bus::builder()
        .redis_url(server.url())
        .namespace(&ns)
        .handlers([GROUP, PING_GROUP])
        .state(checker.clone())
        .block_time(Duration::from_millis(500))
        .build()
        .await
        .expect("bus");
    let running = bus.start().await.expect("start");
    bus.publish(&Ping { n: 1 })
        .await
        .expect("broadcast publish");
    // Only the bus connects to this server now: every established connection to it is the bus's.
    let mut last = Vec::new();
    wait_until(
        Duration::from_secs(10),
        "every bus connection shows a keepalive timer",
        || {
            last = connections_to(server.port());
            let ok = last.len() >= 3 && last.iter().all(|timer| *timer == 2);
            async move { ok }
        },
    )
    .await;
    println!("keepalive connections={}", last.len());
    running.shutdown().await.expect("shutdown");
}

/// The `timer_active` field of every established TCP connection to `127.0.0.1:<port>` (client
/// side), from `/proc/net/tcp`: 0 none, 1 retransmit, 2 keepalive, 4 zero-window probe.
#[cfg(target_os = "linux")]
fn connections_to(port: u16) -> Vec<u8> {
    let table = std::fs::read_to_string("/proc/net/tcp").expect("read /proc/net/tcp");
    let remote = format!("0100007F:{port:04X}");
    table
        .lines()
        .skip(1)
        .filter_map(|line| {
            let fields: Vec<&str> = line.split_whitespace().collect();
            // sl local rem st tx:rx tr:when retrnsmt ...
            if fields.len() < 6 || fields[2] != remote || fields[3] != "01" {
                return None;
            }
            let timer = fields[5].split(':').next()?;
            u8::from_str_radix(timer, 16).ok()
        })
        .collect()
}

/// Dropping the last clone of a bus stops its connection supervisor and any replacement: no
/// task keeps a connection open (or probes) after the bus is gone.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn dropping_the_bus_stops_its_supervisor() {
    init_tracing();
    let server = RedisServer::start();
    let mut admin = server.conn().await;
    let clients = |conn: &mut redis::aio::MultiplexedConnection| {
        let mut conn = conn.clone();
        async move {
            let list: String = redis::cmd("CLIENT")
                .arg("LIST")
                .query_async(&mut conn)
                .await
                .expect("CLIENT LIST");
            list.lines().count()
        }
    };
    let alone = clients(&mut admin).await;
    let bus = Bus::builder()
        .redis_url(server.url())
        .namespace(namespace("drop"))
        .handlers(Vec::<String>::new())
        .build()
        .await
        .expect("publish-only bus");
    bus.publish(&tick(1)).await.expect("publish");
    // Let the supervisor probe at least once (HELLO), so its task is surely running.
    wait_until(Duration::from_secs(10), "a probe ran", || {
        let mut conn = admin.clone();
        async move {
            let stats: String = redis::cmd("INFO")
                .arg("commandstats")
                .query_async(&mut conn)
                .await
                .expect("INFO commandstats");
            stats.contains("cmdstat_hello")
        }
    })
    .await;
    drop(bus);
    wait_until(
        Duration::from_secs(10),
        "the bus's connections closed",
        || {
            let count = clients(&mut admin);
            async move { count.await <= alone }
        },
    )
    .await;
}
