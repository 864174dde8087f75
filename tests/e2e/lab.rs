//! The CLI against labs described in YAML (`labsim::lab`): the generated
//! `default.yaml` and agent SSH setup are all a stage needs.

use std::time::{Duration, Instant};

use labsim::dut::PowerState;
use labsim::lab::Lab;

use crate::common::{Run, RunDir, finish};

/// A run directory using the lab's `default.yaml` for `device` and its
/// agent home.
fn stage(lab: &Lab, device: &str, provision_type: &str, stage: &str, job: &str) -> (RunDir, Run) {
    let rd = RunDir::new();
    rd.write("testflinger.json", job);
    let config = lab.config_path(device);
    let out = rd
        .command(&[
            provision_type,
            stage,
            "-c",
            config.to_str().unwrap(),
            "testflinger.json",
        ])
        .env("HOME", lab.home())
        .output()
        .expect("running the CLI");
    let run = finish(out);
    (rd, run)
}

const JOB: &str = r#"{"job_id": "lab-1", "provision_data": {"skip": false}}"#;

#[test]
fn noprovision_through_a_yaml_lab() {
    let lab = Lab::start(
        r#"
devices:
  - name: np-up
  - name: np-off
    powered_off: true
    reboot_time: 300ms
"#,
    )
    .unwrap();
    let (rd, run) = stage(&lab, "np-up", "noprovision", "provision", JOB);
    assert_eq!(run.code, 0);
    assert_eq!(lab.dut("np-up").command_lines(), ["/bin/true"]);
    assert_eq!(
        rd.json("device-info.json")["device_info"]["device_ip"],
        lab.dut("np-up").ip()
    );
    // Off: reboot_script (the lab's power script) brings it back.
    let (_, run) = stage(&lab, "np-off", "noprovision", "provision", JOB);
    assert_eq!(run.code, 0);
    assert_eq!(lab.dut("np-off").power_events(), ["reboot"]);
    assert_eq!(lab.dut("np-off").state(), PowerState::Up);
    assert!(run.stderr.contains("END provision"), "{}", run.stderr);
}

#[test]
fn a_device_that_never_boots_fails_provisioning() {
    let lab = Lab::start(
        r#"
runtime: {limits: {host_call_timeout: 2}}
devices:
  - name: np-dead
    powered_off: true
    faults: {boot: never}
"#,
    )
    .unwrap();
    let started = Instant::now();
    let (rd, run) = stage(&lab, "np-dead", "noprovision", "provision", JOB);
    assert_eq!(run.code, 1);
    assert!(started.elapsed() < Duration::from_secs(20));
    assert_eq!(lab.dut("np-dead").power_events(), ["reboot"]);
    let err = rd.json("device-connector-error.json");
    let message = err["provision_exception_info"]["exception_message"]
        .as_str()
        .unwrap();
    assert!(message.contains("Failed to boot test image!"), "{message}");
}

#[test]
fn a_hanging_power_controller_needs_recovery() {
    let lab = Lab::start(
        r#"
runtime: {limits: {host_call_timeout: 2}}
devices:
  - name: np-hang
    powered_off: true
    faults: {power: hang}
"#,
    )
    .unwrap();
    let (rd, run) = stage(&lab, "np-hang", "noprovision", "provision", JOB);
    assert_eq!(run.code, 46);
    let err = rd.json("device-connector-error.json");
    assert_eq!(
        err["provision_exception_info"]["exception_name"],
        "RecoveryError"
    );
    assert_eq!(lab.dut("np-hang").state(), PowerState::Off);
}

/// The pre-provision hook (reference §3.3) against the simulated control
/// host: REST power-off, the host goes silent, `control_host_reboot_script`
/// brings it back, `/health` answers; then the setup request.
#[test]
fn the_control_host_is_power_cycled_before_provisioning() {
    let lab = Lab::start(
        r#"
runtime: {control_host_settle_seconds: 0.05}
devices:
  - name: np-ch
    control_host: ctl
control_hosts:
  - name: ctl
    boot_time: 200ms
"#,
    )
    .unwrap();
    let (_, run) = stage(&lab, "np-ch", "noprovision", "provision", JOB);
    assert_eq!(run.code, 0);
    let ctl = lab.control_host("ctl");
    let paths: Vec<String> = ctl
        .requests()
        .iter()
        .map(|r| format!("{} {}", r.method, r.path_only()))
        .collect();
    assert_eq!(paths[0], "POST /api/v1/system/poweroff");
    assert!(paths.contains(&"GET /health".to_string()), "{paths:?}");
    assert_eq!(
        paths.last().unwrap(),
        "POST /api/v1/system/setup/provisioning"
    );
    assert_eq!(ctl.ssh().power_events(), ["reboot"]);
    assert_eq!(ctl.ssh().state(), PowerState::Up);
    assert!(run.stderr.contains("is back"), "{}", run.stderr);
}

/// The default runtest with a test that power-cycles the device through
/// `$REBOOT_SCRIPT`: the serial console's boot log, ending at the login
/// prompt of the installed image, lands in `test-serial.log`.
#[test]
fn runtest_captures_the_boot_log_on_serial() {
    let lab = Lab::start(
        r#"
devices:
  - name: np-serial
    boot_time: 300ms
    reboot_time: 600ms
    image: {version: 24.04.2, codename: noble, hostname: serial-box}
"#,
    )
    .unwrap();
    let job = r#"{"job_id": "lab-2", "test_data": {"test_cmds": ["sleep 0.5", "$REBOOT_SCRIPT", "sleep 1.5", "ssh -F $HOME/.ssh/config -o StrictHostKeyChecking=no -o UserKnownHostsFile=/dev/null -o BatchMode=yes $DEVICE_IP hostname || true"]}}"#;
    let (rd, run) = stage(&lab, "np-serial", "noprovision", "runtest", job);
    assert_eq!(run.code, 0);
    let log = rd.read("test-serial.log");
    assert!(log.contains("U-Boot 2024.01-labsim"), "{log}");
    assert!(log.contains("Ubuntu 24.04.2 LTS serial-box ttyS0"), "{log}");
    assert!(log.ends_with("serial-box login: "), "{log}");
    assert_eq!(lab.dut("np-serial").power_events(), ["reboot"]);
}
