//! Redis connections and key names. The only module that knows redis-rs connection types.
//!
//! Every connection the bus makes (the shared one, each reader's blocking one, the broadcast
//! subscriber's) comes from one [`Client`] whose TCP settings turn on keepalive and, on Linux,
//! `TCP_USER_TIMEOUT` (see [`KEEPALIVE_IDLE`] and [`TCP_USER_TIMEOUT`]): a peer that vanished is
//! noticed by the kernel in seconds, not after ~15 minutes of retransmissions.
//!
//! The shared connection ([`SharedConn`]) is watched by a supervisor task: a probe every
//! [`PROBE_INTERVAL`], and a replacement by a freshly connected one (a new TCP connection, so DNS
//! or a proxy sends it to the current primary) when the server answers `READONLY` or
//! `MASTERDOWN`, when commands time out [`TIMEOUTS_BEFORE_REPLACING`] times in a row, or when a
//! probe fails. redis-rs's connection manager reconnects by itself only when the socket breaks.
//! A command still waiting on a connection that was replaced gives up within
//! [`REPLACED_CHECK`] (an I/O error its caller retries), so nothing waits out the response
//! timeout on a dead flow.

use std::sync::atomic::{AtomicBool, AtomicU32, AtomicU64, Ordering};
use std::sync::{Arc, Mutex, MutexGuard, Weak};
use std::time::Duration;

use redis::aio::{ConnectionManager, ConnectionManagerConfig, MultiplexedConnection};
use redis::{AsyncConnectionConfig, Client, Cmd, IntoConnectionInfo, Pipeline, RedisFuture, Value};
use tokio::time::Instant;
use tokio_util::sync::CancellationToken;

use crate::config::Config;
use crate::error::{Error, Result};
use crate::telemetry::ConnStats;

/// How often the supervisor probes the shared connection (`HELLO`, or `PING` where `HELLO` is
/// not available), whether or not the connection carries traffic: a publish-only bus that sees
/// no traffic still reports within about a second that Redis is gone, frozen or demoted, and
/// that it is back.
pub(crate) const PROBE_INTERVAL: Duration = Duration::from_secs(1);

/// How long one probe waits for its reply before it counts as failed and the connection is
/// replaced: well above any healthy round trip, short enough to heal a silently dropped
/// (half-open) flow within a few seconds.
pub(crate) const PROBE_TIMEOUT: Duration = Duration::from_secs(2);

/// Response timeouts in a row (of commands on the shared connection) after which it counts as
/// dead and is replaced. One timeout may be a slow command; two in a row are a dead flow.
pub(crate) const TIMEOUTS_BEFORE_REPLACING: u32 = 2;

/// The response timeout of every command on the shared connection.
const RESPONSE_TIMEOUT: Duration = Duration::from_secs(10);

/// The first wait after a failed replacement attempt (or before a replacement that follows
/// another within [`REPLACE_SETTLE`]); it doubles up to [`REPLACE_BACKOFF_MAX`].
const REPLACE_BACKOFF_MIN: Duration = Duration::from_millis(100);

/// The longest wait between replacement attempts: once the address leads to a working primary
/// again, the connection is replaced within about this long.
const REPLACE_BACKOFF_MAX: Duration = Duration::from_secs(1);

/// A replacement asked for within this long of the previous one waits first (escalating
/// backoff), so a server that keeps failing new connections is not hammered.
const REPLACE_SETTLE: Duration = Duration::from_secs(10);

/// How often a command still waiting for its reply checks whether its connection was replaced
/// meanwhile (it is then retried on the new one instead of waiting for a dead flow to time out).
/// Not shorter than [`PROBE_INTERVAL`]: the supervisor's next tick is then always due first, so
/// the check's timer is never the runtime's earliest one, whose registration would wake the
/// timer driver (a syscall per publish).
pub(crate) const REPLACED_CHECK: Duration = PROBE_INTERVAL;

/// TCP keepalive: the idle time before the first probe on every connection of the bus.
pub(crate) const KEEPALIVE_IDLE: Duration = Duration::from_secs(5);

/// TCP keepalive: the time between unanswered probes (where the OS lets it be set).
pub(crate) const KEEPALIVE_INTERVAL: Duration = Duration::from_secs(2);

