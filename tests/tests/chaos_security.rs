//! Security and operations (issue 3, scenarios 13, 14 and 15): a Redis that may evict streams is
//! flagged (or refused) at start-up, a namespace-limited ACL user runs a whole service while one
//! outside its namespace fails fast with a permission error, and the bus talks TLS to a TLS-only
//! server with generated certificates.

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use eventbus::prelude::*;
use eventbus::{BusBuilder, Error};
use eventbus_tests::tls::{TlsFiles, TlsRedisServer};
use eventbus_tests::{
    ChildProcess, Persistence, RedisServer, acl, init_tracing, logs, namespace, pending_count,
    stream_key, wait_until,
};
use redis::aio::MultiplexedConnection;

#[derive(Debug, Clone, Serialize, Deserialize, DomainEvent)]
#[event(name = "sec.note")]
struct Note {
    n: u64,
    fail: bool,
    sleep_ms: u64,
}

/// Notes handled; notes with `fail` fail until `fixed` is set.
#[derive(Clone, Default)]
struct Notes {
    handled: Arc<Mutex<Vec<u64>>>,
    fixed: Arc<AtomicBool>,
}

impl Notes {
    fn handled(&self) -> Vec<u64> {
        self.handled.lock().expect("lock").clone()
    }
}

const HANDLER: &str = "sec.notes";

#[event_handler(name = "sec.notes", retries = 0)]
async fn notes(ev: Note, notes: State<Notes>) -> anyhow::Result<()> {
    if ev.sleep_ms > 0 {
        tokio::time::sleep(Duration::from_millis(ev.sleep_ms)).await; // ok: a slow run, so the reader renews its lease
    }
    if ev.fail && !notes.fixed.load(Ordering::SeqCst) {
        anyhow::bail!("note {} rejected", ev.n);
    }
    notes.handled.lock().expect("lock").push(ev.n);
    Ok(())
}

#[derive(Debug, Clone, Serialize, Deserialize, DomainEvent)]
#[event(name = "sec.shout", broadcast)]
struct Shout {
    n: u64,
}

#[event_handler(name = "sec.shouts")]
async fn shouts(_ev: Shout) -> anyhow::Result<()> {
    Ok(())
}

fn note(n: u64) -> Note {
    Note {
        n,
        fail: false,
        sleep_ms: 0,
    }
}

fn builder(url: &str, ns: &str, notes: &Notes) -> BusBuilder {
    let mut b = Bus::builder();
    b.redis_url(url)
        .namespace(ns)
        .handlers([HANDLER])
        .visibility_timeout(Duration::from_secs(1))
        .claim_interval(Duration::from_millis(200))
        .block_time(Duration::from_millis(200))
        .state(notes.clone());
    b
}

// ---------------------------------------------------------------------------------------------
// Scenario 13: eviction policy.

async fn config_set(conn: &mut MultiplexedConnection, key: &str, value: &str) {
    let _: () = redis::cmd("CONFIG")
        .arg("SET")
        .arg(key)
        .arg(value)
        .query_async(conn)
        .await
        .unwrap_or_else(|e| panic!("CONFIG SET {key} {value}: {e}"));
}

/// `allkeys-*` policies may evict streams: `build()` warns, naming the policy; `noeviction` and
/// `volatile-*` (streams have no TTL) do not.
#[tokio::test(flavor = "current_thread")]
async fn an_evicting_maxmemory_policy_is_a_loud_warning() {
    let server = RedisServer::start();
    let mut admin = server.conn().await;
    let ns = namespace("evict-warn");
    for (policy, warns) in [
        ("noeviction", false),
        ("volatile-lru", false),
        ("allkeys-lru", true),
        ("allkeys-lfu", true),
        ("allkeys-random", true),
    ] {
        config_set(&mut admin, "maxmemory-policy", policy).await;
        let (subscriber, captured) = logs::capture(tracing::Level::WARN);
        let guard = tracing::subscriber::set_default(subscriber);
        let bus = builder(&server.url(), &ns, &Notes::default()).build().await;
        drop(guard);
        assert!(bus.is_ok(), "{policy}: builds: {bus:?}");
        let warnings = captured.find("WARN", "maxmemory-policy");
        if warns {
            assert_eq!(warnings.len(), 1, "{policy}: {}", captured.text());
            let message = warnings[0]["fields"]["message"].as_str().unwrap_or("");
            assert!(
                message.contains(policy) && message.contains("evict"),
                "{policy}: the warning names the policy and the risk: {message}"
            );
            println!("{policy}: {message}");
        } else {
            assert!(warnings.is_empty(), "{policy}: {}", captured.text());
        }
    }
}

