//! Bulk data moved by the host: an image streamed from a job URL or a
//! provision attachment into a command's stdin over SSH, or into a
//! run-directory artifact, hashed (sha256) on the way and reported in
//! progress lines a non-TTY log can show. No byte of it enters connector
//! memory.
//!
//! A transfer fails, and leaves nothing half-done behind on the host side,
//! when the source ends early (a `Content-Length` or file size not reached,
//! a broken stream), when the sink fails (a non-zero exit of the command,
//! a write error) or at its deadline. An artifact only appears, by rename,
//! once the whole source arrived.

use std::io::{self, Write as _};
use std::pin::Pin;
use std::sync::{Arc, Mutex};
use std::task::{Context, Poll};
use std::time::{Duration, Instant};

use bytes::{Bytes, BytesMut};
use futures::{Stream, StreamExt};
use sha2::{Digest, Sha256};
use tokio::io::AsyncReadExt;

use crate::http::{HttpClient, HttpError};
use crate::rundir::{PathError, RunDir};
use crate::ssh::{Connection, ExecOutput, SshError};

/// Default time between two progress lines.
pub const PROGRESS_INTERVAL: Duration = Duration::from_secs(10);
/// The attachment folder sources are read from.
pub const ATTACHMENT_PHASE: &str = "provision";
/// Bytes read from an attachment at a time.
const FILE_CHUNK: usize = 256 * 1024;
/// Write buffer of an artifact file.
const ARTIFACT_BUFFER: usize = 1 << 20;
/// Stderr lines of a failed sink command quoted in the error.
const STDERR_LINES: usize = 5;
/// Longest `label` option accepted.
const MAX_LABEL: usize = 128;

const TARGET: &str = "tfdc::transfer";

/// Where the bytes come from.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Source {
    /// An http(s) URL the job provides.
    Url(String),
    /// `attachments/provision/<name>` in the run directory.
    Attachment(String),
}

/// The capability name of attachment sources (`transfer: [attachments]`).
pub const ATTACHMENTS: &str = "attachments";

impl Source {
    /// The name used in progress lines when no label is given: the last
    /// path segment of the URL, or the attachment name.
    pub fn default_label(&self) -> String {
        match self {
            Source::Url(url) => reqwest::Url::parse(url)
                .ok()
                .and_then(|u| {
                    u.path_segments()
                        .and_then(|mut s| s.next_back().map(str::to_string))
                })
                .filter(|s| !s.is_empty())
                .unwrap_or_else(|| url.clone()),
            Source::Attachment(name) => name.clone(),
        }
    }

    fn describe(&self) -> String {
        match self {
            Source::Url(url) => url.clone(),
            Source::Attachment(name) => format!("attachment {ATTACHMENT_PHASE}/{name}"),
        }
    }
}

/// What a finished transfer moved.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Report {
    /// Bytes read from the source.
    pub bytes: u64,
    /// `sha256:<hex>` of those bytes.
    pub sha256: String,
    /// Wall time.
    pub elapsed: Duration,
}

/// Per-call settings (the `options` bag of the WIT functions).
#[derive(Debug, Clone, Default)]
pub struct TransferOptions {
    /// Name used in progress lines (default: see [`Source::default_label`]).
    pub label: Option<String>,
}

/// What a transfer reads from and writes to on the host: the HTTP client
/// for URL sources, the run directory for attachments and artifacts.
#[derive(Clone, Copy)]
pub struct Io<'a> {
    pub http: &'a HttpClient,
    pub rundir: &'a RunDir,
}

/// Why a transfer failed.
#[derive(Debug, thiserror::Error)]
pub enum TransferError {
    /// The client cannot be set up, or the request failed before a
    /// response.
    #[error(transparent)]
    Http(#[from] HttpError),
    /// An attachment or artifact name was refused or cannot be opened.
    #[error(transparent)]
    Path(#[from] PathError),
    #[error(
        "GET {url} answered HTTP {status}; check that the URL in the job is right and the file is published"
    )]
    Status { url: String, status: u16 },
    #[error("{label}: download of {from} was truncated: {got} of {expected} arrived{cause}")]
    Truncated {
        label: String,
        from: String,
        got: String,
        expected: String,
        /// `": <reason>"`, or empty.
        cause: String,
    },
    #[error("{label}: reading {from} failed after {got}: {message}")]
    SourceIo {
        label: String,
        from: String,
        got: String,
        message: String,
    },
    #[error(
        "{label}: transfer timed out after {secs} s with {moved} moved; raise the timeout or check the source and the target"
    )]
    Timeout {
        label: String,
        secs: f64,
        moved: String,
    },
    #[error("{label}: `{command}` on {target} exited with status {status}{stderr}")]
    SinkFailed {
        label: String,
        command: String,
        target: String,
        status: i32,
        /// `"; stderr: ..."`, or empty.
        stderr: String,
    },
    /// The sink could not run the command (connection lost, command
    /// deadline ...); `error` is the sink's own error.
    #[error("{label}: streaming into `{command}` failed: {error}")]
    Sink {
        label: String,
        command: String,
        // Boxed: the SSH error is large and this variant rare.
        error: Box<SshError>,
    },
    #[error("{label}: writing artifact {name} failed: {message}")]
    Artifact {
        label: String,
        name: String,
        message: String,
    },
    #[error(
        "{running} transfers are already running (limits.max_transfers = {max}); wait for one to finish or raise the limit in the lab file"
    )]
    TooMany { running: usize, max: usize },
    #[error("{0}")]
    Invalid(String),
}

