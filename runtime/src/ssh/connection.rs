//! One connection to a target, shared by every session the stage opens to
//! it: commands, streamed input, file upload and download. The connection
//! is re-established transparently when it died (a device reboot).

use std::path::Path;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use bytes::Bytes;
use futures::{Stream, StreamExt};
use russh::ChannelMsg;
use russh::client::Msg;
use tokio::io::AsyncWriteExt;
use tokio::sync::{OwnedSemaphorePermit, Semaphore};
use tokio::time::Instant;

use super::client::{self, Login, SshHandle};
use super::target::Resolved;
use super::{ExecOutput, OutputStream, SshError, human_duration};

/// Longest partial line kept for the log before it is logged as it is.
const MAX_LOG_LINE: usize = 16 * 1024;
/// Longest command text quoted in messages.
const MAX_COMMAND_IN_MESSAGE: usize = 120;

/// One open connection (shared by every session to its target and user).
pub struct Connection {
    resolved: Resolved,
    /// Cap on buffered output of one command.
    max_output: u64,
    /// `limits.max_ssh_sessions`, for messages.
    max_channels: usize,
    /// Open channels of the whole stage.
    channels: Arc<Semaphore>,
    /// The live connection, if any; the lock also serialises reconnects.
    handle: tokio::sync::Mutex<Option<Arc<SshHandle>>>,
    /// TCP connections opened so far.
    opened: AtomicU64,
}

/// Receives output lines as they arrive.
pub type LineFn<'a> = dyn FnMut(OutputStream, &str) + Send + 'a;

/// Where a command's standard output goes.
enum Dest<'a> {
    Buffer(Vec<u8>),
    File(&'a mut tokio::fs::File),
}

/// What a limit violation is about, for its message.
enum Cap<'a> {
    ExecOutput,
    Download(&'a str),
}

/// Collects a command's output, enforcing the cap and logging lines.
struct Sink<'a> {
    stdout: Dest<'a>,
    stderr: Vec<u8>,
    written: u64,
    cap: u64,
    cap_kind: Cap<'a>,
    out_lines: Vec<u8>,
    err_lines: Vec<u8>,
    on_line: Option<&'a mut LineFn<'a>>,
}

impl<'a> Sink<'a> {
    fn new(
        stdout: Dest<'a>,
        cap: u64,
        cap_kind: Cap<'a>,
        on_line: Option<&'a mut LineFn<'a>>,
    ) -> Self {
        Sink {
            stdout,
            stderr: Vec::new(),
            written: 0,
            cap,
            cap_kind,
            out_lines: Vec::new(),
            err_lines: Vec::new(),
            on_line,
        }
    }

    fn account(&mut self, n: usize, command: &str, conn: &Connection) -> Result<(), SshError> {
        self.written += n as u64;
        if self.written > self.cap {
            return Err(SshError::Limit(match self.cap_kind {
                Cap::ExecOutput => format!(
                    "output of `{}` on {} exceeded {} bytes (limits.max_exec_output_bytes in the lab file raises it)",
                    short(command),
                    conn.resolved.target,
                    self.cap
                ),
                Cap::Download(path) => format!(
                    "`{path}` on {} is larger than {} bytes",
                    conn.resolved.target, self.cap
                ),
            }));
        }
        Ok(())
    }

    async fn stdout(
        &mut self,
        data: &[u8],
        command: &str,
        conn: &Connection,
    ) -> Result<(), SshError> {
        // A buffered exec shares its cap between stdout and stderr; a
        // download counts the file's bytes only.
        self.account(data.len(), command, conn)?;
        match &mut self.stdout {
            Dest::Buffer(buf) => buf.extend_from_slice(data),
            Dest::File(file) => file
                .write_all(data)
                .await
                .map_err(|e| SshError::Io(format!("cannot write the downloaded data: {e}")))?,
        }
        if let Some(cb) = self.on_line.as_deref_mut() {
            split_lines(&mut self.out_lines, data, OutputStream::Stdout, cb);
        }
        Ok(())
    }