/// With `refuse_evicting_redis(true)`, an `allkeys-*` policy is a start-up error naming it.
#[tokio::test(flavor = "current_thread")]
async fn refuse_evicting_redis_makes_it_a_startup_error() {
    let server = RedisServer::start_with(Persistence::None, &["--maxmemory-policy", "allkeys-lfu"]);
    let ns = namespace("evict-refuse");
    let err = builder(&server.url(), &ns, &Notes::default())
        .refuse_evicting_redis(true)
        .build()
        .await
        .expect_err("refused");
    let text = err.to_string();
    println!("refused: {text}");
    assert!(matches!(err, Error::Config { .. }), "{err:?}");
    assert!(
        text.contains("maxmemory-policy") && text.contains("allkeys-lfu"),
        "{text}"
    );
    // The same through the environment (EVENTBUS_REFUSE_EVICTION), in the consumer process.
    let url = server.url();
    let mut child = ChildProcess::spawn(
        env!("CARGO_BIN_EXE_consumer"),
        &[
            ("REDIS_URL", url.as_str()),
            ("EVENTBUS_NAMESPACE", ns.as_str()),
            ("EVENTBUS_HANDLERS", "consumer.job"),
            ("EVENTBUS_REFUSE_EVICTION", "true"),
        ],
    );
    let deadline = Instant::now() + Duration::from_secs(20);
    let status = loop {
        if let Some(status) = child.try_wait() {
            break status;
        }
        assert!(Instant::now() < deadline, "the consumer did not exit");
        tokio::time::sleep(Duration::from_millis(20)).await; // ok: polling a child process with a deadline
    };
    assert!(!status.success(), "the consumer refused to start");
    let stderr = child.stderr();
    assert!(
        stderr.contains("maxmemory-policy") && stderr.contains("allkeys-lfu"),
        "{stderr}"
    );
    // And `noeviction` starts.
    let mut admin = server.conn().await;
    config_set(&mut admin, "maxmemory-policy", "noeviction").await;
    builder(&server.url(), &ns, &Notes::default())
        .refuse_evicting_redis(true)
        .build()
        .await
        .expect("noeviction is fine");
}

/// A user that may not run CONFIG (a managed Redis, a strict ACL) skips the check: the bus
/// starts even with `refuse_evicting_redis(true)`.
#[tokio::test(flavor = "current_thread")]
async fn the_eviction_check_is_skipped_when_config_is_denied() {
    let server = RedisServer::start_with(Persistence::None, &["--maxmemory-policy", "allkeys-lru"]);
    let mut admin = server.conn().await;
    let ns = namespace("evict-noconfig");
    let pattern = format!("~{ns}:*");
    acl::set_user(
        &mut admin,
        "svc",
        &["on", ">pw", &pattern, "+@all", "-config"],
    )
    .await;
    let url = format!("redis://svc:pw@127.0.0.1:{}", server.port());
    builder(&url, &ns, &Notes::default())
        .refuse_evicting_redis(true)
        .build()
        .await
        .expect("starts without the check");
    assert!(
        acl::log(&mut admin)
            .await
            .iter()
            .any(|e| e.get("object").map(String::as_str) == Some("config|get")),
        "CONFIG GET was tried and denied"
    );
}

// ---------------------------------------------------------------------------------------------
// Scenario 14: ACL.

/// The ACL rules a service needs besides its key pattern `~<namespace>:*`, found by running a
/// whole service under them and taking each one away in turn (each is needed by some step of
/// `a_namespace_limited_acl_user_runs_a_whole_service`, or by the start-up check).
/// `+acl|whoami +acl|dryrun` let `build()` check every other permission up front (`ACL DRYRUN`);
/// `+client|id +client|unblock` (to cut a blocked read at shutdown), `+config|get` (the eviction
/// check) and `+xgroup|delconsumer` (leaving the group after a clean drain) are optional: without
/// them the service runs, Redis logs the denials. `+@stream` is a simpler superset of the stream
/// commands. A broadcast service also needs `&<namespace>:* +publish +subscribe`.
const SERVICE_RULES: &[&str] = &[
    "resetchannels",
    "-@all",
    "+xadd",
    "+xreadgroup",
    "+xack",
    "+xautoclaim",
    "+xclaim",
    "+xpending",
    "+xgroup|create",
    "+xinfo|groups",
    "+xinfo|stream",
    "+xrange",
    "+xdel",
    "+xlen",
    "+hincrby",
    "+hmget",
    "+hdel",
    "+evalsha",
    "+eval",
    "+ping",
    "+multi",
    "+exec",
    "+scan",
    "+del",
    "+acl|whoami",
    "+acl|dryrun",
    "+client|id",
    "+client|unblock",
    "+config|get",
    "+xgroup|delconsumer",
];

