//! `maas2` (reference §4.5) against the simulated MAAS region API and a
//! simulated machine: the exact API calls that reached MAAS, in order, the
//! commands that reached the device, exit codes and messages.
//!
//! Waits are scaled down through the connector's own settings
//! (`maas_retry_base_seconds`, `maas_deploy_poll_seconds`,
//! `maas_release_poll_seconds`, fractional `timeout_min`). Status reads
//! repeat as often as the timing makes them, so call lists are compared
//! with consecutive duplicates collapsed.

use std::time::{Duration, Instant};

use labsim::dut::{Dut, Rule};
use labsim::maas::{BlockDevice, DeployOutcome, Filesystem, MaasBuilder, MaasSim, ReleaseOutcome};
use labsim::serial::SerialServer;

use crate::common::{Run, RunDir};

/// The simulated machine's address.
const IP: &str = "127.0.0.2";
const NODE: &str = "abc123";
const SECRET: &str = "s3cr3tTokenValue";

struct Lab {
    dut: Dut,
    maas: MaasSim,
    rd: RunDir,
}

/// A deployed machine that MAAS knows at the device's address, with fast
/// timings; `extra` is appended to default.yaml and `job` is the job.
fn start_lab(maas: MaasBuilder, extra: &str, job: &str) -> Lab {
    let dut = Dut::builder(IP)
        .boot_time(Duration::from_millis(100))
        .start()
        .unwrap();
    let maas = maas
        .ip_addresses(&[&dut.ip()])
        .bmc(dut.control_addr())
        .api_key("consumerKey", "tokenKey", SECRET)
        .start("127.0.0.1")
        .unwrap();
    let rd = RunDir::new();
    dut.configure_client(&rd.home()).unwrap();
    write_config(&rd, &maas, &dut.ip(), &maas.api_key(), extra);
    rd.write("testflinger.json", job);
    Lab { dut, maas, rd }
}

fn write_config(rd: &RunDir, maas: &MaasSim, ip: &str, key: &str, extra: &str) {
    rd.write(
        "default.yaml",
        &format!(
            "agent_name: maas-agent\n\
             device_ip: {ip}\n\
             node_id: {NODE}\n\
             maas_url: {}\n\
             maas_api_key: {key}\n\
             timeout_min: 0.5\n\
             maas_retry_base_seconds: 0.05\n\
             maas_deploy_poll_seconds: 0.1\n\
             maas_release_poll_seconds: 0.05\n\
             connector_runtime: {{poll_interval_seconds: 0.2}}\n\
             {extra}",
            maas.url()
        ),
    );
}

fn deployed() -> MaasBuilder {
    MaasSim::builder(NODE)
        .status("Deployed")
        .deploy_time(Duration::from_millis(300))
        .release_time(Duration::from_millis(100))
}

/// The calls MAAS received, consecutive duplicates (status polls) collapsed.
fn calls(maas: &MaasSim) -> Vec<String> {
    let mut lines = maas.lines();
    lines.dedup();
    lines
}

fn error_message(rd: &RunDir, stage: &str) -> (String, String) {
    let err = rd.json("device-connector-error.json");
    let info = &err[format!("{stage}_exception_info")];
    (
        info["exception_name"].as_str().unwrap_or("").to_string(),
        info["exception_message"].as_str().unwrap_or("").to_string(),
    )
}

/// `exception_cause` of the stage's error, if any.
fn error_cause(rd: &RunDir, stage: &str) -> Option<String> {
    let err = rd.json("device-connector-error.json");
    err[format!("{stage}_exception_info")]["exception_cause"]
        .as_str()
        .map(str::to_string)
}

/// Nothing the CLI printed or left in the run directory holds the key.
fn assert_secret_absent(lab: &Lab, run: &Run) {
    assert!(!run.stdout.contains(SECRET) && !run.stderr.contains(SECRET));
    for entry in std::fs::read_dir(lab.rd.path()).unwrap() {
        let path = entry.unwrap().path();
        if path.is_file() && path.file_name().unwrap() != "default.yaml" {
            let text = String::from_utf8_lossy(&std::fs::read(&path).unwrap()).into_owned();
            assert!(!text.contains(SECRET), "{} holds the key", path.display());
        }
    }
}

