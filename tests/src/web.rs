//! A small HTTP/1.1 server for tests: every request is recorded and
//! answered by a handler closure, with faults (slow bodies, truncated
//! bodies, hangs) available as reply kinds, streamed replies (Server-Sent
//! Events) and byte ranges: a `Range: bytes=a-b` request for a 200 reply
//! gets `206 Partial Content` with that slice (or `416` when it is
//! outside the body), for full, slow and truncated replies alike. The
//! listening port can be closed and reopened ([`WebServer::set_refusing`]),
//! as a host that powers off.

use std::convert::Infallible;
use std::net::SocketAddr;
use std::pin::Pin;
use std::sync::{Arc, Mutex};
use std::task::{Context, Poll};
use std::time::Duration;

use bytes::Bytes;
use http_body_util::BodyExt;
use hyper::body::{Body, Frame, Incoming};
use hyper::server::conn::http1;
use hyper::service::service_fn;
use hyper_util::rt::TokioIo;
use tokio::sync::oneshot;
use tokio_rustls::TlsAcceptor;

/// A request as the server received it.
#[derive(Debug, Clone)]
pub struct Request {
    pub method: String,
    /// Path and query.
    pub path: String,
    /// Header names in lower case.
    pub headers: Vec<(String, String)>,
    pub body: Vec<u8>,
}

impl Request {
    /// The first header named `name` (case-insensitive).
    pub fn header(&self, name: &str) -> Option<&str> {
        let name = name.to_ascii_lowercase();
        self.headers
            .iter()
            .find(|(k, _)| *k == name)
            .map(|(_, v)| v.as_str())
    }

    /// The path without the query string.
    pub fn path_only(&self) -> &str {
        self.path.split('?').next().unwrap_or("")
    }
}

/// How to answer a request.
#[derive(Debug, Clone)]
pub enum Reply {
    /// A complete response.
    Full {
        status: u16,
        headers: Vec<(String, String)>,
        body: Bytes,
    },
    /// A body sent in chunks of `chunk` bytes with `delay` between them.
    Slow {
        body: Bytes,
        chunk: usize,
        delay: Duration,
    },
    /// Announces `body.len()` bytes in `Content-Length` but sends only the
    /// first `send` bytes, then closes the connection.
    Truncated { body: Bytes, send: usize },
    /// Never answers (until the server stops).
    Hang,
    /// A body streamed as the sender side pushes chunks; it ends when the
    /// sender is dropped (Server-Sent Events, logs).
    Stream {
        status: u16,
        headers: Vec<(String, String)>,
        body: StreamSource,
    },
}

/// The receiving end of a streamed reply body.
#[derive(Clone)]
pub struct StreamSource(Arc<Mutex<Option<tokio::sync::mpsc::UnboundedReceiver<Bytes>>>>);

impl std::fmt::Debug for StreamSource {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("StreamSource")
    }
}

impl StreamSource {
    /// A source and the sender that feeds it.
    pub fn channel() -> (tokio::sync::mpsc::UnboundedSender<Bytes>, StreamSource) {
        let (tx, rx) = tokio::sync::mpsc::unbounded_channel();
        (tx, StreamSource(Arc::new(Mutex::new(Some(rx)))))
    }

    fn take(&self) -> Option<tokio::sync::mpsc::UnboundedReceiver<Bytes>> {
        self.0.lock().unwrap_or_else(|e| e.into_inner()).take()
    }
}

impl Reply {
    /// 200 with a text body.
    pub fn text(body: impl Into<String>) -> Self {
        Reply::Full {
            status: 200,
            headers: vec![("content-type".into(), "text/plain".into())],
            body: Bytes::from(body.into()),
        }
    }

    /// 200 with raw bytes.
    pub fn bytes(body: impl Into<Bytes>) -> Self {
        Reply::Full {
            status: 200,
            headers: vec![("content-type".into(), "application/octet-stream".into())],
            body: body.into(),
        }
    }

    /// 200 with a JSON body.
    pub fn json(value: &serde_json::Value) -> Self {
        Reply::Full {
            status: 200,
            headers: vec![("content-type".into(), "application/json".into())],
            body: Bytes::from(value.to_string()),
        }
    }

