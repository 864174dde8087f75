//! Running the lab's command lists (`reboot_script`, `poweroff_script` ...)
//! with the reference's semantics: entries in order, each with a deadline,
//! stop at the first failure.
//!
//! An entry's stdout and stderr are captured (the last [`OUTPUT_KEPT`]
//! bytes of each), as the reference's control-host scripts are: when the
//! entry fails or times out they are logged at ERROR after the failure
//! (`stdout: ...`, `stderr: ...`), otherwise only at DEBUG. (The
//! reference's `hardreset` lets `reboot_script` output through to its own
//! stdout and stderr; here every list behaves alike.)

use std::process::Stdio;
use std::time::Duration;

use tokio::io::AsyncReadExt;

use crate::config::{ConfigError, DeviceConfig};

/// Bytes kept of each of an entry's output streams: the end, where a
/// failing script says why.
pub const OUTPUT_KEPT: usize = 64 * 1024;
/// How long the output is still read after an entry exited: a background
/// process it left running may hold the pipes open forever.
const OUTPUT_GRACE: Duration = Duration::from_secs(1);
const TARGET: &str = "tfdc::power";

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

/// Runs every entry of the list `key`; output is captured and logged (see
/// the module docs).
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

/// What an entry printed: the last [`OUTPUT_KEPT`] bytes of a stream and
/// how many there were in all.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Captured {
    kept: Vec<u8>,
    total: u64,
}

impl Captured {
    fn push(&mut self, chunk: &[u8]) {
        self.total += chunk.len() as u64;
        self.kept.extend_from_slice(chunk);
        // Trim in batches, so a chatty entry costs a copy per
        // `OUTPUT_KEPT` bytes, not per chunk.
        if self.kept.len() > 2 * OUTPUT_KEPT {
            self.kept.drain(..self.kept.len() - OUTPUT_KEPT);
        }
    }

    /// The kept text (lossy UTF-8, trailing whitespace removed), prefixed
    /// with how much was dropped; empty when nothing was printed.
    pub fn text(&self) -> String {
        let start = self.kept.len().saturating_sub(OUTPUT_KEPT);
        let text = String::from_utf8_lossy(&self.kept[start..]);
        let text = text.trim_end();
        let kept = (self.kept.len() - start) as u64;
        if kept < self.total {
            format!(
                "(last {} KiB of {} bytes) {text}",
                OUTPUT_KEPT >> 10,
                self.total
            )
        } else {
            text.to_string()
        }
    }
}

/// An entry's captured output.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Output {
    pub stdout: Captured,
    pub stderr: Captured,
}

impl Output {
    /// Logs both streams at `level`, each only if it printed something.
    fn log(&self, level: tracing::Level, key: &str, entry: &str) {
        for (stream, captured) in [("stdout", &self.stdout), ("stderr", &self.stderr)] {
            let text = captured.text();
            if text.is_empty() {
                continue;
            }
            if level == tracing::Level::ERROR {
                tracing::error!(target: TARGET, "{stream}: {text}");
            } else {
                tracing::debug!(target: TARGET, "{key} entry `{entry}` {stream}: {text}");
            }
        }
    }
}

/// Reads `pipe` to its end into `out`.
async fn drain<R: tokio::io::AsyncRead + Unpin>(pipe: Option<R>, out: &mut Captured) {
    let Some(mut pipe) = pipe else { return };
    let mut buf = vec![0u8; 8192];
    while let Ok(n) = pipe.read(&mut buf).await {
        if n == 0 {
            break;
        }
        out.push(&buf[..n]);
    }
}

