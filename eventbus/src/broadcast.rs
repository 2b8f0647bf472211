//! Broadcast delivery: one Pub/Sub connection per bus for every broadcast channel, a bounded
//! queue per handler, and the same pipeline as durable handlers (without acks).

use std::collections::{HashMap, VecDeque};
use std::sync::atomic::Ordering;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use futures_util::StreamExt;
use redis::aio::{PubSubSink, PubSubStream};
use tokio::sync::{Notify, Semaphore};
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;

use crate::bus::BusInner;
use crate::config::Overflow;
use crate::error::{Error, Result};
use crate::handler::HandlerRegistration;
use crate::health::Stats;
use crate::pipeline::{Outcome, Runner};
use crate::transport;

/// A bounded queue between the subscriber and one handler's runs, so that a slow handler never
/// makes the subscriber fall behind (Redis disconnects subscribers whose output buffer grows).
struct Queue {
    items: Mutex<VecDeque<Vec<u8>>>,
    notify: Notify,
    capacity: usize,
    overflow: Overflow,
}

impl Queue {
    /// Adds a message; false when one was dropped (the new one or the oldest).
    fn push(&self, item: Vec<u8>) -> bool {
        let Ok(mut items) = self.items.lock() else {
            return false;
        };
        let mut kept = true;
        if items.len() >= self.capacity {
            kept = false;
            match self.overflow {
                Overflow::DropNewest => return false,
                Overflow::DropOldest => {
                    items.pop_front();
                }
            }
        }
        items.push_back(item);
        drop(items);
        self.notify.notify_one();
        kept
    }

    fn pop(&self) -> Option<Vec<u8>> {
        self.items
            .lock()
            .ok()
            .and_then(|mut items| items.pop_front())
    }
}

/// One broadcast handler: its pipeline and its queue.
struct Lane {
    runner: Arc<Runner>,
    queue: Arc<Queue>,
}

/// The subscriber of one bus.
pub(crate) struct Subscriber {
    bus: Arc<BusInner>,
    /// Channel name → the lanes of the handlers subscribed to it.
    routes: HashMap<String, Vec<Arc<Lane>>>,
    lanes: Vec<Arc<Lane>>,
    /// Counters of the subscription itself (reconnects, gaps), shared with every lane's health.
    conn_stats: Vec<Arc<Stats>>,
    cancel: CancellationToken,
    tracker: TaskTracker,
    sink: Option<PubSubSink>,
    stream: Option<PubSubStream>,
}

