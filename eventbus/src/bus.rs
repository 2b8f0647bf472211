//! [`Bus`]: publish events and run handlers; [`RunningBus`]: the handle for shutdown.

use std::sync::Arc;
use std::time::{Duration, SystemTime};

use crate::transport::{Bounded, SharedConn};
use tokio::time::Instant;
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;

use crate::broadcast::Subscriber;
use crate::coalesce::Coalescer;
use crate::config::{BusBuilder, Config};
use crate::dispatcher::Reader;
use crate::dlq::DeadLetters;
use crate::envelope::{self, EventId, Meta};
use crate::error::{Error, Result};
use crate::event::{Delivery, DomainEvent};
use crate::extract::States;
use crate::handler::HandlerRegistration;
use crate::health::{ConnStats, Health, Stats};
use crate::{registry, transport};

/// An event bus over Redis: publishes events and runs the registered handlers.
///
/// Cheap to clone; clones share connections.
///
/// ```no_run
/// use eventbus::prelude::*;
///
/// #[derive(Debug, Clone, Serialize, Deserialize, DomainEvent)]
/// struct ChatCreated { chat_id: u64 }
///
/// # async fn run() -> eventbus::Result<()> {
/// let bus = Bus::builder().namespace("demo").build().await?;
/// let running = bus.start().await?;          // every handler's group exists, readers run
/// let id = bus.publish(&ChatCreated { chat_id: 7 }).await?;
/// println!("published {id}");
/// running.shutdown().await?;                 // stop reading, drain in-flight handlers
/// # Ok(()) }
/// ```
#[derive(Clone, Debug)]
pub struct Bus {
    inner: Arc<BusInner>,
}

#[derive(Debug)]
pub(crate) struct BusInner {
    pub(crate) config: Config,
    pub(crate) client: redis::Client,
    pub(crate) conn: SharedConn,
    pub(crate) handlers: Vec<&'static HandlerRegistration>,
    pub(crate) states: Arc<States>,
    pub(crate) publisher: Publisher,
    /// Every handler run in this process holds it shared; a suspect (an entry redelivered
    /// after a possible crash) holds it exclusively, so it runs alone in the process and a crash
    /// during its run can only be its own.
    pub(crate) alone: Arc<tokio::sync::RwLock<()>>,
}

/// Writes envelopes; shared by the bus and every handler's [`Context`](crate::Context).
#[derive(Clone, Debug)]
pub(crate) struct Publisher {
    conn: SharedConn,
    coalescer: Coalescer,
    namespace: Arc<str>,
    source: Arc<str>,
    max_len: Option<usize>,
    max_payload: usize,
    /// The bound on one publish call, retries included.
    publish_timeout: Duration,
}

/// The retry schedule of one publish call: transient errors are retried, with the same ids,
/// after 50 ms, 100 ms, 200 ms, ... (capped at [`PUBLISH_BACKOFF_MAX`]) until the call's
/// `publish_timeout` passes.
struct Retry {
    delay: Duration,
    /// The error of the attempt just retried, kept for a timeout's message.
    last: Option<redis::RedisError>,
}

impl Default for Retry {
    fn default() -> Self {
        Retry {
            delay: PUBLISH_BACKOFF_MIN,
            last: None,
        }
    }
}

impl Retry {
    /// Waits before the next attempt and returns true when `error` is worth retrying and the
    /// next attempt can start before `deadline`; false otherwise (at once when not transient).
    async fn wait(
        &mut self,
        event: &'static str,
        error: &redis::RedisError,
        deadline: Instant,
    ) -> bool {
        if !crate::transport::redis::errors::is_transient(error) {
            return false;
        }
        let left = deadline.saturating_duration_since(Instant::now());
        if left <= self.delay {
            return false;
        }
        tracing::debug!(event_name = event, error = %error, delay = ?self.delay, "publish failed; retrying");
        tokio::time::sleep(self.delay).await;
        self.delay = (self.delay * 2).min(PUBLISH_BACKOFF_MAX);
        true
    }
}