/// The rules that let `build()` check permissions (Redis 7+).
const CHECK_RULES: &[&str] = &["+acl|whoami", "+acl|dryrun"];

/// The optional rules: their absence never fails start-up.
const OPTIONAL_RULES: &[&str] = &[
    "+client|id",
    "+client|unblock",
    "+config|get",
    "+xgroup|delconsumer",
];

/// `ACL SETUSER <user> reset on >pw ~<ns>:* <SERVICE_RULES without `without`>`.
async fn service_user_without(
    admin: &mut MultiplexedConnection,
    user: &str,
    ns: &str,
    without: &[&str],
) {
    let pattern = format!("~{ns}:*");
    let mut rules = vec!["on", ">pw", pattern.as_str()];
    rules.extend(SERVICE_RULES.iter().filter(|r| !without.contains(r)));
    acl::set_user(admin, user, &rules).await;
}

async fn service_user(admin: &mut MultiplexedConnection, user: &str, ns: &str) {
    service_user_without(admin, user, ns, &[]).await;
}

/// A user limited to one namespace (`~ns:*`) and the rules above runs a whole service: start,
/// publish, handle (with a lease renewal), claim a dead consumer's entry, dead-letter, list,
/// replay, remove and purge dead letters, shut down; Redis denies it nothing.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_namespace_limited_acl_user_runs_a_whole_service() {
    init_tracing();
    let server = RedisServer::start();
    let mut admin = server.conn().await;
    let ns = namespace("acl-ok");
    let stream = stream_key(&ns, Note::NAME);
    service_user(&mut admin, "svc", &ns).await;
    acl::reset_log(&mut admin).await;
    // A consumer that died holding note 6: the service claims it and, since a crash charges
    // nothing to an event that did not cause it, handles it (as a suspect, alone).
    let stranded = serde_json::json!({
        "specversion": "1.0", "id": "stranded", "type": Note::NAME, "source": "/test",
        "data": {"n": 6, "fail": false, "sleep_ms": 0}
    })
    .to_string();
    let _: () = redis::cmd("XGROUP")
        .arg("CREATE")
        .arg(&stream)
        .arg(HANDLER)
        .arg("0")
        .arg("MKSTREAM")
        .query_async(&mut admin)
        .await
        .expect("XGROUP CREATE");
    let _: String = redis::cmd("XADD")
        .arg(&stream)
        .arg("*")
        .arg("envelope")
        .arg(&stranded)
        .query_async(&mut admin)
        .await
        .expect("XADD");
    let _: redis::Value = redis::cmd("XREADGROUP")
        .arg("GROUP")
        .arg(HANDLER)
        .arg("dead")
        .arg("STREAMS")
        .arg(&stream)
        .arg(">")
        .query_async(&mut admin)
        .await
        .expect("XREADGROUP");

    let url = format!("redis://svc:pw@127.0.0.1:{}", server.port());
    let notes = Notes::default();
    let bus = builder(&url, &ns, &notes).build().await.expect("build");
    let running = bus.start().await.expect("start");
    bus.publish(&note(1)).await.expect("publish");
    bus.publish(&Note {
        n: 2,
        fail: false,
        sleep_ms: 700,
    })
    .await
    .expect("publish");
    for n in [3, 4, 5] {
        bus.publish(&Note {
            n,
            fail: true,
            sleep_ms: 0,
        })
        .await
        .expect("publish");
    }
    wait_until(Duration::from_secs(15), "handled and dead-lettered", || {
        let bus = bus.clone();
        let notes = notes.clone();
        async move {
            notes.handled().len() == 3 && bus.dlq().list(10).await.expect("list").len() == 3
        }
    })
    .await;
    let letters = bus.dlq().list(10).await.expect("list");
    let letter = |n: u64| {
        letters
            .iter()
            .find(|l| l.envelope["data"]["n"] == n)
            .unwrap_or_else(|| panic!("no dead letter for note {n}: {letters:#?}"))
    };
    assert!(
        letters.iter().all(|l| l.envelope["data"]["n"] != 6),
        "the claimed note was handled, not dead-lettered: {letters:#?}"
    );
    notes.fixed.store(true, Ordering::SeqCst);
    bus.dlq().replay(&letter(3).id).await.expect("replay");
    bus.dlq().remove(&letter(4).id).await.expect("remove");
    wait_until(
        Duration::from_secs(10),
        "the replayed notes handled",
        || {
            let notes = notes.clone();
            async move { notes.handled().len() == 4 }
        },
    )
    .await;
    assert_eq!(bus.dlq().purge().await.expect("purge"), 1);
    let health = running.health();
    running.shutdown().await.expect("shutdown");

    let denied = acl::log(&mut admin).await;
    assert!(denied.is_empty(), "nothing was denied: {denied:#?}");
    assert_eq!(acl::error_count(&mut admin, "NOPERM").await, 0);
    assert!(health.is_healthy(), "{health:?}");
    assert_eq!(health.readers[0].claimed, 1, "{health:?}");
    let mut handled = notes.handled();
    handled.sort_unstable();
    assert_eq!(handled, [1, 2, 3, 6]);
    assert_eq!(pending_count(&mut admin, &stream, HANDLER).await, 0);
    for command in ["xclaim", "xautoclaim", "xpending", "evalsha", "scan", "del"] {
        assert!(
            acl::command_calls(&mut admin, command).await > 0,
            "the run used {command}"
        );
    }
}

