//! Dead letters and replay, each one atomic step like the Lua scripts of `crate::dlq`
//! (`WRITE_LUA`, `REPLAY_LUA`): all of it happens or none of it, and nothing else runs in
//! between.

use super::Memory;
use super::stream::{Fields, Id};
use crate::error::{TransportError, TransportErrorKind};
use crate::transport::settle::Written;

/// The durable entry a dead letter settles: it is acked in `group` of `stream`, and its charged
/// attempts (`attempts_field` of the hash `attempts_key`) deleted, in the same step as the
/// letter is written.
#[derive(Debug, Clone, Copy)]
pub(crate) struct DurableRef<'a> {
    /// The event's stream.
    pub(crate) stream: &'a str,
    /// The handler's consumer group.
    pub(crate) group: &'a str,
    /// The entry id in `stream`.
    pub(crate) id: &'a str,
    /// The attempts hash of the event.
    pub(crate) attempts_key: &'a str,
    /// The entry's field in the attempts hash.
    pub(crate) attempts_field: &'a str,
}

impl Memory {
    /// Writes one dead letter to the stream `dlq` (no `MAXLEN`), as `WRITE_LUA` does.
    ///
    /// - `durable` `Some`: if the entry is not pending for the group (acked, dead-lettered
    ///   already, or its stream or group is gone: `NOGROUP`), writes nothing and returns
    ///   [`Written::AlreadySettled`]. Otherwise, in one step: appends the letter to `dlq`, acks
    ///   the entry and deletes its attempts field (an attempts key of the wrong type is ignored,
    ///   as the script's `pcall` does) → [`Written::Letter`].
    /// - `None` (a broadcast message: nothing to ack): appends the letter → [`Written::Letter`].
    ///
    /// # Errors
    ///
    /// When the letter cannot be appended (`WRONGTYPE` on `dlq`, no fields) or the stream key
    /// is not a stream: nothing is written or acked, the entry stays pending. Kind `Rejected`
    /// with code `OOM` while [`fail_next_dead_letters`](Self::fail_next_dead_letters) is in
    /// effect.
    pub(crate) fn dead_letter(
        &self,
        dlq: &str,
        durable: Option<DurableRef<'_>>,
        fields: &[(&str, &str)],
    ) -> Result<Written, TransportError> {
        let mut state = self.lock();
        if state.failing_dead_letters > 0 {
            state.failing_dead_letters -= 1;
            return Err(TransportError::new(
                TransportErrorKind::Rejected,
                "OOM command not allowed when used memory > 'maxmemory'. (injected failure)",
            )
            .with_code("OOM"));
        }
        if let Some(d) = durable {
            match state.is_pending(d.stream, d.group, d.id) {
                Ok(true) => {}
                Ok(false) => return Ok(Written::AlreadySettled),
                Err(e) if e.kind() == TransportErrorKind::NoGroup => {
                    return Ok(Written::AlreadySettled);
                }
                Err(e) => return Err(e),
            }
        }
        let letter: Fields = fields
            .iter()
            .map(|(k, v)| (k.as_bytes().to_vec(), v.as_bytes().to_vec()))
            .collect();
        // The first write: if it fails, nothing has changed.
        state.xadd(dlq, letter, None)?;
        if let Some(d) = durable {
            state.ack(d.stream, d.group, &[d.id.to_owned()])?;
            // `redis.pcall`: a failure to delete the charges does not undo the letter.
            let _ = state.hdel(d.attempts_key, &[d.attempts_field]);
        }
        Ok(Written::Letter)
    }

    /// Makes the next `n` [`dead_letter`](Self::dead_letter) calls fail with kind `Rejected`,
    /// code `OOM`, writing nothing (fault injection). Replaces any count still left.
    pub(crate) fn fail_next_dead_letters(&self, n: usize) {
        self.lock().failing_dead_letters = n;
    }

    /// Replays a dead letter in one step, as `REPLAY_LUA` does: if `letter_id` is in `dlq`,
    /// appends `fields` to `stream` (waking its readers), deletes the letter and returns the new
    /// entry's id; `None` when there is no such letter (replayed already, or never there).
    ///
    /// Unlike the script this does not check that the handler's group exists nor trim the
    /// stream: the caller checks [`groups`](Self::groups) first, as the brief's API has no
    /// group or length argument.
    ///
    /// # Errors
    ///
    /// `WRONGTYPE` when `dlq` or `stream` is not a stream, `ERR` for a letter id that does not
    /// parse or empty `fields`: then nothing changes.
    pub(crate) fn replay(
        &self,
        dlq: &str,
        letter_id: &str,
        stream: &str,
        fields: Vec<(Vec<u8>, Vec<u8>)>,
    ) -> Result<Option<String>, TransportError> {
        let letter = Id::parse(letter_id)?;
        let mut state = self.lock();
        let present = state
            .stream(dlq)?
            .is_some_and(|s| s.entries.contains_key(&letter));
        if !present {
            return Ok(None);
        }
        let id = state.xadd(stream, fields, None)?;
        if let Ok(Some(s)) = state.stream_mut(dlq) {
            s.entries.remove(&letter);
        }
        Ok(Some(id.to_string()))
    }

