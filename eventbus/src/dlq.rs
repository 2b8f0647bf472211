//! Dead letters: listed, replayed atomically, removed. The transport writes them together with
//! the ack of their original (see `transport::dead_letters`); this facade reads their fields.

use std::sync::Arc;
use std::time::SystemTime;

use crate::envelope::{self, EventId};
use crate::error::{Error, Result};
use crate::transport::dead_letters::{Replay, Republish};
use crate::transport::keys::EventKeys;
use crate::transport::source::Entry;
use crate::transport::{self, Transport};

/// One dead letter: an event a handler could not handle, with why.
#[derive(Debug, Clone)]
#[non_exhaustive]
pub struct DeadLetter {
    /// The dead letter's own id: `<event name>/<dead-letter stream entry id>`.
    pub id: String,
    /// The event's id, when its envelope could be read.
    pub event_id: Option<EventId>,
    /// The event name (the stream it came from).
    pub event_name: String,
    /// The handler (consumer group) that gave up.
    pub handler: String,
    /// The last error, or why the event was rejected without running the handler.
    pub error: String,
    /// Handler attempts made (0 when rejected before the first one).
    pub attempts: u32,
    /// When it was dead-lettered.
    pub failed_at: SystemTime,
    /// The original envelope; a JSON string holding the raw text when it was not valid JSON.
    pub envelope: serde_json::Value,
    /// The id of the original entry in the event stream.
    pub stream_id: String,
}

/// The dead letters of one namespace; from [`Bus::dlq`](crate::Bus::dlq).
///
/// ```no_run
/// # async fn run(bus: eventbus::Bus) -> eventbus::Result<()> {
/// for letter in bus.dlq().list(100).await? {
///     println!("{} {} failed {} times: {}", letter.id, letter.handler, letter.attempts, letter.error);
///     bus.dlq().replay(&letter.id).await?; // back to that handler only
/// }
/// # Ok(()) }
/// ```
#[derive(Debug, Clone)]
pub struct DeadLetters {
    transport: Transport,
    namespace: Arc<str>,
    /// The streams' `MAXLEN ~`, for durable replays.
    max_len: Option<usize>,
}

impl DeadLetters {
    pub(crate) fn new(transport: Transport, namespace: Arc<str>, max_len: Option<usize>) -> Self {
        Self {
            transport,
            namespace,
            max_len,
        }
    }

    /// Every dead-letter store of the namespace, and the event of each: only the keys that are
    /// exactly `<namespace>:{<event name>}:dlq` (the transport's search may find another
    /// namespace's keys too).
    async fn keys(&self) -> Result<Vec<(String, String)>> {
        let namespace = &*self.namespace;
        let mut keys: Vec<(String, String)> = self
            .transport
            .dead_letter_keys(namespace)
            .await?
            .into_iter()
            .filter_map(|key| {
                let event = event_of_key(namespace, &key)?.to_owned();
                Some((key, event))
            })
            .collect();
        keys.sort();
        keys.dedup();
        Ok(keys)
    }

    /// Up to `limit` dead letters, oldest first, across every event of the namespace.
    ///
    /// # Errors
    ///
    /// [`Error::Transport`] when Redis fails.
    pub async fn list(&self, limit: usize) -> Result<Vec<DeadLetter>> {
        let mut all = Vec::new();
        for (key, event) in self.keys().await? {
            let letters = self.transport.dead_letters(&key, limit).await?;
            all.extend(letters.iter().map(|letter| parse(&event, letter)));
        }
        all.sort_by(|a, b| (a.failed_at, &a.id).cmp(&(b.failed_at, &b.id)));
        all.truncate(limit);
        Ok(all)
    }

