//! Commands on the control host, with the reference's retry window but
//! no fixed sleeps: a command that must succeed is retried until it does
//! or the window (`muxpi_control_retry_seconds`, 60 s) is over, pausing
//! `muxpi_poll_seconds` between attempts; a query (`test -e`, `grep`, ...)
//! is answered by its exit status and only retried when the control host
//! could not be reached. The reference retried queries too, spending a
//! whole minute on every `test -e` that answers "no".

use std::time::Duration;

use testflinger_connector::clock;
use testflinger_connector::prelude::*;
use testflinger_connector::ssh::{Output, Session};
use testflinger_connector::units::human_duration;
use testflinger_connector::wait::Wait;

/// The SSH target name of the control host.
pub const TARGET: &str = "control-host";

/// Runs commands on the control host.
pub struct Control {
    session: Option<Session>,
    poll: Duration,
    retry: Duration,
    /// The last attempt could not reach the host: log in afresh first.
    stale: bool,
}

impl Control {
    /// A runner pausing `poll` between attempts and retrying failures for
    /// `retry`.
    pub fn new(poll: Duration, retry: Duration) -> Self {
        Control {
            session: None,
            poll,
            retry,
            stale: false,
        }
    }

    /// The stage's session to the control host (connecting if needed), for
    /// uploads and transfers on the same connection.
    pub fn session(&mut self) -> Result<&Session, Error> {
        if self.session.is_none() {
            self.session = Some(ssh::connect(TARGET)?);
        }
        Ok(self.session.as_ref().expect("just set"))
    }

    /// One attempt; `Err` means the host could not be reached.
    fn attempt(&mut self, command: &str, timeout: Duration) -> Result<Output, Error> {
        if self.stale {
            // A fresh login; the runtime keeps the working one for the
            // session's next commands.
            ssh::wait_reachable(TARGET, Duration::ZERO)?;
            self.stale = false;
        }
        let result = self
            .session()
            .and_then(|s| s.exec_with(command, timeout, false));
        if result.is_err() {
            self.stale = true;
        }
        result
    }

    /// Runs `command`, which must exit 0; failures are retried within the
    /// window. The error names the command, the last failure and the
    /// attempts made.
    pub fn run(&mut self, command: &str, timeout: Duration) -> Result<Output, Error> {
        self.retrying(command, timeout, true)
    }

    /// Runs `command` whose exit status is an answer: only failures to
    /// reach the host are retried.
    pub fn query(&mut self, command: &str, timeout: Duration) -> Result<Output, Error> {
        self.retrying(command, timeout, false)
    }

    fn retrying(
        &mut self,
        command: &str,
        timeout: Duration,
        must_succeed: bool,
    ) -> Result<Output, Error> {
        let mut last = None;
        let waited = Wait::new("control command", self.retry)
            .every(self.poll)
            .retry()
            .until(|| {
                let failure = match self.attempt(command, timeout) {
                    Ok(out) if out.success() || !must_succeed => return Check::Ready(out),
                    Ok(out) => Error::new(
                        ErrorKind::Failed,
                        format!("exited with status {}: {}", out.status, out.detail()),
                    ),
                    Err(e) if e.is_permanent() => return Check::Failed(e),
                    Err(e) => e,
                };
                let reason =
                    Error::new(failure.kind(), format!("{command}: {}", failure.message()));
                last = Some(failure);
                Check::NotYet(reason)
            });
        match (waited, last) {
            (Ok(w), _) => Ok(w.value),
            (Err(w), Some(failure)) if w.is_timeout() => Err(Error::new(
                failure.kind(),
                format!(
                    "`{command}` on the control host failed after {} in {}: {}",
                    attempts(w.checks()),
                    human_duration(w.elapsed()),
                    failure.message()
                ),
            )),
            (Err(w), _) => Err(w.into_reason()),
        }
    }

    /// After `control_host_reboot_script`: waits (up to `down_window`) for
    /// the control host to stop answering, then (up to `total` from now)
    /// for it to answer again. Returns as soon as it is back. The reference
    /// slept the whole reboot timeout instead.
    pub fn wait_for_reboot(&mut self, down_window: Duration, total: Duration) -> Result<(), Error> {
        let start = clock::now();
        let down_by = down_window.min(total);
        let mut went_down = false;
        let waited = Wait::new("the control host to reboot", total)
            .every(self.poll)
            .done("the control host is back")
            .until(|| match ssh::wait_reachable(TARGET, Duration::ZERO) {
                Err(e) if e.is_permanent() => Check::Failed(e),
                Err(e) => {
                    went_down = true;
                    Check::NotYet(e)
                }
                Ok(()) if went_down => Check::Ready(true),
                Ok(()) if clock::now().saturating_sub(start) >= down_by => Check::Ready(false),
                // The reboot may not have begun yet: an answer now is the
                // old boot's.
                Ok(()) => Check::not_yet("still answering: the reboot has not begun yet"),
            });
        // The last probe's login is the one the next command uses.
        self.stale = false;
        match waited {
            Ok(w) if !w.value => {
                warn!(
                    "The control host kept answering for {} after control_host_reboot_script; going on",
                    human_duration(w.elapsed)
                );
                Ok(())
            }
            Ok(_) => Ok(()),
            Err(w) if w.is_timeout() => Err(Error::new(
                ErrorKind::Timeout,
                format!(
                    "the control host did not answer within {} after control_host_reboot_script: {}",
                    human_duration(total),
                    w.reason().message()
                ),
            )),
            Err(w) => Err(w.into_reason()),
        }
    }
}

fn attempts(n: u32) -> String {
    if n == 1 {
        "1 attempt".to_string()
    } else {
        format!("{n} attempts")
    }
}

