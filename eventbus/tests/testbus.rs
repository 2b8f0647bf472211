//! `eventbus::testing::TestBus` on paused tokio time: the fault injection a handler author needs
//! (crash mid-run, failed acks, failed dead-letter writes, a dropped broadcast subscription),
//! and that retries, claims and drains run instantly and deterministically. The behaviours both
//! transports share are pinned against Redis too, in `conformance.rs`.

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU32, Ordering};
use std::time::Duration;

use eventbus::prelude::*;
use eventbus::testing::TestBus;
use eventbus::{BusBuilder, Error};

/// What the handlers of one test saw.
#[derive(Clone, Default)]
struct Log {
    /// Attempts started.
    started: Arc<AtomicU32>,
    /// Whether the next attempts hang (until the test crashes the consumer).
    hang: Arc<AtomicBool>,
    /// Whether the next attempts fail.
    fail: Arc<AtomicBool>,
    /// Whether the next attempts take 5 s (tokio time).
    slow: Arc<AtomicBool>,
}

impl Log {
    async fn attempt(&self) -> anyhow::Result<()> {
        self.started.fetch_add(1, Ordering::SeqCst);
        if self.hang.load(Ordering::SeqCst) {
            std::future::pending::<()>().await;
        }
        if self.slow.load(Ordering::SeqCst) {
            tokio::time::sleep(Duration::from_secs(5)).await;
        }
        anyhow::ensure!(
            !self.fail.load(Ordering::SeqCst),
            "the downstream service refused it"
        );
        Ok(())
    }

    fn started(&self) -> u32 {
        self.started.load(Ordering::SeqCst)
    }

    /// Waits (tokio time) until `n` attempts have started.
    async fn wait_started(&self, n: u32) {
        for _ in 0..100_000 {
            if self.started() >= n {
                return;
            }
            tokio::time::sleep(Duration::from_millis(1)).await;
        }
        panic!("{n} attempts did not start; {} did", self.started());
    }
}

#[derive(Debug, Clone, Serialize, Deserialize, DomainEvent)]
#[event(name = "tb.flaky")]
struct FlakyEvent {
    n: u64,
}

#[derive(Debug, Clone, Serialize, Deserialize, DomainEvent)]
#[event(name = "tb.crash")]
struct CrashEvent {
    n: u64,
}

#[derive(Debug, Clone, Serialize, Deserialize, DomainEvent)]
#[event(name = "tb.ack")]
struct AckEvent {
    n: u64,
}

#[derive(Debug, Clone, Serialize, Deserialize, DomainEvent)]
#[event(name = "tb.letter")]
struct LetterEvent {
    n: u64,
}

#[derive(Debug, Clone, Serialize, Deserialize, DomainEvent)]
#[event(name = "tb.news", broadcast)]
struct News {
    n: u64,
}

/// Fails its first two attempts of every event, then succeeds.
#[event_handler(name = "tb.flaky", retries = 2, backoff = "10s")]
async fn flaky(_ev: FlakyEvent, ctx: Context, log: State<Log>) -> anyhow::Result<()> {
    log.started.fetch_add(1, Ordering::SeqCst);
    anyhow::ensure!(ctx.attempt() == 3, "attempt {} fails", ctx.attempt());
    Ok(())
}

#[event_handler(name = "tb.crash", retries = 0)]
async fn crashing(_ev: CrashEvent, log: State<Log>) -> anyhow::Result<()> {
    log.attempt().await
}

#[event_handler(name = "tb.ack")]
async fn acked(_ev: AckEvent, log: State<Log>) -> anyhow::Result<()> {
    log.attempt().await
}

#[event_handler(name = "tb.letter", retries = 0)]
async fn lettered(_ev: LetterEvent, log: State<Log>) -> anyhow::Result<()> {
    log.attempt().await
}

#[event_handler(name = "tb.news.a")]
async fn news_a(_ev: News, log: State<Log>) -> anyhow::Result<()> {
    log.attempt().await
}

#[event_handler(name = "tb.news.b")]
async fn news_b(_ev: News, log: State<Log>) -> anyhow::Result<()> {
    log.attempt().await
}

