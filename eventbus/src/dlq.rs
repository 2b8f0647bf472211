//! Dead letters: written atomically with the ack, listed, replayed, removed.

use std::collections::HashMap;
use std::sync::Arc;
use std::time::SystemTime;

use redis::Value;
use crate::transport::SharedConn;
use redis::streams::StreamRangeReply;

use crate::bus::BusInner;
use crate::envelope::{self, EventId};
use crate::error::{Error, Result};
use crate::handler::HandlerRegistration;
use crate::transport;

/// Why a delivery failed for good.
#[derive(Debug)]
pub(crate) struct Failure {
    pub(crate) event_id: Option<EventId>,
    pub(crate) error: String,
    /// Handler attempts made: 0 when the event was rejected before any.
    pub(crate) attempts: u32,
    /// The envelope as received (lossy UTF-8 when it was not UTF-8).
    pub(crate) envelope: String,
}

/// `MULTI; XADD <dlq> * ...; [XACK <stream> <group> <id>;] EXEC`: for a durable entry (`ack` is
/// `Some((stream, entry id))`) the dead letter exists if and only if the original is acked. Both
/// keys share the event's hash slot.
pub(crate) async fn write(
    conn: &mut SharedConn,
    dlq: &str,
    handler: &HandlerRegistration,
    ack: Option<(&str, &str)>,
    failure: &Failure,
) -> redis::RedisResult<()> {
    let failed_at = crate::envelope::rfc3339_millis(SystemTime::now());
    let event_id = failure.event_id.as_ref().map(EventId::as_str).unwrap_or("");
    let (stream_id, delivery) = match ack {
        Some((_, id)) => (id, "durable"),
        None => ("", "broadcast"),
    };
    let mut pipe = redis::pipe();
    pipe.atomic()
        .cmd("XADD")
        .arg(dlq)
        .arg("*")
        .arg("event_id")
        .arg(event_id)
        .arg("event_name")
        .arg(handler.event_name)
        .arg("handler")
        .arg(handler.name)
        .arg("error")
        .arg(&failure.error)
        .arg("attempts")
        .arg(failure.attempts)
        .arg("failed_at")
        .arg(&failed_at)
        .arg("stream_id")
        .arg(stream_id)
        .arg("delivery")
        .arg(delivery)
        .arg("envelope")
        .arg(&failure.envelope)
        .ignore();
    if let Some((stream, id)) = ack {
        pipe.cmd("XACK")
            .arg(stream)
            .arg(handler.name)
            .arg(id)
            .ignore();
    }
    pipe.query_async::<()>(conn).await
}

/// One dead letter: an event a handler could not handle, with why.
#[derive(Debug, Clone)]
#[non_exhaustive]
pub struct DeadLetter {
    /// The dead letter's own id: `<event name>/<dead-letter stream entry id>`.
    pub id: String,
    /// The event's id, when its envelope could be read.
    pub event_id: Option<EventId>,
    /// The event name (the stream it came from).
    pub event_name: String,
    /// The handler (consumer group) that gave up.
    pub handler: String,
    /// The last error, or why the event was rejected without running the handler.
    pub error: String,
    /// Handler attempts made (0 when rejected before the first one).
    pub attempts: u32,
    /// When it was dead-lettered.
    pub failed_at: SystemTime,
    /// The original envelope; a JSON string holding the raw text when it was not valid JSON.
    pub envelope: serde_json::Value,
    /// The id of the original entry in the event stream.
    pub stream_id: String,
}

/// The dead letters of one namespace; from [`Bus::dlq`](crate::Bus::dlq).
///
/// ```no_run
/// # async fn run(bus: eventbus::Bus) -> eventbus::Result<()> {
/// for letter in bus.dlq().list(100).await? {
///     println!("{} {} failed {} times: {}", letter.id, letter.handler, letter.attempts, letter.error);
///     bus.dlq().replay(&letter.id).await?; // back to that handler only
/// }
/// # Ok(()) }
/// ```
#[derive(Debug, Clone)]
pub struct DeadLetters {
    bus: Arc<BusInner>,
}

impl DeadLetters {
    pub(crate) fn new(bus: Arc<BusInner>) -> Self {
        Self { bus }
    }

    fn conn(&self) -> SharedConn {
        self.bus.conn.clone()
    }

