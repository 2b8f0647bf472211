//! The names of a namespace's keys (docs/WIRE.md). Every key of one event carries the event's
//! hash tag, so they share one Cluster slot. Used by every backend, so an in-memory bus and a
//! Redis one name things alike.

/// The stream of one event: `<ns>:{<event name>}` (hash tag: one Cluster slot per event).
pub(crate) fn stream_key(namespace: &str, event: &str) -> String {
    format!("{namespace}:{{{event}}}")
}

/// The dead letters of one event: `<ns>:{<event name>}:dlq`, in the stream's slot.
pub(crate) fn dlq_key(namespace: &str, event: &str) -> String {
    format!("{namespace}:{{{event}}}:dlq")
}

/// The charged attempts of one event's entries, per handler: `<ns>:{<event name>}:attempts`, in
/// the stream's slot. A hash of [`attempts_field`] → attempts charged so far (failed attempts,
/// and crashes caused while running alone). Written only on failure and redelivery paths, and
/// deleted when the entry is acked or dead-lettered.
pub(crate) fn attempts_key(namespace: &str, event: &str) -> String {
    format!("{namespace}:{{{event}}}:attempts")
}

/// The field of one entry of one handler (consumer group) in [`attempts_key`]:
/// `<entry id> <handler>` (handler names hold no whitespace).
pub(crate) fn attempts_field(group: &str, entry_id: &str) -> String {
    format!("{entry_id} {group}")
}

/// The event name in a dead-letter key, if it is one.
pub(crate) fn event_of_dlq_key<'a>(namespace: &str, key: &'a str) -> Option<&'a str> {
    key.strip_prefix(namespace)?
        .strip_prefix(":{")?
        .strip_suffix("}:dlq")
}

/// The Pub/Sub channel of a broadcast event: `<ns>:<event name>`. No braces, so it can never be
/// mistaken for a stream key; channels are not keys and take no hash slot.
pub(crate) fn channel_key(namespace: &str, event: &str) -> String {
    format!("{namespace}:{event}")
}

/// The keys of one event that settling an entry touches. All three share the event's hash
/// slot (`{<event>}`), so one script can use them in Redis Cluster too.
#[derive(Debug, Clone)]
pub(crate) struct EventKeys {
    /// The event stream, `<ns>:{<event>}` ([`stream_key`]).
    pub(crate) stream: String,
    /// The dead letters, `<ns>:{<event>}:dlq` ([`dlq_key`]).
    pub(crate) dlq: String,
    /// The charged attempts, `<ns>:{<event>}:attempts` ([`attempts_key`]).
    pub(crate) attempts: String,
}

impl EventKeys {
    /// The keys of `event` in `namespace`.
    pub(crate) fn new(namespace: &str, event: &str) -> EventKeys {
        EventKeys {
            stream: stream_key(namespace, event),
            dlq: dlq_key(namespace, event),
            attempts: attempts_key(namespace, event),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn keys() {
        assert_eq!(
            stream_key("events", "chat.created"),
            "events:{chat.created}"
        );
        assert_eq!(
            dlq_key("events", "chat.created"),
            "events:{chat.created}:dlq"
        );
        assert_eq!(
            event_of_dlq_key("events", "events:{chat.created}:dlq"),
            Some("chat.created")
        );
        assert_eq!(event_of_dlq_key("events", "other:{chat.created}:dlq"), None);
    }
}
