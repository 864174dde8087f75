//! A small HTTP/1.1 server for tests: every request is recorded and
//! answered by a handler closure, with faults (slow bodies, truncated
//! bodies, hangs) available as reply kinds.

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
        let thread = std::thread::Builder::new()
            .name(format!("labsim-web-{addr}"))
            .spawn(move || {
                let rt = tokio::runtime::Builder::new_current_thread()
                    .enable_all()
                    .build()
                    .expect("runtime");
                rt.block_on(serve(std_listener, handler, recorded, stop_rx, tls));
            })?;
        Ok(WebServer {
            addr,
            tls: with_tls,
            requests,
            stop: Some(stop_tx),
            thread: Some(thread),
        })
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

async fn serve(
    listener: std::net::TcpListener,
    handler: Handler,
    recorded: Arc<Mutex<Vec<Request>>>,
    mut stop: oneshot::Receiver<()>,
    tls: Option<TlsAcceptor>,
) {
    let listener = tokio::net::TcpListener::from_std(listener).expect("listener");
    let mut tasks = tokio::task::JoinSet::new();
    loop {
        tokio::select! {
            _ = &mut stop => break,
            accepted = listener.accept() => {
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
            ReplyBody::full(body)
        }
        Reply::Slow { body, chunk, delay } => {
            builder = builder.header("content-length", body.len());
            ReplyBody::slow(body, chunk.max(1), delay)
        }
        Reply::Truncated { body, send } => {
            builder = builder.header("content-length", body.len());
            ReplyBody::truncated(body.slice(..send.min(body.len())))
        }
        Reply::Hang => {
            std::future::pending::<()>().await;
            unreachable!()
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

/// Response body with optional pacing and truncation.
pub struct ReplyBody {
    remaining: Bytes,
    chunk: usize,
    delay: Duration,
    sleep: Option<Pin<Box<tokio::time::Sleep>>>,
    fail_at_end: bool,
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
        }
    }

    fn slow(body: Bytes, chunk: usize, delay: Duration) -> Self {
        ReplyBody {
            remaining: body,
            chunk,
            delay,
            sleep: None,
            fail_at_end: false,
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
        if self.fail_at_end {
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
