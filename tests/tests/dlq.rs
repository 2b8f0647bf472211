//! Dead letters: after the retry limit, for undecodable or unknown envelopes, and replay.

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, SystemTime};

use eventbus::prelude::*;
use eventbus::{DeadLetter, Error};
use eventbus_tests::{
    RedisServer, init_tracing, last_delivered_id, namespace, pending_count, stream_ids, stream_key,
    wait_until,
};
use serde_json::json;

// ---------------------------------------------------------------------------------------------
// Events and handlers of this file (each test selects its own with `.handlers([...])`).

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, DomainEvent)]
#[event(name = "dlq.ledger_entry")]
struct LedgerEntry {
    account: String,
    cents: i64,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, DomainEvent)]
#[event(name = "dlq.shipment", version = 2)]
struct Shipment {
    parcel: String,
    grams: u32,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, DomainEvent)]
#[event(name = "dlq.invoice")]
struct Invoice {
    number: u64,
}

/// Event ids a handler ran for, with the attempt number and decoded value.
struct Runs<T>(Arc<Mutex<Vec<(EventId, u32, T)>>>);

impl<T> Default for Runs<T> {
    fn default() -> Self {
        Runs(Arc::default())
    }
}

impl<T> Clone for Runs<T> {
    fn clone(&self) -> Self {
        Runs(self.0.clone())
    }
}

impl<T: Clone> Runs<T> {
    fn push(&self, ctx: &Context, value: T) {
        self.0
            .lock()
            .expect("lock")
            .push((ctx.event_id(), ctx.attempt(), value));
    }
    fn all(&self) -> Vec<(EventId, u32, T)> {
        self.0.lock().expect("lock").clone()
    }
    fn len(&self) -> usize {
        self.0.lock().expect("lock").len()
    }
}

#[event_handler(name = "dlq.always_fails", retries = 2, backoff = "10ms")]
async fn always_fails(
    ev: LedgerEntry,
    ctx: Context,
    runs: State<Runs<LedgerEntry>>,
) -> anyhow::Result<()> {
    runs.push(&ctx, ev.clone());
    anyhow::bail!("ledger rejected account {}", ev.account)
}

#[event_handler(name = "dlq.shipments", retries = 0)]
async fn shipments(ev: Shipment, ctx: Context, runs: State<Runs<Shipment>>) -> anyhow::Result<()> {
    runs.push(&ctx, ev);
    Ok(())
}

/// Fails while `broken` is set.
#[derive(Clone, Default)]
struct Fixable {
    broken: Arc<AtomicBool>,
    attempts: Arc<Mutex<Vec<EventId>>>,
    handled: Runs<Invoice>,
}

#[derive(Clone, Default)]
struct Audit(Runs<Invoice>);

#[event_handler(name = "dlq.invoice_mailer", retries = 1, backoff = "10ms")]
async fn invoice_mailer(ev: Invoice, ctx: Context, state: State<Fixable>) -> anyhow::Result<()> {
    state.attempts.lock().expect("lock").push(ctx.event_id());
    if state.broken.load(Ordering::SeqCst) {
        anyhow::bail!("smtp relay refused invoice {}", ev.number);
    }
    state.handled.push(&ctx, ev);
    Ok(())
}

#[event_handler(name = "dlq.invoice_audit")]
async fn invoice_audit(ev: Invoice, ctx: Context, audit: State<Audit>) -> anyhow::Result<()> {
    let Audit(runs) = &*audit;
    runs.push(&ctx, ev);
    Ok(())
}

// ---------------------------------------------------------------------------------------------

fn builder(server: &RedisServer, ns: &str) -> eventbus::BusBuilder {
    let mut b = Bus::builder();
    b.redis_url(server.url())
        .namespace(ns)
        .block_time(Duration::from_millis(200))
        .visibility_timeout(Duration::from_secs(30));
    b
}