/// TCP keepalive: unanswered probes before the kernel drops the connection (where the OS lets
/// it be set): an idle connection to a vanished peer dies after about 5 + 3 × 2 = 11 s.
pub(crate) const KEEPALIVE_RETRIES: u32 = 3;

/// `TCP_USER_TIMEOUT` (Linux, Android, Fuchsia): how long sent data may stay unacknowledged
/// before the kernel drops the connection. Above the keepalive budget, so it also bounds it.
pub(crate) const TCP_USER_TIMEOUT: Duration = Duration::from_secs(15);

/// The bus's shared connection for short commands (XADD, XACK, XAUTOCLAIM, ...): a
/// [`ConnectionManager`] that is replaced by a new one when it stops working in ways the manager
/// does not notice itself (a demoted primary answering `READONLY`, a half-open flow). Cheap to
/// clone; every clone sees the replacement. Use it like any redis-rs async connection.
///
/// A supervisor task probes it every [`PROBE_INTERVAL`] and ends when the last clone is dropped.
#[derive(Clone)]
pub(crate) struct SharedConn {
    inner: Arc<SharedInner>,
}

struct SharedInner {
    state: Mutex<State>,
    /// Bumped (under the `state` lock) each time the connection is replaced.
    generation: AtomicU64,
    /// Response timeouts in a row on the current connection.
    timeouts: AtomicU32,
    /// A replacement task is running (only one at a time).
    replacing: AtomicBool,
    /// Whether probes may use `HELLO` (which reports the server's role); false after the server
    /// refused it (Redis < 6.2), then probes use `PING`.
    hello: AtomicBool,
    /// The last publish failed with an error a probe cannot vouch for (an ACL denial, OOM,
    /// LOADING, ...): probes leave the error in health until a publish succeeds.
    publish_failing: AtomicBool,
    stats: Arc<ConnStats>,
    client: Client,
    connect_timeout: Duration,
    /// Cancelled when the last clone is dropped: stops the supervisor and any replacement.
    stop: CancellationToken,
}

struct State {
    conn: ConnectionManager,
    /// A failure of the current connection asked for a replacement not yet done.
    requested: bool,
    /// When the connection was last replaced, and how many replacements came in quick
    /// succession (each within [`REPLACE_SETTLE`] of the previous one).
    last_replaced: Option<Instant>,
    streak: u32,
}

impl Drop for SharedInner {
    fn drop(&mut self) {
        self.stop.cancel();
    }
}

impl std::fmt::Debug for SharedConn {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("SharedConn")
    }
}

/// What a command waited on with [`SharedConn::bounded`] came to.
pub(crate) enum Bounded<T> {
    /// It finished.
    Done(T),
    /// The connection it was sent on was replaced while it waited: send it again.
    Replaced,
    /// The deadline passed first.
    Elapsed,
}

impl SharedInner {
    fn lock(&self) -> MutexGuard<'_, State> {
        self.state
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
    }
}

impl SharedConn {
    fn new(conn: ConnectionManager, client: Client, config: &Config) -> SharedConn {
        SharedConn {
            inner: Arc::new(SharedInner {
                state: Mutex::new(State {
                    conn,
                    requested: false,
                    last_replaced: None,
                    streak: 0,
                }),
                generation: AtomicU64::new(0),
                timeouts: AtomicU32::new(0),
                replacing: AtomicBool::new(false),
                hello: AtomicBool::new(true),
                publish_failing: AtomicBool::new(false),
                stats: Arc::new(ConnStats::default()),
                client,
                connect_timeout: config.connect_timeout,
                stop: CancellationToken::new(),
            }),
        }
    }

    /// The connection in use now.
    pub(crate) fn get(&self) -> ConnectionManager {
        self.inner.lock().conn.clone()
    }

    /// The connection in use now and its generation.
    fn get_with_generation(&self) -> (ConnectionManager, u64) {
        let state = self.inner.lock();
        (
            state.conn.clone(),
            self.inner.generation.load(Ordering::Acquire),
        )
    }

    /// The generation of the connection in use now: it changes each time the connection is
    /// replaced.
    pub(crate) fn generation(&self) -> u64 {
        self.inner.generation.load(Ordering::Acquire)
    }

