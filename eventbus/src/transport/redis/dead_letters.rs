//! Dead letters on Redis: one stream per event, `<ns>:{<event>}:dlq`, in the event's hash slot.
//!
//! Every write here is a Lua script run in the event's slot (the stream, its `:dlq` and
//! `:attempts` keys share it), because `MULTI`/`EXEC` runs the `XACK` even when the `XADD` of the
//! dead letter fails at run time (`WRONGTYPE`): only a script can stop halfway *before* the ack
//! (the write itself is [`write_letter`]). Scripts go out as `EVALSHA`, and as `EVAL` (which also
//! caches them) when the server answers `NOSCRIPT`: the ACL needs `+evalsha +eval`, plus the
//! commands the scripts call (`xpending xadd xack hdel xrange xinfo|groups xdel publish`).

use std::sync::LazyLock;

use redis::{Script, Value};

use super::Redis;
use super::errors::{classify, to_error};
use super::script::{Lua, push};
use super::stream::settle::write_letter;
use crate::error::{Result, TransportError};
use crate::transport::dead_letters::{Replay, Republish};
use crate::transport::keys::EventKeys;
use crate::transport::settle::{Letter, Written};
use crate::transport::source::Entry;

/// Durable replay. KEYS: dlq, stream. ARGV: letter entry id, handler (group), envelope,
/// max length (`""` for none). Returns 1 (re-added, letter deleted), 0 (no such letter), -1 (no
/// stream), -2 (the handler has no group on the stream); nothing is written unless 1.
const REPLAY_LUA: &str = r#"
if #redis.call('XRANGE', KEYS[1], ARGV[1], ARGV[1]) == 0 then
  return 0
end
local groups = redis.pcall('XINFO', 'GROUPS', KEYS[2])
if type(groups) == 'table' and groups.err then
  if string.sub(groups.err, 1, 4) == 'ERR ' then
    return -1
  end
  return groups
end
local found = false
for _, group in ipairs(groups) do
  for i = 1, #group - 1, 2 do
    if group[i] == 'name' and group[i + 1] == ARGV[2] then
      found = true
    end
  end
end
if not found then
  return -2
end
if ARGV[4] ~= '' then
  redis.call('XADD', KEYS[2], 'MAXLEN', '~', ARGV[4], '*', 'envelope', ARGV[3], 'handler', ARGV[2])
else
  redis.call('XADD', KEYS[2], '*', 'envelope', ARGV[3], 'handler', ARGV[2])
end
redis.call('XDEL', KEYS[1], ARGV[1])
return 1
"#;

/// Broadcast replay. KEYS: dlq. ARGV: letter entry id, channel, payload. Returns -1 (no such
/// letter) or the number of subscribers that received the message; the letter is deleted only
/// when that number is above 0.
const REPLAY_BROADCAST_LUA: &str = r#"
if #redis.call('XRANGE', KEYS[1], ARGV[1], ARGV[1]) == 0 then
  return -1
end
local receivers = redis.call('PUBLISH', ARGV[2], ARGV[3])
if receivers > 0 then
  redis.call('XDEL', KEYS[1], ARGV[1])
end
return receivers
"#;

static REPLAY: Lua = Lua {
    source: REPLAY_LUA,
    script: LazyLock::new(|| Script::new(REPLAY_LUA)),
};
static REPLAY_BROADCAST: Lua = Lua {
    source: REPLAY_BROADCAST_LUA,
    script: LazyLock::new(|| Script::new(REPLAY_BROADCAST_LUA)),
};

impl Redis {
    /// See [`Transport::write_dead_letter`](crate::transport::Transport::write_dead_letter).
    pub(crate) async fn write_dead_letter(
        &self,
        keys: &EventKeys,
        group: &str,
        ack: Option<&str>,
        letter: &Letter<'_>,
    ) -> std::result::Result<Written, TransportError> {
        let mut conn = self.conn.clone();
        write_letter(&mut conn, keys, group, ack, letter)
            .await
            .map_err(classify)
    }

    /// `SCAN` with the namespace escaped in the pattern (`TYPE stream`).
    pub(crate) async fn dead_letter_keys(&self, namespace: &str) -> Result<Vec<String>> {
        let pattern = dlq_pattern(namespace);
        let mut conn = self.conn.clone();
        let mut keys = Vec::new();
        let mut cursor: u64 = 0;
        loop {
            let (next, batch): (u64, Vec<String>) = redis::cmd("SCAN")
                .arg(cursor)
                .arg("MATCH")
                .arg(&pattern)
                .arg("COUNT")
                .arg(1000)
                .arg("TYPE")
                .arg("stream")
                .query_async(&mut conn)
                .await
                .map_err(to_error("SCAN"))?;
            keys.extend(batch);
            if next == 0 {
                return Ok(keys);
            }
            cursor = next;
        }
    }

    /// `XRANGE key - + COUNT count`.
    pub(crate) async fn dead_letters(&self, key: &str, count: usize) -> Result<Vec<Entry>> {
        let mut conn = self.conn.clone();
        let reply: Value = redis::cmd("XRANGE")
            .arg(key)
            .arg("-")
            .arg("+")
            .arg("COUNT")
            .arg(count)
            .query_async(&mut conn)
            .await
            .map_err(to_error("XRANGE"))?;
        Ok(parse_range(reply))
    }

