//! Checks that keep a stream's consumer groups from losing entries silently: entries trimmed
//! (`MAXLEN`) before a group read them, and a consumer removed from its group while it still
//! held pending entries.

use std::sync::LazyLock;

use redis::aio::ConnectionLike;
use redis::{RedisResult, Value};

use crate::telemetry::Stats;
use crate::transport::stream::TrimWatch;

/// The most claim cycles skipped between two failing trim checks.
const MAX_SKIP: u32 = 32;

/// The fields of `XINFO STREAM` the trim check needs (Redis 7.0+).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct StreamInfo {
    pub(crate) length: u64,
    pub(crate) entries_added: u64,
    /// The id of the first entry still in the stream (none when it is empty).
    pub(crate) first_entry: Option<(u64, u64)>,
}

/// The fields of one group in `XINFO GROUPS` the trim check needs (Redis 7.0+).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct GroupInfo {
    pub(crate) last_delivered: (u64, u64),
    /// How many entries (by the stream's numbering) the group has read up to `last_delivered`;
    /// `None` when Redis does not know.
    pub(crate) entries_read: Option<u64>,
    /// `entries-added` minus `entries-read`; `None` when Redis cannot tell.
    pub(crate) lag: Option<u64>,
}

/// How many entries the group never read are gone from the stream, as a range of the stream's
/// entry numbers `(read, removed]`; `None` when it cannot be told (Redis knows neither the
/// group's read counter nor its lag).
///
/// Trimming removes entries from the head of the stream. When the first entry left is at or
/// before the group's last-delivered id, every entry after that id is still there: nothing was
/// lost. When it is past that id (or the stream is empty), every entry the group read is gone, so
/// of the `entries-added - length` entries removed, all but the `entries-read` ones it read were
/// removed unread: trimmed (or deleted with `XDEL`) before the group got to them.
pub(crate) fn lost_range(stream: &StreamInfo, group: &GroupInfo) -> Option<(u64, u64)> {
    if let Some(first) = stream.first_entry
        && first <= group.last_delivered
    {
        return Some((0, 0));
    }
    // A group that never read (created at `0`) has no read counter; Redis then estimates its lag
    // from the stream's first entry, which counts entries removed before the group existed as
    // read: they were never this group's to lose.
    let read = group.entries_read.or_else(|| {
        group
            .lag
            .map(|lag| stream.entries_added.saturating_sub(lag))
    })?;
    let removed = stream.entries_added.saturating_sub(stream.length);
    if removed <= read {
        return Some((0, 0));
    }
    Some((read, removed))
}

impl TrimWatch {
    /// The entries of `range` not reported yet; marks them reported.
    fn take_new(&mut self, stream: &StreamInfo, range: (u64, u64)) -> u64 {
        if stream.entries_added < self.entries_added {
            // The stream was deleted and created again: a new numbering.
            self.reported_upto = 0;
        }
        self.entries_added = stream.entries_added;
        let (read, removed) = range;
        let from = read.max(self.reported_upto);
        if removed <= from {
            return 0;
        }
        self.reported_upto = removed;
        removed - from
    }
}

/// Entries of `stream` trimmed before `group` read them, not reported before: one round trip
/// (`XINFO STREAM` then `XINFO GROUPS`, in that order, so a group that reads in between can only
/// make the count smaller, never report an entry it did read). Logs a warning naming the handler,
/// the stream and the count when it is not 0; the caller adds it to `Stats::trimmed_unread`.
///
/// Exact when Redis knows the group's read counter (`entries-read`, Redis 7.0+; true for a group
/// that read at least once since the stream was created); when it knows only the lag, an
/// estimate; when it knows neither (a group that never read, on a stream with `XDEL`
/// tombstones), 0. A loss is seen if a check runs while the group is behind
/// the trimmed head of the stream (it always is until it reads past the gap).
///
/// # Errors
///
/// When `XINFO` fails: the stream does not exist (yet), the ACL denies `XINFO`, Redis is older
/// than 7.0 (its replies lack the counters), or the connection fails.
pub(crate) async fn unread_trimmed<C: ConnectionLike + Send>(
    conn: &mut C,
    stream: &str,
    group: &str,
    watch: &mut TrimWatch,
) -> RedisResult<u64> {
    let (info, groups): (Value, Value) = redis::pipe()
        .cmd("XINFO")
        .arg("STREAM")
        .arg(stream)
        .cmd("XINFO")
        .arg("GROUPS")
        .arg(stream)
        .query_async(conn)
        .await?;
    let Some(info) = parse_stream_info(info) else {
        return Err(unexpected("XINFO STREAM"));
    };
    let Some(ours) = parse_groups(groups)
        .into_iter()
        .find_map(|(name, g)| (name == group).then_some(g))
    else {
        return Ok(0); // the group is gone; the reader creates it again
    };
    let Some(range) = lost_range(&info, &ours) else {
        tracing::debug!(
            handler = group,
            stream,
            "cannot tell whether entries were trimmed before this handler read them: Redis knows neither the group's entries-read nor its lag"
        );
        return Ok(0);
    };
    let lost = watch.take_new(&info, range);
    if lost > 0 {
        tracing::warn!(
            handler = group,
            stream,
            lost,
            stream_length = info.length,
            "{lost} entries of stream {stream} were trimmed before handler {group} read them: they are lost to it. The stream is capped (MAXLEN) below this handler's backlog: raise max_len (EVENTBUS_MAX_LEN), or make the handler keep up"
        );
    }
    Ok(lost)
}

