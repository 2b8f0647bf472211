//! Poison inputs (issue 3, scenario 11): entries written by a raw client that no handler can
//! take are dead-lettered at once with the reason, with zero handler attempts and zero panics,
//! and the reader keeps going.

use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex, Once};
use std::time::Duration;

use eventbus::prelude::*;
use eventbus::{DeadLetter, Error};
use eventbus_tests::{
    RedisServer, init_tracing, namespace, pending_count, stream_ids, stream_key, wait_until,
};
use redis::AsyncCommands;
use serde_json::json;

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, DomainEvent)]
#[event(name = "poison.order")]
struct Order {
    id: u64,
    sku: String,
}

/// An event that is easy to make large.
#[derive(Debug, Clone, Serialize, Deserialize, DomainEvent)]
#[event(name = "poison.blob")]
struct Blob {
    bytes: String,
}

#[derive(Clone, Default)]
struct Handled(Arc<Mutex<Vec<(EventId, Order)>>>);

impl Handled {
    fn push(&self, id: EventId, ev: Order) {
        self.0.lock().expect("lock").push((id, ev));
    }
    fn all(&self) -> Vec<(EventId, Order)> {
        self.0.lock().expect("lock").clone()
    }
}

#[event_handler(name = "poison.orders")]
async fn orders(ev: Order, ctx: Context, handled: State<Handled>) -> anyhow::Result<()> {
    handled.push(ctx.event_id(), ev);
    Ok(())
}

#[event_handler(name = "poison.blobs")]
async fn blobs(_ev: Blob) -> anyhow::Result<()> {
    Ok(())
}

/// Panics anywhere in this test process (handler, reader, decoder), counted by a hook.
static PANICS: AtomicUsize = AtomicUsize::new(0);

fn count_panics() {
    static HOOK: Once = Once::new();
    HOOK.call_once(|| {
        let previous = std::panic::take_hook();
        std::panic::set_hook(Box::new(move |info| {
            PANICS.fetch_add(1, Ordering::SeqCst);
            previous(info);
        }));
    });
}

fn builder(server: &RedisServer, ns: &str, handler: &str) -> eventbus::BusBuilder {
    let mut b = Bus::builder();
    b.redis_url(server.url())
        .namespace(ns)
        .handlers([handler])
        .visibility_timeout(Duration::from_secs(1))
        .claim_interval(Duration::from_millis(200))
        .block_time(Duration::from_millis(200));
    b
}

async fn xadd(
    conn: &mut redis::aio::MultiplexedConnection,
    stream: &str,
    fields: &[(&str, &[u8])],
) -> String {
    let mut cmd = redis::cmd("XADD");
    cmd.arg(stream).arg("*");
    for (k, v) in fields {
        cmd.arg(*k).arg(*v);
    }
    cmd.query_async::<String>(conn).await.expect("raw XADD")
}

fn nested(open: &str, close: &str, depth: usize, inner: &str) -> String {
    format!("{}{inner}{}", open.repeat(depth), close.repeat(depth))
}

