//! Hostile connectors (`tests/fixtures/hostile_*`): every way out of the
//! sandbox we could think of. Each case must end with a clear error and
//! exit status 1 (never 46, never a crash of the runtime), change no file
//! outside the run directory, and leave an audit line for every denial.
//!
//! The table in `docs/security.md` is a summary of what these tests
//! assert.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::process::Stdio;
use std::time::{Duration, Instant};

use labsim::web::{Reply, WebServer};
use serde_json::{Value, json};

use crate::common::{Run, RunDir};

/// Text of every sentinel file outside the run directory.
const SENTINEL: &str = "sentinel: must not change\n";

/// A folder outside the run directory standing for the rest of the agent
/// host: the agent user's home with an SSH key, and sentinel files.
struct Outside {
    dir: tempfile::TempDir,
}

type Snapshot = BTreeMap<PathBuf, Vec<u8>>;

impl Outside {
    fn new() -> Self {
        let dir = tempfile::tempdir().unwrap();
        std::fs::create_dir_all(dir.path().join(".ssh")).unwrap();
        std::fs::write(
            dir.path().join(".ssh/id_rsa"),
            "-----BEGIN OPENSSH PRIVATE KEY-----\nHOSTILE-TEST-KEY\n",
        )
        .unwrap();
        std::fs::write(dir.path().join("sentinel.txt"), SENTINEL).unwrap();
        std::fs::create_dir_all(dir.path().join("dir")).unwrap();
        std::fs::write(dir.path().join("dir/sentinel.txt"), SENTINEL).unwrap();
        Outside { dir }
    }

    fn path(&self) -> &Path {
        self.dir.path()
    }

    fn p(&self, rel: &str) -> String {
        self.dir.path().join(rel).display().to_string()
    }

    /// Every file below the folder with its contents (symlinks as their
    /// target).
    fn snapshot(&self) -> Snapshot {
        fn walk(dir: &Path, out: &mut Snapshot) {
            for entry in std::fs::read_dir(dir).unwrap() {
                let entry = entry.unwrap();
                let kind = entry.file_type().unwrap();
                let path = entry.path();
                if kind.is_dir() {
                    out.insert(path.clone(), b"<dir>".to_vec());
                    walk(&path, out);
                } else if kind.is_symlink() {
                    let target = std::fs::read_link(&path).unwrap();
                    out.insert(path, target.display().to_string().into_bytes());
                } else {
                    out.insert(path.clone(), std::fs::read(&path).unwrap());
                }
            }
        }
        let mut out = Snapshot::new();
        walk(self.dir.path(), &mut out);
        out
    }
}

/// One hostile run: a run directory, the outside world, and a lab file
/// pinning a fixture with chosen grants and limits.
struct Hostile {
    rd: RunDir,
    outside: Outside,
    /// The outside world as the last run found it.
    before: std::cell::RefCell<Snapshot>,
    lab: PathBuf,
}

impl Hostile {
    /// Pins `fixture` as provision type `hostile` with `grants` and
    /// `limits` (YAML flow mappings), and writes the device config and job.
    fn new(fixture: &str, grants: &str, limits: &str, config: &str, job: Value) -> Self {
        Self::new_in(Outside::new(), fixture, grants, limits, config, job)
    }

    /// Like [`Hostile::new`] with an outside world prepared beforehand
    /// (its paths appear in the job or the config).
    fn new_in(
        outside: Outside,
        fixture: &str,
        grants: &str,
        limits: &str,
        config: &str,
        job: Value,
    ) -> Self {
        let bytes = std::fs::read(labsim::fixtures::path(fixture)).unwrap();
        Self::with_component(outside, &bytes, grants, limits, config, job)
    }

    /// Like [`Hostile::new_in`] for component bytes (written into the run
    /// directory's `lab/` folder).
    fn with_component(
        outside: Outside,
        bytes: &[u8],
        grants: &str,
        limits: &str,
        config: &str,
        job: Value,
    ) -> Self {
        let rd = RunDir::new();
        let wasm = rd.path().join("lab/hostile.wasm");
        std::fs::create_dir_all(wasm.parent().unwrap()).unwrap();
        std::fs::write(&wasm, bytes).unwrap();
        let manifest = tfdc::manifest::read(bytes).unwrap();
        let lab = rd.write(
            "lab/lab.yaml",
            &format!(
                "version: 1\nconnectors:\n  hostile:\n    name: {}\n    version: {}\n    source: file:{}\n    sha256: {}\n    wit: {}\n    grants: {grants}\n    limits: {limits}\n",
                manifest.name,
                manifest.version,
                wasm.display(),
                tfdc::engine::digest(bytes),
                manifest.wit,
            ),
        );
        rd.write(
            "default.yaml",
            &format!("agent_name: hostile-agent\n{config}"),
        );
        rd.write("testflinger.json", &job.to_string());
        Hostile {
            rd,
            outside,
            before: Default::default(),
            lab,
        }
    }

    fn command(&self, stage: &str) -> std::process::Command {
        let mut cmd = self.rd.command(&[
            "--lab",
            self.lab.to_str().unwrap(),
            "hostile",
            stage,
            "-c",
            "default.yaml",
            "testflinger.json",
        ]);
        cmd.env("HOME", self.outside.path())
            .env("TFDC_AUDIT_LOG", self.rd.path().join("audit.jsonl"))
            .env("HOSTILE_HOST_SECRET", "env-secret-of-the-agent");
        cmd
    }

    /// Runs `stage`, failing the test if it takes more than `limit`
    /// (outputs go to files, so a process left behind holding them cannot
    /// hang the test).
    fn run_within(&self, stage: &str, limit: Duration) -> Run {
        *self.before.borrow_mut() = self.outside.snapshot();
        let out = self.rd.path().join("cli.stdout");
        let err = self.rd.path().join("cli.stderr");
        let mut child = self
            .command(stage)
            .stdin(Stdio::null())
            .stdout(std::fs::File::create(&out).unwrap())
            .stderr(std::fs::File::create(&err).unwrap())
            .spawn()
            .unwrap();
        let start = Instant::now();
        let status = loop {
            if let Some(status) = child.try_wait().unwrap() {
                break status;
            }
            if start.elapsed() > limit {
                let _ = child.kill();
                let _ = child.wait();
                panic!("the runtime did not end within {limit:?}");
            }
            std::thread::sleep(Duration::from_millis(20));
        };
        let run = Run {
            code: status.code().unwrap_or(-1),
            stdout: std::fs::read_to_string(&out).unwrap_or_default(),
            stderr: std::fs::read_to_string(&err).unwrap_or_default(),
        };
        eprintln!(
            "--- exit {}\n--- stdout\n{}--- stderr\n{}",
            run.code, run.stdout, run.stderr
        );
        run
    }

    fn run(&self) -> Run {
        self.run_within("provision", Duration::from_secs(60))
    }

