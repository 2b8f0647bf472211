//! Publishing, raw and through eventbus: one awaited `XADD` at a time, 64 concurrent callers,
//! batches of 100; and the reference variants (raw with a response timeout, raw with serde, raw
//! tasks).

use std::sync::Arc;
use std::time::{Duration, Instant};

use eventbus::prelude::*;

use crate::fixture::{Bench, BenchEvent, event, rate, stream};

pub(crate) async fn raw_awaited(b: &Bench, n: u64) -> f64 {
    raw_awaited_on(b, n, b.conn().await).await
}

/// The same through a `ConnectionManager` with the 10 s response timeout eventbus gives its
/// publish connection (a frozen server must not hang a publish forever): one timer per request.
pub(crate) async fn raw_awaited_with_timeout(b: &Bench, n: u64) -> f64 {
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

pub(crate) async fn bus_awaited(b: &Bench, n: u64) -> f64 {
    let bus = b.bus(&b.ns("bus-awaited"), &[]).await;
    let t = Instant::now();
    for i in 0..n {
        bus.publish(&event(i)).await.expect("publish");
    }
    rate(n, t.elapsed())
}

pub(crate) async fn raw_pipelined(b: &Bench, n: u64, chunk: u64) -> f64 {
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
pub(crate) async fn raw_pipelined_serde(b: &Bench, n: u64, chunk: u64) -> f64 {
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
pub(crate) async fn raw_concurrent(b: &Bench, n: u64, tasks: u64) -> f64 {
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

pub(crate) async fn bus_concurrent(b: &Bench, n: u64, tasks: u64) -> f64 {
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

pub(crate) async fn bus_batch(b: &Bench, n: u64) -> f64 {
    let bus = b.bus(&b.ns("bus-batch"), &[]).await;
    let events: Vec<BenchEvent> = (0..n).map(event).collect();
    let t = Instant::now();
    for chunk in events.chunks(100) {
        bus.publish_batch(chunk).await.expect("publish_batch");
    }
    rate(n, t.elapsed())
}
