//! The lab's power and switch command lists, named by device-config key.
//!
//! ```no_run
//! use testflinger_connector::prelude::*;
//! # fn f() -> PhaseResult<()> {
//! power::run("reboot_script").map_err(PhaseError::recovery)?;
//! # Ok(()) }
//! ```

use std::time::Duration;

use crate::bindings::testflinger::connector::power as wit;
use crate::error::Result;

pub use wit::ExecStyle;

/// Deadline of each entry of `reboot_script` in the reference.
pub const REBOOT_TIMEOUT: Duration = Duration::from_secs(120);

/// Runs the list `key` the way the reference runs `reboot_script`: each
/// entry split on whitespace, no shell, 120 s each.
pub fn run(key: &str) -> Result<()> {
    run_with(key, ExecStyle::Split, REBOOT_TIMEOUT)
}

/// Runs the list `key` with an explicit style and per-entry deadline.
pub fn run_with(key: &str, style: ExecStyle, timeout_per_entry: Duration) -> Result<()> {
    Ok(wit::run(
        key,
        wit::RunOptions {
            style,
            timeout_per_entry: timeout_per_entry.as_millis() as u64,
        },
    )?)
}

/// Power cycles the control host (the pre-provision hook's first part).
pub fn cycle_control_host(manage_dut_power: bool, timeout: Duration) -> Result<()> {
    Ok(wit::cycle_control_host(
        manage_dut_power,
        timeout.as_millis() as u64,
    )?)
}