    /// `exception_message` of the provision stage.
    fn message(&self) -> String {
        self.rd.json("device-connector-error.json")["provision_exception_info"]["exception_message"]
            .as_str()
            .unwrap()
            .to_string()
    }

    /// The JSON audit lines.
    fn audit(&self) -> Vec<Value> {
        std::fs::read_to_string(self.rd.path().join("audit.jsonl"))
            .unwrap_or_default()
            .lines()
            .map(|l| serde_json::from_str(l).unwrap())
            .collect()
    }

    /// Whether a denial of the host call `call` reaching `target` was
    /// audited, on stderr and in the JSON file (one line per call:
    /// `call=ssh.connect capability=ssh:control-host target=control-host
    /// result=denied`).
    fn assert_denial_audited(&self, run: &Run, call: &str, target: &str) {
        assert!(
            self.audit()
                .iter()
                .any(|l| l["result"] == "denied" && l["call"] == call && l["target"] == target),
            "no JSON audit line for the denial of {call} {target}: {:?}",
            self.audit()
        );
        assert!(
            run.stderr
                .lines()
                .any(|l| l.contains("WARNING: DEVICE CONNECTOR: audit")
                    && l.contains(&format!("call={call} "))
                    && l.contains("result=denied")
                    && l.contains(target)),
            "no audit line on stderr for the denial of {call} {target}"
        );
    }

    /// The invariants of every hostile case: exit 1 with the failure
    /// recorded, no crash, nothing outside the run directory changed.
    fn assert_contained(&self, run: &Run) {
        assert_eq!(run.code, 1, "exit status");
        assert!(
            !run.stderr.contains("panicked") && !run.stderr.contains("RUST_BACKTRACE"),
            "the runtime crashed"
        );
        assert!(self.rd.exists("device-connector-error.json"));
        assert_eq!(
            self.outside.snapshot(),
            *self.before.borrow(),
            "files outside the run directory changed"
        );
    }
}

/// The outcome line of the fixture's report for `op`.
fn outcome<'a>(message: &'a str, op: &str) -> &'a str {
    message
        .lines()
        .find(|l| l.starts_with(&format!("{op} ")))
        .unwrap_or_else(|| panic!("no outcome for {op} in:\n{message}"))
}

#[test]
fn hostile_wasi_files_sockets_env_and_processes_are_blocked() {
    let tcp = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    tcp.set_nonblocking(true).unwrap();
    let udp = std::net::UdpSocket::bind("127.0.0.1:0").unwrap();
    udp.set_nonblocking(true).unwrap();
    let outside = Outside::new();
    let ops = json!([
        ["fs.read", "/etc/passwd"],
        ["fs.read", outside.p(".ssh/id_rsa")],
        ["fs.read", "testflinger.json"],
        ["fs.write", outside.p("sentinel.txt")],
        ["fs.write", outside.p("new-file")],
        ["fs.write", "pwned.txt"],
        ["fs.list", "/"],
        ["fs.cwd"],
        ["net.tcp", tcp.local_addr().unwrap().to_string()],
        ["net.listen", "127.0.0.1:0"],
        ["net.udp", udp.local_addr().unwrap().to_string()],
        ["net.dns", "localhost:80"],
        ["env.vars"],
        [
            "proc.exec",
            "/bin/sh",
            "-c",
            format!("touch {}", outside.p("exec-ran"))
        ],
    ]);
    let h = Hostile::new_in(
        outside,
        "fixture_hostile_escape",
        "{}",
        "{}",
        "",
        json!({"job_id": "wasi", "provision_data": {"ops": ops}}),
    );
    let run = h.run();
    h.assert_contained(&run);
    let msg = h.message();
    assert!(!msg.contains("ESCAPED"), "{msg}");
    for op in [
        "fs.read",
        "fs.write",
        "fs.list",
        "fs.cwd",
        "net.tcp",
        "net.listen",
        "net.udp",
        "net.dns",
        "env.vars",
        "proc.exec",
    ] {
        for line in msg.lines().filter(|l| l.starts_with(&format!("{op} "))) {
            assert!(line.contains("=> blocked: "), "{line}");
        }
        outcome(&msg, op);
    }
    assert!(outcome(&msg, "env.vars").contains("0 environment variables, 0 arguments"));
    assert!(tcp.accept().is_err(), "a TCP connection reached the host");
    let mut buf = [0u8; 16];
    assert!(
        udp.recv_from(&mut buf).is_err(),
        "a UDP datagram reached the host"
    );
    assert!(!h.rd.exists("pwned.txt"));
    assert!(!run.stdout.contains("root:") && !run.stdout.contains("HOSTILE-TEST-KEY"));
}

