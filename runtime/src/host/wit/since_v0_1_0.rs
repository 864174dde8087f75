//! `testflinger:connector@0.1.0`, frozen in `wit/v0.1.0/`: its bindings,
//! and every import forwarded to the latest implementation.
//!
//! The only differences a 0.1 connector can see are the ones 0.1 cannot
//! express: a `refused` login arrives as `denied` (as 0.1 always reported
//! it), and a failed phase has no error class (the runtime uses the
//! stage's generic one).

use wasmtime::Store;
use wasmtime::component::Resource;

use super::latest as new;
use crate::host::http::HttpView;
use crate::host::job::JobView;
use crate::host::log::LogBudget;
use crate::host::power::PowerView;
use crate::host::serial::{PortHandle, SerialView};
use crate::host::ssh::{SessionHandle, SshView};
use crate::host::transfer::TransferView;
use crate::host::{HostError, HostState};
use crate::stage::{Failure, PhaseOutcome, Stage};

/// The WIT package version of these bindings.
pub const VERSION: &str = "0.1.0";

/// Bindings of `wit/v0.1.0`.
pub mod bindings {
    wasmtime::component::bindgen!({
        world: "connector",
        path: "../wit/v0.1.0",
        imports: { default: async | trappable | tracing },
        exports: { default: async },
        trappable_error_type: {
            "testflinger:connector/types.error" => crate::host::HostError,
        },
        with: {
            "testflinger:connector/ssh.session": crate::host::ssh::SessionHandle,
            "testflinger:connector/serial.port": crate::host::serial::PortHandle,
        },
    });

    pub use testflinger::connector::*;
}

use bindings as old;

/// Calls the export of `stage` of a 0.1 component, with its outcome in the
/// runtime's terms.
pub async fn call(
    pre: &old::ConnectorPre<HostState>,
    store: &mut Store<HostState>,
    stage: Stage,
) -> wasmtime::Result<PhaseOutcome> {
    let instance = pre.instantiate_async(&mut *store).await?;
    let phases = instance.testflinger_connector_phases();
    let result = match stage {
        Stage::Provision => phases.call_provision(store).await?.map(|()| 0),
        Stage::FirmwareUpdate => phases.call_firmware_update(store).await?.map(|()| 0),
        Stage::Runtest => phases.call_runtest(store).await?,
        Stage::Allocate => phases.call_allocate(store).await?.map(|()| 0),
        Stage::Reserve => phases.call_reserve(store).await?.map(|()| 0),
        Stage::Cleanup => phases.call_cleanup(store).await?.map(|()| 0),
    };
    Ok(match result {
        Ok(status) => PhaseOutcome::Done(status),
        Err(e) => phase_error(stage, e),
    })
}

/// A 0.1 phase error: no class, so the stage's generic one.
fn phase_error(stage: Stage, e: old::types::PhaseError) -> PhaseOutcome {
    let failure = |message: String, class: &str| Failure {
        class: class.to_string(),
        message,
        cause: None,
    };
    match e {
        old::types::PhaseError::Failed(m) => {
            PhaseOutcome::Failed(failure(m, stage.failure_class()))
        }
        old::types::PhaseError::RecoveryNeeded(m) => {
            PhaseOutcome::RecoveryNeeded(failure(m, "RecoveryError"))
        }
        old::types::PhaseError::Unsupported => PhaseOutcome::Unsupported,
    }
}

/// A host error as 0.1's `error` (or the trap).
pub fn error(err: HostError) -> wasmtime::Result<old::types::Error> {
    use new::types::Error as N;
    use old::types::Error as O;
    Ok(match err.into_wit()? {
        // 0.1 reported a refused login as `denied`.
        N::Denied(m) | N::Refused(m) => O::Denied(m),
        N::NotFound(m) => O::NotFound(m),
        N::Timeout(m) => O::Timeout(m),
        N::Failed(m) => O::Failed(m),
        N::Io(m) => O::Io(m),
        N::Invalid(m) => O::Invalid(m),
        N::Limit(m) => O::Limit(m),
        N::Unsupported(m) => O::Unsupported(m),
        N::Other(m) => O::Other(m),
    })
}

