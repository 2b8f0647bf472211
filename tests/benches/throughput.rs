//! Throughput and latency of eventbus against the raw redis-rs floor, measured in the same run.
//!
//! ```text
//! cargo bench -p eventbus-tests --bench throughput            # full counts
//! cargo test  -p eventbus-tests --bench throughput            # smoke: tiny counts, checks it runs
//! ```
//!
//! Starts its own `redis-server` (`--save '' --appendonly no`) on a free port. Each scenario runs
//! the raw baseline (redis 1.8 + tokio, no framework, writing the same envelope bytes) and
//! eventbus in turn, several times each; it prints the median rate of each, min–max, and the
//! ratio, plus one machine-readable line per scenario:
//! `scenario=<name> raw=<median> bus=<median> ratio=<bus/raw> unit=<unit> client_us_raw=… …`.
//! Rate scenarios also print the CPU time each message cost this process (every thread) and the
//! redis-server, which varies far less between runs than rates do.
//!
//! Three reference lines compare eventbus with raw code that does the same work it must do:
//! `publish_awaited_vs_raw_timeout` (the raw client also has a response timeout),
//! `publish_batch_100_vs_raw_serde` (the raw pipeline also serializes each envelope) and
//! `publish_concurrent_64_vs_raw_tasks` (64 raw tasks each awaiting its own XADD).
//!
//! The runtime gets one worker per core minus one, for the redis-server on the same machine
//! (`EVENTBUS_BENCH_WORKERS` overrides it). For profiling, `EVENTBUS_BENCH_ONLY=<prefix>` runs
//! the scenarios whose names start with the prefix and `EVENTBUS_BENCH_SIDE=raw|bus` only one
//! side of the rate scenarios. Absolute figures depend on the machine; ratios travel.

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use eventbus::prelude::*;
use eventbus_tests::RedisServer;
use redis::aio::MultiplexedConnection;
use redis::streams::StreamReadReply;
use tokio::sync::Notify;

/// A ~200-byte event.
#[derive(Debug, Clone, Serialize, Deserialize, DomainEvent)]
#[event(name = "bench.event")]
struct BenchEvent {
    n: u64,
    sent_us: u64,
    pad: String,
}

/// The same, delivered by Pub/Sub.
#[derive(Debug, Clone, Serialize, Deserialize, DomainEvent)]
#[event(name = "bench.ping", broadcast)]
struct BenchPing {
    n: u64,
    sent_us: u64,
    pad: String,
}

/// What handlers report to the benchmark.
#[derive(Default)]
struct Probe {
    handled: AtomicU64,
    target: AtomicU64,
    done: Notify,
    latencies_us: Mutex<Vec<u64>>,
    record_latency: std::sync::atomic::AtomicBool,
}

impl Probe {
    fn reset(&self, target: u64, record_latency: bool) {
        self.handled.store(0, Ordering::SeqCst);
        self.target.store(target, Ordering::SeqCst);
        self.record_latency.store(record_latency, Ordering::SeqCst);
        if let Ok(mut l) = self.latencies_us.lock() {
            l.clear();
        }
    }

    fn hit(&self, sent_us: u64) {
        if self.record_latency.load(Ordering::Relaxed) {
            let lat = now_us().saturating_sub(sent_us);
            if let Ok(mut l) = self.latencies_us.lock() {
                l.push(lat);
            }
        }
        let n = self.handled.fetch_add(1, Ordering::AcqRel) + 1;
        if n == self.target.load(Ordering::Acquire) {
            self.done.notify_one();
        }
    }

    async fn wait(&self, timeout: Duration) {
        let deadline = tokio::time::Instant::now() + timeout;
        while self.handled.load(Ordering::Acquire) < self.target.load(Ordering::Acquire) {
            if tokio::time::timeout_at(deadline, self.done.notified())
                .await
                .is_err()
            {
                panic!(
                    "bench timed out: handled {} of {}",
                    self.handled.load(Ordering::Acquire),
                    self.target.load(Ordering::Acquire)
                );
            }
        }
    }
}

#[event_handler(name = "bench.noop", retries = 0)]
async fn noop(ev: BenchEvent, probe: State<Arc<Probe>>) -> Result<(), String> {
    probe.hit(ev.sent_us);
    Ok(())
}

#[event_handler(name = "bench.ping", retries = 0)]
async fn ping(ev: BenchPing, probe: State<Arc<Probe>>) -> Result<(), String> {
    probe.hit(ev.sent_us);
    Ok(())
}

fn now_us() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_micros() as u64)
        .unwrap_or(0)
}

fn event(n: u64) -> BenchEvent {
    BenchEvent {
        n,
        sent_us: now_us(),
        pad: "x".repeat(160),
    }
}

/// Counts for one mode.
struct Counts {
    reps: usize,
    awaited: u64,
    concurrent: u64,
    batch: u64,
    backlog: u64,
    live: u64,
    latency_secs: u64,
    broadcast: u64,
    rss_backlog: u64,
}

