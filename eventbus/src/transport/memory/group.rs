//! Consumer groups: creation, reads (`XREADGROUP`), the pending entries list (PEL) with each
//! entry's owner, delivery count and delivery time, `XPENDING`, `XCLAIM ... JUSTID`,
//! `XAUTOCLAIM`, `XACK` and the removal of an idle consumer.
//!
//! Delivery counts follow Redis 7.0: a new read sets 1; a re-read of one's own pending entries
//! adds 1 to each entry still in the stream; `XAUTOCLAIM` adds 1; `XCLAIM ... JUSTID` adds
//! nothing. Idle time is the time since the last delivery or claim, on the tokio clock.

use std::collections::{BTreeMap, BTreeSet};
use std::pin::pin;
use std::time::Duration;

use tokio::time::Instant;
use tokio_util::sync::CancellationToken;

use super::stream::{Fields, Id};
use super::{Memory, State, err, no_group};
use crate::error::{TransportError, TransportErrorKind};
use crate::transport::source::{AutoClaimed, Entry};

/// Where a group read starts.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) enum ReadFrom {
    /// `>`: entries never delivered to the group.
    New,
    /// An explicit id: this consumer's own pending entries with a larger id (`"0"`: all of
    /// them).
    PendingAfter(String),
}

/// One entry of a group's pending list, as `XPENDING` (extended form) reports it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct PendingEntry {
    /// The entry id.
    pub(crate) id: String,
    /// The consumer that owns it.
    pub(crate) consumer: String,
    /// How many times it was delivered (read or claimed with a count).
    pub(crate) deliveries: u64,
    /// Time since its last delivery or claim.
    pub(crate) idle: Duration,
}

/// What `XINFO GROUPS` / `XINFO CONSUMERS` tell about one group.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct GroupInfo {
    /// Entries delivered and not acked yet.
    pub(crate) pending: usize,
    /// Entries in the stream after the last-delivered id: not delivered to the group yet.
    pub(crate) lag: usize,
    /// The largest id delivered to the group (`0-0` before the first read).
    pub(crate) last_delivered: String,
    /// Every consumer by name, in name order, with the number of entries it owns.
    pub(crate) consumers: Vec<(String, usize)>,
}

/// One consumer group of a stream.
#[derive(Debug, Default)]
pub(super) struct Group {
    /// The largest id delivered by a `>` read.
    last_delivered: Id,
    /// The pending entries list, by id.
    pel: BTreeMap<Id, Nack>,
    /// The consumers by name, each with the ids it owns (the same ids as in `pel`).
    consumers: BTreeMap<String, BTreeSet<Id>>,
    /// Entries removed from the stream (trimmed or deleted) before this group read them.
    pub(super) removed_unread: u64,
}

impl Group {
    /// Counts `removed` (ids just removed from the stream) that this group never read.
    pub(super) fn count_removed(&mut self, removed: &[Id]) {
        let unread = removed
            .iter()
            .filter(|id| **id > self.last_delivered)
            .count();
        self.removed_unread += unread as u64;
    }
}

/// One pending entry: delivered to a consumer, not acked yet.
#[derive(Debug)]
struct Nack {
    /// The consumer that owns it.
    consumer: String,
    /// How many times it was delivered.
    deliveries: u64,
    /// When it was last delivered or claimed.
    delivered_at: Instant,
    /// Idle time it already had at `delivered_at` (`XCLAIM ... IDLE`): kept apart from the
    /// instant, which cannot go before the clock's start.
    idle_before: Duration,
}

impl Nack {
    /// Time since the last delivery.
    fn idle(&self, now: Instant) -> Duration {
        now.saturating_duration_since(self.delivered_at)
            .saturating_add(self.idle_before)
    }

    /// Marks a delivery (or claim) at `now`, with idle time `idle` from then on.
    fn delivered(&mut self, now: Instant, idle: Duration) {
        self.delivered_at = now;
        self.idle_before = idle;
    }
}

impl Group {
    /// Creates `consumer` if it does not exist.
    fn join(&mut self, consumer: &str) {
        if !self.consumers.contains_key(consumer) {
            self.consumers.insert(consumer.to_owned(), BTreeSet::new());
        }
    }

    /// Makes `consumer` the owner of the pending entry `id` (which is in the PEL).
    fn take_over(&mut self, id: Id, consumer: &str) {
        let Some(nack) = self.pel.get_mut(&id) else {
            return;
        };
        if nack.consumer != consumer {
            if let Some(owned) = self.consumers.get_mut(&nack.consumer) {
                owned.remove(&id);
            }
            nack.consumer = consumer.to_owned();
        }
        self.consumers
            .entry(consumer.to_owned())
            .or_default()
            .insert(id);
    }

    /// Removes `id` from the pending list (acked, or gone from the stream); whether it was there.
    fn settle(&mut self, id: Id) -> bool {
        match self.pel.remove(&id) {
            Some(nack) => {
                if let Some(owned) = self.consumers.get_mut(&nack.consumer) {
                    owned.remove(&id);
                }
                true
            }
            None => false,
        }
    }

    /// `XREADGROUP ... >`: up to `limit` entries after the last-delivered id, each now pending
    /// for `consumer` with one delivery.
    fn read_new(
        &mut self,
        entries: &BTreeMap<Id, Fields>,
        consumer: &str,
        limit: usize,
        now: Instant,
    ) -> Vec<Entry> {
        self.join(consumer);
        let Some(start) = self.last_delivered.successor() else {
            return Vec::new();
        };
        let mut out = Vec::new();
        for (&id, fields) in entries.range(start..).take(limit) {
            // An id can still be pending after `XGROUP SETID` in Redis; here ids only grow, but
            // keep the owner list consistent either way.
            self.settle(id);
            self.pel.insert(
                id,
                Nack {
                    consumer: consumer.to_owned(),
                    deliveries: 1,
                    delivered_at: now,
                    idle_before: Duration::ZERO,
                },
            );
            self.consumers
                .entry(consumer.to_owned())
                .or_default()
                .insert(id);
            self.last_delivered = id;
            out.push(Entry {
                id: id.to_string(),
                fields: fields.clone(),
            });
        }
        out
    }

