//! Serial console capture and interaction over a ser2net-style raw TCP
//! port (`serial_host`, `serial_port` in the device config).
//!
//! As in the reference's serial logger, a background task connects by plain
//! TCP and appends every chunk it receives to `<run dir>/<stage>-serial.log`
//! (opened in append mode, written through at once). A connection error is
//! logged once, then the task retries every `serial_retry_seconds`; when the
//! peer closes, it logs an error and reconnects after the same interval.
//! The capture never blocks or fails the stage.
//!
//! Unlike the reference, the same connection also serves connectors:
//! [`SerialPort::wait_for`] matches a regular expression over the output
//! and [`SerialPort::write`] types to the device. Every capture guard and
//! open port of a stage shares one connection and one log file; the
//! connection ends when the last of them is dropped.

use std::fs::{File, OpenOptions};
use std::io::Write as _;
use std::path::PathBuf;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex, Weak};
use std::time::Duration;

use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;
use tokio::net::tcp::OwnedWriteHalf;
use tokio::sync::watch;

use crate::config::DeviceConfig;
use crate::rundir::RunDir;
use crate::stage::Stage;

/// The one console name a device has.
pub const CONSOLE: &str = "console";
/// Bytes of console output kept for [`SerialPort::wait_for`]; older output
/// is only in the log file.
pub const BUFFER_BYTES: usize = 1 << 20;
/// Longest pattern accepted by [`SerialPort::wait_for`].
pub const MAX_PATTERN_BYTES: usize = 16 * 1024;
/// Longest a TCP connection attempt may take before it counts as failed.
const CONNECT_TIMEOUT: Duration = Duration::from_secs(10);
/// Read size; the reference reads up to 4096 bytes per chunk.
const READ_CHUNK: usize = 16 * 1024;
/// Bytes of recent output quoted in a timeout message.
const TAIL_BYTES: usize = 256;
/// The reference's message, logged once per capture however often the
/// connection fails.
pub const CONNECT_ERROR_MESSAGE: &str =
    "Error connecting to serial logging server. Retrying in the background...";

const TARGET: &str = "tfdc::serial";

/// Why a serial operation failed.
#[derive(Debug, thiserror::Error)]
pub enum SerialError {
    #[error(
        "this device has no serial console configured; set `serial_host` and `serial_port` in the device config"
    )]
    NotConfigured,
    #[error("serial port `{name}` does not exist; the only serial port is `{CONSOLE}`")]
    NoSuchPort { name: String },
    #[error("serial console is misconfigured: {0}")]
    BadConfig(String),
    #[error("invalid serial pattern `{pattern}`: {message}")]
    InvalidPattern { pattern: String, message: String },
    #[error(
        "timed out after {secs} s waiting for pattern `{pattern}` on serial console {addr}{state}; last output: {tail}"
    )]
    Timeout {
        pattern: String,
        addr: String,
        secs: f64,
        /// `" (not connected: ...)"` when the console was down.
        state: String,
        tail: String,
    },
    #[error(
        "cannot write to serial console {addr}: not connected within {secs} s{last_error}; check that ser2net serves that port"
    )]
    NotConnected {
        addr: String,
        secs: f64,
        last_error: String,
    },
    #[error("writing to serial console {addr} failed: {message}")]
    Io { addr: String, message: String },
    #[error(
        "{open} serial ports are already open (limits.max_serial_ports = {max}); drop a port first or raise the limit in the lab file"
    )]
    TooManyPorts { open: usize, max: usize },
    #[error("serial console {0} cannot be used outside the runtime's async executor")]
    NoRuntime(String),
}

/// What the capture did so far (for diagnostics and tests).
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct SerialStats {
    /// Successful connections (the first and every reconnection).
    pub connects: u64,
    /// Failed connection attempts.
    pub connect_errors: u64,
    /// Times an established connection ended.
    pub disconnects: u64,
    /// Bytes received from the console.
    pub bytes: u64,
    /// Whether the connection is up now.
    pub connected: bool,
    /// The most recent connection error.
    pub last_error: Option<String>,
}

/// Where the console is.
#[derive(Debug, Clone)]
struct Endpoint {
    host: String,
    port: u16,
}