    /// Redelivers a dead letter to the handler that gave up on it, and to no other handler,
    /// then removes it. The event keeps its id.
    ///
    /// Atomic: the check that the letter still exists, the redelivery and the removal are one
    /// server-side step, so of two concurrent replays of one letter exactly one redelivers it;
    /// the other gets [`Error::DeadLetterNotFound`].
    ///
    /// - A durable letter is appended to the event's stream (with `MAXLEN ~` when `max_len` is
    ///   set), marked for its handler. It is refused, and kept, when that handler has no
    ///   consumer group on the stream (nothing would ever read it for that handler).
    /// - A broadcast letter is published again on its channel, marked for its handler: it runs
    ///   in every bus instance subscribed at that moment. It is removed only when at least one
    ///   subscriber received it; with none, it is kept and this returns [`Error::Replay`].
    ///
    /// # Errors
    ///
    /// [`Error::DeadLetterNotFound`] (also when a concurrent replay or `remove` got there
    /// first); [`Error::Replay`] when its envelope was never a valid event (fix the producer and
    /// publish again instead), when nothing could receive it (no group or stream; no
    /// subscriber): the letter is kept, start the service and replay again; or [`Error::Transport`].
    pub async fn replay(&self, id: &str) -> Result<()> {
        let (key, entry, event) = self.locate(id)?;
        let Some(found) = self.transport.dead_letter(&key, entry).await? else {
            return Err(Error::DeadLetterNotFound(id.to_owned()));
        };
        let raw = text(&found, "envelope");
        let handler = text(&found, "handler");
        if handler.is_empty() {
            return Err(Error::Replay {
                id: id.to_owned(),
                reason: "it names no handler".to_owned(),
            });
        }
        if let Err(rejected) = envelope::decode(&raw) {
            return Err(Error::Replay {
                id: id.to_owned(),
                reason: format!("its envelope is not a valid event: {rejected}"),
            });
        }
        if text(&found, "delivery") == "broadcast" {
            return self
                .replay_broadcast(id, &key, entry, event, &raw, &handler)
                .await;
        }
        let EventKeys { stream, .. } = EventKeys::new(&self.namespace, event);
        let replayed = self
            .transport
            .replay_durable(&key, entry, &stream, &handler, &raw, self.max_len)
            .await?;
        match replayed {
            Replay::Replayed => {
                tracing::info!(dead_letter = id, handler = %handler, "dead letter replayed");
                Ok(())
            }
            Replay::NoLetter => Err(Error::DeadLetterNotFound(id.to_owned())),
            Replay::NoStream => Err(Error::Replay {
                id: id.to_owned(),
                reason: format!(
                    "the stream `{stream}` does not exist, so handler `{handler}` could not receive it; the dead letter is kept: start a service that runs `{handler}` (it creates the stream and the group) and replay again"
                ),
            }),
            Replay::NoGroup => Err(Error::Replay {
                id: id.to_owned(),
                reason: format!(
                    "handler `{handler}` has no consumer group on the stream `{stream}`, so nothing would ever read it; the dead letter is kept: start a service that runs `{handler}` (it creates its group) and replay again"
                ),
            }),
        }
    }

    /// A broadcast dead letter is published again on its channel, marked (extension attribute
    /// `eventbushandler`) for the handler that gave up: that handler runs it in every bus
    /// instance subscribed now; other handlers skip it. At most once, like any broadcast; the
    /// letter is removed only when some subscriber received it.
    async fn replay_broadcast(
        &self,
        id: &str,
        key: &str,
        entry: &str,
        event: &str,
        raw: &str,
        handler: &str,
    ) -> Result<()> {
        let mut envelope: serde_json::Map<String, serde_json::Value> = serde_json::from_str(raw)
            .map_err(|e| Error::Replay {
                id: id.to_owned(),
                reason: format!("its envelope is not a JSON object: {e}"),
            })?;
        envelope.insert(envelope::ATTR_HANDLER.to_owned(), handler.into());
        let payload = serde_json::Value::Object(envelope).to_string();
        let channel = transport::channel_key(&self.namespace, event);
        let republished = self
            .transport
            .replay_broadcast(key, entry, &channel, &payload)
            .await?;
        match republished {
            Republish::NoLetter => Err(Error::DeadLetterNotFound(id.to_owned())),
            Republish::Received(0) => Err(Error::Replay {
                id: id.to_owned(),
                reason: format!(
                    "no subscriber of channel `{channel}` is listening, so handler `{handler}` could not receive it; the dead letter is kept: start a service that runs `{handler}` and replay again"
                ),
            }),
            Republish::Received(r) => {
                tracing::info!(dead_letter = id, handler = %handler, receivers = r, "broadcast dead letter republished");
                Ok(())
            }
        }
    }

