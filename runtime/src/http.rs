//! Outbound HTTP for connectors and for the runtime itself: named
//! endpoints, URLs the job provides, and streaming downloads for
//! `transfer`. What a connector may reach is decided by the gate
//! ([`crate::capability`]); this client resolves and sends.
//!
//! Named endpoints ([`crate::endpoints`]):
//! - `control-host`: `http://<control_host>:8000` (or
//!   `connector_runtime.control_host_url`);
//! - `maas`: the MAAS region API at `maas_url` (e.g.
//!   `http://maas.lab:5240/MAAS`); every request is signed by the host with
//!   the device's `maas_api_key` ([`crate::maas_auth`]);
//! - the lab's own, from `endpoints:` in the lab file and
//!   `connector_runtime.endpoints`: a base URL, requests sent as they are,
//!   and redirects never followed (the base URL is all the lab vouched
//!   for).

use std::sync::OnceLock;
use std::time::Duration;

use futures::StreamExt;

use crate::capability::{self, Refusal, UrlGrants};
use crate::config::DeviceConfig;
use crate::endpoints::{self, Endpoints};
use crate::error::redact_url;
use crate::maas_auth::{self, MaasCredentials};

/// Port of the control host's REST API (reference constant).
pub const CONTROL_HOST_PORT: u16 = 8000;

/// Redirects followed per request (reqwest's default).
pub const MAX_REDIRECTS: usize = 10;

/// Why an HTTP exchange failed.
#[derive(Debug, thiserror::Error)]
pub enum HttpError {
    #[error(
        "unknown HTTP endpoint `{name}`; known endpoints: {known}; a lab defines its own under `endpoints:` in the lab file or `connector_runtime.endpoints` in the device config"
    )]
    UnknownEndpoint { name: String, known: String },
    #[error("HTTP endpoint `{endpoint}` is not configured: set `{key}` in the device config")]
    NotConfigured { endpoint: String, key: String },
    #[error("HTTP endpoint `{endpoint}` cannot be used: {message}")]
    BadConfig { endpoint: String, message: String },
    #[error(
        "requests to HTTP endpoint `{0}` must not carry an Authorization header: the host signs them"
    )]
    OwnAuthorization(String),
    /// The path would leave the endpoint's base URL (a policy refusal).
    #[error("{0}")]
    Refused(Refusal),
    #[error("invalid request: {0}")]
    Invalid(String),
    #[error("{method} {} was not followed: {message}", redact_url(.url))]
    Redirect {
        method: String,
        url: String,
        message: String,
    },
    #[error("{method} {} timed out after {secs} s", redact_url(.url))]
    Timeout {
        method: String,
        url: String,
        secs: u64,
    },
    #[error("{method} {} failed: {message}", redact_url(.url))]
    Transport {
        method: String,
        url: String,
        message: String,
    },
    #[error("response body of {} is larger than the limit of {max} bytes", redact_url(.url))]
    TooBig { url: String, max: u64 },
    #[error("cannot set up the HTTP client: {0}")]
    Setup(String),
}

/// A request, already resolved to an absolute URL.
#[derive(Debug, Clone)]
pub struct Request {
    pub method: String,
    pub url: String,
    pub headers: Vec<(String, String)>,
    pub body: Vec<u8>,
    pub timeout: Duration,
}

impl Request {
    /// A body-less GET.
    pub fn get(url: impl Into<String>, timeout: Duration) -> Self {
        Request {
            method: "GET".into(),
            url: url.into(),
            headers: Vec::new(),
            body: Vec::new(),
            timeout,
        }
    }
}

/// A response with its whole body.
#[derive(Debug, Clone)]
pub struct Response {
    pub status: u16,
    pub headers: Vec<(String, String)>,
    pub body: Vec<u8>,
}

/// The invocation's HTTP client.
pub struct HttpClient {
    client: OnceLock<Result<reqwest::Client, String>>,
    /// For lab-defined endpoints: follows no redirect.
    direct: OnceLock<Result<reqwest::Client, String>>,
    /// For the built-in endpoints: same-origin redirects only.
    built_in: OnceLock<Result<reqwest::Client, String>>,
    extra_ca: Vec<std::path::PathBuf>,
    control_host_base: Option<String>,
    /// The lab's URL grants; redirects must stay within them.
    url_grants: UrlGrants,
    /// Lab-defined endpoints, checked when the lab file and the device
    /// config were read.
    endpoints: Endpoints,
    /// `maas_url`, checked when first used.
    maas_base: Option<String>,
    /// `testflinger_server`, checked when first used.
    testflinger_base: Option<String>,
    /// `maas_api_key`, parsed with the config; a malformed key is reported
    /// when the endpoint is first used (naming the key, never its value).
    maas_credentials: Option<Result<MaasCredentials, maas_auth::CredentialsError>>,
}

