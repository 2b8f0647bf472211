//! Consuming, raw (`XREADGROUP` + `XACK`) and through eventbus: draining a prefilled backlog, and
//! live end to end while a producer publishes.

use std::time::{Duration, Instant};

use redis::streams::StreamReadReply;

use crate::fixture::{Bench, BenchEvent, event, rate, stream};

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

pub(crate) async fn raw_drain(b: &Bench, n: u64) -> f64 {
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

pub(crate) async fn bus_drain(b: &Bench, n: u64) -> f64 {
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

pub(crate) async fn raw_live(b: &Bench, n: u64) -> f64 {
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

pub(crate) async fn bus_live(b: &Bench, n: u64) -> f64 {
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