#[test]
fn hostile_ungranted_capabilities_are_denied_and_audited() {
    // `granted` is covered by the lab's URL grant; `other` is not, and
    // must never see a request.
    let other = WebServer::start("127.0.0.1", |_| Reply::text("INTERNAL-SECRET")).unwrap();
    let other_url = other.url();
    let granted = WebServer::start("127.0.0.1", move |r| match r.path_only() {
        "/redirect" => Reply::Full {
            status: 302,
            headers: vec![("location".into(), format!("{other_url}/secret"))],
            body: Default::default(),
        },
        _ => Reply::text("fine"),
    })
    .unwrap();
    let control_host = WebServer::start("127.0.0.1", |_| Reply::text("control")).unwrap();
    let g = granted.url();
    let a_port = granted.addr().port();
    let b_port = other.addr().port();
    let in_job_other_port = format!("http://127.0.0.1:{b_port}/in-job");
    let in_job_other_scheme = format!("https://127.0.0.1:{a_port}/in-job");
    let outside = Outside::new();
    let ops = json!([
        ["power.run", "ungranted_script"],
        ["power.run", "poweroff_script"],
        ["power.run", "no_such_key"],
        ["power.run", "missing_script"],
        ["http.call", "control-host", "/"],
        ["http.call", "maas", "/api"],
        ["http.fetch", format!("raw:{g}/not-in-the-job")],
        ["http.fetch", in_job_other_port],
        ["http.fetch", in_job_other_scheme],
        ["http.fetch", format!("{g}/redirect")],
        ["http.fetch", format!("{g}/ok")],
        ["ssh.connect", "control-host"],
        ["ssh.connect", "bmc"],
        ["ssh.wait-reachable", "control-host"],
        ["serial.open", "console"],
        ["transfer.to-artifact", "url", format!("{g}/ok"), "img"],
    ]);
    let job = json!({
        "job_id": "caps",
        "provision_data": {
            "ops": ops,
            "urls": [format!("{g}/ok"), format!("{g}/redirect"), in_job_other_port, in_job_other_scheme],
        },
    });
    let config = format!(
        "device_ip: 127.0.0.1\ncontrol_host: 127.0.0.1\nserial_host: 127.0.0.1\nserial_port: 9\nreboot_script: ['true']\nungranted_script: ['touch {}']\npoweroff_script: ['touch {}']\nconnector_runtime: {{control_host_url: '{}'}}\n",
        outside.p("ungranted-ran"),
        outside.p("poweroff-ran"),
        control_host.url()
    );
    let h = Hostile::new_in(
        outside,
        "fixture_hostile_escape",
        &format!(
            "{{power: [reboot_script, missing_script], http: [job-urls], ssh: [device], urls: ['http://127.0.0.1:{a_port}']}}"
        ),
        "{}",
        &config,
        job,
    );
    let run = h.run();
    h.assert_contained(&run);
    let msg = h.message();
    let denied = |op: &str, needle: &str| {
        let line = msg
            .lines()
            .find(|l| l.starts_with(op))
            .unwrap_or_else(|| panic!("no outcome for {op}:\n{msg}"));
        assert!(line.contains("=> denied: "), "{line}");
        assert!(line.contains(needle), "{line}");
    };
    denied(
        "power.run [\"ungranted_script\"]",
        "capability power: ungranted_script is not granted to connector fixture_hostile_escape",
    );
    denied(
        "power.run [\"poweroff_script\"]",
        "did not declare capability power: poweroff_script",
    );
    denied(
        "power.run [\"no_such_key\"]",
        "did not declare capability power: no_such_key",
    );
    assert!(
        outcome(&msg, "power.run [\"missing_script\"]")
            .contains("=> not-found: missing_script is not configured"),
        "{msg}"
    );
    denied(
        "http.call [\"control-host\"",
        "capability http: control-host is not granted",
    );
    denied(
        "http.call [\"maas\"",
        "did not declare capability http: maas",
    );
    denied(
        &format!("http.fetch [\"{g}/not-in-the-job\"]"),
        "is not one the job provides",
    );
    denied(
        &format!("http.fetch [\"http://127.0.0.1:{b_port}/in-job\"]"),
        "is not covered by the URL grants",
    );
    denied(
        &format!("http.fetch [\"https://127.0.0.1:{a_port}/in-job\"]"),
        "is not covered by the URL grants",
    );
    denied(
        &format!("http.fetch [\"{g}/redirect\"]"),
        "is not covered by the URL grants",
    );
    // What is granted works: the grants, not a broken host, stop the rest.
    assert!(
        outcome(&msg, &format!("http.fetch [\"{g}/ok\"]")).contains("=> ok: status 200"),
        "{msg}"
    );
    denied(
        "ssh.connect [\"control-host\"]",
        "capability ssh: control-host is not granted",
    );
    denied(
        "ssh.connect [\"bmc\"]",
        "did not declare capability ssh: bmc",
    );
    denied(
        "ssh.wait-reachable [\"control-host\"]",
        "capability ssh: control-host is not granted",
    );
    denied(
        "serial.open [\"console\"]",
        "capability serial: console is not granted",
    );
    denied(
        "transfer.to-artifact",
        "capability transfer: job-urls is not granted",
    );
    for (call, target) in [
        ("power.run", "ungranted_script"),
        ("power.run", "poweroff_script"),
        ("power.run", "no_such_key"),
        ("http.call", "control-host:/"),
        ("http.call", "maas:/api"),
        ("http.fetch", &format!("{g}/not-in-the-job")),
        ("http.fetch", &format!("http://127.0.0.1:{b_port}/in-job")),
        ("http.fetch", &format!("https://127.0.0.1:{a_port}/in-job")),
        ("http.fetch", &format!("{g}/redirect")),
        ("ssh.connect", "control-host"),
        ("ssh.connect", "bmc"),
        ("ssh.wait-reachable", "control-host"),
        ("serial.open", "console"),
        ("transfer.to-artifact", &format!("{g}/ok")),
    ] {
        h.assert_denial_audited(&run, call, target);
    }
    assert!(other.requests().is_empty(), "{:?}", other.requests());
    assert!(control_host.requests().is_empty());
    assert_eq!(
        granted
            .requests()
            .iter()
            .map(|r| r.path.as_str())
            .collect::<Vec<_>>(),
        vec!["/redirect", "/ok"]
    );
    assert!(!run.stdout.contains("INTERNAL-SECRET"));
    assert!(!h.rd.exists("artifacts/img"));
}

