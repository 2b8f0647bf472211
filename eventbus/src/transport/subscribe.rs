//! Subscribing to broadcast channels through the seam. A [`Subscription`] hands over messages
//! as they arrive, checks by itself that its connection still answers, and says when that
//! connection is lost; the runtime then subscribes again. At most once: what is published while
//! no subscription is up is not received.

use super::Transport;
use crate::error::{Error, TransportError};

/// One message received on a subscription, as the backend received it (not copied).
pub(crate) enum Message {
    /// A Redis Pub/Sub message.
    Redis(super::redis::pubsub::Message),
    /// An in-memory message: its channel and payload.
    #[cfg(feature = "testing")]
    Memory(String, std::sync::Arc<[u8]>),
}

impl Message {
    /// The channel it was published on.
    pub(crate) fn channel(&self) -> &str {
        match self {
            Message::Redis(msg) => super::redis::pubsub::channel(msg),
            #[cfg(feature = "testing")]
            Message::Memory(channel, _) => channel,
        }
    }

    /// Its payload: the envelope's bytes.
    pub(crate) fn payload(&self) -> &[u8] {
        match self {
            Message::Redis(msg) => super::redis::pubsub::payload(msg),
            #[cfg(feature = "testing")]
            Message::Memory(_, payload) => payload,
        }
    }
}

/// What waiting on a [`Subscription`] came to.
pub(crate) enum Received {
    /// A message.
    Message(Message),
    /// The connection answered a liveness check: it works, though nothing arrived.
    Alive,
    /// The connection is lost (closed, failed or stopped answering), for the reason given:
    /// drop the subscription and subscribe again.
    Lost(String),
}

/// A live subscription to a set of channels; dropping it unsubscribes (closes its connection).
pub(crate) enum Subscription {
    /// A Redis Pub/Sub connection.
    Redis(super::redis::pubsub::Subscription),
    /// An in-memory subscription.
    #[cfg(feature = "testing")]
    Memory(super::memory::Subscription),
}

impl Subscription {
    /// Waits for the next message, or for the outcome of the next liveness check (a frozen
    /// server or a half-open connection shows only as silence). Cancel-safe: no message is lost
    /// when the wait is dropped.
    pub(crate) async fn recv(&mut self) -> Received {
        match self {
            Subscription::Redis(subscription) => subscription.recv().await,
            #[cfg(feature = "testing")]
            Subscription::Memory(subscription) => match subscription.recv().await {
                Some((channel, payload)) => Received::Message(Message::Memory(channel, payload)),
                None => Received::Lost("the in-memory broadcast was disconnected".to_owned()),
            },
        }
    }
}

impl Transport {
    /// Subscribes to `channels` on a connection of its own: returns once the server confirmed
    /// them all, or fails after the connect timeout (a frozen server accepts connections but
    /// never answers).
    pub(crate) async fn subscribe(
        &self,
        channels: &[&str],
    ) -> Result<Subscription, TransportError> {
        match self {
            Transport::Redis(redis) => Ok(Subscription::Redis(redis.subscribe(channels).await?)),
            #[cfg(feature = "testing")]
            Transport::Memory(m) => {
                let channels: Vec<String> = channels.iter().map(|c| (*c).to_owned()).collect();
                Ok(Subscription::Memory(m.subscribe(&channels)))
            }
        }
    }

    /// The public error of a subscription that failed at start-up: [`Error::Permission`] when
    /// the ACL denies it, otherwise the server counts as unreachable (with a hint that fits).
    pub(crate) fn subscribe_error(&self, error: TransportError) -> Error {
        match self {
            Transport::Redis(redis) => redis.subscribe_error(error),
            #[cfg(feature = "testing")]
            Transport::Memory(_) => Error::Transport {
                op: "SUBSCRIBE",
                source: error,
            },
        }
    }
}
