//! A ser2net-style serial console on loopback: a raw TCP port that streams
//! what the simulated device prints and records what clients type.
//!
//! Tests push output at run time (a boot log ending at a login prompt ...),
//! and inject faults: refuse connections (the port is really closed, so
//! clients get "connection refused"), drop every connection, or stay silent
//! (connections are accepted but the device prints nothing). Reconnections
//! are accepted like ser2net does.

use std::net::SocketAddr;
use std::sync::mpsc as std_mpsc;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use bytes::Bytes;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::sync::mpsc;

/// How long a control call waits for the server thread to act.
const ACK_TIMEOUT: Duration = Duration::from_secs(5);
/// Poll step of the `wait_*` helpers.
const POLL: Duration = Duration::from_millis(10);

/// A rule that answers client input: once `trigger` appears in what a
/// client typed (since the rule last fired), `reply` is sent to it.
#[derive(Debug, Clone)]
pub struct Responder {
    pub trigger: Vec<u8>,
    pub reply: Bytes,
}

#[derive(Default)]
struct State {
    /// Everything clients wrote, in arrival order.
    received: Vec<u8>,
    /// Connections accepted so far.
    accepted: usize,
    /// Connections open now.
    open: usize,
    /// Pushed output is discarded while set (the device prints nothing).
    silent: bool,
    /// Typed bytes are sent back (like a console with echo on).
    echo: bool,
    responders: Vec<Responder>,
}

enum Command {
    /// Send to every open connection; acknowledges with the number of
    /// connections the data was queued to.
    Push(Bytes, std_mpsc::Sender<usize>),
    /// Close every open connection.
    DropAll(std_mpsc::Sender<()>),
    /// Close (`true`) or reopen (`false`) the listening port.
    Refuse(bool, std_mpsc::Sender<std::io::Result<()>>),
}

/// A running serial console server; stops when dropped.
pub struct SerialServer {
    addr: SocketAddr,
    state: Arc<Mutex<State>>,
    commands: mpsc::UnboundedSender<Command>,
    stop: Option<tokio::sync::oneshot::Sender<()>>,
    thread: Option<std::thread::JoinHandle<()>>,
}

impl SerialServer {
    /// Starts a server on `ip` (any free port).
    pub fn start(ip: &str) -> anyhow::Result<Self> {
        let listener = std::net::TcpListener::bind(format!("{ip}:0"))?;
        listener.set_nonblocking(true)?;
        let addr = listener.local_addr()?;
        let state = Arc::new(Mutex::new(State::default()));
        let (cmd_tx, cmd_rx) = mpsc::unbounded_channel();
        let (stop_tx, stop_rx) = tokio::sync::oneshot::channel();
        let st = state.clone();
        let thread = std::thread::Builder::new()
            .name(format!("labsim-serial-{addr}"))
            .spawn(move || {
                let rt = tokio::runtime::Builder::new_current_thread()
                    .enable_all()
                    .build()
                    .expect("runtime");
                rt.block_on(serve(listener, addr, st, cmd_rx, stop_rx));
            })?;
        Ok(SerialServer {
            addr,
            state,
            commands: cmd_tx,
            stop: Some(stop_tx),
            thread: Some(thread),
        })
    }

    /// The bound address.
    pub fn addr(&self) -> SocketAddr {
        self.addr
    }

    /// The port, for `serial_port` in a device config.
    pub fn port(&self) -> u16 {
        self.addr.port()
    }

    /// The IP, for `serial_host` in a device config.
    pub fn host(&self) -> String {
        self.addr.ip().to_string()
    }

    /// Sends `data` to every open connection, as if the device printed it.
    /// Returns how many connections it went to (0 when nobody listens or
    /// the server is silent: like a real console, output nobody reads is
    /// lost).
    pub fn push(&self, data: impl Into<Bytes>) -> usize {
        let (tx, rx) = std_mpsc::channel();
        if self.commands.send(Command::Push(data.into(), tx)).is_err() {
            return 0;
        }
        rx.recv_timeout(ACK_TIMEOUT).unwrap_or(0)
    }

