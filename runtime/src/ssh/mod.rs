//! SSH client for named targets.
//!
//! A connector names a target (`device`, `control-host`); the pool maps
//! it to a host and user from the device config and the job
//! ([`target`]), honours the agent user's `~/.ssh/config` ([`config`]) and
//! keys, and keeps one connection per target and user for the whole stage
//! ([`Connection`]), reconnecting transparently after a reboot.
//!
//! Host keys are not checked by default, like the reference's
//! `ssh -o StrictHostKeyChecking=no -o UserKnownHostsFile=/dev/null`;
//! `connector_runtime.strict_host_key_checking` turns checking against
//! `known_hosts` on.

pub mod client;
pub mod config;
mod connection;
pub mod target;

use std::collections::HashMap;
use std::path::PathBuf;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use tokio::sync::{OwnedSemaphorePermit, Semaphore};
use tokio::time::Instant;
use tracing::Instrument;

pub use connection::Connection;
use target::{Identity, TargetFacts};

use crate::config::{DeviceConfig, RuntimeSettings};
use crate::job_file::JobFile;
use crate::limits::Limits;

/// The command that proves a login works, as the reference's
/// `ssh ... /bin/true`.
const PROBE_COMMAND: &str = "/bin/true";

/// Why an SSH operation failed. Messages name the target, its address and
/// what to do; none ever contains a password.
#[derive(Debug, thiserror::Error)]
pub enum SshError {
    /// The target name is not one the runtime knows.
    #[error("unknown SSH target `{target}`; known targets: {}", target::TARGETS.join(", "))]
    UnknownTarget { target: String },
    /// The device config lacks the key the target is built from.
    #[error("SSH target {target} needs `{key}` in the device config; add it")]
    NotConfigured { target: String, key: String },
    /// No private key could be found.
    #[error("{0}")]
    NoIdentity(String),
    /// The agent's SSH setup (HOME, ssh config, key files) is unusable.
    #[error("{0}")]
    BadSetup(String),
    /// An argument was rejected (empty path, bad user name ...).
    #[error("{0}")]
    Invalid(String),
    /// The TCP connection or the SSH handshake failed.
    #[error("cannot connect to {target} ({addr}): {message}")]
    Connect {
        target: String,
        addr: String,
        message: String,
    },
    /// Strict host key checking refused the server.
    #[error("refusing to connect to {target}: {message}")]
    HostKey { target: String, message: String },
    /// The login was refused.
    #[error("{target} ({addr}) refused the login of {user}: {message}")]
    Auth {
        target: String,
        addr: String,
        user: String,
        message: String,
    },
    /// A deadline passed.
    #[error("{0}")]
    Timeout(String),
    /// The target never accepted a login within the wait.
    #[error("{target} ({addr}) did not accept an SSH login {how}; last failure: {last}")]
    Unreachable {
        target: String,
        addr: String,
        /// `within 30 s (4 attempts)` or `on its only attempt`.
        how: String,
        last: String,
    },
    /// The connection broke, or local data could not be read or written.
    #[error("{0}")]
    Io(String),
    /// A runtime limit was hit; the message names it.
    #[error("{0}")]
    Limit(String),
    /// A remote operation ran and failed.
    #[error("{0}")]
    Failed(String),
    /// A remote file does not exist.
    #[error("{0}")]
    RemoteNotFound(String),
}

impl SshError {
    /// Whether waiting longer cannot help (configuration and policy
    /// problems), so polling stops at once.
    fn is_permanent(&self) -> bool {
        matches!(
            self,
            SshError::UnknownTarget { .. }
                | SshError::NotConfigured { .. }
                | SshError::NoIdentity(_)
                | SshError::BadSetup(_)
                | SshError::Invalid(_)
                | SshError::HostKey { .. }
                | SshError::Limit(_)
        )
    }
}

/// Output of a remote command.
#[derive(Debug, Clone, Default)]
pub struct ExecOutput {
    /// Exit status, or -1 if the command was killed by a signal.
    pub status: i32,
    /// Standard output, as received.
    pub stdout: Vec<u8>,
    /// Standard error, as received.
    pub stderr: Vec<u8>,
}