#[test]
fn hostile_path_escapes_in_run_directory_file_names_are_refused() {
    let h = Hostile::new(
        "fixture_hostile_escape",
        "{}",
        "{stage_timeout: 10}",
        "",
        json!({}),
    );
    let o = |rel: &str| h.outside.p(rel);
    let root = h.rd.path().to_path_buf();
    // What an agent (or an attachment archive) could leave in the run
    // directory: links to the outside, a FIFO, a hard link.
    let att = root.join("attachments/provision");
    std::fs::create_dir_all(att.join("sub")).unwrap();
    std::fs::write(att.join("ok.txt"), "attachment").unwrap();
    std::os::unix::fs::symlink(o("sentinel.txt"), att.join("link")).unwrap();
    std::os::unix::fs::symlink(o("dir"), att.join("dirlink")).unwrap();
    let fifo = std::ffi::CString::new(att.join("fifo").to_str().unwrap()).unwrap();
    // SAFETY: plain libc call with a valid NUL-terminated path.
    assert_eq!(unsafe { libc::mkfifo(fifo.as_ptr(), 0o600) }, 0);
    std::fs::create_dir_all(root.join("attachments")).unwrap();
    std::os::unix::fs::symlink(o("dir"), root.join("attachments/test")).unwrap();
    let art = root.join("artifacts");
    std::fs::create_dir_all(&art).unwrap();
    std::os::unix::fs::symlink(o("dir"), art.join("out")).unwrap();
    std::os::unix::fs::symlink(o("sentinel.txt"), art.join("link")).unwrap();
    std::fs::hard_link(o("dir/sentinel.txt"), art.join("hard")).unwrap();
    let abs = o("abs.txt");
    let ops = json!([
        ["job.attachments", "../.."],
        ["job.attachments", "/etc"],
        ["job.attachments", "provision/../../.."],
        ["job.attachments", "test"],
        ["job.read-attachment", "provision", "ok.txt"],
        ["job.read-attachment", "provision", "../../default.yaml"],
        [
            "job.read-attachment",
            "provision",
            "sub/../../../testflinger.json"
        ],
        ["job.read-attachment", "provision", "/etc/passwd"],
        ["job.read-attachment", "provision", "link"],
        ["job.read-attachment", "provision", "dirlink/sentinel.txt"],
        ["job.read-attachment", "provision", "fifo"],
        ["job.read-attachment", "test", "sentinel.txt"],
        ["job.read-attachment", "../provision", "ok.txt"],
        ["job.write-artifact", "fine.txt"],
        ["job.write-artifact", "../escape.txt"],
        ["job.write-artifact", "sub/../../escape.txt"],
        ["job.write-artifact", abs],
        ["job.write-artifact", "out/x.txt"],
        ["job.write-artifact", "link"],
        ["job.write-artifact", "hard"],
        ["job.write-artifact", "."],
        ["job.write-artifact", ""],
        ["job.set-device-info", "../../etc/passwd"],
        ["job.set-device-info", ""],
        ["job.set-device-info", "line\nbreak"],
    ]);
    h.rd.write(
        "testflinger.json",
        &json!({"job_id": "paths", "provision_data": {"ops": ops}}).to_string(),
    );
    let run = h.run_within("provision", Duration::from_secs(30));
    h.assert_contained(&run);
    let msg = h.message();
    let line = |prefix: &str| {
        msg.lines()
            .find(|l| l.starts_with(prefix))
            .unwrap_or_else(|| panic!("no outcome for {prefix}:\n{msg}"))
            .to_string()
    };
    let invalid = |prefix: &str, why: &str| {
        let l = line(prefix);
        assert!(l.contains("=> invalid: ") && l.contains(why), "{l}");
    };
    let phases = "attachment phases are provision, firmware_update and test";
    invalid("job.attachments [\"../..\"]", phases);
    invalid("job.attachments [\"/etc\"]", phases);
    invalid("job.attachments [\"provision/../../..\"]", phases);
    // A phase folder that is a link to the outside lists nothing.
    assert!(line("job.attachments [\"test\"]").contains("=> ok: []"));
    assert!(line("job.read-attachment [\"provision\", \"ok.txt\"]").contains("=> ok: 10 bytes"));
    let dotdot = "`..` would leave the folder";
    invalid(
        "job.read-attachment [\"provision\", \"../../default.yaml\"]",
        dotdot,
    );
    invalid(
        "job.read-attachment [\"provision\", \"sub/../../../testflinger.json\"]",
        dotdot,
    );
    invalid(
        "job.read-attachment [\"provision\", \"/etc/passwd\"]",
        "absolute paths are not allowed",
    );
    let symlink = "is a symbolic link or goes through one";
    invalid("job.read-attachment [\"provision\", \"link\"]", symlink);
    invalid(
        "job.read-attachment [\"provision\", \"dirlink/sentinel.txt\"]",
        symlink,
    );
    invalid(
        "job.read-attachment [\"provision\", \"fifo\"]",
        "not a regular file",
    );
    invalid("job.read-attachment [\"test\", \"sentinel.txt\"]", symlink);
    invalid("job.read-attachment [\"../provision\"", phases);
    assert!(line("job.write-artifact [\"fine.txt\"]").contains("=> ok: "));
    invalid("job.write-artifact [\"../escape.txt\"]", dotdot);
    invalid("job.write-artifact [\"sub/../../escape.txt\"]", dotdot);
    invalid(
        &format!("job.write-artifact [\"{}\"]", o("abs.txt")),
        "absolute paths are not allowed",
    );
    invalid("job.write-artifact [\"out/x.txt\"]", symlink);
    invalid("job.write-artifact [\"link\"]", symlink);
    // Replacing a hard-linked file writes a new file; the other name of
    // the old one (outside) keeps its contents (checked by
    // assert_contained).
    assert!(line("job.write-artifact [\"hard\"]").contains("=> ok: "));
    invalid("job.write-artifact [\".\"]", "is a folder");
    invalid("job.write-artifact [\"\"]", "empty name");
    // device_info keys are JSON keys, not file names.
    assert!(line("job.set-device-info [\"../../etc/passwd\"]").contains("=> ok: "));
    invalid(
        "job.set-device-info [\"\"]",
        "1 to 128 printable characters",
    );
    invalid(
        "job.set-device-info [\"line\\nbreak\"]",
        "1 to 128 printable characters",
    );
    assert_eq!(
        h.rd.read("artifacts/fine.txt"),
        "written by hostile_escape\n"
    );
    assert_eq!(
        h.rd.json("device-info.json")["device_info"]["../../etc/passwd"],
        "hostile"
    );
    assert!(!h.rd.exists("escape.txt") && !root.parent().unwrap().join("escape.txt").exists());
    // Escape attempts are audited, though they changed nothing.
    for (operation, target) in [
        ("job.attachments", "../.."),
        ("job.read-attachment", "provision/../../default.yaml"),
        ("job.read-attachment", "provision/link"),
        ("job.read-attachment", "provision/fifo"),
        ("job.write-artifact", "../escape.txt"),
        ("job.write-artifact", "out/x.txt"),
    ] {
        h.assert_denial_audited(&run, operation, target);
    }
    assert!(!run.stdout.contains(SENTINEL.trim()));
}

/// Limits small enough for tests: 64 MiB of memory, 2 s per stage, 1 MiB
/// of log.
const SMALL_LIMITS: &str =
    "{memory: 64MiB, stage_timeout: 2, max_log_bytes: 1MiB, max_artifact_bytes: 8MiB}";

/// Runs resource attack `attack` with `limits` and `config`; checks the
/// common invariants and returns the case, the run and the message.
fn resource_attack(attack: &str, limits: &str, config: &str) -> (Hostile, Run, String) {
    let h = Hostile::new(
        "fixture_hostile_resources",
        "{power: [slow_script, slow_shell]}",
        limits,
        config,
        json!({"job_id": attack, "provision_data": {"attack": attack}}),
    );
    let run = h.run_within("provision", Duration::from_secs(30));
    h.assert_contained(&run);
    let msg = h.message();
    (h, run, msg)
}

fn assert_stage_timeout(h: &Hostile, msg: &str) {
    assert!(
        msg.contains("did not finish provision within 2 s (limits.stage_timeout); it was stopped"),
        "{msg}"
    );
    assert_eq!(
        h.rd.json("device-connector-error.json")["provision_exception_info"]["exception_name"],
        "StageTimeout"
    );
}

#[test]
fn hostile_infinite_loop_is_stopped_by_the_stage_timeout() {
    let (h, _, msg) = resource_attack("spin", SMALL_LIMITS, "");
    assert_stage_timeout(&h, &msg);
}

#[test]
fn hostile_sleep_in_wasi_is_stopped_by_the_stage_timeout() {
    let (h, _, msg) = resource_attack("sleep", SMALL_LIMITS, "");
    assert_stage_timeout(&h, &msg);
}

#[test]
fn hostile_memory_bomb_hits_the_memory_limit() {
    for attack in ["memory", "memory-gib", "gib-artifact"] {
        let (h, _, msg) = resource_attack(attack, SMALL_LIMITS, "");
        assert!(
            msg.contains("exceeded the memory limit of 64 MiB during provision"),
            "{attack}: {msg}"
        );
        assert!(!h.rd.exists("artifacts/gib.bin"));
    }
}

