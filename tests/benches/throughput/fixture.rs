//! What every scenario shares: the benchmark's events and handlers, the [`Probe`] the handlers
//! report to, and [`Bench`] (the server, its connections, a fresh namespace per run).

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use eventbus::prelude::*;
use eventbus_tests::RedisServer;
use redis::aio::MultiplexedConnection;
use tokio::sync::Notify;

/// A ~200-byte event.
#[derive(Debug, Clone, Serialize, Deserialize, DomainEvent)]
#[event(name = "bench.event")]
pub(crate) struct BenchEvent {
    n: u64,
    sent_us: u64,
    pad: String,
}

/// The same, delivered by Pub/Sub.
#[derive(Debug, Clone, Serialize, Deserialize, DomainEvent)]
#[event(name = "bench.ping", broadcast)]
pub(crate) struct BenchPing {
    pub(crate) n: u64,
    pub(crate) sent_us: u64,
    pub(crate) pad: String,
}

/// What handlers report to the benchmark.
#[derive(Default)]
pub(crate) struct Probe {
    handled: AtomicU64,
    target: AtomicU64,
    done: Notify,
    pub(crate) latencies_us: Mutex<Vec<u64>>,
    record_latency: std::sync::atomic::AtomicBool,
}

impl Probe {
    pub(crate) fn reset(&self, target: u64, record_latency: bool) {
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

    pub(crate) async fn wait(&self, timeout: Duration) {
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

pub(crate) fn now_us() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_micros() as u64)
        .unwrap_or(0)
}

pub(crate) fn event(n: u64) -> BenchEvent {
    BenchEvent {
        n,
        sent_us: now_us(),
        pad: "x".repeat(160),
    }
}

pub(crate) struct Bench {
    pub(crate) server: RedisServer,
    pub(crate) probe: Arc<Probe>,
    pub(crate) envelope: String,
    pub(crate) ns_counter: AtomicU64,
}

impl Bench {
    pub(crate) fn ns(&self, what: &str) -> String {
        format!(
            "bench-{what}-{}",
            self.ns_counter.fetch_add(1, Ordering::Relaxed)
        )
    }

    pub(crate) async fn conn(&self) -> MultiplexedConnection {
        let cfg = redis::AsyncConnectionConfig::new().set_response_timeout(None);
        self.server
            .client()
            .get_multiplexed_async_connection_with_config(&cfg)
            .await
            .expect("connect")
    }

    pub(crate) async fn flush(&self) {
        let mut c = self.conn().await;
        let _: () = redis::cmd("FLUSHALL")
            .query_async(&mut c)
            .await
            .expect("flushall");
    }

    pub(crate) async fn bus(&self, ns: &str, handlers: &[&str]) -> Bus {
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

    pub(crate) async fn prefill(&self, key: &str, n: u64) {
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

pub(crate) fn rate(n: u64, elapsed: Duration) -> f64 {
    n as f64 / elapsed.as_secs_f64().max(1e-9)
}

pub(crate) fn stream(ns: &str) -> String {
    format!("{ns}:{{bench.event}}")
}
