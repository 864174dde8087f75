//! The device's serial console. Opening it also captures everything it
//! prints into `<stage>-serial.log` until the port is dropped.
//!
//! ```no_run
//! use std::time::Duration;
//! use testflinger_connector::prelude::*;
//! # fn f() -> testflinger_connector::Result<()> {
//! let console = serial::open("console")?;
//! console.wait_for(r"login:\s*$", Duration::from_secs(600))?;
//! # Ok(()) }
//! ```

use std::time::Duration;

use crate::bindings::testflinger::connector::serial as wit;
use crate::error::Result;

/// An open console.
pub struct Port {
    inner: wit::Port,
}

impl Port {
    /// Waits until the regular expression `pattern` matches new output and
    /// returns the matched text.
    pub fn wait_for(&self, pattern: &str, timeout: Duration) -> Result<String> {
        Ok(self.inner.wait_for(pattern, timeout.as_millis() as u64)?)
    }

    /// Sends `data` to the device.
    pub fn write(&self, data: &[u8]) -> Result<()> {
        Ok(self.inner.write(data, 10_000)?)
    }
}

/// Opens the console named `name` (`console`).
pub fn open(name: &str) -> Result<Port> {
    Ok(Port {
        inner: wit::open(name)?,
    })
}