impl Endpoint {
    fn describe(&self) -> String {
        format!("{}:{}", crate::http::bracket_v6(&self.host), self.port)
    }
}

/// The stage's serial consoles.
pub struct SerialHub {
    /// `None`: not configured; `Some(Err)`: configured but unusable.
    endpoint: Option<Result<Endpoint, String>>,
    log_path: PathBuf,
    retry: Duration,
    max_ports: usize,
    open_ports: Arc<AtomicUsize>,
    link: Mutex<Weak<Link>>,
}

/// Keeps a capture running until dropped.
pub struct CaptureGuard {
    _link: Arc<Link>,
}

/// An open console.
pub struct SerialPort {
    link: Arc<Link>,
    /// Absolute offset in the console output where the next match starts.
    cursor: Mutex<u64>,
    _slot: PortSlot,
}

/// Counts an open port until dropped.
struct PortSlot(Arc<AtomicUsize>);

impl Drop for PortSlot {
    fn drop(&mut self) {
        self.0.fetch_sub(1, Ordering::SeqCst);
    }
}

/// One connection to the console with its capture task; the task stops
/// when the last guard or port holding the link is dropped.
struct Link {
    shared: Arc<Shared>,
    task: tokio::task::JoinHandle<()>,
}

impl Drop for Link {
    fn drop(&mut self) {
        self.task.abort();
    }
}

/// State shared by the capture task and the ports.
struct Shared {
    endpoint: Endpoint,
    log_path: PathBuf,
    retry: Duration,
    output: Mutex<Ring>,
    /// Total bytes received; bumped after each chunk lands in `output`.
    received: watch::Sender<u64>,
    /// Whether the connection is up; writers wait on it.
    connected: watch::Sender<bool>,
    writer: tokio::sync::Mutex<Option<OwnedWriteHalf>>,
    stats: Mutex<SerialStats>,
}

/// The last [`BUFFER_BYTES`] of output, addressed by absolute offsets.
struct Ring {
    data: std::collections::VecDeque<u8>,
    /// Absolute offset of `data[0]`.
    start: u64,
    cap: usize,
}

impl Ring {
    fn new(cap: usize) -> Self {
        Ring {
            data: std::collections::VecDeque::new(),
            start: 0,
            cap,
        }
    }

    fn end(&self) -> u64 {
        self.start + self.data.len() as u64
    }

    fn push(&mut self, chunk: &[u8]) {
        self.data.extend(chunk);
        if self.data.len() > self.cap {
            let excess = self.data.len() - self.cap;
            self.data.drain(..excess);
            self.start += excess as u64;
        }
    }

    /// The output from absolute offset `from` (clamped to what is kept) to
    /// the end, and the absolute offset it starts at.
    fn since(&mut self, from: u64) -> (u64, &[u8]) {
        let from = from.clamp(self.start, self.end());
        let skip = (from - self.start) as usize;
        (from, &self.data.make_contiguous()[skip..])
    }
}

impl SerialHub {
    /// Reads `serial_host`/`serial_port`; the capture file is
    /// `<run dir>/<stage>-serial.log`. The reconnection interval comes from
    /// `connector_runtime.serial_retry_seconds`; the port cap is the default
    /// limit until [`SerialHub::with_max_ports`] applies the stage's limits.
    pub fn new(config: &DeviceConfig, rundir: &RunDir, stage: Stage) -> Self {
        let host = config.string("serial_host");
        let port = config.string("serial_port");
        let endpoint = match (host, port) {
            (Some(host), Some(port)) => Some(
                port.trim()
                    .parse::<u16>()
                    .ok()
                    .filter(|p| *p != 0)
                    .map(|port| Endpoint {
                        host: host.trim().to_string(),
                        port,
                    })
                    .ok_or_else(|| {
                        format!("serial_port `{port}` is not a TCP port number (1-65535)")
                    }),
            ),
            _ => None,
        };
        let secs = config.runtime.serial_retry_seconds;
        let retry = if secs.is_finite() && secs > 0.0 {
            Duration::from_secs_f64(secs.min(24.0 * 3600.0))
        } else {
            // A zero or negative interval would spin; keep a floor.
            Duration::from_millis(100)
        };
        SerialHub {
            endpoint,
            log_path: rundir.file(&stage.serial_log_name()),
            retry,
            max_ports: crate::limits::Limits::default().max_serial_ports,
            open_ports: Arc::new(AtomicUsize::new(0)),
            link: Mutex::new(Weak::new()),
        }
    }

