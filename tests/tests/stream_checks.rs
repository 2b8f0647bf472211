//! No silent loss from the stream itself (issue 9, item 12): entries trimmed by `MAXLEN` before a
//! handler's group read them are counted in health with a warning (once each, and never for a
//! group that kept up), and a consumer leaves its group at shutdown only when that cannot discard
//! pending entries.

use std::collections::{HashMap, HashSet};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use eventbus::BusBuilder;
use eventbus::prelude::*;
use eventbus_tests::{
    Persistence, RedisServer, acl, logs, namespace, pending_count, stream_key, wait_until,
};
use redis::aio::MultiplexedConnection;

#[derive(Debug, Clone, Serialize, Deserialize, DomainEvent)]
#[event(name = "trim.note")]
struct TrimNote {
    n: u64,
}

/// Handled notes, and a gate the gated handler waits on.
#[derive(Clone)]
struct Notes {
    handled: Arc<Mutex<Vec<u64>>>,
    gate: tokio::sync::watch::Sender<bool>,
}

impl Default for Notes {
    fn default() -> Self {
        Notes {
            handled: Arc::default(),
            gate: tokio::sync::watch::channel(false).0,
        }
    }
}

impl Notes {
    fn handled(&self) -> Vec<u64> {
        self.handled.lock().expect("lock").clone()
    }
}

const GATED: &str = "trim.gated";
const FAST: &str = "trim.fast";

/// Waits until the test opens the gate: a handler that has fallen far behind.
#[event_handler(name = "trim.gated", concurrency = 1)]
async fn gated(ev: TrimNote, notes: State<Notes>) -> anyhow::Result<()> {
    let mut gate = notes.gate.subscribe();
    gate.wait_for(|open| *open).await?;
    notes.handled.lock().expect("lock").push(ev.n);
    Ok(())
}

#[event_handler(name = "trim.fast")]
async fn fast(ev: TrimNote, notes: State<Notes>) -> anyhow::Result<()> {
    notes.handled.lock().expect("lock").push(ev.n);
    Ok(())
}

/// A server whose stream nodes hold 4 entries, so `MAXLEN ~ n` trims close to `n`.
fn server() -> RedisServer {
    RedisServer::start_with(Persistence::None, &["--stream-node-max-entries", "4"])
}

fn builder(url: &str, ns: &str, handler: &str, notes: &Notes) -> BusBuilder {
    let mut b = Bus::builder();
    b.redis_url(url)
        .namespace(ns)
        .handlers([handler])
        .batch_size(4)
        .visibility_timeout(Duration::from_secs(10))
        .claim_interval(Duration::from_millis(100))
        .block_time(Duration::from_millis(100))
        .state(notes.clone());
    b
}

/// `(entries-added, length)` of a stream and `entries-read` of one group: the entries the group
/// never read that are gone are `entries-added - length - entries-read` once the stream's first
/// entry is past the group.
async fn counters(conn: &mut MultiplexedConnection, stream: &str, group: &str) -> (u64, u64, u64) {
    let info: HashMap<String, redis::Value> = redis::cmd("XINFO")
        .arg("STREAM")
        .arg(stream)
        .query_async(conn)
        .await
        .expect("XINFO STREAM");
    let int = |v: Option<&redis::Value>| match v {
        Some(redis::Value::Int(i)) => u64::try_from(*i).expect("non-negative"),
        other => panic!("not an integer: {other:?}"),
    };
    let added = int(info.get("entries-added"));
    let length = int(info.get("length"));
    let groups: Vec<HashMap<String, redis::Value>> = redis::cmd("XINFO")
        .arg("GROUPS")
        .arg(stream)
        .query_async(conn)
        .await
        .expect("XINFO GROUPS");
    let ours = groups
        .iter()
        .find(
            |g| matches!(g.get("name"), Some(redis::Value::BulkString(n)) if n == group.as_bytes()),
        )
        .expect("the group exists");
    (added, length, int(ours.get("entries-read")))
}

/// How many trim checks (`XINFO STREAM`) the server has run.
async fn checks(conn: &mut MultiplexedConnection) -> u64 {
    acl::command_calls(conn, "xinfo|stream").await
}

