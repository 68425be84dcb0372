//! Time for limits: wall-clock milliseconds for calendar budgets and the
//! shared backend, a monotonic instant for in-process rates.
//!
//! In tests the clock is anchored to a chosen date and follows tokio's
//! (pausable) clock, so windows, refills and calendar resets are tested by
//! advancing time instead of waiting.

use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

/// A source of the current time.
#[derive(Debug, Clone)]
pub struct Clock {
    source: Source,
}

#[derive(Debug, Clone)]
enum Source {
    System,
    /// Unix ms at a tokio instant; advances with tokio's clock.
    Tokio(i64, tokio::time::Instant),
    /// Unix ms at a std instant, plus milliseconds advanced by hand.
    Manual(i64, Instant, Arc<AtomicU64>),
}

impl Clock {
    /// The system clock.
    pub fn system() -> Clock {
        Clock {
            source: Source::System,
        }
    }

    /// A clock that reads `unix_ms` now and advances with tokio's clock
    /// (which tests can pause and advance).
    pub fn anchored(unix_ms: i64) -> Clock {
        Clock {
            source: Source::Tokio(unix_ms, tokio::time::Instant::now()),
        }
    }

    /// A clock that reads `unix_ms` now and moves only when
    /// [`Clock::advance`] is called: for tests whose other waits (network
    /// I/O) must keep real time.
    pub fn manual(unix_ms: i64) -> Clock {
        Clock {
            source: Source::Manual(unix_ms, Instant::now(), Arc::new(AtomicU64::new(0))),
        }
    }

    /// Moves a manual clock forward (no effect on other clocks).
    pub fn advance(&self, by: Duration) {
        if let Source::Manual(_, _, offset) = &self.source {
            let by = u64::try_from(by.as_millis()).unwrap_or(u64::MAX);
            offset.fetch_add(by, Ordering::Relaxed);
        }
    }

    /// Milliseconds since the Unix epoch.
    pub fn now_ms(&self) -> i64 {
        match &self.source {
            Source::System => keel_core::now_unix_ms(),
            Source::Tokio(ms, at) => {
                let elapsed = i64::try_from(at.elapsed().as_millis()).unwrap_or(i64::MAX);
                ms.saturating_add(elapsed)
            }
            Source::Manual(ms, _, offset) => {
                let offset = i64::try_from(offset.load(Ordering::Relaxed)).unwrap_or(i64::MAX);
                ms.saturating_add(offset)
            }
        }
    }

    /// A monotonic instant (tokio's, so it pauses in tests).
    pub fn instant(&self) -> Instant {
        match &self.source {
            Source::Manual(_, at, offset) => {
                *at + Duration::from_millis(offset.load(Ordering::Relaxed))
            }
            _ => tokio::time::Instant::now().into_std(),
        }
    }
}

impl Default for Clock {
    fn default() -> Clock {
        Clock::system()
    }
}

/// Milliseconds as a duration, zero for negative values.
pub(crate) fn ms(value: i64) -> Duration {
    Duration::from_millis(u64::try_from(value).unwrap_or(0))
}
