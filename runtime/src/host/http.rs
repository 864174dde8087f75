//! `http`: requests to named endpoints and to URLs the job provides (see
//! [`crate::http`]).

use super::outward::Outward;
use super::{HostError, parse_options};
use crate::capability::{Ask, Capability, funcs};
use crate::error::redact_url;
use crate::host::wit::latest::http::{Host, Request, Response};
use crate::http::{self as client, HttpClient, HttpError};

impl From<HttpError> for HostError {
    fn from(e: HttpError) -> Self {
        match e {
            HttpError::UnknownEndpoint { .. } | HttpError::NotConfigured { .. } => {
                HostError::not_found(e.to_string())
            }
            HttpError::Refused(_) | HttpError::Redirect { .. } => HostError::denied(e.to_string()),
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

/// What `http` needs: the gate, the client, and the return-size limit.
pub struct HttpView<'a> {
    pub outward: Outward<'a>,
    pub http: &'a HttpClient,
    /// `limits.max_return_bytes`.
    pub max_return_bytes: u64,
}

/// The [`wasmtime::component::HasData`] of `http`.
pub struct HasHttp;

impl wasmtime::component::HasData for HasHttp {
    type Data<'a> = HttpView<'a>;
}

fn request(req: Request, url: String, timeout: std::time::Duration) -> client::Request {
    client::Request {
        method: req.method,
        url,
        headers: req.headers,
        body: req.body,
        timeout,
    }
}

fn response(resp: client::Response) -> Response {
    Response {
        status: resp.status,
        headers: resp.headers,
        body: resp.body,
    }
}

impl Host for HttpView<'_> {
    async fn call(
        &mut self,
        endpoint: String,
        req: Request,
        opts: Vec<(String, String)>,
    ) -> Result<Response, HostError> {
        let (http, max) = (self.http, self.max_return_bytes);
        // The audit line names the endpoint and the path, not the base URL
        // the lab configured.
        let target = format!("{endpoint}:{}", req.url);
        let timeout = req.timeout;
        let endpoint = endpoint.as_str();
        self.outward
            .call(
                &funcs::HTTP_CALL,
                &[Ask::Name(Capability::Http, endpoint)],
                &target,
                Some(timeout),
                |deadline| async move {
                    parse_options(&opts, &[], "http.call")?;
                    // Credentials are added by the client, on the host: the
                    // guest never sees them.
                    let path = req.url.clone();
                    let resp = http
                        .call_endpoint(endpoint, request(req, path, deadline), max)
                        .await?;
                    Ok::<_, HostError>(response(resp))
                },
            )
            .await
    }

    async fn fetch(
        &mut self,
        req: Request,
        opts: Vec<(String, String)>,
    ) -> Result<Response, HostError> {
        let (http, max) = (self.http, self.max_return_bytes);
        let url = req.url.clone();
        let url = url.as_str();
        let shown = redact_url(url).into_owned();
        self.outward
            .call(
                &funcs::HTTP_FETCH,
                &[Ask::JobUrl(Capability::Http, url)],
                &shown,
                Some(req.timeout),
                |deadline| async move {
                    parse_options(&opts, &[], "http.fetch")?;
                    let resp = http
                        .send(request(req, url.to_string(), deadline), max)
                        .await?;
                    Ok::<_, HostError>(response(resp))
                },
            )
            .await
    }
}

#[cfg(test)]
mod tests {
    use labsim::maas::MaasSim;

    use labsim::web::{Reply, WebServer};

    use super::*;
    use crate::endpoints::Endpoints;
    use crate::host::wit::latest::job::Host as _;
    use crate::testing::context::{context, context_with, state};

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
        let mut st = state(&cx);

        let resp = st
            .http()
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
        let err = st
            .http()
            .call("maas".into(), request("/api/2.0/version/", forged), vec![])
            .await
            .unwrap_err()
            .to_string();
        assert!(err.contains("the host signs them"), "{err}");
        assert_eq!(maas.calls().len(), 1);

