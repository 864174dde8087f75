//! Commands on the control host, with the reference's retry window but
//! no fixed sleeps: a command that must succeed is retried until it does
//! or the window (`muxpi_control_retry_seconds`, 60 s) is over, pausing
//! `muxpi_poll_seconds` between attempts; a query (`test -e`, `grep`, ...)
//! is answered by its exit status and only retried when the control host
//! could not be reached. The reference retried queries too, spending a
//! whole minute on every `test -e` that answers "no".
//!
//! The logic is written against [`Link`] and [`Env`] so that it is tested
//! natively with fakes; [`SshLink`] and [`GuestEnv`] are the real ones.

use std::time::{Duration, Instant};

use testflinger_connector::ssh::{self, Output, Session};
use testflinger_connector::{Error, ErrorKind, log};

/// The SSH target name of the control host.
pub const TARGET: &str = "control-host";

/// How the control host is reached.
pub trait Link {
    /// Runs `command` and returns what it did; `Err` only when it could not
    /// be run (connection refused or lost, deadline ...).
    fn exec(&mut self, command: &str, timeout: Duration) -> Result<Output, Error>;

    /// One fresh login (not the kept connection) that runs a trivial
    /// command; on success the next [`Link::exec`] uses that login.
    fn probe(&mut self) -> Result<(), Error>;
}

/// Time and log lines (the guest's, or a test's fakes).
pub trait Env {
    /// Time since some fixed start.
    fn elapsed(&self) -> Duration;
    /// Pauses.
    fn sleep(&self, d: Duration);
    /// An INFO log line.
    fn info(&self, message: &str);
    /// A WARNING log line.
    fn warn(&self, message: &str);
}

/// Whether waiting cannot help: the capability is not granted, the target
/// is not configured, an argument or a limit was refused.
pub fn is_permanent(e: &Error) -> bool {
    match e.kind() {
        ErrorKind::NotFound | ErrorKind::Invalid | ErrorKind::Limit | ErrorKind::Unsupported => {
            true
        }
        // A refused login (`Refused`) is worth retrying: keys and
        // passwords appear as the target boots. A denied capability is not.
        ErrorKind::Denied => true,
        _ => false,
    }
}

/// What a command printed, for error messages.
pub fn detail(out: &Output) -> String {
    let text = if out.stderr.trim().is_empty() {
        out.stdout.trim()
    } else {
        out.stderr.trim()
    };
    if text.is_empty() {
        "no output".to_string()
    } else if text.len() > 500 {
        let mut cut = 500;
        while !text.is_char_boundary(cut) {
            cut -= 1;
        }
        format!("{}...", &text[..cut])
    } else {
        text.to_string()
    }
}

/// Seconds for log lines (`1.5`, `60`).
pub fn secs(d: Duration) -> String {
    let s = d.as_secs_f64();
    if (s - s.round()).abs() < 0.001 {
        format!("{}", s.round() as u64)
    } else {
        format!("{s:.1}")
    }
}

/// Runs commands on the control host.
pub struct Control<L: Link, E: Env> {
    link: L,
    env: E,
    poll: Duration,
    retry: Duration,
    /// The last attempt could not reach the host: log in afresh first.
    stale: bool,
}

impl<L: Link, E: Env> Control<L, E> {
    /// A runner pausing `poll` between attempts and retrying failures for
    /// `retry`.
    pub fn new(link: L, env: E, poll: Duration, retry: Duration) -> Self {
        Control {
            link,
            env,
            poll,
            retry,
            stale: false,
        }
    }

    /// The link (for transfers on the same connection).
    pub fn link(&mut self) -> &mut L {
        &mut self.link
    }

    /// The environment.
    pub fn env(&self) -> &E {
        &self.env
    }

