//! `testflinger-device-connectors check <type> -c CONFIG [--job JOB]`:
//! before any job runs and without touching a device, compares what the
//! connector declares with what the lab grants and the device config
//! provides, and validates a job's stage data against the schema the
//! connector publishes.

use std::fmt::Write as _;
use std::path::Path;

use super::CommandError;
use crate::capability::{Capability, config_need};
use crate::config::DeviceConfig;
use crate::job_file::JobFile;
use crate::lab::extra_caps;

/// Runs the check; returns the report and whether it found problems.
pub async fn check(
    provision_type: &str,
    config_path: &Path,
    job_path: Option<&Path>,
    connector: Option<&Path>,
    lab_flag: Option<&Path>,
) -> Result<(String, bool), CommandError> {
    let config = DeviceConfig::load(config_path).map_err(|e| CommandError::new(e.to_string()))?;
    let lab = crate::lab::locate(lab_flag, config.runtime.lab_file.as_deref())
        .map_err(|e| CommandError::new(e.to_string()))?;
    let prepared = crate::run::prepare(provision_type, connector, lab.as_ref(), &config)
        .await
        .map_err(|e| CommandError::new(e.message))?;
    let manifest = &prepared.manifest;
    let declared = manifest.declared();
    let grants = crate::run::grants_for(&prepared.resolved, manifest, provision_type);
    let mut out = String::new();
    let mut problems = 0usize;
    let _ = writeln!(
        out,
        "connector: {} {} for {provision_type} ({}, {})",
        manifest.name, manifest.version, prepared.resolved.origin, prepared.resolved.digest
    );
    if prepared.resolved.grants.is_some() {
        let _ = writeln!(out, "grants: {}", grants.source);
    } else {
        let _ = writeln!(
            out,
            "grants: the connector's published defaults (what it declares); no lab file pins it"
        );
    }

    let not_granted = extra_caps(&declared, &grants.caps);
    let _ = writeln!(out, "\ndeclared but not granted:");
    if not_granted.is_empty() {
        let _ = writeln!(out, "    (none)");
    }
    for (cap, name) in &not_granted {
        problems += 1;
        let _ = writeln!(
            out,
            "    {}: {name}   (calls to it will be denied; grant it under grants.{})",
            cap.key(),
            cap.key()
        );
    }
    let unused = extra_caps(&grants.caps, &declared);
    let _ = writeln!(out, "\ngranted but unused (not declared by the connector):");
    if unused.is_empty() {
        let _ = writeln!(out, "    (none)");
    }
    for (cap, name) in &unused {
        let _ = writeln!(out, "    {}: {name}", cap.key());
    }

    let _ = writeln!(out, "\ndevice config ({}):", config.path().display());
    let mut config_lines = 0;
    // Named endpoints the lab file and the device config define.
    let endpoints = crate::endpoints::merged(
        &lab.as_ref()
            .map(|l| l.file.endpoints.clone())
            .unwrap_or_default(),
        &config.runtime.endpoints,
    );
    for cap in Capability::ALL {
        for name in declared.get(&cap).into_iter().flatten() {
            match config_need(cap, name, &endpoints) {
                None if cap == Capability::Http => {
                    problems += 1;
                    config_lines += 1;
                    let _ = writeln!(
                        out,
                        "    http: {name}   NOT DEFINED: not a built-in endpoint; define it under `endpoints:` in the lab file or `connector_runtime.endpoints` in the device config"
                    );
                }
                None => {
                    problems += 1;
                    config_lines += 1;
                    let _ = writeln!(
                        out,
                        "    {}: {name}   unknown to this runtime (no device config maps it)",
                        cap.key()
                    );
                }
                Some(need) => {
                    let missing: Vec<&String> = need
                        .keys
                        .iter()
                        .filter(|k| !config_has(&config, cap, k))
                        .collect();
                    if missing.is_empty() {
                        if let Some(problem) = config_problem(&config, cap, name) {
                            problems += 1;
                            config_lines += 1;
                            let _ = writeln!(out, "    {}: {name}   {problem}", cap.key());
                        }
                        continue;
                    }
                    config_lines += 1;
                    let keys = missing
                        .iter()
                        .map(|k| k.as_str())
                        .collect::<Vec<_>>()
                        .join(", ");
                    let optional = need.optional
                        || missing.iter().all(|k| manifest.optional_config.contains(k));
                    if optional {
                        let _ = writeln!(
                            out,
                            "    {}: {name}   optional, not configured ({keys})",
                            cap.key()
                        );
                    } else {
                        problems += 1;
                        let _ = writeln!(
                            out,
                            "    {}: {name}   MISSING config key(s): {keys}",
                            cap.key()
                        );
                    }
                }
            }
        }
    }
    if config_lines == 0 {
        let _ = writeln!(out, "    every declared capability is configured");
    }

    if let Some(job_path) = job_path {
        let job = JobFile::load(job_path).map_err(|e| CommandError::new(e.to_string()))?;
        let _ = writeln!(out, "\njob ({}):", job_path.display());
        if manifest.stage_data.is_empty() {
            let _ = writeln!(out, "    the connector publishes no stage-data schema");
        }
        for (key, schema) in &manifest.stage_data {
            let found = crate::schema::validate(key, schema, job.get(key)).map_err(|e| {
                CommandError::new(format!("the connector's schema for {key} is broken: {e}"))
            })?;
            if found.is_empty() {
                let _ = writeln!(out, "    {key}: ok");
            }
            for p in found {
                problems += 1;
                let _ = writeln!(out, "    {p}");
            }
        }
    }
    let _ = writeln!(
        out,
        "\n{}",
        if problems == 0 {
            "no problems found".to_string()
        } else {
            format!("{problems} problem(s) found")
        }
    );
    Ok((out, problems > 0))
}

/// A problem with configured values (not missing keys) behind capability
/// `name`; messages never quote secret values.
fn config_problem(config: &DeviceConfig, cap: Capability, name: &str) -> Option<String> {
    if (cap, name) != (Capability::Http, "maas") {
        return None;
    }
    let http = crate::http::HttpClient::new(config).ok()?;
    if let Err(e) = http.endpoint_base("maas") {
        return Some(e.to_string());
    }
    http.sign("maas", &mut Vec::new())
        .err()
        .map(|e| e.to_string())
}

fn config_has(config: &DeviceConfig, cap: Capability, key: &str) -> bool {
    if cap == Capability::Power {
        config
            .command_list(key)
            .ok()
            .flatten()
            .is_some_and(|l| !l.is_empty())
    } else {
        config.string(key).is_some()
    }
}
