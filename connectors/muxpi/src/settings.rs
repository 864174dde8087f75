//! What one provision run needs, read and checked before anything is
//! touched: the device config keys (reference §4.8 (b)), the job's
//! `provision_data` (§4.8 (c)) and the connector's own timing keys.

use std::time::Duration;

use testflinger_connector::config::Config;
use testflinger_connector::{Error, ErrorKind, Result};

use crate::shell;

/// Default of `control_switch_local_cmd` (storage to the control host).
pub const DEFAULT_LOCAL_CMD: &str = "stm -ts";
/// Default of `control_switch_device_cmd` (storage to the device).
pub const DEFAULT_DEVICE_CMD: &str = "stm -dut";
/// Default of `control_host_reboot_timeout` (reference: 120 s).
pub const DEFAULT_CONTROL_HOST_REBOOT_TIMEOUT: Duration = Duration::from_secs(120);
/// Default pause between readiness checks and retries (`muxpi_poll_seconds`).
/// The reference sleeps 5 s between control-command retries and 10 s
/// between boot checks; polling more often uses a ready device earlier.
pub const DEFAULT_POLL: Duration = Duration::from_secs(2);
/// Default window in which a failing control-host command is retried
/// (`muxpi_control_retry_seconds`; reference: 13 attempts 5 s apart).
pub const DEFAULT_CONTROL_RETRY: Duration = Duration::from_secs(60);
/// Default boot window (`muxpi_boot_timeout_seconds`; reference: 1200 s).
pub const DEFAULT_BOOT_TIMEOUT: Duration = Duration::from_secs(1200);
/// The longest any of the timing keys may be.
const MAX_WAIT: Duration = Duration::from_secs(30 * 24 * 3600);

/// Where the image comes from.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ImageSource {
    /// `provision_data.url`.
    Url(String),
    /// `attachments/provision/<use_attachment>`.
    Attachment(String),
}

/// Which removable medium the job wants (`provision_data.media`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Media {
    /// The SD card behind an SDWire.
    Sd,
    /// The USB stick behind a TypeC mux.
    Usb,
}

impl Media {
    /// The mux word of the mux CLI for this medium.
    pub fn mux_word(self) -> &'static str {
        match self {
            Media::Sd => "sdwire",
            Media::Usb => "typecmux",
        }
    }
}

/// How the storage is switched between the control host and the device.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Switching {
    /// `control_switch_local_cmd` / `control_switch_device_cmd`, with the
    /// block device from `test_device`.
    Commands {
        to_host: String,
        to_device: String,
        test_device: String,
    },
    /// The mux CLI (`<prefix> sdwire|typecmux plug_to_self|set DUT`); the
    /// block device is what `plug_to_self` prints.
    MuxCli { prefix: String, media: Media },
}

/// Everything a run needs, checked.
#[derive(Debug, Clone)]
pub struct Settings {
    pub agent_name: String,
    pub device_ip: Option<String>,
    pub source: ImageSource,
    pub switching: Switching,
    /// Whether `control_switch_local_cmd` names a mux CLI (then the
    /// control host is not rebooted before provisioning).
    pub mux_cli: bool,
    /// Whether `control_host_reboot_script` is a non-empty list.
    pub control_host_reboot_script: bool,
    pub control_host_reboot_timeout: Duration,
    /// Whether `reboot_script` is configured (a missing one is a no-op).
    pub reboot_script: bool,
    pub post_provision_script: Vec<String>,
    pub create_user: bool,
    /// `boot_check_url` with `$DEVICE_IP` replaced.
    pub boot_check_url: Option<String>,
    pub poll: Duration,
    pub control_retry: Duration,
    pub boot_timeout: Duration,
}

/// A timing key: seconds or a duration, within `[min, 30 days]`.
fn timing(cfg: &Config, key: &str, default: Duration, min: Duration) -> Result<Duration> {
    cfg.duration(key)
        .at_least(min)
        .at_most(MAX_WAIT)
        .or(default)
}

impl Settings {
    /// Reads and checks the device config `cfg` and the stage's
    /// `provision_data` and provision attachments.
    pub fn load(cfg: &Config) -> Result<Self> {
        let attachments = testflinger_connector::job::attachments("provision")?;
        Settings::from_parts(cfg, &Config::job_section("provision_data")?, &attachments)
    }

