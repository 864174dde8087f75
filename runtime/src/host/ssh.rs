//! `ssh`: sessions to named targets, on top of [`crate::ssh::SshPool`].
//!
//! Addresses, keys and the test password stay in the pool; every call goes
//! through the call wrapper ([`super::outward`]), which caps the guest's
//! deadline at `limits.host_call_timeout`.

use std::sync::Arc;
use std::time::Duration;

use wasmtime::component::{Resource, ResourceTable};

use super::log::LogBudget;
use super::outward::Outward;
use super::{HostError, bool_option, parse_options};
use crate::capability::{Ask, Capability, funcs};
use crate::host::wit::latest::ssh::{ExecResult, Host, HostSession};
use crate::rundir::RunDir;
use crate::ssh::{Connection, SessionSlot, SshError, SshPool};

impl From<SshError> for HostError {
    fn from(e: SshError) -> Self {
        let text = e.to_string();
        match e {
            SshError::UnknownTarget { .. }
            | SshError::NotConfigured { .. }
            | SshError::NoIdentity(_)
            | SshError::RemoteNotFound(_) => HostError::not_found(text),
            SshError::BadSetup(_) | SshError::Invalid(_) => HostError::invalid(text),
            SshError::HostKey { .. } => HostError::denied(text),
            SshError::Auth { .. } => HostError::refused(text),
            SshError::Timeout(_) | SshError::Unreachable { .. } => HostError::timeout(text),
            SshError::Connect { .. } | SshError::Io(_) => HostError::io(text),
            SshError::Limit(_) => HostError::limit(text),
            SshError::Failed(_) => HostError::failed(text),
        }
    }
}

/// The host side of a `session` resource.
pub struct SessionHandle {
    /// Target name the session was opened for.
    pub target: String,
    /// The shared connection.
    pub conn: Arc<Connection>,
    /// This session's share of `limits.max_ssh_sessions`.
    pub slot: SessionSlot,
}

/// What `ssh` needs: the gate, the pool of connections, the run directory
/// (for `download-artifact`), the return-size limit, the resource table
/// holding sessions, and the log budget that logged output counts
/// against.
pub struct SshView<'a> {
    pub outward: Outward<'a>,
    pub pool: &'a SshPool,
    pub rundir: &'a RunDir,
    /// `limits.max_return_bytes`.
    pub max_return_bytes: u64,
    pub table: &'a mut ResourceTable,
    pub log: &'a mut LogBudget,
}

/// The [`wasmtime::component::HasData`] of `ssh`.
pub struct HasSsh;

impl wasmtime::component::HasData for HasSsh {
    type Data<'a> = SshView<'a>;
}

impl SshView<'_> {
    /// The connection behind a session resource.
    fn session_conn(&self, this: &Resource<SessionHandle>) -> Result<Arc<Connection>, HostError> {
        Ok(self.table.get(this)?.conn.clone())
    }
}