    /// An empty response with `status`.
    pub fn status(status: u16) -> Self {
        Reply::Full {
            status,
            headers: Vec::new(),
            body: Bytes::new(),
        }
    }

    /// `status` with a text body.
    pub fn status_text(status: u16, body: impl Into<String>) -> Self {
        Reply::Full {
            status,
            headers: vec![("content-type".into(), "text/plain".into())],
            body: Bytes::from(body.into()),
        }
    }
}

/// The function answering requests.
pub type Handler = Arc<dyn Fn(&Request) -> Reply + Send + Sync>;

/// A running server; stops when dropped.
pub struct WebServer {
    addr: SocketAddr,
    tls: bool,
    requests: Arc<Mutex<Vec<Request>>>,
    refuse: tokio::sync::watch::Sender<bool>,
    stop: Option<oneshot::Sender<()>>,
    thread: Option<std::thread::JoinHandle<()>>,
}

impl WebServer {
    /// Starts a server on `ip` (any free port) answering with `handler`.
    pub fn start(
        ip: &str,
        handler: impl Fn(&Request) -> Reply + Send + Sync + 'static,
    ) -> anyhow::Result<Self> {
        Self::start_on(&format!("{ip}:0"), Arc::new(handler))
    }

    /// Starts a server on the exact address `addr` (`ip:port`).
    pub fn start_on(addr: &str, handler: Handler) -> anyhow::Result<Self> {
        Self::start_with(addr, handler, None)
    }

    /// Like [`WebServer::start`], speaking HTTPS with the certificate of
    /// [`crate::tls`] (trusted through [`crate::tls::CA_PEM`]).
    pub fn start_tls(
        ip: &str,
        handler: impl Fn(&Request) -> Reply + Send + Sync + 'static,
    ) -> anyhow::Result<Self> {
        Self::start_with(
            &format!("{ip}:0"),
            Arc::new(handler),
            Some(crate::tls::acceptor()?),
        )
    }

    fn start_with(addr: &str, handler: Handler, tls: Option<TlsAcceptor>) -> anyhow::Result<Self> {
        let std_listener = std::net::TcpListener::bind(addr)?;
        std_listener.set_nonblocking(true)?;
        let addr = std_listener.local_addr()?;
        let requests = Arc::new(Mutex::new(Vec::new()));
        let (stop_tx, stop_rx) = oneshot::channel();
        let recorded = requests.clone();
        let with_tls = tls.is_some();
        let (refuse_tx, refuse_rx) = tokio::sync::watch::channel(false);
        let thread = std::thread::Builder::new()
            .name(format!("labsim-web-{addr}"))
            .spawn(move || {
                let rt = tokio::runtime::Builder::new_current_thread()
                    .enable_all()
                    .build()
                    .expect("runtime");
                rt.block_on(serve(
                    std_listener,
                    addr,
                    handler,
                    recorded,
                    stop_rx,
                    refuse_rx,
                    tls,
                ));
                rt.shutdown_timeout(Duration::from_secs(1));
            })?;
        Ok(WebServer {
            addr,
            tls: with_tls,
            requests,
            refuse: refuse_tx,
            stop: Some(stop_tx),
            thread: Some(thread),
        })
    }

    /// Closes the listening port and every open connection (`true`:
    /// clients get "connection refused", like a host that is down), or
    /// listens again on the same port (`false`). Takes effect shortly
    /// after the call; [`WebServer::wait_refusing`] waits for it.
    pub fn set_refusing(&self, refuse: bool) {
        self.refuse.send_replace(refuse);
    }

    /// Waits (bounded) until connecting gives the answer `refusing` asks
    /// for; returns whether it did.
    pub fn wait_refusing(&self, refusing: bool, timeout: Duration) -> bool {
        let deadline = std::time::Instant::now() + timeout;
        loop {
            let refused = matches!(std::net::TcpStream::connect(self.addr),
                Err(e) if e.kind() == std::io::ErrorKind::ConnectionRefused);
            if refused == refusing {
                return true;
            }
            if std::time::Instant::now() >= deadline {
                return false;
            }
            std::thread::sleep(Duration::from_millis(10));
        }
    }