/// The same user pointed at another namespace: `build()` fails at once with
/// [`Error::Permission`], naming the denied keys and the minimal ACL, before running anything
/// (the start-up check only dry-runs commands: Redis saw no denied command).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_service_outside_its_acl_namespace_fails_at_build() {
    init_tracing();
    let server = RedisServer::start();
    let mut admin = server.conn().await;
    let allowed = namespace("acl-mine");
    let other = namespace("acl-theirs");
    service_user(&mut admin, "svc", &allowed).await;
    let url = format!("redis://svc:pw@127.0.0.1:{}", server.port());
    let started = Instant::now();
    let err = builder(&url, &other, &Notes::default())
        .build()
        .await
        .expect_err("build is refused");
    let took = started.elapsed();
    let text = err.to_string();
    println!("build: {text} (after {took:?})");
    assert!(matches!(err, Error::Permission { .. }), "{err:?}");
    assert!(!err.is_transient(), "a permission error is not transient");
    for needle in [
        "permission denied by the Redis ACL",
        "user `svc`",
        &format!("XGROUP CREATE `{other}:{{sec.note}}`"),
        &format!("XADD `{other}:{{sec.note}}:dlq`"),
        &format!("ACL SETUSER svc on >PASSWORD ~{other}:* "),
    ] {
        assert!(text.contains(needle), "the message has {needle:?}: {text}");
    }
    assert!(took < Duration::from_secs(2), "fast: {took:?}");
    assert_eq!(
        acl::error_count(&mut admin, "NOPERM").await,
        0,
        "nothing run for real"
    );
    assert_eq!(acl::command_calls(&mut admin, "xgroup|create").await, 0);
}

/// Where the start-up check cannot run (Redis 6, a managed Redis, or a user without
/// `+acl|whoami +acl|dryrun`), the same user pointed at another namespace still fails fast:
/// `start()` and `publish` return [`Error::Permission`], which says what to grant; nothing is
/// retried.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_service_outside_its_acl_namespace_fails_fast_with_a_permission_error() {
    init_tracing();
    let server = RedisServer::start();
    let mut admin = server.conn().await;
    let allowed = namespace("acl-mine");
    let other = namespace("acl-theirs");
    service_user_without(&mut admin, "svc", &allowed, CHECK_RULES).await;
    let url = format!("redis://svc:pw@127.0.0.1:{}", server.port());
    let notes = Notes::default();
    let bus = builder(&url, &other, &notes).build().await.expect("build");
    let after_build = acl::error_count(&mut admin, "NOPERM").await;
    assert_eq!(
        after_build, 1,
        "only ACL WHOAMI was denied (the check was skipped)"
    );

    let started = Instant::now();
    let err = bus.start().await.expect_err("start is denied");
    let start_took = started.elapsed();
    let text = err.to_string();
    println!("start: {text} (after {start_took:?})");
    assert!(matches!(err, Error::Permission { .. }), "{err:?}");
    assert!(
        text.contains("permission denied by the Redis ACL") && text.contains("~<namespace>:*"),
        "{text}"
    );
    assert!(!err.is_transient(), "a permission error is not transient");
    let after_start = acl::error_count(&mut admin, "NOPERM").await;

    let started = Instant::now();
    let err = bus.publish(&note(1)).await.expect_err("publish is denied");
    let publish_took = started.elapsed();
    println!("publish: {err} (after {publish_took:?})");
    assert!(matches!(err, Error::Permission { .. }), "{err:?}");
    assert!(
        err.to_string().contains(&format!("key `{other}:{{")),
        "the message names the denied key: {err}"
    );
    let after_publish = acl::error_count(&mut admin, "NOPERM").await;

    assert!(start_took < Duration::from_secs(2), "fast: {start_took:?}");
    assert!(
        publish_took < Duration::from_secs(2),
        "fast: {publish_took:?}"
    );
    assert_eq!(after_start - after_build, 1, "start tried once");
    assert_eq!(after_publish - after_start, 1, "publish tried once");
}