    /// Checks `cfg` (the device config), `data` (`provision_data`) and
    /// `attachments` (names under `attachments/provision/`). The message
    /// of an error says what to fix.
    pub fn from_parts(cfg: &Config, data: &Config, attachments: &[String]) -> Result<Self> {
        let invalid = |message: String| Error::new(ErrorKind::Invalid, message);
        let agent_name = cfg
            .text("agent_name")
            .why("muxpi names its mount points /mnt/<agent_name> and temporary files after it")
            .required("<name of this agent>")?;
        if agent_name.contains('/') || agent_name == "." || agent_name == ".." {
            return Err(invalid(format!(
                "agent_name `{agent_name}` cannot name a folder (/mnt/<agent_name>)"
            )));
        }
        cfg.text("control_host")
            .why("muxpi flashes the image through it")
            .required("<address>")?;
        let device_ip = cfg.text("device_ip").optional()?;

        let source = match (
            data.text("url").optional()?,
            data.text("use_attachment").optional()?,
        ) {
            (Some(url), _) => ImageSource::Url(url),
            (None, Some(name)) => {
                if !attachments.contains(&name) {
                    return Err(Error::new(
                        ErrorKind::NotFound,
                        format!(
                            "provision_data.use_attachment names `{name}`, but the job has no such provision attachment{}",
                            if attachments.is_empty() {
                                String::new()
                            } else {
                                format!(" (it has: {})", attachments.join(", "))
                            }
                        ),
                    ));
                }
                ImageSource::Attachment(name)
            }
            (None, None) => {
                return Err(Error::new(
                    ErrorKind::NotFound,
                    "provision_data must give the image: `url` to download it from, or `use_attachment` to name a provision attachment",
                ));
            }
        };

        let local_cmd = cfg.text("control_switch_local_cmd").optional()?;
        let mux_cli = shell::uses_mux_cli(local_cmd.as_deref().unwrap_or("")).map_err(invalid)?;
        let media = match data
            .text("media")
            .one_of(&["sd", "usb"])
            .optional()?
            .as_deref()
        {
            Some("sd") => Some(Media::Sd),
            Some(_) => Some(Media::Usb),
            None => None,
        };
        let switching = match media {
            Some(media) => {
                let prefix = shell::mux_prefix(local_cmd.as_deref().unwrap_or("")).map_err(invalid)?.ok_or_else(|| {
                    invalid(format!(
                        "provision_data.media is set, so control_switch_local_cmd must name a mux CLI followed by `sdwire` or `typecmux` (for example `sudo muxctl sdwire set TS`); it is {}",
                        local_cmd.as_deref().map_or("not set".to_string(), |c| format!("`{c}`"))
                    ))
                })?;
                Switching::MuxCli { prefix, media }
            }
            None => Switching::Commands {
                to_host: local_cmd.unwrap_or_else(|| DEFAULT_LOCAL_CMD.into()),
                to_device: cfg
                    .text("control_switch_device_cmd")
                    .or(DEFAULT_DEVICE_CMD.into())?,
                test_device: cfg
                    .text("test_device")
                    .why("without provision_data.media it names the control host's block device to flash")
                    .required("/dev/sda")?,
            },
        };

        let control_host_reboot_script = cfg
            .commands("control_host_reboot_script")
            .optional()?
            .is_some_and(|l| !l.is_empty());
        let reboot_script = cfg.commands("reboot_script").optional()?.is_some();
        let post_provision_script = cfg.commands("post_provision_script").or_default()?;
        let create_user = data.flag("create_user").or(true)?;
        let boot_check_url = match data.text("boot_check_url").optional()? {
            Some(url) if url.contains("$DEVICE_IP") => {
                let ip = cfg
                    .text("device_ip")
                    .why("provision_data.boot_check_url uses $DEVICE_IP")
                    .required("<address of the device>")?;
                Some(url.replace("$DEVICE_IP", &ip))
            }
            url => url,
        };
        if boot_check_url.is_none() {
            cfg.text("device_ip")
                .why("muxpi logs in to the device to check that the image booted")
                .required("<address of the device>")?;
        }

        Ok(Settings {
            agent_name,
            device_ip,
            source,
            switching,
            mux_cli,
            control_host_reboot_script,
            control_host_reboot_timeout: timing(
                cfg,
                "control_host_reboot_timeout",
                DEFAULT_CONTROL_HOST_REBOOT_TIMEOUT,
                Duration::ZERO,
            )?,
            reboot_script,
            post_provision_script,
            create_user,
            boot_check_url,
            poll: timing(
                cfg,
                "muxpi_poll_seconds",
                DEFAULT_POLL,
                Duration::from_millis(10),
            )?,
            control_retry: timing(
                cfg,
                "muxpi_control_retry_seconds",
                DEFAULT_CONTROL_RETRY,
                Duration::ZERO,
            )?,
            boot_timeout: timing(
                cfg,
                "muxpi_boot_timeout_seconds",
                DEFAULT_BOOT_TIMEOUT,
                Duration::ZERO,
            )?,
        })
    }

    /// `/mnt/<agent_name>`: where the image's partitions are mounted.
    pub fn mount_root(&self) -> String {
        format!("/mnt/{}", self.agent_name)
    }

    /// `/tmp/<agent_name>`: where seed files are uploaded first.
    pub fn remote_tmp(&self) -> String {
        format!("/tmp/{}", self.agent_name)
    }
}

#[cfg(test)]
mod tests {
    use serde_json::{Value, json};

    use super::*;

    fn base() -> Value {
        json!({"agent_name": "pi-1", "control_host": "10.0.0.2", "device_ip": "10.0.0.3", "test_device": "/dev/sda"})
    }

