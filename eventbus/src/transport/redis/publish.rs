//! Publishing on Redis: the `XADD`/`PUBLISH` command of one event, and sending it (alone
//! through the [`Coalescer`], or a batch as one pipeline) bounded by the call's deadline,
//! retrying transient errors with backoff and resending on a replaced connection.

use std::time::Duration;

use redis::{Cmd, Pipeline, RedisError, Value};
use tokio::time::Instant;

use super::coalesce::Coalescer;
use super::conn::{Bounded, SharedConn};
use super::errors::{classify, is_transient};
use crate::envelope;
use crate::error::Error;
use crate::event::Delivery;
use crate::transport::publish::SendError;

/// One event's command: `XADD` (durable) or `PUBLISH` (broadcast).
pub(crate) type Command = Cmd;

/// The wait before a publish's first retry; it doubles up to [`PUBLISH_BACKOFF_MAX`].
const PUBLISH_BACKOFF_MIN: Duration = Duration::from_millis(50);

/// The longest wait between two attempts of one publish.
const PUBLISH_BACKOFF_MAX: Duration = Duration::from_secs(1);

/// Room in a command for everything but the key and the envelope (`XADD`, `MAXLEN ~ <n>`, `*`,
/// the field name).
const COMMAND_OVERHEAD: usize = 64;

/// The command that publishes `json` to `key`. The envelope's bytes are copied in once; the
/// buffer is sized for them up front.
pub(crate) fn prepare(
    delivery: Delivery,
    key: &str,
    max_len: Option<usize>,
    json: &[u8],
) -> Command {
    let mut cmd = Cmd::with_capacity(8, COMMAND_OVERHEAD + key.len() + json.len());
    match delivery {
        Delivery::Durable => {
            cmd.arg("XADD").arg(key);
            if let Some(n) = max_len {
                cmd.arg("MAXLEN").arg("~").arg(n);
            }
            cmd.arg("*").arg(envelope::FIELD_ENVELOPE);
        }
        Delivery::Broadcast => {
            cmd.arg("PUBLISH").arg(key);
        }
    }
    cmd.arg(json);
    cmd
}

/// Commands sent as one pipeline.
pub(crate) struct Batch(Pipeline);

impl Batch {
    pub(crate) fn with_capacity(capacity: usize) -> Batch {
        Batch(Pipeline::with_capacity(capacity))
    }

    /// Adds a command. Not `.ignore()`d: that costs a hash insert per command, and the replies
    /// are dropped all the same.
    pub(crate) fn push(&mut self, command: Command) {
        self.0.add_command(command);
    }
}

/// The publishing handle of one bus: the shared connection and its [`Coalescer`].
#[derive(Clone, Debug)]
pub(crate) struct Sender {
    conn: SharedConn,
    coalescer: Coalescer,
}

/// The retry schedule of one publish call: transient errors are retried, with the same ids,
/// after 50 ms, 100 ms, 200 ms, ... (capped at [`PUBLISH_BACKOFF_MAX`]) until the call's
/// deadline passes.
struct Retry {
    delay: Duration,
    /// The error of the attempt just retried, kept for a timeout's message.
    last: Option<RedisError>,
}

impl Default for Retry {
    fn default() -> Self {
        Retry {
            delay: PUBLISH_BACKOFF_MIN,
            last: None,
        }
    }
}

impl Retry {
    /// Waits before the next attempt and returns true when `error` is worth retrying and the
    /// next attempt can start before `deadline`; false otherwise (at once when not transient).
    async fn wait(&mut self, event: &'static str, error: &RedisError, deadline: Instant) -> bool {
        if !is_transient(error) {
            return false;
        }
        let left = deadline.saturating_duration_since(Instant::now());
        if left <= self.delay {
            return false;
        }
        tracing::debug!(event_name = event, error = %error, delay = ?self.delay, "publish failed; retrying");
        tokio::time::sleep(self.delay).await;
        self.delay = (self.delay * 2).min(PUBLISH_BACKOFF_MAX);
        true
    }

    /// The call's timeout, with the last error seen.
    fn timed_out(&mut self) -> SendError {
        SendError::Timeout {
            last: self.last.take().map(|e| e.to_string()),
        }
    }
}