/// One trim check of a reader's claim cycle: adds what [`unread_trimmed`] found to the
/// reader's `trimmed_unread` counter; logs a failing check once (at `warn` for a denied
/// `XINFO`, else at `debug`) until it works again, and backs off while it fails (skips 1, 2, 4,
/// ... up to 32 cycles), so a revoked permission does not double the denials of a reader.
pub(crate) async fn check_trimmed<C: ConnectionLike + Send>(
    conn: &mut C,
    stream: &str,
    group: &str,
    watch: &mut TrimWatch,
    stats: &Stats,
) {
    if watch.skip > 0 {
        watch.skip -= 1;
        return;
    }
    let result = unread_trimmed(conn, stream, group, watch).await;
    if result.is_err() {
        watch.backoff = (watch.backoff * 2).clamp(1, MAX_SKIP);
        watch.skip = watch.backoff;
    } else {
        watch.backoff = 0;
    }
    match result {
        Ok(lost) => {
            watch.failing = false;
            if lost > 0 {
                Stats::add(&stats.trimmed_unread, lost);
            }
        }
        Err(e) if !watch.failing => {
            watch.failing = true;
            if e.code() == Some("NOPERM") {
                tracing::warn!(handler = group, stream, error = %e, "cannot check for entries trimmed before this handler read them: grant `+xinfo|stream +xinfo|groups`");
            } else {
                tracing::debug!(handler = group, stream, error = %e, "cannot check for entries trimmed before this handler read them");
            }
        }
        Err(_) => {}
    }
}

fn unexpected(command: &'static str) -> redis::RedisError {
    redis::RedisError::from((
        redis::ErrorKind::Parse,
        "unexpected reply (Redis 7.0 or later is needed)",
        command.to_owned(),
    ))
}

/// `[field, value, ...]` (RESP2) or a map (RESP3) as pairs with text keys.
fn pairs(v: Value) -> Vec<(String, Value)> {
    match v {
        Value::Array(items) => {
            let mut out = Vec::with_capacity(items.len() / 2);
            let mut items = items.into_iter();
            while let (Some(k), Some(v)) = (items.next(), items.next()) {
                if let Some(k) = text(&k) {
                    out.push((k, v));
                }
            }
            out
        }
        Value::Map(items) => items
            .into_iter()
            .filter_map(|(k, v)| text(&k).map(|k| (k, v)))
            .collect(),
        _ => Vec::new(),
    }
}

fn text(v: &Value) -> Option<String> {
    match v {
        Value::BulkString(b) => String::from_utf8(b.clone()).ok(),
        Value::SimpleString(s) => Some(s.clone()),
        Value::VerbatimString { text, .. } => Some(text.clone()),
        _ => None,
    }
}

fn int(v: &Value) -> Option<u64> {
    match v {
        Value::Int(i) => u64::try_from(*i).ok(),
        other => text(other)?.parse().ok(),
    }
}

/// A stream entry id `<ms>-<seq>`.
fn stream_id(v: &Value) -> Option<(u64, u64)> {
    let s = text(v)?;
    let (ms, seq) = s.split_once('-')?;
    Some((ms.parse().ok()?, seq.parse().ok()?))
}

pub(crate) fn parse_stream_info(v: Value) -> Option<StreamInfo> {
    let mut length = None;
    let mut entries_added = None;
    let mut first_entry = None;
    for (k, v) in pairs(v) {
        match k.as_str() {
            "length" => length = int(&v),
            "entries-added" => entries_added = int(&v),
            "first-entry" => {
                first_entry = match v {
                    Value::Array(entry) => entry.first().and_then(stream_id),
                    _ => None,
                }
            }
            _ => {}
        }
    }
    Some(StreamInfo {
        length: length?,
        entries_added: entries_added?,
        first_entry,
    })
}

