//! An in-process store with the semantics of the subset of Redis the runtime uses (feature
//! `testing`), so that a test bus running over it means the same thing as over Redis: streams
//! with `<ms>-<seq>` ids, consumer groups with their pending lists (owner, delivery count, idle
//! time), `XCLAIM`/`XAUTOCLAIM`, the attempts hash, the dead-letter and replay scripts as single
//! atomic steps, and Pub/Sub that loses what nobody listens to.
//!
//! Every key lives in one keyspace, named as the Redis backend names it
//! ([`crate::transport::keys`]): a key holding a stream cannot be used as a hash, and the other
//! way round (`WRONGTYPE`). Idle and delivery times use [`tokio::time::Instant`], so under
//! `tokio::time::pause()` blocking reads, idle times and claims are instant and deterministic.
//!
//! Split by concept: [`stream`] (entries, ids, trims), [`group`] (groups, pending lists, reads,
//! claims, acks), [`hash`], [`dead_letters`] and [`pubsub`]. Each adds its commands to
//! [`Memory`].
//!
//! Where a command's behaviour depends on the Redis version, this follows Redis 7.0 (the version
//! the project's notes were probed on): `XAUTOCLAIM` reports deleted ids, `XCLAIM` drops them.

mod admin;
mod dead_letters;
mod group;
mod hash;
pub(crate) mod publish;
mod pubsub;
mod stream;
pub(crate) mod stream_ops;

use std::collections::{BTreeMap, HashMap};
use std::sync::{Arc, Mutex, MutexGuard, PoisonError};

use tokio::sync::Notify;

use crate::error::{TransportError, TransportErrorKind};

pub(crate) use self::dead_letters::DurableRef;
pub(crate) use self::group::ReadFrom;
pub(crate) use self::pubsub::Subscription;

use self::hash::Hash;
use self::stream::Stream;

/// A handle on one in-memory store. Cheap to clone: every clone sees and changes the same data,
/// like several connections to one Redis server.
#[derive(Debug, Clone, Default)]
pub(crate) struct Memory {
    /// The data, behind a std mutex that is never held across an await.
    state: Arc<Mutex<State>>,
    /// What [`Health`](crate::Health) reports of the "connection": always up.
    stats: Arc<crate::telemetry::ConnStats>,
    /// Set when the process using this handle "crashed" ([`kill`](Self::kill)): the seam then
    /// refuses its commands, as a dead process's connection sends nothing more.
    pub(super) dead: Arc<std::sync::atomic::AtomicBool>,
    /// How many of this session's next acks fail (fault injection for one consumer).
    failing_acks: Arc<std::sync::atomic::AtomicUsize>,
}

/// Everything the store holds.
#[derive(Debug, Default)]
struct State {
    /// The keyspace: every stream and hash by its key, in key order.
    keys: BTreeMap<String, Value>,
    /// Per stream key, what wakes readers blocked on it: notified on every append to the stream,
    /// and when the stream or one of its groups is deleted (so a blocked read can fail as
    /// Redis's does). Kept apart from `keys` so waiters survive the key's deletion.
    wakers: HashMap<String, Arc<Notify>>,
    /// How many of the next [`Memory::ack`] calls fail (fault injection).
    failing_acks: usize,
    /// How many of the next [`Memory::dead_letter`] calls fail (fault injection).
    failing_dead_letters: usize,
    /// The current Pub/Sub subscriptions.
    subscribers: Vec<pubsub::Subscriber>,
}

/// The value of one key.
#[derive(Debug)]
enum Value {
    /// A stream, with its consumer groups.
    Stream(Stream),
    /// A hash of integer values (the attempts hash).
    Hash(Hash),
}

impl Memory {
    /// An empty store.
    pub(crate) fn new() -> Memory {
        Memory::default()
    }

    /// Another handle on the same data, as a new process's connection: not killed.
    pub(crate) fn session(&self) -> Memory {
        Memory {
            state: self.state.clone(),
            stats: Arc::default(),
            dead: Arc::default(),
            failing_acks: Arc::default(),
        }
    }

    /// Kills this handle (and its clones): every later command through the seam fails, as
    /// when a process dies with its connection. Other sessions are untouched.
    pub(crate) fn kill(&self) {
        self.dead.store(true, std::sync::atomic::Ordering::Release);
    }

