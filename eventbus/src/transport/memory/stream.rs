//! Streams: entries in id order, id generation, trims and deletes (`XADD`, `XRANGE`, `XDEL`,
//! `XTRIM`). Deleting or trimming an entry leaves it in the pending lists that hold it, as in
//! Redis: readers then see it without fields, and claims drop it (see [`super::group`]).

use std::collections::BTreeMap;
use std::fmt;
use std::time::{SystemTime, UNIX_EPOCH};

use super::group::Group;
use super::{Memory, State, err};
use crate::error::TransportError;
use crate::transport::source::Entry;

/// The fields of one entry, in the order written.
pub(super) type Fields = Vec<(Vec<u8>, Vec<u8>)>;

/// A stream entry id, `<ms>-<seq>`, ordered as Redis orders them.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub(super) struct Id {
    /// Milliseconds since the Unix epoch when the entry was added.
    pub(super) ms: u64,
    /// Sequence number within that millisecond.
    pub(super) seq: u64,
}

impl Id {
    /// The smallest id, `0-0`.
    pub(super) const MIN: Id = Id { ms: 0, seq: 0 };
    /// The largest id.
    pub(super) const MAX: Id = Id {
        ms: u64::MAX,
        seq: u64::MAX,
    };

    /// Parses `<ms>-<seq>` or `<ms>` (then the sequence is `missing_seq`), digits only, as
    /// Redis does; `None` for anything else.
    pub(super) fn parse_with(text: &str, missing_seq: u64) -> Option<Id> {
        let digits = |s: &str| {
            if s.is_empty() || !s.bytes().all(|b| b.is_ascii_digit()) {
                None
            } else {
                s.parse::<u64>().ok()
            }
        };
        match text.split_once('-') {
            Some((ms, seq)) => Some(Id {
                ms: digits(ms)?,
                seq: digits(seq)?,
            }),
            None => Some(Id {
                ms: digits(text)?,
                seq: missing_seq,
            }),
        }
    }

    /// Parses one exact id (`<ms>` means `<ms>-0`), or fails as Redis does.
    pub(super) fn parse(text: &str) -> Result<Id, TransportError> {
        Id::parse_with(text, 0).ok_or_else(invalid_id)
    }

    /// The next id after this one, if there is one.
    pub(super) fn successor(self) -> Option<Id> {
        match self.seq.checked_add(1) {
            Some(seq) => Some(Id { ms: self.ms, seq }),
            None => Some(Id {
                ms: self.ms.checked_add(1)?,
                seq: 0,
            }),
        }
    }

    /// The id before this one, if there is one.
    pub(super) fn predecessor(self) -> Option<Id> {
        match self.seq.checked_sub(1) {
            Some(seq) => Some(Id { ms: self.ms, seq }),
            None => Some(Id {
                ms: self.ms.checked_sub(1)?,
                seq: u64::MAX,
            }),
        }
    }

    /// The id an append gets when the last id of the stream is `last` and the clock reads
    /// `now_ms`: `<now_ms>-0` when the clock moved past `last`, else `last` with the sequence
    /// one up, so ids never go backwards even when the clock does.
    pub(super) fn next_after(last: Id, now_ms: u64) -> Result<Id, TransportError> {
        if now_ms > last.ms {
            Ok(Id { ms: now_ms, seq: 0 })
        } else {
            last.successor().ok_or_else(|| {
                err("The stream has exhausted the last possible ID, unable to add more items")
            })
        }
    }

    /// The inclusive range of ids from `min` to `max` as `XPENDING`/`XRANGE` take them: `-` and
    /// `+` for the ends, `(` before an id for an exclusive bound, and `<ms>` alone meaning the
    /// first (for `min`) or last (for `max`) id of that millisecond. `None` when the range is
    /// empty.
    pub(super) fn range(min: &str, max: &str) -> Result<Option<(Id, Id)>, TransportError> {
        let lo = match min {
            "-" => Some(Id::MIN),
            "+" => Some(Id::MAX),
            _ => match min.strip_prefix('(') {
                Some(id) => Id::parse_with(id, 0).ok_or_else(invalid_id)?.successor(),
                None => Some(Id::parse_with(min, 0).ok_or_else(invalid_id)?),
            },
        };
        let hi = match max {
            "+" => Some(Id::MAX),
            "-" => Some(Id::MIN),
            _ => match max.strip_prefix('(') {
                Some(id) => Id::parse_with(id, u64::MAX)
                    .ok_or_else(invalid_id)?
                    .predecessor(),
                None => Some(Id::parse_with(max, u64::MAX).ok_or_else(invalid_id)?),
            },
        };
        Ok(match (lo, hi) {
            (Some(lo), Some(hi)) if lo <= hi => Some((lo, hi)),
            _ => None,
        })
    }
}

