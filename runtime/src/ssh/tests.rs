//! Client tests against the simulated device of `tf-labsim`.

use std::path::Path;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use bytes::Bytes;
use labsim::dut::{self, Dut, Fault, PowerState, Rule};
use sha2::Digest;

use super::*;
use crate::config::DeviceConfig;
use crate::job_file::JobFile;

const T: Duration = Duration::from_secs(10);
/// Devices listen on 127.0.0.2: client sockets take their ephemeral ports
/// on 127.0.0.1, so a rebooting device always gets its port back.
const IP: &str = "127.0.0.2";

/// A device with the agent side configured in a scratch HOME.
struct Lab {
    dut: Dut,
    home: tempfile::TempDir,
}

impl Lab {
    fn new() -> Lab {
        Lab::with(Dut::start(IP).unwrap())
    }

    fn with(dut: Dut) -> Lab {
        let home = tempfile::tempdir().unwrap();
        dut.configure_client(home.path()).unwrap();
        Lab { dut, home }
    }

    fn home(&self) -> &Path {
        self.home.path()
    }

    /// A pool for a config with `device_ip` plus `extra` YAML lines.
    fn pool(&self, extra: &str, job: &str) -> SshPool {
        pool_for(
            &format!(
                "device_ip: {}\nconnector_runtime: {{poll_interval_seconds: 0.05}}\n{extra}",
                self.dut.ip()
            ),
            job,
            self.home(),
        )
    }
}

fn pool_for(yaml: &str, job: &str, home: &Path) -> SshPool {
    let config = DeviceConfig::parse(Path::new("default.yaml"), yaml).unwrap();
    let job = JobFile::parse(Path::new("testflinger.json"), job).unwrap();
    let limits = crate::lab::merge_limits(&[config.runtime.limits.as_ref()]).unwrap();
    SshPool::new(&config, &job, &limits)
        .unwrap()
        .with_home(home)
}

#[tokio::test]
async fn key_login_runs_commands_with_status_and_output() {
    let lab = Lab::new();
    let pool = lab.pool("", "{}");
    let conn = pool.connect("device", None, T).await.unwrap();
    assert_eq!(conn.describe(), format!("ubuntu@{}", lab.dut.addr()));
    let out = conn
        .exec("echo out; echo err >&2; exit 3", T, false)
        .await
        .unwrap();
    assert_eq!(out.status, 3);
    assert_eq!(out.stdout, b"out\n");
    assert_eq!(out.stderr, b"err\n");
    // Commands run through the user's shell, in the home directory.
    let out = conn.exec("pwd; echo $HOME", T, false).await.unwrap();
    let home = lab.dut.home().display().to_string();
    assert_eq!(
        String::from_utf8(out.stdout).unwrap(),
        format!("{home}\n{home}\n")
    );
    let cmds = lab.dut.commands();
    assert_eq!(cmds.len(), 2);
    assert_eq!(cmds[0].user, "ubuntu");
    assert_eq!(cmds[0].command, "echo out; echo err >&2; exit 3");
    assert_eq!(lab.dut.logins()[0].method, "publickey");
}

#[tokio::test]
async fn killed_commands_report_minus_one() {
    let lab = Lab::new();
    let pool = lab.pool("", "{}");
    let conn = pool.connect("device", None, T).await.unwrap();
    let out = conn.exec("kill -9 $$", T, false).await.unwrap();
    assert_eq!(out.status, -1);
}

