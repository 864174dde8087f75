//! Image streaming throughput of the muxpi path against Debian's OpenSSH
//! `sshd` on a loopback port, next to the plain pipeline the reference
//! runs (`cat image | ssh host '<sink>'`):
//!
//! 1. `muxpi provision` through the CLI, the image an attachment, then a
//!    URL on a loopback HTTP server: the runtime streams it host-side
//!    (russh) into `zstdcat | sudo dd of=<dev> bs=16M` on the "control
//!    host" (the transfer's own duration, from its audit line);
//! 2. OpenSSH's `ssh` fed by `cat`, into the same sink and into
//!    `cat > /dev/null`.
//!
//! The image is incompressible (zstdcat passes it through, as it does any
//! raw image), `test_device` is `/dev/null`, and `sudo`, `stm`, `umount`
//! and `hdparm` are no-op stand-ins first on the sshd session's `PATH`:
//! nothing is written anywhere. Run:
//! `cargo bench -p tfdc-runtime --bench muxpi_stream [-- --mib 256 --runs 3]`.
//! Medians; the machine is shared and noisy, trust ratios.

use std::io::Write;
use std::path::Path;
use std::process::{Command, Stdio};
use std::time::Instant;

use labsim::openssh::{SSHD, Sshd, user_name};
use labsim::web::{Reply, WebServer};

const IP: &str = "127.0.0.62";

fn write_exec(path: &Path, text: &str) {
    std::fs::write(path, text).unwrap();
    use std::os::unix::fs::PermissionsExt;
    std::fs::set_permissions(path, std::fs::Permissions::from_mode(0o755)).unwrap();
}

/// Incompressible bytes (xorshift64*), so zstd cannot shrink the work.
fn noise(len: usize) -> Vec<u8> {
    let mut x: u64 = 0x9E37_79B9_7F4A_7C15;
    let mut out = Vec::with_capacity(len + 8);
    while out.len() < len {
        x ^= x >> 12;
        x ^= x << 25;
        x ^= x >> 27;
        out.extend_from_slice(&x.wrapping_mul(0x2545_F491_4F6C_DD1D).to_le_bytes());
    }
    out.truncate(len);
    out
}

fn median(mut v: Vec<f64>) -> f64 {
    v.sort_by(|a, b| a.total_cmp(b));
    v[v.len() / 2]
}

fn arg(name: &str, default: usize) -> usize {
    let args: Vec<String> = std::env::args().collect();
    args.iter()
        .position(|a| a == name)
        .and_then(|i| args.get(i + 1))
        .and_then(|v| v.parse().ok())
        .unwrap_or(default)
}

/// `cat <image> | ssh ... '<sink>'`: seconds.
fn plain(ssh_config: &Path, image: &Path, cipher: &str, sink: &str) -> f64 {
    let started = Instant::now();
    let status = Command::new("bash")
        .arg("-c")
        .arg(format!(
            "set -o pipefail; cat {} | ssh -F {} {cipher} {IP} '{sink}'",
            image.display(),
            ssh_config.display()
        ))
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .status()
        .unwrap();
    assert!(status.success(), "cat | ssh '{sink}' failed");
    started.elapsed().as_secs_f64()
}

/// One `muxpi provision`; returns the transfer's duration (s) from its
/// audit line and the whole stage's wall time.
fn ours(run_dir: &Path, home: &Path, provision_data: serde_json::Value) -> (f64, f64) {
    std::fs::write(
        run_dir.join("testflinger.json"),
        serde_json::json!({"job_id": "bench", "provision_data": provision_data}).to_string(),
    )
    .unwrap();
    let started = Instant::now();
    let out = Command::new(env!("CARGO_BIN_EXE_testflinger-device-connectors"))
        .args([
            "muxpi",
            "provision",
            "-c",
            "default.yaml",
            "testflinger.json",
        ])
        .current_dir(run_dir)
        .env("HOME", home)
        .env("TFDC_CACHE_DIR", run_dir.join("cache"))
        .env_remove("DISABLE_CONTROL_HOST_POWERCYCLE")
        .output()
        .unwrap();
    let wall = started.elapsed().as_secs_f64();
    let log = String::from_utf8_lossy(&out.stderr);
    assert!(out.status.success(), "muxpi provision failed:\n{log}");
    let ms: f64 = log
        .lines()
        .find(|l| l.contains("capability=transfer.to-ssh"))
        .and_then(|l| l.rsplit("duration_ms=").next())
        .and_then(|v| v.trim().parse().ok())
        .expect("the transfer's audit line");
    (ms / 1000.0, wall)
}

