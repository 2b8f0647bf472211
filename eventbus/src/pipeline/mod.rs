//! The pipeline every delivery goes through, durable or broadcast: size and envelope checks,
//! decode once, run the handler in a span with retries and backoff, catch panics, and write the
//! dead letter when it gives up.

use std::panic::AssertUnwindSafe;
use std::sync::Arc;
use std::time::Duration;

use futures_util::FutureExt;
use tokio_util::sync::CancellationToken;
use tracing::Instrument;

use crate::config::Config;
use crate::context::{Context, Inbound};
use crate::envelope::{self, EventId};
use crate::error::TransportError;
use crate::handler::HandlerRegistration;
use crate::publish::Publisher;
use crate::retry::RetryPolicy;
use crate::state::States;
use crate::telemetry::{Path, Stats};
use crate::transport::stream::Stream;

/// Why a delivery failed for good.
#[derive(Debug)]
pub(crate) struct Failure {
    pub(crate) event_id: Option<EventId>,
    pub(crate) error: String,
    /// Handler attempts made: 0 when the event was rejected before any.
    pub(crate) attempts: u32,
    /// The envelope as received (lossy UTF-8 when it was not UTF-8).
    pub(crate) envelope: String,
}

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
    /// Shutdown abandoned a running attempt (the drain timeout passed): a durable entry stays
    /// pending for another consumer, which runs it as a suspect.
    Abandoned,
    /// Shutdown came while no attempt was running (before the first, or in a retry's backoff):
    /// a durable entry is handed back at once, its failed attempts already charged.
    Released,
}

/// Where a durable entry's charged attempts are kept: a field of the event's attempts hash
/// (`<ns>:{<event>}:attempts`, in the stream's slot), through the transport seam. Written only
/// on failure and redelivery paths: a fresh entry that succeeds at once writes nothing.
pub(crate) struct Marks<'a> {
    pub(crate) stream: &'a Stream,
    pub(crate) entry_id: &'a str,
}

impl Marks<'_> {
    /// Adds `by` charged attempts.
    async fn add(&self, by: i64) -> Result<i64, TransportError> {
        self.stream.charge(self.entry_id, by).await
    }
}

/// What the pipeline's runs need of the bus: its settings, and what a handler's
/// [`Context`] hands out (the publisher, the states).
#[derive(Clone, Debug)]
pub(crate) struct Env {
    pub(crate) config: Arc<Config>,
    pub(crate) publisher: Publisher,
    pub(crate) states: Arc<States>,
    /// Where a test bus records what each handler handled.
    #[cfg(feature = "testing")]
    pub(crate) handled: Option<Arc<crate::telemetry::HandledLog>>,
}

/// What the pipeline knows of a delivery's history and where to record new charges.
#[derive(Default)]
pub(crate) struct Charges<'a> {
    /// Attempts charged before this delivery (failed attempts, and crashes caused while
    /// running alone).
    pub(crate) before: u32,
    /// Where to record charges; `None` (broadcast) records nothing.
    pub(crate) marks: Option<&'a Marks<'a>>,
    /// A suspect running alone: each attempt is charged before it starts, so a crash during it
    /// counts against this event (and only this one) on its next delivery.
    pub(crate) alone: bool,
    /// Set when this delivery wrote a mark (the field must be deleted when the entry settles).
    pub(crate) wrote: bool,
}

/// One handler's pipeline, shared by every run of it.
pub(crate) struct Runner {
    pub(crate) env: Env,
    pub(crate) handler: &'static HandlerRegistration,
    pub(crate) policy: RetryPolicy,
    pub(crate) stats: Arc<Stats>,
    /// The start of a graceful shutdown: no new attempt starts.
    pub(crate) cancel: CancellationToken,
    /// The end of the drain: running attempts are abandoned.
    pub(crate) abort: CancellationToken,
    /// How long one attempt may run.
    pub(crate) timeout: Duration,
}

impl Runner {
    pub(crate) fn new(
        env: &Env,
        handler: &'static HandlerRegistration,
        cancel: CancellationToken,
        abort: CancellationToken,
    ) -> Runner {
        let defaults = &env.config.retry;
        let backoff = handler.options.backoff.unwrap_or(defaults.backoff);
        let policy = RetryPolicy {
            retries: handler.options.retries.unwrap_or(defaults.retries),
            backoff,
            // A handler's backoff above the bus's cap raises the cap: the floor is never undercut.
            max_backoff: handler
                .options
                .max_backoff
                .unwrap_or(defaults.max_backoff)
                .max(backoff),
        };
        Runner {
            timeout: handler
                .options
                .timeout
                .unwrap_or(env.config.handler_timeout),
            cancel,
            policy,
            stats: Arc::new(Stats::default()),
            env: env.clone(),
            handler,
            abort,
        }
    }

