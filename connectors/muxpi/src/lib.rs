//! `muxpi` (reference §4.8): devices that boot from an SD card or USB
//! stick behind a mux (MuxPi, SDWire, TypeC mux) driven by a control host.
//!
//! Provisioning switches the storage to the control host, streams the
//! image into `zstdcat | sudo dd` there (the runtime moves the bytes, from
//! the job's URL or attachment straight into the SSH channel), seeds a
//! login for the kind of image it finds, switches the storage back,
//! power-cycles the device and waits until the new image answers.
//!
//! Waits poll instead of sleeping: control-host commands are retried for
//! the reference's 60 s window, the control host's reboot and the device's
//! boot are waited for with the reference's upper bounds, and a device that
//! is ready early is used early. `muxpi_poll_seconds`,
//! `muxpi_control_retry_seconds` and `muxpi_boot_timeout_seconds` in the
//! device config tune them. See `docs/muxpi.md` for the keys and for what
//! deliberately differs from the reference.

pub mod control;
pub mod image;
pub mod seed;
pub mod settings;
pub mod shell;

use std::time::Duration;

use testflinger_connector::prelude::*;
use testflinger_connector::ssh::Output;
use testflinger_connector::units::human_duration;
use testflinger_connector::wait::Wait;

use control::Control;
use image::ImageType;
use settings::{ImageSource, Media, Settings, Switching};
use shell::quote;

/// Deadline of one control-host command (reference default).
const COMMAND_TIMEOUT: Duration = Duration::from_secs(60);
/// Deadline of `sudo umount <dev>*` before flashing (reference).
const UMOUNT_TIMEOUT: Duration = Duration::from_secs(30);
/// Deadline of `sudo hdparm -z` (reference).
const HDPARM_TIMEOUT: Duration = Duration::from_secs(40);
/// Flashing from a URL: the reference's download (1200 s) and pipe (1800 s)
/// deadlines together, as both now happen in one stream.
const URL_FLASH_TIMEOUT: Duration = Duration::from_secs(1200 + 1800);
/// Flashing from an attachment (reference).
const ATTACHMENT_FLASH_TIMEOUT: Duration = Duration::from_secs(1200);
/// Deadline of each `control_host_reboot_script` entry (reference).
const CONTROL_HOST_SCRIPT_TIMEOUT: Duration = Duration::from_secs(60);
/// Deadline of one boot-check request (reference).
const BOOT_CHECK_REQUEST_TIMEOUT: Duration = Duration::from_secs(5);
/// How long partition labels may take to show up after `hdparm -z`
/// (the reference waits 10 s once).
const LABELS_WAIT: Duration = Duration::from_secs(10);

/// The connector.
pub struct Muxpi;

impl Connector for Muxpi {
    fn new() -> Self {
        Muxpi
    }

    fn provision(&mut self) -> PhaseResult<()> {
        provision::Frame::new()
            .manage_dut_power()
            .capture_console()
            .run(Settings::load, |s| {
                info!("Provisioning device");
                Run::new(s).provision()
            })
    }
}

export_connector!(Muxpi);

/// A failed step, and whether the storage must stay on the control host
/// (it may hold a partial image that could not be wiped).
struct Failure {
    error: PhaseError,
    keep_on_host: bool,
}

impl From<PhaseError> for Failure {
    fn from(error: PhaseError) -> Self {
        Failure {
            error,
            keep_on_host: false,
        }
    }
}

/// Power-cycles the device with `reboot_script` (the reference's
/// `hardreset`). Only a failing script needs recovery (exit 46); a missing
/// one does nothing.
fn hardreset(s: &Settings) -> PhaseResult<()> {
    if !s.reboot_script {
        info!("reboot_script is not configured: not power cycling the device");
        return Ok(());
    }
    power::hardreset().map_err(|e| {
        if e.is_permanent() {
            PhaseError::failed(e)
        } else {
            PhaseError::recovery(format!(
                "Cannot power cycle the device with reboot_script: {e}"
            ))
            .caused_by(e)
        }
    })
}

/// One provision run.
struct Run {
    s: Settings,
    ch: Control,
}

impl Run {
    fn new(s: Settings) -> Self {
        let ch = Control::new(s.poll, s.control_retry);
        Run { s, ch }
    }

