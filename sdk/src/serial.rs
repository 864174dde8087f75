//! The device's serial console. Opening it also captures everything it
//! prints into `<stage>-serial.log` until the port is dropped.
//!
//! ```no_run
//! use std::time::Duration;
//! use testflinger_connector::prelude::*;
//! # fn f() -> testflinger_connector::Result<()> {
//! let console = serial::open("console")?;
//! console.wait_for(r"login:\s*$", Duration::from_secs(600))?;
//! // Only the log file, if the device has a console at all:
//! let _capture = serial::capture("console");
//! # Ok(()) }
//! ```

use std::time::Duration;

use crate::error::{ErrorKind, Result};
use crate::{log, sys};

/// An open console.
pub struct Port {
    inner: sys::Port,
}

impl std::fmt::Debug for Port {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Port").finish_non_exhaustive()
    }
}

impl Port {
    /// Waits until the regular expression `pattern` matches new output and
    /// returns the matched text.
    pub fn wait_for(&self, pattern: &str, timeout: Duration) -> Result<String> {
        self.inner.wait_for(pattern, timeout)
    }

    /// Sends `data` to the device.
    pub fn write(&self, data: &[u8]) -> Result<()> {
        self.inner.write(data, Duration::from_secs(10))
    }
}

/// Opens the console named `name` (`console`).
pub fn open(name: &str) -> Result<Port> {
    Ok(Port {
        inner: sys::serial_open(name)?,
    })
}

/// Starts capturing console `name` into `<stage>-serial.log`, as the
/// reference's serial logger does around provisioning; the capture lasts
/// as long as the port is kept. A device without a console is normal (a
/// DEBUG line); any other problem is a WARNING, never a failure.
pub fn capture(name: &str) -> Option<Port> {
    match open(name) {
        Ok(port) => Some(port),
        Err(e) if e.kind() == ErrorKind::NotFound => {
            log::debug(&format!("No serial console configured: {e}"));
            None
        }
        Err(e) => {
            log::warn(&format!("Not capturing the serial console: {e}"));
            None
        }
    }
}
