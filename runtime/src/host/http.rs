//! `http`: requests to named endpoints and to URLs the job provides.

use super::{HostError, HostState, duration_ms, parse_options};
use crate::capability::Capability;
use crate::context::StageContext;
use crate::host::wit::latest::http::{Host, Request, Response};
use crate::http::{self as client, HttpError};

impl From<HttpError> for HostError {
    fn from(e: HttpError) -> Self {
        match e {
            HttpError::UnknownEndpoint(_) | HttpError::NotConfigured { .. } => {
                HostError::not_found(e.to_string())
            }
            HttpError::NotAJobUrl(_) | HttpError::Redirect { .. } => {
                HostError::denied(e.to_string())
            }
            HttpError::Invalid(_)
            | HttpError::BadConfig { .. }
            | HttpError::OwnAuthorization(_) => HostError::invalid(e.to_string()),
            HttpError::Timeout { .. } => HostError::timeout(e.to_string()),
            HttpError::Transport { .. } | HttpError::Setup(_) => HostError::io(e.to_string()),
            HttpError::TooBig { .. } => HostError::limit(format!(
                "{e} (limits.max_return_bytes in the lab file raises it)"
            )),
        }
    }
}

/// Checks a URL a connector wants fetched (by `http.fetch` or a
/// transfer): it must be one the job provides, and covered by the lab's
/// URL grants if there are any. Denials are audited.
pub fn check_fetch_url(cx: &StageContext, cap: Capability, url: &str) -> Result<(), HostError> {
    if let Err(e) = cx.http.check_job_url(url) {
        return Err(cx.gate.deny(cap, &client::redact_url(url), e.into()));
    }
    cx.gate.check_url(cap, url)
}

impl HostState {
    async fn send_http(&mut self, url: String, req: Request) -> Result<Response, HostError> {
        let timeout = duration_ms(req.timeout).min(self.cx.limits.host_call_timeout);
        let resp = self
            .cx
            .http
            .send(
                client::Request {
                    method: req.method,
                    url,
                    headers: req.headers,
                    body: req.body,
                    timeout,
                },
                self.cx.limits.max_return_bytes,
            )
            .await?;
        Ok(Response {
            status: resp.status,
            headers: resp.headers,
            body: resp.body,
        })
    }
}

impl Host for HostState {
    async fn call(
        &mut self,
        endpoint: String,
        req: Request,
        opts: Vec<(String, String)>,
    ) -> Result<Response, HostError> {
        parse_options(&opts, &[], "http.call")?;
        self.cx.gate.check(Capability::Http, &endpoint)?;
        let url = self.cx.http.endpoint_url(&endpoint, &req.url)?;
        // Credentials are added here, on the host: the guest never sees them.
        let mut req = req;
        self.cx.http.sign(&endpoint, &mut req.headers)?;
        let cx = self.cx.clone();
        let shown = client::redact_url(&url);
        let call = cx.gate.begin("http.call", &shown);
        call.end(self.send_http(url.clone(), req).await)
    }

    async fn fetch(
        &mut self,
        req: Request,
        opts: Vec<(String, String)>,
    ) -> Result<Response, HostError> {
        parse_options(&opts, &[], "http.fetch")?;
        self.cx.gate.check(Capability::Http, "job-urls")?;
        check_fetch_url(&self.cx, Capability::Http, &req.url)?;
        let url = req.url.clone();
        let cx = self.cx.clone();
        let shown = client::redact_url(&url).into_owned();
        let call = cx.gate.begin("http.fetch", &shown);
        call.end(self.send_http(url, req).await)
    }
}

#[cfg(test)]
mod tests {
    use labsim::maas::MaasSim;

    use super::*;
    use crate::host::wit::latest::job::Host as _;
    use crate::testing::context::{context, state};

    fn request(path: &str, headers: Vec<(String, String)>) -> Request {
        Request {
            method: "GET".into(),
            url: path.into(),
            headers,
            body: Vec::new(),
            timeout: 10_000,
        }
    }

    /// The connector names the endpoint; the host adds the signature MAAS
    /// checks, and the connector's view of the config has no key.
    #[tokio::test]
    async fn maas_calls_are_signed_on_the_host_and_the_key_stays_there() {
        let maas = MaasSim::builder("n1")
            .api_key("ck", "tk", "HOSTONLYSECRET")
            .start("127.0.0.1")
            .unwrap();
        let dir = tempfile::tempdir().unwrap();
        let yaml = format!(
            "maas_url: {}\nmaas_api_key: {}\n",
            maas.url(),
            maas.api_key()
        );
        let cx = context(dir.path(), &yaml, "{}", &[(Capability::Http, "maas")]);
        let mut host = state(&cx);

        let resp = host
            .call(
                "maas".into(),
                request("/api/2.0/machines/n1/", vec![]),
                vec![],
            )
            .await
            .unwrap();
        assert_eq!(resp.status, 200);
        assert_eq!(maas.calls()[0].status, 200);

        // A connector cannot sign (or forge) requests itself.
        let forged = vec![("Authorization".to_string(), "OAuth x".to_string())];
        let err = host
            .call("maas".into(), request("/api/2.0/version/", forged), vec![])
            .await
            .unwrap_err()
            .to_string();
        assert!(err.contains("the host signs them"), "{err}");
        assert_eq!(maas.calls().len(), 1);

        let view = host.device_config_json().await.unwrap();
        assert!(view.contains("maas_url"), "{view}");
        assert!(
            !view.contains("maas_api_key") && !view.contains("HOSTONLYSECRET"),
            "{view}"
        );
    }
}