impl HttpClient {
    /// Prepares the client for `config`, with the device config's own
    /// endpoints (the TLS setup itself is deferred to the first request).
    pub fn new(config: &DeviceConfig) -> anyhow::Result<Self> {
        let control_host_base = config.runtime.control_host_url.clone().or_else(|| {
            config
                .string("control_host")
                .map(|h| format!("http://{}:{CONTROL_HOST_PORT}", bracket_v6(&h)))
        });
        Ok(HttpClient {
            client: OnceLock::new(),
            direct: OnceLock::new(),
            built_in: OnceLock::new(),
            extra_ca: config.runtime.extra_ca_certs.clone(),
            control_host_base: control_host_base.map(|b| b.trim_end_matches('/').to_string()),
            url_grants: UrlGrants::default(),
            endpoints: endpoints::merged(&Endpoints::new(), &config.runtime.endpoints),
            maas_base: config
                .string(maas_auth::URL_KEY)
                .map(|b| b.trim().trim_end_matches('/').to_string()),
            maas_credentials: config
                .string(maas_auth::API_KEY_KEY)
                .map(|k| MaasCredentials::parse(&k)),
            testflinger_base: config
                .string(endpoints::TESTFLINGER_SERVER_KEY)
                .map(|b| b.trim().trim_end_matches('/').to_string()),
        })
    }

    /// Narrows where redirects may lead to the lab's URL grants (see
    /// [`redirect_policy`]). Must be called before the first request.
    pub fn with_url_grants(mut self, grants: UrlGrants) -> Self {
        self.url_grants = grants;
        self
    }

    /// Adds the lab file's endpoints under the device config's (which win).
    /// Must be called before the first request.
    pub fn with_lab_endpoints(mut self, lab: &Endpoints) -> Self {
        self.endpoints = endpoints::merged(lab, &self.endpoints);
        self
    }

    /// The shared reqwest client (rustls, extra CAs from the config,
    /// redirects checked by [`redirect_policy`]).
    pub fn client(&self) -> Result<&reqwest::Client, HttpError> {
        self.client
            .get_or_init(|| {
                client_builder(&self.extra_ca).and_then(|b| {
                    b.redirect(redirect_policy(self.url_grants.clone()))
                        .build()
                        .map_err(|e| e.to_string())
                })
            })
            .as_ref()
            .map_err(|e| HttpError::Setup(e.clone()))
    }

    /// The client for lab-defined endpoints: it follows no redirect (a 3xx
    /// answer is the response).
    fn direct_client(&self) -> Result<&reqwest::Client, HttpError> {
        self.direct
            .get_or_init(|| {
                client_builder(&self.extra_ca).and_then(|b| {
                    b.redirect(reqwest::redirect::Policy::none())
                        .build()
                        .map_err(|e| e.to_string())
                })
            })
            .as_ref()
            .map_err(|e| HttpError::Setup(e.clone()))
    }

    /// The client for the built-in endpoints (`control-host`, `maas`):
    /// redirects on the same origin only ([`capability::endpoint_redirect`]).
    fn built_in_client(&self) -> Result<&reqwest::Client, HttpError> {
        self.built_in
            .get_or_init(|| {
                client_builder(&self.extra_ca).and_then(|b| {
                    b.redirect(endpoint_redirect_policy())
                        .build()
                        .map_err(|e| e.to_string())
                })
            })
            .as_ref()
            .map_err(|e| HttpError::Setup(e.clone()))
    }

