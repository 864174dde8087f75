//! Runs one test command the way the reference's `runcmd` does: through
//! `/bin/sh -c`, in the run directory, with stdout and stderr merged into
//! one pipe and passed on as they arrive.
//!
//! Deliberate difference: the reference reads the pipe until end-of-file,
//! so a background process that keeps the pipe open (`daemon &`) makes it
//! hang until the agent's timeout. Here reading stops once the command has
//! exited and [`OUTPUT_GRACE`] has passed without end-of-file; whatever the
//! pipe held by then is still passed on.

use std::collections::BTreeMap;
use std::ffi::OsString;
use std::io;
use std::os::fd::OwnedFd;
use std::os::unix::process::ExitStatusExt;
use std::path::Path;
use std::process::{ExitStatus, Stdio};
use std::time::Duration;

use tokio::io::AsyncReadExt;
use tokio::time::Instant;

/// How long output is still read after the command exited while something
/// else (a background child) keeps the pipe open.
pub const OUTPUT_GRACE: Duration = Duration::from_secs(1);

/// The environment of a test command, exactly (nothing is inherited
/// besides what is in it).
pub type Env = BTreeMap<OsString, OsString>;

/// Runs `/bin/sh -c <command>` in `cwd` with exactly `env`, hands every
/// chunk of merged stdout/stderr to `sink` in order, and returns the
/// status the way Python's `Popen.returncode` reports it: the exit code,
/// or minus the signal number when a signal ended the shell.
pub async fn run(
    command: &str,
    env: &Env,
    cwd: &Path,
    grace: Duration,
    mut sink: impl FnMut(&[u8]),
) -> io::Result<i32> {
    let (reader, writer) = io::pipe()?;
    let writer_err = writer.try_clone()?;
    let mut cmd = tokio::process::Command::new("/bin/sh");
    cmd.arg("-c")
        .arg(command)
        .current_dir(cwd)
        .env_clear()
        .envs(env)
        .stdin(Stdio::inherit())
        .stdout(Stdio::from(writer))
        .stderr(Stdio::from(writer_err));
    let mut child = cmd.spawn()?;
    // The command object still holds our copies of the write end; end of
    // file only arrives once they are closed.
    drop(cmd);
    let mut pipe = tokio::net::unix::pipe::Receiver::from_owned_fd(OwnedFd::from(reader))?;
    let mut buf = vec![0u8; 16 * 1024];
    let mut status: Option<ExitStatus> = None;
    let mut give_up: Option<Instant> = None;
    loop {
        tokio::select! {
            read = pipe.read(&mut buf) => match read {
                Ok(0) => break,
                Ok(n) => sink(&buf[..n]),
                Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
                Err(e) => {
                    tracing::warn!(target: "tfdc::defaults", "cannot read the test command's output: {e}");
                    break;
                }
            },
            exited = child.wait(), if status.is_none() => {
                status = Some(exited?);
                give_up = Some(Instant::now() + grace);
            }
            () = sleep_until(give_up), if give_up.is_some() => {
                tracing::info!(target: "tfdc::defaults",
                    "the command exited but a background process still holds its output; not waiting for it");
                break;
            }
        }
    }
    let status = match status {
        Some(s) => s,
        // End of file came first: the command closed its output but may
        // still run; the reference waits for it too.
        None => child.wait().await?,
    };
    Ok(return_code(status))
}

async fn sleep_until(deadline: Option<Instant>) {
    match deadline {
        Some(d) => tokio::time::sleep_until(d).await,
        None => std::future::pending().await,
    }
}

/// Python's `returncode` for an exit status: the code, or `-signal`.
pub fn return_code(status: ExitStatus) -> i32 {
    match (status.code(), status.signal()) {
        (Some(code), _) => code,
        (None, Some(sig)) => -sig,
        (None, None) => -1,
    }
}

/// The process exit status for a return code, as the OS truncates the
/// value given to `exit()` (`-9` becomes 247).
pub fn exit_status(rc: i32) -> u8 {
    rc.rem_euclid(256) as u8
}

#[cfg(test)]
mod tests {
    use super::*;

    fn env() -> Env {
        let mut env = Env::new();
        env.insert("PATH".into(), "/usr/bin:/bin".into());
        env.insert("ONLY_HERE".into(), "v1".into());
        env
    }

    async fn capture(command: &str, grace: Duration) -> (i32, String) {
        let dir = tempfile::tempdir().unwrap();
        let mut out = Vec::new();
        let rc = run(command, &env(), dir.path(), grace, |b| {
            out.extend_from_slice(b)
        })
        .await
        .unwrap();
        (rc, String::from_utf8_lossy(&out).into_owned())
    }

    #[tokio::test]
    async fn merges_output_in_order_and_reports_status() {
        let (rc, out) = capture(
            "echo one; echo two >&2; echo three; echo $ONLY_HERE; pwd >/dev/null; exit 3",
            OUTPUT_GRACE,
        )
        .await;
        assert_eq!(rc, 3);
        assert_eq!(out, "one\ntwo\nthree\nv1\n");
    }

    #[tokio::test]
    async fn the_environment_is_exactly_the_one_given() {
        let (rc, out) = capture("echo \"[$HOME]\"", OUTPUT_GRACE).await;
        assert_eq!(rc, 0);
        assert_eq!(out, "[]\n");
    }

    #[tokio::test]
    async fn signals_are_negative_like_python() {
        let (rc, _) = capture("kill -9 $$", OUTPUT_GRACE).await;
        assert_eq!(rc, -9);
        assert_eq!(exit_status(rc), 247);
    }

    #[test]
    fn exit_status_truncates_like_the_os() {
        assert_eq!(exit_status(0), 0);
        assert_eq!(exit_status(255), 255);
        assert_eq!(exit_status(256), 0);
        assert_eq!(exit_status(-1), 255);
        assert_eq!(exit_status(-15), 241);
        assert_eq!(exit_status(300), 44);
    }

    #[tokio::test]
    async fn a_background_child_holding_the_pipe_does_not_block() {
        let dir = tempfile::tempdir().unwrap();
        let pidfile = dir.path().join("bg.pid");
        let command = format!("sleep 30 & echo $! > {}; echo started", pidfile.display());
        let mut out = Vec::new();
        let result = tokio::time::timeout(
            Duration::from_secs(15),
            run(
                &command,
                &env(),
                dir.path(),
                Duration::from_millis(200),
                |b| out.extend_from_slice(b),
            ),
        )
        .await;
        if let Ok(pid) = std::fs::read_to_string(&pidfile)
            && let Ok(pid) = pid.trim().parse::<i32>()
        {
            // SAFETY: plain kill(2) of the sleep this test started.
            unsafe { libc::kill(pid, libc::SIGKILL) };
        }
        let rc = result.expect("run must not wait for the background child");
        assert_eq!(rc.unwrap(), 0);
        assert_eq!(String::from_utf8_lossy(&out), "started\n");
    }

    #[tokio::test]
    async fn output_after_closing_stdout_is_waited_for() {
        // The command closes its output, then keeps running: the status is
        // still the command's own.
        let (rc, out) = capture("echo a; exec >&- 2>&-; sleep 0.2; exit 4", OUTPUT_GRACE).await;
        assert_eq!(rc, 4);
        assert_eq!(out, "a\n");
    }

    #[tokio::test]
    async fn spawn_failures_are_errors() {
        let env = env();
        let result = run(
            "true",
            &env,
            Path::new("/nonexistent/dir"),
            OUTPUT_GRACE,
            |_| {},
        )
        .await;
        assert!(result.is_err());
    }
}