    fn parse(config: Value, data: Value) -> core::result::Result<Settings, String> {
        let data = Config::from_job_json("provision_data", data).map_err(|e| e.to_string())?;
        Settings::from_parts(
            &Config::from_device_json(config),
            &data,
            &["img.zst".to_string()],
        )
        .map_err(|e| e.to_string())
    }

    #[test]
    fn defaults_follow_the_reference() {
        let s = parse(base(), json!({"url": "http://h/i.zst"})).unwrap();
        assert_eq!(s.source, ImageSource::Url("http://h/i.zst".into()));
        assert_eq!(
            s.switching,
            Switching::Commands {
                to_host: "stm -ts".into(),
                to_device: "stm -dut".into(),
                test_device: "/dev/sda".into()
            }
        );
        assert!(!s.mux_cli && s.create_user && !s.reboot_script);
        assert_eq!(s.control_host_reboot_timeout, Duration::from_secs(120));
        assert_eq!(s.control_retry, Duration::from_secs(60));
        assert_eq!(s.boot_timeout, Duration::from_secs(1200));
        assert_eq!(s.mount_root(), "/mnt/pi-1");
        assert_eq!(s.remote_tmp(), "/tmp/pi-1");
    }

    #[test]
    fn media_needs_a_mux_cli() {
        let mut c = base();
        c["control_switch_local_cmd"] = json!("sudo muxctl sdwire set TS");
        let s = parse(c.clone(), json!({"url": "http://h/i", "media": "usb"})).unwrap();
        assert!(s.mux_cli);
        assert_eq!(
            s.switching,
            Switching::MuxCli {
                prefix: "sudo muxctl".into(),
                media: Media::Usb
            }
        );
        let err = parse(base(), json!({"url": "http://h/i", "media": "sd"})).unwrap_err();
        assert!(err.contains("control_switch_local_cmd"), "{err}");
        let err = parse(c, json!({"url": "http://h/i", "media": "nvme"})).unwrap_err();
        assert!(err.contains("\"sd\" or \"usb\""), "{err}");
    }

    #[test]
    fn sources_and_their_problems() {
        let s = parse(base(), json!({"use_attachment": "img.zst"})).unwrap();
        assert_eq!(s.source, ImageSource::Attachment("img.zst".into()));
        let err = parse(base(), json!({"use_attachment": "other.zst"})).unwrap_err();
        assert!(
            err.contains("other.zst") && err.contains("img.zst"),
            "{err}"
        );
        let err = parse(base(), json!({})).unwrap_err();
        assert!(
            err.contains("url") && err.contains("use_attachment"),
            "{err}"
        );
        let err = parse(base(), json!(["url"])).unwrap_err();
        assert!(err.contains("mapping"), "{err}");
    }

    #[test]
    fn missing_and_malformed_config() {
        let mut c = base();
        c.as_object_mut().unwrap().remove("test_device");
        assert!(
            parse(c, json!({"url": "http://h/i"}))
                .unwrap_err()
                .contains("test_device")
        );
        let mut c = base();
        c.as_object_mut().unwrap().remove("agent_name");
        assert!(
            parse(c, json!({"url": "http://h/i"}))
                .unwrap_err()
                .contains("agent_name")
        );
        let mut c = base();
        c["post_provision_script"] = json!("reboot");
        assert!(
            parse(c, json!({"url": "http://h/i"}))
                .unwrap_err()
                .contains("post_provision_script")
        );
        let mut c = base();
        c["muxpi_poll_seconds"] = json!(0);
        assert!(
            parse(c, json!({"url": "http://h/i"}))
                .unwrap_err()
                .contains("muxpi_poll_seconds")
        );
        let mut c = base();
        c["control_host_reboot_timeout"] = json!("90");
        c["control_host_reboot_script"] = json!(["reboot-ctl"]);
        let s = parse(c, json!({"url": "http://h/i", "create_user": false})).unwrap();
        assert_eq!(s.control_host_reboot_timeout, Duration::from_secs(90));
        assert!(s.control_host_reboot_script && !s.create_user);
        let err = parse(base(), json!({"url": "http://h/i", "create_user": "no"})).unwrap_err();
        assert!(err.contains("create_user"), "{err}");
    }

    #[test]
    fn boot_check_url_and_device_ip() {
        let s = parse(
            base(),
            json!({"url": "http://h/i", "boot_check_url": "http://$DEVICE_IP:8080/ok"}),
        )
        .unwrap();
        assert_eq!(s.boot_check_url.as_deref(), Some("http://10.0.0.3:8080/ok"));
        let mut c = base();
        c.as_object_mut().unwrap().remove("device_ip");
        let err = parse(
            c.clone(),
            json!({"url": "http://h/i", "boot_check_url": "http://$DEVICE_IP/"}),
        )
        .unwrap_err();
        assert!(err.contains("device_ip"), "{err}");
        // Without $DEVICE_IP the URL alone checks the boot.
        assert!(
            parse(
                c.clone(),
                json!({"url": "http://h/i", "boot_check_url": "http://10.1.1.1/"})
            )
            .is_ok()
        );
        assert!(
            parse(c, json!({"url": "http://h/i"}))
                .unwrap_err()
                .contains("device_ip")
        );
    }
}
