//! Errors of host calls ([`Error`]) and of phases ([`PhaseError`]).

use std::fmt;

use crate::bindings::testflinger::connector::types::{
    Error as WitError, Failure, PhaseError as WitPhaseError,
};

/// What kind of failure a host call reported.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ErrorKind {
    /// The capability is not declared, granted or configured.
    Denied,
    /// The remote side refused the login or credentials (SSH keys or
    /// password rejected, HTTP 401/403); the capability itself is granted.
    Refused,
    /// The named thing does not exist.
    NotFound,
    /// The call's deadline passed.
    Timeout,
    /// The operation ran and failed (non-zero exit status ...).
    Failed,
    /// Network or file input/output failed.
    Io,
    /// An argument was rejected.
    Invalid,
    /// A runtime limit was hit.
    Limit,
    /// The host does not offer the operation.
    Unsupported,
    /// Anything else.
    Other,
}

impl ErrorKind {
    /// The WIT name of the kind (`denied`, `not-found`, `refused` ...).
    pub fn as_str(self) -> &'static str {
        match self {
            ErrorKind::Denied => "denied",
            ErrorKind::Refused => "refused",
            ErrorKind::NotFound => "not-found",
            ErrorKind::Timeout => "timeout",
            ErrorKind::Failed => "failed",
            ErrorKind::Io => "io",
            ErrorKind::Invalid => "invalid",
            ErrorKind::Limit => "limit",
            ErrorKind::Unsupported => "unsupported",
            ErrorKind::Other => "other",
        }
    }
}

/// A failed host call, or a connector-side problem (bad job data ...).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Error {
    kind: ErrorKind,
    message: String,
}

/// Result of a host call.
pub type Result<T> = core::result::Result<T, Error>;

impl Error {
    /// A new error.
    pub fn new(kind: ErrorKind, message: impl Into<String>) -> Self {
        Error {
            kind,
            message: message.into(),
        }
    }

    /// What kind of failure this is.
    pub fn kind(&self) -> ErrorKind {
        self.kind
    }

    /// The explanation.
    pub fn message(&self) -> &str {
        &self.message
    }

    /// Whether the call timed out.
    pub fn is_timeout(&self) -> bool {
        self.kind == ErrorKind::Timeout
    }

    /// Whether the lab did not grant (or the device config does not
    /// configure) what the call needed: waiting or power cycling cannot
    /// help, the lab has to change its grants or config.
    pub fn is_capability_denied(&self) -> bool {
        self.kind == ErrorKind::Denied
    }

    /// Whether retrying the same call cannot succeed: denied capabilities,
    /// missing names, rejected arguments, hit limits, unsupported
    /// operations. Timeouts, I/O errors, refused logins and failed commands
    /// may go away (a device still booting, a flaky link).
    pub fn is_permanent(&self) -> bool {
        matches!(
            self.kind,
            ErrorKind::Denied
                | ErrorKind::NotFound
                | ErrorKind::Invalid
                | ErrorKind::Limit
                | ErrorKind::Unsupported
        )
    }

    /// Prefixes the message with what was being done.
    pub fn context(mut self, what: impl fmt::Display) -> Self {
        self.message = format!("{what}: {}", self.message);
        self
    }
}

impl fmt::Display for Error {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.message)
    }
}

impl std::error::Error for Error {}

impl From<WitError> for Error {
    fn from(e: WitError) -> Self {
        let (kind, message) = match e {
            WitError::Denied(m) => (ErrorKind::Denied, m),
            WitError::Refused(m) => (ErrorKind::Refused, m),
            WitError::NotFound(m) => (ErrorKind::NotFound, m),
            WitError::Timeout(m) => (ErrorKind::Timeout, m),
            WitError::Failed(m) => (ErrorKind::Failed, m),
            WitError::Io(m) => (ErrorKind::Io, m),
            WitError::Invalid(m) => (ErrorKind::Invalid, m),
            WitError::Limit(m) => (ErrorKind::Limit, m),
            WitError::Unsupported(m) => (ErrorKind::Unsupported, m),
            WitError::Other(m) => (ErrorKind::Other, m),
        };
        Error { kind, message }
    }
}

