//! [`Verdict`]: the outcome of one scenario, its printed line and its assertions.

use std::collections::BTreeSet;
use std::fmt::Write as _;

/// The outcome of one scenario.
#[derive(Debug, Clone)]
pub struct Verdict {
    /// The scenario's short name.
    pub scenario: String,
    /// Distinct events some publish of which returned `Ok`.
    pub published_acked: usize,
    /// Distinct events every publish of which returned `Err`.
    pub published_uncertain: usize,
    /// Distinct events handled at least once.
    pub handled_unique: usize,
    /// Completed handler runs.
    pub handled_total: u64,
    /// Acked, never handled (and not excused), plus every innocent dead letter.
    pub lost: BTreeSet<u64>,
    /// Handled, never published.
    pub unexpected: BTreeSet<u64>,
    /// Handler runs beyond the first per event.
    pub duplicates: u64,
    /// Acked events missing but excused (a documented loss window).
    pub excused: usize,
    /// Dead letters written (culprits' and innocent ones).
    pub dead_letters: u64,
    /// Events dead-lettered without being a culprit: dead-lettered for failures not their own
    /// (also counted in `lost`).
    pub innocent_dead_letters: BTreeSet<u64>,
    /// Scenario-specific measurements printed after the counts.
    pub extra: Vec<(String, String)>,
}

impl Verdict {
    /// Adds a `key=value` measurement to the printed line.
    #[must_use]
    pub fn with(mut self, key: &str, value: impl std::fmt::Display) -> Verdict {
        self.extra.push((key.to_owned(), value.to_string()));
        self
    }

    /// The one-line summary, e.g.
    /// `chaos scenario=redis-restart published=2000 uncertain=0 handled_unique=2000 lost=0
    /// innocent_dead_letters=0 dead_letters=0 unexpected=0 duplicates=3`.
    pub fn line(&self) -> String {
        let mut line = format!(
            "chaos scenario={} published={} uncertain={} handled_unique={} lost={} innocent_dead_letters={} dead_letters={} unexpected={} duplicates={}",
            self.scenario,
            self.published_acked,
            self.published_uncertain,
            self.handled_unique,
            self.lost.len(),
            self.innocent_dead_letters.len(),
            self.dead_letters,
            self.unexpected.len(),
            self.duplicates
        );
        if self.excused > 0 {
            let _ = write!(line, " excused={}", self.excused);
        }
        for (k, v) in &self.extra {
            let _ = write!(line, " {k}={v}");
        }
        line
    }

    /// Prints [`line`](Self::line) to the test output.
    pub fn print(&self) {
        println!("{}", self.line());
    }

    /// Asserts no innocent dead letter, lost = ∅, unexpected = ∅ and duplicates ≤
    /// `max_duplicates`.
    ///
    /// # Panics
    ///
    /// When one of them does not hold; the message has the line and the first offending ids.
    pub fn assert_ok(&self, max_duplicates: u64) {
        let first = |s: &BTreeSet<u64>| s.iter().take(20).copied().collect::<Vec<_>>();
        assert!(
            self.innocent_dead_letters.is_empty(),
            "{}: dead-lettered without a failure of their own (first 20): {:?}",
            self.line(),
            first(&self.innocent_dead_letters)
        );
        assert!(
            self.lost.is_empty(),
            "{}: acked but never handled (first 20): {:?}",
            self.line(),
            first(&self.lost)
        );
        assert!(
            self.unexpected.is_empty(),
            "{}: handled but never published (first 20): {:?}",
            self.line(),
            first(&self.unexpected)
        );
        assert!(
            self.duplicates <= max_duplicates,
            "{}: more duplicates than the {max_duplicates} allowed",
            self.line()
        );
    }
}

#[cfg(test)]
mod tests {
    use crate::chaos::Checker;

    #[test]
    #[should_panic(expected = "dead-lettered without a failure of their own")]
    fn assert_ok_fails_on_an_innocent_dead_letter() {
        let c = Checker::new();
        c.published(1);
        c.handled(1);
        c.set_dead_lettered([1]);
        c.verdict("unit").assert_ok(u64::MAX);
    }

    #[test]
    #[should_panic(expected = "acked but never handled")]
    fn assert_ok_fails_on_a_lost_event() {
        let c = Checker::new();
        c.published(1);
        c.verdict("unit").assert_ok(u64::MAX);
    }

    #[test]
    #[should_panic(expected = "more duplicates than the 0 allowed")]
    fn assert_ok_fails_on_too_many_duplicates() {
        let c = Checker::new();
        c.published(1);
        c.handled(1);
        c.handled(1);
        c.verdict("unit").assert_ok(0);
    }
}
