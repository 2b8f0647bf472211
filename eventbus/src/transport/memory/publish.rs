//! Publishing into the store: an append to the event's stream, or a Pub/Sub publish.

use std::sync::Arc;

use super::Memory;
use crate::error::TransportError;
use crate::event::Delivery;

/// One prepared publish: the envelope's bytes, copied once when prepared.
#[derive(Debug)]
pub(crate) struct Command {
    delivery: Delivery,
    key: String,
    max_len: Option<usize>,
    envelope: Vec<u8>,
}

impl Command {
    /// The command publishing `json` to `key` with `delivery`.
    pub(crate) fn new(
        delivery: Delivery,
        key: &str,
        max_len: Option<usize>,
        json: &[u8],
    ) -> Command {
        Command {
            delivery,
            key: key.to_owned(),
            max_len,
            envelope: json.to_vec(),
        }
    }

    /// Applies it to the store: `XADD <key> [MAXLEN n] * envelope <json>`, or `PUBLISH`.
    pub(crate) fn apply(&self, m: &Memory) -> Result<(), TransportError> {
        match self.delivery {
            Delivery::Durable => m
                .xadd(
                    &self.key,
                    vec![(b"envelope".to_vec(), self.envelope.clone())],
                    self.max_len,
                )
                .map(drop),
            Delivery::Broadcast => {
                m.publish(&self.key, Arc::from(self.envelope.as_slice()));
                Ok(())
            }
        }
    }
}