/// The minimal ACL line in a start-up error, with the password filled in, as rules for
/// `ACL SETUSER <user> reset ...`.
fn acl_rules_in(text: &str, user: &str) -> Vec<String> {
    let prefix = format!("ACL SETUSER {user} ");
    let line = &text[text
        .find(&prefix)
        .unwrap_or_else(|| panic!("no ACL line in {text}"))
        + prefix.len()..];
    let line = line.split(')').next().unwrap_or(line);
    line.split_whitespace()
        .map(|r| r.replace(">PASSWORD", ">pw"))
        .collect()
}

/// A user missing a required permission (`+xautoclaim`, `+evalsha`, or both plus
/// `+xinfo|stream`) cannot build a bus: the error names every missing command with its rule,
/// the handler and the key, and gives the minimal ACL, which then works.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_missing_permission_is_a_startup_error_naming_it() {
    init_tracing();
    let server = RedisServer::start();
    let mut admin = server.conn().await;
    let ns = namespace("acl-missing");
    let stream = stream_key(&ns, Note::NAME);
    let url = format!("redis://svc:pw@127.0.0.1:{}", server.port());
    let cases: &[(&[&str], &[&str])] = &[
        (&["+xautoclaim"], &["XAUTOCLAIM", "`+xautoclaim`"]),
        (&["+evalsha"], &["EVALSHA", "`+evalsha`"]),
        (
            &["+xautoclaim", "+evalsha", "+xinfo|stream"],
            &[
                "XAUTOCLAIM",
                "EVALSHA",
                "XINFO STREAM",
                "`+xinfo|stream`",
                "lacks 3 permissions",
            ],
        ),
    ];
    let mut last_text = String::new();
    for (without, needles) in cases {
        service_user_without(&mut admin, "svc", &ns, without).await;
        let started = Instant::now();
        let err = builder(&url, &ns, &Notes::default())
            .build()
            .await
            .expect_err("a missing permission fails the build");
        let took = started.elapsed();
        let text = err.to_string();
        println!("without {without:?} ({took:?}): {text}");
        assert!(matches!(err, Error::Permission { .. }), "{err:?}");
        assert!(took < Duration::from_secs(2), "fast: {took:?}");
        for needle in *needles {
            assert!(text.contains(needle), "the message has {needle:?}: {text}");
        }
        assert!(
            text.contains(&format!("`{stream}`")) && text.contains(&format!("handler `{HANDLER}`")),
            "the key and the handler: {text}"
        );
        for granted in ["XADD", "XACK", "XCLAIM"] {
            assert!(
                !text.contains(&format!("{granted} `")),
                "granted commands are not listed ({granted}): {text}"
            );
        }
        last_text = text;
    }
    // The ACL the error suggests runs the service.
    let rules = acl_rules_in(&last_text, "svc");
    println!("suggested: ACL SETUSER svc {}", rules.join(" "));
    let rules: Vec<&str> = rules.iter().map(String::as_str).collect();
    acl::set_user(&mut admin, "svc", &rules).await;
    acl::reset_log(&mut admin).await;
    let notes = Notes::default();
    let bus = builder(&url, &ns, &notes)
        .build()
        .await
        .expect("the minimal ACL builds");
    let running = bus.start().await.expect("start");
    bus.publish(&note(1)).await.expect("publish");
    wait_until(Duration::from_secs(10), "handled", || {
        let notes = notes.clone();
        async move { notes.handled() == [1] }
    })
    .await;
    running.shutdown().await.expect("shutdown");
    let denied = acl::log(&mut admin).await;
    assert!(denied.is_empty(), "nothing was denied: {denied:#?}");
}

/// Optional permissions (`CLIENT ID`/`UNBLOCK`, `CONFIG GET`, `XGROUP DELCONSUMER`) never fail
/// start-up; without `+acl|whoami +acl|dryrun` the check is skipped with a log line that says how
/// to enable it, and the bus builds even when another permission is missing.
#[tokio::test(flavor = "current_thread")]
async fn optional_permissions_and_an_unavailable_check_never_fail_startup() {
    let server = RedisServer::start();
    let mut admin = server.conn().await;
    let ns = namespace("acl-optional");
    let url = format!("redis://svc:pw@127.0.0.1:{}", server.port());

    let (subscriber, captured) = logs::capture(tracing::Level::INFO);
    let guard = tracing::subscriber::set_default(subscriber);
    service_user_without(&mut admin, "svc", &ns, OPTIONAL_RULES).await;
    let notes = Notes::default();
    let bus = builder(&url, &ns, &notes)
        .build()
        .await
        .expect("builds without optional rules");
    let running = bus.start().await.expect("start");
    bus.publish(&note(1)).await.expect("publish");
    wait_until(Duration::from_secs(10), "handled", || {
        let notes = notes.clone();
        async move { notes.handled() == [1] }
    })
    .await;
    running.shutdown().await.expect("shutdown");
    let optional = captured.find("INFO", "optional Redis permission missing");
    assert_eq!(optional.len(), OPTIONAL_RULES.len(), "{}", captured.text());
    for rule in OPTIONAL_RULES {
        assert!(
            optional.iter().any(|e| e["fields"]["message"]
                .as_str()
                .is_some_and(|m| m.contains(rule))),
            "{rule} is named: {}",
            captured.text()
        );
    }

    let mut without: Vec<&str> = CHECK_RULES.to_vec();
    without.push("+xautoclaim");
    service_user_without(&mut admin, "svc", &ns, &without).await;
    builder(&url, &ns, &Notes::default())
        .build()
        .await
        .expect("the check is skipped: builds");
    drop(guard);
    let skipped = captured.find("INFO", "permission check skipped");
    assert_eq!(skipped.len(), 1, "{}", captured.text());
    assert!(
        skipped[0]["fields"]["message"]
            .as_str()
            .is_some_and(|m| m.contains("+acl|whoami +acl|dryrun")),
        "says how to enable it: {}",
        skipped[0]
    );
}

