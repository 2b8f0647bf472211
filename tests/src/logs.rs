//! `tracing` output in tests: [`init_tracing`] prints it (honours `RUST_LOG`); [`capture`]
//! records it as JSON lines, to assert on warnings and errors.
//!
//! Install the capturing subscriber with `tracing::subscriber::set_default` in a current-thread
//! runtime test: every task of that runtime runs on the test thread, so the capture sees the
//! bus's background readers too, and nothing from other tests running in parallel.

use std::io::Write;
use std::sync::{Arc, Mutex};

/// Installs a test tracing subscriber once (honours `RUST_LOG`).
pub fn init_tracing() {
    let _ = tracing_subscriber::fmt()
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_from_default_env()
                .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("warn")),
        )
        .with_test_writer()
        .try_init();
}

/// Events captured so far (`WARN` and above unless another level was asked for).
#[derive(Debug, Clone, Default)]
pub struct Captured(Arc<Mutex<Vec<u8>>>);

struct Sink(Arc<Mutex<Vec<u8>>>);

impl Write for Sink {
    fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
        if let Ok(mut b) = self.0.lock() {
            b.extend_from_slice(buf);
        }
        Ok(buf.len())
    }
    fn flush(&mut self) -> std::io::Result<()> {
        Ok(())
    }
}

/// A subscriber that records events at `level` and above into the returned [`Captured`].
pub fn capture(
    level: tracing::Level,
) -> (impl tracing::Subscriber + Send + Sync + 'static, Captured) {
    let captured = Captured::default();
    let buf = captured.0.clone();
    let subscriber = tracing_subscriber::fmt()
        .json()
        .with_max_level(level)
        .with_current_span(false)
        .with_span_list(false)
        .with_writer(move || Sink(buf.clone()))
        .finish();
    (subscriber, captured)
}

impl Captured {
    /// Every captured event: `{"level": "WARN", "fields": {"message": ..., ...}, "target": ...}`.
    pub fn events(&self) -> Vec<serde_json::Value> {
        let text = self
            .0
            .lock()
            .map(|b| String::from_utf8_lossy(&b).into_owned())
            .unwrap_or_default();
        text.lines()
            .filter_map(|l| serde_json::from_str(l).ok())
            .collect()
    }

    /// The captured events at `level` (`"WARN"`, `"ERROR"`) whose message contains `needle`.
    pub fn find(&self, level: &str, needle: &str) -> Vec<serde_json::Value> {
        self.events()
            .into_iter()
            .filter(|e| {
                e["level"] == level
                    && e["fields"]["message"]
                        .as_str()
                        .is_some_and(|m| m.contains(needle))
            })
            .collect()
    }

    /// Every captured line, for failure messages.
    pub fn text(&self) -> String {
        self.0
            .lock()
            .map(|b| String::from_utf8_lossy(&b).into_owned())
            .unwrap_or_default()
    }
}
