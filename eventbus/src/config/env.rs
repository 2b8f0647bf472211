//! Settings from the environment (`REDIS_URL`, `EVENTBUS_*`): the table on [`BusBuilder`].

use std::time::Duration;

use super::*;
use crate::error::{Error, Result};

impl BusBuilder {
    /// Applies the environment variables in the table above, overriding earlier settings.
    ///
    /// # Errors
    ///
    /// [`Error::Config`] when a variable is set to something that does not parse.
    pub fn with_env(&mut self) -> Result<&mut Self> {
        self.apply_env(|key| std::env::var(key).ok())
    }

    pub(crate) fn apply_env(&mut self, var: impl Fn(&str) -> Option<String>) -> Result<&mut Self> {
        if let Some(v) = var("REDIS_URL") {
            self.redis_url = v;
        }
        if let Some(v) = var("EVENTBUS_NAMESPACE") {
            self.namespace = v;
        }
        if let Some(v) = var("EVENTBUS_SERVICE") {
            self.service = Some(v);
        }
        if let Some(v) = var("EVENTBUS_CONSUMER") {
            self.consumer = Some(v);
        }
        if let Some(v) = var("EVENTBUS_TLS_CA_FILE") {
            self.tls.ca_file = Some(v.into());
        }
        match (var("EVENTBUS_TLS_CERT_FILE"), var("EVENTBUS_TLS_KEY_FILE")) {
            (Some(cert), Some(key)) => self.tls.client_cert = Some((cert.into(), key.into())),
            (None, None) => {}
            (Some(v), None) | (None, Some(v)) => {
                return Err(Error::config(
                    "EVENTBUS_TLS_CERT_FILE",
                    v,
                    "set both EVENTBUS_TLS_CERT_FILE and EVENTBUS_TLS_KEY_FILE, or neither",
                ));
            }
        }
        if let Some(v) = var("EVENTBUS_REFUSE_EVICTION") {
            self.refuse_eviction = match v.trim().to_ascii_lowercase().as_str() {
                "1" | "true" | "yes" | "on" => true,
                "0" | "false" | "no" | "off" | "" => false,
                _ => {
                    return Err(Error::config(
                        "EVENTBUS_REFUSE_EVICTION",
                        v,
                        "expected true or false",
                    ));
                }
            };
        }
        if let Some(v) = var("EVENTBUS_BROADCAST_OVERFLOW") {
            self.broadcast_overflow = match v.trim().to_ascii_lowercase().as_str() {
                "drop-oldest" | "drop_oldest" | "oldest" => Overflow::DropOldest,
                "drop-newest" | "drop_newest" | "newest" => Overflow::DropNewest,
                _ => {
                    return Err(Error::config(
                        "EVENTBUS_BROADCAST_OVERFLOW",
                        v,
                        "expected drop-oldest or drop-newest",
                    ));
                }
            };
        }
        if let Some(v) = var("EVENTBUS_HANDLERS") {
            self.handlers = Some(
                v.split(',')
                    .map(str::trim)
                    .filter(|s| !s.is_empty())
                    .map(String::from)
                    .collect(),
            );
        }
        let dur = |key: &'static str| -> Result<Option<Duration>> {
            var(key).map(|v| parse_duration(key, &v)).transpose()
        };
        let num = |key: &'static str| -> Result<Option<u64>> {
            var(key)
                .map(|v| {
                    v.trim()
                        .parse::<u64>()
                        .map_err(|_| Error::config(key, v, "expected a whole number"))
                })
                .transpose()
        };
        if let Some(d) = dur("EVENTBUS_VISIBILITY_TIMEOUT")? {
            self.visibility_timeout = d;
        }
        if let Some(d) = dur("EVENTBUS_CLAIM_INTERVAL")? {
            self.claim_interval = Some(d);
        }
        if let Some(d) = dur("EVENTBUS_DRAIN_TIMEOUT")? {
            self.drain_timeout = d;
        }
        if let Some(d) = dur("EVENTBUS_BLOCK_TIME")? {
            self.block_time = d;
        }
        if let Some(d) = dur("EVENTBUS_HANDLER_TIMEOUT")? {
            self.handler_timeout = d;
        }
        if let Some(d) = dur("EVENTBUS_PUBLISH_TIMEOUT")? {
            self.publish_timeout = d;
        }
        if let Some(d) = dur("EVENTBUS_BACKOFF")? {
            self.backoff = d;
        }
        if let Some(d) = dur("EVENTBUS_MAX_BACKOFF")? {
            self.max_backoff = d;
        }
        if let Some(n) = num("EVENTBUS_BATCH_SIZE")? {
            self.batch_size = usize::try_from(n).unwrap_or(usize::MAX);
        }
        if let Some(n) = num("EVENTBUS_RETRIES")? {
            self.retries = u32::try_from(n).unwrap_or(u32::MAX);
        }
        if let Some(n) = num("EVENTBUS_CONCURRENCY")? {
            self.concurrency = u32::try_from(n).unwrap_or(u32::MAX);
        }
        if let Some(n) = num("EVENTBUS_MAX_LEN")? {
            self.max_len = Some(usize::try_from(n).unwrap_or(usize::MAX));
        }
        if let Some(n) = num("EVENTBUS_BROADCAST_QUEUE")? {
            self.broadcast_queue = usize::try_from(n).unwrap_or(usize::MAX);
        }
        if let Some(n) = num("EVENTBUS_BROADCAST_QUEUE_BYTES")? {
            self.broadcast_queue_bytes = usize::try_from(n).unwrap_or(usize::MAX);
        }
        if let Some(n) = num("EVENTBUS_MAX_PAYLOAD")? {
            self.max_payload = usize::try_from(n).unwrap_or(usize::MAX);
        }
        Ok(self)
    }
}