impl From<serde_json::Error> for Error {
    fn from(e: serde_json::Error) -> Self {
        Error::new(ErrorKind::Invalid, e.to_string())
    }
}

/// How a phase ended when it did not succeed.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum PhaseKind {
    /// The phase failed; the device is still usable (exit status 1).
    Failed,
    /// The device needs manual recovery (exit status 46). Only for real
    /// device-recovery failures: it takes the agent offline.
    RecoveryNeeded,
    /// The connector does not implement the phase; the runtime runs its
    /// native default.
    Unsupported,
}

/// A failed phase: its kind (exit 1, exit 46, or "run the default"), the
/// error class the agent shows (`exception_name`), the message and the
/// cause (`exception_cause`).
///
/// ```
/// use testflinger_connector::{Error, ErrorKind, PhaseError};
/// let storage = Error::new(ErrorKind::Failed, "partition create exited 2");
/// let e = PhaseError::failed("Cannot lay out the disks")
///     .class("MaasStorageError")
///     .caused_by(&storage);
/// assert_eq!(e.to_string(), "failed: Cannot lay out the disks");
/// assert_eq!(e.cause(), Some("partition create exited 2"));
/// ```
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PhaseError {
    kind: PhaseKind,
    class: Option<String>,
    message: String,
    cause: Option<String>,
}

/// Result of a phase.
pub type PhaseResult<T> = core::result::Result<T, PhaseError>;

impl PhaseError {
    fn new(kind: PhaseKind, message: impl fmt::Display) -> Self {
        PhaseError {
            kind,
            class: None,
            message: message.to_string(),
            cause: None,
        }
    }

    /// A failure with `message` (exit 1). Its class is the stage's generic
    /// one (`ProvisioningError` for provision ...) unless [`Self::class`]
    /// names another.
    pub fn failed(message: impl fmt::Display) -> Self {
        PhaseError::new(PhaseKind::Failed, message)
    }

    /// A recovery failure with `message` (exit 46), class `RecoveryError`.
    pub fn recovery(message: impl fmt::Display) -> Self {
        PhaseError::new(PhaseKind::RecoveryNeeded, message)
    }

    /// "Not implemented": the runtime runs its native default.
    pub fn unsupported() -> Self {
        PhaseError::new(PhaseKind::Unsupported, "")
    }

    /// A timeout becomes a recovery failure, anything else a plain failure:
    /// how most reference connectors treat their `reboot_script`.
    pub fn recovery_on_timeout(err: Error) -> Self {
        if err.is_timeout() {
            PhaseError::recovery(err.message)
        } else {
            PhaseError::failed(err.message)
        }
    }

    /// Names the error class the agent reports (`exception_name`), after
    /// the reference's exception classes: `MaasStorageError`,
    /// `FirmwareUpdateError` ... An identifier of ASCII letters, digits and
    /// `_`, at most 64 long; the runtime uses the generic class otherwise.
    pub fn class(mut self, class: impl Into<String>) -> Self {
        self.class = Some(class.into());
        self
    }

    /// Records what caused this failure (`exception_cause`).
    pub fn caused_by(mut self, cause: impl fmt::Display) -> Self {
        self.cause = Some(cause.to_string());
        self
    }

    /// Prefixes the message with what was being done.
    pub fn context(mut self, what: impl fmt::Display) -> Self {
        self.message = if self.message.is_empty() {
            what.to_string()
        } else {
            format!("{what}: {}", self.message)
        };
        self
    }

    /// Appends `more` to the message (a second failure while cleaning up
    /// after the first, say). An `unsupported` error becomes a failure.
    pub fn also(mut self, more: impl fmt::Display) -> Self {
        if self.kind == PhaseKind::Unsupported {
            self.kind = PhaseKind::Failed;
        }
        self.message = if self.message.is_empty() {
            more.to_string()
        } else {
            format!("{}; {more}", self.message)
        };
        self
    }

    /// What kind of end this is.
    pub fn kind(&self) -> PhaseKind {
        self.kind
    }

    /// Whether the device needs recovery (exit 46).
    pub fn is_recovery(&self) -> bool {
        self.kind == PhaseKind::RecoveryNeeded
    }

