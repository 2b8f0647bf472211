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
// Not named by any writer yet (seam step 1 added it ahead of its users); without this the
// `-D warnings` clippy gate fails on it.
#[allow(dead_code)]
pub(crate) type LetterFields<'a> = [(&'static str, &'a str); 9];
