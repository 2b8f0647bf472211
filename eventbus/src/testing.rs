//! Unit-test handlers without Redis: [`TestBus`] runs the **same** pipeline and readers as a
//! [`Bus`] over Redis (retries, backoff, attempt accounting after crashes, claims after the
//! visibility timeout, dead letters, replay, broadcast lanes, drain), over an in-process transport
//! with Redis Streams semantics: consumer groups per handler, pending lists with delivery counts,
//! `XCLAIM`/`XAUTOCLAIM`, atomic dead letter + ack. No Redis, no network.
//!
//! Enable the `testing` feature in your dev-dependencies:
//!
//! ```toml
//! [dev-dependencies]
//! eventbus = { version = "0.1", features = ["testing"] }
//! ```
//!
//! Time is tokio's: under `#[tokio::test(start_paused = true)]` (a current-thread runtime, tokio's
//! `test-util` feature) retries, backoff, claims and drains are instant and deterministic.
//!
//! ```rust,standalone_crate
//! use eventbus::prelude::*;
//! use std::time::Duration;
//!
//! #[derive(Debug, Clone, Serialize, Deserialize, DomainEvent)]
//! #[event(name = "doc.invoice_sent")]
//! struct InvoiceSent { invoice: u64 }
//!
//! #[event_handler(name = "email_customer", retries = 2, backoff = "1s")]
//! async fn email_customer(ev: InvoiceSent, ctx: Context) -> anyhow::Result<()> {
//!     anyhow::ensure!(ctx.attempt() == 3, "SMTP is down"); // fails twice, then succeeds
//!     Ok(())
//! }
//!
//! # async fn test() -> eventbus::Result<()> {
//! // In a test: #[tokio::test(start_paused = true)]
//! let mut bus = eventbus::testing::TestBus::builder()
//!     .handlers(["email_customer"])
//!     .build_test()
//!     .await?;
//! bus.start().await?;
//! let id = bus.publish(&InvoiceSent { invoice: 7 }).await?;
//! bus.run_until_idle().await?; // two 1 s backoffs pass instantly on paused time
//! assert_eq!(bus.handled("email_customer"), vec![id]);
//! assert!(bus.dead_letters().await?.is_empty());
//! bus.shutdown().await
//! # }
//! # tokio::runtime::Builder::new_current_thread().enable_all().start_paused(true).build().unwrap().block_on(test()).unwrap();
//! ```

use std::collections::{BTreeMap, BTreeSet};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex, PoisonError};
use std::time::Duration;

use crate::bus::{Bus, RunningBus, select_handlers};
use crate::config::BusBuilder;
use crate::dlq::DeadLetter;
use crate::envelope::EventId;
use crate::error::{Error, Result};
use crate::event::{Delivery, DomainEvent};
use crate::runtime::lane::LanesIdle;
use crate::telemetry::{HandledLog, Health};
use crate::transport::Transport;
use crate::transport::keys::stream_key;
use crate::transport::memory::Memory;

/// The least [`TestBus::run_until_idle`] waits (tokio time) before it gives up; it waits at
/// least four visibility timeouts too, so a crashed consumer's entries can be claimed.
pub const IDLE_TIMEOUT: Duration = Duration::from_secs(60);

/// What every bus on one store shares: its handlers' groups, its running broadcast lanes,
/// what was handled, and a counter for consumer names.
#[derive(Debug, Default)]
struct Family {
    /// Buses made so far (`another` names the next one after it).
    buses: AtomicUsize,
    /// `(stream, group)` of every durable handler of every bus on the store.
    groups: Mutex<BTreeSet<(String, &'static str)>>,
    /// The broadcast lanes of every started bus, by bus.
    lanes: Mutex<BTreeMap<usize, LanesIdle>>,
    handled: Arc<HandledLog>,
}

impl Family {
    fn lanes(&self) -> std::sync::MutexGuard<'_, BTreeMap<usize, LanesIdle>> {
        self.lanes.lock().unwrap_or_else(PoisonError::into_inner)
    }

    fn groups(&self) -> Vec<(String, &'static str)> {
        self.groups
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .iter()
            .cloned()
            .collect()
    }
}

