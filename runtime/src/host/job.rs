//! `job`: the stage, the job and device config (without secrets), and the
//! run-directory files a connector may read or write. These reach nothing
//! outside the run directory, so they do not go through the call wrapper;
//! a name refused for leaving its folder is audited all the same.

use super::HostError;
use crate::capability::{AuditLine, CapabilityLabel, Gate, HostFn, funcs};
use crate::config::DeviceConfig;
use crate::host::wit::latest::job::{Host, Stage as WitStage};
use crate::job_file::JobFile;
use crate::limits::Limits;
use crate::rundir::{PathError, ReadError, RunDir};
use crate::stage::Stage;

/// What `job` needs: the invocation's inputs, and the bytes
/// `write-artifact` wrote in this stage.
pub struct JobView<'a> {
    pub stage: Stage,
    pub job: &'a JobFile,
    pub config: &'a DeviceConfig,
    pub rundir: &'a RunDir,
    pub limits: &'a Limits,
    /// For the audit lines of refused names.
    pub gate: &'a Gate,
    /// Bytes written by `write-artifact` in this stage.
    pub artifact_bytes: &'a mut u64,
}

/// The [`wasmtime::component::HasData`] of `job`.
pub struct HasJob;

impl wasmtime::component::HasData for HasJob {
    type Data<'a> = JobView<'a>;
}

impl From<PathError> for HostError {
    fn from(e: PathError) -> Self {
        match e {
            PathError::Refused(..) | PathError::Symlink(_) => HostError::Escape(e.to_string()),
            PathError::Io(_, ref io) if io.kind() == std::io::ErrorKind::NotFound => {
                HostError::not_found(e.to_string())
            }
            PathError::Io(..) => HostError::io(e.to_string()),
        }
    }
}

impl From<ReadError> for HostError {
    fn from(e: ReadError) -> Self {
        match e {
            ReadError::Path(p) => p.into(),
            ReadError::TooBig { .. } => HostError::limit(format!(
                "{e}; stream large files with `transfer` (or raise limits.max_return_bytes in the lab file)"
            )),
        }
    }
}

impl JobView<'_> {
    /// Passes `result` through, auditing an escape attempt on `name` (the
    /// only outcome of these functions the audit trail records).
    fn audited<T>(
        &self,
        func: &HostFn,
        name: &str,
        result: Result<T, HostError>,
    ) -> Result<T, HostError> {
        if let Err(e @ HostError::Escape(_)) = &result {
            self.gate.audit(&AuditLine {
                call: func.call,
                capability: CapabilityLabel(None),
                target: name,
                result: e.audit_result(),
                duration: std::time::Duration::ZERO,
                detail: Some(&e.to_string()),
            });
        }
        result
    }
}

/// Longest `device_info` value accepted, in bytes of JSON.
const MAX_DEVICE_INFO_VALUE: usize = 64 * 1024;
/// Largest `device-info.json` a connector may grow, in bytes: the agent
/// posts it with the results, and every call rewrites it whole.
pub const MAX_DEVICE_INFO_FILE: usize = 1 << 20;

