//! Test support for eventbus: a real `redis-server` per test, and waiting with deadlines.
//!
//! [`RedisServer`] starts its own `redis-server` on a free loopback port in a fresh temporary
//! directory and kills it on drop. Tests never touch a Redis that happens to be running.

use std::net::TcpListener;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use tempfile::TempDir;

pub mod acl;
pub mod chaos;
pub mod logs;
pub mod proxy;
pub mod tls;

/// How a test server persists data.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Persistence {
    /// Nothing on disk (`--save '' --appendonly no`).
    None,
    /// AOF with `appendfsync always`.
    AofAlways,
    /// AOF with `appendfsync everysec`.
    AofEverySec,
}

/// A `redis-server` process owned by one test.
#[derive(Debug)]
pub struct RedisServer {
    child: Option<Child>,
    port: u16,
    dir: TempDir,
    persistence: Persistence,
    extra: Vec<String>,
}

impl RedisServer {
    /// Starts a server without persistence.
    ///
    /// # Panics
    ///
    /// When `redis-server` is not installed or does not come up (the log is in the message).
    pub fn start() -> RedisServer {
        Self::start_with(Persistence::None, &[])
    }

    /// Starts a server with the given persistence and extra `redis-server` arguments
    /// (e.g. `["--maxmemory", "10mb"]`).
    ///
    /// # Panics
    ///
    /// When `redis-server` is not installed or does not come up (the log is in the message).
    pub fn start_with(persistence: Persistence, extra: &[&str]) -> RedisServer {
        let mut dir = tempfile::Builder::new()
            .prefix("eventbus-redis-")
            .tempdir()
            .expect("create temp dir");
        let mut last_error = String::new();
        // A free port can be taken between probing and binding: try a few.
        for _ in 0..5 {
            let port = free_port();
            let mut server = RedisServer {
                child: None,
                port,
                dir,
                persistence,
                extra: extra.iter().map(|s| (*s).to_owned()).collect(),
            };
            match server.spawn() {
                Ok(()) => return server,
                Err(e) => {
                    last_error = e;
                    dir = server.take_dir();
                }
            }
        }
        panic!("redis-server did not start: {last_error}");
    }

    fn take_dir(mut self) -> TempDir {
        self.kill();
        let placeholder = tempfile::tempdir().expect("temp dir");
        std::mem::replace(&mut self.dir, placeholder)
    }