    /// Caps the number of ports open at once (`limits.max_serial_ports`).
    pub fn with_max_ports(mut self, max: usize) -> Self {
        self.max_ports = max;
        self
    }

    /// Whether the device has a serial console configured.
    pub fn configured(&self) -> bool {
        self.endpoint.is_some()
    }

    /// The capture file.
    pub fn log_path(&self) -> &std::path::Path {
        &self.log_path
    }

    /// What the running capture did so far (`None` when none runs).
    pub fn stats(&self) -> Option<SerialStats> {
        let link = self.link.lock().unwrap().upgrade()?;
        let mut stats = link.shared.stats.lock().unwrap().clone();
        stats.connected = *link.shared.connected.borrow();
        Some(stats)
    }

    /// Starts capturing into the log file (no-op `None` when no console is
    /// configured); the capture runs until the guard is dropped.
    pub fn capture(&self) -> Option<CaptureGuard> {
        match self.link() {
            Ok(link) => Some(CaptureGuard { _link: link }),
            Err(SerialError::NotConfigured) => None,
            Err(e) => {
                tracing::error!(target: TARGET, "Serial logging disabled: {e}");
                None
            }
        }
    }

    /// Opens the console `name` (`console`) for wait-for and write; also
    /// captures while open.
    pub fn open(&self, name: &str) -> Result<SerialPort, SerialError> {
        if self.endpoint.is_none() {
            return Err(SerialError::NotConfigured);
        }
        if name != CONSOLE {
            return Err(SerialError::NoSuchPort { name: name.into() });
        }
        let slot = self.reserve_slot()?;
        let link = self.link()?;
        // A port sees output from the moment it is opened.
        let cursor = link.shared.output.lock().unwrap().end();
        Ok(SerialPort {
            link,
            cursor: Mutex::new(cursor),
            _slot: slot,
        })
    }

    fn reserve_slot(&self) -> Result<PortSlot, SerialError> {
        let max = self.max_ports;
        let claimed = self
            .open_ports
            .fetch_update(Ordering::SeqCst, Ordering::SeqCst, |n| {
                (n < max).then_some(n + 1)
            });
        match claimed {
            Ok(_) => Ok(PortSlot(self.open_ports.clone())),
            Err(open) => Err(SerialError::TooManyPorts { open, max }),
        }
    }

    /// The running link, or a new one.
    fn link(&self) -> Result<Arc<Link>, SerialError> {
        let endpoint = match &self.endpoint {
            None => return Err(SerialError::NotConfigured),
            Some(Err(e)) => return Err(SerialError::BadConfig(e.clone())),
            Some(Ok(e)) => e.clone(),
        };
        let mut slot = self.link.lock().unwrap();
        if let Some(link) = slot.upgrade() {
            return Ok(link);
        }
        let runtime = tokio::runtime::Handle::try_current()
            .map_err(|_| SerialError::NoRuntime(endpoint.describe()))?;
        let (received, _) = watch::channel(0);
        let (connected, _) = watch::channel(false);
        let shared = Arc::new(Shared {
            endpoint,
            log_path: self.log_path.clone(),
            retry: self.retry,
            output: Mutex::new(Ring::new(BUFFER_BYTES)),
            received,
            connected,
            writer: tokio::sync::Mutex::new(None),
            stats: Mutex::new(SerialStats::default()),
        });
        let task = runtime.spawn(capture(shared.clone()));
        let link = Arc::new(Link { shared, task });
        *slot = Arc::downgrade(&link);
        Ok(link)
    }
}