impl fmt::Display for Id {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}-{}", self.ms, self.seq)
    }
}

/// Redis's answer to an id it cannot parse.
pub(super) fn invalid_id() -> TransportError {
    err("Invalid stream ID specified as stream command argument")
}

/// The wall clock in milliseconds since the Unix epoch (0 if the clock is before it).
fn now_ms() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| u64::try_from(d.as_millis()).unwrap_or(u64::MAX))
}

/// Redis's `stream-node-max-entries` default.
const NODE_MAX_ENTRIES: usize = 100;
/// Redis's `stream-node-max-bytes` default (counted here over field names and values).
const NODE_MAX_BYTES: usize = 4096;

/// One stream: its entries, the last id it handed out, and its consumer groups.
#[derive(Debug, Default)]
pub(super) struct Stream {
    /// The entries still in the stream, by id.
    pub(super) entries: BTreeMap<Id, Fields>,
    /// The largest id ever added; kept when that entry is deleted or trimmed, so ids only grow.
    pub(super) last_id: Id,
    /// The first id of each storage node, oldest first, with the node's entry count and bytes
    /// when it was filled: Redis keeps a stream in nodes of at most `stream-node-max-entries`
    /// (100) entries or `stream-node-max-bytes` (4096) bytes, and `MAXLEN ~` trims whole nodes
    /// only.
    pub(super) nodes: std::collections::VecDeque<(Id, usize, usize)>,
    /// The consumer groups, by name.
    pub(super) groups: BTreeMap<String, Group>,
}

impl Stream {
    /// Appends an entry with the next id, then trims to `max_len` entries.
    fn append(&mut self, fields: Fields, max_len: Option<usize>) -> Result<Id, TransportError> {
        let id = Id::next_after(self.last_id, now_ms())?;
        let bytes: usize = fields.iter().map(|(k, v)| k.len() + v.len()).sum();
        match self.nodes.back_mut() {
            Some((_, count, size))
                if *count < NODE_MAX_ENTRIES && *size + bytes <= NODE_MAX_BYTES =>
            {
                *count += 1;
                *size += bytes;
            }
            _ => self.nodes.push_back((id, 1, bytes)),
        }
        self.entries.insert(id, fields);
        self.last_id = id;
        if let Some(max_len) = max_len {
            self.trim_nodes(max_len);
        }
        Ok(id)
    }

    /// `MAXLEN ~ max_len`: removes whole nodes from the front while the stream keeps at least
    /// `max_len` entries without them, as Redis does (so it may keep more than `max_len`).
    fn trim_nodes(&mut self, max_len: usize) {
        while self.nodes.len() > 1 {
            let Some(&(_, _, _)) = self.nodes.front() else {
                break;
            };
            let next_start = match self.nodes.get(1) {
                Some(&(next, _, _)) => next,
                None => break,
            };
            let in_node = self.entries.range(..next_start).count();
            if self.entries.len() - in_node < max_len {
                break;
            }
            let mut removed = Vec::new();
            while self
                .entries
                .first_key_value()
                .is_some_and(|(id, _)| *id < next_start)
            {
                if let Some((id, _)) = self.entries.pop_first() {
                    removed.push(id);
                }
            }
            self.nodes.pop_front();
            self.count_removed(&removed);
        }
    }

    /// Removes the oldest entries until at most `max_len` are left; returns how many went.
    /// Pending lists keep the ids (as in Redis).
    #[cfg(test)]
    pub(super) fn trim(&mut self, max_len: usize) -> usize {
        let mut removed = Vec::new();
        while self.entries.len() > max_len {
            match self.entries.pop_first() {
                Some((id, _)) => removed.push(id),
                None => break,
            }
        }
        self.count_removed(&removed);
        removed.len()
    }

    /// Counts, per group, which of `removed` it never read.
    pub(super) fn count_removed(&mut self, removed: &[Id]) {
        if removed.is_empty() {
            return;
        }
        for group in self.groups.values_mut() {
            group.count_removed(removed);
        }
    }

    /// The entry `id` as the reader takes it, if it is still in the stream.
    pub(super) fn entry(&self, id: Id) -> Option<Entry> {
        self.entries.get(&id).map(|fields| Entry {
            id: id.to_string(),
            fields: fields.clone(),
        })
    }
}

impl State {
    /// `XADD <stream> [MAXLEN <max_len>] * <fields>`: creates the stream if needed, and wakes
    /// the readers blocked on it.
    pub(super) fn xadd(
        &mut self,
        stream: &str,
        fields: Fields,
        max_len: Option<usize>,
    ) -> Result<Id, TransportError> {
        if fields.is_empty() {
            return Err(err("wrong number of arguments for 'xadd' command"));
        }
        let id = self.stream_or_create(stream)?.append(fields, max_len)?;
        self.wake(stream);
        Ok(id)
    }
}

