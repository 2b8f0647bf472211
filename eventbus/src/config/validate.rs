//! Validation: settings become a [`Config`] at `build()`, or an error that says what to do.

use std::time::Duration;

use super::names::check_name;
use super::*;
use crate::error::{Error, Result};

impl BusBuilder {
    /// Validates the settings.
    pub(crate) fn config(&self) -> Result<Config> {
        let url = self.redis_url.trim();
        if !(url.starts_with("redis://")
            || url.starts_with("rediss://")
            || url.starts_with("unix://"))
        {
            return Err(Error::config(
                "REDIS_URL",
                redact(url),
                "expected redis://host:port, rediss://host:port (TLS) or unix:///path",
            ));
        }
        check_name("EVENTBUS_NAMESPACE", &self.namespace)?;
        let service = match &self.service {
            Some(s) => s.clone(),
            None => default_service(),
        };
        check_name("EVENTBUS_SERVICE", &service)?;
        let consumer = match &self.consumer {
            Some(c) => c.clone(),
            None => default_consumer(&service),
        };
        check_name("EVENTBUS_CONSUMER", &consumer)?;
        // Upper bounds keep timers and semaphores far from overflow: a start-up error, not a
        // panic later.
        const MAX_DURATION: Duration = Duration::from_secs(30 * 24 * 3600);
        let positive = |key: &'static str, d: Duration| {
            if d.is_zero() {
                Err(Error::config(
                    key,
                    "0s",
                    "must be longer than zero, e.g. \"500ms\" or \"30s\"",
                ))
            } else if d > MAX_DURATION {
                Err(Error::config(
                    key,
                    fmt_duration(d),
                    "must be at most 30 days",
                ))
            } else {
                Ok(d)
            }
        };
        if self.drain_timeout > MAX_DURATION {
            return Err(Error::config(
                "EVENTBUS_DRAIN_TIMEOUT",
                fmt_duration(self.drain_timeout),
                "must be at most 30 days",
            ));
        }
        for (key, n) in [
            ("EVENTBUS_BATCH_SIZE", self.batch_size),
            ("EVENTBUS_CONCURRENCY", self.concurrency as usize),
            ("EVENTBUS_BROADCAST_QUEUE", self.broadcast_queue),
        ] {
            if n > 1_000_000 {
                return Err(Error::config(key, n.to_string(), "must be at most 1000000"));
            }
        }
        let visibility_timeout = at_least(
            "EVENTBUS_VISIBILITY_TIMEOUT",
            positive("EVENTBUS_VISIBILITY_TIMEOUT", self.visibility_timeout)?,
            MIN_VISIBILITY_TIMEOUT,
            "entries idle that long are claimed by other consumers, and renewing leases more \
             often than that costs a command per in-flight entry each time",
            "30s",
        )?;
        let claim_interval = match self.claim_interval {
            Some(d) => at_least(
                "EVENTBUS_CLAIM_INTERVAL",
                positive("EVENTBUS_CLAIM_INTERVAL", d)?,
                MIN_CLAIM_INTERVAL,
                "each reader sends XAUTOCLAIM that often: shorter is a busy loop against Redis",
                "5s",
            )?,
            None => (visibility_timeout / 2).clamp(MIN_CLAIM_INTERVAL, Duration::from_secs(10)),
        };
        let block_time = at_least(
            "EVENTBUS_BLOCK_TIME",
            positive("EVENTBUS_BLOCK_TIME", self.block_time)?,
            MIN_BLOCK_TIME,
            "an idle reader asks Redis again after each block: shorter is a busy loop, and \
             below 1ms BLOCK would mean \"forever\"",
            "5s",
        )?;
        let handler_timeout = at_least(
            "EVENTBUS_HANDLER_TIMEOUT",
            positive("EVENTBUS_HANDLER_TIMEOUT", self.handler_timeout)?,
            MIN_HANDLER_TIMEOUT,
            "timers have millisecond resolution",
            "5m",
        )?;
        let publish_timeout = at_least(
            "EVENTBUS_PUBLISH_TIMEOUT",
            positive("EVENTBUS_PUBLISH_TIMEOUT", self.publish_timeout)?,
            MIN_PUBLISH_TIMEOUT,
            "one round trip to Redis and one retry must fit",
            "10s",
        )?;
        let backoff = positive("EVENTBUS_BACKOFF", self.backoff)?;
        let max_backoff = positive("EVENTBUS_MAX_BACKOFF", self.max_backoff)?;
        if max_backoff < backoff {
            return Err(Error::config(
                "EVENTBUS_MAX_BACKOFF",
                fmt_duration(max_backoff),
                format!(
                    "must not be shorter than the backoff ({})",
                    fmt_duration(backoff)
                ),
            ));
        }
        if self.batch_size == 0 {
            return Err(Error::config(
                "EVENTBUS_BATCH_SIZE",
                "0",
                "must be at least 1",
            ));
        }
        if self.concurrency == 0 {
            return Err(Error::config(
                "EVENTBUS_CONCURRENCY",
                "0",
                "must be at least 1",
            ));
        }
        if self.broadcast_queue == 0 {
            return Err(Error::config(
                "EVENTBUS_BROADCAST_QUEUE",
                "0",
                "must be at least 1",
            ));
        }
        if self.max_len == Some(0) {
            return Err(Error::config(
                "EVENTBUS_MAX_LEN",
                "0",
                "must be at least 1, or unset for no trimming",
            ));
        }
        if self.max_payload < 1024 {
            return Err(Error::config(
                "EVENTBUS_MAX_PAYLOAD",
                self.max_payload.to_string(),
                "must be at least 1024 bytes",
            ));
        }
        if self.broadcast_queue_bytes < self.max_payload {
            return Err(Error::config(
                "EVENTBUS_BROADCAST_QUEUE_BYTES",
                self.broadcast_queue_bytes.to_string(),
                format!(
                    "must be at least the maximum payload (EVENTBUS_MAX_PAYLOAD = {} bytes), or \
                     a broadcast event of an allowed size could never be queued, e.g. \"{}\"",
                    self.max_payload,
                    self.max_payload.max(16 * 1024 * 1024)
                ),
            ));
        }
        Ok(Config {
            redis_url: url.to_owned(),
            namespace: self.namespace.clone(),
            service,
            consumer,
            handlers: self.handlers.clone(),
            visibility_timeout,
            claim_interval,
            drain_timeout: self.drain_timeout,
            batch_size: self.batch_size,
            block_time,
            retry: RetryPolicy {
                retries: self.retries,
                backoff,
                max_backoff,
            },
            concurrency: self.concurrency,
            max_len: self.max_len,
            max_payload: self.max_payload,
            connect_timeout: positive("connect_timeout", self.connect_timeout)?,
            tls: self.tls.clone(),
            refuse_eviction: self.refuse_eviction,
            broadcast_queue: self.broadcast_queue,
            broadcast_queue_bytes: self.broadcast_queue_bytes,
            broadcast_overflow: self.broadcast_overflow,
            handler_timeout,
            publish_timeout,
        })
    }
}

