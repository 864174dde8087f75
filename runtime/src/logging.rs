//! Log lines in the reference's format, on stderr:
//!
//! `2024-09-06 16:26:50,299 my-agent INFO: DEVICE CONNECTOR: BEGIN provision`
//!
//! Everything the runtime and the connectors log goes through `tracing`; a
//! formatter renders the events of this crate in that format and drops the
//! chatter of dependencies. The agent name is only known once the device
//! config is read, so it lives in a global that is set once.

use std::fmt::Write as _;
use std::io::Write as _;
use std::sync::OnceLock;

use tracing::field::{Field, Visit};
use tracing::{Event, Level, Subscriber};
use tracing_subscriber::fmt::format::Writer;
use tracing_subscriber::fmt::{FmtContext, FormatEvent, FormatFields};
use tracing_subscriber::layer::SubscriberExt;
use tracing_subscriber::registry::LookupSpan;
use tracing_subscriber::util::SubscriberInitExt;

/// Target used for lines a connector logs through the `log` interface.
pub const GUEST_TARGET: &str = "tfdc::guest";

static AGENT_NAME: OnceLock<String> = OnceLock::new();

/// Sets the agent name shown in every following line (first call wins).
pub fn set_agent_name(name: &str) {
    let _ = AGENT_NAME.set(name.to_string());
}

fn agent_name() -> &'static str {
    AGENT_NAME.get().map(String::as_str).unwrap_or("")
}

/// The reference's level names (Python's `logging`).
pub fn level_name(level: &Level) -> &'static str {
    match *level {
        Level::ERROR => "ERROR",
        Level::WARN => "WARNING",
        Level::INFO => "INFO",
        Level::DEBUG => "DEBUG",
        Level::TRACE => "TRACE",
    }
}

/// Renders one line: timestamp, agent name, level, the fixed
/// `DEVICE CONNECTOR:` marker, the message, then any structured fields as
/// `key=value` (audit lines use those).
pub fn format_line(level: &Level, message: &str, fields: &[(String, String)]) -> String {
    let now = chrono::Local::now();
    let mut line = format!(
        "{} {} {}: DEVICE CONNECTOR: {}",
        now.format("%Y-%m-%d %H:%M:%S,%3f"),
        agent_name(),
        level_name(level),
        message
    );
    for (key, value) in fields {
        let _ = write!(line, " {key}={value}");
    }
    line
}

#[derive(Default)]
struct Fields {
    message: String,
    rest: Vec<(String, String)>,
}

impl Visit for Fields {
    fn record_str(&mut self, field: &Field, value: &str) {
        if field.name() == "message" {
            self.message = value.to_string();
        } else {
            self.rest
                .push((field.name().to_string(), value.to_string()));
        }
    }

    fn record_debug(&mut self, field: &Field, value: &dyn std::fmt::Debug) {
        if field.name() == "message" {
            self.message = format!("{value:?}");
        } else {
            self.rest
                .push((field.name().to_string(), format!("{value:?}")));
        }
    }
}

struct ReferenceFormat;

impl<S, N> FormatEvent<S, N> for ReferenceFormat
where
    S: Subscriber + for<'a> LookupSpan<'a>,
    N: for<'a> FormatFields<'a> + 'static,
{
    fn format_event(
        &self,
        _ctx: &FmtContext<'_, S, N>,
        mut writer: Writer<'_>,
        event: &Event<'_>,
    ) -> std::fmt::Result {
        let mut fields = Fields::default();
        event.record(&mut fields);
        let line = format_line(event.metadata().level(), &fields.message, &fields.rest);
        writeln!(writer, "{line}")
    }
}

/// Installs the stderr formatter. `debug` lowers the threshold from INFO to
/// DEBUG (the reference drops DEBUG lines). Only this crate's events are
/// shown: dependencies (russh, hyper, wasmtime) stay quiet.
pub fn init(debug: bool) {
    let max = if debug { Level::DEBUG } else { Level::INFO };
    let filter = tracing_subscriber::filter::filter_fn(move |meta| {
        meta.target().starts_with("tfdc") && *meta.level() <= max
    });
    let layer = tracing_subscriber::fmt::layer()
        .event_format(ReferenceFormat)
        .with_writer(std::io::stderr)
        .with_filter(filter);
    use tracing_subscriber::Layer as _;
    let _ = tracing_subscriber::registry().with(layer).try_init();
}

/// Writes `text` to stdout as it is and flushes, so that it interleaves
/// correctly with log lines when the agent merges both streams.
pub fn print(text: &str) {
    let mut out = std::io::stdout().lock();
    let _ = out.write_all(text.as_bytes());
    let _ = out.flush();
}

/// Like [`print`] for raw bytes (test command output).
pub fn print_bytes(bytes: &[u8]) {
    let mut out = std::io::stdout().lock();
    let _ = out.write_all(bytes);
    let _ = out.flush();
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn line_has_the_reference_shape() {
        let line = format_line(&Level::WARN, "hello", &[("k".into(), "v".into())]);
        let re = regex::Regex::new(
            r"^\d{4}-\d\d-\d\d \d\d:\d\d:\d\d,\d{3} \S* ?WARNING: DEVICE CONNECTOR: hello k=v$",
        )
        .unwrap();
        assert!(re.is_match(&line), "{line}");
    }
}
