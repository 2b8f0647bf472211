//! Scheduling: one reader per durable handler (prefetch window, concurrency, leases, claims,
//! acks, drain) and the broadcast lanes, over any transport.

pub(crate) mod lane;
pub(crate) mod settle;
pub(crate) mod stream;

use std::sync::Arc;

use crate::pipeline::Env;
use crate::transport::Transport;

/// What the runtime's components are given: the pipeline's environment, the transport, and the
/// process-wide lock. Each component takes from it only what it uses.
#[derive(Clone, Debug)]
pub(crate) struct Handles {
    pub(crate) env: Env,
    pub(crate) transport: Transport,
    /// Every handler run in this process holds it shared; a suspect (an entry redelivered
    /// after a possible crash) holds it exclusively, so it runs alone in the process and a crash
    /// during its run can only be its own.
    pub(crate) alone: Arc<tokio::sync::RwLock<()>>,
}