impl Sender {
    /// Spawns the coalescer's writer on the current runtime.
    pub(crate) fn new(conn: SharedConn) -> Sender {
        Sender {
            coalescer: Coalescer::spawn(conn.clone()),
            conn,
        }
    }

    /// One command through the coalescer, bounded by `deadline`. A retry after a transient
    /// error (or a connection replaced while the command waited) sends a command `prepare`
    /// builds again, so the first attempt's command is never copied.
    pub(crate) async fn send(
        &self,
        event: &'static str,
        deadline: Instant,
        mut prepare: impl FnMut() -> Result<Command, Error>,
    ) -> Result<(), SendError> {
        let mut retry = Retry::default();
        loop {
            let cmd = prepare().map_err(SendError::Prepare)?;
            let generation = self.conn.generation();
            let error = match self
                .conn
                .bounded(self.coalescer.query(cmd), generation, Some(deadline))
                .await
            {
                Bounded::Done(Ok(_)) => {
                    self.conn.publish_succeeded();
                    return Ok(());
                }
                Bounded::Done(Err(e)) => e,
                // Stuck on a connection that was replaced meanwhile: send it on the new one.
                Bounded::Replaced => continue,
                Bounded::Elapsed => return Err(retry.timed_out()),
            };
            self.failed(event, error, &mut retry, deadline).await?;
        }
    }

    /// A batch as one pipeline, bounded by `deadline`. Transient errors resend the same
    /// pipeline (same ids), so a retry after a lost reply may store an event twice, both copies
    /// carrying one id.
    pub(crate) async fn send_batch(
        &self,
        event: &'static str,
        batch: &Batch,
        deadline: Instant,
    ) -> Result<(), SendError> {
        let mut retry = Retry::default();
        loop {
            let mut conn = self.conn.unwatched();
            let generation = self.conn.generation();
            let query = batch.0.query_async::<Value>(&mut conn);
            let error = match self.conn.bounded(query, generation, Some(deadline)).await {
                Bounded::Done(Ok(_)) => {
                    self.conn.publish_succeeded();
                    return Ok(());
                }
                Bounded::Done(Err(e)) => e,
                Bounded::Replaced => continue,
                Bounded::Elapsed => return Err(retry.timed_out()),
            };
            self.failed(event, error, &mut retry, deadline).await?;
        }
    }

    /// After a failed attempt: records it in health, then waits for the next attempt (`Ok`) or
    /// returns the call's error.
    async fn failed(
        &self,
        event: &'static str,
        error: RedisError,
        retry: &mut Retry,
        deadline: Instant,
    ) -> Result<(), SendError> {
        self.conn.publish_failed(
            format!("publish of `{event}` failed: {error}"),
            Some(&error),
        );
        if retry.wait(event, &error, deadline).await {
            retry.last = Some(error);
            return Ok(());
        }
        if is_transient(&error) {
            retry.last = Some(error);
            return Err(retry.timed_out());
        }
        self.conn.count_publish_error();
        Err(SendError::Failed(classify(error)))
    }

    /// A publish call timed out: health reports `message` until a publish or a probe succeeds.
    pub(crate) fn record_timeout(&self, message: String) {
        self.conn.publish_failed(message, None);
        self.conn.count_publish_error();
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn args(cmd: &Cmd) -> Vec<String> {
        cmd.args_iter()
            .map(|arg| match arg {
                redis::Arg::Simple(bytes) => String::from_utf8_lossy(bytes).into_owned(),
                _ => "<cursor>".to_owned(),
            })
            .collect()
    }

    #[test]
    fn commands_carry_the_envelope_as_the_last_argument() {
        let json = br#"{"id":"x"}"#;
        assert_eq!(
            args(&prepare(Delivery::Durable, "ns:{e}", Some(100), json)),
            [
                "XADD",
                "ns:{e}",
                "MAXLEN",
                "~",
                "100",
                "*",
                "envelope",
                r#"{"id":"x"}"#
            ]
        );
        assert_eq!(
            args(&prepare(Delivery::Durable, "ns:{e}", None, json)),
            ["XADD", "ns:{e}", "*", "envelope", r#"{"id":"x"}"#]
        );
        assert_eq!(
            args(&prepare(Delivery::Broadcast, "ns:e", Some(100), json)),
            ["PUBLISH", "ns:e", r#"{"id":"x"}"#]
        );
    }
}
