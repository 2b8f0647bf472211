//! Exactly one dead letter, atomic and never-silent replay, and list/purge confined to their
//! namespace (issue 9, items 8, 9 and 11).
//!
//! - The dead letter and the ack are one server-side step that runs only while the entry is
//!   pending for the group: a dead-letter key of the wrong type leaves the original pending; a
//!   write retried after its reply was lost, or two consumers exhausting one entry, leave one
//!   letter.
//! - One of several concurrent replays wins; a broadcast replay nobody hears, or a durable replay
//!   to a handler without a group, keeps the letter and says so.
//! - `list`/`purge` see only their own namespace's dead-letter keys.

use std::collections::HashMap;
use std::io::{Read, Write};
use std::net::{Shutdown, TcpListener, TcpStream};
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use eventbus::prelude::*;
use eventbus::{Error, RunningBus};
use eventbus_tests::{
    RedisServer, acl, dlq_key, init_tracing, last_delivered_id, namespace, pending_count,
    stream_ids, stream_key, wait_until,
};
use redis::AsyncCommands;
use redis::aio::MultiplexedConnection;

// ---------------------------------------------------------------------------------------------
// Events and handlers of this file (each test selects its own with `.handlers([...])`).

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, DomainEvent)]
#[event(name = "atomic.charge")]
struct Charge {
    cents: u64,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, DomainEvent)]
#[event(name = "atomic.ping", broadcast)]
struct Ping {
    n: u64,
}

/// Runs of a handler, and a gate each run waits at before failing.
#[derive(Clone)]
struct Gate {
    started: Arc<Mutex<Vec<u64>>>,
    finished: Arc<AtomicUsize>,
    open: Arc<tokio::sync::Semaphore>,
}

impl Gate {
    fn new(open: bool) -> Gate {
        Gate {
            started: Arc::default(),
            finished: Arc::default(),
            open: Arc::new(tokio::sync::Semaphore::new(if open {
                tokio::sync::Semaphore::MAX_PERMITS
            } else {
                0
            })),
        }
    }
    fn started(&self) -> Vec<u64> {
        self.started.lock().expect("lock").clone()
    }
}

const GATED: &str = "atomic.gated";

#[event_handler(name = "atomic.gated", retries = 0)]
async fn gated(ev: Charge, gate: State<Gate>) -> anyhow::Result<()> {
    gate.started.lock().expect("lock").push(ev.cents);
    let _pass = gate.open.acquire().await?;
    gate.finished.fetch_add(1, Ordering::SeqCst);
    anyhow::bail!("card declined for {} cents", ev.cents)
}

/// Fails while `broken`; records the event ids it handled.
#[derive(Clone, Default)]
struct Fixable {
    broken: Arc<AtomicBool>,
    handled: Arc<Mutex<Vec<EventId>>>,
}

impl Fixable {
    fn broken() -> Fixable {
        let f = Fixable::default();
        f.broken.store(true, Ordering::SeqCst);
        f
    }
    fn handled(&self) -> Vec<EventId> {
        self.handled.lock().expect("lock").clone()
    }
}

const FIXABLE: &str = "atomic.fixable";

#[event_handler(name = "atomic.fixable", retries = 0)]
async fn fixable(ev: Charge, ctx: Context, state: State<Fixable>) -> anyhow::Result<()> {
    if state.broken.load(Ordering::SeqCst) {
        anyhow::bail!("ledger offline for {} cents", ev.cents);
    }
    state.handled.lock().expect("lock").push(ctx.event_id());
    Ok(())
}

/// The broadcast twin of [`Fixable`]'s handler.
#[derive(Clone, Default)]
struct PingState(Fixable);

const PING: &str = "atomic.ping_listener";

