//! The hooks every reference connector runs at the start of `provision`.

use std::time::Duration;

use crate::error::Result;
use crate::{http, job, log, power};

/// How long the control host may take to come back after its power cycle
/// (reference: 300 s).
pub const CONTROL_HOST_BACK_TIMEOUT: Duration = Duration::from_secs(300);

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
    if job::config_str("control_host")?.is_none() {
        return Ok(());
    }
    power::cycle_control_host(manage_dut_power, CONTROL_HOST_BACK_TIMEOUT)?;
    let mut req =
        http::Request::post("/api/v1/system/setup/provisioning").timeout(Duration::from_secs(10));
    if let Some(body) = setup_body {
        req = req
            .header("content-type", "application/json")
            .body(body.as_bytes().to_vec());
    }
    if let Err(e) = http::call("control-host", req) {
        log::debug(&format!("control host setup/provisioning failed: {e}"));
    }
    Ok(())
}