    fn provision(&mut self) -> PhaseResult<()> {
        if !self.s.mux_cli {
            self.reset_sdwire()?;
        }
        let device = self.plug_to_self()?;
        let work = self.prepare(&device);
        let keep = matches!(&work, Err(f) if f.keep_on_host);
        let back = if keep {
            warn!("Leaving the storage on the control host: it holds a partial image");
            Ok(())
        } else {
            self.plug_to_dut()
        };
        PhaseError::merge(
            work.map_err(|f| f.error),
            back,
            "switching the storage back to the device failed too",
        )?;
        info!("Booting Test Image");
        hardreset(&self.s)?;
        self.boot_check()
    }

    /// Without a mux CLI the SDWire is reset by rebooting the control host
    /// (and the device) first, when the lab configured a script for it.
    fn reset_sdwire(&mut self) -> PhaseResult<()> {
        if !self.s.control_host_reboot_script {
            warn!("control_host_reboot_script not defined, skip rebooting control host");
            return Ok(());
        }
        info!("Rebooting control host");
        power::run_with(
            "control_host_reboot_script",
            power::ExecStyle::Split,
            CONTROL_HOST_SCRIPT_TIMEOUT,
        )
        .map_err(|e| {
            if e.is_permanent() {
                PhaseError::failed(e)
            } else {
                PhaseError::failed(format!("fail to reboot control host: {e}")).caused_by(e)
            }
        })?;
        info!("Rebooting DUT");
        hardreset(&self.s)?;
        // The reference slept the whole timeout, polled for as long again,
        // then tried once more for the retry window: the same bound, polled.
        let t = self.s.control_host_reboot_timeout;
        self.ch
            .wait_for_reboot(t, t + t + self.s.control_retry)
            .or_fail_detailed("Control host did not come back")
    }

    /// Switches the storage to the control host; returns its block device.
    fn plug_to_self(&mut self) -> PhaseResult<String> {
        match self.s.switching.clone() {
            Switching::Commands {
                to_host,
                test_device,
                ..
            } => {
                info!("Switching the storage to the control host ({to_host})");
                self.ch
                    .run(&to_host, COMMAND_TIMEOUT)
                    .or_fail_detailed("Cannot switch the storage to the control host")?;
                Ok(test_device)
            }
            Switching::MuxCli { prefix, media } => {
                // A device that can boot from either medium gets both
                // switched away, so it cannot boot the other one.
                let mut device = None;
                for m in [Media::Sd, Media::Usb] {
                    let cmd = format!("{prefix} {} plug_to_self", m.mux_word());
                    if m == media {
                        let out = self
                            .ch
                            .run(&cmd, COMMAND_TIMEOUT)
                            .or_fail_detailed(format!(
                                "Cannot switch the {} to the control host",
                                m.mux_word()
                            ))?;
                        device = Some(out.stdout.trim().to_string());
                    } else {
                        match self.ch.query(&cmd, COMMAND_TIMEOUT) {
                            Ok(out) if out.success() => {}
                            Ok(out) => info!("`{cmd}` failed (ignored): {}", out.detail()),
                            Err(e) => warn!("`{cmd}` failed (ignored): {e}"),
                        }
                    }
                }
                let device = device.unwrap_or_default();
                if !device.starts_with("/dev/") || device.contains(char::is_whitespace) {
                    return Err(PhaseError::failed(format!(
                        "`{prefix} {} plug_to_self` did not print a block device (got {device:?})",
                        media.mux_word()
                    )));
                }
                info!("The {} is {device} on the control host", media.mux_word());
                Ok(device)
            }
        }
    }

    /// Switches the storage back to the device.
    fn plug_to_dut(&mut self) -> PhaseResult<()> {
        let cmd = match &self.s.switching {
            Switching::Commands { to_device, .. } => to_device.clone(),
            Switching::MuxCli { prefix, media } => {
                format!("{prefix} {} set DUT", media.mux_word())
            }
        };
        info!("Switching the storage back to the device ({cmd})");
        self.ch
            .run(&cmd, COMMAND_TIMEOUT)
            .map(drop)
            .or_fail_detailed("Cannot switch the storage back to the device")
    }

    /// Everything done while the storage is on the control host.
    fn prepare(&mut self, device: &str) -> Result<(), Failure> {
        self.flash(device)?;
        if self.s.create_user {
            self.seed(device)?;
        } else {
            info!("Skipping test user creation (create_user=False)");
        }
        self.post_provision();
        Ok(())
    }