    /// The broadcast replay in one step (as `REPLAY_BROADCAST_LUA`): if `letter_id` is in `dlq`,
    /// publishes `payload` on `channel` and, when some subscription received it, deletes the
    /// letter. `None` when there was no such letter; else how many received it.
    ///
    /// # Errors
    ///
    /// `WRONGTYPE` when `dlq` is not a stream, `ERR` for a letter id that does not parse.
    pub(crate) fn replay_broadcast_letter(
        &self,
        dlq: &str,
        letter_id: &str,
        channel: &str,
        payload: std::sync::Arc<[u8]>,
    ) -> Result<Option<usize>, TransportError> {
        let letter = Id::parse(letter_id)?;
        let mut state = self.lock();
        let present = state
            .stream(dlq)?
            .is_some_and(|s| s.entries.contains_key(&letter));
        if !present {
            return Ok(None);
        }
        let received = state.publish(channel, payload);
        if received > 0
            && let Ok(Some(s)) = state.stream_mut(dlq)
        {
            s.entries.remove(&letter);
        }
        Ok(Some(received))
    }
}

#[cfg(test)]
mod tests {
    use std::time::Duration;

    use tokio_util::sync::CancellationToken;

    use super::*;
    use crate::transport::memory::ReadFrom;
    use crate::transport::{attempts_field, attempts_key, dlq_key, stream_key};

    const LETTER: [(&str, &str); 2] = [("event_id", "e-1"), ("envelope", "{}")];

    /// A stream with one entry read by `c1` of group `g`, with one attempt charged.
    async fn one_pending(m: &Memory) -> Result<(String, String, String), TransportError> {
        let stream = stream_key("ns", "ev");
        m.group_create(&stream, "g")?;
        let id = m.xadd(&stream, vec![(b"envelope".to_vec(), b"{}".to_vec())], None)?;
        let read = m
            .read_group(
                &stream,
                "g",
                "c1",
                ReadFrom::New,
                10,
                None,
                &CancellationToken::new(),
            )
            .await?;
        assert_eq!(read.len(), 1);
        let field = attempts_field("g", &id);
        m.hincrby(&attempts_key("ns", "ev"), &field, 1)?;
        Ok((stream, id, field))
    }

    #[tokio::test]
    async fn durable_letter_acks_and_clears_charges_in_one_step() -> Result<(), TransportError> {
        let m = Memory::new();
        let (stream, id, field) = one_pending(&m).await?;
        let attempts = attempts_key("ns", "ev");
        let durable = DurableRef {
            stream: &stream,
            group: "g",
            id: &id,
            attempts_key: &attempts,
            attempts_field: &field,
        };
        let dlq = dlq_key("ns", "ev");
        assert_eq!(
            m.dead_letter(&dlq, Some(durable), &LETTER)?,
            Written::Letter
        );
        let letters = m.xrange(&dlq, 10);
        assert_eq!(letters.len(), 1);
        assert_eq!(letters[0].field("event_id"), Some(&b"e-1"[..]));
        assert_eq!(letters[0].fields.len(), 2);
        assert!(m.pending(&stream, "g", None, "-", "+", 10)?.is_empty());
        assert_eq!(m.hlen(&attempts), 0);

        // Settled: a second write (a lost reply retried, another consumer) writes nothing.
        assert_eq!(
            m.dead_letter(&dlq, Some(durable), &LETTER)?,
            Written::AlreadySettled
        );
        assert_eq!(m.xrange(&dlq, 10).len(), 1);
        Ok(())
    }

    #[tokio::test]
    async fn not_pending_or_no_group_is_already_settled() -> Result<(), TransportError> {
        let m = Memory::new();
        let (stream, id, field) = one_pending(&m).await?;
        let attempts = attempts_key("ns", "ev");
        let dlq = dlq_key("ns", "ev");
        let durable = |group| DurableRef {
            stream: &stream,
            group,
            id: &id,
            attempts_key: &attempts,
            attempts_field: &field,
        };
        assert_eq!(m.ack(&stream, "g", std::slice::from_ref(&id))?, 1);
        assert_eq!(
            m.dead_letter(&dlq, Some(durable("g")), &LETTER)?,
            Written::AlreadySettled
        );
        assert_eq!(
            m.dead_letter(&dlq, Some(durable("no-such-group")), &LETTER)?,
            Written::AlreadySettled
        );
        assert!(m.del(&stream));
        assert_eq!(
            m.dead_letter(&dlq, Some(durable("g")), &LETTER)?,
            Written::AlreadySettled
        );
        assert!(m.xrange(&dlq, 10).is_empty());
        assert!(!m.keys().contains(&dlq));
        // The charges of a settled entry are not touched by the script.
        assert_eq!(m.hlen(&attempts), 1);
        Ok(())
    }

