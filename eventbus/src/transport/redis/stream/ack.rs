//! Acks and charged attempts.

use redis::Value;

use crate::transport::redis::Redis;
use crate::transport::redis::errors::classify;
use crate::transport::stream::{Stream, TResult};

/// `XACK` of `ids`, with `HDEL` of the charged attempts of `marked` in the same round trip.
/// Each reply on its own: a failing HDEL (an ACL edit, a wrong key type) must not make an ack
/// that landed look failed; it is logged.
pub(crate) async fn ack(r: &Redis, s: &Stream, ids: &[&str], marked: &[&str]) -> TResult<()> {
    if ids.is_empty() {
        return Ok(());
    }
    let mut pipe = redis::pipe();
    pipe.ignore_errors();
    pipe.cmd("XACK").arg(&s.keys.stream).arg(s.group).arg(ids);
    if !marked.is_empty() {
        pipe.cmd("HDEL").arg(&s.keys.attempts);
        for id in marked {
            pipe.arg(crate::transport::keys::attempts_field(s.group, id));
        }
    }
    let mut conn = r.conn.clone();
    let mut replies: Vec<redis::RedisResult<Value>> =
        pipe.query_async(&mut conn).await.map_err(classify)?;
    if replies.len() > 1
        && let Some(Err(e)) = replies.pop()
    {
        tracing::warn!(handler = s.group, error = %e, "cannot delete the charged attempts of acked entries; they stay in the attempts hash");
    }
    match replies.into_iter().next() {
        Some(Ok(_)) => Ok(()),
        Some(Err(e)) => Err(classify(e)),
        None => Err(crate::error::TransportError::new(
            crate::error::TransportErrorKind::Client,
            "empty reply to XACK",
        )),
    }
}

/// `HINCRBY <attempts> <field> <by>`.
pub(crate) async fn charge(r: &Redis, key: &str, field: &str, by: i64) -> TResult<i64> {
    let mut conn = r.conn.clone();
    redis::cmd("HINCRBY")
        .arg(key)
        .arg(field)
        .arg(by)
        .query_async(&mut conn)
        .await
        .map_err(classify)
}

/// `HDEL <attempts> <field>`.
pub(crate) async fn uncharge(r: &Redis, key: &str, field: &str) -> TResult<()> {
    let mut conn = r.conn.clone();
    redis::cmd("HDEL")
        .arg(key)
        .arg(field)
        .query_async::<i64>(&mut conn)
        .await
        .map(drop)
        .map_err(classify)
}
