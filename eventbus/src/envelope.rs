//! The wire format: a CloudEvents 1.0 structured-mode JSON envelope (see `docs/WIRE.md`).

use std::borrow::Cow;
use std::fmt;
use std::str::FromStr;
use std::sync::Arc;
use std::time::SystemTime;

use serde::{Deserialize, Serialize};
use serde_json::value::RawValue;

/// The id of one published event (the envelope's `id`).
///
/// Events published by eventbus get a UUID v7 (time ordered); envelopes written by other
/// producers may carry any non-empty string, as CloudEvents allows. Use it as the
/// idempotency key in handlers: a redelivered event keeps its id.
#[derive(Clone, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct EventId(Arc<str>);

impl EventId {
    /// A new UUID v7 id: 48 bits of Unix time in milliseconds, then random bits.
    ///
    /// The random bits come from a fast thread-local generator rather than the operating
    /// system's (one `getrandom` system call per event was the largest single cost of
    /// publishing); ids stay unique, they are just not secrets.
    pub fn new() -> Self {
        Self::at(SystemTime::now())
    }

    /// A new UUID v7 id for an event published at `time` (one clock reading serves the id and
    /// the envelope's `time`).
    pub(crate) fn at(time: SystemTime) -> Self {
        let millis = time
            .duration_since(std::time::UNIX_EPOCH)
            .map(|d| d.as_millis() as u64)
            .unwrap_or(0);
        let random = fastrand::u128(..).to_le_bytes();
        let mut bytes = [0u8; 10];
        bytes.copy_from_slice(&random[..10]);
        let uuid = uuid::Builder::from_unix_timestamp_millis(millis, &bytes).into_uuid();
        let mut buf = [0u8; uuid::fmt::Hyphenated::LENGTH];
        EventId(uuid.hyphenated().encode_lower(&mut buf).into())
    }

    /// The id as text.
    pub fn as_str(&self) -> &str {
        &self.0
    }
}

impl Default for EventId {
    fn default() -> Self {
        Self::new()
    }
}

impl fmt::Display for EventId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

impl fmt::Debug for EventId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "EventId({})", self.0)
    }
}

impl Serialize for EventId {
    fn serialize<S: serde::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.serialize_str(&self.0)
    }
}

impl<'de> Deserialize<'de> for EventId {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        String::deserialize(d).map(EventId::from)
    }
}

impl FromStr for EventId {
    type Err = std::convert::Infallible;
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        Ok(EventId(s.into()))
    }
}

impl From<&str> for EventId {
    fn from(s: &str) -> Self {
        EventId(s.into())
    }
}

impl From<String> for EventId {
    fn from(s: String) -> Self {
        EventId(s.into())
    }
}

impl PartialEq<str> for EventId {
    fn eq(&self, other: &str) -> bool {
        &*self.0 == other
    }
}

impl PartialEq<&str> for EventId {
    fn eq(&self, other: &&str) -> bool {
        &*self.0 == *other
    }
}

/// The CloudEvents spec version written and accepted (`encode_into` writes it literally).
pub(crate) const SPEC_VERSION: &str = "1.0";
/// The stream entry field that holds the envelope.
pub(crate) const FIELD_ENVELOPE: &str = "envelope";
/// The stream entry field that restricts an entry to one handler (dead-letter replay).
pub(crate) const FIELD_HANDLER: &str = "handler";
/// The envelope extension attribute that restricts a broadcast event to one handler (replay).
pub(crate) const ATTR_HANDLER: &str = "eventbushandler";

/// Metadata of an envelope being written.
#[derive(Debug, Clone, Default)]
pub(crate) struct Meta {
    pub(crate) correlation_id: Option<EventId>,
    pub(crate) causation_id: Option<EventId>,
}

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

/// The length of `2026-11-23T08:17:33.945736Z`.
const RFC3339_MICROS_LEN: usize = 27;

