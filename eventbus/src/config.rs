//! [`BusBuilder`]: every setting, its environment variable, and validation.

use std::path::PathBuf;
use std::time::Duration;

use crate::error::{Error, Result};
use crate::extract::States;
use crate::retry::RetryPolicy;

/// Validated settings of one bus.
#[derive(Debug, Clone)]
pub(crate) struct Config {
    pub(crate) redis_url: String,
    pub(crate) namespace: String,
    pub(crate) service: String,
    pub(crate) consumer: String,
    pub(crate) handlers: Option<Vec<String>>,
    pub(crate) visibility_timeout: Duration,
    pub(crate) claim_interval: Duration,
    pub(crate) drain_timeout: Duration,
    pub(crate) batch_size: usize,
    pub(crate) block_time: Duration,
    pub(crate) retry: RetryPolicy,
    pub(crate) concurrency: u32,
    pub(crate) max_len: Option<usize>,
    pub(crate) max_payload: usize,
    pub(crate) connect_timeout: Duration,
    pub(crate) tls: TlsFiles,
    pub(crate) refuse_eviction: bool,
    pub(crate) broadcast_queue: usize,
    pub(crate) broadcast_queue_bytes: usize,
    pub(crate) broadcast_overflow: Overflow,
    pub(crate) handler_timeout: Duration,
    pub(crate) publish_timeout: Duration,
}

/// What a broadcast handler's full queue does with one more event.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum Overflow {
    /// Drop the oldest queued event to make room (the default: for cache invalidation, presence
    /// and the like, the newest event matters most).
    #[default]
    DropOldest,
    /// Drop the event that just arrived.
    DropNewest,
}

/// PEM files for `rediss://` connections.
#[derive(Debug, Clone, Default)]
pub(crate) struct TlsFiles {
    /// Trust these roots instead of the system's.
    pub(crate) ca_file: Option<PathBuf>,
    /// Client certificate and key, for servers that require mutual TLS.
    pub(crate) client_cert: Option<(PathBuf, PathBuf)>,
}

impl TlsFiles {
    pub(crate) fn is_empty(&self) -> bool {
        self.ca_file.is_none() && self.client_cert.is_none()
    }
}

