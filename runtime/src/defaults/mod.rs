//! What the runtime does natively when a connector returns `unsupported`
//! for a stage: the reference's default behaviour of each stage.

pub mod reserve;
pub mod runtest;
pub mod shell;
pub mod ssh_keys;
pub mod template;

use std::sync::Arc;
use std::time::Duration;

use crate::context::StageContext;
use crate::error::StageError;
use crate::stage::Stage;

/// Runs the native default of `cx.stage` and returns the exit status.
pub async fn run(cx: &Arc<StageContext>) -> Result<u8, StageError> {
    match cx.stage {
        Stage::Provision => {
            // The reference's base provision only runs the control-host hook.
            tracing::info!(target: "tfdc::defaults", "Running pre-provision hook");
            crate::control_host::power_cycle(&cx.config, &cx.http, false, Duration::from_secs(300))
                .await
                .map_err(|e| StageError::failed("TimeoutError", e.to_string()))?;
            crate::control_host::setup(&cx.config, &cx.http, "provisioning", None).await;
            Ok(0)
        }
        Stage::FirmwareUpdate => Err(StageError::failed(
            "FirmwareUpdateError",
            format!(
                "firmware_update is not supported by provision type {} yet",
                cx.provision_type
            ),
        )),
        Stage::Runtest => runtest::run(cx).await,
        // device-info.json was written at start-up, which is all allocate
        // has to do (the reference's allocate crashes with a TypeError).
        Stage::Allocate => Ok(0),
        Stage::Reserve => reserve::run(cx).await,
        Stage::Cleanup => Ok(0),
    }
}