/// Runs one entry. The entry gets its own process group, and the whole group
/// is killed on timeout, so helper processes it started do not linger. Its
/// output is captured; a failure is logged with it.
pub async fn run_entry(
    key: &str,
    entry: &str,
    style: Style,
    timeout: Duration,
) -> Result<Output, PowerError> {
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
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .process_group(0)
        .kill_on_drop(true);
    tracing::debug!(target: TARGET, "running {key} entry: {entry}");
    let mut child = command.spawn().map_err(|e| PowerError::Spawn {
        key: key.into(),
        entry: entry.into(),
        error: e.to_string(),
    })?;
    let pid = child.id();
    // Declared after `child`, so dropped (and run) before it is killed and
    // reaped.
    let mut group = GroupGuard(pid);
    let (stdout, stderr) = (child.stdout.take(), child.stderr.take());
    let mut output = Output::default();
    let outcome = {
        let read = async {
            tokio::join!(
                drain(stdout, &mut output.stdout),
                drain(stderr, &mut output.stderr)
            );
        };
        tokio::pin!(read);
        let mut read_all = false;
        let outcome = tokio::time::timeout(timeout, async {
            loop {
                tokio::select! {
                    () = &mut read, if !read_all => read_all = true,
                    status = child.wait() => break status,
                }
            }
        })
        .await;
        match outcome {
            Ok(Ok(_)) => {
                // The entry ended by itself; what it left running is its
                // business (as in the reference), and its group id may be
                // reused.
                group.0 = None;
            }
            Err(_) => {
                group.kill();
                let _ = child.kill().await;
            }
            Ok(Err(_)) => {}
        }
        if !read_all {
            let _ = tokio::time::timeout(OUTPUT_GRACE, &mut read).await;
        }
        outcome
    };
    let result = match outcome {
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
        Err(_) => Err(PowerError::Timeout {
            key: key.into(),
            entry: entry.into(),
            secs: timeout.as_secs(),
        }),
    };
    match result {
        Ok(()) => {
            output.log(tracing::Level::DEBUG, key, entry);
            Ok(output)
        }
        Err(e) => {
            tracing::error!(target: TARGET, "{e}");
            output.log(tracing::Level::ERROR, key, entry);
            Err(e)
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

    /// Output is captured: logged at ERROR after a failure, at DEBUG when
    /// the entry succeeds, never passed through.
    #[tokio::test]
    async fn output_is_captured_and_logged_on_failure() {
        let logs = crate::testing::log::LogCapture::start();
        let out = run_entry(
            "k",
            "echo fine; echo note >&2",
            Style::Shell,
            Duration::from_secs(5),
        )
        .await
        .unwrap();
        assert_eq!(
            (out.stdout.text(), out.stderr.text()),
            ("fine".into(), "note".into())
        );
        let quiet: Vec<_> = logs
            .lines()
            .into_iter()
            .filter(|l| l.message.contains("stdout:"))
            .collect();
        assert_eq!(quiet.len(), 1, "{}", logs.dump());
        assert_eq!(quiet[0].level, tracing::Level::DEBUG);
        assert_eq!(
            quiet[0].message,
            "k entry `echo fine; echo note >&2` stdout: fine"
        );

        let err = run_entry(
            "reboot_script",
            "echo relay 3 stuck; echo 'cannot open /dev/ttyUSB0' >&2; exit 2",
            Style::Shell,
            Duration::from_secs(5),
        )
        .await
        .unwrap_err();
        assert!(
            matches!(err, PowerError::Failed { ref status, .. } if status == "2"),
            "{err}"
        );
        let errors: Vec<String> = logs
            .lines()
            .into_iter()
            .filter(|l| l.level == tracing::Level::ERROR)
            .map(|l| l.message)
            .collect();
        assert_eq!(
            errors,
            [
                err.to_string(),
                "stdout: relay 3 stuck".to_string(),
                "stderr: cannot open /dev/ttyUSB0".to_string()
            ],
            "{}",
            logs.dump()
        );

        // A timeout keeps what arrived before the kill.
        let logs = crate::testing::log::LogCapture::start();
        let err = run_entry(
            "k",
            "echo started; sleep 30",
            Style::Shell,
            Duration::from_millis(300),
        )
        .await
        .unwrap_err();
        assert!(matches!(err, PowerError::Timeout { .. }), "{err}");
        assert_eq!(logs.matching("stdout: started").len(), 1, "{}", logs.dump());
    }

    /// Only the end of a flood is kept, and a background process holding
    /// the pipes open does not keep the entry from finishing.
    #[tokio::test]
    async fn captured_output_is_bounded_and_does_not_wait_for_background_processes() {
        let out = run_entry(
            "k",
            "head -c 300000 /dev/zero | tr '\\0' a; echo END",
            Style::Shell,
            Duration::from_secs(10),
        )
        .await
        .unwrap();
        let text = out.stdout.text();
        assert!(
            text.starts_with("(last 64 KiB of 300004 bytes) aaa"),
            "{}",
            &text[..60]
        );
        assert!(text.ends_with("aaaEND"));
        assert!(text.len() < OUTPUT_KEPT + 100);

        let start = std::time::Instant::now();
        let out = run_entry(
            "k",
            "sleep 5 & echo left",
            Style::Shell,
            Duration::from_secs(20),
        )
        .await
        .unwrap();
        assert_eq!(out.stdout.text(), "left");
        assert!(
            start.elapsed() < Duration::from_secs(4),
            "{:?}",
            start.elapsed()
        );
    }
}