    fn spawn(&mut self) -> Result<(), String> {
        let mut cmd = Command::new("redis-server");
        cmd.arg("--port")
            .arg(self.port.to_string())
            .arg("--bind")
            .arg("127.0.0.1")
            .arg("--dir")
            .arg(self.dir.path())
            .arg("--logfile")
            .arg(self.log_path())
            .arg("--save")
            .arg("")
            .arg("--daemonize")
            .arg("no")
            .arg("--protected-mode")
            .arg("no");
        match self.persistence {
            Persistence::None => {
                cmd.arg("--appendonly").arg("no");
            }
            Persistence::AofAlways => {
                cmd.arg("--appendonly")
                    .arg("yes")
                    .arg("--appendfsync")
                    .arg("always");
            }
            Persistence::AofEverySec => {
                cmd.arg("--appendonly")
                    .arg("yes")
                    .arg("--appendfsync")
                    .arg("everysec");
            }
        }
        cmd.args(&self.extra)
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::null());
        let child = cmd.spawn().map_err(|e| {
            format!("cannot run redis-server ({e}); install it (apt-get install redis-server)")
        })?;
        self.child = Some(child);
        let deadline = Instant::now() + Duration::from_secs(10);
        loop {
            if let Some(child) = self.child.as_mut()
                && let Ok(Some(status)) = child.try_wait()
            {
                self.child = None;
                return Err(format!(
                    "redis-server exited with {status}; log:\n{}",
                    self.log()
                ));
            }
            if self.ping() {
                return Ok(());
            }
            if Instant::now() > deadline {
                self.kill();
                return Err(format!(
                    "redis-server did not answer within 10s; log:\n{}",
                    self.log()
                ));
            }
            std::thread::sleep(Duration::from_millis(20)); // ok: polling for readiness with a deadline
        }
    }

    fn ping(&self) -> bool {
        let Ok(client) = redis::Client::open(self.url()) else {
            return false;
        };
        let Ok(mut conn) = client.get_connection_with_timeout(Duration::from_millis(200)) else {
            return false;
        };
        redis::cmd("PING").query::<String>(&mut conn).is_ok()
    }

    fn log_path(&self) -> PathBuf {
        self.dir.path().join("redis.log")
    }

    /// The server's log so far.
    pub fn log(&self) -> String {
        std::fs::read_to_string(self.log_path()).unwrap_or_default()
    }

    /// The data directory.
    pub fn dir(&self) -> &Path {
        self.dir.path()
    }

    /// The port.
    pub fn port(&self) -> u16 {
        self.port
    }

    /// `redis://127.0.0.1:<port>`.
    pub fn url(&self) -> String {
        format!("redis://127.0.0.1:{}", self.port)
    }

    /// The process id, while running.
    pub fn pid(&self) -> Option<u32> {
        self.child.as_ref().map(Child::id)
    }

    /// A client for this server.
    ///
    /// # Panics
    ///
    /// Never for the URL this harness makes.
    pub fn client(&self) -> redis::Client {
        redis::Client::open(self.url()).expect("valid url")
    }

    /// A fresh multiplexed connection (default timeouts; not for blocking commands).
    ///
    /// # Panics
    ///
    /// When the server does not accept the connection.
    pub async fn conn(&self) -> redis::aio::MultiplexedConnection {
        self.client()
            .get_multiplexed_async_connection()
            .await
            .expect("connect to test redis")
    }

    /// Kills the server with SIGKILL and waits for it to exit.
    pub fn kill(&mut self) {
        if let Some(mut child) = self.child.take() {
            let _ = child.kill();
            let _ = child.wait();
        }
    }

    /// Sends a signal (`"STOP"`, `"CONT"`, `"TERM"`, ...) to the server process.
    ///
    /// # Panics
    ///
    /// When the server is not running or `kill` fails.
    pub fn signal(&self, sig: &str) {
        let pid = self.pid().expect("server is running");
        signal(pid, sig);
    }

    /// Starts the server again on the same port and data directory.
    ///
    /// # Panics
    ///
    /// When it does not come up.
    pub fn restart(&mut self) {
        self.kill();
        let deadline = Instant::now() + Duration::from_secs(10);
        loop {
            match self.spawn() {
                Ok(()) => return,
                Err(e) if Instant::now() > deadline => panic!("redis-server did not restart: {e}"),
                // The port may linger briefly after a kill.
                Err(_) => std::thread::sleep(Duration::from_millis(50)), // ok: retrying with a deadline
            }
        }
    }
}

impl Drop for RedisServer {
    fn drop(&mut self) {
        self.kill();
    }
}

/// Sends a signal to a process by pid with `kill -<sig>`.
///
/// # Panics
///
/// When `kill` cannot be run or fails.
pub fn signal(pid: u32, sig: &str) {
    let status = Command::new("kill")
        .arg(format!("-{sig}"))
        .arg(pid.to_string())
        .status()
        .expect("run kill");
    assert!(status.success(), "kill -{sig} {pid} failed");
}

fn free_port() -> u16 {
    let listener = TcpListener::bind("127.0.0.1:0").expect("bind an ephemeral port");
    listener.local_addr().expect("local addr").port()
}

/// A namespace no other test uses.
pub fn namespace(test: &str) -> String {
    use std::sync::atomic::{AtomicU32, Ordering};
    static N: AtomicU32 = AtomicU32::new(0);
    format!(
        "t-{test}-{}-{}",
        std::process::id(),
        N.fetch_add(1, Ordering::Relaxed)
    )
}