fn envelope(extra: &str) -> String {
    format!(r#"{{"specversion":"1.0","id":"poison","type":"poison.order","source":"/raw"{extra}}}"#)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn poison_inputs_are_dead_lettered_with_the_reason_without_retries_or_panics() {
    init_tracing();
    count_panics();
    let server = RedisServer::start();
    let ns = namespace("poison");
    let handled = Handled::default();
    let bus = builder(&server, &ns, "poison.orders")
        .state(handled.clone())
        .build()
        .await
        .expect("build");
    let running = bus.start().await.expect("start");
    let stream = stream_key(&ns, Order::NAME);
    let mut conn = server.conn().await;

    let good = envelope(r#","data":{"id":1,"sku":"sku-1"}"#);
    let deep = 10_000;
    let oversized = envelope(&format!(
        r#","data":{{"id":2,"sku":"{}"}}"#,
        "x".repeat(1024 * 1024)
    ));
    // (what, envelope field bytes or None for no envelope field, expected reason fragment)
    let cases: Vec<(&str, Option<Vec<u8>>, &str)> = vec![
        (
            "invalid JSON",
            Some(br#"{"specversion": "1.0", "id": oops}"#.to_vec()),
            "cannot decode envelope",
        ),
        (
            "truncated JSON",
            Some(good.as_bytes()[..good.len() / 2].to_vec()),
            "cannot decode envelope",
        ),
        (
            "wrong type of an attribute",
            Some(
                br#"{"specversion":"1.0","id":42,"type":"poison.order","data":{"id":1,"sku":"a"}}"#
                    .to_vec(),
            ),
            "cannot decode envelope",
        ),
        (
            "wrong types in the data",
            Some(envelope(r#","data":{"id":"seven","sku":5}"#).into_bytes()),
            "cannot decode event data",
        ),
        (
            "missing data field",
            Some(envelope(r#","data":{"id":3}"#).into_bytes()),
            "missing field `sku`",
        ),
        (
            "no data at all",
            Some(envelope("").into_bytes()),
            "cannot decode event data",
        ),
        (
            "missing id",
            Some(
                br#"{"specversion":"1.0","type":"poison.order","data":{"id":1,"sku":"a"}}"#
                    .to_vec(),
            ),
            "no `id`",
        ),
        (
            "missing type",
            Some(br#"{"specversion":"1.0","id":"no-type","data":{"id":1,"sku":"a"}}"#.to_vec()),
            "no `type`",
        ),
        (
            "missing specversion",
            Some(br#"{"id":"no-spec","type":"poison.order","data":{"id":1,"sku":"a"}}"#.to_vec()),
            "no `specversion`",
        ),
        (
            "another event's type",
            Some(
                br#"{"specversion":"1.0","id":"other","type":"poison.blob","data":{"bytes":""}}"#
                    .to_vec(),
            ),
            "does not match",
        ),
        (
            "non-UTF-8 bytes",
            Some(b"{\"specversion\":\"1.0\",\"id\":\"\xff\xfe\"}".to_vec()),
            "UTF-8",
        ),
        (
            "10,000-deep arrays as the envelope",
            Some(nested("[", "]", deep, "").into_bytes()),
            "cannot decode envelope",
        ),
        (
            "10,000-deep arrays as the data",
            Some(envelope(&format!(r#","data":{}"#, nested("[", "]", deep, ""))).into_bytes()),
            "cannot decode event data",
        ),
        (
            "10,000-deep objects as a data field",
            Some(
                envelope(&format!(
                    r#","data":{{"id":1,"sku":{}}}"#,
                    nested(r#"{"a":"#, "}", deep, "1")
                ))
                .into_bytes(),
            ),
            "cannot decode event data",
        ),
        ("empty body", Some(Vec::new()), "empty envelope"),
        (
            "whitespace body",
            Some(b" \n\t ".to_vec()),
            "empty envelope",
        ),
        (
            "JSON null",
            Some(b"null".to_vec()),
            "cannot decode envelope",
        ),
        ("no envelope field", None, "no `envelope` field"),
        (
            "payload over the maximum (1 MiB)",
            Some(oversized.into_bytes()),
            "more than the maximum payload of 1048576",
        ),
    ];
    let mut entries = Vec::new();
    for (what, body, reason) in &cases {
        let entry = match body {
            Some(b) => xadd(&mut conn, &stream, &[("envelope", b)]).await,
            None => xadd(&mut conn, &stream, &[("payload", b"{}")]).await,
        };
        entries.push((entry, *what, *reason));
    }
    // Good events after the poison: the reader keeps going. 10,000-deep values where the decoders
    // skip them (an unknown attribute, an unknown data field) are no poison: serde_json skips
    // them without recursing, and the event is handled.
    xadd(&mut conn, &stream, &[("envelope", good.as_bytes())]).await;
    let deep_but_fine = format!(
        r#"{{"specversion":"1.0","id":"deep-but-fine","type":"poison.order","ext":{},"data":{{"id":2,"sku":"sku-2","extra":{}}}}}"#,
        nested(r#"{"a":"#, "}", deep, "1"),
        nested("[", "]", deep, "")
    );
    xadd(
        &mut conn,
        &stream,
        &[("envelope", deep_but_fine.as_bytes())],
    )
    .await;
    let published = bus
        .publish(&Order {
            id: 9,
            sku: "sku-9".into(),
        })
        .await
        .expect("publish");

    wait_until(
        Duration::from_secs(15),
        "every poison entry dead-lettered, the good ones handled, nothing pending",
        || {
            let bus = bus.clone();
            let handled = handled.clone();
            let mut conn = conn.clone();
            let stream = stream.clone();
            let n = cases.len();
            async move {
                handled.all().len() >= 3
                    && bus.dlq().list(100).await.expect("list").len() >= n
                    && pending_count(&mut conn, &stream, "poison.orders").await == 0
            }
        },
    )
    .await;
    let health = running.health();
    running.shutdown().await.expect("shutdown");

    let letters = bus.dlq().list(100).await.expect("list");
    let by_entry = |entry: &str| -> &DeadLetter {
        letters
            .iter()
            .find(|l| l.stream_id == entry)
            .unwrap_or_else(|| panic!("no dead letter for {entry}: {letters:#?}"))
    };
    for (entry, what, reason) in &entries {
        let l = by_entry(entry);
        println!("{what}: {}", l.error.chars().take(160).collect::<String>());
        assert!(
            l.error.contains(reason),
            "{what}: expected {reason:?} in {:?}",
            l.error
        );
        assert_eq!(l.attempts, 0, "{what}: rejected before any attempt");
        assert_eq!(l.handler, "poison.orders", "{what}");
        assert_eq!(l.event_name, "poison.order", "{what}");
    }
    assert_eq!(
        letters.len(),
        cases.len(),
        "one dead letter per poison entry"
    );
    let oversized_letter = by_entry(&entries[entries.len() - 1].0);
    let kept = match &oversized_letter.envelope {
        serde_json::Value::String(s) => s.len(),
        other => other.to_string().len(),
    };
    assert!(
        kept <= 4096,
        "an oversized envelope is not copied whole into the dead letter: {kept} bytes"
    );

    let runs = handled.all();
    let mut ids: Vec<&str> = runs.iter().map(|r| r.0.as_str()).collect();
    ids.sort_unstable();
    let mut expected = vec!["poison", "deep-but-fine", published.as_str()];
    expected.sort_unstable();
    assert_eq!(
        ids, expected,
        "the handler ran once for each good event and for nothing else: {runs:?}"
    );
    assert_eq!(
        stream_ids(&mut conn, &stream).await.len(),
        cases.len() + 3,
        "every entry stays in the stream"
    );
    assert_eq!(
        health.readers[0].dead_lettered,
        cases.len() as u64,
        "{health:?}"
    );
    assert_eq!(health.readers[0].handled, 3, "{health:?}");
    assert_eq!(
        health.readers[0].claimed, 0,
        "nothing was left pending to claim: {health:?}"
    );
    assert!(health.is_healthy(), "{health:?}");
    assert_eq!(PANICS.load(Ordering::SeqCst), 0, "no panic anywhere");
}

/// `max_payload` configures both sides: `publish` refuses a larger envelope with a typed error
/// (nothing is stored), and a reader dead-letters one written by a raw client.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn configured_max_payload_is_enforced_on_publish_and_on_read() {
    init_tracing();
    count_panics();
    let server = RedisServer::start();
    let ns = namespace("max-payload");
    let bus = builder(&server, &ns, "poison.blobs")
        .max_payload(4096)
        .build()
        .await
        .expect("build");
    let running = bus.start().await.expect("start");
    let stream = stream_key(&ns, Blob::NAME);
    let mut conn = server.conn().await;

    let err = bus
        .publish(&Blob {
            bytes: "b".repeat(5000),
        })
        .await
        .expect_err("too large");
    match &err {
        Error::PayloadTooLarge { event, size, max } => {
            assert_eq!(*event, "poison.blob");
            assert!(*size > 5000, "{size}");
            assert_eq!(*max, 4096);
        }
        other => panic!("expected PayloadTooLarge, got {other:?}"),
    }
    let text = err.to_string();
    assert!(
        text.contains("4096") && text.contains("max_payload"),
        "{text}"
    );
    let len: usize = conn.xlen(&stream).await.expect("XLEN");
    assert_eq!(len, 0, "nothing stored");
    // Under the limit is fine (an envelope around 3,500 bytes of data).
    bus.publish(&Blob {
        bytes: "b".repeat(3500),
    })
    .await
    .expect("publish under the limit");

    let raw = json!({
        "specversion": "1.0", "id": "raw-big", "type": "poison.blob", "source": "/raw",
        "data": {"bytes": "r".repeat(5000)}
    })
    .to_string();
    let entry = xadd(&mut conn, &stream, &[("envelope", raw.as_bytes())]).await;
    wait_until(
        Duration::from_secs(15),
        "the raw oversized entry is dead-lettered",
        || {
            let bus = bus.clone();
            let entry = entry.clone();
            async move {
                bus.dlq()
                    .list(100)
                    .await
                    .expect("list")
                    .iter()
                    .any(|l| l.stream_id == entry)
            }
        },
    )
    .await;
    running.shutdown().await.expect("shutdown");
    let letters = bus.dlq().list(100).await.expect("list");
    let l = letters
        .iter()
        .find(|l| l.stream_id == entry)
        .expect("letter");
    assert!(
        l.error.contains("more than the maximum payload of 4096"),
        "{}",
        l.error
    );
    assert_eq!(l.attempts, 0);
    assert_eq!(PANICS.load(Ordering::SeqCst), 0, "no panic anywhere");
}