#[test]
fn hostile_deep_recursion_traps() {
    // Rust keeps large locals on a stack in linear memory: overflowing it
    // runs below address 0, which is an out-of-bounds access.
    let (_, _, msg) = resource_attack("recursion", SMALL_LIMITS, "");
    assert!(
        msg.contains("failed during provision") && msg.contains("out of bounds memory access"),
        "{msg}"
    );
    // Frames on the wasm stack hit wasmtime's stack limit.
    let (_, _, msg) = resource_attack("recursion-native", SMALL_LIMITS, "");
    assert!(
        msg.contains("failed during provision") && msg.contains("call stack exhausted"),
        "{msg}"
    );
}

#[test]
fn hostile_lying_argument_length_is_refused() {
    let (_, run, msg) = resource_attack("lying-length", SMALL_LIMITS, "");
    assert!(
        msg.ends_with("failed during provision: string pointer/length out of bounds of memory"),
        "{msg}"
    );
    assert!(run.stderr.len() < 64 * 1024);
}

#[test]
fn hostile_log_floods_hit_the_log_limit() {
    for attack in ["big-log", "log-flood", "print-flood"] {
        let (_, run, msg) = resource_attack(attack, SMALL_LIMITS, "");
        assert!(
            msg.contains(
                "exceeded the log volume limit of 1048576 bytes per stage (limits.max_log_bytes"
            ),
            "{attack}: {msg}"
        );
        assert!(run.stdout.len() + run.stderr.len() < 3 << 20, "{attack}");
    }
}

#[test]
fn hostile_stderr_and_stdout_floods_are_bounded() {
    let (_, run, msg) = resource_attack("stderr-flood", SMALL_LIMITS, "");
    assert!(
        msg.contains("the connector's stderr is full") && msg.contains("of 64 KiB"),
        "{msg}"
    );
    // Only the end of it is quoted.
    assert!(msg.len() < 4096, "{} bytes", msg.len());
    assert!(run.stderr.len() < 16 * 1024);
    let (h, run, msg) = resource_attack("stdout-flood", SMALL_LIMITS, "");
    assert_stage_timeout(&h, &msg);
    assert!(!run.stdout.contains("flood"));
}

#[test]
fn hostile_disk_floods_hit_their_limits() {
    let (h, _, msg) = resource_attack("device-info-flood", SMALL_LIMITS, "");
    assert!(msg.contains("device-info key"), "{msg}");
    assert!(
        std::fs::metadata(h.rd.path().join("device-info.json"))
            .unwrap()
            .len()
            <= 1 << 20
    );
    let (h, _, msg) = resource_attack("artifact-flood", SMALL_LIMITS, "");
    assert!(msg.contains("limits.max_artifact_bytes"), "{msg}");
    let (h2, _, msg) = resource_attack("big-artifact", SMALL_LIMITS, "");
    assert!(msg.contains("limits.max_artifact_bytes"), "{msg}");
    assert!(!h2.rd.exists("artifacts/big.bin"));
    drop(h);
}

/// A granted power script that never ends: the stage still ends at its
/// timeout, and the script's whole process group goes with it (a child it
/// started in the background too).
#[test]
fn hostile_endless_host_call_is_stopped_with_its_processes() {
    for (attack, key) in [
        ("slow-host-call", "slow_script"),
        ("slow-host-call-shell", "slow_shell"),
    ] {
        let pids = tempfile::tempdir().unwrap();
        let pidfile = pids.path().join("pid");
        let config = format!(
            "slow_script: ['sleep 600']\nslow_shell: ['sleep 600 & echo $! > {}; wait']\n",
            pidfile.display()
        );
        let limits = "{memory: 64MiB, stage_timeout: 2}";
        let start = Instant::now();
        let (h, _, msg) = resource_attack(attack, limits, &config);
        assert_stage_timeout(&h, &msg);
        assert!(start.elapsed() < Duration::from_secs(20), "{attack}");
        if attack == "slow-host-call-shell" {
            let pid: i32 = std::fs::read_to_string(&pidfile)
                .unwrap()
                .trim()
                .parse()
                .unwrap();
            let proc_dir = PathBuf::from(format!("/proc/{pid}"));
            let deadline = Instant::now() + Duration::from_secs(5);
            while is_running(&proc_dir) && Instant::now() < deadline {
                std::thread::sleep(Duration::from_millis(20));
            }
            if is_running(&proc_dir) {
                // SAFETY: plain libc call; the test started this process.
                unsafe { libc::kill(pid, libc::SIGKILL) };
                panic!("{key}'s background process {pid} outlived the stage");
            }
        }
        let audit = h.audit();
        assert!(
            audit
                .iter()
                .all(|l| l["call"] != "power.run" || l["result"] != "denied"),
            "{audit:?}"
        );
    }
}

/// Whether a process exists and is not a zombie.
fn is_running(proc_dir: &Path) -> bool {
    std::fs::read_to_string(proc_dir.join("stat"))
        .map(|s| !s.split(") ").nth(1).unwrap_or("").starts_with('Z'))
        .unwrap_or(false)
}

/// Runs re-entrancy attack `attack`; checks the common invariants.
fn reentry_attack(attack: &str) -> (Hostile, Run, String) {
    let h = Hostile::new(
        "fixture_hostile_reentry",
        "{}",
        "{memory: 64MiB, stage_timeout: 2}",
        "",
        json!({"job_id": attack, "provision_data": {"attack": attack}}),
    );
    let run = h.run_within("provision", Duration::from_secs(30));
    h.assert_contained(&run);
    let msg = h.message();
    (h, run, msg)
}

/// A phase calling phase code (its own export, another phase's) is a
/// plain call inside the sandbox: it runs under the one invocation's
/// stage, grants and limits, and unbounded it is a stack overflow.
#[test]
fn hostile_reentrant_phases_stay_inside_the_invocation() {
    let (h, _, msg) = reentry_attack("call-other-phases");
    assert!(
        msg.starts_with("re-entered: cleanup -> Ok(()), runtest -> Err(PhaseError::Unsupported); the stage is still provision"),
        "{msg}"
    );
    assert_eq!(h.rd.read("artifacts/cleanup-ran.txt"), "provision");
    let (_, _, msg) = reentry_attack("reenter-self");
    assert!(
        msg.starts_with(
            r#"depth 1 (stage provision) <- Err(PhaseError::Failed(Failure { class: "", message: "depth 2 (stage provision) <- Err(PhaseError::Failed(Failure { class: \"\", message: \"depth 3 (stage provision)\", cause: None }))", cause: None }))"#
        ),
        "{msg}"
    );
    let (_, _, msg) = reentry_attack("reenter-forever");
    assert!(
        msg.ends_with("failed during provision: wasm trap: call stack exhausted"),
        "{msg}"
    );
}

