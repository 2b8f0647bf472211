//! A real `redis-server` per test.
//!
//! [`RedisServer`] starts its own `redis-server` on a free loopback port in a fresh temporary
//! directory and kills it on drop. Tests never touch a Redis that happens to be running.

use std::net::TcpListener;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use tempfile::TempDir;

use crate::process::signal;

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

/// A loopback port nobody listens on right now (it may be taken before the caller binds it).
pub(crate) fn free_port() -> u16 {
    let listener = TcpListener::bind("127.0.0.1:0").expect("bind an ephemeral port");
    listener.local_addr().expect("local addr").port()
}
