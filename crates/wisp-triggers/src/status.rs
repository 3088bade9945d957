//! What every trigger reports, whatever its source: a state (active,
//! degraded with the last error and when it happened, or disabled) and
//! counters of delivered, failed and filtered events.

use chrono::{DateTime, Utc};
use serde::Serialize;
use std::sync::Mutex;
use std::sync::atomic::{AtomicU64, Ordering};
use utoipa::ToSchema;

/// The state of a trigger.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, ToSchema)]
#[serde(rename_all = "snake_case")]
pub enum State {
    /// Connecting for the first time.
    Starting,
    /// Connected and delivering.
    Active,
    /// Not delivering: the source failed and is being retried with backoff.
    Degraded,
    /// Switched off by the user.
    Disabled,
}

/// A snapshot of a trigger's status.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, ToSchema)]
pub struct Status {
    /// Current state.
    pub state: State,
    /// The last error, if any (kept after recovery, with its time).
    pub last_error: Option<String>,
    /// When `last_error` happened (RFC 3339).
    pub last_error_at: Option<DateTime<Utc>>,
    /// Events durably queued for the function.
    pub delivered: u64,
    /// Events that could not be queued (the source redelivers or rejects
    /// them as configured), and ordered batches that failed.
    pub failed: u64,
    /// Events that did not pass the trigger's filters.
    pub filtered: u64,
}

/// The live status of one running trigger, shared by its source and the API.
#[derive(Debug)]
pub struct Health {
    inner: Mutex<(State, Option<String>, Option<DateTime<Utc>>)>,
    delivered: AtomicU64,
    failed: AtomicU64,
    filtered: AtomicU64,
}

impl Default for Health {
    fn default() -> Self {
        Health::new(State::Starting)
    }
}

impl Health {
    /// A new status in `state` with zero counters.
    pub fn new(state: State) -> Self {
        Health {
            inner: Mutex::new((state, None, None)),
            delivered: AtomicU64::new(0),
            failed: AtomicU64::new(0),
            filtered: AtomicU64::new(0),
        }
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, (State, Option<String>, Option<DateTime<Utc>>)> {
        self.inner.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// The source is connected and consuming.
    pub fn active(&self) {
        let mut s = self.lock();
        if s.0 != State::Disabled {
            s.0 = State::Active;
        }
    }

    /// The source failed with `error`; it will retry.
    pub fn degraded(&self, error: impl std::fmt::Display) {
        let mut s = self.lock();
        if s.0 != State::Disabled {
            s.0 = State::Degraded;
        }
        s.1 = Some(error.to_string());
        s.2 = Some(Utc::now());
    }

    /// Records an error without changing the state (one message failed,
    /// the connection is fine).
    pub fn error(&self, error: impl std::fmt::Display) {
        let mut s = self.lock();
        s.1 = Some(error.to_string());
        s.2 = Some(Utc::now());
    }

    /// (Re)starting: connecting anew, for example after being enabled.
    pub fn starting(&self) {
        self.lock().0 = State::Starting;
    }

    /// Switched off.
    pub fn disabled(&self) {
        self.lock().0 = State::Disabled;
    }

    /// Counts `n` delivered events.
    pub fn add_delivered(&self, n: u64) {
        self.delivered.fetch_add(n, Ordering::Relaxed);
    }

    /// Counts `n` failed events.
    pub fn add_failed(&self, n: u64) {
        self.failed.fetch_add(n, Ordering::Relaxed);
    }

    /// Counts `n` filtered events.
    pub fn add_filtered(&self, n: u64) {
        self.filtered.fetch_add(n, Ordering::Relaxed);
    }

    /// The current state.
    pub fn state(&self) -> State {
        self.lock().0
    }

    /// A snapshot.
    pub fn snapshot(&self) -> Status {
        let s = self.lock().clone();
        Status {
            state: s.0,
            last_error: s.1,
            last_error_at: s.2,
            delivered: self.delivered.load(Ordering::Relaxed),
            failed: self.failed.load(Ordering::Relaxed),
            filtered: self.filtered.load(Ordering::Relaxed),
        }
    }
}