    /// `XREADGROUP ... <after>`: up to `limit` of `consumer`'s own pending entries with an id
    /// above `after`. Each one still in the stream counts one more delivery, now; one deleted
    /// from the stream comes without fields and its count stays (Redis 7.0).
    fn read_own(
        &mut self,
        entries: &BTreeMap<Id, Fields>,
        consumer: &str,
        after: Id,
        limit: usize,
        now: Instant,
    ) -> Vec<Entry> {
        self.join(consumer);
        let Some(start) = after.successor() else {
            return Vec::new();
        };
        let ids: Vec<Id> = self
            .consumers
            .get(consumer)
            .map(|owned| owned.range(start..).take(limit).copied().collect())
            .unwrap_or_default();
        let mut out = Vec::with_capacity(ids.len());
        for id in ids {
            let fields = match (entries.get(&id), self.pel.get_mut(&id)) {
                (Some(fields), Some(nack)) => {
                    nack.deliveries = nack.deliveries.saturating_add(1);
                    nack.delivered(now, Duration::ZERO);
                    fields.clone()
                }
                _ => Vec::new(),
            };
            out.push(Entry {
                id: id.to_string(),
                fields,
            });
        }
        out
    }
}

/// How long a blocking read may wait, as `BLOCK <ms>` means it.
#[derive(Debug, Clone, Copy)]
enum Wait {
    /// Not blocking: answer at once.
    No,
    /// Until this instant.
    Until(Instant),
    /// `BLOCK 0`: until an entry comes (or the read is cancelled).
    Forever,
}

impl Wait {
    /// `block` as Redis reads it: whole milliseconds, and 0 (a block shorter than 1 ms) is
    /// forever.
    fn new(block: Option<Duration>, now: Instant) -> Wait {
        let Some(block) = block else {
            return Wait::No;
        };
        let Ok(ms) = u64::try_from(block.as_millis()) else {
            return Wait::Forever;
        };
        if ms == 0 {
            return Wait::Forever;
        }
        now.checked_add(Duration::from_millis(ms))
            .map_or(Wait::Forever, Wait::Until)
    }
}

impl State {
    /// Runs `f` on the entries of `stream` and its group `group`: `WRONGTYPE` when the key is
    /// not a stream, `NOGROUP` when the stream or the group does not exist.
    fn with_group<R>(
        &mut self,
        stream: &str,
        group: &str,
        f: impl FnOnce(&BTreeMap<Id, Fields>, &mut Group) -> R,
    ) -> Result<R, TransportError> {
        let s = self
            .stream_mut(stream)?
            .ok_or_else(|| no_group(stream, group))?;
        let g = s
            .groups
            .get_mut(group)
            .ok_or_else(|| no_group(stream, group))?;
        Ok(f(&s.entries, g))
    }

    /// Whether `id` is pending in `group` of `stream`, as `XPENDING <stream> <group> <id> <id>
    /// 1` tells: `NOGROUP` and `WRONGTYPE` as that command.
    pub(super) fn is_pending(
        &mut self,
        stream: &str,
        group: &str,
        id: &str,
    ) -> Result<bool, TransportError> {
        let id = Id::parse(id)?;
        self.with_group(stream, group, |_, g| g.pel.contains_key(&id))
    }

    /// `XACK` without fault injection: removes `ids` from the group's pending list; returns how
    /// many were pending. Nothing (0) when the stream or the group does not exist.
    pub(super) fn ack(
        &mut self,
        stream: &str,
        group: &str,
        ids: &[String],
    ) -> Result<usize, TransportError> {
        let ids = ids
            .iter()
            .map(|id| Id::parse(id))
            .collect::<Result<Vec<Id>, _>>()?;
        let Some(s) = self.stream_mut(stream)? else {
            return Ok(0);
        };
        let Some(g) = s.groups.get_mut(group) else {
            return Ok(0);
        };
        Ok(ids.into_iter().filter(|&id| g.settle(id)).count())
    }
}

impl Memory {
    /// `XGROUP CREATE <stream> <group> 0 MKSTREAM`: creates the stream if needed and the group
    /// at the start of the stream, so every entry already there is new for it. A group that
    /// exists already is kept as it is (`BUSYGROUP`, which the runtime treats as success).
    /// `WRONGTYPE` when the key is not a stream.
    pub(crate) fn group_create(&self, stream: &str, group: &str) -> Result<(), TransportError> {
        let mut state = self.lock();
        state
            .stream_or_create(stream)?
            .groups
            .entry(group.to_owned())
            .or_default();
        Ok(())
    }

    /// `XGROUP DESTROY <stream> <group>`: removes the group with its pending list; readers
    /// blocked on it fail with `NOGROUP`. Returns whether the group existed.
    #[cfg(test)]
    pub(crate) fn group_destroy(&self, stream: &str, group: &str) -> bool {
        let mut state = self.lock();
        let removed = match state.stream_mut(stream) {
            Ok(Some(s)) => s.groups.remove(group).is_some(),
            _ => false,
        };
        if removed {
            state.wake(stream);
        }
        removed
    }

