//! [`BusBuilder`]: every setting, its environment variable, and validation.

use std::path::PathBuf;
use std::time::Duration;

use crate::error::{Error, Result};
use crate::retry::RetryPolicy;
use crate::state::States;

/// The shortest visibility timeout. XAUTOCLAIM's min-idle counts whole milliseconds (below 1ms
/// it is 0: every pending entry, running or not, is claimed at once), and an in-flight entry's
/// lease is renewed within the timeout: 100ms already means several commands per entry and
/// second, and a scheduling hiccup longer than the timeout runs the entry twice.
pub(crate) const MIN_VISIBILITY_TIMEOUT: Duration = Duration::from_millis(100);
/// The shortest claim interval: each reader sends one XAUTOCLAIM per interval, so 10ms is already
/// 100 commands a second per handler; shorter is a busy loop.
pub(crate) const MIN_CLAIM_INTERVAL: Duration = Duration::from_millis(10);
/// The shortest block time: an idle reader sends one XREADGROUP per block time (10ms: 100 a
/// second); `BLOCK` counts whole milliseconds and `BLOCK 0` means forever.
pub(crate) const MIN_BLOCK_TIME: Duration = Duration::from_millis(10);
/// The shortest handler timeout: timers have millisecond resolution.
pub(crate) const MIN_HANDLER_TIMEOUT: Duration = Duration::from_millis(1);
/// The shortest publish timeout: one round trip to Redis and a retry must fit.
pub(crate) const MIN_PUBLISH_TIMEOUT: Duration = Duration::from_millis(10);

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
/// | [`visibility_timeout`](Self::visibility_timeout) | `EVENTBUS_VISIBILITY_TIMEOUT` | `30s` (at least `100ms`) |
/// | [`claim_interval`](Self::claim_interval) | `EVENTBUS_CLAIM_INTERVAL` | half the visibility timeout, at most `10s` (at least `10ms`) |
/// | [`drain_timeout`](Self::drain_timeout) | `EVENTBUS_DRAIN_TIMEOUT` | `30s` |
/// | [`batch_size`](Self::batch_size) | `EVENTBUS_BATCH_SIZE` | `100` |
/// | [`block_time`](Self::block_time) | `EVENTBUS_BLOCK_TIME` | `5s` (at least `10ms`) |
/// | [`retries`](Self::retries) | `EVENTBUS_RETRIES` | `3` |
/// | [`backoff`](Self::backoff) | `EVENTBUS_BACKOFF` | `100ms` |
/// | [`max_backoff`](Self::max_backoff) | `EVENTBUS_MAX_BACKOFF` | `10s` |
/// | [`concurrency`](Self::concurrency) | `EVENTBUS_CONCURRENCY` | `16` |
/// | [`max_len`](Self::max_len) | `EVENTBUS_MAX_LEN` | unbounded |
/// | [`max_payload`](Self::max_payload) | `EVENTBUS_MAX_PAYLOAD` (bytes) | `1048576` (at least `1024`) |
/// | [`tls_ca_file`](Self::tls_ca_file) | `EVENTBUS_TLS_CA_FILE` | the system's roots |
/// | [`tls_client_cert`](Self::tls_client_cert) | `EVENTBUS_TLS_CERT_FILE`, `EVENTBUS_TLS_KEY_FILE` | none |
/// | [`refuse_evicting_redis`](Self::refuse_evicting_redis) | `EVENTBUS_REFUSE_EVICTION` | `false` (warn) |
/// | [`broadcast_queue`](Self::broadcast_queue) | `EVENTBUS_BROADCAST_QUEUE` | `1024` events (1 to 1000000) |
/// | [`broadcast_queue_bytes`](Self::broadcast_queue_bytes) | `EVENTBUS_BROADCAST_QUEUE_BYTES` | `16777216` (16 MiB; at least `max_payload`) |
/// | [`handler_timeout`](Self::handler_timeout) | `EVENTBUS_HANDLER_TIMEOUT` | `5m` (at least `1ms`) |
/// | [`publish_timeout`](Self::publish_timeout) | `EVENTBUS_PUBLISH_TIMEOUT` | `10s` (at least `10ms`) |
/// | [`broadcast_overflow`](Self::broadcast_overflow) | `EVENTBUS_BROADCAST_OVERFLOW` (`drop-oldest`, `drop-newest`) | `drop-oldest` |
///
/// Durations are written like `250ms`, `5s`, `2m`; every duration must be longer than zero and
/// at most 30 days, and the floors in the table keep Redis out of busy loops (see each setter).
/// Retry settings, concurrency and the handler timeout given here are defaults for handlers whose
/// `#[event_handler(...)]` does not set them.
///
/// The namespace, service and consumer names (and event and handler names) become parts of Redis
/// keys and patterns: 1 to 200 characters without whitespace, control characters, braces or glob
/// characters (`*`, `?`, `[`, `]`, `\`). `^` is allowed (it is special only inside brackets).
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
    /// 1 to 200 characters without whitespace, control characters, braces or glob characters
    /// (`*`, `?`, `[`, `]`, `\`): `list` and `purge` of dead letters match keys by this prefix.
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
    /// At least `100ms`: XAUTOCLAIM's min-idle counts whole milliseconds (below 1ms every
    /// pending entry would be claimed at once, running or not), and in-flight entries' leases are
    /// renewed within this time.
    ///
    /// ```
    /// # let mut b = eventbus::Bus::builder();
    /// b.visibility_timeout(std::time::Duration::from_secs(60));
    /// ```
    pub fn visibility_timeout(&mut self, timeout: Duration) -> &mut Self {
        self.visibility_timeout = timeout;
        self
    }

    /// How often each reader looks for entries to claim from silent consumers. At least `10ms`
    /// (one XAUTOCLAIM per interval and handler; shorter is a busy loop).
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

    /// How long one blocking read waits for new entries before it asks again. At least `10ms`
    /// (an idle reader sends one read per block time; `BLOCK` counts whole milliseconds and
    /// `BLOCK 0` means forever). Also the broadcast subscriber's health-ping interval.
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
    /// larger ones are rejected on publish and dead-lettered on read (a broadcast message as it
    /// is received, before it is queued). At least 1024 bytes, and at most
    /// [`broadcast_queue_bytes`](Self::broadcast_queue_bytes).
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
    /// [`broadcast_overflow`](Self::broadcast_overflow) decides which events are dropped
    /// (`DropOldest` drops as many of the oldest as it takes to fit the new one; `DropNewest`
    /// refuses the new one), each counted in the handler's health as `dropped`. One received
    /// payload is shared by every handler's queue, not copied, and counts in full in each.
    /// Messages waiting for a run slot count; the ones running (at most `concurrency`) do not.
    /// At least [`max_payload`](Self::max_payload), so that every event of an allowed size fits.
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
    /// like an error (retried, then dead-lettered), freeing its run slot. At least `1ms`.
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
    /// not have been stored). Raise it to ride out longer failovers. At least `10ms`.
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

