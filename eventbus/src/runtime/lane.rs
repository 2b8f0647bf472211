//! Broadcast delivery: one subscription per bus for every broadcast channel, a bounded queue
//! per handler, and the same pipeline as durable handlers (without acks).

use std::collections::{HashMap, VecDeque};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex, PoisonError};
use std::time::Duration;

use tokio::sync::{Notify, RwLock, Semaphore};
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;

use crate::config::{Config, Overflow};
use crate::error::{Result, TransportError};
use crate::pipeline::{Failure, Outcome, Runner};
use crate::runtime::settle::dead_letter;
use crate::telemetry::Stats;
use crate::transport::stream::Stream;
use crate::transport::subscribe::{Received, Subscription};
use crate::transport::{self, Transport};

/// One received message. Every handler's queue holds the same allocation: a message is copied
/// out of the connection's buffer once, never once per handler.
type Payload = Arc<[u8]>;

/// How many dead letters for oversized messages may be waiting to be written at once (Redis
/// slow or refusing); past that, an oversized message is dropped and counted instead, so that a
/// flood of them cannot pile up tasks.
const MAX_PENDING_REJECTS: usize = 64;

/// How much of an oversized message its dead letter keeps, like the pipeline's.
const REJECTED_ENVELOPE_BYTES: usize = 4096;

/// A bounded queue between the subscriber and one handler's runs, so that a slow handler never
/// makes the subscriber fall behind (Redis disconnects subscribers whose output buffer grows).
/// Bounded twice: by count (`broadcast_queue`) and by the bytes of the queued payloads
/// (`broadcast_queue_bytes`).
struct Queue {
    state: Mutex<Queued>,
    notify: Notify,
    capacity: usize,
    max_bytes: usize,
    overflow: Overflow,
}

#[derive(Default)]
struct Queued {
    items: VecDeque<Payload>,
    /// The sum of the queued payloads' lengths.
    bytes: usize,
}

impl Queue {
    fn new(capacity: usize, max_bytes: usize, overflow: Overflow) -> Queue {
        Queue {
            state: Mutex::new(Queued::default()),
            notify: Notify::new(),
            capacity,
            max_bytes,
            overflow,
        }
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, Queued> {
        // Nothing panics while holding the lock; a poisoned queue is still consistent.
        self.state.lock().unwrap_or_else(PoisonError::into_inner)
    }

    /// Adds a message, dropping per the overflow policy until both the count and the byte bound
    /// hold: `DropOldest` evicts from the front (as many as it takes), `DropNewest` refuses the
    /// new one. Returns how many messages were dropped (0 when nothing was).
    fn push(&self, item: Payload) -> u64 {
        let size = item.len();
        if size > self.max_bytes {
            // It could never fit: evict nothing for it. (The configuration keeps this from
            // happening: `broadcast_queue_bytes` is at least `max_payload`.)
            return 1;
        }
        let mut q = self.lock();
        let fits = |q: &Queued| {
            q.items.len() < self.capacity && q.bytes.saturating_add(size) <= self.max_bytes
        };
        let mut dropped = 0;
        while !fits(&q) {
            if self.overflow == Overflow::DropNewest {
                return dropped + 1;
            }
            match q.items.pop_front() {
                Some(old) => {
                    q.bytes -= old.len();
                    dropped += 1;
                }
                None => return dropped + 1, // unreachable: an empty queue fits `size`
            }
        }
        q.bytes += size;
        q.items.push_back(item);
        drop(q);
        self.notify.notify_one();
        dropped
    }

    fn pop(&self) -> Option<Payload> {
        let mut q = self.lock();
        let item = q.items.pop_front()?;
        q.bytes -= item.len();
        Some(item)
    }
}

/// What the broadcast subscriber uses of its bus: the transport, the settings of its queues,
/// and the process-wide lock every handler run shares.
pub(crate) struct Broadcast {
    pub(crate) transport: Transport,
    pub(crate) namespace: Arc<str>,
    /// This process's consumer name.
    pub(crate) consumer: Arc<str>,
    pub(crate) max_payload: usize,
    /// Per-handler queue bounds (`broadcast_queue`, `broadcast_queue_bytes`) and what a full
    /// queue drops.
    pub(crate) queue: usize,
    pub(crate) queue_bytes: usize,
    pub(crate) overflow: Overflow,
    /// Every handler run in this process holds it shared; a durable suspect holds it
    /// exclusively, so it runs alone in the process.
    pub(crate) alone: Arc<RwLock<()>>,
}

impl Broadcast {
    pub(crate) fn new(config: &Config, transport: Transport, alone: Arc<RwLock<()>>) -> Broadcast {
        Broadcast {
            transport,
            namespace: config.namespace.as_str().into(),
            consumer: config.consumer.as_str().into(),
            max_payload: config.max_payload,
            queue: config.broadcast_queue,
            queue_bytes: config.broadcast_queue_bytes,
            overflow: config.broadcast_overflow,
            alone,
        }
    }
}

/// One broadcast handler: its pipeline, its queue and where its dead letters go.
struct Lane {
    runner: Arc<Runner>,
    queue: Arc<Queue>,
    /// Where its dead letters go.
    stream: Stream,
    /// Runs in flight (taken off the queue, not finished).
    running: AtomicUsize,
}

/// Whether a subscriber's lanes are idle: nothing queued, nothing running. For
/// `testing::TestBus::run_until_idle`.
#[derive(Clone)]
pub(crate) struct LanesIdle(Vec<Arc<Lane>>);

impl std::fmt::Debug for LanesIdle {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("LanesIdle")
            .field("lanes", &self.0.len())
            .finish()
    }
}

