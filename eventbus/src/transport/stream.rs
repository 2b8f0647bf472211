//! The stream seam: what one durable handler's reader asks of its consumer group. Each method is
//! one step of Redis Streams semantics (read, pending list, claims, acks, charged attempts,
//! dead letters) that every backend implements the same way, so the reader's crash accounting,
//! leases and claims run unchanged over Redis and the in-memory transport.

use std::collections::HashSet;
use std::time::Duration;

use tokio_util::sync::CancellationToken;

use crate::error::TransportError;
use crate::telemetry::Stats;
use crate::transport::Transport;
use crate::transport::keys::EventKeys;
use crate::transport::settle::{Letter, Written};
use crate::transport::source::{AutoClaimed, Entry};

/// A transport call's result.
pub(crate) type TResult<T> = Result<T, TransportError>;

/// Where a read starts.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) enum ReadFrom {
    /// Entries never delivered to the group (`>`).
    New,
    /// This consumer's own pending entries after this id (`0`: all of them).
    PendingAfter(String),
}

/// One handler's consumer group on its event's stream, as this consumer sees it.
#[derive(Clone, Debug)]
pub(crate) struct Stream {
    pub(crate) transport: Transport,
    /// The event's keys (stream, dead letters, attempts).
    pub(crate) keys: EventKeys,
    /// The group: the handler's name.
    pub(crate) group: &'static str,
    /// This process's consumer name.
    pub(crate) consumer: String,
}

/// The pseudo-consumer that holds entries handed back at shutdown until a live consumer takes
/// them. No reader ever reads under this name, so nothing it holds is ever started by it.
pub(crate) const HANDBACK_CONSUMER: &str = "eventbus.handed-back";

impl Transport {
    /// The stream handle of handler `group` of `event`.
    pub(crate) fn stream(
        &self,
        namespace: &str,
        event: &str,
        group: &'static str,
        consumer: &str,
    ) -> Stream {
        Stream {
            transport: self.clone(),
            keys: EventKeys::new(namespace, event),
            group,
            consumer: consumer.to_owned(),
        }
    }
}

/// A reader's own connection for blocking reads.
#[allow(
    clippy::large_enum_variant,
    reason = "one per reader; the small variant exists only in tests"
)]
pub(crate) enum Reading {
    /// Redis: a dedicated connection (a blocked `XREADGROUP` would stall a shared one).
    Redis(crate::transport::redis::stream::read::Reading),
    /// In memory.
    #[cfg(feature = "testing")]
    Memory(crate::transport::memory::Memory),
}

impl Reading {
    /// One read of at most `count` entries; a `New` read blocks up to `block` for entries to
    /// arrive. When `cancel` fires during a blocking read, the read is released and whatever it
    /// had already delivered is returned.
    pub(crate) async fn read(
        &mut self,
        stream: &Stream,
        from: ReadFrom,
        count: usize,
        block: Option<Duration>,
        cancel: &CancellationToken,
    ) -> TResult<Vec<Entry>> {
        match self {
            Reading::Redis(r) => r.read(stream, from, count, block, cancel).await,
            #[cfg(feature = "testing")]
            Reading::Memory(m) => {
                m.alive()?;
                let from = match from {
                    ReadFrom::New => crate::transport::memory::ReadFrom::New,
                    ReadFrom::PendingAfter(id) => {
                        crate::transport::memory::ReadFrom::PendingAfter(id)
                    }
                };
                m.read_group(
                    &stream.keys.stream,
                    stream.group,
                    &stream.consumer,
                    from,
                    count,
                    block,
                    cancel,
                )
                .await
            }
        }
    }
}

/// Runs the arm of the stream's backend. An in-memory handle that was killed (a "crashed"
/// consumer of a test bus) fails every call, as a dead process sends nothing more.
macro_rules! dispatch {
    ($self:ident, $r:ident => $redis:expr, $m:ident => $memory:expr) => {
        match &$self.transport {
            Transport::Redis($r) => $redis,
            #[cfg(feature = "testing")]
            Transport::Memory($m) => {
                $m.alive()?;
                $memory
            }
        }
    };
}

impl Stream {
    /// Creates the group at the start of the stream (and the stream) unless it exists.
    pub(crate) async fn ensure_group(&self) -> TResult<()> {
        dispatch!(self,
            r => crate::transport::redis::stream::group::ensure_group(r, self).await,
            m => m.group_create(&self.keys.stream, self.group))
    }

