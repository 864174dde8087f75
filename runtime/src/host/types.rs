//! `types`: [`HostError`], what a host function returns on failure, and its
//! one conversion into the latest version's `types.error` (or a trap).
//! Each interface module converts its service's errors into it once
//! (`From<SshError>` in [`super::ssh`] ...); older WIT versions convert it
//! further in their own module ([`super::wit`]).

use crate::capability::Refusal;
use crate::host::wit::latest::types::Error as WitError;

/// What a host call returns on failure: an error value for the guest, or a
/// trap that ends the phase (guest misuse, a limit that cannot be
/// tolerated, a host bug).
#[derive(Debug)]
pub enum HostError {
    /// Returned to the guest as `types.error`.
    Guest(WitError),
    /// A run-directory name refused for trying to leave its folder (`..`,
    /// absolute, a symbolic link, not a regular file): returned to the
    /// guest as `invalid`, audited as a denial, since it changed nothing
    /// but an operator wants to know a connector tried.
    Escape(String),
    /// Ends the phase.
    Trap(wasmtime::Error),
}

impl HostError {
    pub fn denied(msg: impl Into<String>) -> Self {
        HostError::Guest(WitError::Denied(msg.into()))
    }
    pub fn refused(msg: impl Into<String>) -> Self {
        HostError::Guest(WitError::Refused(msg.into()))
    }
    pub fn not_found(msg: impl Into<String>) -> Self {
        HostError::Guest(WitError::NotFound(msg.into()))
    }
    pub fn timeout(msg: impl Into<String>) -> Self {
        HostError::Guest(WitError::Timeout(msg.into()))
    }
    pub fn failed(msg: impl Into<String>) -> Self {
        HostError::Guest(WitError::Failed(msg.into()))
    }
    pub fn io(msg: impl Into<String>) -> Self {
        HostError::Guest(WitError::Io(msg.into()))
    }
    pub fn invalid(msg: impl Into<String>) -> Self {
        HostError::Guest(WitError::Invalid(msg.into()))
    }
    pub fn limit(msg: impl Into<String>) -> Self {
        HostError::Guest(WitError::Limit(msg.into()))
    }
    pub fn unsupported(msg: impl Into<String>) -> Self {
        HostError::Guest(WitError::Unsupported(msg.into()))
    }
    pub fn other(msg: impl Into<String>) -> Self {
        HostError::Guest(WitError::Other(msg.into()))
    }
    pub fn trap(msg: impl Into<String>) -> Self {
        HostError::Trap(wasmtime::format_err!("{}", msg.into()))
    }

    /// Short name of the error kind the guest gets (`trap` for a trap).
    pub fn kind(&self) -> &'static str {
        match self {
            HostError::Guest(e) => match e {
                WitError::Denied(_) => "denied",
                WitError::Refused(_) => "refused",
                WitError::NotFound(_) => "not-found",
                WitError::Timeout(_) => "timeout",
                WitError::Failed(_) => "failed",
                WitError::Io(_) => "io",
                WitError::Invalid(_) => "invalid",
                WitError::Limit(_) => "limit",
                WitError::Unsupported(_) => "unsupported",
                WitError::Other(_) => "other",
            },
            HostError::Escape(_) => "invalid",
            HostError::Trap(_) => "trap",
        }
    }

    /// How the audit trail records this error: its kind, except that an
    /// escape attempt is a denial.
    pub fn audit_result(&self) -> &'static str {
        match self {
            HostError::Escape(_) => "denied",
            other => other.kind(),
        }
    }

    /// The same error kind with `prefix` before its message (a trap stays
    /// as it is).
    pub fn context(self, prefix: &str) -> Self {
        match self {
            HostError::Guest(e) => HostError::Guest(rekind(&e, format!("{prefix}{}", text(&e)))),
            HostError::Escape(m) => HostError::Escape(format!("{prefix}{m}")),
            trap => trap,
        }
    }

    /// The guest's `types.error` of the latest version, or the trap.
    pub fn into_wit(self) -> wasmtime::Result<WitError> {
        match self {
            HostError::Guest(e) => Ok(e),
            HostError::Escape(m) => Ok(WitError::Invalid(m)),
            HostError::Trap(e) => Err(e),
        }
    }
}

impl std::fmt::Display for HostError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            HostError::Guest(e) => f.write_str(text(e)),
            HostError::Escape(m) => f.write_str(m),
            HostError::Trap(e) => write!(f, "{e}"),
        }
    }
}

/// The message carried by a WIT error.
fn text(e: &WitError) -> &str {
    match e {
        WitError::Denied(m)
        | WitError::Refused(m)
        | WitError::NotFound(m)
        | WitError::Timeout(m)
        | WitError::Failed(m)
        | WitError::Io(m)
        | WitError::Invalid(m)
        | WitError::Limit(m)
        | WitError::Unsupported(m)
        | WitError::Other(m) => m,
    }
}

/// The same error kind as `w` with a new message.
fn rekind(w: &WitError, text: String) -> WitError {
    match w {
        WitError::Denied(_) => WitError::Denied(text),
        WitError::Refused(_) => WitError::Refused(text),
        WitError::NotFound(_) => WitError::NotFound(text),
        WitError::Timeout(_) => WitError::Timeout(text),
        WitError::Failed(_) => WitError::Failed(text),
        WitError::Io(_) => WitError::Io(text),
        WitError::Invalid(_) => WitError::Invalid(text),
        WitError::Limit(_) => WitError::Limit(text),
        WitError::Unsupported(_) => WitError::Unsupported(text),
        WitError::Other(_) => WitError::Other(text),
    }
}

/// The gate's refusals.
impl From<Refusal> for HostError {
    fn from(r: Refusal) -> Self {
        match r {
            Refusal::Denied(m) => HostError::denied(m),
            Refusal::Invalid(m) => HostError::invalid(m),
        }
    }
}

impl From<wasmtime::Error> for HostError {
    fn from(e: wasmtime::Error) -> Self {
        HostError::Trap(e)
    }
}

/// A dangling or mistyped resource handle is guest misuse.
impl From<wasmtime::component::ResourceTableError> for HostError {
    fn from(e: wasmtime::component::ResourceTableError) -> Self {
        HostError::Trap(e.into())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn escapes_are_invalid_for_the_guest_and_denials_in_the_audit() {
        let e = HostError::Escape("file name `..` is not allowed".into());
        assert_eq!((e.kind(), e.audit_result()), ("invalid", "denied"));
        let e = e.context("ssh.download-artifact: ");
        assert_eq!(
            e.to_string(),
            "ssh.download-artifact: file name `..` is not allowed"
        );
        assert!(matches!(e.into_wit(), Ok(WitError::Invalid(_))));
        let e = HostError::timeout("slow").context("label: ");
        assert_eq!(
            (e.kind(), e.to_string().as_str()),
            ("timeout", "label: slow")
        );
        assert!(HostError::trap("bug").into_wit().is_err());
        let e = HostError::from(Refusal::Invalid("bad URL".into()));
        assert_eq!((e.kind(), e.audit_result()), ("invalid", "invalid"));
    }
}