    /// `XREADGROUP GROUP <group> <consumer> COUNT <count> [BLOCK <ms>] STREAMS <stream> <from>`.
    /// Creates the consumer. `count` 0 means no limit, as in Redis.
    ///
    /// - [`ReadFrom::New`] (`>`): entries after the group's last-delivered id, oldest first;
    ///   each becomes pending for `consumer` with delivery count 1, delivered now, and the
    ///   last-delivered id moves past it. When there is none and `block` is `Some`, waits on the
    ///   tokio clock for an append until the block time passes or `cancel` fires, then returns
    ///   what is there (maybe nothing). Like `BLOCK <ms>`, the block counts whole milliseconds
    ///   and a block of 0 (below 1 ms) waits with no time limit.
    /// - [`ReadFrom::PendingAfter`] (an id, `"0"` for all): this consumer's own pending entries
    ///   with a larger id, ascending; never blocks. Each one still in the stream counts one
    ///   more delivery and is delivered now; one deleted from the stream comes with empty
    ///   `fields` (and, as in Redis, keeps its count and idle time).
    ///
    /// # Errors
    ///
    /// `NOGROUP` (kind [`TransportErrorKind::NoGroup`]) when the stream or the group does not
    /// exist, also when the group is destroyed while the read waits; `UNBLOCKED` (kind
    /// `Rejected`) when the stream is deleted while the read waits, as Redis 7 answers;
    /// `WRONGTYPE` when the key is not a stream; `ERR` for an id that does not parse.
    #[allow(clippy::too_many_arguments)]
    pub(crate) async fn read_group(
        &self,
        stream: &str,
        group: &str,
        consumer: &str,
        from: ReadFrom,
        count: usize,
        block: Option<Duration>,
        cancel: &CancellationToken,
    ) -> Result<Vec<Entry>, TransportError> {
        let limit = if count == 0 { usize::MAX } else { count };
        if let ReadFrom::PendingAfter(after) = from {
            let after = Id::parse(&after)?;
            let now = Instant::now();
            return self.lock().with_group(stream, group, |entries, g| {
                g.read_own(entries, consumer, after, limit, now)
            });
        }

        let wait = Wait::new(block, Instant::now());
        let notify = match wait {
            Wait::No => None,
            Wait::Until(_) | Wait::Forever => Some(self.waker(stream)),
        };
        let mut timeout = pin!(async {
            match wait {
                Wait::Until(deadline) => tokio::time::sleep_until(deadline).await,
                Wait::No | Wait::Forever => std::future::pending().await,
            }
        });
        let mut waited = false;
        loop {
            // Registered before looking, so an append between the look and the wait still
            // wakes this read.
            let mut notified = notify.as_deref().map(|n| Box::pin(n.notified()));
            if let Some(n) = notified.as_mut() {
                n.as_mut().enable();
            }
            {
                let mut state = self.lock();
                if waited && matches!(state.stream(stream), Ok(None)) {
                    return Err(TransportError::new(
                        TransportErrorKind::Rejected,
                        "UNBLOCKED the stream key no longer exists",
                    )
                    .with_code("UNBLOCKED"));
                }
                let now = Instant::now();
                let entries = state.with_group(stream, group, |entries, g| {
                    g.read_new(entries, consumer, limit, now)
                })?;
                if !entries.is_empty() {
                    return Ok(entries);
                }
            }
            let Some(notified) = notified else {
                return Ok(Vec::new());
            };
            tokio::select! {
                biased;
                () = cancel.cancelled() => return Ok(Vec::new()),
                () = notified => {}
                () = &mut timeout => return Ok(Vec::new()),
            }
            waited = true;
        }
    }

    /// `XPENDING <stream> <group> <min> <max> <count> [<consumer>]`: up to `count` pending
    /// entries with ids from `min` to `max` (`-`/`+` for the ends, `(` for an exclusive bound),
    /// ascending, of every consumer or only `consumer`: owner, delivery count, idle time.
    /// Entries deleted from the stream are still listed.
    ///
    /// # Errors
    ///
    /// `NOGROUP`, `WRONGTYPE`, or `ERR` for a bound that does not parse.
    pub(crate) fn pending(
        &self,
        stream: &str,
        group: &str,
        consumer: Option<&str>,
        min: &str,
        max: &str,
        count: usize,
    ) -> Result<Vec<PendingEntry>, TransportError> {
        let range = Id::range(min, max)?;
        let now = Instant::now();
        self.lock().with_group(stream, group, |_, g| {
            let Some((lo, hi)) = range else {
                return Vec::new();
            };
            g.pel
                .range(lo..=hi)
                .filter(|(_, nack)| consumer.is_none_or(|c| nack.consumer == c))
                .take(count)
                .map(|(id, nack)| PendingEntry {
                    id: id.to_string(),
                    consumer: nack.consumer.clone(),
                    deliveries: nack.deliveries,
                    idle: nack.idle(now),
                })
                .collect()
        })
    }

    /// `XCLAIM <stream> <group> <consumer> <min_idle> <ids...> [IDLE <idle>] JUSTID`: each id
    /// pending in the group and idle at least `min_idle` now belongs to `consumer`, with idle
    /// time `idle` (0 when `None`); its delivery count does not change. Ids that are pending but
    /// no longer in the stream are dropped from the pending list and not returned; ids not
    /// pending are skipped. Returns the claimed ids, in the order given. Creates the consumer.
    ///
    /// # Errors
    ///
    /// `NOGROUP`, `WRONGTYPE`, or `ERR` for an id that does not parse (then nothing changes).
    pub(crate) fn claim(
        &self,
        stream: &str,
        group: &str,
        consumer: &str,
        min_idle: Duration,
        ids: &[String],
        idle: Option<Duration>,
    ) -> Result<Vec<String>, TransportError> {
        let parsed = ids
            .iter()
            .map(|id| Id::parse(id))
            .collect::<Result<Vec<Id>, _>>()?;
        let now = Instant::now();
        let idle = idle.unwrap_or(Duration::ZERO);
        self.lock().with_group(stream, group, |entries, g| {
            g.join(consumer);
            let mut claimed = Vec::new();
            for id in parsed {
                if !entries.contains_key(&id) {
                    g.settle(id);
                    continue;
                }
                match g.pel.get_mut(&id) {
                    Some(nack) if nack.idle(now) >= min_idle => nack.delivered(now, idle),
                    _ => continue,
                }
                g.take_over(id, consumer);
                claimed.push(id.to_string());
            }
            claimed
        })
    }

    /// `XAUTOCLAIM <stream> <group> <consumer> <min_idle> <cursor> COUNT <count>`: scans the
    /// pending list from `cursor` (inclusive) in id order. Entries idle at least `min_idle` are
    /// claimed (owner `consumer`, delivered now, delivery count +1) and returned with their
    /// fields; pending ids no longer in the stream are dropped from the pending list and listed
    /// in `deleted`. Both count towards `count`; at most `10 × count` pending entries are looked
    /// at per call, as in Redis. `next` is where to continue, `0-0` when the scan reached the
    /// end. Creates the consumer.
    ///
    /// # Errors
    ///
    /// `NOGROUP`, `WRONGTYPE`, or `ERR` for a cursor that does not parse or a `count` of 0.
    pub(crate) fn autoclaim(
        &self,
        stream: &str,
        group: &str,
        consumer: &str,
        min_idle: Duration,
        cursor: &str,
        count: usize,
    ) -> Result<AutoClaimed, TransportError> {
        if count == 0 {
            return Err(err("COUNT must be > 0"));
        }
        let start = match cursor {
            "-" => Some(Id::MIN),
            _ => match cursor.strip_prefix('(') {
                Some(id) => Id::parse(id)?.successor(),
                None => Some(Id::parse(cursor)?),
            },
        };
        let now = Instant::now();
        self.lock().with_group(stream, group, |entries, g| {
            g.join(consumer);
            let mut out = AutoClaimed {
                next: Id::MIN.to_string(),
                ..AutoClaimed::default()
            };
            let Some(start) = start else {
                return out;
            };
            let mut attempts = count.saturating_mul(10);
            let mut room = count;
            // A snapshot is exact: the scan only changes or removes the ids it looked at.
            let ids: Vec<Id> = g
                .pel
                .range(start..)
                .map(|(&id, _)| id)
                .take(attempts.saturating_add(1))
                .collect();
            let mut looked = 0;
            for &id in &ids {
                if attempts == 0 || room == 0 {
                    break;
                }
                attempts -= 1;
                looked += 1;
                let Some(fields) = entries.get(&id) else {
                    g.settle(id);
                    out.deleted.push(id.to_string());
                    room -= 1;
                    continue;
                };
                match g.pel.get_mut(&id) {
                    Some(nack) if nack.idle(now) >= min_idle => {
                        nack.deliveries = nack.deliveries.saturating_add(1);
                        nack.delivered(now, Duration::ZERO);
                    }
                    _ => continue,
                }
                g.take_over(id, consumer);
                out.entries.push(Entry {
                    id: id.to_string(),
                    fields: fields.clone(),
                });
                room -= 1;
            }
            if let Some(next) = ids.get(looked) {
                out.next = next.to_string();
            }
            out
        })
    }