#[cfg(test)]
mod tests {
    use serde_json::json;
    use testflinger_connector::testing::{FakeHost, Installed, err, exit};

    use super::*;

    fn host() -> FakeHost {
        FakeHost::new().config(json!({"agent_name": "pi-1", "control_host": "10.0.0.2"}))
    }

    fn control() -> Control {
        Control::new(Duration::from_secs(5), Duration::from_secs(60))
    }

    fn install(h: FakeHost) -> Installed {
        h.install()
    }

    #[test]
    fn a_failing_command_is_retried_until_it_works() {
        let host = install(host().exec(
            TARGET,
            "stm -ts",
            [
                exit(1, "busy", ""),
                err(ErrorKind::Io, "connection refused"),
                exit(0, "ok", ""),
            ],
        ));
        let mut c = control();
        assert_eq!(
            c.run("stm -ts", Duration::from_secs(60)).unwrap().stdout,
            "ok"
        );
        // The transport failure makes the next attempt log in afresh.
        assert_eq!(
            host.trace(),
            [
                "ssh connect control-host",
                "ssh control-host: stm -ts",
                "ssh control-host: stm -ts",
                "wait-reachable control-host",
                "ssh control-host: stm -ts",
            ]
        );
        assert_eq!(host.elapsed(), Duration::from_secs(10));
        assert_eq!(
            host.log(),
            [
                "INFO Control command failed, retrying in 5 s (60 s left): stm -ts: exited with status 1: busy",
                "INFO Control command failed, retrying in 5 s (55 s left): stm -ts: connection refused",
            ]
        );
    }

    #[test]
    fn the_retry_window_bounds_the_attempts() {
        let host = install(host().exec(TARGET, "stm -ts", [exit(2, "no mux", "")]));
        let mut c = control();
        let err = c.run("stm -ts", Duration::from_secs(60)).unwrap_err();
        // Attempts at 0, 5, ... 60 s: 13, as the reference's.
        assert_eq!(host.commands(TARGET).len(), 13);
        assert_eq!(
            err.message(),
            "`stm -ts` on the control host failed after 13 attempts in 60 s: exited with status 2: no mux"
        );
        assert_eq!(err.kind(), ErrorKind::Failed);
    }

    #[test]
    fn queries_answer_with_their_status_and_only_retry_transport() {
        let host = install(host().exec(
            TARGET,
            "test -e /x",
            [err(ErrorKind::Io, "reset"), exit(1, "", "")],
        ));
        let mut c = control();
        assert_eq!(
            c.query("test -e /x", Duration::from_secs(5))
                .unwrap()
                .status,
            1
        );
        assert_eq!(
            host.trace()[1..],
            [
                "ssh control-host: test -e /x",
                "wait-reachable control-host",
                "ssh control-host: test -e /x",
            ]
        );
    }

    #[test]
    fn permanent_errors_stop_at_once() {
        let host = install(host().exec(
            TARGET,
            "true",
            [err(
                ErrorKind::Denied,
                "capability ssh: control-host is not granted",
            )],
        ));
        let mut c = control();
        assert!(
            c.run("true", Duration::from_secs(5))
                .unwrap_err()
                .message()
                .contains("not granted")
        );
        assert_eq!(host.commands(TARGET).len(), 1);
        // A refused login is not permanent: keys appear as the host boots.
        assert!(
            !Error::new(ErrorKind::Refused, "ubuntu@10.0.0.2 refused the password").is_permanent()
        );
    }

    #[test]
    fn a_reboot_is_waited_for_by_polling() {
        let refused = || err(ErrorKind::Io, "refused");
        // Still up for two checks, down for three, then back.
        let host = install(host().reachable(
            TARGET,
            [Ok(()), Ok(()), refused(), refused(), refused(), Ok(())],
        ));
        let mut c = Control::new(Duration::from_secs(2), Duration::from_secs(60));
        c.wait_for_reboot(Duration::from_secs(120), Duration::from_secs(300))
            .unwrap();
        assert_eq!(host.trace().len(), 6);
        // 2 s between checks: back after 10 s, not after the reference's
        // 120 s sleep.
        assert_eq!(host.elapsed(), Duration::from_secs(10));
        assert_eq!(
            host.log(),
            [
                "INFO Waiting up to 5 min for the control host to reboot",
                "INFO The control host is back after 10 s, 6 checks",
            ]
        );
    }

    #[test]
    fn a_control_host_that_never_returns_fails_the_wait() {
        let host = install(host().reachable(TARGET, [err(ErrorKind::Io, "refused")]));
        let mut c = Control::new(Duration::from_secs(2), Duration::from_secs(60));
        let err = c
            .wait_for_reboot(Duration::from_secs(120), Duration::from_secs(300))
            .unwrap_err();
        assert_eq!(err.kind(), ErrorKind::Timeout);
        assert_eq!(
            err.message(),
            "the control host did not answer within 5 min after control_host_reboot_script: refused"
        );
        assert_eq!(host.elapsed(), Duration::from_secs(300));
        assert!(
            host.logged("Still waiting for the control host to reboot (4.5 min left): refused")
        );
    }

    #[test]
    fn a_host_that_never_goes_down_is_used_after_the_down_window() {
        let host = install(host());
        let mut c = Control::new(Duration::from_secs(2), Duration::from_secs(60));
        c.wait_for_reboot(Duration::from_secs(10), Duration::from_secs(300))
            .unwrap();
        assert_eq!(host.elapsed(), Duration::from_secs(10));
        assert!(host.logged(
            "WARNING The control host kept answering for 10 s after control_host_reboot_script; going on"
        ));
        c.run("true", Duration::from_secs(5)).unwrap();
        assert_eq!(
            host.trace()[6..],
            ["ssh connect control-host", "ssh control-host: true"]
        );
    }
}
