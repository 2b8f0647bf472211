//! Publishing: encode an event into its envelope and hand it to the transport, bounded by
//! `publish_timeout`. Shared by [`Bus`](crate::Bus) and every handler's [`Context`](crate::Context).

use std::sync::Arc;
use std::time::{Duration, SystemTime};

use tokio::time::Instant;

use crate::envelope::{self, EventId, Meta};
use crate::error::{Error, Result};
use crate::event::{Delivery, DomainEvent};
use crate::transport;
use crate::transport::publish::{Prepared, SendError, Sender};

/// Writes envelopes; shared by the bus and every handler's [`Context`](crate::Context).
#[derive(Clone, Debug)]
pub(crate) struct Publisher {
    /// The transport's publishing handle.
    pub(crate) sender: Sender,
    pub(crate) namespace: Arc<str>,
    pub(crate) source: Arc<str>,
    pub(crate) max_len: Option<usize>,
    pub(crate) max_payload: usize,
    /// The bound on one publish call, retries included.
    pub(crate) publish_timeout: Duration,
}

impl Publisher {
    /// Encodes one event and prepares its command: the envelope is checked against
    /// `max_payload` and copied into the command while it is still in the encoder's buffer.
    fn prepare<E: DomainEvent>(
        &self,
        key: &str,
        head: &envelope::Head,
        id: &EventId,
        time: SystemTime,
        event: &E,
    ) -> Result<Prepared> {
        let prepared = envelope::with_encoded(head, id, time, event, |json| {
            if json.len() > self.max_payload {
                return Err(json.len());
            }
            Ok(self.sender.prepare(E::DELIVERY, key, self.max_len, json))
        })
        .map_err(|source| Error::Encode {
            event: E::NAME,
            source,
        })?;
        prepared.map_err(|size| Error::PayloadTooLarge {
            event: E::NAME,
            size,
            max: self.max_payload,
        })
    }

    /// The stream (durable) or channel (broadcast) of an event type.
    fn key<E: DomainEvent>(&self) -> String {
        match E::DELIVERY {
            Delivery::Durable => transport::stream_key(&self.namespace, E::NAME),
            Delivery::Broadcast => transport::channel_key(&self.namespace, E::NAME),
        }
    }

    /// One event, bounded by `publish_timeout`. A retry after a transient error encodes the
    /// event again with the same id (so the happy path never copies the command).
    pub(crate) async fn publish<E: DomainEvent>(&self, event: &E, meta: &Meta) -> Result<EventId> {
        let key = self.key::<E>();
        let head = envelope::Head::new::<E>(&self.source, meta);
        let time = SystemTime::now();
        let id = EventId::at(time);
        let deadline = Instant::now() + self.publish_timeout;
        let sent = self
            .sender
            .send(E::NAME, deadline, || {
                self.prepare(&key, &head, &id, time, event)
            })
            .await;
        self.outcome::<E>(&key, sent)?;
        Ok(id)
    }

    pub(crate) async fn publish_batch<E: DomainEvent>(
        &self,
        events: &[E],
        meta: &Meta,
    ) -> Result<Vec<EventId>> {
        let mut ids = Vec::with_capacity(events.len());
        let mut batch = self.sender.batch(events.len());
        let key = self.key::<E>();
        let head = envelope::Head::new::<E>(&self.source, meta);
        // One clock reading for the batch: one publish time; the ids differ in their random bits.
        let time = SystemTime::now();
        for event in events {
            let id = EventId::at(time);
            batch.push(self.prepare(&key, &head, &id, time, event)?)?;
            ids.push(id);
        }
        if ids.is_empty() {
            return Ok(ids);
        }
        // Transient connection errors resend the same batch (same ids), so a retry after a
        // lost reply may store an event twice, both copies carrying one id.
        let deadline = Instant::now() + self.publish_timeout;
        let sent = self.sender.send_batch(E::NAME, &batch, deadline).await;
        self.outcome::<E>(&key, sent)?;
        Ok(ids)
    }

    /// The public result of a send: a timeout (recorded in health) as [`Error::Timeout`], a
    /// refusal as [`Error::Permission`] or [`Error::Transport`] naming the command and key.
    fn outcome<E: DomainEvent>(
        &self,
        key: &str,
        sent: std::result::Result<(), SendError>,
    ) -> Result<()> {
        match sent {
            Ok(()) => Ok(()),
            Err(SendError::Prepare(error)) => Err(error),
            Err(SendError::Failed(source)) => Err(Error::transport_key(
                self.sender.op(E::DELIVERY),
                key,
            )(source)),
            Err(SendError::Timeout { last }) => {
                let error = Error::Timeout {
                    operation: format!("publish of `{}`", E::NAME),
                    limit: self.publish_timeout,
                    last_error: last,
                };
                self.sender.record_timeout(error.to_string());
                Err(error)
            }
        }
    }
}
