//! The standard `provision` frame, in the reference's order (every
//! connector's `provision` in `devices/*/__init__.py`):
//!
//! 1. check the job and the device config (`validate`, given the
//!    [`Config`]), so that a job that cannot work fails before anything is
//!    touched;
//! 2. the pre-provision hook ([`crate::hooks`], §3.3): the control host's
//!    power cycle (with the device's power when
//!    [`Frame::manage_dut_power`]), `Setting up provisioning on control
//!    host <host>`, the `setup/provisioning` request;
//! 3. `BEGIN provision`;
//! 4. with [`Frame::capture_console`], the serial console captured into
//!    `provision-serial.log` for the whole body (a device without one is
//!    fine);
//! 5. the body;
//! 6. `END provision` when the body succeeded (the reference logs it only
//!    then, except maas2: [`Frame::end_after_failure`]).
//!
//! Errors of `validate` and the body become the phase's error with `?`
//! (host errors are failures, exit 1).
//!
//! ```
//! use testflinger_connector::prelude::*;
//! use testflinger_connector::testing::FakeHost;
//!
//! let host = FakeHost::new().config(serde_json::json!({"device_ip": "10.0.0.5"})).install();
//! let result = provision::Frame::new().run(
//!     |cfg| cfg.text("device_ip").required("<address>"),
//!     |ip| {
//!         info!("Provisioning {ip}");
//!         Ok(())
//!     },
//! );
//! assert!(result.is_ok());
//! assert_eq!(
//!     host.log(),
//!     ["INFO Running pre-provision hook", "DEBUG No control host configured for this agent.",
//!      "INFO BEGIN provision", "INFO Provisioning 10.0.0.5", "INFO END provision"]
//! );
//! ```

use serde::Serialize;

use crate::config::Config;
use crate::error::{PhaseError, PhaseResult};
use crate::{hooks, log, serial};

/// How a connector's `provision` is framed; [`Frame::run`] runs it.
#[derive(Debug, Clone, Default)]
#[must_use = "a frame does nothing until `run`"]
pub struct Frame {
    manage_dut_power: bool,
    setup_body: Option<String>,
    console: bool,
    end_after_failure: bool,
}

impl Frame {
    /// The reference's defaults: the device's power is not managed during
    /// the control host's power cycle, no setup body, no console capture.
    pub fn new() -> Self {
        Frame::default()
    }

    /// Keep the device off while the control host reboots (the reference's
    /// `MANAGE_DUT_POWER_DURING_REBOOT`: muxpi, control_host_iot).
    pub fn manage_dut_power(mut self) -> Self {
        self.manage_dut_power = true;
        self
    }

    /// Send `body` with the `setup/provisioning` request (the reference's
    /// `SETUP_PROVISIONING_DATA`: oemrecovery's `{"usb": "DUT"}`).
    pub fn setup_body<T: Serialize>(mut self, body: &T) -> Self {
        // A serde value that cannot be JSON (a map with non-string keys)
        // is a connector bug; sending no body is the hook's best effort.
        self.setup_body = serde_json::to_string(body).ok();
        self
    }

    /// Capture the serial console into `provision-serial.log` while the
    /// body runs (cm3, dragonboard, maas2, muxpi, netboot,
    /// control_host_iot).
    pub fn capture_console(mut self) -> Self {
        self.console = true;
        self
    }

    /// Log `END provision` after a failed body too (maas2 does).
    pub fn end_after_failure(mut self) -> Self {
        self.end_after_failure = true;
        self
    }

    /// Runs `validate` on the device config, the hook, and `body` with what
    /// `validate` returned (see the module documentation for the order).
    pub fn run<V, E>(
        self,
        validate: impl FnOnce(&Config) -> Result<V, E>,
        body: impl FnOnce(V) -> PhaseResult<()>,
    ) -> PhaseResult<()>
    where
        E: Into<PhaseError>,
    {
        let checked = validate(&Config::load()?).map_err(Into::into)?;
        hooks::pre_provision_with(self.manage_dut_power, self.setup_body.as_deref())?;
        log::info("BEGIN provision");
        let console = if self.console {
            serial::capture("console")
        } else {
            None
        };
        let result = body(checked);
        // The capture ends with the body, before the END line.
        drop(console);
        if result.is_ok() || self.end_after_failure {
            log::info("END provision");
        }
        result
    }
}
