//! The wire format: a CloudEvents 1.0 structured-mode JSON envelope (see `docs/WIRE.md`):
//! the event id, encoding (once per event, into a reused buffer), the clock, and decoding
//! (once per delivery).

mod decode;
mod encode;
mod id;
mod time;

pub(crate) use self::decode::*;
pub(crate) use self::encode::*;
pub use self::id::EventId;
pub(crate) use self::time::rfc3339_millis;
#[cfg(test)]
use self::time::*;

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

#[cfg(test)]
mod tests {
    use std::time::SystemTime;

    use serde::Serialize;

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