/// Which output stream a line came from.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum OutputStream {
    /// Standard output.
    Stdout,
    /// Standard error (SSH extended data 1).
    Stderr,
}

/// A password that never shows up in `Debug` output.
#[derive(Clone)]
struct Secret(String);

impl std::fmt::Debug for Secret {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("<redacted>")
    }
}

/// One of the stage's open SSH sessions (a guest's `session` resource);
/// the slot is given back when this is dropped.
#[derive(Debug)]
pub struct SessionSlot(#[allow(dead_code)] OwnedSemaphorePermit);

/// Connections to the stage's SSH targets.
pub struct SshPool {
    facts: TargetFacts,
    settings: RuntimeSettings,
    password: Secret,
    limits: Limits,
    home: Option<PathBuf>,
    conns: Mutex<HashMap<(String, String), Arc<Connection>>>,
    /// Concurrently open channels (one per running command).
    channels: Arc<Semaphore>,
    /// Open guest sessions.
    sessions: Arc<Semaphore>,
}

impl std::fmt::Debug for SshPool {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("SshPool")
            .field("facts", &self.facts)
            .field("password", &self.password)
            .finish_non_exhaustive()
    }
}

impl SshPool {
    /// Prepares the pool; resolves nothing yet, so a stage that never uses
    /// SSH never reads `~/.ssh`.
    pub fn new(config: &DeviceConfig, job: &JobFile, limits: &Limits) -> anyhow::Result<Self> {
        let facts = TargetFacts {
            device_ip: config.device_ip(),
            test_username: job.test_username(),
            control_host: config.string("control_host"),
            control_user: config
                .string("control_user")
                .unwrap_or_else(|| "ubuntu".into()),
        };
        let max = limits.max_ssh_sessions;
        Ok(SshPool {
            facts,
            settings: config.runtime.clone(),
            password: Secret(job.test_password()),
            limits: limits.clone(),
            home: None,
            conns: Mutex::new(HashMap::new()),
            channels: Arc::new(Semaphore::new(max)),
            sessions: Arc::new(Semaphore::new(max)),
        })
    }

    /// Uses `home` instead of `$HOME` for `~` (tests, and labs that keep
    /// the agent's SSH setup elsewhere).
    pub fn with_home(mut self, home: impl Into<PathBuf>) -> Self {
        self.home = Some(home.into());
        self
    }

    fn home(&self) -> Result<PathBuf, SshError> {
        match &self.home {
            Some(h) => Ok(h.clone()),
            None => target::home_dir(),
        }
    }

    /// Reserves one of the stage's `limits.max_ssh_sessions` session
    /// slots, for a guest's session resource.
    pub fn open_session(&self) -> Result<SessionSlot, SshError> {
        self.sessions
            .clone()
            .try_acquire_owned()
            .map(SessionSlot)
            .map_err(|_| {
                SshError::Limit(format!(
                    "too many SSH sessions open at once (limit {}); close some, or limits.max_ssh_sessions in the lab file raises it",
                    self.limits.max_ssh_sessions
                ))
            })
    }

    /// The pooled connection object for `target` and `user` (not
    /// necessarily connected yet).
    fn connection(&self, target: &str, user: Option<&str>) -> Result<Arc<Connection>, SshError> {
        if let Some(user) = user {
            check_user(user)?;
        }
        let rule = self.facts.rule(target)?;
        let user = user.unwrap_or(&rule.user).to_string();
        let key = (target.to_string(), user.clone());
        if let Some(c) = self
            .conns
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .get(&key)
        {
            return Ok(c.clone());
        }
        let resolved = target::resolve(
            &self.facts,
            &self.settings,
            &self.home()?,
            target,
            Some(&user),
        )?;
        let conn = Arc::new(Connection::new(
            resolved,
            self.limits.max_exec_output_bytes,
            self.channels.clone(),
            self.limits.max_ssh_sessions,
        ));
        let mut conns = self.conns.lock().unwrap_or_else(|e| e.into_inner());
        Ok(conns.entry(key).or_insert(conn).clone())
    }