impl HostSession for SshView<'_> {
    async fn exec(
        &mut self,
        this: Resource<SessionHandle>,
        command: String,
        timeout: u64,
        opts: Vec<(String, String)>,
    ) -> Result<ExecResult, HostError> {
        let conn = self.session_conn(&this)?;
        let target = conn.target();
        // Output lines the host logs for the connector count against its
        // log volume, or a loop of `exec` would flood the agent's log.
        let budget = self.log.remaining();
        let max = self.max_return_bytes;
        let mut logged = 0u64;
        let result = self
            .outward
            .call(
                &funcs::SSH_EXEC,
                &[Ask::Name(Capability::Ssh, target)],
                target,
                Some(timeout),
                |deadline| exec_on(&conn, command, deadline, opts, max, budget, &mut logged),
            )
            .await;
        self.log.account(logged)?;
        result
    }

    async fn upload(
        &mut self,
        this: Resource<SessionHandle>,
        path: String,
        data: Vec<u8>,
        mode: u32,
        timeout: u64,
    ) -> Result<(), HostError> {
        let conn = self.session_conn(&this)?;
        let target = conn.target();
        self.outward
            .call(
                &funcs::SSH_UPLOAD,
                &[Ask::Name(Capability::Ssh, target)],
                target,
                Some(timeout),
                |deadline| conn.upload(&path, &data, mode, deadline),
            )
            .await
    }

    async fn download(
        &mut self,
        this: Resource<SessionHandle>,
        path: String,
        timeout: u64,
    ) -> Result<Vec<u8>, HostError> {
        let conn = self.session_conn(&this)?;
        let conn = &*conn;
        let target = conn.target();
        let max = self.max_return_bytes;
        self.outward
            .call(
                &funcs::SSH_DOWNLOAD,
                &[Ask::Name(Capability::Ssh, target)],
                target,
                Some(timeout),
                |deadline| async move {
                    conn.download(&path, deadline, max).await.map_err(|e| match e {
                        SshError::Limit(m) => HostError::limit(format!(
                            "{m} (limits.max_return_bytes in the lab file raises it; download-artifact has no such limit)"
                        )),
                        other => other.into(),
                    })
                },
            )
            .await
    }

    async fn download_artifact(
        &mut self,
        this: Resource<SessionHandle>,
        path: String,
        artifact: String,
        timeout: u64,
    ) -> Result<u64, HostError> {
        let conn = self.session_conn(&this)?;
        let conn = &*conn;
        let target = conn.target();
        let rundir = self.rundir;
        self.outward
            .call(
                &funcs::SSH_DOWNLOAD_ARTIFACT,
                &[Ask::Name(Capability::Ssh, target)],
                target,
                Some(timeout),
                |deadline| async move {
                    let dest = rundir.artifact_path(&artifact).map_err(|e| {
                        HostError::from(e).context(&format!("artifact `{artifact}`: "))
                    })?;
                    Ok::<_, HostError>(conn.download_to(&path, &dest, deadline, u64::MAX).await?)
                },
            )
            .await
    }

    async fn drop(&mut self, this: Resource<SessionHandle>) -> wasmtime::Result<()> {
        // Dropping the handle gives its session slot back; the connection
        // stays pooled for the rest of the stage.
        self.table.delete(this)?;
        Ok(())
    }
}

/// Runs `command`; with `log-output`, logs its output lines while they
/// fit in `budget` bytes and counts them all in `logged`.
async fn exec_on(
    conn: &Connection,
    command: String,
    timeout: Duration,
    opts: Vec<(String, String)>,
    max_return_bytes: u64,
    budget: u64,
    logged: &mut u64,
) -> Result<ExecResult, HostError> {
    let opts = parse_options(&opts, &["log-output"], "ssh exec")?;
    let log_output = bool_option(opts.get("log-output").copied(), true, "log-output")?;
    let out = if log_output {
        let target = conn.target().to_string();
        let mut on_line = |_stream: crate::ssh::OutputStream, line: &str| {
            *logged = logged.saturating_add(line.len() as u64 + 1);
            if *logged <= budget {
                tracing::info!(target: "tfdc::ssh", ssh_target = %target, "{line}");
            }
        };
        conn.exec_streaming(&command, timeout, &mut on_line).await?
    } else {
        conn.exec(&command, timeout, false).await?
    };
    let max = max_return_bytes;
    if (out.stdout.len() + out.stderr.len()) as u64 > max {
        return Err(HostError::limit(format!(
            "output of `{command}` on {} is more than {max} bytes (limits.max_return_bytes in the lab file raises it)",
            conn.target()
        )));
    }
    Ok(ExecResult {
        status: out.status,
        stdout: String::from_utf8_lossy(&out.stdout).into_owned(),
        stderr: String::from_utf8_lossy(&out.stderr).into_owned(),
    })
}

impl Host for SshView<'_> {
    async fn connect(
        &mut self,
        target: String,
        timeout: u64,
        opts: Vec<(String, String)>,
    ) -> Result<Resource<SessionHandle>, HostError> {
        let pool = self.pool;
        let (target, opts) = (&target, &opts);
        let (conn, slot) = self
            .outward
            .call(
                &funcs::SSH_CONNECT,
                &[Ask::Name(Capability::Ssh, target)],
                target,
                Some(timeout),
                |deadline| async move {
                    let opts = parse_options(opts, &["user"], "ssh connect")?;
                    let user = opts.get("user").copied();
                    let slot = pool.open_session()?;
                    let conn = pool.connect(target, user, deadline).await?;
                    Ok::<_, HostError>((conn, slot))
                },
            )
            .await?;
        let target = target.clone();
        Ok(self.table.push(SessionHandle { target, conn, slot })?)
    }

    async fn wait_reachable(&mut self, target: String, timeout: u64) -> Result<(), HostError> {
        let pool = self.pool;
        self.outward
            .call(
                &funcs::SSH_WAIT_REACHABLE,
                &[Ask::Name(Capability::Ssh, &target)],
                &target,
                Some(timeout),
                |deadline| pool.wait_reachable(&target, deadline),
            )
            .await
    }

    async fn authorize_key(&mut self, target: String, timeout: u64) -> Result<(), HostError> {
        let pool = self.pool;
        self.outward
            .call(
                &funcs::SSH_AUTHORIZE_KEY,
                &[Ask::Name(Capability::Ssh, &target)],
                &target,
                Some(timeout),
                |deadline| pool.authorize_key(&target, deadline),
            )
            .await
    }
}

