//! Decoding: an envelope read once per delivery; `data` stays raw for the handler.

use std::borrow::Cow;
use std::fmt;

use serde::Deserialize;
use serde_json::value::RawValue;

use super::{EventId, SPEC_VERSION};

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
