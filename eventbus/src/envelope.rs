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
        let millis = std::time::SystemTime::now()
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

/// The CloudEvents spec version written and accepted.
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

#[derive(Serialize)]
struct Outgoing<'a, E> {
    specversion: &'static str,
    id: &'a EventId,
    #[serde(rename = "type")]
    ty: &'a str,
    source: &'a str,
    #[serde(serialize_with = "display")]
    time: humantime::Rfc3339Timestamp,
    datacontenttype: &'static str,
    schemaversion: u32,
    #[serde(skip_serializing_if = "Option::is_none")]
    correlationid: Option<&'a EventId>,
    #[serde(skip_serializing_if = "Option::is_none")]
    causationid: Option<&'a EventId>,
    #[serde(skip_serializing_if = "Option::is_none")]
    traceparent: Option<String>,
    data: &'a E,
}

fn display<S: serde::Serializer, T: fmt::Display>(value: &T, s: S) -> Result<S::Ok, S::Error> {
    s.collect_str(value)
}

/// Encodes one event as its JSON envelope, in one buffer sized for a typical envelope.
pub(crate) fn encode<E: crate::DomainEvent>(
    id: &EventId,
    source: &str,
    meta: &Meta,
    event: &E,
) -> Result<Vec<u8>, serde_json::Error> {
    let mut buf = Vec::with_capacity(512);
    serde_json::to_writer(
        &mut buf,
        &Outgoing {
            specversion: SPEC_VERSION,
            id,
            ty: E::NAME,
            source,
            time: humantime::format_rfc3339_micros(SystemTime::now()),
            datacontenttype: "application/json",
            schemaversion: E::VERSION,
            correlationid: meta.correlation_id.as_ref(),
            causationid: meta.causation_id.as_ref(),
            traceparent: None,
            data: event,
        },
    )?;
    Ok(buf)
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
