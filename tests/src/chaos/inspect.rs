//! A test's own reads of a server under fault: a patient connection, the payload numbers of a
//! stream, and the pending entries of a group or of one consumer.

use std::collections::BTreeSet;
use std::time::Duration;

/// A connection for a test's own checks on a server under load: a 10 s response timeout
/// instead of the client's default 500 ms (a busy machine or an `appendfsync always` server
/// under write load can take longer to answer a large `XRANGE`).
///
/// # Panics
///
/// When the server does not accept the connection.
pub async fn patient_conn(server: &crate::RedisServer) -> redis::aio::MultiplexedConnection {
    let config = redis::AsyncConnectionConfig::new()
        .set_response_timeout(Some(Duration::from_secs(10)))
        .set_connection_timeout(Some(Duration::from_secs(10)));
    server
        .client()
        .get_multiplexed_async_connection_with_config(&config)
        .await
        .expect("connect to test redis")
}

/// The payload numbers (`data.n` of each envelope) of every entry in `stream`, one item per
/// entry (an event stored twice appears twice). An empty list when the stream does not exist.
///
/// # Panics
///
/// When Redis fails or an entry is not an eventbus envelope with a numeric `data.n`.
pub async fn stream_payload_ids(
    conn: &mut redis::aio::MultiplexedConnection,
    stream: &str,
) -> Vec<u64> {
    let mut out = Vec::new();
    let mut start = "-".to_owned();
    loop {
        let reply: redis::streams::StreamRangeReply = redis::cmd("XRANGE")
            .arg(stream)
            .arg(&start)
            .arg("+")
            .arg("COUNT")
            .arg(5000)
            .query_async(conn)
            .await
            .expect("XRANGE");
        let Some(last) = reply.ids.last() else {
            return out;
        };
        start = format!("({}", last.id);
        for entry in &reply.ids {
            let raw: String = entry.get("envelope").expect("entry has an envelope field");
            let env: serde_json::Value = serde_json::from_str(&raw).expect("envelope is JSON");
            out.push(env["data"]["n"].as_u64().expect("envelope data has n"));
        }
    }
}

/// The number of pending entries of one consumer of a group (`XPENDING <stream> <group> - + N
/// <consumer>`); 0 when the stream or group does not exist.
///
/// # Panics
///
/// When Redis fails.
pub async fn consumer_pending(
    conn: &mut redis::aio::MultiplexedConnection,
    stream: &str,
    group: &str,
    consumer: &str,
) -> usize {
    let reply: redis::RedisResult<redis::streams::StreamPendingCountReply> = redis::cmd("XPENDING")
        .arg(stream)
        .arg(group)
        .arg("-")
        .arg("+")
        .arg(1_000_000)
        .arg(consumer)
        .query_async(conn)
        .await;
    match reply {
        Ok(r) => r.ids.len(),
        Err(e) if e.code() == Some("NOGROUP") => 0,
        Err(e) => panic!("XPENDING {stream} {group} - + N {consumer}: {e}"),
    }
}

/// The ids of the pending entries of a group (`XPENDING <stream> <group> - + N [consumer]`), of
/// one consumer when `consumer` is given; empty when the stream or group does not exist.
///
/// # Panics
///
/// When Redis fails.
pub async fn pending_ids(
    conn: &mut redis::aio::MultiplexedConnection,
    stream: &str,
    group: &str,
    consumer: Option<&str>,
) -> BTreeSet<String> {
    let mut cmd = redis::cmd("XPENDING");
    cmd.arg(stream).arg(group).arg("-").arg("+").arg(1_000_000);
    if let Some(consumer) = consumer {
        cmd.arg(consumer);
    }
    let reply: redis::RedisResult<redis::streams::StreamPendingCountReply> =
        cmd.query_async(conn).await;
    match reply {
        Ok(r) => r.ids.into_iter().map(|p| p.id).collect(),
        Err(e) if e.code() == Some("NOGROUP") => BTreeSet::new(),
        Err(e) => panic!("XPENDING {stream} {group} - + N {consumer:?}: {e}"),
    }
}
