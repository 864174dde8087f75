//! Waiting for something to become ready, and retrying a step, without
//! fixed sleeps: a probe is checked every `every` until it is ready, fails
//! for good, or the bound (a deadline or a number of checks) is reached.
//! Every loop is bounded in time or count, and its log lines are the same
//! everywhere (LAVA style):
//!
//! ```text
//! Waiting up to 20 min for the test image to boot
//! Still waiting for the test image to boot (19 min left): connection refused
//! The test image booted after 34 s, 12 checks
//! The test image to boot: not ready after 20 min, 120 checks; last: connection refused
//! ```
//!
//! The clock is the stage's [`HostClock`]; in native tests it is the
//! [`crate::testing::FakeHost`]'s virtual clock, so a 20-minute wait takes
//! no real time:
//!
//! ```
//! use std::time::Duration;
//! use testflinger_connector::prelude::*;
//! use testflinger_connector::testing::{FakeHost, err};
//! use testflinger_connector::wait::Wait;
//!
//! let host = FakeHost::new()
//!     .config(serde_json::json!({"device_ip": "10.0.0.5"}))
//!     .reachable("device", [err(ErrorKind::Io, "connection refused"), Ok(())])
//!     .install();
//! let booted = Wait::new("the test image to boot", Duration::from_secs(1200))
//!     .every(Duration::from_secs(10))
//!     .done("the test image booted")
//!     .until(|| ssh::wait_reachable("device", Duration::ZERO).into())
//!     .unwrap();
//! assert_eq!((booted.checks, booted.elapsed), (2, Duration::from_secs(10)));
//! assert!(host.logged("INFO The test image booted after 10 s, 2 checks"));
//! ```
//!
//! A retry prints nothing when the first attempt works, and one line per
//! failed attempt otherwise:
//!
//! ```
//! # use std::time::Duration;
//! # use testflinger_connector::prelude::*;
//! # use testflinger_connector::testing::{FakeHost, exit};
//! # use testflinger_connector::wait::{Check, Wait};
//! let host = FakeHost::new()
//!     .config(serde_json::json!({"control_host": "10.0.0.2"}))
//!     .exec("control-host", "stm -ts", [exit(1, "", "busy"), exit(0, "", "")])
//!     .install();
//! let ch = ssh::connect("control-host").unwrap();
//! Wait::new("`stm -ts`", Duration::from_secs(60))
//!     .every(Duration::from_secs(5))
//!     .retry()
//!     .until(|| match ch.exec_quiet("stm -ts") {
//!         Ok(out) if out.success() => Check::Ready(()),
//!         Ok(out) => Check::not_yet(format!("exited with status {}: {}", out.status, out.detail())),
//!         Err(e) => Check::from_error(e),
//!     })
//!     .unwrap();
//! assert_eq!(
//!     host.log(),
//!     ["INFO `stm -ts` failed, retrying in 5 s (60 s left): exited with status 1: busy"]
//! );
//! ```

use std::fmt;
use std::time::Duration;

use crate::clock::{Clock, HostClock};
use crate::error::{Error, ErrorKind, PhaseError, Result};
use crate::log;
use crate::units::human_duration;

/// What one check of a probe found.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Check<T> {
    /// Ready: the wait ends with this value.
    Ready(T),
    /// Not yet, for this reason: check again (within the bound).
    NotYet(Error),
    /// Failed for good (a denied capability, a missing config key ...):
    /// waiting cannot help, the wait ends with this error.
    Failed(Error),
}

impl<T> Check<T> {
    /// Not ready yet, for `reason`.
    pub fn not_yet(reason: impl fmt::Display) -> Self {
        Check::NotYet(Error::new(ErrorKind::Other, reason.to_string()))
    }

    /// A host error: [`Check::Failed`] when it is permanent
    /// ([`Error::is_permanent`]), [`Check::NotYet`] otherwise.
    pub fn from_error(e: Error) -> Self {
        if e.is_permanent() {
            Check::Failed(e)
        } else {
            Check::NotYet(e)
        }
    }
}

/// `Ok` is ready; an error is [`Check::from_error`].
impl<T> From<Result<T>> for Check<T> {
    fn from(r: Result<T>) -> Self {
        match r {
            Ok(v) => Check::Ready(v),
            Err(e) => Check::from_error(e),
        }
    }
}

/// A wait that ended ready.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Waited<T> {
    /// What the probe returned.
    pub value: T,
    /// How long the wait took.
    pub elapsed: Duration,
    /// How many checks it made.
    pub checks: u32,
}