fn b64(bytes: &[u8]) -> String {
    const A: &[u8] = b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789+/";
    let mut out = String::new();
    for c in bytes.chunks(3) {
        let n = (u32::from(c[0]) << 16)
            | (u32::from(*c.get(1).unwrap_or(&0)) << 8)
            | u32::from(*c.get(2).unwrap_or(&0));
        for i in 0..4 {
            out.push(if i <= c.len() {
                A[(n >> (18 - 6 * i) & 63) as usize] as char
            } else {
                '='
            });
        }
    }
    out
}

const JOB: &str = r#"{"job_id":"maas-1","provision_data":{"distro":"jammy"}}"#;

#[test]
fn deploys_with_the_flat_layout_and_checks_the_boot() {
    let lab = start_lab(deployed(), "", JOB);
    let started = Instant::now();
    let run = lab.rd.stage("maas2", "provision");
    let wall = started.elapsed();
    eprintln!(
        "maas2 provision wall time on the simulator: {} ms",
        wall.as_millis()
    );
    assert_eq!(run.code, 0);
    assert_eq!(
        calls(&lab.maas),
        [
            "GET nodes/abc123/blockdevices/",
            "POST machines/abc123/?op=release",
            "GET machines/abc123/",
            "POST machines/abc123/?op=set_storage_layout storage_layout=flat",
            "POST machines/?op=allocate system_id=abc123",
            "GET nodes/abc123/results/?type=installation",
            "POST machines/abc123/?op=deploy distro_series=jammy",
            "GET machines/abc123/",
        ]
    );
    // Every call was signed correctly (the simulator answers 401 otherwise).
    assert!(lab.maas.calls().iter().all(|c| c.status == 200));
    assert_eq!(lab.maas.status(), "Deployed");
    // The boot check is the reference's `ubuntu@device_ip /bin/true`.
    let commands = lab.dut.commands();
    assert!(!commands.is_empty());
    assert!(
        commands
            .iter()
            .all(|c| c.command == "/bin/true" && c.user == "ubuntu"),
        "{commands:?}"
    );
    assert_eq!(lab.dut.power_events(), ["off", "on"]);
    for line in [
        "INFO: DEVICE CONNECTOR: BEGIN provision",
        "MAAS: Releasing node maas-agent",
        "MAAS: Waiting up to 30 s for the deployment (until ",
        "MAAS: Node is Deploying",
        "MAAS: Node is Deployed",
        "MAAS: Deployed and booted.",
        "INFO: DEVICE CONNECTOR: END provision",
    ] {
        assert!(run.stderr.contains(line), "missing {line:?}");
    }
    assert!(!lab.rd.exists("device-connector-error.json"));
    assert_secret_absent(&lab, &run);
}