impl old::log::Host for LogBudget {
    async fn log(&mut self, level: old::log::Level, message: String) -> wasmtime::Result<()> {
        let level = match level {
            old::log::Level::Debug => new::log::Level::Debug,
            old::log::Level::Info => new::log::Level::Info,
            old::log::Level::Warning => new::log::Level::Warning,
            old::log::Level::Error => new::log::Level::Error,
        };
        new::log::Host::log(self, level, message).await
    }

    async fn print(&mut self, text: String) -> wasmtime::Result<()> {
        new::log::Host::print(self, text).await
    }
}

impl old::job::Host for JobView<'_> {
    async fn current_stage(&mut self) -> wasmtime::Result<old::job::Stage> {
        use new::job::Stage as N;
        use old::job::Stage as O;
        Ok(match new::job::Host::current_stage(self).await? {
            N::Provision => O::Provision,
            N::FirmwareUpdate => O::FirmwareUpdate,
            N::Runtest => O::Runtest,
            N::Allocate => O::Allocate,
            N::Reserve => O::Reserve,
            N::Cleanup => O::Cleanup,
        })
    }

    async fn job_json(&mut self) -> wasmtime::Result<String> {
        new::job::Host::job_json(self).await
    }

    async fn device_config_json(&mut self) -> wasmtime::Result<String> {
        new::job::Host::device_config_json(self).await
    }

    async fn attachments(&mut self, phase: String) -> Result<Vec<String>, HostError> {
        new::job::Host::attachments(self, phase).await
    }

    async fn read_attachment(&mut self, phase: String, name: String) -> Result<Vec<u8>, HostError> {
        new::job::Host::read_attachment(self, phase, name).await
    }

    async fn set_device_info(&mut self, key: String, value_json: String) -> Result<(), HostError> {
        new::job::Host::set_device_info(self, key, value_json).await
    }

    async fn write_artifact(&mut self, name: String, data: Vec<u8>) -> Result<(), HostError> {
        new::job::Host::write_artifact(self, name, data).await
    }
}

impl old::power::Host for PowerView<'_> {
    async fn run(&mut self, key: String, opts: old::power::RunOptions) -> Result<(), HostError> {
        let style = match opts.style {
            old::power::ExecStyle::Split => new::power::ExecStyle::Split,
            old::power::ExecStyle::Shell => new::power::ExecStyle::Shell,
        };
        let opts = new::power::RunOptions {
            style,
            timeout_per_entry: opts.timeout_per_entry,
        };
        new::power::Host::run(self, key, opts).await
    }

    async fn cycle_control_host(
        &mut self,
        manage_dut_power: bool,
        timeout: u64,
    ) -> Result<(), HostError> {
        new::power::Host::cycle_control_host(self, manage_dut_power, timeout).await
    }
}

impl old::serial::Host for SerialView<'_> {
    async fn open(&mut self, name: String) -> Result<Resource<PortHandle>, HostError> {
        new::serial::Host::open(self, name).await
    }
}

impl old::serial::HostPort for SerialView<'_> {
    async fn wait_for(
        &mut self,
        this: Resource<PortHandle>,
        pattern: String,
        timeout: u64,
    ) -> Result<String, HostError> {
        new::serial::HostPort::wait_for(self, this, pattern, timeout).await
    }

    async fn write(
        &mut self,
        this: Resource<PortHandle>,
        data: Vec<u8>,
        timeout: u64,
    ) -> Result<(), HostError> {
        new::serial::HostPort::write(self, this, data, timeout).await
    }

    async fn drop(&mut self, this: Resource<PortHandle>) -> wasmtime::Result<()> {
        new::serial::HostPort::drop(self, this).await
    }
}