    #[tokio::test]
    async fn a_failed_letter_write_acks_nothing() -> Result<(), TransportError> {
        let m = Memory::new();
        let (stream, id, field) = one_pending(&m).await?;
        let attempts = attempts_key("ns", "ev");
        let durable = DurableRef {
            stream: &stream,
            group: "g",
            id: &id,
            attempts_key: &attempts,
            attempts_field: &field,
        };
        let dlq = dlq_key("ns", "ev");

        // Injected OOM.
        m.fail_next_dead_letters(1);
        let e = m
            .dead_letter(&dlq, Some(durable), &LETTER)
            .expect_err("injected");
        assert_eq!(e.kind(), TransportErrorKind::Rejected);
        assert_eq!(e.code(), Some("OOM"));
        assert!(!e.is_transient());
        assert_eq!(m.pending(&stream, "g", None, "-", "+", 10)?.len(), 1);
        assert_eq!(m.hlen(&attempts), 1);
        assert!(!m.keys().contains(&dlq));

        // WRONGTYPE on the dead-letter key at run time: unlike MULTI/EXEC, no ack either.
        m.hincrby(&dlq, "x", 1)?;
        let e = m
            .dead_letter(&dlq, Some(durable), &LETTER)
            .expect_err("wrongtype");
        assert_eq!(e.code(), Some("WRONGTYPE"));
        assert_eq!(m.pending(&stream, "g", None, "-", "+", 10)?.len(), 1);
        assert_eq!(m.hlen(&attempts), 1);
        assert!(m.del(&dlq));

        // The injection is used up: the next write goes through.
        assert_eq!(
            m.dead_letter(&dlq, Some(durable), &LETTER)?,
            Written::Letter
        );
        Ok(())
    }

    #[test]
    fn broadcast_letter_is_a_plain_append() -> Result<(), TransportError> {
        let m = Memory::new();
        let dlq = dlq_key("ns", "b");
        assert_eq!(m.dead_letter(&dlq, None, &LETTER)?, Written::Letter);
        assert_eq!(m.dead_letter(&dlq, None, &LETTER)?, Written::Letter);
        assert_eq!(m.xrange(&dlq, 10).len(), 2);
        m.fail_next_dead_letters(2);
        assert!(m.dead_letter(&dlq, None, &LETTER).is_err());
        assert!(m.dead_letter(&dlq, None, &LETTER).is_err());
        assert_eq!(m.dead_letter(&dlq, None, &LETTER)?, Written::Letter);
        assert_eq!(m.xrange(&dlq, 10).len(), 3);
        Ok(())
    }

    #[tokio::test(start_paused = true)]
    async fn replay_is_atomic_and_happens_once() -> Result<(), TransportError> {
        let m = Memory::new();
        let stream = stream_key("ns", "ev");
        let dlq = dlq_key("ns", "ev");
        m.group_create(&stream, "g")?;
        m.dead_letter(&dlq, None, &LETTER)?;
        let letter = m.xrange(&dlq, 1).remove(0).id;
        let fields = vec![
            (b"envelope".to_vec(), b"{}".to_vec()),
            (b"handler".to_vec(), b"g".to_vec()),
        ];

        // A reader blocked on the stream is woken by the replayed entry.
        let reader = {
            let m = m.clone();
            let stream = stream.clone();
            tokio::spawn(async move {
                m.read_group(
                    &stream,
                    "g",
                    "c1",
                    ReadFrom::New,
                    10,
                    Some(Duration::from_secs(60)),
                    &CancellationToken::new(),
                )
                .await
            })
        };
        tokio::task::yield_now().await;

        // The target key is a hash: nothing changes, the letter stays.
        m.hincrby("hash", "x", 1)?;
        let e = m
            .replay(&dlq, &letter, "hash", fields.clone())
            .expect_err("wrongtype");
        assert_eq!(e.code(), Some("WRONGTYPE"));
        assert_eq!(m.xrange(&dlq, 10).len(), 1);
        assert!(m.xrange(&stream, 10).is_empty());

        let new_id = m
            .replay(&dlq, &letter, &stream, fields.clone())?
            .expect("replayed");
        assert!(m.xrange(&dlq, 10).is_empty());
        let read = reader.await.expect("reader task")?;
        assert_eq!(read.len(), 1);
        assert_eq!(read[0].id, new_id);
        assert_eq!(read[0].field("handler"), Some(&b"g"[..]));

        // A second replay of the same letter finds nothing and adds nothing.
        assert_eq!(m.replay(&dlq, &letter, &stream, fields)?, None);
        assert_eq!(m.xrange(&stream, 10).len(), 1);
        assert!(m.replay(&dlq, "bad id", &stream, Vec::new()).is_err());
        Ok(())
    }
}
