//! Where the state's timestamps come from: the system clock, or one a test sets.
//!
//! Timestamps are seconds since the Unix epoch (the store's `at`, `since`, `set_at`
//! columns). Monotonic time for timeouts is not here: callers pass an `Instant`.

use std::fmt::Debug;
use std::time::{SystemTime, UNIX_EPOCH};

/// Wall-clock time in seconds since the Unix epoch.
pub trait Clock: Debug + Send {
    /// Now.
    fn unix_secs(&self) -> i64;
}

/// The system clock. A clock before 1970 reads 0; one past `i64::MAX` seconds saturates.
#[derive(Debug, Clone, Copy, Default)]
pub struct SystemClock;

impl Clock for SystemClock {
    fn unix_secs(&self) -> i64 {
        SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .map(|d| i64::try_from(d.as_secs()).unwrap_or(i64::MAX))
            .unwrap_or(0)
    }
}

/// A clock that reads what it was set to (tests, replays).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct FixedClock(pub i64);

impl Clock for FixedClock {
    fn unix_secs(&self) -> i64 {
        self.0
    }
}