/// A wait that did not end ready: its bound was reached (see
/// [`WaitError::is_timeout`]) or a check failed for good.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct WaitError {
    what: String,
    limit: String,
    elapsed: Duration,
    checks: u32,
    reason: Error,
    timed_out: bool,
}

impl WaitError {
    /// Whether the bound was reached (else a check failed for good).
    pub fn is_timeout(&self) -> bool {
        self.timed_out
    }

    /// The last reason a check gave, or the error it failed with.
    pub fn reason(&self) -> &Error {
        &self.reason
    }

    /// [`WaitError::reason`], by value.
    pub fn into_reason(self) -> Error {
        self.reason
    }

    /// How long the wait took.
    pub fn elapsed(&self) -> Duration {
        self.elapsed
    }

    /// How many checks it made.
    pub fn checks(&self) -> u32 {
        self.checks
    }

    /// The bound as text: `20 min` for a deadline, `31 checks` for a count.
    pub fn limit(&self) -> &str {
        &self.limit
    }
}

impl fmt::Display for WaitError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let after = format!("{}, {}", human_duration(self.elapsed), checks(self.checks));
        if self.timed_out {
            write!(
                f,
                "{}: not ready after {after}; last: {}",
                capitalized(&self.what),
                self.reason
            )
        } else {
            write!(
                f,
                "{}: {} (after {after})",
                capitalized(&self.what),
                self.reason
            )
        }
    }
}

impl std::error::Error for WaitError {}

/// A timeout keeps the `timeout` kind; a failed check keeps its own.
impl From<WaitError> for Error {
    fn from(e: WaitError) -> Self {
        let kind = if e.timed_out {
            ErrorKind::Timeout
        } else {
            e.reason.kind()
        };
        Error::new(kind, e.to_string())
    }
}

impl From<WaitError> for PhaseError {
    fn from(e: WaitError) -> Self {
        PhaseError::from(Error::from(e))
    }
}

/// How a wait logs.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Style {
    /// Start line, progress lines, end line.
    Announce,
    /// Nothing unless a check fails; then one line per retry.
    Retry,
    /// Nothing at all.
    Quiet,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Limit {
    Time(Duration),
    Checks(u32),
}

/// Default pause between checks.
pub const DEFAULT_EVERY: Duration = Duration::from_secs(10);
/// Default minimum time between progress lines.
pub const DEFAULT_PROGRESS_EVERY: Duration = Duration::from_secs(30);
/// The shortest pause between checks: a loop always lets time pass.
pub const MIN_EVERY: Duration = Duration::from_millis(1);

/// A wait being set up; [`Wait::until`] runs it.
pub struct Wait<'c> {
    what: String,
    limit: Limit,
    every: Duration,
    progress_every: Duration,
    style: Style,
    done: Option<String>,
    note: String,
    prefix: String,
    clock: &'c dyn Clock,
}

impl Wait<'static> {
    /// Waits for `what` (a noun phrase: `the test image to boot`, `the
    /// deployment`) for up to `deadline`.
    pub fn new(what: impl Into<String>, deadline: Duration) -> Self {
        Wait::with_limit(what.into(), Limit::Time(deadline))
    }

    /// Waits for `what` for at most `checks` checks, [`Wait::every`] apart
    /// (the reference's "poll 30 times, 10 s apart").
    pub fn counted(what: impl Into<String>, checks: u32) -> Self {
        Wait::with_limit(what.into(), Limit::Checks(checks.max(1)))
    }

    fn with_limit(what: String, limit: Limit) -> Self {
        Wait {
            what,
            limit,
            every: DEFAULT_EVERY,
            progress_every: DEFAULT_PROGRESS_EVERY,
            style: Style::Announce,
            done: None,
            note: String::new(),
            prefix: String::new(),
            clock: &HostClock,
        }
    }
}

impl<'c> Wait<'c> {
    /// The pause between checks (at least [`MIN_EVERY`]); default 10 s.
    pub fn every(mut self, every: Duration) -> Self {
        self.every = every.max(MIN_EVERY);
        self
    }

    /// The minimum time between progress lines; default 30 s.
    pub fn progress_every(mut self, every: Duration) -> Self {
        self.progress_every = every;
        self
    }

    /// What the end line says when ready (`the test image booted`);
    /// default `<what> ready`.
    pub fn done(mut self, phrase: impl Into<String>) -> Self {
        self.done = Some(phrase.into());
        self
    }

