//! One run of a rate scenario: its rate, and the CPU time per message of this process and of the
//! redis-server; `EVENTBUS_BENCH_SIDE` skips one side.

use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Instant;

/// Which client a measurement runs.
#[derive(Clone, Copy, PartialEq, Eq)]
pub(crate) enum Side {
    Raw,
    Bus,
}

/// One run of a rate scenario.
pub(crate) struct Run {
    pub(crate) rate: f64,
    /// CPU time per message of this process and of the redis-server, in microseconds.
    pub(crate) cpu_us: Option<(f64, f64)>,
}

/// Runs one rate scenario once (the future returns messages per second), recording CPU time.
/// Scenarios alternate raw and eventbus runs, so a slow spell on the shared machine hits both
/// sides. `EVENTBUS_BENCH_SIDE=raw|bus` skips the other side (for profiling one side).
pub(crate) async fn once(side: Side, run: impl std::future::Future<Output = f64>) -> Option<Run> {
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
pub(crate) static SERVER_PID: AtomicU64 = AtomicU64::new(0);

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
