//! One stage invocation, end to end: read the inputs, write
//! `device-info.json`, pick and verify the connector, run its export in a
//! fresh sandbox (or the native default when it returns `unsupported`),
//! and turn the outcome into files and an exit status.

use std::sync::Arc;

use serde_json::{Map, Value};
use wasmtime::Store;

use crate::cache::{self, CodeCache};
use crate::capability::{Gate, Subject, UrlPattern};
use crate::config::DeviceConfig;
use crate::connectors::{self, Origin, Resolved};
use crate::context::{ConnectorInfo, StageContext, StageSpec};
use crate::engine;
use crate::error::StageError;
use crate::host::HostState;
use crate::host::wit;
use crate::job_file::JobFile;
use crate::lab::{self, LoadedLab};
use crate::manifest::{self, Manifest};
use crate::rundir::RunDir;
use crate::stage::{Failure, PhaseOutcome, Stage};

/// Arguments of one stage invocation (parsed by [`crate::cli`]).
#[derive(Debug, Clone)]
pub struct StageArgs {
    pub provision_type: String,
    pub stage: Stage,
    pub config: std::path::PathBuf,
    pub job_data: std::path::PathBuf,
    pub connector: Option<std::path::PathBuf>,
    pub lab: Option<std::path::PathBuf>,
    pub debug: bool,
}

/// Environment variable naming a JSON-lines audit file (overrides the lab
/// file's `audit_log`).
pub const AUDIT_ENV: &str = "TFDC_AUDIT_LOG";

/// The audit file used when neither [`AUDIT_ENV`] nor the lab file names
/// one: `$XDG_STATE_HOME/testflinger-device-connectors/audit.jsonl`, or
/// `~/.local/state/testflinger-device-connectors/audit.jsonl` (the XDG
/// default), so every host call is recorded without configuration.
pub fn default_audit_path() -> Option<std::path::PathBuf> {
    let state = std::env::var_os("XDG_STATE_HOME")
        .filter(|v| !v.is_empty())
        .map(std::path::PathBuf::from)
        .filter(|p| p.is_absolute())
        .or_else(|| {
            std::env::var_os("HOME")
                .filter(|v| !v.is_empty())
                .map(|h| std::path::PathBuf::from(h).join(".local/state"))
        })?;
    Some(
        state
            .join("testflinger-device-connectors")
            .join("audit.jsonl"),
    )
}

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

/// The first `testflinger:connector/*` interface a component imports or
/// exports outside the version lines this runtime serves (or without a
/// version), if any.
pub fn foreign_interface(component: &[u8]) -> Option<String> {
    let (imports, exports) = manifest::interface_names(component).ok()?;
    imports
        .into_iter()
        .chain(exports)
        .find(|name| wit::interface_version(name).is_some_and(|v| wit::served_line(v).is_none()))
}

/// A component loaded and checked, with everything needed to run it.
pub struct Prepared {
    pub resolved: Resolved,
    pub manifest: Manifest,
    pub component: wasmtime::component::Component,
    pub load_path: engine::LoadPath,
}