/// A bus over an in-memory transport with Redis Streams semantics, for unit tests of handlers.
///
/// Built from the same [`BusBuilder`] settings and handler selection as a [`Bus`]
/// ([`BusBuilder::build_test`]); its [`bus`](Self::bus) is a real `Bus` (publish, dead letters,
/// health). See the [module docs](self) for an example.
#[derive(Debug)]
pub struct TestBus {
    bus: Bus,
    builder: BusBuilder,
    /// The store, as every consumer sees it.
    store: Memory,
    /// This consumer's connection to it (killed by [`crash`](Self::crash)).
    session: Memory,
    registered: usize,
    running: Option<RunningBus>,
    /// This bus's number in its family.
    id: usize,
    family: Arc<Family>,
}

impl BusBuilder {
    /// Builds a [`TestBus`]: these settings and handler selection over a new in-memory store
    /// instead of Redis (`redis_url` and TLS settings are not used).
    ///
    /// # Errors
    ///
    /// As [`build`](Self::build), except that nothing is connected: [`Error::Config`],
    /// [`Error::DuplicateHandler`], [`Error::DuplicateEvent`], [`Error::UnknownHandler`],
    /// [`Error::MissingState`].
    #[cfg_attr(docsrs, doc(cfg(feature = "testing")))]
    pub async fn build_test(&mut self) -> Result<TestBus> {
        let family = Arc::<Family>::default();
        let id = family.buses.fetch_add(1, Ordering::Relaxed);
        TestBus::assemble(self.clone(), Memory::new(), family, id)
    }
}

impl TestBus {
    /// A builder with every setting at its default: `TestBus::builder()...build_test()`.
    pub fn builder() -> BusBuilder {
        Bus::builder()
    }

    fn assemble(
        builder: BusBuilder,
        store: Memory,
        family: Arc<Family>,
        id: usize,
    ) -> Result<TestBus> {
        let config = Arc::new(builder.config()?);
        let (handlers, registered) = select_handlers(&builder, &config)?;
        family
            .groups
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .extend(
                handlers
                    .iter()
                    .filter(|h| h.delivery == Delivery::Durable)
                    .map(|h| (stream_key(&config.namespace, h.event_name), h.name)),
            );
        let session = store.session();
        let bus = Bus::assemble(
            &builder,
            config,
            handlers,
            registered,
            Transport::Memory(session.clone()),
            Some(family.handled.clone()),
        );
        Ok(TestBus {
            bus,
            builder,
            store,
            session,
            registered,
            running: None,
            id,
            family,
        })
    }

    /// The bus: [`publish`](Bus::publish), [`publish_batch`](Bus::publish_batch),
    /// [`dlq`](Bus::dlq) (list, replay, remove, purge), [`handler_names`](Bus::handler_names).
    pub fn bus(&self) -> &Bus {
        &self.bus
    }

    /// Starts the selected handlers, as [`Bus::start`]; does nothing when they run already.
    ///
    /// # Errors
    ///
    /// As [`Bus::start`] (not expected in memory).
    pub async fn start(&mut self) -> Result<()> {
        if self.running.is_none() {
            let running = self.bus.start().await?;
            if let Some(lanes) = &running.broadcast_idle {
                self.family.lanes().insert(self.id, lanes.clone());
            }
            self.running = Some(running);
        }
        Ok(())
    }

    /// Publishes an event, as [`Bus::publish`].
    ///
    /// # Errors
    ///
    /// As [`Bus::publish`]: an event that does not encode, or is larger than `max_payload`.
    pub async fn publish<E: DomainEvent>(&self, event: &E) -> Result<EventId> {
        self.bus.publish(event).await
    }

    /// Appends a raw entry to the stream of durable event `event` (by name), as another producer
    /// might: for tests of malformed input (bad JSON, a missing `envelope` field, a newer schema
    /// version, non-UTF-8 bytes). Returns the entry id.
    ///
    /// # Errors
    ///
    /// [`Error::Transport`] when `fields` is empty.
    pub async fn publish_raw(&self, event: &str, fields: &[(&str, &[u8])]) -> Result<String> {
        let key = stream_key(&self.bus.inner().config.namespace, event);
        let fields = fields
            .iter()
            .map(|(k, v)| (k.as_bytes().to_vec(), v.to_vec()))
            .collect();
        self.session
            .alive()
            .and_then(|()| self.session.xadd(&key, fields, None))
            .map_err(Error::transport("XADD"))
    }