    /// Makes this session's next `n` acks fail (kind `Connection`), as when this consumer's
    /// connection drops: other sessions' acks are untouched.
    pub(crate) fn fail_session_acks(&self, n: usize) {
        self.failing_acks
            .store(n, std::sync::atomic::Ordering::Release);
    }

    /// `Err` when this session's next ack is to fail ([`fail_session_acks`](Self::fail_session_acks)).
    pub(crate) fn session_ack_fault(&self) -> Result<(), crate::error::TransportError> {
        let take = self.failing_acks.fetch_update(
            std::sync::atomic::Ordering::AcqRel,
            std::sync::atomic::Ordering::Acquire,
            |n| n.checked_sub(1),
        );
        match take {
            Ok(_) => Err(crate::error::TransportError::new(
                crate::error::TransportErrorKind::Connection,
                "injected ack failure",
            )),
            Err(_) => Ok(()),
        }
    }

    /// `Err` once this handle was [killed](Self::kill).
    pub(crate) fn alive(&self) -> Result<(), crate::error::TransportError> {
        if self.dead.load(std::sync::atomic::Ordering::Acquire) {
            Err(crate::error::TransportError::new(
                crate::error::TransportErrorKind::Closed,
                "this consumer crashed",
            ))
        } else {
            Ok(())
        }
    }

    /// The connection counters [`Health`](crate::Health) reports.
    pub(crate) fn conn_stats(&self) -> &Arc<crate::telemetry::ConnStats> {
        &self.stats
    }

    /// The state, recovering it when a thread panicked while holding the lock: every command
    /// leaves the state consistent before anything that could panic, so it is still usable.
    fn lock(&self) -> MutexGuard<'_, State> {
        self.state.lock().unwrap_or_else(PoisonError::into_inner)
    }

    /// Deletes `key`, whatever it holds (`DEL`). A stream goes with its consumer groups, and
    /// readers blocked on it are released with an error, as Redis does. Returns whether the key
    /// existed.
    pub(crate) fn del(&self, key: &str) -> bool {
        let mut state = self.lock();
        let existed = state.keys.remove(key).is_some();
        if existed {
            state.wake(key);
        }
        existed
    }

    /// Every key, sorted (`KEYS *`). A stream stays a key when it has no entries (as after
    /// `XGROUP CREATE ... MKSTREAM`); a hash disappears with its last field.
    pub(crate) fn keys(&self) -> Vec<String> {
        self.lock().keys.keys().cloned().collect()
    }

    /// What wakes readers blocked on `stream` (created on first use).
    fn waker(&self, stream: &str) -> Arc<Notify> {
        Arc::clone(self.lock().wakers.entry(stream.to_owned()).or_default())
    }
}

impl State {
    /// The stream at `key`, if there is one; `WRONGTYPE` when the key holds something else.
    fn stream(&self, key: &str) -> Result<Option<&Stream>, TransportError> {
        match self.keys.get(key) {
            None => Ok(None),
            Some(Value::Stream(s)) => Ok(Some(s)),
            Some(_) => Err(wrong_type()),
        }
    }

    /// The stream at `key`, mutably, if there is one; `WRONGTYPE` when the key holds something
    /// else.
    fn stream_mut(&mut self, key: &str) -> Result<Option<&mut Stream>, TransportError> {
        match self.keys.get_mut(key) {
            None => Ok(None),
            Some(Value::Stream(s)) => Ok(Some(s)),
            Some(_) => Err(wrong_type()),
        }
    }

    /// The stream at `key`, created empty when the key does not exist; `WRONGTYPE` when it holds
    /// something else.
    fn stream_or_create(&mut self, key: &str) -> Result<&mut Stream, TransportError> {
        match self
            .keys
            .entry(key.to_owned())
            .or_insert_with(|| Value::Stream(Stream::default()))
        {
            Value::Stream(s) => Ok(s),
            Value::Hash(_) => Err(wrong_type()),
        }
    }

    /// The hash at `key`, if there is one; `WRONGTYPE` when the key holds something else.
    fn hash(&self, key: &str) -> Result<Option<&Hash>, TransportError> {
        match self.keys.get(key) {
            None => Ok(None),
            Some(Value::Hash(h)) => Ok(Some(h)),
            Some(_) => Err(wrong_type()),
        }
    }

