//! Bulk data streamed by the host, never through the connector.
//!
//! ```no_run
//! use std::time::Duration;
//! use testflinger_connector::prelude::*;
//! # fn f() -> testflinger_connector::Result<()> {
//! let host = ssh::connect("control-host")?;
//! let report = transfer::to_ssh(
//!     transfer::Source::Url("http://images/disk.img.zst".into()),
//!     &host,
//!     "zstdcat | sudo dd of=/dev/sda bs=16M",
//!     Duration::from_secs(1800),
//! )?;
//! info!("wrote {} bytes ({})", report.bytes, report.sha256);
//! # Ok(()) }
//! ```

use std::time::Duration;

use crate::error::Result;
use crate::ssh::Session;
use crate::sys;

/// Where the bytes come from.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Source {
    /// A URL the job provides.
    Url(String),
    /// `attachments/provision/<name>`.
    Attachment(String),
}

impl std::fmt::Display for Source {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Source::Url(u) => write!(f, "url {u}"),
            Source::Attachment(a) => write!(f, "attachment {a}"),
        }
    }
}

/// What a transfer moved.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Report {
    /// Bytes read from the source.
    pub bytes: u64,
    /// `sha256:<hex>` of those bytes.
    pub sha256: String,
    /// Wall time.
    pub elapsed: Duration,
}

/// Streams `src` into the stdin of `command` run on `session`'s target.
pub fn to_ssh(src: Source, session: &Session, command: &str, timeout: Duration) -> Result<Report> {
    sys::transfer_to_ssh(&src, session.raw(), command, timeout)
}

/// Streams `src` into `artifacts/<name>`.
pub fn to_artifact(src: Source, name: &str, timeout: Duration) -> Result<Report> {
    sys::transfer_to_artifact(&src, name, timeout)
}