/// Waits until the bus has run `n` more trim checks.
async fn more_checks(conn: &MultiplexedConnection, n: u64) {
    let start = checks(&mut conn.clone()).await;
    wait_until(Duration::from_secs(10), "more trim checks", || {
        let mut conn = conn.clone();
        async move { checks(&mut conn).await >= start + n }
    })
    .await;
}

/// A handler far behind a capped stream: the entries trimmed before it read them are counted in
/// `trimmed_unread` (exactly: handled + trimmed = published), with one warning that names the
/// handler and the stream and says to raise `max_len`; later checks add nothing.
#[tokio::test(flavor = "current_thread")]
async fn entries_trimmed_before_a_lagging_handler_read_them_are_counted_and_warned() {
    let (subscriber, captured) = logs::capture(tracing::Level::WARN);
    let _guard = tracing::subscriber::set_default(subscriber);
    let server = server();
    let mut admin = server.conn().await;
    let ns = namespace("trimmed");
    let stream = stream_key(&ns, TrimNote::NAME);
    let notes = Notes::default();
    let bus = builder(&server.url(), &ns, GATED, &notes)
        .max_len(Some(20))
        .build()
        .await
        .expect("build");
    let running = bus.start().await.expect("start");
    const PUBLISHED: u64 = 200;
    for n in 0..PUBLISHED {
        bus.publish(&TrimNote { n }).await.expect("publish");
    }
    // The handler holds its first entry; the reader holds a few more: the rest is trimmed down
    // to about 20 before the group reads it.
    let (added, length, read) = counters(&mut admin, &stream, GATED).await;
    assert_eq!(added, PUBLISHED);
    let lost = added - length - read;
    println!(
        "published {added}, left in the stream {length}, read by the group {read}: {lost} lost"
    );
    assert!(lost >= 150, "most entries were trimmed unread: {lost}");
    wait_until(
        Duration::from_secs(10),
        "trimmed_unread counts every entry trimmed unread",
        || {
            let health = running.health();
            async move { health.readers[0].trimmed_unread == lost }
        },
    )
    .await;
    let warnings = captured.find("WARN", "raise max_len");
    assert_eq!(warnings.len(), 1, "one warning: {}", captured.text());
    let fields = &warnings[0]["fields"];
    assert_eq!(fields["handler"], GATED, "{fields}");
    assert_eq!(fields["stream"], stream.as_str(), "{fields}");
    assert_eq!(fields["lost"], lost, "{fields}");
    println!("warning: {}", fields["message"]);

    // Open the gate: everything still in the stream is handled; the loss is not reported again.
    notes.gate.send_replace(true);
    wait_until(Duration::from_secs(10), "the rest handled", || {
        let handled = notes.handled().len() as u64;
        async move { handled + lost == PUBLISHED }
    })
    .await;
    more_checks(&admin, 3).await;
    let health = running.health();
    assert_eq!(health.readers[0].trimmed_unread, lost, "{health:?}");
    assert_eq!(captured.find("WARN", "raise max_len").len(), 1);
    let mut handled = notes.handled();
    handled.sort_unstable();
    handled.dedup();
    assert_eq!(
        handled.len() as u64 + lost,
        PUBLISHED,
        "each note handled once or lost"
    );
    running.shutdown().await.expect("shutdown");
}