    /// The connection's health counters.
    pub(crate) fn stats(&self) -> &Arc<ConnStats> {
        &self.inner.stats
    }

    /// Waits for `fut` (a command sent on this connection at `generation`) until `deadline`
    /// (if any), checking every [`REPLACED_CHECK`] whether the connection was replaced meanwhile: a command
    /// stuck on a dead flow is then given up for one on the new connection. One timer, armed
    /// once on the fast path.
    pub(crate) async fn bounded<F: Future>(
        &self,
        fut: F,
        generation: u64,
        deadline: Option<Instant>,
    ) -> Bounded<F::Output> {
        let mut fut = std::pin::pin!(fut);
        let check = |now: Instant| match deadline {
            Some(deadline) => deadline.min(now + REPLACED_CHECK),
            None => now + REPLACED_CHECK,
        };
        let mut sleep = std::pin::pin!(tokio::time::sleep_until(check(Instant::now())));
        loop {
            tokio::select! {
                biased;
                r = &mut fut => return Bounded::Done(r),
                () = &mut sleep => {
                    let now = Instant::now();
                    if deadline.is_some_and(|deadline| now >= deadline) {
                        return Bounded::Elapsed;
                    }
                    if self.generation() != generation {
                        return Bounded::Replaced;
                    }
                    sleep.as_mut().reset(check(now));
                }
            }
        }
    }

    /// A publish succeeded: the publish path works (cheap when nothing was failing).
    pub(crate) fn publish_succeeded(&self) {
        if self.inner.publish_failing.load(Ordering::Relaxed) {
            self.inner.publish_failing.store(false, Ordering::Relaxed);
        }
        self.inner.stats.ok();
    }

    /// A publish attempt failed with a Redis error or timed out (`error` is `None` for a
    /// timeout): health reports it until a publish or (for connection-level failures a probe
    /// can vouch for) a probe succeeds.
    pub(crate) fn publish_failed(&self, message: String, error: Option<&redis::RedisError>) {
        let probe_clears = match error {
            None => true,
            Some(e) => {
                super::errors::is_connection_level(e)
                    || (matches!(e.code(), Some("READONLY" | "MASTERDOWN"))
                        && self.inner.hello.load(Ordering::Relaxed))
            }
        };
        if !probe_clears {
            self.inner.publish_failing.store(true, Ordering::Relaxed);
        }
        if error.is_none_or(super::errors::is_connection_level) {
            self.inner.stats.connected.store(false, Ordering::Relaxed);
        }
        self.inner.stats.failed(message);
    }

    /// Counts one publish call that returned a Redis or timeout error.
    pub(crate) fn count_publish_error(&self) {
        self.inner
            .stats
            .publish_errors
            .fetch_add(1, Ordering::Relaxed);
    }

    /// Looks at the error of a command sent on this connection and replaces the connection
    /// when the error says it is pinned to the wrong server (`READONLY`, `MASTERDOWN`) or dead
    /// ([`TIMEOUTS_BEFORE_REPLACING`] response timeouts in a row). Commands sent through this
    /// type's `ConnectionLike` impl are reported already; this is for errors seen elsewhere.
    #[allow(dead_code)] // for callers outside this module
    pub(crate) fn report(&self, error: &redis::RedisError) {
        self.report_at(error, self.generation());
    }

    fn report_at(&self, error: &redis::RedisError, generation: u64) {
        let reason = if matches!(error.code(), Some("READONLY" | "MASTERDOWN")) {
            format!("the server answered {error}: it is no longer the primary")
        } else if error.is_timeout() {
            let n = self.inner.timeouts.fetch_add(1, Ordering::Relaxed) + 1;
            if n < TIMEOUTS_BEFORE_REPLACING {
                return;
            }
            format!("{n} commands in a row got no reply within {RESPONSE_TIMEOUT:?}")
        } else {
            return;
        };
        self.request_replacement(generation, &reason);
    }

    /// A command on this connection succeeded: resets the run of timeouts (an atomic load when
    /// there was none).
    fn answered(&self) {
        if self.inner.timeouts.load(Ordering::Relaxed) != 0 {
            self.inner.timeouts.store(0, Ordering::Relaxed);
        }
    }