pub(crate) fn parse_groups(v: Value) -> Vec<(String, GroupInfo)> {
    let Value::Array(groups) = v else {
        return Vec::new();
    };
    groups
        .into_iter()
        .filter_map(|g| {
            let mut name = None;
            let mut last_delivered = None;
            let mut entries_read = None;
            let mut lag = None;
            for (k, v) in pairs(g) {
                match k.as_str() {
                    "name" => name = text(&v),
                    "last-delivered-id" => last_delivered = stream_id(&v),
                    "entries-read" => entries_read = int(&v),
                    "lag" => lag = int(&v),
                    _ => {}
                }
            }
            Some((
                name?,
                GroupInfo {
                    last_delivered: last_delivered?,
                    entries_read,
                    lag,
                },
            ))
        })
        .collect()
}

/// Removes `consumer` from `group` only if it has no pending entries, in one step on the server:
/// `XGROUP DELCONSUMER` discards a consumer's pending entries (nobody could claim them any more),
/// so an entry that became pending for this consumer name between a check and the delete (another
/// process under the same name) would be lost. Returns what `DELCONSUMER` returned (the pending
/// entries it discarded: 0), or `None` when the consumer was kept because it still had pending
/// entries.
const LEAVE_GROUP: &str = r"
local pending = redis.call('XPENDING', KEYS[1], ARGV[1], '-', '+', 1, ARGV[2])
if #pending > 0 then
  return -1
end
return redis.call('XGROUP', 'DELCONSUMER', KEYS[1], ARGV[1], ARGV[2])
";

static LEAVE_GROUP_SCRIPT: LazyLock<redis::Script> =
    LazyLock::new(|| redis::Script::new(LEAVE_GROUP));

/// `EVALSHA`, and `EVAL` when the server does not have the script yet (after a restart or
/// `SCRIPT FLUSH`): needs `+evalsha +eval`, not `SCRIPT LOAD`.
pub(crate) async fn eval<C: ConnectionLike + Send, T: redis::FromRedisValue>(
    conn: &mut C,
    script: &redis::Script,
    code: &str,
    keys: &[&str],
    args: &[&str],
) -> RedisResult<T> {
    let build = |command: &str, first: &str| {
        let mut cmd = redis::cmd(command);
        cmd.arg(first).arg(keys.len()).arg(keys).arg(args);
        cmd
    };
    match build("EVALSHA", script.get_hash()).query_async(conn).await {
        Err(e) if e.kind() == redis::ErrorKind::Server(redis::ServerErrorKind::NoScript) => {
            build("EVAL", code).query_async(conn).await
        }
        other => other,
    }
}

/// What [`leave_group`] did.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Left {
    /// The consumer was removed; `DELCONSUMER` discarded this many pending entries (0 unless
    /// the script's guarantee was broken).
    Removed(u64),
    /// The consumer still had pending entries and stays, so they can be claimed.
    Kept,
}

