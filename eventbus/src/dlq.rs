//! Dead letters: written together with the ack in one server-side step, listed, replayed
//! atomically, removed.
//!
//! Every write here is a Lua script run in the event's hash slot (`<ns>:{<event>}`, its `:dlq`
//! and `:attempts` keys share the slot), because `MULTI`/`EXEC` runs the `XACK` even when the
//! `XADD` of the dead letter fails at run time (`WRONGTYPE`): only a script can stop halfway
//! *before* the ack. Scripts go out as `EVALSHA`, and as `EVAL` (which also caches them) when
//! the server answers `NOSCRIPT`: the ACL needs `+evalsha +eval`, plus the commands the scripts
//! call (`xpending xadd xack hdel xrange xinfo|groups xdel publish`).

use std::collections::HashMap;
use std::sync::{Arc, LazyLock};
use std::time::SystemTime;

use redis::streams::StreamRangeReply;
use redis::{Script, Value};

use crate::bus::BusInner;
use crate::envelope::{self, EventId};
use crate::error::{Error, Result};
use crate::transport::keys::EventKeys;
use crate::transport::redis::script::{Lua, push};
use crate::transport::{self, SharedConn};

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

/// One dead letter: an event a handler could not handle, with why.
#[derive(Debug, Clone)]
#[non_exhaustive]
pub struct DeadLetter {
    /// The dead letter's own id: `<event name>/<dead-letter stream entry id>`.
    pub id: String,
    /// The event's id, when its envelope could be read.
    pub event_id: Option<EventId>,
    /// The event name (the stream it came from).
    pub event_name: String,
    /// The handler (consumer group) that gave up.
    pub handler: String,
    /// The last error, or why the event was rejected without running the handler.
    pub error: String,
    /// Handler attempts made (0 when rejected before the first one).
    pub attempts: u32,
    /// When it was dead-lettered.
    pub failed_at: SystemTime,
    /// The original envelope; a JSON string holding the raw text when it was not valid JSON.
    pub envelope: serde_json::Value,
    /// The id of the original entry in the event stream.
    pub stream_id: String,
}

/// The dead letters of one namespace; from [`Bus::dlq`](crate::Bus::dlq).
///
/// ```no_run
/// # async fn run(bus: eventbus::Bus) -> eventbus::Result<()> {
/// for letter in bus.dlq().list(100).await? {
///     println!("{} {} failed {} times: {}", letter.id, letter.handler, letter.attempts, letter.error);
///     bus.dlq().replay(&letter.id).await?; // back to that handler only
/// }
/// # Ok(()) }
/// ```
#[derive(Debug, Clone)]
pub struct DeadLetters {
    bus: Arc<BusInner>,
}

impl DeadLetters {
    pub(crate) fn new(bus: Arc<BusInner>) -> Self {
        Self { bus }
    }

    fn conn(&self) -> SharedConn {
        self.bus.conn.clone()
    }

