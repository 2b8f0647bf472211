//! Hashes of integers: the attempts hash (`HINCRBY`, `HMGET`, `HDEL`, `HLEN`). As in Redis, a
//! hash disappears with its last field, and a key holding a stream is not a hash (`WRONGTYPE`).

use std::collections::BTreeMap;

use super::{Memory, Value, err};
use crate::error::TransportError;

/// One hash: field → integer value (the only values the runtime writes).
#[derive(Debug, Default)]
pub(super) struct Hash {
    /// The fields, by name.
    fields: BTreeMap<String, i64>,
}

impl super::State {
    /// `HDEL <key> <fields...>` inside another step (the dead-letter script): how many fields
    /// were removed; the key goes with its last field.
    pub(super) fn hdel(&mut self, key: &str, fields: &[&str]) -> Result<usize, TransportError> {
        let h = match self.keys.get_mut(key) {
            None => return Ok(0),
            Some(Value::Hash(h)) => h,
            Some(Value::Stream(_)) => return Err(super::wrong_type()),
        };
        let removed = fields
            .iter()
            .filter(|f| h.fields.remove(**f).is_some())
            .count();
        if h.fields.is_empty() {
            self.keys.remove(key);
        }
        Ok(removed)
    }
}

impl Memory {
    /// `HINCRBY <key> <field> <by>`: adds `by` to the field (a missing field counts as 0,
    /// a missing key is created); returns the new value.
    ///
    /// # Errors
    ///
    /// `WRONGTYPE` when the key is not a hash; `ERR` when the result would overflow an `i64`
    /// (nothing changes).
    pub(crate) fn hincrby(&self, key: &str, field: &str, by: i64) -> Result<i64, TransportError> {
        let mut state = self.lock();
        let value = state
            .hash(key)?
            .and_then(|h| h.fields.get(field).copied())
            .unwrap_or(0)
            .checked_add(by)
            .ok_or_else(|| err("increment or decrement would overflow"))?;
        state
            .hash_or_create(key)?
            .fields
            .insert(field.to_owned(), value);
        Ok(value)
    }

    /// `HMGET <key> <fields...>`: each field's value, `None` when it (or the key) is missing.
    ///
    /// # Errors
    ///
    /// `WRONGTYPE` when the key is not a hash.
    pub(crate) fn hmget(
        &self,
        key: &str,
        fields: &[String],
    ) -> Result<Vec<Option<i64>>, TransportError> {
        let state = self.lock();
        let h = state.hash(key)?;
        Ok(fields
            .iter()
            .map(|f| h.and_then(|h| h.fields.get(f).copied()))
            .collect())
    }

    /// The sum of every field of hash `key` (0 when it is missing or not a hash).
    pub(crate) fn hsum(&self, key: &str) -> i64 {
        match self.lock().hash(key) {
            Ok(Some(h)) => h.fields.values().sum(),
            _ => 0,
        }
    }

    /// `HDEL <key> <fields...>`: removes the fields; returns how many existed. The key goes
    /// with its last field.
    ///
    /// # Errors
    ///
    /// `WRONGTYPE` when the key is not a hash.
    pub(crate) fn hdel(&self, key: &str, fields: &[String]) -> Result<usize, TransportError> {
        let fields: Vec<&str> = fields.iter().map(String::as_str).collect();
        self.lock().hdel(key, &fields)
    }

    /// `HLEN <key>`: the number of fields; 0 when the key is missing or not a hash.
    #[cfg(test)]
    pub(crate) fn hlen(&self, key: &str) -> usize {
        match self.lock().hash(key) {
            Ok(Some(h)) => h.fields.len(),
            _ => 0,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn names(v: &[&str]) -> Vec<String> {
        v.iter().map(|s| (*s).to_owned()).collect()
    }

    #[test]
    fn hincrby_hmget_hdel_hlen() -> Result<(), TransportError> {
        let m = Memory::new();
        assert_eq!(m.hincrby("h", "a", 1)?, 1);
        assert_eq!(m.hincrby("h", "a", 2)?, 3);
        assert_eq!(m.hincrby("h", "b", -1)?, -1);
        assert_eq!(m.hlen("h"), 2);
        assert_eq!(
            m.hmget("h", &names(&["a", "b", "c"]))?,
            vec![Some(3), Some(-1), None]
        );
        assert_eq!(m.hmget("missing", &names(&["a"]))?, vec![None]);
        assert_eq!(m.hdel("h", &names(&["a", "c"]))?, 1);
        assert_eq!(m.hlen("h"), 1);
        assert_eq!(m.hdel("missing", &names(&["a"]))?, 0);
        Ok(())
    }

    #[test]
    fn a_hash_goes_with_its_last_field() -> Result<(), TransportError> {
        let m = Memory::new();
        m.hincrby("h", "a", 1)?;
        assert_eq!(m.keys(), vec!["h".to_owned()]);
        assert_eq!(m.hdel("h", &names(&["a"]))?, 1);
        assert!(m.keys().is_empty());
        assert_eq!(m.hlen("h"), 0);
        Ok(())
    }

    #[test]
    fn overflow_is_refused_and_changes_nothing() -> Result<(), TransportError> {
        let m = Memory::new();
        let e = m
            .hincrby("h", "a", i64::MIN)
            .and_then(|_| m.hincrby("h", "a", -1));
        assert_eq!(e.expect_err("overflow").code(), Some("ERR"));
        assert_eq!(m.hmget("h", &names(&["a"]))?, vec![Some(i64::MIN)]);
        m.hincrby("h", "b", i64::MAX)?;
        assert!(m.hincrby("h", "b", 1).is_err());
        assert_eq!(m.hmget("h", &names(&["b"]))?, vec![Some(i64::MAX)]);
        Ok(())
    }

    #[test]
    fn wrongtype_on_a_stream() {
        let m = Memory::new();
        m.group_create("s", "g").expect("group");
        assert_eq!(
            m.hincrby("s", "a", 1).expect_err("stream").code(),
            Some("WRONGTYPE")
        );
        assert_eq!(m.hlen("s"), 0);
        // The stream is untouched.
        assert_eq!(m.groups("s"), vec!["g".to_owned()]);
    }
}