/// Resolves, verifies, reads the manifest of and compiles (or loads from
/// cache) the connector for `provision_type`.
pub async fn prepare(
    provision_type: &str,
    override_path: Option<&std::path::Path>,
    lab: Option<&LoadedLab>,
    config: &DeviceConfig,
) -> Result<Prepared, StageError> {
    let fail = |msg: String| StageError::failed("ConnectorError", msg);
    let extra_ca = config.runtime.extra_ca_certs.clone();
    let resolved = connectors::resolve(provision_type, override_path, lab, || {
        crate::http::build_client(&extra_ca)
    })
    .await
    .map_err(|e| fail(e.to_string()))?;
    let manifest = manifest::read(&resolved.bytes).map_err(|e| {
        fail(format!(
            "connector for {provision_type} ({}): {e}",
            resolved.origin
        ))
    })?;
    if wit::served_line(&manifest.wit).is_none() {
        return Err(fail(format!(
            "connector {} {} ({}) was built against WIT testflinger:connector@{}, but this runtime serves testflinger:connector {} (latest {}); use a connector built for one of those",
            manifest.name,
            manifest.version,
            resolved.origin,
            manifest.wit,
            wit::served_text(),
            wit::LATEST,
        )));
    }
    // The manifest is the component's own word: check it against the
    // interfaces it really imports and exports, so that a component from
    // another WIT line cannot pass itself off as one of ours.
    if let Some(name) = foreign_interface(&resolved.bytes) {
        return Err(fail(format!(
            "connector {} {} ({}) says it was built against WIT testflinger:connector@{}, but it uses {name}; this runtime serves testflinger:connector {}; use a connector built for one of those",
            manifest.name,
            manifest.version,
            resolved.origin,
            manifest.wit,
            wit::served_text(),
        )));
    }
    if let Some(pin) = &resolved.pin
        && (pin.name != manifest.name || pin.version != manifest.version)
    {
        return Err(fail(format!(
            "{}: the lab file pins {} {} but the component is {} {}",
            resolved.origin, pin.name, pin.version, manifest.name, manifest.version
        )));
    }
    if !manifest.provision_types.iter().any(|t| t == provision_type) {
        tracing::warn!(target: "tfdc::run",
            "connector {} serves {:?}, not {provision_type}; running it because it was chosen explicitly",
            manifest.name, manifest.provision_types);
    }
    let loaded = match cache::default_dir() {
        Some(dir) => {
            CodeCache::new(dir, cache::DEFAULT_MAX_BYTES).load(&resolved.bytes, &resolved.digest)
        }
        None => wasmtime::component::Component::new(engine::engine(), &*resolved.bytes)
            .map(|c| (c, engine::LoadPath::Compiled)),
    };
    let (component, load_path) =
        loaded.map_err(|e| fail(format!("cannot compile connector {}: {e:#}", manifest.name)))?;
    Ok(Prepared {
        resolved,
        manifest,
        component,
        load_path,
    })
}

/// What the lab grants a resolved connector, and where that comes from.
pub struct Grants {
    pub caps: crate::capability::CapabilitySet,
    pub urls: Vec<UrlPattern>,
    /// For messages: where to add a grant.
    pub source: String,
}

/// The grants of a resolved connector: the lab pin's, or the connector's
/// published defaults (what it declares) when no lab file pins it.
pub fn grants_for(resolved: &Resolved, manifest: &Manifest, provision_type: &str) -> Grants {
    match (&resolved.grants, &resolved.origin) {
        (Some(g), Origin::Lab { path, line, .. }) => Grants {
            caps: g.caps.clone(),
            urls: g.urls.clone(),
            source: format!(
                "the lab file {} (connectors.{provision_type}, line {line})",
                path.display()
            ),
        },
        _ => Grants {
            caps: manifest.declared(),
            urls: Vec::new(),
            source: format!(
                "a lab file pin (connector {} runs with its published default grants; pin it with `testflinger-device-connectors lab add {provision_type}` to change them)",
                manifest.name
            ),
        },
    }
}

