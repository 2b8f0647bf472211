//! Scheduling: one reader per durable handler (prefetch window, concurrency, leases, claims,
//! acks, drain) and the broadcast lanes, over any transport.

pub(crate) mod lane;
pub(crate) mod stream;
