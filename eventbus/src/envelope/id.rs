//! [`EventId`]: the envelope's `id`.

use std::fmt;
use std::str::FromStr;
use std::sync::Arc;
use std::time::SystemTime;

use serde::{Deserialize, Serialize};

/// The id of one published event (the envelope's `id`).
///
/// Events published by eventbus get a UUID v7 (time ordered); envelopes written by other
/// producers may carry any non-empty string, as CloudEvents allows. Use it as the
/// idempotency key in handlers: a redelivered event keeps its id.
#[derive(Clone, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct EventId(Arc<str>);

impl EventId {
    /// A new UUID v7 id: 48 bits of Unix time in milliseconds, then random bits.
    ///
    /// The random bits come from a fast thread-local generator rather than the operating
    /// system's (one `getrandom` system call per event was the largest single cost of
    /// publishing); ids stay unique, they are just not secrets.
    pub fn new() -> Self {
        Self::at(SystemTime::now())
    }

    /// A new UUID v7 id for an event published at `time` (one clock reading serves the id and
    /// the envelope's `time`).
    pub(crate) fn at(time: SystemTime) -> Self {
        let millis = time
            .duration_since(std::time::UNIX_EPOCH)
            .map(|d| d.as_millis() as u64)
            .unwrap_or(0);
        let random = fastrand::u128(..).to_le_bytes();
        let mut bytes = [0u8; 10];
        bytes.copy_from_slice(&random[..10]);
        let uuid = uuid::Builder::from_unix_timestamp_millis(millis, &bytes).into_uuid();
        let mut buf = [0u8; uuid::fmt::Hyphenated::LENGTH];
        EventId(uuid.hyphenated().encode_lower(&mut buf).into())
    }

    /// The id as text.
    pub fn as_str(&self) -> &str {
        &self.0
    }
}

impl Default for EventId {
    fn default() -> Self {
        Self::new()
    }
}

impl fmt::Display for EventId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

impl fmt::Debug for EventId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "EventId({})", self.0)
    }
}

impl Serialize for EventId {
    fn serialize<S: serde::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.serialize_str(&self.0)
    }
}

impl<'de> Deserialize<'de> for EventId {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        String::deserialize(d).map(EventId::from)
    }
}

impl FromStr for EventId {
    type Err = std::convert::Infallible;
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        Ok(EventId(s.into()))
    }
}

impl From<&str> for EventId {
    fn from(s: &str) -> Self {
        EventId(s.into())
    }
}

impl From<String> for EventId {
    fn from(s: String) -> Self {
        EventId(s.into())
    }
}

impl PartialEq<str> for EventId {
    fn eq(&self, other: &str) -> bool {
        &*self.0 == other
    }
}

impl PartialEq<&str> for EventId {
    fn eq(&self, other: &&str) -> bool {
        &*self.0 == *other
    }
}
