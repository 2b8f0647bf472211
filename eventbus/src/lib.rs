//! # eventbus
//!
//! A typed event framework for Rust services over Redis. Write three things:
//! `#[derive(DomainEvent)]` on event types, `#[event_handler]` on async functions, and
//! `eventbus::run()` in `main`. Every handler is found at start-up, gets its own consumer group on
//! the event's Redis stream, and is retried with backoff, dead-lettered, recovered after crashes,
//! traced, and drained on shutdown, all the same way.
//!
//! ```no_run
//! use eventbus as bus;
//! use eventbus::prelude::*;
//!
//! #[derive(Debug, Clone, Serialize, Deserialize, DomainEvent)]
//! #[event(name = "chat.created")]
//! pub struct ChatCreated { pub chat_id: u64, pub title: String }
//!
//! #[event_handler]
//! async fn notify_members(ev: ChatCreated, ctx: Context) -> anyhow::Result<()> {
//!     println!("chat {} created (event {}, attempt {})", ev.chat_id, ctx.event_id(), ctx.attempt());
//!     Ok(())
//! }
//!
//! #[tokio::main]
//! async fn main() -> eventbus::Result<()> {
//!     bus::run().await // REDIS_URL, EVENTBUS_NAMESPACE, ...; runs until SIGINT/SIGTERM
//! }
//! ```
//!
//! See the README for semantics, configuration and operations, and `docs/WIRE.md` for the wire
//! format.

#![cfg_attr(docsrs, feature(doc_cfg))]

extern crate self as eventbus;

// The layers (ARCHITECTURE.md; `tests/layers.rs` enforces them): a module imports only from
// its own layer or below.
// L0 vocabulary
mod error;
mod event;
mod retry;
mod state;
// L1 wire format, settings, telemetry
mod config;
mod envelope;
mod telemetry;
// L2 the transport seam and its backends
mod transport;
// L3 the handler API
mod context;
mod extract;
mod handler;
mod publish;
// L4 per-delivery logic
mod pipeline;
// L5 scheduling
mod runtime;
// L6 facades
mod bus;
mod dlq;
#[cfg(feature = "testing")]
#[cfg_attr(docsrs, doc(cfg(feature = "testing")))]
pub mod testing;

#[doc(hidden)]
pub mod __private {
    //! Not public API.
    pub use crate::private::*;
}
mod private;

pub use bus::{Bus, RunningBus, SHUTDOWN_MARGIN, run};
pub use config::{BusBuilder, Overflow};
pub use context::Context;
pub use dlq::{DeadLetter, DeadLetters};
pub use envelope::EventId;
pub use error::{Error, Result, TransportError, TransportErrorKind};
pub use event::{Delivery, DomainEvent};
pub use eventbus_derive::{DomainEvent, event_handler};
pub use extract::{FromContext, State, States};
pub use handler::IntoHandlerResult;
pub use telemetry::{ConnectionHealth, Health, ReaderHealth};

/// The names most programs need: `use eventbus::prelude::*;`.
pub mod prelude {
    pub use crate::{Bus, Context, DomainEvent, EventId, FromContext, State, event_handler};
    pub use serde::{Deserialize, Serialize};
}

#[cfg(doctest)]
#[doc = include_str!("../../README.md")]
struct ReadmeDoctests;
