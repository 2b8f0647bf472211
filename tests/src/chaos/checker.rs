//! [`Checker`]: the record, per payload number `n`, of what was published, handled and
//! dead-lettered, and the [`Verdict`] over it.

use std::collections::{BTreeMap, BTreeSet};
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::Instant;

use super::Verdict;

#[derive(Debug, Default)]
struct Inner {
    /// `n` → when its first successful publish returned.
    acked: BTreeMap<u64, Instant>,
    /// Publish calls that returned `Err`, per `n` (whether or not a later one succeeded).
    failed: BTreeMap<u64, u32>,
    /// `n` → completed handler runs.
    handled: BTreeMap<u64, u64>,
    /// `n` → dead letters written for it.
    dead_lettered: BTreeMap<u64, u64>,
    /// Events that fail on their own and may be dead-lettered.
    culprits: BTreeSet<u64>,
}

impl Inner {
    /// Acked, not handled, and not a culprit that was dead-lettered.
    fn unresolved(&self, n: u64) -> bool {
        let resolved = self.handled.contains_key(&n)
            || (self.culprits.contains(&n) && self.dead_lettered.contains_key(&n));
        !resolved
    }

    /// Dead-lettered without being a culprit.
    fn innocent_dead_letters(&self) -> BTreeSet<u64> {
        self.dead_lettered
            .keys()
            .filter(|n| !self.culprits.contains(n))
            .copied()
            .collect()
    }
}

/// Records what was published and what was handled; cheap to clone (clones share the record),
/// usable as handler state (`State<Checker>`).
#[derive(Debug, Clone, Default)]
pub struct Checker {
    inner: Arc<Mutex<Inner>>,
}

impl Checker {
    /// An empty record.
    pub fn new() -> Checker {
        Checker::default()
    }

