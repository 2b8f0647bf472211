//! Publishing through the seam. A synchronous [`Sender::prepare`] copies an encoded envelope
//! into the backend's command while the envelope is still in the encoder's scratch buffer, before
//! any `await`; [`Sender::send`] and [`Sender::send_batch`] then deliver it, retrying transient
//! failures until the call's deadline, and return a neutral [`SendError`] the handler API turns
//! into the public error.

use tokio::time::Instant;

use super::Transport;
use crate::error::{Error, TransportError};
use crate::event::Delivery;

/// One event's command, ready to send: the backend's own (for Redis an `XADD` or `PUBLISH`
/// holding the envelope's bytes).
pub(crate) enum Prepared {
    /// A Redis command.
    Redis(super::redis::publish::Command),
    /// An in-memory append or publish.
    #[cfg(feature = "testing")]
    Memory(super::memory::publish::Command),
}

/// Several prepared commands sent in one round trip (for Redis a pipeline).
pub(crate) enum Batch {
    /// A Redis pipeline.
    Redis(super::redis::publish::Batch),
    /// In-memory commands, applied in order.
    #[cfg(feature = "testing")]
    Memory(Vec<super::memory::publish::Command>),
}

impl Batch {
    /// Adds one prepared command (moved in, not copied).
    ///
    /// # Errors
    ///
    /// A command prepared by another backend's sender (cannot happen: a bus has one sender).
    pub(crate) fn push(&mut self, prepared: Prepared) -> Result<(), Error> {
        match (self, prepared) {
            (Batch::Redis(batch), Prepared::Redis(command)) => {
                batch.push(command);
                Ok(())
            }
            #[cfg(feature = "testing")]
            (Batch::Memory(batch), Prepared::Memory(command)) => {
                batch.push(command);
                Ok(())
            }
            #[cfg(feature = "testing")]
            _ => Err(mismatch()),
        }
    }
}

/// Why a publish call failed in the transport.
#[derive(Debug)]
pub(crate) enum SendError {
    /// The deadline passed before an attempt succeeded; `last` is the error of the last failed
    /// attempt as the backend renders it (`None` when no attempt had failed yet). The events may
    /// or may not have been stored.
    Timeout {
        /// The last attempt's error.
        last: Option<String>,
    },
    /// The transport refused the command with an error that does not pass by itself: not
    /// retried.
    Failed(TransportError),
    /// Preparing the command again for a retry failed.
    Prepare(Error),
}

/// The publishing side of a transport, one per bus, shared by the bus and every handler's
/// context. Cheap to clone; clones share the backend's connection and writer.
#[derive(Clone, Debug)]
pub(crate) enum Sender {
    /// Redis: the shared connection and the writer that pipelines concurrent publishes.
    Redis(super::redis::publish::Sender),
    /// In memory.
    #[cfg(feature = "testing")]
    Memory(super::memory::Memory),
}

impl Transport {
    /// The publishing handle of this transport. For Redis it spawns the writer task that sends
    /// concurrent publishes as one pipeline (on the current runtime; it ends when the last
    /// clone of the handle is dropped): make one per bus.
    pub(crate) fn sender(&self) -> Sender {
        match self {
            Transport::Redis(redis) => {
                Sender::Redis(super::redis::publish::Sender::new(redis.conn.clone()))
            }
            #[cfg(feature = "testing")]
            Transport::Memory(m) => Sender::Memory(m.clone()),
        }
    }
}

impl Sender {
    /// Builds the command that publishes `json` (an encoded envelope) to `key`: appended to the
    /// stream (`Durable`, trimmed to about `max_len` entries when set) or published on the
    /// channel (`Broadcast`). Synchronous: `json` is copied into the command here, once.
    pub(crate) fn prepare(
        &self,
        delivery: Delivery,
        key: &str,
        max_len: Option<usize>,
        json: &[u8],
    ) -> Prepared {
        match self {
            Sender::Redis(_) => {
                Prepared::Redis(super::redis::publish::prepare(delivery, key, max_len, json))
            }
            #[cfg(feature = "testing")]
            Sender::Memory(_) => Prepared::Memory(super::memory::publish::Command::new(
                delivery, key, max_len, json,
            )),
        }
    }