fn builder(handlers: &[&str], log: &Log) -> BusBuilder {
    let mut b = TestBus::builder();
    b.handlers(handlers.iter().copied())
        .state(log.clone())
        .visibility_timeout(Duration::from_secs(30))
        .claim_interval(Duration::from_secs(1));
    b
}

#[tokio::test(start_paused = true)]
async fn retries_wait_out_their_backoff_on_paused_time() -> eventbus::Result<()> {
    let log = Log::default();
    let mut bus = builder(&["tb.flaky"], &log).build_test().await?;
    bus.start().await?;
    let begin = tokio::time::Instant::now();
    let id = bus.publish(&FlakyEvent { n: 1 }).await?;
    bus.run_until_idle().await?;
    assert_eq!(bus.handled("tb.flaky"), vec![id]);
    assert_eq!(log.started(), 3, "two failures, then success");
    // Two backoffs of at least 10 s each passed on the test's clock, instantly.
    assert!(
        begin.elapsed() >= Duration::from_secs(20),
        "{:?}",
        begin.elapsed()
    );
    assert!(bus.dead_letters().await?.is_empty());
    bus.shutdown().await
}

/// A crash during a normal run is not charged; the entry comes back as a suspect under the same
/// consumer name and runs alone, charged first; a second crash then exhausts `retries = 0`, and
/// the entry is dead-lettered without a third run.
#[tokio::test(start_paused = true)]
async fn a_crash_mid_run_then_restart_charges_the_suspect_and_dead_letters_a_poison_event()
-> eventbus::Result<()> {
    let log = Log::default();
    log.hang.store(true, Ordering::SeqCst);
    let mut bus = builder(&["tb.crash"], &log).build_test().await?;
    bus.start().await?;
    let id = bus.publish(&CrashEvent { n: 1 }).await?;
    log.wait_started(1).await;
    bus.crash();
    // Restart under the same name: the entry is re-read as a suspect and runs again.
    bus.start().await?;
    log.wait_started(2).await;
    bus.crash();
    bus.start().await?;
    bus.run_until_idle().await?;
    assert_eq!(
        log.started(),
        2,
        "the twice-crashing event is not run a third time"
    );
    let letters = bus.dead_letters().await?;
    assert_eq!(letters.len(), 1, "{letters:?}");
    assert_eq!(letters[0].event_id.as_ref(), Some(&id));
    assert!(letters[0].error.contains("crashed"), "{}", letters[0].error);
    assert!(bus.handled("tb.crash").is_empty());
    // The last restart's reader: one suspect, dead-lettered without running.
    let reader = &bus.health().readers[0];
    assert_eq!(reader.suspects, 1);
    assert_eq!(reader.dead_lettered, 1);
    bus.shutdown().await
}

/// Another consumer claims a crashed consumer's entry once the visibility timeout has passed,
/// runs it as a suspect, and handles it.
#[tokio::test(start_paused = true)]
async fn another_consumer_claims_a_crashed_consumers_entry_after_the_visibility_timeout()
-> eventbus::Result<()> {
    let log = Log::default();
    log.hang.store(true, Ordering::SeqCst);
    let mut first = builder(&["tb.crash"], &log).build_test().await?;
    first.start().await?;
    let id = first.publish(&CrashEvent { n: 2 }).await?;
    log.wait_started(1).await;
    let crashed_at = tokio::time::Instant::now();
    first.crash();
    log.hang.store(false, Ordering::SeqCst);
    let mut second = first.another()?;
    assert_ne!(second.bus().consumer_name(), first.bus().consumer_name());
    second.start().await?;
    second.run_until_idle().await?;
    assert!(
        crashed_at.elapsed() >= Duration::from_secs(30),
        "claimed only after the visibility timeout"
    );
    assert_eq!(second.handled("tb.crash"), vec![id]);
    let health = second.health();
    assert_eq!(health.readers[0].claimed, 1);
    assert_eq!(health.readers[0].suspects, 1);
    second.shutdown().await
}

