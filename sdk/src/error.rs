//! Errors of host calls ([`Error`]) and of phases ([`PhaseError`]).

use std::fmt;

use crate::bindings::testflinger::connector::types::{
    Error as WitError, PhaseError as WitPhaseError,
};

/// What kind of failure a host call reported.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ErrorKind {
    /// The capability is not declared, granted or configured.
    Denied,
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
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum PhaseError {
    /// The phase failed; the device is still usable (exit status 1).
    Failed(String),
    /// The device needs manual recovery (exit status 46). Only for real
    /// device-recovery failures: it takes the agent offline.
    RecoveryNeeded(String),
    /// The connector does not implement the phase; the runtime runs its
    /// native default.
    Unsupported,
}

/// Result of a phase.
pub type PhaseResult<T> = core::result::Result<T, PhaseError>;

impl PhaseError {
    /// A failure with `message`.
    pub fn failed(message: impl fmt::Display) -> Self {
        PhaseError::Failed(message.to_string())
    }

    /// A recovery failure with `message`.
    pub fn recovery(message: impl fmt::Display) -> Self {
        PhaseError::RecoveryNeeded(message.to_string())
    }

    /// A timeout becomes a recovery failure, anything else a plain failure:
    /// how most reference connectors treat their `reboot_script`.
    pub fn recovery_on_timeout(err: Error) -> Self {
        if err.is_timeout() {
            PhaseError::RecoveryNeeded(err.message)
        } else {
            PhaseError::Failed(err.message)
        }
    }

    #[doc(hidden)]
    pub fn into_wit(self) -> WitPhaseError {
        match self {
            PhaseError::Failed(m) => WitPhaseError::Failed(m),
            PhaseError::RecoveryNeeded(m) => WitPhaseError::RecoveryNeeded(m),
            PhaseError::Unsupported => WitPhaseError::Unsupported,
        }
    }
}

impl fmt::Display for PhaseError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            PhaseError::Failed(m) => write!(f, "failed: {m}"),
            PhaseError::RecoveryNeeded(m) => write!(f, "recovery needed: {m}"),
            PhaseError::Unsupported => f.write_str("unsupported"),
        }
    }
}

impl From<Error> for PhaseError {
    fn from(e: Error) -> Self {
        PhaseError::Failed(e.message)
    }
}

impl From<WitError> for PhaseError {
    fn from(e: WitError) -> Self {
        PhaseError::from(Error::from(e))
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
            PhaseError::RecoveryNeeded("slow".into())
        );
        let e = Error::new(ErrorKind::Failed, "rc 1").context("reboot_script");
        assert_eq!(e.to_string(), "reboot_script: rc 1");
        assert_eq!(
            PhaseError::recovery_on_timeout(e),
            PhaseError::Failed("reboot_script: rc 1".into())
        );
    }
}