impl LanesIdle {
    /// True when every lane's queue is empty, nothing runs, and the subscription is up (a
    /// dropped one is being replaced: what is published meanwhile would be lost).
    #[cfg_attr(not(feature = "testing"), allow(dead_code))]
    pub(crate) fn is_idle(&self) -> bool {
        self.0.iter().all(|l| {
            l.queue.lock().items.is_empty()
                && l.running.load(Ordering::Acquire) == 0
                && l.runner.stats.connected.load(Ordering::Acquire)
        })
    }
}

/// The subscriber of one bus.
pub(crate) struct Subscriber {
    bus: Arc<Broadcast>,
    /// Channel name → the lanes of the handlers subscribed to it.
    routes: HashMap<String, Vec<Arc<Lane>>>,
    lanes: Vec<Arc<Lane>>,
    /// Counters of the subscription itself (reconnects, gaps), shared with every lane's health.
    conn_stats: Vec<Arc<Stats>>,
    cancel: CancellationToken,
    tracker: TaskTracker,
    subscription: Option<Subscription>,
    /// Dead letters of oversized messages being written (at most [`MAX_PENDING_REJECTS`]).
    rejects: Arc<Semaphore>,
}

impl Subscriber {
    /// A subscriber running one pipeline per broadcast handler (`runners`: their queues drain at
    /// shutdown, as nothing would redeliver them).
    pub(crate) fn new(
        bus: Broadcast,
        runners: Vec<Runner>,
        cancel: CancellationToken,
        tracker: TaskTracker,
    ) -> Subscriber {
        let mut routes: HashMap<String, Vec<Arc<Lane>>> = HashMap::new();
        let mut lanes = Vec::new();
        for runner in runners {
            let event = runner.handler.event_name;
            let queue = Arc::new(Queue::new(bus.queue, bus.queue_bytes, bus.overflow));
            let stream =
                bus.transport
                    .stream(&bus.namespace, event, runner.handler.name, &bus.consumer);
            let lane = Arc::new(Lane {
                runner: Arc::new(runner),
                queue,
                stream,
                running: AtomicUsize::new(0),
            });
            let channel = transport::channel_key(&bus.namespace, event);
            routes.entry(channel).or_default().push(lane.clone());
            lanes.push(lane);
        }
        let conn_stats = lanes.iter().map(|l| l.runner.stats.clone()).collect();
        Subscriber {
            bus: Arc::new(bus),
            routes,
            lanes,
            conn_stats,
            cancel,
            tracker,
            subscription: None,
            rejects: Arc::new(Semaphore::new(MAX_PENDING_REJECTS)),
        }
    }

    /// The handlers' counters, for [`Health`](crate::Health).
    /// A probe of whether its lanes are idle.
    pub(crate) fn idle_probe(&self) -> LanesIdle {
        LanesIdle(self.lanes.clone())
    }

