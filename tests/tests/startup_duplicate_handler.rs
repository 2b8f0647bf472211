//! Two handlers registered under one name: `build()` fails at start-up naming both definitions.
//! (A link-time clash affects every bus of a binary, hence this file of its own.)

use eventbus::Error;
use eventbus::prelude::*;
use eventbus_tests::{RedisServer, init_tracing, namespace};

#[derive(Debug, Clone, Serialize, Deserialize, DomainEvent)]
#[event(name = "dup_handler.ping")]
struct Ping {
    n: u64,
}

mod billing {
    use super::Ping;
    use eventbus::prelude::*;

    pub(crate) const LINE: u32 = line!() + 1;
    #[event_handler(name = "dup_handler.same_name")]
    async fn on_ping(_ev: Ping) -> anyhow::Result<()> {
        Ok(())
    }
}

mod shipping {
    use super::Ping;
    use eventbus::prelude::*;

    pub(crate) const LINE: u32 = line!() + 1;
    #[event_handler(name = "dup_handler.same_name")]
    async fn also_on_ping(_ev: Ping) -> anyhow::Result<()> {
        Ok(())
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn two_handlers_with_one_name_fail_the_build_naming_both() {
    init_tracing();
    let server = RedisServer::start();
    let err = Bus::builder()
        .redis_url(server.url())
        .namespace(namespace("dup-handler"))
        .build()
        .await
        .expect_err("a duplicate handler name is a start-up error");
    let msg = err.to_string();
    assert!(matches!(err, Error::DuplicateHandler { .. }), "{err:?}");
    assert!(msg.contains("`dup_handler.same_name`"), "{msg}");
    assert!(
        msg.contains("#[event_handler(name = "),
        "says how to fix it: {msg}"
    );
    for line in [billing::LINE, shipping::LINE] {
        let at = format!("{}:{line}", file!());
        assert!(msg.contains(&at), "names the definition at {at}: {msg}");
    }
}