        let view = st.job().device_config_json().await.unwrap();
        assert!(view.contains("maas_url"), "{view}");
        assert!(
            !view.contains("maas_api_key") && !view.contains("HOSTONLYSECRET"),
            "{view}"
        );
    }

    /// A lab-defined endpoint is a capability like any other: reached only
    /// when granted, only below its base URL, its redirects not followed.
    #[tokio::test]
    async fn lab_endpoints_are_reached_only_when_granted_and_only_below_their_base() {
        let secret = WebServer::start("127.0.0.1", |_| Reply::text("INTERNAL")).unwrap();
        let secret_url = secret.url();
        let mirror = WebServer::start("127.0.0.1", move |r| match r.path_only() {
            "/ubuntu/moved" => Reply::Full {
                status: 302,
                headers: vec![("location".into(), format!("{secret_url}/x"))],
                body: Default::default(),
            },
            p if p.starts_with("/ubuntu/") => Reply::text("mirrored"),
            _ => Reply::text("OUTSIDE THE BASE"),
        })
        .unwrap();
        let seed = WebServer::start("127.0.0.1", |_| Reply::text("seed")).unwrap();
        let dir = tempfile::tempdir().unwrap();
        let lab = Endpoints::from([
            ("mirror".to_string(), format!("{}/ubuntu", mirror.url())),
            ("seed".to_string(), seed.url()),
        ]);
        // Both declared, only the mirror granted.
        let cx = context_with(
            dir.path(),
            "{}",
            "{}",
            &[(Capability::Http, "mirror"), (Capability::Http, "seed")],
            &[(Capability::Http, "mirror")],
            &lab,
        );
        let mut st = state(&cx);
        let get = |path: &str| request(path, vec![]);
        let resp = st
            .http()
            .call("mirror".into(), get("/dists/noble/Release"), vec![])
            .await
            .unwrap();
        assert_eq!(
            (resp.status, resp.body.as_slice()),
            (200, b"mirrored".as_slice())
        );
        let err = st
            .http()
            .call("seed".into(), get("/x"), vec![])
            .await
            .unwrap_err();
        assert_eq!(err.kind(), "denied");
        assert!(
            err.to_string().contains("http: seed is not granted"),
            "{err}"
        );
        assert!(seed.requests().is_empty());

        for (path, kind) in [
            ("/../secret", "denied"),
            ("/a/../../secret", "denied"),
            ("/%2e%2e/secret", "denied"),
            ("/a\\..\\..\\secret", "denied"),
            ("dists/noble", "invalid"),
            ("@127.0.0.1:1/x", "invalid"),
            ("http://127.0.0.1:1/x", "invalid"),
        ] {
            let err = st
                .http()
                .call("mirror".into(), get(path), vec![])
                .await
                .unwrap_err();
            assert_eq!(err.kind(), kind, "{path}: {err}");
        }
        // Another host in the path is only a path on the mirror.
        let resp = st
            .http()
            .call("mirror".into(), get("//127.0.0.1:1/x"), vec![])
            .await
            .unwrap();
        assert_eq!(resp.body, b"mirrored");
        // A redirect is the answer; nothing follows it.
        let resp = st
            .http()
            .call("mirror".into(), get("/moved"), vec![])
            .await
            .unwrap();
        assert_eq!(resp.status, 302);
        assert!(secret.requests().is_empty());
        for r in mirror.requests() {
            assert!(r.path.starts_with("/ubuntu/"), "{} left the base", r.path);
        }
        assert_eq!(mirror.requests().len(), 3);

        // A granted name the lab never defined is not-found, naming where
        // to define it; the connector never learns the base URLs.
        let cx = context_with(
            dir.path(),
            "{}",
            "{}",
            &[(Capability::Http, "archive")],
            &[(Capability::Http, "archive")],
            &lab,
        );
        let err = state(&cx)
            .http()
            .call("archive".into(), get("/"), vec![])
            .await
            .unwrap_err();
        assert_eq!(err.kind(), "not-found");
        assert!(
            err.to_string().contains("`endpoints:` in the lab file"),
            "{err}"
        );
        assert!(!err.to_string().contains("127.0.0.1"), "{err}");
    }
}