#[cfg(test)]
mod tests {
    use std::path::Path;

    use labsim::dut::{Dut, Rule};

    use super::*;
    use crate::capability::{CapabilitySet, Gate, Subject};
    use crate::config::DeviceConfig;
    use crate::job_file::JobFile;
    use crate::limits::Limits;

    const T: u64 = 10_000;

    struct Setup {
        dut: Dut,
        home: tempfile::TempDir,
        run: tempfile::TempDir,
    }

    fn setup() -> Setup {
        let dut = Dut::start("127.0.0.2").unwrap();
        let home = tempfile::tempdir().unwrap();
        dut.configure_client(home.path()).unwrap();
        Setup {
            dut,
            home,
            run: tempfile::tempdir().unwrap(),
        }
    }

    /// Everything an [`SshView`] borrows, for a connector that declares
    /// and is granted `ssh: [device]`; no store, no component.
    struct Parts {
        outward_gate: Gate,
        limits: Limits,
        pool: SshPool,
        rundir: RunDir,
        table: ResourceTable,
        log: LogBudget,
    }

    impl Parts {
        fn view(&mut self) -> SshView<'_> {
            SshView {
                outward: Outward::new(&self.outward_gate, &self.limits),
                pool: &self.pool,
                rundir: &self.rundir,
                max_return_bytes: self.limits.max_return_bytes,
                table: &mut self.table,
                log: &mut self.log,
            }
        }
    }

    fn parts(s: &Setup, runtime: &str) -> Parts {
        let yaml = format!(
            "device_ip: {}\ncontrol_host: {}\nconnector_runtime: {runtime}\n",
            s.dut.ip(),
            s.dut.ip()
        );
        let config = DeviceConfig::parse(Path::new("default.yaml"), &yaml).unwrap();
        let job = JobFile::parse(Path::new("testflinger.json"), "{}").unwrap();
        let limits = crate::lab::merge_limits(&[config.runtime.limits.as_ref()]).unwrap();
        let mut declared = CapabilitySet::new();
        declared
            .entry(Capability::Ssh)
            .or_default()
            .insert("device".into());
        Parts {
            outward_gate: Gate::new(
                Subject::default(),
                declared.clone(),
                declared,
                Vec::new(),
                "the test",
            )
            .with_json_audit(&s.run.path().join("audit.jsonl"))
            .unwrap(),
            pool: SshPool::new(&config, &job, &limits)
                .unwrap()
                .with_home(s.home.path()),
            rundir: RunDir::new(s.run.path()),
            table: ResourceTable::new(),
            log: LogBudget::new(limits.max_log_bytes, "test-connector"),
            limits,
        }
    }

    fn audit(s: &Setup) -> Vec<(String, String, String)> {
        std::fs::read_to_string(s.run.path().join("audit.jsonl"))
            .unwrap_or_default()
            .lines()
            .map(|l| {
                let v: serde_json::Value = serde_json::from_str(l).unwrap();
                let field = |k: &str| v[k].as_str().unwrap().to_string();
                (field("call"), field("target"), field("result"))
            })
            .collect()
    }

    fn kind<T>(r: Result<T, HostError>) -> &'static str {
        match r {
            Ok(_) => "ok",
            Err(e) => e.kind(),
        }
    }

    fn dup(r: &Resource<SessionHandle>) -> Resource<SessionHandle> {
        Resource::new_own(r.rep())
    }

    #[tokio::test]
    async fn the_gate_comes_first() {
        let s = setup();
        let mut p = parts(&s, "{}");
        // control_host is configured, but not declared by the connector.
        assert_eq!(
            kind(Host::connect(&mut p.view(), "control-host".into(), T, vec![]).await),
            "denied"
        );
        assert_eq!(
            kind(Host::wait_reachable(&mut p.view(), "control-host".into(), T).await),
            "denied"
        );
        assert_eq!(
            kind(Host::authorize_key(&mut p.view(), "nope".into(), T).await),
            "denied"
        );
        assert!(s.dut.logins().is_empty());
    }

    /// Output lines logged for the connector count against its log
    /// volume: a loop of chatty commands ends like a loop of log calls.
    #[tokio::test]
    async fn logged_output_counts_against_the_log_limit() {
        let s = setup();
        let chatty = "yes line-of-output | head -n 40";
        let mut p = parts(&s, "{limits: {max_log_bytes: 1000}}");
        let r = Host::connect(&mut p.view(), "device".into(), T, vec![])
            .await
            .unwrap();
        HostSession::exec(&mut p.view(), dup(&r), chatty.into(), T, vec![])
            .await
            .unwrap();
        let err = HostSession::exec(&mut p.view(), dup(&r), chatty.into(), T, vec![])
            .await
            .unwrap_err();
        assert_eq!(err.kind(), "trap");
        assert!(err.to_string().contains("log volume limit"), "{err}");
        // Output kept quiet is not logged, so it does not count.
        let mut p = parts(&s, "{limits: {max_log_bytes: 100}}");
        let r = Host::connect(&mut p.view(), "device".into(), T, vec![])
            .await
            .unwrap();
        for _ in 0..3 {
            let quiet = vec![("log-output".to_string(), "false".to_string())];
            HostSession::exec(&mut p.view(), dup(&r), chatty.into(), T, quiet)
                .await
                .unwrap();
        }
    }

    #[tokio::test]
    async fn sessions_run_commands_and_move_files() {
        let s = setup();
        let mut p = parts(&s, "{limits: {max_return_bytes: 64}}");
        let r = Host::connect(&mut p.view(), "device".into(), T, vec![])
            .await
            .unwrap();
        let out = HostSession::exec(&mut p.view(), dup(&r), "echo hi; exit 4".into(), T, vec![])
            .await
            .unwrap();
        assert_eq!((out.status, out.stdout.as_str()), (4, "hi\n"));
        let quiet = vec![("log-output".to_string(), "false".to_string())];
        HostSession::exec(&mut p.view(), dup(&r), "true".into(), T, quiet)
            .await
            .unwrap();
        for bad in [("bogus", "1"), ("log-output", "maybe")] {
            let opts = vec![(bad.0.to_string(), bad.1.to_string())];
            assert_eq!(
                kind(HostSession::exec(&mut p.view(), dup(&r), "true".into(), T, opts).await),
                "invalid"
            );
        }
        assert_eq!(
            kind(
                HostSession::exec(
                    &mut p.view(),
                    dup(&r),
                    "head -c 100 /dev/zero".into(),
                    T,
                    vec![]
                )
                .await
            ),
            "limit"
        );

        HostSession::upload(
            &mut p.view(),
            dup(&r),
            "f.txt".into(),
            b"data".to_vec(),
            0o640,
            T,
        )
        .await
        .unwrap();
        assert_eq!(std::fs::read(s.dut.home().join("f.txt")).unwrap(), b"data");
        let back = HostSession::download(&mut p.view(), dup(&r), "f.txt".into(), T)
            .await
            .unwrap();
        assert_eq!(back, b"data");
        std::fs::write(s.dut.home().join("big"), vec![1u8; 100]).unwrap();
        match HostSession::download(&mut p.view(), dup(&r), "big".into(), T).await {
            Err(e) => {
                assert_eq!(e.kind(), "limit");
                assert!(e.to_string().contains("limits.max_return_bytes"), "{e}");
            }
            Ok(v) => panic!("expected a limit error, got {} bytes", v.len()),
        }
        // Artifacts have no return limit and land in the run directory.
        let n = HostSession::download_artifact(
            &mut p.view(),
            dup(&r),
            "big".into(),
            "logs/big.bin".into(),
            T,
        )
        .await
        .unwrap();
        assert_eq!(n, 100);
        assert_eq!(
            std::fs::read(s.run.path().join("artifacts/logs/big.bin")).unwrap(),
            vec![1u8; 100]
        );
        assert_eq!(
            kind(
                HostSession::download_artifact(
                    &mut p.view(),
                    dup(&r),
                    "big".into(),
                    "../escape".into(),
                    T
                )
                .await
            ),
            "invalid"
        );
        assert!(!s.run.path().join("escape").exists());
        HostSession::drop(&mut p.view(), r).await.unwrap();
        // One audit line per call, an escape attempt recorded as a denial.
        let calls: Vec<(String, String, String)> = audit(&s);
        let expect = [
            ("ssh.connect", "ok"),
            ("ssh.exec", "ok"),
            ("ssh.exec", "ok"),
            ("ssh.exec", "invalid"),
            ("ssh.exec", "invalid"),
            ("ssh.exec", "limit"),
            ("ssh.upload", "ok"),
            ("ssh.download", "ok"),
            ("ssh.download", "limit"),
            ("ssh.download-artifact", "ok"),
            ("ssh.download-artifact", "denied"),
        ];
        assert_eq!(
            calls
                .iter()
                .map(|(c, t, r)| (c.as_str(), t.as_str(), r.as_str()))
                .collect::<Vec<_>>(),
            expect.map(|(c, r)| (c, "device", r))
        );
    }

    /// Each kind of SSH failure reaches the connector as the WIT error
    /// kind it is documented as: a refused login is `refused`, a host key
    /// mismatch `denied`.
    #[test]
    fn ssh_errors_map_to_wit_kinds() {
        let kind = |e: SshError| HostError::from(e).kind();
        let t = || "device".to_string();
        assert_eq!(kind(SshError::UnknownTarget { target: t() }), "not-found");
        assert_eq!(
            kind(SshError::NotConfigured {
                target: t(),
                key: "device_ip".into()
            }),
            "not-found"
        );
        assert_eq!(kind(SshError::NoIdentity("no key".into())), "not-found");
        assert_eq!(kind(SshError::RemoteNotFound("f".into())), "not-found");
        assert_eq!(kind(SshError::BadSetup("home".into())), "invalid");
        assert_eq!(kind(SshError::Invalid("user".into())), "invalid");
        assert_eq!(
            kind(SshError::HostKey {
                target: t(),
                message: "mismatch".into()
            }),
            "denied"
        );
        let auth = SshError::Auth {
            target: t(),
            addr: "a".into(),
            user: "u".into(),
            message: "no".into(),
        };
        assert_eq!(kind(auth), "refused");
        assert_eq!(kind(SshError::Timeout("slow".into())), "timeout");
        let unreachable = SshError::Unreachable {
            target: t(),
            addr: "a".into(),
            how: "within 1 s".into(),
            last: "refused".into(),
        };
        assert_eq!(kind(unreachable), "timeout");
        let connect = SshError::Connect {
            target: t(),
            addr: "a".into(),
            message: "reset".into(),
        };
        assert_eq!(kind(connect), "io");
        assert_eq!(kind(SshError::Io("broken".into())), "io");
        assert_eq!(kind(SshError::Limit("sessions".into())), "limit");
        assert_eq!(kind(SshError::Failed("rm".into())), "failed");
    }

    #[tokio::test]
    async fn session_slots_are_limited_and_given_back() {
        let s = setup();
        let mut p = parts(&s, "{limits: {max_ssh_sessions: 1}}");
        let r = Host::connect(&mut p.view(), "device".into(), T, vec![])
            .await
            .unwrap();
        match Host::connect(&mut p.view(), "device".into(), T, vec![]).await {
            Err(e) => {
                assert_eq!(e.kind(), "limit");
                assert!(e.to_string().contains("limits.max_ssh_sessions"), "{e}");
            }
            Ok(_) => panic!("expected a limit error"),
        }
        HostSession::drop(&mut p.view(), r).await.unwrap();
        let user = vec![("user".to_string(), "admin".to_string())];
        let r = Host::connect(&mut p.view(), "device".into(), T, user)
            .await
            .unwrap();
        HostSession::exec(&mut p.view(), dup(&r), "true".into(), T, vec![])
            .await
            .unwrap();
        assert_eq!(s.dut.commands()[0].user, "admin");
    }

    #[tokio::test]
    async fn guest_deadlines_are_capped_by_the_lab() {
        let s = setup();
        s.dut
            .add_rule(Rule::exact("forever").delay(std::time::Duration::from_secs(30)));
        let mut p = parts(&s, "{limits: {host_call_timeout: 1}}");
        let r = Host::connect(&mut p.view(), "device".into(), T, vec![])
            .await
            .unwrap();
        let started = std::time::Instant::now();
        let result =
            HostSession::exec(&mut p.view(), dup(&r), "forever".into(), 3_600_000, vec![]).await;
        assert_eq!(kind(result), "timeout");
        assert!(started.elapsed() < std::time::Duration::from_secs(10));
    }
}
