//! The pipeline every delivery goes through, durable or broadcast: size and envelope checks,
//! decode once, run the handler in a span with retries and backoff, catch panics, and write the
//! dead letter when it gives up.

use std::panic::AssertUnwindSafe;
use std::sync::Arc;
use std::time::Duration;

use futures_util::FutureExt;
use crate::transport::SharedConn;
use tokio_util::sync::CancellationToken;
use tracing::Instrument;

use crate::bus::BusInner;
use crate::context::{Context, Delivery};
use crate::dlq::{self, Failure};
use crate::envelope::{self, EventId};
use crate::handler::HandlerRegistration;
use crate::health::Stats;
use crate::retry::RetryPolicy;
use crate::transport;

/// How one delivery ended.
pub(crate) enum Outcome {
    /// Handled: acknowledge.
    Ack,
    /// Meant for another handler (a replay): acknowledge without counting it as handled.
    Skip,
    /// The entry was deleted from the stream while pending: ack it away and count the loss.
    Lost,
    /// Give up: write a dead letter (and ack).
    DeadLetter(Failure),
    /// Shutdown abandoned the run: a durable entry stays pending for another consumer.
    Abandoned,
}

/// One handler's pipeline, shared by every run of it.
pub(crate) struct Runner {
    pub(crate) bus: Arc<BusInner>,
    pub(crate) handler: &'static HandlerRegistration,
    pub(crate) policy: RetryPolicy,
    pub(crate) dlq: String,
    pub(crate) stats: Arc<Stats>,
    pub(crate) abort: CancellationToken,
}

impl Runner {
    pub(crate) fn new(
        bus: Arc<BusInner>,
        handler: &'static HandlerRegistration,
        abort: CancellationToken,
    ) -> Runner {
        let defaults = &bus.config.retry;
        let policy = RetryPolicy {
            retries: handler.options.retries.unwrap_or(defaults.retries),
            backoff: handler.options.backoff.unwrap_or(defaults.backoff),
            max_backoff: handler.options.max_backoff.unwrap_or(defaults.max_backoff),
        };
        Runner {
            dlq: transport::dlq_key(&bus.config.namespace, handler.event_name),
            policy,
            stats: Arc::new(Stats::default()),
            bus,
            handler,
            abort,
        }
    }

    /// Runs in flight at once for this handler in this process.
    pub(crate) fn concurrency(&self) -> usize {
        self.handler
            .options
            .concurrency
            .unwrap_or(self.bus.config.concurrency)
            .max(1) as usize
    }