impl Subscriber {
    pub(crate) fn new(
        bus: Arc<BusInner>,
        handlers: &[&'static HandlerRegistration],
        cancel: CancellationToken,
        abort: CancellationToken,
        tracker: TaskTracker,
    ) -> Subscriber {
        let mut routes: HashMap<String, Vec<Arc<Lane>>> = HashMap::new();
        let mut lanes = Vec::new();
        for handler in handlers {
            // Broadcast queues drain at shutdown (nothing would redeliver them): no cancel token.
            let runner = Arc::new(Runner::new(
                bus.clone(),
                handler,
                CancellationToken::new(),
                abort.clone(),
            ));
            let queue = Arc::new(Queue {
                items: Mutex::new(VecDeque::new()),
                notify: Notify::new(),
                capacity: bus.config.broadcast_queue,
                overflow: bus.config.broadcast_overflow,
            });
            let lane = Arc::new(Lane { runner, queue });
            let channel = transport::channel_key(&bus.config.namespace, handler.event_name);
            routes.entry(channel).or_default().push(lane.clone());
            lanes.push(lane);
        }
        let conn_stats = lanes.iter().map(|l| l.runner.stats.clone()).collect();
        Subscriber {
            bus,
            routes,
            lanes,
            conn_stats,
            cancel,
            tracker,
            sink: None,
            stream: None,
        }
    }

    /// The handlers' counters, for [`Health`](crate::Health).
    pub(crate) fn stats(&self) -> Vec<(&'static str, Arc<Stats>)> {
        self.lanes
            .iter()
            .map(|l| (l.runner.handler.name, l.runner.stats.clone()))
            .collect()
    }

    /// Connects and subscribes every channel; returns once Redis has confirmed them all, or
    /// fails after the connect timeout (a frozen server accepts connections but never answers).
    pub(crate) async fn subscribe(&mut self) -> redis::RedisResult<()> {
        let limit = self.bus.config.connect_timeout;
        let subscribed = async {
            let mut pubsub = self.bus.client.get_async_pubsub().await?;
            let mut channels: Vec<&String> = self.routes.keys().collect();
            channels.sort();
            pubsub.subscribe(channels).await?;
            Ok::<_, redis::RedisError>(pubsub.split())
        };
        let (sink, stream) = match tokio::time::timeout(limit, subscribed).await {
            Ok(result) => result?,
            Err(_) => {
                return Err(std::io::Error::new(
                    std::io::ErrorKind::TimedOut,
                    format!("SUBSCRIBE was not confirmed within {limit:?}"),
                )
                .into());
            }
        };
        self.sink = Some(sink);
        self.stream = Some(stream);
        self.set_connected(true);
        Ok(())
    }

    /// Connects and subscribes at start-up.
    pub(crate) async fn connect(mut self) -> Result<Subscriber> {
        if let Err(source) = self.subscribe().await {
            return Err(match source.code() {
                Some("NOPERM") => Error::redis("SUBSCRIBE")(source),
                _ => Error::connect(&self.bus.config.redis_url, source),
            });
        }
        Ok(self)
    }

    fn set_connected(&self, up: bool) {
        for s in &self.conn_stats {
            s.connected.store(up, Ordering::Relaxed);
        }
    }

    fn record(
        &self,
        counter: impl Fn(&Stats) -> &std::sync::atomic::AtomicU64,
        error: Option<String>,
    ) {
        for s in &self.conn_stats {
            Stats::add(counter(s), 1);
            s.set_error(error.clone());
        }
    }

    /// Spawns one worker per handler and runs the subscription until shutdown.
    pub(crate) fn spawn(mut self) {
        for lane in &self.lanes {
            self.tracker.spawn(work(
                lane.clone(),
                self.bus.clone(),
                self.cancel.clone(),
                self.tracker.clone(),
            ));
        }
        let tracker = self.tracker.clone();
        tracker.spawn(async move { self.run().await });
    }

    async fn run(&mut self) {
        let mut retry_delay = Duration::from_millis(100);
        // When the connection drops soon after a resubscribe, the next attempt waits (with
        // backoff): a server that keeps closing it must not see a tight reconnect loop.
        let mut subscribed_at = tokio::time::Instant::now();
        let ping_every = self.bus.config.block_time.max(Duration::from_millis(100));
        let mut ping = tokio::time::interval(ping_every);
        ping.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        let cancel = self.cancel.clone();
        loop {
            if self.cancel.is_cancelled() {
                break;
            }
            let Some(stream) = self.stream.as_mut() else {
                // Disconnected: resubscribe with backoff. Events published meanwhile are lost.
                if subscribed_at.elapsed() < Duration::from_secs(1) {
                    let d = retry_delay;
                    retry_delay = (retry_delay * 2).min(Duration::from_secs(5));
                    tokio::select! {
                        () = tokio::time::sleep(d) => {}
                        () = cancel.cancelled() => break,
                    }
                }
                for s in &self.conn_stats {
                    Stats::add(&s.reconnects, 1);
                }
                let subscribed = tokio::select! {
                    r = self.subscribe() => r,
                    () = cancel.cancelled() => break,
                };
                match subscribed {
                    Ok(()) => {
                        tracing::warn!(
                            channels = self.routes.len(),
                            "broadcast subscriber resubscribed; events published while it was disconnected were not received"
                        );
                        for s in &self.conn_stats {
                            s.set_error(None);
                        }
                        subscribed_at = tokio::time::Instant::now();
                    }
                    Err(e) => {
                        tracing::warn!(error = %e, "broadcast subscriber cannot reconnect; retrying");
                        self.record(|s| &s.read_errors, Some(format!("cannot subscribe: {e}")));
                        let d = retry_delay;
                        retry_delay = (retry_delay * 2).min(Duration::from_secs(5));
                        tokio::select! {
                            () = tokio::time::sleep(d) => {}
                            () = self.cancel.cancelled() => break,
                        }
                    }
                }
                continue;
            };
            tokio::select! {
                msg = stream.next() => match msg {
                    Some(msg) => {
                        retry_delay = Duration::from_millis(100); // the connection works
                        let Some(lanes) = self.routes.get(msg.get_channel_name()) else { continue };
                        for lane in lanes {
                            if !lane.queue.push(msg.get_payload_bytes().to_vec()) {
                                let dropped = lane.runner.stats.dropped.fetch_add(1, Ordering::Relaxed) + 1;
                                if dropped.is_power_of_two() {
                                    tracing::warn!(
                                        handler = lane.runner.handler.name,
                                        dropped,
                                        capacity = lane.queue.capacity,
                                        "broadcast queue full: dropping events (the handler is slower than the publish rate)"
                                    );
                                }
                            }
                        }
                    }
                    None => self.disconnected("the connection closed"),
                },
                _ = ping.tick() => {
                    // A frozen server or a half-open connection shows only as silence: ping it.
                    if let Some(sink) = self.sink.as_mut() {
                        let timeout = self.bus.config.block_time + transport::BLOCK_MARGIN;
                        // Subscribed (RESP2), PING answers `["pong", ""]`, not `PONG`: any reply.
                        let reply = tokio::select! {
                            r = tokio::time::timeout(timeout, sink.ping::<redis::Value>()) => r,
                            () = cancel.cancelled() => break,
                        };
                        match reply {
                            Ok(Ok(_)) => retry_delay = Duration::from_millis(100),
                            Ok(Err(e)) => self.disconnected(&e.to_string()),
                            Err(_) => self.disconnected("ping timed out"),
                        }
                    }
                }
                () = self.cancel.cancelled() => break,
            }
        }
        // Unsubscribe first (closing the connection), then the workers drain their queues.
        self.sink = None;
        self.stream = None;
        self.set_connected(false);
    }

    fn disconnected(&mut self, why: &str) {
        tracing::warn!(
            reason = why,
            "broadcast subscriber disconnected; reconnecting (events published until it resubscribes are lost)"
        );
        self.sink = None;
        self.stream = None;
        self.set_connected(false);
        self.record(|s| &s.gaps, Some(format!("subscriber disconnected: {why}")));
    }
}

/// Runs one handler's queued events under its concurrency limit until shutdown, then drains
/// what is queued (within the drain timeout; the abort token ends it).
async fn work(
    lane: Arc<Lane>,
    bus: Arc<BusInner>,
    cancel: CancellationToken,
    tracker: TaskTracker,
) {
    let semaphore = Arc::new(Semaphore::new(lane.runner.concurrency()));
    loop {
        // Take a run slot before taking an event: an event popped while every slot is busy would
        // wait outside the queue, beyond its capacity and out of reach of `DropOldest`.
        let Ok(permit) = semaphore.clone().acquire_owned().await else {
            break;
        };
        let item = loop {
            match lane.queue.pop() {
                Some(item) => break Some(item),
                None if cancel.is_cancelled() => break None,
                None => {
                    tokio::select! {
                        () = lane.queue.notify.notified() => {}
                        () = cancel.cancelled() => {}
                    }
                }
            }
        };
        let Some(item) = item else {
            break;
        };
        let lane = lane.clone();
        let mut conn = bus.conn.clone();
        tracker.spawn(async move {
            match lane.runner.run(&item, 1).await {
                Outcome::Ack => Stats::add(&lane.runner.stats.handled, 1),
                Outcome::DeadLetter(failure) => {
                    lane.runner.dead_letter(&mut conn, None, &failure).await
                }
                Outcome::Skip | Outcome::Lost | Outcome::Abandoned | Outcome::Released => {}
            }
            drop(permit);
        });
    }
}
