//! What one invocation knows (stage, config, job, run directory, limits)
//! and the services its host functions and native defaults share (SSH
//! connections, serial captures, HTTP client, transfers). The services
//! know nothing of the context: each gets what it needs when it is built.

use std::sync::Arc;

use crate::capability::Gate;
use crate::config::DeviceConfig;
use crate::endpoints::Endpoints;
use crate::http::HttpClient;
use crate::job_file::JobFile;
use crate::limits::Limits;
use crate::rundir::RunDir;
use crate::serial::SerialHub;
use crate::ssh::SshPool;
use crate::stage::Stage;
use crate::transfer::Transfers;

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
    pub http: HttpClient,
    /// Host-side bulk transfers.
    pub transfers: Transfers,
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
    /// The gate; it learns the job's URLs here.
    pub gate: Gate,
    /// Named HTTP endpoints of the lab file (the device config's own are
    /// read from it).
    pub lab_endpoints: Endpoints,
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
            lab_endpoints,
        } = spec;
        let gate = gate.with_job_urls(crate::capability::job_urls(
            &job,
            config.device_ip().as_deref(),
        ));
        let ssh = SshPool::new(&config, &job, &limits)?;
        let serial =
            SerialHub::new(&config, &rundir, stage).with_max_ports(limits.max_serial_ports);
        let transfers = Transfers::new(limits.max_transfers);
        let http = HttpClient::new(&config)?
            .with_url_grants(gate.url_grants().clone())
            .with_lab_endpoints(&lab_endpoints);
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
