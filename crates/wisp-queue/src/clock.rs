//! The queue's time source: the system clock, or a manual one for tests
//! of backoff, leases and expiry that should not sleep.

use chrono::{DateTime, Utc};
use std::sync::Arc;
use std::sync::atomic::{AtomicI64, Ordering};
use std::time::Duration;

/// Where the queue reads the time. Cloning shares a manual clock.
#[derive(Debug, Clone, Default)]
pub struct Clock {
    manual: Option<Arc<AtomicI64>>,
}

impl Clock {
    /// The system clock.
    pub fn system() -> Self {
        Clock { manual: None }
    }

    /// A clock that stands at `start` until [`advance`](Clock::advance)d.
    pub fn manual(start: DateTime<Utc>) -> Self {
        Clock {
            manual: Some(Arc::new(AtomicI64::new(to_ns(start)))),
        }
    }

    /// The current time.
    pub fn now(&self) -> DateTime<Utc> {
        match &self.manual {
            Some(ns) => DateTime::from_timestamp_nanos(ns.load(Ordering::SeqCst)),
            None => Utc::now(),
        }
    }

    /// Moves a manual clock forward; does nothing to the system clock.
    pub fn advance(&self, by: Duration) {
        if let Some(ns) = &self.manual {
            let by = i64::try_from(by.as_nanos()).unwrap_or(i64::MAX);
            ns.fetch_add(by, Ordering::SeqCst);
        }
    }
}

/// Nanoseconds since the Unix epoch, saturating outside 1677..2262.
pub(crate) fn to_ns(t: DateTime<Utc>) -> i64 {
    t.timestamp_nanos_opt().unwrap_or(if t.timestamp() < 0 {
        i64::MIN
    } else {
        i64::MAX
    })
}

/// The inverse of [`to_ns`].
pub(crate) fn from_ns(ns: i64) -> DateTime<Utc> {
    DateTime::from_timestamp_nanos(ns)
}

/// A duration in nanoseconds, saturating.
pub(crate) fn dur_ns(d: Duration) -> i64 {
    i64::try_from(d.as_nanos()).unwrap_or(i64::MAX)
}