/// Builds a [`Bus`](crate::Bus). Every setting has a default that works against a local Redis,
/// and an environment variable read by [`with_env`](Self::with_env) and
/// [`Bus::from_env`](crate::Bus::from_env).
///
/// | setter | environment variable | default |
/// |---|---|---|
/// | [`redis_url`](Self::redis_url) | `REDIS_URL` | `redis://127.0.0.1:6379` |
/// | [`namespace`](Self::namespace) | `EVENTBUS_NAMESPACE` | `events` |
/// | [`service`](Self::service) | `EVENTBUS_SERVICE` | the executable's name |
/// | [`consumer`](Self::consumer) | `EVENTBUS_CONSUMER` | `<service>-<host>-<pid>-<n>` |
/// | [`handlers`](Self::handlers) | `EVENTBUS_HANDLERS` (comma separated) | every registered handler |
/// | [`visibility_timeout`](Self::visibility_timeout) | `EVENTBUS_VISIBILITY_TIMEOUT` | `30s` |
/// | [`claim_interval`](Self::claim_interval) | `EVENTBUS_CLAIM_INTERVAL` | half the visibility timeout, at most `10s` |
/// | [`drain_timeout`](Self::drain_timeout) | `EVENTBUS_DRAIN_TIMEOUT` | `30s` |
/// | [`batch_size`](Self::batch_size) | `EVENTBUS_BATCH_SIZE` | `100` |
/// | [`block_time`](Self::block_time) | `EVENTBUS_BLOCK_TIME` | `5s` |
/// | [`retries`](Self::retries) | `EVENTBUS_RETRIES` | `3` |
/// | [`backoff`](Self::backoff) | `EVENTBUS_BACKOFF` | `100ms` |
/// | [`max_backoff`](Self::max_backoff) | `EVENTBUS_MAX_BACKOFF` | `10s` |
/// | [`concurrency`](Self::concurrency) | `EVENTBUS_CONCURRENCY` | `16` |
/// | [`max_len`](Self::max_len) | `EVENTBUS_MAX_LEN` | unbounded |
/// | [`max_payload`](Self::max_payload) | `EVENTBUS_MAX_PAYLOAD` (bytes) | `1048576` |
/// | [`tls_ca_file`](Self::tls_ca_file) | `EVENTBUS_TLS_CA_FILE` | the system's roots |
/// | [`tls_client_cert`](Self::tls_client_cert) | `EVENTBUS_TLS_CERT_FILE`, `EVENTBUS_TLS_KEY_FILE` | none |
/// | [`refuse_evicting_redis`](Self::refuse_evicting_redis) | `EVENTBUS_REFUSE_EVICTION` | `false` (warn) |
/// | [`broadcast_queue`](Self::broadcast_queue) | `EVENTBUS_BROADCAST_QUEUE` | `1024` |
/// | [`broadcast_queue_bytes`](Self::broadcast_queue_bytes) | `EVENTBUS_BROADCAST_QUEUE_BYTES` | `16777216` (16 MiB) |
/// | [`handler_timeout`](Self::handler_timeout) | `EVENTBUS_HANDLER_TIMEOUT` | `5m` |
/// | [`publish_timeout`](Self::publish_timeout) | `EVENTBUS_PUBLISH_TIMEOUT` | `10s` |
/// | [`broadcast_overflow`](Self::broadcast_overflow) | `EVENTBUS_BROADCAST_OVERFLOW` (`drop-oldest`, `drop-newest`) | `drop-oldest` |
///
/// Durations are written like `250ms`, `5s`, `2m`. Retry settings and concurrency given here are
/// defaults for handlers whose `#[event_handler(...)]` does not set them.
///
/// ```no_run
/// use std::time::Duration;
/// use eventbus::Bus;
///
/// # async fn run() -> eventbus::Result<()> {
/// let bus = Bus::builder()
///     .redis_url("redis://127.0.0.1:6379")
///     .namespace("billing-staging")
///     .visibility_timeout(Duration::from_secs(60))
///     .build()
///     .await?;
/// # Ok(()) }
/// ```
#[derive(Debug, Clone)]
pub struct BusBuilder {
    redis_url: String,
    namespace: String,
    service: Option<String>,
    consumer: Option<String>,
    handlers: Option<Vec<String>>,
    visibility_timeout: Duration,
    claim_interval: Option<Duration>,
    drain_timeout: Duration,
    batch_size: usize,
    block_time: Duration,
    retries: u32,
    backoff: Duration,
    max_backoff: Duration,
    concurrency: u32,
    max_len: Option<usize>,
    max_payload: usize,
    connect_timeout: Duration,
    tls: TlsFiles,
    refuse_eviction: bool,
    broadcast_queue: usize,
    broadcast_queue_bytes: usize,
    broadcast_overflow: Overflow,
    handler_timeout: Duration,
    publish_timeout: Duration,
    pub(crate) states: States,
}

impl Default for BusBuilder {
    fn default() -> Self {
        Self {
            redis_url: "redis://127.0.0.1:6379".into(),
            namespace: "events".into(),
            service: None,
            consumer: None,
            handlers: None,
            visibility_timeout: Duration::from_secs(30),
            claim_interval: None,
            drain_timeout: Duration::from_secs(30),
            batch_size: 100,
            block_time: Duration::from_secs(5),
            retries: 3,
            backoff: Duration::from_millis(100),
            max_backoff: Duration::from_secs(10),
            concurrency: 16,
            max_len: None,
            max_payload: 1024 * 1024,
            connect_timeout: Duration::from_secs(5),
            tls: TlsFiles::default(),
            refuse_eviction: false,
            broadcast_queue: 1024,
            broadcast_queue_bytes: 16 * 1024 * 1024,
            broadcast_overflow: Overflow::DropOldest,
            handler_timeout: Duration::from_secs(300),
            publish_timeout: Duration::from_secs(10),
            states: States::default(),
        }
    }
}