/// A publish-only bus (`.handlers([])`) needs only to publish: a user with `+xadd +ping` (and the
/// check's rules) builds one and publishes, with a warning that publishing the linked broadcast
/// event would be denied; without `+xadd` it can publish nothing, and the build fails naming it.
#[tokio::test(flavor = "current_thread")]
async fn a_publish_only_bus_is_checked_for_publishing_only() {
    let server = RedisServer::start();
    let mut admin = server.conn().await;
    let ns = namespace("acl-publisher");
    let pattern = format!("~{ns}:*");
    let url = format!("redis://pub:pw@127.0.0.1:{}", server.port());
    let publisher = || {
        let mut b = Bus::builder();
        b.redis_url(&url)
            .namespace(&ns)
            .handlers(Vec::<String>::new());
        b
    };
    let base = [
        "on",
        ">pw",
        &pattern,
        "resetchannels",
        "-@all",
        "+ping",
        "+acl|whoami",
        "+acl|dryrun",
    ];
    let mut rules = base.to_vec();
    rules.push("+xadd");
    acl::set_user(&mut admin, "pub", &rules).await;
    let (subscriber, captured) = logs::capture(tracing::Level::WARN);
    let guard = tracing::subscriber::set_default(subscriber);
    let bus = publisher().build().await.expect("a publisher builds");
    drop(guard);
    bus.publish(&note(1)).await.expect("publish");
    let warnings = captured.find("WARN", "publishing may fail");
    assert_eq!(warnings.len(), 1, "{}", captured.text());
    let message = warnings[0]["fields"]["message"].as_str().unwrap_or("");
    assert!(
        message.contains(&format!("PUBLISH `{ns}:sec.shout`")),
        "{message}"
    );

    acl::set_user(&mut admin, "pub", &base).await;
    let err = publisher().build().await.expect_err("no +xadd");
    println!("publisher without +xadd: {err}");
    assert!(matches!(err, Error::Permission { .. }), "{err:?}");
    let text = err.to_string();
    assert!(
        text.contains(&format!("XADD `{ns}:{{sec.note}}`")) && text.contains("publishing"),
        "{text}"
    );
}

/// A broadcast handler needs its channel (`&<namespace>:*`) and `+subscribe +publish`: without
/// them the build fails naming the channel; with them it starts.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_broadcast_handler_needs_its_channel() {
    init_tracing();
    let server = RedisServer::start();
    let mut admin = server.conn().await;
    let ns = namespace("acl-broadcast");
    let url = format!("redis://svc:pw@127.0.0.1:{}", server.port());
    let broadcast = || {
        let mut b = Bus::builder();
        b.redis_url(&url).namespace(&ns).handlers(["sec.shouts"]);
        b
    };
    service_user(&mut admin, "svc", &ns).await;
    let err = broadcast().build().await.expect_err("no channel");
    let text = err.to_string();
    println!("broadcast without the channel: {text}");
    assert!(matches!(err, Error::Permission { .. }), "{err:?}");
    for needle in [
        format!("SUBSCRIBE `{ns}:sec.shout` (`+subscribe`"),
        format!("PUBLISH `{ns}:sec.shout` (`+publish`"),
        "handler `sec.shouts`".to_owned(),
    ] {
        assert!(text.contains(&needle), "{needle:?}: {text}");
    }
    assert!(
        !text.contains("XREADGROUP"),
        "no stream reader for a broadcast handler: {text}"
    );
    let channels = format!("&{ns}:*");
    acl::add_rules(&mut admin, "svc", &[&channels, "+subscribe", "+publish"]).await;
    let bus = broadcast().build().await.expect("builds with the channel");
    let running = bus.start().await.expect("start");
    bus.publish(&Shout { n: 1 }).await.expect("publish");
    running.shutdown().await.expect("shutdown");
}