impl Counts {
    fn full() -> Self {
        Counts {
            reps: 5,
            awaited: 5_000,
            concurrent: 100_000,
            batch: 100_000,
            backlog: 200_000,
            live: 200_000,
            latency_secs: 3,
            broadcast: 100_000,
            rss_backlog: 1_000_000,
        }
    }

    fn smoke() -> Self {
        Counts {
            reps: 1,
            awaited: 50,
            concurrent: 640,
            batch: 500,
            backlog: 1_000,
            live: 1_000,
            latency_secs: 1,
            broadcast: 500,
            rss_backlog: 2_000,
        }
    }
}

/// Repeated measurements of one side: rates, and the CPU time each message cost in each run.
#[derive(Clone, Default)]
struct Series {
    rates: Vec<f64>,
    client_us: Vec<f64>,
    server_us: Vec<f64>,
}

/// CPU time per message in microseconds (medians over the repetitions): this process (every
/// thread) and the redis-server. CPU time varies far less between runs than rates do.
#[derive(Clone, Copy, Default)]
struct Cpu {
    client_us: f64,
    server_us: f64,
}

impl Series {
    fn of(rates: Vec<f64>) -> Self {
        Series {
            rates,
            ..Series::default()
        }
    }
    /// Adds one run's result from [`once`] (nothing when that side was skipped).
    fn add(&mut self, run: Option<Run>) {
        if let Some(run) = run {
            self.rates.push(run.rate);
            if let Some((client, server)) = run.cpu_us {
                self.client_us.push(client);
                self.server_us.push(server);
            }
        }
    }
    fn median(&self) -> f64 {
        median(self.rates.clone())
    }
    fn range(&self) -> (f64, f64) {
        let min = self.rates.iter().copied().fold(f64::INFINITY, f64::min);
        let max = self.rates.iter().copied().fold(0.0, f64::max);
        (min, max)
    }
    fn cpu(&self) -> Cpu {
        Cpu {
            client_us: median(self.client_us.clone()),
            server_us: median(self.server_us.clone()),
        }
    }
}

fn median(mut v: Vec<f64>) -> f64 {
    v.sort_by(f64::total_cmp);
    v.get(v.len() / 2).copied().unwrap_or(0.0)
}

fn report(scenario: &str, unit: &str, raw: &Series, bus: &Series, higher_is_better: bool) {
    let (r, b) = (raw.median(), bus.median());
    let ratio = if r > 0.0 { b / r } else { 0.0 };
    let (rmin, rmax) = raw.range();
    let (bmin, bmax) = bus.range();
    println!(
        "{scenario:<34} raw {r:>11.0} {unit} ({rmin:.0}–{rmax:.0})   bus {b:>11.0} {unit} ({bmin:.0}–{bmax:.0})   ratio {ratio:.2}{}",
        if higher_is_better {
            ""
        } else {
            " (lower is better)"
        }
    );
    let (rc, bc) = (raw.cpu(), bus.cpu());
    let cpu = if rc.client_us > 0.0 && bc.client_us > 0.0 {
        println!(
            "{:<34} cpu µs/msg: client raw {:.2} bus {:.2}, redis-server raw {:.2} bus {:.2}",
            "", rc.client_us, bc.client_us, rc.server_us, bc.server_us
        );
        format!(
            " client_us_raw={:.3} client_us_bus={:.3} server_us_raw={:.3} server_us_bus={:.3}",
            rc.client_us, bc.client_us, rc.server_us, bc.server_us
        )
    } else {
        String::new()
    };
    println!("scenario={scenario} raw={r:.0} bus={b:.0} ratio={ratio:.3} unit={unit}{cpu}");
}

struct Bench {
    server: RedisServer,
    probe: Arc<Probe>,
    envelope: String,
    ns_counter: AtomicU64,
}

impl Bench {
    fn ns(&self, what: &str) -> String {
        format!(
            "bench-{what}-{}",
            self.ns_counter.fetch_add(1, Ordering::Relaxed)
        )
    }

    async fn conn(&self) -> MultiplexedConnection {
        let cfg = redis::AsyncConnectionConfig::new().set_response_timeout(None);
        self.server
            .client()
            .get_multiplexed_async_connection_with_config(&cfg)
            .await
            .expect("connect")
    }

    async fn flush(&self) {
        let mut c = self.conn().await;
        let _: () = redis::cmd("FLUSHALL")
            .query_async(&mut c)
            .await
            .expect("flushall");
    }

    async fn bus(&self, ns: &str, handlers: &[&str]) -> Bus {
        Bus::builder()
            .redis_url(self.server.url())
            .namespace(ns)
            .handlers(handlers.iter().copied())
            .state(self.probe.clone())
            .batch_size(100)
            .concurrency(64)
            .block_time(Duration::from_millis(500))
            .build()
            .await
            .expect("build bus")
    }

    async fn prefill(&self, key: &str, n: u64) {
        let mut c = self.conn().await;
        let mut left = n;
        while left > 0 {
            let chunk = left.min(1000);
            let mut pipe = redis::pipe();
            for _ in 0..chunk {
                pipe.cmd("XADD")
                    .arg(key)
                    .arg("*")
                    .arg("envelope")
                    .arg(&self.envelope)
                    .ignore();
            }
            let _: () = pipe.query_async(&mut c).await.expect("prefill");
            left -= chunk;
        }
    }
}