    /// Every dead-letter stream of the namespace.
    async fn keys(&self) -> Result<Vec<String>> {
        let pattern = format!("{}:{{*}}:dlq", self.bus.config.namespace);
        let mut conn = self.conn();
        let mut keys = Vec::new();
        let mut cursor: u64 = 0;
        loop {
            let (next, batch): (u64, Vec<String>) = redis::cmd("SCAN")
                .arg(cursor)
                .arg("MATCH")
                .arg(&pattern)
                .arg("COUNT")
                .arg(1000)
                .arg("TYPE")
                .arg("stream")
                .query_async(&mut conn)
                .await
                .map_err(Error::redis("SCAN"))?;
            keys.extend(batch);
            if next == 0 {
                break;
            }
            cursor = next;
        }
        keys.sort();
        keys.dedup();
        Ok(keys)
    }

    /// Up to `limit` dead letters, oldest first, across every event of the namespace.
    ///
    /// # Errors
    ///
    /// [`Error::Redis`] when Redis fails.
    pub async fn list(&self, limit: usize) -> Result<Vec<DeadLetter>> {
        let mut all = Vec::new();
        let mut conn = self.conn();
        for key in self.keys().await? {
            let Some(event) = transport::event_of_dlq_key(&self.bus.config.namespace, &key) else {
                continue;
            };
            let reply: StreamRangeReply = redis::cmd("XRANGE")
                .arg(&key)
                .arg("-")
                .arg("+")
                .arg("COUNT")
                .arg(limit)
                .query_async(&mut conn)
                .await
                .map_err(Error::redis("XRANGE"))?;
            all.extend(reply.ids.into_iter().map(|e| parse(event, &e.id, &e.map)));
        }
        all.sort_by(|a, b| (a.failed_at, &a.id).cmp(&(b.failed_at, &b.id)));
        all.truncate(limit);
        Ok(all)
    }

    /// Redelivers a dead letter to the handler that gave up on it, and to no other handler,
    /// then removes it. The event keeps its id.
    ///
    /// # Errors
    ///
    /// [`Error::DeadLetterNotFound`], [`Error::Replay`] when its envelope was never a valid
    /// event (fix the producer and publish again instead), or [`Error::Redis`].
    pub async fn replay(&self, id: &str) -> Result<()> {
        let (key, entry, event) = self.locate(id)?;
        let mut conn = self.conn();
        let reply: StreamRangeReply = redis::cmd("XRANGE")
            .arg(&key)
            .arg(entry)
            .arg(entry)
            .query_async(&mut conn)
            .await
            .map_err(Error::redis("XRANGE"))?;
        let Some(found) = reply.ids.into_iter().next() else {
            return Err(Error::DeadLetterNotFound(id.to_owned()));
        };
        let text = |name: &str| found.map.get(name).and_then(as_text).unwrap_or_default();
        let raw = text("envelope");
        let handler = text("handler");
        if handler.is_empty() {
            return Err(Error::Replay {
                id: id.to_owned(),
                reason: "it names no handler".to_owned(),
            });
        }
        if let Err(rejected) = envelope::decode(&raw) {
            return Err(Error::Replay {
                id: id.to_owned(),
                reason: format!("its envelope is not a valid event: {rejected}"),
            });
        }
        if text("delivery") == "broadcast" {
            return self
                .replay_broadcast(id, &key, entry, event, &raw, &handler)
                .await;
        }
        let stream = transport::stream_key(&self.bus.config.namespace, event);
        let mut add = redis::cmd("XADD");
        add.arg(&stream);
        if let Some(n) = self.bus.config.max_len {
            add.arg("MAXLEN").arg("~").arg(n);
        }
        add.arg("*")
            .arg(envelope::FIELD_ENVELOPE)
            .arg(&raw)
            .arg(envelope::FIELD_HANDLER)
            .arg(&handler);
        redis::pipe()
            .atomic()
            .add_command(add)
            .ignore()
            .cmd("XDEL")
            .arg(&key)
            .arg(entry)
            .ignore()
            .query_async::<()>(&mut conn)
            .await
            .map_err(Error::redis("XADD+XDEL"))?;
        tracing::info!(dead_letter = id, handler = %handler, "dead letter replayed");
        Ok(())
    }