    /// Sends `lines` one after the other, each followed by `\r\n`, with
    /// `delay` between them (a boot log). Returns the smallest number of
    /// connections any line reached.
    pub fn push_lines(&self, lines: &[&str], delay: Duration) -> usize {
        let mut reached = usize::MAX;
        for (i, line) in lines.iter().enumerate() {
            if i > 0 && !delay.is_zero() {
                std::thread::sleep(delay);
            }
            reached = reached.min(self.push(format!("{line}\r\n")));
        }
        if reached == usize::MAX { 0 } else { reached }
    }

    /// Everything clients wrote so far.
    pub fn received(&self) -> Vec<u8> {
        self.state.lock().unwrap().received.clone()
    }

    /// Connections accepted so far (reconnections count).
    pub fn accepted(&self) -> usize {
        self.state.lock().unwrap().accepted
    }

    /// Connections open now.
    pub fn open_connections(&self) -> usize {
        self.state.lock().unwrap().open
    }

    /// Discards pushed output while `silent` (connections stay accepted).
    pub fn set_silent(&self, silent: bool) {
        self.state.lock().unwrap().silent = silent;
    }

    /// Echoes typed bytes back to the typing client while `echo`.
    pub fn set_echo(&self, echo: bool) {
        self.state.lock().unwrap().echo = echo;
    }

    /// Answers `reply` whenever a client types `trigger` (e.g. `root\n` →
    /// `Password: `).
    pub fn respond(&self, trigger: impl Into<Vec<u8>>, reply: impl Into<Bytes>) {
        self.state.lock().unwrap().responders.push(Responder {
            trigger: trigger.into(),
            reply: reply.into(),
        });
    }

    /// Closes every open connection (the peer sees EOF).
    pub fn drop_connections(&self) {
        let (tx, rx) = std_mpsc::channel();
        if self.commands.send(Command::DropAll(tx)).is_ok() {
            let _ = rx.recv_timeout(ACK_TIMEOUT);
        }
    }

    /// Closes the listening port (`true`: clients get "connection
    /// refused"; open connections are dropped too) or opens it again on the
    /// same port (`false`).
    pub fn refuse(&self, refuse: bool) -> anyhow::Result<()> {
        let (tx, rx) = std_mpsc::channel();
        self.commands
            .send(Command::Refuse(refuse, tx))
            .map_err(|_| anyhow::anyhow!("serial server stopped"))?;
        rx.recv_timeout(ACK_TIMEOUT)
            .map_err(|_| anyhow::anyhow!("serial server did not answer"))??;
        Ok(())
    }

    /// Blocks until at least `n` connections were accepted; false at
    /// `timeout`. (Use [`Self::wait_accepted_async`] from async code that
    /// shares its thread with the client.)
    pub fn wait_accepted(&self, n: usize, timeout: Duration) -> bool {
        poll_blocking(timeout, || self.accepted() >= n)
    }

    /// Blocks until clients have written `needle`; false at `timeout`.
    pub fn wait_received(&self, needle: &[u8], timeout: Duration) -> bool {
        poll_blocking(timeout, || contains(&self.received(), needle))
    }

    /// Async twin of [`Self::wait_accepted`].
    pub async fn wait_accepted_async(&self, n: usize, timeout: Duration) -> bool {
        poll_async(timeout, || self.accepted() >= n).await
    }

    /// Async: until `n` connections are open at the same time.
    pub async fn wait_open_async(&self, n: usize, timeout: Duration) -> bool {
        poll_async(timeout, || self.open_connections() >= n).await
    }

    /// Async twin of [`Self::wait_received`].
    pub async fn wait_received_async(&self, needle: &[u8], timeout: Duration) -> bool {
        poll_async(timeout, || contains(&self.received(), needle)).await
    }
}

impl Drop for SerialServer {
    fn drop(&mut self) {
        if let Some(stop) = self.stop.take() {
            let _ = stop.send(());
        }
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
    }
}

