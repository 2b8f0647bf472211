//! The conformance suite: every behaviour is written once and runs against the in-memory
//! transport (`memory::*`) and a real `redis-server` (`redis::*`). A behaviour that differs
//! between them is a failing test.
//!
//! - `conformance/harness.rs`: `Harness` (`memory()`, `redis()`) and `Node`, one consumer;
//! - `conformance/model.rs`: the events, the handlers and the run `Log` they write;
//! - this file: the behaviours, and the `conformance!` list that runs each on both transports.
//!
//! Real time with short settings (visibility timeout 300 ms, claim interval 50 ms, backoff
//! 10-50 ms, block time 50 ms); every wait has a deadline.
//!
//! Two ways to end a consumer (see `conformance/harness.rs`): `Node::crash` abandons it (memory:
//! `TestBus::crash`, which cancels before it aborts, so a run slot an abandoned run frees starts
//! nothing; Redis: the `RunningBus` is dropped, which does the same), and `Node::kill`, for the
//! crash-accounting tests. A dropped Redis bus still has its connections and takes back the
//! charge of a suspect attempt it abandons, which a killed process cannot do; `Node::kill` cuts
//! the consumer's connections first (on Redis through a proxy of its own), as `kill -9` does.
//!
//! Poison entries are written raw (`Node::publish_raw`: `TestBus::publish_raw`, or `XADD`);
//! `both::poison_dead_letters_are_the_same_on_memory_and_redis` runs them on both transports in
//! one test and compares the dead letters.

#[path = "conformance/harness.rs"]
mod harness;
#[path = "conformance/model.rs"]
mod model;

use std::collections::BTreeSet;
use std::time::{Duration, Instant, SystemTime};

use eventbus::prelude::*;
use eventbus::{DeadLetter, Error, Overflow, ReaderHealth};
use eventbus_tests::wait_until;
use serde_json::json;

use harness::{DEADLINE, Harness, Node, VISIBILITY};
use model::*;