/// Writes `time` as a quoted RFC 3339 UTC timestamp with microseconds, as
/// `humantime::format_rfc3339_micros` does, without going through `fmt`. A clock set before
/// 1970 writes the epoch (as the event id does) and one past 9999 the last microsecond of 9999:
/// a wrong clock never fails a publish.
fn rfc3339_micros(time: SystemTime, buf: &mut [u8; RFC3339_MICROS_LEN + 2]) -> &[u8] {
    thread_local! {
        /// The last second formatted on this thread, and its text: most events in a row fall
        /// in the same second, and then only the microseconds are written.
        static LAST: std::cell::Cell<(u64, [u8; RFC3339_MICROS_LEN + 2])> =
            const { std::cell::Cell::new((u64::MAX, [0; RFC3339_MICROS_LEN + 2])) };
    }
    let since = since_epoch_clamped(time);
    let secs = since.as_secs();
    let micros = since.subsec_micros();
    let (last_secs, last) = LAST.get();
    if last_secs == secs {
        *buf = last;
        digits(&mut buf[21..27], u64::from(micros));
        return &buf[..];
    }
    let days = secs / 86_400;
    let sod = secs % 86_400;
    // Days to civil date (Howard Hinnant's algorithm), for days since 1970-01-01 ≥ 0.
    let z = days + 719_468;
    let era = z / 146_097;
    let doe = z - era * 146_097;
    let yoe = (doe - doe / 1_460 + doe / 36_524 - doe / 146_096) / 365;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let day = doy - (153 * mp + 2) / 5 + 1;
    let month = if mp < 10 { mp + 3 } else { mp - 9 };
    let year = yoe + era * 400 + u64::from(month <= 2);
    buf[0] = b'"';
    digits(&mut buf[1..5], year);
    buf[5] = b'-';
    digits(&mut buf[6..8], month);
    buf[8] = b'-';
    digits(&mut buf[9..11], day);
    buf[11] = b'T';
    digits(&mut buf[12..14], sod / 3_600);
    buf[14] = b':';
    digits(&mut buf[15..17], sod / 60 % 60);
    buf[17] = b':';
    digits(&mut buf[18..20], sod % 60);
    buf[20] = b'.';
    digits(&mut buf[21..27], u64::from(micros));
    buf[27] = b'Z';
    buf[28] = b'"';
    LAST.set((secs, *buf));
    &buf[..]
}

/// The time since 1970, within what RFC 3339 can write: a clock set before 1970 gives zero and
/// one past 9999 the last microsecond of 9999.
fn since_epoch_clamped(time: SystemTime) -> std::time::Duration {
    const LAST_INSTANT: std::time::Duration =
        std::time::Duration::new(253_402_300_799, 999_999_000);
    time.duration_since(std::time::UNIX_EPOCH)
        .unwrap_or_default()
        .min(LAST_INSTANT)
}

/// `time` as RFC 3339 UTC with milliseconds (`failed_at` of dead letters); never panics, whatever
/// the clock says.
pub(crate) fn rfc3339_millis(time: SystemTime) -> String {
    let time = std::time::UNIX_EPOCH + since_epoch_clamped(time);
    humantime::format_rfc3339_millis(time).to_string()
}

/// Writes `v` as decimal digits filling `out`, with leading zeros.
fn digits(out: &mut [u8], mut v: u64) {
    for b in out.iter_mut().rev() {
        *b = b'0' + (v % 10) as u8;
        v /= 10;
    }
}

#[derive(Deserialize)]
struct Incoming<'a> {
    // Borrowed from the entry where possible: no allocation per attribute on the hot path.
    #[serde(borrow)]
    specversion: Option<Cow<'a, str>>,
    #[serde(borrow)]
    id: Option<Cow<'a, str>>,
    #[serde(rename = "type", borrow)]
    ty: Option<Cow<'a, str>>,
    #[serde(borrow)]
    datacontenttype: Option<Cow<'a, str>>,
    schemaversion: Option<serde_json::Value>,
    #[serde(borrow)]
    correlationid: Option<Cow<'a, str>>,
    #[serde(borrow)]
    causationid: Option<Cow<'a, str>>,
    #[serde(borrow)]
    eventbushandler: Option<Cow<'a, str>>,
    #[serde(borrow)]
    data: Option<&'a RawValue>,
    data_base64: Option<serde::de::IgnoredAny>,
}

/// An envelope decoded once per delivery; `data` stays raw until the handler decodes it.
#[derive(Debug)]
pub(crate) struct Decoded<'a> {
    pub(crate) id: EventId,
    pub(crate) ty: Cow<'a, str>,
    pub(crate) version: u32,
    pub(crate) correlation_id: Option<EventId>,
    pub(crate) causation_id: Option<EventId>,
    /// `eventbushandler`: only this handler runs it (a replayed broadcast dead letter).
    pub(crate) target: Option<Cow<'a, str>>,
    pub(crate) data: &'a RawValue,
}

/// Why an envelope was rejected; the text goes into the dead letter.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct Rejected {
    pub(crate) reason: String,
    /// The envelope's `id`, when it was read before the envelope was rejected.
    pub(crate) id: Option<EventId>,
}