    fn stderr(&mut self, data: &[u8], command: &str, conn: &Connection) -> Result<(), SshError> {
        if matches!(self.stdout, Dest::Buffer(_)) {
            self.account(data.len(), command, conn)?;
        } else if self.stderr.len() + data.len() > MAX_LOG_LINE * 4 {
            // A download only keeps enough stderr to explain a failure.
            return Ok(());
        }
        self.stderr.extend_from_slice(data);
        if let Some(cb) = self.on_line.as_deref_mut() {
            split_lines(&mut self.err_lines, data, OutputStream::Stderr, cb);
        }
        Ok(())
    }

    /// Logs what is left of unterminated lines.
    fn finish(&mut self) {
        if let Some(cb) = self.on_line.as_deref_mut() {
            for (buf, stream) in [
                (&mut self.out_lines, OutputStream::Stdout),
                (&mut self.err_lines, OutputStream::Stderr),
            ] {
                if !buf.is_empty() {
                    let line = String::from_utf8_lossy(buf);
                    cb(stream, line.trim_end_matches('\r'));
                    buf.clear();
                }
            }
        }
    }
}

/// Appends `data` to `pending` and hands every complete line to `cb`.
fn split_lines(pending: &mut Vec<u8>, data: &[u8], stream: OutputStream, cb: &mut LineFn<'_>) {
    let mut rest = data;
    while let Some(pos) = rest.iter().position(|&b| b == b'\n') {
        pending.extend_from_slice(&rest[..pos]);
        let line = String::from_utf8_lossy(pending);
        cb(stream, line.trim_end_matches('\r'));
        pending.clear();
        rest = &rest[pos + 1..];
    }
    pending.extend_from_slice(rest);
    if pending.len() > MAX_LOG_LINE {
        let line = String::from_utf8_lossy(pending);
        cb(stream, &line);
        pending.clear();
    }
}

/// A command shortened for messages.
pub(crate) fn short(command: &str) -> String {
    let one_line = command.replace('\n', " ");
    if one_line.chars().count() <= MAX_COMMAND_IN_MESSAGE {
        one_line
    } else {
        let cut: String = one_line.chars().take(MAX_COMMAND_IN_MESSAGE).collect();
        format!("{cut}...")
    }
}

/// The input of a command without one.
type NoInput = futures::stream::Empty<std::io::Result<Bytes>>;

impl Connection {
    pub(crate) fn new(
        resolved: Resolved,
        max_output: u64,
        channels: Arc<Semaphore>,
        max_channels: usize,
    ) -> Self {
        Connection {
            resolved,
            max_output,
            max_channels,
            channels,
            handle: tokio::sync::Mutex::new(None),
            opened: AtomicU64::new(0),
        }
    }

    /// `user@host:port`, for messages.
    pub fn describe(&self) -> String {
        self.resolved.describe()
    }

    /// The target name this connection serves.
    pub fn target(&self) -> &str {
        &self.resolved.target
    }

    /// The login user.
    pub fn user(&self) -> &str {
        &self.resolved.user
    }

    /// How many TCP connections this connection has opened so far (1 while
    /// it was never re-established).
    pub fn connections_opened(&self) -> u64 {
        self.opened.load(Ordering::Relaxed)
    }

    pub(crate) fn resolved(&self) -> &Resolved {
        &self.resolved
    }

    /// The live handle, connecting (once, for every concurrent caller) when
    /// there is none or it died.
    pub(crate) async fn live(&self, deadline: Instant) -> Result<Arc<SshHandle>, SshError> {
        let mut slot = self.handle.lock().await;
        if let Some(h) = slot.as_ref()
            && !h.is_closed()
        {
            return Ok(h.clone());
        }
        if slot.take().is_some() {
            tracing::info!(target: "tfdc::ssh", "connection to {} ({}) was lost; reconnecting", self.resolved.target, self.describe());
        }
        let budget = deadline
            .saturating_duration_since(Instant::now())
            .min(self.resolved.connect_timeout);
        let h = Arc::new(
            self.login(Login::Keys(&self.resolved.identities), budget)
                .await?,
        );
        *slot = Some(h.clone());
        Ok(h)
    }