    /// `XACK <stream> <group> <ids...>`: removes the ids from the group's pending list; returns
    /// how many were pending. 0 when the stream or the group does not exist (as Redis).
    ///
    /// # Errors
    ///
    /// `WRONGTYPE`, `ERR` for an id that does not parse, and kind `Connection` while
    /// [`fail_next_acks`](Self::fail_next_acks) is in effect (then nothing is acked).
    pub(crate) fn ack(
        &self,
        stream: &str,
        group: &str,
        ids: &[String],
    ) -> Result<usize, TransportError> {
        let mut state = self.lock();
        if state.failing_acks > 0 {
            state.failing_acks -= 1;
            return Err(TransportError::new(
                TransportErrorKind::Connection,
                "injected failure: connection lost before XACK",
            ));
        }
        state.ack(stream, group, ids)
    }

    /// Makes the next `n` [`ack`](Self::ack) calls fail with kind `Connection`, acking nothing
    /// (fault injection). Replaces any count still left.
    #[cfg(test)]
    pub(crate) fn fail_next_acks(&self, n: usize) {
        self.lock().failing_acks = n;
    }

    /// Removes `consumer` from `group` if it owns no pending entry (`XGROUP DELCONSUMER` checked
    /// in the same step, so nothing pending is ever discarded). Returns whether it was removed.
    pub(crate) fn delete_consumer_if_idle(
        &self,
        stream: &str,
        group: &str,
        consumer: &str,
    ) -> bool {
        self.lock()
            .with_group(stream, group, |_, g| {
                if g.consumers.get(consumer).is_some_and(BTreeSet::is_empty) {
                    g.consumers.remove(consumer);
                    true
                } else {
                    false
                }
            })
            .unwrap_or(false)
    }

    /// What `XINFO GROUPS`/`XINFO CONSUMERS` tell about `group`, or `None` when the stream or
    /// the group does not exist.
    pub(crate) fn group_info(&self, stream: &str, group: &str) -> Option<GroupInfo> {
        self.lock()
            .with_group(stream, group, |entries, g| GroupInfo {
                pending: g.pel.len(),
                lag: g
                    .last_delivered
                    .successor()
                    .map_or(0, |start| entries.range(start..).count()),
                last_delivered: g.last_delivered.to_string(),
                consumers: g
                    .consumers
                    .iter()
                    .map(|(name, owned)| (name.clone(), owned.len()))
                    .collect(),
            })
            .ok()
    }

    /// The names of the groups of `stream`, sorted; empty when it is not a stream.
    /// How many entries were trimmed or deleted from `stream` before `group` read them, in all
    /// (0 for a missing group).
    pub(crate) fn removed_unread(&self, stream: &str, group: &str) -> u64 {
        let state = self.lock();
        match state.stream(stream) {
            Ok(Some(s)) => s.groups.get(group).map_or(0, |g| g.removed_unread),
            _ => 0,
        }
    }

    pub(crate) fn groups(&self, stream: &str) -> Vec<String> {
        match self.lock().stream(stream) {
            Ok(Some(s)) => s.groups.keys().cloned().collect(),
            _ => Vec::new(),
        }
    }
}

#[cfg(test)]
mod tests {
    use std::time::Duration;

    use tokio::time::{Instant, advance, sleep};
    use tokio_util::sync::CancellationToken;

    use super::*;

    type R = Result<(), TransportError>;

    const S: &str = "ns:{ev}";

    fn fields(v: &str) -> Vec<(Vec<u8>, Vec<u8>)> {
        vec![(b"envelope".to_vec(), v.as_bytes().to_vec())]
    }

    fn add(m: &Memory, v: &str) -> Result<String, TransportError> {
        m.xadd(S, fields(v), None)
    }

    async fn read_new(
        m: &Memory,
        consumer: &str,
        count: usize,
    ) -> Result<Vec<Entry>, TransportError> {
        m.read_group(
            S,
            "g",
            consumer,
            ReadFrom::New,
            count,
            None,
            &CancellationToken::new(),
        )
        .await
    }

    async fn read_own(
        m: &Memory,
        consumer: &str,
        after: &str,
    ) -> Result<Vec<Entry>, TransportError> {
        m.read_group(
            S,
            "g",
            consumer,
            ReadFrom::PendingAfter(after.to_owned()),
            100,
            None,
            &CancellationToken::new(),
        )
        .await
    }

    fn pel(m: &Memory) -> Result<Vec<PendingEntry>, TransportError> {
        m.pending(S, "g", None, "-", "+", 1000)
    }

    /// `(id, consumer, deliveries)` of every pending entry.
    fn owners(m: &Memory) -> Result<Vec<(String, String, u64)>, TransportError> {
        Ok(pel(m)?
            .into_iter()
            .map(|p| (p.id, p.consumer, p.deliveries))
            .collect())
    }

    fn ids(entries: &[Entry]) -> Vec<String> {
        entries.iter().map(|e| e.id.clone()).collect()
    }

    fn strings(v: &[&String]) -> Vec<String> {
        v.iter().map(|s| (*s).clone()).collect()
    }