    /// One attempt; `Err` means the host could not be reached.
    fn attempt(&mut self, command: &str, timeout: Duration) -> Result<Output, Error> {
        if self.stale {
            self.link.probe()?;
            self.stale = false;
        }
        let result = self.link.exec(command, timeout);
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
        let started = self.env.elapsed();
        let deadline = started + self.retry;
        let mut attempts = 0u32;
        loop {
            attempts += 1;
            let failure = match self.attempt(command, timeout) {
                Ok(out) if out.success() || !must_succeed => return Ok(out),
                Ok(out) => Error::new(
                    ErrorKind::Failed,
                    format!("exited with status {}: {}", out.status, detail(&out)),
                ),
                Err(e) if is_permanent(&e) => return Err(e),
                Err(e) => e,
            };
            let now = self.env.elapsed();
            if now >= deadline {
                let kind = failure.kind();
                return Err(Error::new(
                    kind,
                    format!(
                        "`{command}` on the control host failed after {attempts} attempt(s) in {} s: {}",
                        secs(now - started),
                        failure.message()
                    ),
                ));
            }
            let pause = self.poll.min(deadline - now);
            self.env.info(&format!(
                "Control command failed, retrying in {} s ({} s of the retry window left): {command}: {}",
                secs(pause),
                secs(deadline - now),
                failure.message()
            ));
            self.env.sleep(pause);
        }
    }

    /// After `control_host_reboot_script`: waits (up to `down_window`) for
    /// the control host to stop answering, then (up to `total` from now)
    /// for it to answer again. Returns as soon as it is back. The reference
    /// slept the whole reboot timeout instead.
    pub fn wait_for_reboot(&mut self, down_window: Duration, total: Duration) -> Result<(), Error> {
        let started = self.env.elapsed();
        let deadline = started + total;
        self.env.info(&format!(
            "Waiting up to {} s for the control host to reboot and answer again",
            secs(total)
        ));
        // The reboot may not have begun yet: an answer now would be the
        // old boot's.
        let down_by = started + down_window.min(total);
        let mut went_down = false;
        loop {
            match self.link.probe() {
                Err(e) if is_permanent(&e) => return Err(e),
                Err(_) => {
                    went_down = true;
                    break;
                }
                Ok(()) => {}
            }
            let now = self.env.elapsed();
            if now >= down_by {
                break;
            }
            self.env.sleep(self.poll.min(down_by - now));
        }
        if !went_down {
            self.env.warn(&format!(
                "The control host kept answering for {} s after control_host_reboot_script; going on",
                secs(self.env.elapsed() - started)
            ));
            self.stale = false;
            return Ok(());
        }
        let mut last_log = self.env.elapsed();
        loop {
            match self.link.probe() {
                Ok(()) => {
                    self.stale = false;
                    self.env.info(&format!(
                        "The control host is back after {} s",
                        secs(self.env.elapsed() - started)
                    ));
                    return Ok(());
                }
                Err(e) if is_permanent(&e) => return Err(e),
                Err(e) => {
                    let now = self.env.elapsed();
                    if now >= deadline {
                        return Err(Error::new(
                            ErrorKind::Timeout,
                            format!(
                                "the control host did not answer within {} s after control_host_reboot_script: {}",
                                secs(total),
                                e.message()
                            ),
                        ));
                    }
                    if now - last_log >= Duration::from_secs(30) {
                        self.env.info(&format!(
                            "Waiting for the control host to become active ({} s left): {}",
                            secs(deadline - now),
                            e.message()
                        ));
                        last_log = now;
                    }
                    self.env.sleep(self.poll.min(deadline - now));
                }
            }
        }
    }
}

/// The real link: the stage's SSH connection to `control-host`.
#[derive(Default)]
pub struct SshLink {
    session: Option<Session>,
}

impl SshLink {
    /// The session (connecting if needed).
    pub fn session(&mut self) -> Result<&Session, Error> {
        if self.session.is_none() {
            self.session = Some(ssh::connect(TARGET)?);
        }
        Ok(self.session.as_ref().expect("just set"))
    }
}

impl Link for SshLink {
    fn exec(&mut self, command: &str, timeout: Duration) -> Result<Output, Error> {
        self.session()?.exec_with(command, timeout, false)
    }