    /// Base URL of a named endpoint.
    pub fn endpoint_base(&self, endpoint: &str) -> Result<&str, HttpError> {
        match endpoint {
            endpoints::CONTROL_HOST => {
                self.control_host_base
                    .as_deref()
                    .ok_or_else(|| HttpError::NotConfigured {
                        endpoint: endpoint.into(),
                        key: "control_host".into(),
                    })
            }
            endpoints::MAAS => {
                let base = self
                    .maas_base
                    .as_deref()
                    .ok_or_else(|| HttpError::NotConfigured {
                        endpoint: endpoint.into(),
                        key: maas_auth::URL_KEY.into(),
                    })?;
                endpoints::check_base_url(base).map_err(|problem| HttpError::BadConfig {
                    endpoint: endpoint.into(),
                    message: format!(
                        "device config key `{}` {problem}; it must be the MAAS URL, like http://maas.example:5240/MAAS",
                        maas_auth::URL_KEY
                    ),
                })?;
                Ok(base)
            }
            endpoints::TESTFLINGER_SERVER => {
                let key = endpoints::TESTFLINGER_SERVER_KEY;
                let base =
                    self.testflinger_base
                        .as_deref()
                        .ok_or_else(|| HttpError::NotConfigured {
                            endpoint: endpoint.into(),
                            key: key.into(),
                        })?;
                endpoints::check_base_url(base).map_err(|problem| HttpError::BadConfig {
                    endpoint: endpoint.into(),
                    message: format!(
                        "device config key `{key}` {problem}; it must be the Testflinger server's URL, like https://testflinger.example.com"
                    ),
                })?;
                Ok(base)
            }
            other => match self.endpoints.get(other) {
                Some(base) => Ok(base),
                None => Err(HttpError::UnknownEndpoint {
                    name: other.into(),
                    known: endpoints::BUILT_IN
                        .iter()
                        .copied()
                        .chain(self.endpoints.keys().map(String::as_str))
                        .collect::<Vec<_>>()
                        .join(", "),
                }),
            },
        }
    }

    /// Adds the credentials the host keeps for `endpoint` to `headers`
    /// (today: the OAuth signature of `maas`). A connector may not bring
    /// its own `Authorization` header to such an endpoint.
    pub fn sign(
        &self,
        endpoint: &str,
        headers: &mut Vec<(String, String)>,
    ) -> Result<(), HttpError> {
        if endpoint != endpoints::MAAS {
            return Ok(());
        }
        if headers
            .iter()
            .any(|(name, _)| name.eq_ignore_ascii_case("authorization"))
        {
            return Err(HttpError::OwnAuthorization(endpoint.into()));
        }
        let credentials = match &self.maas_credentials {
            None => {
                return Err(HttpError::NotConfigured {
                    endpoint: endpoint.into(),
                    key: maas_auth::API_KEY_KEY.into(),
                });
            }
            Some(Err(e)) => {
                return Err(HttpError::BadConfig {
                    endpoint: endpoint.into(),
                    message: e.to_string(),
                });
            }
            Some(Ok(c)) => c,
        };
        headers.push(("authorization".into(), credentials.sign_now()));
        Ok(())
    }

    /// Absolute URL of `path` on a named endpoint; the gate's rule keeps
    /// it below the endpoint's base URL ([`capability::endpoint_url`]).
    pub fn endpoint_url(&self, endpoint: &str, path: &str) -> Result<String, HttpError> {
        let base = self.endpoint_base(endpoint)?;
        capability::endpoint_url(endpoint, base, path).map_err(|r| match r {
            Refusal::Invalid(m) => HttpError::Invalid(m),
            denied => HttpError::Refused(denied),
        })
    }

    /// Sends `req` to the named endpoint `endpoint`: `req.url` is the path
    /// (with query) below its base URL; the host adds the endpoint's
    /// credentials; a lab-defined endpoint's redirects are not followed.
    pub async fn call_endpoint(
        &self,
        endpoint: &str,
        mut req: Request,
        max_body: u64,
    ) -> Result<Response, HttpError> {
        req.url = self.endpoint_url(endpoint, &req.url)?;
        self.sign(endpoint, &mut req.headers)?;
        let client = if endpoints::BUILT_IN.contains(&endpoint) {
            self.built_in_client()?
        } else {
            self.direct_client()?
        };
        self.send_with(client, req, max_body).await
    }

    /// Sends `req` and reads the whole body, refusing bodies over `max_body`.
    pub async fn send(&self, req: Request, max_body: u64) -> Result<Response, HttpError> {
        self.send_with(self.client()?, req, max_body).await
    }