    /// Every dead-letter stream of the namespace, and the event of each: `SCAN` with the
    /// namespace escaped in the pattern, then only the keys that are exactly
    /// `<namespace>:{<event name>}:dlq` (another namespace's keys can match a pattern).
    async fn keys(&self) -> Result<Vec<(String, String)>> {
        let namespace = &self.bus.config.namespace;
        let pattern = dlq_pattern(namespace);
        let mut conn = self.conn();
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
                .map_err(crate::transport::redis::errors::to_error("SCAN"))?;
            keys.extend(batch.into_iter().filter_map(|key| {
                let event = event_of_key(namespace, &key)?.to_owned();
                Some((key, event))
            }));
            if next == 0 {
                break;
            }
            cursor = next;
        }
        keys.sort();
        keys.dedup();
        Ok(keys)
    }

    /// Up to `limit` dead letters, oldest first, across every event of the namespace.
    ///
    /// # Errors
    ///
    /// [`Error::Transport`] when Redis fails.
    pub async fn list(&self, limit: usize) -> Result<Vec<DeadLetter>> {
        let mut all = Vec::new();
        let mut conn = self.conn();
        for (key, event) in self.keys().await? {
            let reply: StreamRangeReply = redis::cmd("XRANGE")
                .arg(&key)
                .arg("-")
                .arg("+")
                .arg("COUNT")
                .arg(limit)
                .query_async(&mut conn)
                .await
                .map_err(crate::transport::redis::errors::to_error("XRANGE"))?;
            all.extend(reply.ids.into_iter().map(|e| parse(&event, &e.id, &e.map)));
        }
        all.sort_by(|a, b| (a.failed_at, &a.id).cmp(&(b.failed_at, &b.id)));
        all.truncate(limit);
        Ok(all)
    }

    /// Redelivers a dead letter to the handler that gave up on it, and to no other handler,
    /// then removes it. The event keeps its id.
    ///
    /// Atomic: the check that the letter still exists, the redelivery and the removal are one
    /// server-side step, so of two concurrent replays of one letter exactly one redelivers it;
    /// the other gets [`Error::DeadLetterNotFound`].
    ///
    /// - A durable letter is appended to the event's stream (with `MAXLEN ~` when `max_len` is
    ///   set), marked for its handler. It is refused, and kept, when that handler has no
    ///   consumer group on the stream (nothing would ever read it for that handler).
    /// - A broadcast letter is published again on its channel, marked for its handler: it runs
    ///   in every bus instance subscribed at that moment. It is removed only when at least one
    ///   subscriber received it; with none, it is kept and this returns [`Error::Replay`].
    ///
    /// # Errors
    ///
    /// [`Error::DeadLetterNotFound`] (also when a concurrent replay or `remove` got there
    /// first); [`Error::Replay`] when its envelope was never a valid event (fix the producer and
    /// publish again instead), when nothing could receive it (no group or stream; no
    /// subscriber): the letter is kept, start the service and replay again; or [`Error::Transport`].
    pub async fn replay(&self, id: &str) -> Result<()> {
        let (key, entry, event) = self.locate(id)?;
        let mut conn = self.conn();
        let reply: StreamRangeReply = redis::cmd("XRANGE")
            .arg(&key)
            .arg(entry)
            .arg(entry)
            .query_async(&mut conn)
            .await
            .map_err(crate::transport::redis::errors::to_error("XRANGE"))?;
        let Some(found) = reply.ids.into_iter().next() else {
            return Err(Error::DeadLetterNotFound(id.to_owned()));
        };
        let text = |name: &str| found.map.get(name).and_then(as_text).unwrap_or_default();
        let raw = text("envelope");
        let handler = text("handler");
        if handler.is_empty() {
            return Err(Error::Replay {
                id: id.to_owned(),
                reason: "it names no handler".to_owned(),
            });
        }
        if let Err(rejected) = envelope::decode(&raw) {
            return Err(Error::Replay {
                id: id.to_owned(),
                reason: format!("its envelope is not a valid event: {rejected}"),
            });
        }
        if text("delivery") == "broadcast" {
            return self
                .replay_broadcast(id, &key, entry, event, &raw, &handler)
                .await;
        }
        let EventKeys { stream, .. } = EventKeys::new(&self.bus.config.namespace, event);
        let mut args = Vec::with_capacity(4);
        push(&mut args, entry);
        push(&mut args, &handler);
        push(&mut args, &raw);
        push(
            &mut args,
            self.bus
                .config
                .max_len
                .map(|n| n.to_string())
                .unwrap_or_default(),
        );
        let code: i64 = REPLAY
            .run(&mut conn, &[&key, &stream], &args)
            .await
            .map_err(crate::transport::redis::errors::to_error(
                "EVALSHA (replay)",
            ))?;
        match code {
            1 => {
                tracing::info!(dead_letter = id, handler = %handler, "dead letter replayed");
                Ok(())
            }
            0 => Err(Error::DeadLetterNotFound(id.to_owned())),
            -1 => Err(Error::Replay {
                id: id.to_owned(),
                reason: format!(
                    "the stream `{stream}` does not exist, so handler `{handler}` could not receive it; the dead letter is kept: start a service that runs `{handler}` (it creates the stream and the group) and replay again"
                ),
            }),
            _ => Err(Error::Replay {
                id: id.to_owned(),
                reason: format!(
                    "handler `{handler}` has no consumer group on the stream `{stream}`, so nothing would ever read it; the dead letter is kept: start a service that runs `{handler}` (it creates its group) and replay again"
                ),
            }),
        }
    }

    /// A broadcast dead letter is published again on its channel, marked (extension attribute
    /// `eventbushandler`) for the handler that gave up: that handler runs it in every bus
    /// instance subscribed now; other handlers skip it. At most once, like any broadcast; the
    /// letter is removed only when some subscriber received it.
    async fn replay_broadcast(
        &self,
        id: &str,
        key: &str,
        entry: &str,
        event: &str,
        raw: &str,
        handler: &str,
    ) -> Result<()> {
        let mut envelope: serde_json::Map<String, serde_json::Value> = serde_json::from_str(raw)
            .map_err(|e| Error::Replay {
                id: id.to_owned(),
                reason: format!("its envelope is not a JSON object: {e}"),
            })?;
        envelope.insert(envelope::ATTR_HANDLER.to_owned(), handler.into());
        let payload = serde_json::Value::Object(envelope).to_string();
        let channel = transport::channel_key(&self.bus.config.namespace, event);
        let mut conn = self.conn();
        let mut args = Vec::with_capacity(3);
        push(&mut args, entry);
        push(&mut args, &channel);
        push(&mut args, &payload);
        let receivers: i64 = REPLAY_BROADCAST
            .run(&mut conn, &[key], &args)
            .await
            .map_err(crate::transport::redis::errors::to_error(
                "EVALSHA (replay)",
            ))?;
        match receivers {
            r if r < 0 => Err(Error::DeadLetterNotFound(id.to_owned())),
            0 => Err(Error::Replay {
                id: id.to_owned(),
                reason: format!(
                    "no subscriber of channel `{channel}` is listening, so handler `{handler}` could not receive it; the dead letter is kept: start a service that runs `{handler}` and replay again"
                ),
            }),
            r => {
                tracing::info!(dead_letter = id, handler = %handler, receivers = r, "broadcast dead letter republished");
                Ok(())
            }
        }
    }

    /// Deletes one dead letter.
    ///
    /// # Errors
    ///
    /// [`Error::DeadLetterNotFound`] or [`Error::Transport`].
    pub async fn remove(&self, id: &str) -> Result<()> {
        let (key, entry, _) = self.locate(id)?;
        let mut conn = self.conn();
        let n: i64 = redis::cmd("XDEL")
            .arg(&key)
            .arg(entry)
            .query_async(&mut conn)
            .await
            .map_err(crate::transport::redis::errors::to_error("XDEL"))?;
        if n == 0 {
            return Err(Error::DeadLetterNotFound(id.to_owned()));
        }
        Ok(())
    }

    /// Deletes every dead letter of the namespace, and only of this namespace; returns how many
    /// there were.
    ///
    /// # Errors
    ///
    /// [`Error::Transport`] when Redis fails.
    pub async fn purge(&self) -> Result<usize> {
        let mut conn = self.conn();
        let mut total = 0;
        for (key, _) in self.keys().await? {
            let (len, _): (usize, i64) = redis::pipe()
                .atomic()
                .cmd("XLEN")
                .arg(&key)
                .cmd("DEL")
                .arg(&key)
                .query_async(&mut conn)
                .await
                .map_err(crate::transport::redis::errors::to_error("DEL"))?;
            total += len;
        }
        Ok(total)
    }

    /// The dead-letter key, entry id and event of a dead letter's id.
    fn locate<'a>(&self, id: &'a str) -> Result<(String, &'a str, &'a str)> {
        let (event, entry) = id
            .rsplit_once('/')
            .ok_or_else(|| Error::DeadLetterNotFound(id.to_owned()))?;
        if !is_event_name(event) || entry.is_empty() {
            return Err(Error::DeadLetterNotFound(id.to_owned()));
        }
        Ok((
            transport::dlq_key(&self.bus.config.namespace, event),
            entry,
            event,
        ))
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

/// The event of `key` when it is exactly a dead-letter key of `namespace`
/// (`<namespace>:{<event name>}:dlq`, with a valid event name).
fn event_of_key<'a>(namespace: &str, key: &'a str) -> Option<&'a str> {
    transport::event_of_dlq_key(namespace, key).filter(|event| is_event_name(event))
}

