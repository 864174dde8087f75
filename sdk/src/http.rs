//! HTTP to named endpoints (`control-host`) and to URLs the job provides.
//!
//! ```no_run
//! use std::time::Duration;
//! use testflinger_connector::prelude::*;
//! # fn f() -> testflinger_connector::Result<()> {
//! let health = http::call("control-host", http::Request::get("/health").timeout(Duration::from_secs(3)))?;
//! let page = http::fetch(http::Request::get("http://10.0.0.5:8080/ready"))?;
//! # Ok(()) }
//! ```

use std::time::Duration;

use serde::Serialize;
use serde::de::DeserializeOwned;

use crate::error::{Error, ErrorKind, Result};
use crate::sys;

/// A request being built.
#[derive(Debug, Clone)]
pub struct Request {
    pub(crate) method: String,
    pub(crate) url: String,
    pub(crate) headers: Vec<(String, String)>,
    pub(crate) body: Vec<u8>,
    pub(crate) timeout: Duration,
}

impl Request {
    /// A request with `method` to `url` (a path for [`call`], an absolute
    /// URL for [`fetch`]); 30 s deadline.
    pub fn new(method: &str, url: &str) -> Self {
        Request {
            method: method.to_string(),
            url: url.to_string(),
            headers: Vec::new(),
            body: Vec::new(),
            timeout: Duration::from_secs(30),
        }
    }

    /// A GET request.
    pub fn get(url: &str) -> Self {
        Request::new("GET", url)
    }

    /// A POST request.
    pub fn post(url: &str) -> Self {
        Request::new("POST", url)
    }

    /// Adds a header.
    pub fn header(mut self, name: &str, value: &str) -> Self {
        self.headers.push((name.to_string(), value.to_string()));
        self
    }

    /// Sets the body.
    pub fn body(mut self, body: impl Into<Vec<u8>>) -> Self {
        self.body = body.into();
        self
    }

    /// Sets a JSON body (and its content type).
    pub fn json<T: Serialize>(self, value: &T) -> Result<Self> {
        let body = serde_json::to_vec(value)?;
        Ok(self.header("content-type", "application/json").body(body))
    }

    /// Sets the deadline of the whole exchange.
    pub fn timeout(mut self, timeout: Duration) -> Self {
        self.timeout = timeout;
        self
    }

    /// The method.
    pub fn method(&self) -> &str {
        &self.method
    }

    /// The URL (a path for [`call`]).
    pub fn url(&self) -> &str {
        &self.url
    }

    /// The body.
    pub fn body_bytes(&self) -> &[u8] {
        &self.body
    }
}

/// A response.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Response {
    /// HTTP status code.
    pub status: u16,
    /// Headers, names in lower case.
    pub headers: Vec<(String, String)>,
    /// The whole body.
    pub body: Vec<u8>,
}

impl Response {
    /// A response with `status` and `body` (for tests and fakes).
    pub fn new(status: u16, body: impl Into<Vec<u8>>) -> Self {
        Response {
            status,
            headers: Vec::new(),
            body: body.into(),
        }
    }

    /// Whether the status is 2xx.
    pub fn is_success(&self) -> bool {
        (200..300).contains(&self.status)
    }

    /// The body as text (invalid UTF-8 replaced).
    pub fn text(&self) -> String {
        String::from_utf8_lossy(&self.body).into_owned()
    }

    /// The body parsed as JSON.
    pub fn json<T: DeserializeOwned>(&self) -> Result<T> {
        serde_json::from_slice(&self.body).map_err(|e| {
            Error::new(
                ErrorKind::Invalid,
                format!("response is not the expected JSON: {e}"),
            )
        })
    }
}

/// Sends `req` to the named endpoint; `req`'s URL is a path.
pub fn call(endpoint: &str, req: Request) -> Result<Response> {
    sys::http_call(endpoint, &req)
}

/// Sends `req` to its absolute URL, which must come from the job.
pub fn fetch(req: Request) -> Result<Response> {
    sys::http_fetch(&req)
}