    /// Deletes one dead letter.
    ///
    /// # Errors
    ///
    /// [`Error::DeadLetterNotFound`] or [`Error::Transport`].
    pub async fn remove(&self, id: &str) -> Result<()> {
        let (key, entry, _) = self.locate(id)?;
        if !self.transport.remove_dead_letter(&key, entry).await? {
            return Err(Error::DeadLetterNotFound(id.to_owned()));
        }
        Ok(())
    }

    /// Deletes every dead letter of the namespace, and only of this namespace; returns how many
    /// there were.
    ///
    /// # Errors
    ///
    /// [`Error::Transport`] when Redis fails.
    pub async fn purge(&self) -> Result<usize> {
        let mut total = 0;
        for (key, _) in self.keys().await? {
            total += self.transport.delete_dead_letters(&key).await?;
        }
        Ok(total)
    }

    /// The dead-letter key, entry id and event of a dead letter's id.
    fn locate<'a>(&self, id: &'a str) -> Result<(String, &'a str, &'a str)> {
        let (event, entry) = id
            .rsplit_once('/')
            .ok_or_else(|| Error::DeadLetterNotFound(id.to_owned()))?;
        if !is_event_name(event) || entry.is_empty() {
            return Err(Error::DeadLetterNotFound(id.to_owned()));
        }
        Ok((transport::dlq_key(&self.namespace, event), entry, event))
    }
}

/// The event of `key` when it is exactly a dead-letter key of `namespace`
/// (`<namespace>:{<event name>}:dlq`, with a valid event name).
fn event_of_key<'a>(namespace: &str, key: &'a str) -> Option<&'a str> {
    transport::event_of_dlq_key(namespace, key).filter(|event| is_event_name(event))
}

/// An event name: non-empty, only ASCII letters, digits, `.`, `_` and `-` (what
/// `#[event(name)]` accepts; docs/WIRE.md).
fn is_event_name(name: &str) -> bool {
    !name.is_empty()
        && name
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || matches!(c, '.' | '_' | '-'))
}

/// Field `name` of a letter as text (lossy UTF-8); empty when it has none.
fn text(letter: &Entry, name: &str) -> String {
    letter
        .field(name)
        .map(|v| String::from_utf8_lossy(v).into_owned())
        .unwrap_or_default()
}

/// A dead letter of `event` from its fields.
fn parse(event: &str, letter: &Entry) -> DeadLetter {
    let text = |name: &str| text(letter, name);
    let raw = text("envelope");
    let failed_at =
        humantime::parse_rfc3339_weak(&text("failed_at")).unwrap_or(SystemTime::UNIX_EPOCH);
    DeadLetter {
        id: format!("{event}/{}", letter.id),
        event_id: Some(text("event_id"))
            .filter(|s| !s.is_empty())
            .map(EventId::from),
        event_name: event.to_owned(),
        handler: text("handler"),
        error: text("error"),
        attempts: text("attempts").parse().unwrap_or(0),
        failed_at,
        envelope: serde_json::from_str(&raw).unwrap_or(serde_json::Value::String(raw)),
        stream_id: text("stream_id"),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn only_exact_dead_letter_keys_of_the_namespace_are_taken() {
        assert_eq!(
            event_of_key("ns", "ns:{chat.created}:dlq"),
            Some("chat.created")
        );
        assert_eq!(event_of_key(r"a\b", r"a\b:{x}:dlq"), Some("x"));
        assert_eq!(event_of_key(r"a\b", "ab:{x}:dlq"), None);
        assert_eq!(event_of_key("ns", "nsx:{x}:dlq"), None);
        assert_eq!(
            event_of_key("ns", "ns:{a}:{b}:dlq"),
            None,
            "not an event name"
        );
        assert_eq!(event_of_key("ns", "ns:{}:dlq"), None);
        assert_eq!(event_of_key("ns", "ns:{x}:attempts"), None);
    }

    #[test]
    fn dead_letter_keys_share_the_event_slot() {
        let keys = EventKeys::new("ns", "chat.created");
        assert_eq!(keys.stream, "ns:{chat.created}");
        assert_eq!(keys.dlq, "ns:{chat.created}:dlq");
        assert_eq!(keys.attempts, "ns:{chat.created}:attempts");
    }
}
