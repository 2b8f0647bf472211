//! Group membership: create the group, leave it after a clean drain.

use crate::transport::redis::Redis;
use crate::transport::redis::errors::classify;
use crate::transport::stream::{Stream, TResult};

/// `XGROUP CREATE <stream> <group> 0 MKSTREAM`: a new group starts at the beginning of the
/// stream, so events published before the handler's first start are handled too. An existing
/// group (`BUSYGROUP`) is kept.
pub(crate) async fn ensure_group(r: &Redis, s: &Stream) -> TResult<()> {
    let mut conn = r.conn.clone();
    let result = redis::cmd("XGROUP")
        .arg("CREATE")
        .arg(&s.keys.stream)
        .arg(s.group)
        .arg("0")
        .arg("MKSTREAM")
        .query_async::<()>(&mut conn)
        .await;
    match result {
        Err(e) if e.code() == Some("BUSYGROUP") => Ok(()),
        other => other.map_err(classify),
    }
}

/// Removes this consumer from the group when it holds nothing pending (one server-side step),
/// so per-process consumer names do not pile up. A consumer that still has pending entries
/// (an ack that did not land) stays, so they can be claimed.
pub(crate) async fn leave_group(r: &Redis, s: &Stream) {
    let mut conn = r.conn.clone();
    let _ = super::checks::leave_group(&mut conn, &s.keys.stream, s.group, &s.consumer).await;
}