impl SerialPort {
    /// Waits until the regex `pattern` matches output received since open
    /// or since the previous match, and returns the matched text (invalid
    /// UTF-8 replaced). The pattern applies to raw bytes; `(?m)`, `(?s)` and
    /// the other inline flags work as in the `regex` crate.
    pub async fn wait_for(&self, pattern: &str, timeout: Duration) -> Result<String, SerialError> {
        let invalid = |message: String| SerialError::InvalidPattern {
            pattern: shorten(pattern),
            message,
        };
        if pattern.len() > MAX_PATTERN_BYTES {
            return Err(invalid(format!("longer than {MAX_PATTERN_BYTES} bytes")));
        }
        let re = regex::bytes::RegexBuilder::new(pattern)
            .size_limit(4 << 20)
            .dfa_size_limit(4 << 20)
            .build()
            .map_err(|e| invalid(e.to_string()))?;
        let shared = &self.link.shared;
        let mut changes = shared.received.subscribe();
        let deadline = tokio::time::Instant::now() + timeout;
        loop {
            // Marks the current value seen before looking, so that a chunk
            // landing after the search wakes the wait below.
            changes.borrow_and_update();
            {
                let mut cursor = self.cursor.lock().unwrap();
                let mut ring = shared.output.lock().unwrap();
                let (start, window) = ring.since(*cursor);
                if let Some(m) = re.find(window) {
                    let text = String::from_utf8_lossy(m.as_bytes()).into_owned();
                    *cursor = start + m.end() as u64;
                    return Ok(text);
                }
            }
            // `changed` only fails once the capture is gone, which cannot
            // happen while this port holds it; treat it like the deadline
            // rather than spin.
            if !matches!(
                tokio::time::timeout_at(deadline, changes.changed()).await,
                Ok(Ok(()))
            ) {
                return Err(self.timeout_error(pattern, timeout));
            }
        }
    }

    fn timeout_error(&self, pattern: &str, timeout: Duration) -> SerialError {
        let shared = &self.link.shared;
        let cursor = *self.cursor.lock().unwrap();
        let tail = {
            let mut ring = shared.output.lock().unwrap();
            let (_, window) = ring.since(cursor);
            let from = window.len().saturating_sub(TAIL_BYTES);
            if window.is_empty() {
                "nothing".to_string()
            } else {
                format!("{:?}", String::from_utf8_lossy(&window[from..]))
            }
        };
        let state = if *shared.connected.borrow() {
            String::new()
        } else {
            let stats = shared.stats.lock().unwrap();
            match &stats.last_error {
                Some(e) => format!(" (not connected: {e})"),
                None => " (not connected)".to_string(),
            }
        };
        SerialError::Timeout {
            pattern: shorten(pattern),
            addr: shared.endpoint.describe(),
            secs: round_secs(timeout),
            state,
            tail,
        }
    }

    /// Sends `data` to the device over the console connection, waiting up
    /// to `timeout` for the connection to be up and the bytes to be sent.
    pub async fn write(&self, data: &[u8], timeout: Duration) -> Result<(), SerialError> {
        let shared = &self.link.shared;
        let addr = shared.endpoint.describe();
        let mut connected = shared.connected.subscribe();
        let deadline = tokio::time::Instant::now() + timeout;
        let not_connected = || {
            let last_error = shared
                .stats
                .lock()
                .unwrap()
                .last_error
                .as_ref()
                .map(|e| format!(" (last error: {e})"))
                .unwrap_or_default();
            SerialError::NotConnected {
                addr: addr.clone(),
                secs: round_secs(timeout),
                last_error,
            }
        };
        loop {
            connected.borrow_and_update();
            {
                let mut writer = match tokio::time::timeout_at(deadline, shared.writer.lock()).await
                {
                    Ok(w) => w,
                    Err(_) => return Err(not_connected()),
                };
                if let Some(w) = writer.as_mut() {
                    let sent = tokio::time::timeout_at(deadline, async {
                        w.write_all(data).await?;
                        w.flush().await
                    })
                    .await;
                    return match sent {
                        Ok(Ok(())) => Ok(()),
                        Ok(Err(e)) => Err(SerialError::Io {
                            addr,
                            message: e.to_string(),
                        }),
                        Err(_) => Err(SerialError::Io {
                            addr,
                            message: format!(
                                "the console did not take {} bytes within {} s",
                                data.len(),
                                round_secs(timeout)
                            ),
                        }),
                    };
                }
            }
            if !matches!(
                tokio::time::timeout_at(deadline, connected.changed()).await,
                Ok(Ok(()))
            ) {
                return Err(not_connected());
            }
        }
    }
}

