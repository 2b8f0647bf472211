//! Peak memory (RSS) of a bus draining a large backlog, measured in a child process.

use std::sync::Arc;
use std::time::Duration;

use eventbus::prelude::*;

use crate::fixture::{Bench, Probe, stream};

/// In a child process: drain a prefilled backlog with one handler; print the peak RSS.
pub(crate) async fn rss_child(url: String, ns: String, n: u64) {
    let probe = Arc::new(Probe::default());
    probe.reset(n, false);
    let bus = Bus::builder()
        .redis_url(url)
        .namespace(ns)
        .handlers(["bench.noop"])
        .state(probe.clone())
        .batch_size(100)
        .concurrency(64)
        .build()
        .await
        .expect("build");
    let running = bus.start().await.expect("start");
    probe.wait(Duration::from_secs(900)).await;
    running.shutdown().await.expect("shutdown");
    let status = std::fs::read_to_string("/proc/self/status").unwrap_or_default();
    let hwm = status
        .lines()
        .find(|l| l.starts_with("VmHWM:"))
        .unwrap_or("VmHWM: 0 kB")
        .to_owned();
    println!("{hwm}");
}

pub(crate) async fn rss(b: &Bench, n: u64) -> Option<u64> {
    let ns = b.ns("rss");
    b.prefill(&stream(&ns), n).await;
    let exe = std::env::current_exe().ok()?;
    let out = tokio::process::Command::new(exe)
        .arg("--rss-child")
        .arg(b.server.url())
        .arg(&ns)
        .arg(n.to_string())
        .output()
        .await
        .ok()?;
    let text = String::from_utf8_lossy(&out.stdout);
    text.lines()
        .find(|l| l.starts_with("VmHWM:"))
        .and_then(|l| l.split_whitespace().nth(1))
        .and_then(|kb| kb.parse().ok())
}