/// Permissions revoked under a running service: the reader reports it in `health()` and backs
/// off (no retry storm) instead of spinning.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn revoked_permissions_are_reported_and_backed_off() {
    init_tracing();
    let server = RedisServer::start();
    let mut admin = server.conn().await;
    let ns = namespace("acl-revoked");
    service_user(&mut admin, "svc", &ns).await;
    let url = format!("redis://svc:pw@127.0.0.1:{}", server.port());
    let notes = Notes::default();
    let bus = builder(&url, &ns, &notes).build().await.expect("build");
    let running = bus.start().await.expect("start");
    let before = acl::error_count(&mut admin, "NOPERM").await;
    acl::add_rules(&mut admin, "svc", &["resetkeys"]).await;
    wait_until(Duration::from_secs(5), "health reports the denial", || {
        let health = running.health();
        async move {
            health.readers[0]
                .last_error
                .as_deref()
                .is_some_and(|e| e.to_ascii_lowercase().contains("noperm"))
        }
    })
    .await;
    let t0 = Instant::now();
    tokio::time::sleep(Duration::from_secs(3)).await; // ok: counting denied commands over a 3 s window
    let denied = acl::error_count(&mut admin, "NOPERM").await - before;
    let health = running.health();
    println!(
        "revoked: {denied} NOPERM replies in {:?}; {health:?}",
        t0.elapsed()
    );
    assert!(!health.is_healthy());
    assert!(denied <= 40, "backed off, not a storm: {denied} denials");

    acl::add_rules(&mut admin, "svc", &[&format!("~{ns}:*")]).await;
    bus.publish(&note(1)).await.expect("publish");
    wait_until(Duration::from_secs(10), "handled after the grant", || {
        let notes = notes.clone();
        async move { notes.handled() == [1] }
    })
    .await;
    wait_until(Duration::from_secs(5), "healthy again", || {
        let healthy = running.health().is_healthy();
        async move { healthy }
    })
    .await;
    running.shutdown().await.expect("shutdown");
}

// ---------------------------------------------------------------------------------------------
// Scenario 15: TLS.

/// The bus connects with `rediss://` and the test CA to a TLS-only server, and handles an event
/// end to end.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_bus_runs_over_tls_with_the_given_ca() {
    init_tracing();
    let files = TlsFiles::generate();
    let server = TlsRedisServer::start(&files, false);
    let ns = namespace("tls");
    let notes = Notes::default();
    let bus = builder(&server.url(), &ns, &notes)
        .tls_ca_file(files.ca_cert())
        .build()
        .await
        .expect("build over TLS");
    let running = bus.start().await.expect("start");
    bus.publish(&note(1)).await.expect("publish");
    wait_until(Duration::from_secs(10), "handled over TLS", || {
        let notes = notes.clone();
        async move { notes.handled() == [1] }
    })
    .await;
    let health = running.health();
    running.shutdown().await.expect("shutdown");
    assert!(health.is_healthy(), "{health:?}");
    let mut admin = server.conn().await;
    assert_eq!(
        pending_count(&mut admin, &stream_key(&ns, Note::NAME), HANDLER).await,
        0
    );
}

/// A CA that did not sign the server's certificate is a clear start-up error, at once.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_wrong_ca_is_a_clear_startup_error() {
    init_tracing();
    let files = TlsFiles::generate();
    let wrong = TlsFiles::generate();
    let server = TlsRedisServer::start(&files, false);
    let ns = namespace("tls-wrong-ca");
    let started = Instant::now();
    let err = builder(&server.url(), &ns, &Notes::default())
        .tls_ca_file(wrong.ca_cert())
        .build()
        .await
        .expect_err("the wrong CA is refused");
    let took = started.elapsed();
    let chain = error_chain(&err);
    println!("wrong CA ({took:?}): {chain}");
    assert!(matches!(err, Error::Unreachable { .. }), "{err:?}");
    let text = err.to_string();
    assert!(
        text.contains(&server.url())
            && text.contains("cannot reach Redis")
            && text.contains("EVENTBUS_TLS_CA_FILE"),
        "the message points at the TLS settings: {text}"
    );
    assert!(
        chain.to_ascii_lowercase().contains("certificate"),
        "the cause names the certificate problem: {chain}"
    );
    assert!(took < Duration::from_secs(3), "fails at once: {took:?}");

    // No CA at all: the system roots do not know the test CA either.
    let err = builder(&server.url(), &ns, &Notes::default())
        .build()
        .await
        .expect_err("untrusted without a CA file");
    println!("no CA: {}", error_chain(&err));
    assert!(matches!(err, Error::Unreachable { .. }), "{err:?}");

    // A CA file that does not exist is a configuration error naming the setting.
    let err = builder(&server.url(), &ns, &Notes::default())
        .tls_ca_file(files.ca_cert().with_extension("missing"))
        .build()
        .await
        .expect_err("missing file");
    println!("missing CA file: {err}");
    assert!(
        matches!(err, Error::Config { .. }) && err.to_string().contains("EVENTBUS_TLS_CA_FILE"),
        "{err:?}"
    );
}