    #[tokio::test]
    async fn nogroup_when_the_stream_or_group_is_missing() -> R {
        let m = Memory::new();
        let cancel = CancellationToken::new();
        let check = |r: Result<Vec<Entry>, TransportError>| {
            let e = r.expect_err("no group");
            assert_eq!(e.kind(), TransportErrorKind::NoGroup);
            assert_eq!(e.code(), Some("NOGROUP"));
        };
        // No stream.
        check(read_new(&m, "c", 10).await);
        // A blocking read fails at once too.
        check(
            m.read_group(
                S,
                "g",
                "c",
                ReadFrom::New,
                10,
                Some(Duration::from_secs(5)),
                &cancel,
            )
            .await,
        );
        // A stream without that group.
        add(&m, "a")?;
        check(read_new(&m, "c", 10).await);
        check(read_own(&m, "c", "0").await);
        let kind = |e: TransportError| e.kind();
        assert_eq!(
            m.pending(S, "g", None, "-", "+", 10).map_err(kind).err(),
            Some(TransportErrorKind::NoGroup)
        );
        assert_eq!(
            m.claim(S, "g", "c", Duration::ZERO, &[], None)
                .map_err(kind)
                .err(),
            Some(TransportErrorKind::NoGroup)
        );
        assert_eq!(
            m.autoclaim(S, "g", "c", Duration::ZERO, "0-0", 10)
                .map_err(kind)
                .err(),
            Some(TransportErrorKind::NoGroup)
        );
        // XACK answers 0, as Redis does.
        assert_eq!(m.ack(S, "g", &["1-0".to_owned()])?, 0);
        assert_eq!(m.ack("missing", "g", &["1-0".to_owned()])?, 0);
        assert!(m.group_info(S, "g").is_none());
        assert!(!m.delete_consumer_if_idle(S, "g", "c"));
        Ok(())
    }

    #[tokio::test]
    async fn group_starts_at_zero_and_busygroup_is_ok() -> R {
        let m = Memory::new();
        // MKSTREAM.
        m.group_create(S, "g")?;
        assert_eq!(m.keys(), vec![S.to_owned()]);
        assert!(m.xrange(S, 10).is_empty());
        // Entries added before a group exists are new for it.
        let a = add(&m, "a")?;
        m.group_create(S, "late")?;
        let b = add(&m, "b")?;
        let got = read_new(&m, "c1", 10).await?;
        assert_eq!(ids(&got), vec![a.clone(), b.clone()]);
        assert_eq!(got[0].field("envelope"), Some(&b"a"[..]));

        // Creating an existing group again changes nothing.
        m.group_create(S, "g")?;
        let info = m.group_info(S, "g").expect("group");
        assert_eq!(info.pending, 2);
        assert_eq!(info.last_delivered, b);
        assert!(read_new(&m, "c1", 10).await?.is_empty());
        assert_eq!(m.groups(S), vec!["g".to_owned(), "late".to_owned()]);
        assert_eq!(m.group_info(S, "late").expect("late").lag, 2);

        assert!(m.group_destroy(S, "late"));
        assert!(!m.group_destroy(S, "late"));
        assert_eq!(m.groups(S), vec!["g".to_owned()]);
        Ok(())
    }

    #[tokio::test]
    async fn each_entry_goes_to_one_consumer_and_count_limits() -> R {
        let m = Memory::new();
        m.group_create(S, "g")?;
        let all: Vec<String> = (0..5)
            .map(|i| add(&m, &i.to_string()))
            .collect::<Result<_, _>>()?;
        let first = read_new(&m, "c1", 2).await?;
        let second = read_new(&m, "c2", 2).await?;
        let rest = read_new(&m, "c1", 0).await?; // COUNT 0: no limit
        assert_eq!(ids(&first), all[0..2]);
        assert_eq!(ids(&second), all[2..4]);
        assert_eq!(ids(&rest), all[4..]);
        assert!(read_new(&m, "c2", 10).await?.is_empty());
        let info = m.group_info(S, "g").expect("group");
        assert_eq!(info.pending, 5);
        assert_eq!(info.lag, 0);
        assert_eq!(
            info.consumers,
            vec![("c1".to_owned(), 3), ("c2".to_owned(), 2)]
        );
        // Another group sees everything.
        m.group_create(S, "h")?;
        let other = m
            .read_group(
                S,
                "h",
                "c1",
                ReadFrom::New,
                0,
                None,
                &CancellationToken::new(),
            )
            .await?;
        assert_eq!(ids(&other), all);
        Ok(())
    }

    #[tokio::test(start_paused = true)]
    async fn delivery_counts_follow_redis() -> R {
        let m = Memory::new();
        m.group_create(S, "g")?;
        let a = add(&m, "a")?;
        let b = add(&m, "b")?;

        // A new read: 1.
        assert_eq!(read_new(&m, "c1", 10).await?.len(), 2);
        assert_eq!(
            owners(&m)?,
            vec![(a.clone(), "c1".into(), 1), (b.clone(), "c1".into(), 1)]
        );

        // Each re-read of one's own pending entries: +1 on every entry returned.
        let again = read_own(&m, "c1", "0").await?;
        assert_eq!(ids(&again), vec![a.clone(), b.clone()]);
        assert_eq!(again[1].field("envelope"), Some(&b"b"[..]));
        let again = read_own(&m, "c1", &a).await?;
        assert_eq!(ids(&again), vec![b.clone()]);
        assert_eq!(
            owners(&m)?,
            vec![(a.clone(), "c1".into(), 2), (b.clone(), "c1".into(), 3)]
        );
        // Someone else's re-read sees nothing of c1's.
        assert!(read_own(&m, "c2", "0").await?.is_empty());

        // XCLAIM ... JUSTID: owner changes, count does not.
        advance(Duration::from_secs(1)).await;
        let claimed = m.claim(S, "g", "c2", Duration::ZERO, std::slice::from_ref(&a), None)?;
        assert_eq!(claimed, vec![a.clone()]);
        assert_eq!(
            owners(&m)?,
            vec![(a.clone(), "c2".into(), 2), (b.clone(), "c1".into(), 3)]
        );

        // XAUTOCLAIM: +1.
        advance(Duration::from_secs(1)).await;
        let got = m.autoclaim(S, "g", "c3", Duration::ZERO, "0-0", 10)?;
        assert_eq!(ids(&got.entries), vec![a.clone(), b.clone()]);
        assert_eq!(got.entries[0].field("envelope"), Some(&b"a"[..]));
        assert!(got.deleted.is_empty());
        assert_eq!(got.next, "0-0");
        assert_eq!(
            owners(&m)?,
            vec![(a.clone(), "c3".into(), 3), (b.clone(), "c3".into(), 4)]
        );
        assert_eq!(
            m.group_info(S, "g").expect("group").consumers,
            vec![
                ("c1".to_owned(), 0),
                ("c2".to_owned(), 0),
                ("c3".to_owned(), 2)
            ]
        );
        Ok(())
    }

