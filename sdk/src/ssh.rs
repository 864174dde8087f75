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

use crate::error::{Error, ErrorKind, Result};
use crate::sys;
use crate::wait::{Check, Wait, WaitError};

/// Deadline of a command when none is given.
pub const DEFAULT_TIMEOUT: Duration = Duration::from_secs(60);
/// Deadline of a connection attempt.
pub const CONNECT_TIMEOUT: Duration = Duration::from_secs(30);
/// How long OpenSSH without a `ConnectTimeout` (the reference's `ssh`
/// commands) waits for a target that does not answer at all: about when
/// Linux gives up on a TCP connection. A bound for [`probe`].
pub const OPENSSH_CONNECT_WAIT: Duration = Duration::from_secs(120);

/// Characters of command output quoted in messages ([`Output::detail`]).
pub const DETAIL_CHARS: usize = 500;

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
    /// A command's output (for tests and fakes).
    pub fn new(status: i32, stdout: &str, stderr: &str) -> Self {
        Output {
            status,
            stdout: stdout.to_string(),
            stderr: stderr.to_string(),
        }
    }

    /// Whether the command exited with status 0.
    pub fn success(&self) -> bool {
        self.status == 0
    }

    /// What the command said, for a message: its stderr, else its stdout,
    /// trimmed and cut to [`DETAIL_CHARS`] characters (`...` marks a cut);
    /// `no output` when both are empty.
    ///
    /// ```
    /// use testflinger_connector::ssh::Output;
    /// assert_eq!(Output::new(1, "partial\n", "dd: no space\n").detail(), "dd: no space");
    /// assert_eq!(Output::new(2, " usage: stm -ts ", "").detail(), "usage: stm -ts");
    /// assert_eq!(Output::new(1, "", "").detail(), "no output");
    /// ```
    pub fn detail(&self) -> String {
        let text = if self.stderr.trim().is_empty() {
            self.stdout.trim()
        } else {
            self.stderr.trim()
        };
        if text.is_empty() {
            return "no output".to_string();
        }
        match text.char_indices().nth(DETAIL_CHARS) {
            Some((cut, _)) => format!("{}...", &text[..cut]),
            None => text.to_string(),
        }
    }
}

/// An open connection to a target.
pub struct Session {
    inner: sys::Session,
    target: String,
}

impl std::fmt::Debug for Session {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Session")
            .field("target", &self.target)
            .finish_non_exhaustive()
    }
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
        self.inner.exec(command, timeout, log_output)
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
            Err(Error::new(
                ErrorKind::Failed,
                format!(
                    "`{command}` on {} exited with status {}: {}",
                    self.target,
                    out.status,
                    out.detail()
                ),
            ))
        }
    }

    /// Creates or replaces `remote_path` with `data` and permission bits `mode`.
    pub fn upload(&self, remote_path: &str, data: &[u8], mode: u32) -> Result<()> {
        self.inner.upload(remote_path, data, mode, DEFAULT_TIMEOUT)
    }

    /// Reads `remote_path`.
    pub fn download(&self, remote_path: &str) -> Result<Vec<u8>> {
        self.inner.download(remote_path, DEFAULT_TIMEOUT)
    }

    /// Copies `remote_path` to `artifacts/<artifact>` on the host.
    pub fn download_artifact(
        &self,
        remote_path: &str,
        artifact: &str,
        timeout: Duration,
    ) -> Result<u64> {
        self.inner.download_artifact(remote_path, artifact, timeout)
    }

    pub(crate) fn raw(&self) -> &sys::Session {
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
    let inner = sys::ssh_connect(target, timeout, user)?;
    Ok(Session {
        inner,
        target: target.to_string(),
    })
}

/// The reference's `ssh <target> /bin/true` check: one login that runs
/// `/bin/true`. A target that does not answer at all is tried again (each
/// attempt is bounded by the host's connect timeout) until `limit`, as
/// ssh without a timeout keeps waiting; any other failure (a refused
/// connection or login, a missing grant) is returned at once, with its
/// kind, as ssh gives up then.
///
/// ```
/// use std::time::Duration;
/// use testflinger_connector::prelude::*;
/// use testflinger_connector::testing::{FakeHost, err};
///
/// let host = FakeHost::new()
///     .config(serde_json::json!({"device_ip": "10.0.0.5"}))
///     .connect("device", [err(ErrorKind::Io, "connection refused")])
///     .install();
/// let e = ssh::probe("device", ssh::OPENSSH_CONNECT_WAIT).unwrap_err();
/// assert_eq!(e.kind(), ErrorKind::Io);
/// assert_eq!(host.trace(), ["ssh connect device"]);
/// ```
pub fn probe(target: &str, limit: Duration) -> Result<()> {
    Wait::new(format!("an SSH login to {target}"), limit)
        .every(Duration::from_secs(1))
        .retry()
        .until(|| {
            let ran =
                connect_with(target, CONNECT_TIMEOUT, None).and_then(|s| s.exec_quiet("/bin/true"));
            match ran {
                Ok(out) if out.success() => Check::Ready(()),
                Ok(out) => Check::Failed(Error::new(
                    ErrorKind::Failed,
                    format!("`/bin/true` on {target} exited with status {}", out.status),
                )),
                // No answer at all: ssh would still be waiting.
                Err(e) if e.is_timeout() => Check::NotYet(e),
                Err(e) => Check::Failed(e),
            }
        })
        .map(drop)
        .map_err(WaitError::into_reason)
}

/// Waits until `target` accepts an SSH login, polling; returns as soon as
/// it does.
pub fn wait_reachable(target: &str, timeout: Duration) -> Result<()> {
    sys::ssh_wait_reachable(target, timeout)
}

/// Makes sure the agent's key is authorised on `target`, using the job's
/// password if needed (the reference's `sshpass ... ssh-copy-id`).
pub fn authorize_key(target: &str, timeout: Duration) -> Result<()> {
    sys::ssh_authorize_key(target, timeout)
}
