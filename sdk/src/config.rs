//! Typed access to the device config (`default.yaml`, as the connector
//! sees it: secret values removed) and to mappings of the job
//! (`provision_data` ...), read once per stage. Each key is read as a
//! [`Field`] of a type and then made required, optional or defaulted;
//! every error names the key, the device (`agent_name`, else `device_ip`)
//! and the fix, and is an [`Error`] of kind `not-found` (missing) or
//! `invalid` (malformed) that `?` turns into a clear failed phase.
//!
//! ```
//! use std::time::Duration;
//! use serde_json::json;
//! use testflinger_connector::config::Config;
//!
//! let cfg = Config::from_device_json(json!({
//!     "agent_name": "pi-1",
//!     "control_host": "10.0.0.2",
//!     "muxpi_poll_seconds": "2m30s",
//!     "post_provision_script": ["sync", "echo done"],
//! }));
//! let host = cfg.text("control_host").required("<address>").unwrap();
//! let poll = cfg.duration("muxpi_poll_seconds").at_least(Duration::from_millis(10)).or(Duration::from_secs(2)).unwrap();
//! let post = cfg.commands("post_provision_script").or_default().unwrap();
//! let reset = cfg.flag("reset_efi").or(false).unwrap();
//! assert_eq!((host.as_str(), poll, post.len(), reset), ("10.0.0.2", Duration::from_secs(150), 2, false));
//!
//! let err = cfg.text("test_device").why("the block device to flash").required("/dev/sda").unwrap_err();
//! assert_eq!(
//!     err.to_string(),
//!     "`test_device` is not set in the device config of pi-1 (the block device to flash); \
//!      add `test_device: /dev/sda` to the device config (default.yaml)"
//! );
//! let err = Config::from_device_json(json!({"device_ip": "10.0.0.3", "reset_efi": "yes"}))
//!     .flag("reset_efi").or(false).unwrap_err();
//! assert_eq!(
//!     err.to_string(),
//!     "`reset_efi` in the device config of 10.0.0.3 must be true or false, found \"yes\"; \
//!      fix it in the device config (default.yaml)"
//! );
//! ```

use std::fmt;
use std::rc::Rc;
use std::time::Duration;

use serde_json::{Map, Value};

use crate::error::{Error, ErrorKind, Result};
use crate::sys;
use crate::units::{human_duration, parse_duration};

/// Characters of a malformed value quoted in messages.
const FOUND_CHARS: usize = 80;

/// Where a [`Config`]'s keys come from (for messages).
#[derive(Debug, Clone, PartialEq, Eq)]
enum Source {
    /// The device config of the named device.
    Device(String),
    /// A mapping of the job (`provision_data`).
    Job(String),
}

/// A mapping of settings: the device config, or a mapping of the job.
#[derive(Debug, Clone)]
pub struct Config {
    values: Rc<Value>,
    source: Source,
}

impl Config {
    /// The stage's device config (read from the host once per stage).
    pub fn load() -> Result<Config> {
        Ok(Config::device(sys::device_config()?))
    }

    /// The job's `section` (`provision_data` ...): a mapping, or empty when
    /// the job has none (absent or null).
    pub fn job_section(section: &str) -> Result<Config> {
        let job = sys::job()?;
        Config::from_job_json(section, job.get(section).cloned().unwrap_or(Value::Null))
    }

    /// A device config given as JSON (for pure parsing and tests).
    pub fn from_device_json(value: Value) -> Config {
        Config::device(Rc::new(value))
    }

    /// A job mapping `section` given as JSON; `invalid` unless it is a
    /// mapping or null.
    pub fn from_job_json(section: &str, value: Value) -> Result<Config> {
        let values = match value {
            Value::Null => Value::Object(Map::new()),
            Value::Object(_) => value,
            other => {
                return Err(Error::new(
                    ErrorKind::Invalid,
                    format!(
                        "`{section}` in the job must be a mapping, found {}",
                        found(&other)
                    ),
                ));
            }
        };
        Ok(Config {
            values: Rc::new(values),
            source: Source::Job(section.to_string()),
        })
    }