    fn probe(&mut self) -> Result<(), Error> {
        // A fresh login each time; the runtime keeps the working one for
        // the session's next commands.
        ssh::wait_reachable(TARGET, Duration::ZERO)
    }
}

/// The guest's clock and log.
pub struct GuestEnv {
    start: Instant,
}

impl Default for GuestEnv {
    fn default() -> Self {
        GuestEnv {
            start: Instant::now(),
        }
    }
}

impl Env for GuestEnv {
    fn elapsed(&self) -> Duration {
        self.start.elapsed()
    }

    fn sleep(&self, d: Duration) {
        std::thread::sleep(d);
    }

    fn info(&self, message: &str) {
        log::info(message);
    }

    fn warn(&self, message: &str) {
        log::warn(message);
    }
}

#[cfg(test)]
pub(crate) mod fake {
    //! A scripted control host and a virtual clock.

    use std::cell::{Cell, RefCell};
    use std::collections::VecDeque;
    use std::rc::Rc;

    use super::*;

    /// Virtual time: sleeping advances it.
    #[derive(Clone, Default)]
    pub struct FakeEnv {
        pub now: Rc<Cell<Duration>>,
        pub lines: Rc<RefCell<Vec<String>>>,
    }

    impl Env for FakeEnv {
        fn elapsed(&self) -> Duration {
            self.now.get()
        }
        fn sleep(&self, d: Duration) {
            self.now.set(self.now.get() + d);
        }
        fn info(&self, message: &str) {
            self.lines.borrow_mut().push(format!("INFO {message}"));
        }
        fn warn(&self, message: &str) {
            self.lines.borrow_mut().push(format!("WARN {message}"));
        }
    }

    /// Answers from a script; every call is recorded.
    #[derive(Default)]
    pub struct FakeLink {
        pub execs: VecDeque<Result<Output, Error>>,
        pub probes: VecDeque<Result<(), Error>>,
        pub calls: Vec<String>,
        /// Time each call takes.
        pub cost: Duration,
        pub env: FakeEnv,
    }

    pub fn out(status: i32, stdout: &str) -> Output {
        Output {
            status,
            stdout: stdout.into(),
            stderr: String::new(),
        }
    }

    pub fn io(message: &str) -> Error {
        Error::new(ErrorKind::Io, message)
    }

    impl Link for FakeLink {
        fn exec(&mut self, command: &str, _timeout: Duration) -> Result<Output, Error> {
            self.calls.push(command.to_string());
            self.env.sleep(self.cost);
            self.execs.pop_front().unwrap_or_else(|| Ok(out(0, "")))
        }
        fn probe(&mut self) -> Result<(), Error> {
            self.calls.push("<probe>".into());
            self.env.sleep(self.cost);
            self.probes.pop_front().unwrap_or(Ok(()))
        }
    }
}

#[cfg(test)]
mod tests {
    use super::fake::*;
    use super::*;

    fn control(link: FakeLink) -> Control<FakeLink, FakeEnv> {
        let env = link.env.clone();
        Control::new(link, env, Duration::from_secs(5), Duration::from_secs(60))
    }

    #[test]
    fn a_failing_command_is_retried_until_it_works() {
        let mut link = FakeLink::default();
        link.execs.push_back(Ok(out(1, "busy")));
        link.execs.push_back(Err(io("connection refused")));
        link.execs.push_back(Ok(out(0, "ok")));
        let mut c = control(link);
        assert_eq!(
            c.run("stm -ts", Duration::from_secs(60)).unwrap().stdout,
            "ok"
        );
        // The transport failure makes the next attempt log in afresh.
        assert_eq!(c.link.calls, ["stm -ts", "stm -ts", "<probe>", "stm -ts"]);
        assert_eq!(c.env.elapsed(), Duration::from_secs(10));
    }

