//! Stream commands of one handler's consumer group, one concept per file.

pub(crate) mod ack;
pub(crate) mod checks;
pub(crate) mod claim;
pub(crate) mod group;
pub(crate) mod lease;
pub(crate) mod read;
pub(crate) mod reply;
pub(crate) mod settle;