fn rate(n: u64, elapsed: Duration) -> f64 {
    n as f64 / elapsed.as_secs_f64().max(1e-9)
}

fn stream(ns: &str) -> String {
    format!("{ns}:{{bench.event}}")
}

async fn raw_awaited(b: &Bench, n: u64) -> f64 {
    raw_awaited_on(b, n, b.conn().await).await
}

/// The same through a `ConnectionManager` with the 10 s response timeout eventbus gives its
/// publish connection (a frozen server must not hang a publish forever): one timer per request.
async fn raw_awaited_with_timeout(b: &Bench, n: u64) -> f64 {
    let cfg = redis::aio::ConnectionManagerConfig::new()
        .set_response_timeout(Some(Duration::from_secs(10)));
    let conn = b
        .server
        .client()
        .get_connection_manager_with_config(cfg)
        .await
        .expect("connect");
    raw_awaited_on(b, n, conn).await
}

async fn raw_awaited_on<C: redis::aio::ConnectionLike>(b: &Bench, n: u64, mut c: C) -> f64 {
    let key = stream(&b.ns("raw-awaited"));
    let t = Instant::now();
    for _ in 0..n {
        let _: String = redis::cmd("XADD")
            .arg(&key)
            .arg("*")
            .arg("envelope")
            .arg(&b.envelope)
            .query_async(&mut c)
            .await
            .expect("xadd");
    }
    rate(n, t.elapsed())
}

async fn bus_awaited(b: &Bench, n: u64) -> f64 {
    let bus = b.bus(&b.ns("bus-awaited"), &[]).await;
    let t = Instant::now();
    for i in 0..n {
        bus.publish(&event(i)).await.expect("publish");
    }
    rate(n, t.elapsed())
}

async fn raw_pipelined(b: &Bench, n: u64, chunk: u64) -> f64 {
    let key = stream(&b.ns("raw-pipe"));
    let mut c = b.conn().await;
    let t = Instant::now();
    let mut left = n;
    while left > 0 {
        let k = left.min(chunk);
        let mut pipe = redis::pipe();
        for _ in 0..k {
            pipe.cmd("XADD")
                .arg(&key)
                .arg("*")
                .arg("envelope")
                .arg(&b.envelope)
                .ignore();
        }
        let _: () = pipe.query_async(&mut c).await.expect("pipeline");
        left -= k;
    }
    rate(n, t.elapsed())
}

/// The same fields as an eventbus envelope, serialized by hand-written raw code.
#[derive(Serialize)]
struct RawEnvelope<'a> {
    specversion: &'static str,
    id: EventId,
    #[serde(rename = "type")]
    ty: &'static str,
    source: &'static str,
    time: &'static str,
    datacontenttype: &'static str,
    schemaversion: u32,
    data: &'a BenchEvent,
}

/// The raw pipeline, but encoding each envelope with serde_json as eventbus must: separates the
/// cost of serialization (which the raw floor does not pay) from the framework's own.
async fn raw_pipelined_serde(b: &Bench, n: u64, chunk: u64) -> f64 {
    let key = stream(&b.ns("raw-pipe-serde"));
    let mut c = b.conn().await;
    let events: Vec<BenchEvent> = (0..n).map(event).collect();
    let t = Instant::now();
    let mut left = n;
    let mut i = 0;
    while left > 0 {
        let k = left.min(chunk);
        let mut pipe = redis::pipe();
        for _ in 0..k {
            let ev = &events[i as usize];
            i += 1;
            let envelope = serde_json::to_vec(&RawEnvelope {
                specversion: "1.0",
                id: EventId::new(),
                ty: "bench.event",
                source: "bench",
                time: "2026-11-23T08:11:52.554111Z",
                datacontenttype: "application/json",
                schemaversion: 1,
                data: ev,
            })
            .expect("encode");
            pipe.cmd("XADD")
                .arg(&key)
                .arg("*")
                .arg("envelope")
                .arg(envelope)
                .ignore();
        }
        let _: () = pipe.query_async(&mut c).await.expect("pipeline");
        left -= k;
    }
    rate(n, t.elapsed())
}

/// The raw client used the way 64 concurrent callers would use it: each task awaits its own
/// `XADD` on a shared multiplexed connection (redis-rs queues concurrent commands into one
/// write). Pre-encoded envelope, no framework: the floor for callers that each await a reply.
async fn raw_concurrent(b: &Bench, n: u64, tasks: u64) -> f64 {
    let key = stream(&b.ns("raw-concurrent"));
    let c = b.conn().await;
    let per = n / tasks;
    let envelope: Arc<str> = b.envelope.as_str().into();
    let start = Arc::new(tokio::sync::Barrier::new(tasks as usize + 1));
    let mut joins = Vec::new();
    for _ in 0..tasks {
        let (mut c, key, envelope, start) =
            (c.clone(), key.clone(), envelope.clone(), start.clone());
        joins.push(tokio::spawn(async move {
            start.wait().await;
            for _ in 0..per {
                let _: String = redis::cmd("XADD")
                    .arg(&key)
                    .arg("*")
                    .arg("envelope")
                    .arg(&*envelope)
                    .query_async(&mut c)
                    .await
                    .expect("xadd");
            }
        }));
    }
    start.wait().await;
    let t = Instant::now();
    for j in joins {
        j.await.expect("task");
    }
    rate(per * tasks, t.elapsed())
}