#[test]
fn every_option_reaches_maas() {
    let devices = vec![
        BlockDevice::physical(1, "sda", 100_000_000_000).with_partition(
            11,
            99_000_000_000,
            Some(Filesystem::mounted("ext4", "/")),
        ),
        BlockDevice::virtual_device(2, "bcache0", 900_000_000_000).with_partition(21, 1000, None),
        BlockDevice::physical(3, "sdb", 500_000_000_000)
            .with_filesystem(Filesystem::mounted("ext4", "/srv")),
    ];
    let user_data =
        "#cloud-config\npackages: [htop, tmux, jq]\nruncmd: [echo provisioned by testflinger]\n";
    let job = serde_json::json!({
        "job_id": "maas-2",
        "debug": true,
        "provision_data": {
            "distro": "noble",
            "kernel": "ga-24.04",
            "user_data": user_data,
            "ephemeral": true,
            "disks": [
                {"id": "disk0", "disk": 0, "type": "disk", "ptable": "gpt"},
                {"id": "disk0-part1", "device": "disk0", "type": "partition", "number": 1, "size": "2G", "alloc_pct": 80},
                {"id": "disk0-part1-format", "type": "format", "volume": "disk0-part1", "fstype": "ext4", "label": "root"},
                {"id": "disk0-part1-mount", "device": "disk0-part1-format", "path": "/", "type": "mount"},
                {"id": "disk1", "disk": 1, "type": "disk", "ptable": "gpt", "name": "bootdisk"},
                {"id": "disk1-part1", "device": "disk1", "type": "partition", "size": "500M", "alloc_pct": 10},
                {"id": "disk1-part1-format", "type": "format", "volume": "disk1-part1", "fstype": "fat32", "label": "efi"},
                {"id": "disk1-part1-mount", "device": "disk1-part1-format", "path": "/boot/efi", "type": "mount"},
                {"id": "disk1-part2", "device": "disk1", "type": "partition", "size": "200G"},
                {"id": "disk1-part2-format", "volume": "disk1-part2", "type": "format", "fstype": "xfs"},
                {"id": "disk1-part2-mount", "device": "disk1-part2-format", "path": "/data", "type": "mount"},
            ]
        }
    });
    let lab = start_lab(deployed().block_devices(devices), "", &job.to_string());
    let run = lab.rd.stage("maas2", "provision");
    assert_eq!(run.code, 0);
    let deploy = format!(
        "POST machines/abc123/?op=deploy distro_series=noble hwe_kernel=ga-24.04 user_data={} ephemeral_deploy=true",
        b64(user_data.as_bytes())
    );
    assert_eq!(
        calls(&lab.maas),
        [
            "GET nodes/abc123/blockdevices/",
            "POST machines/abc123/?op=release",
            "GET machines/abc123/",
            "GET nodes/abc123/blockdevices/",
            // Clear: partitions of physical devices, then the whole-disk
            // file system (the virtual device is left alone).
            "DELETE nodes/abc123/blockdevices/1/partition/11",
            "POST nodes/abc123/blockdevices/3/?op=unmount",
            "POST nodes/abc123/blockdevices/3/?op=unformat",
            // disk -> partition -> format -> mount.
            "POST nodes/abc123/blockdevices/3/?op=set_boot_disk",
            "PUT nodes/abc123/blockdevices/3/ name=bootdisk",
            "POST nodes/abc123/blockdevices/1/partitions/ size=80000000000",
            "POST nodes/abc123/blockdevices/3/partitions/ size=50000000000",
            "POST nodes/abc123/blockdevices/3/partitions/ size=200000000000",
            "POST nodes/abc123/blockdevices/1/partition/1001?op=format fstype=ext4 label=root",
            "POST nodes/abc123/blockdevices/3/partition/1002?op=format fstype=fat32 label=efi",
            "POST nodes/abc123/blockdevices/3/partition/1003?op=format fstype=xfs",
            "POST nodes/abc123/blockdevices/1/partition/1001?op=mount mount_point=/",
            "POST nodes/abc123/blockdevices/3/partition/1002?op=mount mount_point=/boot/efi",
            "POST nodes/abc123/blockdevices/3/partition/1003?op=mount mount_point=/data",
            "POST machines/?op=allocate system_id=abc123",
            "GET nodes/abc123/results/?type=installation",
            "GET version/",
            &deploy,
            "GET machines/abc123/",
        ]
    );
    let sdb = &lab.maas.block_devices()[2];
    assert!(sdb.boot && sdb.name == "bootdisk" && sdb.filesystem.is_none());
    assert_eq!(
        sdb.partitions[0].filesystem,
        Some(Filesystem {
            fstype: "fat32".into(),
            label: Some("efi".into()),
            mount_point: Some("/boot/efi".into())
        })
    );
    // debug: MAAS's answers are logged.
    assert!(
        run.stderr.contains("MAAS: GET version/ -> HTTP 200: {"),
        "{}",
        run.stderr
    );
    assert!(run.stderr.contains("MAAS: Deployment set to ephemeral"));
    assert!(
        run.stderr.contains("user_data=<"),
        "user data is summarised in logs"
    );
}