#[event_handler(name = "atomic.ping_listener", retries = 0)]
async fn ping_listener(ev: Ping, ctx: Context, state: State<PingState>) -> anyhow::Result<()> {
    let PingState(state) = &*state;
    if state.broken.load(Ordering::SeqCst) {
        anyhow::bail!("ping {} not understood", ev.n);
    }
    state.handled.lock().expect("lock").push(ctx.event_id());
    Ok(())
}

// ---------------------------------------------------------------------------------------------
// Helpers.

fn builder(url: &str, ns: &str) -> eventbus::BusBuilder {
    let mut b = Bus::builder();
    b.redis_url(url)
        .namespace(ns)
        .block_time(Duration::from_millis(200))
        .visibility_timeout(Duration::from_secs(30))
        .drain_timeout(Duration::from_secs(10));
    b
}

async fn xlen(conn: &mut MultiplexedConnection, key: &str) -> usize {
    conn.xlen(key).await.expect("XLEN")
}

/// The raw fields of every entry of a dead-letter stream.
async fn raw_letters(conn: &mut MultiplexedConnection, key: &str) -> Vec<HashMap<String, String>> {
    let reply: redis::streams::StreamRangeReply = conn.xrange_all(key).await.expect("XRANGE");
    reply
        .ids
        .into_iter()
        .map(|e| {
            e.map
                .into_iter()
                .map(|(k, v)| {
                    let v: String = redis::from_redis_value(v).expect("text field");
                    (k, v)
                })
                .collect()
        })
        .collect()
}

async fn attempts_fields(conn: &mut MultiplexedConnection, ns: &str) -> usize {
    conn.hlen(format!("{ns}:{{{}}}:attempts", Charge::NAME))
        .await
        .expect("HLEN")
}

/// Waits until `n` dead letters of `Charge` exist and nothing is pending for `group`.
async fn wait_settled(admin: &MultiplexedConnection, ns: &str, group: &str, n: usize) {
    let (stream, dlq) = (stream_key(ns, Charge::NAME), dlq_key(ns, Charge::NAME));
    wait_until(
        Duration::from_secs(15),
        &format!("{n} dead letter(s) and nothing pending"),
        || {
            let (mut admin, stream, dlq) = (admin.clone(), stream.clone(), dlq.clone());
            async move {
                xlen(&mut admin, &dlq).await >= n
                    && pending_count(&mut admin, &stream, group).await == 0
            }
        },
    )
    .await;
}

async fn shutdown(running: RunningBus) {
    tokio::time::timeout(Duration::from_secs(30), running.shutdown())
        .await
        .expect("shutdown finishes")
        .expect("shutdown");
}

// ---------------------------------------------------------------------------------------------
// Item 8: exactly one dead letter.

/// The dead-letter key holds a string (`WRONGTYPE` at run time, which `MULTI`/`EXEC` would not
/// stop before its `XACK`): the original stays pending, nothing is acked; once the key is
/// deleted, exactly one letter lands and nothing is pending.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn wrong_type_dead_letter_key_keeps_the_original_pending_until_fixed() {
    init_tracing();
    let server = RedisServer::start();
    let ns = namespace("dlq-wrongtype");
    let (stream, dlq) = (stream_key(&ns, Charge::NAME), dlq_key(&ns, Charge::NAME));
    let mut admin = server.conn().await;
    let _: () = admin.set(&dlq, "not a stream").await.expect("SET");
    let gate = Gate::new(true);
    let bus = builder(&server.url(), &ns)
        .handlers([GATED])
        .state(gate.clone())
        .build()
        .await
        .expect("build");
    let running = bus.start().await.expect("start");
    bus.publish(&Charge { cents: 42 }).await.expect("publish");

    let before = acl::error_count(&mut admin, "WRONGTYPE").await;
    wait_until(
        Duration::from_secs(15),
        "the dead-letter write failed 3 times with WRONGTYPE",
        || {
            let mut admin = admin.clone();
            async move { acl::error_count(&mut admin, "WRONGTYPE").await >= before + 3 }
        },
    )
    .await;
    assert_eq!(
        pending_count(&mut admin, &stream, GATED).await,
        1,
        "the original stays pending: the failed dead-letter write acked nothing"
    );
    let kept: String = admin.get(&dlq).await.expect("GET");
    assert_eq!(kept, "not a stream", "nothing was written to the key");
    assert_eq!(gate.started(), [42], "the handler ran once");
    let health = running.health();
    println!("while failing: {health:?}");

    let _: () = admin.del(&dlq).await.expect("DEL");
    wait_settled(&admin, &ns, GATED, 1).await;
    shutdown(running).await;

    let letters = raw_letters(&mut admin, &dlq).await;
    assert_eq!(letters.len(), 1, "exactly one dead letter: {letters:#?}");
    assert!(
        letters[0]["error"].contains("card declined for 42 cents"),
        "{:?}",
        letters[0]
    );
    assert_eq!(letters[0]["delivery"], "durable");
    assert_eq!(
        letters[0]["stream_id"],
        stream_ids(&mut admin, &stream).await[0]
    );
    assert_eq!(gate.started(), [42], "the handler never ran again");
    assert_eq!(attempts_fields(&mut admin, &ns).await, 0);
}

