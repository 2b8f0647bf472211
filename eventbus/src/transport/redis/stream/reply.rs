//! Parsing stream replies from raw values (entries by bytes), so one odd entry cannot fail a
//! whole page.

use redis::Value;

use crate::transport::source::{AutoClaimed, Entry};

/// An entry out of a reply: `[id, [field, value, ...]]` (or the fields as a map), or `[id, nil]`
/// for an entry deleted while pending (then without fields).
pub(crate) fn entry(v: Value) -> Option<Entry> {
    let Value::Array(parts) = v else { return None };
    let mut parts = parts.into_iter();
    let id = into_string(parts.next()?)?;
    let mut fields = Vec::new();
    let mut add = |k: Value, v: Value| {
        if let (Some(k), Some(v)) = (into_bytes(k), into_bytes(v)) {
            fields.push((k, v));
        }
    };
    match parts.next() {
        Some(Value::Array(kv)) => {
            let mut kv = kv.into_iter();
            while let (Some(k), Some(v)) = (kv.next(), kv.next()) {
                add(k, v);
            }
        }
        // Fields as a map (a RESP3 server may answer so).
        Some(Value::Map(kv)) => kv.into_iter().for_each(|(k, v)| add(k, v)),
        _ => {}
    }
    Some(Entry { id, fields })
}

/// An XAUTOCLAIM reply: `[next id, [entry, ...], [deleted id, ...]]` (Redis 7).
pub(crate) fn autoclaim(reply: Value) -> AutoClaimed {
    let mut parts = match reply {
        Value::Array(parts) => parts.into_iter(),
        _ => Vec::new().into_iter(),
    };
    let next = parts.next().and_then(into_string).unwrap_or_default();
    let list = |v: Option<Value>| match v {
        Some(Value::Array(items)) => items,
        _ => Vec::new(),
    };
    let entries = list(parts.next()).into_iter().filter_map(entry).collect();
    let deleted = list(parts.next())
        .into_iter()
        .filter_map(into_string)
        .collect();
    AutoClaimed {
        next,
        entries,
        deleted,
    }
}

pub(crate) fn into_bytes(v: Value) -> Option<Vec<u8>> {
    match v {
        Value::BulkString(b) => Some(b),
        Value::SimpleString(s) => Some(s.into_bytes()),
        Value::Int(i) => Some(i.to_string().into_bytes()),
        _ => None,
    }
}

pub(crate) fn into_string(v: Value) -> Option<String> {
    into_bytes(v).and_then(|b| String::from_utf8(b).ok())
}

/// An XREADGROUP reply for one stream: `nil`, `[[key, [entry, ...]]]` (RESP2) or
/// `{key: [entry, ...]}` (RESP3).
pub(crate) fn read(reply: Value) -> Vec<Entry> {
    let entries = match reply {
        Value::Array(streams) => streams
            .into_iter()
            .filter_map(|s| match s {
                Value::Array(mut kv) if kv.len() == 2 => kv.pop(),
                _ => None,
            })
            .collect::<Vec<_>>(),
        Value::Map(streams) => streams.into_iter().map(|(_, v)| v).collect(),
        _ => Vec::new(),
    };
    entries
        .into_iter()
        .flat_map(|list| match list {
            Value::Array(items) => items,
            _ => Vec::new(),
        })
        .filter_map(entry)
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn bulk(s: &str) -> Value {
        Value::BulkString(s.as_bytes().to_vec())
    }

    #[test]
    fn parses_resp2_read_replies_with_deleted_entries() {
        let reply = Value::Array(vec![Value::Array(vec![
            bulk("events:{a}"),
            Value::Array(vec![
                Value::Array(vec![
                    bulk("1-0"),
                    Value::Array(vec![bulk("envelope"), bulk("{}")]),
                ]),
                Value::Array(vec![bulk("2-0"), Value::Nil]),
            ]),
        ])]);
        let entries = read(reply);
        assert_eq!(entries.len(), 2);
        assert_eq!(entries[0].id, "1-0");
        assert_eq!(entries[0].field("envelope"), Some(&b"{}"[..]));
        assert_eq!(entries[0].field("handler"), None);
        assert!(entries[1].fields.is_empty());
        assert!(read(Value::Nil).is_empty());
    }

    #[test]
    fn parses_resp3_read_replies() {
        let reply = Value::Map(vec![(
            bulk("events:{a}"),
            Value::Array(vec![Value::Array(vec![
                bulk("1-0"),
                Value::Array(vec![
                    bulk("envelope"),
                    bulk("x"),
                    bulk("handler"),
                    bulk("h"),
                ]),
            ])]),
        )]);
        let entries = read(reply);
        assert_eq!(entries[0].field("handler"), Some(&b"h"[..]));
    }
}
