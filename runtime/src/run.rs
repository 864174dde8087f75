//! One stage invocation, end to end: read the inputs, write
//! `device-info.json`, run the connector's export in a fresh sandbox (or
//! the native default when it returns `unsupported`), and turn the outcome
//! into files and an exit status.

use std::sync::Arc;

use serde_json::{Map, Value};
use wasmtime::Store;

use crate::bindings::types::PhaseError;
use crate::capability::Gate;
use crate::cli::StageArgs;
use crate::config::DeviceConfig;
use crate::connectors;
use crate::context::{ConnectorInfo, StageContext, StageSpec};
use crate::engine;
use crate::error::StageError;
use crate::host::HostState;
use crate::job_file::JobFile;
use crate::manifest;
use crate::rundir::RunDir;
use crate::stage::Stage;

/// Runs one stage and returns the process exit status. Every failure ends
/// up logged, in `device-connector-error.json`, and as status 1 or 46.
pub fn run_stage(args: StageArgs) -> u8 {
    crate::logging::init(args.debug);
    let stage = args.stage;
    let rundir = match RunDir::current() {
        Ok(r) => r,
        Err(e) => {
            tracing::error!(target: "tfdc::run", "cannot use the working directory as run directory: {e}");
            return crate::error::EXIT_FAILED;
        }
    };
    match run_inner(&args, &rundir) {
        Ok(code) => code,
        Err(err) => report_failure(&rundir, stage, &err),
    }
}

/// Logs a failed stage and records it for the agent.
pub fn report_failure(rundir: &RunDir, stage: Stage, err: &StageError) -> u8 {
    tracing::error!(target: "tfdc::run", "{}", err.message);
    if let Err(e) = rundir.record_error(stage, err) {
        tracing::error!(target: "tfdc::run", "cannot write {}: {e}", crate::rundir::ERROR_FILE);
    }
    err.exit_code()
}

/// The reference's `device-info.json`: `device_ip` and `agent_name`, each
/// only when set.
fn initial_device_info(config: &DeviceConfig) -> Map<String, Value> {
    let mut info = Map::new();
    if let Some(ip) = config.device_ip() {
        info.insert("device_ip".into(), ip.into());
    }
    let agent = config.agent_name();
    if !agent.is_empty() {
        info.insert("agent_name".into(), agent.into());
    }
    info
}

fn run_inner(args: &StageArgs, rundir: &RunDir) -> Result<u8, StageError> {
    let config = DeviceConfig::load(&args.config)
        .map_err(|e| StageError::failed("ConfigError", e.to_string()))?;
    crate::logging::set_agent_name(&config.agent_name());
    rundir
        .write_device_info(&initial_device_info(&config))
        .map_err(|e| {
            StageError::failed(
                "OSError",
                format!(
                    "cannot write device-info.json in {}: {e}",
                    rundir.root().display()
                ),
            )
        })?;
    let job = JobFile::load(&args.job_data)
        .map_err(|e| StageError::failed("JobDataError", e.to_string()))?;
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .map_err(|e| {
            StageError::failed("OSError", format!("cannot start the async runtime: {e}"))
        })?;
    let result = runtime.block_on(run_connector(args, config, job, rundir.clone()));
    // Background tasks (serial capture ...) must not keep the process alive.
    runtime.shutdown_timeout(std::time::Duration::from_millis(100));
    result
}

/// Exception name for a failed phase, after the reference's classes.
fn failure_name(stage: Stage) -> &'static str {
    match stage {
        Stage::Provision => "ProvisioningError",
        Stage::FirmwareUpdate => "FirmwareUpdateError",
        Stage::Runtest => "TestError",
        Stage::Allocate => "AllocateError",
        Stage::Reserve => "ReserveError",
        Stage::Cleanup => "CleanupError",
    }
}