/// A TCP proxy between the bus and Redis that can lose the reply of one command: once a
/// client-to-server chunk contains `needle`, the server's replies on that connection are
/// dropped (the command still runs), until [`LossyProxy::cut`] closes the connection.
struct LossyProxy {
    port: u16,
    state: Arc<ProxyState>,
}

#[derive(Default)]
struct ProxyState {
    needle: Mutex<Option<Vec<u8>>>,
    /// How many client-to-server chunks contained the needle, armed or not.
    hits: AtomicUsize,
    /// The client socket of every connection that lost its replies.
    lossy: Mutex<Vec<TcpStream>>,
    /// Every socket of every connection, closed when the proxy is dropped.
    sockets: Mutex<Vec<TcpStream>>,
    watch: Mutex<Vec<u8>>,
}

impl LossyProxy {
    fn start(upstream_port: u16) -> LossyProxy {
        let listener = TcpListener::bind("127.0.0.1:0").expect("bind the proxy");
        let port = listener.local_addr().expect("proxy address").port();
        let state = Arc::new(ProxyState::default());
        let accept_state = state.clone();
        std::thread::spawn(move || {
            for client in listener.incoming() {
                let Ok(client) = client else { return };
                let Ok(server) = TcpStream::connect(("127.0.0.1", upstream_port)) else {
                    continue;
                };
                let _ = client.set_nodelay(true);
                let _ = server.set_nodelay(true);
                let lost = Arc::new(AtomicBool::new(false));
                if let (Ok(c), Ok(s)) = (client.try_clone(), server.try_clone()) {
                    accept_state.sockets.lock().expect("lock").extend([c, s]);
                }
                let (Ok(c_read), Ok(s_write), Ok(s_read), Ok(c_write), Ok(c_keep)) = (
                    client.try_clone(),
                    server.try_clone(),
                    server.try_clone(),
                    client.try_clone(),
                    client.try_clone(),
                ) else {
                    continue;
                };
                let (up_state, up_lost) = (accept_state.clone(), lost.clone());
                std::thread::spawn(move || {
                    up_state.client_to_server(c_read, s_write, c_keep, &up_lost);
                });
                std::thread::spawn(move || server_to_client(s_read, c_write, &lost));
            }
        });
        LossyProxy { port, state }
    }

    fn url(&self) -> String {
        format!("redis://127.0.0.1:{}", self.port)
    }

    /// Loses the replies of the next command that contains `needle`.
    fn arm(&self, needle: &str) {
        *self.state.needle.lock().expect("lock") = Some(needle.as_bytes().to_vec());
        *self.state.watch.lock().expect("lock") = needle.as_bytes().to_vec();
    }