// The publish scenarios build their events before the clock starts, as the raw baseline builds
// its envelope: both sides then time only what goes from a value in memory to Redis.

async fn bus_concurrent(b: &Bench, n: u64, tasks: u64) -> f64 {
    let bus = b.bus(&b.ns("bus-concurrent"), &[]).await;
    let per = n / tasks;
    let start = Arc::new(tokio::sync::Barrier::new(tasks as usize + 1));
    let mut joins = Vec::new();
    for task in 0..tasks {
        let bus = bus.clone();
        let start = start.clone();
        let events: Vec<BenchEvent> = (0..per).map(|i| event(task * per + i)).collect();
        joins.push(tokio::spawn(async move {
            start.wait().await;
            for ev in &events {
                bus.publish(ev).await.expect("publish");
            }
        }));
    }
    start.wait().await;
    let t = Instant::now();
    for j in joins {
        j.await.expect("task");
    }
    rate(per * tasks, t.elapsed())
}

async fn bus_batch(b: &Bench, n: u64) -> f64 {
    let bus = b.bus(&b.ns("bus-batch"), &[]).await;
    let events: Vec<BenchEvent> = (0..n).map(event).collect();
    let t = Instant::now();
    for chunk in events.chunks(100) {
        bus.publish_batch(chunk).await.expect("publish_batch");
    }
    rate(n, t.elapsed())
}

/// XREADGROUP COUNT 100 + one multi-id XACK per batch until `n` entries are consumed.
async fn raw_consume(b: &Bench, key: &str, group: &str, n: u64, block: bool) -> u64 {
    let mut c = b.conn().await;
    let mut acker = b.conn().await;
    let mut done = 0;
    let mut opts = redis::streams::StreamReadOptions::default()
        .group(group, "raw-0")
        .count(100);
    if block {
        opts = opts.block(1000);
    }
    while done < n {
        let reply: Option<StreamReadReply> =
            redis::AsyncCommands::xread_options(&mut c, &[key], &[">"], &opts)
                .await
                .expect("xreadgroup");
        let ids: Vec<String> = reply
            .map(|r| {
                r.keys
                    .into_iter()
                    .flat_map(|k| k.ids)
                    .map(|e| e.id)
                    .collect()
            })
            .unwrap_or_default();
        if ids.is_empty() {
            continue;
        }
        let _: i64 = redis::cmd("XACK")
            .arg(key)
            .arg(group)
            .arg(&ids)
            .query_async(&mut acker)
            .await
            .expect("xack");
        done += ids.len() as u64;
    }
    done
}

async fn raw_drain(b: &Bench, n: u64) -> f64 {
    let key = stream(&b.ns("raw-drain"));
    b.prefill(&key, n).await;
    let mut c = b.conn().await;
    let _: () = redis::cmd("XGROUP")
        .arg("CREATE")
        .arg(&key)
        .arg("g")
        .arg("0")
        .query_async(&mut c)
        .await
        .expect("group");
    let t = Instant::now();
    raw_consume(b, &key, "g", n, false).await;
    rate(n, t.elapsed())
}

async fn bus_drain(b: &Bench, n: u64) -> f64 {
    let ns = b.ns("bus-drain");
    b.prefill(&stream(&ns), n).await;
    let bus = b.bus(&ns, &["bench.noop"]).await;
    b.probe.reset(n, false);
    let t = Instant::now();
    let running = bus.start().await.expect("start");
    b.probe.wait(Duration::from_secs(600)).await;
    let r = rate(n, t.elapsed());
    running.shutdown().await.expect("shutdown");
    r
}

async fn raw_live(b: &Bench, n: u64) -> f64 {
    let key = stream(&b.ns("raw-live"));
    let mut c = b.conn().await;
    let _: () = redis::cmd("XGROUP")
        .arg("CREATE")
        .arg(&key)
        .arg("g")
        .arg("$")
        .arg("MKSTREAM")
        .query_async(&mut c)
        .await
        .expect("group");
    let t = Instant::now();
    let producer = {
        let mut c = b.conn().await;
        let key = key.clone();
        let envelope = b.envelope.clone();
        tokio::spawn(async move {
            let mut left = n;
            while left > 0 {
                let k = left.min(100);
                let mut pipe = redis::pipe();
                for _ in 0..k {
                    pipe.cmd("XADD")
                        .arg(&key)
                        .arg("*")
                        .arg("envelope")
                        .arg(&envelope)
                        .ignore();
                }
                let _: () = pipe.query_async(&mut c).await.expect("pipeline");
                left -= k;
            }
        })
    };
    raw_consume(b, &key, "g", n, true).await;
    producer.await.expect("producer");
    rate(n, t.elapsed())
}

