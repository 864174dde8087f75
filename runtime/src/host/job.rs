//! `job`: the stage, the job and device config (without secrets), and the
//! run-directory files a connector may read or write.

use super::{HostError, HostState};
use crate::host::wit::latest::job::{Host, Stage as WitStage};
use crate::rundir::{PathError, ReadError};
use crate::stage::Stage;

impl From<PathError> for HostError {
    fn from(e: PathError) -> Self {
        match e {
            PathError::Refused(..) | PathError::Symlink(_) => HostError::invalid(e.to_string()),
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

impl HostState {
    /// Converts a run-directory error for the guest. A name refused for
    /// trying to leave its folder (`..`, absolute, symlink, not a regular
    /// file) is audited like a denial: it changed nothing, but an operator
    /// wants to know a connector tried.
    pub(crate) fn path_error(&self, operation: &str, name: &str, e: PathError) -> HostError {
        if matches!(e, PathError::Refused(..) | PathError::Symlink(_)) {
            self.cx.gate.audit(
                operation,
                name,
                "denied",
                std::time::Duration::ZERO,
                Some(&e.to_string()),
            );
        }
        e.into()
    }
}

/// Longest `device_info` value accepted, in bytes of JSON.
const MAX_DEVICE_INFO_VALUE: usize = 64 * 1024;
/// Largest `device-info.json` a connector may grow, in bytes: the agent
/// posts it with the results, and every call rewrites it whole.
pub const MAX_DEVICE_INFO_FILE: usize = 1 << 20;

/// Bytes written by `write-artifact` in this stage.
#[derive(Debug, Default)]
pub struct ArtifactState {
    bytes: u64,
}

impl Host for HostState {
    async fn current_stage(&mut self) -> wasmtime::Result<WitStage> {
        Ok(match self.cx.stage {
            Stage::Provision => WitStage::Provision,
            Stage::FirmwareUpdate => WitStage::FirmwareUpdate,
            Stage::Runtest => WitStage::Runtest,
            Stage::Allocate => WitStage::Allocate,
            Stage::Reserve => WitStage::Reserve,
            Stage::Cleanup => WitStage::Cleanup,
        })
    }

    async fn job_json(&mut self) -> wasmtime::Result<String> {
        Ok(self.cx.job.guest_view().to_string())
    }

    async fn device_config_json(&mut self) -> wasmtime::Result<String> {
        Ok(self.cx.config.guest_view().to_string())
    }

    async fn attachments(&mut self, phase: String) -> Result<Vec<String>, HostError> {
        self.cx
            .rundir
            .list_attachments(&phase)
            .map_err(|e| self.path_error("job.attachments", &phase, e))
    }

    async fn read_attachment(&mut self, phase: String, name: String) -> Result<Vec<u8>, HostError> {
        let max = self.cx.limits.max_return_bytes;
        match self.cx.rundir.read_attachment(&phase, &name, max) {
            Ok(data) => Ok(data),
            Err(ReadError::Path(e)) => {
                Err(self.path_error("job.read-attachment", &format!("{phase}/{name}"), e))
            }
            Err(e) => Err(e.into()),
        }
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
        let mut info = self.cx.rundir.read_device_info();
        info.insert(key.clone(), value);
        let size = serde_json::to_vec(&info).map_or(usize::MAX, |b| b.len());
        if size > MAX_DEVICE_INFO_FILE {
            return Err(HostError::limit(format!(
                "device_info would grow to {size} bytes with `{key}`, over the limit of {MAX_DEVICE_INFO_FILE} bytes"
            )));
        }
        self.cx
            .rundir
            .write_device_info(&info)
            .map_err(|e| HostError::io(format!("cannot write device-info.json: {e}")))
    }

    async fn write_artifact(&mut self, name: String, data: Vec<u8>) -> Result<(), HostError> {
        let max = self.cx.limits.max_artifact_bytes;
        let total = self.artifacts.bytes.saturating_add(data.len() as u64);
        if total > max {
            return Err(HostError::limit(format!(
                "writing {} bytes to artifact `{name}` would exceed the limit of {max} bytes written by write-artifact per stage (limits.max_artifact_bytes in the lab file raises it)",
                data.len()
            )));
        }
        self.cx
            .rundir
            .write_artifact(&name, &data)
            .map_err(|e| self.path_error("job.write-artifact", &name, e))?;
        self.artifacts.bytes = total;
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use std::path::Path;

    use super::*;
    use crate::limits::Limits;

    fn state(dir: &Path, limits: Limits) -> HostState {
        crate::host::test_state(dir, "{}", limits, &[])
    }

    /// A loop of writes cannot fill the disk: the bytes of every call of
    /// the stage count against `max_artifact_bytes`.
    #[tokio::test]
    async fn artifact_bytes_are_capped_per_stage() {
        let dir = tempfile::tempdir().unwrap();
        let mut st = state(
            dir.path(),
            Limits {
                max_artifact_bytes: 10,
                ..Limits::default()
            },
        );
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
        let mut st = state(dir.path(), Limits::default());
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
}