    /// Asks for the connection of `generation` to be replaced; a no-op when it was replaced
    /// already. Never waits: a task connects the new one while callers keep the old one.
    fn request_replacement(&self, generation: u64, reason: &str) {
        request_replacement(&self.inner, generation, reason);
    }
}

fn request_replacement(inner: &Arc<SharedInner>, generation: u64, reason: &str) {
    {
        let mut state = inner.lock();
        if inner.generation.load(Ordering::Acquire) != generation {
            return;
        }
        state.requested = true;
    }
    if inner.replacing.swap(true, Ordering::AcqRel) {
        return; // the running replacement sees `requested`
    }
    let Ok(runtime) = tokio::runtime::Handle::try_current() else {
        inner.replacing.store(false, Ordering::Release);
        return;
    };
    tracing::warn!(reason, "replacing the shared Redis connection");
    runtime.spawn(replace(Arc::downgrade(inner)));
}

/// The wait before replacement attempt `n` (0: none).
fn replace_backoff(n: u32) -> Duration {
    if n == 0 {
        return Duration::ZERO;
    }
    REPLACE_BACKOFF_MIN
        .saturating_mul(2u32.saturating_pow(n.saturating_sub(1).min(16)))
        .min(REPLACE_BACKOFF_MAX)
}

/// Connects a new shared connection (retrying with backoff while that fails) and swaps it in;
/// another round follows when the new one fails too before this task ends. Ends when the bus
/// is dropped.
async fn replace(weak: Weak<SharedInner>) {
    let mut failures = 0u32;
    loop {
        let Some(inner) = weak.upgrade() else { return };
        let wait = {
            let state = inner.lock();
            let recent = state
                .last_replaced
                .is_some_and(|t| t.elapsed() < REPLACE_SETTLE);
            replace_backoff(failures + if recent { state.streak } else { 0 })
        };
        let client = inner.client.clone();
        let connect_timeout = inner.connect_timeout;
        let hello = inner.hello.load(Ordering::Relaxed);
        let stop = inner.stop.clone();
        drop(inner);
        let connect = async {
            if !wait.is_zero() {
                tokio::time::sleep(wait).await;
            }
            tokio::time::timeout(
                connect_timeout + PROBE_TIMEOUT,
                connect_primary(&client, connect_timeout, hello),
            )
            .await
        };
        let result = tokio::select! {
            () = stop.cancelled() => return,
            r = connect => r,
        };
        let Some(inner) = weak.upgrade() else { return };
        match result {
            Ok(Ok(conn)) => {
                install(&inner, conn);
                inner.replacing.store(false, Ordering::Release);
                // The new connection failed too before this task let go: another round.
                if inner.lock().requested && !inner.replacing.swap(true, Ordering::AcqRel) {
                    failures = 0;
                    continue;
                }
                return;
            }
            // Warned once per round; a long outage retries quietly (health reports it).
            Ok(Err(e)) if failures == 0 => {
                tracing::warn!(error = %e, "cannot replace the shared Redis connection yet; retrying");
            }
            Err(_) if failures == 0 => {
                tracing::warn!(
                    timeout = ?(connect_timeout + PROBE_TIMEOUT),
                    "cannot replace the shared Redis connection yet (not connected and answering in time); retrying"
                );
            }
            Ok(Err(e)) => {
                tracing::debug!(error = %e, "replacing the shared Redis connection failed again")
            }
            Err(_) => tracing::debug!("replacing the shared Redis connection timed out again"),
        }
        failures = failures.saturating_add(1);
    }
}

/// Swaps `conn` in as the shared connection.
fn install(inner: &SharedInner, conn: ConnectionManager) {
    let old = {
        let mut state = inner.lock();
        let recent = state
            .last_replaced
            .is_some_and(|t| t.elapsed() < REPLACE_SETTLE);
        state.streak = if recent { state.streak + 1 } else { 1 };
        state.last_replaced = Some(Instant::now());
        state.requested = false;
        inner.generation.fetch_add(1, Ordering::AcqRel);
        std::mem::replace(&mut state.conn, conn)
    };
    inner.timeouts.store(0, Ordering::Relaxed);
    inner.stats.replaced.fetch_add(1, Ordering::Relaxed);
    if !inner.publish_failing.load(Ordering::Relaxed) {
        inner.stats.ok();
    }
    tracing::info!("shared Redis connection replaced");
    // Commands still waiting on the old connection finish (or time out) on their own clones.
    drop(old);
}