/// Runs a command with a byte stream on its standard input: an SSH
/// connection ([`Connection`]) in production.
pub trait StdinSink: Sync {
    /// Runs `command` with `stdin` streamed into it (closed at the end of
    /// the stream) and returns its exit status and output. A non-zero exit
    /// is not an error here.
    fn exec_with_stdin<S>(
        &self,
        command: &str,
        stdin: S,
        timeout: Duration,
        log_output: bool,
    ) -> impl Future<Output = Result<ExecOutput, SshError>> + Send
    where
        S: Stream<Item = io::Result<Bytes>> + Send + Unpin;
}

impl StdinSink for Connection {
    fn exec_with_stdin<S>(
        &self,
        command: &str,
        stdin: S,
        timeout: Duration,
        log_output: bool,
    ) -> impl Future<Output = Result<ExecOutput, SshError>> + Send
    where
        S: Stream<Item = io::Result<Bytes>> + Send + Unpin,
    {
        Connection::exec_with_stdin(self, command, stdin, timeout, log_output)
    }
}

/// The stage's transfers: a cap on how many run at once and the pace of
/// progress lines.
pub struct Transfers {
    slots: Arc<tokio::sync::Semaphore>,
    max: usize,
    progress_interval: Duration,
}

impl Transfers {
    /// At most `max_transfers` at once (`limits.max_transfers`).
    pub fn new(max_transfers: usize) -> Self {
        Transfers {
            slots: Arc::new(tokio::sync::Semaphore::new(max_transfers)),
            max: max_transfers,
            progress_interval: PROGRESS_INTERVAL,
        }
    }

    /// Changes the time between progress lines (tests use a short one).
    pub fn with_progress_interval(mut self, interval: Duration) -> Self {
        self.progress_interval = interval;
        self
    }

    /// Streams `src` into `artifacts/<name>`. The file appears, complete,
    /// only when the whole source arrived; on any failure nothing is left.
    pub async fn to_artifact(
        &self,
        cx: Io<'_>,
        src: &Source,
        name: &str,
        timeout: Duration,
        opts: &TransferOptions,
    ) -> Result<Report, TransferError> {
        let label = label(src, opts)?;
        let _slot = self.slot()?;
        let path = cx.rundir.artifact_path(name)?;
        let sink = format!("artifact {name}");
        let artifact_error = |message: String| TransferError::Artifact {
            label: label.clone(),
            name: name.to_string(),
            message,
        };
        let dir = path
            .parent()
            .map(std::path::Path::to_path_buf)
            .unwrap_or_else(|| cx.rundir.root().to_path_buf());
        let file_name = path
            .file_name()
            .map(|n| n.to_string_lossy().into_owned())
            .unwrap_or_default();
        let deadline = Instant::now() + timeout;
        let meter: Arc<Mutex<Option<Meter>>> = Arc::new(Mutex::new(None));
        let work = async {
            let opened = open_source(cx, src).await?;
            let mut stream = self.meter(&label, src, &sink, timeout, opened, &meter);
            // A hidden temporary file in the same folder, renamed into place
            // at the end; dropped (deleted) on every early return.
            let tmp = tempfile::Builder::new()
                .prefix(&format!(".{file_name}."))
                .suffix(".partial")
                .tempfile_in(&dir)
                .map_err(|e| artifact_error(e.to_string()))?;
            let mut out = io::BufWriter::with_capacity(ARTIFACT_BUFFER, tmp.as_file());
            while let Some(chunk) = stream.next().await {
                match chunk {
                    Ok(chunk) => out
                        .write_all(&chunk)
                        .map_err(|e| artifact_error(e.to_string()))?,
                    Err(_) => return Err(source_error(&meter, &label, src)),
                }
            }
            out.flush().map_err(|e| artifact_error(e.to_string()))?;
            drop(out);
            tmp.as_file()
                .sync_data()
                .map_err(|e| artifact_error(e.to_string()))?;
            tmp.persist(&path)
                .map_err(|e| artifact_error(e.error.to_string()))?;
            Ok(())
        };
        match tokio::time::timeout_at(deadline.into(), work).await {
            Ok(Ok(())) => Ok(finish(&meter, &label)),
            Ok(Err(e)) => Err(failed(&label, e)),
            Err(_) => Err(failed(&label, timeout_error(&meter, &label, timeout))),
        }
    }

    /// Streams `src` into the standard input of `command` run on `conn`
    /// (`target` names it in messages) and waits for it to exit. A source
    /// that ends early fails the transfer even if the command exited 0.
    #[allow(clippy::too_many_arguments)]
    pub async fn to_ssh(
        &self,
        cx: Io<'_>,
        src: &Source,
        conn: &Connection,
        target: &str,
        command: &str,
        timeout: Duration,
        opts: &TransferOptions,
    ) -> Result<Report, TransferError> {
        self.to_command(cx, src, conn, target, command, timeout, opts)
            .await
    }