impl BusBuilder {
    /// The Redis URL: `redis://[user:password@]host:port[/db]`, or `rediss://` for TLS.
    ///
    /// ```
    /// # let mut b = eventbus::Bus::builder();
    /// b.redis_url("redis://127.0.0.1:6379/0");
    /// ```
    pub fn redis_url(&mut self, url: impl Into<String>) -> &mut Self {
        self.redis_url = url.into();
        self
    }

    /// The namespace: the first part of every key, so that environments never share keys.
    ///
    /// ```
    /// # let mut b = eventbus::Bus::builder();
    /// b.namespace("staging");
    /// ```
    pub fn namespace(&mut self, namespace: impl Into<String>) -> &mut Self {
        self.namespace = namespace.into();
        self
    }

    /// The service name: the `source` of published envelopes and the start of consumer names.
    ///
    /// ```
    /// # let mut b = eventbus::Bus::builder();
    /// b.service("billing");
    /// ```
    pub fn service(&mut self, service: impl Into<String>) -> &mut Self {
        self.service = Some(service.into());
        self
    }

    /// The consumer name within each handler's group. Must be unique among running processes.
    /// A stable name (say, a StatefulSet ordinal) lets a restarted process re-read its own
    /// pending entries at once instead of waiting for the visibility timeout.
    ///
    /// ```
    /// # let mut b = eventbus::Bus::builder();
    /// b.consumer("billing-0");
    /// ```
    pub fn consumer(&mut self, consumer: impl Into<String>) -> &mut Self {
        self.consumer = Some(consumer.into());
        self
    }

    /// Runs only these handlers (by name). An empty list makes a publish-only bus.
    /// Default: every registered handler.
    ///
    /// ```
    /// # let mut b = eventbus::Bus::builder();
    /// b.handlers(["projection.chat", "billing::charge"]);
    /// b.handlers(Vec::<String>::new()); // publish only
    /// ```
    pub fn handlers<I, S>(&mut self, names: I) -> &mut Self
    where
        I: IntoIterator<Item = S>,
        S: Into<String>,
    {
        self.handlers = Some(names.into_iter().map(Into::into).collect());
        self
    }

    /// How long an entry delivered to a consumer that went silent (crashed, frozen) stays
    /// pending before another consumer claims it. Longer than your slowest handler run.
    ///
    /// ```
    /// # let mut b = eventbus::Bus::builder();
    /// b.visibility_timeout(std::time::Duration::from_secs(60));
    /// ```
    pub fn visibility_timeout(&mut self, timeout: Duration) -> &mut Self {
        self.visibility_timeout = timeout;
        self
    }

    /// How often each reader looks for entries to claim from silent consumers.
    ///
    /// ```
    /// # let mut b = eventbus::Bus::builder();
    /// b.claim_interval(std::time::Duration::from_secs(5));
    /// ```
    pub fn claim_interval(&mut self, interval: Duration) -> &mut Self {
        self.claim_interval = Some(interval);
        self
    }

    /// How long shutdown waits for in-flight handler runs; what does not finish stays pending.
    ///
    /// ```
    /// # let mut b = eventbus::Bus::builder();
    /// b.drain_timeout(std::time::Duration::from_secs(10));
    /// ```
    pub fn drain_timeout(&mut self, timeout: Duration) -> &mut Self {
        self.drain_timeout = timeout;
        self
    }

    /// The most entries one read fetches.
    ///
    /// ```
    /// # let mut b = eventbus::Bus::builder();
    /// b.batch_size(200);
    /// ```
    pub fn batch_size(&mut self, n: usize) -> &mut Self {
        self.batch_size = n;
        self
    }