/// A server that requires client certificates (mutual TLS): the bus presents one with
/// `tls_client_cert`, and without it the connection is refused at start-up.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn mutual_tls_with_a_client_certificate() {
    init_tracing();
    let files = TlsFiles::generate();
    let server = TlsRedisServer::start(&files, true);
    let ns = namespace("mtls");
    let notes = Notes::default();
    let err = builder(&server.url(), &ns, &notes)
        .tls_ca_file(files.ca_cert())
        .build()
        .await
        .expect_err("no client certificate");
    println!("mTLS without a client certificate: {}", error_chain(&err));
    assert!(matches!(err, Error::Unreachable { .. }), "{err:?}");

    let bus = builder(&server.url(), &ns, &notes)
        .tls_ca_file(files.ca_cert())
        .tls_client_cert(files.client_cert(), files.client_key())
        .build()
        .await
        .expect("build with a client certificate");
    let running = bus.start().await.expect("start");
    bus.publish(&note(7)).await.expect("publish");
    wait_until(Duration::from_secs(10), "handled over mutual TLS", || {
        let notes = notes.clone();
        async move { notes.handled() == [7] }
    })
    .await;
    running.shutdown().await.expect("shutdown");
}

/// The TLS settings from the environment (`EVENTBUS_TLS_CA_FILE`, `EVENTBUS_TLS_CERT_FILE`,
/// `EVENTBUS_TLS_KEY_FILE`), in the consumer process.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn tls_settings_from_the_environment() {
    init_tracing();
    let files = TlsFiles::generate();
    let server = TlsRedisServer::start(&files, true);
    let record = RedisServer::start();
    let ns = namespace("tls-env");
    let (url, record_url) = (server.url(), record.url());
    let ca = files.ca_cert().display().to_string();
    let cert = files.client_cert().display().to_string();
    let key = files.client_key().display().to_string();
    let mut child = ChildProcess::spawn(
        env!("CARGO_BIN_EXE_consumer"),
        &[
            ("REDIS_URL", url.as_str()),
            ("RECORD_URL", record_url.as_str()),
            ("EVENTBUS_NAMESPACE", ns.as_str()),
            ("EVENTBUS_HANDLERS", "consumer.job"),
            ("EVENTBUS_BLOCK_TIME", "200ms"),
            ("EVENTBUS_TLS_CA_FILE", ca.as_str()),
            ("EVENTBUS_TLS_CERT_FILE", cert.as_str()),
            ("EVENTBUS_TLS_KEY_FILE", key.as_str()),
        ],
    );
    child.wait_for_line("ready", Duration::from_secs(20));
    // Publish the consumer's job over TLS with a raw client.
    let envelope = serde_json::json!({
        "specversion": "1.0", "id": "tls-env-1", "type": "test.job", "source": "/test",
        "data": {"n": 11, "crash": false, "sleep_ms": 0}
    })
    .to_string();
    let mut conn = server.conn().await;
    let _: String = redis::cmd("XADD")
        .arg(stream_key(&ns, "test.job"))
        .arg("*")
        .arg("envelope")
        .arg(envelope)
        .query_async(&mut conn)
        .await
        .expect("XADD over TLS");
    let mut record_conn = record.conn().await;
    let key = format!("{ns}:handled");
    wait_until(
        Duration::from_secs(10),
        "the consumer handled the job",
        || {
            let mut record_conn = record_conn.clone();
            let key = key.clone();
            async move {
                let handled: Vec<String> = redis::cmd("LRANGE")
                    .arg(&key)
                    .arg(0)
                    .arg(-1)
                    .query_async(&mut record_conn)
                    .await
                    .expect("LRANGE");
                handled.iter().any(|h| h.starts_with("11:"))
            }
        },
    )
    .await;
    let _: () = redis::cmd("PING")
        .query_async(&mut record_conn)
        .await
        .expect("PING");
    child.signal("TERM");
    child.wait_for_line("stopped", Duration::from_secs(10));
}

fn error_chain(err: &dyn std::error::Error) -> String {
    let mut text = err.to_string();
    let mut source = err.source();
    while let Some(s) = source {
        text.push_str(": ");
        text.push_str(&s.to_string());
        source = s.source();
    }
    text
}
