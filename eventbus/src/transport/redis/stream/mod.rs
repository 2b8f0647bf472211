//! Stream commands of one handler's consumer group.

pub(crate) mod checks;
pub(crate) mod settle;
