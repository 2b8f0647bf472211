//! The conformance suite lives in `tests/conformance.rs`: every behaviour runs against the
//! in-memory transport (`eventbus::testing::TestBus`) and a real redis-server.
