//! The transport seam: neutral types every backend speaks, and the backends as children.

pub(crate) mod keys;
#[cfg(feature = "testing")]
pub(crate) mod memory;
pub(crate) mod redis;
pub(crate) mod settle;
pub(crate) mod source;

pub(crate) use self::keys::*;
pub(crate) use self::redis::conn::*;