    async fn send_with(
        &self,
        client: &reqwest::Client,
        req: Request,
        max_body: u64,
    ) -> Result<Response, HttpError> {
        let method = reqwest::Method::from_bytes(req.method.as_bytes())
            .map_err(|_| HttpError::Invalid(format!("bad HTTP method `{}`", req.method)))?;
        let url = req.url.clone();
        let timeout = req.timeout;
        let transport = |e: reqwest::Error| classify(&req.method, &url, timeout, e);
        let fut = async {
            let mut builder = client.request(method, &url);
            for (name, value) in &req.headers {
                builder = builder.header(name, value);
            }
            if !req.body.is_empty() {
                builder = builder.body(req.body.clone());
            }
            let response = builder.send().await.map_err(transport)?;
            let status = response.status().as_u16();
            let headers = response
                .headers()
                .iter()
                .map(|(k, v)| {
                    (
                        k.to_string(),
                        String::from_utf8_lossy(v.as_bytes()).into_owned(),
                    )
                })
                .collect();
            if response.content_length().is_some_and(|l| l > max_body) {
                return Err(HttpError::TooBig {
                    url: url.clone(),
                    max: max_body,
                });
            }
            let mut body = Vec::new();
            let mut stream = response.bytes_stream();
            while let Some(chunk) = stream.next().await {
                let chunk = chunk.map_err(transport)?;
                if body.len() as u64 + chunk.len() as u64 > max_body {
                    return Err(HttpError::TooBig {
                        url: url.clone(),
                        max: max_body,
                    });
                }
                body.extend_from_slice(&chunk);
            }
            Ok(Response {
                status,
                headers,
                body,
            })
        };
        match tokio::time::timeout(timeout, fut).await {
            Ok(result) => result,
            Err(_) => Err(HttpError::Timeout {
                method: req.method.clone(),
                url: req.url.clone(),
                secs: timeout.as_secs(),
            }),
        }
    }
}

/// A reqwest client (rustls) that also trusts the PEM certificates in
/// `extra_ca`.
pub fn build_client(extra_ca: &[std::path::PathBuf]) -> Result<reqwest::Client, String> {
    client_builder(extra_ca)?.build().map_err(|e| e.to_string())
}

/// A client builder with our user agent, trusting the PEM certificates in
/// `extra_ca` too.
fn client_builder(extra_ca: &[std::path::PathBuf]) -> Result<reqwest::ClientBuilder, String> {
    let mut builder = reqwest::Client::builder().user_agent(concat!(
        "testflinger-device-connectors/",
        env!("CARGO_PKG_VERSION")
    ));
    for path in extra_ca {
        let pem = std::fs::read(path)
            .map_err(|e| format!("cannot read CA certificate {}: {e}", path.display()))?;
        let cert = reqwest::Certificate::from_pem(&pem)
            .map_err(|e| format!("invalid CA certificate {}: {e}", path.display()))?;
        builder = builder.add_root_certificate(cert);
    }
    Ok(builder)
}

/// Why [`redirect_policy`] refused a redirect.
#[derive(Debug)]
struct RedirectRefused(String);

impl std::fmt::Display for RedirectRefused {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(&self.0)
    }
}

impl std::error::Error for RedirectRefused {}

/// The redirect policy of connector-visible requests: at most
/// [`MAX_REDIRECTS`] hops, each allowed by the gate's rule
/// ([`UrlGrants::redirect`]).
pub fn redirect_policy(grants: UrlGrants) -> reqwest::redirect::Policy {
    reqwest::redirect::Policy::custom(move |attempt| {
        if attempt.previous().len() >= MAX_REDIRECTS {
            let msg = format!("more than {MAX_REDIRECTS} redirects");
            return attempt.error(RedirectRefused(msg));
        }
        // reqwest itself never follows a redirect to another scheme than
        // http(s): it returns the 3xx response.
        match grants.redirect(attempt.previous().last(), attempt.url()) {
            Ok(()) => attempt.follow(),
            Err(msg) => attempt.error(RedirectRefused(msg)),
        }
    })
}

