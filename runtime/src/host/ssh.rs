//! `ssh`: sessions to named targets, on top of [`crate::ssh::SshPool`].
//!
//! Every guest deadline goes through [`duration_ms`] and is capped by
//! `limits.host_call_timeout`; addresses, keys and the test password stay
//! in the pool.

use std::sync::Arc;
use std::time::Duration;

use tracing::Instrument;
use wasmtime::component::Resource;

use super::{HostError, HostState, audited, bool_option, duration_ms, parse_options};
use crate::capability::Capability;
use crate::context::StageContext;
use crate::host::wit::latest::ssh::{ExecResult, Host, HostSession};
use crate::ssh::{Connection, SessionSlot};

/// The host side of a `session` resource.
pub struct SessionHandle {
    /// Target name the session was opened for.
    pub target: String,
    /// The shared connection.
    pub conn: Arc<Connection>,
    /// This session's share of `limits.max_ssh_sessions`.
    pub slot: SessionSlot,
}

impl HostState {
    /// A guest deadline, capped by the lab's per-call limit.
    fn ssh_deadline(&self, ms: u64) -> Duration {
        duration_ms(ms).min(self.cx.limits.host_call_timeout)
    }

    /// The connection behind a session resource.
    fn session_conn(
        &mut self,
        this: &Resource<SessionHandle>,
    ) -> Result<Arc<Connection>, HostError> {
        Ok(self.table().get(this)?.conn.clone())
    }
}

fn span(op: &'static str, target: &str) -> tracing::Span {
    tracing::debug_span!(target: "tfdc::ssh", "ssh", op, target)
}

impl HostSession for HostState {
    async fn exec(
        &mut self,
        this: Resource<SessionHandle>,
        command: String,
        timeout: u64,
        opts: Vec<(String, String)>,
    ) -> Result<ExecResult, HostError> {
        let conn = self.session_conn(&this)?;
        self.cx.gate.check(Capability::Ssh, conn.target())?;
        let timeout = self.ssh_deadline(timeout);
        let cx = self.cx.clone();
        // Output lines the host logs for the connector count against its
        // log volume, or a loop of `exec` would flood the agent's log.
        let budget = self.log_remaining();
        let mut logged = 0u64;
        let result = audited(
            &cx,
            "ssh.exec",
            conn.target(),
            exec_on(&cx, &conn, command, timeout, opts, budget, &mut logged),
        )
        .await;
        self.account_log(usize::try_from(logged).unwrap_or(usize::MAX))?;
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
        self.cx.gate.check(Capability::Ssh, conn.target())?;
        let timeout = self.ssh_deadline(timeout);
        let cx = self.cx.clone();
        audited(&cx, "ssh.upload", conn.target(), async {
            conn.upload(&path, &data, mode, timeout)
                .instrument(span("upload", conn.target()))
                .await?;
            Ok(())
        })
        .await
    }

    async fn download(
        &mut self,
        this: Resource<SessionHandle>,
        path: String,
        timeout: u64,
    ) -> Result<Vec<u8>, HostError> {
        let conn = self.session_conn(&this)?;
        self.cx.gate.check(Capability::Ssh, conn.target())?;
        let timeout = self.ssh_deadline(timeout);
        let max = self.cx.limits.max_return_bytes;
        let cx = self.cx.clone();
        audited(&cx, "ssh.download", conn.target(), async {
            conn.download(&path, timeout, max)
                .instrument(span("download", conn.target()))
                .await
                .map_err(|e| match e {
                    crate::ssh::SshError::Limit(m) => HostError::limit(format!(
                        "{m} (limits.max_return_bytes in the lab file raises it; download-artifact has no such limit)"
                    )),
                    other => other.into(),
                })
        })
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
        self.cx.gate.check(Capability::Ssh, conn.target())?;
        let dest = self
            .cx
            .rundir
            .artifact_path(&artifact)
            .map_err(|e| self.path_error("ssh.download-artifact", &artifact, e))?;
        let timeout = self.ssh_deadline(timeout);
        let cx = self.cx.clone();
        audited(&cx, "ssh.download-artifact", conn.target(), async {
            Ok(conn
                .download_to(&path, &dest, timeout, u64::MAX)
                .instrument(span("download-artifact", conn.target()))
                .await?)
        })
        .await
    }

    async fn drop(&mut self, this: Resource<SessionHandle>) -> wasmtime::Result<()> {
        // Dropping the handle gives its session slot back; the connection
        // stays pooled for the rest of the stage.
        self.table().delete(this)?;
        Ok(())
    }
}

/// Runs `command`; with `log-output`, logs its output lines while they
/// fit in `budget` bytes and counts them all in `logged`.
async fn exec_on(
    cx: &StageContext,
    conn: &Connection,
    command: String,
    timeout: Duration,
    opts: Vec<(String, String)>,
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
        conn.exec_streaming(&command, timeout, &mut on_line)
            .instrument(span("exec", conn.target()))
            .await?
    } else {
        conn.exec(&command, timeout, false)
            .instrument(span("exec", conn.target()))
            .await?
    };
    let max = cx.limits.max_return_bytes;
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