/// Waits until `cond` returns true, checking every 10 ms, for at most `timeout`.
///
/// # Panics
///
/// When the deadline passes; the message names `what`.
pub async fn wait_until<F, Fut>(timeout: Duration, what: &str, mut cond: F)
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = bool>,
{
    let deadline = Instant::now() + timeout;
    loop {
        if cond().await {
            return;
        }
        assert!(
            Instant::now() < deadline,
            "timed out after {timeout:?} waiting for: {what}"
        );
        tokio::time::sleep(Duration::from_millis(10)).await; // ok: poll interval under a deadline
    }
}

/// Installs a test tracing subscriber once (honours `RUST_LOG`).
pub fn init_tracing() {
    let _ = tracing_subscriber::fmt()
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_from_default_env()
                .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("warn")),
        )
        .with_test_writer()
        .try_init();
}

/// The stream key of an event: `<ns>:{<event name>}`.
pub fn stream_key(namespace: &str, event: &str) -> String {
    format!("{namespace}:{{{event}}}")
}

/// The dead-letter key of an event: `<ns>:{<event name>}:dlq`.
pub fn dlq_key(namespace: &str, event: &str) -> String {
    format!("{namespace}:{{{event}}}:dlq")
}

/// The number of pending entries of a consumer group (`XPENDING <stream> <group>` summary count);
/// 0 when the stream or group does not exist.
///
/// # Panics
///
/// When Redis fails.
pub async fn pending_count(
    conn: &mut redis::aio::MultiplexedConnection,
    stream: &str,
    group: &str,
) -> u64 {
    let reply: redis::RedisResult<redis::Value> = redis::cmd("XPENDING")
        .arg(stream)
        .arg(group)
        .query_async(conn)
        .await;
    match reply {
        Ok(redis::Value::Array(items)) => match items.first() {
            Some(redis::Value::Int(n)) => u64::try_from(*n).unwrap_or(0),
            other => panic!("unexpected XPENDING summary: {other:?}"),
        },
        Ok(other) => panic!("unexpected XPENDING reply: {other:?}"),
        Err(e) if e.code() == Some("NOGROUP") => 0,
        Err(e) => panic!("XPENDING {stream} {group}: {e}"),
    }
}

/// The `last-delivered-id` of a consumer group (`XINFO GROUPS`), if the group exists.
///
/// # Panics
///
/// When Redis fails.
pub async fn last_delivered_id(
    conn: &mut redis::aio::MultiplexedConnection,
    stream: &str,
    group: &str,
) -> Option<String> {
    let reply: redis::streams::StreamInfoGroupsReply = redis::cmd("XINFO")
        .arg("GROUPS")
        .arg(stream)
        .query_async(conn)
        .await
        .expect("XINFO GROUPS");
    reply
        .groups
        .into_iter()
        .find(|g| g.name == group)
        .map(|g| g.last_delivered_id)
}

/// The ids of every entry of a stream, oldest first.
///
/// # Panics
///
/// When Redis fails.
pub async fn stream_ids(conn: &mut redis::aio::MultiplexedConnection, stream: &str) -> Vec<String> {
    let reply: redis::streams::StreamRangeReply = redis::cmd("XRANGE")
        .arg(stream)
        .arg("-")
        .arg("+")
        .query_async(conn)
        .await
        .expect("XRANGE");
    reply.ids.into_iter().map(|e| e.id).collect()
}

/// A child process (the `consumer` binary) that is killed with SIGKILL when dropped, so a
/// failing test never leaves it running. Its stdout lines are collected by a thread.
#[derive(Debug)]
pub struct ChildProcess {
    child: Option<Child>,
    lines: std::sync::mpsc::Receiver<String>,
    stdout: Vec<String>,
    stderr: std::sync::Arc<std::sync::Mutex<String>>,
}