    /// Waits until every bus on this store is idle: for every durable handler nothing unread and
    /// nothing pending (so no retry, backoff or claim is due: a pending entry waits for one), and
    /// for broadcast nothing undelivered, queued or running, and every subscription up. Seen
    /// idle twice, a millisecond apart. Waits at most [`IDLE_TIMEOUT`] or four visibility
    /// timeouts, whichever is longer; [`run_until_idle_within`](Self::run_until_idle_within)
    /// takes another limit.
    ///
    /// Entries a [`crash`](Self::crash)ed consumer left pending count as not idle until a
    /// running consumer claims them (after the visibility timeout); events published before any
    /// bus started count as unread.
    ///
    /// # Errors
    ///
    /// [`Error::Timeout`] when the store is not idle in time; its `last_error` says what is left
    /// (say, a crashed consumer's entries and no consumer running to claim them).
    pub async fn run_until_idle(&self) -> Result<()> {
        let visibility = self.bus.inner().config.visibility_timeout;
        self.run_until_idle_within(IDLE_TIMEOUT.max(visibility.saturating_mul(4)))
            .await
    }

    /// [`run_until_idle`](Self::run_until_idle), giving up after `limit` (tokio time).
    ///
    /// # Errors
    ///
    /// As [`run_until_idle`](Self::run_until_idle).
    pub async fn run_until_idle_within(&self, limit: Duration) -> Result<()> {
        let deadline = tokio::time::Instant::now() + limit;
        let mut seen_idle = false;
        loop {
            if self.busy().is_empty() {
                if seen_idle {
                    return Ok(());
                }
                seen_idle = true;
            } else {
                seen_idle = false;
            }
            if tokio::time::Instant::now() >= deadline {
                return Err(Error::Timeout {
                    operation: "run_until_idle".to_owned(),
                    limit,
                    last_error: Some(self.busy().join("; ")),
                });
            }
            tokio::time::sleep(Duration::from_millis(1)).await;
        }
    }

    /// What is left to do on the store, one line each; empty when idle.
    fn busy(&self) -> Vec<String> {
        let mut busy = Vec::new();
        for (stream, group) in self.family.groups() {
            match self.store.group_info(&stream, group) {
                Some(g) if g.pending > 0 || g.lag > 0 => busy.push(format!(
                    "handler `{group}`: {} pending, {} unread",
                    g.pending, g.lag
                )),
                Some(_) => {}
                // No group yet (no bus started): everything in the stream is unread.
                None => {
                    let unread = self.store.xrange(&stream, usize::MAX).len();
                    if unread > 0 {
                        busy.push(format!("handler `{group}`: {unread} unread (not started)"));
                    }
                }
            }
        }
        if self.family.lanes().values().any(|lanes| !lanes.is_idle()) {
            busy.push("broadcast events queued or running, or a subscription is down".to_owned());
        }
        let undelivered = self.store.undelivered_broadcasts();
        if undelivered > 0 {
            busy.push(format!("{undelivered} broadcast events not yet received"));
        }
        busy
    }

    /// The events `handler` handled (its run returned `Ok`), in the order they finished, on
    /// every bus of this store ([`another`](Self::another) included).
    pub fn handled(&self, handler: &str) -> Vec<EventId> {
        self.family.handled.of(handler)
    }

    /// The attempts charged in all to entries of durable event `event` that are not settled yet
    /// (every handler): failed attempts, and attempts of suspects running alone, which a crash
    /// during them leaves charged. 0 once every entry is acked or dead-lettered.
    pub fn charged_attempts(&self, event: &str) -> u64 {
        let key = crate::transport::keys::attempts_key(&self.bus.inner().config.namespace, event);
        u64::try_from(self.store.hsum(&key)).unwrap_or(0)
    }