    /// Like [`Self::to_ssh`] for any [`StdinSink`].
    #[allow(clippy::too_many_arguments)]
    pub async fn to_command<K: StdinSink>(
        &self,
        cx: Io<'_>,
        src: &Source,
        sink_conn: &K,
        target: &str,
        command: &str,
        timeout: Duration,
        opts: &TransferOptions,
    ) -> Result<Report, TransferError> {
        let label = label(src, opts)?;
        if command.trim().is_empty() {
            return Err(TransferError::Invalid(
                "transfer.to-ssh needs a command to stream into".into(),
            ));
        }
        let _slot = self.slot()?;
        let sink = format!("`{command}` on {target}");
        let deadline = Instant::now() + timeout;
        let meter: Arc<Mutex<Option<Meter>>> = Arc::new(Mutex::new(None));
        let work = async {
            let opened = open_source(cx, src).await?;
            let stream = self.meter(&label, src, &sink, timeout, opened, &meter);
            let left = deadline.saturating_duration_since(Instant::now());
            let result = sink_conn.exec_with_stdin(command, stream, left, true).await;
            // The source's own failure explains a sink failure best (a
            // command fed a truncated image may also exit 0).
            if meter_error(&meter).is_some() {
                return Err(source_error(&meter, &label, src));
            }
            let out = result.map_err(|e| TransferError::Sink {
                label: label.clone(),
                command: command.to_string(),
                error: Box::new(e),
            })?;
            if out.status != 0 {
                return Err(TransferError::SinkFailed {
                    label: label.clone(),
                    command: command.to_string(),
                    target: target.to_string(),
                    status: out.status,
                    stderr: stderr_tail(&out.stderr),
                });
            }
            Ok(())
        };
        match tokio::time::timeout_at(deadline.into(), work).await {
            Ok(Ok(())) => Ok(finish(&meter, &label)),
            Ok(Err(e)) => Err(failed(&label, e)),
            Err(_) => Err(failed(&label, timeout_error(&meter, &label, timeout))),
        }
    }

    fn slot(&self) -> Result<tokio::sync::OwnedSemaphorePermit, TransferError> {
        self.slots
            .clone()
            .try_acquire_owned()
            .map_err(|_| TransferError::TooMany {
                running: self.max - self.slots.available_permits(),
                max: self.max,
            })
    }

    /// Logs the start line and wraps the source in the meter.
    fn meter(
        &self,
        label: &str,
        src: &Source,
        sink: &str,
        timeout: Duration,
        opened: Opened,
        meter: &Arc<Mutex<Option<Meter>>>,
    ) -> Metered {
        let size = opened
            .size
            .map(|s| format!(" ({})", human_bytes(s)))
            .unwrap_or_else(|| " (size unknown)".to_string());
        let by = chrono::Local::now()
            + chrono::Duration::from_std(timeout).unwrap_or(chrono::Duration::MAX);
        tracing::info!(target: TARGET,
            "{label}: transferring {}{size} to {sink}, deadline in {} s ({})",
            src.describe(), secs(timeout), by.format("%H:%M:%S"));
        let now = Instant::now();
        *meter.lock().unwrap() = Some(Meter {
            label: label.to_string(),
            hasher: Sha256::new(),
            bytes: 0,
            expected: opened.size,
            started: now,
            last_report: now,
            last_bytes: 0,
            interval: self.progress_interval,
            error: None,
            complete: false,
        });
        Metered {
            inner: opened.stream,
            meter: meter.clone(),
            done: false,
        }
    }
}

/// Validates the label (it goes into log lines).
fn label(src: &Source, opts: &TransferOptions) -> Result<String, TransferError> {
    match &opts.label {
        None => Ok(src.default_label()),
        Some(l) if l.is_empty() || l.len() > MAX_LABEL || l.chars().any(char::is_control) => {
            Err(TransferError::Invalid(format!(
                "transfer label must be 1 to {MAX_LABEL} printable characters, got {l:?}"
            )))
        }
        Some(l) => Ok(l.clone()),
    }
}

/// An open source.
struct Opened {
    size: Option<u64>,
    stream: Pin<Box<dyn Stream<Item = io::Result<Bytes>> + Send>>,
}

/// Opens `src`. Whether a URL may be used at all was decided by the gate
/// before the transfer started.
async fn open_source(cx: Io<'_>, src: &Source) -> Result<Opened, TransferError> {
    match src {
        Source::Url(url) => {
            let response =
                cx.http
                    .client()?
                    .get(url)
                    .send()
                    .await
                    .map_err(|e| HttpError::Transport {
                        method: "GET".into(),
                        url: url.clone(),
                        message: crate::error::chain(&e),
                    })?;
            let status = response.status();
            if !status.is_success() {
                return Err(TransferError::Status {
                    url: url.clone(),
                    status: status.as_u16(),
                });
            }
            Ok(Opened {
                size: response.content_length(),
                stream: Box::pin(
                    response
                        .bytes_stream()
                        .map(|r| r.map_err(|e| io::Error::other(crate::error::chain(&e)))),
                ),
            })
        }
        Source::Attachment(name) => {
            let (file, len) = cx.rundir.open_attachment(ATTACHMENT_PHASE, name)?;
            let file = tokio::fs::File::from_std(file);
            let stream = futures::stream::try_unfold(file, |mut file| async move {
                let mut buf = BytesMut::with_capacity(FILE_CHUNK);
                let n = file.read_buf(&mut buf).await?;
                Ok(if n == 0 {
                    None
                } else {
                    Some((buf.freeze(), file))
                })
            });
            Ok(Opened {
                size: Some(len),
                stream: Box::pin(stream),
            })
        }
    }
}

/// Counts, hashes and reports what flows through a [`Metered`] stream.
struct Meter {
    label: String,
    hasher: Sha256,
    bytes: u64,
    expected: Option<u64>,
    started: Instant,
    last_report: Instant,
    last_bytes: u64,
    interval: Duration,
    /// Why the source failed, when it did.
    error: Option<SourceFault>,
    /// Whether the source was read to its end.
    complete: bool,
}