impl ChildProcess {
    /// Spawns `program` with the extra environment `env`, stdout and stderr piped.
    ///
    /// # Panics
    ///
    /// When the program cannot be started.
    pub fn spawn(program: &str, env: &[(&str, &str)]) -> ChildProcess {
        use std::io::{BufRead, Read};
        let mut cmd = Command::new(program);
        cmd.stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped());
        for (k, v) in env {
            cmd.env(k, v);
        }
        let mut child = cmd
            .spawn()
            .unwrap_or_else(|e| panic!("cannot run {program}: {e}"));
        let stdout = child.stdout.take().expect("piped stdout");
        let (tx, lines) = std::sync::mpsc::channel();
        std::thread::spawn(move || {
            for line in std::io::BufReader::new(stdout).lines() {
                let Ok(line) = line else { break };
                if tx.send(line).is_err() {
                    break;
                }
            }
        });
        let mut err_pipe = child.stderr.take().expect("piped stderr");
        let stderr = std::sync::Arc::new(std::sync::Mutex::new(String::new()));
        let sink = stderr.clone();
        std::thread::spawn(move || {
            let mut buf = [0u8; 4096];
            loop {
                match err_pipe.read(&mut buf) {
                    Ok(0) | Err(_) => break,
                    Ok(n) => {
                        if let Ok(mut s) = sink.lock() {
                            s.push_str(&String::from_utf8_lossy(&buf[..n]));
                        }
                    }
                }
            }
        });
        ChildProcess {
            child: Some(child),
            lines,
            stdout: Vec::new(),
            stderr,
        }
    }

    /// The process id.
    ///
    /// # Panics
    ///
    /// After the process was killed or reaped.
    pub fn id(&self) -> u32 {
        self.child.as_ref().expect("child is running").id()
    }

    /// Waits (blocking) for a stdout line starting with `prefix` and returns it; stdout lines seen
    /// so far are kept in [`stdout`](Self::stdout).
    ///
    /// # Panics
    ///
    /// When no such line comes within `timeout` (the message holds stdout and stderr so far).
    pub fn wait_for_line(&mut self, prefix: &str, timeout: Duration) -> String {
        let deadline = Instant::now() + timeout;
        loop {
            let left = deadline.saturating_duration_since(Instant::now());
            match self.lines.recv_timeout(left) {
                Ok(line) => {
                    self.stdout.push(line.clone());
                    if line.starts_with(prefix) {
                        return line;
                    }
                }
                Err(e) => panic!(
                    "no stdout line starting with {prefix:?} within {timeout:?} ({e}); stdout: {:?}; stderr:\n{}",
                    self.stdout,
                    self.stderr()
                ),
            }
        }
    }

    /// Stdout lines seen so far by [`wait_for_line`](Self::wait_for_line) and
    /// [`drain_stdout`](Self::drain_stdout).
    pub fn stdout(&self) -> &[String] {
        &self.stdout
    }

    /// Collects stdout lines available now without waiting.
    pub fn drain_stdout(&mut self) -> &[String] {
        while let Ok(line) = self.lines.try_recv() {
            self.stdout.push(line);
        }
        &self.stdout
    }

    /// Stderr so far.
    pub fn stderr(&self) -> String {
        self.stderr.lock().map(|s| s.clone()).unwrap_or_default()
    }

    /// The exit status if the process has exited (without blocking).
    ///
    /// # Panics
    ///
    /// When the status cannot be read.
    pub fn try_wait(&mut self) -> Option<std::process::ExitStatus> {
        self.child
            .as_mut()
            .and_then(|c| c.try_wait().expect("try_wait"))
    }

    /// Sends a signal (`"TERM"`, `"STOP"`, ...) to the process.
    ///
    /// # Panics
    ///
    /// When `kill` fails.
    pub fn signal(&self, sig: &str) {
        signal(self.id(), sig);
    }

    /// Kills the process with SIGKILL (`Child::kill`) and reaps it.
    pub fn kill(&mut self) {
        if let Some(mut child) = self.child.take() {
            let _ = child.kill();
            let _ = child.wait();
        }
    }
}

impl Drop for ChildProcess {
    fn drop(&mut self) {
        self.kill();
    }
}
