//! Claims: entries of silent consumers (`XAUTOCLAIM`) and entries handed back at shutdown.

use std::time::Duration;

use redis::Value;
use redis::streams::StreamPendingCountReply;

use crate::transport::redis::Redis;
use crate::transport::redis::errors::classify;
use crate::transport::source::{AutoClaimed, Entry};
use crate::transport::stream::{HANDBACK_CONSUMER, Stream, TResult};

fn millis(d: Duration) -> u64 {
    u64::try_from(d.as_millis()).unwrap_or(u64::MAX)
}

/// Up to `count` ids held by the hand-back pseudo-consumer.
pub(crate) async fn handed_back(r: &Redis, s: &Stream, count: usize) -> TResult<Vec<String>> {
    let mut conn = r.conn.clone();
    let pending: StreamPendingCountReply = redis::cmd("XPENDING")
        .arg(&s.keys.stream)
        .arg(s.group)
        .arg("-")
        .arg("+")
        .arg(count)
        .arg(HANDBACK_CONSUMER)
        .query_async(&mut conn)
        .await
        .map_err(classify)?;
    Ok(pending.ids.into_iter().map(|p| p.id).collect())
}

/// `XCLAIM ... <min-idle> <ids> JUSTID` to this consumer: no delivery counted. `min-idle` guards
/// against two consumers taking the same entry: the first claim resets its idle time.
pub(crate) async fn take(
    r: &Redis,
    s: &Stream,
    ids: &[String],
    min_idle: Duration,
) -> TResult<Vec<String>> {
    if ids.is_empty() {
        return Ok(Vec::new());
    }
    let mut conn = r.conn.clone();
    redis::cmd("XCLAIM")
        .arg(&s.keys.stream)
        .arg(s.group)
        .arg(&s.consumer)
        .arg(millis(min_idle))
        .arg(ids)
        .arg("JUSTID")
        .query_async(&mut conn)
        .await
        .map_err(classify)
}

/// The entries `ids` (`XRANGE id id` each, one pipeline); one deleted meanwhile comes back
/// without fields.
pub(crate) async fn entries(r: &Redis, s: &Stream, ids: &[String]) -> TResult<Vec<Entry>> {
    if ids.is_empty() {
        return Ok(Vec::new());
    }
    let mut pipe = redis::pipe();
    for id in ids {
        pipe.cmd("XRANGE").arg(&s.keys.stream).arg(id).arg(id);
    }
    let mut conn = r.conn.clone();
    let replies: Vec<Value> = pipe.query_async(&mut conn).await.map_err(classify)?;
    Ok(ids
        .iter()
        .zip(replies)
        .map(|(id, reply)| {
            let entry = match reply {
                Value::Array(items) => items.into_iter().next().and_then(super::reply::entry),
                _ => None,
            };
            entry.unwrap_or_else(|| Entry {
                id: id.clone(),
                fields: Vec::new(),
            })
        })
        .collect())
}

/// `XCLAIM ... <hand-back consumer> 0 <ids> IDLE <idle> JUSTID`: no delivery counted.
pub(crate) async fn hand_back(
    r: &Redis,
    s: &Stream,
    ids: &[String],
    idle: Duration,
) -> TResult<usize> {
    if ids.is_empty() {
        return Ok(0);
    }
    let mut conn = r.conn.clone();
    let moved: Vec<String> = redis::cmd("XCLAIM")
        .arg(&s.keys.stream)
        .arg(s.group)
        .arg(HANDBACK_CONSUMER)
        .arg(0)
        .arg(ids)
        .arg("IDLE")
        .arg(millis(idle))
        .arg("JUSTID")
        .query_async(&mut conn)
        .await
        .map_err(classify)?;
    Ok(moved.len())
}

/// One `XAUTOCLAIM` page, parsed from raw values.
pub(crate) async fn autoclaim(
    r: &Redis,
    s: &Stream,
    min_idle: Duration,
    cursor: &str,
    count: usize,
) -> TResult<AutoClaimed> {
    let mut conn = r.conn.clone();
    let reply: Value = redis::cmd("XAUTOCLAIM")
        .arg(&s.keys.stream)
        .arg(s.group)
        .arg(&s.consumer)
        .arg(millis(min_idle))
        .arg(cursor)
        .arg("COUNT")
        .arg(count)
        .query_async(&mut conn)
        .await
        .map_err(classify)?;
    Ok(super::reply::autoclaim(reply))
}
