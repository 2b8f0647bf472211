//! Blocking reads (`XREADGROUP`) on a reader's own connection.

use std::time::Duration;

use redis::Value;
use redis::aio::MultiplexedConnection;
use tokio_util::sync::CancellationToken;

use crate::transport::redis::Redis;
use crate::transport::redis::errors::classify;
use crate::transport::source::Entry;
use crate::transport::stream::{ReadFrom, Stream, TResult};

/// A reader's dedicated connection: a blocked `XREADGROUP` would stall a shared one
/// (REDIS_NOTES §2), and its response timeout covers `BLOCK`.
pub(crate) struct Reading {
    conn: MultiplexedConnection,
    /// Its `CLIENT ID`, to release a blocked read at shutdown (`None` when the ACL denies it).
    client_id: Option<i64>,
    /// The shared connection, which sends the `CLIENT UNBLOCK`.
    redis: Redis,
}

impl Reading {
    /// Opens the connection and asks its client id.
    pub(crate) async fn connect(r: &Redis) -> TResult<Reading> {
        let mut conn = crate::transport::redis::conn::blocking(&r.client, &r.config)
            .await
            .map_err(classify)?;
        // Optional, since an ACL may deny CLIENT.
        let client_id: Option<i64> = redis::cmd("CLIENT")
            .arg("ID")
            .query_async(&mut conn)
            .await
            .ok();
        Ok(Reading {
            conn,
            client_id,
            redis: r.clone(),
        })
    }

    /// One XREADGROUP. When `cancel` interrupts a blocking read, the server is asked to unblock
    /// it (`CLIENT UNBLOCK`), and whatever it had already delivered is still returned.
    pub(crate) async fn read(
        &mut self,
        s: &Stream,
        from: ReadFrom,
        count: usize,
        block: Option<Duration>,
        cancel: &CancellationToken,
    ) -> TResult<Vec<Entry>> {
        let mut cmd = redis::cmd("XREADGROUP");
        cmd.arg("GROUP")
            .arg(s.group)
            .arg(&s.consumer)
            .arg("COUNT")
            .arg(count);
        if let Some(block) = block {
            cmd.arg("BLOCK")
                .arg(u64::try_from(block.as_millis()).unwrap_or(u64::MAX));
        }
        cmd.arg("STREAMS").arg(&s.keys.stream);
        match &from {
            ReadFrom::New => cmd.arg(">"),
            ReadFrom::PendingAfter(id) => cmd.arg(id),
        };
        if cancel.is_cancelled() {
            return Ok(Vec::new());
        }
        let client_id = self.client_id;
        let read = cmd.query_async::<Value>(&mut self.conn);
        tokio::pin!(read);
        let reply = tokio::select! {
            biased;
            r = &mut read => r,
            () = cancel.cancelled() => {
                if let Some(client_id) = client_id {
                    let mut shared = self.redis.conn.clone();
                    let _ = redis::cmd("CLIENT").arg("UNBLOCK").arg(client_id).query_async::<i64>(&mut shared).await;
                }
                let grace = self.redis.config.block_time + Duration::from_secs(1);
                match tokio::time::timeout(grace, read).await {
                    Ok(r) => r,
                    Err(_) => Ok(Value::Nil),
                }
            }
        }
        .map_err(classify)?;
        Ok(super::reply::read(reply))
    }
}