#[test]
fn base64_user_data_is_not_encoded_twice_and_old_maas_is_not_ephemeral() {
    let encoded = b64(b"#cloud-config\nruncmd: [reboot]\n");
    let job = serde_json::json!({"job_id": "maas-3", "provision_data": {"user_data": encoded, "ephemeral": true}});
    let lab = start_lab(deployed().version("3.4.2"), "", &job.to_string());
    let run = lab.rd.stage("maas2", "provision");
    assert_eq!(run.code, 0);
    let lines = calls(&lab.maas);
    assert!(
        lines.contains(&format!(
            "POST machines/abc123/?op=deploy distro_series=jammy user_data={encoded}"
        )),
        "{lines:?}"
    );
    assert!(
        run.stderr.contains("MAAS 3.4.2 cannot deploy to RAM"),
        "{}",
        run.stderr
    );
}

#[test]
fn an_invalid_layout_fails_before_any_maas_change() {
    let job = serde_json::json!({"job_id": "maas-4", "provision_data": {"disks": [
        {"id": "d0", "type": "disk"},
        {"id": "p1", "type": "partition", "device": "d0", "alloc_pct": 60},
        {"id": "p2", "type": "partition", "device": "d0", "alloc_pct": 50},
    ]}});
    let lab = start_lab(deployed(), "", &job.to_string());
    let run = lab.rd.stage("maas2", "provision");
    assert_eq!(run.code, 1);
    let (name, message) = error_message(&lab.rd, "provision");
    // The reference's class for storage-layout errors.
    assert_eq!(name, "MaasStorageError");
    assert!(
        message.contains("provision_data.disks: entry 3 (id `p2`, type partition)"),
        "{message}"
    );
    assert!(message.contains("exceeds 100"), "{message}");
    assert!(
        lab.maas.lines().is_empty(),
        "MAAS was called: {:?}",
        lab.maas.lines()
    );

    // A layout that needs the block devices to be judged: only read.
    let job = serde_json::json!({"job_id": "maas-5", "provision_data": {"disks": [
        {"id": "d0", "type": "disk"},
        {"id": "p1", "type": "partition", "device": "d0", "size": "2T"},
    ]}});
    lab.rd.write("testflinger.json", &job.to_string());
    std::fs::remove_file(lab.rd.path().join("device-connector-error.json")).unwrap();
    let run = lab.rd.stage("maas2", "provision");
    assert_eq!(run.code, 1);
    let (name, message) = error_message(&lab.rd, "provision");
    assert_eq!(name, "MaasStorageError");
    assert!(message.contains("entry 1 (id `d0`, type disk): no free physical block device of at least 2000000000000 bytes"), "{message}");
    assert_eq!(lab.maas.lines(), ["GET nodes/abc123/blockdevices/"]);
    assert_eq!(lab.maas.status(), "Deployed");
    assert!(lab.dut.commands().is_empty());
}

#[test]
fn default_disks_are_resolved_without_precomputed_ids() {
    let extra = "default_disks:\n\
                 \x20 - {id: root-disk, type: disk}\n\
                 \x20 - {id: root-part, type: partition, device: root-disk, alloc_pct: 100}\n\
                 \x20 - {id: root-fs, type: format, volume: root-part, fstype: ext4, label: root}\n\
                 \x20 - {id: root-mount, type: mount, device: root-fs, path: /}\n";
    let lab = start_lab(deployed(), extra, JOB);
    let run = lab.rd.stage("maas2", "provision");
    assert_eq!(run.code, 0);
    let lines = calls(&lab.maas);
    let storage: Vec<&str> = lines
        .iter()
        .map(String::as_str)
        .filter(|l| l.contains("blockdevices/1/"))
        .collect();
    assert_eq!(
        storage,
        [
            "DELETE nodes/abc123/blockdevices/1/partition/11",
            "POST nodes/abc123/blockdevices/1/partitions/ size=500000000000",
            "POST nodes/abc123/blockdevices/1/partition/1001?op=format fstype=ext4 label=root",
            "POST nodes/abc123/blockdevices/1/partition/1001?op=mount mount_point=/",
        ]
    );
    assert!(!lines.iter().any(|l| l.contains("set_storage_layout")));
}

