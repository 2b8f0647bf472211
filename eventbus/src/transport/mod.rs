//! The transport seam: neutral types every backend speaks, and [`Transport`], the enum over the
//! backends, which are this module's children (`redis/`, and `memory/` behind the `testing`
//! feature). Backends import only L0/L1 and this seam: never the handler API, pipeline or runtime.
//!
//! Enum dispatch, as tokio's `scheduler::Handle`: no boxing on the hot path, no type parameter
//! on `Bus`.

pub(crate) mod dead_letters;
pub(crate) mod keys;
#[cfg(feature = "testing")]
pub(crate) mod memory;
pub(crate) mod publish;
pub(crate) mod redis;
pub(crate) mod settle;
pub(crate) mod source;
pub(crate) mod stream;
pub(crate) mod subscribe;

pub(crate) use self::keys::*;

use crate::event::Delivery;

/// What the bus runs, as the transport needs to know it: one route per selected handler.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct Route {
    /// The handler's name: its consumer group.
    pub(crate) handler: &'static str,
    /// The event it handles.
    pub(crate) event: &'static str,
    /// How the event is delivered.
    pub(crate) delivery: Delivery,
}

/// The backend under a bus.
#[derive(Clone, Debug)]
#[allow(
    clippy::large_enum_variant,
    reason = "one per bus (and a clone per handler); the small variant exists only in tests"
)]
pub(crate) enum Transport {
    /// Redis (a single primary, optionally behind TLS).
    Redis(self::redis::Redis),
    /// In process, with Redis Streams semantics (feature `testing`).
    #[cfg(feature = "testing")]
    Memory(self::memory::Memory),
}

impl Transport {
    /// Connects the backend `config` names (Redis at `redis_url`) and checks it can serve
    /// `routes`.
    pub(crate) async fn connect(
        config: std::sync::Arc<crate::config::Config>,
        routes: &[Route],
    ) -> crate::error::Result<Transport> {
        Ok(Transport::Redis(
            self::redis::Redis::connect(config, routes).await?,
        ))
    }

    /// The counters of the transport's shared connection, for [`Health`](crate::Health).
    pub(crate) fn conn_stats(&self) -> std::sync::Arc<crate::telemetry::ConnStats> {
        match self {
            Transport::Redis(r) => r.conn.stats().clone(),
            #[cfg(feature = "testing")]
            Transport::Memory(m) => m.conn_stats().clone(),
        }
    }
}
