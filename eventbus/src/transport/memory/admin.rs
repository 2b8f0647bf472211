//! The dead-letter facade's operations over the store (`transport/dead_letters.rs`), with the
//! Redis backend's outcomes.

use std::sync::Arc;

use super::Memory;
use crate::error::{Error, Result};
use crate::transport::dead_letters::{Replay, Republish};
use crate::transport::source::Entry;

impl Memory {
    /// Every dead-letter key of `namespace` (exact ones are kept by the caller).
    pub(crate) fn dead_letter_keys(&self, namespace: &str) -> Vec<String> {
        self.keys()
            .into_iter()
            .filter(|k| k.starts_with(namespace) && k.ends_with(":dlq"))
            .collect()
    }

    /// The durable replay: the letter must still be there, the stream exist, and `handler` have
    /// a group on it; then the envelope is appended marked for `handler` and the letter deleted
    /// in one step.
    pub(crate) fn replay_durable(
        &self,
        key: &str,
        id: &str,
        stream: &str,
        handler: &str,
        envelope: &str,
    ) -> Result<Replay> {
        Memory::check_id(id).map_err(Error::transport("XRANGE"))?;
        if self.xrange_one(key, id).is_none() {
            return Ok(Replay::NoLetter);
        }
        if !self.keys().iter().any(|k| k == stream) {
            return Ok(Replay::NoStream);
        }
        if !self.groups(stream).iter().any(|g| g == handler) {
            return Ok(Replay::NoGroup);
        }
        let fields = vec![
            (b"envelope".to_vec(), envelope.as_bytes().to_vec()),
            (b"handler".to_vec(), handler.as_bytes().to_vec()),
        ];
        match self
            .replay(key, id, stream, fields)
            .map_err(Error::transport("replay"))?
        {
            Some(_) => Ok(Replay::Replayed),
            None => Ok(Replay::NoLetter),
        }
    }

    /// The broadcast replay, in one step: publishes the payload when the letter is there, and
    /// deletes the letter when someone received it.
    pub(crate) fn replay_broadcast(
        &self,
        key: &str,
        id: &str,
        channel: &str,
        payload: &str,
    ) -> Result<Republish> {
        match self
            .replay_broadcast_letter(key, id, channel, Arc::from(payload.as_bytes()))
            .map_err(Error::transport("replay"))?
        {
            None => Ok(Republish::NoLetter),
            Some(received) => Ok(Republish::Received(received as u64)),
        }
    }

    /// Deletes the whole dead-letter store `key`; returns how many letters it held.
    pub(crate) fn delete_dead_letters(&self, key: &str) -> usize {
        let held = self.xrange(key, usize::MAX).len();
        self.del(key);
        held
    }

    /// Up to `count` letters of `key`, oldest first.
    pub(crate) fn dead_letters(&self, key: &str, count: usize) -> Vec<Entry> {
        self.xrange(key, count)
    }
}
