//! The hook every reference connector runs at the start of `provision`
//! (reference §3.3). [`crate::provision::Frame`] runs it in its place;
//! call it directly only for a provision that cannot use the frame.

use std::time::Duration;

use crate::config::Config;
use crate::error::Result;
use crate::{http, log, power};

/// How long the control host may take to come back after its power cycle
/// (reference: 300 s).
pub const CONTROL_HOST_BACK_TIMEOUT: Duration = Duration::from_secs(300);
/// Deadline of the `setup/provisioning` request (reference: 10 s).
pub const SETUP_TIMEOUT: Duration = Duration::from_secs(10);

/// The pre-provision hook: when the device has a control host, power cycle
/// it (managing the device's power too when `manage_dut_power`), then ask
/// it to prepare for provisioning (best effort).
pub fn pre_provision(manage_dut_power: bool) -> Result<()> {
    pre_provision_with(manage_dut_power, None)
}

/// [`pre_provision`] with a JSON body for the control host's
/// `setup/provisioning` request (the reference's `SETUP_PROVISIONING_DATA`).
pub fn pre_provision_with(manage_dut_power: bool, setup_body: Option<&str>) -> Result<()> {
    log::info("Running pre-provision hook");
    let Some(host) = Config::load()?.text("control_host").optional()? else {
        log::debug("No control host configured for this agent.");
        return Ok(());
    };
    // A control host that does not come back fails the stage (the
    // reference's TimeoutError, exit 1); the rest only warns on the host.
    power::cycle_control_host(manage_dut_power, CONTROL_HOST_BACK_TIMEOUT)?;
    log::info(&format!("Setting up provisioning on control host {host}"));
    let mut req = http::Request::post("/api/v1/system/setup/provisioning").timeout(SETUP_TIMEOUT);
    if let Some(body) = setup_body {
        req = req
            .header("content-type", "application/json")
            .body(body.as_bytes().to_vec());
    }
    match http::call("control-host", req) {
        Ok(resp) if resp.is_success() => {}
        Ok(resp) => log::debug(&format!(
            "Could not set up provisioning on {host}: HTTP {}",
            resp.status
        )),
        Err(e) => log::debug(&format!("Could not set up provisioning on {host}: {e}")),
    }
    Ok(())
}