    /// `XRANGE key id id`.
    pub(crate) async fn dead_letter(&self, key: &str, id: &str) -> Result<Option<Entry>> {
        let mut conn = self.conn.clone();
        let reply: Value = redis::cmd("XRANGE")
            .arg(key)
            .arg(id)
            .arg(id)
            .query_async(&mut conn)
            .await
            .map_err(to_error("XRANGE"))?;
        Ok(parse_range(reply).into_iter().next())
    }

    /// The durable replay script ([`REPLAY_LUA`]).
    pub(crate) async fn replay_durable(
        &self,
        key: &str,
        id: &str,
        stream: &str,
        handler: &str,
        envelope: &str,
        max_len: Option<usize>,
    ) -> Result<Replay> {
        let mut conn = self.conn.clone();
        let mut args = Vec::with_capacity(4);
        push(&mut args, id);
        push(&mut args, handler);
        push(&mut args, envelope);
        push(
            &mut args,
            max_len.map(|n| n.to_string()).unwrap_or_default(),
        );
        let code: i64 = REPLAY
            .run(&mut conn, &[key, stream], &args)
            .await
            .map_err(to_error("EVALSHA (replay)"))?;
        Ok(match code {
            1 => Replay::Replayed,
            0 => Replay::NoLetter,
            -1 => Replay::NoStream,
            _ => Replay::NoGroup,
        })
    }

    /// The broadcast replay script ([`REPLAY_BROADCAST_LUA`]).
    pub(crate) async fn replay_broadcast(
        &self,
        key: &str,
        id: &str,
        channel: &str,
        payload: &str,
    ) -> Result<Republish> {
        let mut conn = self.conn.clone();
        let mut args = Vec::with_capacity(3);
        push(&mut args, id);
        push(&mut args, channel);
        push(&mut args, payload);
        let receivers: i64 = REPLAY_BROADCAST
            .run(&mut conn, &[key], &args)
            .await
            .map_err(to_error("EVALSHA (replay)"))?;
        Ok(match u64::try_from(receivers) {
            Ok(n) => Republish::Received(n),
            Err(_) => Republish::NoLetter,
        })
    }

    /// `XDEL key id`.
    pub(crate) async fn remove_dead_letter(&self, key: &str, id: &str) -> Result<bool> {
        let mut conn = self.conn.clone();
        let n: i64 = redis::cmd("XDEL")
            .arg(key)
            .arg(id)
            .query_async(&mut conn)
            .await
            .map_err(to_error("XDEL"))?;
        Ok(n > 0)
    }

    /// `XLEN` and `DEL` in one `MULTI`.
    pub(crate) async fn delete_dead_letters(&self, key: &str) -> Result<usize> {
        let mut conn = self.conn.clone();
        let (len, _): (usize, i64) = redis::pipe()
            .atomic()
            .cmd("XLEN")
            .arg(key)
            .cmd("DEL")
            .arg(key)
            .query_async(&mut conn)
            .await
            .map_err(to_error("DEL"))?;
        Ok(len)
    }
}

/// The `SCAN MATCH` pattern of a namespace's dead-letter keys, `<ns>:{*}:dlq`, with every glob
/// metacharacter of the namespace (`\ * ? [ ]`) escaped so that it matches only itself.
fn dlq_pattern(namespace: &str) -> String {
    let mut pattern = String::with_capacity(namespace.len() + 8);
    for c in namespace.chars() {
        if matches!(c, '\\' | '*' | '?' | '[' | ']') {
            pattern.push('\\');
        }
        pattern.push(c);
    }
    pattern.push_str(":{*}:dlq");
    pattern
}

/// An `XRANGE` reply: `[[id, [field, value, ...]], ...]`.
fn parse_range(reply: Value) -> Vec<Entry> {
    let Value::Array(items) = reply else {
        return Vec::new();
    };
    items
        .into_iter()
        .filter_map(super::stream::reply::entry)
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn bulk(s: &str) -> Value {
        Value::BulkString(s.as_bytes().to_vec())
    }

    #[test]
    fn the_scan_pattern_escapes_glob_characters_of_the_namespace() {
        assert_eq!(dlq_pattern("events"), "events:{*}:dlq");
        assert_eq!(dlq_pattern(r"a\b"), r"a\\b:{*}:dlq");
        assert_eq!(dlq_pattern("a*b?[c]"), r"a\*b\?\[c\]:{*}:dlq");
    }

    #[test]
    fn parses_range_replies() {
        let reply = Value::Array(vec![
            Value::Array(vec![
                bulk("1-0"),
                Value::Array(vec![
                    bulk("handler"),
                    bulk("h"),
                    bulk("attempts"),
                    Value::Int(3),
                ]),
            ]),
            Value::Array(vec![
                bulk("2-0"),
                Value::Map(vec![(bulk("error"), bulk("boom"))]),
            ]),
        ]);
        let entries = parse_range(reply);
        assert_eq!(entries.len(), 2);
        assert_eq!(entries[0].id, "1-0");
        assert_eq!(entries[0].field("handler"), Some(&b"h"[..]));
        assert_eq!(entries[0].field("attempts"), Some(&b"3"[..]));
        assert_eq!(entries[1].field("error"), Some(&b"boom"[..]));
        assert!(parse_range(Value::Nil).is_empty());
    }
}