#[test]
fn a_failed_deployment_shows_the_details_and_the_installation_log() {
    let builder = deployed()
        .deploy_outcome(DeployOutcome::Failed)
        .install_log("curtin: ERROR: no disk with serial XYZ found\n");
    let lab = start_lab(builder, "", JOB);
    let run = lab.rd.stage("maas2", "provision");
    assert_eq!(run.code, 1);
    let (name, message) = error_message(&lab.rd, "provision");
    assert_eq!(name, "ProvisioningError");
    assert!(
        message.contains("deployment failure status signal"),
        "{message}"
    );
    assert!(
        message.contains("MAAS says: Installation failed"),
        "{message}"
    );
    assert!(
        run.stderr.contains("MAAS: Installation log (result 8):"),
        "{}",
        run.stderr
    );
    assert!(
        run.stderr
            .contains("curtin: ERROR: no disk with serial XYZ found"),
        "{}",
        run.stderr
    );
    let lines = calls(&lab.maas);
    assert_eq!(
        &lines[lines.len() - 3..],
        [
            "GET machines/abc123/",
            "GET nodes/abc123/results/?type=installation",
            "GET nodes/abc123/results/8/?op=download",
        ]
    );
    assert!(lab.dut.commands().is_empty());
}

#[test]
fn a_wrong_device_ip_is_named() {
    let lab = start_lab(deployed(), "", JOB);
    // MAAS knows the machine at another address than the config says.
    write_config(&lab.rd, &lab.maas, "127.0.0.3", &lab.maas.api_key(), "");
    let run = lab.rd.stage("maas2", "provision");
    assert_eq!(run.code, 1);
    let (_, message) = error_message(&lab.rd, "provision");
    assert!(
        message.contains(
            "Expected device ip 127.0.0.3 was not any of the addresses known to maas: [127.0.0.2]"
        ),
        "{message}"
    );
    assert!(run.stderr.contains("MAAS reports Wrong IP Address"));
    assert!(lab.dut.commands().is_empty());
}

#[test]
fn a_deployment_that_never_ends_times_out() {
    let lab = start_lab(
        deployed().deploy_outcome(DeployOutcome::Never),
        "timeout_min: 0.01\n",
        JOB,
    );
    let started = Instant::now();
    let run = lab.rd.stage("maas2", "provision");
    assert_eq!(run.code, 1);
    assert!(started.elapsed() < Duration::from_secs(20));
    let (_, message) = error_message(&lab.rd, "provision");
    assert_eq!(
        message,
        "Provisioning failed because deployment timeout. Deploying for more than 0.01 minutes."
    );
    assert!(
        run.stderr
            .contains("still in \"Deploying\" state, deployment failed!"),
        "{}",
        run.stderr
    );
    assert!(
        run.stderr
            .contains("Waiting up to 600 ms for the deployment"),
        "{}",
        run.stderr
    );
}

#[test]
fn release_escalation_and_recovery_failure() {
    for (outcome, code, tail) in [
        (
            ReleaseOutcome::AfterMarkFixed,
            0,
            &[
                "POST machines/abc123/?op=mark_broken",
                "POST machines/abc123/?op=mark_fixed",
                "GET machines/abc123/",
            ][..],
        ),
        (
            ReleaseOutcome::AfterPowerOff,
            0,
            &[
                "POST machines/abc123/?op=mark_broken",
                "POST machines/abc123/?op=mark_fixed",
                "GET machines/abc123/",
                "POST machines/abc123/?op=power_off",
                "GET machines/abc123/",
            ][..],
        ),
        (
            ReleaseOutcome::Never,
            46,
            &[
                "POST machines/abc123/?op=mark_broken",
                "POST machines/abc123/?op=mark_fixed",
                "GET machines/abc123/",
                "POST machines/abc123/?op=power_off",
                "GET machines/abc123/",
            ][..],
        ),
    ] {
        let lab = start_lab(deployed().release_outcome(outcome), "", JOB);
        let run = lab.rd.stage("maas2", "cleanup");
        assert_eq!(run.code, code, "{outcome:?}");
        let mut want = vec!["POST machines/abc123/?op=release", "GET machines/abc123/"];
        want.extend_from_slice(tail);
        assert_eq!(calls(&lab.maas), want, "{outcome:?}");
        // 1 + 30 reads after the release, then 1 + 3 per recovery step.
        let reads = lab
            .maas
            .lines()
            .iter()
            .filter(|l| *l == "GET machines/abc123/")
            .count();
        match outcome {
            ReleaseOutcome::Never => {
                assert_eq!(reads, 31 + 4 + 4);
                let (name, message) = error_message(&lab.rd, "cleanup");
                assert_eq!(name, "RecoveryError");
                assert!(message.starts_with("Device recovery failed!"), "{message}");
                assert!(
                    run.stderr
                        .contains("still in \"Releasing\" state, could not recover!")
                );
            }
            _ => assert!(run.stderr.contains("Successfully released node maas-agent")),
        }
    }
}