/// The host calls into the guest during a host call only to allocate the
/// result (`cabi_realloc`). A hostile allocator cannot call the host back
/// (the component model forbids leaving the instance there), cannot make
/// the host write outside its memory, and cannot hold the stage past its
/// timeout.
#[test]
fn hostile_cabi_realloc_cannot_reenter_the_host() {
    let (_, run, msg) = reentry_attack("realloc-calls-host");
    assert!(
        msg.ends_with("failed during provision: wasm trap: cannot leave component instance"),
        "{msg}"
    );
    assert!(!run.stderr.contains("hello from inside cabi_realloc"));
    let (_, _, msg) = reentry_attack("realloc-bad-pointer");
    assert!(
        msg.ends_with("failed during provision: realloc return: beyond end of memory"),
        "{msg}"
    );
    let (h, _, msg) = reentry_attack("realloc-spin");
    assert_stage_timeout(&h, &msg);
}

/// Resource handles the host never gave out are refused by the component
/// model before any host code runs.
#[test]
fn hostile_forged_resource_handles_trap() {
    for (attack, index) in [("forged-serial-handle", 4660), ("forged-ssh-handle", 1)] {
        let (_, _, msg) = reentry_attack(attack);
        assert!(
            msg.ends_with(&format!(
                "failed during provision: unknown handle index {index}"
            )),
            "{attack}: {msg}"
        );
    }
}

/// Replaces every occurrence of `from` in `bytes` with `to` (same length).
fn rewrite(bytes: &[u8], from: &str, to: &str) -> Vec<u8> {
    assert_eq!(from.len(), to.len());
    let (from, to) = (from.as_bytes(), to.as_bytes());
    let mut out = bytes.to_vec();
    let mut i = 0;
    let mut count = 0;
    while i + from.len() <= out.len() {
        if &out[i..i + from.len()] == from {
            out[i..i + from.len()].copy_from_slice(to);
            i += from.len();
            count += 1;
        } else {
            i += 1;
        }
    }
    assert!(count > 0, "nothing to rewrite");
    out
}

/// A component built for another WIT version line is refused before
/// anything runs, with a message naming both versions, whether its
/// manifest says so or lies about it.
#[test]
fn hostile_components_for_another_wit_major_are_refused() {
    let v1 = std::fs::read(labsim::fixtures::path("fixture_hostile_wit_major")).unwrap();
    // 0.3 is a line this runtime does not serve (0.1 and 0.2 it does).
    let v0_3 = rewrite(
        &rewrite(&v1, "@1.0.0", "@0.3.0"),
        "wit = \"1.0.0\"",
        "wit = \"0.3.0\"",
    );
    let liar = rewrite(&v1, "wit = \"1.0.0\"", "wit = \"0.1.0\"");
    for (bytes, theirs) in [(&v1, "1.0.0"), (&v0_3, "0.3.0"), (&liar, "1.0.0")] {
        let h = Hostile::with_component(Outside::new(), bytes, "{}", "{}", "", json!({}));
        let run = h.run();
        h.assert_contained(&run);
        let msg = h.message();
        assert!(
            msg.contains(&format!("testflinger:connector@{theirs}"))
                || msg.contains(&format!("it uses testflinger:connector/log@{theirs}")),
            "{theirs}: {msg}"
        );
        assert!(
            msg.contains("testflinger:connector 0.1.x and 0.2.x"),
            "{theirs}: {msg}"
        );
        assert!(!run.stdout.contains("connector ran"), "{theirs}");
        assert_eq!(
            h.rd.json("device-connector-error.json")["provision_exception_info"]["exception_name"],
            "ConnectorError"
        );
    }
}

/// A port on loopback where nothing listens.
fn closed_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}

/// Secrets stay on the host: a connector granted everything it asks for
/// reads every byte it can (job, config, attachments, environment, the
/// text of every host-call error it can provoke) and none of the lab's or
/// the job's secrets is in what it got.
#[test]
fn hostile_connector_sees_no_secret() {
    let closed = closed_port();
    let outside = Outside::new();
    // The device takes the agent's key; the control host does not, and
    // wants another password than the job's, so that authorize-key fails
    // after trying the job's password.
    let device = labsim::dut::Dut::start(DUT_IP).unwrap();
    let key = device.configure_client(outside.path()).unwrap();
    let control = labsim::dut::Dut::builder("127.0.0.3")
        .password("not-the-job-password")
        .start()
        .unwrap();
    control
        .write_client_config(outside.path(), &key.private_key)
        .unwrap();
    let secrets = [
        "S3CRET-JOB-TOKEN-1",
        "S3CRET-TEST-PASSWORD-2",
        "S3CRET-MAAS-KEY-3",
        "S3CRET-BMC-4",
        "S3CRET-NESTED-5",
        "S3CRET-CH-6",
        "S3CRET-URL-7",
        "HOSTILE-TEST-KEY",
        "OPENSSH PRIVATE KEY",
        "env-secret-of-the-agent",
    ];
    let config = format!(
        "device_ip: {DUT_IP}
control_host: 127.0.0.3
serial_host: 127.0.0.1
serial_port: {closed}
reboot_script: ['false']
control_host_reboot_script: ['true']
maas_api_key: S3CRET-MAAS-KEY-3
bmc_password: ['S3CRET-BMC-4']
pdus: [{{host: pdu1, password: S3CRET-NESTED-5}}]
connector_runtime:
  control_host_url: 'http://admin:S3CRET-CH-6@127.0.0.1:{closed}'
  poll_interval_seconds: 0.1
  control_host_settle_seconds: 0.1
"
    );
    let job = json!({
        "job_id": "secrets",
        "provision_data": {"url": format!("http://127.0.0.1:{closed}/image.img")},
        "test_data": {
            "test_cmds": "true",
            "test_password": "S3CRET-TEST-PASSWORD-2",
            "secrets": {"API_TOKEN": "S3CRET-JOB-TOKEN-1", "URL": "https://S3CRET-URL-7.example/x"},
        },
    });
    let h = Hostile::new_in(
        outside,
        "fixture_hostile_secrets",
        "{ssh: [device, control-host], power: [reboot_script, maas_api_key, bmc_password, connector_runtime, control_host_reboot_script], http: [control-host, job-urls], transfer: [job-urls, attachments], serial: [console]}",
        "{stage_timeout: 30}",
        &config,
        job,
    );
    h.rd.write("attachments/provision/seed.txt", "attachment text");
    let run = h.run();
    h.assert_contained(&run);
    assert!(h.message().starts_with("dumped "), "{}", h.message());
    let dump = h.rd.read("artifacts/dump.txt");
    // The dump has what the connector may see ...
    for expected in [
        "\"job_id\":\"secrets\"",
        "\"test_cmds\":\"true\"",
        "attachment provision/seed.txt: attachment text",
        "\"device_ip\":\"127.0.0.2\"",
        "exec env device: ok Output { status: 0",
        "authorize-key control-host: ",
        "power.run reboot_script: Failed: reboot_script entry `false` failed",
        "http.call control-host /health: Io: GET http://***@127.0.0.1:",
        "power.run bmc_password: Denied: `bmc_password` is a secret or runtime setting",
        "power.run connector_runtime: Denied: ",
    ] {
        assert!(dump.contains(expected), "{expected} missing from:\n{dump}");
    }
    // ... and nothing it may not.
    for secret in secrets {
        assert!(
            !dump.contains(secret),
            "{secret} leaked into the dump:\n{dump}"
        );
        assert!(!run.stdout.contains(secret), "{secret} leaked to stdout");
        assert!(!run.stderr.contains(secret), "{secret} leaked to the log");
    }
    // The devices saw commands, not secrets.
    for c in device.commands().iter().chain(&control.commands()) {
        assert!(!secrets.iter().any(|s| c.command.contains(s)), "{c:?}");
    }
    for key in [
        "maas_api_key",
        "bmc_password",
        "connector_runtime",
        "\"secrets\"",
        "test_password",
    ] {
        assert!(
            !dump.contains(&format!("{key}\":")),
            "{key} in the views:\n{dump}"
        );
    }
}