/// A service stopped while behind (its running entry abandoned at shutdown, its prefetched ones
/// handed back) and its stream trimmed past its group while it was down: the loss is counted
/// when it starts again, exactly. (Its pending entries were trimmed too: that is
/// `lost_entries`, not this count.)
///
/// The first trim check runs when the reader starts, beside its first reads (its own pending
/// entries first, then new ones); it must see the group before the reader reads past the gap.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn entries_trimmed_while_a_service_was_down_are_counted_when_it_starts() {
    eventbus_tests::init_tracing();
    let server = server();
    let mut admin = server.conn().await;
    let ns = namespace("trimmed-down");
    let stream = stream_key(&ns, TrimNote::NAME);
    let notes = Notes::default();
    let bus = builder(&server.url(), &ns, GATED, &notes)
        .max_len(Some(20))
        .drain_timeout(Duration::from_millis(200))
        .build()
        .await
        .expect("build");
    let running = bus.start().await.expect("start");
    for n in 0..10 {
        bus.publish(&TrimNote { n }).await.expect("publish");
    }
    // The reader fills its window (1 running + 2 batches of 4), then the service stops.
    wait_until(Duration::from_secs(10), "the window filled", || {
        let mut admin = admin.clone();
        let stream = stream.clone();
        async move { pending_count(&mut admin, &stream, GATED).await == 9 }
    })
    .await;
    running.shutdown().await.expect("shutdown");
    const PUBLISHED: u64 = 110;
    for n in 10..PUBLISHED {
        bus.publish(&TrimNote { n }).await.expect("publish");
    }
    let (added, length, read) = counters(&mut admin, &stream, GATED).await;
    let lost = added - length - read;
    println!("while down: {added} published, {length} left, {read} read: {lost} lost");
    assert!(
        lost >= 60,
        "most of the 100 published while down were trimmed unread: {lost}"
    );
    // Started again, the reader takes back its 9 pending entries first (a full window).
    let running = bus.start().await.expect("start again");
    wait_until(Duration::from_secs(10), "trimmed_unread counted", || {
        let health = running.health();
        async move { health.readers[0].trimmed_unread == lost }
    })
    .await;
    notes.gate.send_replace(true);
    wait_until(Duration::from_secs(10), "what is left handled", || {
        let handled = notes.handled().len() as u64;
        async move { handled == length }
    })
    .await;
    assert_eq!(read + lost + length, PUBLISHED);
    more_checks(&admin, 2).await;
    let health = running.health();
    running.shutdown().await.expect("shutdown");
    println!("after the restart: {health:?}");
    assert_eq!(health.readers[0].trimmed_unread, lost, "{health:?}");
}

/// A handler that keeps up with a capped stream loses nothing, also when entries it already read
/// are deleted (`XDEL`) or trimmed: `trimmed_unread` stays 0 and nothing is warned.
#[tokio::test(flavor = "current_thread")]
async fn a_handler_that_keeps_up_reports_no_trimmed_entries() {
    let (subscriber, captured) = logs::capture(tracing::Level::WARN);
    let _guard = tracing::subscriber::set_default(subscriber);
    let server = server();
    let mut admin = server.conn().await;
    let ns = namespace("kept-up");
    let stream = stream_key(&ns, TrimNote::NAME);
    let notes = Notes::default();
    let bus = builder(&server.url(), &ns, FAST, &notes)
        .max_len(Some(10))
        .build()
        .await
        .expect("build");
    let running = bus.start().await.expect("start");
    let mut n = 0;
    for round in 0..12 {
        for _ in 0..8 {
            bus.publish(&TrimNote { n }).await.expect("publish");
            n += 1;
        }
        let expected = n as usize;
        wait_until(Duration::from_secs(10), "the round handled", || {
            let handled = notes.handled().len();
            async move { handled == expected }
        })
        .await;
        if round % 4 == 3 {
            // Delete some entries the group has read (and acked).
            let ids = eventbus_tests::stream_ids(&mut admin, &stream).await;
            let _: i64 = redis::cmd("XDEL")
                .arg(&stream)
                .arg(&ids[..ids.len() / 2])
                .query_async(&mut admin)
                .await
                .expect("XDEL");
        }
        more_checks(&admin, 1).await;
    }
    let (added, length, _) = counters(&mut admin, &stream, FAST).await;
    assert!(
        added - length >= 80,
        "the stream was trimmed: {added} added, {length} left"
    );
    more_checks(&admin, 3).await;
    let health = running.health();
    running.shutdown().await.expect("shutdown");
    assert_eq!(health.readers[0].trimmed_unread, 0, "{health:?}");
    assert!(
        captured.find("WARN", "trimmed").is_empty(),
        "{}",
        captured.text()
    );
}

#[derive(Debug, Clone, Serialize, Deserialize, DomainEvent)]
#[event(name = "leave.job")]
struct Job {
    n: u64,
}

#[derive(Clone, Default)]
struct Jobs {
    handled: Arc<Mutex<HashSet<u64>>>,
}