    /// Opens a new connection (not cached) and logs in.
    pub(crate) async fn login(
        &self,
        login: Login<'_>,
        timeout: Duration,
    ) -> Result<SshHandle, SshError> {
        self.opened.fetch_add(1, Ordering::Relaxed);
        client::open(&self.resolved, login, timeout).await
    }

    /// Makes `h` the connection's live handle. The previous one is only
    /// dropped: a command still running on it keeps its own reference, and
    /// the old connection closes when the last user lets go.
    pub(crate) async fn adopt(&self, h: SshHandle) {
        *self.handle.lock().await = Some(Arc::new(h));
    }

    /// Forgets the live handle if it is `h`.
    async fn drop_handle(&self, h: &Arc<SshHandle>) {
        let mut slot = self.handle.lock().await;
        if slot.as_ref().is_some_and(|cur| Arc::ptr_eq(cur, h)) {
            *slot = None;
        }
    }

    /// Reserves one of the stage's channel slots.
    fn channel_slot(&self) -> Result<OwnedSemaphorePermit, SshError> {
        self.channels.clone().try_acquire_owned().map_err(|_| {
            SshError::Limit(format!(
                "too many SSH sessions open at once (limit {}); limits.max_ssh_sessions in the lab file raises it",
                self.max_channels
            ))
        })
    }

    /// Opens a session channel on the live connection, reconnecting once
    /// if the cached connection turns out to be dead.
    async fn open_channel(
        &self,
        deadline: Instant,
        command: &str,
    ) -> Result<russh::Channel<Msg>, SshError> {
        let timed_out = || {
            SshError::Timeout(format!(
                "could not start `{}` on {} ({}) before the deadline",
                short(command),
                self.resolved.target,
                self.describe()
            ))
        };
        for attempt in 0..2 {
            let h = tokio::time::timeout_at(deadline, self.live(deadline))
                .await
                .map_err(|_| timed_out())??;
            match tokio::time::timeout_at(deadline, h.channel_open_session()).await {
                Err(_) => return Err(timed_out()),
                Ok(Ok(channel)) => return Ok(channel),
                Ok(Err(e)) => {
                    self.drop_handle(&h).await;
                    if attempt == 1 || !h.is_closed() {
                        return Err(SshError::Io(format!(
                            "cannot open a session on {} ({}): {e}",
                            self.resolved.target,
                            self.describe()
                        )));
                    }
                }
            }
        }
        Err(timed_out())
    }

    /// Runs `command`; output lines are logged as they arrive when
    /// `log_output`. A non-zero exit status is not an error.
    pub async fn exec(
        &self,
        command: &str,
        timeout: Duration,
        log_output: bool,
    ) -> Result<ExecOutput, SshError> {
        if log_output {
            let mut log = log_line(&self.resolved.target);
            self.exec_inner(command, None::<NoInput>, timeout, Some(&mut log))
                .await
        } else {
            self.exec_inner(command, None::<NoInput>, timeout, None)
                .await
        }
    }

    /// Runs `command` and hands each output line to `on_line` as it
    /// arrives (instead of logging it).
    pub async fn exec_streaming(
        &self,
        command: &str,
        timeout: Duration,
        on_line: &mut LineFn<'_>,
    ) -> Result<ExecOutput, SshError> {
        self.exec_inner(command, None::<NoInput>, timeout, Some(on_line))
            .await
    }

