//! What a stream source hands the runtime: entries, and the result of a claim. Neutral types,
//! shared by every backend.

/// One stream entry as the reader needs it: the id and the fields, taken out of the reply
/// without copies (no per-entry map of owned keys).
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct Entry {
    /// The entry id, `<ms>-<seq>`.
    pub(crate) id: String,
    /// Field name and value pairs; empty when the entry was deleted while pending.
    pub(crate) fields: Vec<(Vec<u8>, Vec<u8>)>,
}

impl Entry {
    /// The value of field `name`, if the entry has it.
    pub(crate) fn field(&self, name: &str) -> Option<&[u8]> {
        self.fields
            .iter()
            .find(|(k, _)| k == name.as_bytes())
            .map(|(_, v)| v.as_slice())
    }
}

/// The result of one automatic claim (`XAUTOCLAIM`) page.
#[derive(Debug, Default)]
pub(crate) struct AutoClaimed {
    /// Where the next page starts; `0-0` when the scan went round.
    pub(crate) next: String,
    /// The entries claimed (their delivery counts went up by one).
    pub(crate) entries: Vec<Entry>,
    /// Ids that were pending but are no longer in the stream (deleted or trimmed): the backend
    /// dropped them from the pending list.
    pub(crate) deleted: Vec<String>,
}

/// A stream entry id as `(milliseconds, sequence)`, for ordering.
pub(crate) fn parse_id(id: &str) -> (u64, u64) {
    let (ms, seq) = id.split_once('-').unwrap_or((id, "0"));
    (ms.parse().unwrap_or(0), seq.parse().unwrap_or(0))
}