/// Room reserved for one envelope in a new command; larger ones grow the buffer.
const ENVELOPE_SIZE_HINT: usize = 512;

impl Publisher {
    /// Encodes one event and builds its command: `XADD` (durable) or `PUBLISH` (broadcast).
    fn command<E: DomainEvent>(
        &self,
        key: &str,
        head: &envelope::Head,
        id: &EventId,
        time: SystemTime,
        event: &E,
    ) -> Result<redis::Cmd> {
        let mut cmd = redis::Cmd::with_capacity(8, 128 + key.len() + ENVELOPE_SIZE_HINT);
        match E::DELIVERY {
            Delivery::Durable => {
                cmd.arg("XADD").arg(key);
                if let Some(n) = self.max_len {
                    cmd.arg("MAXLEN").arg("~").arg(n);
                }
                cmd.arg("*").arg(envelope::FIELD_ENVELOPE);
            }
            Delivery::Broadcast => {
                cmd.arg("PUBLISH").arg(key);
            }
        }
        let size = envelope::with_encoded(head, id, time, event, |json| {
            if json.len() <= self.max_payload {
                cmd.arg(json);
            }
            json.len()
        })
        .map_err(|source| Error::Encode {
            event: E::NAME,
            source,
        })?;
        if size > self.max_payload {
            return Err(Error::PayloadTooLarge {
                event: E::NAME,
                size,
                max: self.max_payload,
            });
        }
        Ok(cmd)
    }

    /// The stream (durable) or channel (broadcast) of an event type.
    fn key<E: DomainEvent>(&self) -> String {
        match E::DELIVERY {
            Delivery::Durable => transport::stream_key(&self.namespace, E::NAME),
            Delivery::Broadcast => transport::channel_key(&self.namespace, E::NAME),
        }
    }

