//! The command line itself: usage errors, help and version, and broken
//! inputs (exit 1 with a clear message and the error JSON, never a crash).

use crate::common::RunDir;

fn setup() -> RunDir {
    let rd = RunDir::new();
    rd.write(
        "default.yaml",
        "agent_name: cli-agent\ndevice_ip: 192.0.2.30\n",
    );
    rd.write(
        "testflinger.json",
        r#"{"job_id":"j-cli","provision_data":{"x":1}}"#,
    );
    rd
}

#[test]
fn usage_errors_exit_2() {
    let rd = setup();
    for args in [
        vec![
            "nosuchtype",
            "provision",
            "-c",
            "default.yaml",
            "testflinger.json",
        ],
        vec![
            "fake_connector",
            "flash",
            "-c",
            "default.yaml",
            "testflinger.json",
        ],
        vec!["fake_connector", "provision", "testflinger.json"],
        vec!["fake_connector", "provision", "-c", "default.yaml"],
        vec![
            "zapper_iot",
            "provision",
            "-c",
            "default.yaml",
            "testflinger.json",
        ],
        vec![],
    ] {
        let run = rd.run(&args);
        assert_eq!(run.code, 2, "{args:?}");
        assert!(run.stderr.contains("Usage:"), "{args:?}: {}", run.stderr);
        assert!(
            !rd.exists("device-connector-error.json"),
            "usage errors write no error JSON"
        );
    }
}

#[test]
fn help_and_version() {
    let rd = setup();
    let run = rd.run(&["--help"]);
    assert_eq!(run.code, 0);
    for t in [
        "noprovision",
        "muxpi",
        "maas2",
        "fake_connector",
        "lab",
        "inspect",
        "check",
    ] {
        assert!(run.stdout.contains(t), "--help lists {t}");
    }
    let run = rd.run(&["noprovision", "--help"]);
    assert_eq!(run.code, 0);
    for s in [
        "provision",
        "firmware_update",
        "runtest",
        "allocate",
        "reserve",
        "cleanup",
    ] {
        assert!(run.stdout.contains(s), "{s}");
    }
    let run = rd.run(&["noprovision", "provision", "--help"]);
    assert_eq!(run.code, 0);
    assert!(run.stdout.contains("--config") && run.stdout.contains("JOB_DATA"));
    let run = rd.run(&["--version"]);
    assert_eq!(run.code, 0);
    assert!(
        run.stdout
            .contains("WIT testflinger:connector@0.2.0, also serving 0.1.x and 0.2.x"),
        "{}",
        run.stdout
    );
}

#[test]
fn the_production_name_is_the_same_program() {
    let rd = setup();
    let other = crate::common::cli().with_file_name("testflinger-device-connector");
    let out = std::process::Command::new(other)
        .args([
            "fake_connector",
            "allocate",
            "-c",
            "default.yaml",
            "testflinger.json",
        ])
        .current_dir(rd.path())
        .env("TFDC_CACHE_DIR", crate::common::shared_cache_dir())
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(0));
    assert!(rd.exists("device-info.json"));
}

fn assert_failed(rd: &RunDir, run: &crate::common::Run, name: &str, needle: &str) {
    assert_eq!(run.code, 1, "{}", run.stderr);
    assert!(
        run.stderr.contains(needle),
        "stderr lacks `{needle}`:\n{}",
        run.stderr
    );
    let info = &rd.json("device-connector-error.json")["provision_exception_info"];
    assert_eq!(info["exception_name"], name);
    assert!(info["exception_message"].as_str().unwrap().contains(needle));
}

#[test]
fn broken_inputs_fail_clearly() {
    let rd = setup();
    rd.write("default.yaml", "agent_name: [unclosed\n");
    let run = rd.stage("fake_connector", "provision");
    assert_failed(&rd, &run, "ConfigError", "is not valid YAML");

    let rd = setup();
    rd.write("default.yaml", "- just\n- a list\n");
    assert_failed(
        &rd,
        &rd.stage("fake_connector", "provision"),
        "ConfigError",
        "must be a YAML mapping",
    );

    let rd = setup();
    let run = rd.run(&[
        "fake_connector",
        "provision",
        "-c",
        "missing.yaml",
        "testflinger.json",
    ]);
    assert_failed(
        &rd,
        &run,
        "ConfigError",
        "cannot read device config missing.yaml",
    );

    let rd = setup();
    rd.write("testflinger.json", "{\"job_id\": ");
    let run = rd.stage("fake_connector", "provision");
    assert_failed(&rd, &run, "JobDataError", "is not valid JSON");
    // device-info.json was still written from the (valid) config.
    assert_eq!(
        rd.json("device-info.json")["device_info"]["agent_name"],
        "cli-agent"
    );

    let rd = setup();
    let run = rd.run(&[
        "fake_connector",
        "provision",
        "-c",
        "default.yaml",
        "nope.json",
    ]);
    assert_failed(&rd, &run, "JobDataError", "cannot read job file nope.json");

    let rd = setup();
    rd.write(
        "default.yaml",
        "agent_name: cli-agent\nconnector_runtime: {limits: {memory: lots}}\n",
    );
    assert_failed(
        &rd,
        &rd.stage("fake_connector", "provision"),
        "ConfigError",
        "connector_runtime.limits",
    );
}

#[test]
fn a_known_type_without_a_connector_is_exit_1() {
    let rd = setup();
    let run = rd.stage("cm3", "provision");
    assert_eq!(run.code, 1);
    assert!(
        run.stderr
            .contains("provision type `cm3` has no connector in this runtime"),
        "{}",
        run.stderr
    );
    assert!(rd.exists("device-info.json"));
}

#[test]
fn noprovision_other_stages_are_the_defaults() {
    let rd = setup();
    rd.write(
        "testflinger.json",
        r#"{"job_id":"j-np","test_data":{"test_cmds":["echo from-tests"]}}"#,
    );
    assert_eq!(rd.stage("noprovision", "allocate").code, 0);
    assert_eq!(rd.stage("noprovision", "cleanup").code, 0);
    let run = rd.stage("noprovision", "runtest");
    assert_eq!(run.code, 0);
    assert!(run.stdout.contains("from-tests"));
    let run = rd.stage("noprovision", "firmware_update");
    assert_eq!(run.code, 1);
    assert!(
        run.stderr
            .contains("not supported by provision type noprovision yet")
    );
}
