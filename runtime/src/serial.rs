//! Serial console capture (PLACEHOLDER API: being implemented on branch
//! `serial-transfer`; signatures are the contract other modules code
//! against).

use std::time::Duration;

use crate::config::DeviceConfig;
use crate::host::HostError;
use crate::rundir::RunDir;
use crate::stage::Stage;

/// Why a serial operation failed.
#[derive(Debug, thiserror::Error)]
pub enum SerialError {
    #[error("{0}")]
    Unsupported(String),
}

impl From<SerialError> for HostError {
    fn from(e: SerialError) -> Self {
        HostError::unsupported(e.to_string())
    }
}

/// The stage's serial consoles.
pub struct SerialHub {}

/// Keeps a capture running until dropped.
pub struct CaptureGuard {}

/// An open console.
pub struct SerialPort {}

impl SerialHub {
    /// Reads `serial_host`/`serial_port`; the capture file is
    /// `<run dir>/<stage>-serial.log`.
    pub fn new(_config: &DeviceConfig, _rundir: &RunDir, _stage: Stage) -> Self {
        SerialHub {}
    }

    /// Whether the device has a serial console configured.
    pub fn configured(&self) -> bool {
        false
    }

    /// Starts capturing into the log file (no-op `None` when no console is
    /// configured); the capture runs until the guard is dropped.
    pub fn capture(&self) -> Option<CaptureGuard> {
        None
    }

    /// Opens the console `name` (`console`) for wait-for and write; also
    /// captures while open.
    pub fn open(&self, name: &str) -> Result<SerialPort, SerialError> {
        Err(SerialError::Unsupported(format!(
            "serial {name} not implemented yet"
        )))
    }
}

impl SerialPort {
    /// Waits until the regex `pattern` matches output received since open
    /// or since the previous match.
    pub async fn wait_for(
        &self,
        _pattern: &str,
        _timeout: Duration,
    ) -> Result<String, SerialError> {
        Err(SerialError::Unsupported("not implemented yet".into()))
    }

    /// Sends `data` to the device.
    pub async fn write(&self, _data: &[u8], _timeout: Duration) -> Result<(), SerialError> {
        Err(SerialError::Unsupported("not implemented yet".into()))
    }
}