async fn run_connector(
    args: &StageArgs,
    config: DeviceConfig,
    job: JobFile,
    rundir: RunDir,
) -> Result<u8, StageError> {
    let stage = args.stage;
    let fail = |name: &str, msg: String| StageError::failed(name, msg);
    let resolved = connectors::resolve(&args.provision_type, args.connector.as_deref())
        .map_err(|e| fail("ConnectorError", e.to_string()))?;
    let manifest = manifest::read(&resolved.bytes).map_err(|e| {
        fail(
            "ConnectorError",
            format!(
                "connector for {} ({}): {e}",
                args.provision_type, resolved.origin
            ),
        )
    })?;
    if !manifest
        .provision_types
        .iter()
        .any(|t| t == &args.provision_type)
    {
        tracing::warn!(target: "tfdc::run",
            "connector {} serves {:?}, not {}; running it because it was named explicitly",
            manifest.name, manifest.provision_types, args.provision_type);
    }
    let info = ConnectorInfo {
        name: manifest.name.clone(),
        version: manifest.version.clone(),
        digest: resolved.digest.clone(),
    };
    let gate = Gate::new(&manifest.name, manifest.declared(), None);
    let limits = config.runtime.limits.clone();
    let cx = StageContext::new(StageSpec {
        stage,
        provision_type: args.provision_type.clone(),
        connector: info,
        config,
        job,
        rundir,
        limits,
        gate,
    })
    .map_err(|e| fail("ConfigError", format!("{e:#}")))?;

    let cache_dir = engine::default_cache_dir();
    let (component, _) =
        engine::load_component(&resolved.bytes, &resolved.digest, cache_dir.as_deref()).map_err(
            |e| {
                fail(
                    "ConnectorError",
                    format!("cannot compile connector {}: {e:#}", manifest.name),
                )
            },
        )?;
    let outcome = call_phase(&cx, &component).await?;
    match outcome {
        Some(code) => Ok(code),
        None => crate::defaults::run(&cx).await,
    }
}

/// Instantiates the component in a fresh store and calls the stage's
/// export. `Ok(None)` means the connector returned `unsupported`.
async fn call_phase(
    cx: &Arc<StageContext>,
    component: &wasmtime::component::Component,
) -> Result<Option<u8>, StageError> {
    let name = cx.connector.name.clone();
    let fail = |msg: String| StageError::failed("ConnectorError", msg);
    let linker =
        engine::linker().map_err(|e| fail(format!("cannot set up host functions: {e:#}")))?;
    let pre = linker.instantiate_pre(component).map_err(|e| {
        fail(format!(
            "connector {name} does not fit this runtime (WIT testflinger:connector@{}): {e:#}",
            crate::bindings::WIT_VERSION
        ))
    })?;
    let pre = crate::bindings::ConnectorPre::new(pre).map_err(|e| {
        fail(format!(
            "connector {name} does not export the phases interface: {e:#}"
        ))
    })?;
    let mut store = Store::new(engine::engine(), HostState::new(cx.clone()));
    store.limiter(|s| &mut s.limits);
    store.set_epoch_deadline(1);
    store.epoch_deadline_async_yield_and_update(1);
    engine::start_epoch_ticker();

    let stage = cx.stage;
    let stage_timeout = cx.limits.stage_timeout;
    let call = async {
        let bindings = pre.instantiate_async(&mut store).await?;
        let phases = bindings.testflinger_connector_phases();
        let result = match stage {
            Stage::Provision => phases.call_provision(&mut store).await?.map(|()| 0),
            Stage::FirmwareUpdate => phases.call_firmware_update(&mut store).await?.map(|()| 0),
            Stage::Runtest => phases.call_runtest(&mut store).await?,
            Stage::Allocate => phases.call_allocate(&mut store).await?.map(|()| 0),
            Stage::Reserve => phases.call_reserve(&mut store).await?.map(|()| 0),
            Stage::Cleanup => phases.call_cleanup(&mut store).await?.map(|()| 0),
        };
        wasmtime::Result::<Result<i32, PhaseError>>::Ok(result)
    };
    let outcome = tokio::time::timeout(stage_timeout, call).await;
    match outcome {
        Err(_) => Err(StageError::failed(
            "StageTimeout",
            format!(
                "connector {name} did not finish {stage} within {} s (the stage timeout); it was stopped",
                stage_timeout.as_secs()
            ),
        )),
        Ok(Err(trap)) => {
            let stderr = store.data().guest_stderr();
            let mut msg = format!("connector {name} failed during {stage}: {trap:#}");
            if !stderr.is_empty() {
                msg.push_str(&format!("; connector stderr: {stderr}"));
            }
            Err(StageError::failed("ConnectorError", msg))
        }
        Ok(Ok(Ok(status))) => Ok(Some(status as u8)),
        Ok(Ok(Err(PhaseError::Unsupported))) => Ok(None),
        Ok(Ok(Err(PhaseError::Failed(msg)))) => Err(StageError::failed(failure_name(stage), msg)),
        Ok(Ok(Err(PhaseError::RecoveryNeeded(msg)))) => Err(StageError::recovery(msg)),
    }
}