    /// The bound address.
    pub fn addr(&self) -> SocketAddr {
        self.addr
    }

    /// `http://ip:port`, or `https://` for a TLS server.
    pub fn url(&self) -> String {
        let scheme = if self.tls { "https" } else { "http" };
        format!("{scheme}://{}", self.addr)
    }

    /// Every request received so far, in order.
    pub fn requests(&self) -> Vec<Request> {
        self.requests.lock().unwrap().clone()
    }
}

impl Drop for WebServer {
    fn drop(&mut self) {
        if let Some(stop) = self.stop.take() {
            let _ = stop.send(());
        }
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
    }
}

async fn accept_opt(
    l: &Option<tokio::net::TcpListener>,
) -> std::io::Result<(tokio::net::TcpStream, SocketAddr)> {
    match l {
        Some(l) => l.accept().await,
        None => std::future::pending().await,
    }
}

async fn serve(
    listener: std::net::TcpListener,
    addr: SocketAddr,
    handler: Handler,
    recorded: Arc<Mutex<Vec<Request>>>,
    mut stop: oneshot::Receiver<()>,
    mut refuse: tokio::sync::watch::Receiver<bool>,
    tls: Option<TlsAcceptor>,
) {
    let mut listener = tokio::net::TcpListener::from_std(listener).ok();
    let mut tasks = tokio::task::JoinSet::new();
    loop {
        tokio::select! {
            _ = &mut stop => break,
            changed = refuse.changed() => {
                if changed.is_err() {
                    break;
                }
                let refusing = *refuse.borrow_and_update();
                if refusing {
                    listener = None;
                    tasks.abort_all();
                } else if listener.is_none() {
                    // The port was ours; take it back (bounded retries).
                    for _ in 0..100 {
                        match bind_reuse(addr) {
                            Ok(l) => {
                                listener = Some(l);
                                break;
                            }
                            Err(_) => tokio::time::sleep(Duration::from_millis(10)).await,
                        }
                    }
                }
            }
            accepted = accept_opt(&listener) => {
                let Ok((stream, _)) = accepted else { continue };
                let handler = handler.clone();
                let recorded = recorded.clone();
                let tls = tls.clone();
                tasks.spawn(async move {
                    match tls {
                        None => serve_connection(stream, handler, recorded).await,
                        Some(acceptor) => {
                            // A failed handshake (client distrusts the
                            // certificate) just ends the connection.
                            if let Ok(stream) = acceptor.accept(stream).await {
                                serve_connection(stream, handler, recorded).await;
                            }
                        }
                    }
                });
            }
        }
    }
    tasks.abort_all();
}

fn bind_reuse(addr: SocketAddr) -> std::io::Result<tokio::net::TcpListener> {
    let socket = if addr.is_ipv4() {
        tokio::net::TcpSocket::new_v4()?
    } else {
        tokio::net::TcpSocket::new_v6()?
    };
    socket.set_reuseaddr(true)?;
    socket.bind(addr)?;
    socket.listen(128)
}

/// The byte range a `Range` header asks of a body of `len` bytes:
/// `Ok(None)` for no (or an unsupported) range, `Err(())` when it cannot
/// be satisfied.
fn requested_range(request: &Request, len: usize) -> Result<Option<(usize, usize)>, ()> {
    let Some(spec) = request
        .header("range")
        .and_then(|v| v.trim().strip_prefix("bytes="))
    else {
        return Ok(None);
    };
    if spec.contains(',') {
        // Multipart ranges: answer with the whole body, as servers may.
        return Ok(None);
    }
    let (a, b) = spec.split_once('-').ok_or(())?;
    let (a, b) = (a.trim(), b.trim());
    let (start, end) = if a.is_empty() {
        // Suffix: the last `b` bytes.
        let n: usize = b.parse().map_err(|_| ())?;
        if n == 0 {
            return Err(());
        }
        (len.saturating_sub(n), len.saturating_sub(1))
    } else {
        let start: usize = a.parse().map_err(|_| ())?;
        let end = if b.is_empty() {
            len.saturating_sub(1)
        } else {
            b.parse::<usize>()
                .map_err(|_| ())?
                .min(len.saturating_sub(1))
        };
        (start, end)
    };
    if len == 0 || start >= len || end < start {
        return Err(());
    }
    Ok(Some((start, end)))
}