    fn device(values: Rc<Value>) -> Config {
        let name = ["agent_name", "device_ip"]
            .iter()
            .find_map(|k| match values.get(*k) {
                Some(Value::String(s)) if !s.trim().is_empty() => Some(s.trim().to_string()),
                Some(Value::Number(n)) => Some(n.to_string()),
                _ => None,
            })
            .unwrap_or_else(|| "this device".to_string());
        Config {
            values,
            source: Source::Device(name),
        }
    }

    /// The device's name in messages: `agent_name`, else `device_ip`, else
    /// `this device` (for a job mapping: the section's name).
    pub fn name(&self) -> &str {
        match &self.source {
            Source::Device(n) | Source::Job(n) => n,
        }
    }

    /// The value of `key`, unless absent or null.
    pub fn raw(&self, key: &str) -> Option<&Value> {
        self.values.get(key).filter(|v| !v.is_null())
    }

    /// Whether `key` is set (not absent, not null).
    pub fn has(&self, key: &str) -> bool {
        self.raw(key).is_some()
    }

    /// A string (numbers are rendered), trimmed; blank counts as absent.
    pub fn text<'a>(&'a self, key: &'a str) -> Field<'a, String> {
        Field::new(self, key, Kind::Text { trim: true }, parse_text)
    }

    /// A string exactly as written (user data, scripts); blank counts as
    /// absent.
    pub fn string<'a>(&'a self, key: &'a str) -> Field<'a, String> {
        Field::new(self, key, Kind::Text { trim: false }, parse_text)
    }

    /// `true` or `false`.
    pub fn flag<'a>(&'a self, key: &'a str) -> Field<'a, bool> {
        Field::new(self, key, Kind::Flag, |_, v| {
            v.as_bool().map(Some).ok_or(())
        })
    }

    /// A number (or a string holding one).
    pub fn number<'a>(&'a self, key: &'a str) -> Field<'a, f64> {
        Field::new(self, key, Kind::Number, parse_number)
    }

    /// A duration: seconds as a number or numeric string (`90`, `"1.5"`),
    /// or a duration string (`"2m30s"`, `"1h"`).
    pub fn duration<'a>(&'a self, key: &'a str) -> Field<'a, Duration> {
        Field::new(self, key, Kind::Duration, parse_duration_value)
    }

    /// A list of command strings (YAML `key: ["cmd 1", "cmd 2"]`).
    pub fn commands<'a>(&'a self, key: &'a str) -> Field<'a, Vec<String>> {
        Field::new(self, key, Kind::Commands, parse_commands)
    }

    /// Any value (not null), as JSON.
    pub fn value<'a>(&'a self, key: &'a str) -> Field<'a, Value> {
        Field::new(self, key, Kind::Value, |_, v| Ok(Some(v.clone())))
    }

    fn key_name(&self, key: &str) -> String {
        match &self.source {
            Source::Device(_) => format!("`{key}`"),
            Source::Job(section) => format!("`{section}.{key}`"),
        }
    }

    /// The error for a missing `key`: `example` is what to write as its
    /// value (`<address>`, `/dev/sda`), `why` (may be empty) what it is
    /// for.
    pub fn missing(&self, key: &str, example: &str, why: &str) -> Error {
        let why = if why.is_empty() {
            String::new()
        } else {
            format!(" ({why})")
        };
        let message = match &self.source {
            Source::Device(device) => format!(
                "`{key}` is not set in the device config of {device}{why}; add `{key}: {example}` to the device config (default.yaml)"
            ),
            Source::Job(section) => format!(
                "`{section}.{key}` is not set in the job{why}; add `{key}: {example}` to the job's {section}"
            ),
        };
        Error::new(ErrorKind::NotFound, message)
    }

    /// The error for a malformed `key`: `expected` says what it must be
    /// (`true or false`), `value` is what it is.
    pub fn invalid(&self, key: &str, expected: &str, value: &Value) -> Error {
        let found = found(value);
        let message = match &self.source {
            Source::Device(device) => format!(
                "`{key}` in the device config of {device} must be {expected}, found {found}; fix it in the device config (default.yaml)"
            ),
            Source::Job(_) => format!(
                "{} in the job must be {expected}, found {found}",
                self.key_name(key)
            ),
        };
        Error::new(ErrorKind::Invalid, message)
    }
}

