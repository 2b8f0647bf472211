//! Encoding: the envelope written once per event into a reused buffer.

use std::time::SystemTime;

use super::time::*;
use super::{EventId, Meta};

/// The parts of an envelope that are the same for every event of one type published with one
/// source and metadata, escaped once per publish (or once per batch) instead of once per event.
pub(crate) struct Head {
    /// `,"type":…,"source":…,"time":`
    after_id: Vec<u8>,
    /// `,"datacontenttype":…,"schemaversion":…[,"correlationid":…][,"causationid":…],"data":`
    after_time: Vec<u8>,
}

impl Head {
    pub(crate) fn new<E: crate::DomainEvent>(source: &str, meta: &Meta) -> Head {
        let mut after_id = Vec::with_capacity(64 + E::NAME.len() + source.len());
        after_id.extend_from_slice(b",\"type\":");
        string(&mut after_id, E::NAME);
        after_id.extend_from_slice(b",\"source\":");
        string(&mut after_id, source);
        after_id.extend_from_slice(b",\"time\":");
        let mut after_time = Vec::with_capacity(160);
        after_time
            .extend_from_slice(b",\"datacontenttype\":\"application/json\",\"schemaversion\":");
        after_time.extend_from_slice(itoa::Buffer::new().format(E::VERSION).as_bytes());
        if let Some(c) = &meta.correlation_id {
            after_time.extend_from_slice(b",\"correlationid\":");
            string(&mut after_time, c.as_str());
        }
        if let Some(c) = &meta.causation_id {
            after_time.extend_from_slice(b",\"causationid\":");
            string(&mut after_time, c.as_str());
        }
        after_time.extend_from_slice(b",\"data\":");
        Head {
            after_id,
            after_time,
        }
    }
}

/// Appends one event's envelope, as compact JSON, to `out`.
///
/// The attributes are written by hand (their keys are fixed and their values rarely need
/// escaping); only `data` goes through serde. The output is the JSON that serializing the
/// attributes with serde_json would give, in the same order (pinned by a test).
pub(crate) fn encode_into<E: crate::DomainEvent>(
    out: &mut Vec<u8>,
    head: &Head,
    id: &EventId,
    time: SystemTime,
    event: &E,
) -> Result<(), serde_json::Error> {
    out.extend_from_slice(b"{\"specversion\":\"1.0\",\"id\":");
    string(out, id.as_str());
    out.extend_from_slice(&head.after_id);
    let mut buf = [0u8; RFC3339_MICROS_LEN + 2];
    out.extend_from_slice(rfc3339_micros(time, &mut buf));
    out.extend_from_slice(&head.after_time);
    serde_json::to_writer(&mut *out, event)?;
    out.push(b'}');
    Ok(())
}

/// Encodes one event's envelope into this thread's scratch buffer and hands the bytes to `use_it`
/// (which copies them into a command). Reusing one buffer is cheaper than allocating one per
/// event or growing the command's own buffer piece by piece.
pub(crate) fn with_encoded<E: crate::DomainEvent, R>(
    head: &Head,
    id: &EventId,
    time: SystemTime,
    event: &E,
    use_it: impl FnOnce(&[u8]) -> R,
) -> Result<R, serde_json::Error> {
    /// A scratch buffer that grew past this (one huge event) is not kept.
    const KEEP: usize = 64 * 1024;
    thread_local! {
        static SCRATCH: std::cell::RefCell<Vec<u8>> = std::cell::RefCell::new(Vec::with_capacity(1024));
    }
    SCRATCH.with(|cell| match cell.try_borrow_mut() {
        Ok(mut buf) => {
            buf.clear();
            let result = encode_into(&mut buf, head, id, time, event).map(|()| use_it(&buf));
            if buf.capacity() > KEEP {
                *buf = Vec::with_capacity(1024);
            }
            result
        }
        // Only if serializing an event encodes another one on the same thread.
        Err(_) => {
            let mut buf = Vec::with_capacity(1024);
            encode_into(&mut buf, head, id, time, event)?;
            Ok(use_it(&buf))
        }
    })
}

/// Encodes one event as its JSON envelope into a new buffer (see [`encode_into`]).
#[cfg(test)]
pub(crate) fn encode<E: crate::DomainEvent>(
    id: &EventId,
    source: &str,
    meta: &Meta,
    event: &E,
) -> Result<Vec<u8>, serde_json::Error> {
    let head = Head::new::<E>(source, meta);
    with_encoded(&head, id, SystemTime::now(), event, <[u8]>::to_vec)
}

/// A JSON string: copied as it is when nothing in it needs escaping (ids, names), else escaped
/// as serde_json escapes it.
fn string(out: &mut Vec<u8>, s: &str) {
    if s.bytes().all(|b| b >= 0x20 && b != b'"' && b != b'\\') {
        out.push(b'"');
        out.extend_from_slice(s.as_bytes());
        out.push(b'"');
    } else {
        // Writing a `str` to a `Vec` cannot fail; the fallback keeps that visible without a panic.
        if serde_json::to_writer(&mut *out, s).is_err() {
            out.extend_from_slice(b"\"\"");
        }
    }
}