    #[tokio::test(start_paused = true)]
    async fn idle_times_on_the_paused_clock() -> R {
        let m = Memory::new();
        m.group_create(S, "g")?;
        let a = add(&m, "a")?;
        let b = add(&m, "b")?;
        read_new(&m, "c1", 10).await?;
        assert!(pel(&m)?.iter().all(|p| p.idle == Duration::ZERO));

        advance(Duration::from_millis(1500)).await;
        assert!(
            pel(&m)?
                .iter()
                .all(|p| p.idle == Duration::from_millis(1500))
        );

        // A re-read delivers again: idle back to 0.
        read_own(&m, "c1", &a).await?;
        let p = pel(&m)?;
        assert_eq!(p[0].idle, Duration::from_millis(1500));
        assert_eq!(p[1].idle, Duration::ZERO);

        // XCLAIM ... IDLE sets the idle time (longer than the clock has run: no underflow).
        let long = Duration::from_secs(365 * 24 * 3600);
        m.claim(
            S,
            "g",
            "parked",
            Duration::ZERO,
            std::slice::from_ref(&b),
            Some(long),
        )?;
        advance(Duration::from_secs(2)).await;
        let p = m.pending(S, "g", Some("parked"), "-", "+", 10)?;
        assert_eq!(p.len(), 1);
        assert_eq!(p[0].id, b);
        assert_eq!(p[0].idle, long + Duration::from_secs(2));
        // Without IDLE a claim resets it.
        m.claim(S, "g", "c1", Duration::ZERO, std::slice::from_ref(&b), None)?;
        assert_eq!(m.pending(S, "g", None, &b, &b, 1)?[0].idle, Duration::ZERO);
        Ok(())
    }

    #[tokio::test(start_paused = true)]
    async fn min_idle_is_respected_by_claims() -> R {
        let m = Memory::new();
        m.group_create(S, "g")?;
        let a = add(&m, "a")?;
        read_new(&m, "c1", 10).await?;
        advance(Duration::from_secs(3)).await;
        let b = add(&m, "b")?;
        read_new(&m, "c1", 10).await?;
        let both = [a.clone(), b.clone()];

        // a is 3 s idle, b 0 s.
        let five = Duration::from_secs(5);
        let two = Duration::from_secs(2);
        assert!(m.claim(S, "g", "c2", five, &both, None)?.is_empty());
        let got = m.autoclaim(S, "g", "c2", five, "0-0", 10)?;
        assert!(got.entries.is_empty() && got.deleted.is_empty());
        assert_eq!(got.next, "0-0");
        assert_eq!(m.claim(S, "g", "c2", two, &both, None)?, vec![a.clone()]);
        // Claimed means delivered now: no longer idle enough for another claimant.
        assert!(m.claim(S, "g", "c3", two, &both, None)?.is_empty());

        advance(Duration::from_secs(2)).await;
        let got = m.autoclaim(S, "g", "c3", two, "0-0", 10)?;
        assert_eq!(ids(&got.entries), vec![a.clone(), b.clone()]);
        let got = m.autoclaim(S, "g", "c4", Duration::from_millis(1), "0-0", 10)?;
        assert!(got.entries.is_empty());
        // Ids that are not pending are skipped.
        m.ack(S, "g", std::slice::from_ref(&a))?;
        assert!(
            m.claim(S, "g", "c4", Duration::ZERO, std::slice::from_ref(&a), None)?
                .is_empty()
        );
        assert_eq!(owners(&m)?, vec![(b.clone(), "c3".into(), 2)]);
        Ok(())
    }

    #[tokio::test(start_paused = true)]
    async fn autoclaim_reports_deleted_ids_and_drops_them() -> R {
        let m = Memory::new();
        m.group_create(S, "g")?;
        let all: Vec<String> = (0..6)
            .map(|i| add(&m, &i.to_string()))
            .collect::<Result<_, _>>()?;
        read_new(&m, "c1", 0).await?;
        // 0 and 1 trimmed, 3 deleted: still pending.
        assert_eq!(m.xtrim(S, 4), 2);
        assert_eq!(m.xdel(S, &all[3]), 1);
        assert_eq!(pel(&m)?.len(), 6);

        // Deleted ids count towards COUNT; the cursor says where to go on.
        let page = m.autoclaim(S, "g", "c2", Duration::ZERO, "0-0", 3)?;
        assert_eq!(page.deleted, all[0..2]);
        assert_eq!(ids(&page.entries), all[2..3]);
        assert_eq!(page.next, all[3]);
        let page = m.autoclaim(S, "g", "c2", Duration::ZERO, &page.next, 3)?;
        assert_eq!(page.deleted, all[3..4]);
        assert_eq!(ids(&page.entries), all[4..6]);
        assert_eq!(page.next, "0-0");

        // Gone from the pending list for good.
        assert_eq!(
            pel(&m)?.into_iter().map(|p| p.id).collect::<Vec<_>>(),
            strings(&[&all[2], &all[4], &all[5]])
        );
        let info = m.group_info(S, "g").expect("group");
        assert_eq!(info.pending, 3);
        assert_eq!(
            info.consumers,
            vec![("c1".to_owned(), 0), ("c2".to_owned(), 3)]
        );
        assert!(
            m.autoclaim(S, "g", "c2", Duration::ZERO, "0-0", 10)?
                .deleted
                .is_empty()
        );
        Ok(())
    }

    #[tokio::test(start_paused = true)]
    async fn autoclaim_scans_at_most_ten_times_count() -> R {
        let m = Memory::new();
        m.group_create(S, "g")?;
        let all: Vec<String> = (0..25)
            .map(|i| add(&m, &i.to_string()))
            .collect::<Result<_, _>>()?;
        read_new(&m, "c1", 0).await?;
        advance(Duration::from_secs(10)).await;
        // Everything but the last entry was just re-delivered: not idle.
        read_own(&m, "c1", "0").await?;
        m.claim(
            S,
            "g",
            "c1",
            Duration::ZERO,
            &all[24..],
            Some(Duration::from_secs(60)),
        )?;
        let page = m.autoclaim(S, "g", "c2", Duration::from_secs(30), "0-0", 1)?;
        assert!(page.entries.is_empty());
        assert_eq!(page.next, all[10]);
        let page = m.autoclaim(S, "g", "c2", Duration::from_secs(30), &page.next, 1)?;
        assert!(page.entries.is_empty());
        assert_eq!(page.next, all[20]);
        let page = m.autoclaim(S, "g", "c2", Duration::from_secs(30), &page.next, 1)?;
        assert_eq!(ids(&page.entries), all[24..]);
        assert_eq!(page.next, "0-0");
        assert_eq!(
            m.autoclaim(S, "g", "c2", Duration::ZERO, "0-0", 0)
                .expect_err("COUNT 0")
                .code(),
            Some("ERR")
        );
        Ok(())
    }

