//! Running the lab's command lists (`reboot_script`, `poweroff_script` ...)
//! with the reference's semantics: entries in order, each with a deadline,
//! stop at the first failure.

use std::process::Stdio;
use std::time::Duration;

use crate::config::{ConfigError, DeviceConfig};

/// How an entry runs.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Style {
    /// Split on whitespace and exec directly (no shell, quotes are literal).
    Split,
    /// `/bin/sh -c <entry>`.
    Shell,
}

/// Why a command list did not run to completion.
#[derive(Debug, thiserror::Error)]
pub enum PowerError {
    #[error("{key} is not configured for this device; add it to the device config")]
    NotConfigured { key: String },
    #[error(transparent)]
    BadConfig(#[from] ConfigError),
    #[error("{key} entry `{entry}` did not finish within {secs} s and was killed")]
    Timeout {
        key: String,
        entry: String,
        secs: u64,
    },
    #[error("{key} entry `{entry}` failed with exit status {status}")]
    Failed {
        key: String,
        entry: String,
        status: String,
    },
    #[error("{key} entry `{entry}` could not be started: {error}")]
    Spawn {
        key: String,
        entry: String,
        error: String,
    },
}

/// The entries of `key`, or `NotConfigured`.
pub fn entries(config: &DeviceConfig, key: &str) -> Result<Vec<String>, PowerError> {
    config
        .command_list(key)?
        .ok_or_else(|| PowerError::NotConfigured { key: key.into() })
}

/// Runs every entry of the list `key`. Output goes to the runtime's own
/// stdout and stderr, as in the reference.
pub async fn run_list(
    config: &DeviceConfig,
    key: &str,
    style: Style,
    timeout_per_entry: Duration,
) -> Result<(), PowerError> {
    for entry in entries(config, key)? {
        run_entry(key, &entry, style, timeout_per_entry).await?;
    }
    Ok(())
}

/// Runs one entry. The entry gets its own process group, and the whole group
/// is killed on timeout, so helper processes it started do not linger.
pub async fn run_entry(
    key: &str,
    entry: &str,
    style: Style,
    timeout: Duration,
) -> Result<(), PowerError> {
    let mut command = match style {
        Style::Split => {
            let mut words = entry.split_whitespace();
            let Some(program) = words.next() else {
                return Err(PowerError::Spawn {
                    key: key.into(),
                    entry: entry.into(),
                    error: "the entry is empty".into(),
                });
            };
            let mut c = tokio::process::Command::new(program);
            c.args(words);
            c
        }
        Style::Shell => {
            let mut c = tokio::process::Command::new("/bin/sh");
            c.arg("-c").arg(entry);
            c
        }
    };
    command
        .stdin(Stdio::null())
        .stdout(Stdio::inherit())
        .stderr(Stdio::inherit())
        .process_group(0)
        .kill_on_drop(true);
    tracing::debug!(target: "tfdc::power", "running {key} entry: {entry}");
    let mut child = command.spawn().map_err(|e| PowerError::Spawn {
        key: key.into(),
        entry: entry.into(),
        error: e.to_string(),
    })?;
    let pid = child.id();
    // Declared after `child`, so dropped (and run) before it is killed and
    // reaped.
    let mut group = GroupGuard(pid);
    let outcome = tokio::time::timeout(timeout, child.wait()).await;
    if let Ok(Ok(_)) = outcome {
        // The entry ended by itself; what it left running is its business
        // (as in the reference), and its group id may be reused.
        group.0 = None;
    }
    match outcome {
        Ok(Ok(status)) if status.success() => Ok(()),
        Ok(Ok(status)) => Err(PowerError::Failed {
            key: key.into(),
            entry: entry.into(),
            status: status
                .code()
                .map(|c| c.to_string())
                .unwrap_or_else(|| format!("{status}")),
        }),
        Ok(Err(e)) => Err(PowerError::Spawn {
            key: key.into(),
            entry: entry.into(),
            error: e.to_string(),
        }),
        Err(_) => {
            group.kill();
            let _ = child.kill().await;
            Err(PowerError::Timeout {
                key: key.into(),
                entry: entry.into(),
                secs: timeout.as_secs(),
            })
        }
    }
}

/// Kills an entry's whole process group when dropped while armed: when
/// the host call is abandoned (the stage timed out and dropped it) the
/// entry and everything it started in the background go too, instead of
/// outliving the runtime while holding its stdout and stderr.
struct GroupGuard(Option<u32>);

impl GroupGuard {
    /// Kills the group now and disarms.
    fn kill(&mut self) {
        if let Some(pid) = self.0.take() {
            // SAFETY: plain syscall; the group id is the child's pid (it
            // was spawned with `process_group(0)`) and the child is not
            // reaped yet, so the id still names that group.
            unsafe {
                libc::killpg(pid as libc::pid_t, libc::SIGKILL);
            }
        }
    }
}

impl Drop for GroupGuard {
    fn drop(&mut self) {
        self.kill();
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::path::Path;

    fn config(text: &str) -> DeviceConfig {
        DeviceConfig::parse(Path::new("t.yaml"), text).unwrap()
    }

    #[tokio::test]
    async fn runs_in_order_and_stops_at_first_failure() {
        let dir = tempfile::tempdir().unwrap();
        let log = dir.path().join("log");
        let c = config(&format!(
            "reboot_script: ['touch {0}.1', 'false', 'touch {0}.2']\n",
            log.display()
        ));
        let err = run_list(&c, "reboot_script", Style::Split, Duration::from_secs(5))
            .await
            .unwrap_err();
        assert!(matches!(err, PowerError::Failed { .. }), "{err}");
        assert!(dir.path().join("log.1").exists());
        assert!(!dir.path().join("log.2").exists());
    }

    #[tokio::test]
    async fn split_style_does_not_use_a_shell() {
        // Split style passes `'exit` and `0'` as separate words, so the
        // quotes reach sh as literal text and it reports a syntax error; the
        // shell style interprets them and exits 0.
        let c = config("k: [\"/bin/sh -c 'exit 0'\"]\n");
        let err = run_list(&c, "k", Style::Split, Duration::from_secs(5))
            .await
            .unwrap_err();
        assert!(matches!(err, PowerError::Failed { .. }), "{err}");
        run_list(&c, "k", Style::Shell, Duration::from_secs(5))
            .await
            .unwrap();
    }

    /// An entry abandoned by its caller (a stage timeout drops the host
    /// call) takes its background processes with it.
    #[tokio::test]
    async fn abandoned_entries_kill_their_process_group() {
        let dir = tempfile::tempdir().unwrap();
        let pidfile = dir.path().join("pid");
        let entry = format!("sleep 600 & echo $! > {}; wait", pidfile.display());
        let mut run = Box::pin(run_entry(
            "k",
            &entry,
            Style::Shell,
            Duration::from_secs(600),
        ));
        tokio::select! {
            r = &mut run => panic!("the entry ended: {r:?}"),
            _ = async {
                while !pidfile.exists() {
                    tokio::time::sleep(Duration::from_millis(10)).await;
                }
                // Let the shell reach `wait`.
                tokio::time::sleep(Duration::from_millis(50)).await;
            } => {}
            _ = tokio::time::sleep(Duration::from_secs(10)) => panic!("no pid file"),
        }
        // What a stage timeout does to the host call.
        drop(run);
        let pid: i32 = std::fs::read_to_string(&pidfile)
            .unwrap()
            .trim()
            .parse()
            .unwrap();
        let stat = format!("/proc/{pid}/stat");
        let deadline = std::time::Instant::now() + Duration::from_secs(5);
        let alive = || {
            std::fs::read_to_string(&stat)
                .map(|s| !s.split(") ").nth(1).unwrap_or("").starts_with('Z'))
                .unwrap_or(false)
        };
        while alive() && std::time::Instant::now() < deadline {
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
        if alive() {
            // SAFETY: plain syscall on the process this test started.
            unsafe { libc::kill(pid, libc::SIGKILL) };
            panic!("the background process {pid} outlived its abandoned entry");
        }
    }

    #[tokio::test]
    async fn timeouts_kill_and_missing_things_are_named() {
        let c = config("k: ['sleep 30']\nbad: ['/nonexistent/prog']\n");
        let start = std::time::Instant::now();
        let err = run_list(&c, "k", Style::Split, Duration::from_millis(200))
            .await
            .unwrap_err();
        assert!(matches!(err, PowerError::Timeout { .. }), "{err}");
        assert!(start.elapsed() < Duration::from_secs(10));
        let err = run_list(&c, "bad", Style::Split, Duration::from_secs(5))
            .await
            .unwrap_err();
        assert!(matches!(err, PowerError::Spawn { .. }), "{err}");
        let err = run_list(&c, "nope", Style::Split, Duration::from_secs(5))
            .await
            .unwrap_err();
        assert!(err.to_string().contains("nope is not configured"), "{err}");
    }
}