#[test]
fn maas_errors_are_retried_with_backoff_then_fail_with_every_attempt() {
    let lab = start_lab(deployed(), "", JOB);
    lab.maas.fail_next("POST machines/?op=allocate", 2, 503);
    let run = lab.rd.stage("maas2", "provision");
    assert_eq!(run.code, 0);
    let allocations = lab
        .maas
        .lines()
        .iter()
        .filter(|l| l.contains("op=allocate"))
        .count();
    assert_eq!(allocations, 3);
    assert!(
        run.stderr
            .contains("failed with HTTP 503: simulated failure); trying again in 50 ms"),
        "{}",
        run.stderr
    );
    assert!(
        run.stderr
            .contains("failed with HTTP 503: simulated failure); trying again in 100 ms"),
        "{}",
        run.stderr
    );

    // Four failures in a row: the stage fails (not a recovery problem).
    lab.maas
        .fail_next("POST machines/abc123/?op=release", 4, 500);
    let run = lab.rd.stage("maas2", "cleanup");
    assert_eq!(run.code, 1);
    let (_, message) = error_message(&lab.rd, "cleanup");
    assert!(
        message.starts_with("POST machines/abc123/?op=release failed 4 times: [1] "),
        "{message}"
    );
    assert!(
        message.contains("[4] POST machines/abc123/?op=release failed with HTTP 500"),
        "{message}"
    );
    assert!(
        run.stderr.contains("trying again in 200 ms"),
        "{}",
        run.stderr
    );
}

#[test]
fn an_unreachable_maas_is_retried_then_fails() {
    let lab = start_lab(deployed(), "", JOB);
    // A port nobody listens on.
    let closed = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let url = format!("http://{}/MAAS", closed.local_addr().unwrap());
    drop(closed);
    let yaml = lab.rd.read("default.yaml").replace(&lab.maas.url(), &url);
    lab.rd.write("default.yaml", &yaml);
    let run = lab.rd.stage("maas2", "cleanup");
    assert_eq!(run.code, 1);
    let (name, message) = error_message(&lab.rd, "cleanup");
    assert_eq!(name, "CleanupError");
    assert!(
        message.starts_with("POST machines/abc123/?op=release failed 4 times: [1] "),
        "{message}"
    );
    assert!(message.contains(&url), "{message}");
    // The host's error behind the last attempt is the cause.
    let cause = error_cause(&lab.rd, "cleanup").expect("a cause");
    assert!(cause.contains(&url), "{cause}");
    assert!(lab.maas.calls().is_empty());
}