/// The background capture: connect, copy to the log and the ring, and
/// reconnect forever (until aborted by the last [`Link`] going away).
async fn capture(shared: Arc<Shared>) {
    let addr = shared.endpoint.describe();
    let mut log = open_log(&shared);
    let mut connect_error_logged = false;
    let mut buf = vec![0u8; READ_CHUNK];
    loop {
        let attempt = tokio::time::timeout(
            CONNECT_TIMEOUT,
            TcpStream::connect((shared.endpoint.host.as_str(), shared.endpoint.port)),
        )
        .await;
        let stream = match attempt {
            Ok(Ok(stream)) => Some(stream),
            Ok(Err(e)) => {
                record_error(&shared, e.to_string());
                None
            }
            Err(_) => {
                record_error(
                    &shared,
                    format!("no answer within {} s", CONNECT_TIMEOUT.as_secs()),
                );
                None
            }
        };
        match stream {
            None => {
                if !connect_error_logged {
                    tracing::error!(target: TARGET, "{CONNECT_ERROR_MESSAGE}");
                    connect_error_logged = true;
                }
                tracing::debug!(target: TARGET, "cannot connect to serial console {addr}; next attempt in {} s", round_secs(shared.retry));
            }
            Some(stream) => {
                let _ = stream.set_nodelay(true);
                let (mut reader, writer) = stream.into_split();
                *shared.writer.lock().await = Some(writer);
                shared.stats.lock().unwrap().connects += 1;
                shared.connected.send_replace(true);
                tracing::info!(target: TARGET, "Successfully connected to serial logging server");
                let why = loop {
                    match reader.read(&mut buf).await {
                        Ok(0) => break None,
                        Ok(n) => {
                            let chunk = &buf[..n];
                            if let Some(file) = log.as_mut()
                                && let Err(e) = file.write_all(chunk).and_then(|_| file.flush())
                            {
                                tracing::error!(target: TARGET, "Cannot write serial log {}: {e}; serial output is no longer saved", shared.log_path.display());
                                log = None;
                            }
                            let end = {
                                let mut ring = shared.output.lock().unwrap();
                                ring.push(chunk);
                                ring.end()
                            };
                            shared.stats.lock().unwrap().bytes += n as u64;
                            shared.received.send_replace(end);
                        }
                        Err(e) => break Some(e.to_string()),
                    }
                };
                *shared.writer.lock().await = None;
                shared.connected.send_replace(false);
                {
                    let mut stats = shared.stats.lock().unwrap();
                    stats.disconnects += 1;
                    stats.last_error =
                        Some(why.clone().unwrap_or_else(|| {
                            "connection closed by the serial server".to_string()
                        }));
                }
                match why {
                    None => tracing::error!(target: TARGET,
                        "Serial log connection closed - attempts to reconnect will be made in the background"),
                    Some(e) => tracing::error!(target: TARGET,
                        "Serial log connection to {addr} failed: {e} - attempts to reconnect will be made in the background"),
                }
            }
        }
        tokio::time::sleep(shared.retry).await;
    }
}

fn record_error(shared: &Shared, message: String) {
    let mut stats = shared.stats.lock().unwrap();
    stats.connect_errors += 1;
    stats.last_error = Some(message);
}

/// Opens the capture file for appending (created if missing, like the
/// reference which opens it before connecting). A failure is logged and
/// the capture goes on without a file.
fn open_log(shared: &Shared) -> Option<File> {
    match OpenOptions::new()
        .append(true)
        .create(true)
        .open(&shared.log_path)
    {
        Ok(f) => Some(f),
        Err(e) => {
            tracing::error!(target: TARGET, "Cannot open serial log {}: {e}; serial output is not saved", shared.log_path.display());
            None
        }
    }
}

fn round_secs(d: Duration) -> f64 {
    (d.as_secs_f64() * 1000.0).round() / 1000.0
}