    fn hits(&self) -> usize {
        self.state.hits.load(Ordering::SeqCst)
    }

    /// Closes every connection that lost replies: the client sees its request fail.
    fn cut(&self) -> usize {
        let lossy = std::mem::take(&mut *self.state.lossy.lock().expect("lock"));
        for socket in &lossy {
            let _ = socket.shutdown(Shutdown::Both);
        }
        lossy.len()
    }
}

impl Drop for LossyProxy {
    fn drop(&mut self) {
        for socket in self.state.sockets.lock().expect("lock").iter() {
            let _ = socket.shutdown(Shutdown::Both);
        }
    }
}

impl ProxyState {
    fn client_to_server(
        &self,
        mut from: TcpStream,
        mut to: TcpStream,
        client: TcpStream,
        lost: &AtomicBool,
    ) {
        let mut buf = vec![0u8; 64 * 1024];
        loop {
            let n = match from.read(&mut buf) {
                Ok(0) | Err(_) => break,
                Ok(n) => n,
            };
            let chunk = &buf[..n];
            let watch = self.watch.lock().expect("lock").clone();
            if !watch.is_empty() && chunk.windows(watch.len()).any(|w| w == watch.as_slice()) {
                self.hits.fetch_add(1, Ordering::SeqCst);
                // One shot: the connection that sends it next loses its replies.
                if self.needle.lock().expect("lock").take().is_some() {
                    lost.store(true, Ordering::SeqCst);
                    if let Ok(c) = client.try_clone() {
                        self.lossy.lock().expect("lock").push(c);
                    }
                }
            }
            if to.write_all(chunk).is_err() {
                break;
            }
        }
        let _ = to.shutdown(Shutdown::Both);
        let _ = client.shutdown(Shutdown::Both);
    }
}

fn server_to_client(mut from: TcpStream, mut to: TcpStream, lost: &AtomicBool) {
    let mut buf = vec![0u8; 64 * 1024];
    loop {
        let n = match from.read(&mut buf) {
            Ok(0) | Err(_) => break,
            Ok(n) => n,
        };
        if lost.load(Ordering::SeqCst) {
            continue; // the reply is lost on the way
        }
        if to.write_all(&buf[..n]).is_err() {
            break;
        }
    }
    let _ = to.shutdown(Shutdown::Both);
    let _ = from.shutdown(Shutdown::Both);
}

/// The dead-letter write runs on the server but its reply never arrives (the connection dies
/// first): the bus retries the write, and the retry must not write a second letter.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_dead_letter_write_retried_after_its_reply_was_lost_leaves_one_letter() {
    init_tracing();
    let server = RedisServer::start();
    let proxy = LossyProxy::start(server.port());
    let ns = namespace("dlq-lost-reply");
    let (stream, dlq) = (stream_key(&ns, Charge::NAME), dlq_key(&ns, Charge::NAME));
    let mut admin = server.conn().await;
    let gate = Gate::new(true);
    let bus = builder(&proxy.url(), &ns)
        .handlers([GATED])
        .state(gate.clone())
        .build()
        .await
        .expect("build");
    let running = bus.start().await.expect("start");
    // A first dead letter goes through untouched (and leaves the script cached on the server).
    bus.publish(&Charge { cents: 1 }).await.expect("publish");
    wait_settled(&admin, &ns, GATED, 1).await;

    // The next command naming the dead-letter key loses its reply.
    proxy.arm(&dlq);
    let hits_before = proxy.hits();
    bus.publish(&Charge { cents: 2 }).await.expect("publish");
    wait_settled(&admin, &ns, GATED, 2).await;
    assert_eq!(proxy.cut(), 1, "one connection lost the reply of the write");
    // The bus sees its write fail and tries again on a new connection.
    wait_until(
        Duration::from_secs(15),
        "the dead-letter write was retried",
        || {
            let hits = proxy.hits();
            async move { hits >= hits_before + 2 }
        },
    )
    .await;
    shutdown(running).await;

    let letters = raw_letters(&mut admin, &dlq).await;
    let cents: Vec<&str> = letters.iter().map(|l| l["error"].as_str()).collect();
    assert_eq!(
        letters.len(),
        2,
        "one letter per event, none written twice: {cents:?}"
    );
    assert!(letters[1]["error"].contains("card declined for 2 cents"));
    assert_eq!(pending_count(&mut admin, &stream, GATED).await, 0);
    assert_eq!(gate.started(), [1, 2], "each event ran once");
}

