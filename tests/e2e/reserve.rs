//! The native default `reserve` through the CLI (reference §3.5): key
//! import from a simulated Launchpad/GitHub over HTTPS, the banner tools
//! parse, and the hold for `reserve_data.timeout`.

use std::io::BufRead;
use std::process::Stdio;
use std::time::{Duration, Instant};

use labsim::keyserver::{self, KeyServer, Keys};
use serde_json::json;

use crate::common::RunDir;

fn config(rd: &RunDir, keys: &KeyServer, extra: &str) -> String {
    let ca = labsim::tls::write_ca(rd.path()).unwrap();
    format!(
        "agent_name: agent-rs\ndevice_ip: 127.0.0.1\n{extra}connector_runtime:\n  launchpad_keys_url: {}\n  github_keys_url: {}\n  extra_ca_certs: [{}]\n  poll_interval_seconds: 0.01\n",
        keys.launchpad_url(),
        keys.github_url(),
        ca.display()
    )
}

fn time_line(stdout: &str, label: &str) -> chrono::DateTime<chrono::FixedOffset> {
    let re = regex::Regex::new(&format!(
        r"(?m)^{} \[(\d{{4}}-\d\d-\d\dT\d\d:\d\d:\d\d(?:\.\d{{6}})?[+-]\d\d:\d\d)\]$",
        regex::escape(label)
    ))
    .unwrap();
    let caps = re
        .captures(stdout)
        .unwrap_or_else(|| panic!("no `{label}` line in:\n{stdout}"));
    chrono::DateTime::parse_from_rfc3339(&caps[1]).unwrap()
}

#[test]
fn banner_and_key_import() {
    let server = KeyServer::start(
        Keys::default()
            .launchpad(
                "alice",
                &format!("{}\n{}\n", keyserver::ALICE_ED25519, keyserver::ALICE_RSA),
            )
            .github("bob", keyserver::BOB_ECDSA)
            .failing("bob", 1),
    )
    .unwrap();
    let rd = RunDir::new();
    let cfg = config(&rd, &server, "serial_host: serial.lab\nserial_port: 3001\n");
    rd.write("default.yaml", &cfg);
    rd.write(
        "testflinger.json",
        &json!({
            "job_id": "job-1234",
            "test_data": {"test_username": "tester"},
            "reserve_data": {
                "ssh_keys": ["lp:carol", "xx:bad", "lp:alice", "gh:bob"],
                "timeout": "2s"
            }
        })
        .to_string(),
    );
    let started = Instant::now();
    let run = rd.stage("fake_connector", "reserve");
    let elapsed = started.elapsed();
    assert_eq!(run.code, 0);
    assert!(elapsed >= Duration::from_secs(2), "held for {elapsed:?}");

    // The banner, line by line.
    let lines: Vec<&str> = run.stdout.lines().collect();
    assert_eq!(lines.len(), 7, "{}", run.stdout);
    assert_eq!(lines[0], "*** TESTFLINGER SYSTEM RESERVED ***");
    assert_eq!(lines[1], "You can now connect to tester@127.0.0.1");
    assert_eq!(
        lines[2],
        "Serial access is available via: telnet serial.lab 3001"
    );
    let now = time_line(&run.stdout, "Current time:          ");
    let expires = time_line(&run.stdout, "Reservation expires at:");
    assert_eq!(expires - now, chrono::TimeDelta::seconds(2));
    assert_eq!(
        lines[5],
        "Reservation will automatically timeout in 2 seconds"
    );
    assert_eq!(
        lines[6],
        "To end the reservation sooner use: testflinger-cli cancel job-1234"
    );

    // Key import: 404 is not retried, a 500 is, bad specs never leave.
    assert_eq!(
        server.paths(),
        vec![
            "/~carol/+sshkeys",
            "/~alice/+sshkeys",
            "/bob.keys",
            "/bob.keys"
        ]
    );
    let log = &run.stderr;
    assert!(log.contains("BEGIN reservation"));
    assert!(
        log.contains("Failed to import ssh key: lp:carol. User not found."),
        "{log}"
    );
    assert!(log.contains("Invalid ssh key \"xx:bad\""), "{log}");
    assert!(
        log.contains("Unable to import ssh key from: gh:bob"),
        "{log}"
    );
    assert_eq!(log.matches("Imported key SHA256:").count(), 3, "{log}");
    assert!(
        log.contains("ssh-ed25519 alice@laptop) from lp:alice"),
        "{log}"
    );
    assert!(log.contains("Successfully imported key: gh:bob"), "{log}");
    // key.pub holds the last entry's keys, as ssh-import-id writes them.
    assert_eq!(
        rd.read("key.pub"),
        format!("{} # ssh-import-id gh:bob\n\n", keyserver::BOB_ECDSA)
    );
    assert!(!rd.exists("device-connector-error.json"));
}