    #[tokio::test]
    async fn xclaim_drops_deleted_ids() -> R {
        let m = Memory::new();
        m.group_create(S, "g")?;
        let a = add(&m, "a")?;
        let b = add(&m, "b")?;
        read_new(&m, "c1", 0).await?;
        m.xdel(S, &a);
        let claimed = m.claim(
            S,
            "g",
            "c2",
            Duration::from_secs(3600),
            &[a.clone(), b.clone()],
            None,
        )?;
        // a is dropped even though it was not idle enough; b stays with c1.
        assert!(claimed.is_empty());
        assert_eq!(owners(&m)?, vec![(b.clone(), "c1".into(), 1)]);
        assert!(
            m.claim(S, "g", "c2", Duration::ZERO, &["x".to_owned()], None)
                .is_err()
        );
        Ok(())
    }

    #[tokio::test]
    async fn own_reread_of_a_deleted_entry_has_no_fields() -> R {
        let m = Memory::new();
        m.group_create(S, "g")?;
        let a = add(&m, "a")?;
        let b = add(&m, "b")?;
        read_new(&m, "c1", 0).await?;
        m.xdel(S, &a);
        let again = read_own(&m, "c1", "0").await?;
        assert_eq!(ids(&again), vec![a.clone(), b.clone()]);
        assert!(again[0].fields.is_empty());
        assert_eq!(again[1].fields, fields("b"));
        // Redis counts only the entry it could send.
        assert_eq!(
            owners(&m)?,
            vec![(a.clone(), "c1".into(), 1), (b.clone(), "c1".into(), 2)]
        );
        // The cursor moves past it; reading after the last one ends the history.
        assert!(read_own(&m, "c1", &b).await?.is_empty());
        assert!(read_own(&m, "c1", "not-an-id").await.is_err());
        Ok(())
    }

    #[tokio::test]
    async fn ack_and_fail_next_acks() -> R {
        let m = Memory::new();
        m.group_create(S, "g")?;
        let a = add(&m, "a")?;
        let b = add(&m, "b")?;
        read_new(&m, "c1", 0).await?;

        m.fail_next_acks(2);
        for _ in 0..2 {
            let e = m
                .ack(S, "g", std::slice::from_ref(&a))
                .expect_err("injected");
            assert_eq!(e.kind(), TransportErrorKind::Connection);
            assert!(e.is_transient());
        }
        assert_eq!(pel(&m)?.len(), 2);
        // Used up.
        assert_eq!(m.ack(S, "g", &[a.clone(), "1-1".to_owned()])?, 1);
        assert_eq!(m.ack(S, "g", std::slice::from_ref(&a))?, 0);
        // Any consumer's entry can be acked in the group.
        assert_eq!(m.ack(S, "g", std::slice::from_ref(&b))?, 1);
        assert!(pel(&m)?.is_empty());
        assert_eq!(
            m.group_info(S, "g").expect("group").consumers,
            vec![("c1".to_owned(), 0)]
        );
        assert!(m.ack(S, "g", &["bad".to_owned()]).is_err());
        Ok(())
    }

    #[tokio::test]
    async fn delete_consumer_only_when_it_owns_nothing() -> R {
        let m = Memory::new();
        m.group_create(S, "g")?;
        let a = add(&m, "a")?;
        read_new(&m, "c1", 0).await?;
        // Reading creates the consumer even when it gets nothing.
        read_new(&m, "c2", 0).await?;
        assert!(!m.delete_consumer_if_idle(S, "g", "c1"));
        assert!(m.delete_consumer_if_idle(S, "g", "c2"));
        assert!(!m.delete_consumer_if_idle(S, "g", "c2"));
        m.ack(S, "g", &[a])?;
        assert!(m.delete_consumer_if_idle(S, "g", "c1"));
        assert!(m.group_info(S, "g").expect("group").consumers.is_empty());
        Ok(())
    }

    #[tokio::test]
    async fn group_info_lag_and_last_delivered() -> R {
        let m = Memory::new();
        m.group_create(S, "g")?;
        let info = m.group_info(S, "g").expect("group");
        assert_eq!((info.pending, info.lag), (0, 0));
        assert_eq!(info.last_delivered, "0-0");
        let a = add(&m, "a")?;
        let b = add(&m, "b")?;
        add(&m, "c")?;
        assert_eq!(m.group_info(S, "g").expect("group").lag, 3);
        read_new(&m, "c1", 2).await?;
        let info = m.group_info(S, "g").expect("group");
        assert_eq!((info.pending, info.lag), (2, 1));
        assert_eq!(info.last_delivered, b);
        m.ack(S, "g", &[a])?;
        assert_eq!(m.group_info(S, "g").expect("group").pending, 1);
        Ok(())
    }

    #[tokio::test]
    async fn pending_range_consumer_and_count() -> R {
        let m = Memory::new();
        m.group_create(S, "g")?;
        let all: Vec<String> = (0..4)
            .map(|i| add(&m, &i.to_string()))
            .collect::<Result<_, _>>()?;
        read_new(&m, "c1", 2).await?;
        read_new(&m, "c2", 2).await?;
        let ids_of = |p: Vec<PendingEntry>| p.into_iter().map(|p| p.id).collect::<Vec<_>>();
        assert_eq!(ids_of(m.pending(S, "g", None, "-", "+", 3)?), all[0..3]);
        assert_eq!(
            ids_of(m.pending(S, "g", Some("c2"), "-", "+", 10)?),
            all[2..4]
        );
        assert_eq!(
            ids_of(m.pending(S, "g", None, &all[1], &all[2], 10)?),
            all[1..3]
        );
        assert_eq!(
            ids_of(m.pending(S, "g", None, &format!("({}", all[1]), "+", 10)?),
            all[2..4]
        );
        assert!(m.pending(S, "g", None, &all[2], &all[1], 10)?.is_empty());
        assert!(m.pending(S, "g", None, "-", "+", 0)?.is_empty());
        assert!(m.pending(S, "g", Some("nobody"), "-", "+", 10)?.is_empty());
        assert!(m.pending(S, "g", None, "nope", "+", 10).is_err());
        Ok(())
    }