impl Host for JobView<'_> {
    async fn current_stage(&mut self) -> wasmtime::Result<WitStage> {
        Ok(match self.stage {
            Stage::Provision => WitStage::Provision,
            Stage::FirmwareUpdate => WitStage::FirmwareUpdate,
            Stage::Runtest => WitStage::Runtest,
            Stage::Allocate => WitStage::Allocate,
            Stage::Reserve => WitStage::Reserve,
            Stage::Cleanup => WitStage::Cleanup,
        })
    }

    async fn job_json(&mut self) -> wasmtime::Result<String> {
        Ok(self.job.guest_view().to_string())
    }

    async fn device_config_json(&mut self) -> wasmtime::Result<String> {
        Ok(self.config.guest_view().to_string())
    }

    async fn attachments(&mut self, phase: String) -> Result<Vec<String>, HostError> {
        let result = self
            .rundir
            .list_attachments(&phase)
            .map_err(HostError::from);
        self.audited(&funcs::JOB_ATTACHMENTS, &phase, result)
    }

    async fn read_attachment(&mut self, phase: String, name: String) -> Result<Vec<u8>, HostError> {
        let max = self.limits.max_return_bytes;
        let result = self
            .rundir
            .read_attachment(&phase, &name, max)
            .map_err(HostError::from);
        self.audited(
            &funcs::JOB_READ_ATTACHMENT,
            &format!("{phase}/{name}"),
            result,
        )
    }

    async fn set_device_info(&mut self, key: String, value_json: String) -> Result<(), HostError> {
        if key.is_empty() || key.len() > 128 || key.chars().any(char::is_control) {
            return Err(HostError::invalid(
                "device_info keys must be 1 to 128 printable characters",
            ));
        }
        if value_json.len() > MAX_DEVICE_INFO_VALUE {
            return Err(HostError::limit(format!(
                "device_info value for `{key}` is {} bytes, over the limit of {MAX_DEVICE_INFO_VALUE}",
                value_json.len()
            )));
        }
        let value: serde_json::Value = serde_json::from_str(&value_json).map_err(|e| {
            HostError::invalid(format!("device_info value for `{key}` is not JSON: {e}"))
        })?;
        let mut info = self.rundir.read_device_info();
        info.insert(key.clone(), value);
        let size = serde_json::to_vec(&info).map_or(usize::MAX, |b| b.len());
        if size > MAX_DEVICE_INFO_FILE {
            return Err(HostError::limit(format!(
                "device_info would grow to {size} bytes with `{key}`, over the limit of {MAX_DEVICE_INFO_FILE} bytes"
            )));
        }
        self.rundir
            .write_device_info(&info)
            .map_err(|e| HostError::io(format!("cannot write device-info.json: {e}")))
    }

    async fn write_artifact(&mut self, name: String, data: Vec<u8>) -> Result<(), HostError> {
        let max = self.limits.max_artifact_bytes;
        let total = self.artifact_bytes.saturating_add(data.len() as u64);
        if total > max {
            return Err(HostError::limit(format!(
                "writing {} bytes to artifact `{name}` would exceed the limit of {max} bytes written by write-artifact per stage (limits.max_artifact_bytes in the lab file raises it)",
                data.len()
            )));
        }
        let written = self
            .rundir
            .write_artifact(&name, &data)
            .map_err(HostError::from);
        self.audited(&funcs::JOB_WRITE_ARTIFACT, &name, written)?;
        *self.artifact_bytes = total;
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use std::path::Path;

    use super::*;
    use crate::capability::{CapabilitySet, Subject};

    /// The pieces a [`JobView`] borrows.
    struct Parts {
        job: JobFile,
        config: DeviceConfig,
        rundir: RunDir,
        limits: Limits,
        gate: Gate,
        artifact_bytes: u64,
    }

    impl Parts {
        fn new(dir: &Path, limits: Limits) -> Self {
            Parts {
                job: JobFile::empty(),
                config: DeviceConfig::parse(Path::new("default.yaml"), "{}").unwrap(),
                rundir: RunDir::new(dir),
                limits,
                gate: Gate::new(
                    Subject::default(),
                    CapabilitySet::new(),
                    CapabilitySet::new(),
                    vec![],
                    "the test",
                )
                .with_json_audit(&dir.join("audit.jsonl"))
                .unwrap(),
                artifact_bytes: 0,
            }
        }

        fn view(&mut self) -> JobView<'_> {
            JobView {
                stage: Stage::Provision,
                job: &self.job,
                config: &self.config,
                rundir: &self.rundir,
                limits: &self.limits,
                gate: &self.gate,
                artifact_bytes: &mut self.artifact_bytes,
            }
        }
    }

    /// A loop of writes cannot fill the disk: the bytes of every call of
    /// the stage count against `max_artifact_bytes`.
    #[tokio::test]
    async fn artifact_bytes_are_capped_per_stage() {
        let dir = tempfile::tempdir().unwrap();
        let mut parts = Parts::new(
            dir.path(),
            Limits {
                max_artifact_bytes: 10,
                ..Limits::default()
            },
        );
        let mut st = parts.view();
        st.write_artifact("a".into(), vec![1; 6]).await.unwrap();
        let err = st.write_artifact("b".into(), vec![1; 6]).await.unwrap_err();
        assert_eq!(err.kind(), "limit");
        assert!(
            err.to_string().contains("limits.max_artifact_bytes"),
            "{err}"
        );
        assert!(!dir.path().join("artifacts/b").exists());
        // A refused write does not count; what still fits is written.
        st.write_artifact("c".into(), vec![1; 4]).await.unwrap();
    }

    /// device-info.json stays small however many keys a connector sets.
    #[tokio::test]
    async fn device_info_is_capped() {
        let dir = tempfile::tempdir().unwrap();
        let mut parts = Parts::new(dir.path(), Limits::default());
        let mut st = parts.view();
        let value = format!("\"{}\"", "v".repeat(60 * 1024));
        let mut refused = None;
        for i in 0..40 {
            if let Err(e) = st.set_device_info(format!("k{i}"), value.clone()).await {
                refused = Some((i, e));
                break;
            }
        }
        let (i, err) = refused.expect("the 40th 60 KiB value must be refused");
        assert!(i > 10, "refused too early, at {i}");
        assert_eq!(err.kind(), "limit");
        let len = std::fs::metadata(dir.path().join("device-info.json"))
            .unwrap()
            .len();
        assert!(len <= MAX_DEVICE_INFO_FILE as u64);
    }

    /// A name that tries to leave its folder is `invalid` for the
    /// connector and one denial in the audit trail; a missing file is
    /// only `not-found`.
    #[tokio::test]
    async fn escapes_are_audited() {
        let dir = tempfile::tempdir().unwrap();
        let mut parts = Parts::new(dir.path(), Limits::default());
        let mut st = parts.view();
        let err = st
            .write_artifact("../escape".into(), b"x".to_vec())
            .await
            .unwrap_err();
        assert_eq!(err.kind(), "invalid");
        let err = st
            .read_attachment("provision".into(), "../../default.yaml".into())
            .await
            .unwrap_err();
        assert_eq!(err.kind(), "invalid");
        let err = st
            .read_attachment("provision".into(), "missing".into())
            .await
            .unwrap_err();
        assert_eq!(err.kind(), "not-found");
        let lines: Vec<serde_json::Value> = std::fs::read_to_string(dir.path().join("audit.jsonl"))
            .unwrap()
            .lines()
            .map(|l| serde_json::from_str(l).unwrap())
            .collect();
        let got: Vec<(&str, &str, &str, &str)> = lines
            .iter()
            .map(|l| {
                (
                    l["call"].as_str().unwrap(),
                    l["capability"].as_str().unwrap(),
                    l["target"].as_str().unwrap(),
                    l["result"].as_str().unwrap(),
                )
            })
            .collect();
        assert_eq!(
            got,
            [
                ("job.write-artifact", "run-dir", "../escape", "denied"),
                (
                    "job.read-attachment",
                    "run-dir",
                    "provision/../../default.yaml",
                    "denied"
                ),
            ]
        );
        assert!(!dir.path().parent().unwrap().join("escape").exists());
    }
}
