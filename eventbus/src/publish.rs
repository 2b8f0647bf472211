//! Publishing: encode an event into its envelope and hand it to the transport, bounded by
//! `publish_timeout`. Shared by [`Bus`](crate::Bus) and every handler's [`Context`](crate::Context).

use std::sync::Arc;
use std::time::{Duration, SystemTime};

use tokio::time::Instant;

use crate::envelope::{self, EventId, Meta};
use crate::error::{Error, Result};
use crate::event::{Delivery, DomainEvent};
use crate::transport::redis::coalesce::Coalescer;
use crate::transport::{self, Bounded, SharedConn};

/// Writes envelopes; shared by the bus and every handler's [`Context`](crate::Context).
#[derive(Clone, Debug)]
pub(crate) struct Publisher {
    pub(crate) conn: SharedConn,
    pub(crate) coalescer: Coalescer,
    pub(crate) namespace: Arc<str>,
    pub(crate) source: Arc<str>,
    pub(crate) max_len: Option<usize>,
    pub(crate) max_payload: usize,
    /// The bound on one publish call, retries included.
    pub(crate) publish_timeout: Duration,
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

/// The wait before a publish's first retry; it doubles up to [`PUBLISH_BACKOFF_MAX`].
const PUBLISH_BACKOFF_MIN: Duration = Duration::from_millis(50);

/// The longest wait between two attempts of one publish.
const PUBLISH_BACKOFF_MAX: Duration = Duration::from_secs(1);