#[derive(Debug, Clone)]
enum SourceFault {
    /// Ended before the announced size.
    Short(String),
    /// The stream broke.
    Broken(String),
}

impl Meter {
    fn add(&mut self, chunk: &[u8]) {
        self.hasher.update(chunk);
        self.bytes += chunk.len() as u64;
        let now = Instant::now();
        let since = now.duration_since(self.last_report);
        if since >= self.interval {
            let rate = (self.bytes - self.last_bytes) as f64 / since.as_secs_f64().max(1e-9);
            let amount = match self.expected {
                Some(total) => format!(
                    "{} of {} ({}%)",
                    human_bytes(self.bytes),
                    human_bytes(total),
                    percent(self.bytes, total)
                ),
                None => human_bytes(self.bytes),
            };
            tracing::info!(target: TARGET, "{}: {amount}, {}/s", self.label, human_rate(rate));
            self.last_report = now;
            self.last_bytes = self.bytes;
        }
    }
}

/// The source stream, metered. Ends with an error instead of a clean end
/// when fewer bytes arrived than announced, so that no sink mistakes a
/// truncated download for a complete one.
struct Metered {
    inner: Pin<Box<dyn Stream<Item = io::Result<Bytes>> + Send>>,
    meter: Arc<Mutex<Option<Meter>>>,
    done: bool,
}

impl Stream for Metered {
    type Item = io::Result<Bytes>;

