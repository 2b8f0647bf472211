//! What the bus tells operators about itself: live counters and the [`Health`] report.

pub(crate) mod health;

pub(crate) use health::{ConnStats, Path, Stats};
pub use health::{ConnectionHealth, Health, ReaderHealth};

/// What each handler handled (returned `Ok` for), in order: the test bus's record.
#[cfg(feature = "testing")]
#[derive(Debug, Default)]
pub(crate) struct HandledLog(std::sync::Mutex<Vec<(&'static str, crate::envelope::EventId)>>);

#[cfg(feature = "testing")]
impl HandledLog {
    /// Records that `handler` handled event `id`.
    pub(crate) fn record(&self, handler: &'static str, id: &crate::envelope::EventId) {
        self.0
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
            .push((handler, id.clone()));
    }

    /// The events `handler` handled, in order.
    pub(crate) fn of(&self, handler: &str) -> Vec<crate::envelope::EventId> {
        self.0
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
            .iter()
            .filter(|(h, _)| *h == handler)
            .map(|(_, id)| id.clone())
            .collect()
    }
}