impl Host for HostState {
    async fn connect(
        &mut self,
        target: String,
        timeout: u64,
        opts: Vec<(String, String)>,
    ) -> Result<Resource<SessionHandle>, HostError> {
        self.cx.gate.check(Capability::Ssh, &target)?;
        let opts = parse_options(&opts, &["user"], "ssh connect")?;
        let user = opts.get("user").copied().map(str::to_string);
        let timeout = self.ssh_deadline(timeout);
        let slot = self.cx.ssh.open_session()?;
        let cx = self.cx.clone();
        let conn = audited(&cx, "ssh.connect", &target, async {
            Ok(cx
                .ssh
                .connect(&target, user.as_deref(), timeout)
                .instrument(span("connect", &target))
                .await?)
        })
        .await?;
        Ok(self.table().push(SessionHandle { target, conn, slot })?)
    }

    async fn wait_reachable(&mut self, target: String, timeout: u64) -> Result<(), HostError> {
        self.cx.gate.check(Capability::Ssh, &target)?;
        let timeout = self.ssh_deadline(timeout);
        let cx = self.cx.clone();
        audited(&cx, "ssh.wait-reachable", &target, async {
            Ok(cx
                .ssh
                .wait_reachable(&target, timeout)
                .instrument(span("wait-reachable", &target))
                .await?)
        })
        .await
    }

    async fn authorize_key(&mut self, target: String, timeout: u64) -> Result<(), HostError> {
        self.cx.gate.check(Capability::Ssh, &target)?;
        let timeout = self.ssh_deadline(timeout);
        let cx = self.cx.clone();
        audited(&cx, "ssh.authorize-key", &target, async {
            Ok(cx
                .ssh
                .authorize_key(&target, timeout)
                .instrument(span("authorize-key", &target))
                .await?)
        })
        .await
    }
}

#[cfg(test)]
mod tests {
    use std::path::Path;

    use labsim::dut::{Dut, Rule};

    use super::*;
    use crate::capability::{CapabilitySet, Gate};
    use crate::config::DeviceConfig;
    use crate::context::{ConnectorInfo, StageContext};
    use crate::job_file::JobFile;
    use crate::rundir::RunDir;
    use crate::ssh::SshPool;
    use crate::stage::Stage;

    const T: u64 = 10_000;

    struct Setup {
        dut: Dut,
        _home: tempfile::TempDir,
        run: tempfile::TempDir,
    }

    fn setup() -> Setup {
        let dut = Dut::start("127.0.0.2").unwrap();
        let home = tempfile::tempdir().unwrap();
        dut.configure_client(home.path()).unwrap();
        Setup {
            dut,
            _home: home,
            run: tempfile::tempdir().unwrap(),
        }
    }