async fn run_connector(
    args: &StageArgs,
    config: DeviceConfig,
    job: JobFile,
    rundir: RunDir,
) -> Result<u8, StageError> {
    let stage = args.stage;
    let lab = lab::locate(args.lab.as_deref(), config.runtime.lab_file.as_deref())
        .map_err(|e| StageError::failed("LabFileError", e.to_string()))?;
    let prepared = prepare(
        &args.provision_type,
        args.connector.as_deref(),
        lab.as_ref(),
        &config,
    )
    .await?;
    let Prepared {
        resolved,
        manifest,
        component,
        load_path,
    } = prepared;
    tracing::debug!(target: "tfdc::run", "connector {} {}: {}", manifest.name, manifest.version, match load_path {
        engine::LoadPath::Cached => "loaded from the compiled-code cache",
        engine::LoadPath::Compiled => "compiled",
    });

    let declared = manifest.declared();
    let Grants {
        caps: granted,
        urls,
        source: grant_source,
    } = grants_for(&resolved, &manifest, &args.provision_type);
    let subject = Subject {
        connector: manifest.name.clone(),
        version: manifest.version.clone(),
        stage: stage.cli_name().to_string(),
    };
    let mut gate = Gate::new(subject, declared, granted, urls, grant_source);
    let audit_path = std::env::var_os(AUDIT_ENV)
        .filter(|v| !v.is_empty())
        .map(std::path::PathBuf::from)
        .or_else(|| lab.as_ref().and_then(|l| l.file.audit_log.clone()));
    // Without configuration, the default location; its directory is
    // created on first use. An explicit path that cannot be opened fails
    // the stage (the operator asked for it); a default one that cannot
    // falls back to the run directory so the calls are still recorded.
    let audit_path = match audit_path {
        Some(path) => Some(path),
        None => {
            let default = default_audit_path().filter(|p| {
                p.parent()
                    .is_some_and(|d| std::fs::create_dir_all(d).is_ok())
                    && std::fs::OpenOptions::new()
                        .create(true)
                        .append(true)
                        .open(p)
                        .is_ok()
            });
            if default.is_none() {
                tracing::warn!(target: "tfdc::run", "cannot write the default audit file ({}); recording host calls in audit.jsonl of the run directory instead; set {AUDIT_ENV} or `audit_log` in the lab file", default_audit_path().map(|p| p.display().to_string()).unwrap_or_else(|| "HOME is not set".into()));
            }
            Some(default.unwrap_or_else(|| std::path::PathBuf::from("audit.jsonl")))
        }
    };
    if let Some(path) = audit_path {
        gate = gate.with_json_audit(&path).map_err(|e| {
            StageError::failed(
                "AuditError",
                format!("cannot open audit log {}: {e}", path.display()),
            )
        })?;
    }
    let limits = lab::merge_limits(&[
        lab.as_ref().and_then(|l| l.file.limits.as_ref()),
        resolved.pin.as_ref().and_then(|p| p.limits.as_ref()),
        config.runtime.limits.as_ref(),
    ])
    .map_err(|e| StageError::failed("ConfigError", format!("invalid limits: {e}")))?;
    let info = ConnectorInfo {
        name: manifest.name.clone(),
        version: manifest.version.clone(),
        digest: resolved.digest.clone(),
        wit: manifest.wit.clone(),
    };
    tracing::debug!(target: "tfdc::run", "running connector {} {} from {} ({})", info.name, info.version, resolved.origin, info.digest);
    let cx = StageContext::new(StageSpec {
        stage,
        provision_type: args.provision_type.clone(),
        connector: info,
        config,
        job,
        rundir,
        limits,
        gate,
        lab_endpoints: lab.map(|l| l.file.endpoints).unwrap_or_default(),
    })
    .map_err(|e| StageError::failed("ConfigError", format!("{e:#}")))?;

    match call_phase(&cx, &component).await? {
        Some(code) => Ok(code),
        None => crate::defaults::run(&cx).await,
    }
}

/// Instantiates the component in a fresh store and calls the stage's
/// export. `Ok(None)` means the connector returned `unsupported`.
pub async fn call_phase(
    cx: &Arc<StageContext>,
    component: &wasmtime::component::Component,
) -> Result<Option<u8>, StageError> {
    let name = cx.connector.name.clone();
    let fail = |msg: String| StageError::failed("ConnectorError", msg);
    let linker =
        engine::linker().map_err(|e| fail(format!("cannot set up host functions: {e:#}")))?;
    let bindings = wit::Bindings::new(&linker, component).map_err(|e| match e {
        wit::BindError::Imports(e) => fail(format!(
            "connector {name} (built against WIT testflinger:connector@{}) does not fit this runtime (WIT testflinger:connector {}): {e}; it needs a newer runtime or a rebuild against a served WIT version",
            cx.connector.wit,
            wit::served_text()
        )),
        wit::BindError::Exports(e) => fail(format!(
            "connector {name} does not export the phases interface: {e}"
        )),
    })?;
    let mut store = Store::new(engine::engine(), HostState::new(cx.clone()));
    store.limiter(|s| &mut s.limits);
    store.set_epoch_deadline(1);
    store.epoch_deadline_async_yield_and_update(1);
    engine::start_epoch_ticker();

    let stage = cx.stage;
    let stage_timeout = cx.limits.stage_timeout;
    let call = bindings.call(&mut store, stage);
    let outcome = tokio::time::timeout(stage_timeout, call).await;
    match outcome {
        Err(_) => Err(StageError::failed(
            "StageTimeout",
            format!(
                "connector {name} did not finish {stage} within {} s (limits.stage_timeout); it was stopped",
                stage_timeout.as_secs()
            ),
        )),
        Ok(Err(trap)) => {
            // The wasm backtrace (function indices of a stripped binary)
            // helps the connector's author, not the job log.
            tracing::debug!(target: "tfdc::run", "connector {name} trapped: {trap:?}");
            let cause = trap.root_cause().to_string();
            let mut msg = if format!("{trap:#}").contains("forcing trap when growing memory") {
                format!(
                    "connector {name} exceeded the memory limit of {} MiB during {stage} and was stopped (limits.memory in the lab file raises it): {cause}",
                    cx.limits.memory_bytes >> 20
                )
            } else {
                format!("connector {name} failed during {stage}: {cause}")
            };
            msg.push_str(&store.data().guest_stderr_report());
            Err(StageError::failed("ConnectorError", msg))
        }
        // Exit statuses are 8 bits, as the OS truncates them.
        Ok(Ok(PhaseOutcome::Done(status))) => Ok(Some(status as u8)),
        Ok(Ok(PhaseOutcome::Unsupported)) => Ok(None),
        Ok(Ok(PhaseOutcome::Failed(f))) => Err(stage_error(stage, false, f)),
        Ok(Ok(PhaseOutcome::RecoveryNeeded(f))) => Err(stage_error(stage, true, f)),
    }
}

