//! `transfer`: host-side streams (see [`crate::transfer`]).

use wasmtime::component::{Resource, ResourceTable};

use super::outward::Outward;
use super::{HostError, parse_options};
use crate::capability::{Ask, Capability, funcs};
use crate::host::ssh::SessionHandle;
use crate::host::wit::latest::transfer::{Host, Report, Source};
use crate::transfer::{self as service, Io, TransferError, TransferOptions, Transfers};

/// Options both functions understand.
const OPTIONS: &[&str] = &["label"];

impl From<TransferError> for HostError {
    fn from(e: TransferError) -> Self {
        match e {
            TransferError::Http(e) => e.into(),
            TransferError::Path(e) => e.into(),
            TransferError::Sink {
                label,
                command,
                error,
            } => {
                // Keep the sink error's kind, add what was being done.
                HostError::from(*error)
                    .context(&format!("{label}: streaming into `{command}` failed: "))
            }
            TransferError::Status { status, .. } if status == 404 || status == 410 => {
                HostError::not_found(e.to_string())
            }
            TransferError::Status { .. }
            | TransferError::Truncated { .. }
            | TransferError::SourceIo { .. }
            | TransferError::Artifact { .. } => HostError::io(e.to_string()),
            TransferError::Timeout { .. } => HostError::timeout(e.to_string()),
            TransferError::SinkFailed { .. } => HostError::failed(e.to_string()),
            TransferError::TooMany { .. } => HostError::limit(e.to_string()),
            TransferError::Invalid(_) => HostError::invalid(e.to_string()),
        }
    }
}

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

/// What the gate is asked for a source: `transfer: [job-urls]` and the
/// URL rule for a URL, `transfer: [attachments]` for an attachment.
fn ask(src: &service::Source) -> Ask<'_> {
    match src {
        service::Source::Url(url) => Ask::JobUrl(Capability::Transfer, url),
        service::Source::Attachment(_) => Ask::Name(Capability::Transfer, service::ATTACHMENTS),
    }
}

/// What the audit line names as reached: the URL (credentials hidden) or
/// the attachment's run-directory path.
fn shown(src: &service::Source) -> String {
    match src {
        service::Source::Url(url) => crate::error::redact_url(url).into_owned(),
        service::Source::Attachment(name) => {
            format!("attachments/{}/{name}", service::ATTACHMENT_PHASE)
        }
    }
}

/// What `transfer` needs: the gate, the stage's transfers, where sources
/// and artifacts live, and the resource table holding SSH sessions.
pub struct TransferView<'a> {
    pub outward: Outward<'a>,
    pub transfers: &'a Transfers,
    pub io: Io<'a>,
    pub table: &'a mut ResourceTable,
}

/// The [`wasmtime::component::HasData`] of `transfer`.
pub struct HasTransfer;

impl wasmtime::component::HasData for HasTransfer {
    type Data<'a> = TransferView<'a>;
}

impl Host for TransferView<'_> {
    async fn to_ssh(
        &mut self,
        src: Source,
        target: Resource<SessionHandle>,
        command: String,
        timeout: u64,
        opts: Vec<(String, String)>,
    ) -> Result<Report, HostError> {
        // The session itself was gated when it was opened. A dangling
        // handle traps only once the gate and the options were in order.
        let src = &service::Source::from(src);
        let session = self
            .table
            .get(&target)
            .map(|s| (s.conn.clone(), s.target.clone()));
        let (transfers, io) = (self.transfers, self.io);
        let report = self
            .outward
            .call(
                &funcs::TRANSFER_TO_SSH,
                &[ask(src)],
                &shown(src),
                Some(timeout),
                |deadline| async move {
                    let opts = options(&opts, "transfer.to-ssh")?;
                    let (conn, name) = session?;
                    Ok::<_, HostError>(
                        transfers
                            .to_ssh(io, src, &conn, &name, &command, deadline, &opts)
                            .await?,
                    )
                },
            )
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
        let src = &service::Source::from(src);
        let (transfers, io) = (self.transfers, self.io);
        let report = self
            .outward
            .call(
                &funcs::TRANSFER_TO_ARTIFACT,
                &[ask(src)],
                &shown(src),
                Some(timeout),
                |deadline| async move {
                    let opts = options(&opts, "transfer.to-artifact")?;
                    Ok::<_, HostError>(
                        transfers
                            .to_artifact(io, src, &name, deadline, &opts)
                            .await?,
                    )
                },
            )
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
            &mut st.transfer(),
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
            &mut st.transfer(),
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
            &mut st.transfer(),
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
            &mut st.transfer(),
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
            &mut st.transfer(),
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
            &mut st.transfer(),
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
            &mut st.transfer(),
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

    /// The job-URL rule is the gate's: a URL the job does not name is
    /// denied before any request, a non-http one is invalid, both for
    /// transfers as for `http.fetch`.
    #[tokio::test]
    async fn only_job_urls_reach_the_network() {
        let server = WebServer::start("127.0.0.1", |_| Reply::bytes(vec![1u8; 16])).unwrap();
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
        for (other, kind) in [
            (format!("{url}?x=1"), "denied"),
            (format!("{}/other.zst", server.url()), "denied"),
            ("file:///etc/passwd".to_string(), "invalid"),
        ] {
            let err = Host::to_artifact(
                &mut st.transfer(),
                Source::Url(other.clone()),
                "x".into(),
                1000,
                vec![],
            )
            .await
            .unwrap_err();
            assert_eq!(err.kind(), kind, "{other}: {err}");
        }
        assert!(server.requests().is_empty());
        assert!(!dir.path().join("artifacts/x").exists());
    }

    /// Each kind of transfer failure reaches the connector as the WIT
    /// error kind it is documented as; a sink's own error keeps its kind.
    #[test]
    fn transfer_errors_map_to_wit_kinds() {
        use crate::rundir::PathError;
        use crate::ssh::SshError;
        let kind = |e: TransferError| HostError::from(e).kind();
        let status = |status| TransferError::Status {
            url: "http://x/".into(),
            status,
        };
        assert_eq!(kind(status(404)), "not-found");
        assert_eq!(kind(status(410)), "not-found");
        assert_eq!(kind(status(500)), "io");
        let truncated = TransferError::Truncated {
            label: "l".into(),
            from: "f".into(),
            got: "1".into(),
            expected: "2".into(),
            cause: String::new(),
        };
        assert_eq!(kind(truncated), "io");
        let timeout = TransferError::Timeout {
            label: "l".into(),
            secs: 1.0,
            moved: "nothing".into(),
        };
        assert_eq!(kind(timeout), "timeout");
        let failed = TransferError::SinkFailed {
            label: "l".into(),
            command: "dd".into(),
            target: "device".into(),
            status: 1,
            stderr: String::new(),
        };
        assert_eq!(kind(failed), "failed");
        assert_eq!(kind(TransferError::TooMany { running: 4, max: 4 }), "limit");
        assert_eq!(kind(TransferError::Invalid("label".into())), "invalid");
        assert_eq!(
            kind(TransferError::Path(PathError::Refused("..".into(), "no"))),
            "invalid"
        );
        let sink = HostError::from(TransferError::Sink {
            label: "image".into(),
            command: "dd of=/dev/sda".into(),
            error: Box::new(SshError::Timeout("no answer".into())),
        });
        assert_eq!(sink.kind(), "timeout");
        assert_eq!(
            sink.to_string(),
            "image: streaming into `dd of=/dev/sda` failed: no answer"
        );
    }
}