impl Rejected {
    fn new(reason: impl Into<String>) -> Self {
        Rejected {
            reason: reason.into(),
            id: None,
        }
    }
}

impl fmt::Display for Rejected {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.reason)
    }
}

/// Decodes and validates an envelope's attributes. Never panics, whatever the input.
pub(crate) fn decode(raw: &str) -> Result<Decoded<'_>, Rejected> {
    if raw.trim().is_empty() {
        return Err(Rejected::new("empty envelope"));
    }
    let env: Incoming<'_> = serde_json::from_str(raw)
        .map_err(|e| Rejected::new(format!("cannot decode envelope: {e}")))?;
    match env.specversion.as_deref() {
        Some(v) if v == SPEC_VERSION || v.starts_with("1.") => {}
        Some(v) => {
            return Err(Rejected::new(format!(
                "unsupported specversion {v:?}: expected \"1.0\""
            )));
        }
        None => return Err(Rejected::new("envelope has no `specversion`")),
    }
    let id = match env.id {
        Some(id) if !id.is_empty() => EventId::from(&*id),
        _ => return Err(Rejected::new("envelope has no `id`")),
    };
    let reject = |reason: String| Rejected {
        reason,
        id: Some(id.clone()),
    };
    let ty = match env.ty {
        Some(ty) if !ty.is_empty() => ty,
        _ => return Err(reject("envelope has no `type`".into())),
    };
    if let Some(ct) = &env.datacontenttype {
        let ct = ct.split(';').next().unwrap_or("").trim();
        let bytes = ct.as_bytes();
        let json = ct.eq_ignore_ascii_case("application/json")
            || ct.eq_ignore_ascii_case("text/json")
            || (bytes.len() >= 5 && bytes[bytes.len() - 5..].eq_ignore_ascii_case(b"+json"));
        if !json {
            return Err(reject(format!(
                "unsupported datacontenttype {ct:?}: only JSON data is accepted"
            )));
        }
    }
    let version = match env.schemaversion {
        None => 1,
        Some(v) => parse_version(&v).ok_or_else(|| {
            reject(format!(
                "invalid schemaversion {v}: expected a positive integer"
            ))
        })?,
    };
    let data = match env.data {
        Some(d) => d,
        None if env.data_base64.is_some() => {
            return Err(reject(
                "`data_base64` is not supported: send JSON in `data`".into(),
            ));
        }
        None => null_raw(),
    };
    Ok(Decoded {
        id,
        ty,
        version,
        correlation_id: env
            .correlationid
            .filter(|s| !s.is_empty())
            .map(|s| EventId::from(&*s)),
        causation_id: env
            .causationid
            .filter(|s| !s.is_empty())
            .map(|s| EventId::from(&*s)),
        target: env.eventbushandler.filter(|s| !s.is_empty()),
        data,
    })
}

fn null_raw() -> &'static RawValue {
    RawValue::NULL
}