    fn command_name<E: DomainEvent>() -> &'static str {
        match E::DELIVERY {
            Delivery::Durable => "XADD",
            Delivery::Broadcast => "PUBLISH",
        }
    }

    /// One event through the coalescer, bounded by `publish_timeout`. A retry after a transient
    /// error encodes the event again with the same id (so the happy path never copies the
    /// command).
    pub(crate) async fn publish<E: DomainEvent>(&self, event: &E, meta: &Meta) -> Result<EventId> {
        let key = self.key::<E>();
        let head = envelope::Head::new::<E>(&self.source, meta);
        let time = SystemTime::now();
        let id = EventId::at(time);
        let deadline = Instant::now() + self.publish_timeout;
        let mut retry = Retry::default();
        loop {
            let cmd = self.command(&key, &head, &id, time, event)?;
            let generation = self.conn.generation();
            let error = match self
                .conn
                .bounded(self.coalescer.query(cmd), generation, Some(deadline))
                .await
            {
                Bounded::Done(Ok(_)) => {
                    self.conn.publish_succeeded();
                    return Ok(id);
                }
                Bounded::Done(Err(e)) => e,
                // Stuck on a connection that was replaced meanwhile: send it on the new one.
                Bounded::Replaced => continue,
                Bounded::Elapsed => return Err(self.timed_out::<E>(retry.last.take())),
            };
            if let Some(e) = self.give_up::<E>(&key, error, &mut retry, deadline).await {
                return Err(e);
            }
        }
    }

    /// After a failed attempt: records it in health, then waits for the next attempt (`None`)
    /// or returns the call's error.
    async fn give_up<E: DomainEvent>(
        &self,
        key: &str,
        error: redis::RedisError,
        retry: &mut Retry,
        deadline: Instant,
    ) -> Option<Error> {
        self.conn.publish_failed(
            format!("publish of `{}` failed: {error}", E::NAME),
            Some(&error),
        );
        if retry.wait(E::NAME, &error, deadline).await {
            retry.last = Some(error);
            return None;
        }
        if crate::transport::redis::errors::is_transient(&error) {
            return Some(self.timed_out::<E>(Some(error)));
        }
        self.conn.count_publish_error();
        Some(crate::transport::redis::errors::to_error_key(
            Self::command_name::<E>(),
            key,
        )(error))
    }

    /// The error of a publish call whose `publish_timeout` passed.
    fn timed_out<E: DomainEvent>(&self, last_error: Option<redis::RedisError>) -> Error {
        let error = Error::Timeout {
            operation: format!("publish of `{}`", E::NAME),
            limit: self.publish_timeout,
            last_error: last_error.map(|e| e.to_string()),
        };
        self.conn.publish_failed(error.to_string(), None);
        self.conn.count_publish_error();
        error
    }

    pub(crate) async fn publish_batch<E: DomainEvent>(
        &self,
        events: &[E],
        meta: &Meta,
    ) -> Result<Vec<EventId>> {
        let mut ids = Vec::with_capacity(events.len());
        let mut pipe = redis::Pipeline::with_capacity(events.len());
        let key = self.key::<E>();
        let head = envelope::Head::new::<E>(&self.source, meta);
        // One clock reading for the batch: one publish time; the ids differ in their random bits.
        let time = SystemTime::now();
        for event in events {
            let id = EventId::at(time);
            // Not `.ignore()`d: that costs a hash insert per command, and the replies are
            // dropped below all the same.
            pipe.add_command(self.command(&key, &head, &id, time, event)?);
            ids.push(id);
        }
        if ids.is_empty() {
            return Ok(ids);
        }
        // Transient connection errors resend the same pipeline (same ids), so a retry after a
        // lost reply may store an event twice, both copies carrying one id.
        let deadline = Instant::now() + self.publish_timeout;
        let mut retry = Retry::default();
        loop {
            let mut conn = self.conn.unwatched();
            let generation = self.conn.generation();
            let query = pipe.query_async::<redis::Value>(&mut conn);
            let error = match self.conn.bounded(query, generation, Some(deadline)).await {
                Bounded::Done(Ok(_)) => {
                    self.conn.publish_succeeded();
                    return Ok(ids);
                }
                Bounded::Done(Err(e)) => e,
                Bounded::Replaced => continue,
                Bounded::Elapsed => return Err(self.timed_out::<E>(retry.last.take())),
            };
            if let Some(e) = self.give_up::<E>(&key, error, &mut retry, deadline).await {
                return Err(e);
            }
        }
    }
}

impl Bus {
    /// A builder with every setting at its default.
    pub fn builder() -> BusBuilder {
        BusBuilder::default()
    }

    /// Builds a bus from the environment variables listed on [`BusBuilder`].
    ///
    /// # Errors
    ///
    /// As [`BusBuilder::build`].
    pub async fn from_env() -> Result<Bus> {
        Bus::builder().with_env()?.build().await
    }

    pub(crate) async fn connect(builder: &BusBuilder) -> Result<Bus> {
        let config = builder.config()?;
        let all_handlers = registry::all_handlers()?;
        let states = Arc::new(builder.states.clone());
        let handlers = registry::select(&all_handlers, config.handlers.as_deref(), &states)?;
        let client = transport::client(&config)?;
        let mut conn = transport::shared(&client, &config).await?;
        check_eviction(&mut conn, &config).await?;
        crate::preflight::check_permissions(&mut conn, &config, &handlers).await?; // ops: ACL DRYRUN
        let publisher = Publisher {
            coalescer: Coalescer::spawn(conn.clone()),
            conn: conn.clone(),
            namespace: config.namespace.as_str().into(),
            source: config.service.as_str().into(),
            max_len: config.max_len,
            max_payload: config.max_payload,
            publish_timeout: config.publish_timeout,
        };
        tracing::debug!(
            namespace = %config.namespace,
            consumer = %config.consumer,
            handlers = handlers.len(),
            registered = all_handlers.len(),
            "eventbus connected"
        );
        Ok(Bus {
            inner: Arc::new(BusInner {
                config,
                client,
                conn,
                handlers,
                states,
                publisher,
                alone: Arc::new(tokio::sync::RwLock::new(())),
            }),
        })
    }