    fn poll_next(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Option<Self::Item>> {
        if self.done {
            return Poll::Ready(None);
        }
        let polled = self.inner.as_mut().poll_next(cx);
        let mut guard = self.meter.lock().unwrap();
        let Some(meter) = guard.as_mut() else {
            return Poll::Ready(None);
        };
        let fault = match polled {
            Poll::Pending => return Poll::Pending,
            Poll::Ready(Some(Ok(chunk))) => {
                meter.add(&chunk);
                match meter.expected {
                    Some(total) if meter.bytes > total => SourceFault::Broken(format!(
                        "more bytes than the announced {}",
                        human_bytes(total)
                    )),
                    _ => return Poll::Ready(Some(Ok(chunk))),
                }
            }
            Poll::Ready(Some(Err(e))) => match meter.expected {
                Some(total) if meter.bytes < total => SourceFault::Short(e.to_string()),
                _ => SourceFault::Broken(e.to_string()),
            },
            Poll::Ready(None) => match meter.expected {
                Some(total) if meter.bytes != total => SourceFault::Short(String::new()),
                _ => {
                    meter.complete = true;
                    drop(guard);
                    self.done = true;
                    return Poll::Ready(None);
                }
            },
        };
        let message = match &fault {
            SourceFault::Short(m) if m.is_empty() => "source ended early".to_string(),
            SourceFault::Short(m) | SourceFault::Broken(m) => m.clone(),
        };
        meter.error = Some(fault);
        drop(guard);
        self.done = true;
        Poll::Ready(Some(Err(io::Error::new(
            io::ErrorKind::UnexpectedEof,
            message,
        ))))
    }
}

fn meter_error(meter: &Mutex<Option<Meter>>) -> Option<SourceFault> {
    meter.lock().unwrap().as_ref().and_then(|m| m.error.clone())
}

/// The error for a source that failed mid-stream.
fn source_error(meter: &Mutex<Option<Meter>>, label: &str, src: &Source) -> TransferError {
    let guard = meter.lock().unwrap();
    let (got, expected, fault) = match guard.as_ref() {
        Some(m) => (m.bytes, m.expected, m.error.clone()),
        None => (0, None, None),
    };
    match fault {
        Some(SourceFault::Short(cause)) => TransferError::Truncated {
            label: label.to_string(),
            from: src.describe(),
            got: human_exact(got),
            expected: expected.map(human_exact).unwrap_or_else(|| "?".into()),
            cause: if cause.is_empty() {
                String::new()
            } else {
                format!(": {cause}")
            },
        },
        Some(SourceFault::Broken(message)) => TransferError::SourceIo {
            label: label.to_string(),
            from: src.describe(),
            got: human_exact(got),
            message,
        },
        None => TransferError::SourceIo {
            label: label.to_string(),
            from: src.describe(),
            got: human_exact(got),
            message: "unknown error".into(),
        },
    }
}

fn timeout_error(meter: &Mutex<Option<Meter>>, label: &str, timeout: Duration) -> TransferError {
    let moved = match meter.lock().unwrap().as_ref() {
        Some(m) => match m.expected {
            Some(total) => format!(
                "{} of {} ({}%)",
                human_bytes(m.bytes),
                human_bytes(total),
                percent(m.bytes, total)
            ),
            None => human_bytes(m.bytes),
        },
        None => "nothing (the source did not answer)".into(),
    };
    TransferError::Timeout {
        label: label.to_string(),
        secs: secs(timeout),
        moved,
    }
}

/// Logs a failed transfer and passes the error on.
fn failed(label: &str, e: TransferError) -> TransferError {
    tracing::warn!(target: TARGET, "{label}: transfer failed: {e}");
    e
}

/// Logs the summary line and builds the report.
fn finish(meter: &Mutex<Option<Meter>>, label: &str) -> Report {
    let m = meter
        .lock()
        .unwrap()
        .take()
        .expect("a finished transfer has a meter");
    let elapsed = m.started.elapsed();
    if !m.complete {
        // Only a sink that stops reading early gets here (the command
        // exited 0 without reading all of its input).
        tracing::warn!(target: TARGET,
            "{label}: the command exited before reading the whole source ({} of {})",
            human_exact(m.bytes),
            m.expected.map(human_exact).unwrap_or_else(|| "an unknown size".into()));
    }
    let sha256 = format!("sha256:{}", hex::encode(m.hasher.finalize()));
    let rate = m.bytes as f64 / elapsed.as_secs_f64().max(1e-9);
    tracing::info!(target: TARGET,
        "{label}: done, {} in {:.1} s ({}/s), {sha256}",
        human_exact(m.bytes), elapsed.as_secs_f64(), human_rate(rate));
    Report {
        bytes: m.bytes,
        sha256,
        elapsed,
    }
}

/// The last lines of a command's stderr, for an error message.
fn stderr_tail(stderr: &[u8]) -> String {
    let text = String::from_utf8_lossy(stderr);
    let lines: Vec<&str> = text
        .lines()
        .map(str::trim_end)
        .filter(|l| !l.is_empty())
        .collect();
    if lines.is_empty() {
        return String::new();
    }
    let tail = lines[lines.len().saturating_sub(STDERR_LINES)..].join(" | ");
    let tail: String = if tail.chars().count() > 1000 {
        let skip = tail.chars().count() - 1000;
        format!("…{}", tail.chars().skip(skip).collect::<String>())
    } else {
        tail
    };
    format!("; stderr: {tail}")
}

fn percent(done: u64, total: u64) -> u64 {
    if total == 0 {
        100
    } else {
        (done as u128 * 100 / total as u128) as u64
    }
}

fn secs(d: Duration) -> f64 {
    (d.as_secs_f64() * 1000.0).round() / 1000.0
}

/// `512.0 MiB`, `2.0 GiB`, `17 B`.
pub fn human_bytes(n: u64) -> String {
    const UNITS: [&str; 5] = ["KiB", "MiB", "GiB", "TiB", "PiB"];
    if n < 1024 {
        return format!("{n} B");
    }
    let mut value = n as f64 / 1024.0;
    let mut unit = 0;
    while value >= 1024.0 && unit < UNITS.len() - 1 {
        value /= 1024.0;
        unit += 1;
    }
    format!("{value:.1} {}", UNITS[unit])
}

/// [`human_bytes`] plus the exact count when it is rounded.
fn human_exact(n: u64) -> String {
    if n < 1024 {
        format!("{n} bytes")
    } else {
        format!("{} ({n} bytes)", human_bytes(n))
    }
}

fn human_rate(bytes_per_sec: f64) -> String {
    human_bytes(bytes_per_sec.max(0.0).min(u64::MAX as f64) as u64)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::testing::log::LogCapture;
    use labsim::web::{Reply, WebServer};
    use std::path::Path;

    const T: Duration = Duration::from_secs(10);

    /// Deterministic, incompressible-looking bytes.
    fn data(len: usize, seed: u64) -> Bytes {
        let mut x = seed | 1;
        let mut out = Vec::with_capacity(len);
        while out.len() < len {
            x ^= x << 13;
            x ^= x >> 7;
            x ^= x << 17;
            out.extend_from_slice(&x.to_le_bytes());
        }
        out.truncate(len);
        Bytes::from(out)
    }

    fn sha(bytes: &[u8]) -> String {
        format!("sha256:{}", hex::encode(Sha256::digest(bytes)))
    }

    /// An image server with a few fixed paths, a run directory and a
    /// client.
    struct Lab {
        server: WebServer,
        dir: tempfile::TempDir,
        http: HttpClient,
        rundir: RunDir,
        image: Bytes,
    }

    impl Lab {
        fn new() -> Self {
            Self::with_image(data(3 << 20, 7))
        }

        fn with_image(image: Bytes) -> Self {
            let img = image.clone();
            let server = WebServer::start("127.0.0.1", move |r| match r.path_only() {
                "/img.zst" => Reply::bytes(img.clone()),
                "/slow.zst" => Reply::Slow {
                    body: img.slice(..64 * 1024),
                    chunk: 8 * 1024,
                    delay: Duration::from_millis(30),
                },
                "/truncated.zst" => Reply::Truncated {
                    body: img.clone(),
                    send: 100 * 1024,
                },
                "/hang.zst" => Reply::Hang,
                "/gone.zst" => Reply::status(404),
                "/broken.zst" => Reply::status_text(500, "disk on fire"),
                _ => Reply::status(400),
            })
            .unwrap();
            let dir = tempfile::tempdir().unwrap();
            let config =
                crate::config::DeviceConfig::parse(Path::new("default.yaml"), "{}").unwrap();
            let http = HttpClient::new(&config).unwrap();
            let rundir = RunDir::new(dir.path());
            Lab {
                server,
                dir,
                http,
                rundir,
                image,
            }
        }

        fn io(&self) -> Io<'_> {
            Io {
                http: &self.http,
                rundir: &self.rundir,
            }
        }

        fn url(&self, path: &str) -> Source {
            Source::Url(format!("{}{path}", self.server.url()))
        }

        fn artifacts(&self) -> Vec<String> {
            let mut out = Vec::new();
            list(&self.dir.path().join("artifacts"), "", &mut out);
            out.sort();
            out
        }
    }

    /// Every entry (files, hidden ones too) below `dir`.
    fn list(dir: &Path, prefix: &str, out: &mut Vec<String>) {
        let Ok(entries) = std::fs::read_dir(dir) else {
            return;
        };
        for e in entries.flatten() {
            let name = format!("{prefix}{}", e.file_name().to_string_lossy());
            if e.file_type().unwrap().is_dir() {
                list(&e.path(), &format!("{name}/"), out);
            } else {
                out.push(name);
            }
        }
    }

