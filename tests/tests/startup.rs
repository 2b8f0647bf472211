//! Start-up errors: each says what is wrong and what to do, before anything runs.
//!
//! Each failing build points at a live test Redis, so the error can only come from what the test
//! got wrong on purpose. Duplicate handler and event names are in their own test binaries
//! (`startup_duplicate_*.rs`), because link-time registrations affect every bus of a binary.

use std::time::Duration;

use eventbus::Error;
use eventbus::prelude::*;
use eventbus_tests::{ChildProcess, RedisServer, init_tracing, namespace, wait_until};

#[derive(Debug, Clone, Serialize, Deserialize, DomainEvent)]
#[event(name = "startup.user_signed_up")]
struct UserSignedUp {
    user: u64,
}

#[derive(Clone)]
struct Db {
    _url: String,
}

#[event_handler(name = "startup.store_user")]
async fn store_user(_ev: UserSignedUp, _db: State<Db>) -> anyhow::Result<()> {
    Ok(())
}

#[event_handler(name = "startup.welcome_mail")]
async fn welcome_mail(_ev: UserSignedUp) -> anyhow::Result<()> {
    Ok(())
}

fn builder(server: &RedisServer, test: &str) -> eventbus::BusBuilder {
    let mut b = Bus::builder();
    b.redis_url(server.url())
        .namespace(namespace(test))
        .connect_timeout(Duration::from_secs(2));
    b
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn unreachable_redis_names_the_url_without_its_password() {
    init_tracing();
    // A port on which nothing listens: a server we started and stopped.
    let mut server = RedisServer::start();
    let port = server.port();
    server.kill();
    let url = format!("redis://app:s3cr3t-pw@127.0.0.1:{port}/0");
    let err = Bus::builder()
        .redis_url(&url)
        .namespace(namespace("unreachable"))
        .handlers(Vec::<String>::new())
        .connect_timeout(Duration::from_secs(1))
        .build()
        .await
        .expect_err("nothing listens there");
    let msg = err.to_string();
    assert!(matches!(err, Error::Unreachable { .. }), "{err:?}");
    assert!(
        msg.contains(&format!("redis://app:***@127.0.0.1:{port}/0")),
        "names the redacted URL: {msg}"
    );
    assert!(msg.contains("start redis-server"), "says what to do: {msg}");
    assert!(msg.contains("REDIS_URL"), "{msg}");
    let debug = format!("{err:?} {:?}", std::error::Error::source(&err));
    assert!(
        !msg.contains("s3cr3t-pw") && !debug.contains("s3cr3t-pw"),
        "the password leaks: {msg} / {debug}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_handler_asking_for_state_that_was_not_given_fails_the_build() {
    init_tracing();
    let server = RedisServer::start();
    let err = builder(&server, "missing-state")
        .handlers(["startup.welcome_mail", "startup.store_user"])
        .build()
        .await
        .expect_err("State<Db> was not given");
    let msg = err.to_string();
    assert!(matches!(err, Error::MissingState { .. }), "{err:?}");
    assert!(
        msg.contains("`startup.store_user`"),
        "names the handler: {msg}"
    );
    assert!(
        msg.contains(std::any::type_name::<Db>()),
        "names the type: {msg}"
    );
    assert!(msg.contains(".state("), "says what to call: {msg}");

    // Given the state, the same bus builds; a bus without that handler never needed it.
    builder(&server, "missing-state")
        .handlers(["startup.welcome_mail", "startup.store_user"])
        .state(Db {
            _url: "postgres://".into(),
        })
        .build()
        .await
        .expect("builds with the state");
    builder(&server, "missing-state")
        .handlers(["startup.welcome_mail"])
        .build()
        .await
        .expect("no state needed");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_unknown_handler_name_fails_the_build_listing_the_known_ones() {
    init_tracing();
    let server = RedisServer::start();
    let err = builder(&server, "unknown-handler")
        .handlers(["startup.welcome_mail", "startup.welcome_mali"])
        .build()
        .await
        .expect_err("no such handler");
    let msg = err.to_string();
    assert!(matches!(err, Error::UnknownHandler { .. }), "{err:?}");
    assert!(
        msg.contains("`startup.welcome_mali`"),
        "names the unknown name: {msg}"
    );
    assert!(
        msg.contains("startup.welcome_mail") && msg.contains("startup.store_user"),
        "lists the known ones: {msg}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn invalid_configuration_values_fail_the_build_naming_the_setting() {
    init_tracing();
    let server = RedisServer::start();
    type Setup = fn(&mut eventbus::BusBuilder);
    let cases: [(&str, Setup, &[&str]); 17] = [
        (
            "namespace with a space",
            |b| {
                b.namespace("orders staging");
            },
            &["EVENTBUS_NAMESPACE", "orders staging", "whitespace"],
        ),
        (
            "namespace with a brace",
            |b| {
                b.namespace("a{b}");
            },
            &["EVENTBUS_NAMESPACE", "braces"],
        ),
        (
            "namespace with a backslash (a SCAN MATCH escape)",
            |b| {
                b.namespace(r"orders\staging");
            },
            &["EVENTBUS_NAMESPACE", r"'\\'", "glob characters"],
        ),
        (
            "namespace with a glob star",
            |b| {
                b.namespace("orders*");
            },
            &["EVENTBUS_NAMESPACE", "'*'", "glob characters"],
        ),
        (
            "service with a question mark",
            |b| {
                b.service("billing?");
            },
            &["EVENTBUS_SERVICE", "'?'"],
        ),
        (
            "consumer with a bracket",
            |b| {
                b.consumer("billing-[0]");
            },
            &["EVENTBUS_CONSUMER", "'['"],
        ),
        (
            "visibility timeout below the floor",
            |b| {
                b.visibility_timeout(Duration::from_micros(500));
            },
            &[
                "EVENTBUS_VISIBILITY_TIMEOUT",
                "500us",
                "at least 100ms",
                "\"30s\"",
            ],
        ),
        (
            "claim interval of a nanosecond",
            |b| {
                b.claim_interval(Duration::from_nanos(1));
            },
            &[
                "EVENTBUS_CLAIM_INTERVAL",
                "1ns",
                "at least 10ms",
                "busy loop",
            ],
        ),
        (
            "block time below the floor",
            |b| {
                b.block_time(Duration::from_millis(5));
            },
            &["EVENTBUS_BLOCK_TIME", "5ms", "at least 10ms"],
        ),
        (
            "broadcast queue smaller than one payload",
            |b| {
                b.max_payload(64 * 1024).broadcast_queue_bytes(32 * 1024);
            },
            &[
                "EVENTBUS_BROADCAST_QUEUE_BYTES",
                "32768",
                "EVENTBUS_MAX_PAYLOAD = 65536",
            ],
        ),
        (
            "empty consumer",
            |b| {
                b.consumer("");
            },
            &["EVENTBUS_CONSUMER"],
        ),
        (
            "zero visibility timeout",
            |b| {
                b.visibility_timeout(Duration::ZERO);
            },
            &["EVENTBUS_VISIBILITY_TIMEOUT", "longer than zero"],
        ),
        (
            "zero block time",
            |b| {
                b.block_time(Duration::ZERO);
            },
            &["EVENTBUS_BLOCK_TIME"],
        ),
        (
            "max backoff below backoff",
            |b| {
                b.backoff(Duration::from_secs(2))
                    .max_backoff(Duration::from_secs(1));
            },
            &["EVENTBUS_MAX_BACKOFF", "backoff"],
        ),
        (
            "zero batch size",
            |b| {
                b.batch_size(0);
            },
            &["EVENTBUS_BATCH_SIZE", "at least 1"],
        ),
        (
            "zero concurrency",
            |b| {
                b.concurrency(0);
            },
            &["EVENTBUS_CONCURRENCY", "at least 1"],
        ),
        (
            "not a redis URL",
            |b| {
                b.redis_url("http://127.0.0.1:6379");
            },
            &["REDIS_URL", "redis://"],
        ),
    ];
    for (what, setup, needles) in cases {
        let mut b = builder(&server, "config");
        b.handlers(["startup.welcome_mail"]);
        setup(&mut b);
        let err = b.build().await.expect_err(what);
        let msg = err.to_string();
        assert!(matches!(err, Error::Config { .. }), "{what}: {err:?}");
        for needle in needles {
            assert!(
                msg.contains(needle),
                "{what}: the message lacks {needle:?}: {msg}"
            );
        }
    }
    // The same builder without a bad value builds.
    builder(&server, "config")
        .handlers(["startup.welcome_mail"])
        .build()
        .await
        .expect("valid configuration");
}

/// `with_env` reads process-global variables: run it in a child process (the `consumer` binary
/// builds its bus with `with_env`) instead of mutating this test process's environment.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn unparsable_environment_variables_fail_at_start_up_naming_the_variable() {
    init_tracing();
    let server = RedisServer::start();
    let url = server.url();
    let ns = namespace("env");
    for (key, value, hint) in [
        ("EVENTBUS_VISIBILITY_TIMEOUT", "soon", "duration"),
        ("EVENTBUS_RETRIES", "-1", "whole number"),
        ("EVENTBUS_NAMESPACE", "bad ns", "whitespace"),
    ] {
        let mut env = vec![
            ("REDIS_URL", url.as_str()),
            ("EVENTBUS_HANDLERS", "consumer.job"),
        ];
        if key != "EVENTBUS_NAMESPACE" {
            env.push(("EVENTBUS_NAMESPACE", ns.as_str()));
        }
        env.push((key, value));
        let mut child = ChildProcess::spawn(env!("CARGO_BIN_EXE_consumer"), &env);
        let mut status = None;
        wait_until(
            Duration::from_secs(20),
            &format!("the consumer with {key}={value} exits"),
            || {
                if status.is_none() {
                    status = child.try_wait();
                }
                let exited = status.is_some();
                async move { exited }
            },
        )
        .await;
        let status = status.expect("exited");
        let stderr = child.stderr();
        assert!(
            !status.success(),
            "{key}={value}: the process must fail; stderr: {stderr}"
        );
        for needle in [key, value, hint] {
            assert!(
                stderr.contains(needle),
                "{key}={value}: stderr lacks {needle:?}: {stderr}"
            );
        }
        assert!(
            !child.drain_stdout().iter().any(|l| l.starts_with("ready")),
            "{key}={value}: it never started"
        );
    }
}