    /// Runs `command` with `stdin` streamed into it (closed at the end of
    /// the stream), e.g. an image into `zstdcat | dd`. The stream is read
    /// only as fast as the remote side accepts data.
    pub async fn exec_with_stdin<S>(
        &self,
        command: &str,
        stdin: S,
        timeout: Duration,
        log_output: bool,
    ) -> Result<ExecOutput, SshError>
    where
        S: Stream<Item = std::io::Result<Bytes>> + Send + Unpin,
    {
        if log_output {
            let mut log = log_line(&self.resolved.target);
            self.exec_inner(command, Some(stdin), timeout, Some(&mut log))
                .await
        } else {
            self.exec_inner(command, Some(stdin), timeout, None).await
        }
    }

    async fn exec_inner<'a, S>(
        &self,
        command: &str,
        stdin: Option<S>,
        timeout: Duration,
        on_line: Option<&'a mut LineFn<'a>>,
    ) -> Result<ExecOutput, SshError>
    where
        S: Stream<Item = std::io::Result<Bytes>> + Send + Unpin,
    {
        let mut sink = Sink::new(
            Dest::Buffer(Vec::new()),
            self.max_output,
            Cap::ExecOutput,
            on_line,
        );
        let status = self.run(command, stdin, timeout, &mut sink).await?;
        let Dest::Buffer(stdout) = sink.stdout else {
            unreachable!("exec output is buffered")
        };
        Ok(ExecOutput {
            status,
            stdout,
            stderr: sink.stderr,
        })
    }

    /// Runs one command on a fresh channel, feeding `stdin` and collecting
    /// output into `sink`, all within `timeout`.
    async fn run<S>(
        &self,
        command: &str,
        stdin: Option<S>,
        timeout: Duration,
        sink: &mut Sink<'_>,
    ) -> Result<i32, SshError>
    where
        S: Stream<Item = std::io::Result<Bytes>> + Send + Unpin,
    {
        let started = Instant::now();
        let deadline = started + timeout;
        let _slot = self.channel_slot()?;
        let channel = self.open_channel(deadline, command).await?;
        tracing::debug!(target: "tfdc::ssh", "running on {}: {}", self.describe(), short(command));
        let (mut rx, tx) = channel.split();
        let outcome =
            tokio::time::timeout_at(deadline, self.drive(&mut rx, &tx, command, stdin, sink)).await;
        let result = match outcome {
            Ok(Ok(status)) => {
                sink.finish();
                return Ok(status);
            }
            Ok(Err(e)) => Err(e),
            Err(_) => Err(SshError::Timeout(format!(
                "`{}` on {} ({}) did not finish within {}",
                short(command),
                self.resolved.target,
                self.describe(),
                human_duration(timeout)
            ))),
        };
        sink.finish();
        // Closing the channel makes the server end the command.
        let _ = tokio::time::timeout(Duration::from_millis(500), tx.close()).await;
        result
    }

    /// Sends the command and its input, reads its output and exit status.
    async fn drive<S>(
        &self,
        rx: &mut russh::ChannelReadHalf,
        tx: &russh::ChannelWriteHalf<Msg>,
        command: &str,
        stdin: Option<S>,
        sink: &mut Sink<'_>,
    ) -> Result<i32, SshError>
    where
        S: Stream<Item = std::io::Result<Bytes>> + Send + Unpin,
    {
        let lost = |what: &str| {
            SshError::Io(format!(
                "connection to {} ({}) was lost {what} `{}`",
                self.resolved.target,
                self.describe(),
                short(command)
            ))
        };
        tx.exec(true, command)
            .await
            .map_err(|_| lost("before it could run"))?;
        let writer = async {
            if let Some(mut input) = stdin {
                while let Some(chunk) = input.next().await {
                    let chunk = chunk.map_err(|e| {
                        SshError::Io(format!(
                            "reading the input for `{}` failed: {e}",
                            short(command)
                        ))
                    })?;
                    if !chunk.is_empty() {
                        // Waits for the remote window: this is the
                        // backpressure that keeps the stream from being
                        // read faster than the device consumes it.
                        tx.data_bytes(chunk)
                            .await
                            .map_err(|_| lost("while sending input to"))?;
                    }
                }
            }
            let _ = tx.eof().await;
            Ok::<(), SshError>(())
        };
        let reader = async {
            let mut status = None;
            while let Some(msg) = rx.wait().await {
                match msg {
                    ChannelMsg::Data { data } => sink.stdout(&data, command, self).await?,
                    ChannelMsg::ExtendedData { data, ext: 1 } => {
                        sink.stderr(&data, command, self)?
                    }
                    ChannelMsg::ExitStatus { exit_status } => {
                        status = Some(i32::try_from(exit_status).unwrap_or(-1))
                    }
                    ChannelMsg::ExitSignal { signal_name, .. } => {
                        tracing::debug!(target: "tfdc::ssh", "`{}` was killed by signal {signal_name:?}", short(command));
                        status = Some(-1)
                    }
                    ChannelMsg::Failure => {
                        return Err(SshError::Failed(format!(
                            "{} ({}) refused to run `{}`",
                            self.resolved.target,
                            self.describe(),
                            short(command)
                        )));
                    }
                    ChannelMsg::Close => break,
                    _ => {}
                }
            }
            Ok(status)
        };
        tokio::pin!(writer, reader);
        let mut writer_done = false;
        let status = loop {
            tokio::select! {
                w = &mut writer, if !writer_done => {
                    writer_done = true;
                    w?;
                }
                r = &mut reader => break r?,
            }
        };
        match status {
            Some(s) => Ok(s),
            None => Err(lost("while running")),
        }
    }

    /// Creates or replaces `remote_path` with `data` and mode `mode`.
    pub async fn upload(
        &self,
        remote_path: &str,
        data: &[u8],
        mode: u32,
        timeout: Duration,
    ) -> Result<(), SshError> {
        let q = quote_path(remote_path)?;
        let command = format!("umask 077 && cat > {q} && chmod {:o} {q}", mode & 0o7777);
        let input = futures::stream::iter([Ok(Bytes::copy_from_slice(data))]);
        let out = self
            .exec_inner(&command, Some(input), timeout, None)
            .await?;
        self.check_file_status(&out, "write", remote_path)
    }

    /// Reads `remote_path`, failing past `max_bytes`.
    pub async fn download(
        &self,
        remote_path: &str,
        timeout: Duration,
        max_bytes: u64,
    ) -> Result<Vec<u8>, SshError> {
        let command = format!("cat -- {}", quote_path(remote_path)?);
        let mut sink = Sink::new(
            Dest::Buffer(Vec::new()),
            max_bytes,
            Cap::Download(remote_path),
            None,
        );
        let status = self
            .run(&command, None::<NoInput>, timeout, &mut sink)
            .await?;
        let Dest::Buffer(stdout) = sink.stdout else {
            unreachable!("download output is buffered")
        };
        let out = ExecOutput {
            status,
            stdout,
            stderr: sink.stderr,
        };
        self.check_file_status(&out, "read", remote_path)?;
        Ok(out.stdout)
    }

    /// Copies `remote_path` into the local file `dest`, replacing it
    /// atomically only once the whole file arrived; returns its size.
    pub async fn download_to(
        &self,
        remote_path: &str,
        dest: &Path,
        timeout: Duration,
        max_bytes: u64,
    ) -> Result<u64, SshError> {
        let command = format!("cat -- {}", quote_path(remote_path)?);
        let dir = dest
            .parent()
            .filter(|p| !p.as_os_str().is_empty())
            .unwrap_or(Path::new("."));
        let local_err =
            |e: std::io::Error| SshError::Io(format!("cannot write {}: {e}", dest.display()));
        let tmp = tempfile::NamedTempFile::new_in(dir).map_err(local_err)?;
        let (file, tmp_path) = tmp.into_parts();
        let mut file = tokio::fs::File::from_std(file);
        let mut sink = Sink::new(
            Dest::File(&mut file),
            max_bytes,
            Cap::Download(remote_path),
            None,
        );
        let status = self
            .run(&command, None::<NoInput>, timeout, &mut sink)
            .await?;
        let size = sink.written;
        let out = ExecOutput {
            status,
            stdout: Vec::new(),
            stderr: std::mem::take(&mut sink.stderr),
        };
        drop(sink);
        self.check_file_status(&out, "read", remote_path)?;
        file.flush().await.map_err(local_err)?;
        let _ = file.sync_data().await;
        drop(file);
        tmp_path.persist(dest).map_err(|e| local_err(e.error))?;
        Ok(size)
    }

    /// Turns the status of a file command into an error that says why.
    fn check_file_status(&self, out: &ExecOutput, verb: &str, path: &str) -> Result<(), SshError> {
        if out.status == 0 {
            return Ok(());
        }
        let stderr = String::from_utf8_lossy(&out.stderr).trim().to_string();
        let message = format!(
            "cannot {verb} `{path}` on {} ({}): {}",
            self.resolved.target,
            self.describe(),
            if stderr.is_empty() {
                format!("exit status {}", out.status)
            } else {
                stderr.clone()
            }
        );
        // bash and coreutils say the first, dash the second.
        if stderr.contains("No such file or directory") || stderr.contains("Directory nonexistent")
        {
            Err(SshError::RemoteNotFound(message))
        } else {
            Err(SshError::Failed(message))
        }
    }
}

