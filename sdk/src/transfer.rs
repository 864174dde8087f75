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

use crate::bindings::testflinger::connector::transfer as wit;
use crate::error::Result;
use crate::ssh::Session;

/// Where the bytes come from.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Source {
    /// A URL the job provides.
    Url(String),
    /// `attachments/provision/<name>`.
    Attachment(String),
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

fn source(src: Source) -> wit::Source {
    match src {
        Source::Url(u) => wit::Source::Url(u),
        Source::Attachment(a) => wit::Source::Attachment(a),
    }
}

fn report(r: wit::Report) -> Report {
    Report {
        bytes: r.bytes,
        sha256: r.sha256,
        elapsed: Duration::from_millis(r.elapsed_ms),
    }
}

/// Streams `src` into the stdin of `command` run on `session`'s target.
pub fn to_ssh(src: Source, session: &Session, command: &str, timeout: Duration) -> Result<Report> {
    Ok(report(wit::to_ssh(
        &source(src),
        session.raw(),
        command,
        timeout.as_millis() as u64,
        &[],
    )?))
}

/// Streams `src` into `artifacts/<name>`.
pub fn to_artifact(src: Source, name: &str, timeout: Duration) -> Result<Report> {
    Ok(report(wit::to_artifact(
        &source(src),
        name,
        timeout.as_millis() as u64,
        &[],
    )?))
}