/// The first character that a name which becomes part of a Redis key, a key pattern or a group
/// name may not contain: whitespace, control characters, braces (they would change a key's hash
/// tag) and every glob metacharacter of `SCAN MATCH` (`*`, `?`, `[`, `]` and the escape `\`).
/// `^` is allowed: it is special only inside brackets, which are refused.
pub(crate) fn forbidden_char(value: &str) -> Option<char> {
    value.chars().find(|&c| {
        c.is_whitespace() || c.is_control() || matches!(c, '{' | '}' | '*' | '?' | '[' | ']' | '\\')
    })
}

/// What a valid name looks like, for error messages.
pub(crate) const NAME_RULE: &str = "1 to 200 characters without whitespace, control characters, braces or glob characters (* ? [ ] \\)";

/// Names that become parts of keys: see [`forbidden_char`].
fn check_name(key: &'static str, value: &str) -> Result<()> {
    let problem = if value.is_empty() {
        Some("is empty".to_owned())
    } else if value.len() > 200 {
        Some(format!("is {} bytes long", value.len()))
    } else {
        forbidden_char(value).map(|c| format!("contains {c:?}"))
    };
    match problem {
        Some(problem) => Err(Error::config(
            key,
            value,
            format!("{problem}; must be {NAME_RULE}, e.g. \"orders-staging\""),
        )),
        None => Ok(()),
    }
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

/// The URL with any password replaced by `***`, for messages and logs.
pub(crate) fn redact(url: &str) -> String {
    let Some((scheme, rest)) = url.split_once("://") else {
        return url.to_owned();
    };
    let Some((auth, host)) = rest.rsplit_once('@') else {
        return url.to_owned();
    };
    match auth.split_once(':') {
        Some((user, _)) => format!("{scheme}://{user}:***@{host}"),
        None => format!("{scheme}://***@{host}"),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn redacts_passwords() {
        assert_eq!(
            redact("redis://user:secret@host:6379"),
            "redis://user:***@host:6379"
        );
        assert_eq!(redact("redis://:secret@host"), "redis://:***@host");
        assert_eq!(redact("redis://host:6379"), "redis://host:6379");
    }

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

    fn config_error(b: &BusBuilder) -> String {
        b.config().map(|_| ()).expect_err("invalid").to_string()
    }

    #[test]
    fn names_refuse_every_glob_character() {
        for bad in [
            "a*", "a?", "a[b", "a]", "a\\b", "a{b", "a}", "a b", "a\tb", "a\u{0}b", "",
        ] {
            let msg = config_error(BusBuilder::default().namespace(bad));
            assert!(msg.contains("EVENTBUS_NAMESPACE"), "{bad:?}: {msg}");
            assert!(
                msg.contains("glob characters (* ? [ ] \\)"),
                "{bad:?}: {msg}"
            );
            let msg = config_error(BusBuilder::default().service(bad));
            assert!(msg.contains("EVENTBUS_SERVICE"), "{bad:?}: {msg}");
            let msg = config_error(BusBuilder::default().consumer(bad));
            assert!(msg.contains("EVENTBUS_CONSUMER"), "{bad:?}: {msg}");
        }
        let msg = config_error(BusBuilder::default().namespace("a\\b"));
        assert!(
            msg.contains("contains '\\\\'"),
            "names the character: {msg}"
        );
        let msg = config_error(BusBuilder::default().namespace("x".repeat(201)));
        assert!(msg.contains("201 bytes long"), "{msg}");
        for ok in [
            "orders-staging",
            "a^b",
            "ns:sub",
            "billing.v2_x",
            "événements",
        ] {
            let c = BusBuilder::default().namespace(ok).config();
            assert!(c.is_ok(), "{ok:?}: {:?}", c.err());
        }
    }

    /// A setting's key, how to set it too low, and the floor the error names.
    type FloorCase = (&'static str, fn(&mut BusBuilder), &'static str);

    #[test]
    fn durations_have_floors() {
        let cases: [FloorCase; 6] = [
            (
                "EVENTBUS_VISIBILITY_TIMEOUT",
                |b| {
                    b.visibility_timeout(Duration::from_micros(500));
                },
                "at least 100ms",
            ),
            (
                "EVENTBUS_VISIBILITY_TIMEOUT",
                |b| {
                    b.visibility_timeout(Duration::from_millis(99));
                },
                "at least 100ms",
            ),
            (
                "EVENTBUS_CLAIM_INTERVAL",
                |b| {
                    b.claim_interval(Duration::from_nanos(1));
                },
                "at least 10ms",
            ),
            (
                "EVENTBUS_BLOCK_TIME",
                |b| {
                    b.block_time(Duration::from_micros(9_999));
                },
                "at least 10ms",
            ),
            (
                "EVENTBUS_HANDLER_TIMEOUT",
                |b| {
                    b.handler_timeout(Duration::from_micros(999));
                },
                "at least 1ms",
            ),
            (
                "EVENTBUS_PUBLISH_TIMEOUT",
                |b| {
                    b.publish_timeout(Duration::from_millis(9));
                },
                "at least 10ms",
            ),
        ];
        for (key, set, floor) in cases {
            let mut b = BusBuilder::default();
            set(&mut b);
            let msg = config_error(&b);
            assert!(msg.contains(key) && msg.contains(floor), "{key}: {msg}");
            assert!(msg.contains(", e.g. \""), "gives an example: {msg}");
        }
        // Zero keeps its own message.
        let msg = config_error(BusBuilder::default().visibility_timeout(Duration::ZERO));
        assert!(msg.contains("longer than zero"), "{msg}");
        // The floors themselves are valid, and the default claim interval follows the floor.
        let c = BusBuilder::default()
            .visibility_timeout(MIN_VISIBILITY_TIMEOUT)
            .block_time(MIN_BLOCK_TIME)
            .handler_timeout(MIN_HANDLER_TIMEOUT)
            .publish_timeout(MIN_PUBLISH_TIMEOUT)
            .config()
            .expect("the floors are valid");
        assert_eq!(c.claim_interval, Duration::from_millis(50));
        BusBuilder::default()
            .claim_interval(MIN_CLAIM_INTERVAL)
            .config()
            .expect("the floor is valid");
        // From the environment too.
        let mut b = BusBuilder::default();
        b.apply_env(env(&[("EVENTBUS_CLAIM_INTERVAL", "1ns")]))
            .expect("parses");
        assert!(config_error(&b).contains("EVENTBUS_CLAIM_INTERVAL"));
    }

    #[test]
    fn broadcast_queue_bytes_holds_at_least_one_payload() {
        let msg = config_error(
            BusBuilder::default()
                .max_payload(64 * 1024)
                .broadcast_queue_bytes(64 * 1024 - 1),
        );
        assert!(msg.contains("EVENTBUS_BROADCAST_QUEUE_BYTES"), "{msg}");
        assert!(msg.contains("EVENTBUS_MAX_PAYLOAD = 65536"), "{msg}");
        let c = BusBuilder::default()
            .max_payload(64 * 1024)
            .broadcast_queue_bytes(64 * 1024)
            .config()
            .expect("equal is enough");
        assert_eq!(c.broadcast_queue_bytes, 64 * 1024);
        let mut b = BusBuilder::default();
        b.apply_env(env(&[("EVENTBUS_BROADCAST_QUEUE_BYTES", "4096")]))
            .expect("parses");
        assert!(
            config_error(&b).contains("EVENTBUS_BROADCAST_QUEUE_BYTES"),
            "the default max_payload (1 MiB) does not fit in 4096 bytes"
        );
    }
}