    /// How long one blocking read waits for new entries before it asks again.
    ///
    /// ```
    /// # let mut b = eventbus::Bus::builder();
    /// b.block_time(std::time::Duration::from_secs(2));
    /// ```
    pub fn block_time(&mut self, time: Duration) -> &mut Self {
        self.block_time = time;
        self
    }

    /// Default retries after the first attempt, for handlers that do not set `retries`.
    ///
    /// ```
    /// # let mut b = eventbus::Bus::builder();
    /// b.retries(5);
    /// ```
    pub fn retries(&mut self, n: u32) -> &mut Self {
        self.retries = n;
        self
    }

    /// Default first retry delay, for handlers that do not set `backoff`.
    ///
    /// ```
    /// # let mut b = eventbus::Bus::builder();
    /// b.backoff(std::time::Duration::from_millis(50));
    /// ```
    pub fn backoff(&mut self, delay: Duration) -> &mut Self {
        self.backoff = delay;
        self
    }

    /// Default cap on retry delays, for handlers that do not set `max_backoff`.
    ///
    /// ```
    /// # let mut b = eventbus::Bus::builder();
    /// b.max_backoff(std::time::Duration::from_secs(30));
    /// ```
    pub fn max_backoff(&mut self, delay: Duration) -> &mut Self {
        self.max_backoff = delay;
        self
    }

    /// Default runs in flight at once per handler, for handlers that do not set `concurrency`.
    ///
    /// ```
    /// # let mut b = eventbus::Bus::builder();
    /// b.concurrency(32);
    /// ```
    pub fn concurrency(&mut self, n: u32) -> &mut Self {
        self.concurrency = n;
        self
    }

    /// Trims each stream to about this many entries on publish (`XADD MAXLEN ~`). Trimming
    /// ignores consumer progress: a group lagging further behind loses entries. Default: no
    /// trimming.
    ///
    /// ```
    /// # let mut b = eventbus::Bus::builder();
    /// b.max_len(Some(1_000_000));
    /// ```
    pub fn max_len(&mut self, len: Option<usize>) -> &mut Self {
        self.max_len = len;
        self
    }

    /// The largest envelope, in bytes, that `publish` writes and a reader hands to a handler;
    /// larger ones are rejected on publish and dead-lettered on read.
    ///
    /// ```
    /// # let mut b = eventbus::Bus::builder();
    /// b.max_payload(256 * 1024);
    /// ```
    pub fn max_payload(&mut self, bytes: usize) -> &mut Self {
        self.max_payload = bytes;
        self
    }

    /// How long connecting to Redis may take at start-up.
    ///
    /// ```
    /// # let mut b = eventbus::Bus::builder();
    /// b.connect_timeout(std::time::Duration::from_secs(2));
    /// ```
    pub fn connect_timeout(&mut self, timeout: Duration) -> &mut Self {
        self.connect_timeout = timeout;
        self
    }

    /// Trusts the CA certificates in this PEM file for `rediss://` connections, instead of the
    /// system's roots.
    ///
    /// ```
    /// # let mut b = eventbus::Bus::builder();
    /// b.redis_url("rediss://redis.internal:6380").tls_ca_file("/etc/redis/ca.pem");
    /// ```
    pub fn tls_ca_file(&mut self, path: impl Into<PathBuf>) -> &mut Self {
        self.tls.ca_file = Some(path.into());
        self
    }

    /// Presents this client certificate and key (PEM files) to servers that require mutual TLS.
    ///
    /// ```
    /// # let mut b = eventbus::Bus::builder();
    /// b.tls_client_cert("/etc/eventbus/client.pem", "/etc/eventbus/client.key");
    /// ```
    pub fn tls_client_cert(
        &mut self,
        cert: impl Into<PathBuf>,
        key: impl Into<PathBuf>,
    ) -> &mut Self {
        self.tls.client_cert = Some((cert.into(), key.into()));
        self
    }