    /// Opens the reader's own connection.
    pub(crate) async fn reader(&self) -> TResult<Reading> {
        dispatch!(self,
            r => Ok(Reading::Redis(crate::transport::redis::stream::read::Reading::connect(r).await?)),
            m => Ok(Reading::Memory(m.clone())))
    }

    /// Of `ids`, the ones pending for this consumer. `room` is added to the query's count, so
    /// none of `ids` is cut off by other entries pending in their range.
    pub(crate) async fn owned(&self, ids: &[String], room: usize) -> TResult<HashSet<String>> {
        dispatch!(self,
            r => crate::transport::redis::stream::lease::owned(r, self, ids, room).await,
            m => crate::transport::memory::stream_ops::owned(m, self, ids, room))
    }

    /// [`owned`](Self::owned) of `entries`, with the attempts charged to each (0 when none).
    pub(crate) async fn owned_and_charged(
        &self,
        entries: &[Entry],
        room: usize,
    ) -> TResult<(HashSet<String>, Vec<u32>)> {
        dispatch!(self,
            r => crate::transport::redis::stream::lease::owned_and_charged(r, self, entries, room).await,
            m => crate::transport::memory::stream_ops::owned_and_charged(m, self, entries, room))
    }

    /// Resets the idle time of `ids` (owned by this consumer) without counting a delivery.
    pub(crate) async fn renew(&self, ids: &[String]) -> TResult<()> {
        dispatch!(self,
            r => crate::transport::redis::stream::lease::renew(r, self, ids).await,
            m => m.claim(&self.keys.stream, self.group, &self.consumer, Duration::ZERO, ids, None).map(drop))
    }

    /// Up to `count` ids held by the hand-back pseudo-consumer.
    pub(crate) async fn handed_back(&self, count: usize) -> TResult<Vec<String>> {
        dispatch!(self,
            r => crate::transport::redis::stream::claim::handed_back(r, self, count).await,
            m => Ok(m
                .pending(&self.keys.stream, self.group, Some(HANDBACK_CONSUMER), "-", "+", count)?
                .into_iter()
                .map(|p| p.id)
                .collect()))
    }

    /// Takes `ids` idle at least `min_idle` for this consumer, without counting a delivery;
    /// returns the ids taken.
    pub(crate) async fn take(&self, ids: &[String], min_idle: Duration) -> TResult<Vec<String>> {
        dispatch!(self,
            r => crate::transport::redis::stream::claim::take(r, self, ids, min_idle).await,
            m => m.claim(&self.keys.stream, self.group, &self.consumer, min_idle, ids, None))
    }

    /// The entries `ids`; one deleted meanwhile comes back without fields.
    pub(crate) async fn entries(&self, ids: &[String]) -> TResult<Vec<Entry>> {
        dispatch!(self,
            r => crate::transport::redis::stream::claim::entries(r, self, ids).await,
            m => Ok(ids
                .iter()
                .map(|id| {
                    m.xrange_one(&self.keys.stream, id).unwrap_or_else(|| Entry {
                        id: id.clone(),
                        fields: Vec::new(),
                    })
                })
                .collect()))
    }

    /// Hands `ids` to the hand-back pseudo-consumer with idle time `idle`, without counting a
    /// delivery; returns how many moved.
    pub(crate) async fn hand_back(&self, ids: &[String], idle: Duration) -> TResult<usize> {
        dispatch!(self,
            r => crate::transport::redis::stream::claim::hand_back(r, self, ids, idle).await,
            m => m
                .claim(&self.keys.stream, self.group, HANDBACK_CONSUMER, Duration::ZERO, ids, Some(idle))
                .map(|v| v.len()))
    }

    /// One page of automatic claims of entries idle at least `min_idle`, from `cursor`.
    pub(crate) async fn autoclaim(
        &self,
        min_idle: Duration,
        cursor: &str,
        count: usize,
    ) -> TResult<AutoClaimed> {
        dispatch!(self,
            r => crate::transport::redis::stream::claim::autoclaim(r, self, min_idle, cursor, count).await,
            m => m.autoclaim(&self.keys.stream, self.group, &self.consumer, min_idle, cursor, count))
    }

