//! API compatibility: the committed component built against the first
//! released WIT version (`tests/compat/kitchen_sink_v0_1_0.wasm`) must run
//! on this runtime forever. Every stage exercises another part of the 0.1.0
//! API against the simulated lab, and linking it checks every function
//! 0.1.0 declared.

use std::time::Duration;

use labsim::dut::Dut;
use labsim::serial::SerialServer;
use labsim::web::{Reply, WebServer};

use crate::common::RunDir;

const IP: &str = "127.0.0.2";
const IMAGE: &[u8] = b"not really an image, but bytes to move\n";

struct Lab {
    dut: Dut,
    serial: SerialServer,
    web: WebServer,
    rd: RunDir,
}

fn lab() -> Lab {
    let dut = Dut::start(IP).unwrap();
    let serial = SerialServer::start("127.0.0.1").unwrap();
    let web = WebServer::start("127.0.0.1", |r| match r.path_only() {
        "/image.bin" => Reply::bytes(IMAGE),
        "/health" => Reply::text("ok"),
        _ => Reply::status(404),
    })
    .unwrap();
    let rd = RunDir::new();
    dut.configure_client(&rd.home()).unwrap();
    rd.write(
        "default.yaml",
        &format!(
            "agent_name: compat-agent\ndevice_ip: {ip}\nserial_host: {sh}\nserial_port: {sp}\ncontrol_host: 127.0.0.1\nreboot_script: ['true']\nconnector_runtime: {{poll_interval_seconds: 0.2, control_host_url: '{url}'}}\n",
            ip = dut.ip(),
            sh = serial.host(),
            sp = serial.port(),
            url = web.url(),
        ),
    );
    rd.write(
        "testflinger.json",
        &format!(
            r#"{{"job_id":"j-compat","provision_data":{{"url":"{}/image.bin"}}}}"#,
            web.url()
        ),
    );
    rd.write("attachments/provision/seed.txt", "seed file\n");
    Lab {
        dut,
        serial,
        web,
        rd,
    }
}

fn stage(lab: &Lab, stage: &str) -> crate::common::Run {
    let wasm = labsim::fixtures::compat("kitchen_sink_v0_1_0.wasm");
    lab.rd.run(&[
        "--connector",
        wasm.to_str().unwrap(),
        "fake_connector",
        stage,
        "-c",
        "default.yaml",
        "testflinger.json",
    ])
}

#[test]
fn provision_uses_log_job_power_and_ssh() {
    let lab = lab();
    let run = stage(&lab, "provision");
    assert_eq!(run.code, 0, "{}", run.stderr);
    for line in [
        "compat: stage is provision: true",
        "compat: job id j-compat",
        "compat: device_ip 127.0.0.2",
        "compat: attachments seed.txt",
        "compat: first attachment has 10 bytes",
        "compat: exec status 0 stdout compat-42",
        "compat: downloaded round trip",
        "compat: artifact 11 bytes",
    ] {
        assert!(
            run.stdout.contains(line),
            "missing `{line}` in:\n{}",
            run.stdout
        );
    }
    for level in [
        "WARNING: DEVICE CONNECTOR: compat: a warning",
        "ERROR: DEVICE CONNECTOR: compat: an error line",
    ] {
        assert!(run.stderr.contains(level), "{}", run.stderr);
    }
    assert!(
        !run.stderr.contains("compat: debug line"),
        "DEBUG lines are dropped by default"
    );
    assert_eq!(
        lab.rd.json("device-info.json")["device_info"]["compat"]["wit"],
        "0.1.0"
    );
    assert_eq!(
        lab.rd.read("artifacts/compat/provision.txt"),
        "written by the 0.1.0 fixture\n"
    );
    assert_eq!(
        lab.rd.read("artifacts/compat/from-device.txt"),
        "round trip\n"
    );
    assert!(
        lab.dut
            .command_lines()
            .iter()
            .any(|c| c == "echo compat-$((6*7))")
    );
}

#[test]
fn runtest_uses_serial_and_returns_the_status() {
    let lab = lab();
    lab.serial
        .respond("\n", "Ubuntu 24.04 LTS dut ttyS0\n\ndut login: ");
    let run = stage(&lab, "runtest");
    assert_eq!(run.code, 7, "{}", run.stderr);
    assert!(
        run.stdout.contains("compat: serial saw login:"),
        "{}",
        run.stdout
    );
    assert!(lab.serial.wait_received(b"\n", Duration::from_secs(5)));
    assert!(lab.rd.read("test-serial.log").contains("dut login:"));
}

#[test]
fn allocate_moves_bytes_with_transfer() {
    let lab = lab();
    let run = stage(&lab, "allocate");
    assert_eq!(run.code, 0, "{}", run.stderr);
    assert_eq!(
        std::fs::read(lab.rd.path().join("artifacts/compat/image.bin")).unwrap(),
        IMAGE
    );
    assert!(
        run.stdout.contains(&format!(
            "compat: to-artifact {} bytes sha256:",
            IMAGE.len()
        )),
        "{}",
        run.stdout
    );
    assert_eq!(
        std::fs::read_to_string(lab.dut.home().join("compat-stream.bin")).unwrap(),
        "seed file\n"
    );
    assert!(
        run.stdout.contains("compat: to-ssh 10 bytes sha256:"),
        "{}",
        run.stdout
    );
}

#[test]
fn reserve_uses_http_fetch_and_call() {
    let lab = lab();
    let run = stage(&lab, "reserve");
    assert_eq!(run.code, 0, "{}", run.stderr);
    assert!(
        run.stdout
            .contains(&format!("compat: fetch status 200 {} bytes", IMAGE.len())),
        "{}",
        run.stdout
    );
    assert!(
        run.stdout.contains("compat: control host health 200"),
        "{}",
        run.stdout
    );
    let paths: Vec<String> = lab.web.requests().iter().map(|r| r.path.clone()).collect();
    assert_eq!(paths, ["/image.bin", "/health"]);
}

#[test]
fn cleanup_and_firmware_update() {
    let lab = lab();
    let run = stage(&lab, "cleanup");
    assert_eq!(run.code, 0, "{}", run.stderr);
    assert!(run.stdout.contains("compat: cleanup done"));
    let run = stage(&lab, "firmware_update");
    assert_eq!(run.code, 46);
    assert_eq!(
        lab.rd.json("device-connector-error.json")["firmware_update_exception_info"]["exception_name"],
        "RecoveryError"
    );
}