    #[tokio::test(start_paused = true)]
    async fn blocking_read_is_woken_by_xadd() -> R {
        let m = Memory::new();
        m.group_create(S, "g")?;
        let reader = {
            let m = m.clone();
            tokio::spawn(async move {
                let start = Instant::now();
                let got = m
                    .read_group(
                        S,
                        "g",
                        "c1",
                        ReadFrom::New,
                        10,
                        Some(Duration::from_secs(30)),
                        &CancellationToken::new(),
                    )
                    .await;
                (got, start.elapsed())
            })
        };
        // The reader parks; the paused clock moves only when every task waits.
        sleep(Duration::from_secs(2)).await;
        assert!(!reader.is_finished());
        let a = add(&m, "a")?;
        let (got, waited) = reader.await.expect("reader task");
        assert_eq!(ids(&got?), vec![a.clone()]);
        assert_eq!(waited, Duration::from_secs(2));
        assert_eq!(owners(&m)?, vec![(a, "c1".into(), 1)]);
        Ok(())
    }

    #[tokio::test(start_paused = true)]
    async fn blocking_read_keeps_waiting_when_another_consumer_wins() -> R {
        let m = Memory::new();
        m.group_create(S, "g")?;
        let spawn_reader = |consumer: &'static str| {
            let m = m.clone();
            tokio::spawn(async move {
                m.read_group(
                    S,
                    "g",
                    consumer,
                    ReadFrom::New,
                    1,
                    Some(Duration::from_secs(30)),
                    &CancellationToken::new(),
                )
                .await
            })
        };
        let r1 = spawn_reader("c1");
        let r2 = spawn_reader("c2");
        sleep(Duration::from_secs(1)).await;
        let a = add(&m, "a")?;
        sleep(Duration::from_secs(1)).await;
        // Exactly one reader got it; the other still waits.
        assert!(r1.is_finished() ^ r2.is_finished());
        let b = add(&m, "b")?;
        let mut got: Vec<String> = Vec::new();
        got.extend(ids(&r1.await.expect("r1")?));
        got.extend(ids(&r2.await.expect("r2")?));
        got.sort();
        assert_eq!(got, vec![a, b]);
        Ok(())
    }

    #[tokio::test(start_paused = true)]
    async fn blocking_read_times_out_and_is_released_by_cancel() -> R {
        let m = Memory::new();
        m.group_create(S, "g")?;
        let cancel = CancellationToken::new();

        // Timeout: empty, after exactly the block time.
        let start = Instant::now();
        let got = m
            .read_group(
                S,
                "g",
                "c1",
                ReadFrom::New,
                10,
                Some(Duration::from_millis(750)),
                &cancel,
            )
            .await?;
        assert!(got.is_empty());
        assert_eq!(start.elapsed(), Duration::from_millis(750));

        // Cancel: empty, at once, even with no time limit (BLOCK 0 waits forever).
        let reader = {
            let m = m.clone();
            let cancel = cancel.clone();
            tokio::spawn(async move {
                let start = Instant::now();
                let got = m
                    .read_group(
                        S,
                        "g",
                        "c1",
                        ReadFrom::New,
                        10,
                        Some(Duration::ZERO),
                        &cancel,
                    )
                    .await;
                (got, start.elapsed())
            })
        };
        sleep(Duration::from_secs(3600)).await;
        assert!(!reader.is_finished());
        cancel.cancel();
        let (got, waited) = reader.await.expect("reader task");
        assert!(got?.is_empty());
        assert_eq!(waited, Duration::from_secs(3600));
        // Nothing was taken from the group.
        let a = add(&m, "a")?;
        assert_eq!(ids(&read_new(&m, "c2", 10).await?), vec![a]);

        // A read that finds entries returns them even when already cancelled.
        let b = add(&m, "b")?;
        let got = m
            .read_group(
                S,
                "g",
                "c1",
                ReadFrom::New,
                10,
                Some(Duration::from_secs(1)),
                &cancel,
            )
            .await?;
        assert_eq!(ids(&got), vec![b]);
        Ok(())
    }

    #[tokio::test(start_paused = true)]
    async fn a_blocked_read_fails_when_its_group_or_stream_goes() -> R {
        let m = Memory::new();
        m.group_create(S, "g")?;
        let spawn_reader = || {
            let m = m.clone();
            tokio::spawn(async move {
                m.read_group(
                    S,
                    "g",
                    "c1",
                    ReadFrom::New,
                    10,
                    Some(Duration::from_secs(30)),
                    &CancellationToken::new(),
                )
                .await
            })
        };
        let reader = spawn_reader();
        sleep(Duration::from_secs(1)).await;
        assert!(m.group_destroy(S, "g"));
        let e = reader.await.expect("task").expect_err("group gone");
        assert_eq!(e.code(), Some("NOGROUP"));

        m.group_create(S, "g")?;
        let reader = spawn_reader();
        sleep(Duration::from_secs(1)).await;
        assert!(m.del(S));
        let e = reader.await.expect("task").expect_err("stream gone");
        assert_eq!(e.code(), Some("UNBLOCKED"));
        Ok(())
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn blocked_reads_miss_no_append_across_threads() -> R {
        let m = Memory::new();
        m.group_create(S, "g")?;
        let reader = {
            let m = m.clone();
            tokio::spawn(async move {
                let mut got = Vec::new();
                while got.len() < 300 {
                    let batch = m
                        .read_group(
                            S,
                            "g",
                            "c1",
                            ReadFrom::New,
                            7,
                            Some(Duration::from_secs(10)),
                            &CancellationToken::new(),
                        )
                        .await?;
                    got.extend(ids(&batch));
                }
                Ok::<_, TransportError>(got)
            })
        };
        let mut added = Vec::new();
        for i in 0..300 {
            added.push(add(&m, &i.to_string())?);
            if i % 3 == 0 {
                tokio::task::yield_now().await;
            }
        }
        let got = tokio::time::timeout(Duration::from_secs(5), reader)
            .await
            .expect("a blocked read missed an append")
            .expect("reader task")?;
        assert_eq!(got, added);
        Ok(())
    }

    #[tokio::test]
    async fn own_reads_never_block() -> R {
        let m = Memory::new();
        m.group_create(S, "g")?;
        let got = m
            .read_group(
                S,
                "g",
                "c1",
                ReadFrom::PendingAfter("0".to_owned()),
                10,
                Some(Duration::ZERO),
                &CancellationToken::new(),
            )
            .await?;
        assert!(got.is_empty());
        Ok(())
    }
}
