//! Settling a delivery: what a dead-letter write did, and the fields of a dead letter.

/// What a dead-letter write did.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Written {
    /// The dead letter was written (and, for a durable entry, the original acked and its
    /// charged attempts deleted), all in one step.
    Letter,
    /// Nothing was written: the durable entry is no longer pending for the group. It was
    /// already settled: acked or dead-lettered by another consumer that exhausted the same
    /// entry, or by an earlier try of this write whose reply was lost; or its stream or group
    /// was deleted. Do not count it as a new dead letter.
    AlreadySettled,
}

/// The fields of one dead letter, in wire order (docs/WIRE.md): `event_id event_name handler
/// error attempts failed_at stream_id delivery envelope`.
pub(crate) type LetterFields<'a> = [(&'static str, &'a str); 9];

/// One dead letter's contents, before the backend adds where it came from.
#[derive(Debug, Clone, Copy)]
pub(crate) struct Letter<'a> {
    /// The event's id; empty when the envelope could not be read.
    pub(crate) event_id: &'a str,
    /// The event name.
    pub(crate) event_name: &'a str,
    /// The handler (consumer group) that gave up.
    pub(crate) handler: &'a str,
    /// Why.
    pub(crate) error: &'a str,
    /// Handler attempts made: 0 when the event was rejected before any.
    pub(crate) attempts: u32,
    /// The envelope as received (lossy UTF-8 when it was not UTF-8).
    pub(crate) envelope: &'a str,
}

impl Letter<'_> {
    /// Calls `f` with the letter's fields in wire order; `stream_id` is the durable entry's id
    /// (`None` for a broadcast). `failed_at` is now.
    pub(crate) fn with_fields<R>(
        &self,
        stream_id: Option<&str>,
        f: impl FnOnce(&LetterFields<'_>) -> R,
    ) -> R {
        let failed_at = crate::envelope::rfc3339_millis(std::time::SystemTime::now());
        let attempts = self.attempts.to_string();
        let (stream_id, delivery) = match stream_id {
            Some(id) => (id, "durable"),
            None => ("", "broadcast"),
        };
        f(&[
            ("event_id", self.event_id),
            ("event_name", self.event_name),
            ("handler", self.handler),
            ("error", self.error),
            ("attempts", &attempts),
            ("failed_at", &failed_at),
            ("stream_id", stream_id),
            ("delivery", delivery),
            ("envelope", self.envelope),
        ])
    }
}
