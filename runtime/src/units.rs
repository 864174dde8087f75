//! Durations and sizes as people write them in YAML: `90`, `"90s"`,
//! `"2h30m"`, `"1d5h"`; `536870912`, `"512MiB"`, `"2G"`.

use std::time::Duration;

use serde::{Deserialize, Deserializer};

/// Parses a duration: a number of seconds, or a string of `<n><unit>`
/// groups with units `d`, `h`, `m`, `s` in that order (as Testflinger's
/// server accepts for `reserve_data.timeout`), or a plain number string.
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

#[derive(Deserialize)]
#[serde(untagged)]
enum NumOrText {
    Num(f64),
    Text(String),
}

/// Serde helper: a duration given as seconds (number) or text.
pub fn de_duration<'de, D: Deserializer<'de>>(d: D) -> Result<Duration, D::Error> {
    match NumOrText::deserialize(d)? {
        NumOrText::Num(n) if n >= 0.0 && n.is_finite() => Ok(Duration::from_secs_f64(n)),
        NumOrText::Num(n) => Err(serde::de::Error::custom(format!(
            "{n} is not a valid duration"
        ))),
        NumOrText::Text(t) => parse_duration(&t).ok_or_else(|| {
            serde::de::Error::custom(format!(
                "`{t}` is not a duration (examples: 90, \"90s\", \"2h30m\")"
            ))
        }),
    }
}

/// Serde helper: a size given as bytes (number) or text.
pub fn de_size<'de, D: Deserializer<'de>>(d: D) -> Result<u64, D::Error> {
    match NumOrText::deserialize(d)? {
        NumOrText::Num(n) if n >= 0.0 && n.fract() == 0.0 => Ok(n as u64),
        NumOrText::Num(n) => Err(serde::de::Error::custom(format!("{n} is not a valid size"))),
        NumOrText::Text(t) => parse_size(&t).ok_or_else(|| {
            serde::de::Error::custom(format!(
                "`{t}` is not a size (examples: 1048576, \"512MiB\", \"2G\")"
            ))
        }),
    }
}

/// Serde helper: a size that must fit in `usize`.
pub fn de_usize_size<'de, D: Deserializer<'de>>(d: D) -> Result<usize, D::Error> {
    let n = de_size(d)?;
    usize::try_from(n).map_err(|_| serde::de::Error::custom(format!("{n} is too large")))
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
        for bad in ["", "h", "5x", "30m2h", "1h1h", "-5", "5 m", "+5", "+5m"] {
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
}