    /// Refuses to start against a Redis whose `maxmemory-policy` may evict streams
    /// (`allkeys-*`): evicting a stream loses its events and its consumer groups. Default: start,
    /// with a warning.
    ///
    /// ```
    /// # let mut b = eventbus::Bus::builder();
    /// b.refuse_evicting_redis(true);
    /// ```
    pub fn refuse_evicting_redis(&mut self, refuse: bool) -> &mut Self {
        self.refuse_eviction = refuse;
        self
    }

    /// How many received events each broadcast handler may have queued; past that,
    /// [`broadcast_overflow`](Self::broadcast_overflow) decides which one is dropped (and counted
    /// in health). Keeps memory bounded when a handler is slower than the publish rate.
    ///
    /// ```
    /// # let mut b = eventbus::Bus::builder();
    /// b.broadcast_queue(10_000);
    /// ```
    pub fn broadcast_queue(&mut self, capacity: usize) -> &mut Self {
        self.broadcast_queue = capacity;
        self
    }

    /// How many bytes of received events each broadcast handler may have queued, besides the
    /// count ([`broadcast_queue`](Self::broadcast_queue)); past that,
    /// [`broadcast_overflow`](Self::broadcast_overflow) decides which events are dropped. One
    /// received payload is shared by every handler's queue, not copied.
    ///
    /// ```
    /// # let mut b = eventbus::Bus::builder();
    /// b.broadcast_queue_bytes(64 * 1024 * 1024);
    /// ```
    pub fn broadcast_queue_bytes(&mut self, bytes: usize) -> &mut Self {
        self.broadcast_queue_bytes = bytes;
        self
    }

    /// How long one handler attempt may run, for handlers that do not set
    /// `#[event_handler(timeout = "...")]`. An attempt that runs longer is cancelled and fails
    /// like an error (retried, then dead-lettered), freeing its run slot.
    ///
    /// ```
    /// # let mut b = eventbus::Bus::builder();
    /// b.handler_timeout(std::time::Duration::from_secs(60));
    /// ```
    pub fn handler_timeout(&mut self, timeout: Duration) -> &mut Self {
        self.handler_timeout = timeout;
        self
    }

    /// The longest one `publish` or `publish_batch` call may take in all, retries included;
    /// past it the call returns [`Error::Timeout`](crate::Error::Timeout) (the event may or may
    /// not have been stored). Raise it to ride out longer failovers.
    ///
    /// ```
    /// # let mut b = eventbus::Bus::builder();
    /// b.publish_timeout(std::time::Duration::from_secs(30));
    /// ```
    pub fn publish_timeout(&mut self, timeout: Duration) -> &mut Self {
        self.publish_timeout = timeout;
        self
    }

    /// Which event a full broadcast queue drops.
    ///
    /// ```
    /// # let mut b = eventbus::Bus::builder();
    /// b.broadcast_overflow(eventbus::Overflow::DropNewest);
    /// ```
    pub fn broadcast_overflow(&mut self, overflow: Overflow) -> &mut Self {
        self.broadcast_overflow = overflow;
        self
    }