/// With nobody left to claim a crashed consumer's entry, the bus never becomes idle:
/// `run_until_idle` says so instead of hanging.
#[tokio::test(start_paused = true)]
async fn run_until_idle_reports_what_keeps_the_bus_busy() -> eventbus::Result<()> {
    let log = Log::default();
    log.hang.store(true, Ordering::SeqCst);
    let mut bus = builder(&["tb.crash"], &log).build_test().await?;
    bus.start().await?;
    bus.publish(&CrashEvent { n: 3 }).await?;
    log.wait_started(1).await;
    bus.crash();
    let err = bus
        .run_until_idle()
        .await
        .expect_err("a pending entry with no consumer");
    assert!(matches!(err, Error::Timeout { .. }), "{err:?}");
    assert!(err.to_string().contains("1 pending"), "{err}");
    Ok(())
}

/// Failed acks are retried; the entry stays in flight meanwhile, so it is never run twice.
#[tokio::test(start_paused = true)]
async fn failed_acks_are_retried_without_running_the_event_twice() -> eventbus::Result<()> {
    let log = Log::default();
    let mut bus = builder(&["tb.ack"], &log).build_test().await?;
    bus.start().await?;
    bus.fail_next_acks(3);
    let id = bus.publish(&AckEvent { n: 1 }).await?;
    bus.run_until_idle().await?;
    assert_eq!(bus.handled("tb.ack"), vec![id]);
    assert_eq!(log.started(), 1);
    let reader = &bus.health().readers[0];
    assert_eq!(reader.ack_errors, 3);
    assert!(reader.ack_error.is_none(), "cleared once the ack landed");
    bus.shutdown().await
}

/// A dead-letter write that fails keeps the original pending; the write is retried until it
/// lands, and exactly one letter is written.
#[tokio::test(start_paused = true)]
async fn failed_dead_letter_writes_are_retried_and_write_one_letter() -> eventbus::Result<()> {
    let log = Log::default();
    log.fail.store(true, Ordering::SeqCst);
    let mut bus = builder(&["tb.letter"], &log).build_test().await?;
    bus.start().await?;
    bus.fail_next_dead_letters(2);
    let id = bus.publish(&LetterEvent { n: 1 }).await?;
    bus.run_until_idle().await?;
    let letters = bus.dead_letters().await?;
    assert_eq!(letters.len(), 1, "{letters:?}");
    assert_eq!(letters[0].event_id.as_ref(), Some(&id));
    assert_eq!(letters[0].attempts, 1);
    assert_eq!(letters[0].handler, "tb.letter");
    assert_eq!(log.started(), 1, "retries = 0: one attempt");
    assert_eq!(bus.health().readers[0].dead_letter_errors, 2);
    // Replay it to its handler, which now succeeds.
    log.fail.store(false, Ordering::SeqCst);
    bus.bus().dlq().replay(&letters[0].id).await?;
    bus.run_until_idle().await?;
    assert_eq!(bus.handled("tb.letter"), vec![id]);
    assert!(bus.dead_letters().await?.is_empty());
    bus.shutdown().await
}

/// Broadcast fans out to every handler; a dropped subscription loses what is published before
/// the bus subscribes again (at most once), and delivery resumes after.
#[tokio::test(start_paused = true)]
async fn broadcast_fans_out_and_a_dropped_subscription_loses_only_the_gap() -> eventbus::Result<()>
{
    let log = Log::default();
    let mut bus = builder(&["tb.news.a", "tb.news.b"], &log)
        .build_test()
        .await?;
    bus.start().await?;
    let first = bus.publish(&News { n: 1 }).await?;
    bus.run_until_idle().await?;
    assert_eq!(bus.handled("tb.news.a"), vec![first.clone()]);
    assert_eq!(bus.handled("tb.news.b"), vec![first.clone()]);
    bus.disconnect_broadcast();
    // Published before the subscriber task runs again: nobody is subscribed.
    bus.publish(&News { n: 2 }).await?;
    // Idle includes "every subscription is up again".
    bus.run_until_idle().await?;
    assert!(
        bus.health()
            .readers
            .iter()
            .all(|r| r.gaps == 1 && r.connected)
    );
    let third = bus.publish(&News { n: 3 }).await?;
    bus.run_until_idle().await?;
    assert_eq!(bus.handled("tb.news.a"), vec![first.clone(), third.clone()]);
    assert_eq!(bus.handled("tb.news.b"), vec![first, third]);
    bus.shutdown().await
}