impl old::ssh::Host for SshView<'_> {
    async fn connect(
        &mut self,
        target: String,
        timeout: u64,
        opts: Vec<(String, String)>,
    ) -> Result<Resource<SessionHandle>, HostError> {
        new::ssh::Host::connect(self, target, timeout, opts).await
    }

    async fn wait_reachable(&mut self, target: String, timeout: u64) -> Result<(), HostError> {
        new::ssh::Host::wait_reachable(self, target, timeout).await
    }

    async fn authorize_key(&mut self, target: String, timeout: u64) -> Result<(), HostError> {
        new::ssh::Host::authorize_key(self, target, timeout).await
    }
}

impl old::ssh::HostSession for SshView<'_> {
    async fn exec(
        &mut self,
        this: Resource<SessionHandle>,
        command: String,
        timeout: u64,
        opts: Vec<(String, String)>,
    ) -> Result<old::ssh::ExecResult, HostError> {
        let r = new::ssh::HostSession::exec(self, this, command, timeout, opts).await?;
        Ok(old::ssh::ExecResult {
            status: r.status,
            stdout: r.stdout,
            stderr: r.stderr,
        })
    }

    async fn upload(
        &mut self,
        this: Resource<SessionHandle>,
        remote_path: String,
        data: Vec<u8>,
        mode: u32,
        timeout: u64,
    ) -> Result<(), HostError> {
        new::ssh::HostSession::upload(self, this, remote_path, data, mode, timeout).await
    }

    async fn download(
        &mut self,
        this: Resource<SessionHandle>,
        remote_path: String,
        timeout: u64,
    ) -> Result<Vec<u8>, HostError> {
        new::ssh::HostSession::download(self, this, remote_path, timeout).await
    }

    async fn download_artifact(
        &mut self,
        this: Resource<SessionHandle>,
        remote_path: String,
        artifact: String,
        timeout: u64,
    ) -> Result<u64, HostError> {
        new::ssh::HostSession::download_artifact(self, this, remote_path, artifact, timeout).await
    }

    async fn drop(&mut self, this: Resource<SessionHandle>) -> wasmtime::Result<()> {
        new::ssh::HostSession::drop(self, this).await
    }
}

fn request(r: old::http::Request) -> new::http::Request {
    new::http::Request {
        method: r.method,
        url: r.url,
        headers: r.headers,
        body: r.body,
        timeout: r.timeout,
    }
}

fn response(r: new::http::Response) -> old::http::Response {
    old::http::Response {
        status: r.status,
        headers: r.headers,
        body: r.body,
    }
}

impl old::http::Host for HttpView<'_> {
    async fn call(
        &mut self,
        endpoint: String,
        req: old::http::Request,
        opts: Vec<(String, String)>,
    ) -> Result<old::http::Response, HostError> {
        new::http::Host::call(self, endpoint, request(req), opts)
            .await
            .map(response)
    }

    async fn fetch(
        &mut self,
        req: old::http::Request,
        opts: Vec<(String, String)>,
    ) -> Result<old::http::Response, HostError> {
        new::http::Host::fetch(self, request(req), opts)
            .await
            .map(response)
    }
}

fn source(s: old::transfer::Source) -> new::transfer::Source {
    match s {
        old::transfer::Source::Url(u) => new::transfer::Source::Url(u),
        old::transfer::Source::Attachment(a) => new::transfer::Source::Attachment(a),
    }
}

fn report(r: new::transfer::Report) -> old::transfer::Report {
    old::transfer::Report {
        bytes: r.bytes,
        sha256: r.sha256,
        elapsed_ms: r.elapsed_ms,
    }
}

impl old::transfer::Host for TransferView<'_> {
    async fn to_ssh(
        &mut self,
        src: old::transfer::Source,
        target: Resource<SessionHandle>,
        command: String,
        timeout: u64,
        opts: Vec<(String, String)>,
    ) -> Result<old::transfer::Report, HostError> {
        new::transfer::Host::to_ssh(self, source(src), target, command, timeout, opts)
            .await
            .map(report)
    }

    async fn to_artifact(
        &mut self,
        src: old::transfer::Source,
        name: String,
        timeout: u64,
        opts: Vec<(String, String)>,
    ) -> Result<old::transfer::Report, HostError> {
        new::transfer::Host::to_artifact(self, source(src), name, timeout, opts)
            .await
            .map(report)
    }
}