/// A value quoted in a message: JSON, cut short.
fn found(value: &Value) -> String {
    let text = value.to_string();
    match text.char_indices().nth(FOUND_CHARS) {
        Some((cut, _)) => format!("{}...", &text[..cut]),
        None => text,
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Kind {
    Text { trim: bool },
    Flag,
    Number,
    Duration,
    Commands,
    Value,
}

/// A bound of a number or duration field, in seconds for durations.
#[derive(Debug, Clone, Copy, PartialEq)]
struct Bound {
    value: f64,
    inclusive: bool,
}

/// What a field is and how it is checked (the part of a [`Field`] that
/// does not depend on its type).
struct Spec<'a> {
    key: &'a str,
    kind: Kind,
    why: String,
    low: Option<Bound>,
    high: Option<Bound>,
    choices: &'a [&'a str],
}

/// Parses a present value: `Ok(None)` counts as absent (a blank string),
/// `Err` is malformed.
type Parse<T> = fn(&Spec<'_>, &Value) -> core::result::Result<Option<T>, ()>;

/// One key of a [`Config`], read as `T`. Finish it with
/// [`Field::required`], [`Field::optional`] or [`Field::or`].
#[must_use = "a field is read by `required`, `optional` or `or`"]
pub struct Field<'a, T> {
    cfg: &'a Config,
    spec: Spec<'a>,
    parse: Parse<T>,
}

impl<'a, T> Field<'a, T> {
    fn new(cfg: &'a Config, key: &'a str, kind: Kind, parse: Parse<T>) -> Self {
        Field {
            cfg,
            spec: Spec {
                key,
                kind,
                why: String::new(),
                low: None,
                high: None,
                choices: &[],
            },
            parse,
        }
    }

    /// What the key is for, shown when it is missing.
    pub fn why(mut self, why: impl fmt::Display) -> Self {
        self.spec.why = why.to_string();
        self
    }

    /// The value when set; `not-found` naming `example` (the value to
    /// write, `<address>`) when not.
    pub fn required(self, example: &str) -> Result<T> {
        self.optional()?
            .ok_or_else(|| self.cfg.missing(self.spec.key, example, &self.spec.why))
    }

    /// The value when set, `None` when absent, null or blank.
    pub fn optional(&self) -> Result<Option<T>> {
        let Some(value) = self.cfg.raw(self.spec.key) else {
            return Ok(None);
        };
        (self.parse)(&self.spec, value).map_err(|()| {
            self.cfg
                .invalid(self.spec.key, &self.spec.expected(), value)
        })
    }

    /// The value when set, `default` when not (a default is not checked
    /// against the bounds).
    pub fn or(self, default: T) -> Result<T> {
        Ok(self.optional()?.unwrap_or(default))
    }

    /// The value when set, `T::default()` when not.
    pub fn or_default(self) -> Result<T>
    where
        T: Default,
    {
        Ok(self.optional()?.unwrap_or_default())
    }
}

impl Spec<'_> {
    fn expected(&self) -> String {
        let base = match self.kind {
            Kind::Text { .. } if !self.choices.is_empty() => {
                let quoted: Vec<String> = self.choices.iter().map(|c| format!("{c:?}")).collect();
                match quoted.split_last() {
                    Some((last, [])) => last.clone(),
                    Some((last, rest)) => format!("{} or {last}", rest.join(", ")),
                    None => String::new(),
                }
            }
            Kind::Text { .. } => "a string".to_string(),
            Kind::Flag => "true or false".to_string(),
            Kind::Number => "a number".to_string(),
            Kind::Duration => "a number of seconds or a duration like \"2m30s\"".to_string(),
            Kind::Commands => format!(
                "a list of command strings (`{}: [\"<command>\", ...]`)",
                self.key
            ),
            Kind::Value => "a value".to_string(),
        };
        let show = |b: Bound| match self.kind {
            Kind::Duration => {
                human_duration(Duration::try_from_secs_f64(b.value).unwrap_or_default())
            }
            _ => b.value.to_string(),
        };
        match (self.low, self.high) {
            (Some(lo), Some(hi)) => format!("{base} between {} and {}", show(lo), show(hi)),
            (Some(lo), None) if lo.inclusive => format!("{base} of at least {}", show(lo)),
            (Some(lo), None) => format!("{base} above {}", show(lo)),
            (None, Some(hi)) => format!("{base} of at most {}", show(hi)),
            (None, None) => base,
        }
    }

    fn in_bounds(&self, x: f64) -> bool {
        let low = self.low.is_none_or(|b| {
            if b.inclusive {
                x >= b.value
            } else {
                x > b.value
            }
        });
        let high = self.high.is_none_or(|b| x <= b.value);
        x.is_finite() && low && high
    }
}