/// Longest error class a connector may name.
const MAX_CLASS_LEN: usize = 64;

/// A connector's failure as the agent will read it. The class must look
/// like an exception class name (the agent shows it as `<name>: <message>`);
/// anything else is replaced by the stage's generic class (or
/// `RecoveryError`), and a recovery failure always exits 46 whatever its
/// class says.
fn stage_error(stage: Stage, recovery: bool, f: Failure) -> StageError {
    let valid = !f.class.is_empty()
        && f.class.len() <= MAX_CLASS_LEN
        && f.class.starts_with(|c: char| c.is_ascii_alphabetic())
        && f.class
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || c == '_');
    let class = if valid {
        f.class
    } else {
        if !f.class.is_empty() {
            tracing::debug!(target: "tfdc::run", "connector error class {:?} is not a class name; using the generic one", f.class);
        }
        if recovery {
            "RecoveryError"
        } else {
            stage.failure_class()
        }
        .to_string()
    };
    let mut err = if recovery {
        StageError::recovery(f.message)
    } else {
        StageError::failed(class.clone(), f.message)
    };
    err.name = class;
    err.cause = f.cause.filter(|c| !c.is_empty());
    err
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn failure_classes() {
        let f = |class: &str, cause: Option<&str>| Failure {
            class: class.into(),
            message: "m".into(),
            cause: cause.map(Into::into),
        };
        let e = stage_error(Stage::Provision, false, f("MaasStorageError", Some("rc 2")));
        assert_eq!(
            (e.name.as_str(), e.cause.as_deref(), e.exit_code()),
            ("MaasStorageError", Some("rc 2"), 1)
        );
        let e = stage_error(Stage::Provision, false, f("", None));
        assert_eq!(e.name, "ProvisioningError");
        let e = stage_error(Stage::Cleanup, false, f("bad name\n", Some("")));
        assert_eq!((e.name.as_str(), e.cause), ("CleanupError", None));
        let e = stage_error(Stage::Provision, true, f("Ünïcode", None));
        assert_eq!((e.name.as_str(), e.exit_code()), ("RecoveryError", 46));
        let e = stage_error(Stage::Provision, true, f("DeviceGoneError", None));
        assert_eq!((e.name.as_str(), e.exit_code()), ("DeviceGoneError", 46));
        assert_eq!(
            stage_error(Stage::Runtest, false, f(&"A".repeat(65), None)).name,
            "TestError"
        );
    }

    #[test]
    fn interfaces_of_another_line_are_found() {
        for e in crate::connectors::EMBEDDED {
            assert_eq!(foreign_interface(e.bytes), None, "{}", e.name);
        }
        let compat = std::fs::read(
            std::path::Path::new(env!("CARGO_MANIFEST_DIR"))
                .join("../tests/compat/kitchen_sink_v0_1_0.wasm"),
        )
        .unwrap();
        assert_eq!(foreign_interface(&compat), None);
        let v1 = std::fs::read(labsim::fixtures::path("fixture_hostile_wit_major")).unwrap();
        assert_eq!(
            foreign_interface(&v1).as_deref(),
            Some("testflinger:connector/log@1.0.0")
        );
    }
}