    /// Text appended to the start line (` (until 14:03 UTC)`).
    pub fn note(mut self, text: impl Into<String>) -> Self {
        self.note = text.into();
        self
    }

    /// A prefix for every line (`MAAS: `).
    pub fn prefix(mut self, prefix: impl Into<String>) -> Self {
        self.prefix = prefix.into();
        self
    }

    /// Retry style: no line when the first check is ready; otherwise one
    /// line per failed check (`<What> failed, retrying in 5 s (55 s left):
    /// <reason>`) and none at the end (the caller reports the outcome).
    pub fn retry(mut self) -> Self {
        self.style = Style::Retry;
        self
    }

    /// No lines at all.
    pub fn quiet(mut self) -> Self {
        self.style = Style::Quiet;
        self
    }

    /// Another clock than the stage's.
    pub fn clock<'d>(self, clock: &'d dyn Clock) -> Wait<'d> {
        Wait {
            what: self.what,
            limit: self.limit,
            every: self.every,
            progress_every: self.progress_every,
            style: self.style,
            done: self.done,
            note: self.note,
            prefix: self.prefix,
            clock,
        }
    }

    fn line(&self, text: String) {
        log::info(&format!("{}{text}", self.prefix));
    }

    fn limit_text(&self) -> String {
        match self.limit {
            Limit::Time(d) => human_duration(d),
            Limit::Checks(n) => checks(n),
        }
    }

    /// Checks `probe` until it is ready, fails for good, or the bound is
    /// reached. The first check happens at once (even with a zero
    /// deadline); later ones `every` apart, the last pause cut to the
    /// deadline.
    pub fn until<T>(
        self,
        mut probe: impl FnMut() -> Check<T>,
    ) -> core::result::Result<Waited<T>, WaitError> {
        let start = self.clock.now();
        if self.style == Style::Announce {
            let up_to = match self.limit {
                Limit::Time(d) => human_duration(d),
                Limit::Checks(n) => human_duration(self.every.saturating_mul(n - 1)),
            };
            self.line(format!(
                "Waiting up to {up_to} for {}{}",
                self.what, self.note
            ));
        }
        let mut count = 0u32;
        let mut last_progress = Duration::ZERO;
        loop {
            count += 1;
            let reason = match probe() {
                Check::Ready(value) => {
                    let elapsed = self.clock.now().saturating_sub(start);
                    if self.style == Style::Announce {
                        let done = self
                            .done
                            .clone()
                            .unwrap_or_else(|| format!("{} ready", self.what));
                        self.line(format!(
                            "{} after {}, {}",
                            capitalized(&done),
                            human_duration(elapsed),
                            checks(count)
                        ));
                    }
                    return Ok(Waited {
                        value,
                        elapsed,
                        checks: count,
                    });
                }
                Check::Failed(reason) => {
                    return Err(self.end(start, count, reason, false));
                }
                Check::NotYet(reason) => reason,
            };
            let elapsed = self.clock.now().saturating_sub(start);
            let (exhausted, left, pause) = match self.limit {
                Limit::Time(d) => {
                    let left = d.saturating_sub(elapsed);
                    (left.is_zero(), human_duration(left), self.every.min(left))
                }
                Limit::Checks(n) => (count >= n, checks(n - count.min(n)), self.every),
            };
            if exhausted {
                return Err(self.end(start, count, reason, true));
            }
            match self.style {
                Style::Announce if elapsed.saturating_sub(last_progress) >= self.progress_every => {
                    self.line(format!(
                        "Still waiting for {} ({left} left): {reason}",
                        self.what
                    ));
                    last_progress = elapsed;
                }
                Style::Retry => self.line(format!(
                    "{} failed, retrying in {} ({left} left): {reason}",
                    capitalized(&self.what),
                    human_duration(pause)
                )),
                _ => {}
            }
            self.clock.sleep(pause);
        }
    }

    fn end(&self, start: Duration, count: u32, reason: Error, timed_out: bool) -> WaitError {
        let e = WaitError {
            what: self.what.clone(),
            limit: self.limit_text(),
            elapsed: self.clock.now().saturating_sub(start),
            checks: count,
            reason,
            timed_out,
        };
        if self.style == Style::Announce {
            self.line(e.to_string());
        }
        e
    }
}