    /// Whether the connector left the stage to the runtime's default.
    pub fn is_unsupported(&self) -> bool {
        self.kind == PhaseKind::Unsupported
    }

    /// The message.
    pub fn message(&self) -> &str {
        &self.message
    }

    /// The error class named with [`Self::class`], if any.
    pub fn class_name(&self) -> Option<&str> {
        self.class.as_deref()
    }

    /// The cause, if recorded.
    pub fn cause(&self) -> Option<&str> {
        self.cause.as_deref()
    }

    #[doc(hidden)]
    pub fn into_wit(self) -> WitPhaseError {
        let failure = |default: &str| Failure {
            class: self.class.clone().unwrap_or_else(|| default.to_string()),
            message: self.message.clone(),
            cause: self.cause.clone(),
        };
        match self.kind {
            // An empty class lets the runtime use the stage's generic one.
            PhaseKind::Failed => WitPhaseError::Failed(failure("")),
            PhaseKind::RecoveryNeeded => WitPhaseError::RecoveryNeeded(failure("RecoveryError")),
            PhaseKind::Unsupported => WitPhaseError::Unsupported,
        }
    }
}

impl fmt::Display for PhaseError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self.kind {
            PhaseKind::Failed => write!(f, "failed: {}", self.message),
            PhaseKind::RecoveryNeeded => write!(f, "recovery needed: {}", self.message),
            PhaseKind::Unsupported => f.write_str("unsupported"),
        }
    }
}

impl std::error::Error for PhaseError {}

impl From<Error> for PhaseError {
    fn from(e: Error) -> Self {
        PhaseError::failed(e.message)
    }
}

impl From<WitError> for PhaseError {
    fn from(e: WitError) -> Self {
        PhaseError::from(Error::from(e))
    }
}

impl PhaseError {
    /// The outcome of a step and of the clean-up that must follow it
    /// either way (switching storage back, unmounting), as one: the step's
    /// failure wins and the clean-up's is appended as `<label>: <message>`.
    ///
    /// ```
    /// use testflinger_connector::PhaseError;
    /// let work: Result<(), _> = Err(PhaseError::failed("Error creating user files"));
    /// let cleanup = Err(PhaseError::failed("`sudo umount /mnt/x` exited 32"));
    /// let e = PhaseError::merge(work, cleanup, "unmounting failed too").unwrap_err();
    /// assert_eq!(e.message(), "Error creating user files; unmounting failed too: `sudo umount /mnt/x` exited 32");
    /// ```
    pub fn merge<T>(work: PhaseResult<T>, cleanup: PhaseResult<()>, label: &str) -> PhaseResult<T> {
        match (work, cleanup) {
            (Ok(v), Ok(())) => Ok(v),
            (Ok(_), Err(e)) => Err(e),
            (Err(e), Ok(())) => Err(e),
            (Err(e), Err(more)) => Err(e.also(format!("{label}: {}", more.message()))),
        }
    }
}

/// Turning a failed step into a failed phase, the way the reference
/// reports it: its own message (`Failed to boot test image!`) as
/// `exception_message`, the host error behind it as `exception_cause`.
///
/// ```
/// use testflinger_connector::prelude::*;
/// let step: testflinger_connector::Result<()> = Err(Error::new(ErrorKind::Timeout, "no answer within 20 min"));
/// let e = step.clone().or_fail("Failed to boot test image!").unwrap_err();
/// assert_eq!((e.message(), e.cause()), ("Failed to boot test image!", Some("no answer within 20 min")));
/// let e = step.clone().or_fail_detailed("Unable to run hdparm").unwrap_err();
/// assert_eq!(e.message(), "Unable to run hdparm: no answer within 20 min");
/// assert!(step.or_recover("timeout reaching control host!").unwrap_err().is_recovery());
/// ```
pub trait ResultExt<T> {
    /// `PhaseError::failed(what).caused_by(err)`.
    fn or_fail(self, what: impl fmt::Display) -> PhaseResult<T>;
    /// `PhaseError::failed("<what>: <err>").caused_by(err)`, for messages
    /// that must show the detail themselves.
    fn or_fail_detailed(self, what: impl fmt::Display) -> PhaseResult<T>;
    /// `PhaseError::recovery(what).caused_by(err)` (exit 46).
    fn or_recover(self, what: impl fmt::Display) -> PhaseResult<T>;
}

