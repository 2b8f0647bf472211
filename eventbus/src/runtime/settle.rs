//! Settling what the pipeline decided: the dead-letter write, retried until it lands.

use std::time::Duration;

use crate::envelope::EventId;
use crate::pipeline::{Failure, Runner};
use crate::telemetry::{Path, Stats};
use crate::transport::settle::{Letter, Written};
use crate::transport::stream::Stream;

/// Writes the dead letter, and for a durable entry (`ack` = its id) acks it in the same step.
/// While that fails (ACL, OOM, Redis down) a durable original stays pending, unacked; the write
/// is retried with backoff until it succeeds or the drain ends (for a broadcast message, the
/// letter is the only copy left).
pub(crate) async fn dead_letter(
    runner: &Runner,
    stream: &Stream,
    ack: Option<&str>,
    failure: &Failure,
) {
    tracing::error!(
        handler = runner.handler.name,
        event_name = runner.handler.event_name,
        event_id = failure.event_id.as_ref().map(EventId::as_str).unwrap_or(""),
        attempts = failure.attempts,
        error = %failure.error,
        "event dead-lettered"
    );
    let mut delay = Duration::from_millis(100);
    loop {
        let letter = Letter {
            event_id: failure.event_id.as_ref().map(EventId::as_str).unwrap_or(""),
            event_name: runner.handler.event_name,
            handler: runner.handler.name,
            error: &failure.error,
            attempts: failure.attempts,
            envelope: &failure.envelope,
        };
        match stream.dead_letter(ack, &letter).await {
            Ok(Written::Letter) => {
                Stats::add(&runner.stats.dead_lettered, 1);
                runner.stats.clear(Path::DeadLetter);
                return;
            }
            Ok(Written::AlreadySettled) => {
                tracing::info!(
                    handler = runner.handler.name,
                    "the entry was already settled (acked or dead-lettered elsewhere, or by an earlier try whose reply was lost): no second dead letter"
                );
                if let Some(id) = ack {
                    // A charge this run wrote after the entry was settled elsewhere.
                    let _ = stream.uncharge(id).await;
                }
                runner.stats.clear(Path::DeadLetter);
                return;
            }
            Err(e) => {
                Stats::add(&runner.stats.dead_letter_errors, 1);
                runner.stats.set(
                    Path::DeadLetter,
                    Some(format!("cannot write dead letter: {e}")),
                );
                let at_stake = if ack.is_some() {
                    "the event stays pending (not acked)"
                } else {
                    "a broadcast message is kept nowhere else"
                };
                tracing::error!(
                    handler = runner.handler.name,
                    dlq = %stream.keys.dlq,
                    error = %e,
                    retry_in = ?delay,
                    "cannot write dead letter; {at_stake}, and the write is retried until the drain ends"
                );
                tokio::select! {
                    () = tokio::time::sleep(delay) => {}
                    () = runner.abort.cancelled() => return,
                }
                delay = (delay * 2).min(Duration::from_secs(5));
            }
        }
    }
}
