//! [`BusBuilder`]: every setting, its environment variable, and validation.

use std::path::PathBuf;
use std::time::Duration;

use crate::retry::RetryPolicy;
use crate::state::States;

mod env;
mod names;
mod url;
mod validate;

pub(crate) use self::names::{NAME_RULE, forbidden_char};
pub(crate) use self::url::redact;
pub(crate) use self::validate::{fmt_duration, parse_duration};

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