impl Memory {
    /// `XADD <stream> [MAXLEN ~ <max_len>] * <fields>`: appends an entry (creating the stream),
    /// trims whole storage nodes of the oldest entries while at least `max_len` stay (as
    /// Redis's `~`: it may keep more), and wakes readers blocked on the stream. Returns the new id, `<ms>-<seq>`, larger
    /// than every id the stream ever had (a stream deleted with [`del`](Self::del) starts
    /// over, as in Redis). `WRONGTYPE` when the key is not a stream; an `ERR` when `fields` is
    /// empty (Redis needs at least one pair).
    pub(crate) fn xadd(
        &self,
        stream: &str,
        fields: Vec<(Vec<u8>, Vec<u8>)>,
        max_len: Option<usize>,
    ) -> Result<String, TransportError> {
        Ok(self.lock().xadd(stream, fields, max_len)?.to_string())
    }

    /// `XRANGE <stream> - + COUNT <count>`: at most `count` entries, oldest first. Empty when
    /// the key does not exist or is not a stream.
    pub(crate) fn xrange(&self, stream: &str, count: usize) -> Vec<Entry> {
        let state = self.lock();
        let Ok(Some(s)) = state.stream(stream) else {
            return Vec::new();
        };
        s.entries
            .iter()
            .take(count)
            .map(|(id, fields)| Entry {
                id: id.to_string(),
                fields: fields.clone(),
            })
            .collect()
    }

    /// `ERR Invalid stream ID` when `id` is not one.
    pub(crate) fn check_id(id: &str) -> Result<(), TransportError> {
        Id::parse(id).map(drop)
    }

    /// `XRANGE <stream> <id> <id>`: the entry `id`, if it is in the stream.
    pub(crate) fn xrange_one(&self, stream: &str, id: &str) -> Option<Entry> {
        let id = Id::parse(id).ok()?;
        let state = self.lock();
        state.stream(stream).ok()??.entry(id)
    }

    /// `XDEL <stream> <id>`: removes the entry; returns 1 if it was there, else 0. Pending
    /// lists keep the id.
    pub(crate) fn xdel(&self, stream: &str, id: &str) -> usize {
        let Ok(id) = Id::parse(id) else {
            return 0;
        };
        let mut state = self.lock();
        match state.stream_mut(stream) {
            Ok(Some(s)) => {
                let removed = s.entries.remove(&id).is_some();
                if removed {
                    s.count_removed(&[id]);
                }
                usize::from(removed)
            }
            _ => 0,
        }
    }

