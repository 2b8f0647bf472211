//! Leases: which entries this consumer still owns, and renewing them.

use std::collections::HashSet;

use redis::streams::StreamPendingCountReply;

use crate::transport::redis::Redis;
use crate::transport::redis::errors::classify;
use crate::transport::source::{Entry, parse_id};
use crate::transport::stream::{Stream, TResult};

/// `XPENDING <stream> <group> <min> <max> <count> <consumer>` over the range of `ids`.
fn pending_cmd(s: &Stream, ids: &[&str], room: usize) -> Option<redis::Cmd> {
    let min = ids.iter().min_by_key(|id| parse_id(id))?;
    let max = ids.iter().max_by_key(|id| parse_id(id))?;
    let mut cmd = redis::cmd("XPENDING");
    cmd.arg(&s.keys.stream)
        .arg(s.group)
        .arg(*min)
        .arg(*max)
        .arg(ids.len() + room)
        .arg(&s.consumer);
    Some(cmd)
}

/// Of `ids`, the ones pending for this consumer.
pub(crate) async fn owned(
    r: &Redis,
    s: &Stream,
    ids: &[String],
    room: usize,
) -> TResult<HashSet<String>> {
    let refs: Vec<&str> = ids.iter().map(String::as_str).collect();
    let Some(cmd) = pending_cmd(s, &refs, room) else {
        return Ok(HashSet::new());
    };
    let mut conn = r.conn.clone();
    let reply: StreamPendingCountReply = cmd.query_async(&mut conn).await.map_err(classify)?;
    let wanted: HashSet<&String> = ids.iter().collect();
    Ok(reply
        .ids
        .into_iter()
        .map(|p| p.id)
        .filter(|id| wanted.contains(id))
        .collect())
}

/// Which of `entries` are pending for this consumer, and the attempts charged to each (`HMGET`
/// on the attempts hash; 0 when unknown). One round trip, on the redelivery path only.
pub(crate) async fn owned_and_charged(
    r: &Redis,
    s: &Stream,
    entries: &[Entry],
    room: usize,
) -> TResult<(HashSet<String>, Vec<u32>)> {
    let refs: Vec<&str> = entries.iter().map(|e| e.id.as_str()).collect();
    let Some(cmd) = pending_cmd(s, &refs, room) else {
        return Ok((HashSet::new(), Vec::new()));
    };
    let mut pipe = redis::pipe();
    pipe.add_command(cmd);
    pipe.cmd("HMGET").arg(&s.keys.attempts);
    for e in entries {
        pipe.arg(crate::transport::keys::attempts_field(s.group, &e.id));
    }
    let mut conn = r.conn.clone();
    let (pending, charged): (StreamPendingCountReply, Vec<Option<u32>>) =
        pipe.query_async(&mut conn).await.map_err(classify)?;
    Ok((
        pending.ids.into_iter().map(|p| p.id).collect(),
        (0..entries.len())
            .map(|i| charged.get(i).copied().flatten().unwrap_or(0))
            .collect(),
    ))
}

/// `XCLAIM <stream> <group> <consumer> 0 <ids> JUSTID`: resets the idle time of `ids` without
/// counting a delivery, so a slow but alive handler keeps its entry.
pub(crate) async fn renew(r: &Redis, s: &Stream, ids: &[String]) -> TResult<()> {
    if ids.is_empty() {
        return Ok(());
    }
    let mut conn = r.conn.clone();
    redis::cmd("XCLAIM")
        .arg(&s.keys.stream)
        .arg(s.group)
        .arg(&s.consumer)
        .arg(0)
        .arg(ids)
        .arg("JUSTID")
        .query_async::<Vec<String>>(&mut conn)
        .await
        .map(drop)
        .map_err(classify)
}