const JOBS: &str = "leave.jobs";

#[event_handler(name = "leave.jobs")]
async fn jobs(ev: Job, jobs: State<Jobs>) -> anyhow::Result<()> {
    jobs.handled.lock().expect("lock").insert(ev.n);
    Ok(())
}

fn jobs_bus(url: &str, ns: &str, consumer: &str, jobs: &Jobs) -> BusBuilder {
    let mut b = Bus::builder();
    b.redis_url(url)
        .namespace(ns)
        .consumer(consumer)
        .handlers([JOBS])
        .visibility_timeout(Duration::from_secs(30))
        .claim_interval(Duration::from_secs(10))
        .block_time(Duration::from_millis(50))
        .drain_timeout(Duration::from_secs(5))
        .state(jobs.clone());
    b
}

/// The consumers of a group, with their pending counts.
async fn consumers(conn: &mut MultiplexedConnection, stream: &str) -> HashMap<String, u64> {
    let reply: redis::streams::StreamInfoConsumersReply = redis::cmd("XINFO")
        .arg("CONSUMERS")
        .arg(stream)
        .arg(JOBS)
        .query_async(conn)
        .await
        .expect("XINFO CONSUMERS");
    reply
        .consumers
        .into_iter()
        .map(|c| (c.name, c.pending as u64))
        .collect()
}

/// At shutdown, a consumer with nothing pending leaves its group; one that still has a pending
/// entry (here read under its name by another process) stays, and the entry can be claimed.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_consumer_leaves_its_group_only_with_nothing_pending() {
    eventbus_tests::init_tracing();
    let server = RedisServer::start();
    let mut admin = server.conn().await;
    let ns = namespace("leave");
    let stream = stream_key(&ns, Job::NAME);
    let jobs = Jobs::default();

    let clean = jobs_bus(&server.url(), &ns, "clean", &jobs)
        .build()
        .await
        .expect("build");
    let running = clean.start().await.expect("start");
    clean.publish(&Job { n: 1 }).await.expect("publish");
    wait_until(Duration::from_secs(10), "handled", || {
        let done = jobs.handled.lock().expect("lock").contains(&1);
        async move { done }
    })
    .await;
    assert!(consumers(&mut admin, &stream).await.contains_key("clean"));
    running.shutdown().await.expect("shutdown");
    assert!(
        !consumers(&mut admin, &stream).await.contains_key("clean"),
        "a clean consumer leaves its group"
    );

    let shared = jobs_bus(&server.url(), &ns, "shared", &jobs)
        .build()
        .await
        .expect("build");
    let running = shared.start().await.expect("start");
    shared.publish(&Job { n: 2 }).await.expect("publish");
    wait_until(Duration::from_secs(10), "handled", || {
        let done = jobs.handled.lock().expect("lock").contains(&2);
        async move { done }
    })
    .await;
    // Another process under the same consumer name takes an entry and has not acked it yet.
    // One transaction, so this bus's blocked reader cannot take the entry first.
    let envelope = serde_json::json!({
        "specversion": "1.0", "id": "other", "type": Job::NAME, "source": "/test", "data": {"n": 3}
    })
    .to_string();
    let (id, _): (String, redis::Value) = redis::pipe()
        .atomic()
        .cmd("XADD")
        .arg(&stream)
        .arg("*")
        .arg("envelope")
        .arg(envelope)
        .cmd("XREADGROUP")
        .arg("GROUP")
        .arg(JOBS)
        .arg("shared")
        .arg("STREAMS")
        .arg(&stream)
        .arg(">")
        .query_async(&mut admin)
        .await
        .expect("XADD + XREADGROUP");
    assert_eq!(pending_count(&mut admin, &stream, JOBS).await, 1);
    running.shutdown().await.expect("shutdown");
    let after = consumers(&mut admin, &stream).await;
    assert_eq!(
        after.get("shared"),
        Some(&1),
        "the consumer with a pending entry stays: {after:?}"
    );
    let claimed: Vec<String> = redis::cmd("XCLAIM")
        .arg(&stream)
        .arg(JOBS)
        .arg("rescuer")
        .arg(0)
        .arg(&id)
        .arg("JUSTID")
        .query_async(&mut admin)
        .await
        .expect("XCLAIM");
    assert_eq!(claimed, [id], "the entry is still claimable");
    assert!(!jobs.handled.lock().expect("lock").contains(&3));
}

