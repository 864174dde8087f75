//! Serial console capture (placeholder: being implemented).

use crate::config::DeviceConfig;
use crate::rundir::RunDir;
use crate::stage::Stage;

/// The stage's serial consoles.
pub struct SerialHub {}

impl SerialHub {
    pub fn new(_config: &DeviceConfig, _rundir: &RunDir, _stage: Stage) -> Self {
        SerialHub {}
    }
}
