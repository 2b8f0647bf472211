//! Test support for eventbus: a real `redis-server` per test, and waiting with deadlines.
//!
//! [`RedisServer`] starts its own `redis-server` on a free loopback port in a fresh temporary
//! directory and kills it on drop. Tests never touch a Redis that happens to be running.
//!
//! One file per concept; the names tests use are re-exported here:
//!
//! - `server.rs`: [`RedisServer`], [`Persistence`];
//! - `process.rs`: [`ChildProcess`] (the `consumer` binary), [`signal`];
//! - `wait.rs`: [`wait_until`];
//! - `streams.rs`: [`namespace`], [`stream_key`], [`dlq_key`], [`pending_count`],
//!   [`last_delivered_id`], [`stream_ids`];
//! - [`logs`]: [`init_tracing`], and capturing log events to assert on;
//! - [`chaos`] (the "nothing lost" checker and its load), [`proxy`], [`tls`], [`acl`].

pub mod acl;
pub mod chaos;
pub mod logs;
mod process;
pub mod proxy;
mod server;
mod streams;
pub mod tls;
mod wait;

pub use logs::init_tracing;
pub use process::{ChildProcess, signal};
pub use server::{Persistence, RedisServer};
pub use streams::{dlq_key, last_delivered_id, namespace, pending_count, stream_ids, stream_key};
pub use wait::wait_until;