    /// The hash at `key`, created empty when the key does not exist; `WRONGTYPE` when it holds
    /// something else. The caller removes it again if it leaves it empty.
    fn hash_or_create(&mut self, key: &str) -> Result<&mut Hash, TransportError> {
        match self
            .keys
            .entry(key.to_owned())
            .or_insert_with(|| Value::Hash(Hash::default()))
        {
            Value::Hash(h) => Ok(h),
            Value::Stream(_) => Err(wrong_type()),
        }
    }

    /// Wakes every reader blocked on `stream`; each checks again what it waits for.
    fn wake(&self, stream: &str) {
        if let Some(notify) = self.wakers.get(stream) {
            notify.notify_waiters();
        }
    }
}

/// Redis's answer to a command on a key of the wrong type.
fn wrong_type() -> TransportError {
    TransportError::new(
        TransportErrorKind::Rejected,
        "WRONGTYPE Operation against a key holding the wrong kind of value",
    )
    .with_code("WRONGTYPE")
}

/// Redis's answer to a group command when the stream or the group does not exist.
fn no_group(stream: &str, group: &str) -> TransportError {
    TransportError::new(
        TransportErrorKind::NoGroup,
        format!("NOGROUP No such key '{stream}' or consumer group '{group}'"),
    )
    .with_code("NOGROUP")
}

/// Redis's generic error (`ERR ...`): a bad argument.
fn err(message: &str) -> TransportError {
    TransportError::new(TransportErrorKind::Rejected, format!("ERR {message}")).with_code("ERR")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn one_keyspace_wrongtype_both_ways() {
        let m = Memory::new();
        m.xadd("s", vec![(b"f".to_vec(), b"v".to_vec())], None)
            .expect("xadd");
        let e = m.hincrby("s", "x", 1).expect_err("a stream is not a hash");
        assert_eq!(e.kind(), TransportErrorKind::Rejected);
        assert_eq!(e.code(), Some("WRONGTYPE"));
        assert!(m.hmget("s", &["x".to_owned()]).is_err());
        assert!(m.hdel("s", &["x".to_owned()]).is_err());

        m.hincrby("h", "x", 1).expect("hincrby");
        let e = m
            .xadd("h", vec![(b"f".to_vec(), b"v".to_vec())], None)
            .expect_err("a hash is not a stream");
        assert_eq!(e.code(), Some("WRONGTYPE"));
        let e = m.group_create("h", "g").expect_err("no group on a hash");
        assert_eq!(e.code(), Some("WRONGTYPE"));
        assert!(m.ack("h", "g", &["1-0".to_owned()]).is_err());
        assert!(m.pending("h", "g", None, "-", "+", 10).is_err());
        assert_eq!(m.keys(), vec!["h".to_owned(), "s".to_owned()]);
    }

    #[test]
    fn del_removes_any_key_and_a_stream_with_its_groups() {
        let m = Memory::new();
        m.group_create("s", "g").expect("group");
        m.hincrby("h", "x", 1).expect("hincrby");
        assert!(m.del("s"));
        assert!(m.del("h"));
        assert!(!m.del("h"));
        assert!(m.keys().is_empty());
        assert!(m.groups("s").is_empty());
        // A new stream under the same key has no group.
        m.xadd("s", vec![(b"f".to_vec(), b"v".to_vec())], None)
            .expect("xadd");
        assert!(m.group_info("s", "g").is_none());
    }

    #[test]
    fn clones_share_the_store() {
        let a = Memory::new();
        let b = a.clone();
        a.hincrby("h", "x", 2).expect("hincrby");
        assert_eq!(
            b.hmget("h", &["x".to_owned()]).expect("hmget"),
            vec![Some(2)]
        );
    }

    #[test]
    fn a_poisoned_lock_is_recovered() {
        let m = Memory::new();
        m.hincrby("h", "x", 1).expect("hincrby");
        let m2 = m.clone();
        let _ = std::thread::spawn(move || {
            let _guard = m2.lock();
            panic!("poison the lock");
        })
        .join();
        assert!(m.state.is_poisoned());
        assert_eq!(m.hincrby("h", "x", 1).expect("still usable"), 2);
    }
}
