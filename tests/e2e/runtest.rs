//! The native default `runtest` through the CLI (reference §3.4):
//! `fake_connector` and `noprovision` do not implement the stage, so the
//! runtime runs `test_cmds` itself.

use std::os::unix::fs::PermissionsExt;

use labsim::web::{Reply, WebServer};
use serde_json::json;

use crate::common::{Run, RunDir};

const CONFIG: &str = "\
agent_name: agent-rt
device_ip: 192.0.2.10
serial_port: 3001
reboot_script: [pdu off 4, pdu on 4]
env:
  DEVICE_IP: 192.0.2.10
  LAB_PORT: 3001
  LAB_EMPTY: ''
";

fn setup(test_data: serde_json::Value) -> RunDir {
    let rd = RunDir::new();
    rd.write("default.yaml", CONFIG);
    rd.write(
        "testflinger.json",
        &json!({"job_id": "j-rt", "test_data": test_data}).to_string(),
    );
    rd
}

fn runtest(rd: &RunDir) -> Run {
    rd.stage("fake_connector", "runtest")
}

fn error_info(rd: &RunDir) -> serde_json::Value {
    let err = rd.json("device-connector-error.json");
    assert_eq!(
        err["runtest_exception_info"], err["test_exception_info"],
        "the agent reads test_exception_info"
    );
    err["runtest_exception_info"].clone()
}

#[test]
fn list_form_streams_output_and_keeps_going_after_a_failure() {
    let rd = setup(json!({"test_cmds": [
        "echo first; echo to-stderr >&2; echo second",
        "echo failing; exit 3",
        "echo last"
    ]}));
    let run = runtest(&rd);
    // The status is the last command's: the earlier failure is only logged.
    assert_eq!(run.code, 0);
    assert_eq!(
        run.stdout, "first\nto-stderr\nsecond\nfailing\nlast\n",
        "output of both streams, in order"
    );
    let begin = run
        .stderr
        .find("INFO: DEVICE CONNECTOR: BEGIN testrun")
        .unwrap();
    let failed = run
        .stderr
        .find("WARNING: DEVICE CONNECTOR: Command failed, rc=3")
        .unwrap();
    let end = run
        .stderr
        .find("INFO: DEVICE CONNECTOR: END testrun")
        .unwrap();
    assert!(begin < failed && failed < end, "{}", run.stderr);
    assert!(run.stderr.contains("Running: echo failing; exit 3"));
    assert!(!rd.exists("device-connector-error.json"));
}

#[test]
fn list_form_exit_status_is_the_last_commands() {
    let rd = setup(json!({"test_cmds": ["true", "exit 5"]}));
    assert_eq!(runtest(&rd).code, 5);
    // A signal-killed shell: Python's returncode -9, truncated by the OS.
    let rd = setup(json!({"test_cmds": ["kill -9 $$"]}));
    let run = runtest(&rd);
    assert_eq!(run.code, 247);
    assert!(
        run.stderr.contains("Command failed, rc=-9"),
        "{}",
        run.stderr
    );
}

#[test]
fn string_form_runs_tf_cmd_script() {
    let rd = setup(json!({"test_cmds": "echo from-script \"$0\"\nexit 4\n"}));
    let run = runtest(&rd);
    assert_eq!(run.code, 4);
    assert_eq!(run.stdout, "from-script ./tf_cmd_script\n");
    assert!(
        run.stderr
            .contains("WARNING: DEVICE CONNECTOR: Tests failed, rc=4")
    );
    assert_eq!(
        rd.read("tf_cmd_script"),
        "#!/bin/bash\necho from-script \"$0\"\nexit 4\n"
    );
    let mode = std::fs::metadata(rd.path().join("tf_cmd_script"))
        .unwrap()
        .permissions()
        .mode();
    assert_eq!(mode & 0o7777, 0o775);
}