    /// Acks `ids`, and deletes the charged attempts of `marked` (a failure of that delete is
    /// logged, not returned: the ack landed).
    pub(crate) async fn ack(&self, ids: &[&str], marked: &[&str]) -> TResult<()> {
        dispatch!(self,
        r => crate::transport::redis::stream::ack::ack(r, self, ids, marked).await,
        m => {
            m.session_ack_fault()?;
            let ids: Vec<String> = ids.iter().map(|id| (*id).to_owned()).collect();
            m.ack(&self.keys.stream, self.group, &ids)?;
            if !marked.is_empty() {
                let fields: Vec<String> = marked
                    .iter()
                    .map(|id| crate::transport::keys::attempts_field(self.group, id))
                    .collect();
                if let Err(e) = m.hdel(&self.keys.attempts, &fields) {
                    tracing::warn!(handler = self.group, error = %e, "cannot delete the charged attempts of acked entries");
                }
            }
            Ok(())
        })
    }

    /// Charges `by` attempts to entry `id`; returns the new total.
    pub(crate) async fn charge(&self, id: &str, by: i64) -> TResult<i64> {
        let field = crate::transport::keys::attempts_field(self.group, id);
        dispatch!(self,
            r => crate::transport::redis::stream::ack::charge(r, &self.keys.attempts, &field, by).await,
            m => m.hincrby(&self.keys.attempts, &field, by))
    }

    /// Deletes the charged attempts of entry `id`.
    pub(crate) async fn uncharge(&self, id: &str) -> TResult<()> {
        let field = crate::transport::keys::attempts_field(self.group, id);
        dispatch!(self,
            r => crate::transport::redis::stream::ack::uncharge(r, &self.keys.attempts, &field).await,
            m => m.hdel(&self.keys.attempts, &[field]).map(drop))
    }

    /// Writes a dead letter; for a durable entry (`ack` = its id), acks it and deletes its
    /// charged attempts in the same step, only while it is still pending for the group.
    pub(crate) async fn dead_letter(
        &self,
        ack: Option<&str>,
        letter: &Letter<'_>,
    ) -> TResult<Written> {
        self.transport
            .write_dead_letter(&self.keys, self.group, ack, letter)
            .await
    }

    /// Removes this consumer from the group when it holds nothing pending.
    pub(crate) async fn leave_group(&self) {
        match &self.transport {
            Transport::Redis(r) => {
                crate::transport::redis::stream::group::leave_group(r, self).await
            }
            #[cfg(feature = "testing")]
            Transport::Memory(m) => {
                if m.alive().is_ok() {
                    m.delete_consumer_if_idle(&self.keys.stream, self.group, &self.consumer);
                }
            }
        }
    }

    /// Looks for entries trimmed from the stream before the group read them (health
    /// `trimmed_unread`).
    pub(crate) async fn check_trimmed(&self, watch: &mut TrimWatch, stats: &Stats) {
        match &self.transport {
            Transport::Redis(r) => {
                crate::transport::redis::stream::checks::check_trimmed(
                    &mut r.conn.clone(),
                    &self.keys.stream,
                    self.group,
                    watch,
                    stats,
                )
                .await;
            }
            #[cfg(feature = "testing")]
            Transport::Memory(m) => {
                let total = m.removed_unread(&self.keys.stream, self.group);
                if total > watch.memory_seen {
                    let lost = total - watch.memory_seen;
                    watch.memory_seen = total;
                    Stats::add(&stats.trimmed_unread, lost);
                    tracing::warn!(
                        handler = self.group,
                        stream = %self.keys.stream,
                        lost,
                        "entries were trimmed from the stream before this handler read them; they are lost"
                    );
                }
            }
        }
    }
}

/// What the trim check has already reported for one group, so each loss is reported once.
#[derive(Debug, Default)]
pub(crate) struct TrimWatch {
    /// Entries are numbered by the stream's `entries-added` counter (1 for the first entry ever
    /// added): every entry up to this number that the group never read has been reported.
    pub(crate) reported_upto: u64,
    /// The stream's `entries-added` at the last check: a smaller value means the stream was
    /// deleted and created again, and its numbering started over.
    pub(crate) entries_added: u64,
    /// Whether the last check failed, so a failing check is logged once, not every cycle.
    pub(crate) failing: bool,
    /// While checks fail (a denied `XINFO`, a missing stream), this many cycles are skipped
    /// before the next try; doubles per failure up to [`MAX_SKIP`].
    pub(crate) skip: u32,
    pub(crate) backoff: u32,
    /// In memory: the group's count of entries removed unread, as last reported.
    #[cfg_attr(not(feature = "testing"), allow(dead_code))]
    pub(crate) memory_seen: u64,
}
