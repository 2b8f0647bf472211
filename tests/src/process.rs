//! Processes a test owns: the `consumer` binary as a [`ChildProcess`] killed on drop, and
//! [`signal`] for any process by pid.

use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

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