    #[test]
    fn the_retry_window_bounds_the_attempts() {
        let mut link = FakeLink::default();
        for _ in 0..100 {
            link.execs.push_back(Ok(out(2, "no mux")));
        }
        let mut c = control(link);
        let err = c.run("stm -ts", Duration::from_secs(60)).unwrap_err();
        // Attempts at 0, 5, ... 60 s: 13, as the reference's.
        assert_eq!(c.link.calls.len(), 13);
        assert!(err.message().contains("13 attempt(s) in 60 s"), "{err}");
        assert!(err.message().contains("status 2: no mux"), "{err}");
        assert_eq!(err.kind(), ErrorKind::Failed);
    }

    #[test]
    fn queries_answer_with_their_status_and_only_retry_transport() {
        let mut link = FakeLink::default();
        link.execs.push_back(Err(io("reset")));
        link.execs.push_back(Ok(out(1, "")));
        let mut c = control(link);
        assert_eq!(
            c.query("test -e /x", Duration::from_secs(5))
                .unwrap()
                .status,
            1
        );
        assert_eq!(c.link.calls, ["test -e /x", "<probe>", "test -e /x"]);
    }

    #[test]
    fn permanent_errors_stop_at_once() {
        let mut link = FakeLink::default();
        link.execs.push_back(Err(Error::new(
            ErrorKind::Denied,
            "capability ssh: control-host is not granted",
        )));
        let mut c = control(link);
        assert!(c.run("true", Duration::from_secs(5)).is_err());
        assert_eq!(c.link.calls.len(), 1);
        assert!(!is_permanent(&Error::new(
            ErrorKind::Refused,
            "ubuntu@10.0.0.2 refused the password"
        )));
    }

    #[test]
    fn a_reboot_is_waited_for_by_polling() {
        let mut link = FakeLink::default();
        // Still up for two checks, down for three, then back.
        for r in [
            Ok(()),
            Ok(()),
            Err(io("refused")),
            Err(io("refused")),
            Err(io("refused")),
        ] {
            link.probes.push_back(r);
        }
        let mut c = Control::new(
            link,
            FakeEnv::default(),
            Duration::from_secs(2),
            Duration::from_secs(60),
        );
        c.link.env = c.env.clone();
        c.wait_for_reboot(Duration::from_secs(120), Duration::from_secs(300))
            .unwrap();
        assert_eq!(c.link.calls.len(), 6);
        // 2 s between checks: back after 8 s, not after the reference's
        // 120 s sleep.
        assert_eq!(c.env.elapsed(), Duration::from_secs(8));
    }

    #[test]
    fn a_control_host_that_never_returns_fails_the_wait() {
        let mut link = FakeLink::default();
        for _ in 0..1000 {
            link.probes.push_back(Err(io("refused")));
        }
        let mut c = Control::new(
            link,
            FakeEnv::default(),
            Duration::from_secs(2),
            Duration::from_secs(60),
        );
        let err = c
            .wait_for_reboot(Duration::from_secs(120), Duration::from_secs(300))
            .unwrap_err();
        assert_eq!(err.kind(), ErrorKind::Timeout);
        assert!(err.message().contains("300 s"), "{err}");
        assert_eq!(c.env.elapsed(), Duration::from_secs(300));
        let lines = c.env.lines.borrow();
        assert!(lines.iter().any(|l| l.contains("left")), "{lines:?}");
    }

    #[test]
    fn a_host_that_never_goes_down_is_used_after_the_down_window() {
        let mut c = Control::new(
            FakeLink::default(),
            FakeEnv::default(),
            Duration::from_secs(2),
            Duration::from_secs(60),
        );
        c.wait_for_reboot(Duration::from_secs(10), Duration::from_secs(300))
            .unwrap();
        assert_eq!(c.env.elapsed(), Duration::from_secs(10));
        assert!(c.env.lines.borrow().iter().any(|l| l.starts_with("WARN")));
    }

    #[test]
    fn details_are_short() {
        let o = Output {
            status: 1,
            stdout: "x".repeat(600),
            stderr: " ".into(),
        };
        assert_eq!(detail(&o).len(), 503);
        assert_eq!(detail(&out(1, "")), "no output");
        assert_eq!(secs(Duration::from_millis(1500)), "1.5");
        assert_eq!(secs(Duration::from_secs(60)), "60");
    }
}