fn parse_text(spec: &Spec<'_>, value: &Value) -> core::result::Result<Option<String>, ()> {
    let text = match value {
        Value::String(s) => s.clone(),
        Value::Number(n) => n.to_string(),
        _ => return Err(()),
    };
    if text.trim().is_empty() {
        return Ok(None);
    }
    let text = match spec.kind {
        Kind::Text { trim: true } => text.trim().to_string(),
        _ => text,
    };
    if !spec.choices.is_empty() && !spec.choices.contains(&text.as_str()) {
        return Err(());
    }
    Ok(Some(text))
}

fn parse_number(spec: &Spec<'_>, value: &Value) -> core::result::Result<Option<f64>, ()> {
    let n = number(value).ok_or(())?;
    spec.in_bounds(n).then_some(Some(n)).ok_or(())
}

fn parse_duration_value(
    spec: &Spec<'_>,
    value: &Value,
) -> core::result::Result<Option<Duration>, ()> {
    let d = match value {
        // `"90"` and `"1.5"` are seconds; `"2m30s"` a duration.
        Value::String(s) if s.trim().parse::<f64>().is_err() => parse_duration(s).ok_or(())?,
        // `try_from`: a huge or negative number is malformed, not a panic.
        v => Duration::try_from_secs_f64(number(v).ok_or(())?).map_err(|_| ())?,
    };
    spec.in_bounds(d.as_secs_f64()).then_some(Some(d)).ok_or(())
}

fn parse_commands(_: &Spec<'_>, value: &Value) -> core::result::Result<Option<Vec<String>>, ()> {
    value
        .as_array()
        .ok_or(())?
        .iter()
        .map(|v| v.as_str().map(str::to_string).ok_or(()))
        .collect::<core::result::Result<Vec<_>, ()>>()
        .map(Some)
}

/// A number, or a string holding one.
fn number(value: &Value) -> Option<f64> {
    match value {
        Value::Number(n) => n.as_f64(),
        Value::String(s) => s.trim().parse().ok(),
        _ => None,
    }
}

impl<'a> Field<'a, String> {
    /// Only these values are accepted (`["sd", "usb"]`).
    pub fn one_of(mut self, choices: &'a [&'a str]) -> Self {
        self.spec.choices = choices;
        self
    }
}

impl Field<'_, f64> {
    /// At least `min`.
    pub fn at_least(mut self, min: f64) -> Self {
        self.spec.low = Some(Bound {
            value: min,
            inclusive: true,
        });
        self
    }

    /// More than `min`.
    pub fn above(mut self, min: f64) -> Self {
        self.spec.low = Some(Bound {
            value: min,
            inclusive: false,
        });
        self
    }

    /// At most `max`.
    pub fn at_most(mut self, max: f64) -> Self {
        self.spec.high = Some(Bound {
            value: max,
            inclusive: true,
        });
        self
    }
}

impl Field<'_, Duration> {
    /// At least `min`.
    pub fn at_least(mut self, min: Duration) -> Self {
        self.spec.low = Some(Bound {
            value: min.as_secs_f64(),
            inclusive: true,
        });
        self
    }

    /// At most `max`.
    pub fn at_most(mut self, max: Duration) -> Self {
        self.spec.high = Some(Bound {
            value: max.as_secs_f64(),
            inclusive: true,
        });
        self
    }
}

#[cfg(test)]
mod tests {
    use serde_json::json;

    use super::*;

    fn cfg(v: Value) -> Config {
        Config::from_device_json(v)
    }