async fn serve_connection<S>(stream: S, handler: Handler, recorded: Arc<Mutex<Vec<Request>>>)
where
    S: tokio::io::AsyncRead + tokio::io::AsyncWrite + Unpin + Send + 'static,
{
    let service = service_fn(move |req: hyper::Request<Incoming>| {
        let handler = handler.clone();
        let recorded = recorded.clone();
        async move { Ok::<_, Infallible>(answer(req, handler, recorded).await) }
    });
    // Connection errors (clients going away, truncation faults) are
    // expected here.
    let _ = http1::Builder::new()
        .timer(hyper_util::rt::TokioTimer::new())
        .serve_connection(TokioIo::new(stream), service)
        .await;
}

async fn answer(
    req: hyper::Request<Incoming>,
    handler: Handler,
    recorded: Arc<Mutex<Vec<Request>>>,
) -> hyper::Response<ReplyBody> {
    let (parts, body) = req.into_parts();
    let body = body
        .collect()
        .await
        .map(|b| b.to_bytes().to_vec())
        .unwrap_or_default();
    let request = Request {
        method: parts.method.to_string(),
        path: parts
            .uri
            .path_and_query()
            .map(|p| p.to_string())
            .unwrap_or_default(),
        headers: parts
            .headers
            .iter()
            .map(|(k, v)| {
                (
                    k.as_str().to_ascii_lowercase(),
                    String::from_utf8_lossy(v.as_bytes()).into_owned(),
                )
            })
            .collect(),
        body,
    };
    recorded.lock().unwrap().push(request.clone());
    let reply = handler(&request);
    let mut builder = hyper::Response::builder();
    // Byte ranges of 200 replies (image downloads resuming).
    let ranged = |builder: hyper::http::response::Builder, body: Bytes| match requested_range(
        &request,
        body.len(),
    ) {
        Ok(None) => (builder.header("accept-ranges", "bytes"), Some(body)),
        Ok(Some((start, end))) => (
            builder.status(206).header(
                "content-range",
                format!("bytes {start}-{end}/{}", body.len()),
            ),
            Some(body.slice(start..=end)),
        ),
        Err(()) => (
            builder
                .status(416)
                .header("content-range", format!("bytes */{}", body.len())),
            None,
        ),
    };
    let body = match reply {
        Reply::Full {
            status,
            headers,
            body,
        } => {
            builder = builder.status(status);
            for (k, v) in headers {
                builder = builder.header(k, v);
            }
            if status == 200 && request.method == "GET" {
                let (b, body) = ranged(builder, body);
                builder = b;
                ReplyBody::full(body.unwrap_or_default())
            } else {
                ReplyBody::full(body)
            }
        }
        Reply::Slow { body, chunk, delay } => {
            let (b, body) = ranged(builder, body);
            let body = body.unwrap_or_default();
            builder = b.header("content-length", body.len());
            ReplyBody::slow(body, chunk.max(1), delay)
        }
        Reply::Truncated { body, send } => {
            let (b, body) = ranged(builder, body);
            let body = body.unwrap_or_default();
            builder = b.header("content-length", body.len());
            ReplyBody::truncated(body.slice(..send.min(body.len())))
        }
        Reply::Hang => {
            std::future::pending::<()>().await;
            unreachable!()
        }
        Reply::Stream {
            status,
            headers,
            body,
        } => {
            builder = builder.status(status);
            for (k, v) in headers {
                builder = builder.header(k, v);
            }
            ReplyBody::stream(body.take())
        }
    };
    builder.body(body).expect("valid response")
}