/// Two consumers of one group exhaust the same entry: the first one's run is still failing
/// when the second one takes the entry over and fails it too. One dead letter.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn two_consumers_exhausting_the_same_entry_write_one_letter() {
    init_tracing();
    let server = RedisServer::start();
    let ns = namespace("dlq-two-consumers");
    let (stream, dlq) = (stream_key(&ns, Charge::NAME), dlq_key(&ns, Charge::NAME));
    let mut admin = server.conn().await;
    let (gate_a, gate_b) = (Gate::new(false), Gate::new(true));
    // A claims only once, at start: it does not take the entry back from B.
    let bus_a = builder(&server.url(), &ns)
        .consumer("a")
        .claim_interval(Duration::from_secs(3600))
        .handlers([GATED])
        .state(gate_a.clone())
        .build()
        .await
        .expect("build a");
    let running_a = bus_a.start().await.expect("start a");
    bus_a.publish(&Charge { cents: 7 }).await.expect("publish");
    wait_until(Duration::from_secs(10), "A is running the entry", || {
        let gate = gate_a.clone();
        async move { gate.started() == [7] }
    })
    .await;
    let entry = stream_ids(&mut admin, &stream).await.remove(0);
    // A looks dead to the group: its entry is handed to B, idle for an hour, without a
    // delivery-count bump. A's run goes on (a stalled consumer that comes back).
    let _: Vec<String> = redis::cmd("XCLAIM")
        .arg(&stream)
        .arg(GATED)
        .arg("b")
        .arg(0)
        .arg(&entry)
        .arg("IDLE")
        .arg(3_600_000)
        .arg("JUSTID")
        .query_async(&mut admin)
        .await
        .expect("XCLAIM");
    let bus_b = builder(&server.url(), &ns)
        .consumer("b")
        .claim_interval(Duration::from_millis(200))
        .handlers([GATED])
        .state(gate_b.clone())
        .build()
        .await
        .expect("build b");
    let running_b = bus_b.start().await.expect("start b");
    // B gives up on the entry first.
    wait_settled(&admin, &ns, GATED, 1).await;
    // Then A's run fails too, and A tries to dead-letter the same entry.
    gate_a.open.add_permits(1);
    wait_until(Duration::from_secs(10), "A's run failed", || {
        let gate = gate_a.clone();
        async move { gate.finished.load(Ordering::SeqCst) == 1 }
    })
    .await;
    // Shutdown waits for A's run, dead-letter write included.
    shutdown(running_a).await;
    shutdown(running_b).await;

    let letters = raw_letters(&mut admin, &dlq).await;
    assert_eq!(letters.len(), 1, "exactly one dead letter: {letters:#?}");
    assert_eq!(letters[0]["stream_id"], entry);
    assert_eq!(pending_count(&mut admin, &stream, GATED).await, 0);
    assert_eq!(attempts_fields(&mut admin, &ns).await, 0);
}

// ---------------------------------------------------------------------------------------------
// Item 9: replay is atomic and never silent.

