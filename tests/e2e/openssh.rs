//! Compatibility with the SSH server labs really run: Debian's OpenSSH
//! `sshd` on a loopback port with its own config, host key and
//! authorized_keys, driven by the CLI (`noprovision provision`, and the
//! default `reserve` installing an imported key). Skipped, saying so, only
//! when `/usr/sbin/sshd` is not installed (`scripts/setup.sh` installs it).

use labsim::keyserver::{self, KeyServer, Keys};
use labsim::openssh::{SSHD, Sshd, user_name};

use crate::common::RunDir;

const IP: &str = "127.0.0.61";

#[test]
fn the_cli_works_against_debian_openssh() {
    if !labsim::openssh::available() {
        eprintln!(
            "SKIPPED: {SSHD} is not installed (scripts/setup.sh installs openssh-server); the OpenSSH compatibility test did not run"
        );
        return;
    }
    let rd = RunDir::new();
    let server_dir = tempfile::tempdir().unwrap();
    let remote_home = server_dir.path().join("remote-home");
    let sshd = Sshd::start(IP, server_dir.path(), &remote_home, None).unwrap();
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
            sshd.port(),
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
    let log = || sshd.log_text();
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