    fn state(s: &Setup, runtime: &str) -> HostState {
        let yaml = format!(
            "device_ip: {}\ncontrol_host: {}\nconnector_runtime: {runtime}\n",
            s.dut.ip(),
            s.dut.ip()
        );
        let config = DeviceConfig::parse(Path::new("default.yaml"), &yaml).unwrap();
        let job = JobFile::parse(Path::new("testflinger.json"), "{}").unwrap();
        let limits = crate::lab::merge_limits(&[config.runtime.limits.as_ref()]).unwrap();
        let rundir = RunDir::new(s.run.path());
        let mut declared = CapabilitySet::new();
        declared
            .entry(Capability::Ssh)
            .or_default()
            .insert("device".into());
        let cx = StageContext {
            stage: Stage::Provision,
            provision_type: "test".into(),
            connector: ConnectorInfo {
                name: "test-connector".into(),
                version: "0".into(),
                digest: "sha256:0".into(),
                wit: crate::host::wit::LATEST.into(),
            },
            transfers: crate::transfer::Transfers::new(limits.max_transfers),
            ssh: SshPool::new(&config, &job, &limits)
                .unwrap()
                .with_home(s._home.path()),
            serial: crate::serial::SerialHub::new(&config, &rundir, Stage::Provision),
            http: crate::http::HttpClient::new(&config, &job).unwrap(),
            gate: Gate::new(
                crate::capability::Subject::default(),
                declared.clone(),
                declared,
                Vec::new(),
                "the test",
            ),
            config,
            job,
            rundir,
            limits,
        };
        HostState::new(Arc::new(cx))
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
        let mut st = state(&s, "{}");
        // control_host is configured, but not declared by the connector.
        assert_eq!(
            kind(Host::connect(&mut st, "control-host".into(), T, vec![]).await),
            "denied"
        );
        assert_eq!(
            kind(Host::wait_reachable(&mut st, "control-host".into(), T).await),
            "denied"
        );
        assert_eq!(
            kind(Host::authorize_key(&mut st, "nope".into(), T).await),
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
        let mut st = state(&s, "{limits: {max_log_bytes: 1000}}");
        let r = Host::connect(&mut st, "device".into(), T, vec![])
            .await
            .unwrap();
        HostSession::exec(&mut st, dup(&r), chatty.into(), T, vec![])
            .await
            .unwrap();
        let err = HostSession::exec(&mut st, dup(&r), chatty.into(), T, vec![])
            .await
            .unwrap_err();
        assert_eq!(err.kind(), "trap");
        assert!(err.to_string().contains("log volume limit"), "{err}");
        // Output kept quiet is not logged, so it does not count.
        let mut st = state(&s, "{limits: {max_log_bytes: 100}}");
        let r = Host::connect(&mut st, "device".into(), T, vec![])
            .await
            .unwrap();
        for _ in 0..3 {
            let quiet = vec![("log-output".to_string(), "false".to_string())];
            HostSession::exec(&mut st, dup(&r), chatty.into(), T, quiet)
                .await
                .unwrap();
        }
    }

    #[tokio::test]
    async fn sessions_run_commands_and_move_files() {
        let s = setup();
        let mut st = state(&s, "{limits: {max_return_bytes: 64}}");
        let r = Host::connect(&mut st, "device".into(), T, vec![])
            .await
            .unwrap();
        let out = HostSession::exec(&mut st, dup(&r), "echo hi; exit 4".into(), T, vec![])
            .await
            .unwrap();
        assert_eq!((out.status, out.stdout.as_str()), (4, "hi\n"));
        let quiet = vec![("log-output".to_string(), "false".to_string())];
        HostSession::exec(&mut st, dup(&r), "true".into(), T, quiet)
            .await
            .unwrap();
        for bad in [("bogus", "1"), ("log-output", "maybe")] {
            let opts = vec![(bad.0.to_string(), bad.1.to_string())];
            assert_eq!(
                kind(HostSession::exec(&mut st, dup(&r), "true".into(), T, opts).await),
                "invalid"
            );
        }
        assert_eq!(
            kind(
                HostSession::exec(&mut st, dup(&r), "head -c 100 /dev/zero".into(), T, vec![])
                    .await
            ),
            "limit"
        );

        HostSession::upload(&mut st, dup(&r), "f.txt".into(), b"data".to_vec(), 0o640, T)
            .await
            .unwrap();
        assert_eq!(std::fs::read(s.dut.home().join("f.txt")).unwrap(), b"data");
        let back = HostSession::download(&mut st, dup(&r), "f.txt".into(), T)
            .await
            .unwrap();
        assert_eq!(back, b"data");
        std::fs::write(s.dut.home().join("big"), vec![1u8; 100]).unwrap();
        match HostSession::download(&mut st, dup(&r), "big".into(), T).await {
            Err(HostError::Guest(e)) => {
                let text = crate::host::wit_error_text(&e);
                assert!(text.contains("limits.max_return_bytes"), "{text}");
            }
            other => panic!("expected a limit error, got {:?}", other.map(|v| v.len())),
        }
        // Artifacts have no return limit and land in the run directory.
        let n = HostSession::download_artifact(
            &mut st,
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
                    &mut st,
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
        HostSession::drop(&mut st, r).await.unwrap();
    }

    #[tokio::test]
    async fn session_slots_are_limited_and_given_back() {
        let s = setup();
        let mut st = state(&s, "{limits: {max_ssh_sessions: 1}}");
        let r = Host::connect(&mut st, "device".into(), T, vec![])
            .await
            .unwrap();
        match Host::connect(&mut st, "device".into(), T, vec![]).await {
            Err(HostError::Guest(e)) => {
                let text = crate::host::wit_error_text(&e);
                assert!(text.contains("limits.max_ssh_sessions"), "{text}");
            }
            _ => panic!("expected a limit error"),
        }
        HostSession::drop(&mut st, r).await.unwrap();
        let user = vec![("user".to_string(), "admin".to_string())];
        let r = Host::connect(&mut st, "device".into(), T, user)
            .await
            .unwrap();
        HostSession::exec(&mut st, dup(&r), "true".into(), T, vec![])
            .await
            .unwrap();
        assert_eq!(s.dut.commands()[0].user, "admin");
    }

    #[tokio::test]
    async fn guest_deadlines_are_capped_by_the_lab() {
        let s = setup();
        s.dut
            .add_rule(Rule::exact("forever").delay(std::time::Duration::from_secs(30)));
        let mut st = state(&s, "{limits: {host_call_timeout: 1}}");
        let r = Host::connect(&mut st, "device".into(), T, vec![])
            .await
            .unwrap();
        let started = std::time::Instant::now();
        let result = HostSession::exec(&mut st, dup(&r), "forever".into(), 3_600_000, vec![]).await;
        assert_eq!(kind(result), "timeout");
        assert!(started.elapsed() < std::time::Duration::from_secs(10));
    }
}