/// A new connection manager to a server that answers and is a primary (when `hello` is usable
/// to tell).
async fn connect_primary(
    client: &Client,
    connect_timeout: Duration,
    hello: bool,
) -> redis::RedisResult<ConnectionManager> {
    let mut conn = client
        .get_connection_manager_with_config(manager_config(connect_timeout))
        .await?;
    match probe(&mut conn, hello).await? {
        Probe::Primary => Ok(conn),
        Probe::Replica(role) => Err(redis::RedisError::from((
            redis::ErrorKind::Io,
            "the address leads to a replica",
            format!("role {role}"),
        ))),
        Probe::NoHello => {
            redis::cmd("PING").query_async::<()>(&mut conn).await?;
            Ok(conn)
        }
    }
}

/// What a probe found.
enum Probe {
    /// The server answers and is a primary (or `PING` answered: role unknown).
    Primary,
    /// The server answers but is a replica (its role).
    Replica(String),
    /// `HELLO` was refused (Redis < 6.2): use `PING`.
    NoHello,
}

/// `HELLO` (no arguments: the connection's properties, protocol unchanged, allowed to every
/// user) and the server's role from its reply; `PING` when `hello` is false.
async fn probe(conn: &mut ConnectionManager, hello: bool) -> redis::RedisResult<Probe> {
    if !hello {
        redis::cmd("PING").query_async::<()>(conn).await?;
        return Ok(Probe::Primary);
    }
    let reply = match redis::cmd("HELLO").query_async::<Value>(conn).await {
        Ok(v) => v,
        // A server error (unknown command, wrong arity on Redis 6.0): no HELLO here.
        Err(e) if e.code().is_some() => return Ok(Probe::NoHello),
        Err(e) => return Err(e),
    };
    let pairs: Vec<(&Value, &Value)> = match &reply {
        Value::Map(pairs) => pairs.iter().map(|(k, v)| (k, v)).collect(),
        Value::Array(items) => items
            .chunks(2)
            .filter_map(|kv| match kv {
                [k, v] => Some((k, v)),
                _ => None,
            })
            .collect(),
        _ => Vec::new(),
    };
    let text = |v: &Value| match v {
        Value::BulkString(b) => Some(String::from_utf8_lossy(b).into_owned()),
        Value::SimpleString(s) => Some(s.clone()),
        Value::VerbatimString { text, .. } => Some(text.clone()),
        _ => None,
    };
    let role = pairs
        .into_iter()
        .find(|(k, _)| text(k).as_deref() == Some("role"))
        .and_then(|(_, v)| text(v));
    Ok(match role {
        Some(role) if role != "master" => Probe::Replica(role),
        _ => Probe::Primary,
    })
}