    /// Connects to `target` (`device`, `control-host`) as its default user
    /// or `user`, or returns the open connection.
    pub async fn connect(
        &self,
        target: &str,
        user: Option<&str>,
        timeout: Duration,
    ) -> Result<Arc<Connection>, SshError> {
        let conn = self.connection(target, user)?;
        let deadline = Instant::now() + timeout;
        match tokio::time::timeout_at(deadline, conn.live(deadline)).await {
            Ok(result) => result?,
            Err(_) => {
                return Err(SshError::Timeout(format!(
                    "connecting to {target} ({}) took longer than {}",
                    conn.describe(),
                    human_duration(timeout)
                )));
            }
        };
        Ok(conn)
    }

    /// Polls until `target` accepts a login with the agent's keys and runs
    /// `/bin/true`, every `poll_interval_seconds`; at least one attempt
    /// even with a zero timeout. The working connection is kept for reuse.
    pub async fn wait_reachable(&self, target: &str, timeout: Duration) -> Result<(), SshError> {
        let conn = self.connection(target, None)?;
        let span = tracing::debug_span!(target: "tfdc::ssh", "wait_reachable", target);
        self.poll(&conn, timeout, &Goal::Reachable)
            .instrument(span)
            .await
    }

    /// Makes sure the agent's public key is authorised on `target`, logging
    /// in with the job's test password when the key does not work yet (the
    /// reference's `sshpass -p <password> ssh-copy-id`); polls like
    /// [`SshPool::wait_reachable`] until the target answers.
    pub async fn authorize_key(&self, target: &str, timeout: Duration) -> Result<(), SshError> {
        let conn = self.connection(target, None)?;
        let identity = conn.resolved().identities[..1].to_vec();
        let public_line = identity[0].public_line();
        let span = tracing::debug_span!(target: "tfdc::ssh", "authorize_key", target);
        let goal = Goal::Authorized {
            identity: &identity,
            public_line: &public_line,
        };
        let result = self.poll(&conn, timeout, &goal).instrument(span).await;
        // Belt and braces: no message leaves with the password in it.
        result.map_err(|e| redact(e, &self.password.0))
    }

    /// One attempt at `goal` within `budget`.
    async fn attempt(
        &self,
        conn: &Connection,
        goal: &Goal<'_>,
        budget: Duration,
    ) -> Result<(), SshError> {
        let started = Instant::now();
        let left = || budget.saturating_sub(started.elapsed());
        match goal {
            Goal::Reachable => {
                let h = conn
                    .login(client::Login::Keys(&conn.resolved().identities), budget)
                    .await?;
                probe(conn, &h, left()).await?;
                conn.adopt(h).await;
                Ok(())
            }
            Goal::Authorized {
                identity,
                public_line,
            } => {
                match conn.login(client::Login::Keys(identity), budget).await {
                    Ok(h) => {
                        conn.adopt(h).await;
                        return Ok(());
                    }
                    Err(SshError::Auth { .. }) => {}
                    Err(e) => return Err(e),
                }
                let h = conn
                    .login(client::Login::Password(&self.password.0), left())
                    .await?;
                install_key(conn, &h, public_line, left()).await?;
                let _ = h
                    .disconnect(russh::Disconnect::ByApplication, "", "en")
                    .await;
                match conn.login(client::Login::Keys(identity), left()).await {
                    Ok(h) => {
                        tracing::info!(target: "tfdc::ssh", "authorised the agent key {} for {}", identity[0].path.display(), conn.describe());
                        conn.adopt(h).await;
                        Ok(())
                    }
                    Err(SshError::Auth { .. }) => Err(SshError::Failed(format!(
                        "the agent key was added to ~/.ssh/authorized_keys of {} but key login still fails; check sshd's AuthorizedKeysFile and StrictModes on the target",
                        conn.describe()
                    ))),
                    Err(e) => Err(e),
                }
            }
        }
    }