/// Simulated devices listen on 127.0.0.2, away from the clients'
/// ephemeral ports.
const DUT_IP: &str = "127.0.0.2";

/// SSH to a target the lab did not grant never reaches it, and a loop of
/// `connect` calls ends at the session cap, on one shared connection.
#[test]
fn hostile_ssh_ungranted_target_and_session_floods_are_stopped() {
    let dut = labsim::dut::Dut::start(DUT_IP).unwrap();
    let console = labsim::serial::SerialServer::start("127.0.0.1").unwrap();
    let outside = Outside::new();
    dut.configure_client(outside.path()).unwrap();
    let ops = json!([
        ["ssh.connect", "control-host"],
        ["ssh.wait-reachable", "control-host"],
        ["ssh.authorize-key", "control-host"],
        ["ssh.sessions", "device", "10000"],
        ["serial.ports", "console", "1000"],
    ]);
    let h = Hostile::new_in(
        outside,
        "fixture_hostile_escape",
        "{ssh: [device], serial: [console]}",
        "{max_ssh_sessions: 32, max_serial_ports: 4, stage_timeout: 20}",
        &format!(
            "device_ip: {ip}\ncontrol_host: {ip}\nserial_host: {sh}\nserial_port: {sp}\nconnector_runtime: {{poll_interval_seconds: 0.1}}\n",
            ip = dut.ip(),
            sh = console.host(),
            sp = console.port(),
        ),
        json!({"job_id": "ssh", "provision_data": {"ops": ops}}),
    );
    let run = h.run();
    h.assert_contained(&run);
    let msg = h.message();
    for op in ["ssh.connect", "ssh.wait-reachable", "ssh.authorize-key"] {
        let line = outcome(&msg, &format!("{op} [\"control-host\"]"));
        assert!(
            line.contains("=> denied: capability ssh: control-host is not granted"),
            "{line}"
        );
    }
    for call in ["ssh.connect", "ssh.wait-reachable", "ssh.authorize-key"] {
        h.assert_denial_audited(&run, call, "control-host");
    }
    let line = outcome(&msg, "ssh.sessions");
    assert!(line.contains("=> limit after 32 sessions: "), "{line}");
    assert!(line.contains("limits.max_ssh_sessions"), "{line}");
    let line = outcome(&msg, "serial.ports");
    assert!(line.contains("=> limit after 4 ports: "), "{line}");
    // One connection carried every session; nothing logged in for the
    // control host.
    assert_eq!(dut.connections_accepted(), 1);
    assert!(dut.commands().is_empty());
}

/// Device output the host logs for a connector counts against its log
/// volume: a loop of chatty commands cannot flood the agent's log.
#[test]
fn hostile_device_output_flood_hits_the_log_limit() {
    let dut = labsim::dut::Dut::start(DUT_IP).unwrap();
    let outside = Outside::new();
    dut.configure_client(outside.path()).unwrap();
    let ops = json!([[
        "ssh.exec-loop",
        "device",
        "yes line-of-output | head -n 5000",
        "1000"
    ]]);
    let h = Hostile::new_in(
        outside,
        "fixture_hostile_escape",
        "{ssh: [device]}",
        "{max_log_bytes: 256KiB, stage_timeout: 20}",
        &format!("device_ip: {}\n", dut.ip()),
        json!({"job_id": "chatty", "provision_data": {"ops": ops}}),
    );
    let run = h.run();
    h.assert_contained(&run);
    let msg = h.message();
    assert!(
        msg.contains("exceeded the log volume limit of 262144 bytes per stage"),
        "{msg}"
    );
    // 90 000 bytes per command: the fourth one ends the stage.
    assert!(dut.commands().len() <= 4, "{}", dut.commands().len());
    // Each logged line counts its text and newline (15 bytes).
    let logged = run
        .stderr
        .lines()
        .filter(|l| l.ends_with("line-of-output ssh_target=device"))
        .count();
    assert!(
        logged > 0 && logged <= 262_144 / 15,
        "{logged} lines logged"
    );
}

