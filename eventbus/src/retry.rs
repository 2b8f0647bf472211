//! Retry policy: attempts and exponential backoff with jitter.

use std::time::Duration;

/// How a handler is retried in process before its event is dead-lettered.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct RetryPolicy {
    /// Retries after the first attempt.
    pub(crate) retries: u32,
    /// The floor of every delay, and the first delay's ceiling.
    pub(crate) backoff: Duration,
    /// The cap on every delay.
    pub(crate) max_backoff: Duration,
}

impl RetryPolicy {
    /// Attempts in all: `retries + 1`.
    pub(crate) fn attempts(&self) -> u32 {
        self.retries.saturating_add(1)
    }

    /// The ceiling of the delay after failed attempt `attempt` (1-based): `backoff × 2^(attempt-1)`,
    /// capped at `max_backoff`.
    pub(crate) fn ceiling(&self, attempt: u32) -> Duration {
        let factor = 2u32.saturating_pow(attempt.saturating_sub(1).min(31));
        self.backoff
            .saturating_mul(factor)
            .min(self.max_backoff)
            .max(self.backoff.min(self.max_backoff))
    }

    /// The delay after failed attempt `attempt`: uniformly random between the floor (`backoff`)
    /// and the exponential ceiling ("full jitter" above a floor), so replicas that failed together
    /// do not retry together, and no retry comes sooner than `backoff`.
    pub(crate) fn delay(&self, attempt: u32) -> Duration {
        let floor = self.backoff.min(self.max_backoff);
        let ceiling = self.ceiling(attempt);
        let span = ceiling.saturating_sub(floor);
        let span_us = u64::try_from(span.as_micros()).unwrap_or(u64::MAX);
        floor + Duration::from_micros(fastrand::u64(0..=span_us))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn policy() -> RetryPolicy {
        RetryPolicy {
            retries: 5,
            backoff: Duration::from_millis(100),
            max_backoff: Duration::from_secs(1),
        }
    }

    #[test]
    fn ceilings_double_and_cap() {
        let p = policy();
        let ms: Vec<u128> = (1..=6).map(|a| p.ceiling(a).as_millis()).collect();
        assert_eq!(ms, [100, 200, 400, 800, 1000, 1000]);
        assert_eq!(p.ceiling(u32::MAX), Duration::from_secs(1));
        assert_eq!(p.attempts(), 6);
    }

    #[test]
    fn delays_stay_between_floor_and_ceiling() {
        let p = policy();
        for attempt in 1..=10 {
            for _ in 0..200 {
                let d = p.delay(attempt);
                assert!(
                    d >= p.backoff && d <= p.ceiling(attempt),
                    "{attempt}: {d:?}"
                );
            }
        }
        assert_eq!(p.delay(1), Duration::from_millis(100));
    }
}
