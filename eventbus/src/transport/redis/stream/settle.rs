//! Settling entries: the dead-letter write that acks its original in one step.

use std::sync::LazyLock;

use redis::Script;

use crate::transport::keys::{EventKeys, attempts_field};
use crate::transport::redis::conn::SharedConn;
use crate::transport::redis::script::{Lua, push};
use crate::transport::settle::{Letter, Written};

/// `write_letter` for a durable entry. KEYS: stream, dlq, attempts. ARGV: group, entry id,
/// attempts field, then the dead letter's field/value pairs. Returns 1 (written) or 0 (the
/// entry is not pending for the group: nothing written). When the `XADD` fails (`WRONGTYPE`,
/// `OOM`, ...) the script stops with that error before the `XACK`: the original stays pending.
const WRITE_LUA: &str = r#"
local pending = redis.pcall('XPENDING', KEYS[1], ARGV[1], ARGV[2], ARGV[2], 1)
if type(pending) == 'table' and pending.err then
  if string.sub(pending.err, 1, 8) == 'NOGROUP ' then
    return 0
  end
  return pending
end
if #pending == 0 then
  return 0
end
redis.call('XADD', KEYS[2], '*', unpack(ARGV, 4))
redis.call('XACK', KEYS[1], ARGV[1], ARGV[2])
redis.pcall('HDEL', KEYS[3], ARGV[3])
return 1
"#;

pub(crate) static WRITE: Lua = Lua {
    source: WRITE_LUA,
    script: LazyLock::new(|| Script::new(WRITE_LUA)),
};

/// Writes one dead letter for `handler`.
///
/// - Durable entry (`ack` = `Some(entry id)`): one Lua script in the event's slot. If the entry
///   is not pending for the handler's group (`XPENDING <stream> <group> <id> <id> 1` is empty),
///   it writes nothing and returns [`Written::AlreadySettled`]: a retry after a lost reply, or a
///   second consumer that exhausted the same entry, cannot write a second letter. Otherwise it
///   `XADD`s the dead letter, `XACK`s the original and `HDEL`s its charged attempts
///   ([`attempts_field`]), and returns [`Written::Letter`]. When the `XADD` fails at
///   run time (`WRONGTYPE`, `OOM`, ACL) the script stops before the `XACK` and this returns the
///   error: the original stays pending, so retrying the call later is safe.
/// - Broadcast (`ack` = `None`): a plain `XADD` of the letter; always [`Written::Letter`].
///
/// The dead letter's fields are `event_id event_name handler error attempts failed_at stream_id
/// delivery envelope`, in that order (docs/WIRE.md).
///
/// # Errors
///
/// The Redis error; nothing was acked. Retry with backoff.
pub(crate) async fn write_letter(
    conn: &mut SharedConn,
    keys: &EventKeys,
    group: &str,
    ack: Option<&str>,
    letter: &Letter<'_>,
) -> redis::RedisResult<Written> {
    let Some(id) = ack else {
        let mut add = redis::cmd("XADD");
        add.arg(&keys.dlq).arg("*");
        letter.with_fields(None, |fields| {
            for (name, value) in fields {
                add.arg(*name).arg(*value);
            }
        });
        add.query_async::<()>(conn).await?;
        return Ok(Written::Letter);
    };
    let mut args = Vec::with_capacity(3 + 2 * 9);
    push(&mut args, group);
    push(&mut args, id);
    push(&mut args, attempts_field(group, id));
    letter.with_fields(Some(id), |fields| {
        for (name, value) in fields {
            push(&mut args, *name);
            push(&mut args, *value);
        }
    });
    let written: i64 = WRITE
        .run(conn, &[&keys.stream, &keys.dlq, &keys.attempts], &args)
        .await?;
    Ok(if written == 1 {
        Written::Letter
    } else {
        Written::AlreadySettled
    })
}