/// Dead-letters one `Charge` with the `fixable` handler (broken), and returns the bus, its
/// running instance, the handler state and the letter's id.
async fn dead_letter_one(url: &str, ns: &str) -> (Bus, RunningBus, Fixable, String) {
    let state = Fixable::broken();
    let bus = builder(url, ns)
        .handlers([FIXABLE])
        .state(state.clone())
        .build()
        .await
        .expect("build");
    let running = bus.start().await.expect("start");
    bus.publish(&Charge { cents: 99 }).await.expect("publish");
    wait_until(Duration::from_secs(15), "one dead letter", || {
        let bus = bus.clone();
        async move { bus.dlq().list(10).await.expect("list").len() == 1 }
    })
    .await;
    let id = bus.dlq().list(10).await.expect("list").remove(0).id;
    (bus, running, state, id)
}

/// Eight replays of one letter at once: one wins, the others are told the letter is gone, and
/// the handler runs once.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn concurrent_replays_of_one_letter_redeliver_it_once() {
    init_tracing();
    let server = RedisServer::start();
    let ns = namespace("dlq-replay-race");
    let stream = stream_key(&ns, Charge::NAME);
    let mut admin = server.conn().await;
    let (bus, running, state, id) = dead_letter_one(&server.url(), &ns).await;
    state.broken.store(false, Ordering::SeqCst);

    let replays: Vec<_> = (0..8)
        .map(|_| {
            let (bus, id) = (bus.clone(), id.clone());
            tokio::spawn(async move { bus.dlq().replay(&id).await })
        })
        .collect();
    let mut ok = 0;
    let mut gone = 0;
    for replay in replays {
        match tokio::time::timeout(Duration::from_secs(15), replay)
            .await
            .expect("replay finishes")
            .expect("replay task")
        {
            Ok(()) => ok += 1,
            Err(Error::DeadLetterNotFound(_)) => gone += 1,
            Err(other) => panic!("unexpected replay error: {other:?}"),
        }
    }
    assert_eq!(
        (ok, gone),
        (1, 7),
        "one replay wins, the others find no letter"
    );

    let entries = stream_ids(&mut admin, &stream).await;
    assert_eq!(entries.len(), 2, "the original and one replayed entry");
    let last = entries[1].clone();
    wait_until(
        Duration::from_secs(10),
        "the replayed entry is read and acked",
        || {
            let (mut admin, stream, last) = (admin.clone(), stream.clone(), last.clone());
            async move {
                last_delivered_id(&mut admin, &stream, FIXABLE)
                    .await
                    .as_deref()
                    == Some(last.as_str())
                    && pending_count(&mut admin, &stream, FIXABLE).await == 0
            }
        },
    )
    .await;
    shutdown(running).await;
    assert_eq!(
        state.handled().len(),
        1,
        "handled once: {:?}",
        state.handled()
    );
    assert!(bus.dlq().list(10).await.expect("list").is_empty());
}

/// A durable replay to a handler with no consumer group on the stream (or no stream at all) is
/// refused with a clear error; the letter is kept and nothing is added to the stream.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn replay_to_a_handler_without_a_group_is_refused_and_the_letter_kept() {
    init_tracing();
    let server = RedisServer::start();
    let ns = namespace("dlq-replay-nogroup");
    let stream = stream_key(&ns, Charge::NAME);
    let mut admin = server.conn().await;
    let (bus, running, _state, id) = dead_letter_one(&server.url(), &ns).await;
    shutdown(running).await;
    let _: i64 = redis::cmd("XGROUP")
        .arg("DESTROY")
        .arg(&stream)
        .arg(FIXABLE)
        .query_async(&mut admin)
        .await
        .expect("XGROUP DESTROY");

    let err = bus.dlq().replay(&id).await.expect_err("no group: refused");
    println!("no group: {err}");
    assert!(matches!(err, Error::Replay { .. }), "{err:?}");
    let text = err.to_string();
    assert!(
        text.contains(FIXABLE)
            && text.contains("no consumer group")
            && text.contains("replay again"),
        "the error names the handler and what to do: {text}"
    );
    assert_eq!(
        stream_ids(&mut admin, &stream).await.len(),
        1,
        "nothing added"
    );
    let kept = bus.dlq().list(10).await.expect("list");
    assert_eq!(kept.len(), 1, "the letter is kept");
    assert_eq!(kept[0].id, id);

    let _: () = admin.del(&stream).await.expect("DEL");
    let err = bus.dlq().replay(&id).await.expect_err("no stream: refused");
    println!("no stream: {err}");
    assert!(matches!(err, Error::Replay { .. }), "{err:?}");
    assert!(err.to_string().contains("does not exist"), "{err}");
    let exists: i64 = admin.exists(&stream).await.expect("EXISTS");
    assert_eq!(exists, 0, "the stream is not created");
    assert_eq!(bus.dlq().list(10).await.expect("list").len(), 1, "kept");
}