    /// Runs in flight at once for this handler in this process.
    pub(crate) fn concurrency(&self) -> usize {
        self.handler
            .options
            .concurrency
            .unwrap_or(self.env.config.concurrency)
            .max(1) as usize
    }

    /// Checks, decodes and runs one broadcast envelope, with retries.
    pub(crate) async fn run(&self, raw: &[u8]) -> Outcome {
        self.run_charged(raw, &mut Charges::default()).await
    }

    /// Checks, decodes and runs one envelope, with retries, charging failed attempts (and, for a
    /// suspect running alone, every attempt before it starts) to `charges`.
    pub(crate) async fn run_charged(&self, raw: &[u8], charges: &mut Charges<'_>) -> Outcome {
        let handler = self.handler;
        let reject = |event_id: Option<EventId>, raw: &[u8], error: String| {
            Outcome::DeadLetter(Failure {
                event_id,
                error,
                attempts: 0,
                envelope: String::from_utf8_lossy(raw).into_owned(),
            })
        };
        if raw.len() > self.env.config.max_payload {
            return reject(
                None,
                &raw[..raw.len().min(4096)],
                format!(
                    "envelope is {} bytes, more than the maximum payload of {}",
                    raw.len(),
                    self.env.config.max_payload
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
        if charges.before >= attempts {
            let before = charges.before;
            return Outcome::DeadLetter(Failure {
                event_id: Some(env.id),
                error: format!(
                    "its consumer crashed during its last attempt: {before} attempt(s) charged (failed, or crashed the process while running alone), the limit is {attempts}"
                ),
                attempts: before,
                envelope: text.to_owned(),
            });
        }
        let delivery = Arc::new(Inbound {
            event_id: env.id.clone(),
            event_name: handler.event_name,
            correlation_id: env.correlation_id.clone(),
            causation_id: env.causation_id.clone(),
            handler: handler.name,
            publisher: self.env.publisher.clone(),
            states: self.env.states.clone(),
        });
        let mut last_error = String::new();
        for attempt in charges.before.saturating_add(1)..=attempts {
            if self.cancel.is_cancelled() {
                return Outcome::Released; // shutdown: no new attempt starts
            }
            if charges.alone
                && let Some(marks) = charges.marks
            {
                // Charged before it starts: if it takes the process down, its next delivery
                // knows. Without the record it must not run (a crash would go uncounted): it
                // stays pending and is claimed again later.
                charges.wrote = true;
                if !self.charge(marks, 1).await {
                    return if self.cancel.is_cancelled() {
                        Outcome::Released
                    } else {
                        Outcome::Abandoned
                    };
                }
            }
            let span = tracing::info_span!(
                "eventbus.handle",
                event_id = %env.id,
                event_name = handler.event_name,
                handler = handler.name,
                attempt,
                suspect = charges.alone,
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
            let timeout = self.timeout;
            let run = async {
                match tokio::time::timeout(timeout, run).await {
                    Ok(r) => r,
                    Err(_) => {
                        Stats::add(&self.stats.timeouts, 1);
                        Err(Err(format!(
                            "handler timed out after {} (the attempt was cancelled)",
                            crate::config::fmt_duration(timeout)
                        )))
                    }
                }
            };
            // Biased toward the abort: once the drain is abandoned (or a test bus "crashed"),
            // the attempt is not polled again, so it cannot finish, or count, after that.
            let result = tokio::select! {
                biased;
                () = self.abort.cancelled() => {
                    if charges.alone && let Some(marks) = charges.marks {
                        // Not its crash: take back the charge made before the attempt.
                        let _ = tokio::time::timeout(Duration::from_secs(1), marks.add(-1)).await;
                    }
                    return Outcome::Abandoned;
                }
                r = run => r,
            };
            match result {
                Ok(()) => {
                    span.in_scope(|| tracing::debug!("handled"));
                    #[cfg(feature = "testing")]
                    if let Some(log) = &self.env.handled {
                        log.record(self.handler.name, &env.id);
                    }
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
                    if !charges.alone
                        && let Some(marks) = charges.marks
                    {
                        // A failure survives a crash of this process: charge it. Best effort (a
                        // lost charge only means one more attempt later). Marked as written
                        // first: a reply that comes too late must not leave the field behind.
                        charges.wrote = true;
                        let _ = tokio::time::timeout(Duration::from_secs(2), marks.add(1)).await;
                    }
                    if attempt < attempts {
                        let delay = self.policy.delay(attempt);
                        span.in_scope(|| tracing::warn!(error = %error, retry_in = ?delay, "handler failed; retrying"));
                        tokio::select! {
                            () = tokio::time::sleep(delay) => {}
                            () = self.cancel.cancelled() => return Outcome::Released,
                            () = self.abort.cancelled() => return Outcome::Released,
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

    /// Charges `by` attempts to `marks`, retrying a few times; false when Redis does not take
    /// it (health then says why) or shutdown came first.
    async fn charge(&self, marks: &Marks<'_>, by: i64) -> bool {
        let mut delay = Duration::from_millis(50);
        let mut tries = 0;
        loop {
            tries += 1;
            match marks.add(by).await {
                Ok(_) => return true,
                Err(e) if tries >= 4 => {
                    Stats::add(&self.stats.claim_errors, 1);
                    self.stats.set(
                        Path::Claim,
                        Some(format!("cannot record the attempt of a suspect entry (it stays pending and is claimed again later): {e}")),
                    );
                    tracing::error!(handler = self.handler.name, error = %e, "cannot record the attempt of a suspect entry; it does not run now and stays pending");
                    return false;
                }
                Err(e) => {
                    tracing::warn!(handler = self.handler.name, error = %e, "cannot record the attempt of a suspect entry; retrying before it runs");
                    tokio::select! {
                        () = tokio::time::sleep(delay) => {}
                        () = self.cancel.cancelled() => return false,
                        () = self.abort.cancelled() => return false,
                    }
                    delay = (delay * 2).min(Duration::from_secs(2));
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

/// The pipeline on its own, without Redis: outcomes of a run from the envelope's bytes, with
/// the in-memory transport only behind the publisher a handler's context holds.
#[cfg(all(test, feature = "testing"))]
mod tests {
    use std::time::SystemTime;

    use serde::{Deserialize, Serialize};
    use serde_json::value::RawValue;

    use super::*;
    use crate::handler::{CallResult, HandlerOptions};
    use crate::transport::Transport;
    use crate::transport::memory::Memory;

    #[derive(Serialize, Deserialize)]
    struct Job {
        fail: bool,
        panic: bool,
    }
    impl crate::DomainEvent for Job {
        const NAME: &'static str = "pipeline.job";
        const VERSION: u32 = 1;
    }

    /// Another producer's idea of the same event: data the handler's type cannot decode.
    #[derive(Serialize, Deserialize)]
    struct NotAJob {
        fail: String,
    }
    impl crate::DomainEvent for NotAJob {
        const NAME: &'static str = "pipeline.job";
        const VERSION: u32 = 1;
    }

    fn call(raw: &RawValue, _ctx: Context) -> CallResult {
        let job: Job = serde_json::from_str(raw.get())?;
        Ok(Box::pin(async move {
            assert!(!job.panic, "the handler panicked on purpose");
            if job.fail {
                Err("the downstream service said no".to_owned())
            } else {
                Ok(())
            }
        }))
    }
    fn check(_: &States) -> std::result::Result<(), crate::Error> {
        Ok(())
    }

    static JOB: HandlerRegistration = HandlerRegistration::new::<Job>(
        "pipeline.job",
        HandlerOptions::new().retries(2).backoff_ms(1000),
        call,
        check,
        "f",
        1,
    );

    fn env(max_payload: usize) -> Env {
        let mut b = crate::config::BusBuilder::default();
        b.max_payload(max_payload);
        let config = Arc::new(b.config().expect("valid settings"));
        Env {
            publisher: Publisher {
                sender: Transport::Memory(Memory::new()).sender(),
                namespace: config.namespace.as_str().into(),
                source: config.service.as_str().into(),
                max_len: None,
                max_payload,
                publish_timeout: Duration::from_secs(1),
            },
            config,
            states: Arc::new(States::default()),
            handled: None,
        }
    }

    fn runner(env: &Env) -> (Runner, CancellationToken, CancellationToken) {
        let (cancel, abort) = (CancellationToken::new(), CancellationToken::new());
        (
            Runner::new(env, &JOB, cancel.clone(), abort.clone()),
            cancel,
            abort,
        )
    }

    fn envelope(job: &Job) -> Vec<u8> {
        let head = envelope::Head::new::<Job>("test", &envelope::Meta::default());
        let time = SystemTime::now();
        envelope::with_encoded(&head, &EventId::at(time), time, job, <[u8]>::to_vec)
            .expect("encodes")
    }

    fn job(fail: bool, panic: bool) -> Vec<u8> {
        envelope(&Job { fail, panic })
    }

    #[tokio::test(start_paused = true)]
    async fn a_handled_event_is_acked() {
        let (r, _, _) = runner(&env(1 << 20));
        assert!(matches!(r.run(&job(false, false)).await, Outcome::Ack));
    }

    #[tokio::test(start_paused = true)]
    async fn failures_are_retried_with_backoff_then_dead_lettered() {
        let (r, _, _) = runner(&env(1 << 20));
        let start = tokio::time::Instant::now();
        let Outcome::DeadLetter(failure) = r.run(&job(true, false)).await else {
            panic!("not dead-lettered");
        };
        assert_eq!(failure.attempts, 3, "retries = 2");
        assert!(failure.error.contains("said no"), "{}", failure.error);
        assert!(failure.event_id.is_some());
        // Two backoffs, each at least the 1 s floor, on the paused clock.
        assert!(
            start.elapsed() >= Duration::from_secs(2),
            "{:?}",
            start.elapsed()
        );
    }

    #[tokio::test(start_paused = true)]
    async fn a_panic_is_a_failure() {
        let (r, _, _) = runner(&env(1 << 20));
        let Outcome::DeadLetter(failure) = r.run(&job(false, true)).await else {
            panic!("not dead-lettered");
        };
        assert_eq!(failure.attempts, 3);
        assert!(failure.error.contains("panicked"), "{}", failure.error);
    }

    #[tokio::test(start_paused = true)]
    async fn malformed_input_is_dead_lettered_without_an_attempt() {
        let (r, _, _) = runner(&env(1 << 20));
        for raw in [
            &b"not json"[..],
            &[0xff, 0xfe][..],
            br#"{"specversion":"1.0"}"#,
        ] {
            let Outcome::DeadLetter(failure) = r.run(raw).await else {
                panic!("not dead-lettered: {raw:?}");
            };
            assert_eq!(failure.attempts, 0, "{}", failure.error);
        }
        // Data that does not decode as the handler's type: no attempt either.
        let head = envelope::Head::new::<Job>("test", &envelope::Meta::default());
        let time = SystemTime::now();
        let other = NotAJob {
            fail: "yes".to_owned(),
        };
        let wrong = envelope::with_encoded(&head, &EventId::at(time), time, &other, <[u8]>::to_vec)
            .expect("encodes");
        let Outcome::DeadLetter(failure) = r.run(&wrong).await else {
            panic!("not dead-lettered");
        };
        assert_eq!(failure.attempts, 0, "{}", failure.error);
        assert!(failure.error.contains("decode"), "{}", failure.error);
    }

    #[tokio::test(start_paused = true)]
    async fn an_envelope_over_max_payload_is_dead_lettered_unread() {
        let (r, _, _) = runner(&env(1024));
        let Outcome::DeadLetter(failure) = r.run(&[b' '; 2000]).await else {
            panic!("not dead-lettered");
        };
        assert_eq!(failure.attempts, 0);
        assert!(failure.error.contains("1024"), "{}", failure.error);
    }

    #[tokio::test(start_paused = true)]
    async fn an_event_charged_to_its_limit_is_dead_lettered_without_running() {
        let (r, _, _) = runner(&env(1 << 20));
        let mut charges = Charges {
            before: 3,
            ..Charges::default()
        };
        let Outcome::DeadLetter(failure) = r.run_charged(&job(false, false), &mut charges).await
        else {
            panic!("not dead-lettered");
        };
        assert_eq!(failure.attempts, 3);
        assert!(failure.error.contains("crashed"), "{}", failure.error);
    }

    #[tokio::test(start_paused = true)]
    async fn shutdown_before_a_retry_releases_and_an_abandoned_drain_abandons() {
        let (r, cancel, _) = runner(&env(1 << 20));
        cancel.cancel();
        assert!(matches!(r.run(&job(true, false)).await, Outcome::Released));
        // Once the drain is abandoned an attempt is never polled, even one that would finish at
        // once: biased toward the abort, every time (an unbiased select would ack about half).
        let (r, _, abort) = runner(&env(1 << 20));
        abort.cancel();
        for _ in 0..32 {
            assert!(matches!(
                r.run(&job(false, false)).await,
                Outcome::Abandoned
            ));
        }
    }
}
