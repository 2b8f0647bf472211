//! [`Load`]: publisher tasks that keep a stream flowing while a scenario's faults happen.

use std::time::{Duration, Instant};

use eventbus::{Bus, DomainEvent};
use tokio::sync::watch;
use tokio::task::JoinSet;

use super::Checker;

/// How a [`Load`] publishes.
#[derive(Debug, Clone)]
pub struct LoadOptions {
    /// Concurrent publisher tasks; task `k` publishes `n = start + k, start + k + tasks, ...` in
    /// order.
    pub tasks: u64,
    /// Target publish rate over all tasks (events per second); the faults of a scenario are
    /// timed against it, so it keeps the stream flowing while they happen.
    pub rate_per_sec: u64,
    /// How long one event is retried after failed publishes before it is left uncertain.
    pub give_up_after: Duration,
    /// Events `n >= hold_at` are not published until [`Load::release`]: a test holds back the
    /// tail of the stream until its faults are done, so they are sure to happen mid-stream.
    pub hold_at: u64,
}

impl Default for LoadOptions {
    fn default() -> Self {
        LoadOptions {
            tasks: 4,
            rate_per_sec: 1000,
            give_up_after: Duration::from_secs(30),
            hold_at: u64::MAX,
        }
    }
}

/// Publisher tasks that publish a range of event numbers, each event retried until `publish` returns `Ok` or
/// [`LoadOptions::give_up_after`] passes, recording every outcome in a [`Checker`].
#[derive(Debug)]
pub struct Load {
    tasks: JoinSet<()>,
    gate: watch::Sender<u64>,
    total: u64,
}

impl Load {
    /// Starts publishing `make(n)` for `n` in `ids` on `bus`.
    pub fn start<E, F>(
        bus: &Bus,
        checker: &Checker,
        ids: std::ops::Range<u64>,
        opts: LoadOptions,
        make: F,
    ) -> Load
    where
        E: DomainEvent,
        F: Fn(u64) -> E + Clone + Send + Sync + 'static,
    {
        let (gate, _) = watch::channel(opts.hold_at);
        let mut tasks = JoinSet::new();
        let tasks_n = opts.tasks.max(1);
        let period = Duration::from_secs_f64(tasks_n as f64 / opts.rate_per_sec.max(1) as f64);
        for k in 0..tasks_n {
            let bus = bus.clone();
            let checker = checker.clone();
            let make = make.clone();
            let mut gate = gate.subscribe();
            let give_up = opts.give_up_after;
            let ids = ids.clone();
            tasks.spawn(async move {
                let mut pace = tokio::time::interval(period);
                pace.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
                let mut n = ids.start + k;
                while n < ids.end {
                    if gate.wait_for(|&limit| n < limit).await.is_err() {
                        return; // the load was dropped
                    }
                    pace.tick().await;
                    let ev = make(n);
                    let started = Instant::now();
                    let mut backoff = Duration::from_millis(20);
                    loop {
                        match bus.publish(&ev).await {
                            Ok(_) => {
                                checker.published(n);
                                break;
                            }
                            Err(e) => {
                                checker.publish_failed(n);
                                if started.elapsed() > give_up {
                                    tracing::warn!(n, error = %e, "giving up publishing");
                                    break;
                                }
                                tokio::time::sleep(backoff).await; // ok: backoff before retrying a failed publish
                                backoff = (backoff * 2).min(Duration::from_millis(500));
                            }
                        }
                    }
                    n += tasks_n;
                }
            });
        }
        Load {
            tasks,
            gate,
            total: ids.end.saturating_sub(ids.start),
        }
    }

    /// Lets the held-back tail (`n >= hold_at`) be published.
    pub fn release(&self) {
        self.gate.send_replace(u64::MAX);
    }

    /// The number of events this load publishes.
    pub fn total(&self) -> u64 {
        self.total
    }

    /// Releases any held-back tail and waits until every event was published or given up.
    ///
    /// # Panics
    ///
    /// When that takes longer than `timeout`, or a publisher task panicked.
    pub async fn finish(mut self, timeout: Duration) {
        self.release();
        let all = async {
            while let Some(r) = self.tasks.join_next().await {
                r.expect("publisher task");
            }
        };
        tokio::time::timeout(timeout, all)
            .await
            .unwrap_or_else(|_| panic!("publishing did not finish within {timeout:?}"));
    }
}
