//! Two event types registered under one event name: `build()` fails at start-up naming both
//! types. (A link-time clash affects every bus of a binary, hence this file of its own.)

use eventbus::Error;
use eventbus::prelude::*;
use eventbus_tests::{RedisServer, init_tracing, namespace};

mod orders {
    use eventbus::prelude::*;

    #[derive(Debug, Clone, Serialize, Deserialize, DomainEvent)]
    #[event(name = "dup_event.created")]
    pub(crate) struct Created {
        pub(crate) order_id: u64,
    }
}

mod users {
    use eventbus::prelude::*;

    #[derive(Debug, Clone, Serialize, Deserialize, DomainEvent)]
    #[event(name = "dup_event.created")]
    pub(crate) struct Created {
        pub(crate) user: String,
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn two_event_types_with_one_name_fail_the_build_naming_both() {
    init_tracing();
    assert_eq!(orders::Created::NAME, users::Created::NAME);
    let _ = (
        orders::Created { order_id: 1 }.order_id,
        users::Created {
            user: String::new(),
        }
        .user,
    );
    let server = RedisServer::start();
    let err = Bus::builder()
        .redis_url(server.url())
        .namespace(namespace("dup-event"))
        .handlers(Vec::<String>::new())
        .build()
        .await
        .expect_err("a duplicate event name is a start-up error, even for a publish-only bus");
    let msg = err.to_string();
    assert!(matches!(err, Error::DuplicateEvent { .. }), "{err:?}");
    assert!(msg.contains("`dup_event.created`"), "{msg}");
    for ty in [
        std::any::type_name::<orders::Created>(),
        std::any::type_name::<users::Created>(),
    ] {
        assert!(msg.contains(ty), "names the type {ty}: {msg}");
    }
    assert!(msg.contains("#[event(name = "), "says how to fix it: {msg}");
}