#[tokio::test]
async fn users_come_from_the_job_or_the_override() {
    let lab = Lab::new();
    let pool = lab.pool("", r#"{"test_data":{"test_username":"tester"}}"#);
    let conn = pool.connect("device", None, T).await.unwrap();
    conn.exec("true", T, false).await.unwrap();
    let admin = pool.connect("device", Some("admin"), T).await.unwrap();
    assert_eq!(admin.user(), "admin");
    admin.exec("true", T, false).await.unwrap();
    let users: Vec<String> = lab.dut.commands().into_iter().map(|c| c.user).collect();
    assert_eq!(users, ["tester", "admin"]);
    let err = pool
        .connect("device", Some("bad user"), T)
        .await
        .err()
        .unwrap();
    assert!(matches!(err, SshError::Invalid(_)), "{err}");
}

#[tokio::test]
async fn openssh_config_supplies_hostname_port_and_identity() {
    let dut = Dut::start(IP).unwrap();
    let home = tempfile::tempdir().unwrap();
    // The key lives where only IdentityFile points; no default key exists.
    std::fs::create_dir_all(home.path().join("keys")).unwrap();
    let key = dut::write_key_pair(&home.path().join("keys/special"), None).unwrap();
    dut.authorize_key(&key.public_line).unwrap();
    std::fs::create_dir_all(home.path().join(".ssh")).unwrap();
    std::fs::write(
        home.path().join(".ssh/config"),
        format!(
            "Host other\n    Port 1\n\
             Host dut-alias\n    HostName {}\n    Port {}\n    User configured\n    IdentityFile ~/keys/special\n\
             Host *\n    Port 2\n    User fallback\n",
            dut.ip(),
            dut.port()
        ),
    )
    .unwrap();
    let pool = pool_for("device_ip: dut-alias\n", "{}", home.path());
    let conn = pool.connect("device", None, T).await.unwrap();
    // The explicit user of the target rule wins over `User`, as with
    // `ssh ubuntu@dut-alias`.
    assert_eq!(conn.describe(), format!("ubuntu@{}", dut.addr()));
    conn.exec("true", T, false).await.unwrap();
    assert_eq!(dut.commands()[0].user, "ubuntu");
}

#[tokio::test]
async fn identity_files_setting_overrides_config_and_defaults() {
    let lab = Lab::new();
    // The default key (id_ed25519) is authorised; the configured one is not.
    let other = dut::write_key_pair(&lab.home().join("unauthorised"), None).unwrap();
    let pool = lab.pool(
        &format!(
            "connector_runtime: {{identity_files: [{}]}}\n",
            other.private_key.display()
        ),
        "{}",
    );
    let err = pool.connect("device", None, T).await.err().unwrap();
    let text = err.to_string();
    assert!(
        text.contains("refused the login") && text.contains("unauthorised"),
        "{text}"
    );
    assert!(matches!(err, SshError::Auth { .. }), "{err}");
    lab.dut.authorize_key(&other.public_line).unwrap();
    pool.connect("device", None, T).await.unwrap();
}

#[tokio::test]
async fn missing_and_encrypted_keys_are_explained() {
    let dut = Dut::start(IP).unwrap();
    let home = tempfile::tempdir().unwrap();
    let yaml = format!("device_ip: {}\n", dut.ip());
    let err = pool_for(&yaml, "{}", home.path())
        .connect("device", None, T)
        .await
        .err()
        .unwrap();
    let text = err.to_string();
    assert!(
        text.contains("id_ed25519") && text.contains("identity_files"),
        "{text}"
    );
    assert!(matches!(err, SshError::NoIdentity(_)), "{err}");

    std::fs::create_dir_all(home.path().join(".ssh")).unwrap();
    dut::write_key_pair(&home.path().join(".ssh/id_ed25519"), Some("pass")).unwrap();
    let err = pool_for(&yaml, "{}", home.path())
        .connect("device", None, T)
        .await
        .err()
        .unwrap();
    let text = err.to_string();
    assert!(
        text.contains("passphrase") && text.contains("unencrypted"),
        "{text}"
    );
}

#[tokio::test]
async fn host_keys_are_only_checked_when_asked() {
    let lab = Lab::new();
    let known = lab.home().join("known");
    let stranger = Dut::start(IP).unwrap();
    // A known_hosts that records another key for this address.
    let wrong = format!(
        "[{}]:{} {}",
        lab.dut.ip(),
        lab.dut.port(),
        stranger.host_key().to_openssh().unwrap()
    );
    std::fs::write(&known, format!("{wrong}\n")).unwrap();

    // Off by default (the reference's StrictHostKeyChecking=no).
    let pool = lab.pool(&format!("# {}\n", known.display()), "{}");
    pool.connect("device", None, T).await.unwrap();

    let strict = format!(
        "connector_runtime: {{strict_host_key_checking: true, known_hosts: {}}}\n",
        known.display()
    );
    let err = lab
        .pool(&strict, "{}")
        .connect("device", None, T)
        .await
        .err()
        .unwrap();
    let text = err.to_string();
    assert!(
        text.contains("does NOT match") && text.contains("line 1"),
        "{text}"
    );
    assert!(matches!(err, SshError::HostKey { .. }), "{err}");

    std::fs::write(&known, "").unwrap();
    let err = lab
        .pool(&strict, "{}")
        .connect("device", None, T)
        .await
        .err()
        .unwrap();
    let text = err.to_string();
    assert!(
        text.contains("is not in") && text.contains("known"),
        "{text}"
    );

    std::fs::write(&known, format!("{}\n", lab.dut.known_hosts_line())).unwrap();
    let conn = lab
        .pool(&strict, "{}")
        .connect("device", None, T)
        .await
        .unwrap();
    conn.exec("true", T, false).await.unwrap();
}

#[tokio::test]
async fn output_lines_stream_while_the_command_runs() {
    let lab = Lab::new();
    let pool = lab.pool("", "{}");
    let conn = pool.connect("device", None, T).await.unwrap();
    let go = lab.dut.home().join("go");
    let mut seen = Vec::new();
    let mut on_line = |stream: OutputStream, line: &str| {
        // The command only finishes once it sees `go`, which is created
        // when its first line arrives: the line must come before the end.
        if line == "first" {
            std::fs::write(&go, "").unwrap();
        }
        seen.push((stream, line.to_string()));
    };
    let out = conn
        .exec_streaming(
            "echo first; i=0; while [ ! -e go ] && [ $i -lt 200 ]; do sleep 0.02; i=$((i+1)); done; [ -e go ] && echo second >&2",
            T,
            &mut on_line,
        )
        .await
        .unwrap();
    assert_eq!(out.status, 0, "{out:?}");
    assert_eq!(
        seen,
        vec![
            (OutputStream::Stdout, "first".to_string()),
            (OutputStream::Stderr, "second".to_string())
        ]
    );
}

/// Records the messages of `tfdc::ssh` events.
#[derive(Clone, Default)]
struct Capture(Arc<Mutex<Vec<String>>>);

impl<S: tracing::Subscriber> tracing_subscriber::Layer<S> for Capture {
    fn on_event(&self, event: &tracing::Event<'_>, _: tracing_subscriber::layer::Context<'_, S>) {
        struct Msg(String);
        impl tracing::field::Visit for Msg {
            fn record_debug(&mut self, f: &tracing::field::Field, v: &dyn std::fmt::Debug) {
                if f.name() == "message" {
                    self.0 = format!("{v:?}");
                }
            }
        }
        if event.metadata().target() == "tfdc::ssh" {
            let mut m = Msg(String::new());
            event.record(&mut m);
            self.0.lock().unwrap().push(m.0);
        }
    }
}

#[tokio::test]
async fn log_output_sends_lines_to_the_log() {
    use tracing_subscriber::layer::SubscriberExt;
    let capture = Capture::default();
    let _guard =
        tracing::subscriber::set_default(tracing_subscriber::registry().with(capture.clone()));
    let lab = Lab::new();
    let pool = lab.pool("", "{}");
    let conn = pool.connect("device", None, T).await.unwrap();
    conn.exec("echo loud-line; echo err-line >&2", T, true)
        .await
        .unwrap();
    conn.exec("echo quiet-line", T, false).await.unwrap();
    let lines = capture.0.lock().unwrap().clone();
    assert!(lines.iter().any(|l| l == "loud-line"), "{lines:?}");
    assert!(lines.iter().any(|l| l == "err-line"), "{lines:?}");
    assert!(!lines.iter().any(|l| l == "quiet-line"), "{lines:?}");
}

#[tokio::test]
async fn exec_timeout_names_the_command_and_target_and_keeps_the_connection() {
    let lab = Lab::new();
    lab.dut
        .add_rule(Rule::exact("slow-thing --forever").delay(Duration::from_secs(30)));
    let pool = lab.pool("", "{}");
    let conn = pool.connect("device", None, T).await.unwrap();
    let started = Instant::now();
    let err = conn
        .exec("slow-thing --forever", Duration::from_millis(300), false)
        .await
        .unwrap_err();
    assert!(started.elapsed() < Duration::from_secs(5));
    let text = err.to_string();
    assert!(
        text.contains("slow-thing --forever") && text.contains("device") && text.contains("300 ms"),
        "{text}"
    );
    assert!(matches!(err, SshError::Timeout(_)), "{err}");
    // A real process is ended when its channel is closed.
    let err = conn
        .exec("sleep 20", Duration::from_millis(200), false)
        .await
        .unwrap_err();
    assert!(matches!(err, SshError::Timeout(_)));
    let out = conn.exec("echo still-here", T, false).await.unwrap();
    assert_eq!(out.stdout, b"still-here\n");
    assert_eq!(lab.dut.connections_accepted(), 1);
}

#[tokio::test]
async fn buffered_output_is_capped() {
    let lab = Lab::new();
    let pool = lab.pool(
        "connector_runtime: {limits: {max_exec_output_bytes: 1000}}\n",
        "{}",
    );
    let conn = pool.connect("device", None, T).await.unwrap();
    let out = conn.exec("head -c 1000 /dev/zero", T, false).await.unwrap();
    assert_eq!(out.stdout.len(), 1000);
    let err = conn
        .exec("head -c 600 /dev/zero; head -c 600 /dev/zero >&2", T, false)
        .await
        .unwrap_err();
    let text = err.to_string();
    assert!(text.contains("limits.max_exec_output_bytes"), "{text}");
    assert!(matches!(err, SshError::Limit(_)), "{err}");
    conn.exec("true", T, false).await.unwrap();
}

#[tokio::test]
async fn one_connection_serves_every_call() {
    let lab = Lab::new();
    let pool = lab.pool("", "{}");
    let conn = pool.connect("device", None, T).await.unwrap();
    for i in 0..5 {
        let out = conn.exec(&format!("echo {i}"), T, false).await.unwrap();
        assert_eq!(out.stdout, format!("{i}\n").as_bytes());
    }
    let again = pool.connect("device", None, T).await.unwrap();
    assert!(Arc::ptr_eq(&conn, &again));
    again.upload("f", b"x", 0o644, T).await.unwrap();
    again.download("f", T, 10).await.unwrap();
    pool.wait_reachable("device", T).await.unwrap();
    conn.exec("true", T, false).await.unwrap();
    // wait_reachable makes a fresh login, as the reference's probe does;
    // everything else shares one.
    assert_eq!(lab.dut.connections_accepted(), 2);
    assert_eq!(conn.connections_opened(), 2);
}

#[tokio::test]
async fn a_dead_connection_is_replaced_transparently() {
    let lab = Lab::new();
    let pool = lab.pool("", "{}");
    let conn = pool.connect("device", None, T).await.unwrap();
    conn.exec("true", T, false).await.unwrap();
    lab.dut.reboot(Duration::from_millis(200));
    assert!(lab.dut.wait_state(PowerState::Up, T));
    let out = conn.exec("echo back", T, false).await.unwrap();
    assert_eq!(out.stdout, b"back\n");
    assert_eq!(lab.dut.connections_accepted(), 2);
}

#[tokio::test]
async fn concurrent_sessions_are_capped() {
    let lab = Lab::new();
    lab.dut
        .add_rule(Rule::exact("hold").delay(Duration::from_millis(400)));
    let pool = lab.pool("connector_runtime: {limits: {max_ssh_sessions: 2}}\n", "{}");
    let conn = pool.connect("device", None, T).await.unwrap();
    let (a, b, c) = tokio::join!(
        conn.exec("hold", T, false),
        conn.exec("hold", T, false),
        async {
            tokio::time::sleep(Duration::from_millis(100)).await;
            conn.exec("hold", T, false).await
        }
    );
    assert!(a.is_ok() && b.is_ok());
    let text = c.unwrap_err().to_string();
    assert!(
        text.contains("limits.max_ssh_sessions in the lab file raises it"),
        "{text}"
    );
    // Slots come back when commands end.
    conn.exec("true", T, false).await.unwrap();

    let s1 = pool.open_session().unwrap();
    let _s2 = pool.open_session().unwrap();
    let err = pool.open_session().unwrap_err();
    assert!(matches!(err, SshError::Limit(_)), "{err}");
    drop(s1);
    pool.open_session().unwrap();
}

/// `chunks` chunks of `size` pseudo-random bytes, counting what was pulled.
fn pattern_stream(
    chunks: usize,
    size: usize,
    pulled: Arc<std::sync::atomic::AtomicU64>,
) -> impl futures::Stream<Item = std::io::Result<Bytes>> + Send + Unpin {
    let mut state = 0x9e37_79b9_7f4a_7c15u64;
    futures::stream::iter((0..chunks).map(move |_| {
        let mut buf = Vec::with_capacity(size);
        while buf.len() < size {
            state ^= state << 13;
            state ^= state >> 7;
            state ^= state << 17;
            buf.extend_from_slice(&state.to_le_bytes());
        }
        buf.truncate(size);
        pulled.fetch_add(size as u64, std::sync::atomic::Ordering::Relaxed);
        Ok(Bytes::from(buf))
    }))
}

#[tokio::test]
async fn stdin_streams_land_on_the_device() {
    let lab = Lab::new();
    let pool = lab.pool("", "{}");
    let conn = pool.connect("device", None, T).await.unwrap();
    let pulled = Arc::new(std::sync::atomic::AtomicU64::new(0));
    let total = 64 * 1024 * 1024u64;
    // The expected digest, from an identical stream.
    let mut expected = sha2::Sha256::new();
    {
        use futures::StreamExt;
        let mut s = pattern_stream(1024, 64 * 1024, Arc::default());
        while let Some(chunk) = s.next().await {
            expected.update(chunk.unwrap());
        }
    }
    let started = Instant::now();
    let out = conn
        .exec_with_stdin(
            "cat > image.bin && wc -c < image.bin",
            pattern_stream(1024, 64 * 1024, pulled.clone()),
            Duration::from_secs(120),
            false,
        )
        .await
        .unwrap();
    let secs = started.elapsed().as_secs_f64();
    eprintln!(
        "exec_with_stdin: {} MiB in {secs:.2} s = {:.0} MB/s",
        total >> 20,
        total as f64 / secs / 1e6
    );
    assert_eq!(out.status, 0, "{out:?}");
    assert_eq!(
        String::from_utf8_lossy(&out.stdout).trim(),
        total.to_string()
    );
    let landed = std::fs::read(lab.dut.home().join("image.bin")).unwrap();
    assert_eq!(landed.len() as u64, total);
    assert_eq!(sha2::Sha256::digest(&landed), expected.finalize());
}

#[tokio::test]
async fn stdin_streams_are_read_only_as_fast_as_the_device_takes_them() {
    let lab = Lab::new();
    let pool = lab.pool("", "{}");
    let conn = pool.connect("device", None, T).await.unwrap();
    let pulled = Arc::new(std::sync::atomic::AtomicU64::new(0));
    // 1 GiB offered; the command takes 1 MiB and then stops reading.
    let err = conn
        .exec_with_stdin(
            "head -c 1048576 > part.bin; exec sleep 1",
            pattern_stream(16 * 1024, 64 * 1024, pulled.clone()),
            Duration::from_millis(700),
            false,
        )
        .await
        .unwrap_err();
    assert!(matches!(err, SshError::Timeout(_)), "{err}");
    let pulled = pulled.load(std::sync::atomic::Ordering::Relaxed);
    assert!(
        pulled < 64 << 20,
        "pulled {pulled} bytes of a stream nobody reads"
    );
}

#[tokio::test]
async fn upload_and_download_files() {
    let lab = Lab::new();
    let pool = lab.pool("", "{}");
    let conn = pool.connect("device", None, T).await.unwrap();
    conn.upload("a dir's file.txt", b"hello\n", 0o600, T)
        .await
        .unwrap();
    let path = lab.dut.home().join("a dir's file.txt");
    assert_eq!(std::fs::read(&path).unwrap(), b"hello\n");
    use std::os::unix::fs::PermissionsExt;
    assert_eq!(
        std::fs::metadata(&path).unwrap().permissions().mode() & 0o777,
        0o600
    );
    conn.upload("~/x.sh", b"#!/bin/sh\n", 0o755, T)
        .await
        .unwrap();
    assert_eq!(
        std::fs::metadata(lab.dut.home().join("x.sh"))
            .unwrap()
            .permissions()
            .mode()
            & 0o777,
        0o755
    );
    let err = conn
        .upload("no/such/dir/f", b"x", 0o644, T)
        .await
        .unwrap_err();
    assert!(matches!(err, SshError::RemoteNotFound(_)), "{err}");

    assert_eq!(
        conn.download("a dir's file.txt", T, 100).await.unwrap(),
        b"hello\n"
    );
    let err = conn.download("nope", T, 100).await.unwrap_err();
    assert!(err.to_string().contains("nope"), "{err}");
    assert!(matches!(err, SshError::RemoteNotFound(_)), "{err}");
    let err = conn.download("a dir's file.txt", T, 3).await.unwrap_err();
    assert!(matches!(err, SshError::Limit(_)), "{err}");

    let local = tempfile::tempdir().unwrap();
    let dest = local.path().join("copy.txt");
    std::fs::write(&dest, "old").unwrap();
    let big = vec![7u8; 3 << 20];
    std::fs::write(lab.dut.home().join("big.bin"), &big).unwrap();
    let err = conn
        .download_to("big.bin", &dest, T, 1 << 20)
        .await
        .unwrap_err();
    assert!(matches!(err, SshError::Limit(_)), "{err}");
    // A failed download leaves the old file alone and no temp files.
    assert_eq!(std::fs::read(&dest).unwrap(), b"old");
    assert_eq!(std::fs::read_dir(local.path()).unwrap().count(), 1);
    let n = conn
        .download_to("big.bin", &dest, T, 4 << 20)
        .await
        .unwrap();
    assert_eq!(n, 3 << 20);
    assert_eq!(std::fs::read(&dest).unwrap(), big);
    let err = conn.download_to("missing", &dest, T, 10).await.unwrap_err();
    assert!(matches!(err, SshError::RemoteNotFound(_)), "{err}");
    assert_eq!(std::fs::read(&dest).unwrap(), big);
}

#[tokio::test]
async fn wait_reachable_returns_once_the_device_is_back() {
    let lab = Lab::new();
    let pool = lab.pool("", "{}");
    lab.dut.reboot(Duration::from_millis(600));
    let started = Instant::now();
    pool.wait_reachable("device", Duration::from_secs(30))
        .await
        .unwrap();
    assert!(started.elapsed() >= Duration::from_millis(500));
    assert!(started.elapsed() < Duration::from_secs(15));
    assert_eq!(lab.dut.command_lines(), ["/bin/true"]);
    // The probe's connection is kept for what follows.
    let accepted = lab.dut.connections_accepted();
    let conn = pool.connect("device", None, T).await.unwrap();
    conn.exec("true", T, false).await.unwrap();
    assert_eq!(lab.dut.connections_accepted(), accepted);
}

#[tokio::test]
async fn wait_reachable_gives_up_with_the_last_failure() {
    let lab = Lab::with(Dut::builder(IP).powered_off().start().unwrap());
    let pool = lab.pool("", "{}");
    let err = pool
        .wait_reachable("device", Duration::from_millis(500))
        .await
        .unwrap_err();
    let text = err.to_string();
    assert!(
        text.contains("device")
            && text.contains(&lab.dut.addr().to_string())
            && text.contains("500 ms")
            && text.to_lowercase().contains("refused"),
        "{text}"
    );
    assert!(!text.contains("only attempt"), "{text}");
    assert!(
        matches!(err, SshError::Timeout(_) | SshError::Unreachable { .. }),
        "{err}"
    );

    // A zero timeout still makes exactly one attempt.
    let err = pool
        .wait_reachable("device", Duration::ZERO)
        .await
        .unwrap_err();
    assert!(err.to_string().contains("on its only attempt"), "{err}");
}

#[tokio::test]
async fn wait_reachable_bounds_attempts_on_a_hanging_device() {
    let lab = Lab::new();
    lab.dut.set_fault(Fault::Hang);
    let home = lab.home();
    let config = std::fs::read_to_string(home.join(".ssh/config")).unwrap();
    std::fs::write(
        home.join(".ssh/config"),
        format!("Host *\n    ConnectTimeout 1\n{config}"),
    )
    .unwrap();
    let pool = lab.pool("", "{}");
    let started = Instant::now();
    let err = pool
        .wait_reachable("device", Duration::from_millis(1500))
        .await
        .unwrap_err();
    assert!(started.elapsed() < Duration::from_secs(8));
    assert!(
        matches!(err, SshError::Timeout(_) | SshError::Unreachable { .. }),
        "{err}"
    );
    assert!(lab.dut.connections_accepted() >= 1);
    lab.dut.set_fault(Fault::None);
    pool.wait_reachable("device", T).await.unwrap();
}

#[tokio::test]
async fn authorize_key_installs_the_key_with_the_password() {
    let dut = Dut::builder(IP)
        .user("tester")
        .password("pa ss'word")
        .start()
        .unwrap();
    let home = tempfile::tempdir().unwrap();
    let key = dut::agent_key(home.path()).unwrap();
    dut.write_client_config(home.path(), &key.private_key)
        .unwrap();
    let job = r#"{"test_data":{"test_username":"tester","test_password":"pa ss'word"}}"#;
    let pool = pool_for(&format!("device_ip: {}\n", dut.ip()), job, home.path());
    // A device with a stale authorized_keys without a final newline.
    std::fs::write(
        dut.home().join(".ssh/authorized_keys"),
        "ssh-ed25519 AAAAstale x",
    )
    .unwrap();
    let err = pool.connect("device", None, T).await.err().unwrap();
    assert!(matches!(err, SshError::Auth { .. }), "{err}");

    pool.authorize_key("device", T).await.unwrap();
    let keys = std::fs::read_to_string(dut.home().join(".ssh/authorized_keys")).unwrap();
    assert_eq!(
        keys,
        format!("ssh-ed25519 AAAAstale x\n{}\n", key.public_line)
    );
    use std::os::unix::fs::PermissionsExt;
    let mode = |p: &str| {
        std::fs::metadata(dut.home().join(p))
            .unwrap()
            .permissions()
            .mode()
            & 0o777
    };
    assert_eq!((mode(".ssh"), mode(".ssh/authorized_keys")), (0o700, 0o600));
    let methods: Vec<&str> = dut.logins().iter().map(|l| l.method).collect();
    assert_eq!(methods, ["password", "publickey"]);

    // Key login works now, and a second call changes nothing.
    pool.authorize_key("device", T).await.unwrap();
    let again = std::fs::read_to_string(dut.home().join(".ssh/authorized_keys")).unwrap();
    assert_eq!(again, keys);
    let conn = pool.connect("device", None, T).await.unwrap();
    conn.exec("true", T, false).await.unwrap();
}

#[tokio::test]
async fn authorize_key_never_reveals_the_password() {
    let dut = Dut::builder(IP).password("right").start().unwrap();
    let home = tempfile::tempdir().unwrap();
    let key = dut::agent_key(home.path()).unwrap();
    dut.write_client_config(home.path(), &key.private_key)
        .unwrap();
    let secret = "hunter2-very-secret";
    let job = format!(r#"{{"test_data":{{"test_password":"{secret}"}}}}"#);
    let pool = pool_for(
        &format!(
            "device_ip: {}\nconnector_runtime: {{poll_interval_seconds: 0.05}}\n",
            dut.ip()
        ),
        &job,
        home.path(),
    );
    let err = pool
        .authorize_key("device", Duration::from_millis(300))
        .await
        .unwrap_err();
    let text = err.to_string();
    assert!(text.contains("test_password"), "{text}");
    assert!(!text.contains(secret), "{text}");
    assert!(!format!("{err:?}").contains(secret));
    assert!(!format!("{pool:?}").contains(secret));
    assert!(dut.logins().is_empty());
}

#[tokio::test]
async fn targets_need_their_config_keys() {
    let home = tempfile::tempdir().unwrap();
    let pool = pool_for("agent_name: x\n", "{}", home.path());
    let err = pool.connect("device", None, T).await.err().unwrap();
    let text = err.to_string();
    assert!(
        text.contains("`device_ip`") && text.contains("add it"),
        "{text}"
    );
    assert!(matches!(err, SshError::NotConfigured { .. }), "{err}");
    let err = pool.wait_reachable("control-host", T).await.unwrap_err();
    assert!(err.to_string().contains("`control_host`"), "{err}");
    let err = pool.authorize_key("bmc", T).await.unwrap_err();
    let text = err.to_string();
    assert!(
        text.contains("unknown SSH target `bmc`") && text.contains("control-host"),
        "{text}"
    );
    assert!(matches!(err, SshError::UnknownTarget { .. }), "{err}");
}

#[tokio::test]
async fn control_host_uses_control_user() {
    let lab = Lab::new();
    let pool = pool_for(
        &format!("control_host: {}\ncontrol_user: ops\n", lab.dut.ip()),
        "{}",
        lab.home(),
    );
    let conn = pool.connect("control-host", None, T).await.unwrap();
    conn.exec("true", T, false).await.unwrap();
    assert_eq!(lab.dut.commands()[0].user, "ops");
}

#[tokio::test]
async fn timing_of_connect_and_exec() {
    let lab = Lab::new();
    let pool = lab.pool("", "{}");
    let started = Instant::now();
    let conn = pool.connect("device", None, T).await.unwrap();
    let connect = started.elapsed();
    conn.exec("true", T, false).await.unwrap();
    let n = 20;
    let started = Instant::now();
    for _ in 0..n {
        conn.exec("true", T, false).await.unwrap();
    }
    let per_exec = started.elapsed() / n;
    eprintln!("connect+auth: {connect:?}; exec on an open connection: {per_exec:?}");
    assert_eq!(lab.dut.connections_accepted(), 1);
}