async fn bus_live(b: &Bench, n: u64) -> f64 {
    let bus = b.bus(&b.ns("bus-live"), &["bench.noop"]).await;
    b.probe.reset(n, false);
    let running = bus.start().await.expect("start");
    let t = Instant::now();
    let producer = {
        let bus = bus.clone();
        tokio::spawn(async move {
            let mut sent = 0;
            while sent < n {
                let k = (n - sent).min(100);
                let events: Vec<BenchEvent> = (sent..sent + k).map(event).collect();
                bus.publish_batch(&events).await.expect("publish_batch");
                sent += k;
            }
        })
    };
    b.probe.wait(Duration::from_secs(600)).await;
    let r = rate(n, t.elapsed());
    producer.await.expect("producer");
    running.shutdown().await.expect("shutdown");
    r
}

/// p50, p99 and p99.9 of several runs, one value of each per run.
#[derive(Default)]
struct Percentiles([Vec<f64>; 3]);

impl Percentiles {
    fn add(&mut self, samples: Vec<u64>) {
        let (p50, p99, p999) = percentiles(samples);
        for (all, p) in self.0.iter_mut().zip([p50, p99, p999]) {
            all.push(p);
        }
    }

    /// The runs' values of one percentile (0: p50, 1: p99, 2: p99.9).
    fn series(&self, i: usize) -> Series {
        Series::of(self.0[i].clone())
    }
}

fn percentiles(mut v: Vec<u64>) -> (f64, f64, f64) {
    v.sort_unstable();
    let at = |q: f64| {
        v.get(((v.len() as f64 * q) as usize).min(v.len().saturating_sub(1)))
            .copied()
            .unwrap_or(0) as f64
    };
    (at(0.50), at(0.99), at(0.999))
}

/// Publishes one event per millisecond for `secs` seconds; returns per-event latencies (µs).
async fn raw_latency(b: &Bench, secs: u64) -> Vec<u64> {
    let key = stream(&b.ns("raw-latency"));
    let mut c = b.conn().await;
    let _: () = redis::cmd("XGROUP")
        .arg("CREATE")
        .arg(&key)
        .arg("g")
        .arg("$")
        .arg("MKSTREAM")
        .query_async(&mut c)
        .await
        .expect("group");
    let n = secs * 1000;
    let consumer = {
        let mut rc = b.conn().await;
        let mut acker = b.conn().await;
        let key = key.clone();
        tokio::spawn(async move {
            let mut lat = Vec::with_capacity(n as usize);
            let opts = redis::streams::StreamReadOptions::default()
                .group("g", "raw-0")
                .count(100)
                .block(1000);
            while (lat.len() as u64) < n {
                let reply: Option<StreamReadReply> =
                    redis::AsyncCommands::xread_options(&mut rc, &[&key], &[">"], &opts)
                        .await
                        .expect("read");
                let mut ids = Vec::new();
                for e in reply
                    .map(|r| r.keys.into_iter().flat_map(|k| k.ids).collect::<Vec<_>>())
                    .unwrap_or_default()
                {
                    if let Some(redis::Value::BulkString(v)) = e.map.get("sent_us") {
                        let sent: u64 = String::from_utf8_lossy(v).parse().unwrap_or(0);
                        lat.push(now_us().saturating_sub(sent));
                    }
                    ids.push(e.id);
                }
                if !ids.is_empty() {
                    let _: i64 = redis::cmd("XACK")
                        .arg(&key)
                        .arg("g")
                        .arg(&ids)
                        .query_async(&mut acker)
                        .await
                        .expect("ack");
                }
            }
            lat
        })
    };
    let mut tick = tokio::time::interval(Duration::from_millis(1));
    for _ in 0..n {
        tick.tick().await;
        let _: String = redis::cmd("XADD")
            .arg(&key)
            .arg("*")
            .arg("sent_us")
            .arg(now_us())
            .arg("envelope")
            .arg(&b.envelope)
            .query_async(&mut c)
            .await
            .expect("xadd");
    }
    consumer.await.expect("consumer")
}

async fn bus_latency(b: &Bench, secs: u64) -> Vec<u64> {
    let bus = b.bus(&b.ns("bus-latency"), &["bench.noop"]).await;
    let n = secs * 1000;
    b.probe.reset(n, true);
    let running = bus.start().await.expect("start");
    let mut tick = tokio::time::interval(Duration::from_millis(1));
    for i in 0..n {
        tick.tick().await;
        bus.publish(&event(i)).await.expect("publish");
    }
    b.probe.wait(Duration::from_secs(60)).await;
    running.shutdown().await.expect("shutdown");
    b.probe
        .latencies_us
        .lock()
        .map(|l| l.clone())
        .unwrap_or_default()
}

