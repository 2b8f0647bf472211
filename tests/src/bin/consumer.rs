//! A consumer process for fault tests: runs the `consumer.job` handler from the environment
//! (`Bus::from_env`), records every handled job as `<n>:<consumer>` in the Redis list
//! `<namespace>:handled`, prints `ready` once started, and drains on SIGTERM. A job with
//! `crash: true` aborts the process.
//!
//! The record goes to `RECORD_URL` when set (a separate `redis-server` that fault tests leave
//! alone), else to `REDIS_URL`.

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
    key: String,
    consumer: String,
}

#[event_handler(name = "consumer.job", retries = 1, backoff = "10ms")]
async fn job(ev: Job, rec: State<Recorder>) -> anyhow::Result<()> {
    if ev.crash {
        eprintln!("job {} crashes this consumer", ev.n);
        std::process::abort();
    }
    if ev.sleep_ms > 0 {
        tokio::time::sleep(Duration::from_millis(ev.sleep_ms)).await;
    }
    let mut conn = rec.conn.clone();
    let _: i64 = conn
        .rpush(&rec.key, format!("{}:{}", ev.n, rec.consumer))
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
        key: format!("{ns}:handled"),
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