/// A broadcast replay nobody hears keeps the letter and fails; with a subscriber it is
/// delivered and the letter is removed. Of concurrent replays, one publishes.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn broadcast_replay_without_a_subscriber_fails_and_keeps_the_letter() {
    init_tracing();
    let server = RedisServer::start();
    let ns = namespace("dlq-replay-broadcast");
    let state = PingState(Fixable::broken());
    let bus = builder(&server.url(), &ns)
        .handlers([PING])
        .state(state.clone())
        .build()
        .await
        .expect("build");
    let running = bus.start().await.expect("start");
    let event = bus.publish(&Ping { n: 5 }).await.expect("publish");
    wait_until(Duration::from_secs(15), "one dead letter", || {
        let bus = bus.clone();
        async move { bus.dlq().list(10).await.expect("list").len() == 1 }
    })
    .await;
    let id = bus.dlq().list(10).await.expect("list").remove(0).id;
    shutdown(running).await;

    // Nobody subscribed: refused, kept.
    let err = bus.dlq().replay(&id).await.expect_err("no subscriber");
    println!("no subscriber: {err}");
    assert!(matches!(err, Error::Replay { .. }), "{err:?}");
    assert!(
        err.to_string().contains("no subscriber") && err.to_string().contains("replay again"),
        "{err}"
    );
    assert_eq!(bus.dlq().list(10).await.expect("list").len(), 1, "kept");

    // A fixed service is listening: delivered once, removed.
    state.0.broken.store(false, Ordering::SeqCst);
    let listener = builder(&server.url(), &ns)
        .handlers([PING])
        .state(state.clone())
        .build()
        .await
        .expect("build");
    let running = listener.start().await.expect("start");
    wait_until(Duration::from_secs(10), "subscribed", || {
        let connected = running
            .health()
            .readers
            .iter()
            .any(|r| r.handler == PING && r.connected);
        async move { connected }
    })
    .await;
    let replays: Vec<_> = (0..4)
        .map(|_| {
            let (bus, id) = (bus.clone(), id.clone());
            tokio::spawn(async move { bus.dlq().replay(&id).await })
        })
        .collect();
    let mut ok = 0;
    for replay in replays {
        match tokio::time::timeout(Duration::from_secs(15), replay)
            .await
            .expect("replay finishes")
            .expect("replay task")
        {
            Ok(()) => ok += 1,
            Err(Error::DeadLetterNotFound(_)) => {}
            Err(other) => panic!("unexpected replay error: {other:?}"),
        }
    }
    assert_eq!(ok, 1, "one replay publishes");
    wait_until(Duration::from_secs(10), "the replay is handled", || {
        let handled = state.0.handled();
        async move { !handled.is_empty() }
    })
    .await;
    // A marker published after the replays: once handled, every earlier message was too.
    let marker = bus.publish(&Ping { n: 6 }).await.expect("publish");
    wait_until(Duration::from_secs(10), "the marker is handled", || {
        let (handled, marker) = (state.0.handled(), marker.clone());
        async move { handled.contains(&marker) }
    })
    .await;
    shutdown(running).await;
    assert_eq!(state.0.handled(), [event, marker], "the replay ran once");
    assert!(
        bus.dlq().list(10).await.expect("list").is_empty(),
        "removed"
    );
}