    fn flash(&mut self, device: &str) -> Result<(), Failure> {
        let dev = quote(device);
        // Nothing of the card may stay mounted while it is overwritten.
        // The reference ignores this step's errors; an unreachable control
        // host fails the next step with its own message.
        match self
            .ch
            .query(&format!("sudo umount {dev}*"), UMOUNT_TIMEOUT)
        {
            Ok(out) if out.success() => {}
            Ok(_) => warn!("Device {device} might not be mounted"),
            Err(e) => warn!("Cannot unmount {device} on the control host (going on): {e}"),
        }
        let (source, timeout, label) = match &self.s.source {
            ImageSource::Url(url) => (
                transfer::Source::Url(url.clone()),
                URL_FLASH_TIMEOUT,
                url_name(url),
            ),
            ImageSource::Attachment(name) => (
                transfer::Source::Attachment(name.clone()),
                ATTACHMENT_FLASH_TIMEOUT,
                name.clone(),
            ),
        };
        info!(
            "Flashing Test image {label} on {device} (deadline {})",
            human_duration(timeout)
        );
        let command = format!("zstdcat | sudo dd of={dev} bs=16M");
        let streamed = self
            .ch
            .session()
            .and_then(|session| transfer::to_ssh(source, session, &command, timeout));
        match streamed {
            // The runtime's own lines give the rate and progress.
            Ok(report) => info!(
                "Flashed {label} onto {device} ({} bytes streamed, {})",
                report.bytes, report.sha256
            ),
            Err(e) => {
                // The card holds whatever arrived. Zero its start so that a
                // half-written image is never booted as if it were the job's.
                let wiped = self.wipe(device);
                // A download that failed before any byte was sent leaves
                // the old image whole, but which case this is cannot be
                // told from here: wiping is the safe side.
                let what = if wiped {
                    "its first MiB was zeroed so that no partial image can boot"
                } else {
                    "it could not be wiped and stays switched to the control host"
                };
                return Err(Failure {
                    error: PhaseError::failed(format!(
                        "Error while piping the test image to {device} through the control host: {e}; {what}"
                    ))
                    .caused_by(e),
                    keep_on_host: !wiped,
                });
            }
        }
        if let Err(e) = self.ch.run("sync", COMMAND_TIMEOUT) {
            warn!("Something went wrong with the sync: {e}");
        }
        self.ch
            .run(&format!("sudo hdparm -z {dev}"), HDPARM_TIMEOUT)
            .or_fail_detailed("Unable to run hdparm to rescan partitions")?;
        Ok(())
    }

    /// Zeroes the first MiB of `device`; whether it worked.
    fn wipe(&mut self, device: &str) -> bool {
        let cmd = format!(
            "sudo dd if=/dev/zero of={} bs=1M count=1 conv=fsync",
            quote(device)
        );
        match self.ch.run(&cmd, COMMAND_TIMEOUT) {
            Ok(_) => true,
            Err(e) => {
                warn!("Cannot wipe the partial image on {device}: {e}");
                false
            }
        }
    }

    /// Mounts the image's labelled partitions, seeds a login, unmounts.
    fn seed(&mut self, device: &str) -> Result<(), Failure> {
        let mounted = self
            .mount(device)
            .or_fail_detailed("Error creating user files")?;
        let created = self
            .create_user()
            .or_fail_detailed("Error creating user files");
        let mut unmount_errors = Vec::new();
        for dir in &mounted {
            if let Err(e) = self
                .ch
                .run(&format!("sudo umount {}", quote(dir)), COMMAND_TIMEOUT)
            {
                unmount_errors.push(e.to_string());
            }
        }
        let unmounted = if unmount_errors.is_empty() {
            Ok(())
        } else {
            Err(PhaseError::failed(format!(
                "Cannot unmount the image: {}",
                unmount_errors.join("; ")
            )))
        };
        Ok(PhaseError::merge(
            created,
            unmounted,
            "unmounting failed too",
        )?)
    }

