//! SSH to named targets (`device`, `control-host`). Keys, passwords and
//! addresses stay on the host.
//!
//! ```no_run
//! use std::time::Duration;
//! use testflinger_connector::prelude::*;
//! # fn f() -> testflinger_connector::Result<()> {
//! let host = ssh::connect("control-host")?;
//! let out = host.run("lsblk -J /dev/sda")?;
//! info!("{}", out.stdout);
//! ssh::wait_reachable("device", Duration::from_secs(300))?;
//! # Ok(()) }
//! ```

use std::time::Duration;

use crate::bindings::testflinger::connector::ssh as wit;
use crate::error::{Error, ErrorKind, Result};

/// Deadline of a command when none is given.
pub const DEFAULT_TIMEOUT: Duration = Duration::from_secs(60);
/// Deadline of a connection attempt.
pub const CONNECT_TIMEOUT: Duration = Duration::from_secs(30);

fn ms(d: Duration) -> u64 {
    d.as_millis() as u64
}

/// What a remote command did.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Output {
    /// Exit status (-1 when killed by a signal).
    pub status: i32,
    /// Standard output.
    pub stdout: String,
    /// Standard error.
    pub stderr: String,
}

impl Output {
    /// Whether the command exited with status 0.
    pub fn success(&self) -> bool {
        self.status == 0
    }
}

/// An open connection to a target.
pub struct Session {
    inner: wit::Session,
    target: String,
}

impl Session {
    /// The target this session talks to.
    pub fn target(&self) -> &str {
        &self.target
    }

    /// Runs `command` (60 s deadline, output logged as it arrives). A
    /// non-zero status is returned, not an error.
    pub fn exec(&self, command: &str) -> Result<Output> {
        self.exec_with(command, DEFAULT_TIMEOUT, true)
    }

    /// Runs `command` without logging its output.
    pub fn exec_quiet(&self, command: &str) -> Result<Output> {
        self.exec_with(command, DEFAULT_TIMEOUT, false)
    }

    /// Runs `command` with an explicit deadline and output logging.
    pub fn exec_with(&self, command: &str, timeout: Duration, log_output: bool) -> Result<Output> {
        let opts = vec![("log-output".to_string(), log_output.to_string())];
        let r = self.inner.exec(command, ms(timeout), &opts)?;
        Ok(Output {
            status: r.status,
            stdout: r.stdout,
            stderr: r.stderr,
        })
    }

    /// Runs `command` and fails unless it exits with status 0; the error
    /// carries its output.
    pub fn run(&self, command: &str) -> Result<Output> {
        self.run_with(command, DEFAULT_TIMEOUT)
    }

    /// [`Session::run`] with an explicit deadline.
    pub fn run_with(&self, command: &str, timeout: Duration) -> Result<Output> {
        let out = self.exec_with(command, timeout, true)?;
        if out.success() {
            Ok(out)
        } else {
            let detail = if out.stderr.trim().is_empty() {
                &out.stdout
            } else {
                &out.stderr
            };
            Err(Error::new(
                ErrorKind::Failed,
                format!(
                    "`{command}` on {} exited with status {}: {}",
                    self.target,
                    out.status,
                    detail.trim()
                ),
            ))
        }
    }

    /// Creates or replaces `remote_path` with `data` and permission bits `mode`.
    pub fn upload(&self, remote_path: &str, data: &[u8], mode: u32) -> Result<()> {
        Ok(self
            .inner
            .upload(remote_path, data, mode, ms(DEFAULT_TIMEOUT))?)
    }

    /// Reads `remote_path`.
    pub fn download(&self, remote_path: &str) -> Result<Vec<u8>> {
        Ok(self.inner.download(remote_path, ms(DEFAULT_TIMEOUT))?)
    }

    /// Copies `remote_path` to `artifacts/<artifact>` on the host.
    pub fn download_artifact(
        &self,
        remote_path: &str,
        artifact: &str,
        timeout: Duration,
    ) -> Result<u64> {
        Ok(self
            .inner
            .download_artifact(remote_path, artifact, ms(timeout))?)
    }

    pub(crate) fn raw(&self) -> &wit::Session {
        &self.inner
    }
}

/// Connects to `target` (or reuses the stage's connection to it).
pub fn connect(target: &str) -> Result<Session> {
    connect_with(target, CONNECT_TIMEOUT, None)
}

/// Connects to `target` as `user` instead of the target's default user.
pub fn connect_as(target: &str, user: &str) -> Result<Session> {
    connect_with(target, CONNECT_TIMEOUT, Some(user))
}

/// Connects with an explicit deadline and optional user.
pub fn connect_with(target: &str, timeout: Duration, user: Option<&str>) -> Result<Session> {
    let opts: Vec<(String, String)> = user
        .map(|u| ("user".to_string(), u.to_string()))
        .into_iter()
        .collect();
    let inner = wit::connect(target, ms(timeout), &opts)?;
    Ok(Session {
        inner,
        target: target.to_string(),
    })
}

/// Waits until `target` accepts an SSH login, polling; returns as soon as
/// it does.
pub fn wait_reachable(target: &str, timeout: Duration) -> Result<()> {
    Ok(wit::wait_reachable(target, ms(timeout))?)
}

/// Makes sure the agent's key is authorised on `target`, using the job's
/// password if needed (the reference's `sshpass ... ssh-copy-id`).
pub fn authorize_key(target: &str, timeout: Duration) -> Result<()> {
    Ok(wit::authorize_key(target, ms(timeout))?)
}