// ---------------------------------------------------------------------------------------------
// Item 11: list and purge touch only their namespace.

async fn xadd_letter(conn: &mut MultiplexedConnection, key: &str, handler: &str) {
    let _: String = redis::cmd("XADD")
        .arg(key)
        .arg("*")
        .arg("event_id")
        .arg("e-1")
        .arg("event_name")
        .arg(Charge::NAME)
        .arg("handler")
        .arg(handler)
        .arg("error")
        .arg("boom")
        .arg("attempts")
        .arg(1)
        .arg("failed_at")
        .arg("2026-01-01T00:00:00.000Z")
        .arg("stream_id")
        .arg("1-0")
        .arg("delivery")
        .arg("durable")
        .arg("envelope")
        .arg("{}")
        .query_async(conn)
        .await
        .expect("XADD");
}

/// `list` and `purge` of one namespace leave every other key alone: another namespace whose
/// keys match the namespace's `SCAN` pattern when `\` is not escaped (`a\b` vs `ab`), and keys
/// under the namespace that are not dead-letter keys of an event (`<ns>:{a}:{b}:dlq`).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn list_and_purge_touch_only_their_own_namespace() {
    init_tracing();
    let server = RedisServer::start();
    let mut admin = server.conn().await;
    let base = namespace("dlq-glob");
    let glob_ns = format!(r"{base}-a\b");
    let other_ns = format!("{base}-ab");
    let plain_ns = format!("{base}-plain");
    let other_key = dlq_key(&other_ns, Charge::NAME);
    xadd_letter(&mut admin, &other_key, "theirs").await;

    // A namespace with `\`, if the builder accepts it (names may forbid it).
    match builder(&server.url(), &glob_ns)
        .handlers(Vec::<String>::new())
        .build()
        .await
    {
        Ok(bus) => {
            let own_key = dlq_key(&glob_ns, Charge::NAME);
            xadd_letter(&mut admin, &own_key, "mine").await;
            let listed = bus.dlq().list(100).await.expect("list");
            let handlers: Vec<&str> = listed.iter().map(|l| l.handler.as_str()).collect();
            assert_eq!(handlers, ["mine"], "only this namespace's letters");
            assert_eq!(bus.dlq().purge().await.expect("purge"), 1);
            assert_eq!(xlen(&mut admin, &own_key).await, 0, "own letters purged");
        }
        Err(err) => {
            println!("namespace {glob_ns:?} is refused: {err}");
            assert!(matches!(err, Error::Config { .. }), "{err:?}");
        }
    }
    assert_eq!(
        xlen(&mut admin, &other_key).await,
        1,
        "the other namespace's letter is untouched"
    );

    // Keys under the namespace that no event can have (braces in the event part).
    let bus = builder(&server.url(), &plain_ns)
        .handlers(Vec::<String>::new())
        .build()
        .await
        .expect("build");
    let own_key = dlq_key(&plain_ns, Charge::NAME);
    let odd_key = format!("{plain_ns}:{{a}}:{{b}}:dlq");
    xadd_letter(&mut admin, &own_key, "mine").await;
    xadd_letter(&mut admin, &odd_key, "odd").await;
    let listed = bus.dlq().list(100).await.expect("list");
    let handlers: Vec<&str> = listed.iter().map(|l| l.handler.as_str()).collect();
    assert_eq!(handlers, ["mine"], "{listed:#?}");
    assert_eq!(bus.dlq().purge().await.expect("purge"), 1);
    assert_eq!(xlen(&mut admin, &own_key).await, 0);
    assert_eq!(
        xlen(&mut admin, &odd_key).await,
        1,
        "not a dead-letter key: kept"
    );
    assert_eq!(xlen(&mut admin, &other_key).await, 1);
}