    /// Mounts every labelled partition of `device` at
    /// `/mnt/<agent_name>/<label>`; returns the mount points that worked.
    fn mount(&mut self, device: &str) -> Result<Vec<String>, Error> {
        let lsblk = format!("lsblk -o NAME,LABEL -J {}", quote(device));
        // Labels can take a moment to show up after the rescan.
        let found = Wait::new(
            format!("finding labelled partitions on {device}"),
            LABELS_WAIT,
        )
        .every(self.s.poll)
        .retry()
        .until(|| {
            let parts = self.ch.run(&lsblk, COMMAND_TIMEOUT).and_then(|out| {
                image::labelled_partitions(&out.stdout)
                    .map_err(|e| Error::new(ErrorKind::Failed, e))
            });
            match parts {
                Ok(p) if p.is_empty() => Check::not_yet("no valid partitions found"),
                Ok(p) => Check::Ready(p),
                Err(e) => Check::Failed(e),
            }
        });
        let parts = match found {
            Ok(w) => w.value,
            Err(w) if w.is_timeout() => Vec::new(),
            Err(w) => return Err(w.into_reason()),
        };
        let root = self.s.mount_root();
        let mut mounted = Vec::new();
        for (name, label) in parts {
            let dir = format!("{root}/{label}");
            let q = quote(&dir);
            let made = self
                .ch
                .query(&format!("sudo mkdir -p {q}"), COMMAND_TIMEOUT)?;
            if !made.success() {
                warn!("Cannot create {dir}: {}", made.detail());
                continue;
            }
            let out = self.ch.query(
                &format!("sudo mount {} {q}", quote(&format!("/dev/{name}"))),
                COMMAND_TIMEOUT,
            )?;
            if out.success() {
                mounted.push(dir);
            } else {
                warn!("Cannot mount /dev/{name} ({label}): {}", out.detail());
            }
        }
        Ok(mounted)
    }

    /// A query's answer: whether it exited 0, and its output.
    fn ask(&mut self, command: &str) -> Result<Output, Error> {
        self.ch.query(command, COMMAND_TIMEOUT)
    }

    /// What kind of image is mounted (reference order).
    fn detect(&mut self) -> Result<ImageType, Error> {
        let root = self.s.mount_root();
        let info = self.ask(&format!(
            "grep -oP {} {}",
            quote(image::BUILDSTAMP_PATTERN),
            quote(&format!("{root}/writable/.disk/info"))
        ))?;
        if info.success()
            && let Some(kind) = image::ce_oem_iot_type(&info.stdout)
        {
            return Ok(kind);
        }
        let tegra = self.ask(&format!(
            "ls -d {}/*-tegra*/ >/dev/null 2>&1",
            quote(&format!("{root}/writable/lib/firmware"))
        ))?;
        if tegra.success() {
            return Ok(ImageType::Tegra);
        }
        for (path, kind) in image::PATH_TYPES {
            let full = format!("{root}/{path}");
            if self.ask(&format!("test -e {}", quote(&full)))?.success() {
                return Ok(kind);
            }
            debug!("Path {full} was not found, continue trying others");
        }
        Ok(ImageType::Unknown)
    }

    fn create_user(&mut self) -> Result<(), Error> {
        let kind = self.detect()?;
        info!("Image type detected: {}", kind.name());
        info!("Creating Test User");
        let root = self.s.mount_root();
        let version = if kind == ImageType::PiDesktop {
            let out = self.ask(&format!(
                "cat {}",
                quote(&format!("{root}/writable/etc/os-release"))
            ))?;
            out.success()
                .then(|| image::version_major(&out.stdout))
                .flatten()
        } else {
            None
        };
        let tmp = self.s.remote_tmp();
        let mut uploaded: Vec<&str> = Vec::new();
        for step in seed::plan(kind, &root, version) {
            if let Some(file) = step.seed()
                && !uploaded.contains(&file.name)
            {
                if uploaded.is_empty() {
                    self.ch
                        .run(&format!("mkdir -p {}", quote(&tmp)), COMMAND_TIMEOUT)?;
                }
                let path = format!("{tmp}/{}", file.name);
                self.ch
                    .session()?
                    .upload(&path, file.text.as_bytes(), 0o644)
                    .map_err(|e| e.context(format!("uploading {path} to the control host")))?;
                uploaded.push(file.name);
            }
            self.ch.run(&step.command(&tmp), COMMAND_TIMEOUT)?;
        }
        Ok(())
    }

    /// `post_provision_script`: control-host commands whose failures are
    /// only warned about.
    fn post_provision(&mut self) {
        for cmd in self.s.post_provision_script.clone() {
            info!("Running {cmd}");
            if let Err(e) = self.ch.run(&cmd, COMMAND_TIMEOUT) {
                warn!("Error running {cmd}: {e}");
            }
        }
    }