/// Shutdown lets a running attempt finish (within the drain timeout) and acks it.
#[tokio::test(start_paused = true)]
async fn shutdown_drains_a_running_attempt() -> eventbus::Result<()> {
    let log = Log::default();
    log.slow.store(true, Ordering::SeqCst);
    let mut bus = builder(&["tb.ack"], &log).build_test().await?;
    bus.start().await?;
    let id = bus.publish(&AckEvent { n: 2 }).await?;
    log.wait_started(1).await;
    let store = bus.another()?; // a view of the same store, not started
    bus.shutdown().await?;
    assert_eq!(
        store.handled("tb.ack"),
        vec![id],
        "the run finished during the drain"
    );
    // Acked: nothing is left pending for anyone.
    store.run_until_idle().await?;
    Ok(())
}

/// A run stuck past the drain timeout is abandoned; its entry stays pending, and another
/// consumer claims it after the visibility timeout.
#[tokio::test(start_paused = true)]
async fn an_attempt_stuck_past_the_drain_is_abandoned_and_claimed_by_another()
-> eventbus::Result<()> {
    let log = Log::default();
    log.hang.store(true, Ordering::SeqCst);
    let mut bus = builder(&["tb.ack"], &log).build_test().await?;
    bus.start().await?;
    let id = bus.publish(&AckEvent { n: 3 }).await?;
    log.wait_started(1).await;
    let mut other = bus.another()?;
    bus.shutdown().await?;
    assert!(other.handled("tb.ack").is_empty());
    log.hang.store(false, Ordering::SeqCst);
    other.start().await?;
    other.run_until_idle().await?;
    assert_eq!(other.handled("tb.ack"), vec![id]);
    other.shutdown().await
}

#[derive(Debug, Clone, Serialize, Deserialize, DomainEvent)]
#[event(name = "tb.alert", broadcast)]
struct Alert {
    n: u64,
}

#[event_handler(name = "tb.alert", concurrency = 1)]
async fn alert(ev: Alert, log: State<Log>) -> anyhow::Result<()> {
    if ev.n == 0 {
        // The first one blocks the lane (concurrency 1) until the test crashes the bus.
        log.started.fetch_add(1, Ordering::SeqCst);
        std::future::pending::<()>().await;
    }
    log.attempt().await
}

/// A crash loses what a broadcast lane had queued (a dead process's memory), and nothing the
/// crashed bus held runs afterwards.
#[tokio::test(start_paused = true)]
async fn a_crash_drops_queued_broadcasts() -> eventbus::Result<()> {
    let log = Log::default();
    let mut bus = builder(&["tb.alert"], &log).build_test().await?;
    bus.start().await?;
    bus.publish(&Alert { n: 0 }).await?;
    log.wait_started(1).await;
    for n in 1..=3 {
        bus.publish(&Alert { n }).await?;
    }
    // Let the subscriber queue them behind the blocked run.
    for _ in 0..10 {
        tokio::task::yield_now().await;
    }
    bus.crash();
    for _ in 0..1000 {
        tokio::time::sleep(Duration::from_millis(1)).await;
    }
    assert!(
        bus.handled("tb.alert").is_empty(),
        "{:?}",
        bus.handled("tb.alert")
    );
    assert_eq!(log.started(), 1, "nothing queued ran after the crash");
    Ok(())
}

/// `run_until_idle` on one bus waits for every bus of its store: here the other instance's
/// broadcast run.
#[tokio::test(start_paused = true)]
async fn run_until_idle_waits_for_every_bus_on_the_store() -> eventbus::Result<()> {
    let log = Log::default();
    log.slow.store(true, Ordering::SeqCst);
    let mut a = builder(&["tb.news.a"], &log).build_test().await?;
    let mut b = a.another()?;
    a.start().await?;
    b.start().await?;
    let id = a.publish(&News { n: 9 }).await?;
    a.run_until_idle().await?;
    assert_eq!(
        a.handled("tb.news.a"),
        vec![id.clone(), id],
        "both instances ran it"
    );
    b.shutdown().await?;
    a.shutdown().await
}

