//! How a stage ends when it does not succeed, the exit codes the agent
//! acts on, and the helpers that shape error text users see.

/// Exit status: the stage failed, the device is still usable.
pub const EXIT_FAILED: u8 = 1;
/// Exit status: command-line usage error (unknown type or stage ...).
pub const EXIT_USAGE: u8 = 2;
/// Exit status: the device needs manual recovery; the agent goes offline.
pub const EXIT_RECOVERY: u8 = 46;

/// A failed stage, with what ends up in `device-connector-error.json`.
#[derive(Debug, Clone, thiserror::Error)]
#[error("{message}")]
pub struct StageError {
    /// Whether the device needs recovery (exit 46) or not (exit 1).
    pub recovery: bool,
    /// The `exception_name` the agent shows (`ProvisioningError`,
    /// `RecoveryError`, `ConfigError` ...).
    pub name: String,
    /// What happened and what to do about it.
    pub message: String,
    /// The underlying cause, if any (`exception_cause`).
    pub cause: Option<String>,
}

impl StageError {
    /// A failure that leaves the device usable (exit 1).
    pub fn failed(name: impl Into<String>, message: impl Into<String>) -> Self {
        StageError {
            recovery: false,
            name: name.into(),
            message: message.into(),
            cause: None,
        }
    }

    /// A failure after which the device needs manual recovery (exit 46).
    pub fn recovery(message: impl Into<String>) -> Self {
        StageError {
            recovery: true,
            name: "RecoveryError".into(),
            message: message.into(),
            cause: None,
        }
    }

    /// Adds the underlying cause.
    pub fn with_cause(mut self, cause: impl Into<String>) -> Self {
        self.cause = Some(cause.into());
        self
    }

    /// The process exit status for this failure.
    pub fn exit_code(&self) -> u8 {
        if self.recovery {
            EXIT_RECOVERY
        } else {
            EXIT_FAILED
        }
    }
}

/// Renders an error and its chain of causes on one line.
pub fn chain(err: &(dyn std::error::Error + 'static)) -> String {
    let mut out = err.to_string();
    let mut source = err.source();
    while let Some(s) = source {
        let text = s.to_string();
        if !out.contains(&text) {
            out.push_str(": ");
            out.push_str(&text);
        }
        source = s.source();
    }
    out
}

/// `url` with its user information (`user:password@`, or a token in the
/// user name) replaced by `***`, for messages and logs: a lab may put
/// credentials in a URL (`connector_runtime.control_host_url`, a named
/// endpoint), and messages reach connectors and the job log. Works on text
/// that does not parse as a URL too.
pub fn redact_url(url: &str) -> std::borrow::Cow<'_, str> {
    let Some(start) = url.find("://").map(|i| i + 3) else {
        return url.into();
    };
    let rest = &url[start..];
    let end = rest.find(['/', '?', '#']).unwrap_or(rest.len());
    match rest[..end].rfind('@') {
        Some(at) => format!("{}***{}", &url[..start], &rest[at..]).into(),
        None => url.into(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn credentials_in_urls_are_redacted() {
        assert_eq!(
            redact_url("http://admin:pw@ch:8000/health"),
            "http://***@ch:8000/health"
        );
        assert_eq!(redact_url("https://TOKEN@host/x@y"), "https://***@host/x@y");
        assert_eq!(redact_url("http://a:b@c@host:bad/"), "http://***@host:bad/");
        assert_eq!(redact_url("http://host/p?q=a@b"), "http://host/p?q=a@b");
        assert_eq!(redact_url("not a url"), "not a url");
    }

    #[test]
    fn exit_codes() {
        assert_eq!(StageError::failed("X", "m").exit_code(), 1);
        assert_eq!(StageError::recovery("m").exit_code(), 46);
        assert_eq!(StageError::recovery("m").name, "RecoveryError");
    }
}