/// Mappings that depend on the kind of a host call's [`Error`] (see
/// [`ResultExt`] for the ones that do not).
///
/// ```
/// use testflinger_connector::prelude::*;
/// let hung: testflinger_connector::Result<()> = Err(Error::new(ErrorKind::Timeout, "`sleep 600` did not exit"));
/// let e = hung.or_recover_on_timeout("timeout reaching control host!").unwrap_err();
/// assert!(e.is_recovery() && e.cause() == Some("`sleep 600` did not exit"));
/// ```
pub trait HostResultExt<T> {
    /// [`PhaseError::recovery_on_timeout`] with the reference's message: a
    /// timeout needs recovery (`what`, caused by the error), anything else
    /// is a plain failure with the error's message (how noprovision and
    /// dragonboard treat their `reboot_script`).
    fn or_recover_on_timeout(self, what: impl fmt::Display) -> PhaseResult<T>;
}

impl<T> HostResultExt<T> for Result<T> {
    fn or_recover_on_timeout(self, what: impl fmt::Display) -> PhaseResult<T> {
        self.map_err(|e| {
            if e.is_timeout() {
                PhaseError::recovery(what).caused_by(e)
            } else {
                e.into()
            }
        })
    }
}

impl<T, E: fmt::Display> ResultExt<T> for core::result::Result<T, E> {
    fn or_fail(self, what: impl fmt::Display) -> PhaseResult<T> {
        self.map_err(|e| PhaseError::failed(what).caused_by(e))
    }

    fn or_fail_detailed(self, what: impl fmt::Display) -> PhaseResult<T> {
        self.map_err(|e| PhaseError::failed(format!("{what}: {e}")).caused_by(e))
    }

    fn or_recover(self, what: impl fmt::Display) -> PhaseResult<T> {
        self.map_err(|e| PhaseError::recovery(what).caused_by(e))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn conversions() {
        let e = Error::from(WitError::Timeout("slow".into()));
        assert!(e.is_timeout());
        assert_eq!(
            PhaseError::recovery_on_timeout(e),
            PhaseError::recovery("slow")
        );
        let e = Error::new(ErrorKind::Failed, "rc 1").context("reboot_script");
        assert_eq!(e.to_string(), "reboot_script: rc 1");
        assert_eq!(
            PhaseError::recovery_on_timeout(e),
            PhaseError::failed("reboot_script: rc 1")
        );
    }

    #[test]
    fn phase_errors_carry_class_and_cause() {
        let e = PhaseError::failed("x")
            .class("MaasStorageError")
            .caused_by("rc 2");
        match e.clone().into_wit() {
            WitPhaseError::Failed(f) => {
                assert_eq!(
                    (f.class.as_str(), f.message.as_str()),
                    ("MaasStorageError", "x")
                );
                assert_eq!(f.cause.as_deref(), Some("rc 2"));
            }
            other => panic!("{other:?}"),
        }
        match PhaseError::recovery("gone").into_wit() {
            WitPhaseError::RecoveryNeeded(f) => assert_eq!(f.class, "RecoveryError"),
            other => panic!("{other:?}"),
        }
        match PhaseError::failed("plain").into_wit() {
            WitPhaseError::Failed(f) => assert_eq!(f.class, ""),
            other => panic!("{other:?}"),
        }
        let e = PhaseError::unsupported().also("second");
        assert_eq!(e.kind(), PhaseKind::Failed);
        assert_eq!(PhaseError::failed("a").also("b").message(), "a; b");
        assert_eq!(PhaseError::failed("a").context("step").message(), "step: a");
        assert!(Error::new(ErrorKind::Denied, "x").is_capability_denied());
        assert!(!Error::new(ErrorKind::Refused, "x").is_permanent());
        assert!(Error::new(ErrorKind::NotFound, "x").is_permanent());
    }
}
