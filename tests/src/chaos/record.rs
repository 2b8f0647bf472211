//! The recording server: the lists where consumer processes record the events they handled, the
//! runs they started and the jobs that aborted them, and reading those lists back.

/// The list in the recording server where consumer processes record handled events.
pub fn record_key(namespace: &str) -> String {
    format!("{namespace}:handled")
}

/// The recorded `(n, consumer)` pairs of `key` (items are `"<n>:<consumer>"`), in record order.
///
/// # Panics
///
/// When Redis fails or an item is malformed.
pub async fn handled_from_list(
    conn: &mut redis::aio::MultiplexedConnection,
    key: &str,
) -> Vec<(u64, String)> {
    let raw: Vec<String> = redis::cmd("LRANGE")
        .arg(key)
        .arg(0)
        .arg(-1)
        .query_async(conn)
        .await
        .expect("LRANGE of the record list");
    raw.iter()
        .map(|s| {
            let (n, who) = s.split_once(':').expect("record item is n:consumer");
            (
                n.parse().expect("record item starts with n"),
                who.to_owned(),
            )
        })
        .collect()
}

/// The list in the recording server where consumer processes record every run they start.
pub fn started_key(namespace: &str) -> String {
    format!("{namespace}:started")
}

/// The list in the recording server where a consumer process records a job that aborts it,
/// right before the abort.
pub fn crash_key(namespace: &str) -> String {
    format!("{namespace}:crashes")
}

/// One handler run a consumer process started: an item `"<n>:<attempt>:<pid>:<consumer>"` of
/// [`started_key`].
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Start {
    /// The job.
    pub n: u64,
    /// `ctx.attempt()` of the run.
    pub attempt: u32,
    /// The process (one life of a consumer name).
    pub pid: u32,
    /// The consumer name.
    pub consumer: String,
}

/// One job that aborted its consumer process: an item
/// `"<n>:<attempt>:<others>:<pid>:<consumer>"` of [`crash_key`].
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Crash {
    /// The job.
    pub n: u64,
    /// `ctx.attempt()` of the run that crashed.
    pub attempt: u32,
    /// Other runs of the handler in flight in that process when it aborted (0: it ran alone).
    pub others: usize,
    /// The process that aborted.
    pub pid: u32,
    /// The consumer name.
    pub consumer: String,
}

async fn lrange(conn: &mut redis::aio::MultiplexedConnection, key: &str) -> Vec<String> {
    redis::cmd("LRANGE")
        .arg(key)
        .arg(0)
        .arg(-1)
        .query_async(conn)
        .await
        .unwrap_or_else(|e| panic!("LRANGE {key}: {e}"))
}

/// `n` leading `:`-separated numbers of `item`, and the rest (a consumer name may hold `:`).
fn split_record(item: &str, n: usize) -> (Vec<u64>, String) {
    let parts: Vec<&str> = item.splitn(n + 1, ':').collect();
    assert_eq!(parts.len(), n + 1, "malformed record item {item:?}");
    let numbers = parts[..n]
        .iter()
        .map(|p| {
            p.parse()
                .unwrap_or_else(|e| panic!("record item {item:?}: {p:?} is not a number: {e}"))
        })
        .collect();
    (numbers, parts[n].to_owned())
}

/// The runs recorded in `key` (see [`started_key`]), in record order.
///
/// # Panics
///
/// When Redis fails or an item is malformed.
pub async fn starts_from_list(
    conn: &mut redis::aio::MultiplexedConnection,
    key: &str,
) -> Vec<Start> {
    lrange(conn, key)
        .await
        .iter()
        .map(|item| {
            let (v, consumer) = split_record(item, 3);
            Start {
                n: v[0],
                attempt: u32::try_from(v[1]).expect("attempt fits u32"),
                pid: u32::try_from(v[2]).expect("pid fits u32"),
                consumer,
            }
        })
        .collect()
}

/// The crashes recorded in `key` (see [`crash_key`]), in record order.
///
/// # Panics
///
/// When Redis fails or an item is malformed.
pub async fn crashes_from_list(
    conn: &mut redis::aio::MultiplexedConnection,
    key: &str,
) -> Vec<Crash> {
    lrange(conn, key)
        .await
        .iter()
        .map(|item| {
            let (v, consumer) = split_record(item, 4);
            Crash {
                n: v[0],
                attempt: u32::try_from(v[1]).expect("attempt fits u32"),
                others: usize::try_from(v[2]).expect("count fits usize"),
                pid: u32::try_from(v[3]).expect("pid fits u32"),
                consumer,
            }
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn record_items_split_into_numbers_and_a_consumer_name() {
        assert_eq!(
            split_record("7:2:4242:c:1", 3),
            (vec![7, 2, 4242], "c:1".to_owned())
        );
    }
}
