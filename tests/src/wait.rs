//! Waiting for a condition under a deadline, instead of sleeping a fixed time.

use std::time::{Duration, Instant};

/// Waits until `cond` returns true, checking every 10 ms, for at most `timeout`.
///
/// # Panics
///
/// When the deadline passes; the message names `what`.
pub async fn wait_until<F, Fut>(timeout: Duration, what: &str, mut cond: F)
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = bool>,
{
    let deadline = Instant::now() + timeout;
    loop {
        if cond().await {
            return;
        }
        assert!(
            Instant::now() < deadline,
            "timed out after {timeout:?} waiting for: {what}"
        );
        tokio::time::sleep(Duration::from_millis(10)).await; // ok: poll interval under a deadline
    }
}