    /// Publishes an event durably (`XADD` to its stream) and returns its id.
    ///
    /// Transient failures (a refused, dropped or timed-out connection; `READONLY` or
    /// `MASTERDOWN` while the bus moves to a new primary; `LOADING`, `BUSY`, `TRYAGAIN`) are
    /// retried with backoff (50 ms doubling up to 1 s), resending the same envelope, until
    /// `publish_timeout` (default 10 s, `EVENTBUS_PUBLISH_TIMEOUT`) has passed: the whole call,
    /// retries included, never takes longer. When a reply was lost the event may be stored
    /// twice, both copies with the same id (consumers deduplicate by id). An `Err` means the
    /// event may or may not have been stored; a retry by the caller then gets a new id.
    ///
    /// # Errors
    ///
    /// [`Error::Encode`] when the event does not serialize, [`Error::PayloadTooLarge`] when its
    /// envelope exceeds the configured maximum (neither counts as a connection failure in
    /// [`health`](Self::health)), [`Error::Timeout`] when `publish_timeout` passed (its
    /// `last_error` says why), [`Error::Permission`] or [`Error::Transport`] when Redis refused it
    /// for good (not retried).
    pub async fn publish<E: DomainEvent>(&self, event: &E) -> Result<EventId> {
        self.inner.publisher.publish(event, &Meta::default()).await
    }

    /// Publishes several events of one type in one round trip (a pipeline) and returns their ids,
    /// in order. Every event is encoded and checked before anything is sent, so an encoding or
    /// size error publishes nothing.
    ///
    /// ```no_run
    /// # use eventbus::prelude::*;
    /// # #[derive(Debug, Clone, Serialize, Deserialize, DomainEvent)]
    /// # struct ChatCreated { chat_id: u64 }
    /// # async fn f(bus: Bus) -> eventbus::Result<()> {
    /// let events: Vec<ChatCreated> = (0..100).map(|chat_id| ChatCreated { chat_id }).collect();
    /// let ids = bus.publish_batch(&events).await?;
    /// assert_eq!(ids.len(), 100);
    /// # Ok(()) }
    /// ```
    ///
    /// # Errors
    ///
    /// As [`publish`](Self::publish), within one `publish_timeout` for the whole batch: a
    /// transient error retries the whole pipeline, so events stored before the error may be
    /// stored twice (same ids); an `Err` means any of them may or may not have been stored.
    pub async fn publish_batch<E: DomainEvent>(&self, events: &[E]) -> Result<Vec<EventId>> {
        self.inner
            .publisher
            .publish_batch(events, &Meta::default())
            .await
    }

    /// The dead letters of this bus's namespace.
    pub fn dlq(&self) -> DeadLetters {
        DeadLetters::new(self.inner.clone())
    }

    /// The state of the bus's shared connection (publishing, acks, claims, dead letters), with
    /// no readers: the readiness check of a publish-only bus. A started bus's
    /// [`RunningBus::health`] adds its readers.
    pub fn health(&self) -> Health {
        Health {
            connection: self.inner.conn.stats().snapshot(),
            readers: Vec::new(),
        }
    }

