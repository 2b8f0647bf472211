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

#[path = "throughput/broadcast.rs"]
mod broadcast;
#[path = "throughput/consume.rs"]
mod consume;
#[path = "throughput/fixture.rs"]
mod fixture;
#[path = "throughput/latency.rs"]
mod latency;
#[path = "throughput/measure.rs"]
mod measure;
#[path = "throughput/publish.rs"]
mod publish;
#[path = "throughput/report.rs"]
mod report;
#[path = "throughput/rss.rs"]
mod rss;

use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};

use eventbus_tests::RedisServer;

use crate::broadcast::{bus_broadcast, raw_broadcast};
use crate::consume::{bus_drain, bus_live, raw_drain, raw_live};
use crate::fixture::{Bench, Probe, now_us};
use crate::latency::{bus_latency, raw_latency};
use crate::measure::{SERVER_PID, Side, once};
use crate::publish::{
    bus_awaited, bus_batch, bus_concurrent, raw_awaited, raw_awaited_with_timeout, raw_concurrent,
    raw_pipelined, raw_pipelined_serde,
};
use crate::report::{Percentiles, Series, report};
use crate::rss::{rss, rss_child};

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