/// Probes the shared connection every [`PROBE_INTERVAL`]: reports the result in health and asks
/// for a replacement when the probe fails or finds a replica. Ends when the bus is dropped.
async fn supervise(weak: Weak<SharedInner>, stop: CancellationToken) {
    let mut tick = tokio::time::interval_at(Instant::now() + PROBE_INTERVAL, PROBE_INTERVAL);
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        tokio::select! {
            () = stop.cancelled() => return,
            _ = tick.tick() => {}
        }
        let Some(inner) = weak.upgrade() else { return };
        let (mut conn, generation) = SharedConn {
            inner: inner.clone(),
        }
        .get_with_generation();
        let hello = inner.hello.load(Ordering::Relaxed);
        drop(inner);
        let result = tokio::select! {
            () = stop.cancelled() => return,
            r = tokio::time::timeout(PROBE_TIMEOUT, probe(&mut conn, hello)) => r,
        };
        drop(conn);
        let Some(inner) = weak.upgrade() else { return };
        if inner.generation.load(Ordering::Acquire) != generation {
            // The connection probed was replaced meanwhile: its result says nothing about the
            // one in use now.
            continue;
        }
        let failure = match result {
            Ok(Ok(Probe::Primary)) => {
                inner.stats.connected.store(true, Ordering::Relaxed);
                if !inner.publish_failing.load(Ordering::Relaxed) {
                    inner.stats.ok();
                }
                continue;
            }
            Ok(Ok(Probe::NoHello)) => {
                tracing::debug!("Redis refused HELLO; probing with PING");
                inner.hello.store(false, Ordering::Relaxed);
                continue;
            }
            Ok(Ok(Probe::Replica(role))) => format!(
                "the shared connection leads to a replica (role {role}), where writes fail with READONLY: replacing it; if this lasts, point REDIS_URL at the primary"
            ),
            Ok(Err(e)) => format!(
                "the shared connection's probe failed ({e}): replacing it; check that Redis is up and reachable"
            ),
            Err(_) => format!(
                "the shared connection did not answer a probe within {PROBE_TIMEOUT:?} (Redis frozen, overloaded or the flow dropped): replacing it"
            ),
        };
        inner.stats.probe_failures.fetch_add(1, Ordering::Relaxed);
        inner.stats.connected.store(false, Ordering::Relaxed);
        inner.stats.failed(failure.clone());
        tracing::debug!(problem = %failure, "shared connection probe failed");
        request_replacement(&inner, generation, &failure);
    }
}

impl SharedConn {
    /// Runs one command (or pipeline) on the connection in use, reporting its outcome; with
    /// `watch`, a command still waiting when the connection is replaced gives up with
    /// [`replaced_error`] instead of waiting for a dead flow's response timeout.
    async fn run<T, F>(&self, watch: bool, send: F) -> redis::RedisResult<T>
    where
        F: AsyncFnOnce(&mut ConnectionManager) -> redis::RedisResult<T>,
    {
        let (mut conn, generation) = self.get_with_generation();
        let r = if watch {
            match self.bounded(send(&mut conn), generation, None).await {
                Bounded::Done(r) => r,
                Bounded::Replaced | Bounded::Elapsed => Err(replaced_error()),
            }
        } else {
            send(&mut conn).await
        };
        match &r {
            Ok(_) => self.answered(),
            Err(e) => self.report_at(e, generation),
        }
        r
    }

    /// This connection for a caller that bounds its wait itself with [`SharedConn::bounded`]:
    /// commands are not watched for a replacement a second time (one timer per command).
    pub(crate) fn unwatched(&self) -> Unwatched {
        Unwatched(self.clone())
    }
}

/// The error of a command given up because its connection was replaced while it waited for
/// the reply (a dead or demoted connection): an I/O error, so callers retry it as transient.
/// Whether it ran is unknown, as after any lost reply.
pub(crate) fn replaced_error() -> redis::RedisError {
    redis::RedisError::from((
        redis::ErrorKind::Io,
        "the shared Redis connection was replaced while the command waited for its reply",
    ))
}

/// Commands on the shared connection: each one is watched, so a command sent on a connection
/// that is replaced meanwhile fails at once with [`replaced_error`] (retry it) instead of
/// waiting out the response timeout on a dead flow.
impl redis::aio::ConnectionLike for SharedConn {
    fn req_packed_command<'a>(&'a mut self, cmd: &'a Cmd) -> RedisFuture<'a, Value> {
        Box::pin(self.run(true, async move |c: &mut ConnectionManager| {
            c.req_packed_command(cmd).await
        }))
    }

    fn req_packed_commands<'a>(
        &'a mut self,
        pipeline: &'a Pipeline,
        offset: usize,
        count: usize,
    ) -> RedisFuture<'a, Vec<Value>> {
        Box::pin(self.run(true, async move |c: &mut ConnectionManager| {
            c.req_packed_commands(pipeline, offset, count).await
        }))
    }

    fn get_db(&self) -> i64 {
        self.get().get_db()
    }
}

/// [`SharedConn`] without the per-command replacement watch; see [`SharedConn::unwatched`].
#[derive(Clone, Debug)]
pub(crate) struct Unwatched(SharedConn);

impl redis::aio::ConnectionLike for Unwatched {
    fn req_packed_command<'a>(&'a mut self, cmd: &'a Cmd) -> RedisFuture<'a, Value> {
        Box::pin(self.0.run(false, async move |c: &mut ConnectionManager| {
            c.req_packed_command(cmd).await
        }))
    }

