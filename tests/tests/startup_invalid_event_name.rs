//! An event name with glob characters (a `DomainEvent` implemented by hand, which the derive
//! would refuse): `build()` fails at start-up naming the event and its type, before any key is
//! touched. (A link-time registration affects every bus of a binary, hence this file of its own.)

use eventbus::Error;
use eventbus::prelude::*;
use eventbus_tests::{RedisServer, init_tracing, namespace};

#[derive(Debug, Clone, Serialize, Deserialize)]
struct Placed {
    order: u64,
}

impl DomainEvent for Placed {
    const NAME: &'static str = "orders.*";
    const VERSION: u32 = 1;
}

#[event_handler(name = "invalid_event.audit")]
async fn audit(ev: Placed) -> anyhow::Result<()> {
    let _ = ev.order;
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_event_name_with_glob_characters_fails_the_build_naming_the_type() {
    init_tracing();
    let server = RedisServer::start();
    let ns = namespace("invalid-event");
    for handlers in [vec!["invalid_event.audit".to_owned()], Vec::new()] {
        let err = Bus::builder()
            .redis_url(server.url())
            .namespace(&ns)
            .handlers(handlers.clone())
            .build()
            .await
            .expect_err("an event name with `*` is a start-up error");
        let msg = err.to_string();
        assert!(matches!(err, Error::Config { .. }), "{err:?}");
        assert!(msg.contains("orders.*"), "names the event: {msg}");
        assert!(msg.contains("'*'"), "names the character: {msg}");
        assert!(
            msg.contains(std::any::type_name::<Placed>()),
            "names the type: {msg}"
        );
        assert!(msg.contains("#[event(name = "), "says how to fix it: {msg}");
    }
    let mut conn = server.conn().await;
    let keys: Vec<String> = redis::cmd("KEYS")
        .arg("*")
        .query_async(&mut conn)
        .await
        .expect("KEYS");
    assert!(keys.is_empty(), "nothing was written: {keys:?}");
}
