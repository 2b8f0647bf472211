#![deny(warnings)]
#![no_implicit_prelude]

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
struct Vec;
#[allow(dead_code)]
struct DomainEvent;
#[allow(dead_code)]
struct EventRegistration;
#[allow(dead_code)]
mod eventbus {}
#[allow(dead_code)]
mod inventory {}
#[allow(dead_code)]
mod core {}

mod shadowed {
    // A glob import whose names would shadow the prelude ones.
    #[allow(unused_imports)]
    use self::types::*;

    #[allow(dead_code)]
    mod types {
        pub type Result<T> = ::std::result::Result<T, ()>;
        pub struct Send;
        pub struct Sync;
        pub struct Sized;
    }

    #[derive(::serde::Serialize, ::serde::Deserialize, ::eventbus::DomainEvent)]
    #[event(name = "hygiene.shadowed")]
    pub struct Shadowed {
        pub id: u64,
    }
}

#[derive(::serde::Serialize, ::serde::Deserialize, ::eventbus::DomainEvent)]
pub struct Tricky {
    pub id: u64,
}

fn main() {
    ::std::assert_eq!(<Tricky as ::eventbus::DomainEvent>::NAME, "tricky");
    ::std::assert_eq!(
        <shadowed::Shadowed as ::eventbus::DomainEvent>::NAME,
        "hygiene.shadowed"
    );
}