/// A plain `GET` over a fresh TCP connection, returning the raw response
/// (status line, headers and body): for tests of the servers themselves.
pub fn raw_get(addr: &str, path: &str) -> String {
    use std::io::{Read, Write};
    let mut s = std::net::TcpStream::connect(addr).expect("connect");
    s.set_read_timeout(Some(Duration::from_secs(5)))
        .expect("timeout");
    write!(
        s,
        "GET {path} HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n"
    )
    .expect("write");
    let mut out = String::new();
    let _ = s.read_to_string(&mut out);
    out
}

/// Response body with optional pacing and truncation, or streamed.
pub struct ReplyBody {
    remaining: Bytes,
    chunk: usize,
    delay: Duration,
    sleep: Option<Pin<Box<tokio::time::Sleep>>>,
    fail_at_end: bool,
    stream: Option<tokio::sync::mpsc::UnboundedReceiver<Bytes>>,
    streaming: bool,
}

impl ReplyBody {
    fn full(body: Bytes) -> Self {
        let chunk = body.len().max(1);
        ReplyBody {
            remaining: body,
            chunk,
            delay: Duration::ZERO,
            sleep: None,
            fail_at_end: false,
            stream: None,
            streaming: false,
        }
    }

    fn stream(rx: Option<tokio::sync::mpsc::UnboundedReceiver<Bytes>>) -> Self {
        ReplyBody {
            remaining: Bytes::new(),
            chunk: 1,
            delay: Duration::ZERO,
            sleep: None,
            fail_at_end: false,
            stream: rx,
            streaming: true,
        }
    }

    fn slow(body: Bytes, chunk: usize, delay: Duration) -> Self {
        ReplyBody {
            remaining: body,
            chunk,
            delay,
            sleep: None,
            fail_at_end: false,
            stream: None,
            streaming: false,
        }
    }

    fn truncated(body: Bytes) -> Self {
        let chunk = body.len().max(1);
        ReplyBody {
            remaining: body,
            chunk,
            delay: Duration::ZERO,
            sleep: None,
            fail_at_end: true,
            stream: None,
            streaming: false,
        }
    }
}

impl Body for ReplyBody {
    type Data = Bytes;
    type Error = std::io::Error;

