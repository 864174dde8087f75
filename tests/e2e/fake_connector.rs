//! `fake_connector`: every stage through the CLI.

use crate::common::RunDir;

fn setup() -> RunDir {
    let rd = RunDir::new();
    rd.write(
        "default.yaml",
        "agent_name: fake-agent\ndevice_ip: 192.0.2.10\n",
    );
    rd.write(
        "testflinger.json",
        r#"{"job_id":"j-1","provision_data":{"url":"http://images.example/u.img.xz","zeta":1,"alpha":[1,2]}}"#,
    );
    rd
}

#[test]
fn provision_prints_the_provision_data_and_writes_device_info() {
    let rd = setup();
    let run = rd.stage("fake_connector", "provision");
    assert_eq!(run.code, 0);
    assert!(run.stdout.contains(&"*".repeat(40)));
    assert!(
        run.stdout
            .contains("\"url\": \"http://images.example/u.img.xz\"")
    );
    // The submitter's key order is kept.
    assert!(run.stdout.find("\"zeta\"").unwrap() < run.stdout.find("\"alpha\"").unwrap());
    assert!(
        run.stderr
            .contains(" fake-agent INFO: DEVICE CONNECTOR: BEGIN provision"),
        "{}",
        run.stderr
    );
    assert!(run.stderr.contains("END provision"));
    assert_eq!(
        rd.json("device-info.json"),
        serde_json::json!({"device_info": {"device_ip": "192.0.2.10", "agent_name": "fake-agent"}})
    );
}

#[test]
fn firmware_update_is_not_supported_yet() {
    let rd = setup();
    let run = rd.stage("fake_connector", "firmware_update");
    assert_eq!(run.code, 1);
    let err = rd.json("device-connector-error.json");
    assert_eq!(
        err["firmware_update_exception_info"]["exception_name"],
        "FirmwareUpdateError"
    );
    assert!(
        err["firmware_update_exception_info"]["exception_message"]
            .as_str()
            .unwrap()
            .contains("not supported by provision type fake_connector yet")
    );
}

#[test]
fn allocate_and_cleanup_succeed() {
    let rd = setup();
    for stage in ["allocate", "cleanup"] {
        std::fs::remove_file(rd.path().join("device-info.json")).ok();
        let run = rd.stage("fake_connector", stage);
        assert_eq!(run.code, 0, "{stage}");
        assert!(rd.exists("device-info.json"), "{stage}");
        assert!(!rd.exists("device-connector-error.json"), "{stage}");
    }
}