async fn raw_broadcast(b: &Bench, n: u64, per_ms: bool) -> (f64, Vec<u64>) {
    let channel = format!("{}:bench.ping", b.ns("raw-bcast"));
    let mut sub = b.server.client().get_async_pubsub().await.expect("pubsub");
    sub.subscribe(&channel).await.expect("subscribe");
    let consumer = tokio::spawn(async move {
        use futures_util::StreamExt;
        let mut stream = sub.into_on_message();
        let mut lat = Vec::with_capacity(n as usize);
        while (lat.len() as u64) < n {
            let Some(msg) = stream.next().await else {
                break;
            };
            let payload = msg.get_payload_bytes();
            let sent = payload
                .split(|b| *b == b'|')
                .next()
                .and_then(|s| std::str::from_utf8(s).ok())
                .and_then(|s| s.parse().ok())
                .unwrap_or(0);
            lat.push(now_us().saturating_sub(sent));
        }
        lat
    });
    let mut c = b.conn().await;
    let t = Instant::now();
    if per_ms {
        let mut tick = tokio::time::interval(Duration::from_millis(1));
        for _ in 0..n {
            tick.tick().await;
            let _: i64 = redis::cmd("PUBLISH")
                .arg(&channel)
                .arg(format!("{}|{}", now_us(), b.envelope))
                .query_async(&mut c)
                .await
                .expect("publish");
        }
    } else {
        let mut left = n;
        while left > 0 {
            let k = left.min(100);
            let mut pipe = redis::pipe();
            for _ in 0..k {
                pipe.cmd("PUBLISH")
                    .arg(&channel)
                    .arg(format!("{}|{}", now_us(), b.envelope))
                    .ignore();
            }
            let _: () = pipe.query_async(&mut c).await.expect("pipeline");
            left -= k;
        }
    }
    let lat = consumer.await.expect("consumer");
    (rate(n, t.elapsed()), lat)
}

async fn bus_broadcast(b: &Bench, n: u64, per_ms: bool) -> (f64, Vec<u64>) {
    let bus = Bus::builder()
        .redis_url(b.server.url())
        .namespace(b.ns("bus-bcast"))
        .handlers(["bench.ping"])
        .state(b.probe.clone())
        .concurrency(64)
        .broadcast_queue(n as usize + 1)
        .build()
        .await
        .expect("build");
    b.probe.reset(n, true);
    let running = bus.start().await.expect("start");
    let ping = |i| BenchPing {
        n: i,
        sent_us: now_us(),
        pad: "x".repeat(160),
    };
    let t = Instant::now();
    if per_ms {
        let mut tick = tokio::time::interval(Duration::from_millis(1));
        for i in 0..n {
            tick.tick().await;
            bus.publish(&ping(i)).await.expect("publish");
        }
    } else {
        let mut sent = 0;
        while sent < n {
            let k = (n - sent).min(100);
            let events: Vec<BenchPing> = (sent..sent + k).map(ping).collect();
            bus.publish_batch(&events).await.expect("publish_batch");
            sent += k;
        }
    }
    b.probe.wait(Duration::from_secs(600)).await;
    let r = rate(n, t.elapsed());
    running.shutdown().await.expect("shutdown");
    (
        r,
        b.probe
            .latencies_us
            .lock()
            .map(|l| l.clone())
            .unwrap_or_default(),
    )
}

/// In a child process: drain a prefilled backlog with one handler; print the peak RSS.
async fn rss_child(url: String, ns: String, n: u64) {
    let probe = Arc::new(Probe::default());
    probe.reset(n, false);
    let bus = Bus::builder()
        .redis_url(url)
        .namespace(ns)
        .handlers(["bench.noop"])
        .state(probe.clone())
        .batch_size(100)
        .concurrency(64)
        .build()
        .await
        .expect("build");
    let running = bus.start().await.expect("start");
    probe.wait(Duration::from_secs(900)).await;
    running.shutdown().await.expect("shutdown");
    let status = std::fs::read_to_string("/proc/self/status").unwrap_or_default();
    let hwm = status
        .lines()
        .find(|l| l.starts_with("VmHWM:"))
        .unwrap_or("VmHWM: 0 kB")
        .to_owned();
    println!("{hwm}");
}

async fn rss(b: &Bench, n: u64) -> Option<u64> {
    let ns = b.ns("rss");
    b.prefill(&stream(&ns), n).await;
    let exe = std::env::current_exe().ok()?;
    let out = tokio::process::Command::new(exe)
        .arg("--rss-child")
        .arg(b.server.url())
        .arg(&ns)
        .arg(n.to_string())
        .output()
        .await
        .ok()?;
    let text = String::from_utf8_lossy(&out.stdout);
    text.lines()
        .find(|l| l.starts_with("VmHWM:"))
        .and_then(|l| l.split_whitespace().nth(1))
        .and_then(|kb| kb.parse().ok())
}

/// Which client a measurement runs.
#[derive(Clone, Copy, PartialEq, Eq)]
enum Side {
    Raw,
    Bus,
}

