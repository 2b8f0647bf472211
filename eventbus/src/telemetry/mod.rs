//! What the bus tells operators about itself: live counters and the [`Health`] report.

pub(crate) mod health;

pub(crate) use health::{ConnStats, Path, Stats};
pub use health::{ConnectionHealth, Health, ReaderHealth};