/// Parses `250ms`, `5s`, `2m`, `1h 30m`.
pub(crate) fn parse_duration(key: &'static str, value: &str) -> Result<Duration> {
    humantime::parse_duration(value.trim()).map_err(|e| {
        Error::config(
            key,
            value,
            format!("expected a duration like \"500ms\", \"30s\" or \"2m\" ({e})"),
        )
    })
}

pub(crate) fn fmt_duration(d: Duration) -> String {
    humantime::format_duration(d).to_string()
}

/// Refuses a duration below `floor` (zero included), saying why the floor exists.
fn at_least(
    key: &'static str,
    d: Duration,
    floor: Duration,
    why: &str,
    example: &str,
) -> Result<Duration> {
    if d < floor {
        return Err(Error::config(
            key,
            fmt_duration(d),
            format!(
                "must be at least {} ({why}), e.g. \"{example}\"",
                fmt_duration(floor)
            ),
        ));
    }
    Ok(d)
}

fn default_service() -> String {
    std::env::current_exe()
        .ok()
        .and_then(|p| p.file_stem().map(|s| s.to_string_lossy().into_owned()))
        .map(|s| {
            s.chars()
                .filter(|c| c.is_ascii_alphanumeric() || matches!(c, '-' | '_' | '.'))
                .collect::<String>()
        })
        .filter(|s| !s.is_empty())
        .unwrap_or_else(|| "eventbus".to_owned())
}

fn default_consumer(service: &str) -> String {
    use std::sync::atomic::{AtomicU64, Ordering};
    static ORDINAL: AtomicU64 = AtomicU64::new(0);
    let host = std::fs::read_to_string("/proc/sys/kernel/hostname")
        .ok()
        .or_else(|| std::env::var("HOSTNAME").ok())
        .map(|h| {
            h.trim()
                .chars()
                .filter(|c| c.is_ascii_alphanumeric() || matches!(c, '-' | '.'))
                .collect::<String>()
        })
        .filter(|h| !h.is_empty())
        .unwrap_or_else(|| "host".to_owned());
    let n = ORDINAL.fetch_add(1, Ordering::Relaxed);
    format!("{service}-{host}-{}-{n}", std::process::id())
}