#[test]
fn bad_credentials_are_explained_and_not_retried() {
    let lab = start_lab(deployed(), "", JOB);
    write_config(
        &lab.rd,
        &lab.maas,
        IP,
        "consumerKey:tokenKey:wrongSecret",
        "",
    );
    let run = lab.rd.stage("maas2", "provision");
    assert_eq!(run.code, 1);
    let (name, message) = error_message(&lab.rd, "provision");
    assert_eq!(name, "ProvisioningError");
    assert!(message.starts_with("MAAS refused the credentials for GET nodes/abc123/blockdevices/ (HTTP 401: Authorization Error: Invalid signature)"), "{message}");
    // MAAS answered: there is no host error behind it.
    assert_eq!(error_cause(&lab.rd, "provision"), None);
    assert!(message.contains("check `maas_api_key`"), "{message}");
    assert_eq!(lab.maas.calls().len(), 1);
    assert!(!message.contains("wrongSecret"));

    // A key that is not a MAAS key at all never leaves the host.
    write_config(&lab.rd, &lab.maas, IP, "justOnePart", "");
    std::fs::remove_file(lab.rd.path().join("device-connector-error.json")).unwrap();
    let run = lab.rd.stage("maas2", "provision");
    assert_eq!(run.code, 1);
    let (_, message) = error_message(&lab.rd, "provision");
    assert!(message.contains("`maas_api_key` must be the MAAS API key in the form `<consumer_key>:<token_key>:<token_secret>`"), "{message}");
    assert!(!message.contains("justOnePart") && !run.stderr.contains("justOnePart"));
    assert_eq!(lab.maas.calls().len(), 1);
}