    fn opts() -> TransferOptions {
        TransferOptions::default()
    }

    #[tokio::test]
    async fn url_to_artifact_streams_hashes_and_renames() {
        let lab = Lab::new();
        let t = Transfers::new(2);
        let report = t
            .to_artifact(
                lab.io(),
                &lab.url("/img.zst"),
                "images/dut.img.zst",
                T,
                &opts(),
            )
            .await
            .unwrap();
        assert_eq!(report.bytes, lab.image.len() as u64);
        assert_eq!(report.sha256, sha(&lab.image));
        let written = std::fs::read(lab.dir.path().join("artifacts/images/dut.img.zst")).unwrap();
        assert!(written == lab.image, "artifact differs from the source");
        assert_eq!(lab.artifacts(), vec!["images/dut.img.zst"]);

        // Replacing an existing artifact is atomic too.
        let report = t
            .to_artifact(
                lab.io(),
                &lab.url("/slow.zst"),
                "images/dut.img.zst",
                T,
                &opts(),
            )
            .await
            .unwrap();
        assert_eq!(report.sha256, sha(&lab.image[..64 * 1024]));
        assert_eq!(lab.artifacts(), vec!["images/dut.img.zst"]);
    }

    #[tokio::test]
    async fn attachment_to_artifact() {
        let lab = Lab::new();
        let att = lab.dir.path().join("attachments/provision/boot");
        std::fs::create_dir_all(&att).unwrap();
        let body = data(700_001, 3);
        std::fs::write(att.join("fw.bin"), &body).unwrap();
        let report = Transfers::new(1)
            .to_artifact(
                lab.io(),
                &Source::Attachment("boot/fw.bin".into()),
                "fw-copy.bin",
                T,
                &opts(),
            )
            .await
            .unwrap();
        assert_eq!(report.bytes, 700_001);
        assert_eq!(report.sha256, sha(&body));
        assert!(std::fs::read(lab.dir.path().join("artifacts/fw-copy.bin")).unwrap() == body);
    }

    #[tokio::test]
    async fn truncated_download_fails_and_leaves_no_file() {
        let lab = Lab::new();
        let err = Transfers::new(1)
            .to_artifact(lab.io(), &lab.url("/truncated.zst"), "img", T, &opts())
            .await
            .unwrap_err();
        let text = err.to_string();
        assert!(matches!(err, TransferError::Truncated { .. }), "{text}");
        assert!(
            text.contains("truncated.zst") && text.contains(&format!("{} bytes", lab.image.len())),
            "{text}"
        );
        assert!(lab.artifacts().is_empty(), "{:?}", lab.artifacts());
    }

    #[tokio::test]
    async fn slow_or_silent_sources_hit_the_deadline() {
        let lab = Lab::new();
        let t = Transfers::new(1);
        let err = t
            .to_artifact(
                lab.io(),
                &lab.url("/slow.zst"),
                "slow",
                Duration::from_millis(100),
                &opts(),
            )
            .await
            .unwrap_err();
        let text = err.to_string();
        assert!(matches!(err, TransferError::Timeout { .. }), "{text}");
        assert!(
            text.contains("0.1 s") && text.contains("of 64.0 KiB"),
            "{text}"
        );

        let err = t
            .to_artifact(
                lab.io(),
                &lab.url("/hang.zst"),
                "hang",
                Duration::from_millis(100),
                &opts(),
            )
            .await
            .unwrap_err()
            .to_string();
        assert!(err.contains("did not answer"), "{err}");
        assert!(lab.artifacts().is_empty(), "{:?}", lab.artifacts());
    }

    #[tokio::test]
    async fn http_errors_are_named() {
        let lab = Lab::new();
        let t = Transfers::new(1);
        let err = t
            .to_artifact(lab.io(), &lab.url("/gone.zst"), "x", T, &opts())
            .await
            .unwrap_err();
        let text = err.to_string();
        assert!(text.contains("/gone.zst") && text.contains("404"), "{text}");
        assert!(
            matches!(err, TransferError::Status { status: 404, .. }),
            "{text}"
        );
        let err = t
            .to_artifact(lab.io(), &lab.url("/broken.zst"), "x", T, &opts())
            .await
            .unwrap_err();
        let text = err.to_string();
        assert!(
            text.contains("/broken.zst") && text.contains("500"),
            "{text}"
        );
        assert!(
            matches!(err, TransferError::Status { status: 500, .. }),
            "{text}"
        );
        assert!(lab.artifacts().is_empty());
        assert_eq!(lab.server.requests().len(), 2);
    }