    /// Attempts `goal` until it succeeds, a permanent error occurs, or
    /// `timeout` passes, sleeping `poll_interval_seconds` between attempts.
    async fn poll(
        &self,
        conn: &Connection,
        timeout: Duration,
        goal: &Goal<'_>,
    ) -> Result<(), SshError> {
        let started = Instant::now();
        let deadline = started + timeout;
        let interval =
            Duration::from_secs_f64(self.settings.poll_interval_seconds.clamp(0.01, 3600.0));
        let connect_timeout = conn
            .resolved()
            .connect_timeout
            .min(self.limits.host_call_timeout);
        let mut attempts = 0u32;
        let mut last_real: Option<SshError> = None;
        loop {
            attempts += 1;
            let left = deadline.saturating_duration_since(Instant::now());
            // The first attempt always gets a full connection timeout, so
            // that a zero timeout means "try exactly once".
            let budget = if attempts == 1 {
                connect_timeout
            } else {
                connect_timeout.min(left)
            };
            let err = match tokio::time::timeout(budget, self.attempt(conn, goal, budget)).await {
                Ok(Ok(())) => {
                    tracing::debug!(target: "tfdc::ssh", "{} answers after {attempts} attempt(s)", conn.describe());
                    return Ok(());
                }
                Ok(Err(e)) if e.is_permanent() => return Err(e),
                Ok(Err(e)) => e,
                Err(_) => SshError::Timeout(format!("no answer within {}", human_duration(budget))),
            };
            tracing::debug!(target: "tfdc::ssh", "{} not reachable yet: {err}", conn.describe());
            // An attempt cut short by the deadline says less than the
            // real failure of the attempt before it.
            let cut_short = matches!(err, SshError::Timeout(_)) && budget < connect_timeout;
            let err = match last_real.take() {
                Some(previous) if cut_short => previous,
                _ => err,
            };
            if !matches!(err, SshError::Timeout(_)) {
                last_real = Some(SshError::Failed(err.to_string()));
            }
            let now = Instant::now();
            if now < deadline {
                tokio::time::sleep_until((now + interval).min(deadline)).await;
            }
            if Instant::now() >= deadline {
                let how = if attempts == 1 {
                    "on its only attempt".to_string()
                } else {
                    format!("within {} ({attempts} attempts)", human_duration(timeout))
                };
                return Err(SshError::Unreachable {
                    target: conn.target().to_string(),
                    addr: conn.describe(),
                    how,
                    last: err.to_string(),
                });
            }
        }
    }
}

/// What [`SshPool::poll`] waits for.
enum Goal<'a> {
    /// A key login that can run the probe command.
    Reachable,
    /// A key login with `identity`, installing `public_line` with the
    /// test password first if needed.
    Authorized {
        identity: &'a [Identity],
        public_line: &'a str,
    },
}

/// Runs the probe command on a fresh handle.
async fn probe(conn: &Connection, h: &client::SshHandle, budget: Duration) -> Result<(), SshError> {
    let out = run_once(h, PROBE_COMMAND, None, budget)
        .await
        .map_err(|e| {
            SshError::Io(format!(
                "logged in to {} but could not run `{PROBE_COMMAND}`: {e}",
                conn.describe()
            ))
        })?;
    if out.status != 0 {
        return Err(SshError::Failed(format!(
            "logged in to {} but `{PROBE_COMMAND}` exited with status {}",
            conn.describe(),
            out.status
        )));
    }
    Ok(())
}

/// Appends `public_line` to the login user's `~/.ssh/authorized_keys`
/// (creating it with the modes sshd wants), unless it is already there.
async fn install_key(
    conn: &Connection,
    h: &client::SshHandle,
    public_line: &str,
    budget: Duration,
) -> Result<(), SshError> {
    let key = shlex::try_quote(public_line)
        .map_err(|_| SshError::BadSetup("the agent's public key contains a NUL byte".into()))?;
    let script = format!(
        "umask 077; mkdir -p \"$HOME/.ssh\" && chmod 700 \"$HOME/.ssh\" && f=\"$HOME/.ssh/authorized_keys\" && touch \"$f\" && chmod 600 \"$f\" && \
         {{ grep -qxF {key} \"$f\" || {{ if [ -s \"$f\" ] && [ -n \"$(tail -c 1 \"$f\")\" ]; then echo >> \"$f\"; fi; printf '%s\\n' {key} >> \"$f\"; }}; }}"
    );
    // `sh -c` so that a non-POSIX login shell (fish, csh) runs it too.
    let command = format!(
        "exec sh -c {}",
        shlex::try_quote(&script).unwrap_or_default()
    );
    let out = run_once(h, &command, None, budget).await?;
    if out.status != 0 {
        return Err(SshError::Failed(format!(
            "cannot add the agent key to ~/.ssh/authorized_keys on {}: {}",
            conn.describe(),
            String::from_utf8_lossy(&out.stderr).trim()
        )));
    }
    Ok(())
}

