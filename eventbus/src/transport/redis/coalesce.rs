//! Auto-pipelining for single publishes: concurrent `publish` calls on one bus are sent together
//! as one pipeline, like a hand-written pipeline would, while a lone publish goes out at once.

use super::conn::SharedConn;
use redis::{Cmd, RedisResult, Value};
use tokio::sync::{mpsc, oneshot};

/// The most commands sent in one pipeline.
const MAX_BATCH: usize = 512;

struct Job {
    cmd: Cmd,
    reply: oneshot::Sender<RedisResult<Value>>,
}

/// A handle to the writer task of one bus. The task ends when the last handle is dropped.
#[derive(Clone, Debug)]
pub(crate) struct Coalescer {
    tx: mpsc::UnboundedSender<Job>,
    conn: SharedConn,
    /// Publishes under way; a lone one skips the writer task and its two hand-offs.
    busy: std::sync::Arc<std::sync::atomic::AtomicUsize>,
}

impl std::fmt::Debug for Job {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("Job")
    }
}

impl Coalescer {
    /// Spawns the writer on the current runtime.
    pub(crate) fn spawn(conn: SharedConn) -> Coalescer {
        let (tx, rx) = mpsc::unbounded_channel();
        tokio::spawn(write(rx, conn.clone()));
        Coalescer {
            tx,
            conn,
            busy: Default::default(),
        }
    }

    /// Sends one command, pipelined with whatever other commands are waiting.
    pub(crate) async fn query(&self, cmd: Cmd) -> RedisResult<Value> {
        use std::sync::atomic::Ordering;
        struct Busy<'a>(&'a std::sync::atomic::AtomicUsize);
        impl Drop for Busy<'_> {
            fn drop(&mut self) {
                self.0.fetch_sub(1, Ordering::AcqRel);
            }
        }
        let _busy = Busy(&self.busy);
        if self.busy.fetch_add(1, Ordering::AcqRel) == 0 {
            // Nothing else is being published: send it straight away. Unwatched: the publisher
            // bounds the wait itself (one timer per publish).
            let mut conn = self.conn.unwatched();
            return cmd.query_async::<Value>(&mut conn).await;
        }
        let (reply, rx) = oneshot::channel();
        if self.tx.send(Job { cmd, reply }).is_err() {
            return Err(closed());
        }
        rx.await.unwrap_or_else(|_| Err(closed()))
    }
}

fn closed() -> redis::RedisError {
    redis::RedisError::from((
        redis::ErrorKind::Io,
        "the bus's publish connection is closed",
    ))
}

/// Pipelines sent and not yet answered. While they are out, the commands that keep arriving
/// queue up for the next one, so Redis always has work and the client encodes meanwhile.
const MAX_IN_FLIGHT: usize = 4;

/// Takes every command that is waiting (up to [`MAX_BATCH`]) and sends them as one pipeline
/// while the next ones queue up: batches grow with the load, and an idle bus adds no delay.
///
/// Up to [`MAX_IN_FLIGHT`] pipelines are out at once. When a reconnect fails some of them and
/// their publishers retry, events may be stored in another order than they were sent, which no
/// caller can observe: each publish waits for its own reply, so two publishes from one task never
/// overlap, and concurrent ones have no order to keep.
async fn write(mut rx: mpsc::UnboundedReceiver<Job>, conn: SharedConn) {
    use futures_util::StreamExt;
    let mut in_flight = futures_util::stream::FuturesUnordered::new();
    let mut open = true;
    while open || !in_flight.is_empty() {
        tokio::select! {
            // Polling the pipelines first sends a new one before more jobs are taken.
            biased;
            Some(()) = in_flight.next(), if !in_flight.is_empty() => {}
            job = rx.recv(), if open && in_flight.len() < MAX_IN_FLIGHT => match job {
                Some(first) => {
                    // Let the publishers that are ready to run queue their commands first.
                    // That halves the pipelines sent under load (fewer, fuller pipelines cost less
                    // CPU on both sides); when nothing else is ready it costs one trip round the
                    // scheduler.
                    tokio::task::yield_now().await;
                    let mut jobs = Vec::with_capacity(64);
                    jobs.push(first);
                    while jobs.len() < MAX_BATCH {
                        match rx.try_recv() {
                            Ok(job) => jobs.push(job),
                            Err(_) => break,
                        }
                    }
                    in_flight.push(send(jobs, conn.clone()));
                }
                None => open = false,
            },
            // Unreachable (the loop condition keeps a branch enabled); ends instead of panicking.
            else => break,
        }
    }
}

/// Sends one batch of jobs (a lone command as it is) and hands every job its reply. A batch
/// still waiting when the connection is replaced (a dead flow) gives up at once, so a stuck
/// pipeline never holds one of the [`MAX_IN_FLIGHT`] slots until its response timeout.
///
/// The commands are watched (see `SharedConn`'s `ConnectionLike`): a pipeline stuck on a
/// replaced connection fails at once, and its publishers send again on the new one.
async fn send(mut jobs: Vec<Job>, mut conn: SharedConn) {
    if jobs.len() == 1 {
        if let Some(job) = jobs.pop() {
            let result = job.cmd.query_async::<Value>(&mut conn).await;
            let _ = job.reply.send(result);
        }
        return;
    }
    let mut pipe = redis::Pipeline::with_capacity(jobs.len());
    pipe.ignore_errors();
    let mut replies = Vec::with_capacity(jobs.len());
    for job in jobs {
        pipe.add_command(job.cmd);
        replies.push(job.reply);
    }
    // With ignore_errors each command gets its own result: one command's server error
    // (NOPERM, OOM) does not fail the others.
    match pipe.query_async::<Vec<RedisResult<Value>>>(&mut conn).await {
        Ok(results) if results.len() == replies.len() => {
            for (reply, result) in replies.into_iter().zip(results) {
                let _ = reply.send(result);
            }
        }
        Ok(_) => {
            let e = redis::RedisError::from((
                redis::ErrorKind::Client,
                "pipeline reply count does not match the commands sent",
            ));
            for reply in replies {
                let _ = reply.send(Err(e.clone()));
            }
        }
        Err(e) => {
            for reply in replies {
                let _ = reply.send(Err(e.clone()));
            }
        }
    }
}