    /// Polls until the new image answers: `boot_check_url` returns 200, or
    /// the device accepts the agent's key (installed with the job's
    /// password if needed).
    fn boot_check(&mut self) -> PhaseResult<()> {
        info!("Checking if test image booted.");
        let url = self.s.boot_check_url.as_deref();
        let how = match url {
            Some(url) => format!(" (until {url} answers 200)"),
            None => " (until the device accepts an SSH login)".to_string(),
        };
        let deadline = self.s.boot_timeout;
        Wait::new("the test image to boot", deadline)
            .every(self.s.poll)
            .note(how)
            .done("the test image booted")
            .until(|| {
                match url {
                    Some(url) => check_url(url),
                    None => ssh::authorize_key("device", Duration::ZERO),
                }
                .into()
            })
            .map(drop)
            .map_err(|w| {
                let message = if w.is_timeout() {
                    format!(
                        "Failed to boot test image! (no answer within {}, {} check(s); last: {})",
                        human_duration(deadline),
                        w.checks(),
                        w.reason()
                    )
                } else {
                    format!("Failed to boot test image! ({})", w.reason())
                };
                PhaseError::failed(message).caused_by(w.into_reason())
            })
    }
}

/// One boot check against `url`: HTTP 200 within 5 s.
fn check_url(url: &str) -> Result<(), Error> {
    let resp = http::fetch(http::Request::get(url).timeout(BOOT_CHECK_REQUEST_TIMEOUT))?;
    if resp.status == 200 {
        Ok(())
    } else {
        Err(Error::new(
            ErrorKind::Failed,
            format!("{url} answered {}, expecting 200", resp.status),
        ))
    }
}

/// The last path segment of a URL (what progress lines call the image).
fn url_name(url: &str) -> String {
    let path = url.split(['?', '#']).next().unwrap_or(url);
    path.rsplit('/')
        .find(|s| !s.is_empty() && !s.contains(':'))
        .unwrap_or(url)
        .to_string()
}

#[cfg(test)]
mod tests {
    use serde_json::{Value, json};
    use testflinger_connector::testing::{FakeHost, Installed, err, exit, pattern, response};

    use super::*;

    #[test]
    fn url_names() {
        assert_eq!(url_name("http://h:8/a/img.zst?x=1"), "img.zst");
        assert_eq!(url_name("http://h/a/"), "a");
        assert_eq!(url_name("http://h:8"), "http://h:8");
    }

    fn config() -> Value {
        json!({
            "agent_name": "pi-1", "control_host": "10.0.0.2", "device_ip": "10.0.0.3",
            "test_device": "/dev/sda", "reboot_script": ["pdu 3 cycle"],
            "muxpi_poll_seconds": 1, "muxpi_control_retry_seconds": 3,
        })
    }

    /// A host for a URL image without user creation; `more` adds scripts.
    fn run(data: Value, more: impl FnOnce(FakeHost) -> FakeHost) -> (Installed, PhaseResult<()>) {
        let mut pd = json!({"url": "http://images/img.zst", "create_user": false});
        pd.as_object_mut()
            .unwrap()
            .extend(data.as_object().unwrap().clone());
        let host = more(
            FakeHost::new()
                .config(config())
                .job(json!({"provision_data": pd})),
        )
        .install();
        let result = Muxpi::new().provision();
        (host, result)
    }

    const FLASH: [&str; 4] = [
        "sudo umount /dev/sda*",
        "zstdcat | sudo dd of=/dev/sda bs=16M",
        "sync",
        "sudo hdparm -z /dev/sda",
    ];

    #[test]
    fn a_url_image_is_flashed_switched_back_booted_and_checked() {
        let (host, result) = run(json!({}), |h| h);
        result.unwrap();
        let mut want = vec!["stm -ts"];
        want.extend(FLASH);
        want.push("stm -dut");
        assert_eq!(host.commands("control-host"), want);
        let trace = host.trace();
        let tail = &trace[trace.len() - 2..];
        assert_eq!(tail, ["power reboot_script", "authorize-key device"]);
        assert!(host.logged("INFO Running pdu 3 cycle"));
        assert!(host.logged("INFO The test image booted after 0 ms, 1 check"));
    }

    #[test]
    fn an_unreachable_control_host_at_umount_only_warns() {
        let (host, result) = run(json!({}), |h| {
            // The umount never gets through; the host is back afterwards.
            h.exec(
                "control-host",
                "sudo umount /dev/sda*",
                [err(ErrorKind::Io, "connection reset")],
            )
            .reachable(
                "control-host",
                [err(ErrorKind::Io, "connection refused"), Ok(())],
            )
        });
        // The reference ignores the step's errors: flashing goes on.
        result.unwrap();
        assert!(host.logged(
            "WARNING Cannot unmount /dev/sda on the control host (going on): `sudo umount /dev/sda*` on the control host failed after"
        ));
        assert!(
            host.commands("control-host")
                .contains(&FLASH[1].to_string())
        );
    }