#[test]
fn the_api_key_stays_on_the_host() {
    let lab = start_lab(deployed(), "", JOB);
    let run = lab.rd.run(&[
        "check",
        "maas2",
        "-c",
        "default.yaml",
        "--job",
        "testflinger.json",
    ]);
    assert_eq!(run.code, 0, "{}", run.stdout);
    assert!(run.stdout.contains("no problems found"), "{}", run.stdout);
    assert!(!run.stdout.contains("http: maas"), "{}", run.stdout);
    assert!(!run.stdout.contains(SECRET) && !run.stderr.contains(SECRET));
    // The check validates the key's form without showing it.
    write_config(&lab.rd, &lab.maas, IP, "a:b", "");
    let run = lab.rd.run(&["check", "maas2", "-c", "default.yaml"]);
    assert_eq!(run.code, 1);
    assert!(run.stdout.contains("http: maas   HTTP endpoint `maas` cannot be used: device config key `maas_api_key` must be"), "{}", run.stdout);
    assert!(!run.stdout.contains("a:b"));
    // A full provision with debug logging leaves no trace of it either.
    write_config(&lab.rd, &lab.maas, IP, &lab.maas.api_key(), "");
    lab.rd
        .write("testflinger.json", r#"{"job_id":"maas-6","debug":true}"#);
    let run = lab.rd.stage("maas2", "provision");
    assert_eq!(run.code, 0);
    assert_secret_absent(&lab, &run);
}

#[test]
fn reset_efi_puts_network_boot_first_then_releases() {
    const EFI: &str = "BootCurrent: 0003\nTimeout: 1 seconds\nBootOrder: 0000,0001,0002,0003\n\
Boot0000* ubuntu\tHD(1,GPT)\nBoot0001* UEFI: PXE IPv6\tMAC()/IPv6()\n\
Boot0002* UEFI: PXE IPv4 Intel\tMAC()/IPv4()\nBoot0003* UEFI: PXE IPv4 USB\tMAC()/IPv4()\n";
    let lab = start_lab(deployed(), "reset_efi: true\n", JOB);
    lab.dut
        .add_rule(Rule::exact("sudo efibootmgr -v").stdout(EFI));
    lab.dut
        .add_rule(Rule::exact("sudo efibootmgr -o 0003,0002,0000,0001"));
    let run = lab.rd.stage("maas2", "cleanup");
    assert_eq!(run.code, 0);
    assert_eq!(
        lab.dut.command_lines(),
        [
            "sudo efibootmgr -v",
            "sudo efibootmgr -o 0003,0002,0000,0001"
        ]
    );
    assert!(lab.dut.commands().iter().all(|c| c.user == "ubuntu"));
    assert!(
        run.stderr
            .contains("MAAS: Setting boot order to 0003,0002,0000,0001")
    );
    // The EFI fix comes before the release (the machine is still up).
    assert_eq!(calls(&lab.maas)[0], "POST machines/abc123/?op=release");

    // Without a working efibootmgr, the snap is tried once, then the boot
    // order is left alone.
    let lab = lab_with_failing_efibootmgr();
    let run = lab.rd.stage("maas2", "cleanup");
    assert_eq!(run.code, 0);
    assert_eq!(
        lab.dut.command_lines(),
        [
            "sudo efibootmgr -v",
            "sudo snap install efi-tools-ijohnson --devmode --edge",
            "sudo snap alias efi-tools-ijohnson.efibootmgr efibootmgr",
            "sudo efibootmgr -v",
        ]
    );
    assert!(run.stderr.contains("Cannot read the EFI boot entries"));
}

fn lab_with_failing_efibootmgr() -> Lab {
    let lab = start_lab(deployed(), "reset_efi: true\n", JOB);
    lab.dut.add_rule(
        Rule::exact("sudo efibootmgr -v")
            .status(1)
            .stderr("efibootmgr: command not found\n"),
    );
    lab.dut.add_rule(Rule::regex("^sudo snap ").unwrap());
    lab
}

#[test]
fn clear_tpm_on_the_current_system_or_after_a_default_deployment() {
    let lab = start_lab(deployed(), "clear_tpm: true\n", JOB);
    lab.dut
        .add_rule(Rule::exact("echo 5 | sudo tee /sys/class/tpm/tpm0/ppi/request").stdout("5\n"));
    lab.dut
        .add_rule(Rule::exact("cat /sys/class/tpm/tpm0/ppi/request").stdout("5\n"));
    let run = lab.rd.stage("maas2", "provision");
    assert_eq!(run.code, 0);
    let lines = lab.dut.command_lines();
    assert_eq!(
        &lines[..2],
        [
            "echo 5 | sudo tee /sys/class/tpm/tpm0/ppi/request",
            "cat /sys/class/tpm/tpm0/ppi/request"
        ]
    );
    assert_eq!(lines.last().map(String::as_str), Some("/bin/true"));
    assert_eq!(
        lab.maas
            .lines()
            .iter()
            .filter(|l| l.contains("op=deploy"))
            .count(),
        1
    );

    // The request never sticks: one default deployment, a second attempt,
    // then the failure.
    let lab = start_lab(
        deployed(),
        "clear_tpm: true\n",
        r#"{"job_id":"maas-7","provision_data":{"distro":"noble"}}"#,
    );
    lab.dut
        .add_rule(Rule::exact("echo 5 | sudo tee /sys/class/tpm/tpm0/ppi/request").stdout("5\n"));
    lab.dut
        .add_rule(Rule::exact("cat /sys/class/tpm/tpm0/ppi/request").stdout("0\n"));
    let run = lab.rd.stage("maas2", "provision");
    assert_eq!(run.code, 1);
    let (_, message) = error_message(&lab.rd, "provision");
    assert_eq!(message, "Failed to clear TPM");
    let deploys: Vec<String> = lab
        .maas
        .lines()
        .into_iter()
        .filter(|l| l.contains("op=deploy"))
        .collect();
    assert_eq!(
        deploys,
        ["POST machines/abc123/?op=deploy distro_series=jammy"]
    );
    let tpm_reads = lab
        .dut
        .command_lines()
        .iter()
        .filter(|c| c.starts_with("cat "))
        .count();
    assert_eq!(tpm_reads, 2);
}

#[test]
fn the_serial_console_is_captured_while_provisioning() {
    let console = SerialServer::start("127.0.0.1").unwrap();
    let builder = deployed().deploy_time(Duration::from_millis(800));
    let extra = format!(
        "serial_host: {}\nserial_port: {}\n",
        console.host(),
        console.port()
    );
    let lab = start_lab(builder, &extra, JOB);
    let child = lab
        .rd
        .command(&[
            "maas2",
            "provision",
            "-c",
            "default.yaml",
            "testflinger.json",
        ])
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .unwrap();
    assert!(console.wait_accepted(1, Duration::from_secs(20)));
    console.push_lines(
        &["[  OK  ] Reached target Cloud-init target.", "node login:"],
        Duration::ZERO,
    );
    let run = crate::common::finish(child.wait_with_output().unwrap());
    assert_eq!(run.code, 0);
    let log = lab.rd.read("provision-serial.log");
    assert!(
        log.contains("Reached target Cloud-init target.\r\nnode login:"),
        "{log:?}"
    );
}
