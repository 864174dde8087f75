//! Builds a [`StageContext`] and a [`HostState`] for host-function tests,
//! without a component.

use std::path::Path;
use std::sync::Arc;

use crate::capability::{Capability, CapabilitySet, Gate, Subject};
use crate::config::DeviceConfig;
use crate::context::{ConnectorInfo, StageContext, StageSpec};
use crate::endpoints::Endpoints;
use crate::host::HostState;
use crate::job_file::JobFile;
use crate::rundir::RunDir;
use crate::stage::Stage;

/// A provision-stage context over the run directory `dir`, with the device
/// config `config_yaml`, the job `job_json` and a connector declaring (and
/// granted) `caps`. Limits come from the config.
pub fn context(
    dir: &Path,
    config_yaml: &str,
    job_json: &str,
    caps: &[(Capability, &str)],
) -> Arc<StageContext> {
    context_with(dir, config_yaml, job_json, caps, caps, &Endpoints::new())
}

/// Capability names per family.
pub fn caps(pairs: &[(Capability, &str)]) -> CapabilitySet {
    let mut set = CapabilitySet::new();
    for (cap, name) in pairs {
        set.entry(*cap).or_default().insert(name.to_string());
    }
    set
}

/// Like [`context`], with what the connector declares and what the lab
/// grants apart, and the lab file's named endpoints.
pub fn context_with(
    dir: &Path,
    config_yaml: &str,
    job_json: &str,
    declared: &[(Capability, &str)],
    granted: &[(Capability, &str)],
    lab_endpoints: &Endpoints,
) -> Arc<StageContext> {
    let config = DeviceConfig::parse(Path::new("default.yaml"), config_yaml).unwrap();
    let job = JobFile::parse(Path::new("testflinger.json"), job_json).unwrap();
    let limits = crate::lab::merge_limits(&[config.runtime.limits.as_ref()]).unwrap();
    StageContext::new(StageSpec {
        stage: Stage::Provision,
        provision_type: "test".into(),
        connector: ConnectorInfo {
            name: "test-connector".into(),
            version: "0.0.0".into(),
            digest: "sha256:00".into(),
            wit: crate::host::wit::LATEST.into(),
        },
        config,
        job,
        rundir: RunDir::new(dir),
        limits,
        gate: Gate::new(
            Subject {
                connector: "test-connector".into(),
                version: "0.0.0".into(),
                stage: "provision".into(),
            },
            caps(declared),
            caps(granted),
            Vec::new(),
            "the test's lab file",
        ),
        lab_endpoints: lab_endpoints.clone(),
    })
    .unwrap()
}

/// A store's host state for `cx`.
pub fn state(cx: &Arc<StageContext>) -> HostState {
    HostState::new(cx.clone())
}
