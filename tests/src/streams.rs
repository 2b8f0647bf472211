//! Names and state of what the bus writes: a namespace per test, the stream and dead-letter keys
//! of an event, and reading a stream back (pending count, a group's last-delivered id, entry ids).

/// A namespace no other test uses.
pub fn namespace(test: &str) -> String {
    use std::sync::atomic::{AtomicU32, Ordering};
    static N: AtomicU32 = AtomicU32::new(0);
    format!(
        "t-{test}-{}-{}",
        std::process::id(),
        N.fetch_add(1, Ordering::Relaxed)
    )
}

/// The stream key of an event: `<ns>:{<event name>}`.
pub fn stream_key(namespace: &str, event: &str) -> String {
    format!("{namespace}:{{{event}}}")
}

/// The dead-letter key of an event: `<ns>:{<event name>}:dlq`.
pub fn dlq_key(namespace: &str, event: &str) -> String {
    format!("{namespace}:{{{event}}}:dlq")
}

/// The number of pending entries of a consumer group (`XPENDING <stream> <group>` summary count);
/// 0 when the stream or group does not exist.
///
/// # Panics
///
/// When Redis fails.
pub async fn pending_count(
    conn: &mut redis::aio::MultiplexedConnection,
    stream: &str,
    group: &str,
) -> u64 {
    let reply: redis::RedisResult<redis::Value> = redis::cmd("XPENDING")
        .arg(stream)
        .arg(group)
        .query_async(conn)
        .await;
    match reply {
        Ok(redis::Value::Array(items)) => match items.first() {
            Some(redis::Value::Int(n)) => u64::try_from(*n).unwrap_or(0),
            other => panic!("unexpected XPENDING summary: {other:?}"),
        },
        Ok(other) => panic!("unexpected XPENDING reply: {other:?}"),
        Err(e) if e.code() == Some("NOGROUP") => 0,
        Err(e) => panic!("XPENDING {stream} {group}: {e}"),
    }
}

/// The `last-delivered-id` of a consumer group (`XINFO GROUPS`), if the group exists.
///
/// # Panics
///
/// When Redis fails.
pub async fn last_delivered_id(
    conn: &mut redis::aio::MultiplexedConnection,
    stream: &str,
    group: &str,
) -> Option<String> {
    let reply: redis::streams::StreamInfoGroupsReply = redis::cmd("XINFO")
        .arg("GROUPS")
        .arg(stream)
        .query_async(conn)
        .await
        .expect("XINFO GROUPS");
    reply
        .groups
        .into_iter()
        .find(|g| g.name == group)
        .map(|g| g.last_delivered_id)
}

/// The ids of every entry of a stream, oldest first.
///
/// # Panics
///
/// When Redis fails.
pub async fn stream_ids(conn: &mut redis::aio::MultiplexedConnection, stream: &str) -> Vec<String> {
    let reply: redis::streams::StreamRangeReply = redis::cmd("XRANGE")
        .arg(stream)
        .arg("-")
        .arg("+")
        .query_async(conn)
        .await
        .expect("XRANGE");
    reply.ids.into_iter().map(|e| e.id).collect()
}
