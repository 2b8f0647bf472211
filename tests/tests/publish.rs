//! Publishing: `publish_batch` keeps order and ids and is all-or-nothing on encoding errors;
//! concurrent publishes (coalesced into shared pipelines) are each stored once, and one failing
//! command does not fail the others sent with it; the hand-written envelope survives hostile text.

use std::collections::BTreeSet;
use std::sync::{Arc, Mutex};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use eventbus::prelude::*;
use eventbus_tests::{RedisServer, init_tracing, namespace, stream_key, wait_until};

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, DomainEvent)]
#[event(name = "publish.item", version = 3)]
struct Item {
    n: u64,
    text: String,
}

/// Its stream is made a plain string below, so every XADD to it fails with WRONGTYPE.
#[derive(Debug, Clone, Serialize, Deserialize, DomainEvent)]
#[event(name = "publish.broken")]
struct Broken {
    n: u64,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, DomainEvent)]
#[event(name = "publish.hostile")]
struct Hostile {
    text: String,
    tags: Vec<String>,
}

#[derive(Clone, Default)]
struct Received(Arc<Mutex<Vec<(EventId, Hostile)>>>);

impl Received {
    fn push(&self, id: EventId, ev: Hostile) {
        self.0.lock().expect("lock").push((id, ev));
    }
}

#[event_handler(name = "publish.hostile_handler")]
async fn hostile_handler(ev: Hostile, ctx: Context, got: State<Received>) -> anyhow::Result<()> {
    got.push(ctx.event_id(), ev);
    Ok(())
}

/// A bus that only publishes.
async fn publisher(server: &RedisServer, ns: &str, max_payload: Option<usize>) -> Bus {
    let mut b = Bus::builder();
    b.redis_url(server.url())
        .namespace(ns)
        .handlers(std::iter::empty::<&str>());
    if let Some(max) = max_payload {
        b.max_payload(max);
    }
    b.build().await.expect("build bus")
}

/// The envelopes of a stream, oldest first, parsed as JSON.
async fn envelopes(server: &RedisServer, stream: &str) -> Vec<serde_json::Value> {
    let mut conn = server.conn().await;
    let reply: redis::streams::StreamRangeReply = redis::cmd("XRANGE")
        .arg(stream)
        .arg("-")
        .arg("+")
        .query_async(&mut conn)
        .await
        .expect("XRANGE");
    reply
        .ids
        .iter()
        .map(|entry| {
            let raw: String = entry.get("envelope").expect("envelope field");
            serde_json::from_str(&raw).expect("the envelope is JSON")
        })
        .collect()
}

/// A publishing task's result; fails (rather than hangs) if a publish is never answered.
async fn answered<T>(task: tokio::task::JoinHandle<T>) -> T {
    tokio::time::timeout(Duration::from_secs(60), task)
        .await
        .expect("every publish is answered within 60 s")
        .expect("the publishing task")
}