async fn wait_dead_letters(bus: &Bus, n: usize) -> Vec<DeadLetter> {
    wait_until(
        Duration::from_secs(15),
        &format!("{n} dead letter(s)"),
        || {
            let bus = bus.clone();
            async move { bus.dlq().list(100).await.expect("list").len() >= n }
        },
    )
    .await;
    bus.dlq().list(100).await.expect("list")
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn always_failing_handler_is_dead_lettered_after_retries_plus_one_attempts() {
    init_tracing();
    let server = RedisServer::start();
    let ns = namespace("always-fails");
    let runs = Runs::<LedgerEntry>::default();
    let bus = builder(&server, &ns)
        .handlers(["dlq.always_fails"])
        .state(runs.clone())
        .build()
        .await
        .expect("build");
    let running = bus.start().await.expect("start");
    let started = SystemTime::now();
    let event = LedgerEntry {
        account: "acc-17".into(),
        cents: -250,
    };
    let id = bus.publish(&event).await.expect("publish");

    let letters = wait_dead_letters(&bus, 1).await;
    let mut conn = server.conn().await;
    let stream = stream_key(&ns, LedgerEntry::NAME);
    // The dead letter and the ack are one transaction: nothing may be pending once it exists.
    assert_eq!(
        pending_count(&mut conn, &stream, "dlq.always_fails").await,
        0,
        "nothing pending"
    );
    running.shutdown().await.expect("shutdown");

    assert_eq!(letters.len(), 1, "exactly one dead letter: {letters:?}");
    let letter = &letters[0];
    let attempts: Vec<u32> = runs.all().iter().map(|r| r.1).collect();
    assert_eq!(attempts, [1, 2, 3], "retries = 2 means exactly 3 attempts");
    assert!(runs.all().iter().all(|r| r.0 == id && r.2 == event));

    assert!(
        letter.id.starts_with("dlq.ledger_entry/"),
        "id: {}",
        letter.id
    );
    assert_eq!(letter.event_id.as_ref(), Some(&id));
    assert_eq!(letter.event_name, "dlq.ledger_entry");
    assert_eq!(letter.handler, "dlq.always_fails");
    assert!(
        letter.error.contains("ledger rejected account acc-17"),
        "error: {}",
        letter.error
    );
    assert_eq!(letter.attempts, 3);
    let now = SystemTime::now();
    assert!(
        letter.failed_at >= started - Duration::from_secs(1)
            && letter.failed_at <= now + Duration::from_secs(1),
        "failed_at {:?} is not between {started:?} and {now:?}",
        letter.failed_at
    );
    assert_eq!(letter.envelope["id"], json!(id.as_str()));
    assert_eq!(letter.envelope["type"], json!("dlq.ledger_entry"));
    assert_eq!(letter.envelope["specversion"], json!("1.0"));
    assert_eq!(
        letter.envelope["data"],
        json!({"account": "acc-17", "cents": -250})
    );
    assert_eq!(
        stream_ids(&mut conn, &stream).await,
        vec![letter.stream_id.clone()],
        "stream_id names the original entry"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn malformed_and_unknown_envelopes_are_dead_lettered_and_foreign_cloudevents_are_handled() {
    init_tracing();
    let server = RedisServer::start();
    let ns = namespace("malformed");
    let runs = Runs::<Shipment>::default();
    let bus = builder(&server, &ns)
        .handlers(["dlq.shipments"])
        .state(runs.clone())
        .build()
        .await
        .expect("build");
    let running = bus.start().await.expect("start");

    let stream = stream_key(&ns, Shipment::NAME);
    let mut conn = server.conn().await;
    let mut xadd = async |fields: &[(&str, &[u8])]| -> String {
        let mut cmd = redis::cmd("XADD");
        cmd.arg(&stream).arg("*");
        for (k, v) in fields {
            cmd.arg(*k).arg(*v);
        }
        cmd.query_async::<String>(&mut conn)
            .await
            .expect("raw XADD")
    };
    let not_json = xadd(&[("envelope", b"{\"specversion\": \"1.0\", not json")]).await;
    let not_utf8 = xadd(&[("envelope", b"\xff\xfe\xfd garbage")]).await;
    let no_envelope = xadd(&[("payload", b"{}")]).await;
    let newer = json!({
        "specversion": "1.0", "id": "from-the-future", "type": "dlq.shipment", "source": "/newer-service",
        "datacontenttype": "application/json", "schemaversion": 3,
        "data": {"parcel": "p-3", "grams": 3, "fragile": true}
    });
    let newer_entry = xadd(&[("envelope", newer.to_string().as_bytes())]).await;
    let bad_data = json!({
        "specversion": "1.0", "id": "bad-data", "type": "dlq.shipment", "source": "/x",
        "data": {"parcel": 12, "weight": "heavy"}
    });
    let bad_data_entry = xadd(&[("envelope", bad_data.to_string().as_bytes())]).await;
    // Written by another CloudEvents SDK: a non-UUID id, no schemaversion, extension attributes.
    let foreign = json!({
        "specversion": "1.0",
        "id": "A234-1234-1234",
        "type": "dlq.shipment",
        "source": "https://other-sdk.example/warehouse",
        "time": "2024-05-01T12:00:00Z",
        "datacontenttype": "application/json",
        "subject": "parcel/p-foreign",
        "comexampleextension1": "value",
        "comexampleothervalue": 5,
        "traceparent": "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01",
        "data": {"parcel": "p-foreign", "grams": 900}
    });
    xadd(&[("envelope", foreign.to_string().as_bytes())]).await;
    // An older schema version (1 ≤ VERSION = 2) is accepted.
    let older = json!({
        "specversion": "1.0", "id": "older-version", "type": "dlq.shipment", "source": "/old",
        "schemaversion": 1, "data": {"parcel": "p-old", "grams": 1}
    });
    xadd(&[("envelope", older.to_string().as_bytes())]).await;

    let mut good = Vec::new();
    for i in 0..5 {
        good.push(
            bus.publish(&Shipment {
                parcel: format!("p-{i}"),
                grams: 100 + i,
            })
            .await
            .expect("publish"),
        );
    }

    wait_until(
        Duration::from_secs(15),
        "the foreign, older and good events are handled",
        || {
            let runs = runs.clone();
            async move { runs.len() >= 7 }
        },
    )
    .await;
    let letters = wait_dead_letters(&bus, 5).await;
    let pending_conn = server.conn().await;
    wait_until(Duration::from_secs(10), "nothing pending", || {
        let mut conn = pending_conn.clone();
        let stream = stream.clone();
        async move { pending_count(&mut conn, &stream, "dlq.shipments").await == 0 }
    })
    .await;
    running.shutdown().await.expect("shutdown");

    let handled = runs.all();
    let ids: Vec<&str> = handled.iter().map(|r| r.0.as_str()).collect();
    assert_eq!(handled.len(), 7, "handled: {ids:?}");
    let foreign_run = handled
        .iter()
        .find(|r| r.0 == "A234-1234-1234")
        .expect("the foreign event was handled");
    assert_eq!(
        foreign_run.2,
        Shipment {
            parcel: "p-foreign".into(),
            grams: 900
        }
    );
    assert!(
        ids.contains(&"older-version"),
        "an older schema version is handled: {ids:?}"
    );
    for id in &good {
        assert!(
            handled.iter().any(|r| &r.0 == id),
            "good event {id} published after the bad ones was handled"
        );
    }

    assert_eq!(letters.len(), 5, "{letters:#?}");
    let by_entry = |entry: &str| -> &DeadLetter {
        letters
            .iter()
            .find(|l| l.stream_id == entry)
            .unwrap_or_else(|| panic!("no dead letter for {entry}: {letters:#?}"))
    };
    for l in &letters {
        assert_eq!(l.handler, "dlq.shipments");
        assert_eq!(l.event_name, "dlq.shipment");
        assert_eq!(l.attempts, 0, "rejected before any attempt: {l:?}");
    }
    let l = by_entry(&not_json);
    assert!(l.error.contains("cannot decode envelope"), "{}", l.error);
    assert_eq!(l.event_id, None);
    assert_eq!(
        l.envelope,
        json!("{\"specversion\": \"1.0\", not json"),
        "the raw text is kept"
    );
    let l = by_entry(&not_utf8);
    assert!(l.error.contains("UTF-8"), "{}", l.error);
    let l = by_entry(&no_envelope);
    assert!(
        l.error.contains("no `envelope` field") && l.error.contains("payload"),
        "{}",
        l.error
    );
    let l = by_entry(&newer_entry);
    assert!(l.error.contains("unknown schema version 3"), "{}", l.error);
    assert!(
        l.error.contains("dlq.shipments") && l.error.contains("1 to 2"),
        "{}",
        l.error
    );
    assert_eq!(
        l.event_id.as_ref().map(EventId::as_str),
        Some("from-the-future")
    );
    assert_eq!(l.envelope, newer, "the envelope is kept as JSON");
    let l = by_entry(&bad_data_entry);
    assert!(l.error.contains("cannot decode event data"), "{}", l.error);
    assert_eq!(l.event_id.as_ref().map(EventId::as_str), Some("bad-data"));

    // A dead letter whose envelope was never an event cannot be replayed; it can be removed.
    let bad = by_entry(&not_json).id.clone();
    let err = bus
        .dlq()
        .replay(&bad)
        .await
        .expect_err("replaying garbage fails");
    assert!(matches!(err, Error::Replay { .. }), "{err:?}");
    assert!(
        err.to_string().contains(&bad) && err.to_string().contains("not a valid event"),
        "{err}"
    );
    bus.dlq().remove(&bad).await.expect("remove");
    assert!(
        matches!(
            bus.dlq().remove(&bad).await,
            Err(Error::DeadLetterNotFound(_))
        ),
        "removed twice"
    );
    assert_eq!(bus.dlq().list(100).await.expect("list").len(), 4);
    assert_eq!(bus.dlq().purge().await.expect("purge"), 4);
    assert!(bus.dlq().list(100).await.expect("list").is_empty());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn replay_goes_to_the_fixed_handler_only_and_removes_the_dead_letter() {
    init_tracing();
    let server = RedisServer::start();
    let ns = namespace("replay");
    let fixable = Fixable::default();
    fixable.broken.store(true, Ordering::SeqCst);
    let audit = Audit::default();
    let bus = builder(&server, &ns)
        .handlers(["dlq.invoice_mailer", "dlq.invoice_audit"])
        .state(fixable.clone())
        .state(audit.clone())
        .build()
        .await
        .expect("build");
    let running = bus.start().await.expect("start");
    let id = bus
        .publish(&Invoice { number: 2024_0042 })
        .await
        .expect("publish");

    let letters = wait_dead_letters(&bus, 1).await;
    assert_eq!(letters.len(), 1);
    let letter = &letters[0];
    assert_eq!(letter.handler, "dlq.invoice_mailer");
    assert_eq!(letter.event_id.as_ref(), Some(&id));
    assert!(
        letter.error.contains("smtp relay refused invoice 20240042"),
        "{}",
        letter.error
    );
    assert_eq!(letter.attempts, 2);
    wait_until(
        Duration::from_secs(10),
        "the audit handler handled the event",
        || {
            let audit = audit.clone();
            async move { audit.0.len() >= 1 }
        },
    )
    .await;

    // Fix the handler and replay.
    fixable.broken.store(false, Ordering::SeqCst);
    bus.dlq().replay(&letter.id).await.expect("replay");
    assert!(
        bus.dlq().list(100).await.expect("list").is_empty(),
        "the dead letter is gone after replay"
    );
    wait_until(
        Duration::from_secs(10),
        "the fixed handler handled the replayed event",
        || {
            let fixable = fixable.clone();
            async move { fixable.handled.len() >= 1 }
        },
    )
    .await;

    // Wait until the audit group has read past the replayed entry and acked it.
    let stream = stream_key(&ns, Invoice::NAME);
    let mut conn = server.conn().await;
    let entries = stream_ids(&mut conn, &stream).await;
    assert_eq!(entries.len(), 2, "the original and the replayed entry");
    let replayed_entry = entries[1].clone();
    wait_until(
        Duration::from_secs(10),
        "both groups read and acked the replayed entry",
        || {
            let mut conn = conn.clone();
            let stream = stream.clone();
            let replayed_entry = replayed_entry.clone();
            async move {
                for g in ["dlq.invoice_mailer", "dlq.invoice_audit"] {
                    if last_delivered_id(&mut conn, &stream, g).await.as_deref()
                        != Some(replayed_entry.as_str())
                        || pending_count(&mut conn, &stream, g).await != 0
                    {
                        return false;
                    }
                }
                true
            }
        },
    )
    .await;
    running.shutdown().await.expect("shutdown");

    let handled = fixable.handled.all();
    assert_eq!(handled.len(), 1, "handled once after the replay");
    assert_eq!(handled[0].0, id, "the replayed event keeps its id");
    assert_eq!(handled[0].2, Invoice { number: 2024_0042 });
    assert_eq!(
        fixable.attempts.lock().expect("lock").len(),
        3,
        "2 failed attempts, then 1 after the replay"
    );
    let audited = audit.0.all();
    assert_eq!(
        audited.len(),
        1,
        "the other handler does not see the replayed event again: {audited:?}"
    );
    assert_eq!(audited[0].0, id);
    assert!(
        bus.dlq().list(100).await.expect("list").is_empty(),
        "no dead letters left"
    );
    assert!(
        matches!(
            bus.dlq().replay(&letter.id).await,
            Err(Error::DeadLetterNotFound(_))
        ),
        "replay twice"
    );
}
