//! Outbound HTTP for connectors and for the runtime itself: named
//! endpoints from the device config, URLs the job provides, and streaming
//! downloads for `transfer`.
//!
//! Named endpoints:
//! - `control-host`: `http://<control_host>:8000` (or
//!   `connector_runtime.control_host_url`);
//! - `maas`: the MAAS region API at `maas_url` (e.g.
//!   `http://maas.lab:5240/MAAS`); every request is signed by the host with
//!   the device's `maas_api_key` ([`crate::maas_auth`]).

use std::collections::BTreeSet;
use std::sync::OnceLock;
use std::time::Duration;

use futures::StreamExt;

use crate::config::DeviceConfig;
use crate::job_file::JobFile;
use crate::maas_auth::{self, MaasCredentials};

/// Port of the control host's REST API (reference constant).
pub const CONTROL_HOST_PORT: u16 = 8000;

/// Why an HTTP exchange failed.
#[derive(Debug, thiserror::Error)]
pub enum HttpError {
    #[error("unknown HTTP endpoint `{0}`; known endpoints: control-host, maas")]
    UnknownEndpoint(String),
    #[error("HTTP endpoint `{endpoint}` is not configured: set `{key}` in the device config")]
    NotConfigured { endpoint: String, key: String },
    #[error("HTTP endpoint `{endpoint}` cannot be used: {message}")]
    BadConfig { endpoint: String, message: String },
    #[error(
        "requests to HTTP endpoint `{0}` must not carry an Authorization header: the host signs them"
    )]
    OwnAuthorization(String),
    #[error("URL {0} is not one the job provides; connectors may only fetch URLs from the job")]
    NotAJobUrl(String),
    #[error("invalid request: {0}")]
    Invalid(String),
    #[error("{method} {url} timed out after {secs} s")]
    Timeout {
        method: String,
        url: String,
        secs: u64,
    },
    #[error("{method} {url} failed: {message}")]
    Transport {
        method: String,
        url: String,
        message: String,
    },
    #[error("response body of {url} is larger than the limit of {max} bytes")]
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
    extra_ca: Vec<std::path::PathBuf>,
    job_urls: BTreeSet<String>,
    control_host_base: Option<String>,
    /// `maas_url`, checked when first used.
    maas_base: Option<String>,
    /// `maas_api_key`, parsed with the config; a malformed key is reported
    /// when the endpoint is first used (naming the key, never its value).
    maas_credentials: Option<Result<MaasCredentials, maas_auth::CredentialsError>>,
}

impl HttpClient {
    /// Prepares the client for `config` and `job` (the TLS setup itself is
    /// deferred to the first request).
    pub fn new(config: &DeviceConfig, job: &JobFile) -> anyhow::Result<Self> {
        let device_ip = config.device_ip();
        let mut job_urls = BTreeSet::new();
        for url in job.urls() {
            if let Some(ip) = &device_ip {
                job_urls.insert(url.replace("$DEVICE_IP", ip));
            }
            job_urls.insert(url);
        }
        let control_host_base = config.runtime.control_host_url.clone().or_else(|| {
            config
                .string("control_host")
                .map(|h| format!("http://{}:{CONTROL_HOST_PORT}", bracket_v6(&h)))
        });
        Ok(HttpClient {
            client: OnceLock::new(),
            extra_ca: config.runtime.extra_ca_certs.clone(),
            job_urls,
            control_host_base: control_host_base.map(|b| b.trim_end_matches('/').to_string()),
            maas_base: config
                .string(maas_auth::URL_KEY)
                .map(|b| b.trim().trim_end_matches('/').to_string()),
            maas_credentials: config
                .string(maas_auth::API_KEY_KEY)
                .map(|k| MaasCredentials::parse(&k)),
        })
    }

    /// The shared reqwest client (rustls, extra CAs from the config).
    pub fn client(&self) -> Result<&reqwest::Client, HttpError> {
        self.client
            .get_or_init(|| {
                let mut builder = reqwest::Client::builder().user_agent(concat!(
                    "testflinger-device-connectors/",
                    env!("CARGO_PKG_VERSION")
                ));
                for path in &self.extra_ca {
                    let pem = std::fs::read(path).map_err(|e| {
                        format!("cannot read CA certificate {}: {e}", path.display())
                    })?;
                    let cert = reqwest::Certificate::from_pem(&pem)
                        .map_err(|e| format!("invalid CA certificate {}: {e}", path.display()))?;
                    builder = builder.add_root_certificate(cert);
                }
                builder.build().map_err(|e| e.to_string())
            })
            .as_ref()
            .map_err(|e| HttpError::Setup(e.clone()))
    }