/// CloudEvents SDKs may write extension attributes as strings; accept `2` and `"2"`.
fn parse_version(v: &serde_json::Value) -> Option<u32> {
    let n = match v {
        serde_json::Value::Number(n) => n.as_u64()?,
        serde_json::Value::String(s) => s.trim().parse::<u64>().ok()?,
        _ => return None,
    };
    u32::try_from(n).ok().filter(|n| *n >= 1)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::DomainEvent;

    #[test]
    fn accepts_a_minimal_cloudevent() {
        let raw = r#"{"specversion":"1.0","id":"abc","type":"chat.created","source":"/x","data":{"a":1}}"#;
        let d = decode(raw).expect("valid");
        assert_eq!(d.id, "abc");
        assert_eq!(d.ty, "chat.created");
        assert_eq!(d.version, 1);
        assert_eq!(d.data.get(), r#"{"a":1}"#);
    }

    #[test]
    fn accepts_string_extension_values() {
        let raw = r#"{"specversion":"1.0","id":"a","type":"t","source":"s","schemaversion":"3","correlationid":"c"}"#;
        let d = decode(raw).expect("valid");
        assert_eq!(d.version, 3);
        assert_eq!(d.correlation_id, Some(EventId::from("c")));
        assert_eq!(d.data.get(), "null");
    }

    #[test]
    fn rejects_with_reasons() {
        for (raw, reason) in [
            ("", "empty envelope"),
            ("{", "cannot decode envelope"),
            (r#"{"specversion":"1.0","type":"t"}"#, "no `id`"),
            (r#"{"specversion":"1.0","id":"a"}"#, "no `type`"),
            (r#"{"id":"a","type":"t"}"#, "no `specversion`"),
            (
                r#"{"specversion":"1.0","id":"a","type":"t","schemaversion":0}"#,
                "invalid schemaversion",
            ),
            (
                r#"{"specversion":"1.0","id":"a","type":"t","datacontenttype":"text/plain"}"#,
                "datacontenttype",
            ),
            (
                r#"{"specversion":"1.0","id":"a","type":"t","data_base64":"AA=="}"#,
                "data_base64",
            ),
            ("[1,2]", "cannot decode envelope"),
        ] {
            let err = decode(raw).expect_err(raw);
            assert!(err.reason.contains(reason), "{raw}: {err}");
        }
    }

    #[derive(Serialize, serde::Deserialize)]
    struct Sample {
        n: u64,
        text: String,
    }

    impl DomainEvent for Sample {
        const NAME: &'static str = "sample.event";
        const VERSION: u32 = 7;
    }

    /// What serializing the attributes with serde gives: the reference for the hand-written head.
    #[derive(Serialize)]
    struct Reference<'a> {
        specversion: &'static str,
        id: &'a str,
        #[serde(rename = "type")]
        ty: &'a str,
        source: &'a str,
        time: &'a str,
        datacontenttype: &'static str,
        schemaversion: u32,
        #[serde(skip_serializing_if = "Option::is_none")]
        correlationid: Option<&'a str>,
        #[serde(skip_serializing_if = "Option::is_none")]
        causationid: Option<&'a str>,
        data: &'a Sample,
    }

    fn reference(id: &str, source: &str, time: &str, meta: &Meta, data: &Sample) -> String {
        serde_json::to_string(&Reference {
            specversion: SPEC_VERSION,
            id,
            ty: Sample::NAME,
            source,
            time,
            datacontenttype: "application/json",
            schemaversion: Sample::VERSION,
            correlationid: meta.correlation_id.as_ref().map(EventId::as_str),
            causationid: meta.causation_id.as_ref().map(EventId::as_str),
            data,
        })
        .expect("reference encodes")
    }

    /// The hand-written encoder writes exactly serde's JSON, escapes included.
    fn check_encoding(id: &str, source: &str, meta: &Meta, text: &str) {
        let data = Sample {
            n: 42,
            text: text.to_owned(),
        };
        let bytes = encode(&EventId::from(id), source, meta, &data).expect("encodes");
        let json = String::from_utf8(bytes).expect("utf-8");
        let value: serde_json::Value = serde_json::from_str(&json).expect("valid JSON");
        let time = value["time"].as_str().expect("time is a string");
        humantime::parse_rfc3339(time).expect("time is RFC 3339");
        assert_eq!(json, reference(id, source, time, meta, &data));
        let decoded = decode(&json).expect("decodes");
        assert_eq!(decoded.id, id);
        assert_eq!(decoded.version, 7);
    }

    #[test]
    fn encoding_matches_serde_including_escapes() {
        let meta = Meta {
            correlation_id: Some(EventId::from("corr-1")),
            causation_id: Some(EventId::from("cause \"2\"")),
        };
        check_encoding(EventId::new().as_str(), "svc", &Meta::default(), "plain");
        check_encoding(
            "a\"b\\c\n\u{1}é✓",
            "src \"quoted\"\t",
            &meta,
            "x\"y\\z\u{7f}",
        );
    }

    fn fast_and_slow(t: SystemTime) -> (String, String) {
        let mut buf = [0u8; RFC3339_MICROS_LEN + 2];
        let fast = String::from_utf8(rfc3339_micros(t, &mut buf).to_vec()).expect("ascii");
        (fast, format!("\"{}\"", humantime::format_rfc3339_micros(t)))
    }

    #[test]
    fn fast_timestamps_match_humantime() {
        use std::time::{Duration, UNIX_EPOCH};
        for secs in [0, 951_782_400, 4_107_542_399, 253_402_300_799] {
            let (fast, slow) = fast_and_slow(UNIX_EPOCH + Duration::new(secs, 999_999_999));
            assert_eq!(fast, slow);
        }
    }

    /// Times in a row within one second reuse the formatted second; the next second, or an
    /// earlier one, does not.
    #[test]
    fn the_cached_second_is_only_reused_within_that_second() {
        use std::time::{Duration, UNIX_EPOCH};
        let t = UNIX_EPOCH + Duration::new(1_795_000_000, 0);
        for step in [
            Duration::ZERO,
            Duration::from_micros(999_999),
            Duration::from_secs(1),
            Duration::new(1, 5),
            Duration::new(1, 999_999_999),
            Duration::from_secs(3_600),
            Duration::from_micros(1),
            Duration::from_secs(86_400),
        ] {
            let (fast, slow) = fast_and_slow(t + step);
            assert_eq!(fast, slow, "at +{step:?}");
        }
        let (fast, slow) = fast_and_slow(t - Duration::from_secs(1));
        assert_eq!(fast, slow, "a second back");
    }

    #[test]
    fn clocks_out_of_range_are_clamped_not_a_panic() {
        use std::time::{Duration, UNIX_EPOCH};
        let mut buf = [0u8; RFC3339_MICROS_LEN + 2];
        let late = UNIX_EPOCH + Duration::from_secs(253_402_300_800 + 86_400);
        assert_eq!(
            rfc3339_micros(late, &mut buf),
            b"\"9999-12-31T23:59:59.999999Z\""
        );
        let early = UNIX_EPOCH - Duration::from_secs(1);
        assert_eq!(
            rfc3339_micros(early, &mut buf),
            b"\"1970-01-01T00:00:00.000000Z\""
        );
        assert_eq!(rfc3339_millis(late), "9999-12-31T23:59:59.999Z");
        assert_eq!(rfc3339_millis(early), "1970-01-01T00:00:00.000Z");
    }

    #[test]
    fn deep_nesting_is_rejected_not_a_stack_overflow() {
        let raw = format!("{}{}", "[".repeat(100_000), "]".repeat(100_000));
        assert!(decode(&raw).is_err());
    }

    mod fuzz {
        use super::super::decode;
        use proptest::prelude::*;

        proptest! {
            #![proptest_config(ProptestConfig { cases: 2000, ..ProptestConfig::default() })]

            /// Arbitrary text never panics the decoder.
            #[test]
            fn any_text(raw in ".{0,300}") {
                let _ = decode(&raw);
            }

            /// The fast timestamp writer agrees with humantime on every instant it handles.
            #[test]
            fn timestamps(secs in 0u64..=253_402_300_799, nanos in 0u32..1_000_000_000) {
                let t = std::time::UNIX_EPOCH + std::time::Duration::new(secs, nanos);
                let (fast, slow) = super::fast_and_slow(t);
                prop_assert_eq!(fast, slow);
            }

            /// Any id, source and payload text encodes to exactly serde's JSON.
            #[test]
            fn encoding(id in ".{1,20}", source in ".{1,20}", text in ".{0,40}") {
                super::check_encoding(&id, &source, &super::super::Meta::default(), &text);
            }

            /// Arbitrary JSON values never panic the decoder.
            #[test]
            fn any_json(value in json_value()) {
                let _ = decode(&value.to_string());
            }

            /// Envelopes with arbitrary attribute values: accepted ones keep their id and type.
            #[test]
            fn envelope_like(
                id in proptest::option::of(json_value()),
                ty in proptest::option::of(json_value()),
                version in proptest::option::of(json_value()),
                data in json_value(),
            ) {
                let mut obj = serde_json::Map::new();
                obj.insert("specversion".into(), "1.0".into());
                if let Some(id) = &id { obj.insert("id".into(), id.clone()); }
                if let Some(ty) = &ty { obj.insert("type".into(), ty.clone()); }
                if let Some(v) = &version { obj.insert("schemaversion".into(), v.clone()); }
                obj.insert("data".into(), data);
                let raw = serde_json::Value::Object(obj).to_string();
                if let Ok(d) = decode(&raw) {
                    prop_assert_eq!(Some(serde_json::Value::String(d.id.to_string())), id);
                    prop_assert_eq!(Some(serde_json::Value::String(d.ty.to_string())), ty);
                    prop_assert!(d.version >= 1);
                }
            }
        }

        fn json_value() -> impl Strategy<Value = serde_json::Value> {
            let leaf = prop_oneof![
                Just(serde_json::Value::Null),
                any::<bool>().prop_map(serde_json::Value::from),
                any::<i64>().prop_map(serde_json::Value::from),
                any::<f64>().prop_map(serde_json::Value::from),
                ".{0,20}".prop_map(serde_json::Value::from),
            ];
            leaf.prop_recursive(4, 32, 6, |inner| {
                prop_oneof![
                    prop::collection::vec(inner.clone(), 0..6).prop_map(serde_json::Value::from),
                    prop::collection::btree_map(".{0,8}", inner, 0..6)
                        .prop_map(|m| serde_json::Value::Object(m.into_iter().collect())),
                ]
            })
        }
    }
}
