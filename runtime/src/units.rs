//! Durations and sizes as people write them in YAML: `90`, `"90s"`,
//! `"2h30m"`, `"1d5h"`; `536870912`, `"512MiB"`, `"2G"`. The parsing and
//! the log-line format live in the `tfdc-units` crate, which the connector
//! SDK shares; this module adds the serde helpers of the runtime's own
//! settings.

use std::time::Duration;

use serde::{Deserialize, Deserializer};

pub use tfdc_units::{human_duration, parse_duration, parse_size};

#[derive(Deserialize)]
#[serde(untagged)]
enum NumOrText {
    Num(f64),
    Text(String),
}

/// Serde helper: a duration given as seconds (number) or text.
pub fn de_duration<'de, D: Deserializer<'de>>(d: D) -> Result<Duration, D::Error> {
    match NumOrText::deserialize(d)? {
        // `try_from`: a huge number of seconds (1e300) is an error, not a
        // panic.
        NumOrText::Num(n) => Duration::try_from_secs_f64(n)
            .map_err(|_| serde::de::Error::custom(format!("{n} is not a valid duration"))),
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

    #[derive(Deserialize)]
    struct Limits {
        #[serde(deserialize_with = "de_duration")]
        d: Duration,
        #[serde(deserialize_with = "de_size")]
        s: u64,
    }

    #[test]
    fn serde_helpers_take_numbers_and_text() {
        let l: Limits = serde_json::from_str(r#"{"d": "2h30m", "s": "512MiB"}"#).unwrap();
        assert_eq!((l.d, l.s), (Duration::from_secs(9000), 512 << 20));
        let l: Limits = serde_json::from_str(r#"{"d": 1.5, "s": 100}"#).unwrap();
        assert_eq!((l.d, l.s), (Duration::from_millis(1500), 100));
        for bad in [
            r#"{"d": -1, "s": 1}"#,
            r#"{"d": "5x", "s": 1}"#,
            r#"{"d": 1, "s": 1.5}"#,
            r#"{"d": 1e300, "s": 1}"#,
        ] {
            assert!(serde_json::from_str::<Limits>(bad).is_err(), "{bad}");
        }
    }
}