/// The redirect policy of the built-in named endpoints: at most
/// [`MAX_REDIRECTS`] hops, each on the origin it leaves.
fn endpoint_redirect_policy() -> reqwest::redirect::Policy {
    reqwest::redirect::Policy::custom(move |attempt| {
        if attempt.previous().len() >= MAX_REDIRECTS {
            let msg = format!("more than {MAX_REDIRECTS} redirects");
            return attempt.error(RedirectRefused(msg));
        }
        match capability::endpoint_redirect(attempt.previous().last(), attempt.url()) {
            Ok(()) => attempt.follow(),
            Err(msg) => attempt.error(RedirectRefused(msg)),
        }
    })
}

fn classify(method: &str, url: &str, timeout: Duration, e: reqwest::Error) -> HttpError {
    if e.is_redirect() {
        let mut source = std::error::Error::source(&e);
        while let Some(s) = source {
            if let Some(refused) = s.downcast_ref::<RedirectRefused>() {
                return HttpError::Redirect {
                    method: method.into(),
                    url: url.into(),
                    message: refused.0.clone(),
                };
            }
            source = s.source();
        }
    }
    if e.is_timeout() {
        return HttpError::Timeout {
            method: method.into(),
            url: url.into(),
            secs: timeout.as_secs(),
        };
    }
    HttpError::Transport {
        method: method.into(),
        url: url.into(),
        message: crate::error::chain(&e),
    }
}

