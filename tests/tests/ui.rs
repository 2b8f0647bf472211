//! Compile-time diagnostics of `#[derive(DomainEvent)]` and `#[event_handler]`.
//!
//! The `.stderr` files are blessed (`TRYBUILD=overwrite`) on the one stable toolchain of this
//! project; compiler output changes between versions, so other toolchains skip the test.

#[rustversion::stable(1.95)]
#[test]
fn ui() {
    let t = trybuild::TestCases::new();
    t.compile_fail("ui/*/fail/*.rs");
    t.pass("ui/*/pass/*.rs");
}
