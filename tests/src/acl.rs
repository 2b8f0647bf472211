//! ACL and server-statistics helpers for permission and fault tests.

use std::collections::HashMap;

/// `ACL SETUSER <name> reset <rules...>`: replaces the user's rules entirely.
///
/// # Panics
///
/// When Redis rejects a rule.
pub async fn set_user(conn: &mut redis::aio::MultiplexedConnection, name: &str, rules: &[&str]) {
    let mut cmd = redis::cmd("ACL");
    cmd.arg("SETUSER").arg(name).arg("reset");
    for r in rules {
        cmd.arg(*r);
    }
    cmd.query_async::<()>(conn)
        .await
        .unwrap_or_else(|e| panic!("ACL SETUSER {name} {rules:?}: {e}"));
}

/// `ACL SETUSER <name> <rules...>`: adds rules to the user's current ones.
///
/// # Panics
///
/// When Redis rejects a rule.
pub async fn add_rules(conn: &mut redis::aio::MultiplexedConnection, name: &str, rules: &[&str]) {
    let mut cmd = redis::cmd("ACL");
    cmd.arg("SETUSER").arg(name);
    for r in rules {
        cmd.arg(*r);
    }
    cmd.query_async::<()>(conn)
        .await
        .unwrap_or_else(|e| panic!("ACL SETUSER {name} {rules:?}: {e}"));
}

/// One `ACL LOG` entry: its fields as text (`reason`, `context`, `object`, `username`, `count`).
pub type AclLogEntry = HashMap<String, String>;

/// `ACL LOG`: the recent permission denials, newest first.
///
/// # Panics
///
/// When Redis fails.
pub async fn log(conn: &mut redis::aio::MultiplexedConnection) -> Vec<AclLogEntry> {
    let entries: Vec<redis::Value> = redis::cmd("ACL")
        .arg("LOG")
        .query_async(conn)
        .await
        .expect("ACL LOG");
    entries
        .into_iter()
        .map(|e| {
            let pairs: Vec<(String, redis::Value)> = match e {
                redis::Value::Array(items) => items
                    .chunks(2)
                    .filter_map(|kv| match kv {
                        [k, v] => Some((text(k), v.clone())),
                        _ => None,
                    })
                    .collect(),
                redis::Value::Map(items) => items.into_iter().map(|(k, v)| (text(&k), v)).collect(),
                other => panic!("unexpected ACL LOG entry {other:?}"),
            };
            pairs.into_iter().map(|(k, v)| (k, text(&v))).collect()
        })
        .collect()
}

/// `ACL LOG RESET`.
///
/// # Panics
///
/// When Redis fails.
pub async fn reset_log(conn: &mut redis::aio::MultiplexedConnection) {
    redis::cmd("ACL")
        .arg("LOG")
        .arg("RESET")
        .query_async::<()>(conn)
        .await
        .expect("ACL LOG RESET");
}

fn text(v: &redis::Value) -> String {
    match v {
        redis::Value::BulkString(b) => String::from_utf8_lossy(b).into_owned(),
        redis::Value::SimpleString(s) => s.clone(),
        redis::Value::Int(i) => i.to_string(),
        redis::Value::Double(d) => d.to_string(),
        other => format!("{other:?}"),
    }
}

/// How many error replies of one kind (`"NOPERM"`, `"OOM"`, `"EXECABORT"`, ...) the server has
/// sent since it started (`INFO errorstats`).
///
/// # Panics
///
/// When Redis fails.
pub async fn error_count(conn: &mut redis::aio::MultiplexedConnection, code: &str) -> u64 {
    let info: String = redis::cmd("INFO")
        .arg("errorstats")
        .query_async(conn)
        .await
        .expect("INFO errorstats");
    let prefix = format!("errorstat_{code}:count=");
    info.lines()
        .find_map(|l| l.strip_prefix(&prefix))
        .map(|n| {
            n.trim()
                .split(',')
                .next()
                .unwrap_or("0")
                .parse()
                .unwrap_or(0)
        })
        .unwrap_or(0)
}

/// How many times the server ran a command (`INFO commandstats`; `"xautoclaim"`,
/// `"client|id"`, ...).
///
/// # Panics
///
/// When Redis fails.
pub async fn command_calls(conn: &mut redis::aio::MultiplexedConnection, command: &str) -> u64 {
    let info: String = redis::cmd("INFO")
        .arg("commandstats")
        .query_async(conn)
        .await
        .expect("INFO commandstats");
    let prefix = format!("cmdstat_{}:calls=", command.to_ascii_lowercase());
    info.lines()
        .find_map(|l| l.strip_prefix(&prefix))
        .map(|rest| rest.split(',').next().unwrap_or("0").parse().unwrap_or(0))
        .unwrap_or(0)
}