    fn poll_frame(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, Self::Error>>> {
        if self.streaming {
            let Some(rx) = self.stream.as_mut() else {
                return Poll::Ready(None);
            };
            return match rx.poll_recv(cx) {
                Poll::Ready(Some(chunk)) => Poll::Ready(Some(Ok(Frame::data(chunk)))),
                Poll::Ready(None) => {
                    self.stream = None;
                    Poll::Ready(None)
                }
                Poll::Pending => Poll::Pending,
            };
        }
        if self.remaining.is_empty() {
            if self.fail_at_end {
                // Let what was sent reach the client before the abort.
                let sleep = self
                    .sleep
                    .get_or_insert_with(|| Box::pin(tokio::time::sleep(Duration::from_millis(50))));
                if sleep.as_mut().poll(cx).is_pending() {
                    return Poll::Pending;
                }
                self.sleep = None;
                self.fail_at_end = false;
                // An error aborts the connection before the announced length.
                return Poll::Ready(Some(Err(std::io::Error::other("simulated truncation"))));
            }
            return Poll::Ready(None);
        }
        if !self.delay.is_zero() {
            let delay = self.delay;
            let sleep = self
                .sleep
                .get_or_insert_with(|| Box::pin(tokio::time::sleep(delay)));
            if sleep.as_mut().poll(cx).is_pending() {
                return Poll::Pending;
            }
            self.sleep = None;
        }
        let n = self.chunk.min(self.remaining.len());
        let chunk = self.remaining.split_to(n);
        Poll::Ready(Some(Ok(Frame::data(chunk))))
    }

    fn size_hint(&self) -> hyper::body::SizeHint {
        if self.fail_at_end || self.streaming {
            // The Content-Length header announces more than will come.
            hyper::body::SizeHint::default()
        } else {
            hyper::body::SizeHint::with_exact(self.remaining.len() as u64)
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn get(addr: SocketAddr, path: &str) -> String {
        raw_get(&addr.to_string(), path)
    }

    #[test]
    fn records_and_answers() {
        let server = WebServer::start("127.0.0.1", |r| {
            if r.path_only() == "/hello" {
                Reply::text("hi")
            } else {
                Reply::status(404)
            }
        })
        .unwrap();
        let out = get(server.addr(), "/hello?x=1");
        assert!(out.ends_with("hi"), "{out:?}");
        assert!(get(server.addr(), "/nope").starts_with("HTTP/1.1 404"));
        let reqs = server.requests();
        assert_eq!(reqs.len(), 2);
        assert_eq!(reqs[0].path, "/hello?x=1");
        assert_eq!(reqs[0].header("HOST"), Some("x"));
    }

    fn get_with(addr: SocketAddr, path: &str, header: &str) -> String {
        use std::io::{Read, Write};
        let mut s = std::net::TcpStream::connect(addr).unwrap();
        s.set_read_timeout(Some(Duration::from_secs(5))).unwrap();
        write!(
            s,
            "GET {path} HTTP/1.1\r\nHost: x\r\n{header}\r\nConnection: close\r\n\r\n"
        )
        .unwrap();
        let mut out = String::new();
        let _ = s.read_to_string(&mut out);
        out
    }

    #[test]
    fn ranges_are_served_from_every_body_kind() {
        let server = WebServer::start("127.0.0.1", |r| match r.path_only() {
            "/slow" => Reply::Slow {
                body: Bytes::from_static(b"0123456789"),
                chunk: 3,
                delay: Duration::from_millis(1),
            },
            _ => Reply::text("0123456789"),
        })
        .unwrap();
        let out = get_with(server.addr(), "/img", "Range: bytes=2-4");
        assert!(out.starts_with("HTTP/1.1 206"), "{out}");
        assert!(out.contains("content-range: bytes 2-4/10"), "{out}");
        assert!(out.ends_with("\r\n\r\n234"), "{out}");
        let out = get_with(server.addr(), "/slow", "Range: bytes=7-");
        assert!(
            out.starts_with("HTTP/1.1 206") && out.ends_with("789"),
            "{out}"
        );
        let out = get_with(server.addr(), "/img", "Range: bytes=-2");
        assert!(out.ends_with("89"), "{out}");
        let out = get_with(server.addr(), "/img", "Range: bytes=20-");
        assert!(out.starts_with("HTTP/1.1 416"), "{out}");
        assert!(out.contains("content-range: bytes */10"), "{out}");
        let out = get_with(server.addr(), "/img", "X-No-Range: 1");
        assert!(out.contains("accept-ranges: bytes") && out.ends_with("0123456789"));
    }

    #[test]
    fn streams_and_refuses() {
        let (tx, source) = StreamSource::channel();
        let source = Mutex::new(Some(source));
        let server = WebServer::start("127.0.0.1", move |_| match source.lock().unwrap().take() {
            Some(body) => Reply::Stream {
                status: 200,
                headers: vec![("content-type".into(), "text/event-stream".into())],
                body,
            },
            None => Reply::status(404),
        })
        .unwrap();
        let addr = server.addr();
        let reader = std::thread::spawn(move || get(addr, "/events"));
        tx.send(Bytes::from_static(b"data: one\n\n")).unwrap();
        tx.send(Bytes::from_static(b"data: two\n\n")).unwrap();
        drop(tx);
        let out = reader.join().unwrap();
        assert!(
            out.contains("data: one\n\n") && out.contains("data: two"),
            "{out}"
        );

        server.set_refusing(true);
        assert!(server.wait_refusing(true, Duration::from_secs(5)));
        server.set_refusing(false);
        assert!(server.wait_refusing(false, Duration::from_secs(5)));
        assert!(get(addr, "/again").starts_with("HTTP/1.1 404"));
    }

    #[test]
    fn truncated_replies_send_less_than_announced() {
        let server = WebServer::start("127.0.0.1", |_| Reply::Truncated {
            body: Bytes::from(vec![7u8; 1000]),
            send: 100,
        })
        .unwrap();
        let out = get(server.addr(), "/img");
        assert!(out.contains("content-length: 1000"), "{out:?}");
        let body = out.split("\r\n\r\n").nth(1).unwrap_or("");
        assert_eq!(body.len(), 100);
    }
}