/// One run of a rate scenario.
struct Run {
    rate: f64,
    /// CPU time per message of this process and of the redis-server, in microseconds.
    cpu_us: Option<(f64, f64)>,
}

/// Runs one rate scenario once (the future returns messages per second), recording CPU time.
/// Scenarios alternate raw and eventbus runs, so a slow spell on the shared machine hits both
/// sides. `EVENTBUS_BENCH_SIDE=raw|bus` skips the other side (for profiling one side).
async fn once(side: Side, run: impl std::future::Future<Output = f64>) -> Option<Run> {
    let only = std::env::var("EVENTBUS_BENCH_SIDE").unwrap_or_default();
    if (only == "raw" && side == Side::Bus) || (only == "bus" && side == Side::Raw) {
        return None;
    }
    let server = SERVER_PID.load(Ordering::Relaxed).to_string();
    let (c0, s0, t0) = (cpu_ns("self"), cpu_ns(&server), Instant::now());
    let rate = run.await;
    let messages = rate * t0.elapsed().as_secs_f64();
    let cpu_us = (messages >= 1.0).then(|| {
        (
            (cpu_ns("self") - c0) as f64 / 1e3 / messages,
            (cpu_ns(&server) - s0) as f64 / 1e3 / messages,
        )
    });
    Some(Run { rate, cpu_us })
}

/// The redis-server the benchmark runs against, for its CPU time.
static SERVER_PID: AtomicU64 = AtomicU64::new(0);

/// CPU time of every thread of a process, in nanoseconds (`/proc/<pid>/task/*/schedstat`);
/// 0 where that is not readable.
fn cpu_ns(pid: &str) -> u64 {
    let Ok(tasks) = std::fs::read_dir(format!("/proc/{pid}/task")) else {
        return 0;
    };
    tasks
        .flatten()
        .filter_map(|t| std::fs::read_to_string(t.path().join("schedstat")).ok())
        .filter_map(|s| s.split_whitespace().next()?.parse::<u64>().ok())
        .sum()
}

/// Runtime worker threads: `EVENTBUS_BENCH_WORKERS`, else one per core minus the one the
/// benchmark's own redis-server needs (at least one). Redis normally has a host of its own; with
/// a worker on every core here, client threads preempt the server and the figures measure the
/// scheduler more than either client.
fn workers() -> usize {
    std::env::var("EVENTBUS_BENCH_WORKERS")
        .ok()
        .and_then(|s| s.parse().ok())
        .filter(|n| *n > 0)
        .unwrap_or_else(|| {
            std::thread::available_parallelism()
                .map(|n| n.get().saturating_sub(1).max(1))
                .unwrap_or(1)
        })
}

fn main() {
    let args: Vec<String> = std::env::args().collect();
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(workers())
        .enable_all()
        .build()
        .expect("runtime");
    if args.get(1).map(String::as_str) == Some("--rss-child") {
        let (url, ns, n) = (
            args[2].clone(),
            args[3].clone(),
            args[4].parse().unwrap_or(0),
        );
        rt.block_on(rss_child(url, ns, n));
        return;
    }
    // `cargo bench` passes --bench; `cargo test` runs this as a smoke test with tiny counts.
    let full =
        args.iter().any(|a| a == "--bench") && std::env::var_os("EVENTBUS_BENCH_SMOKE").is_none();
    let counts = if full {
        Counts::full()
    } else {
        Counts::smoke()
    };
    rt.block_on(run(counts, full));
}