    /// A broadcast dead letter is published again on its channel, marked (extension attribute
    /// `eventbushandler`) for the handler that gave up: that handler runs it in every bus
    /// instance subscribed now; other handlers skip it. At most once, like any broadcast.
    async fn replay_broadcast(
        &self,
        id: &str,
        key: &str,
        entry: &str,
        event: &str,
        raw: &str,
        handler: &str,
    ) -> Result<()> {
        let mut envelope: serde_json::Map<String, serde_json::Value> = serde_json::from_str(raw)
            .map_err(|e| Error::Replay {
                id: id.to_owned(),
                reason: format!("its envelope is not a JSON object: {e}"),
            })?;
        envelope.insert(envelope::ATTR_HANDLER.to_owned(), handler.into());
        let payload = serde_json::Value::Object(envelope).to_string();
        let channel = transport::channel_key(&self.bus.config.namespace, event);
        let mut conn = self.conn();
        redis::pipe()
            .cmd("PUBLISH")
            .arg(&channel)
            .arg(&payload)
            .ignore()
            .cmd("XDEL")
            .arg(key)
            .arg(entry)
            .ignore()
            .query_async::<()>(&mut conn)
            .await
            .map_err(Error::redis("PUBLISH+XDEL"))?;
        tracing::info!(dead_letter = id, handler = %handler, "broadcast dead letter republished");
        Ok(())
    }

    /// Deletes one dead letter.
    ///
    /// # Errors
    ///
    /// [`Error::DeadLetterNotFound`] or [`Error::Redis`].
    pub async fn remove(&self, id: &str) -> Result<()> {
        let (key, entry, _) = self.locate(id)?;
        let mut conn = self.conn();
        let n: i64 = redis::cmd("XDEL")
            .arg(&key)
            .arg(entry)
            .query_async(&mut conn)
            .await
            .map_err(Error::redis("XDEL"))?;
        if n == 0 {
            return Err(Error::DeadLetterNotFound(id.to_owned()));
        }
        Ok(())
    }

    /// Deletes every dead letter of the namespace; returns how many there were.
    ///
    /// # Errors
    ///
    /// [`Error::Redis`] when Redis fails.
    pub async fn purge(&self) -> Result<usize> {
        let mut conn = self.conn();
        let mut total = 0;
        for key in self.keys().await? {
            let (len, _): (usize, i64) = redis::pipe()
                .atomic()
                .cmd("XLEN")
                .arg(&key)
                .cmd("DEL")
                .arg(&key)
                .query_async(&mut conn)
                .await
                .map_err(Error::redis("DEL"))?;
            total += len;
        }
        Ok(total)
    }

    fn locate<'a>(&self, id: &'a str) -> Result<(String, &'a str, &'a str)> {
        let (event, entry) = id
            .rsplit_once('/')
            .ok_or_else(|| Error::DeadLetterNotFound(id.to_owned()))?;
        if event.is_empty() || entry.is_empty() {
            return Err(Error::DeadLetterNotFound(id.to_owned()));
        }
        Ok((
            transport::dlq_key(&self.bus.config.namespace, event),
            entry,
            event,
        ))
    }
}

fn as_text(v: &Value) -> Option<String> {
    match v {
        Value::BulkString(b) => Some(String::from_utf8_lossy(b).into_owned()),
        Value::SimpleString(s) => Some(s.clone()),
        Value::Int(i) => Some(i.to_string()),
        _ => None,
    }
}

fn parse(event: &str, entry: &str, map: &HashMap<String, Value>) -> DeadLetter {
    let text = |name: &str| map.get(name).and_then(as_text).unwrap_or_default();
    let raw = text("envelope");
    let failed_at =
        humantime::parse_rfc3339_weak(&text("failed_at")).unwrap_or(SystemTime::UNIX_EPOCH);
    DeadLetter {
        id: format!("{event}/{entry}"),
        event_id: Some(text("event_id"))
            .filter(|s| !s.is_empty())
            .map(EventId::from),
        event_name: event.to_owned(),
        handler: text("handler"),
        error: text("error"),
        attempts: text("attempts").parse().unwrap_or(0),
        failed_at,
        envelope: serde_json::from_str(&raw).unwrap_or(serde_json::Value::String(raw)),
        stream_id: text("stream_id"),
    }
}
