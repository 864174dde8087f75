//! Durations and sizes in one place, for the runtime and the connector SDK:
//!
//! - parsing as people write them in YAML: `90`, `"90s"`, `"2h30m"`,
//!   `"1d5h"` ([`parse_duration`]); `536870912`, `"512MiB"`, `"2G"`
//!   ([`parse_size`]);
//! - formatting for log lines ([`human_duration`]): `250 ms`, `1.5 s`,
//!   `34 s`, `20 min`, `2.5 h`.
//!
//! ```
//! use std::time::Duration;
//! use tfdc_units::{human_duration, parse_duration, parse_size};
//!
//! assert_eq!(parse_duration("2m30s"), Some(Duration::from_secs(150)));
//! assert_eq!(parse_size("512MiB"), Some(512 << 20));
//! assert_eq!(human_duration(Duration::from_secs(1200)), "20 min");
//! ```

#![warn(missing_docs)]

use std::time::Duration;

/// Parses a duration: a number of seconds (digits only), or a string of
/// `<n><unit>` groups with units `d`, `h`, `m`, `s` in that order (as
/// Testflinger's server accepts for `reserve_data.timeout`). No sign, no
/// spaces, no fractions.
pub fn parse_duration(text: &str) -> Option<Duration> {
    let t = text.trim();
    if t.is_empty() {
        return None;
    }
    // Digits only: `u64::from_str` would also take a leading `+`, which
    // no other form (nor `parse_size`) accepts.
    if t.bytes().all(|b| b.is_ascii_digit()) {
        return t.parse::<u64>().ok().map(Duration::from_secs);
    }
    let mut total: u64 = 0;
    let mut number = String::new();
    let mut last_rank = 0;
    for c in t.chars() {
        if c.is_ascii_digit() {
            number.push(c);
            continue;
        }
        let (rank, factor) = match c.to_ascii_lowercase() {
            'd' => (1, 86_400),
            'h' => (2, 3_600),
            'm' => (3, 60),
            's' => (4, 1),
            _ => return None,
        };
        if number.is_empty() || rank <= last_rank {
            return None;
        }
        last_rank = rank;
        let n: u64 = number.parse().ok()?;
        total = total.checked_add(n.checked_mul(factor)?)?;
        number.clear();
    }
    if !number.is_empty() {
        return None;
    }
    Some(Duration::from_secs(total))
}

/// Parses a size in bytes: a number, or a number with a unit (`K`, `M`,
/// `G`, `T` are powers of 1000, `KiB`, `MiB`, `GiB`, `TiB` powers of 1024,
/// `B` bytes), case-insensitive.
pub fn parse_size(text: &str) -> Option<u64> {
    let t = text.trim();
    let split = t.find(|c: char| !c.is_ascii_digit()).unwrap_or(t.len());
    let (digits, unit) = t.split_at(split);
    let n: u64 = digits.parse().ok()?;
    let factor: u64 = match unit.trim().to_ascii_lowercase().as_str() {
        "" | "b" => 1,
        "k" | "kb" => 1_000,
        "m" | "mb" => 1_000_000,
        "g" | "gb" => 1_000_000_000,
        "t" | "tb" => 1_000_000_000_000,
        "kib" => 1 << 10,
        "mib" => 1 << 20,
        "gib" => 1 << 30,
        "tib" => 1 << 40,
        _ => return None,
    };
    n.checked_mul(factor)
}

/// `d` as log lines show it: milliseconds below a second (`250 ms`),
/// seconds below two minutes (`1.5 s`, `34 s`), minutes below two hours
/// (`20 min`, `2.5 min`), hours above (`8 h`). At most one decimal,
/// dropped when it is zero.
///
/// ```
/// use std::time::Duration;
/// use tfdc_units::human_duration;
///
/// assert_eq!(human_duration(Duration::from_millis(600)), "600 ms");
/// assert_eq!(human_duration(Duration::from_millis(1500)), "1.5 s");
/// assert_eq!(human_duration(Duration::from_secs(34)), "34 s");
/// assert_eq!(human_duration(Duration::from_secs(150)), "2.5 min");
/// assert_eq!(human_duration(Duration::from_secs(8 * 3600)), "8 h");
/// ```
pub fn human_duration(d: Duration) -> String {
    let ms = d.as_millis();
    if ms < 1_000 {
        return format!("{ms} ms");
    }
    let s = d.as_secs_f64();
    let (value, unit) = if ms < 120_000 {
        (s, "s")
    } else if ms < 7_200_000 {
        (s / 60.0, "min")
    } else {
        (s / 3600.0, "h")
    };
    // Rounded to one decimal first, so that 59.96 s shows as `60 s`.
    let tenths = (value * 10.0).round();
    if tenths % 10.0 == 0.0 {
        format!("{:.0} {unit}", tenths / 10.0)
    } else {
        format!("{:.1} {unit}", tenths / 10.0)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn durations() {
        assert_eq!(parse_duration("3600"), Some(Duration::from_secs(3600)));
        assert_eq!(parse_duration("30s"), Some(Duration::from_secs(30)));
        assert_eq!(parse_duration("2h30m"), Some(Duration::from_secs(9000)));
        assert_eq!(parse_duration("1d5h"), Some(Duration::from_secs(104_400)));
        // "+5" was accepted (found by the `units` fuzz target).
        for bad in [
            "", "h", "5x", "30m2h", "1h1h", "-5", "5 m", "+5", "+5m", "1.5",
        ] {
            assert_eq!(parse_duration(bad), None, "{bad}");
        }
    }

    #[test]
    fn sizes() {
        assert_eq!(parse_size("512MiB"), Some(512 << 20));
        assert_eq!(parse_size("2G"), Some(2_000_000_000));
        assert_eq!(parse_size("100"), Some(100));
        assert_eq!(parse_size("1.5G"), None);
        assert_eq!(parse_size("9999999999999T"), None);
        assert_eq!(parse_size("+5"), None);
    }

    #[test]
    fn log_line_durations() {
        let ms = Duration::from_millis;
        for (d, text) in [
            (ms(0), "0 ms"),
            (ms(50), "50 ms"),
            (ms(999), "999 ms"),
            (ms(1000), "1 s"),
            (ms(1500), "1.5 s"),
            (ms(12_500), "12.5 s"),
            (ms(59_960), "60 s"),
            (ms(119_999), "120 s"),
            (ms(120_000), "2 min"),
            (ms(150_000), "2.5 min"),
            (ms(1_200_000), "20 min"),
            (ms(3_600_000), "60 min"),
            (ms(7_200_000), "2 h"),
            (ms(9_000_000), "2.5 h"),
        ] {
            assert_eq!(human_duration(d), text, "{d:?}");
        }
        assert!(human_duration(Duration::MAX).ends_with(" h"));
    }
}
