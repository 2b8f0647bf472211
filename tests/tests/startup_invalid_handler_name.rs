//! A handler name with a glob character, registered without the macro (which would refuse it at
//! compile time): `build()` fails at start-up naming the handler and where it is defined. (A
//! link-time registration affects every bus of a binary, hence this file of its own.)

use eventbus::__private::{CallResult, HandlerOptions, HandlerRegistration, RawValue, inventory};
use eventbus::Error;
use eventbus::prelude::*;
use eventbus_tests::{RedisServer, init_tracing, namespace};

#[derive(Debug, Clone, Serialize, Deserialize, DomainEvent)]
#[event(name = "invalid_handler.placed")]
struct Placed {
    order: u64,
}

fn call(_data: &RawValue, _ctx: Context) -> CallResult {
    Ok(Box::pin(async { Ok(()) }))
}

fn check(_states: &eventbus::States) -> Result<(), Error> {
    Ok(())
}

inventory::submit! {
    HandlerRegistration::new::<Placed>(
        "orders\\audit",
        HandlerOptions::new(),
        call,
        check,
        file!(),
        line!(),
    )
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_handler_name_with_a_backslash_fails_the_build_naming_the_handler() {
    init_tracing();
    let _ = Placed { order: 1 }.order;
    let server = RedisServer::start();
    let err = Bus::builder()
        .redis_url(server.url())
        .namespace(namespace("invalid-handler"))
        .build()
        .await
        .expect_err("a handler name with `\\` is a start-up error");
    let msg = err.to_string();
    assert!(matches!(err, Error::Config { .. }), "{err:?}");
    // The value is quoted as a Rust string: the backslash shows escaped.
    assert!(
        msg.contains(r#""orders\\audit""#),
        "names the handler: {msg}"
    );
    assert!(msg.contains(r"'\\'"), "names the character: {msg}");
    assert!(
        msg.contains("startup_invalid_handler_name.rs"),
        "says where it is defined: {msg}"
    );
    assert!(
        msg.contains("#[event_handler(name = "),
        "says how to fix it: {msg}"
    );
}
