//! Kitchen sink for WIT testflinger:connector@0.1.0: every stage exercises
//! a different part of the API, and every imported function of 0.1.0 is
//! referenced, so linking this component checks the whole 0.1.0 surface.
//!
//! provision:       log, print, job (all functions), power.run, ssh (all)
//! runtest:         serial (open, wait-for, write) and returns status 7
//! allocate:        transfer.to-artifact (url) and transfer.to-ssh (attachment)
//! reserve:         http.fetch and http.call
//! cleanup:         ssh.authorize-key and power.cycle-control-host
//! firmware-update: returns recovery-needed (exit 46)

wit_bindgen::generate!({ world: "connector", path: "wit" });

use exports::testflinger::connector::phases::Guest;
use testflinger::connector::types::{Error, PhaseError};
use testflinger::connector::{http, job, log, power, serial, ssh, transfer};

/// The manifest the SDK would write, spelled out by hand so this fixture
/// does not depend on the SDK.
const MANIFEST: &str = "name = \"kitchen_sink_v0_1_0\"
version = \"0.1.0\"
wit = \"0.1.0\"
provision_types = [\"kitchen_sink\"]
[capabilities]
power = [\"reboot_script\", \"control_host_reboot_script\", \"poweroff_script\", \"poweron_script\"]
ssh = [\"device\"]
serial = [\"console\"]
http = [\"job-urls\", \"control-host\"]
transfer = [\"job-urls\", \"attachments\"]
";

#[used]
#[unsafe(link_section = "testflinger:connector-manifest")]
static MANIFEST_SECTION: [u8; MANIFEST.len()] = {
    let bytes = MANIFEST.as_bytes();
    let mut out = [0u8; MANIFEST.len()];
    let mut i = 0;
    while i < out.len() {
        out[i] = bytes[i];
        i += 1;
    }
    out
};

fn fail(context: &str, e: Error) -> PhaseError {
    let text = match e {
        Error::Denied(m) => format!("denied: {m}"),
        Error::NotFound(m) => format!("not-found: {m}"),
        Error::Timeout(m) => format!("timeout: {m}"),
        Error::Failed(m) => format!("failed: {m}"),
        Error::Io(m) => format!("io: {m}"),
        Error::Invalid(m) => format!("invalid: {m}"),
        Error::Limit(m) => format!("limit: {m}"),
        Error::Unsupported(m) => format!("unsupported: {m}"),
        Error::Other(m) => format!("other: {m}"),
    };
    PhaseError::Failed(format!("{context}: {text}"))
}

/// The first string value of `"key":"..."` in a JSON text (no JSON
/// library, to keep the fixture minimal and frozen).
fn json_str(text: &str, key: &str) -> Option<String> {
    let needle = format!("\"{key}\":\"");
    let start = text.find(&needle)? + needle.len();
    let end = text[start..].find('"')?;
    Some(text[start..start + end].to_string())
}

struct KitchenSink;

impl Guest for KitchenSink {
    fn provision() -> Result<(), PhaseError> {
        log::log(log::Level::Debug, "compat: debug line");
        log::log(log::Level::Info, "compat: provision starts");
        log::log(log::Level::Warning, "compat: a warning");
        log::log(log::Level::Error, "compat: an error line (not a failure)");
        let stage = job::current_stage();
        log::print(&format!("compat: stage is provision: {}\n", stage == job::Stage::Provision));
        let job_text = job::job_json();
        log::print(&format!("compat: job id {}\n", json_str(&job_text, "job_id").unwrap_or_default()));
        let config = job::device_config_json();
        log::print(&format!("compat: device_ip {}\n", json_str(&config, "device_ip").unwrap_or_default()));
        let names = job::attachments("provision").map_err(|e| fail("attachments", e))?;
        log::print(&format!("compat: attachments {}\n", names.join(",")));
        if let Some(first) = names.first() {
            let data = job::read_attachment("provision", first).map_err(|e| fail("read-attachment", e))?;
            log::print(&format!("compat: first attachment has {} bytes\n", data.len()));
        }
        job::set_device_info("compat", "{\"wit\":\"0.1.0\"}").map_err(|e| fail("set-device-info", e))?;
        job::write_artifact("compat/provision.txt", b"written by the 0.1.0 fixture\n")
            .map_err(|e| fail("write-artifact", e))?;
        power::run(
            "reboot_script",
            power::RunOptions {
                style: power::ExecStyle::Split,
                timeout_per_entry: 30_000,
            },
        )
        .map_err(|e| fail("power.run", e))?;
        ssh::wait_reachable("device", 30_000).map_err(|e| fail("wait-reachable", e))?;
        let session = ssh::connect("device", 30_000, &[]).map_err(|e| fail("connect", e))?;
        let out = session
            .exec("echo compat-$((6*7))", 30_000, &[("log-output".into(), "false".into())])
            .map_err(|e| fail("exec", e))?;
        log::print(&format!("compat: exec status {} stdout {}", out.status, out.stdout));
        session
            .upload("compat-upload.txt", b"round trip\n", 0o644, 30_000)
            .map_err(|e| fail("upload", e))?;
        let back = session.download("compat-upload.txt", 30_000).map_err(|e| fail("download", e))?;
        log::print(&format!("compat: downloaded {}", String::from_utf8_lossy(&back)));
        let n = session
            .download_artifact("compat-upload.txt", "compat/from-device.txt", 30_000)
            .map_err(|e| fail("download-artifact", e))?;
        log::print(&format!("compat: artifact {n} bytes\n"));
        Ok(())
    }

    fn runtest() -> Result<i32, PhaseError> {
        let port = serial::open("console").map_err(|e| fail("serial.open", e))?;
        port.write(b"\n", 10_000).map_err(|e| fail("serial.write", e))?;
        let seen = port.wait_for("login:", 30_000).map_err(|e| fail("serial.wait-for", e))?;
        log::print(&format!("compat: serial saw {seen}\n"));
        Ok(7)
    }

    fn allocate() -> Result<(), PhaseError> {
        let job_text = job::job_json();
        let url = json_str(&job_text, "url").ok_or_else(|| PhaseError::Failed("no provision_data.url".into()))?;
        let report = transfer::to_artifact(&transfer::Source::Url(url), "compat/image.bin", 60_000, &[])
            .map_err(|e| fail("to-artifact", e))?;
        log::print(&format!("compat: to-artifact {} bytes {}\n", report.bytes, report.sha256));
        let names = job::attachments("provision").map_err(|e| fail("attachments", e))?;
        let first = names.first().ok_or_else(|| PhaseError::Failed("no attachment".into()))?;
        let session = ssh::connect("device", 30_000, &[]).map_err(|e| fail("connect", e))?;
        let report = transfer::to_ssh(
            &transfer::Source::Attachment(first.clone()),
            &session,
            "cat > compat-stream.bin",
            60_000,
            &[("label".into(), "compat".into())],
        )
        .map_err(|e| fail("to-ssh", e))?;
        log::print(&format!("compat: to-ssh {} bytes {}\n", report.bytes, report.sha256));
        Ok(())
    }

    fn reserve() -> Result<(), PhaseError> {
        let job_text = job::job_json();
        let url = json_str(&job_text, "url").ok_or_else(|| PhaseError::Failed("no provision_data.url".into()))?;
        let response = http::fetch(
            &http::Request {
                method: "GET".into(),
                url,
                headers: vec![],
                body: vec![],
                timeout: 30_000,
            },
            &[],
        )
        .map_err(|e| fail("http.fetch", e))?;
        log::print(&format!("compat: fetch status {} {} bytes\n", response.status, response.body.len()));
        let health = http::call(
            "control-host",
            &http::Request {
                method: "GET".into(),
                url: "/health".into(),
                headers: vec![("accept".into(), "*/*".into())],
                body: vec![],
                timeout: 30_000,
            },
            &[],
        )
        .map_err(|e| fail("http.call", e))?;
        log::print(&format!("compat: control host health {}\n", health.status));
        Ok(())
    }

    fn cleanup() -> Result<(), PhaseError> {
        ssh::authorize_key("device", 30_000).map_err(|e| fail("authorize-key", e))?;
        power::cycle_control_host(false, 30_000).map_err(|e| fail("cycle-control-host", e))?;
        log::print("compat: cleanup done\n");
        Ok(())
    }

    fn firmware_update() -> Result<(), PhaseError> {
        Err(PhaseError::RecoveryNeeded("compat: recovery requested on purpose".into()))
    }
}

export!(KitchenSink);
