//! `noprovision provision` (reference §4.10) against a simulated device:
//! the device is only probed over SSH, and power cycled through
//! `reboot_script` when it does not answer.

use std::time::{Duration, Instant};

use labsim::dut::Dut;

use crate::common::RunDir;

/// Devices listen on 127.0.0.2, away from the clients' ephemeral ports.
const IP: &str = "127.0.0.2";

/// A run directory whose HOME reaches `dut`, with `default.yaml` built
/// from `runtime` (the `connector_runtime` mapping) and `extra` lines.
fn setup(dut: &Dut, runtime: &str, extra: &str) -> RunDir {
    let rd = RunDir::new();
    dut.configure_client(&rd.home()).unwrap();
    rd.write(
        "default.yaml",
        &format!(
            "agent_name: np-agent\ndevice_ip: {}\nconnector_runtime: {runtime}\n{extra}",
            dut.ip()
        ),
    );
    rd.write(
        "testflinger.json",
        r#"{"job_id":"np-1","provision_data":{"skip":false}}"#,
    );
    rd
}

const FAST: &str = "{poll_interval_seconds: 0.2}";

#[test]
fn a_reachable_device_is_left_alone() {
    let dut = Dut::start(IP).unwrap();
    let rd = setup(&dut, FAST, "");
    let scripts = dut.write_power_scripts(&rd.path().join("scripts")).unwrap();
    let yaml = rd.read("default.yaml");
    rd.write(
        "default.yaml",
        &format!("{yaml}reboot_script: [{}]\n", scripts.reboot.display()),
    );
    let run = rd.stage("noprovision", "provision");
    assert_eq!(run.code, 0);
    assert_eq!(dut.command_lines(), ["/bin/true"]);
    assert_eq!(dut.commands()[0].user, "ubuntu");
    assert!(dut.power_events().is_empty());
    assert!(run.stderr.contains("END provision"), "{}", run.stderr);
    assert!(!rd.exists("device-connector-error.json"));
}

#[test]
fn an_unreachable_device_is_power_cycled_and_waited_for() {
    let dut = Dut::builder(IP)
        .powered_off()
        .reboot_down_for(Duration::from_millis(700))
        .start()
        .unwrap();
    let rd = setup(&dut, FAST, "");
    let scripts = dut.write_power_scripts(&rd.path().join("scripts")).unwrap();
    let yaml = rd.read("default.yaml");
    rd.write(
        "default.yaml",
        &format!("{yaml}reboot_script:\n  - {}\n", scripts.reboot.display()),
    );
    let started = Instant::now();
    let run = rd.stage("noprovision", "provision");
    assert_eq!(run.code, 0);
    assert!(started.elapsed() < Duration::from_secs(15));
    assert_eq!(dut.power_events(), ["reboot"]);
    assert_eq!(dut.command_lines(), ["/bin/true"]);
    // The reference's lines: what the failed login said, then each
    // reboot_script entry as it runs.
    assert!(
        run.stderr.contains("Booting the test image"),
        "{}",
        run.stderr
    );
    assert!(
        run.stderr.contains(&format!(
            "INFO: DEVICE CONNECTOR: Running {}",
            scripts.reboot.display()
        )),
        "{}",
        run.stderr
    );
    assert!(run.stderr.contains("END provision"), "{}", run.stderr);
}

#[test]
fn a_hanging_reboot_script_needs_recovery() {
    let dut = Dut::builder(IP).powered_off().start().unwrap();
    let rd = setup(
        &dut,
        "{poll_interval_seconds: 0.2, limits: {host_call_timeout: 2}}",
        "reboot_script: [sleep 600]\n",
    );
    let started = Instant::now();
    let run = rd.stage("noprovision", "provision");
    assert_eq!(run.code, 46);
    assert!(started.elapsed() < Duration::from_secs(15));
    let err = rd.json("device-connector-error.json");
    let info = &err["provision_exception_info"];
    assert_eq!(info["exception_name"], "RecoveryError");
    // The reference's message; what timed out is the cause.
    assert_eq!(info["exception_message"], "timeout reaching control host!");
    let cause = info["exception_cause"].as_str().unwrap();
    assert!(cause.contains("sleep 600"), "{cause}");
}

#[test]
fn a_failing_reboot_script_fails_the_stage() {
    let dut = Dut::builder(IP).powered_off().start().unwrap();
    let rd = setup(&dut, FAST, "reboot_script: [\"false\"]\n");
    let run = rd.stage("noprovision", "provision");
    assert_eq!(run.code, 1);
    let err = rd.json("device-connector-error.json");
    let message = err["provision_exception_info"]["exception_message"]
        .as_str()
        .unwrap()
        .to_string();
    assert!(message.contains("false"), "{message}");
    assert_eq!(dut.connections_accepted(), 0);
}

#[test]
fn a_missing_device_ip_is_named() {
    let rd = RunDir::new();
    rd.write(
        "default.yaml",
        "agent_name: np-agent\nreboot_script: [\"true\"]\nconnector_runtime: {poll_interval_seconds: 0.2}\n",
    );
    rd.write(
        "testflinger.json",
        r#"{"job_id":"np-2","provision_data":{"skip":false}}"#,
    );
    let run = rd.stage("noprovision", "provision");
    assert_eq!(run.code, 1);
    assert!(run.stderr.contains("device_ip"), "{}", run.stderr);
    let err = rd.json("device-connector-error.json");
    let message = err["provision_exception_info"]["exception_message"]
        .as_str()
        .unwrap()
        .to_string();
    assert!(message.contains("device_ip"), "{message}");
}