    #[tokio::test]
    async fn names_that_escape_are_refused() {
        let lab = Lab::new();
        let outside = lab.dir.path().join("outside");
        std::fs::write(&outside, b"secret").unwrap();
        let t = Transfers::new(1);
        for bad in ["../outside", "/etc/passwd", "a/../../outside", ""] {
            let err = t
                .to_artifact(lab.io(), &Source::Attachment(bad.into()), "x", T, &opts())
                .await
                .unwrap_err();
            assert!(
                matches!(err, TransferError::Path(PathError::Refused(..))),
                "{bad}: {err}"
            );
            let err = t
                .to_artifact(lab.io(), &lab.url("/img.zst"), bad, T, &opts())
                .await
                .unwrap_err();
            assert!(
                matches!(err, TransferError::Path(PathError::Refused(..))),
                "{bad}: {err}"
            );
        }
        std::fs::create_dir_all(lab.dir.path().join("attachments/provision")).unwrap();
        std::os::unix::fs::symlink(&outside, lab.dir.path().join("attachments/provision/link"))
            .unwrap();
        let err = t
            .to_artifact(
                lab.io(),
                &Source::Attachment("link".into()),
                "x",
                T,
                &opts(),
            )
            .await
            .unwrap_err();
        assert!(
            matches!(err, TransferError::Path(PathError::Symlink(_))),
            "{err}"
        );
        let err = t
            .to_artifact(
                lab.io(),
                &Source::Attachment("missing.img".into()),
                "x",
                T,
                &opts(),
            )
            .await
            .unwrap_err();
        assert!(
            matches!(&err, TransferError::Path(PathError::Io(_, e)) if e.kind() == io::ErrorKind::NotFound),
            "{err}"
        );
        assert!(lab.artifacts().is_empty());
        assert_eq!(std::fs::read(&outside).unwrap(), b"secret");
    }

    #[tokio::test]
    async fn progress_lines_are_readable() {
        let logs = LogCapture::start();
        let lab = Lab::new();
        let t = Transfers::new(1).with_progress_interval(Duration::from_millis(40));
        let label = TransferOptions {
            label: Some("dut image".into()),
        };
        t.to_artifact(lab.io(), &lab.url("/slow.zst"), "img", T, &label)
            .await
            .unwrap();
        let lines: Vec<String> = logs.lines().into_iter().map(|l| l.message).collect();
        let start = &lines[0];
        assert!(
            start.starts_with("dut image: transferring http://")
                && start.contains("/slow.zst (64.0 KiB) to artifact img, deadline in 10 s ("),
            "{start}"
        );
        let progress = regex::Regex::new(
            r"^dut image: \d+\.\d KiB of 64\.0 KiB \(\d{1,2}%\), \d+(\.\d)? (B|KiB|MiB)/s$",
        )
        .unwrap();
        let n = lines.iter().filter(|l| progress.is_match(l)).count();
        assert!((1..=8).contains(&n), "{lines:#?}");
        let end = lines.last().unwrap();
        assert!(
            end.starts_with("dut image: done, 64.0 KiB (65536 bytes) in ")
                && end.contains(&sha(&lab.image[..64 * 1024])),
            "{end}"
        );

        let err = t
            .to_artifact(
                lab.io(),
                &lab.url("/img.zst"),
                "x",
                T,
                &TransferOptions {
                    label: Some("bad\nlabel".into()),
                },
            )
            .await
            .unwrap_err();
        assert!(matches!(err, TransferError::Invalid(_)), "{err}");
    }

    #[tokio::test]
    async fn concurrent_transfers_are_capped() {
        let lab = Lab::new();
        let t = Transfers::new(1);
        let hang = lab.url("/hang.zst");
        let no_opts = opts();
        let first = t.to_artifact(lab.io(), &hang, "a", Duration::from_millis(300), &no_opts);
        let second = async {
            tokio::time::sleep(Duration::from_millis(50)).await;
            t.to_artifact(lab.io(), &lab.url("/img.zst"), "b", T, &opts())
                .await
        };
        let (first, second) = tokio::join!(first, second);
        assert!(matches!(first, Err(TransferError::Timeout { .. })));
        let err = second.unwrap_err();
        assert!(
            matches!(err, TransferError::TooMany { running: 1, max: 1 }),
            "{err}"
        );
        // The slot is free again.
        t.to_artifact(lab.io(), &lab.url("/img.zst"), "b", T, &opts())
            .await
            .unwrap();
    }

    /// Runs commands with `sh -c` on this machine: the stdin plumbing of an
    /// SSH exec without the SSH, so the transfer logic around the sink can
    /// be tested on its own.
    struct LocalShell;

    impl StdinSink for LocalShell {
        fn exec_with_stdin<S>(
            &self,
            command: &str,
            mut stdin: S,
            timeout: Duration,
            _log_output: bool,
        ) -> impl Future<Output = Result<ExecOutput, SshError>> + Send
        where
            S: Stream<Item = io::Result<Bytes>> + Send + Unpin,
        {
            use tokio::io::AsyncWriteExt;
            let command = command.to_string();
            async move {
                let mut child = tokio::process::Command::new("sh")
                    .arg("-c")
                    .arg(&command)
                    .stdin(std::process::Stdio::piped())
                    .stdout(std::process::Stdio::piped())
                    .stderr(std::process::Stdio::piped())
                    .kill_on_drop(true)
                    .spawn()
                    .map_err(|e| SshError::Io(e.to_string()))?;
                let mut input = child.stdin.take().unwrap();
                let mut out = child.stdout.take().unwrap();
                let mut err = child.stderr.take().unwrap();
                let feed = async move {
                    // A broken source closes stdin, as an SSH exec would
                    // send EOF.
                    while let Some(Ok(chunk)) = stdin.next().await {
                        if input.write_all(&chunk).await.is_err() {
                            break;
                        }
                    }
                    drop(input);
                };
                let (mut o, mut e) = (Vec::new(), Vec::new());
                let run = async {
                    let (_, _, _) =
                        tokio::join!(feed, out.read_to_end(&mut o), err.read_to_end(&mut e));
                    child.wait().await
                };
                let status = tokio::time::timeout(timeout, run)
                    .await
                    .map_err(|_| SshError::Timeout(format!("`{command}` timed out")))?
                    .map_err(|e| SshError::Io(e.to_string()))?;
                Ok(ExecOutput {
                    status: status.code().unwrap_or(-1),
                    stdout: o,
                    stderr: e,
                })
            }
        }
    }