/// An event name: non-empty, only ASCII letters, digits, `.`, `_` and `-` (what
/// `#[event(name)]` accepts; docs/WIRE.md).
fn is_event_name(name: &str) -> bool {
    !name.is_empty()
        && name
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || matches!(c, '.' | '_' | '-'))
}

fn as_text(v: &Value) -> Option<String> {
    match v {
        Value::BulkString(b) => Some(String::from_utf8_lossy(b).into_owned()),
        Value::SimpleString(s) => Some(s.clone()),
        Value::Int(i) => Some(i.to_string()),
        _ => None,
    }
}

fn parse(event: &str, entry: &str, map: &HashMap<String, Value>) -> DeadLetter {
    let text = |name: &str| map.get(name).and_then(as_text).unwrap_or_default();
    let raw = text("envelope");
    let failed_at =
        humantime::parse_rfc3339_weak(&text("failed_at")).unwrap_or(SystemTime::UNIX_EPOCH);
    DeadLetter {
        id: format!("{event}/{entry}"),
        event_id: Some(text("event_id"))
            .filter(|s| !s.is_empty())
            .map(EventId::from),
        event_name: event.to_owned(),
        handler: text("handler"),
        error: text("error"),
        attempts: text("attempts").parse().unwrap_or(0),
        failed_at,
        envelope: serde_json::from_str(&raw).unwrap_or(serde_json::Value::String(raw)),
        stream_id: text("stream_id"),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_scan_pattern_escapes_glob_characters_of_the_namespace() {
        assert_eq!(dlq_pattern("events"), "events:{*}:dlq");
        assert_eq!(dlq_pattern(r"a\b"), r"a\\b:{*}:dlq");
        assert_eq!(dlq_pattern("a*b?[c]"), r"a\*b\?\[c\]:{*}:dlq");
    }

    #[test]
    fn only_exact_dead_letter_keys_of_the_namespace_are_taken() {
        assert_eq!(
            event_of_key("ns", "ns:{chat.created}:dlq"),
            Some("chat.created")
        );
        assert_eq!(event_of_key(r"a\b", r"a\b:{x}:dlq"), Some("x"));
        assert_eq!(event_of_key(r"a\b", "ab:{x}:dlq"), None);
        assert_eq!(event_of_key("ns", "nsx:{x}:dlq"), None);
        assert_eq!(
            event_of_key("ns", "ns:{a}:{b}:dlq"),
            None,
            "not an event name"
        );
        assert_eq!(event_of_key("ns", "ns:{}:dlq"), None);
        assert_eq!(event_of_key("ns", "ns:{x}:attempts"), None);
    }

    #[test]
    fn dead_letter_keys_share_the_event_slot() {
        let keys = EventKeys::new("ns", "chat.created");
        assert_eq!(keys.stream, "ns:{chat.created}");
        assert_eq!(keys.dlq, "ns:{chat.created}:dlq");
        assert_eq!(keys.attempts, "ns:{chat.created}:attempts");
    }
}
