//! A consumer process for fault tests: runs the `consumer.job` handler from the environment
//! (`Bus::from_env`; its retry limit comes from `EVENTBUS_RETRIES`, default 3), prints `ready`
//! once started, and drains on SIGTERM. A job with `crash: true` aborts the process.
//!
//! It records, in Redis lists (see `eventbus_tests::chaos`):
//! - `<namespace>:handled`: `<n>:<consumer>` for every completed run;
//! - `<namespace>:started`: `<n>:<attempt>:<pid>:<consumer>` for every run as it starts
//!   (`attempt` is `ctx.attempt()`);
//! - `<namespace>:crashes`: `<n>:<attempt>:<others>:<pid>:<consumer>` right before a
//!   `crash: true` job aborts the process, `others` being the other runs of the handler in flight
//!   in this process at that moment (0: it ran alone).
//!
//! The records go to `RECORD_URL` when set (a separate `redis-server` that fault tests leave
//! alone), else to `REDIS_URL`.

use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::Duration;

use eventbus::prelude::*;
use redis::AsyncCommands;

/// A unit of work.
#[derive(Debug, Clone, Serialize, Deserialize, DomainEvent)]
#[event(name = "test.job")]
struct Job {
    n: u64,
    crash: bool,
    sleep_ms: u64,
}

#[derive(Clone)]
struct Recorder {
    conn: redis::aio::MultiplexedConnection,
    ns: String,
    consumer: String,
}

/// Runs of `job` in flight in this process.
static IN_FLIGHT: AtomicUsize = AtomicUsize::new(0);

/// Counts one run in [`IN_FLIGHT`] while it lives.
struct Running;

impl Running {
    fn start() -> Running {
        IN_FLIGHT.fetch_add(1, Ordering::SeqCst);
        Running
    }
}

impl Drop for Running {
    fn drop(&mut self) {
        IN_FLIGHT.fetch_sub(1, Ordering::SeqCst);
    }
}

#[event_handler(name = "consumer.job", backoff = "10ms")]
async fn job(ev: Job, ctx: Context, rec: State<Recorder>) -> anyhow::Result<()> {
    let _running = Running::start();
    let pid = std::process::id();
    let mut conn = rec.conn.clone();
    let _: i64 = conn
        .rpush(
            format!("{}:started", rec.ns),
            format!("{}:{}:{pid}:{}", ev.n, ctx.attempt(), rec.consumer),
        )
        .await?;
    if ev.crash {
        let others = IN_FLIGHT.load(Ordering::SeqCst).saturating_sub(1);
        let recorded: redis::RedisResult<i64> = conn
            .rpush(
                format!("{}:crashes", rec.ns),
                format!("{}:{}:{others}:{pid}:{}", ev.n, ctx.attempt(), rec.consumer),
            )
            .await;
        eprintln!(
            "job {} crashes this consumer (attempt {}, {others} other runs in flight; record: {recorded:?})",
            ev.n,
            ctx.attempt()
        );
        std::process::abort();
    }
    if ev.sleep_ms > 0 {
        tokio::time::sleep(Duration::from_millis(ev.sleep_ms)).await;
    }
    let _: i64 = conn
        .rpush(
            format!("{}:handled", rec.ns),
            format!("{}:{}", ev.n, rec.consumer),
        )
        .await?;
    Ok(())
}

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    let url = std::env::var("RECORD_URL").or_else(|_| std::env::var("REDIS_URL"))?;
    let ns = std::env::var("EVENTBUS_NAMESPACE")?;
    let conn = redis::Client::open(url)?
        .get_multiplexed_async_connection()
        .await?;
    let mut builder = Bus::builder();
    builder.with_env()?;
    let consumer = std::env::var("EVENTBUS_CONSUMER")
        .unwrap_or_else(|_| format!("consumer-{}", std::process::id()));
    let recorder = Recorder {
        conn,
        ns,
        consumer: consumer.clone(),
    };
    let bus = builder.consumer(consumer).state(recorder).build().await?;
    let running = bus.start().await?;
    println!("ready {}", bus.consumer_name());
    let mut term = tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate())?;
    term.recv().await;
    running.shutdown().await?;
    println!("stopped");
    Ok(())
}