    pub(crate) fn stats(&self) -> Vec<(&'static str, Arc<Stats>)> {
        self.lanes
            .iter()
            .map(|l| (l.runner.handler.name, l.runner.stats.clone()))
            .collect()
    }

    /// Subscribes every channel; returns once the transport has confirmed them all, or fails
    /// after the connect timeout.
    async fn subscribe(&mut self) -> std::result::Result<(), TransportError> {
        let mut channels: Vec<&str> = self.routes.keys().map(String::as_str).collect();
        channels.sort_unstable();
        self.subscription = Some(self.bus.transport.subscribe(&channels).await?);
        self.set_connected(true);
        Ok(())
    }

    /// Subscribes at start-up.
    pub(crate) async fn connect(mut self) -> Result<Subscriber> {
        if let Err(source) = self.subscribe().await {
            return Err(self.bus.transport.subscribe_error(source));
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
        let cancel = self.cancel.clone();
        loop {
            if self.cancel.is_cancelled() {
                break;
            }
            let Some(subscription) = self.subscription.as_mut() else {
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
                received = subscription.recv() => match received {
                    Received::Message(msg) => {
                        retry_delay = Duration::from_millis(100); // the connection works
                        self.receive(msg.channel(), msg.payload());
                    }
                    Received::Alive => retry_delay = Duration::from_millis(100),
                    Received::Lost(why) => self.disconnected(&why),
                },
                () = cancel.cancelled() => break,
            }
        }
        // Unsubscribe first (closing the connection), then the workers drain their queues.
        self.subscription = None;
        self.set_connected(false);
    }

    /// Hands one received message to the queue of every handler of its channel. The size check
    /// runs here, before anything is queued: an oversized message is dead-lettered at once (one
    /// letter per handler) and never queued or copied. Otherwise the payload is copied out of the
    /// connection once and shared by every queue.
    fn receive(&self, channel: &str, payload: &[u8]) {
        let Some(lanes) = self.routes.get(channel) else {
            return;
        };
        let max = self.bus.max_payload;
        if payload.len() > max {
            self.reject_oversized(lanes, payload);
            return;
        }
        let shared: Payload = Arc::from(payload);
        for lane in lanes {
            let dropped = lane.queue.push(shared.clone());
            if dropped > 0 {
                count_dropped(
                    lane,
                    dropped,
                    "broadcast queue full: dropping events (the handler is slower than the publish rate)",
                );
            }
        }
    }

    /// Dead-letters an oversized message for every handler of its channel, in the background
    /// (the subscriber never waits for Redis), with the reason and the envelope's first
    /// [`REJECTED_ENVELOPE_BYTES`] bytes, as the pipeline does for a durable entry.
    fn reject_oversized(&self, lanes: &[Arc<Lane>], payload: &[u8]) {
        let max = self.bus.max_payload;
        let Ok(permit) = self.rejects.clone().try_acquire_owned() else {
            for lane in lanes {
                count_dropped(
                    lane,
                    1,
                    "oversized broadcast message dropped: too many dead letters are waiting to be written (is Redis refusing them? see the handler's health)",
                );
            }
            return;
        };
        let failure = Failure {
            event_id: None,
            error: format!(
                "envelope is {} bytes, more than the maximum payload of {max}",
                payload.len()
            ),
            attempts: 0,
            envelope: String::from_utf8_lossy(
                &payload[..payload.len().min(REJECTED_ENVELOPE_BYTES)],
            )
            .into_owned(),
        };
        let lanes = lanes.to_vec();
        self.tracker.spawn(async move {
            for lane in &lanes {
                dead_letter(&lane.runner, &lane.stream, None, &failure).await;
            }
            drop(permit);
        });
    }

    fn disconnected(&mut self, why: &str) {
        tracing::warn!(
            reason = why,
            "broadcast subscriber disconnected; reconnecting (events published until it resubscribes are lost)"
        );
        self.subscription = None;
        self.set_connected(false);
        self.record(|s| &s.gaps, Some(format!("subscriber disconnected: {why}")));
    }
}

/// Counts `n` dropped messages of one handler, warning at each power of two.
fn count_dropped(lane: &Lane, n: u64, why: &'static str) {
    let before = lane.runner.stats.dropped.fetch_add(n, Ordering::Relaxed);
    let after = before + n;
    // Warn when the count passes a power of two: often at first, then rarely.
    if before == 0 || after.ilog2() > before.ilog2() {
        tracing::warn!(
            handler = lane.runner.handler.name,
            dropped = after,
            capacity = lane.queue.capacity,
            max_bytes = lane.queue.max_bytes,
            "{why}"
        );
    }
}

/// Runs one handler's queued events under its concurrency limit until shutdown, then drains
/// what is queued (within the drain timeout; the abort token ends it).
async fn work(
    lane: Arc<Lane>,
    bus: Arc<Broadcast>,
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
        if lane.runner.abort.is_cancelled() {
            // The drain was abandoned: what is still queued is dropped, as a dead process's
            // memory is.
            break;
        }
        lane.running.fetch_add(1, Ordering::AcqRel);
        let lane = lane.clone();
        let bus = bus.clone();
        tracker.spawn(async move {
            // Shared with every other run of the process; a durable suspect runs alone.
            let _shared = bus.alone.clone().read_owned().await;
            match lane.runner.run(&item).await {
                Outcome::Ack => Stats::add(&lane.runner.stats.handled, 1),
                Outcome::DeadLetter(failure) => {
                    dead_letter(&lane.runner, &lane.stream, None, &failure).await
                }
                Outcome::Skip | Outcome::Lost | Outcome::Abandoned | Outcome::Released => {}
            }
            lane.running.fetch_sub(1, Ordering::AcqRel);
            drop(permit);
        });
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn payload(len: usize) -> Payload {
        Arc::from(vec![b'x'; len])
    }

    fn lens(q: &Queue) -> Vec<usize> {
        q.lock().items.iter().map(|p| p.len()).collect()
    }

    #[test]
    fn drop_oldest_evicts_until_count_and_bytes_fit() {
        let q = Queue::new(3, 100, Overflow::DropOldest);
        assert_eq!(q.push(payload(40)), 0);
        assert_eq!(q.push(payload(41)), 0);
        // 81 + 90 > 100: both older ones go.
        assert_eq!(q.push(payload(90)), 2);
        assert_eq!((lens(&q), q.lock().bytes), (vec![90], 90));
        assert_eq!(q.push(payload(10)), 0);
        assert_eq!(q.push(payload(0)), 0);
        // The count bound: the oldest goes.
        assert_eq!(q.push(payload(0)), 1);
        assert_eq!((lens(&q), q.lock().bytes), (vec![10, 0, 0], 10));
        assert_eq!(q.pop().map(|p| p.len()), Some(10));
        assert_eq!(q.lock().bytes, 0);
    }

    #[test]
    fn drop_newest_refuses_what_does_not_fit() {
        let q = Queue::new(3, 100, Overflow::DropNewest);
        assert_eq!(q.push(payload(60)), 0);
        assert_eq!(q.push(payload(41)), 1);
        assert_eq!(q.push(payload(40)), 0);
        assert_eq!(q.push(payload(0)), 0);
        assert_eq!(q.push(payload(0)), 1, "the count bound");
        assert_eq!((lens(&q), q.lock().bytes), (vec![60, 40, 0], 100));
    }

    #[test]
    fn larger_than_the_byte_bound_is_dropped_whatever_the_policy() {
        for overflow in [Overflow::DropOldest, Overflow::DropNewest] {
            let q = Queue::new(3, 100, overflow);
            assert_eq!(q.push(payload(50)), 0);
            assert_eq!(q.push(payload(101)), 1);
            assert_eq!(lens(&q), [50], "nothing evicted for it");
        }
    }

    #[test]
    fn one_payload_is_shared_by_every_queue() {
        let a = Queue::new(4, 1000, Overflow::DropOldest);
        let b = Queue::new(4, 1000, Overflow::DropOldest);
        let shared = payload(500);
        a.push(shared.clone());
        b.push(shared.clone());
        assert_eq!(Arc::strong_count(&shared), 3);
        let (x, y) = (a.pop().expect("queued"), b.pop().expect("queued"));
        assert!(
            Arc::ptr_eq(&x, &y) && Arc::ptr_eq(&x, &shared),
            "not copied"
        );
    }
}
