//! `noprovision` (reference §4.10): for devices that cannot be re-imaged.
//! Provisioning only guarantees the device answers over SSH: if it does
//! not, `reboot_script` power cycles it and the connector waits for it to
//! come back.

use std::time::Duration;

use testflinger_connector::prelude::*;

/// The reference waits 60 s after the reboot, then retries for 300 s; the
/// same upper bound, polled from the start so a fast device is used early.
const BOOT_TIMEOUT: Duration = Duration::from_secs(360);

/// The connector.
pub struct Noprovision;

impl Connector for Noprovision {
    fn new() -> Self {
        Noprovision
    }

    fn provision(&mut self) -> PhaseResult<()> {
        hooks::pre_provision(false)?;
        info!("BEGIN provision");
        info!("Booting the test image");
        // One login attempt first: a reachable device is left alone.
        if let Err(first) = ssh::wait_reachable("device", Duration::ZERO) {
            if !matches!(
                first.kind(),
                ErrorKind::Timeout | ErrorKind::Io | ErrorKind::Failed
            ) {
                // Not configured, denied ...: rebooting would not help.
                return Err(first.into());
            }
            info!("Device is not reachable ({first}); running reboot_script");
            power::run("reboot_script").map_err(PhaseError::recovery_on_timeout)?;
            ssh::wait_reachable("device", BOOT_TIMEOUT)
                .map_err(|e| PhaseError::failed(format!("Failed to boot test image! ({e})")))?;
        }
        info!("END provision");
        Ok(())
    }
}

export_connector!(Noprovision);
