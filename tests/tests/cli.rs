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

/// `labsim demo` runs a whole muxpi job through the CLI binary built next
/// to `labsim` (`cargo build --release -p tfdc-runtime`); skipped, saying
/// so, when that binary is not there.
#[test]
fn demo_flashes_the_card_and_runs_the_whole_job() {
    let labsim = std::path::PathBuf::from(env!("CARGO_BIN_EXE_labsim"));
    let cli = labsim
        .parent()
        .unwrap()
        .join("testflinger-device-connectors");
    if !cli.exists() {
        eprintln!(
            "SKIPPED: {} is not built (cargo build --release -p tfdc-runtime); the demo did not run",
            cli.display()
        );
        return;
    }
    let dir = tempfile::tempdir().unwrap();
    let out = Command::new(&labsim)
        .args(["demo", "--dir"])
        .arg(dir.path())
        .output()
        .unwrap();
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.status.success(),
        "{stdout}{}",
        String::from_utf8_lossy(&out.stderr)
    );
    for line in [
        "the device runs Ubuntu 22.04.4 LTS (hostname demo-pi4) from its SD card",
        "$ testflinger-device-connectors muxpi provision -c ",
        "Switching the storage to the control host (stm -ts)",
        "to `zstdcat | sudo dd of=/dev/sda bs=16M` on control-host, deadline in 3000 s",
        "of 6.4 KiB (",
        "67109429 bytes (67 MB, 64 MiB) copied",
        "Image type detected: ubuntu",
        "The test image booted",
        "END provision",
        "PRETTY_NAME=\"Ubuntu 24.04.2 LTS\"",
        "back up: demo-pi4 running VERSION_CODENAME=noble",
        "*** TESTFLINGER SYSTEM RESERVED ***",
        "the SD card holds Ubuntu 24.04.2 LTS (hostname demo-pi4) (67109844 bytes)",
        "demo finished: every phase exited 0",
    ] {
        assert!(stdout.contains(line), "missing {line:?} in:\n{stdout}");
    }
    // The card is a file of the lab directory, kept with --dir.
    let card = std::fs::read(dir.path().join("lab/cards/demo-pi4.img")).unwrap();
    assert_eq!(card.len(), 67_109_844);
}
