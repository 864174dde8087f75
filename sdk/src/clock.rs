//! Time for connectors: the stage's monotonic clock, pauses and wall-clock
//! text. On wasm32 this is WASI's monotonic clock (a pause suspends the
//! connector, nothing spins); in native tests it is the installed
//! [`crate::testing::FakeHost`]'s virtual clock, so a 20-minute wait takes
//! no real time.
//!
//! ```
//! use std::time::Duration;
//! use testflinger_connector::clock::{self, Clock};
//! use testflinger_connector::testing::FakeHost;
//!
//! let host = FakeHost::new().install();
//! let start = clock::now();
//! clock::sleep(Duration::from_secs(600));
//! assert_eq!(clock::now() - start, Duration::from_secs(600));
//! assert_eq!(clock::HostClock.now(), host.elapsed());
//! ```

use std::time::{Duration, UNIX_EPOCH};

use crate::sys;

/// A clock that [`crate::wait`] reads and sleeps on. [`HostClock`] is the
/// stage's; tests may give a wait their own.
pub trait Clock {
    /// Time since some fixed start.
    fn now(&self) -> Duration;
    /// Pauses for `d`.
    fn sleep(&self, d: Duration);
}

/// The stage's clock (see the module documentation).
#[derive(Debug, Clone, Copy, Default)]
pub struct HostClock;

impl Clock for HostClock {
    fn now(&self) -> Duration {
        sys::now()
    }

    fn sleep(&self, d: Duration) {
        sys::sleep(d);
    }
}

/// Time since the stage's first clock reading.
pub fn now() -> Duration {
    sys::now()
}

/// Pauses for `d` (nothing for zero).
pub fn sleep(d: Duration) {
    sys::sleep(d);
}

/// The wall-clock time `d` from now, in UTC (`2026-11-22 14:03:05 UTC`),
/// for lines that tell an operator when a long wait ends.
pub fn utc_after(d: Duration) -> String {
    let secs = sys::wall()
        .checked_add(d)
        .and_then(|t| t.duration_since(UNIX_EPOCH).ok())
        .map_or(0, |t| t.as_secs());
    utc(secs)
}

/// Seconds since the Unix epoch as `YYYY-MM-DD HH:MM:SS UTC`.
///
/// ```
/// assert_eq!(testflinger_connector::clock::utc(1_709_210_096), "2024-02-29 12:34:56 UTC");
/// ```
pub fn utc(secs: u64) -> String {
    let days = (secs / 86_400) as i64;
    let rem = secs % 86_400;
    // Days to a civil date (proleptic Gregorian calendar).
    let z = days + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z.rem_euclid(146_097);
    let yoe = (doe - doe / 1_460 + doe / 36_524 - doe / 146_096) / 365;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let day = doy - (153 * mp + 2) / 5 + 1;
    let month = if mp < 10 { mp + 3 } else { mp - 9 };
    let year = yoe + era * 400 + i64::from(month <= 2);
    format!(
        "{year:04}-{month:02}-{day:02} {:02}:{:02}:{:02} UTC",
        rem / 3600,
        rem % 3600 / 60,
        rem % 60
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn utc_dates() {
        assert_eq!(utc(0), "1970-01-01 00:00:00 UTC");
        assert_eq!(utc(1_704_067_199), "2023-12-31 23:59:59 UTC");
        assert_eq!(utc(1_709_210_096), "2024-02-29 12:34:56 UTC");
        assert_eq!(utc(1_798_761_600), "2027-01-01 00:00:00 UTC");
    }
}
