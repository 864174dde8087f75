//! Lab file pinning through the CLI: add, list, verify, update, diff,
//! rollback, remove, digest checks before execution, URL sources through
//! the content-addressed store, deny-by-default grants.

use std::path::{Path, PathBuf};

use labsim::web::{Reply, WebServer};

use crate::common::RunDir;

fn fake_setup() -> RunDir {
    let rd = RunDir::new();
    rd.write(
        "default.yaml",
        "agent_name: pin-agent\ndevice_ip: 192.0.2.20\n",
    );
    rd.write(
        "testflinger.json",
        r#"{"job_id":"j-pin","provision_data":{"x":1}}"#,
    );
    rd
}

/// A copy of the embedded fake_connector, as an operator would download it.
fn fake_connector_file(rd: &RunDir) -> PathBuf {
    let path = rd.path().join("fake_connector-0.1.0.wasm");
    // The first-party connectors are built next to the fixtures.
    let dir = labsim::fixtures::path("fixture_caps_v2")
        .parent()
        .unwrap()
        .to_path_buf();
    std::fs::copy(dir.join("fake_connector.wasm"), &path).unwrap();
    path
}

fn lab_args<'a>(lab: &'a str, rest: &[&'a str]) -> Vec<&'a str> {
    let mut v = vec!["lab", "--lab", lab];
    v.extend_from_slice(rest);
    v
}

fn stage_with_lab(rd: &RunDir, lab: &Path, t: &str, stage: &str) -> crate::common::Run {
    rd.run(&[
        "--lab",
        lab.to_str().unwrap(),
        t,
        stage,
        "-c",
        "default.yaml",
        "testflinger.json",
    ])
}

#[test]
fn add_list_verify_and_run_a_pinned_connector() {
    let rd = fake_setup();
    let wasm = fake_connector_file(&rd);
    let lab = rd.path().join("lab/lab.yaml");
    let lab_s = lab.to_str().unwrap();
    let run = rd.run(&lab_args(
        lab_s,
        &["add", "fake_connector", wasm.to_str().unwrap()],
    ));
    assert_eq!(run.code, 0);
    assert!(
        run.stdout
            .contains("pinned fake_connector -> fake_connector 0.1.0 (sha256:"),
        "{}",
        run.stdout
    );
    let text = rd.read("lab/lab.yaml");
    assert!(
        text.contains("version: 1")
            && text.contains("sha256: sha256:")
            && text.contains("wit: 0.2.0")
    );
    // The component was copied into the content-addressed store.
    let digest = text
        .lines()
        .find_map(|l| l.trim().strip_prefix("sha256: sha256:"))
        .unwrap()
        .to_string();
    assert!(rd.path().join("lab/store/sha256").join(&digest).is_file());

    let run = rd.run(&lab_args(lab_s, &["list"]));
    assert!(
        run.stdout
            .lines()
            .any(|l| l.starts_with("fake_connector") && l.contains("lab file")),
        "{}",
        run.stdout
    );
    assert!(
        run.stdout
            .lines()
            .any(|l| l.starts_with("noprovision") && l.ends_with("embedded")),
        "{}",
        run.stdout
    );
    let run = rd.run(&lab_args(lab_s, &["verify"]));
    assert_eq!(run.code, 0);
    assert!(run.stdout.contains("ok     fake_connector"));

    let run = stage_with_lab(&rd, &lab, "fake_connector", "provision");
    assert_eq!(run.code, 0);
    assert!(run.stdout.contains("provision_data"));

    // Adding twice is refused with a pointer to update.
    let run = rd.run(&lab_args(
        lab_s,
        &["add", "fake_connector", wasm.to_str().unwrap()],
    ));
    assert_eq!(run.code, 1);
    assert!(run.stderr.contains("already pinned") && run.stderr.contains("lab update"));
}

#[test]
fn a_changed_component_is_refused_before_it_runs() {
    let rd = fake_setup();
    let wasm = fake_connector_file(&rd);
    let lab = rd.path().join("lab.yaml");
    let lab_s = lab.to_str().unwrap();
    assert_eq!(
        rd.run(&lab_args(
            lab_s,
            &["add", "fake_connector", wasm.to_str().unwrap()]
        ))
        .code,
        0
    );
    // Someone replaces the file with another component.
    std::fs::copy(labsim::fixtures::path("fixture_caps_v2"), &wasm).unwrap();
    let run = stage_with_lab(&rd, &lab, "fake_connector", "provision");
    assert_eq!(run.code, 1);
    let msg =
        rd.json("device-connector-error.json")["provision_exception_info"]["exception_message"]
            .as_str()
            .unwrap()
            .to_string();
    assert!(
        msg.contains("expected sha256:") && msg.contains(", got sha256:"),
        "{msg}"
    );
    assert!(
        msg.contains(&format!("{lab_s}:")),
        "names the lab file line: {msg}"
    );
    assert!(
        !run.stdout.contains("fixture_caps_v2"),
        "the replaced component must not run"
    );
    let run = rd.run(&lab_args(lab_s, &["verify"]));
    assert_eq!(run.code, 1);
    assert!(
        run.stderr.contains("DRIFT  fake_connector"),
        "{}",
        run.stderr
    );
}

#[test]
fn update_shows_new_capabilities_and_rollback_restores() {
    let rd = fake_setup();
    let v1 = fake_connector_file(&rd);
    let v2 = labsim::fixtures::path("fixture_caps_v2");
    let lab = rd.path().join("lab.yaml");
    let lab_s = lab.to_str().unwrap();
    assert_eq!(
        rd.run(&lab_args(
            lab_s,
            &["add", "fake_connector", v1.to_str().unwrap()]
        ))
        .code,
        0
    );

    let run = rd.run(&lab_args(
        lab_s,
        &["diff", "fake_connector", v2.to_str().unwrap()],
    ));
    assert_eq!(run.code, 0);
    assert!(
        run.stdout.contains("+ ssh: device") && run.stdout.contains("NEW"),
        "{}",
        run.stdout
    );

    let run = rd.run(&lab_args(
        lab_s,
        &["update", "fake_connector", v2.to_str().unwrap()],
    ));
    assert_eq!(run.code, 0);
    assert!(run.stdout.contains("+ ssh: device"));
    assert!(run.stdout.contains("NOT granted"), "{}", run.stdout);
    let text = rd.read("lab.yaml");
    assert!(text.contains("version: 0.2.0") && text.contains("previous:"));
    let grants = text.split("previous:").next().unwrap();
    assert!(
        !grants.contains("ssh:"),
        "new capability granted without consent:\n{text}"
    );
    let run = stage_with_lab(&rd, &lab, "fake_connector", "provision");
    assert_eq!(run.code, 0);
    assert!(run.stdout.contains("fixture_caps_v2 0.2.0 ran"));

    let run = rd.run(&lab_args(lab_s, &["rollback", "fake_connector"]));
    assert_eq!(run.code, 0, "{}", run.stderr);
    let run = stage_with_lab(&rd, &lab, "fake_connector", "provision");
    assert_eq!(run.code, 0);
    assert!(run.stdout.contains("provision_data") && !run.stdout.contains("0.2.0 ran"));

    // And forward again, this time granting the new capability.
    let run = rd.run(&lab_args(
        lab_s,
        &[
            "update",
            "fake_connector",
            v2.to_str().unwrap(),
            "--grant-new",
        ],
    ));
    assert_eq!(run.code, 0);
    let text = rd.read("lab.yaml");
    assert!(
        text.split("previous:").next().unwrap().contains("ssh:"),
        "{text}"
    );

    let run = rd.run(&lab_args(lab_s, &["remove", "fake_connector"]));
    assert_eq!(run.code, 0);
    assert!(run.stdout.contains("embedded connector serves it again"));
}

#[test]
fn url_sources_go_through_the_store() {
    let rd = fake_setup();
    let v1 = std::fs::read(fake_connector_file(&rd)).unwrap();
    let served = std::sync::Arc::new(std::sync::Mutex::new(v1.clone()));
    let s2 = served.clone();
    let server = WebServer::start("127.0.0.1", move |r| {
        if r.path_only() == "/fake_connector.wasm" {
            Reply::bytes(s2.lock().unwrap().clone())
        } else {
            Reply::status(404)
        }
    })
    .unwrap();
    let url = format!("{}/fake_connector.wasm", server.url());
    let lab = rd.path().join("lab.yaml");
    let lab_s = lab.to_str().unwrap();
    assert_eq!(
        rd.run(&lab_args(lab_s, &["add", "fake_connector", &url]))
            .code,
        0
    );
    let text = rd.read("lab.yaml");
    assert!(text.contains(&format!("source: {url}")));
    let store = rd.path().join("store/sha256");
    let stored: Vec<_> = std::fs::read_dir(&store).unwrap().collect();
    assert_eq!(stored.len(), 1);

    // Runs from the store without touching the network.
    let before = server.requests().len();
    assert_eq!(
        stage_with_lab(&rd, &lab, "fake_connector", "provision").code,
        0
    );
    assert_eq!(server.requests().len(), before);

    // An emptied store is refilled from the source, verified.
    std::fs::remove_dir_all(&store).unwrap();
    assert_eq!(
        stage_with_lab(&rd, &lab, "fake_connector", "provision").code,
        0
    );
    assert_eq!(server.requests().len(), before + 1);

    // If the server now serves something else, nothing runs.
    std::fs::remove_dir_all(&store).unwrap();
    *served.lock().unwrap() = std::fs::read(labsim::fixtures::path("fixture_caps_v2")).unwrap();
    let run = stage_with_lab(&rd, &lab, "fake_connector", "provision");
    assert_eq!(run.code, 1);
    assert!(run.stderr.contains("expected sha256:"), "{}", run.stderr);
    assert!(
        !store.exists() || std::fs::read_dir(&store).unwrap().count() == 0,
        "a mismatching download must not land in the store"
    );
}

#[test]
fn nothing_granted_means_nothing_reachable() {
    let rd = fake_setup();
    // A control host makes fake_connector's pre-provision hook ask for
    // power and http; with --no-grants both are denied.
    rd.write(
        "default.yaml",
        "agent_name: pin-agent\ndevice_ip: 192.0.2.20\ncontrol_host: 127.0.0.1\ncontrol_host_reboot_script: ['true']\n",
    );
    let lab = rd.path().join("lab.yaml");
    let lab_s = lab.to_str().unwrap();
    assert_eq!(
        rd.run(&lab_args(
            lab_s,
            &["add", "fake_connector", "embedded", "--no-grants"]
        ))
        .code,
        0
    );
    let run = stage_with_lab(&rd, &lab, "fake_connector", "provision");
    assert_eq!(run.code, 1);
    let msg =
        rd.json("device-connector-error.json")["provision_exception_info"]["exception_message"]
            .as_str()
            .unwrap()
            .to_string();
    assert!(
        msg.contains("is not granted to connector fake_connector"),
        "{msg}"
    );
    assert!(
        msg.contains(lab_s) && msg.contains("connectors.fake_connector"),
        "{msg}"
    );
    assert!(
        run.stderr.contains("WARNING: DEVICE CONNECTOR: audit")
            && run.stderr.contains("result=denied"),
        "{}",
        run.stderr
    );
}

#[test]
fn lab_file_problems_are_exit_1_with_the_reason() {
    let rd = fake_setup();
    let lab = rd.write("lab.yaml", "version: 7\nconnectors: {}\n");
    let run = stage_with_lab(&rd, &lab, "fake_connector", "provision");
    assert_eq!(run.code, 1);
    assert!(
        run.stderr.contains("version 7 is not supported"),
        "{}",
        run.stderr
    );
    assert_eq!(
        rd.json("device-connector-error.json")["provision_exception_info"]["exception_name"],
        "LabFileError"
    );

    rd.write(
        "lab.yaml",
        "version: 1\nallow_embedded: false\nconnectors: {}\n",
    );
    let run = stage_with_lab(&rd, &lab, "fake_connector", "provision");
    assert_eq!(run.code, 1);
    assert!(
        run.stderr.contains("not pinned in lab file"),
        "{}",
        run.stderr
    );

    let run = rd.run(&[
        "--lab",
        rd.path().join("missing.yaml").to_str().unwrap(),
        "fake_connector",
        "provision",
        "-c",
        "default.yaml",
        "testflinger.json",
    ]);
    assert_eq!(run.code, 1);
    assert!(
        run.stderr.contains("cannot read lab file"),
        "{}",
        run.stderr
    );
}

#[test]
fn components_from_another_wit_line_or_without_manifest_are_refused() {
    let rd = fake_setup();
    let run = rd.run(&[
        "--connector",
        labsim::fixtures::path("fixture_no_manifest")
            .to_str()
            .unwrap(),
        "fake_connector",
        "provision",
        "-c",
        "default.yaml",
        "testflinger.json",
    ]);
    assert_eq!(run.code, 1);
    assert!(
        run.stderr
            .contains("has no `testflinger:connector-manifest` section"),
        "{}",
        run.stderr
    );
}

/// Without configuration, the audit trail goes to the default JSON-lines
/// file under the XDG state directory, and allowed calls stay off the agent
/// log at INFO.
#[test]
fn audit_defaults_to_the_state_file_and_stays_off_the_agent_log() {
    let rd = fake_setup();
    let out = rd
        .command(&[
            "fake_connector",
            "provision",
            "-c",
            "default.yaml",
            "testflinger.json",
        ])
        .env_remove("XDG_STATE_HOME")
        .env_remove("TFDC_AUDIT_LOG")
        .output()
        .unwrap();
    let run = crate::common::finish(out);
    assert_eq!(run.code, 0, "{}", run.stderr);
    let file = rd
        .home()
        .join(".local/state/testflinger-device-connectors/audit.jsonl");
    // fake_connector's provision may make no host call; the file must
    // still be opened at the default place (its lines are checked by the
    // hostile suite through the same writer).
    assert!(
        file.is_file(),
        "no default audit file at {}",
        file.display()
    );
    for l in std::fs::read_to_string(&file).unwrap().lines() {
        let v: serde_json::Value = serde_json::from_str(l).unwrap();
        assert!(v["call"].is_string(), "{l}");
    }
    assert!(
        !run.stderr.contains("INFO: DEVICE CONNECTOR: audit"),
        "{}",
        run.stderr
    );
}
