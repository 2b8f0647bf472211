//! How a chaos scenario runs: CI or full counts, one scenario at a time per test binary, and
//! timing how long a recovery takes.

use std::future::Future;
use std::time::{Duration, Instant};

/// Whether `EVENTBUS_CHAOS_FULL=1` asks for the full counts.
pub fn full() -> bool {
    std::env::var("EVENTBUS_CHAOS_FULL").is_ok_and(|v| v == "1")
}

/// `full_count` under `EVENTBUS_CHAOS_FULL=1`, else the smaller CI count.
pub fn count(ci: u64, full_count: u64) -> u64 {
    if full() { full_count } else { ci }
}

/// Runs chaos scenarios of one test binary one at a time: each one starts several processes and
/// loads the (small) machine, and its fault timings should not be skewed by a neighbour's.
/// Hold the guard for the whole test; it does not poison when a test fails.
pub async fn exclusive() -> tokio::sync::MutexGuard<'static, ()> {
    static LOCK: tokio::sync::Mutex<()> = tokio::sync::Mutex::const_new(());
    LOCK.lock().await
}

/// Waits (under a deadline) until `cond` holds and returns how long that took.
///
/// # Panics
///
/// As [`wait_until`](crate::wait_until).
pub async fn time_until<F, Fut>(timeout: Duration, what: &str, cond: F) -> Duration
where
    F: FnMut() -> Fut,
    Fut: Future<Output = bool>,
{
    let started = Instant::now();
    crate::wait_until(timeout, what, cond).await;
    started.elapsed()
}