/// A pattern as quoted in messages: at most 200 characters, control
/// characters escaped (it ends up in a log line).
fn shorten(text: &str) -> String {
    const MAX: usize = 200;
    let mut out = String::new();
    for c in text.chars().take(MAX) {
        if c.is_control() {
            out.extend(c.escape_default());
        } else {
            out.push(c);
        }
    }
    if text.chars().count() > MAX {
        out.push('…');
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::testing::log::LogCapture;
    use labsim::serial::SerialServer;
    use std::path::Path;
    use std::time::Instant;

    const T: Duration = Duration::from_secs(5);

    fn config(text: &str) -> DeviceConfig {
        DeviceConfig::parse(Path::new("default.yaml"), text).unwrap()
    }

    fn hub_for(server: &SerialServer, dir: &Path, stage: Stage, retry: f64) -> SerialHub {
        let c = config(&format!(
            "serial_host: {}\nserial_port: {}\nconnector_runtime: {{serial_retry_seconds: {retry}}}\n",
            server.host(),
            server.port()
        ));
        SerialHub::new(&c, &RunDir::new(dir), stage)
    }

    async fn eventually(mut done: impl FnMut() -> bool) -> bool {
        let deadline = Instant::now() + T;
        while Instant::now() < deadline {
            if done() {
                return true;
            }
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
        done()
    }

    fn read(path: &Path) -> Vec<u8> {
        std::fs::read(path).unwrap_or_default()
    }

    fn stats(hub: &SerialHub) -> SerialStats {
        hub.stats().unwrap_or_default()
    }

    #[tokio::test]
    async fn capture_appends_to_the_stage_log() {
        let server = SerialServer::start("127.0.0.1").unwrap();
        let dir = tempfile::tempdir().unwrap();
        let log = dir.path().join("test-serial.log");
        std::fs::write(&log, b"earlier stage\n").unwrap();
        let hub = hub_for(&server, dir.path(), Stage::Runtest, 0.1);
        assert!(hub.configured());
        assert_eq!(hub.log_path(), log);

        let guard = hub.capture().expect("configured");
        assert!(server.wait_accepted_async(1, T).await);
        assert_eq!(server.push("U-Boot 2024.01\r\n"), 1);
        assert!(eventually(|| read(&log).ends_with(b"U-Boot 2024.01\r\n")).await);
        drop(guard);
        assert!(eventually(|| server.open_connections() == 0).await);
        assert!(hub.stats().is_none(), "capture stopped with its guard");

        // A new capture appends to the same file.
        let _guard = hub.capture().unwrap();
        assert!(server.wait_accepted_async(2, T).await);
        assert!(eventually(|| server.open_connections() == 1).await);
        server.push(&b"login: \xff"[..]);
        assert!(eventually(|| read(&log).ends_with(b"login: \xff")).await);
        assert_eq!(read(&log), b"earlier stage\nU-Boot 2024.01\r\nlogin: \xff");
    }

    #[tokio::test]
    async fn reconnects_after_the_server_drops_the_connection() {
        let logs = LogCapture::start();
        let server = SerialServer::start("127.0.0.1").unwrap();
        let dir = tempfile::tempdir().unwrap();
        let hub = hub_for(&server, dir.path(), Stage::Provision, 0.1);
        let _guard = hub.capture().unwrap();
        assert!(server.wait_accepted_async(1, T).await);
        assert!(eventually(|| stats(&hub).connected).await);
        server.push("before\n");
        assert!(eventually(|| stats(&hub).bytes == 7).await);
        server.drop_connections();
        assert!(server.wait_accepted_async(2, T).await, "reconnected");
        assert!(eventually(|| stats(&hub).connected).await);
        server.push("after\n");
        let log = dir.path().join("provision-serial.log");
        assert!(eventually(|| read(&log) == b"before\nafter\n").await);
        let s = stats(&hub);
        assert_eq!((s.connects, s.disconnects, s.connect_errors), (2, 1, 0));
        assert_eq!(
            logs.matching("Serial log connection closed").len(),
            1,
            "{}",
            logs.dump()
        );
        assert_eq!(
            logs.matching("Successfully connected").len(),
            2,
            "{}",
            logs.dump()
        );
    }

    #[tokio::test]
    async fn connection_errors_are_logged_once_and_retried() {
        let logs = LogCapture::start();
        let server = SerialServer::start("127.0.0.1").unwrap();
        server.refuse(true).unwrap();
        let dir = tempfile::tempdir().unwrap();
        let hub = hub_for(&server, dir.path(), Stage::Provision, 0.05);
        let _guard = hub.capture().unwrap();
        assert!(eventually(|| stats(&hub).connect_errors >= 3).await);
        // The reference creates the file before connecting.
        assert!(dir.path().join("provision-serial.log").exists());
        let s = stats(&hub);
        assert!(!s.connected);
        assert!(s.last_error.unwrap().to_lowercase().contains("refused"));

        server.refuse(false).unwrap();
        assert!(eventually(|| stats(&hub).connected).await);
        server.push("up\n");
        assert!(eventually(|| read(&dir.path().join("provision-serial.log")) == b"up\n").await);
        // Once for the whole capture, however many attempts failed.
        assert_eq!(
            logs.matching(CONNECT_ERROR_MESSAGE).len(),
            1,
            "{}",
            logs.dump()
        );
        let errors: Vec<_> = logs
            .lines()
            .into_iter()
            .filter(|l| l.level == tracing::Level::ERROR)
            .collect();
        assert_eq!(errors.len(), 1, "{}", logs.dump());
    }

    #[tokio::test]
    async fn wait_for_matches_in_order_from_the_open() {
        let server = SerialServer::start("127.0.0.1").unwrap();
        let dir = tempfile::tempdir().unwrap();
        let hub = hub_for(&server, dir.path(), Stage::Provision, 0.1);
        let _guard = hub.capture().unwrap();
        assert!(eventually(|| stats(&hub).connected).await);
        server.push("old login: \n");
        assert!(eventually(|| stats(&hub).bytes == 12).await);

        let port = hub.open(CONSOLE).unwrap();
        // Output from before the open is not seen.
        let err = port
            .wait_for("login:", Duration::from_millis(100))
            .await
            .unwrap_err();
        let text = err.to_string();
        assert!(matches!(err, SerialError::Timeout { .. }), "{text}");
        assert!(
            text.contains("`login:`") && text.contains("0.1 s") && text.contains("nothing"),
            "{text}"
        );

        server.push("Ubuntu 24.04 ttyS0\r\nstep a1 a2\r\n");
        assert_eq!(
            port.wait_for(r"Ubuntu \S+", T).await.unwrap(),
            "Ubuntu 24.04"
        );
        assert_eq!(port.wait_for(r"a\d", T).await.unwrap(), "a1");
        assert_eq!(port.wait_for(r"a\d", T).await.unwrap(), "a2");
        let err = port
            .wait_for(r"a\d", Duration::from_millis(50))
            .await
            .unwrap_err()
            .to_string();
        assert!(err.contains(r"\r\n"), "last bytes quoted: {err}");

        // A wait that starts before the output arrives.
        let wait = port.wait_for(r"(?m)^\S+ login: $", T);
        let push = async {
            tokio::time::sleep(Duration::from_millis(50)).await;
            server.push("\r\ndut1 login: ");
        };
        let (got, _) = tokio::join!(wait, push);
        assert_eq!(got.unwrap(), "dut1 login: ");

        let err = port
            .wait_for("x\r\n(?:never)", Duration::from_millis(10))
            .await
            .unwrap_err()
            .to_string();
        assert!(err.contains(r"`x\r\n(?:never)`"), "{err}");
        let err = port.wait_for("(unclosed", T).await.unwrap_err();
        assert!(matches!(err, SerialError::InvalidPattern { .. }), "{err}");
    }

    #[tokio::test]
    async fn wait_for_keeps_a_bounded_buffer() {
        let server = SerialServer::start("127.0.0.1").unwrap();
        let dir = tempfile::tempdir().unwrap();
        let hub = hub_for(&server, dir.path(), Stage::Provision, 0.1);
        let port = hub.open(CONSOLE).unwrap();
        assert!(eventually(|| stats(&hub).connected).await);
        let filler = vec![b'.'; BUFFER_BYTES + BUFFER_BYTES / 2];
        server.push("START");
        server.push(filler.clone());
        server.push("END");
        let total = (5 + filler.len() + 3) as u64;
        assert!(eventually(|| stats(&hub).bytes == total).await);
        assert_eq!(
            port.link.shared.output.lock().unwrap().data.len(),
            BUFFER_BYTES
        );
        // What fell out of the buffer cannot match; what is kept can.
        assert!(
            port.wait_for("START", Duration::from_millis(50))
                .await
                .is_err()
        );
        assert_eq!(port.wait_for(r"\.END", T).await.unwrap(), ".END");
        // Everything is still in the log file.
        assert_eq!(
            std::fs::metadata(dir.path().join("provision-serial.log"))
                .unwrap()
                .len(),
            total
        );
    }

    #[tokio::test]
    async fn write_reaches_the_device() {
        let server = SerialServer::start("127.0.0.1").unwrap();
        server.respond("root\n", "Password: ");
        let dir = tempfile::tempdir().unwrap();
        let hub = hub_for(&server, dir.path(), Stage::Provision, 0.1);
        let port = hub.open(CONSOLE).unwrap();
        // Waits for the connection that is still being made.
        port.write(b"root\n", T).await.unwrap();
        assert!(server.wait_received_async(b"root\n", T).await);
        assert_eq!(port.wait_for("Password: ", T).await.unwrap(), "Password: ");
    }

    #[tokio::test]
    async fn write_fails_when_the_console_is_down() {
        let server = SerialServer::start("127.0.0.1").unwrap();
        server.refuse(true).unwrap();
        let dir = tempfile::tempdir().unwrap();
        let hub = hub_for(&server, dir.path(), Stage::Provision, 0.05);
        let port = hub.open(CONSOLE).unwrap();
        let err = port
            .write(b"x", Duration::from_millis(200))
            .await
            .unwrap_err();
        let text = err.to_string();
        assert!(matches!(err, SerialError::NotConnected { .. }), "{text}");
        assert!(
            text.contains(&server.addr().to_string()) && text.contains("0.2 s"),
            "{text}"
        );
        let err = port
            .wait_for("x", Duration::from_millis(50))
            .await
            .unwrap_err()
            .to_string();
        assert!(err.contains("not connected"), "{err}");
    }

    #[tokio::test]
    async fn ports_share_one_connection_and_are_capped() {
        let server = SerialServer::start("127.0.0.1").unwrap();
        let dir = tempfile::tempdir().unwrap();
        let hub = hub_for(&server, dir.path(), Stage::Provision, 0.1).with_max_ports(2);
        let guard = hub.capture().unwrap();
        let a = hub.open(CONSOLE).unwrap();
        let b = hub.open(CONSOLE).unwrap();
        let err = hub.open(CONSOLE).err().unwrap();
        assert!(matches!(err, SerialError::TooManyPorts { open: 2, max: 2 }));
        assert!(err.to_string().contains("limits.max_serial_ports"));
        drop(b);
        let b = hub.open(CONSOLE).unwrap();
        assert!(server.wait_open_async(1, T).await);
        server.push("shared\n");
        assert_eq!(a.wait_for("shared", T).await.unwrap(), "shared");
        assert_eq!(b.wait_for("shared", T).await.unwrap(), "shared");
        assert_eq!(server.accepted(), 1);

        // The connection lives until the last holder goes.
        drop(guard);
        drop(a);
        tokio::time::sleep(Duration::from_millis(50)).await;
        assert_eq!(server.open_connections(), 1);
        drop(b);
        assert!(eventually(|| server.open_connections() == 0).await);
    }

    #[tokio::test]
    async fn unconfigured_and_unknown_consoles() {
        let dir = tempfile::tempdir().unwrap();
        let rd = RunDir::new(dir.path());
        let hub = SerialHub::new(&config("serial_host: 127.0.0.1\n"), &rd, Stage::Provision);
        assert!(!hub.configured());
        assert!(hub.capture().is_none());
        let err = hub.open(CONSOLE).err().unwrap();
        assert!(matches!(err, SerialError::NotConfigured), "{err}");
        let text = err.to_string();
        assert!(
            text.contains("serial_host") && text.contains("serial_port"),
            "{text}"
        );
        assert!(!dir.path().join("provision-serial.log").exists());

        let hub = SerialHub::new(
            &config("serial_host: 127.0.0.1\nserial_port: 1\n"),
            &rd,
            Stage::Provision,
        );
        let err = hub.open("uart0").err().unwrap().to_string();
        assert!(err.contains("uart0") && err.contains("`console`"), "{err}");

        let hub = SerialHub::new(
            &config("serial_host: 127.0.0.1\nserial_port: telnet\n"),
            &rd,
            Stage::Provision,
        );
        assert!(hub.configured());
        let err = hub.open(CONSOLE).err().unwrap().to_string();
        assert!(err.contains("telnet"), "{err}");
        assert!(hub.capture().is_none());
    }
}