/// After a clean drain: removes `consumer` from `group` when nothing can be lost by it (it has
/// no pending entries, checked in the same server-side step as the delete), so per-process
/// consumer names do not pile up in the group. Logs the outcome: a consumer kept, a failure
/// (`debug` when the ACL denies the optional `XGROUP DELCONSUMER`), and at `error` a delete that
/// discarded pending entries.
///
/// # Errors
///
/// When the script fails (no such group, ACL, connection); logged here already.
pub(crate) async fn leave_group<C: ConnectionLike + Send>(
    conn: &mut C,
    stream: &str,
    group: &str,
    consumer: &str,
) -> RedisResult<Left> {
    let reply: RedisResult<i64> = eval(
        conn,
        &LEAVE_GROUP_SCRIPT,
        LEAVE_GROUP,
        &[stream],
        &[group, consumer],
    )
    .await;
    match reply {
        Ok(-1) => {
            tracing::info!(
                handler = group,
                consumer,
                "consumer keeps its place in the group: it still has pending entries, which other consumers will claim"
            );
            Ok(Left::Kept)
        }
        Ok(0) => {
            tracing::debug!(handler = group, consumer, "consumer removed from its group");
            Ok(Left::Removed(0))
        }
        Ok(n) => {
            let n = u64::try_from(n).unwrap_or(0);
            tracing::error!(
                handler = group,
                consumer,
                stream,
                discarded = n,
                "XGROUP DELCONSUMER discarded {n} pending entries of this consumer: nobody can claim them any more, they are lost; please report this"
            );
            Ok(Left::Removed(n))
        }
        Err(e) => {
            if crate::transport::redis::errors::is_transient(&e) {
                tracing::warn!(handler = group, consumer, error = %e, "cannot remove the consumer from its group (Redis unreachable); it stays, harmless");
            } else {
                // The group is gone, or the ACL denies the script or DELCONSUMER (optional).
                tracing::debug!(handler = group, consumer, error = %e, "cannot remove the consumer from its group (grant `+evalsha +eval +xpending +xgroup|delconsumer` to remove it); it stays, harmless");
            }
            Err(e)
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn bulk(s: &str) -> Value {
        Value::BulkString(s.as_bytes().to_vec())
    }

    fn stream(length: u64, entries_added: u64, first: Option<(u64, u64)>) -> StreamInfo {
        StreamInfo {
            length,
            entries_added,
            first_entry: first,
        }
    }

    fn group(last: (u64, u64), read: Option<u64>, lag: Option<u64>) -> GroupInfo {
        GroupInfo {
            last_delivered: last,
            entries_read: read,
            lag,
        }
    }

    #[test]
    fn a_group_behind_the_trimmed_head_lost_the_gap() {
        // 10 added (ids 1..=10), 2 read, trimmed to the last 3 (8, 9, 10): 3..=7 lost.
        let s = stream(3, 10, Some((8, 0)));
        assert_eq!(
            lost_range(&s, &group((2, 0), Some(2), Some(8))),
            Some((2, 7))
        );
        // Read counter unknown: from the lag.
        assert_eq!(lost_range(&s, &group((2, 0), None, Some(8))), Some((2, 7)));
        // A new group on a trimmed stream: what was removed before it existed is not its loss.
        assert_eq!(lost_range(&s, &group((0, 0), None, Some(3))), Some((0, 0)));
        assert_eq!(lost_range(&s, &group((0, 0), None, None)), None);
        // Nothing known: cannot tell.
        assert_eq!(lost_range(&s, &group((2, 0), None, None)), None);
        // Empty stream: all removed, 2 read.
        assert_eq!(
            lost_range(&stream(0, 10, None), &group((2, 0), Some(2), None)),
            Some((2, 10))
        );
    }

    #[test]
    fn a_group_that_kept_up_lost_nothing() {
        // First entry at or before the group's position: everything after it is still there,
        // even when read entries (or unread ones, by XDEL) are gone.
        let s = stream(3, 10, Some((8, 0)));
        assert_eq!(
            lost_range(&s, &group((8, 0), Some(8), Some(2))),
            Some((0, 0))
        );
        assert_eq!(
            lost_range(&s, &group((9, 0), Some(9), Some(1))),
            Some((0, 0))
        );
        // Read everything, then the stream was emptied.
        assert_eq!(
            lost_range(&stream(0, 10, None), &group((10, 0), Some(10), Some(0))),
            Some((0, 0))
        );
        // Read 7, entries 1..=7 trimmed: the head is past the group's position, nothing unread
        // is gone.
        assert_eq!(
            lost_range(&s, &group((7, 0), Some(7), Some(3))),
            Some((0, 0))
        );
    }

    #[test]
    fn each_loss_is_reported_once() {
        let mut watch = TrimWatch::default();
        let s = stream(3, 10, Some((8, 0)));
        assert_eq!(watch.take_new(&s, (2, 7)), 5);
        assert_eq!(watch.take_new(&s, (2, 7)), 0);
        // More trimmed while the group is still stuck: only the new ones.
        let s = stream(3, 12, Some((10, 0)));
        assert_eq!(watch.take_new(&s, (2, 9)), 2);
        // The group read on (past the gap), then fell behind again.
        let s = stream(3, 20, Some((18, 0)));
        assert_eq!(watch.take_new(&s, (12, 17)), 5);
        // The stream was deleted and created again: numbering restarts.
        let s = stream(1, 4, Some((30, 0)));
        assert_eq!(watch.take_new(&s, (0, 3)), 3);
    }

    #[test]
    fn parses_xinfo_replies() {
        let info = Value::Array(vec![
            bulk("length"),
            Value::Int(1),
            bulk("max-deleted-entry-id"),
            bulk("0-0"),
            bulk("entries-added"),
            Value::Int(5),
            bulk("first-entry"),
            Value::Array(vec![bulk("17-3"), Value::Array(vec![bulk("a"), bulk("5")])]),
        ]);
        assert_eq!(parse_stream_info(info), Some(stream(1, 5, Some((17, 3)))));
        let empty = Value::Map(vec![
            (bulk("length"), Value::Int(0)),
            (bulk("entries-added"), Value::Int(0)),
            (bulk("first-entry"), Value::Nil),
        ]);
        assert_eq!(parse_stream_info(empty), Some(stream(0, 0, None)));
        let groups = Value::Array(vec![Value::Array(vec![
            bulk("name"),
            bulk("g"),
            bulk("last-delivered-id"),
            bulk("0-0"),
            bulk("entries-read"),
            Value::Nil,
            bulk("lag"),
            Value::Int(5),
        ])]);
        assert_eq!(
            parse_groups(groups),
            vec![("g".to_owned(), group((0, 0), None, Some(5)))]
        );
    }
}