/// Wraps an IPv6 literal in brackets for use in a URL.
pub fn bracket_v6(host: &str) -> String {
    if host.contains(':') && !host.starts_with('[') {
        format!("[{host}]")
    } else {
        host.to_string()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::path::Path;

    #[test]
    fn the_testflinger_server_comes_from_the_device_config() {
        let http = |yaml: &str| {
            HttpClient::new(&DeviceConfig::parse(Path::new("c"), yaml).unwrap()).unwrap()
        };
        let server = http("testflinger_server: 'https://tf.lab:8443/'\n");
        assert_eq!(
            server
                .endpoint_url("testflinger-server", "/v1/job")
                .unwrap(),
            "https://tf.lab:8443/v1/job"
        );
        assert!(matches!(
            server.endpoint_url("testflinger-server", "/../admin"),
            Err(HttpError::Refused(Refusal::Denied(_)))
        ));
        assert!(matches!(
            http("device_ip: 10.0.0.1\n").endpoint_url("testflinger-server", "/v1/job"),
            Err(HttpError::NotConfigured { key, .. }) if key == "testflinger_server"
        ));
        let err = http("testflinger_server: tf.lab\n")
            .endpoint_url("testflinger-server", "/v1/job")
            .unwrap_err()
            .to_string();
        assert!(
            err.contains("testflinger_server") && err.contains("is not a URL"),
            "{err}"
        );
        // The host adds no credentials of its own to it.
        let mut headers = Vec::new();
        server.sign("testflinger-server", &mut headers).unwrap();
        assert!(headers.is_empty());
    }

    #[test]
    fn endpoints_resolve_below_their_base() {
        let config = DeviceConfig::parse(
            Path::new("c"),
            "control_host: ch\nconnector_runtime: {endpoints: {mirror: 'http://mirror.lab/ubuntu/'}}\n",
        )
        .unwrap();
        let http = HttpClient::new(&config)
            .unwrap()
            .with_lab_endpoints(&Endpoints::from([
                ("mirror".into(), "http://lab-wide/".into()),
                ("seed".into(), "http://seed.lab:8080".into()),
            ]));
        assert_eq!(
            http.endpoint_url("control-host", "/health").unwrap(),
            "http://ch:8000/health"
        );
        assert!(matches!(
            http.endpoint_url("control-host", "health"),
            Err(HttpError::Invalid(_))
        ));
        assert!(matches!(
            http.endpoint_url("maas", "/"),
            Err(HttpError::NotConfigured { key, .. }) if key == "maas_url"
        ));
        // The device config's definition wins over the lab file's.
        assert_eq!(
            http.endpoint_url("mirror", "/dists/noble").unwrap(),
            "http://mirror.lab/ubuntu/dists/noble"
        );
        assert_eq!(
            http.endpoint_url("seed", "/x").unwrap(),
            "http://seed.lab:8080/x"
        );
        assert!(matches!(
            http.endpoint_url("mirror", "/../x"),
            Err(HttpError::Refused(Refusal::Denied(_)))
        ));
        let err = http.endpoint_url("bmc", "/").unwrap_err().to_string();
        assert!(
            err.contains("known endpoints: control-host, maas, testflinger-server, mirror, seed"),
            "{err}"
        );
        // Other endpoints are not signed.
        let mut headers = vec![("authorization".to_string(), "Basic x".to_string())];
        http.sign("control-host", &mut headers).unwrap();
        http.sign("mirror", &mut headers).unwrap();
        assert_eq!(headers.len(), 1);
    }

    fn client(yaml: &str) -> HttpClient {
        let config = DeviceConfig::parse(Path::new("c"), yaml).unwrap();
        HttpClient::new(&config).unwrap()
    }

    #[test]
    fn maas_requests_are_signed_by_the_host() {
        let http = client("maas_url: http://maas:5240/MAAS/\nmaas_api_key: ck:tk:TOPSECRET\n");
        assert_eq!(
            http.endpoint_url("maas", "/api/2.0/version/").unwrap(),
            "http://maas:5240/MAAS/api/2.0/version/"
        );
        let mut headers = vec![("accept".to_string(), "application/json".to_string())];
        http.sign("maas", &mut headers).unwrap();
        assert_eq!(headers.len(), 2);
        assert_eq!(headers[1].0, "authorization");
        assert!(
            headers[1].1.starts_with("OAuth oauth_version=\"1.0\", oauth_signature_method=\"PLAINTEXT\", oauth_consumer_key=\"ck\", oauth_token=\"tk\", oauth_signature=\"&TOPSECRET\""),
            "{}",
            headers[1].1
        );
        // A connector cannot bring (or overwrite) the credentials.
        let mut own = vec![("Authorization".to_string(), "OAuth forged".to_string())];
        let err = http.sign("maas", &mut own).unwrap_err();
        assert!(matches!(err, HttpError::OwnAuthorization(_)), "{err}");
    }

    #[test]
    fn maas_configuration_problems_name_the_key_not_the_secret() {
        let http = client("maas_url: http://maas:5240/MAAS\n");
        let err = http.sign("maas", &mut Vec::new()).unwrap_err().to_string();
        assert!(err.contains("set `maas_api_key`"), "{err}");
        let http = client("maas_url: http://maas:5240/MAAS\nmaas_api_key: ck:TOPSECRET\n");
        let err = http.sign("maas", &mut Vec::new()).unwrap_err().to_string();
        assert!(
            err.contains("maas_api_key") && err.contains("2 part"),
            "{err}"
        );
        assert!(!err.contains("TOPSECRET"), "{err}");
        let http = client("maas_url: maas.lab:5240\nmaas_api_key: a:b:c\n");
        let err = http
            .endpoint_url("maas", "/api/2.0/")
            .unwrap_err()
            .to_string();
        assert!(err.contains("maas_url") && err.contains("http://"), "{err}");
        let http = client("maas_url: ftp://maas.lab/MAAS\n");
        let err = http
            .endpoint_url("maas", "/api/2.0/")
            .unwrap_err()
            .to_string();
        assert!(err.contains("scheme `ftp`"), "{err}");
    }

    /// A granted (or job-named) server cannot bounce the host to a URL the
    /// connector could not fetch itself.
    #[tokio::test]
    async fn redirects_stay_within_the_url_grants() {
        use labsim::web::{Reply, WebServer};
        let inner = WebServer::start("127.0.0.1", |_| Reply::text("INTERNAL")).unwrap();
        let inner_url = inner.url();
        let outer = WebServer::start("127.0.0.1", move |r| {
            let to = match r.path_only() {
                "/away" => format!("{inner_url}/secret"),
                "/here" => "/final".to_string(),
                "/file" => "file:///etc/passwd".to_string(),
                _ => return Reply::text("outer"),
            };
            Reply::Full {
                status: 302,
                headers: vec![("location".into(), to)],
                body: Default::default(),
            }
        })
        .unwrap();
        let config = DeviceConfig::parse(Path::new("c"), "{}").unwrap();
        let pattern = crate::capability::UrlPattern::parse(&outer.url()).unwrap();
        let http = HttpClient::new(&config)
            .unwrap()
            .with_url_grants(UrlGrants::new(vec![pattern]));
        let get =
            |path: &str| Request::get(format!("{}{path}", outer.url()), Duration::from_secs(5));
        let err = http.send(get("/away"), 1 << 20).await.unwrap_err();
        assert!(matches!(err, HttpError::Redirect { .. }), "{err}");
        assert!(
            err.to_string().contains("is not covered by the URL grants"),
            "{err}"
        );
        assert!(inner.requests().is_empty());
        // Same origin is fine, and so is anything without URL grants.
        let ok = http.send(get("/here"), 1 << 20).await.unwrap();
        assert_eq!(ok.body, b"outer");
        let not_followed = http.send(get("/file"), 1 << 20).await.unwrap();
        assert_eq!(not_followed.status, 302);
        let open = HttpClient::new(&config).unwrap();
        let ok = open.send(get("/away"), 1 << 20).await.unwrap();
        assert_eq!(ok.body, b"INTERNAL");
    }

    /// A control host (or MAAS) that answers with a redirect to another
    /// address does not hand that address's answer to the connector, and a
    /// 307 does not replay a POST body there; same-origin redirects still
    /// work (issue 15, item 2).
    #[tokio::test]
    async fn built_in_endpoints_follow_same_origin_redirects_only() {
        use labsim::web::{Reply, WebServer};
        let elsewhere = WebServer::start("127.0.0.1", |_| Reply::text("ELSEWHERE")).unwrap();
        let to = elsewhere.url();
        let control = WebServer::start("127.0.0.1", move |r| {
            let (status, location) = match r.path_only() {
                "/away" => (302, format!("{to}/x")),
                "/post" => (307, format!("{to}/y")),
                "/moved" => (301, "/final".to_string()),
                _ => return Reply::text("control"),
            };
            Reply::Full {
                status,
                headers: vec![("location".into(), location)],
                body: Default::default(),
            }
        })
        .unwrap();
        let config = DeviceConfig::parse(
            Path::new("c"),
            &format!(
                "connector_runtime:\n  control_host_url: {}\n",
                control.url()
            ),
        )
        .unwrap();
        let http = HttpClient::new(&config).unwrap();
        let call = |method: &str, path: &str| {
            let mut req = Request::get(path, Duration::from_secs(5));
            req.method = method.into();
            req.body = b"secret body".to_vec();
            http.call_endpoint(endpoints::CONTROL_HOST, req, 1 << 20)
        };
        let err = call("GET", "/away").await.unwrap_err();
        assert!(matches!(err, HttpError::Redirect { .. }), "{err}");
        assert!(err.to_string().contains("another address"), "{err}");
        let err = call("POST", "/post").await.unwrap_err();
        assert!(matches!(err, HttpError::Redirect { .. }), "{err}");
        assert!(elsewhere.requests().is_empty());
        let ok = call("GET", "/moved").await.unwrap();
        assert_eq!(ok.body, b"control");
    }

    /// The lab vouched for a lab-defined endpoint's base URL only: its
    /// redirects are answers, not followed, even on the same origin.
    #[tokio::test]
    async fn lab_endpoints_follow_no_redirect() {
        use labsim::web::{Reply, WebServer};
        let server = WebServer::start("127.0.0.1", |r| match r.path_only() {
            "/base/moved" => Reply::Full {
                status: 301,
                headers: vec![("location".into(), "/elsewhere".into())],
                body: Default::default(),
            },
            _ => Reply::text("content"),
        })
        .unwrap();
        let config = DeviceConfig::parse(Path::new("c"), "{}").unwrap();
        let http = HttpClient::new(&config)
            .unwrap()
            .with_lab_endpoints(&Endpoints::from([(
                "mirror".into(),
                format!("{}/base", server.url()),
            )]));
        let req = Request::get("/moved", Duration::from_secs(5));
        let resp = http.call_endpoint("mirror", req, 1 << 20).await.unwrap();
        assert_eq!(resp.status, 301);
        let req = Request::get("/file", Duration::from_secs(5));
        let resp = http.call_endpoint("mirror", req, 1 << 20).await.unwrap();
        assert_eq!(resp.body, b"content");
        let paths: Vec<String> = server.requests().iter().map(|r| r.path.clone()).collect();
        assert_eq!(paths, ["/base/moved", "/base/file"]);
    }

    #[test]
    fn credentials_in_urls_are_redacted() {
        let e = HttpError::Transport {
            method: "GET".into(),
            url: "http://admin:pw@ch:8000/".into(),
            message: "refused".into(),
        };
        assert_eq!(e.to_string(), "GET http://***@ch:8000/ failed: refused");
    }
}
