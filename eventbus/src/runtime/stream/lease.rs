//! Leases: which entries this reader still owns, renewing them, and what a redelivered entry
//! was charged.

use std::collections::HashSet;

use super::Shared;
use crate::telemetry::{Path, Stats};
use crate::transport::source::Entry;

impl Shared {
    /// Renews the lease of every entry running here: `XCLAIM ... JUSTID` resets its idle time
    /// without counting a delivery, so a slow but alive handler keeps its entry and no other
    /// consumer claims it after the visibility timeout.
    pub(super) async fn renew_leases(&self) {
        let ids: Vec<String> = self
            .inflight
            .lock()
            .map(|s| s.iter().cloned().collect())
            .unwrap_or_default();
        if ids.is_empty() {
            return;
        }
        // Renew only what this consumer still owns: an entry another consumer claimed while
        // this one was frozen is theirs now.
        let result = match self.stream.owned(&ids, self.window_capacity()).await {
            Ok(owned) => {
                let mine: Vec<String> = ids.into_iter().filter(|id| owned.contains(id)).collect();
                if mine.is_empty() {
                    return;
                }
                self.stream.renew(&mine).await
            }
            Err(e) => Err(e),
        };
        if let Err(e) = result {
            Stats::add(&self.stats.claim_errors, 1);
            self.stats
                .set(Path::Claim, Some(format!("cannot renew leases: {e}")));
            tracing::warn!(
                handler = self.handler.name,
                error = %e,
                "cannot renew the lease of running entries; a slow handler's entry may be claimed by another consumer"
            );
        }
    }

    /// Of entries re-read from our own pending list or just claimed: the ones to run now, each
    /// with the attempts charged to it so far. An entry still running here is skipped, and so is
    /// one that is no longer pending. The in-flight check comes first: a run that finishes (and
    /// acks) after it is then seen as no longer pending by XPENDING, instead of being started a
    /// second time.
    pub(super) async fn redelivered(&self, entries: Vec<Entry>) -> Vec<(Entry, u32)> {
        let running: HashSet<String> = self
            .inflight
            .lock()
            .map(|s| {
                entries
                    .iter()
                    .filter(|e| s.contains(&e.id))
                    .map(|e| e.id.clone())
                    .collect()
            })
            .unwrap_or_default();
        let entries: Vec<Entry> = entries
            .into_iter()
            .filter(|e| !running.contains(&e.id))
            .collect();
        let (pending, charged) = self.pending_and_charged(&entries).await;
        entries
            .into_iter()
            .zip(charged)
            .filter(|(e, _)| pending.as_ref().is_none_or(|p| p.contains(&e.id)))
            .collect()
    }

    /// Which of `entries` are pending for this consumer (`None` when XPENDING failed), and the
    /// attempts charged to each (`HMGET` on the attempts hash; 0 when unknown). One round trip,
    /// on the redelivery path only.
    pub(super) async fn pending_and_charged(
        &self,
        entries: &[Entry],
    ) -> (Option<HashSet<String>>, Vec<u32>) {
        if entries.is_empty() {
            return (Some(HashSet::new()), Vec::new());
        }
        match self
            .stream
            .owned_and_charged(entries, self.window_capacity())
            .await
        {
            Ok((pending, charged)) => (Some(pending), charged),
            Err(e) => {
                tracing::warn!(handler = self.handler.name, error = %e, "cannot read pending entries and their charged attempts");
                (None, vec![0; entries.len()])
            }
        }
    }
}