fn main() {
    if !labsim::openssh::available() {
        eprintln!(
            "{SSHD} is not installed (scripts/setup.sh installs openssh-server): nothing measured"
        );
        return;
    }
    let mib = arg("--mib", 256);
    let runs = arg("--runs", 3).max(1);
    let bytes = mib << 20;

    let dir = tempfile::tempdir().unwrap();
    let server = dir.path().join("server");
    let remote_home = server.join("home");
    let fakebin = server.join("bin");
    std::fs::create_dir_all(&fakebin).unwrap();
    write_exec(&fakebin.join("sudo"), "#!/bin/sh\nexec \"$@\"\n");
    for (name, code) in [("stm", 0), ("hdparm", 0), ("umount", 32)] {
        write_exec(&fakebin.join(name), &format!("#!/bin/sh\nexit {code}\n"));
    }
    let sshd = Sshd::start(IP, &server, &remote_home, Some(&fakebin)).unwrap();

    let run_dir = dir.path().join("run");
    let home = run_dir.join("home");
    std::fs::create_dir_all(run_dir.join("attachments/provision")).unwrap();
    let agent = labsim::dut::agent_key(&home).unwrap();
    std::fs::write(
        remote_home.join(".ssh/authorized_keys"),
        format!("{}\n", agent.public_line),
    )
    .unwrap();
    let user = user_name();
    let ssh_config = home.join(".ssh/config");
    std::fs::write(
        &ssh_config,
        format!(
            "Host {IP}\n    HostName {IP}\n    Port {}\n    User {user}\n    IdentityFile {}\n\
             \x20   StrictHostKeyChecking no\n    UserKnownHostsFile /dev/null\n    BatchMode yes\n    LogLevel ERROR\n",
            sshd.port(),
            agent.private_key.display()
        ),
    )
    .unwrap();

    // The stand-ins must be the ones the session runs.
    let which = Command::new("ssh")
        .args(["-F"])
        .arg(&ssh_config)
        .args([IP, "command -v sudo stm"])
        .output()
        .unwrap();
    let which = String::from_utf8_lossy(&which.stdout);
    assert!(
        which
            .lines()
            .all(|l| l.starts_with(&*fakebin.to_string_lossy()))
            && which.lines().count() == 2,
        "the sshd session does not use the stand-ins: {which}"
    );

    let image = noise(bytes);
    let image_path = run_dir.join("attachments/provision/image.raw");
    std::fs::File::create(&image_path)
        .unwrap()
        .write_all(&image)
        .unwrap();
    let body: bytes::Bytes = image.into();
    let web = WebServer::start("127.0.0.63", move |req| {
        if req.path == "/ok" {
            Reply::text("ok")
        } else {
            Reply::bytes(body.clone())
        }
    })
    .unwrap();
    std::fs::write(
        run_dir.join("default.yaml"),
        format!(
            "agent_name: bench\ncontrol_host: {IP}\ncontrol_user: {user}\ntest_device: /dev/null\n\
             muxpi_poll_seconds: 0.05\n"
        ),
    )
    .unwrap();
    let check = format!("{}/ok", web.url());
    let sink = "zstdcat | sudo dd of=/dev/null bs=16M";
    let mb = bytes as f64 / 1e6;

    println!(
        "muxpi image streaming, {mib} MiB incompressible image, OpenSSH sshd on {IP} (loopback), median of {runs}"
    );
    let mut rows: Vec<(String, f64, Option<f64>)> = Vec::new();
    for (name, data) in [
        (
            "muxpi provision, attachment (russh, host-side transfer)",
            serde_json::json!({"use_attachment": "image.raw", "create_user": false, "boot_check_url": check}),
        ),
        (
            "muxpi provision, URL (HTTP -> russh, no temporary file)",
            serde_json::json!({"url": format!("{}/image.raw", web.url()), "create_user": false, "boot_check_url": check}),
        ),
    ] {
        let (mut t, mut w) = (Vec::new(), Vec::new());
        for _ in 0..runs {
            let (transfer, wall) = ours(&run_dir, &home, data.clone());
            t.push(transfer);
            w.push(wall);
        }
        rows.push((name.to_string(), median(t), Some(median(w))));
    }
    // OpenSSH's default cipher (chacha20-poly1305), and the one our client
    // prefers (aes128-gcm).
    for (cipher, shown) in [("", "default"), ("-c aes128-gcm@openssh.com", "aes128-gcm")] {
        for s in [sink, "cat > /dev/null"] {
            let t: Vec<f64> = (0..runs)
                .map(|_| plain(&ssh_config, &image_path, cipher, s))
                .collect();
            rows.push((format!("cat image | ssh ({shown}) '{s}'"), median(t), None));
        }
    }
    // What a login costs OpenSSH (included in its rows above; the muxpi
    // rows count the transfer on an open connection only).
    let login = median(
        (0..runs)
            .map(|_| {
                let started = Instant::now();
                let ok = Command::new("ssh")
                    .arg("-F")
                    .arg(&ssh_config)
                    .args([IP, "true"])
                    .status()
                    .unwrap()
                    .success();
                assert!(ok, "ssh true failed");
                started.elapsed().as_secs_f64()
            })
            .collect(),
    );
    for (name, secs, wall) in rows {
        println!(
            "  {name:<66} {secs:>6.2} s  {:>7.1} MB/s{}",
            mb / secs,
            wall.map(|w| format!("  (whole stage {w:.2} s)"))
                .unwrap_or_default()
        );
    }
    println!("  (an OpenSSH login alone, `ssh host true`: {login:.2} s)");
    drop(web);
    drop(sshd);
}