#[test]
fn string_form_keeps_its_own_interpreter() {
    let rd = setup(json!({"test_cmds": "#!/bin/sh\necho \"sh: $LAB_PORT\"\n"}));
    let run = runtest(&rd);
    assert_eq!(run.code, 0);
    assert_eq!(run.stdout, "sh: 3001\n");
    assert_eq!(
        rd.read("tf_cmd_script"),
        "#!/bin/sh\necho \"sh: $LAB_PORT\"\n"
    );
    assert!(!run.stderr.contains("Tests failed"));
}

#[test]
fn commands_see_the_lab_environment_and_secrets() {
    let secret = "t0p-s3cr3t-Value-42";
    let rd = setup(json!({
        "test_cmds": [
            "echo \"agent=$AGENT_NAME reboot=$REBOOT_SCRIPT ip=$DEVICE_IP port=$LAB_PORT inherited=$TFDC_E2E_INHERITED\"",
            "echo \"[${LAB_EMPTY-unset}] [${UNRESOLVED-unset}]\"",
            "printf %s \"$MY_TOKEN\" > token.txt",
        ],
        "secrets": {"MY_TOKEN": secret, "UNRESOLVED": ""}
    }));
    let run = crate::common::finish(
        rd.command(&[
            "fake_connector",
            "runtest",
            "-c",
            "default.yaml",
            "testflinger.json",
        ])
        .env("TFDC_E2E_INHERITED", "yes")
        .output()
        .unwrap(),
    );
    assert_eq!(run.code, 0);
    assert_eq!(
        run.stdout,
        "agent=agent-rt reboot=pdu off 4;pdu on 4 ip=192.0.2.10 port=3001 inherited=yes\n[unset] [unset]\n"
    );
    assert_eq!(
        rd.read("token.txt"),
        secret,
        "the secret reaches the command"
    );
    assert!(!run.stderr.contains(secret), "secret leaked into the log");
    assert!(!run.stdout.contains(secret));
}

#[test]
fn double_braces_trigger_the_deprecated_templating() {
    let rd = setup(json!({"test_cmds": [
        "echo {device_ip}:{serial_port} {{literal}} {unknown} {}",
        "echo {device_ip}"
    ]}));
    let run = runtest(&rd);
    assert_eq!(run.code, 0);
    assert_eq!(
        run.stdout, "192.0.2.10:3001 {literal} {unknown} {}\n{device_ip}\n",
        "only commands containing {{{{ are templated"
    );
    assert_eq!(
        run.stderr
            .matches(
                "WARNING: DEVICE CONNECTOR: DEPRECATED - Detected use of double-braces in test_cmds"
            )
            .count(),
        1
    );
    assert!(
        run.stderr
            .contains("Running: echo 192.0.2.10:3001 {literal}")
    );
}

#[test]
fn a_broken_template_fails_the_stage() {
    let rd = setup(json!({"test_cmds": "echo {{ }"}));
    let run = runtest(&rd);
    assert_eq!(run.code, 1);
    let info = error_info(&rd);
    assert_eq!(info["exception_name"], "ValueError");
    assert!(
        info["exception_message"]
            .as_str()
            .unwrap()
            .contains("Single '}' encountered in format string")
    );
}

#[test]
fn test_cmds_of_another_type_is_an_error() {
    for bad in [json!(42), json!({"a": 1}), json!(null)] {
        let rd = setup(json!({"test_cmds": bad}));
        let run = runtest(&rd);
        assert_eq!(run.code, 1, "{bad}");
        assert!(
            run.stderr
                .contains("test_cmds field must be a list or string")
        );
        let info = error_info(&rd);
        assert!(
            info["exception_message"]
                .as_str()
                .unwrap()
                .contains("test_cmds field must be a list or string"),
            "{info}"
        );
    }
}