    fn req_packed_commands<'a>(
        &'a mut self,
        pipeline: &'a Pipeline,
        offset: usize,
        count: usize,
    ) -> RedisFuture<'a, Vec<Value>> {
        Box::pin(self.0.run(false, async move |c: &mut ConnectionManager| {
            c.req_packed_commands(pipeline, offset, count).await
        }))
    }

    fn get_db(&self) -> i64 {
        self.0.get().get_db()
    }
}

/// The TCP settings of every connection of the bus: keepalive ([`KEEPALIVE_IDLE`],
/// [`KEEPALIVE_INTERVAL`], [`KEEPALIVE_RETRIES`]) and, on Linux, [`TCP_USER_TIMEOUT`]. Nagle's
/// algorithm is left as redis-rs sets it.
fn tcp_settings() -> redis::io::tcp::TcpSettings {
    use redis::io::tcp::socket2::TcpKeepalive;
    let keepalive = TcpKeepalive::new().with_time(KEEPALIVE_IDLE);
    #[cfg(any(
        target_os = "linux",
        target_os = "android",
        target_os = "fuchsia",
        target_os = "macos",
        target_os = "ios",
        target_os = "freebsd",
        target_os = "netbsd",
    ))]
    let keepalive = keepalive
        .with_interval(KEEPALIVE_INTERVAL)
        .with_retries(KEEPALIVE_RETRIES);
    let settings = redis::io::tcp::TcpSettings::default().set_keepalive(keepalive);
    #[cfg(any(target_os = "linux", target_os = "android", target_os = "fuchsia"))]
    let settings = settings.set_user_timeout(TCP_USER_TIMEOUT);
    settings
}

/// The client every connection of the bus comes from (shared, blocking readers, broadcast
/// subscriber), with [`tcp_settings`].
pub(crate) fn client(config: &Config) -> Result<Client> {
    let invalid = |source: redis::RedisError| Error::Config {
        key: "REDIS_URL",
        value: crate::config::redact(&config.redis_url),
        hint: format!(
            "not a valid Redis URL ({source}); expected redis://[user:password@]host:port[/db]"
        ),
    };
    if config.redis_url.starts_with("rediss://") {
        // rustls needs a process-wide crypto provider; install ring's unless the app chose one.
        let _ = rustls::crypto::ring::default_provider().install_default();
    }
    let info = config
        .redis_url
        .as_str()
        .into_connection_info()
        .map_err(invalid)?
        .set_tcp_settings(tcp_settings());
    if config.tls.is_empty() {
        return Client::open(info).map_err(invalid);
    }
    let read = |key: &'static str, path: &std::path::Path| {
        std::fs::read(path).map_err(|e| {
            Error::config(
                key,
                path.display().to_string(),
                format!("cannot read the PEM file: {e}"),
            )
        })
    };
    let root_cert = match &config.tls.ca_file {
        Some(p) => Some(read("EVENTBUS_TLS_CA_FILE", p)?),
        None => None,
    };
    let client_tls = match &config.tls.client_cert {
        Some((cert, key)) => Some(redis::ClientTlsConfig {
            client_cert: read("EVENTBUS_TLS_CERT_FILE", cert)?,
            client_key: read("EVENTBUS_TLS_KEY_FILE", key)?,
        }),
        None => None,
    };
    Client::build_with_tls(
        info,
        redis::TlsCertificates {
            client_tls,
            root_cert,
        },
    )
    .map_err(invalid)
}

/// The settings of a shared connection manager (the first one and every replacement).
fn manager_config(connect_timeout: Duration) -> ConnectionManagerConfig {
    ConnectionManagerConfig::new()
        .set_connection_timeout(Some(connect_timeout))
        .set_response_timeout(Some(RESPONSE_TIMEOUT))
        .set_number_of_retries(6)
        .set_max_delay(Duration::from_secs(2))
}