    /// Adds a state value that handlers take as [`State<T>`](crate::State). One value per type.
    ///
    /// ```
    /// #[derive(Clone)]
    /// struct Db;
    /// # let mut b = eventbus::Bus::builder();
    /// b.state(Db);
    /// ```
    pub fn state<T: Clone + Send + Sync + 'static>(&mut self, value: T) -> &mut Self {
        self.states.insert(value);
        self
    }

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

    /// Validates the settings.
    pub(crate) fn config(&self) -> Result<Config> {
        let url = self.redis_url.trim();
        if !(url.starts_with("redis://")
            || url.starts_with("rediss://")
            || url.starts_with("unix://"))
        {
            return Err(Error::config(
                "REDIS_URL",
                crate::transport::redact(url),
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
        let visibility_timeout = positive("EVENTBUS_VISIBILITY_TIMEOUT", self.visibility_timeout)?;
        let claim_interval = match self.claim_interval {
            Some(d) => positive("EVENTBUS_CLAIM_INTERVAL", d)?,
            None => {
                (visibility_timeout / 2).clamp(Duration::from_millis(10), Duration::from_secs(10))
            }
        };
        let block_time = positive("EVENTBUS_BLOCK_TIME", self.block_time)?;
        if block_time < Duration::from_millis(1) {
            return Err(Error::config(
                "EVENTBUS_BLOCK_TIME",
                fmt_duration(block_time),
                "must be at least 1ms",
            ));
        }
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
            handler_timeout: positive("EVENTBUS_HANDLER_TIMEOUT", self.handler_timeout)?,
            publish_timeout: positive("EVENTBUS_PUBLISH_TIMEOUT", self.publish_timeout)?,
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

/// Names that become parts of keys: non-empty, printable, no spaces, braces or glob characters.
fn check_name(key: &'static str, value: &str) -> Result<()> {
    let bad = value.chars().find(|c| {
        c.is_whitespace() || c.is_control() || matches!(c, '{' | '}' | '*' | '?' | '[' | ']')
    });
    if value.is_empty() || bad.is_some() || value.len() > 200 {
        return Err(Error::config(
            key,
            value,
            "must be 1 to 200 characters without whitespace, braces or glob characters (*?[]), e.g. \"orders-staging\"",
        ));
    }
    Ok(())
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

#[cfg(test)]
mod tests {
    use super::*;
    use std::collections::HashMap;

    fn env(pairs: &[(&str, &str)]) -> impl Fn(&str) -> Option<String> {
        let map: HashMap<String, String> = pairs
            .iter()
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect();
        move |k| map.get(k).cloned()
    }

    #[test]
    fn env_overrides_defaults() {
        let mut b = BusBuilder::default();
        b.apply_env(env(&[
            ("EVENTBUS_NAMESPACE", "t1"),
            ("EVENTBUS_VISIBILITY_TIMEOUT", "2s"),
            ("EVENTBUS_HANDLERS", "a, b,"),
            ("EVENTBUS_RETRIES", "7"),
        ]))
        .expect("valid env");
        let c = b.config().expect("valid config");
        assert_eq!(c.namespace, "t1");
        assert_eq!(c.visibility_timeout, Duration::from_secs(2));
        assert_eq!(c.claim_interval, Duration::from_secs(1));
        assert_eq!(c.handlers, Some(vec!["a".to_owned(), "b".to_owned()]));
        assert_eq!(c.retry.retries, 7);
    }

    #[test]
    fn bad_values_name_the_key() {
        let err = BusBuilder::default()
            .apply_env(env(&[("EVENTBUS_DRAIN_TIMEOUT", "soon")]))
            .map(|_| ())
            .expect_err("bad");
        assert!(err.to_string().contains("EVENTBUS_DRAIN_TIMEOUT"), "{err}");
        let err = BusBuilder::default()
            .apply_env(env(&[("EVENTBUS_BATCH_SIZE", "-1")]))
            .map(|_| ())
            .expect_err("bad");
        assert!(err.to_string().contains("whole number"), "{err}");
        let err = BusBuilder::default()
            .namespace("a b")
            .config()
            .expect_err("bad");
        assert!(err.to_string().contains("EVENTBUS_NAMESPACE"), "{err}");
        let err = BusBuilder::default()
            .redis_url("http://x")
            .config()
            .expect_err("bad");
        assert!(err.to_string().contains("REDIS_URL"), "{err}");
        let err = BusBuilder::default()
            .concurrency(0)
            .config()
            .expect_err("bad");
        assert!(err.to_string().contains("at least 1"), "{err}");
    }
}
