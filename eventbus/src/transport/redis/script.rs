//! Lua scripts: `EVALSHA`, falling back to `EVAL` when the server lost its script cache.

use std::sync::LazyLock;

use redis::{FromRedisValue, Script, ToRedisArgs};

use super::conn::SharedConn;

/// A Lua script with its source (for `EVAL`) and hash (for `EVALSHA`).
pub(crate) struct Lua {
    pub(crate) source: &'static str,
    pub(crate) script: LazyLock<Script>,
}

impl Lua {
    /// `EVALSHA`, then `EVAL` when the server does not have the script cached (`NOSCRIPT`:
    /// restarted, `SCRIPT FLUSH`, a failover to a replica that never saw it).
    pub(crate) async fn run<T: FromRedisValue>(
        &self,
        conn: &mut SharedConn,
        keys: &[&str],
        args: &[Vec<u8>],
    ) -> redis::RedisResult<T> {
        let build = |name: &str, first: &str| {
            let mut cmd = redis::cmd(name);
            cmd.arg(first).arg(keys.len()).arg(keys).arg(args);
            cmd
        };
        match build("EVALSHA", self.script.get_hash())
            .query_async(conn)
            .await
        {
            Err(e) if e.kind() == redis::ErrorKind::Server(redis::ServerErrorKind::NoScript) => {
                build("EVAL", self.source).query_async(conn).await
            }
            other => other,
        }
    }
}

/// Appends `value` as one Redis argument.
pub(crate) fn push(args: &mut Vec<Vec<u8>>, value: impl ToRedisArgs) {
    args.extend(value.to_redis_args());
}