#[test]
fn the_banner_is_out_before_the_hold_and_the_default_is_an_hour() {
    let server = KeyServer::start(Keys::default()).unwrap();
    let rd = RunDir::new();
    let cfg = config(&rd, &server, "");
    rd.write("default.yaml", &cfg);
    rd.write("testflinger.json", r#"{"reserve_data": {"ssh_keys": []}}"#);
    let mut child = rd
        .command(&[
            "noprovision",
            "reserve",
            "-c",
            "default.yaml",
            "testflinger.json",
        ])
        .stdout(Stdio::piped())
        .stderr(Stdio::null())
        .spawn()
        .unwrap();
    let stdout = child.stdout.take().unwrap();
    let (tx, rx) = std::sync::mpsc::channel();
    let reader = std::thread::spawn(move || {
        for line in std::io::BufReader::new(stdout).lines() {
            let Ok(line) = line else { break };
            if tx.send(line).is_err() {
                break;
            }
        }
    });
    let mut lines = Vec::new();
    let deadline = Instant::now() + Duration::from_secs(10);
    while lines.len() < 6 {
        let left = deadline.saturating_duration_since(Instant::now());
        match rx.recv_timeout(left) {
            Ok(line) => lines.push(line),
            Err(_) => break,
        }
    }
    // Still holding the device: the agent ends a reservation by killing it.
    let still_running = child.try_wait().unwrap().is_none();
    child.kill().unwrap();
    child.wait().unwrap();
    reader.join().unwrap();
    assert!(still_running);
    assert_eq!(lines.len(), 6, "{lines:?}");
    assert_eq!(lines[1], "You can now connect to ubuntu@127.0.0.1");
    assert!(lines[2].starts_with("Current time:           ["));
    assert_eq!(
        lines[4],
        "Reservation will automatically timeout in 3600 seconds"
    );
    assert_eq!(
        lines[5],
        "To end the reservation sooner use: testflinger-cli cancel <job_id>"
    );
}

#[test]
fn an_invalid_timeout_fails_before_anything_is_reserved() {
    let server =
        KeyServer::start(Keys::default().launchpad("alice", keyserver::ALICE_ED25519)).unwrap();
    let rd = RunDir::new();
    let cfg = config(&rd, &server, "");
    rd.write("default.yaml", &cfg);
    rd.write(
        "testflinger.json",
        r#"{"reserve_data": {"ssh_keys": ["lp:alice"], "timeout": "soon"}}"#,
    );
    let run = rd.stage("fake_connector", "reserve");
    assert_eq!(run.code, 1);
    assert!(!run.stdout.contains("RESERVED"));
    assert!(server.paths().is_empty());
    let err = rd.json("device-connector-error.json");
    let message = err["reserve_exception_info"]["exception_message"]
        .as_str()
        .unwrap();
    assert!(message.contains("reserve_data.timeout"), "{message}");
}

#[test]
fn a_missing_device_ip_is_an_error() {
    let rd = RunDir::new();
    rd.write("default.yaml", "agent_name: agent-rs\n");
    rd.write("testflinger.json", r#"{"reserve_data": {"timeout": 1}}"#);
    let run = rd.stage("fake_connector", "reserve");
    assert_eq!(run.code, 1);
    assert!(!run.stdout.contains("RESERVED"));
    let err = rd.json("device-connector-error.json");
    let message = err["reserve_exception_info"]["exception_message"]
        .as_str()
        .unwrap();
    assert!(message.contains("device_ip"), "{message}");
}

/// Keys end up in the test user's `authorized_keys` on the (simulated)
/// device, next to the agent's key, without duplicates on a second run.
#[test]
fn imported_keys_are_installed_on_the_device() {
    let dut = labsim::dut::Dut::start("127.0.0.1").unwrap();
    let server = KeyServer::start(
        Keys::default()
            .launchpad(
                "alice",
                &format!("{}\n{}\n", keyserver::ALICE_ED25519, keyserver::ALICE_RSA),
            )
            .github("bob", keyserver::BOB_ECDSA),
    )
    .unwrap();
    let rd = RunDir::new();
    let agent = dut.configure_client(&rd.home()).unwrap();
    let cfg = config(&rd, &server, "")
        .replace("device_ip: 127.0.0.1", &format!("device_ip: {}", dut.ip()));
    rd.write("default.yaml", &cfg);
    rd.write(
        "testflinger.json",
        r#"{"job_id": "j-dev", "reserve_data": {"ssh_keys": ["lp:alice", "gh:bob"], "timeout": 0}}"#,
    );
    for _ in 0..2 {
        let run = rd.stage("fake_connector", "reserve");
        assert_eq!(run.code, 0);
        assert!(
            run.stderr
                .contains("Installed the keys of lp:alice for ubuntu on the device"),
            "{}",
            run.stderr
        );
        assert!(
            run.stderr
                .contains("Installed the keys of gh:bob for ubuntu on the device"),
            "{}",
            run.stderr
        );
        assert!(
            !run.stderr.contains("Error copying ssh key"),
            "{}",
            run.stderr
        );
    }
    let text = std::fs::read_to_string(dut.home().join(".ssh/authorized_keys")).unwrap();
    let lines: Vec<&str> = text.lines().collect();
    assert_eq!(
        lines,
        vec![
            agent.public_line.trim(),
            &format!("{} # ssh-import-id lp:alice", keyserver::ALICE_ED25519),
            &format!("{} # ssh-import-id lp:alice", keyserver::ALICE_RSA),
            &format!("{} # ssh-import-id gh:bob", keyserver::BOB_ECDSA),
        ]
    );
}

/// A device that is still booting when the keys arrive: the installation
/// is retried (reference: 10 attempts, 60 s apart; scaled down here).
#[test]
fn installation_is_retried_until_the_device_answers() {
    let dut = labsim::dut::Dut::builder("127.0.0.1")
        .powered_off()
        .start()
        .unwrap();
    let server = KeyServer::start(Keys::default().github("bob", keyserver::BOB_ECDSA)).unwrap();
    let rd = RunDir::new();
    dut.configure_client(&rd.home()).unwrap();
    // 0.05 s poll interval: 0.3 s between installation attempts.
    let cfg = config(&rd, &server, "")
        .replace("device_ip: 127.0.0.1", &format!("device_ip: {}", dut.ip()))
        .replace("poll_interval_seconds: 0.01", "poll_interval_seconds: 0.05");
    rd.write("default.yaml", &cfg);
    rd.write(
        "testflinger.json",
        r#"{"reserve_data": {"ssh_keys": ["gh:bob"], "timeout": 0}}"#,
    );
    let child = rd
        .command(&[
            "fake_connector",
            "reserve",
            "-c",
            "default.yaml",
            "testflinger.json",
        ])
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    // Power on once the first attempt has been refused.
    let deadline = Instant::now() + Duration::from_secs(10);
    while dut.connections_accepted() == 0 && !rd.exists("key.pub") && Instant::now() < deadline {
        std::thread::sleep(Duration::from_millis(20));
    }
    std::thread::sleep(Duration::from_millis(100));
    dut.power_on();
    let run = crate::common::finish(child.wait_with_output().unwrap());
    assert_eq!(run.code, 0);
    assert!(
        run.stderr
            .contains("Error copying ssh key to device for: gh:bob"),
        "{}",
        run.stderr
    );
    assert!(
        run.stderr.contains("Installed the keys of gh:bob"),
        "{}",
        run.stderr
    );
    let text = std::fs::read_to_string(dut.home().join(".ssh/authorized_keys")).unwrap();
    assert!(text.contains(&format!("{} # ssh-import-id gh:bob", keyserver::BOB_ECDSA)));
}