    /// Checks, decodes and runs one envelope, with retries. `deliveries` counts this delivery
    /// (always 1 for broadcast).
    pub(crate) async fn run(&self, raw: &[u8], deliveries: u32) -> Outcome {
        let handler = self.handler;
        let reject = |event_id: Option<EventId>, raw: &[u8], error: String| {
            Outcome::DeadLetter(Failure {
                event_id,
                error,
                attempts: 0,
                envelope: String::from_utf8_lossy(raw).into_owned(),
            })
        };
        if raw.len() > self.bus.config.max_payload {
            return reject(
                None,
                &raw[..raw.len().min(4096)],
                format!(
                    "envelope is {} bytes, more than the maximum payload of {}",
                    raw.len(),
                    self.bus.config.max_payload
                ),
            );
        }
        let Ok(text) = std::str::from_utf8(raw) else {
            return reject(None, raw, "envelope is not valid UTF-8".to_owned());
        };
        let env = match envelope::decode(text) {
            Ok(env) => env,
            Err(rejected) => return reject(rejected.id, raw, rejected.reason),
        };
        if env.target.as_deref().is_some_and(|t| t != handler.name) {
            return Outcome::Skip; // a replay meant for another handler
        }
        if env.ty != handler.event_name {
            return reject(
                Some(env.id),
                raw,
                format!(
                    "envelope type `{}` does not match this handler's event `{}`",
                    env.ty, handler.event_name
                ),
            );
        }
        if env.version > handler.event_version {
            return reject(
                Some(env.id),
                raw,
                format!(
                    "unknown schema version {}: handler `{}` knows versions 1 to {}",
                    env.version, handler.name, handler.event_version
                ),
            );
        }
        let attempts = self.policy.attempts();
        if deliveries > attempts {
            return Outcome::DeadLetter(Failure {
                event_id: Some(env.id),
                error: format!(
                    "delivered {deliveries} times without completing (the consumer crashed or stalled each time); the limit is {attempts}"
                ),
                attempts: deliveries - 1,
                envelope: text.to_owned(),
            });
        }
        let delivery = Arc::new(Delivery {
            event_id: env.id.clone(),
            event_name: handler.event_name,
            correlation_id: env.correlation_id.clone(),
            causation_id: env.causation_id.clone(),
            handler: handler.name,
            publisher: self.bus.publisher.clone(),
            states: self.bus.states.clone(),
        });
        let mut last_error = String::new();
        for attempt in 1..=attempts {
            let span = tracing::info_span!(
                "eventbus.handle",
                event_id = %env.id,
                event_name = handler.event_name,
                handler = handler.name,
                attempt,
                delivery = deliveries,
            );
            let ctx = Context::new(delivery.clone(), attempt);
            let run = async {
                let started =
                    std::panic::catch_unwind(AssertUnwindSafe(|| (handler.call)(env.data, ctx)));
                match started {
                    Err(panic) => Err(Err(format!("handler panicked: {}", panic_message(&panic)))),
                    Ok(Err(decode)) => Err(Ok(format!(
                        "cannot decode event data as `{}`: {decode}",
                        (handler.event_type)()
                    ))),
                    Ok(Ok(fut)) => match AssertUnwindSafe(fut).catch_unwind().await {
                        Ok(Ok(())) => Ok(()),
                        Ok(Err(e)) => Err(Err(e)),
                        Err(panic) => {
                            Err(Err(format!("handler panicked: {}", panic_message(&panic))))
                        }
                    },
                }
            }
            .instrument(span.clone());
            let result = tokio::select! {
                biased;
                r = run => r,
                () = self.abort.cancelled() => return Outcome::Abandoned,
            };
            match result {
                Ok(()) => {
                    span.in_scope(|| tracing::debug!("handled"));
                    return Outcome::Ack;
                }
                // Undecodable data: retrying cannot help.
                Err(Ok(decode_error)) => {
                    return Outcome::DeadLetter(Failure {
                        event_id: Some(env.id),
                        error: decode_error,
                        attempts: 0,
                        envelope: text.to_owned(),
                    });
                }
                Err(Err(error)) => {
                    if attempt < attempts {
                        let delay = self.policy.delay(attempt);
                        span.in_scope(|| tracing::warn!(error = %error, retry_in = ?delay, "handler failed; retrying"));
                        tokio::select! {
                            () = tokio::time::sleep(delay) => {}
                            () = self.abort.cancelled() => return Outcome::Abandoned,
                        }
                    }
                    last_error = error;
                }
            }
        }
        Outcome::DeadLetter(Failure {
            event_id: Some(env.id),
            error: last_error,
            attempts,
            envelope: text.to_owned(),
        })
    }

    /// Writes the dead letter, and for a durable entry acks it in the same transaction. While that
    /// fails (ACL, OOM, Redis down) a durable original stays pending, unacked; the write is
    /// retried with backoff until it succeeds or shutdown abandons it.
    pub(crate) async fn dead_letter(
        &self,
        conn: &mut SharedConn,
        ack: Option<(&str, &str)>,
        failure: &Failure,
    ) {
        tracing::error!(
            handler = self.handler.name,
            event_name = self.handler.event_name,
            event_id = failure.event_id.as_ref().map(EventId::as_str).unwrap_or(""),
            attempts = failure.attempts,
            error = %failure.error,
            "event dead-lettered"
        );
        let mut delay = Duration::from_millis(100);
        loop {
            match dlq::write(conn, &self.dlq, self.handler, ack, failure).await {
                Ok(()) => {
                    Stats::add(&self.stats.dead_lettered, 1);
                    return;
                }
                Err(e) => {
                    tracing::error!(
                        handler = self.handler.name,
                        dlq = %self.dlq,
                        error = %e,
                        retry_in = ?delay,
                        "cannot write dead letter; the event stays pending (not acked) and the write is retried"
                    );
                    tokio::select! {
                        () = tokio::time::sleep(delay) => {}
                        () = self.abort.cancelled() => return,
                    }
                    delay = (delay * 2).min(Duration::from_secs(5));
                }
            }
        }
    }
}

fn panic_message(panic: &Box<dyn std::any::Any + Send>) -> String {
    if let Some(s) = panic.downcast_ref::<&str>() {
        (*s).to_owned()
    } else if let Some(s) = panic.downcast_ref::<String>() {
        s.clone()
    } else {
        "(non-string panic payload)".to_owned()
    }
}
