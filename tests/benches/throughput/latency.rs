//! End-to-end latency of stream delivery, raw and through eventbus, at one event per millisecond.

use std::time::Duration;

use redis::streams::StreamReadReply;

use crate::fixture::{Bench, event, now_us, stream};

/// Publishes one event per millisecond for `secs` seconds; returns per-event latencies (µs).
pub(crate) async fn raw_latency(b: &Bench, secs: u64) -> Vec<u64> {
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

pub(crate) async fn bus_latency(b: &Bench, secs: u64) -> Vec<u64> {
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
