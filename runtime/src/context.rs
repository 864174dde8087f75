//! What one invocation knows (stage, config, job, run directory, limits)
//! and the services its host functions and native defaults share (SSH
//! connections, serial captures, HTTP client).

use std::sync::Arc;

use crate::capability::Gate;
use crate::config::DeviceConfig;
use crate::job_file::JobFile;
use crate::limits::Limits;
use crate::rundir::RunDir;
use crate::serial::SerialHub;
use crate::ssh::SshPool;
use crate::stage::Stage;

/// Which connector runs, for messages and the audit trail.
#[derive(Debug, Clone)]
pub struct ConnectorInfo {
    /// Connector name from its manifest.
    pub name: String,
    /// Connector version from its manifest.
    pub version: String,
    /// `sha256:<hex>` of the component.
    pub digest: String,
    /// WIT version the connector was built against.
    pub wit: String,
}

/// The context of one invocation.
pub struct StageContext {
    pub stage: Stage,
    /// The provision type given on the command line.
    pub provision_type: String,
    pub connector: ConnectorInfo,
    pub config: DeviceConfig,
    pub job: JobFile,
    pub rundir: RunDir,
    pub limits: Limits,
    /// Capability checks: the one place that says yes or no.
    pub gate: Gate,
    /// SSH connections, one per target, reused for the whole stage.
    pub ssh: SshPool,
    /// Serial consoles being captured.
    pub serial: SerialHub,
    /// Outbound HTTP.
    pub http: crate::http::HttpClient,
    /// Host-side bulk transfers.
    pub transfers: crate::transfer::Transfers,
}

/// Everything needed to build a [`StageContext`].
pub struct StageSpec {
    pub stage: Stage,
    pub provision_type: String,
    pub connector: ConnectorInfo,
    pub config: DeviceConfig,
    pub job: JobFile,
    pub rundir: RunDir,
    pub limits: Limits,
    pub gate: Gate,
}

impl StageContext {
    /// Builds the context and its services.
    pub fn new(spec: StageSpec) -> anyhow::Result<Arc<Self>> {
        let StageSpec {
            stage,
            provision_type,
            connector,
            config,
            job,
            rundir,
            limits,
            gate,
        } = spec;
        let ssh = SshPool::new(&config, &job, &limits)?;
        let serial =
            SerialHub::new(&config, &rundir, stage).with_max_ports(limits.max_serial_ports);
        let transfers = crate::transfer::Transfers::new(limits.max_transfers);
        let http = crate::http::HttpClient::new(&config, &job)?
            .with_url_patterns(gate.url_patterns().to_vec());
        Ok(Arc::new(StageContext {
            stage,
            provision_type,
            connector,
            config,
            job,
            rundir,
            limits,
            gate,
            ssh,
            serial,
            http,
            transfers,
        }))
    }
}
