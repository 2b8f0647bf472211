//! The chaos checker: proves "at least once, nothing lost" under injected faults.
//!
//! Every event a chaos test publishes carries a unique number `n` in its payload. The test
//! records, per `n`:
//!
//! - **acked**: some `publish` of it returned `Ok` (Redis stored it at least once; a publish that
//!   retried internally may have stored it twice, both copies with one event id);
//! - **uncertain**: every `publish` of it returned `Err` (it may or may not be stored);
//! - **handled**: how many times a handler ran to completion on it. In-process handlers call
//!   [`Checker::handled`]; consumer processes `RPUSH "<n>:<consumer>"` to a list in a *separate*
//!   `redis-server` that the fault never touches (see [`record_key`] and [`handled_from_list`]),
//!   which the test feeds in with [`Checker::set_handled`]. They also record every run they
//!   start, with `ctx.attempt()` and their pid ([`started_key`], [`starts_from_list`]), and every
//!   crash, with the other runs in flight at that moment ([`crash_key`], [`crashes_from_list`]);
//! - **dead-lettered**: the `n` of every dead letter (read back from the dead-letter stream with
//!   [`stream_payload_ids`] and fed in with [`Checker::set_dead_lettered`]). Only a **culprit**
//!   ([`Checker::culprit`]: an event that fails on its own, e.g. a job that aborts its process)
//!   may be dead-lettered; any other dead letter is *innocent*.
//!
//! The [`Verdict`] is `lost` = acked but never handled, plus every innocent dead letter (must be
//! empty; a culprit that was dead-lettered is accounted for), `unexpected` = handled but never
//! published (must be empty), and `duplicates` = handler runs beyond the first per `n`
//! (counted, reported, bounded per scenario). Everything is deduplicated by the payload's `n`,
//! never by the Redis entry id, so a publish stored twice counts once.

mod checker;
mod inspect;
mod load;
mod record;
mod scenario;
mod verdict;

pub use checker::Checker;
pub use inspect::{consumer_pending, patient_conn, pending_ids, stream_payload_ids};
pub use load::{Load, LoadOptions};
pub use record::{
    Crash, Start, crash_key, crashes_from_list, handled_from_list, record_key, started_key,
    starts_from_list,
};
pub use scenario::{count, exclusive, full, time_until};
pub use verdict::Verdict;
