//! SSH client for named targets (PLACEHOLDER API: being implemented on
//! branch `ssh`; signatures are the contract other modules code against).

use std::path::Path;
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

/// One open connection (shared by every session to its target and user).
pub struct Connection {}

impl SshPool {
    /// Prepares the pool; resolves nothing yet.
    pub fn new(_config: &DeviceConfig, _job: &JobFile, _limits: &Limits) -> anyhow::Result<Self> {
        Ok(SshPool {})
    }

    /// Connects to `target` (`device`, `control-host`) as its default user
    /// or `user`, or returns the open connection.
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

    /// Polls until `target` accepts a login with the agent's keys; at least
    /// one attempt even with a zero timeout.
    pub async fn wait_reachable(&self, target: &str, _timeout: Duration) -> Result<(), SshError> {
        Err(SshError::Unsupported(format!(
            "ssh to {target} not implemented yet"
        )))
    }

    /// Makes sure the agent's public key is authorised on `target`, logging
    /// in with the job's test password when the key does not work yet.
    pub async fn authorize_key(&self, target: &str, _timeout: Duration) -> Result<(), SshError> {
        Err(SshError::Unsupported(format!(
            "ssh to {target} not implemented yet"
        )))
    }
}

impl Connection {
    /// `user@host:port`, for messages.
    pub fn describe(&self) -> String {
        String::new()
    }

    /// Runs `command`; output lines are logged as they arrive when
    /// `log_output`. A non-zero exit status is not an error.
    pub async fn exec(
        &self,
        _command: &str,
        _timeout: Duration,
        _log_output: bool,
    ) -> Result<ExecOutput, SshError> {
        Err(SshError::Unsupported("not implemented yet".into()))
    }

    /// Runs `command` with `stdin` streamed into it (closed at the end of
    /// the stream), e.g. an image into `zstdcat | dd`.
    pub async fn exec_with_stdin<S>(
        &self,
        _command: &str,
        _stdin: S,
        _timeout: Duration,
        _log_output: bool,
    ) -> Result<ExecOutput, SshError>
    where
        S: futures::Stream<Item = std::io::Result<bytes::Bytes>> + Send + Unpin,
    {
        Err(SshError::Unsupported("not implemented yet".into()))
    }

    /// Creates or replaces `remote_path` with `data` and mode `mode`.
    pub async fn upload(
        &self,
        _remote_path: &str,
        _data: &[u8],
        _mode: u32,
        _timeout: Duration,
    ) -> Result<(), SshError> {
        Err(SshError::Unsupported("not implemented yet".into()))
    }

    /// Reads `remote_path`, failing past `max_bytes`.
    pub async fn download(
        &self,
        _remote_path: &str,
        _timeout: Duration,
        _max_bytes: u64,
    ) -> Result<Vec<u8>, SshError> {
        Err(SshError::Unsupported("not implemented yet".into()))
    }

    /// Copies `remote_path` into the local file `dest`; returns its size.
    pub async fn download_to(
        &self,
        _remote_path: &str,
        _dest: &Path,
        _timeout: Duration,
        _max_bytes: u64,
    ) -> Result<u64, SshError> {
        Err(SshError::Unsupported("not implemented yet".into()))
    }
}