    fn lock(&self) -> MutexGuard<'_, Inner> {
        // A panic while holding the lock leaves consistent maps behind: keep using them.
        self.inner
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
    }

    /// A publish of `n` returned `Ok`.
    pub fn published(&self, n: u64) {
        self.lock().acked.entry(n).or_insert_with(Instant::now);
    }

    /// A publish of `n` returned `Err`: it may or may not be stored.
    pub fn publish_failed(&self, n: u64) {
        *self.lock().failed.entry(n).or_default() += 1;
    }

    /// A handler completed on `n` (in-process handlers).
    pub fn handled(&self, n: u64) {
        *self.lock().handled.entry(n).or_default() += 1;
    }

    /// Replaces the handled record with `ns` (one item per completed run), e.g. read back from
    /// the recording server with [`handled_from_list`](super::handled_from_list).
    pub fn set_handled(&self, ns: impl IntoIterator<Item = u64>) {
        let mut handled = BTreeMap::new();
        for n in ns {
            *handled.entry(n).or_default() += 1;
        }
        self.lock().handled = handled;
    }

    /// Marks `n` as a culprit: an event that fails on its own (its handler errs, or it aborts its
    /// process) and may therefore end in the dead letters.
    pub fn culprit(&self, n: u64) {
        self.lock().culprits.insert(n);
    }

    /// Replaces the dead-letter record with `ns` (one item per dead letter), e.g. read back from
    /// the dead-letter stream with [`stream_payload_ids`](super::stream_payload_ids).
    pub fn set_dead_lettered(&self, ns: impl IntoIterator<Item = u64>) {
        let mut dead = BTreeMap::new();
        for n in ns {
            *dead.entry(n).or_default() += 1;
        }
        self.lock().dead_lettered = dead;
    }

    /// Events dead-lettered without being a culprit (a failure of the promise).
    pub fn innocent_dead_letters(&self) -> BTreeSet<u64> {
        self.lock().innocent_dead_letters()
    }

    /// How many distinct events were acked.
    pub fn acked_count(&self) -> usize {
        self.lock().acked.len()
    }

    /// The acked events with the time their publish returned `Ok`.
    pub fn acked(&self) -> BTreeMap<u64, Instant> {
        self.lock().acked.clone()
    }

    /// How many distinct events were handled at least once.
    pub fn handled_unique(&self) -> usize {
        self.lock().handled.len()
    }

    /// Publish calls that returned `Err` (each was retried by the load until one succeeded or it
    /// gave up).
    pub fn publish_errors(&self) -> u64 {
        self.lock().failed.values().map(|&c| u64::from(c)).sum()
    }

    /// Acked events not handled yet (a culprit that was dead-lettered is not missing).
    pub fn missing(&self) -> BTreeSet<u64> {
        let inner = self.lock();
        inner
            .acked
            .keys()
            .filter(|n| inner.unresolved(**n))
            .copied()
            .collect()
    }

    /// True when every acked event was handled at least once (or, for a culprit, handled or
    /// dead-lettered).
    pub fn all_acked_handled(&self) -> bool {
        let inner = self.lock();
        inner.acked.keys().all(|n| !inner.unresolved(*n))
    }

    /// The verdict over everything acked.
    pub fn verdict(&self, scenario: &str) -> Verdict {
        self.verdict_excusing(scenario, &BTreeSet::new())
    }

    /// The verdict, with `excused` acked events allowed to be missing (a documented loss window,
    /// e.g. writes Redis never made durable); they are reported as `excused=`.
    pub fn verdict_excusing(&self, scenario: &str, excused: &BTreeSet<u64>) -> Verdict {
        let inner = self.lock();
        let uncertain: BTreeSet<u64> = inner
            .failed
            .keys()
            .filter(|n| !inner.acked.contains_key(n))
            .copied()
            .collect();
        let innocent_dead_letters = inner.innocent_dead_letters();
        let lost = inner
            .acked
            .keys()
            .filter(|n| inner.unresolved(**n) && !excused.contains(n))
            .chain(innocent_dead_letters.iter())
            .copied()
            .collect();
        let excused_missing = inner
            .acked
            .keys()
            .filter(|n| inner.unresolved(**n) && excused.contains(n))
            .count();
        let unexpected = inner
            .handled
            .keys()
            .filter(|n| !inner.acked.contains_key(n) && !uncertain.contains(n))
            .copied()
            .collect();
        let handled_total: u64 = inner.handled.values().sum();
        Verdict {
            scenario: scenario.to_owned(),
            published_acked: inner.acked.len(),
            published_uncertain: uncertain.len(),
            handled_unique: inner.handled.len(),
            handled_total,
            lost,
            unexpected,
            duplicates: handled_total - inner.handled.len() as u64,
            excused: excused_missing,
            dead_letters: inner.dead_lettered.values().sum(),
            innocent_dead_letters,
            extra: Vec::new(),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn verdict_counts_lost_unexpected_duplicates_and_uncertain() {
        let c = Checker::new();
        for n in 0..5 {
            c.published(n);
        }
        c.publish_failed(5); // never acked: uncertain
        c.publish_failed(6);
        c.published(6); // failed once, then acked
        for n in [0, 1, 1, 2, 5, 6, 9] {
            c.handled(n);
        }
        let v = c.verdict("unit");
        assert_eq!(v.published_acked, 6);
        assert_eq!(v.published_uncertain, 1);
        assert_eq!(v.handled_unique, 6);
        assert_eq!(v.lost, BTreeSet::from([3, 4]));
        assert_eq!(v.unexpected, BTreeSet::from([9]), "5 was maybe published");
        assert_eq!(v.duplicates, 1);
        assert_eq!(c.missing(), BTreeSet::from([3, 4]));
        assert!(!c.all_acked_handled());
        assert_eq!(c.publish_errors(), 2);

        let v = c.verdict_excusing("unit", &BTreeSet::from([3]));
        assert_eq!(v.lost, BTreeSet::from([4]));
        assert_eq!(v.excused, 1);
        assert!(v.with("k", 7).line().ends_with("excused=1 k=7"));

        c.set_handled([0, 1, 2, 3, 4, 6, 6, 6]);
        let v = c.verdict("unit");
        assert!(v.lost.is_empty() && v.unexpected.is_empty());
        assert_eq!(v.duplicates, 2);
        v.assert_ok(2);
    }

    #[test]
    fn dead_letters_count_as_lost_unless_the_event_is_a_culprit() {
        let c = Checker::new();
        for n in 0..4 {
            c.published(n);
        }
        c.culprit(3);
        c.set_handled([0, 1, 2]);
        assert!(
            !c.all_acked_handled(),
            "the culprit is not dead-lettered yet"
        );
        assert_eq!(c.missing(), BTreeSet::from([3]));
        c.set_dead_lettered([3, 1]);
        assert!(
            c.all_acked_handled(),
            "a dead-lettered culprit is accounted for"
        );
        assert_eq!(c.innocent_dead_letters(), BTreeSet::from([1]));
        let v = c.verdict("unit");
        assert_eq!(
            v.lost,
            BTreeSet::from([1]),
            "handled, but also dead-lettered"
        );
        assert_eq!(v.innocent_dead_letters, BTreeSet::from([1]));
        assert_eq!(v.dead_letters, 2);
        assert!(
            v.line()
                .contains(" lost=1 innocent_dead_letters=1 dead_letters=2 "),
            "{}",
            v.line()
        );
        c.set_dead_lettered([3]);
        c.verdict("unit").assert_ok(0);
    }
}