/// Runs one short command on `h` without the pool's bookkeeping (probes
/// and key installation on connections that are not pooled yet).
async fn run_once(
    h: &client::SshHandle,
    command: &str,
    input: Option<&[u8]>,
    timeout: Duration,
) -> Result<ExecOutput, SshError> {
    let work = async {
        let mut channel = h
            .channel_open_session()
            .await
            .map_err(|e| SshError::Io(format!("cannot open a session: {e}")))?;
        channel
            .exec(true, command)
            .await
            .map_err(|e| SshError::Io(e.to_string()))?;
        if let Some(data) = input {
            channel
                .data_bytes(bytes::Bytes::copy_from_slice(data))
                .await
                .map_err(|e| SshError::Io(e.to_string()))?;
        }
        let _ = channel.eof().await;
        let mut out = ExecOutput {
            status: -1,
            ..Default::default()
        };
        let mut got_status = false;
        while let Some(msg) = channel.wait().await {
            match msg {
                russh::ChannelMsg::Data { data } if out.stdout.len() < 64 * 1024 => {
                    out.stdout.extend_from_slice(&data)
                }
                russh::ChannelMsg::ExtendedData { data, ext: 1 }
                    if out.stderr.len() < 64 * 1024 =>
                {
                    out.stderr.extend_from_slice(&data)
                }
                russh::ChannelMsg::ExitStatus { exit_status } => {
                    got_status = true;
                    out.status = i32::try_from(exit_status).unwrap_or(-1);
                }
                russh::ChannelMsg::ExitSignal { .. } => got_status = true,
                russh::ChannelMsg::Failure => {
                    return Err(SshError::Failed(
                        "the server refused to run the command".into(),
                    ));
                }
                russh::ChannelMsg::Close => break,
                _ => {}
            }
        }
        if !got_status {
            return Err(SshError::Io(
                "the connection closed before the command finished".into(),
            ));
        }
        Ok(out)
    };
    tokio::time::timeout(timeout, work).await.map_err(|_| {
        SshError::Timeout(format!(
            "`{}` did not finish within {}",
            connection::short(command),
            human_duration(timeout)
        ))
    })?
}

/// Refuses user names that would be misread by the remote side or in
/// messages.
fn check_user(user: &str) -> Result<(), SshError> {
    if user.is_empty()
        || user.len() > 64
        || user.starts_with('-')
        || !user
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || matches!(c, '_' | '-' | '.' | '$'))
    {
        return Err(SshError::Invalid(format!(
            "`{user}` is not a valid user name for option `user`"
        )));
    }
    Ok(())
}

/// Replaces `secret` in an error's message.
fn redact(e: SshError, secret: &str) -> SshError {
    if secret.is_empty() || !e.to_string().contains(secret) {
        return e;
    }
    let text = e.to_string().replace(secret, "<redacted>");
    match e {
        SshError::Unreachable { .. } | SshError::Timeout(_) => SshError::Timeout(text),
        SshError::Auth { .. } | SshError::HostKey { .. } => SshError::Failed(text),
        _ => SshError::Failed(text),
    }
}

/// `1.5 s`, `90 s`, `250 ms`: durations in messages.
pub(crate) fn human_duration(d: Duration) -> String {
    if d < Duration::from_secs(1) {
        format!("{} ms", d.as_millis())
    } else if d.subsec_millis() == 0 {
        format!("{} s", d.as_secs())
    } else {
        format!("{:.1} s", d.as_secs_f64())
    }
}

#[cfg(test)]
mod tests;
