//! SSH client for named targets (placeholder: being implemented).

use std::sync::Arc;
use std::time::Duration;

use crate::config::DeviceConfig;
use crate::host::HostError;
use crate::job_file::JobFile;
use crate::limits::Limits;

/// Why an SSH operation failed.
#[derive(Debug, thiserror::Error)]
pub enum SshError {
    #[error("{0}")]
    Unsupported(String),
}

impl From<SshError> for HostError {
    fn from(e: SshError) -> Self {
        HostError::unsupported(e.to_string())
    }
}

/// Output of a remote command.
#[derive(Debug, Clone, Default)]
pub struct ExecOutput {
    pub status: i32,
    pub stdout: Vec<u8>,
    pub stderr: Vec<u8>,
}

/// Connections to the stage's SSH targets.
pub struct SshPool {}

/// One open connection.
pub struct Connection {}

impl SshPool {
    pub fn new(_config: &DeviceConfig, _job: &JobFile, _limits: &Limits) -> anyhow::Result<Self> {
        Ok(SshPool {})
    }

    pub async fn connect(
        &self,
        target: &str,
        _user: Option<&str>,
        _timeout: Duration,
    ) -> Result<Arc<Connection>, SshError> {
        Err(SshError::Unsupported(format!(
            "ssh to {target} not implemented yet"
        )))
    }
}