    #[test]
    fn texts_render_numbers_and_treat_blank_as_absent() {
        let c = cfg(json!({"a": 12, "b": "  ", "c": " x ", "d": true}));
        assert_eq!(c.text("a").optional().unwrap().as_deref(), Some("12"));
        assert_eq!(c.text("b").optional().unwrap(), None);
        assert_eq!(c.text("c").optional().unwrap().as_deref(), Some("x"));
        assert_eq!(c.string("c").optional().unwrap().as_deref(), Some(" x "));
        let e = c.text("d").optional().unwrap_err();
        assert_eq!(e.kind(), ErrorKind::Invalid);
        assert!(e.message().contains("must be a string, found true"), "{e}");
        assert_eq!(c.name(), "this device");
    }

    #[test]
    fn durations_take_seconds_fractions_and_unit_strings() {
        let c = cfg(
            json!({"a": 90, "b": "90", "c": "2m30s", "d": 0.25, "e": "0.5", "f": "soon", "g": -1, "h": 1e300}),
        );
        let d = |k| c.duration(k).optional().unwrap().unwrap();
        assert_eq!(d("a"), Duration::from_secs(90));
        assert_eq!(d("b"), Duration::from_secs(90));
        assert_eq!(d("c"), Duration::from_secs(150));
        assert_eq!(d("d"), Duration::from_millis(250));
        assert_eq!(d("e"), Duration::from_millis(500));
        for bad in ["f", "g", "h"] {
            let e = c.duration(bad).optional().unwrap_err();
            assert!(e.message().contains(&format!("`{bad}`")), "{e}");
        }
        let e = c
            .duration("d")
            .at_least(Duration::from_secs(1))
            .optional()
            .unwrap_err();
        assert!(e.message().contains("of at least 1 s, found 0.25"), "{e}");
    }

    #[test]
    fn numbers_flags_and_bounds() {
        let c = cfg(json!({"agent_name": "np-1", "t": "0.05", "z": 0, "f": false}));
        assert_eq!(c.number("t").above(0.0).or(60.0).unwrap(), 0.05);
        let e = c.number("z").above(0.0).at_most(10.0).or(60.0).unwrap_err();
        assert!(e.message().contains("between 0 and 10, found 0"), "{e}");
        assert!(e.message().contains("device config of np-1"), "{e}");
        assert!(!c.flag("f").or(true).unwrap());
        assert_eq!(c.number("absent").or(60.0).unwrap(), 60.0);
    }

    #[test]
    fn command_lists_must_be_lists_of_strings() {
        let c = cfg(json!({"ok": ["a b", "c"], "one": "reboot", "mixed": ["a", 1], "none": null}));
        assert_eq!(c.commands("ok").required("[...]").unwrap(), ["a b", "c"]);
        for bad in ["one", "mixed"] {
            let e = c.commands(bad).optional().unwrap_err();
            assert!(e.message().contains("a list of command strings"), "{e}");
        }
        assert_eq!(
            c.commands("none").or_default().unwrap(),
            Vec::<String>::new()
        );
        let e = c.commands("none").required("[<command>]").unwrap_err();
        assert_eq!(e.kind(), ErrorKind::NotFound);
    }

    #[test]
    fn job_sections_name_the_section() {
        let pd = Config::from_job_json(
            "provision_data",
            json!({"media": "nvme", "create_user": "no"}),
        )
        .unwrap();
        let e = pd
            .text("media")
            .one_of(&["sd", "usb"])
            .optional()
            .unwrap_err();
        assert_eq!(
            e.message(),
            "`provision_data.media` in the job must be \"sd\" or \"usb\", found \"nvme\""
        );
        let e = pd.flag("create_user").or(true).unwrap_err();
        assert!(e.message().contains("provision_data.create_user"), "{e}");
        let e = pd.text("url").required("<image URL>").unwrap_err();
        assert!(
            e.message()
                .starts_with("`provision_data.url` is not set in the job"),
            "{e}"
        );
        let e = Config::from_job_json("provision_data", json!(["url"])).unwrap_err();
        assert!(e.message().contains("must be a mapping"), "{e}");
        assert!(
            Config::from_job_json("provision_data", Value::Null)
                .unwrap()
                .raw("x")
                .is_none()
        );
    }
}