/// Generates `mod memory { #[tokio::test] async fn <name>() }` and the same `mod redis`, each
/// running the behaviour `<name>(h: Harness)` of this file on its transport.
macro_rules! conformance {
    ($($(#[$meta:meta])* $name:ident),* $(,)?) => {
        mod memory {
            $(
                $(#[$meta])*
                #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
                async fn $name() {
                    super::$name(super::Harness::memory()).await;
                }
            )*
        }
        mod redis {
            $(
                $(#[$meta])*
                #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
                async fn $name() {
                    super::$name(super::Harness::redis()).await;
                }
            )*
        }
    };
}

conformance![
    fan_out_every_handler_gets_every_event_once,
    competing_consumers_handle_each_event_once_overall,
    concurrency_1_runs_entries_in_stream_order,
    retry_fails_twice_then_succeeds_on_attempt_three_after_the_backoff_floor,
    dead_letter_carries_the_event_the_handler_the_error_and_the_attempts,
    replay_runs_only_the_handler_that_gave_up,
    newer_schema_version_is_dead_lettered_without_retries,
    undecodable_data_is_dead_lettered_without_retries,
    crash_with_retries_0_charges_nothing_and_another_consumer_claims_after_the_visibility_timeout,
    crash_with_default_retries_charges_nothing_and_another_consumer_claims_after_the_visibility_timeout,
    restart_under_the_same_name_rereads_its_own_pending_at_once,
    shutdown_drains_the_running_handler_and_acks_it,
    broadcast_every_handler_in_every_instance_gets_every_event,
    broadcast_disconnect_counts_a_gap_and_resubscribes,
    broadcast_queue_full_drops_the_oldest_by_default,
    broadcast_queue_full_with_drop_newest_keeps_the_first,
    poison_entries_are_dead_lettered_once_with_the_reason_and_the_next_event_is_handled,
    crash_every_run_with_retries_0_is_dead_lettered_after_2_runs,
    crash_every_run_with_default_retries_is_dead_lettered_after_5_runs,
    a_failure_then_a_crash_before_the_retry_is_charged,
    broadcast_byte_bound_drops_the_oldest_by_default,
    broadcast_byte_bound_with_drop_newest_keeps_the_first,
];

/// Behaviours that compare the two transports in one test.
mod both {
    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn poison_dead_letters_are_the_same_on_memory_and_redis() {
        super::poison_dead_letters_are_the_same_on_memory_and_redis().await;
    }
}

/// Waits (under [`DEADLINE`]) until `cond` holds for the log; the panic shows every run.
async fn wait_log(log: &Log, what: &str, cond: impl Fn(&Log) -> bool) {
    let deadline = Instant::now() + DEADLINE;
    while !cond(log) {
        assert!(
            Instant::now() < deadline,
            "timed out after {DEADLINE:?} waiting for: {what}; runs: {:#?}",
            log.runs()
        );
        tokio::time::sleep(Duration::from_millis(10)).await; // ok: poll interval under a deadline
    }
}

/// Waits (under [`DEADLINE`]) until `cond` holds for the health of `handler`'s reader, and
/// returns it. A counter moves after what the log or the store shows (`handled` after the
/// handler returned, `dead_lettered` after the letter was written), so a test that saw those
/// waits for the counter before it asserts its exact value.
async fn wait_reader(
    node: &Node,
    handler: &str,
    what: &str,
    cond: impl Fn(&ReaderHealth) -> bool,
) -> ReaderHealth {
    let deadline = Instant::now() + DEADLINE;
    loop {
        let reader = node.reader(handler);
        if cond(&reader) {
            return reader;
        }
        assert!(
            Instant::now() < deadline,
            "timed out after {DEADLINE:?} waiting for the health of {handler}: {what}; {reader:?}"
        );
        tokio::time::sleep(Duration::from_millis(10)).await; // ok: poll interval under a deadline
    }
}

/// `ids` sorted, as a set that keeps duplicates visible.
fn sorted(mut ids: Vec<EventId>) -> Vec<EventId> {
    ids.sort();
    ids
}

// ---------------------------------------------------------------------------------------------
// Durable delivery.

/// Two handlers of one event: each gets every event, once.
async fn fan_out_every_handler_gets_every_event_once(h: Harness) {
    let log = Log::default();
    let mut b = h.builder();
    b.handlers(["conf.fanout_a", "conf.fanout_b"])
        .state(log.clone());
    let node = h.start(&b).await;
    let mut ids = Vec::new();
    for n in 0..5 {
        ids.push(node.publish(&Order { n }).await);
    }
    wait_log(&log, "both handlers handled all 5", |log| {
        log.handled("conf.fanout_a").len() >= 5 && log.handled("conf.fanout_b").len() >= 5
    })
    .await;
    node.idle().await;

    for handler in ["conf.fanout_a", "conf.fanout_b"] {
        assert_eq!(
            sorted(log.handled(handler)),
            sorted(ids.clone()),
            "{}: {handler} handled every event exactly once",
            h.name()
        );
        assert_eq!(
            log.runs_of(handler).len(),
            5,
            "{}: no extra runs of {handler}",
            h.name()
        );
        assert_eq!(node.reader(handler).handled, 5, "{}: health", h.name());
        if let Some(handled) = node.memory_handled(handler) {
            // In the order the runs finished: with concurrency 16, any order.
            assert_eq!(
                sorted(handled),
                sorted(ids.clone()),
                "memory: TestBus::handled({handler})"
            );
        }
    }
    assert!(node.dead_letters().await.is_empty());
    node.shutdown().await;
}

/// Two consumers of one handler share the work: every event is handled once overall, and both
/// took part.
async fn competing_consumers_handle_each_event_once_overall(h: Harness) {
    const N: u64 = 20;
    let log = Log::default();
    let mut b = h.builder();
    b.handlers(["conf.compete"])
        .state(log.clone())
        .batch_size(1)
        .concurrency(1);
    let first = h.start(&b).await;
    let mut second = first.another().await;
    second.start().await;
    let mut ids = Vec::new();
    for n in 0..N {
        ids.push(first.publish(&Task { n }).await);
    }
    wait_log(&log, "all events handled", |log| {
        log.handled("conf.compete").len() >= N as usize
    })
    .await;
    first.idle().await;
    second.idle().await;

    assert_eq!(
        sorted(log.handled("conf.compete")),
        sorted(ids.clone()),
        "{}: each event handled exactly once overall",
        h.name()
    );
    assert_eq!(log.runs().len(), N as usize, "{}: no extra runs", h.name());
    let (a, b) = (
        first.reader("conf.compete").handled,
        second.reader("conf.compete").handled,
    );
    assert_eq!(a + b, N, "{}: health handled {a} + {b}", h.name());
    assert!(
        a >= 1 && b >= 1,
        "{}: both consumers took part ({a}, {b})",
        h.name()
    );
    if let (Some(x), Some(y)) = (
        first.memory_handled("conf.compete"),
        second.memory_handled("conf.compete"),
    ) {
        let all: BTreeSet<EventId> = x.iter().chain(&y).cloned().collect();
        assert_eq!(
            all,
            ids.iter().cloned().collect(),
            "memory: TestBus::handled"
        );
        for v in [&x, &y] {
            let unique: BTreeSet<&EventId> = v.iter().collect();
            assert_eq!(unique.len(), v.len(), "memory: no duplicate in handled()");
        }
    }
    assert!(first.dead_letters().await.is_empty());
    first.shutdown().await;
    second.shutdown().await;
}

/// With `concurrency = 1` runs do not overlap, so they start (and finish) in stream order, also
/// when many entries arrive in one read.
async fn concurrency_1_runs_entries_in_stream_order(h: Harness) {
    const N: u64 = 50;
    let log = Log::default();
    let mut b = h.builder();
    b.handlers(["conf.sequential"]).state(log.clone());
    // Published before the start: the first read takes a whole batch.
    let mut node = h.build(&b).await;
    let steps: Vec<Step> = (0..N).map(|n| Step { n }).collect();
    let ids = node.bus().publish_batch(&steps).await.expect("publish");
    node.start().await;
    wait_log(&log, "all handled", |log| {
        log.handled("conf.sequential").len() >= N as usize
    })
    .await;
    node.idle().await;
    assert_eq!(
        log.entered("conf.sequential"),
        (0..N).collect::<Vec<_>>(),
        "{}: start order",
        h.name()
    );
    assert_eq!(
        log.handled("conf.sequential"),
        ids,
        "{}: finish order",
        h.name()
    );
    node.shutdown().await;
}

/// A handler that fails twice and then succeeds is handled once, on attempt 3, each retry no
/// sooner than the backoff.
async fn retry_fails_twice_then_succeeds_on_attempt_three_after_the_backoff_floor(h: Harness) {
    let backoff = Duration::from_millis(40);
    let log = Log::default();
    let mut b = h.builder();
    b.handlers(["conf.flaky"])
        .state(log.clone())
        .retries(3)
        .backoff(backoff)
        .max_backoff(Duration::from_millis(80));
    let node = h.start(&b).await;
    let id = node.publish(&Payment { n: 1 }).await;
    wait_log(&log, "handled", |log| !log.handled("conf.flaky").is_empty()).await;
    node.idle().await;

    let runs = log.runs_of("conf.flaky");
    let attempts: Vec<u32> = runs.iter().map(|r| r.attempt).collect();
    assert_eq!(attempts, [1, 2, 3], "{}: attempt numbers", h.name());
    assert!(runs.iter().all(|r| r.id == id), "{}: one event", h.name());
    assert_eq!(
        runs.iter().map(|r| r.ok).collect::<Vec<_>>(),
        [Some(false), Some(false), Some(true)]
    );
    for pair in runs.windows(2) {
        let gap = pair[1].started - pair[0].started;
        assert!(
            gap >= backoff,
            "{}: attempt {} came {gap:?} after attempt {}, under the backoff {backoff:?}",
            h.name(),
            pair[1].attempt,
            pair[0].attempt
        );
    }
    let elapsed = runs[2].started - runs[0].started;
    assert!(
        elapsed >= 2 * backoff,
        "{}: {elapsed:?} from attempt 1 to 3",
        h.name()
    );
    assert_eq!(log.handled("conf.flaky"), std::slice::from_ref(&id));
    assert!(node.dead_letters().await.is_empty(), "{}", h.name());
    let reader = node.reader("conf.flaky");
    assert_eq!(
        (reader.handled, reader.dead_lettered),
        (1, 0),
        "{}",
        h.name()
    );
    if let Some(handled) = node.memory_handled("conf.flaky") {
        assert_eq!(handled, [id]);
    }
    node.shutdown().await;
}

/// An always-failing handler (retries = 2) is dead-lettered after 3 attempts; the letter names
/// the event, the handler and the last error, and keeps the envelope.
async fn dead_letter_carries_the_event_the_handler_the_error_and_the_attempts(h: Harness) {
    let log = Log::default();
    let mut b = h.builder();
    b.handlers(["conf.doomed"]).state(log.clone());
    let node = h.start(&b).await;
    let started = SystemTime::now();
    let event = Ledger {
        n: 17,
        account: "acc-17".into(),
        cents: -250,
    };
    let id = node.publish(&event).await;
    let letters = node.wait_dead_letters(1).await;
    // The dead letter and the ack are one step: nothing is left once it exists.
    node.idle().await;

    assert_eq!(letters.len(), 1, "{}: {letters:#?}", h.name());
    let letter = &letters[0];
    assert!(
        letter.id.starts_with("conf.ledger/"),
        "{}: id {}",
        h.name(),
        letter.id
    );
    assert_eq!(letter.event_id.as_ref(), Some(&id), "{}", h.name());
    assert_eq!(letter.event_name, "conf.ledger");
    assert_eq!(letter.handler, "conf.doomed");
    assert!(
        letter.error.contains("ledger rejected account acc-17"),
        "{}: error {}",
        h.name(),
        letter.error
    );
    assert_eq!(letter.attempts, 3, "{}: retries = 2", h.name());
    let attempts: Vec<u32> = log
        .runs_of("conf.doomed")
        .iter()
        .map(|r| r.attempt)
        .collect();
    assert_eq!(attempts, [1, 2, 3], "{}", h.name());
    let now = SystemTime::now();
    assert!(
        letter.failed_at >= started - Duration::from_secs(1)
            && letter.failed_at <= now + Duration::from_secs(1),
        "{}: failed_at {:?}",
        h.name(),
        letter.failed_at
    );
    // A durable letter names the stream entry it came from.
    assert!(
        !letter.stream_id.is_empty() && letter.stream_id.contains('-'),
        "{}: stream_id {:?}",
        h.name(),
        letter.stream_id
    );
    let envelope = &letter.envelope;
    assert_eq!(envelope["id"], json!(id.as_str()), "{}", h.name());
    assert_eq!(envelope["type"], json!("conf.ledger"));
    assert_eq!(envelope["specversion"], json!("1.0"));
    assert_eq!(envelope["schemaversion"], json!(1));
    assert_eq!(
        envelope["data"],
        json!({"n": 17, "account": "acc-17", "cents": -250}),
        "{}",
        h.name()
    );
    // The dead-letter facade of the bus sees the same letter.
    let listed = node.bus().dlq().list(10).await.expect("list");
    assert_eq!(listed.len(), 1);
    assert_eq!(listed[0].id, letter.id, "{}", h.name());
    let reader = wait_reader(&node, "conf.doomed", "the letter counted", |r| {
        r.dead_lettered >= 1
    })
    .await;
    assert_eq!(
        (reader.dead_lettered, reader.handled),
        (1, 0),
        "{}",
        h.name()
    );
    node.shutdown().await;
}

/// Dead-lettered in one of two handlers; after the fix, replay runs that handler again (same
/// event id) and not the other one; the letter is gone.
async fn replay_runs_only_the_handler_that_gave_up(h: Harness) {
    let log = Log::default();
    log.set_broken(true);
    let mut b = h.builder();
    b.handlers(["conf.mailer", "conf.audit"]).state(log.clone());
    let node = h.start(&b).await;
    let id = node.publish(&Invoice { n: 42 }).await;
    let letters = node.wait_dead_letters(1).await;
    wait_log(&log, "audit handled it", |log| {
        !log.handled("conf.audit").is_empty()
    })
    .await;
    node.idle().await;
    assert_eq!(letters.len(), 1, "{}: {letters:#?}", h.name());
    let letter = letters[0].clone();
    assert_eq!(letter.handler, "conf.mailer");
    assert_eq!(letter.attempts, 2, "{}: retries = 1", h.name());
    assert!(
        letter.error.contains("smtp relay refused invoice 42"),
        "{}: {}",
        h.name(),
        letter.error
    );

    log.set_broken(false);
    node.bus().dlq().replay(&letter.id).await.expect("replay");
    assert!(
        node.dead_letters().await.is_empty(),
        "{}: the letter is gone after replay",
        h.name()
    );
    wait_log(&log, "the mailer handled the replay", |log| {
        !log.handled("conf.mailer").is_empty()
    })
    .await;
    node.idle().await;

    assert_eq!(
        log.handled("conf.mailer"),
        std::slice::from_ref(&id),
        "{}: same id",
        h.name()
    );
    assert_eq!(
        log.runs_of("conf.mailer").len(),
        3,
        "{}: 2 failed attempts, then 1 after the replay",
        h.name()
    );
    assert_eq!(
        log.runs_of("conf.audit").len(),
        1,
        "{}: the other handler does not run the replay: {:?}",
        h.name(),
        log.runs_of("conf.audit")
    );
    assert!(
        matches!(
            node.bus().dlq().replay(&letter.id).await,
            Err(Error::DeadLetterNotFound(_))
        ),
        "{}: replay twice",
        h.name()
    );
    if let Some(handled) = node.memory_handled("conf.audit") {
        assert_eq!(
            handled,
            std::slice::from_ref(&id),
            "memory: audit handled it once"
        );
    }
    node.shutdown().await;
}

/// An envelope with a schema version newer than the handler's type knows is dead-lettered at
/// once, with the reason, without running the handler; an older version is handled.
async fn newer_schema_version_is_dead_lettered_without_retries(h: Harness) {
    let log = Log::default();
    let mut b = h.builder();
    b.handlers(["conf.parcels"]).state(log.clone()).retries(3);
    let node = h.start(&b).await;
    let newer = node
        .publish(&NewerParcel {
            n: 3,
            parcel: "p-3".into(),
            grams: 3,
            fragile: true,
        })
        .await;
    let older = node
        .publish(&OlderParcel {
            n: 1,
            parcel: "p-1".into(),
            grams: 1,
        })
        .await;
    let current = node
        .publish(&Parcel {
            n: 2,
            parcel: "p-2".into(),
            grams: 2,
        })
        .await;
    let letters = node.wait_dead_letters(1).await;
    wait_log(&log, "older and current handled", |log| {
        log.handled("conf.parcels").len() >= 2
    })
    .await;
    node.idle().await;

    assert_eq!(letters.len(), 1, "{}: {letters:#?}", h.name());
    let l = &letters[0];
    assert_eq!(l.event_id.as_ref(), Some(&newer), "{}", h.name());
    assert_eq!(l.handler, "conf.parcels");
    assert_eq!(l.event_name, "conf.parcel");
    assert_eq!(l.attempts, 0, "{}: rejected before any attempt", h.name());
    assert!(
        l.error.contains("unknown schema version 3")
            && l.error.contains("conf.parcels")
            && l.error.contains("1 to 2"),
        "{}: {}",
        h.name(),
        l.error
    );
    assert_eq!(l.envelope["schemaversion"], json!(3), "{}", h.name());
    assert_eq!(l.envelope["data"]["fragile"], json!(true));
    assert_eq!(
        sorted(log.handled("conf.parcels")),
        sorted(vec![older, current]),
        "{}",
        h.name()
    );
    assert!(
        log.runs().iter().all(|r| r.id != newer),
        "{}: the handler never ran the newer event: {:?}",
        h.name(),
        log.runs()
    );
    let reader = wait_reader(&node, "conf.parcels", "the letter counted", |r| {
        r.dead_lettered >= 1
    })
    .await;
    assert_eq!(
        (reader.handled, reader.dead_lettered),
        (2, 1),
        "{}",
        h.name()
    );
    node.shutdown().await;
}

/// Data that does not decode into the handler's type is dead-lettered at once with the reason,
/// without running the handler; the reader goes on with the next event.
async fn undecodable_data_is_dead_lettered_without_retries(h: Harness) {
    let log = Log::default();
    let mut b = h.builder();
    b.handlers(["conf.parcels"]).state(log.clone()).retries(3);
    let node = h.start(&b).await;
    let broken = node
        .publish(&BrokenParcel {
            n: 9,
            parcel: 12,
            weight: "heavy".into(),
        })
        .await;
    let good = node
        .publish(&Parcel {
            n: 10,
            parcel: "p-10".into(),
            grams: 10,
        })
        .await;
    let letters = node.wait_dead_letters(1).await;
    wait_log(&log, "the good event is handled", |log| {
        !log.handled("conf.parcels").is_empty()
    })
    .await;
    node.idle().await;

    assert_eq!(letters.len(), 1, "{}: {letters:#?}", h.name());
    let l = &letters[0];
    assert_eq!(l.event_id.as_ref(), Some(&broken), "{}", h.name());
    assert_eq!(l.handler, "conf.parcels");
    assert_eq!(l.attempts, 0, "{}: rejected before any attempt", h.name());
    assert!(
        l.error.contains("cannot decode event data"),
        "{}: {}",
        h.name(),
        l.error
    );
    assert_eq!(
        l.envelope["data"],
        json!({"n": 9, "parcel": 12, "weight": "heavy"}),
        "{}",
        h.name()
    );
    assert_eq!(log.handled("conf.parcels"), [good], "{}", h.name());
    assert_eq!(log.runs().len(), 1, "{}: one run, the good one", h.name());
    node.shutdown().await;
}

/// The `max_payload` of the poison behaviour (the smallest allowed).
const POISON_MAX_PAYLOAD: usize = 1024;

/// One raw entry no handler can take: what it is, its fields, and what its dead letter's reason
/// must say.
struct Poison {
    what: &'static str,
    fields: Vec<(&'static str, Vec<u8>)>,
    reason: String,
}

fn poison_entries() -> Vec<Poison> {
    let oversized = json!({
        "specversion": "1.0", "id": "too-big", "type": "conf.parcel", "source": "/raw",
        "schemaversion": 2,
        "data": {"n": 4, "parcel": "x".repeat(2 * POISON_MAX_PAYLOAD), "grams": 4}
    })
    .to_string()
    .into_bytes();
    let oversized_reason = format!(
        "envelope is {} bytes, more than the maximum payload of {POISON_MAX_PAYLOAD}",
        oversized.len()
    );
    vec![
        Poison {
            what: "bad JSON in `envelope`",
            fields: vec![(
                "envelope",
                br#"{"specversion":"1.0","id":"bad-json","type":"conf.parcel",}"#.to_vec(),
            )],
            reason: "cannot decode envelope: trailing comma at line 1 column 59".to_owned(),
        },
        Poison {
            what: "non-UTF-8 bytes in `envelope`",
            fields: vec![(
                "envelope",
                b"{\"specversion\":\"1.0\",\"id\":\"\xff\xfe\",\"type\":\"conf.parcel\"}".to_vec(),
            )],
            reason: "envelope is not valid UTF-8".to_owned(),
        },
        Poison {
            what: "no `envelope` field",
            fields: vec![
                ("payload", br#"{"n":3}"#.to_vec()),
                ("source", b"raw".to_vec()),
            ],
            reason: "entry has no `envelope` field (fields: payload, source)".to_owned(),
        },
        Poison {
            what: "an envelope larger than max_payload",
            fields: vec![("envelope", oversized)],
            reason: oversized_reason,
        },
    ]
}

/// Writes the poison entries, then publishes a good event; waits until all are settled (and the
/// bus idle). Returns the consumer, each poison entry with its entry id, the good event's id and
/// the log.
async fn poison_scenario(h: &Harness) -> (Node, Vec<(Poison, String)>, EventId, Log) {
    let log = Log::default();
    let mut b = h.builder();
    b.handlers(["conf.parcels"])
        .state(log.clone())
        .retries(3)
        .max_payload(POISON_MAX_PAYLOAD);
    let node = h.start(&b).await;
    let mut entries = Vec::new();
    for poison in poison_entries() {
        let fields: Vec<(&str, &[u8])> = poison
            .fields
            .iter()
            .map(|(k, v)| (*k, v.as_slice()))
            .collect();
        let id = node.publish_raw("conf.parcel", &fields).await;
        entries.push((poison, id));
    }
    let good = node
        .publish(&Parcel {
            n: 5,
            parcel: "p-5".into(),
            grams: 5,
        })
        .await;
    node.wait_dead_letters(entries.len()).await;
    wait_log(&log, "the good event after the poison is handled", |log| {
        !log.handled("conf.parcels").is_empty()
    })
    .await;
    node.idle().await;
    (node, entries, good, log)
}

/// Raw entries no handler can take (bad JSON, non-UTF-8 bytes, no `envelope` field, larger
/// than `max_payload`): each is dead-lettered once, with 0 attempts and the reason, the handler
/// never runs for them, and the good event behind them is handled.
async fn poison_entries_are_dead_lettered_once_with_the_reason_and_the_next_event_is_handled(
    h: Harness,
) {
    let (node, entries, good, log) = poison_scenario(&h).await;
    let letters = node.dead_letters().await;
    assert_eq!(
        letters.len(),
        entries.len(),
        "{}: one letter per poison entry: {letters:#?}",
        h.name()
    );
    for (poison, entry) in &entries {
        let what = poison.what;
        let of_entry: Vec<&DeadLetter> = letters.iter().filter(|l| &l.stream_id == entry).collect();
        assert_eq!(
            of_entry.len(),
            1,
            "{}: {what}: dead-lettered once: {letters:#?}",
            h.name()
        );
        let l = of_entry[0];
        assert_eq!(l.attempts, 0, "{}: {what}: no attempt", h.name());
        assert!(
            l.error.contains(&poison.reason),
            "{}: {what}: expected {:?} in {:?}",
            h.name(),
            poison.reason,
            l.error
        );
        assert_eq!(l.event_id, None, "{}: {what}: no id was read", h.name());
        assert_eq!(l.handler, "conf.parcels", "{}: {what}", h.name());
        assert_eq!(l.event_name, "conf.parcel", "{}: {what}", h.name());
    }
    assert_eq!(
        log.handled("conf.parcels"),
        std::slice::from_ref(&good),
        "{}",
        h.name()
    );
    assert_eq!(
        log.runs().len(),
        1,
        "{}: the handler ran once, for the good event: {:#?}",
        h.name(),
        log.runs()
    );
    let reader = wait_reader(&node, "conf.parcels", "every letter counted", |r| {
        r.dead_lettered >= entries.len() as u64
    })
    .await;
    assert_eq!(
        (reader.dead_lettered, reader.handled, reader.claimed),
        (entries.len() as u64, 1, 0),
        "{}: {reader:?}",
        h.name()
    );
    node.shutdown().await;
}

/// The poison entries on both transports: the dead letters are equal, but for the ids the
/// transport made (the entry ids in `stream_id`, the letter's `id`) and the time.
async fn poison_dead_letters_are_the_same_on_memory_and_redis() {
    /// What of a letter must be equal: the entry's case, then every field but ids and time,
    /// with the transport's entry ids in the error replaced by `<entry>`.
    type Seen = (
        &'static str,
        Option<EventId>,
        String,
        String,
        String,
        u32,
        serde_json::Value,
    );
    async fn seen(h: Harness) -> Vec<Seen> {
        let (node, entries, _, _) = poison_scenario(&h).await;
        let letters = node.dead_letters().await;
        let mut seen = Vec::new();
        for (poison, entry) in &entries {
            let l = letters
                .iter()
                .find(|l| &l.stream_id == entry)
                .unwrap_or_else(|| panic!("{}: no letter for {}", h.name(), poison.what));
            let mut error = l.error.clone();
            for (_, id) in &entries {
                error = error.replace(id.as_str(), "<entry>");
            }
            seen.push((
                poison.what,
                l.event_id.clone(),
                l.event_name.clone(),
                l.handler.clone(),
                error,
                l.attempts,
                l.envelope.clone(),
            ));
        }
        node.shutdown().await;
        seen
    }
    let memory = seen(Harness::memory()).await;
    let redis = seen(Harness::redis()).await;
    for (m, r) in memory.iter().zip(&redis) {
        eprintln!(
            "{}: {}; envelope {}",
            m.0,
            m.4,
            m.6.to_string().chars().take(80).collect::<String>()
        );
        assert_eq!(m, r, "memory vs redis: {}", m.0);
    }
    assert_eq!(memory.len(), redis.len());
}

// ---------------------------------------------------------------------------------------------
// Crashes, restarts and shutdown.

/// A consumer dies with 2 runs in flight and the rest prefetched. Another consumer claims the
/// runs after the visibility timeout and handles everything as first attempts: nothing is
/// charged, nothing dead-lettered, nothing handled twice.
async fn crash_charges_nothing(h: Harness, retries: Option<u32>) {
    const N: u64 = 10;
    let log = Log::default();
    log.hold(true);
    let mut b = h.builder();
    b.handlers(["conf.worker"])
        .state(log.clone())
        .concurrency(2)
        .batch_size(8);
    if let Some(retries) = retries {
        b.retries(retries);
    }
    let mut first = h.start(&b).await;
    let mut ids = Vec::new();
    for n in 0..N {
        ids.push(first.publish(&Job { n }).await);
    }
    wait_log(&log, "two runs in flight on the first consumer", |log| {
        log.runs().len() == 2
    })
    .await;
    let in_flight = log.runs().len();
    let crashed = Instant::now();
    first.crash();
    log.hold(false);
    let mut second = first.another().await;
    let second_started = Instant::now();
    second.start().await;
    wait_log(&log, "every job handled by the second consumer", |log| {
        log.handled("conf.worker").len() >= N as usize
    })
    .await;
    second.idle().await;

    // A dead process starts nothing: every run before the second consumer started is one of
    // the two that were in flight at the crash.
    let on_crashed: Vec<Run> = log
        .runs()
        .into_iter()
        .filter(|r| r.started < second_started)
        .collect();
    assert_eq!(
        on_crashed.len(),
        in_flight,
        "{}: the crashed consumer started {} run(s) after crash(): {on_crashed:#?}",
        h.name(),
        on_crashed.len().saturating_sub(in_flight)
    );
    let letters = second.dead_letters().await;
    assert!(
        letters.is_empty(),
        "{}: nothing dead-lettered: {letters:#?}",
        h.name()
    );
    assert_eq!(
        sorted(log.handled("conf.worker")),
        sorted(ids),
        "{}: every job handled once",
        h.name()
    );
    let held = log.held_runs();
    let reruns: Vec<Run> = log
        .runs()
        .into_iter()
        .filter(|r| r.started >= second_started)
        .collect();
    assert_eq!(reruns.len(), N as usize, "{}: {reruns:#?}", h.name());
    assert!(
        reruns.iter().all(|r| r.attempt == 1),
        "{}: every run on the second consumer is the event's first charged attempt: {reruns:#?}",
        h.name()
    );
    // The runs that were in flight waited for the visibility timeout (less the lease renewal
    // period, a third of it) before another consumer took them.
    let floor = VISIBILITY / 2;
    for run in &held {
        let rerun = reruns
            .iter()
            .find(|r| r.id == run.id)
            .expect("the held event ran again");
        let waited = rerun.started - crashed;
        assert!(
            waited >= floor,
            "{}: event {} was claimed {waited:?} after the crash, before the visibility timeout",
            h.name(),
            run.n
        );
    }
    let reader = second.reader("conf.worker");
    assert_eq!(reader.dead_lettered, 0, "{}: {reader:?}", h.name());
    assert_eq!(reader.handled, N, "{}: {reader:?}", h.name());
    assert!(
        reader.claimed >= 2,
        "{}: the in-flight runs were claimed: {reader:?}",
        h.name()
    );
    assert!(
        reader.suspects >= 2,
        "{}: they ran as suspects: {reader:?}",
        h.name()
    );
    eprintln!(
        "{}: after the crash: claimed {}, taken over {}, suspects {}",
        h.name(),
        reader.claimed,
        reader.taken_over,
        reader.suspects
    );
    second.shutdown().await;
}

async fn crash_with_retries_0_charges_nothing_and_another_consumer_claims_after_the_visibility_timeout(
    h: Harness,
) {
    crash_charges_nothing(h, Some(0)).await;
}

async fn crash_with_default_retries_charges_nothing_and_another_consumer_claims_after_the_visibility_timeout(
    h: Harness,
) {
    crash_charges_nothing(h, None).await;
}

/// A process that comes back under its consumer name re-reads its own pending entries at once
/// (long before the 30 s visibility timeout), as first attempts.
async fn restart_under_the_same_name_rereads_its_own_pending_at_once(h: Harness) {
    const N: u64 = 4;
    let log = Log::default();
    log.hold(true);
    let mut b = h.builder();
    b.handlers(["conf.worker"])
        .state(log.clone())
        .retries(0)
        .concurrency(2)
        .visibility_timeout(Duration::from_secs(30))
        .claim_interval(Duration::from_secs(10));
    let mut node = h.start(&b).await;
    let mut ids = Vec::new();
    for n in 0..N {
        ids.push(node.publish(&Job { n }).await);
    }
    wait_log(&log, "two runs in flight", |log| log.runs().len() == 2).await;
    let in_flight = log.runs().len();
    node.crash();
    log.hold(false);
    let restarted = Instant::now();
    node.restart().await;
    wait_log(&log, "every job handled after the restart", |log| {
        log.handled("conf.worker").len() >= N as usize
    })
    .await;
    let took = restarted.elapsed();
    node.idle().await;

    let before: Vec<Run> = log
        .runs()
        .into_iter()
        .filter(|r| r.started < restarted)
        .collect();
    assert_eq!(
        before.len(),
        in_flight,
        "{}: the crashed consumer started {} run(s) after crash(): {before:#?}",
        h.name(),
        before.len().saturating_sub(in_flight)
    );
    assert!(
        took < Duration::from_secs(10),
        "{}: {took:?} (visibility timeout 30 s)",
        h.name()
    );
    assert_eq!(
        sorted(log.handled("conf.worker")),
        sorted(ids),
        "{}",
        h.name()
    );
    let reruns: Vec<Run> = log
        .runs()
        .into_iter()
        .filter(|r| r.started >= restarted)
        .collect();
    assert_eq!(reruns.len(), N as usize, "{}: {reruns:#?}", h.name());
    assert!(
        reruns.iter().all(|r| r.attempt == 1),
        "{}: {reruns:#?}",
        h.name()
    );
    let letters = node.dead_letters().await;
    assert!(letters.is_empty(), "{}: {letters:#?}", h.name());
    let reader = node.reader("conf.worker");
    assert_eq!(
        reader.claimed,
        0,
        "{}: its own entries, not claimed: {reader:?}",
        h.name()
    );
    node.shutdown().await;
}

/// The retries of a bus that sets none (README: `EVENTBUS_RETRIES`, default 3).
const DEFAULT_RETRIES: u32 = 3;

/// An event whose handler takes its process down every time it runs; after each crash the
/// consumer is killed and restarted under the same name (it re-reads its own pending entry at
/// once, as a suspect). The first crash is not charged (the run was not alone: it may have been
/// a bystander); every suspect run is charged before it starts, so it is dead-lettered after
/// `retries + 1` crashes it caused alone: `retries + 2` runs in all, the last delivery
/// dead-lettered without running. Another event is handled after that.
///
/// The same numbers, with child processes that abort and `kill -9`, are pinned on Redis by
/// `recovery.rs::a_message_that_crashes_every_consumer_is_dead_lettered_after_the_attempt_limit`
/// (retries = 1: 3 crashes) and `chaos_crash.rs::poison_crash_with_retries_0_and_one_consumer_restarted_under_its_name`.
async fn crash_every_run_is_dead_lettered_after_the_attempt_limit(
    h: Harness,
    retries: Option<u32>,
) {
    let limit = retries.unwrap_or(DEFAULT_RETRIES) + 1;
    let log = Log::default();
    let mut b = h.builder();
    b.handlers(["conf.bomber"]).state(log.clone());
    if let Some(retries) = retries {
        b.retries(retries);
    }
    let mut node = h.start_killable(&b).await;
    let bomb = node.publish(&Bomb { n: 1, crash: true }).await;
    let mut kills = 0_u32;
    let deadline = Instant::now() + DEADLINE * 2;
    let letters = loop {
        // A new run has started (the process is going down), or the event is dead-lettered.
        let letters = node.dead_letters().await;
        if !letters.is_empty() {
            break letters;
        }
        if log.runs_of("conf.bomber").len() > kills as usize {
            assert!(
                kills <= limit,
                "{}: run {} after {kills} crashes (limit {limit}): {:#?}",
                h.name(),
                kills + 1,
                log.runs()
            );
            node.kill();
            kills += 1;
            node.restart().await;
            continue;
        }
        assert!(
            Instant::now() < deadline,
            "{}: neither a new run nor a dead letter after {kills} crash(es): {:#?}; {:?}",
            h.name(),
            log.runs(),
            node.reader("conf.bomber")
        );
        tokio::time::sleep(Duration::from_millis(10)).await; // ok: poll interval under a deadline
    };
    node.idle().await;

    let runs = log.runs_of("conf.bomber");
    assert_eq!(
        runs.len() as u32,
        limit + 1,
        "{}: {limit} charged crashes alone after the first, uncharged one: {runs:#?}",
        h.name()
    );
    assert_eq!(kills, limit + 1, "{}", h.name());
    assert!(
        runs.iter().all(|r| r.id == bomb && r.ok.is_none()),
        "{}: every run was the bomb's, and none finished: {runs:#?}",
        h.name()
    );
    let mut attempts = vec![1];
    attempts.extend(1..=limit);
    assert_eq!(
        runs.iter().map(|r| r.attempt).collect::<Vec<_>>(),
        attempts,
        "{}: ctx.attempt() of each run",
        h.name()
    );
    assert_eq!(letters.len(), 1, "{}: {letters:#?}", h.name());
    let l = &letters[0];
    assert_eq!(l.event_id.as_ref(), Some(&bomb), "{}", h.name());
    assert_eq!(l.handler, "conf.bomber");
    assert_eq!(l.attempts, limit, "{}", h.name());
    assert!(
        l.error.contains("crashed") && l.error.contains(&format!("the limit is {limit}")),
        "{}: {}",
        h.name(),
        l.error
    );
    assert_eq!(l.envelope["data"]["crash"], json!(true), "{}", h.name());
    // Dead-lettered at the last restart, without running: that delivery was a suspect.
    let reader = wait_reader(&node, "conf.bomber", "the letter counted", |r| {
        r.dead_lettered >= 1
    })
    .await;
    assert_eq!(
        (reader.dead_lettered, reader.suspects, reader.claimed),
        (1, 1, 0),
        "{}: {reader:?}",
        h.name()
    );
    assert_eq!(
        node.charged("conf.bomb").await.unwrap_or(0),
        0,
        "{}",
        h.name()
    );

    let next = node.publish(&Bomb { n: 2, crash: false }).await;
    wait_log(&log, "the next event is handled", |log| {
        !log.handled("conf.bomber").is_empty()
    })
    .await;
    node.idle().await;
    let runs = log.runs_of("conf.bomber");
    let last = runs.last().expect("a run");
    assert_eq!((&last.id, last.attempt), (&next, 1), "{}", h.name());
    assert_eq!(log.handled("conf.bomber"), [next], "{}", h.name());
    assert_eq!(node.dead_letters().await.len(), 1, "{}", h.name());
    node.shutdown().await;
}

async fn crash_every_run_with_retries_0_is_dead_lettered_after_2_runs(h: Harness) {
    crash_every_run_is_dead_lettered_after_the_attempt_limit(h, Some(0)).await;
}

async fn crash_every_run_with_default_retries_is_dead_lettered_after_5_runs(h: Harness) {
    crash_every_run_is_dead_lettered_after_the_attempt_limit(h, None).await;
}

/// A failed attempt is charged before the backoff; the consumer is killed while it waits to
/// retry and restarted under the same name: the redelivery is attempt 2 (`ctx.attempt()`), it
/// succeeds, and the charge is gone with the ack. (On Redis with child processes:
/// `reliability.rs::a_failure_before_a_crash_is_charged_and_ctx_attempt_counts_it`.)
async fn a_failure_then_a_crash_before_the_retry_is_charged(h: Harness) {
    let log = Log::default();
    let mut b = h.builder();
    b.handlers(["conf.refunder"]).state(log.clone());
    let mut node = h.start_killable(&b).await;
    let id = node.publish(&Refund { n: 1 }).await;
    wait_log(&log, "the first attempt failed", |log| {
        log.runs_of("conf.refunder")
            .first()
            .is_some_and(|r| r.ok == Some(false))
    })
    .await;
    node.wait_charged("conf.refund", 1).await;
    let killed = Instant::now();
    node.kill();
    node.restart().await;
    wait_log(&log, "handled after the restart", |log| {
        !log.handled("conf.refunder").is_empty()
    })
    .await;
    node.idle().await;

    let runs = log.runs_of("conf.refunder");
    assert_eq!(
        runs.iter().map(|r| (r.attempt, r.ok)).collect::<Vec<_>>(),
        [(1, Some(false)), (2, Some(true))],
        "{}: {runs:#?}",
        h.name()
    );
    assert!(runs.iter().all(|r| r.id == id));
    let redelivered = runs[1].started - killed;
    assert!(
        redelivered < Duration::from_secs(5),
        "{}: the redelivery after the restart, not the in-process retry (10 s backoff): {redelivered:?}",
        h.name()
    );
    assert_eq!(log.handled("conf.refunder"), [id], "{}", h.name());
    let letters = node.dead_letters().await;
    assert!(letters.is_empty(), "{}: {letters:#?}", h.name());
    assert_eq!(
        node.charged("conf.refund").await.unwrap_or(0),
        0,
        "{}",
        h.name()
    );
    let reader = node.reader("conf.refunder");
    assert_eq!(
        (reader.handled, reader.suspects, reader.claimed),
        (1, 1, 0),
        "{}: re-read as a suspect under its own name: {reader:?}",
        h.name()
    );
    node.shutdown().await;
}

/// Shutdown lets the running handler finish and acks it: another consumer started afterwards
/// finds nothing of it to run again; the entry behind it (never started) is handled once there.
async fn shutdown_drains_the_running_handler_and_acks_it(h: Harness) {
    let log = Log::default();
    let mut b = h.builder();
    b.handlers(["conf.slow_worker"])
        .state(log.clone())
        .visibility_timeout(Duration::from_secs(30))
        .claim_interval(Duration::from_secs(10));
    let first = h.start(&b).await;
    let mut next = first.another().await;
    let ids = [
        first.publish(&Slow { n: 1 }).await,
        first.publish(&Slow { n: 2 }).await,
    ];
    // One run at a time; which of the two starts first is not the point here.
    wait_log(&log, "one run is in flight", |log| {
        log.entered("conf.slow_worker").len() == 1
    })
    .await;
    let first_n = log.entered("conf.slow_worker")[0];
    let behind_n = 3 - first_n;
    let running = ids[usize::try_from(first_n - 1).expect("1 or 2")].clone();
    let behind = ids[usize::try_from(behind_n - 1).expect("1 or 2")].clone();

    let shutdown = first.shutdown();
    tokio::pin!(shutdown);
    assert!(
        tokio::time::timeout(Duration::from_millis(300), &mut shutdown)
            .await
            .is_err(),
        "{}: shutdown waits for the running handler",
        h.name()
    );
    assert!(
        log.handled("conf.slow_worker").is_empty(),
        "{}: nothing finished yet",
        h.name()
    );
    log.open_gate();
    tokio::time::timeout(DEADLINE, shutdown)
        .await
        .unwrap_or_else(|_| panic!("{}: shutdown did not return", h.name()));
    assert_eq!(
        log.handled("conf.slow_worker"),
        std::slice::from_ref(&running),
        "{}: the running handler finished during the drain; the next one was not started",
        h.name()
    );

    next.start().await;
    wait_log(&log, "the entry behind it is handled", |log| {
        log.handled("conf.slow_worker").len() >= 2
    })
    .await;
    next.idle().await;
    let runs = log.runs();
    assert_eq!(
        runs.iter().map(|r| (r.n, r.attempt)).collect::<Vec<_>>(),
        [(first_n, 1), (behind_n, 1)],
        "{}: each event ran once, as a first attempt",
        h.name()
    );
    assert_eq!(
        log.handled("conf.slow_worker"),
        [running, behind],
        "{}",
        h.name()
    );
    let reader = next.reader("conf.slow_worker");
    assert_eq!(
        (reader.handled, reader.claimed),
        (1, 0),
        "{}: the drained run was acked, nothing waited for a claim: {reader:?}",
        h.name()
    );
    next.shutdown().await;
}

// ---------------------------------------------------------------------------------------------
// Broadcast.

/// Two broadcast handlers in two instances: every handler in every instance gets every event
/// once.
async fn broadcast_every_handler_in_every_instance_gets_every_event(h: Harness) {
    const N: u64 = 3;
    let log = Log::default();
    let mut b = h.builder();
    b.handlers(["conf.ping_one", "conf.ping_two"])
        .state(log.clone());
    let first = h.start(&b).await;
    let mut second = first.another().await;
    second.start().await;
    let mut ids = Vec::new();
    for n in 0..N {
        ids.push(first.publish(&Ping { n }).await);
    }
    wait_log(
        &log,
        "both handlers ran every event in both instances",
        |log| {
            log.handled("conf.ping_one").len() >= 2 * N as usize
                && log.handled("conf.ping_two").len() >= 2 * N as usize
        },
    )
    .await;

    let mut twice: Vec<EventId> = ids.iter().chain(&ids).cloned().collect();
    twice.sort();
    for handler in ["conf.ping_one", "conf.ping_two"] {
        assert_eq!(
            sorted(log.handled(handler)),
            twice,
            "{}: {handler} ran each event once per instance",
            h.name()
        );
        for node in [&first, &second] {
            let reader = wait_reader(node, handler, "every run counted", |r| r.handled >= N).await;
            assert_eq!(reader.handled, N, "{}", h.name());
        }
    }
    first.shutdown().await;
    second.shutdown().await;
}

/// A lost subscriber connection: the bus resubscribes by itself, counts one gap, and events
/// published after the resubscription are delivered again.
async fn broadcast_disconnect_counts_a_gap_and_resubscribes(h: Harness) {
    let log = Log::default();
    let mut b = h.builder();
    b.handlers(["conf.ping_one"]).state(log.clone());
    let node = h.start(&b).await;
    let before = node.publish(&Ping { n: 0 }).await;
    wait_log(&log, "the event before the gap is handled", |log| {
        log.handled("conf.ping_one") == [before.clone()]
    })
    .await;
    let reader = node.reader("conf.ping_one");
    assert_eq!(
        (reader.gaps, reader.reconnects),
        (0, 0),
        "{}: {reader:?}",
        h.name()
    );

    node.disconnect_broadcast().await;
    wait_until(
        DEADLINE,
        "the gap is counted and the subscriber is back",
        || {
            let r = node.reader("conf.ping_one");
            async move { r.gaps >= 1 && r.reconnects >= 1 && r.connected }
        },
    )
    .await;
    // Events published while it was away are lost (at most once); publish until one sent
    // after the resubscription arrives.
    let mut after = Vec::new();
    let deadline = Instant::now() + DEADLINE;
    let mut n = 1;
    while !log
        .handled("conf.ping_one")
        .iter()
        .any(|id| after.contains(id))
    {
        assert!(
            Instant::now() < deadline,
            "{}: nothing published after the resubscription arrived: {:#?}",
            h.name(),
            node.reader("conf.ping_one")
        );
        after.push(node.publish(&Ping { n }).await);
        n += 1;
        tokio::time::sleep(Duration::from_millis(10)).await; // ok: paces publishing under a deadline
    }
    let reader = node.reader("conf.ping_one");
    assert_eq!(reader.gaps, 1, "{}: one gap: {reader:?}", h.name());
    assert!(
        reader.connected && reader.last_error.is_none(),
        "{}: {reader:?}",
        h.name()
    );
    node.shutdown().await;
}

/// A slow broadcast handler (one run at a time, queue of 2): a run in flight, 6 more events;
/// 4 are dropped per the overflow policy and counted; the run and the 2 kept are handled.
async fn broadcast_queue_bounds(h: &Harness, overflow: Option<Overflow>) -> Vec<u64> {
    let log = Log::default();
    let mut b = h.builder();
    b.handlers(["conf.tick_gated"])
        .state(log.clone())
        .broadcast_queue(2);
    if let Some(overflow) = overflow {
        b.broadcast_overflow(overflow);
    }
    let node = h.start(&b).await;
    node.publish(&Tick { n: 0 }).await;
    wait_log(&log, "tick 0 is running", |log| {
        log.entered("conf.tick_gated") == [0]
    })
    .await;
    for n in 1..=6 {
        node.publish(&Tick { n }).await;
    }
    wait_until(DEADLINE, "4 ticks dropped", || {
        let dropped = node.reader("conf.tick_gated").dropped;
        async move { dropped >= 4 }
    })
    .await;
    let reader = node.reader("conf.tick_gated");
    assert_eq!(reader.dropped, 4, "{}: {reader:?}", h.name());
    assert_eq!(reader.gaps, 0, "{}: {reader:?}", h.name());
    assert_eq!(
        log.entered("conf.tick_gated"),
        [0],
        "{}: one run at a time",
        h.name()
    );
    log.open_gate();
    wait_log(&log, "the run and the queued ticks are handled", |log| {
        log.handled("conf.tick_gated").len() >= 3
    })
    .await;
    node.shutdown().await;
    let handled = log.handled_numbers("conf.tick_gated");
    assert_eq!(
        handled.len(),
        3,
        "{}: only the run and the queue's 2 are handled: {handled:?}",
        h.name()
    );
    handled
}

async fn broadcast_queue_full_drops_the_oldest_by_default(h: Harness) {
    let handled = broadcast_queue_bounds(&h, None).await;
    assert_eq!(handled, [0, 5, 6], "{}", h.name());
}

async fn broadcast_queue_full_with_drop_newest_keeps_the_first(h: Harness) {
    let handled = broadcast_queue_bounds(&h, Some(Overflow::DropNewest)).await;
    assert_eq!(handled, [0, 1, 2], "{}", h.name());
}

/// A slow broadcast handler (one run at a time) whose queue is bounded by bytes only
/// (`broadcast_queue_bytes` 7,600, count bound 1,000): a run in flight, then 8 events of about
/// 2,300 bytes; 3 fit, 5 are dropped per the overflow policy and counted.
async fn broadcast_byte_bound(h: &Harness, overflow: Option<Overflow>) -> Vec<u64> {
    const PAD: usize = 2_000;
    const QUEUE_BYTES: usize = 7_600;
    const N: u64 = 8;
    const FIT: u64 = 3;
    let log = Log::default();
    let mut b = h.builder();
    b.handlers(["conf.blob_gated"])
        .state(log.clone())
        .max_payload(4096)
        .broadcast_queue(1_000)
        .broadcast_queue_bytes(QUEUE_BYTES);
    if let Some(overflow) = overflow {
        b.broadcast_overflow(overflow);
    }
    let node = h.start(&b).await;
    node.publish(&Blob {
        n: 0,
        pad: String::new(),
    })
    .await;
    wait_log(&log, "blob 0 is running", |log| {
        log.entered("conf.blob_gated") == [0]
    })
    .await;
    for n in 1..=N {
        node.publish(&Blob {
            n,
            pad: "x".repeat(PAD),
        })
        .await;
    }
    let deadline = Instant::now() + DEADLINE;
    while node.reader("conf.blob_gated").dropped < N - FIT {
        assert!(
            Instant::now() < deadline,
            "{}: {} of {N} blobs of {PAD} bytes and an envelope dropped ({QUEUE_BYTES} bytes hold {FIT}): {:?}",
            h.name(),
            N - FIT,
            node.reader("conf.blob_gated")
        );
        tokio::time::sleep(Duration::from_millis(10)).await; // ok: poll interval under a deadline
    }
    assert_eq!(
        log.entered("conf.blob_gated"),
        [0],
        "{}: one run at a time",
        h.name()
    );
    log.open_gate();
    wait_log(&log, "the run and the queued blobs are handled", |log| {
        log.handled("conf.blob_gated").len() > FIT as usize
    })
    .await;
    let reader = wait_reader(&node, "conf.blob_gated", "every run counted", |r| {
        r.handled > FIT
    })
    .await;
    assert_eq!(
        (
            reader.dropped,
            reader.gaps,
            reader.handled,
            reader.dead_lettered
        ),
        (N - FIT, 0, 1 + FIT, 0),
        "{}: {reader:?}",
        h.name()
    );
    node.shutdown().await;
    let handled = log.handled_numbers("conf.blob_gated");
    assert_eq!(
        handled.len() as u64,
        1 + FIT,
        "{}: only the run and the {FIT} that fit are handled: {handled:?}",
        h.name()
    );
    handled
}

async fn broadcast_byte_bound_drops_the_oldest_by_default(h: Harness) {
    let handled = broadcast_byte_bound(&h, None).await;
    assert_eq!(handled, [0, 6, 7, 8], "{}", h.name());
}

async fn broadcast_byte_bound_with_drop_newest_keeps_the_first(h: Harness) {
    let handled = broadcast_byte_bound(&h, Some(Overflow::DropNewest)).await;
    assert_eq!(handled, [0, 1, 2, 3], "{}", h.name());
}