    /// An empty batch with room for `capacity` commands.
    pub(crate) fn batch(&self, capacity: usize) -> Batch {
        match self {
            Sender::Redis(_) => Batch::Redis(super::redis::publish::Batch::with_capacity(capacity)),
            #[cfg(feature = "testing")]
            Sender::Memory(_) => Batch::Memory(Vec::with_capacity(capacity)),
        }
    }

    /// Sends one event's command, retrying transient failures with backoff until `deadline`.
    /// `prepare` builds the command: once for the first attempt, and again for each retry (the
    /// first attempt's command is never copied). `event` names the event in logs and health.
    pub(crate) async fn send(
        &self,
        event: &'static str,
        deadline: Instant,
        mut prepare: impl FnMut() -> Result<Prepared, Error>,
    ) -> Result<(), SendError> {
        match self {
            Sender::Redis(sender) => {
                sender
                    .send(event, deadline, || prepare().and_then(redis_command))
                    .await
            }
            #[cfg(feature = "testing")]
            Sender::Memory(m) => {
                m.alive().map_err(SendError::Failed)?;
                match prepare().map_err(SendError::Prepare)? {
                    Prepared::Memory(command) => command.apply(m).map_err(SendError::Failed),
                    Prepared::Redis(_) => Err(SendError::Prepare(mismatch())),
                }
            }
        }
    }

    /// Sends a batch in one round trip, resending all of it after a transient failure until
    /// `deadline`: commands that went through before the failure may then be stored twice.
    pub(crate) async fn send_batch(
        &self,
        event: &'static str,
        batch: &Batch,
        deadline: Instant,
    ) -> Result<(), SendError> {
        match (self, batch) {
            (Sender::Redis(sender), Batch::Redis(batch)) => {
                sender.send_batch(event, batch, deadline).await
            }
            #[cfg(feature = "testing")]
            (Sender::Memory(m), Batch::Memory(batch)) => {
                m.alive().map_err(SendError::Failed)?;
                for command in batch {
                    command.apply(m).map_err(SendError::Failed)?;
                }
                Ok(())
            }
            #[cfg(feature = "testing")]
            _ => Err(SendError::Prepare(mismatch())),
        }
    }

    /// The operation that publishes with `delivery`, as errors name it (`XADD`, `PUBLISH`).
    pub(crate) fn op(&self, delivery: Delivery) -> &'static str {
        let _ = self;
        // The Streams-semantics names every backend speaks (the in-memory one included).
        match delivery {
            Delivery::Durable => "XADD",
            Delivery::Broadcast => "PUBLISH",
        }
    }

    /// Records a publish call that timed out: health reports `message` (until a publish, or a
    /// probe that can vouch for the connection, succeeds) and counts the failed call.
    pub(crate) fn record_timeout(&self, message: String) {
        match self {
            Sender::Redis(sender) => sender.record_timeout(message),
            #[cfg(feature = "testing")]
            Sender::Memory(_) => drop(message),
        }
    }
}

/// The Redis command in `prepared`.
fn redis_command(prepared: Prepared) -> Result<super::redis::publish::Command, Error> {
    match prepared {
        Prepared::Redis(command) => Ok(command),
        #[cfg(feature = "testing")]
        Prepared::Memory(_) => Err(mismatch()),
    }
}

/// A command prepared by one backend and sent to another: cannot happen (a bus has one sender),
/// reported rather than panicking.
#[cfg(feature = "testing")]
fn mismatch() -> Error {
    Error::config(
        "transport",
        "mixed",
        "a command prepared for one transport was sent to another",
    )
}