/// Events published before any bus started count as unread: `run_until_idle` before `start`
/// does not report idle.
#[tokio::test(start_paused = true)]
async fn events_published_before_start_are_not_idle() -> eventbus::Result<()> {
    let log = Log::default();
    let mut bus = builder(&["tb.ack"], &log).build_test().await?;
    let id = bus.publish(&AckEvent { n: 7 }).await?;
    let err = bus
        .run_until_idle_within(Duration::from_secs(1))
        .await
        .expect_err("unread before start");
    assert!(err.to_string().contains("1 unread (not started)"), "{err}");
    bus.start().await?;
    bus.run_until_idle().await?;
    assert_eq!(bus.handled("tb.ack"), vec![id]);
    bus.shutdown().await
}

/// `fail_next_acks` fails this consumer's acks only: another consumer's acks land.
#[tokio::test(start_paused = true)]
async fn failed_acks_are_per_consumer() -> eventbus::Result<()> {
    let log = Log::default();
    let mut a = builder(&["tb.ack"], &log).build_test().await?;
    let mut b = a.another()?;
    b.fail_next_acks(1000);
    a.start().await?;
    a.publish(&AckEvent { n: 8 }).await?;
    a.run_until_idle().await?;
    assert_eq!(a.health().readers[0].ack_errors, 0);
    b.start().await?;
    b.shutdown().await?;
    a.shutdown().await
}

#[derive(Debug, Clone, Serialize, Deserialize, DomainEvent)]
#[event(name = "tb.metric")]
struct Metric {
    n: u64,
}

#[event_handler(name = "tb.metric", concurrency = 1)]
async fn metric(_ev: Metric, log: State<Log>) -> anyhow::Result<()> {
    log.attempt().await
}

/// `max_len` trims like Redis's `MAXLEN ~` (whole storage nodes: at least `max_len` entries
/// stay), and every event a lagging handler never read is counted in `trimmed_unread`: each
/// event is either handled or reported lost.
#[tokio::test(start_paused = true)]
async fn trimming_counts_what_a_lagging_handler_never_read() -> eventbus::Result<()> {
    let log = Log::default();
    log.slow.store(true, Ordering::SeqCst);
    let mut b = builder(&["tb.metric"], &log);
    b.max_len(Some(10)).batch_size(1);
    let mut bus = b.build_test().await?;
    bus.start().await?;
    for n in 0..250 {
        bus.publish(&Metric { n }).await?;
    }
    log.slow.store(false, Ordering::SeqCst);
    bus.run_until_idle().await?;
    let handled = bus.handled("tb.metric").len() as u64;
    let reader = &bus.health().readers[0];
    assert!(reader.trimmed_unread > 0, "{reader:?}");
    assert!(handled >= 10, "at least max_len entries stay: {handled}");
    assert_eq!(
        handled + reader.trimmed_unread + reader.lost_entries,
        250,
        "each event handled or reported lost: {reader:?}"
    );
    bus.shutdown().await
}

/// A crashed consumer's connection is gone: its subscriptions receive nothing more (replaying a
/// broadcast dead letter right after the crash finds no receiver and keeps the letter, as on
/// Redis), and a handle on the crashed bus cannot publish.
#[tokio::test(start_paused = true)]
async fn a_crashed_consumer_neither_receives_nor_publishes() -> eventbus::Result<()> {
    let log = Log::default();
    log.fail.store(true, Ordering::SeqCst);
    let mut bus = builder(&["tb.news.a"], &log).build_test().await?;
    bus.start().await?;
    bus.publish(&News { n: 1 }).await?;
    bus.run_until_idle().await?;
    let letters = bus.dead_letters().await?;
    assert_eq!(letters.len(), 1, "{letters:?}");
    let old = bus.bus().clone();
    bus.crash();
    // Right after the crash, before any task of the dead bus ran again.
    let replay = bus.bus().dlq().replay(&letters[0].id).await;
    assert!(replay.is_err(), "no live subscriber: {replay:?}");
    assert_eq!(bus.dead_letters().await?.len(), 1, "the letter is kept");
    let err = old
        .publish(&News { n: 2 })
        .await
        .expect_err("the crashed bus's connection is gone");
    assert!(matches!(err, Error::Transport { .. }), "{err:?}");
    Ok(())
}