/// File names given to host-side copies (transfer to an artifact, SSH
/// download to an artifact) and attachment sources are resolved like every
/// other run-directory name; URL sources follow the URL grants, redirects
/// included.
#[test]
fn hostile_transfer_and_download_names_cannot_escape() {
    let dut = labsim::dut::Dut::start(DUT_IP).unwrap();
    std::fs::write(dut.home().join("remote.txt"), "from the device\n").unwrap();
    let other = WebServer::start("127.0.0.1", |_| Reply::text("INTERNAL-SECRET")).unwrap();
    let other_url = other.url();
    let web = WebServer::start("127.0.0.1", move |r| match r.path_only() {
        "/redirect" => Reply::Full {
            status: 302,
            headers: vec![("location".into(), format!("{other_url}/secret"))],
            body: Default::default(),
        },
        _ => Reply::bytes(vec![9u8; 4096]),
    })
    .unwrap();
    let img = format!("{}/img", web.url());
    let redirect = format!("{}/redirect", web.url());
    let outside = Outside::new();
    dut.configure_client(outside.path()).unwrap();
    let abs = outside.p("abs.bin");
    let ops = json!([
        ["transfer.to-artifact", "url", img, "fine.bin"],
        ["transfer.to-artifact", "url", img, "../escape.bin"],
        ["transfer.to-artifact", "url", img, abs],
        ["transfer.to-artifact", "url", img, "out/x.bin"],
        ["transfer.to-artifact", "url", img, "link"],
        [
            "transfer.to-artifact",
            "url",
            format!("raw:{}/not-in-job", web.url()),
            "nj.bin"
        ],
        ["transfer.to-artifact", "url", redirect, "redirected.bin"],
        [
            "transfer.to-artifact",
            "attachment",
            "../../default.yaml",
            "a.bin"
        ],
        ["transfer.to-artifact", "attachment", "/etc/passwd", "b.bin"],
        ["transfer.to-artifact", "attachment", "alink", "c.bin"],
        [
            "ssh.download-artifact",
            "device",
            "remote.txt",
            "remote.txt"
        ],
        [
            "ssh.download-artifact",
            "device",
            "remote.txt",
            "../escape.txt"
        ],
        ["ssh.download-artifact", "device", "remote.txt", abs],
        ["ssh.download-artifact", "device", "remote.txt", "out/y.txt"],
        ["ssh.download-artifact", "device", "remote.txt", "link"],
    ]);
    let h = Hostile::new_in(
        outside,
        "fixture_hostile_escape",
        &format!(
            "{{ssh: [device], transfer: [job-urls, attachments], urls: ['{}']}}",
            web.url()
        ),
        "{stage_timeout: 20}",
        &format!("device_ip: {}\n", dut.ip()),
        json!({"job_id": "copies", "provision_data": {"ops": ops}}),
    );
    let root = h.rd.path().to_path_buf();
    std::fs::create_dir_all(root.join("artifacts")).unwrap();
    std::os::unix::fs::symlink(h.outside.p("dir"), root.join("artifacts/out")).unwrap();
    std::os::unix::fs::symlink(h.outside.p("sentinel.txt"), root.join("artifacts/link")).unwrap();
    h.rd.write("attachments/provision/ok.bin", "ok");
    std::os::unix::fs::symlink(
        h.outside.p("sentinel.txt"),
        root.join("attachments/provision/alink"),
    )
    .unwrap();
    let run = h.run();
    h.assert_contained(&run);
    let msg = h.message();
    let line = |prefix: &str| {
        msg.lines()
            .find(|l| l.starts_with(prefix))
            .unwrap_or_else(|| panic!("no outcome for {prefix}:\n{msg}"))
            .to_string()
    };
    let refused = |prefix: &str, kind: &str, why: &str| {
        let l = line(prefix);
        assert!(
            l.contains(&format!("=> {kind}: ")) && l.contains(why),
            "{l}"
        );
    };
    let dotdot = "`..` would leave the folder";
    let absolute = "absolute paths are not allowed";
    let symlink = "is a symbolic link or goes through one";
    assert!(
        line(&format!(
            "transfer.to-artifact [\"url\", \"{img}\", \"fine.bin\"]"
        ))
        .contains("=> ok: 4096 bytes")
    );
    refused(
        &format!("transfer.to-artifact [\"url\", \"{img}\", \"../escape.bin\"]"),
        "invalid",
        dotdot,
    );
    refused(
        &format!("transfer.to-artifact [\"url\", \"{img}\", \"{abs}\"]"),
        "invalid",
        absolute,
    );
    refused(
        &format!("transfer.to-artifact [\"url\", \"{img}\", \"out/x.bin\"]"),
        "invalid",
        symlink,
    );
    refused(
        &format!("transfer.to-artifact [\"url\", \"{img}\", \"link\"]"),
        "invalid",
        symlink,
    );
    refused(
        &format!(
            "transfer.to-artifact [\"url\", \"{}/not-in-job\"",
            web.url()
        ),
        "denied",
        "is not one the job provides",
    );
    refused(
        &format!("transfer.to-artifact [\"url\", \"{}/redirect\"", web.url()),
        "io",
        "is not covered by the URL grants",
    );
    refused(
        "transfer.to-artifact [\"attachment\", \"../../default.yaml\"",
        "invalid",
        dotdot,
    );
    refused(
        "transfer.to-artifact [\"attachment\", \"/etc/passwd\"",
        "invalid",
        absolute,
    );
    refused(
        "transfer.to-artifact [\"attachment\", \"alink\"",
        "invalid",
        symlink,
    );
    assert!(
        line("ssh.download-artifact [\"device\", \"remote.txt\", \"remote.txt\"]")
            .contains("=> ok: copied 16 bytes")
    );
    refused(
        "ssh.download-artifact [\"device\", \"remote.txt\", \"../escape.txt\"]",
        "invalid",
        dotdot,
    );
    refused(
        &format!("ssh.download-artifact [\"device\", \"remote.txt\", \"{abs}\"]"),
        "invalid",
        absolute,
    );
    refused(
        "ssh.download-artifact [\"device\", \"remote.txt\", \"out/y.txt\"]",
        "invalid",
        symlink,
    );
    refused(
        "ssh.download-artifact [\"device\", \"remote.txt\", \"link\"]",
        "invalid",
        symlink,
    );
    assert_eq!(h.rd.read("artifacts/remote.txt"), "from the device\n");
    // The call reached the device; the artifact name it wanted to write
    // was refused, recorded as a denial with the reason.
    h.assert_denial_audited(&run, "ssh.download-artifact", "device");
    assert!(
        h.audit()
            .iter()
            .any(|l| l["call"] == "ssh.download-artifact"
                && l["result"] == "denied"
                && l["detail"]
                    .as_str()
                    .is_some_and(|d| d.contains("../escape.txt"))),
        "{:?}",
        h.audit()
    );
    assert!(other.requests().is_empty(), "{:?}", other.requests());
    assert!(!h.rd.exists("artifacts/redirected.bin") && !h.rd.exists("artifacts/nj.bin"));
    // Only the allowed download reached the device.
    assert_eq!(dut.command_lines().len(), 1, "{:?}", dut.command_lines());
    assert!(!run.stdout.contains("INTERNAL-SECRET"));
}

/// Attachments are unpacked from the submitter's archive: a folder tree as
/// deep as paths allow is listed without exhausting the host's stack, and a
/// file over the returned-bytes limit is refused.
#[test]
fn hostile_attachment_trees_and_sizes_are_bounded() {
    let h = Hostile::new(
        "fixture_hostile_escape",
        "{}",
        "{max_return_bytes: 1MiB}",
        "",
        json!({}),
    );
    let att = h.rd.path().join("attachments/provision");
    let mut deep = att.clone();
    while deep.as_os_str().len() < 4000 {
        deep.push("d");
    }
    std::fs::create_dir_all(&deep).unwrap();
    std::fs::write(deep.join("leaf"), "x").unwrap();
    std::fs::write(att.join("big.bin"), vec![0u8; 2 << 20]).unwrap();
    let ops = json!([
        ["job.attachments", "provision"],
        ["job.read-attachment", "provision", "big.bin"],
    ]);
    h.rd.write(
        "testflinger.json",
        &json!({"job_id": "tree", "provision_data": {"ops": ops}}).to_string(),
    );
    let run = h.run();
    h.assert_contained(&run);
    let msg = h.message();
    let listed = outcome(&msg, "job.attachments");
    assert!(
        listed.contains("=> ok: [\"big.bin\", \"d/d/d/d"),
        "{listed}"
    );
    assert!(listed.contains("/leaf\"]"), "{listed}");
    let big = outcome(&msg, "job.read-attachment");
    assert!(
        big.contains("=> limit: ") && big.contains("limits.max_return_bytes"),
        "{big}"
    );
}