/// The shared connection for short commands (XADD, XACK, XAUTOCLAIM, ...), with its supervisor
/// running (see [`SharedConn`]).
pub(crate) async fn shared(client: &Client, config: &Config) -> Result<SharedConn> {
    // Fail fast when Redis is unreachable: the connection manager retries its first connection
    // with backoff (about 7 s with the settings below) whatever `connect_timeout` says.
    let probe_cfg = AsyncConnectionConfig::new()
        .set_connection_timeout(Some(config.connect_timeout))
        .set_response_timeout(Some(config.connect_timeout));
    let connect_error =
        |source| crate::transport::redis::errors::unreachable(&config.redis_url, source);
    let mut probe = client
        .get_multiplexed_async_connection_with_config(&probe_cfg)
        .await
        .map_err(connect_error)?;
    redis::cmd("PING")
        .query_async::<()>(&mut probe)
        .await
        .map_err(connect_error)?;
    drop(probe);
    let mut conn = client
        .get_connection_manager_with_config(manager_config(config.connect_timeout))
        .await
        .map_err(|source| {
            crate::transport::redis::errors::unreachable(&config.redis_url, source)
        })?;
    // The connection manager connects lazily on some errors; make sure the server answers.
    redis::cmd("PING")
        .query_async::<()>(&mut conn)
        .await
        .map_err(|source| {
            crate::transport::redis::errors::unreachable(&config.redis_url, source)
        })?;
    let shared = SharedConn::new(conn, client.clone(), config);
    tokio::spawn(supervise(
        Arc::downgrade(&shared.inner),
        shared.inner.stop.clone(),
    ));
    Ok(shared)
}

/// How long past its BLOCK time a read may take before the connection counts as stalled
/// (a frozen or half-open server) and is replaced.
pub(crate) const BLOCK_MARGIN: Duration = Duration::from_secs(2);

/// A dedicated connection for one reader's blocking XREADGROUP: its response timeout is the
/// block time plus a margin, never the client's 500 ms default (which would cut every BLOCK
/// short and leave phantom deliveries).
pub(crate) async fn blocking(
    client: &Client,
    config: &Config,
) -> redis::RedisResult<MultiplexedConnection> {
    let cfg = AsyncConnectionConfig::new()
        .set_connection_timeout(Some(config.connect_timeout))
        .set_response_timeout(Some(config.block_time + BLOCK_MARGIN));
    client
        .get_multiplexed_async_connection_with_config(&cfg)
        .await
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::transport::redis::errors::needs_new_connection;

    fn server_error(reply: &str) -> redis::RedisError {
        match redis::parse_redis_value(reply.as_bytes()) {
            Ok(Value::ServerError(e)) => e.into(),
            other => panic!("not a server error: {other:?}"),
        }
    }

    #[test]
    fn errors_that_need_a_new_connection() {
        for reply in [
            "-READONLY You can't write against a read only replica.\r\n",
            "-MASTERDOWN Link with MASTER is down\r\n",
            "-UNBLOCKED force unblock from blocking operation, instance state changed (master -> replica?)\r\n",
        ] {
            assert!(needs_new_connection(&server_error(reply)), "{reply}");
        }
        for kind in [
            std::io::ErrorKind::TimedOut,
            std::io::ErrorKind::ConnectionReset,
            std::io::ErrorKind::ConnectionRefused,
            std::io::ErrorKind::UnexpectedEof,
        ] {
            let e = redis::RedisError::from(std::io::Error::from(kind));
            assert!(needs_new_connection(&e), "{kind:?}");
        }
        for reply in [
            "-NOPERM no permissions\r\n",
            "-NOGROUP No such key or consumer group\r\n",
            "-WRONGTYPE Operation against a key\r\n",
            "-MOVED 3999 127.0.0.1:6381\r\n",
            "-LOADING Redis is loading the dataset in memory\r\n",
        ] {
            assert!(!needs_new_connection(&server_error(reply)), "{reply}");
        }
    }

    #[test]
    fn replacements_back_off_up_to_a_cap() {
        let ms: Vec<u128> = (0..7).map(|n| replace_backoff(n).as_millis()).collect();
        assert_eq!(ms, [0, 100, 200, 400, 800, 1000, 1000]);
        assert_eq!(replace_backoff(u32::MAX), REPLACE_BACKOFF_MAX);
        const { assert!(REPLACED_CHECK.as_nanos() >= PROBE_INTERVAL.as_nanos()) };
    }
}