/// Two processes under one consumer name (a restart that overlaps the old process's shutdown):
/// while one keeps reading and acking, the other starts and stops again and again. Leaving the
/// group never discards an entry the reading process holds: every entry it read is still pending
/// when it acks it (`XACK` returns 1), unless the stopping bus handled it itself.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn leaving_the_group_never_discards_entries_of_a_process_with_the_same_name() {
    eventbus_tests::init_tracing();
    let server = RedisServer::start();
    let mut admin = server.conn().await;
    let ns = namespace("leave-race");
    let stream = stream_key(&ns, Job::NAME);
    let jobs = Jobs::default();
    let publisher = Bus::builder()
        .redis_url(server.url())
        .namespace(&ns)
        .handlers(Vec::<String>::new())
        .build()
        .await
        .expect("publisher");
    let _: () = redis::cmd("XGROUP")
        .arg("CREATE")
        .arg(&stream)
        .arg(JOBS)
        .arg("0")
        .arg("MKSTREAM")
        .query_async(&mut admin)
        .await
        .expect("XGROUP CREATE");

    // The other process: publish one job, read one under the shared name, ack it.
    let stop = Arc::new(AtomicBool::new(false));
    let other = tokio::spawn({
        let stop = stop.clone();
        let stream = stream.clone();
        let mut conn = server.conn().await;
        async move {
            let mut acked: Vec<(u64, i64)> = Vec::new();
            let mut n = 1000;
            while !stop.load(Ordering::Relaxed) {
                publisher.publish(&Job { n }).await.expect("publish");
                n += 1;
                let reply: redis::streams::StreamReadReply = redis::cmd("XREADGROUP")
                    .arg("GROUP")
                    .arg(JOBS)
                    .arg("shared")
                    .arg("COUNT")
                    .arg(1)
                    .arg("STREAMS")
                    .arg(&stream)
                    .arg(">")
                    .query_async(&mut conn)
                    .await
                    .expect("XREADGROUP");
                for entry in reply.keys.into_iter().flat_map(|k| k.ids) {
                    let envelope: String = entry.get("envelope").expect("envelope");
                    let envelope: serde_json::Value =
                        serde_json::from_str(&envelope).expect("json");
                    let job = envelope["data"]["n"].as_u64().expect("n");
                    let r: i64 = redis::cmd("XACK")
                        .arg(&stream)
                        .arg(JOBS)
                        .arg(&entry.id)
                        .query_async(&mut conn)
                        .await
                        .expect("XACK");
                    acked.push((job, r));
                }
            }
            acked
        }
    });

    const ROUNDS: usize = 30;
    for _ in 0..ROUNDS {
        let bus = jobs_bus(&server.url(), &ns, "shared", &jobs)
            .build()
            .await
            .expect("build");
        let running = bus.start().await.expect("start");
        running.shutdown().await.expect("shutdown");
    }
    stop.store(true, Ordering::Relaxed);
    let acked = tokio::time::timeout(Duration::from_secs(10), other)
        .await
        .expect("the other process stops")
        .expect("the other process");
    let handled = jobs.handled.lock().expect("lock").clone();
    let discarded: Vec<u64> = acked
        .iter()
        .filter(|(job, r)| *r == 0 && !handled.contains(job))
        .map(|(job, _)| *job)
        .collect();
    let removed = acl::command_calls(&mut admin, "xgroup|delconsumer").await;
    println!(
        "{ROUNDS} shutdowns beside a reader under the same name: {} entries read and acked by it, {} handled by the stopping buses, DELCONSUMER ran {removed} times, {} entries discarded",
        acked.len(),
        handled.len(),
        discarded.len()
    );
    assert!(removed > 0, "the consumer left its group at least once");
    assert!(
        discarded.is_empty(),
        "entries discarded by DELCONSUMER: {discarded:?}"
    );
}
