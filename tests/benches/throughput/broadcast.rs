//! Pub/Sub broadcast, raw and through eventbus: throughput in batches of 100, latency at one
//! message per millisecond.

use std::time::{Duration, Instant};

use eventbus::prelude::*;

use crate::fixture::{Bench, BenchPing, now_us, rate};

pub(crate) async fn raw_broadcast(b: &Bench, n: u64, per_ms: bool) -> (f64, Vec<u64>) {
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

pub(crate) async fn bus_broadcast(b: &Bench, n: u64, per_ms: bool) -> (f64, Vec<u64>) {
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
