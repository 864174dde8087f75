//! `transfer`: host-side streams (see [`crate::transfer`]).

use wasmtime::component::Resource;

use super::{HostError, HostState, duration_ms, parse_options};
use crate::capability::Capability;
use crate::host::ssh::SessionHandle;
use crate::host::wit::latest::transfer::{Host, Report, Source};
use crate::transfer::{self as service, TransferOptions};

/// Options both functions understand.
const OPTIONS: &[&str] = &["label"];

impl From<Source> for service::Source {
    fn from(src: Source) -> Self {
        match src {
            Source::Url(url) => service::Source::Url(url),
            Source::Attachment(name) => service::Source::Attachment(name),
        }
    }
}

impl From<service::Report> for Report {
    fn from(r: service::Report) -> Self {
        Report {
            bytes: r.bytes,
            sha256: r.sha256,
            elapsed_ms: r.elapsed.as_millis().min(u64::MAX as u128) as u64,
        }
    }
}

fn options(opts: &[(String, String)], function: &str) -> Result<TransferOptions, HostError> {
    let parsed = parse_options(opts, OPTIONS, function)?;
    Ok(TransferOptions {
        label: parsed.get("label").map(|s| s.to_string()),
    })
}

impl HostState {
    /// The capability checks every transfer starts with: the source's grant
    /// (`job-urls` or `attachments`) and, for a URL, the lab's URL grants.
    fn checked_source(&self, src: Source) -> Result<service::Source, HostError> {
        let src = service::Source::from(src);
        self.cx.gate.check(Capability::Transfer, src.grant())?;
        if let service::Source::Url(url) = &src {
            self.cx.gate.check_url(Capability::Transfer, url)?;
        }
        Ok(src)
    }
}

impl Host for HostState {
    async fn to_ssh(
        &mut self,
        src: Source,
        target: Resource<SessionHandle>,
        command: String,
        timeout: u64,
        opts: Vec<(String, String)>,
    ) -> Result<Report, HostError> {
        // The session itself was gated when it was opened.
        let src = self.checked_source(src)?;
        let opts = options(&opts, "transfer.to-ssh")?;
        let timeout = duration_ms(timeout).min(self.cx.limits.host_call_timeout);
        let (conn, name) = {
            let session = self.table().get(&target)?;
            (session.conn.clone(), session.target.clone())
        };
        let cx = self.cx.clone();
        let report = super::audited(&cx, "transfer.to-ssh", &name, async {
            Ok(cx
                .transfers
                .to_ssh(&cx, &src, &conn, &name, &command, timeout, &opts)
                .await?)
        })
        .await?;
        Ok(report.into())
    }

    async fn to_artifact(
        &mut self,
        src: Source,
        name: String,
        timeout: u64,
        opts: Vec<(String, String)>,
    ) -> Result<Report, HostError> {
        let src = self.checked_source(src)?;
        let opts = options(&opts, "transfer.to-artifact")?;
        let timeout = duration_ms(timeout).min(self.cx.limits.host_call_timeout);
        let cx = self.cx.clone();
        let report = super::audited(&cx, "transfer.to-artifact", &name, async {
            Ok(cx
                .transfers
                .to_artifact(&cx, &src, &name, timeout, &opts)
                .await?)
        })
        .await?;
        Ok(report.into())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::testing::context::{context, state};
    use labsim::web::{Reply, WebServer};

    #[tokio::test]
    async fn to_artifact_through_the_adapter() {
        let server = WebServer::start("127.0.0.1", |_| Reply::bytes(vec![5u8; 4096])).unwrap();
        let url = format!("{}/img.zst", server.url());
        let dir = tempfile::tempdir().unwrap();
        let job = serde_json::json!({"provision_data": {"url": url}}).to_string();
        let cx = context(
            dir.path(),
            "{}",
            &job,
            &[(Capability::Transfer, "job-urls")],
        );
        let mut st = state(&cx);
        let report = Host::to_artifact(
            &mut st,
            Source::Url(url.clone()),
            "img".into(),
            10_000,
            vec![("label".into(), "image".into())],
        )
        .await
        .unwrap();
        assert_eq!(report.bytes, 4096);
        assert!(report.sha256.starts_with("sha256:") && report.sha256.len() == 71);
        assert_eq!(
            std::fs::read(dir.path().join("artifacts/img")).unwrap(),
            vec![5u8; 4096]
        );

        // Attachments are a separate grant, checked before anything else.
        let err = Host::to_artifact(
            &mut st,
            Source::Attachment("missing".into()),
            "img2".into(),
            10_000,
            vec![],
        )
        .await
        .unwrap_err();
        assert_eq!(err.kind(), "denied");
        assert!(err.to_string().contains("attachments"), "{err}");

        let err = Host::to_artifact(
            &mut st,
            Source::Url(url.clone()),
            "img3".into(),
            10_000,
            vec![("speed".into(), "fast".into())],
        )
        .await
        .unwrap_err();
        assert_eq!(err.kind(), "invalid");
        assert!(err.to_string().contains("speed"), "{err}");
        assert!(!dir.path().join("artifacts/img3").exists());
        assert_eq!(server.requests().len(), 1);
    }

    #[tokio::test]
    async fn to_ssh_checks_grant_and_options_before_the_session() {
        let dir = tempfile::tempdir().unwrap();
        let cx = context(
            dir.path(),
            "{}",
            "{}",
            &[(Capability::Transfer, "attachments")],
        );
        let mut st = state(&cx);
        // No session with this handle exists: only the checks that come
        // before the session is looked up can answer.
        let session = || Resource::<SessionHandle>::new_borrow(4242);
        let err = Host::to_ssh(
            &mut st,
            Source::Url("http://127.0.0.1:9/x".into()),
            session(),
            "dd of=/dev/null".into(),
            1000,
            vec![],
        )
        .await
        .unwrap_err();
        assert_eq!(err.kind(), "denied");
        assert!(err.to_string().contains("job-urls"), "{err}");
        let err = Host::to_ssh(
            &mut st,
            Source::Attachment("img".into()),
            session(),
            "dd of=/dev/null".into(),
            1000,
            vec![("lable".into(), "x".into())],
        )
        .await
        .unwrap_err();
        assert_eq!(err.kind(), "invalid");
        let err = Host::to_ssh(
            &mut st,
            Source::Attachment("img".into()),
            session(),
            "dd of=/dev/null".into(),
            1000,
            vec![],
        )
        .await
        .unwrap_err();
        assert_eq!(err.kind(), "trap", "a dangling handle is guest misuse");
    }

    #[tokio::test]
    async fn nothing_without_the_transfer_capability() {
        let dir = tempfile::tempdir().unwrap();
        let cx = context(dir.path(), "{}", "{}", &[(Capability::Http, "job-urls")]);
        let mut st = state(&cx);
        let err = Host::to_artifact(
            &mut st,
            Source::Url("http://127.0.0.1:9/x".into()),
            "x".into(),
            1000,
            vec![],
        )
        .await
        .unwrap_err();
        assert_eq!(err.kind(), "denied");
        assert!(err.to_string().contains("transfer"), "{err}");
    }
}