/// A remote path quoted for the shell; a leading `~/` still means the
/// login user's home. Empty paths and NUL are refused.
fn quote_path(path: &str) -> Result<String, SshError> {
    if path.is_empty() {
        return Err(SshError::Invalid("the remote path is empty".into()));
    }
    let quote = |p: &str| {
        shlex::try_quote(p)
            .map(|q| q.into_owned())
            .map_err(|_| SshError::Invalid(format!("remote path {path:?} contains a NUL byte")))
    };
    match path.strip_prefix("~/") {
        Some("") => Ok("\"$HOME\"/".into()),
        Some(rest) => Ok(format!("\"$HOME\"/{}", quote(rest)?)),
        None => quote(path),
    }
}

/// The line logger of `exec` with `log_output`.
fn log_line(target: &str) -> impl FnMut(OutputStream, &str) + Send + use<> {
    let target = target.to_string();
    move |_stream, line| {
        tracing::info!(target: "tfdc::ssh", ssh_target = %target, "{line}");
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn lines_are_split_across_chunks() {
        let mut seen = Vec::new();
        let mut cb = |s: OutputStream, l: &str| seen.push((s, l.to_string()));
        let mut pending = Vec::new();
        split_lines(&mut pending, b"ab", OutputStream::Stdout, &mut cb);
        split_lines(&mut pending, b"c\r\nd\ne", OutputStream::Stdout, &mut cb);
        assert_eq!(pending, b"e");
        assert_eq!(
            seen,
            vec![
                (OutputStream::Stdout, "abc".to_string()),
                (OutputStream::Stdout, "d".to_string())
            ]
        );
    }

    #[test]
    fn long_commands_are_shortened() {
        let long = "x".repeat(500);
        assert!(short(&long).len() < 130);
        assert_eq!(short("a\nb"), "a b");
    }

    #[test]
    fn paths_are_quoted() {
        for path in ["/tmp/a b", "/tmp/it's", "$(reboot)", "x;y", "~x"] {
            let q = quote_path(path).unwrap();
            assert_eq!(shlex::split(&q).unwrap(), vec![path.to_string()], "{q}");
        }
        assert_eq!(quote_path("~/a b").unwrap(), "\"$HOME\"/'a b'");
        assert!(quote_path("").is_err());
        assert!(quote_path("a\0b").is_err());
    }
}
