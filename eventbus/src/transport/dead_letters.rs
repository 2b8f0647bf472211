//! Dead letters through the seam: writing one (with the ack of its original, in one step where
//! the backend can), and the operator's side over a namespace's dead-letter stores: finding
//! them, reading, replaying and deleting letters. Letters come back as neutral [`Entry`]s; what
//! their fields mean is the dead-letter facade's business.

use super::Transport;
use super::keys::EventKeys;
use super::settle::{Letter, Written};
use super::source::Entry;
use crate::error::{Result, TransportError};

/// What replaying a durable dead letter did. Nothing was written unless [`Replay::Replayed`].
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Replay {
    /// The envelope was appended to the event's stream, marked for its handler, and the letter
    /// deleted, in one step.
    Replayed,
    /// No such letter (never was, or a concurrent replay or removal got there first).
    NoLetter,
    /// The event's stream does not exist.
    NoStream,
    /// The handler has no consumer group on the stream.
    NoGroup,
}

/// What republishing a broadcast dead letter did.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Republish {
    /// No such letter; nothing was published.
    NoLetter,
    /// Published; this many subscribers received it. The letter was deleted (in the same step)
    /// only when that is above 0.
    Received(u64),
}

impl Transport {
    /// Writes one dead letter for `group`: for a durable entry (`ack` = its id) together with the
    /// ack of the original and the deletion of its charged attempts, in one step, and only while
    /// the entry is still pending for the group ([`Written::AlreadySettled`] otherwise); for a
    /// broadcast (`ack` = `None`) just the letter.
    ///
    /// # Errors
    ///
    /// What the transport reported; nothing was acked, so retrying later is safe.
    pub(crate) async fn write_dead_letter(
        &self,
        keys: &EventKeys,
        group: &str,
        ack: Option<&str>,
        letter: &Letter<'_>,
    ) -> std::result::Result<Written, TransportError> {
        match self {
            Transport::Redis(redis) => redis.write_dead_letter(keys, group, ack, letter).await,
            #[cfg(feature = "testing")]
            Transport::Memory(m) => {
                m.alive()?;
                super::memory::stream_ops::dead_letter(m, keys, group, ack, letter)
            }
        }
    }

    /// The keys that may hold dead letters of `namespace`, in no order, possibly repeated and
    /// possibly of other namespaces whose names look alike: the caller keeps the exact ones
    /// ([`event_of_dlq_key`](super::keys::event_of_dlq_key)).
    pub(crate) async fn dead_letter_keys(&self, namespace: &str) -> Result<Vec<String>> {
        match self {
            Transport::Redis(redis) => redis.dead_letter_keys(namespace).await,
            #[cfg(feature = "testing")]
            Transport::Memory(m) => Ok(m.dead_letter_keys(namespace)),
        }
    }

    /// Up to `count` letters of the dead-letter store `key`, oldest first.
    pub(crate) async fn dead_letters(&self, key: &str, count: usize) -> Result<Vec<Entry>> {
        match self {
            Transport::Redis(redis) => redis.dead_letters(key, count).await,
            #[cfg(feature = "testing")]
            Transport::Memory(m) => Ok(m.dead_letters(key, count)),
        }
    }

    /// The letter `id` of the dead-letter store `key`, if it is there.
    pub(crate) async fn dead_letter(&self, key: &str, id: &str) -> Result<Option<Entry>> {
        match self {
            Transport::Redis(redis) => redis.dead_letter(key, id).await,
            #[cfg(feature = "testing")]
            Transport::Memory(m) => {
                super::memory::Memory::check_id(id)
                    .map_err(crate::error::Error::transport("XRANGE"))?;
                Ok(m.xrange_one(key, id))
            }
        }
    }

    /// Replays the durable letter `id` of `key` in one step: checks that the letter is still
    /// there and that `handler` has a consumer group on `stream`, appends `envelope` to `stream`
    /// marked for `handler` (trimmed to about `max_len` entries when set), and deletes the
    /// letter.
    pub(crate) async fn replay_durable(
        &self,
        key: &str,
        id: &str,
        stream: &str,
        handler: &str,
        envelope: &str,
        max_len: Option<usize>,
    ) -> Result<Replay> {
        match self {
            Transport::Redis(redis) => {
                redis
                    .replay_durable(key, id, stream, handler, envelope, max_len)
                    .await
            }
            // Unlike the Redis script, the in-memory replay does not trim the stream to `max_len`.
            #[cfg(feature = "testing")]
            Transport::Memory(m) => m.replay_durable(key, id, stream, handler, envelope),
        }
    }

    /// Republishes the broadcast letter `id` of `key` in one step: checks that the letter is
    /// still there, publishes `payload` on `channel`, and deletes the letter when some
    /// subscriber received it.
    pub(crate) async fn replay_broadcast(
        &self,
        key: &str,
        id: &str,
        channel: &str,
        payload: &str,
    ) -> Result<Republish> {
        match self {
            Transport::Redis(redis) => redis.replay_broadcast(key, id, channel, payload).await,
            #[cfg(feature = "testing")]
            Transport::Memory(m) => m.replay_broadcast(key, id, channel, payload),
        }
    }

    /// Deletes the letter `id` of `key`; false when there was none.
    pub(crate) async fn remove_dead_letter(&self, key: &str, id: &str) -> Result<bool> {
        match self {
            Transport::Redis(redis) => redis.remove_dead_letter(key, id).await,
            #[cfg(feature = "testing")]
            Transport::Memory(m) => {
                super::memory::Memory::check_id(id)
                    .map_err(crate::error::Error::transport("XDEL"))?;
                Ok(m.xdel(key, id) > 0)
            }
        }
    }

    /// Deletes the dead-letter store `key` with every letter in it, in one step; returns how
    /// many letters it held.
    pub(crate) async fn delete_dead_letters(&self, key: &str) -> Result<usize> {
        match self {
            Transport::Redis(redis) => redis.delete_dead_letters(key).await,
            #[cfg(feature = "testing")]
            Transport::Memory(m) => Ok(m.delete_dead_letters(key)),
        }
    }
}