    /// `XTRIM <stream> MAXLEN <max_len>` (exact): removes the oldest entries until at most
    /// `max_len` are left; returns how many were removed. For fault injection in tests: entries
    /// trimmed while pending stay in the pending lists.
    #[cfg(test)]
    pub(crate) fn xtrim(&self, stream: &str, max_len: usize) -> usize {
        let mut state = self.lock();
        match state.stream_mut(stream) {
            Ok(Some(s)) => s.trim(max_len),
            _ => 0,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn fields(v: &str) -> Fields {
        vec![(b"envelope".to_vec(), v.as_bytes().to_vec())]
    }

    #[test]
    fn ids_follow_the_clock_and_never_go_backwards() -> Result<(), TransportError> {
        let last = Id { ms: 1000, seq: 4 };
        // The clock moved on: its millisecond, sequence 0.
        assert_eq!(Id::next_after(last, 1001)?, Id { ms: 1001, seq: 0 });
        // Same millisecond: sequence one up.
        assert_eq!(Id::next_after(last, 1000)?, Id { ms: 1000, seq: 5 });
        // The clock went back: still after the last id.
        assert_eq!(Id::next_after(last, 10)?, Id { ms: 1000, seq: 5 });
        // The end of a millisecond's sequence moves to the next millisecond.
        let full = Id {
            ms: 7,
            seq: u64::MAX,
        };
        assert_eq!(Id::next_after(full, 7)?, Id { ms: 8, seq: 0 });
        assert!(Id::next_after(Id::MAX, 0).is_err());
        Ok(())
    }

    #[test]
    fn appended_ids_strictly_increase_and_look_like_redis() -> Result<(), TransportError> {
        let m = Memory::new();
        let mut previous = Id::MIN;
        for i in 0..2000 {
            let id = m.xadd("s", fields(&i.to_string()), None)?;
            let parsed = Id::parse(&id)?;
            assert_eq!(parsed.to_string(), id);
            assert!(parsed > previous, "{parsed} after {previous}");
            previous = parsed;
        }
        // Within one millisecond the sequence counts up from 0.
        let ids: Vec<Id> = m
            .xrange("s", usize::MAX)
            .iter()
            .filter_map(|e| Id::parse(&e.id).ok())
            .collect();
        assert_eq!(ids.len(), 2000);
        assert!(ids.windows(2).all(|w| {
            w[1] == Id {
                ms: w[0].ms,
                seq: w[0].seq + 1,
            } || (w[1].ms > w[0].ms && w[1].seq == 0)
        }));
        // Close to the wall clock.
        assert!(previous.ms.abs_diff(now_ms()) < 60_000);
        Ok(())
    }

    #[test]
    fn ids_keep_growing_after_the_last_entry_is_deleted() -> Result<(), TransportError> {
        let m = Memory::new();
        let a = m.xadd("s", fields("a"), None)?;
        assert_eq!(m.xdel("s", &a), 1);
        assert_eq!(m.xdel("s", &a), 0);
        let b = m.xadd("s", fields("b"), None)?;
        assert!(Id::parse(&b)? > Id::parse(&a)?);
        Ok(())
    }

    #[test]
    fn xrange_oldest_first_and_trims_from_the_oldest() -> Result<(), TransportError> {
        let m = Memory::new();
        let mut ids = Vec::new();
        for v in ["a", "b", "c", "d"] {
            ids.push(m.xadd("s", fields(v), None)?);
        }
        let two = m.xrange("s", 2);
        assert_eq!(two.len(), 2);
        assert_eq!(two[0].id, ids[0]);
        assert_eq!(two[0].field("envelope"), Some(&b"a"[..]));
        assert_eq!(two[1].id, ids[1]);

        // MAXLEN ~ on append trims whole nodes only: all five share the first node.
        let e = m.xadd("s", fields("e"), Some(3))?;
        assert_eq!(m.xrange("s", 10).len(), 5);

        assert_eq!(m.xtrim("s", 1), 4);
        assert_eq!(m.xtrim("s", 1), 0);
        assert_eq!(m.xrange("s", 10).len(), 1);
        assert_eq!(m.xrange_one("s", &e).map(|e| e.fields), Some(fields("e")));
        assert_eq!(m.xrange_one("s", &ids[0]), None);
        assert_eq!(m.xrange_one("s", "not an id"), None);
        assert!(m.xrange("missing", 10).is_empty());
        Ok(())
    }

    #[test]
    fn approximate_trims_remove_whole_nodes_of_100_entries_or_4096_bytes()
    -> Result<(), TransportError> {
        let m = Memory::new();
        for _ in 0..250 {
            m.xadd("small", fields("x"), Some(10))?;
        }
        // Nodes of 100, 100, 50: the first two go, the last stays whole.
        assert_eq!(m.xrange("small", usize::MAX).len(), 50);
        let big = vec![(b"envelope".to_vec(), vec![b'x'; 1000])];
        for _ in 0..20 {
            m.xadd("big", big.clone(), Some(10))?;
        }
        // Four 1008-byte entries fill a node: nodes of 4 go while at least 10 stay.
        assert_eq!(m.xrange("big", usize::MAX).len(), 12);
        Ok(())
    }

    #[test]
    fn xadd_needs_fields() {
        let m = Memory::new();
        let e = m.xadd("s", Vec::new(), None).expect_err("no fields");
        assert_eq!(e.code(), Some("ERR"));
        assert!(m.keys().is_empty());
    }

    #[test]
    fn id_parsing_and_ranges() -> Result<(), TransportError> {
        assert_eq!(Id::parse("5")?, Id { ms: 5, seq: 0 });
        assert_eq!(Id::parse("5-3")?, Id { ms: 5, seq: 3 });
        for bad in [
            "",
            "-",
            "+",
            "5-",
            "-3",
            "a-1",
            "1-2-3",
            " 1-2",
            "99999999999999999999-0",
        ] {
            assert!(Id::parse(bad).is_err(), "{bad:?}");
        }
        assert_eq!(Id::range("-", "+")?, Some((Id::MIN, Id::MAX)));
        assert_eq!(
            Id::range("5", "5")?,
            Some((
                Id { ms: 5, seq: 0 },
                Id {
                    ms: 5,
                    seq: u64::MAX
                }
            ))
        );
        assert_eq!(
            Id::range("(5-1", "(5-4")?,
            Some((Id { ms: 5, seq: 2 }, Id { ms: 5, seq: 3 }))
        );
        assert_eq!(Id::range("(5-1", "(5-2")?, None);
        assert_eq!(Id::range("6", "5")?, None);
        assert_eq!(Id::range("+", "-")?, None);
        assert!(Id::range("x", "+").is_err());
        Ok(())
    }
}
