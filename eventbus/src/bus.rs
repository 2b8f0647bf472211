//! [`Bus`]: publish events and run handlers; [`RunningBus`]: the handle for shutdown.

use std::sync::Arc;
use std::time::Duration;

use crate::pipeline::Env;
use crate::publish::Publisher;
use crate::runtime::Handles;
use crate::transport::{Route, Transport};
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;

use crate::config::{BusBuilder, Config};
use crate::dlq::DeadLetters;
use crate::envelope::{EventId, Meta};
use crate::error::{Error, Result};
use crate::event::{Delivery, DomainEvent};
use crate::handler::HandlerRegistration;
use crate::handler::registry;
use crate::pipeline::Runner;
use crate::runtime::lane::{Broadcast, Subscriber};
use crate::runtime::stream::Reader;
use crate::telemetry::{ConnStats, Health, Stats};

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
    pub(crate) config: Arc<Config>,
    pub(crate) transport: Transport,
    pub(crate) handlers: Vec<&'static HandlerRegistration>,
    pub(crate) publisher: Publisher,
    /// Every handler run in this process holds it shared; a suspect (an entry redelivered
    /// after a possible crash) holds it exclusively, so it runs alone in the process and a crash
    /// during its run can only be its own.
    pub(crate) alone: Arc<tokio::sync::RwLock<()>>,
    /// What the runtime's components are given.
    pub(crate) handles: Handles,
}

impl Bus {
    /// The bus's parts, for the test bus.
    #[cfg(feature = "testing")]
    pub(crate) fn inner(&self) -> &BusInner {
        &self.inner
    }

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
        let config = Arc::new(builder.config()?);
        let (handlers, registered) = select_handlers(builder, &config)?;
        let routes: Vec<Route> = handlers.iter().map(|h| h.route()).collect();
        let transport = Transport::connect(config.clone(), &routes).await?;
        Ok(Bus::assemble(
            builder,
            config,
            handlers,
            registered,
            transport,
            #[cfg(feature = "testing")]
            None,
        ))
    }

    /// A bus over `transport` (connected and checked), running `handlers`.
    pub(crate) fn assemble(
        builder: &BusBuilder,
        config: Arc<Config>,
        handlers: Vec<&'static HandlerRegistration>,
        registered: usize,
        transport: Transport,
        #[cfg(feature = "testing")] handled: Option<Arc<crate::telemetry::HandledLog>>,
    ) -> Bus {
        let states = Arc::new(builder.states.clone());
        let publisher = Publisher {
            sender: transport.sender(),
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
            registered,
            "eventbus connected"
        );
        let alone = Arc::new(tokio::sync::RwLock::new(()));
        let handles = Handles {
            env: Env {
                config: config.clone(),
                publisher: publisher.clone(),
                states: states.clone(),
                #[cfg(feature = "testing")]
                handled: handled.clone(),
            },
            transport: transport.clone(),
            alone: alone.clone(),
        };
        Bus {
            inner: Arc::new(BusInner {
                config,
                transport,
                handlers,
                publisher,
                alone,
                handles,
            }),
        }
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
        DeadLetters::new(
            self.inner.transport.clone(),
            self.inner.config.namespace.as_str().into(),
            self.inner.config.max_len,
        )
    }

    /// The state of the bus's shared connection (publishing, acks, claims, dead letters), with
    /// no readers: the readiness check of a publish-only bus. A started bus's
    /// [`RunningBus::health`] adds its readers.
    pub fn health(&self) -> Health {
        Health {
            connection: self.inner.transport.conn_stats().snapshot(),
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
                &self.inner.handles,
                handler,
                cancel.clone(),
                abort.clone(),
                tracker.clone(),
            );
            reader.ensure_group().await?;
            stats.push(reader.stats());
            readers.push(reader.connect().await?);
        }
        let mut broadcast_idle = None;
        let subscriber = if broadcast.is_empty() {
            None
        } else {
            let subscriber = Subscriber::new(
                Broadcast::new(
                    &self.inner.config,
                    self.inner.transport.clone(),
                    self.inner.alone.clone(),
                ),
                broadcast
                    .iter()
                    .map(|handler| {
                        // Broadcast queues drain at shutdown (nothing would redeliver them): no
                        // cancel token.
                        Runner::new(
                            &self.inner.handles.env,
                            handler,
                            CancellationToken::new(),
                            abort.clone(),
                        )
                    })
                    .collect(),
                cancel.clone(),
                tracker.clone(),
            );
            let subscriber = subscriber.connect().await?;
            stats.extend(subscriber.stats());
            broadcast_idle = Some(subscriber.idle_probe());
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
            conn_stats: self.inner.transport.conn_stats(),
            broadcast_idle,
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
    /// Whether the broadcast lanes are idle (`None`: no broadcast handler).
    #[cfg_attr(not(feature = "testing"), allow(dead_code))]
    pub(crate) broadcast_idle: Option<crate::runtime::lane::LanesIdle>,
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

impl RunningBus {
    /// Stops as a killed process would: running attempts are abandoned at once, nothing more is
    /// acked, dead-lettered or handed back. For `testing::TestBus::crash`.
    #[cfg(feature = "testing")]
    pub(crate) fn crash(self) {
        // `cancel` first: a slot an abandoned run frees must not start a queued entry.
        self.cancel.cancel();
        self.abort.cancel();
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

/// The handlers `builder` selects (all registered ones unless `.handlers([...])` names some),
/// checked for duplicates, names and missing state; and how many are registered.
pub(crate) fn select_handlers(
    builder: &BusBuilder,
    config: &Config,
) -> Result<(Vec<&'static HandlerRegistration>, usize)> {
    let all_handlers = registry::all_handlers()?;
    let handlers = registry::select(&all_handlers, config.handlers.as_deref(), &builder.states)?;
    Ok((handlers, all_handlers.len()))
}