async fn run(c: Counts, full: bool) {
    let server = RedisServer::start();
    SERVER_PID.store(server.pid().unwrap_or(0).into(), Ordering::Relaxed);
    let probe = Arc::new(Probe::default());
    let sample = serde_json::json!({
        "specversion": "1.0", "id": "01a20776-2369-77b8-9e00-cd26531cde87", "type": "bench.event",
        "source": "bench", "time": "2026-11-23T08:11:52.554111Z", "datacontenttype": "application/json",
        "schemaversion": 1, "data": { "n": 1, "sent_us": now_us(), "pad": "x".repeat(160) }
    });
    let b = Bench {
        server,
        probe,
        envelope: sample.to_string(),
        ns_counter: AtomicU64::new(0),
    };
    println!(
        "eventbus throughput benchmark ({} mode, {} repetitions, {} runtime worker(s), envelope {} bytes; medians, min–max in brackets)",
        if full { "full" } else { "smoke" },
        c.reps,
        workers(),
        b.envelope.len()
    );

    // EVENTBUS_BENCH_ONLY=<scenario prefix> runs one scenario (for profiling).
    let only = std::env::var("EVENTBUS_BENCH_ONLY").unwrap_or_default();
    let wanted = |name: &str| only.is_empty() || name.starts_with(only.as_str());

    if wanted("publish_awaited") {
        let (mut raw, mut bus, mut timed) = Default::default();
        for _ in 0..c.reps {
            Series::add(&mut raw, once(Side::Raw, raw_awaited(&b, c.awaited)).await);
            Series::add(&mut bus, once(Side::Bus, bus_awaited(&b, c.awaited)).await);
            Series::add(
                &mut timed,
                once(Side::Raw, raw_awaited_with_timeout(&b, c.awaited)).await,
            );
        }
        report("publish_awaited", "msg/s", &raw, &bus, true);
        // Reference: the raw client with the same response timeout as eventbus.
        report(
            "publish_awaited_vs_raw_timeout",
            "msg/s",
            &timed,
            &bus,
            true,
        );
        b.flush().await;
    }

    if wanted("publish_concurrent_64") {
        let (mut raw, mut bus, mut tasks) = Default::default();
        for _ in 0..c.reps {
            let n = c.concurrent;
            Series::add(&mut raw, once(Side::Raw, raw_pipelined(&b, n, 64)).await);
            Series::add(&mut bus, once(Side::Bus, bus_concurrent(&b, n, 64)).await);
            Series::add(&mut tasks, once(Side::Raw, raw_concurrent(&b, n, 64)).await);
        }
        report("publish_concurrent_64", "msg/s", &raw, &bus, true);
        // Reference: 64 raw tasks each awaiting its own XADD.
        report(
            "publish_concurrent_64_vs_raw_tasks",
            "msg/s",
            &tasks,
            &bus,
            true,
        );
        b.flush().await;
    }

    if wanted("publish_batch_100") {
        let (mut raw, mut bus, mut serde) = Default::default();
        for _ in 0..c.reps {
            let n = c.batch;
            Series::add(&mut raw, once(Side::Raw, raw_pipelined(&b, n, 100)).await);
            Series::add(&mut bus, once(Side::Bus, bus_batch(&b, n)).await);
            Series::add(
                &mut serde,
                once(Side::Raw, raw_pipelined_serde(&b, n, 100)).await,
            );
        }
        report("publish_batch_100", "msg/s", &raw, &bus, true);
        // Reference: the raw pipeline plus serde_json encoding of each envelope.
        report(
            "publish_batch_100_vs_raw_serde",
            "msg/s",
            &serde,
            &bus,
            true,
        );
        b.flush().await;
    }

    if wanted("drain_backlog") {
        let (mut raw, mut bus) = Default::default();
        for _ in 0..c.reps {
            Series::add(&mut raw, once(Side::Raw, raw_drain(&b, c.backlog)).await);
            Series::add(&mut bus, once(Side::Bus, bus_drain(&b, c.backlog)).await);
        }
        report("drain_backlog", "msg/s", &raw, &bus, true);
        b.flush().await;
    }

    if wanted("live_end_to_end") {
        let (mut raw, mut bus) = Default::default();
        for _ in 0..c.reps {
            Series::add(&mut raw, once(Side::Raw, raw_live(&b, c.live)).await);
            Series::add(&mut bus, once(Side::Bus, bus_live(&b, c.live)).await);
        }
        report("live_end_to_end", "msg/s", &raw, &bus, true);
        b.flush().await;
    }

    if wanted("latency") {
        // Each repetition gives one p50, p99 and p99.9 per side; the table shows their medians.
        let (mut raw, mut bus) = (Percentiles::default(), Percentiles::default());
        for _ in 0..c.reps {
            raw.add(raw_latency(&b, c.latency_secs).await);
            bus.add(bus_latency(&b, c.latency_secs).await);
        }
        for (i, name) in ["latency_p50_us", "latency_p99_us", "latency_p999_us"]
            .into_iter()
            .enumerate()
        {
            report(name, "us", &raw.series(i), &bus.series(i), false);
        }
        b.flush().await;
    }

    if wanted("broadcast") {
        let mut raw_rates = Vec::new();
        let mut bus_rates = Vec::new();
        for _ in 0..c.reps {
            raw_rates.push(raw_broadcast(&b, c.broadcast, false).await.0);
            bus_rates.push(bus_broadcast(&b, c.broadcast, false).await.0);
        }
        report(
            "broadcast_end_to_end",
            "msg/s",
            &Series::of(raw_rates),
            &Series::of(bus_rates),
            true,
        );
        let n = c.latency_secs * 1000;
        let (mut raw, mut bus) = (Percentiles::default(), Percentiles::default());
        for _ in 0..c.reps {
            raw.add(raw_broadcast(&b, n, true).await.1);
            bus.add(bus_broadcast(&b, n, true).await.1);
        }
        for (i, name) in ["broadcast_latency_p50_us", "broadcast_latency_p99_us"]
            .into_iter()
            .enumerate()
        {
            report(name, "us", &raw.series(i), &bus.series(i), false);
        }
        b.flush().await;
    }

    if wanted("rss") {
        match rss(&b, c.rss_backlog).await {
            Some(kb) => {
                println!(
                    "{:<34} {} events: peak RSS of the bus process {:.1} MiB",
                    "rss_backlog_drain",
                    c.rss_backlog,
                    kb as f64 / 1024.0
                );
                println!(
                    "scenario=rss_backlog_drain events={} peak_rss_kib={kb}",
                    c.rss_backlog
                );
            }
            None => println!("scenario=rss_backlog_drain error=child-failed"),
        }
    }
}