    /// Base URL of a named endpoint.
    pub fn endpoint_base(&self, endpoint: &str) -> Result<&str, HttpError> {
        match endpoint {
            "control-host" => {
                self.control_host_base
                    .as_deref()
                    .ok_or_else(|| HttpError::NotConfigured {
                        endpoint: endpoint.into(),
                        key: "control_host".into(),
                    })
            }
            "maas" => {
                let base = self
                    .maas_base
                    .as_deref()
                    .ok_or_else(|| HttpError::NotConfigured {
                        endpoint: endpoint.into(),
                        key: maas_auth::URL_KEY.into(),
                    })?;
                check_base_url(base).map_err(|problem| HttpError::BadConfig {
                    endpoint: endpoint.into(),
                    message: format!(
                        "device config key `{}` {problem}; it must be the MAAS URL, like http://maas.example:5240/MAAS",
                        maas_auth::URL_KEY
                    ),
                })?;
                Ok(base)
            }
            other => Err(HttpError::UnknownEndpoint(other.into())),
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
        if endpoint != "maas" {
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

    /// Absolute URL of `path` on a named endpoint.
    pub fn endpoint_url(&self, endpoint: &str, path: &str) -> Result<String, HttpError> {
        if !path.starts_with('/') {
            return Err(HttpError::Invalid(format!(
                "endpoint paths must start with `/`, got `{path}`"
            )));
        }
        Ok(format!("{}{path}", self.endpoint_base(endpoint)?))
    }

    /// Whether `url` is one the job provides (after `$DEVICE_IP`
    /// substitution).
    pub fn is_job_url(&self, url: &str) -> bool {
        self.job_urls.contains(url.trim())
    }

    /// Fails unless `url` is a job-provided http(s) URL.
    pub fn check_job_url(&self, url: &str) -> Result<(), HttpError> {
        let parsed = reqwest::Url::parse(url)
            .map_err(|e| HttpError::Invalid(format!("bad URL `{url}`: {e}")))?;
        if !matches!(parsed.scheme(), "http" | "https") {
            return Err(HttpError::Invalid(format!(
                "only http and https URLs are supported, got `{url}`"
            )));
        }
        if !self.is_job_url(url) {
            return Err(HttpError::NotAJobUrl(url.into()));
        }
        Ok(())
    }

    /// Sends `req` and reads the whole body, refusing bodies over `max_body`.
    pub async fn send(&self, req: Request, max_body: u64) -> Result<Response, HttpError> {
        let method = reqwest::Method::from_bytes(req.method.as_bytes())
            .map_err(|_| HttpError::Invalid(format!("bad HTTP method `{}`", req.method)))?;
        let url = req.url.clone();
        let timeout = req.timeout;
        let transport = |e: reqwest::Error| classify(&req.method, &url, timeout, e);
        let fut = async {
            let mut builder = self.client()?.request(method, &url);
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
    builder.build().map_err(|e| e.to_string())
}

fn classify(method: &str, url: &str, timeout: Duration, e: reqwest::Error) -> HttpError {
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

/// Checks that `base` is an absolute http(s) URL without query or
/// fragment; the problem otherwise.
fn check_base_url(base: &str) -> Result<(), String> {
    let url = reqwest::Url::parse(base).map_err(|e| format!("is not a URL ({e})"))?;
    if !matches!(url.scheme(), "http" | "https") {
        return Err(format!("has scheme `{}`, not http or https", url.scheme()));
    }
    if url.query().is_some() || url.fragment().is_some() {
        return Err("must not have a query or fragment".into());
    }
    Ok(())
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
    fn job_urls_and_endpoints() {
        let config =
            DeviceConfig::parse(Path::new("c"), "device_ip: 10.1.1.1\ncontrol_host: ch\n").unwrap();
        let job = JobFile::parse(
            Path::new("j"),
            r#"{"provision_data":{"url":"http://img/a.zst","boot_check_url":"http://$DEVICE_IP:8080/ok"}}"#,
        )
        .unwrap();
        let http = HttpClient::new(&config, &job).unwrap();
        assert!(http.check_job_url("http://img/a.zst").is_ok());
        assert!(http.check_job_url("http://10.1.1.1:8080/ok").is_ok());
        assert!(matches!(
            http.check_job_url("http://img/b"),
            Err(HttpError::NotAJobUrl(_))
        ));
        assert!(matches!(
            http.check_job_url("file:///etc/passwd"),
            Err(HttpError::Invalid(_))
        ));
        assert_eq!(
            http.endpoint_url("control-host", "/health").unwrap(),
            "http://ch:8000/health"
        );
        assert!(http.endpoint_url("control-host", "health").is_err());
        assert!(matches!(
            http.endpoint_url("maas", "/"),
            Err(HttpError::NotConfigured { key, .. }) if key == "maas_url"
        ));
        assert!(matches!(
            http.endpoint_url("bmc", "/"),
            Err(HttpError::UnknownEndpoint(_))
        ));
        // Other endpoints are not signed.
        let mut headers = vec![("authorization".to_string(), "Basic x".to_string())];
        http.sign("control-host", &mut headers).unwrap();
        assert_eq!(headers.len(), 1);
    }

    fn client(yaml: &str) -> HttpClient {
        let config = DeviceConfig::parse(Path::new("c"), yaml).unwrap();
        let job = JobFile::parse(Path::new("j"), "{}").unwrap();
        HttpClient::new(&config, &job).unwrap()
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
}