fn contains(haystack: &[u8], needle: &[u8]) -> bool {
    needle.is_empty() || haystack.windows(needle.len()).any(|w| w == needle)
}

fn poll_blocking(timeout: Duration, mut done: impl FnMut() -> bool) -> bool {
    let deadline = Instant::now() + timeout;
    loop {
        if done() {
            return true;
        }
        if Instant::now() >= deadline {
            return false;
        }
        std::thread::sleep(POLL);
    }
}

async fn poll_async(timeout: Duration, mut done: impl FnMut() -> bool) -> bool {
    let deadline = Instant::now() + timeout;
    loop {
        if done() {
            return true;
        }
        if Instant::now() >= deadline {
            return false;
        }
        tokio::time::sleep(POLL).await;
    }
}

/// One open connection as the server loop sees it.
struct Client {
    output: mpsc::UnboundedSender<Bytes>,
    task: tokio::task::JoinHandle<()>,
}

async fn serve(
    listener: std::net::TcpListener,
    addr: SocketAddr,
    state: Arc<Mutex<State>>,
    mut commands: mpsc::UnboundedReceiver<Command>,
    mut stop: tokio::sync::oneshot::Receiver<()>,
) {
    let mut listener = Some(tokio::net::TcpListener::from_std(listener).expect("listener"));
    let mut clients: Vec<Client> = Vec::new();
    loop {
        clients.retain(|c| !c.task.is_finished());
        tokio::select! {
            _ = &mut stop => break,
            accepted = accept(listener.as_ref()) => {
                let Ok((stream, _)) = accepted else { continue };
                let (tx, rx) = mpsc::unbounded_channel();
                {
                    let mut s = state.lock().unwrap();
                    s.accepted += 1;
                    s.open += 1;
                }
                let task = tokio::spawn(connection(stream, state.clone(), tx.clone(), rx));
                clients.push(Client { output: tx, task });
            }
            command = commands.recv() => {
                let Some(command) = command else { break };
                match command {
                    Command::Push(data, ack) => {
                        let silent = state.lock().unwrap().silent;
                        let mut n = 0;
                        if !silent {
                            for c in &clients {
                                if c.output.send(data.clone()).is_ok() {
                                    n += 1;
                                }
                            }
                        }
                        let _ = ack.send(n);
                    }
                    Command::DropAll(ack) => {
                        close_all(&mut clients, &state).await;
                        let _ = ack.send(());
                    }
                    Command::Refuse(true, ack) => {
                        listener = None;
                        close_all(&mut clients, &state).await;
                        let _ = ack.send(Ok(()));
                    }
                    Command::Refuse(false, ack) => {
                        let result = if listener.is_some() {
                            Ok(())
                        } else {
                            // std sets SO_REUSEADDR on Unix, so the port can be
                            // bound again right away.
                            std::net::TcpListener::bind(addr)
                                .and_then(|l| { l.set_nonblocking(true)?; Ok(l) })
                                .and_then(tokio::net::TcpListener::from_std)
                                .map(|l| { listener = Some(l); })
                        };
                        let _ = ack.send(result);
                    }
                }
            }
        }
    }
    close_all(&mut clients, &state).await;
}

async fn accept(
    listener: Option<&tokio::net::TcpListener>,
) -> std::io::Result<(tokio::net::TcpStream, SocketAddr)> {
    match listener {
        Some(l) => l.accept().await,
        None => std::future::pending().await,
    }
}

async fn close_all(clients: &mut Vec<Client>, state: &Arc<Mutex<State>>) {
    for c in clients.drain(..) {
        c.task.abort();
        if c.task.await.is_err() {
            // Aborted before it could count itself out.
            let mut s = state.lock().unwrap();
            s.open = s.open.saturating_sub(1);
        }
    }
}

