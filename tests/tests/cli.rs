//! The `labsim` binary: `up` starts a YAML lab, writes the configs, says
//! where everything is, and stops cleanly.

use std::process::Command;
use std::time::Duration;

#[test]
fn up_runs_a_lab_for_a_while_and_stops_it() {
    let dir = tempfile::tempdir().unwrap();
    let lab_file = dir.path().join("lab.yaml");
    std::fs::write(
        &lab_file,
        "network: 127.66.9\ndevices:\n  - name: cli-dut\n    provision_type: noprovision\n",
    )
    .unwrap();
    let out_dir = dir.path().join("out");
    let out = Command::new(env!("CARGO_BIN_EXE_labsim"))
        .args(["up", lab_file.to_str().unwrap(), "--dir"])
        .arg(&out_dir)
        .args(["--for", "500ms"])
        .output()
        .unwrap();
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.status.success(),
        "{stdout}{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(stdout.contains("device cli-dut"), "{stdout}");
    assert!(stdout.contains("labsim: lab stopped"), "{stdout}");
    let config = std::fs::read_to_string(out_dir.join("cli-dut/default.yaml")).unwrap();
    assert!(config.contains("device_ip: 127.66.9.10"), "{config}");
    assert!(out_dir.join("home/.ssh/id_ed25519").exists());
    // Stopped: the device's SSH port is closed.
    let ssh: String = stdout
        .lines()
        .find(|l| l.contains("device cli-dut"))
        .and_then(|l| l.split_whitespace().find(|w| w.starts_with("127.66.9.10:")))
        .unwrap()
        .to_string();
    let addr: std::net::SocketAddr = ssh.parse().unwrap();
    assert!(std::net::TcpStream::connect_timeout(&addr, Duration::from_secs(1)).is_err());

    let bad = Command::new(env!("CARGO_BIN_EXE_labsim"))
        .args(["up", "/nonexistent.yaml", "--dir"])
        .arg(&out_dir)
        .output()
        .unwrap();
    assert_eq!(bad.status.code(), Some(2));
    assert!(String::from_utf8_lossy(&bad.stderr).contains("/nonexistent.yaml"));
}