    /// Every dead letter of the namespace, oldest first per event, as
    /// [`DeadLetters::list`](crate::DeadLetters::list).
    ///
    /// # Errors
    ///
    /// Not expected in memory.
    pub async fn dead_letters(&self) -> Result<Vec<DeadLetter>> {
        self.bus.dlq().list(usize::MAX).await
    }

    /// The bus's health: [`RunningBus::health`] once started, [`Bus::health`] before.
    pub fn health(&self) -> Health {
        match &self.running {
            Some(running) => running.health(),
            None => self.bus.health(),
        }
    }

    /// A second consumer of the same store: same settings and handlers, its own consumer name
    /// (`<consumer>-2`, `-3`, ...), not started. For competing consumers, and for claims of a
    /// crashed consumer's entries.
    ///
    /// # Errors
    ///
    /// As [`BusBuilder::build_test`].
    pub fn another(&self) -> Result<TestBus> {
        let id = self.family.buses.fetch_add(1, Ordering::Relaxed);
        let mut builder = self.builder.clone();
        builder.consumer(format!("{}-{}", self.first_consumer(), id + 1));
        TestBus::assemble(builder, self.store.clone(), self.family.clone(), id)
    }

    /// The consumer name of the family's first bus (`another` numbers from it).
    fn first_consumer(&self) -> String {
        let name = self.bus.consumer_name();
        match name.rsplit_once('-') {
            Some((base, n)) if self.id > 0 && n.parse::<usize>().is_ok() => base.to_owned(),
            _ => name.to_owned(),
        }
    }

    /// Simulates `kill -9` of this consumer: running attempts are abandoned where they stand;
    /// nothing more is acked, charged, dead-lettered, handed back or published, and what its
    /// broadcast queues held is lost. Its entries stay pending under this consumer's name:
    /// [`start`](Self::start) again restarts under the same name (the entries are re-read as
    /// suspects), or [`another`](Self::another) consumer claims them after the visibility
    /// timeout.
    pub fn crash(&mut self) {
        // The dead process's connection sends nothing more; a restart is a new process with a
        // new connection, under the same consumer name.
        self.session.kill();
        self.family.lanes().remove(&self.id);
        if let Some(running) = self.running.take() {
            running.crash();
        }
        self.session = self.store.session();
        self.bus = Bus::assemble(
            &self.builder,
            self.bus.inner().config.clone(),
            self.bus.inner().handlers.clone(),
            self.registered,
            Transport::Memory(self.session.clone()),
            Some(self.family.handled.clone()),
        );
    }

    /// Makes this consumer's next `n` acks fail (as when its connection drops, or Redis denies
    /// `XACK`): the entries stay pending and in flight here, and the acks are retried.
    pub fn fail_next_acks(&self, n: usize) {
        self.session.fail_session_acks(n);
    }

    /// Makes the next `n` dead-letter writes on the store fail (as Redis's `OOM`): the original
    /// stays pending and the write is retried.
    pub fn fail_next_dead_letters(&self, n: usize) {
        self.store.fail_next_dead_letters(n);
    }

    /// Drops every broadcast subscription on the store, as a lost Pub/Sub connection: what is
    /// published until the buses resubscribe is not received (at most once).
    /// [`run_until_idle`](Self::run_until_idle) waits for them to resubscribe.
    pub fn disconnect_broadcast(&self) {
        self.store.disconnect_broadcast();
    }

    /// Shuts down gracefully, as [`RunningBus::shutdown`]: running attempts finish within the
    /// drain timeout, entries not started are handed back.
    ///
    /// # Errors
    ///
    /// As [`RunningBus::shutdown`].
    pub async fn shutdown(mut self) -> Result<()> {
        self.family.lanes().remove(&self.id);
        match self.running.take() {
            Some(running) => running.shutdown().await,
            None => Ok(()),
        }
    }
}

impl Drop for TestBus {
    /// A bus dropped without [`shutdown`](TestBus::shutdown) stops as a crashed one: its
    /// session is cut (nothing more is acked, charged or written) and its lanes no longer count
    /// for the other buses' [`run_until_idle`](TestBus::run_until_idle). After `shutdown` there
    /// is nothing left to cut.
    fn drop(&mut self) {
        self.session.kill();
        self.family.lanes().remove(&self.id);
    }
}