/// Serves one client: forwards pushed output and records (and answers)
/// what it types. Decrements the open count when it ends by itself.
async fn connection(
    stream: tokio::net::TcpStream,
    state: Arc<Mutex<State>>,
    self_tx: mpsc::UnboundedSender<Bytes>,
    mut output: mpsc::UnboundedReceiver<Bytes>,
) {
    let _ = stream.set_nodelay(true);
    let (mut rd, mut wr) = stream.into_split();
    let mut buf = vec![0u8; 4096];
    // What this client typed since a responder last fired.
    let mut pending: Vec<u8> = Vec::new();
    loop {
        tokio::select! {
            data = output.recv() => {
                let Some(data) = data else { break };
                if wr.write_all(&data).await.is_err() {
                    break;
                }
            }
            n = rd.read(&mut buf) => {
                let n = match n { Ok(0) | Err(_) => break, Ok(n) => n };
                let typed = &buf[..n];
                let replies = {
                    let mut s = state.lock().unwrap();
                    s.received.extend_from_slice(typed);
                    let mut replies = Vec::new();
                    if s.echo {
                        replies.push(Bytes::copy_from_slice(typed));
                    }
                    pending.extend_from_slice(typed);
                    for r in &s.responders {
                        if !r.trigger.is_empty() && contains(&pending, &r.trigger) {
                            replies.push(r.reply.clone());
                            pending.clear();
                        }
                    }
                    // Bounded: only the tail can still complete a trigger.
                    if pending.len() > 64 * 1024 {
                        pending.drain(..pending.len() - 1024);
                    }
                    replies
                };
                for r in replies {
                    let _ = self_tx.send(r);
                }
            }
        }
    }
    let mut s = state.lock().unwrap();
    s.open = s.open.saturating_sub(1);
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::io::{Read, Write};
    use std::net::TcpStream;

    const T: Duration = Duration::from_secs(5);

    fn read_until(s: &mut TcpStream, needle: &[u8]) -> Vec<u8> {
        s.set_read_timeout(Some(Duration::from_millis(100)))
            .unwrap();
        let deadline = Instant::now() + T;
        let mut out = Vec::new();
        let mut buf = [0u8; 1024];
        while !contains(&out, needle) && Instant::now() < deadline {
            match s.read(&mut buf) {
                Ok(0) => break,
                Ok(n) => out.extend_from_slice(&buf[..n]),
                Err(_) => {}
            }
        }
        out
    }

    #[test]
    fn streams_output_records_input_and_answers() {
        let server = SerialServer::start("127.0.0.1").unwrap();
        assert_eq!(server.push("nobody hears this"), 0);
        let mut c = TcpStream::connect(server.addr()).unwrap();
        assert!(server.wait_accepted(1, T));
        assert_eq!(
            server.push_lines(&["U-Boot 2024.01", "ubuntu login:"], Duration::ZERO),
            1
        );
        let got = read_until(&mut c, b"login:");
        assert_eq!(got, b"U-Boot 2024.01\r\nubuntu login:\r\n");
        server.respond("root\n", "Password: ");
        c.write_all(b"root\n").unwrap();
        assert!(server.wait_received(b"root\n", T));
        assert_eq!(read_until(&mut c, b"Password: "), b"Password: ");
        server.set_silent(true);
        assert_eq!(server.push("x"), 0);
    }

    #[test]
    fn drops_refuses_and_accepts_reconnections() {
        let server = SerialServer::start("127.0.0.1").unwrap();
        let mut c = TcpStream::connect(server.addr()).unwrap();
        assert!(server.wait_accepted(1, T));
        server.drop_connections();
        c.set_read_timeout(Some(T)).unwrap();
        let mut buf = [0u8; 8];
        assert_eq!(c.read(&mut buf).unwrap_or(0), 0, "EOF after a drop");
        assert_eq!(server.open_connections(), 0);

        server.refuse(true).unwrap();
        let err = TcpStream::connect(server.addr()).unwrap_err();
        assert_eq!(err.kind(), std::io::ErrorKind::ConnectionRefused);
        server.refuse(false).unwrap();
        let _c2 = TcpStream::connect(server.addr()).unwrap();
        assert!(server.wait_accepted(2, T));
    }
}