    #[test]
    fn a_failed_stream_zeroes_the_card_and_gives_it_back_without_booting() {
        let (host, result) = run(json!({}), |h| {
            h.transfers([err(ErrorKind::Failed, "the source ended early (truncated)")])
        });
        let e = result.unwrap_err();
        assert!(e.message().contains("first MiB was zeroed"), "{e}");
        assert_eq!(e.cause(), Some("the source ended early (truncated)"));
        assert_eq!(
            host.commands("control-host")[2..],
            [
                FLASH[1],
                "sudo dd if=/dev/zero of=/dev/sda bs=1M count=1 conv=fsync",
                "stm -dut"
            ]
        );
        assert!(!host.trace().contains(&"power reboot_script".to_string()));
        assert!(!host.logged("END provision"));
    }

    #[test]
    fn a_card_that_cannot_be_wiped_stays_on_the_control_host() {
        let (host, result) = run(json!({}), |h| {
            h.transfers([err(ErrorKind::Failed, "dd: I/O error")]).exec(
                "control-host",
                pattern("^sudo dd if=/dev/zero"),
                [exit(1, "", "dd: I/O error")],
            )
        });
        assert!(
            result
                .unwrap_err()
                .message()
                .contains("stays switched to the control host")
        );
        assert!(
            !host
                .commands("control-host")
                .contains(&"stm -dut".to_string())
        );
        assert!(host.logged("Leaving the storage on the control host"));
    }

    #[test]
    fn the_boot_check_url_is_polled_in_virtual_time() {
        let check = "http://$DEVICE_IP:8080/ready";
        let (host, result) = run(json!({"boot_check_url": check}), |h| {
            h.fetch(
                "GET http://10.0.0.3:8080/ready",
                [response(503, ""), response(503, ""), response(200, "ok")],
            )
        });
        result.unwrap();
        assert!(host.logged(
            "INFO Waiting up to 20 min for the test image to boot (until http://10.0.0.3:8080/ready answers 200)"
        ));
        assert!(host.logged("INFO The test image booted after 2 s, 3 checks"));
        assert!(!host.trace().iter().any(|c| c.starts_with("authorize-key")));
    }

    #[test]
    fn a_device_that_never_boots_fails_after_the_boot_timeout() {
        let mut cfg = config();
        cfg["muxpi_boot_timeout_seconds"] = json!("2m");
        let (host, result) = run(json!({}), |h| {
            h.config(cfg)
                .authorize("device", [err(ErrorKind::Io, "connection refused")])
        });
        let e = result.unwrap_err();
        assert_eq!(
            e.message(),
            "Failed to boot test image! (no answer within 2 min, 121 check(s); last: connection refused)"
        );
        assert!(host.elapsed() >= Duration::from_secs(120));
    }

    #[test]
    fn a_failing_reboot_script_needs_recovery() {
        let (_host, result) = run(json!({}), |h| {
            h.power(
                "reboot_script",
                [err(ErrorKind::Failed, "`pdu 3 cycle` exited with status 1")],
            )
        });
        let e = result.unwrap_err();
        assert!(e.is_recovery());
        assert!(
            e.message()
                .starts_with("Cannot power cycle the device with reboot_script"),
            "{e}"
        );
    }

    #[test]
    fn a_job_that_cannot_work_touches_nothing() {
        let (host, result) = run(json!({"media": "sd"}), |h| h);
        assert!(
            result
                .unwrap_err()
                .message()
                .contains("control_switch_local_cmd")
        );
        assert!(host.trace().is_empty(), "{:?}", host.trace());
    }

    #[test]
    fn the_hook_keeps_the_device_off_and_the_console_is_captured() {
        let mut cfg = config();
        cfg["serial_host"] = json!("10.0.0.9");
        cfg["serial_port"] = json!(2000);
        let (host, result) = run(json!({}), |h| {
            h.config(cfg).http(
                "control-host",
                "POST /api/v1/system/setup/provisioning",
                [response(200, "")],
            )
        });
        result.unwrap();
        let trace = host.trace();
        assert_eq!(
            trace[..4],
            [
                "cycle-control-host (device off)",
                "http control-host POST /api/v1/system/setup/provisioning",
                "serial open console",
                "ssh connect control-host",
            ]
        );
    }
}
