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
pub(crate) use self::redis::conn::*;

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

    /// The Redis backend, if this is one. Transitional: callers move behind the seam's own
    /// methods.
    pub(crate) fn redis(&self) -> Option<&self::redis::Redis> {
        match self {
            Transport::Redis(r) => Some(r),
            #[cfg(feature = "testing")]
            Transport::Memory(_) => None,
        }
    }
}
