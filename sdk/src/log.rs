//! Log lines (the agent's stderr, reference format) and stdout text.
//!
//! ```no_run
//! use testflinger_connector::prelude::*;
//! info!("BEGIN provision");
//! warn!("{} retries left", 3);
//! log::print("raw text for the job's stdout\n");
//! ```

use crate::sys;

pub use crate::bindings::testflinger::connector::log::Level;

/// Logs `message` at `level`.
pub fn log(level: Level, message: &str) {
    sys::log(level, message);
}

/// Logs at DEBUG (dropped unless the runtime runs with `--debug`).
pub fn debug(message: &str) {
    sys::log(Level::Debug, message);
}

/// Logs at INFO.
pub fn info(message: &str) {
    sys::log(Level::Info, message);
}

/// Logs at WARNING.
pub fn warn(message: &str) {
    sys::log(Level::Warning, message);
}

/// Logs at ERROR.
pub fn error(message: &str) {
    sys::log(Level::Error, message);
}

/// Writes `text` to the job's stdout as it is.
pub fn print(text: &str) {
    sys::print(text);
}

/// Logs a formatted line at INFO.
#[macro_export]
macro_rules! info {
    ($($arg:tt)*) => { $crate::log::info(&::std::format!($($arg)*)) };
}

/// Logs a formatted line at WARNING.
#[macro_export]
macro_rules! warn {
    ($($arg:tt)*) => { $crate::log::warn(&::std::format!($($arg)*)) };
}

/// Logs a formatted line at ERROR.
#[macro_export]
macro_rules! error {
    ($($arg:tt)*) => { $crate::log::error(&::std::format!($($arg)*)) };
}

/// Logs a formatted line at DEBUG.
#[macro_export]
macro_rules! debug {
    ($($arg:tt)*) => { $crate::log::debug(&::std::format!($($arg)*)) };
}
