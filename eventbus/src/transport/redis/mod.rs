//! The Redis backend: the only place that names `redis::`.

pub(crate) mod conn;
pub(crate) mod errors;
