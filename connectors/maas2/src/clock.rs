//! Pauses and human-readable times. Sleeping is a WASI monotonic-clock
//! wait: the host suspends the connector, nothing spins.

use std::time::{Duration, SystemTime, UNIX_EPOCH};

/// Sleeps for `d` (nothing for zero).
pub fn sleep(d: Duration) {
    if !d.is_zero() {
        std::thread::sleep(d);
    }
}

/// A short rendering of `d`: `250 ms`, `12.5 s`, `60 min`.
pub fn human(d: Duration) -> String {
    let ms = d.as_millis();
    if ms < 1000 {
        format!("{ms} ms")
    } else if ms < 120_000 {
        let s = d.as_secs_f64();
        if s.fract() == 0.0 {
            format!("{s:.0} s")
        } else {
            format!("{s:.1} s")
        }
    } else {
        let min = d.as_secs_f64() / 60.0;
        if min.fract() == 0.0 {
            format!("{min:.0} min")
        } else {
            format!("{min:.1} min")
        }
    }
}

/// The wall-clock time `d` from now, in UTC (`2026-11-22 14:03:05 UTC`).
pub fn utc_after(d: Duration) -> String {
    let secs = SystemTime::now()
        .checked_add(d)
        .and_then(|t| t.duration_since(UNIX_EPOCH).ok())
        .map_or(0, |t| t.as_secs());
    utc(secs)
}

/// Seconds since the epoch as `YYYY-MM-DD HH:MM:SS UTC`.
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
    fn formats() {
        assert_eq!(utc(0), "1970-01-01 00:00:00 UTC");
        assert_eq!(utc(1_704_067_199), "2023-12-31 23:59:59 UTC");
        assert_eq!(utc(1_709_210_096), "2024-02-29 12:34:56 UTC");
        assert_eq!(human(Duration::from_millis(250)), "250 ms");
        assert_eq!(human(Duration::from_secs(10)), "10 s");
        assert_eq!(human(Duration::from_millis(12_500)), "12.5 s");
        assert_eq!(human(Duration::from_secs(3600)), "60 min");
        assert_eq!(human(Duration::from_secs(150)), "2.5 min");
    }
}