    /// The names of the handlers this bus runs, sorted.
    pub fn handler_names(&self) -> Vec<&'static str> {
        self.inner.handlers.iter().map(|h| h.name).collect()
    }

    /// The consumer name this bus uses in every handler's group.
    pub fn consumer_name(&self) -> &str {
        &self.inner.config.consumer
    }

    /// Creates every selected handler's consumer group and starts its reader.
    ///
    /// Returns once the groups exist and the readers are connected, so an event published after
    /// this returns is delivered. A new group starts at the beginning of its stream: events
    /// published before a handler's first start are handled too.
    ///
    /// # Errors
    ///
    /// [`Error::Transport`] when a group cannot be created or a reader cannot connect.
    pub async fn start(&self) -> Result<RunningBus> {
        let cancel = CancellationToken::new();
        let abort = CancellationToken::new();
        let tracker = TaskTracker::new();
        let mut readers = Vec::with_capacity(self.inner.handlers.len());
        let mut stats = Vec::with_capacity(self.inner.handlers.len());
        let (broadcast, durable): (Vec<_>, Vec<_>) = self
            .inner
            .handlers
            .iter()
            .partition(|h| h.delivery == Delivery::Broadcast);
        for handler in durable {
            let reader = Reader::new(
                self.inner.clone(),
                handler,
                cancel.clone(),
                abort.clone(),
                tracker.clone(),
            );
            reader.ensure_group().await?;
            stats.push(reader.stats());
            readers.push(reader.connect().await?);
        }
        let subscriber = if broadcast.is_empty() {
            None
        } else {
            let subscriber = Subscriber::new(
                self.inner.clone(),
                &broadcast,
                cancel.clone(),
                abort.clone(),
                tracker.clone(),
            );
            let subscriber = subscriber.connect().await?;
            stats.extend(subscriber.stats());
            Some(subscriber)
        };
        stats.sort_by_key(|(name, _)| *name);
        for reader in readers {
            tracker.spawn(reader.run());
        }
        if let Some(subscriber) = subscriber {
            subscriber.spawn();
        }
        tracing::info!(
            namespace = %self.inner.config.namespace,
            consumer = %self.inner.config.consumer,
            handlers = self.inner.handlers.len(),
            "eventbus started"
        );
        Ok(RunningBus {
            conn_stats: self.inner.conn.stats().clone(),
            stats,
            cancel,
            abort,
            tracker,
            drain_timeout: self.inner.config.drain_timeout,
        })
    }

    /// Starts, waits for SIGINT or SIGTERM, then shuts down gracefully.
    ///
    /// # Errors
    ///
    /// As [`start`](Self::start) and [`RunningBus::shutdown`], or [`Error::Signal`].
    pub async fn run(&self) -> Result<()> {
        let running = self.start().await?;
        let signal = shutdown_signal().await;
        tracing::info!("shutdown signal received; draining");
        let drained = running.shutdown().await;
        signal.and(drained)
    }
}

/// The wait before a publish's first retry; it doubles up to [`PUBLISH_BACKOFF_MAX`].
const PUBLISH_BACKOFF_MIN: Duration = Duration::from_millis(50);

/// The longest wait between two attempts of one publish.
const PUBLISH_BACKOFF_MAX: Duration = Duration::from_secs(1);

/// Streams are the only copy of undelivered events: warn (or refuse) when Redis may evict them.
async fn check_eviction(conn: &mut SharedConn, config: &Config) -> Result<()> {
    let reply: redis::RedisResult<Vec<String>> = redis::cmd("CONFIG")
        .arg("GET")
        .arg("maxmemory-policy")
        .query_async(conn)
        .await;
    let policy = match reply {
        Ok(pair) => pair.into_iter().nth(1).unwrap_or_default(),
        Err(e) => {
            // Managed services and ACL users often may not run CONFIG: skip the check.
            tracing::debug!(error = %e, "cannot read maxmemory-policy; eviction check skipped");
            return Ok(());
        }
    };
    if !policy.starts_with("allkeys-") {
        return Ok(());
    }
    if config.refuse_eviction {
        return Err(Error::config(
            "maxmemory-policy",
            policy,
            "Redis may evict streams, losing events and consumer groups: set `maxmemory-policy noeviction` (or a volatile-* policy), or drop `refuse_evicting_redis`",
        ));
    }
    tracing::warn!(
        maxmemory_policy = %policy,
        "Redis maxmemory-policy {policy} may evict event streams under memory pressure, losing events and consumer groups; use noeviction for an event bus"
    );
    Ok(())
}