#[test]
fn missing_test_data_is_an_error() {
    let rd = RunDir::new();
    rd.write("default.yaml", CONFIG);
    rd.write("testflinger.json", r#"{"job_id": "j-rt"}"#);
    let run = rd.stage("noprovision", "runtest");
    assert_eq!(run.code, 1);
    assert!(run.stderr.contains("BEGIN testrun"));
    let info = error_info(&rd);
    assert!(
        info["exception_message"]
            .as_str()
            .unwrap()
            .contains("test_data"),
        "{info}"
    );
}

#[test]
fn a_background_process_does_not_hold_the_stage() {
    let rd = setup(json!({"test_cmds": [
        "sleep 30 & echo $! > bg.pid; echo started",
        "echo after"
    ]}));
    let run = runtest(&rd);
    if let Ok(pid) = rd.read("bg.pid").trim().parse::<i32>() {
        // SAFETY: kill(2) of the sleep this test's command started.
        unsafe { libc::kill(pid, libc::SIGKILL) };
    }
    assert_eq!(run.code, 0);
    assert_eq!(run.stdout, "started\nafter\n");
}

#[test]
fn the_control_host_is_asked_to_prepare_for_the_test() {
    let control = WebServer::start("127.0.0.1", |_| Reply::status(500)).unwrap();
    let rd = setup(json!({"test_cmds": ["echo ran"]}));
    rd.write(
        "default.yaml",
        &format!(
            "{CONFIG}control_host: 127.0.0.1\nconnector_runtime:\n  control_host_url: {}\n",
            control.url()
        ),
    );
    let run = runtest(&rd);
    // Best effort: the failing control host does not stop the tests.
    assert_eq!(run.code, 0);
    assert_eq!(run.stdout, "ran\n");
    let requests = control.requests();
    assert_eq!(requests.len(), 1);
    assert_eq!(requests[0].method, "POST");
    assert_eq!(requests[0].path, "/api/v1/system/setup/test");
    // The reference announces the hook (§3.3).
    assert!(
        run.stderr
            .contains("INFO: DEVICE CONNECTOR: Setting up test on control host 127.0.0.1\n"),
        "{}",
        run.stderr
    );
}

#[test]
fn secrets_are_not_available_to_templates() {
    let secret = "never-in-a-command-line";
    let rd = setup(json!({
        "test_cmds": ["echo {env[MY_TOKEN]} {{x}}"],
        "secrets": {"MY_TOKEN": secret}
    }));
    let run = runtest(&rd);
    assert_eq!(run.code, 1);
    assert_eq!(run.stdout, "");
    assert!(!run.stderr.contains(secret));
    let info = error_info(&rd);
    assert_eq!(info["exception_name"], "KeyError");
    let message = info["exception_message"].as_str().unwrap();
    assert!(
        message.contains("only available as environment variables"),
        "{message}"
    );
    assert!(!message.contains(secret));
}

#[test]
fn the_serial_console_is_captured_while_tests_run() {
    let serial = labsim::serial::SerialServer::start("127.0.0.1").unwrap();
    let rd = RunDir::new();
    rd.write(
        "default.yaml",
        &format!(
            "agent_name: agent-rt\nserial_host: {}\nserial_port: {}\n",
            serial.host(),
            serial.port()
        ),
    );
    // The test command waits until the console connection is up, then the
    // device prints; the capture must hold it all by the end of the stage.
    let marker = rd.path().join("go");
    rd.write(
        "testflinger.json",
        &json!({"job_id": "j-serial", "test_data": {"test_cmds": [
            format!("for i in $(seq 50); do [ -e {0} ] && break; sleep 0.1; done; test -e {0}", marker.display())
        ]}})
        .to_string(),
    );
    let child = rd
        .command(&[
            "fake_connector",
            "runtest",
            "-c",
            "default.yaml",
            "testflinger.json",
        ])
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .unwrap();
    assert!(serial.wait_accepted(1, std::time::Duration::from_secs(10)));
    serial.push("[  OK  ] Reached target Multi-User System.\ndut login: ");
    // Let the stage finish once the capture has written what was printed.
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(10);
    while !std::fs::read_to_string(rd.path().join("test-serial.log"))
        .is_ok_and(|t| t.contains("dut login:"))
        && std::time::Instant::now() < deadline
    {
        std::thread::sleep(std::time::Duration::from_millis(20));
    }
    std::fs::write(&marker, "").unwrap();
    let run = crate::common::finish(child.wait_with_output().unwrap());
    assert_eq!(run.code, 0);
    assert!(
        rd.read("test-serial.log").contains("dut login:"),
        "{}",
        rd.read("test-serial.log")
    );
}