async fn exists(server: &RedisServer, key: &str) -> bool {
    let mut conn = server.conn().await;
    let n: u32 = redis::cmd("EXISTS")
        .arg(key)
        .query_async(&mut conn)
        .await
        .expect("EXISTS");
    n == 1
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn publish_batch_stores_events_in_order_with_the_returned_ids() {
    init_tracing();
    let server = RedisServer::start();
    let ns = namespace("batch_order");
    let bus = publisher(&server, &ns, None).await;
    let events: Vec<Item> = (0..250)
        .map(|n| Item {
            n,
            text: format!("item {n}"),
        })
        .collect();
    let before = SystemTime::now();
    let ids = bus.publish_batch(&events).await.expect("publish_batch");
    let after = SystemTime::now();
    assert_eq!(ids.len(), events.len());
    assert_eq!(
        ids.iter().collect::<BTreeSet<_>>().len(),
        ids.len(),
        "ids are unique"
    );

    let stored = envelopes(&server, &stream_key(&ns, Item::NAME)).await;
    assert_eq!(stored.len(), events.len(), "every event stored once");
    for (i, env) in stored.iter().enumerate() {
        assert_eq!(
            env["id"],
            ids[i].as_str(),
            "entry {i} has the id returned at {i}"
        );
        assert_eq!(env["data"]["n"], i as u64, "entry {i} holds event {i}");
        assert_eq!(env["type"], "publish.item");
        assert_eq!(env["specversion"], "1.0");
        assert_eq!(env["schemaversion"], 3);
        assert_eq!(env["datacontenttype"], "application/json");
        let text = env["time"].as_str().expect("time");
        let time = humantime::parse_rfc3339(text).expect("time is RFC 3339");
        let micros = |t: SystemTime| {
            t.duration_since(UNIX_EPOCH)
                .expect("after 1970")
                .as_micros()
        };
        assert!(
            micros(before) <= micros(time) && micros(time) <= micros(after),
            "time {text} lies within the call"
        );
        // One clock reading serves both: the UUID v7's 48-bit millisecond timestamp.
        let hex = ids[i].as_str().replace('-', "");
        let id_millis = u128::from_str_radix(&hex[..12], 16).expect("hex");
        assert_eq!(id_millis, micros(time) / 1000, "the id and the time agree");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_empty_batch_sends_nothing() {
    init_tracing();
    let server = RedisServer::start();
    let ns = namespace("batch_empty");
    let bus = publisher(&server, &ns, None).await;
    let ids = bus.publish_batch::<Item>(&[]).await.expect("empty batch");
    assert!(ids.is_empty());
    assert!(!exists(&server, &stream_key(&ns, Item::NAME)).await);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_batch_with_one_oversized_event_publishes_nothing() {
    init_tracing();
    let server = RedisServer::start();
    let ns = namespace("batch_oversized");
    let bus = publisher(&server, &ns, Some(1024)).await;
    let mut events: Vec<Item> = (0..10)
        .map(|n| Item {
            n,
            text: "small".into(),
        })
        .collect();
    events[7].text = "x".repeat(2000);
    let err = bus
        .publish_batch(&events)
        .await
        .expect_err("one event is too large");
    match &err {
        eventbus::Error::PayloadTooLarge { event, size, max } => {
            assert_eq!(*event, "publish.item");
            assert!(*size > 2000, "size {size} counts the whole envelope");
            assert_eq!(*max, 1024);
        }
        other => panic!("expected PayloadTooLarge, got {other:?}"),
    }
    assert!(
        err.to_string().contains("max_payload"),
        "the message says what to change: {err}"
    );
    assert!(
        !exists(&server, &stream_key(&ns, Item::NAME)).await,
        "nothing of the batch was published"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn concurrent_publishes_from_many_tasks_are_each_stored_once() {
    init_tracing();
    let server = RedisServer::start();
    let ns = namespace("concurrent");
    let bus = publisher(&server, &ns, None).await;
    let (tasks, per) = (32u64, 50u64);
    let mut joins = Vec::new();
    for t in 0..tasks {
        let bus = bus.clone();
        joins.push(tokio::spawn(async move {
            let mut ids = Vec::new();
            for i in 0..per {
                let n = t * per + i;
                let id = bus
                    .publish(&Item {
                        n,
                        text: format!("task {t}"),
                    })
                    .await
                    .expect("publish");
                ids.push((id, n));
            }
            ids
        }));
    }
    let mut published = Vec::new();
    for j in joins {
        published.extend(answered(j).await);
    }
    let ids: BTreeSet<&str> = published.iter().map(|(id, _)| id.as_str()).collect();
    assert_eq!(
        ids.len(),
        (tasks * per) as usize,
        "every publish got its own id"
    );

    let stored = envelopes(&server, &stream_key(&ns, Item::NAME)).await;
    assert_eq!(
        stored.len(),
        (tasks * per) as usize,
        "each event stored once"
    );
    let stored_pairs: BTreeSet<(String, u64)> = stored
        .iter()
        .map(|e| {
            (
                e["id"].as_str().expect("id").to_owned(),
                e["data"]["n"].as_u64().expect("n"),
            )
        })
        .collect();
    let published_pairs: BTreeSet<(String, u64)> = published
        .iter()
        .map(|(id, n)| (id.as_str().to_owned(), *n))
        .collect();
    assert_eq!(
        stored_pairs, published_pairs,
        "each returned id belongs to the event it was returned for"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn one_failing_command_does_not_fail_the_others_sent_with_it() {
    init_tracing();
    let server = RedisServer::start();
    let ns = namespace("isolation");
    let broken_key = stream_key(&ns, Broken::NAME);
    let mut conn = server.conn().await;
    let _: () = redis::cmd("SET")
        .arg(&broken_key)
        .arg("not a stream")
        .query_async(&mut conn)
        .await
        .expect("SET");
    let bus = publisher(&server, &ns, None).await;

    // Good and failing publishes interleave, so they share pipelines.
    let mut joins = Vec::new();
    for t in 0..16u64 {
        let bus = bus.clone();
        joins.push(tokio::spawn(async move {
            let mut ok = Vec::new();
            let mut failed = Vec::new();
            for i in 0..20 {
                let n = t * 20 + i;
                if n % 2 == 0 {
                    let id = bus
                        .publish(&Item {
                            n,
                            text: String::new(),
                        })
                        .await
                        .expect("a good publish succeeds beside failing ones");
                    ok.push(id);
                } else {
                    let err = bus
                        .publish(&Broken { n })
                        .await
                        .expect_err("XADD to a string fails");
                    failed.push(err);
                }
            }
            (ok, failed)
        }));
    }
    let (mut ok, mut failed) = (Vec::new(), Vec::new());
    for j in joins {
        let (o, f) = answered(j).await;
        ok.extend(o);
        failed.extend(f);
    }
    assert_eq!(ok.len(), 160);
    assert_eq!(failed.len(), 160);
    for err in &failed {
        assert!(!err.is_transient(), "WRONGTYPE is not retried: {err:?}");
        let chain = format!("{err:?}");
        assert!(chain.contains("WRONGTYPE"), "the error says why: {chain}");
    }
    let stored = envelopes(&server, &stream_key(&ns, Item::NAME)).await;
    let stored_ids: BTreeSet<String> = stored
        .iter()
        .map(|e| e["id"].as_str().expect("id").to_owned())
        .collect();
    let ok_ids: BTreeSet<String> = ok.iter().map(|id| id.as_str().to_owned()).collect();
    assert_eq!(stored_ids, ok_ids, "every good event is stored, once");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn quotes_control_characters_and_unicode_survive_the_round_trip() {
    init_tracing();
    let server = RedisServer::start();
    let ns = namespace("hostile");
    let got = Received::default();
    let bus = Bus::builder()
        .redis_url(server.url())
        .namespace(&ns)
        .handlers(["publish.hostile_handler"])
        .state(got.clone())
        .build()
        .await
        .expect("build bus");
    let running = bus.start().await.expect("start");
    let nasty = "quote \" backslash \\ newline \n tab \t nul \u{0} bell \u{7} del \u{7f} é ✓ 𝄞 </script> \u{2028}";
    let events: Vec<Hostile> = (0..5)
        .map(|i| Hostile {
            text: format!("{nasty} #{i}"),
            tags: vec![nasty.to_owned(), String::new(), "\\u0000".to_owned()],
        })
        .collect();
    let mut sent = Vec::new();
    sent.push((
        bus.publish(&events[0]).await.expect("publish"),
        events[0].clone(),
    ));
    let ids = bus
        .publish_batch(&events[1..])
        .await
        .expect("publish_batch");
    sent.extend(ids.into_iter().zip(events[1..].iter().cloned()));

    wait_until(Duration::from_secs(10), "every event handled", || {
        let got = got.clone();
        async move { got.0.lock().expect("lock").len() == 5 }
    })
    .await;
    running.shutdown().await.expect("shutdown");
    let mut received = got.0.lock().expect("lock").clone();
    received.sort_by(|a, b| a.0.cmp(&b.0));
    sent.sort_by(|a, b| a.0.cmp(&b.0));
    assert_eq!(received, sent, "each event arrives unchanged under its id");
}