    #[tokio::test]
    async fn streams_into_a_command() {
        let lab = Lab::new();
        let out = lab.dir.path().join("written.img");
        let t = Transfers::new(1);
        let report = t
            .to_command(
                lab.io(),
                &lab.url("/img.zst"),
                &LocalShell,
                "device",
                &format!("cat > {}", out.display()),
                T,
                &opts(),
            )
            .await
            .unwrap();
        assert_eq!(report.sha256, sha(&lab.image));
        assert!(std::fs::read(&out).unwrap() == lab.image);
    }

    #[tokio::test]
    async fn a_failing_command_is_named_with_its_stderr() {
        let lab = Lab::new();
        let err = Transfers::new(1)
            .to_command(
                lab.io(),
                &lab.url("/img.zst"),
                &LocalShell,
                "device",
                "cat >/dev/null; echo 'dd: /dev/sdz: No such device' >&2; exit 3",
                T,
                &opts(),
            )
            .await
            .unwrap_err();
        let text = err.to_string();
        assert!(
            matches!(err, TransferError::SinkFailed { status: 3, .. }),
            "{text}"
        );
        assert!(
            text.contains("exit 3` on device exited with status 3")
                && text.contains("stderr: dd: /dev/sdz: No such device"),
            "{text}"
        );
    }

    #[tokio::test]
    async fn a_truncated_source_fails_even_when_the_command_succeeds() {
        let lab = Lab::new();
        let out = lab.dir.path().join("partial.img");
        let err = Transfers::new(1)
            .to_command(
                lab.io(),
                &lab.url("/truncated.zst"),
                &LocalShell,
                "device",
                &format!("cat > {}", out.display()),
                T,
                &opts(),
            )
            .await
            .unwrap_err();
        assert!(matches!(err, TransferError::Truncated { .. }), "{err}");
        // The command got EOF after the bytes that did arrive.
        assert_eq!(std::fs::metadata(&out).unwrap().len(), 100 * 1024);

        let err = Transfers::new(1)
            .to_command(
                lab.io(),
                &lab.url("/img.zst"),
                &LocalShell,
                "device",
                " ",
                T,
                &opts(),
            )
            .await
            .unwrap_err();
        assert!(matches!(err, TransferError::Invalid(_)), "{err}");
    }

    #[tokio::test]
    async fn a_command_that_stops_reading_early_is_reported() {
        let logs = LogCapture::start();
        let lab = Lab::new();
        let report = Transfers::new(1)
            .to_command(
                lab.io(),
                &lab.url("/img.zst"),
                &LocalShell,
                "device",
                "head -c 10 >/dev/null",
                T,
                &opts(),
            )
            .await
            .unwrap();
        assert!(report.bytes < lab.image.len() as u64);
        assert_eq!(
            logs.matching("exited before reading the whole source")
                .len(),
            1,
            "{}",
            logs.dump()
        );
    }

    #[tokio::test]
    async fn a_sink_error_is_kept() {
        let lab = Lab::new();
        // The shell's deadline (the time left) fires before the slow
        // source is through.
        let err = Transfers::new(1)
            .to_command(
                lab.io(),
                &lab.url("/slow.zst"),
                &LocalShell,
                "device",
                "cat >/dev/null",
                Duration::from_millis(100),
                &opts(),
            )
            .await
            .unwrap_err();
        assert!(
            matches!(
                err,
                TransferError::Sink { ref error, .. } if matches!(**error, SshError::Timeout(_))
            ) || matches!(err, TransferError::Timeout { .. }),
            "{err}"
        );
        assert!(err.to_string().contains("slow.zst"), "{err}");
    }

    /// Throughput of URL → artifact on loopback (a measurement, not an
    /// assertion): `cargo test --release -p tfdc-runtime --lib
    /// transfer::tests::throughput -- --ignored --nocapture`.
    #[tokio::test]
    #[ignore = "benchmark"]
    async fn throughput_url_to_artifact() {
        let size = 512usize << 20;
        let lab = Lab::with_image(data(size, 11));
        let t = Transfers::new(1);
        let report = t
            .to_artifact(lab.io(), &lab.url("/img.zst"), "big.img", T * 6, &opts())
            .await
            .unwrap();
        assert_eq!(report.bytes, size as u64);
        let mb_s = size as f64 / 1e6 / report.elapsed.as_secs_f64();
        println!(
            "URL -> artifact: {} in {:.2} s = {mb_s:.0} MB/s",
            human_bytes(size as u64),
            report.elapsed.as_secs_f64()
        );
    }

    #[test]
    fn human_sizes() {
        assert_eq!(human_bytes(17), "17 B");
        assert_eq!(human_bytes(512 << 20), "512.0 MiB");
        assert_eq!(human_bytes(2 << 30), "2.0 GiB");
        assert_eq!(human_bytes(1536), "1.5 KiB");
        assert_eq!(percent(512, 2048), 25);
        assert_eq!(percent(0, 0), 100);
        assert_eq!(
            stderr_tail(b"a\n\nb\nc\nd\ne\nf\n"),
            "; stderr: b | c | d | e | f"
        );
        assert_eq!(
            Source::Url("http://h/p/img.zst?x".into()).default_label(),
            "img.zst"
        );
        assert_eq!(Source::Url("http://h/".into()).default_label(), "http://h/");
    }
}