async fn shutdown_signal() -> Result<()> {
    #[cfg(unix)]
    {
        use tokio::signal::unix::{SignalKind, signal};
        let mut term = signal(SignalKind::terminate()).map_err(Error::Signal)?;
        tokio::select! {
            r = tokio::signal::ctrl_c() => r.map_err(Error::Signal),
            _ = term.recv() => Ok(()),
        }
    }
    #[cfg(not(unix))]
    {
        tokio::signal::ctrl_c().await.map_err(Error::Signal)
    }
}

/// A started bus. Call [`shutdown`](Self::shutdown) to stop it gracefully; dropping it stops the
/// readers at once and abandons in-flight runs (their events stay pending, nothing is lost).
#[derive(Debug)]
#[must_use = "dropping a RunningBus stops it at once; call `shutdown().await` to drain"]
pub struct RunningBus {
    conn_stats: Arc<ConnStats>,
    stats: Vec<(&'static str, Arc<Stats>)>,
    cancel: CancellationToken,
    abort: CancellationToken,
    tracker: TaskTracker,
    drain_timeout: std::time::Duration,
}

impl RunningBus {
    /// What every reader is doing now: connected or not, the last error, and counters.
    /// [`Health::is_healthy`] is the readiness check.
    pub fn health(&self) -> Health {
        Health {
            connection: self.conn_stats.snapshot(),
            readers: self
                .stats
                .iter()
                .map(|(name, s)| s.snapshot(name))
                .collect(),
        }
    }

    /// Stops reading and starts nothing new: in-flight handler runs get the drain timeout to
    /// finish (and are acked); entries fetched but not started are handed back to their group
    /// at once, so another consumer takes them without waiting for the visibility timeout and
    /// without counting an attempt against them. Runs still going after the drain timeout are
    /// abandoned: their events stay pending and another consumer claims them after the
    /// visibility timeout.
    ///
    /// Returns within the drain timeout plus [`SHUTDOWN_MARGIN`] (2 s), even when Redis is
    /// frozen: tasks still waiting on Redis then are left to end by themselves.
    ///
    /// # Errors
    ///
    /// None today; the `Result` leaves room for reporting failures to flush.
    pub async fn shutdown(self) -> Result<()> {
        self.cancel.cancel();
        self.tracker.close();
        if tokio::time::timeout(self.drain_timeout, self.tracker.wait())
            .await
            .is_err()
        {
            tracing::warn!(
                drain_timeout = ?self.drain_timeout,
                "handler runs did not finish within the drain timeout; their events stay pending"
            );
            self.abort.cancel();
            if tokio::time::timeout(SHUTDOWN_MARGIN, self.tracker.wait())
                .await
                .is_err()
            {
                tracing::warn!(
                    "some tasks are still waiting on Redis after the drain; shutdown returns without them"
                );
            }
        }
        tracing::info!("eventbus stopped");
        Ok(())
    }
}

/// How long [`RunningBus::shutdown`] waits past the drain timeout for abandoned tasks to end.
pub const SHUTDOWN_MARGIN: Duration = Duration::from_secs(2);

impl Drop for RunningBus {
    fn drop(&mut self) {
        self.cancel.cancel();
        self.abort.cancel();
    }
}

/// Builds a bus from the environment and runs it until SIGINT or SIGTERM:
/// `eventbus::run().await` in `main` is a whole service.
///
/// # Errors
///
/// As [`Bus::from_env`] and [`Bus::run`].
pub async fn run() -> Result<()> {
    Bus::from_env().await?.run().await
}

impl BusBuilder {
    /// Validates the settings and the handler registry, and connects to Redis.
    ///
    /// # Errors
    ///
    /// [`Error::Config`] for an invalid setting, [`Error::DuplicateHandler`],
    /// [`Error::DuplicateEvent`], [`Error::UnknownHandler`], [`Error::MissingState`], or
    /// [`Error::Unreachable`] when Redis cannot be reached.
    pub async fn build(&mut self) -> Result<Bus> {
        Bus::connect(self).await
    }
}
