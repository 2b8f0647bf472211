#![deny(warnings)]

// Try to trip up the generated code: every name it could pick up from the caller's scope is
// something else here (serde's test_gen.rs does the same).
#[allow(dead_code)]
struct Result;
#[allow(dead_code)]
struct Ok;
#[allow(dead_code)]
struct Err;
#[allow(dead_code)]
struct Option;
#[allow(dead_code)]
struct Some;
#[allow(dead_code)]
struct None;
#[allow(dead_code)]
struct Box;
#[allow(dead_code)]
struct String;
#[allow(dead_code)]
struct Context;
#[allow(dead_code)]
struct RawValue;
#[allow(dead_code)]
struct HandlerRegistration;
#[allow(dead_code)]
fn decode() {}
#[allow(dead_code)]
fn extract() {}
#[allow(dead_code)]
fn boxed() {}
#[allow(dead_code)]
fn into_handler_result() {}
#[allow(dead_code)]
fn file() {}
#[allow(unused_macros)]
macro_rules! concat {
    () => {};
}
#[allow(unused_macros)]
macro_rules! module_path {
    () => {};
}
#[allow(unused_macros)]
macro_rules! line {
    () => {};
}
#[allow(dead_code)]
mod eventbus {}
#[allow(dead_code)]
mod inventory {}
#[allow(dead_code)]
mod std {}

#[derive(::serde::Serialize, ::serde::Deserialize, ::eventbus::DomainEvent)]
pub struct ChatCreated {
    pub chat_id: u64,
}

#[::eventbus::event_handler]
async fn plain(__event: ChatCreated) -> ::anyhow::Result<()> {
    let _ = __event.chat_id;
    ::core::result::Result::Ok(())
}

#[::eventbus::event_handler(retries = 2, backoff = "10ms")]
async fn with_context(
    ev: ChatCreated,
    __ctx: ::eventbus::Context,
    __arg1: ::eventbus::Context,
) -> ::core::result::Result<(), ::std::string::String> {
    let _ = (ev, __ctx, __arg1);
    ::core::result::Result::Ok(())
}

mod glob {
    // A glob import whose names would shadow prelude and eventbus ones.
    #[allow(unused_imports)]
    use self::shadows::*;

    #[allow(dead_code)]
    mod shadows {
        pub type Result<T> = ::core::result::Result<T, ()>;
        pub struct Context;
        pub struct State;
        pub struct Ok;
    }

    #[::eventbus::event_handler]
    async fn shadowed(ev: super::ChatCreated, ctx: ::eventbus::Context) -> ::anyhow::Result<()> {
        let _ = (ev, ctx);
        ::core::result::Result::Ok(())
    }
}

fn main() {}
