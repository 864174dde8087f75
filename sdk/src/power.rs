//! The lab's power and switch command lists, named by device-config key.
//!
//! ```no_run
//! use testflinger_connector::prelude::*;
//! # fn f() -> PhaseResult<()> {
//! // The reference's `hardreset()`: `Running <entry>` for each entry of
//! // reboot_script, then the list, split on whitespace, 120 s per entry.
//! power::hardreset().map_err(PhaseError::recovery_on_timeout)?;
//! // Any other list of the device config.
//! power::run("control_host_reboot_script")?;
//! # Ok(()) }
//! ```

use std::time::Duration;

use crate::config::Config;
use crate::error::Result;
use crate::{log, sys};

pub use crate::bindings::testflinger::connector::power::ExecStyle;

/// Deadline of each entry of `reboot_script` in the reference.
pub const REBOOT_TIMEOUT: Duration = Duration::from_secs(120);

/// Runs the list `key` the way the reference runs `reboot_script`: each
/// entry split on whitespace, no shell, 120 s each.
pub fn run(key: &str) -> Result<()> {
    run_with(key, ExecStyle::Split, REBOOT_TIMEOUT)
}

/// Runs the list `key` with an explicit style and per-entry deadline.
pub fn run_with(key: &str, style: ExecStyle, timeout_per_entry: Duration) -> Result<()> {
    sys::power_run(key, style, timeout_per_entry)
}

/// Power cycles the device with `reboot_script`, as every reference
/// connector's `hardreset()` does: logs `Running <entry>` for each entry,
/// then runs the list (split on whitespace, no shell, 120 s each, stopping
/// at the first failure).
///
/// Errors: `not-found` (naming the key to add) when the device config has
/// no `reboot_script`, `timeout` when an entry outlives its deadline,
/// `failed` when one exits non-zero. How a failure ends the phase differs
/// per reference connector (§3.1), so it is the caller's to map:
/// `PhaseError::recovery_on_timeout` for noprovision and dragonboard, a
/// recovery for any failure for muxpi, cm3 and netboot ...
pub fn hardreset() -> Result<()> {
    let entries = Config::load()?
        .commands("reboot_script")
        .why("it power cycles the device")
        .required("[<command that power cycles the device>]")?;
    // The host runs the whole list; the lines come first, in order.
    for entry in &entries {
        log::info(&format!("Running {entry}"));
    }
    run("reboot_script")
}

/// Power cycles the control host (the pre-provision hook's first part).
pub fn cycle_control_host(manage_dut_power: bool, timeout: Duration) -> Result<()> {
    sys::cycle_control_host(manage_dut_power, timeout)
}