/// Waits up to `deadline` for `what`, checking `probe` every `every`, with
/// the standard lines (see the module documentation and [`Wait`] for the
/// other settings).
pub fn until<T>(
    deadline: Duration,
    every: Duration,
    what: &str,
    probe: impl FnMut() -> Check<T>,
) -> core::result::Result<Waited<T>, WaitError> {
    Wait::new(what, deadline).every(every).until(probe)
}

fn checks(n: u32) -> String {
    if n == 1 {
        "1 check".to_string()
    } else {
        format!("{n} checks")
    }
}

/// `text` with its first letter in upper case.
fn capitalized(text: &str) -> String {
    let mut chars = text.chars();
    match chars.next() {
        Some(c) => c.to_uppercase().chain(chars).collect(),
        None => String::new(),
    }
}

#[cfg(test)]
mod tests {
    use std::cell::Cell;

    use super::*;

    /// A clock that only sleeping advances.
    #[derive(Default)]
    struct Virtual(Cell<Duration>);

    impl Clock for Virtual {
        fn now(&self) -> Duration {
            self.0.get()
        }
        fn sleep(&self, d: Duration) {
            self.0.set(self.0.get() + d);
        }
    }

    fn never() -> Check<()> {
        Check::not_yet("no answer")
    }

    #[test]
    fn a_deadline_bounds_the_checks_and_cuts_the_last_pause() {
        let clock = Virtual::default();
        let e = Wait::new("x", Duration::from_secs(60))
            .every(Duration::from_secs(25))
            .quiet()
            .clock(&clock)
            .until(never)
            .unwrap_err();
        // Checks at 0, 25, 50 and 60 s.
        assert!(e.is_timeout());
        assert_eq!((e.checks(), e.elapsed()), (4, Duration::from_secs(60)));
        assert_eq!(
            e.to_string(),
            "X: not ready after 60 s, 4 checks; last: no answer"
        );
        assert_eq!(Error::from(e).kind(), ErrorKind::Timeout);
    }

    #[test]
    fn the_reference_retry_window_gives_thirteen_attempts() {
        let clock = Virtual::default();
        let e = Wait::new("x", Duration::from_secs(60))
            .every(Duration::from_secs(5))
            .quiet()
            .clock(&clock)
            .until(never)
            .unwrap_err();
        assert_eq!(e.checks(), 13);
    }

    #[test]
    fn counted_waits_make_exactly_that_many_checks() {
        let clock = Virtual::default();
        let mut n = 0;
        let e = Wait::counted("x", 31)
            .every(Duration::from_secs(10))
            .quiet()
            .clock(&clock)
            .until(|| {
                n += 1;
                never()
            })
            .unwrap_err();
        assert_eq!((n, e.checks(), e.limit()), (31, 31, "31 checks"));
        assert_eq!(clock.now(), Duration::from_secs(300));
    }

    #[test]
    fn ready_and_failed_end_the_wait_at_once() {
        let clock = Virtual::default();
        let mut answers = vec![Check::Ready(7), Check::not_yet("booting")];
        let w = Wait::new("x", Duration::from_secs(60))
            .quiet()
            .clock(&clock)
            .until(|| answers.pop().unwrap())
            .unwrap();
        assert_eq!(
            (w.value, w.checks, w.elapsed),
            (7, 2, Duration::from_secs(10))
        );

        let e = Wait::new("x", Duration::from_secs(60))
            .quiet()
            .clock(&clock)
            .until(|| Check::<()>::Failed(Error::new(ErrorKind::Denied, "not granted")))
            .unwrap_err();
        assert!(!e.is_timeout());
        assert_eq!(e.checks(), 1);
        assert_eq!(Error::from(e).kind(), ErrorKind::Denied);
    }

    #[test]
    fn host_errors_are_sorted_into_retryable_and_permanent() {
        let io: Check<()> = Err(Error::new(ErrorKind::Io, "reset")).into();
        assert!(matches!(io, Check::NotYet(_)));
        let refused: Check<()> = Err(Error::new(ErrorKind::Refused, "bad key")).into();
        assert!(matches!(refused, Check::NotYet(_)));
        let missing: Check<()> = Err(Error::new(ErrorKind::NotFound, "no device_ip")).into();
        assert!(matches!(missing, Check::Failed(_)));
    }

    #[test]
    fn a_zero_pause_still_lets_time_pass() {
        let clock = Virtual::default();
        let e = Wait::new("x", Duration::from_millis(5))
            .every(Duration::ZERO)
            .quiet()
            .clock(&clock)
            .until(never)
            .unwrap_err();
        assert_eq!(e.checks(), 6);
    }
}
