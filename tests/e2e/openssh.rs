//! Compatibility with the SSH server labs really run: Debian's OpenSSH
//! `sshd` on a loopback port with its own config, host key and
//! authorized_keys, driven by the CLI (`noprovision provision`, and the
//! default `reserve` installing an imported key). Skipped, saying so, only
//! when `/usr/sbin/sshd` is not installed (`scripts/setup.sh` installs it).

use std::io::Read;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use labsim::keyserver::{self, KeyServer, Keys};

use crate::common::RunDir;

const SSHD: &str = "/usr/sbin/sshd";
const IP: &str = "127.0.0.61";

/// A running sshd; killed when dropped.
struct Sshd {
    child: Child,
    port: u16,
    log: PathBuf,
}

impl Drop for Sshd {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

fn user_name() -> String {
    // SAFETY: getpwuid returns a pointer into static storage or null.
    unsafe {
        let pw = libc::getpwuid(libc::geteuid());
        if pw.is_null() {
            return "root".into();
        }
        std::ffi::CStr::from_ptr((*pw).pw_name)
            .to_string_lossy()
            .into_owned()
    }
}

/// Starts sshd with everything under `dir`; the login user's HOME is
/// `home`, where `authorized_keys` is read.
fn start_sshd(dir: &Path, home: &Path) -> Sshd {
    let host_key = labsim::dut::write_key_pair(&dir.join("host_key"), None).unwrap();
    std::fs::create_dir_all(home.join(".ssh")).unwrap();
    // sshd needs its privilege separation directory.
    let _ = std::fs::create_dir_all("/run/sshd");
    let port = std::net::TcpListener::bind((IP, 0))
        .unwrap()
        .local_addr()
        .unwrap()
        .port();
    let config = dir.join("sshd_config");
    std::fs::write(
        &config,
        format!(
            "ListenAddress {IP}\nPort {port}\nHostKey {hk}\nPidFile {dir}/sshd.pid\n\
             AuthorizedKeysFile {home}/.ssh/authorized_keys\nUsePAM no\nStrictModes no\n\
             PubkeyAuthentication yes\nPasswordAuthentication no\nKbdInteractiveAuthentication no\n\
             PermitRootLogin prohibit-password\nSetEnv HOME={home}\n\
             Subsystem sftp internal-sftp\nLogLevel VERBOSE\n",
            hk = host_key.private_key.display(),
            dir = dir.display(),
            home = home.display(),
        ),
    )
    .unwrap();
    let log = dir.join("sshd.log");
    let child = Command::new(SSHD)
        .args(["-D", "-e", "-f"])
        .arg(&config)
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(std::fs::File::create(&log).unwrap())
        .spawn()
        .unwrap();
    let mut sshd = Sshd { child, port, log };
    // Ready once it sends its banner.
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        if let Ok(mut s) = std::net::TcpStream::connect((IP, port)) {
            let _ = s.set_read_timeout(Some(Duration::from_millis(500)));
            let mut buf = [0u8; 8];
            if s.read_exact(&mut buf).is_ok() && &buf == b"SSH-2.0-" {
                break;
            }
        }
        if let Ok(Some(status)) = sshd.child.try_wait() {
            panic!(
                "sshd exited with {status}: {}",
                std::fs::read_to_string(&sshd.log).unwrap_or_default()
            );
        }
        assert!(Instant::now() < deadline, "sshd did not start");
        std::thread::sleep(Duration::from_millis(20));
    }
    let _ = &mut sshd;
    sshd
}

#[test]
fn the_cli_works_against_debian_openssh() {
    if !Path::new(SSHD).exists() {
        eprintln!(
            "SKIPPED: {SSHD} is not installed (scripts/setup.sh installs openssh-server); the OpenSSH compatibility test did not run"
        );
        return;
    }
    let rd = RunDir::new();
    let server_dir = tempfile::tempdir().unwrap();
    let remote_home = server_dir.path().join("remote-home");
    let sshd = start_sshd(server_dir.path(), &remote_home);
    let agent = labsim::dut::agent_key(&rd.home()).unwrap();
    std::fs::write(
        remote_home.join(".ssh/authorized_keys"),
        format!("{}\n", agent.public_line),
    )
    .unwrap();
    std::fs::write(
        rd.home().join(".ssh/config"),
        format!(
            "Host {IP}\n    HostName {IP}\n    Port {}\n    IdentityFile {}\n",
            sshd.port,
            agent.private_key.display()
        ),
    )
    .unwrap();
    let keys =
        KeyServer::start(Keys::default().launchpad("alice", keyserver::ALICE_ED25519)).unwrap();
    let ca = labsim::tls::write_ca(rd.path()).unwrap();
    rd.write(
        "default.yaml",
        &format!(
            "agent_name: openssh-agent\ndevice_ip: {IP}\nreboot_script: [\"false\"]\n\
             connector_runtime:\n  poll_interval_seconds: 0.2\n  launchpad_keys_url: {}\n  extra_ca_certs: [{}]\n",
            keys.launchpad_url(),
            ca.display()
        ),
    );
    let user = user_name();
    rd.write(
        "testflinger.json",
        &serde_json::json!({
            "job_id": "openssh-1",
            "provision_data": {"skip": false},
            "test_data": {"test_username": user},
            "reserve_data": {"ssh_keys": ["lp:alice"], "timeout": 1},
        })
        .to_string(),
    );
    let run = rd.stage("noprovision", "provision");
    let log = || std::fs::read_to_string(&sshd.log).unwrap_or_default();
    assert_eq!(run.code, 0, "sshd log:\n{}", log());
    assert!(log().contains("Accepted publickey"), "{}", log());

    let run = rd.stage("noprovision", "reserve");
    assert_eq!(run.code, 0, "sshd log:\n{}", log());
    assert!(
        run.stderr.contains(&format!(
            "Installed the keys of lp:alice for {user} on the device"
        )),
        "{}",
        run.stderr
    );
    let authorized = std::fs::read_to_string(remote_home.join(".ssh/authorized_keys")).unwrap();
    assert!(
        authorized.contains(&format!(
            "{} # ssh-import-id lp:alice",
            keyserver::ALICE_ED25519
        )),
        "{authorized}"
    );
    assert!(authorized.starts_with(&agent.public_line), "{authorized}");
}
