//! One lab description (YAML) → a running simulated lab on loopback, with
//! a ready `default.yaml` per device, the agent user's SSH setup, and the
//! HTTP services connectors talk to.
//!
//! ```no_run
//! # fn f() -> anyhow::Result<()> {
//! let lab = labsim::lab::Lab::start("devices: [{name: pi4}]")?;
//! let config = lab.config_path("pi4"); // default.yaml for the CLI
//! let home = lab.home();               // run the CLI with HOME=home
//! lab.dut("pi4").set_fault(labsim::dut::Fault::Refuse);
//! # Ok(()) }
//! ```
//!
//! # Schema
//!
//! Durations are seconds (`0.5`) or strings with a unit (`300ms`, `2s`,
//! `1m`). Every key is optional except device and control host names.
//!
//! ```yaml
//! network: 127.42.7            # first three octets of every address (default: random 127.x.y)
//! runtime:                     # copied into each default.yaml's connector_runtime
//!   poll_interval_seconds: 0.2
//!   serial_retry_seconds: 0.5
//!   control_host_settle_seconds: 0.1
//!   limits: {host_call_timeout: 30}
//! devices:
//!   - name: pi4-01             # also agent_name and the default host name
//!     provision_type: noprovision   # informational (summary, demo)
//!     ip: 127.42.7.10          # default: <network>.<10 + index>
//!     user: ubuntu             # password logins (and test_username)
//!     password: ubuntu
//!     boot_time: 300ms         # power on → up
//!     reboot_time: 500ms       # reboot → up
//!     powered_off: false
//!     serial: true             # ser2net-style console with a boot log
//!     image: {version: 24.04.1, codename: noble, hostname: pi4-01}
//!     control_host: ctl-01     # the card of this device sits behind that host's mux
//!     media: sd                # sd (SDWire / MuxPi) or usb (TypeC mux); default sd
//!     block_device: sda        # the card on the control host
//!     faults: {ssh: refuse, boot: never, boot_delay: 2s, power: hang, serial: silent}
//!     rules:                   # scripted answers (before executed commands)
//!       - {exact: "snap model", stdout: "model pi\n"}
//!       - {regex: "^uname", stdout: "Linux\n", status: 0, delay: 0.1}
//!     config: {env: {EXTRA: "1"}}   # merged into default.yaml
//! control_hosts:
//!   - name: ctl-01
//!     ip: 127.42.7.100         # default: <network>.<100 + index>
//!     rest_port: 8000          # default: 8000 when free, else any
//!     faults: {ssh: none, power: none, provision: "fail: no power" | "drop: 2" | malformed}
//! images:                      # served by the image server at <url>/<name>.img.zst
//!   noble: {version: 24.04.1, codename: noble, hostname: lab, padding: 1048576,
//!           files: {"writable:etc/motd": "hi\n"}, compressed: true,
//!           fault: {slow: 10ms, chunk: 65536} | {truncate: 1000}}
//! key_server:                  # HTTPS on 127.0.0.1 (the lab CA is in extra_ca_certs); tls: false for HTTP
//!   launchpad: {alice: "ssh-ed25519 AAAA... alice@x"}
//!   github: {bob: "ssh-ed25519 AAAA... bob@y"}
//! testflinger_server:
//!   queues: {rpi4: {devices: [pi4-01], allocate_after: 300ms, behaviour: allocate}}
//! ```
//!
//! Files written under the lab directory: `home/.ssh/{id_ed25519,config}`
//! (the agent user: run the CLI with `HOME=<dir>/home`), `labsim-ca.pem`,
//! `<device>/default.yaml`, `<device>/scripts/*` (power scripts),
//! `<control host>/scripts/*`, `cards/<device>.img`.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use anyhow::{Context as _, bail};
use serde::Deserialize;
use serde_json::{Value, json};

use crate::card::{Card, Media};
use crate::control_host::{ControlHost, ProvisionFault};
use crate::dut::{BootFault, Dut, Fault, PowerFault, PowerScripts, Rule};
use crate::image::{Image, ubuntu_os_release};
use crate::keyserver::{KeyServer, Keys};
use crate::tfserver::{Queue, QueueBehaviour, TfServer};
use crate::web::{Reply, WebServer};

/// A duration in the lab YAML.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Dur(pub Duration);

impl<'de> Deserialize<'de> for Dur {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        #[derive(Deserialize)]
        #[serde(untagged)]
        enum Raw {
            N(f64),
            S(String),
        }
        match Raw::deserialize(d)? {
            Raw::N(n) => secs(n).map(Dur).map_err(serde::de::Error::custom),
            Raw::S(s) => parse_duration(&s)
                .map(Dur)
                .map_err(serde::de::Error::custom),
        }
    }
}

fn secs(n: f64) -> Result<Duration, String> {
    if (0.0..1e9).contains(&n) {
        Ok(Duration::from_secs_f64(n))
    } else {
        Err(format!("{n} is not a duration in seconds"))
    }
}

/// Parses `300ms`, `2s`, `1.5m`, `1h` or plain seconds.
pub fn parse_duration(s: &str) -> Result<Duration, String> {
    let s = s.trim();
    let (num, unit) = match s.find(|c: char| c.is_ascii_alphabetic()) {
        Some(i) => s.split_at(i),
        None => (s, "s"),
    };
    let n: f64 = num
        .trim()
        .parse()
        .map_err(|_| format!("`{s}` is not a duration (e.g. 300ms, 2s, 1m)"))?;
    let factor = match unit.trim() {
        "ms" => 0.001,
        "s" => 1.0,
        "m" | "min" => 60.0,
        "h" => 3600.0,
        other => return Err(format!("unknown duration unit `{other}` in `{s}`")),
    };
    secs(n * factor)
}

/// The whole lab.
#[derive(Debug, Clone, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct LabSpec {
    pub network: Option<String>,
    #[serde(default)]
    pub runtime: RuntimeSpec,
    #[serde(default)]
    pub devices: Vec<DeviceSpec>,
    #[serde(default)]
    pub control_hosts: Vec<ControlHostSpec>,
    #[serde(default)]
    pub images: BTreeMap<String, ImageSpec>,
    pub key_server: Option<KeyServerSpec>,
    pub testflinger_server: Option<TfServerSpec>,
}

/// `connector_runtime` values for every device.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct RuntimeSpec {
    pub poll_interval_seconds: f64,
    pub serial_retry_seconds: f64,
    pub control_host_settle_seconds: f64,
    pub limits: Option<Value>,
}

impl Default for RuntimeSpec {
    fn default() -> Self {
        RuntimeSpec {
            poll_interval_seconds: 0.2,
            serial_retry_seconds: 0.5,
            control_host_settle_seconds: 0.1,
            limits: None,
        }
    }
}

/// Fault names of the YAML.
#[derive(Debug, Clone, Default, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct FaultSpec {
    /// `none`, `refuse`, `hang`.
    pub ssh: Option<String>,
    /// `none`, `never`, `slow`.
    pub boot: Option<String>,
    /// Extra boot time of `boot: slow` (default 2 s).
    pub boot_delay: Option<Dur>,
    /// `none`, `fail`, `hang`.
    pub power: Option<String>,
    /// `none`, `silent`, `refuse`.
    pub serial: Option<String>,
    /// Control hosts: `none`, `fail: <message>`, `drop: <n>`, `malformed`.
    pub provision: Option<String>,
}

/// One scripted answer.
#[derive(Debug, Clone, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RuleSpec {
    pub exact: Option<String>,
    pub regex: Option<String>,
    #[serde(default)]
    pub stdout: String,
    #[serde(default)]
    pub stderr: String,
    #[serde(default)]
    pub status: u32,
    pub delay: Option<Dur>,
    pub reboot_after: Option<Dur>,
}

/// An image (built-in image of a device, or one the image server serves).
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct ImageSpec {
    pub version: String,
    pub codename: String,
    pub hostname: Option<String>,
    /// Full os-release text (instead of the Ubuntu one from the version).
    pub os_release: Option<String>,
    /// `label:path` → content.
    pub files: BTreeMap<String, String>,
    pub padding: usize,
    pub compressed: bool,
    pub fault: Option<ImageFaultSpec>,
}

impl Default for ImageSpec {
    fn default() -> Self {
        ImageSpec {
            version: "24.04.1".into(),
            codename: "noble".into(),
            hostname: None,
            os_release: None,
            files: BTreeMap::new(),
            padding: 0,
            compressed: true,
            fault: None,
        }
    }
}

impl ImageSpec {
    /// The image this describes.
    pub fn build(&self, default_hostname: &str) -> Image {
        let mut image = Image::ubuntu(&self.version, &self.codename)
            .hostname(self.hostname.as_deref().unwrap_or(default_hostname));
        if let Some(text) = &self.os_release {
            image = image.os_release(text);
        } else {
            image = image.os_release(&ubuntu_os_release(&self.version, &self.codename));
        }
        for (key, content) in &self.files {
            let (label, path) = key.split_once(':').unwrap_or(("writable", key));
            image = image.file(label, path, content);
        }
        image
    }
}

/// How the image server misbehaves for one image.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ImageFaultSpec {
    /// Delay between chunks.
    pub slow: Option<Dur>,
    /// Chunk size of a slow transfer (default 64 KiB).
    pub chunk: Option<usize>,
    /// Bytes sent before the connection is cut.
    pub truncate: Option<usize>,
}

/// A device under test.
#[derive(Debug, Clone, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct DeviceSpec {
    pub name: String,
    pub provision_type: Option<String>,
    pub ip: Option<String>,
    pub user: Option<String>,
    pub password: Option<String>,
    pub boot_time: Option<Dur>,
    pub reboot_time: Option<Dur>,
    #[serde(default)]
    pub powered_off: bool,
    pub serial: Option<bool>,
    pub image: Option<ImageSpec>,
    pub control_host: Option<String>,
    pub media: Option<String>,
    pub block_device: Option<String>,
    #[serde(default)]
    pub faults: FaultSpec,
    #[serde(default)]
    pub rules: Vec<RuleSpec>,
    pub config: Option<Value>,
}

/// A control host.
#[derive(Debug, Clone, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ControlHostSpec {
    pub name: String,
    pub ip: Option<String>,
    pub rest_port: Option<u16>,
    pub user: Option<String>,
    pub password: Option<String>,
    pub boot_time: Option<Dur>,
    #[serde(default)]
    pub faults: FaultSpec,
}

/// Users and their keys.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct KeyServerSpec {
    pub launchpad: BTreeMap<String, String>,
    pub github: BTreeMap<String, String>,
    /// HTTP 500 answers before the real one, per user.
    pub failures: BTreeMap<String, usize>,
    pub tls: bool,
}

impl Default for KeyServerSpec {
    fn default() -> Self {
        KeyServerSpec {
            launchpad: BTreeMap::new(),
            github: BTreeMap::new(),
            failures: BTreeMap::new(),
            tls: true,
        }
    }
}

/// The Testflinger server's queues.
#[derive(Debug, Clone, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct TfServerSpec {
    #[serde(default)]
    pub queues: BTreeMap<String, QueueSpec>,
}

/// One queue.
#[derive(Debug, Clone, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct QueueSpec {
    /// Device names of this lab.
    #[serde(default)]
    pub devices: Vec<String>,
    pub allocate_after: Option<Dur>,
    /// `allocate` (default), `never`, or a final state (`cancelled`).
    pub behaviour: Option<String>,
}

impl LabSpec {
    /// An empty lab (add devices with [`LabSpec::device`]).
    pub fn new() -> Self {
        LabSpec::default()
    }

    /// Adds a device.
    pub fn device(mut self, device: DeviceSpec) -> Self {
        self.devices.push(device);
        self
    }

    /// Adds a control host.
    pub fn control_host(mut self, host: ControlHostSpec) -> Self {
        self.control_hosts.push(host);
        self
    }

    /// Adds an image to the image server.
    pub fn image(mut self, name: &str, image: ImageSpec) -> Self {
        self.images.insert(name.to_string(), image);
        self
    }

    /// Starts the lab in a temporary directory.
    pub fn start(self) -> anyhow::Result<Lab> {
        let temp = tempfile::tempdir()?;
        let mut lab = Lab::start_spec(self, temp.path())?;
        lab._temp = Some(temp);
        Ok(lab)
    }
}

impl DeviceSpec {
    /// A device with defaults for everything but its name.
    pub fn named(name: &str) -> Self {
        DeviceSpec {
            name: name.to_string(),
            ..Default::default()
        }
    }
}

impl ControlHostSpec {
    /// A control host with defaults for everything but its name.
    pub fn named(name: &str) -> Self {
        ControlHostSpec {
            name: name.to_string(),
            ..Default::default()
        }
    }
}

/// A running simulated device of the lab.
pub struct LabDevice {
    pub spec: DeviceSpec,
    pub dut: Dut,
    pub card: Option<Card>,
    pub scripts: PowerScripts,
    pub config_path: PathBuf,
}

/// A running control host of the lab.
pub struct LabControlHost {
    pub spec: ControlHostSpec,
    pub host: ControlHost,
    pub scripts: PowerScripts,
}

type ImageTable = Arc<Mutex<BTreeMap<String, (bytes::Bytes, Option<ImageFaultSpec>)>>>;

/// A running lab; everything stops when it is dropped.
pub struct Lab {
    dir: PathBuf,
    home: PathBuf,
    network: String,
    devices: Vec<LabDevice>,
    control_hosts: Vec<LabControlHost>,
    images: Option<(WebServer, ImageTable)>,
    keys: Option<KeyServer>,
    tf: Option<TfServer>,
    // Last: the directory outlives the services using it.
    _temp: Option<tempfile::TempDir>,
}

impl Lab {
    /// Starts the lab described by `yaml` in a temporary directory.
    pub fn start(yaml: &str) -> anyhow::Result<Lab> {
        let temp = tempfile::tempdir()?;
        let mut lab = Lab::start_in(yaml, temp.path())?;
        lab._temp = Some(temp);
        Ok(lab)
    }

    /// Starts the lab described by `yaml`, writing its files under `dir`.
    pub fn start_in(yaml: &str, dir: &Path) -> anyhow::Result<Lab> {
        let spec: LabSpec =
            serde_norway::from_str(yaml).context("the lab description is not valid")?;
        Lab::start_spec(spec, dir)
    }

    /// Starts the lab `spec` (built in code), writing its files under `dir`.
    pub fn start_spec(spec: LabSpec, dir: &Path) -> anyhow::Result<Lab> {
        validate(&spec)?;
        std::fs::create_dir_all(dir)?;
        let dir = dir.canonicalize()?;
        let network = match &spec.network {
            Some(n) => n.trim_end_matches('.').to_string(),
            None => random_network(),
        };
        let home = dir.join("home");
        let agent = crate::dut::agent_key(&home)?;
        let ca = crate::tls::write_ca(&dir)?;

        // Cards first: devices boot from them, control hosts flash them.
        let cards_dir = dir.join("cards");
        let mut cards: BTreeMap<String, Card> = BTreeMap::new();
        for d in &spec.devices {
            if d.control_host.is_some() {
                std::fs::create_dir_all(&cards_dir)?;
                let media = match d.media.as_deref().unwrap_or("sd") {
                    "sd" => Media::Sd,
                    "usb" => Media::Usb,
                    other => bail!("device {}: media `{other}` is not sd or usb", d.name),
                };
                let card = Card::new(
                    &cards_dir.join(format!("{}.img", d.name)),
                    d.block_device.as_deref().unwrap_or("sda"),
                    media,
                )?;
                let image = d.image.clone().unwrap_or_default().build(&d.name);
                card.write(&image.to_bytes(0))?;
                cards.insert(d.name.clone(), card);
            }
        }

        let mut devices = Vec::new();
        for (i, d) in spec.devices.iter().enumerate() {
            let ip =
                d.ip.clone()
                    .unwrap_or_else(|| format!("{network}.{}", 10 + i));
            let mut b = Dut::builder(&ip)
                .name(&d.name)
                .user(d.user.as_deref().unwrap_or("ubuntu"))
                .password(d.password.as_deref().unwrap_or("ubuntu"))
                .image(d.image.clone().unwrap_or_default().build(&d.name));
            if let Some(t) = d.boot_time {
                b = b.boot_time(t.0);
            }
            if let Some(t) = d.reboot_time {
                b = b.reboot_down_for(t.0);
            }
            if d.powered_off {
                b = b.powered_off();
            }
            if d.serial.unwrap_or(true) {
                b = b.with_serial();
            }
            if let Some(card) = cards.get(&d.name) {
                b = b.boot_card(card.clone(), "mmcblk0");
            }
            b = b.boot_fault(boot_fault(&d.faults, &d.name)?);
            b = b.power_fault(power_fault(&d.faults, &d.name)?);
            let dut = b
                .start()
                .with_context(|| format!("starting device {} on {ip}", d.name))?;
            dut.set_fault(ssh_fault(&d.faults, &d.name)?);
            for r in &d.rules {
                dut.add_rule(rule(r, &d.name)?);
            }
            if let Some(serial) = dut.serial() {
                match d.faults.serial.as_deref().unwrap_or("none") {
                    "none" => {}
                    "silent" => serial.set_silent(true),
                    "refuse" => serial.refuse(true)?,
                    other => bail!(
                        "device {}: serial fault `{other}` is not none, silent or refuse",
                        d.name
                    ),
                }
            }
            dut.authorize_key(&agent.public_line)?;
            dut.write_client_config(&home, &agent.private_key)?;
            let scripts = dut.write_power_scripts(&dir.join(&d.name).join("scripts"))?;
            devices.push(LabDevice {
                spec: d.clone(),
                dut,
                card: cards.get(&d.name).cloned(),
                scripts,
                config_path: dir.join(&d.name).join("default.yaml"),
            });
        }

        let mut control_hosts = Vec::new();
        for (i, c) in spec.control_hosts.iter().enumerate() {
            let ip =
                c.ip.clone()
                    .unwrap_or_else(|| format!("{network}.{}", 100 + i));
            let mut b = ControlHost::builder(&ip)
                .extra_ca(crate::tls::CA_PEM)
                .provision_fault(provision_fault(&c.faults, &c.name)?);
            let user = c.user.clone().unwrap_or_else(|| "ubuntu".into());
            let password = c.password.clone().unwrap_or_else(|| "ubuntu".into());
            let boot = c.boot_time.map(|t| t.0);
            let bf = boot_fault(&c.faults, &c.name)?;
            let pf = power_fault(&c.faults, &c.name)?;
            let name = c.name.clone();
            b = b.ssh(move |mut d| {
                d = d
                    .name(&name)
                    .user(&user)
                    .password(&password)
                    .boot_fault(bf)
                    .power_fault(pf);
                if let Some(t) = boot {
                    d = d.boot_time(t).reboot_down_for(t);
                }
                d
            });
            if let Some(port) = c.rest_port {
                b = b.rest_port(port);
            }
            let mut target = None;
            for dev in &devices {
                if dev.spec.control_host.as_deref() == Some(&c.name)
                    && let Some(card) = &dev.card
                {
                    b = b.attach_card(card.clone());
                    if target.is_none() {
                        target = Some((dev.dut.handle(), card.clone()));
                    }
                }
            }
            if let Some((h, card)) = target {
                b = b.target(h, card);
            }
            let host = b
                .start()
                .with_context(|| format!("starting control host {} on {ip}", c.name))?;
            host.ssh().set_fault(ssh_fault(&c.faults, &c.name)?);
            host.ssh().authorize_key(&agent.public_line)?;
            host.ssh().write_client_config(&home, &agent.private_key)?;
            let scripts = host
                .ssh()
                .write_power_scripts(&dir.join(&c.name).join("scripts"))?;
            control_hosts.push(LabControlHost {
                spec: c.clone(),
                host,
                scripts,
            });
        }

        let service_ip = format!("{network}.1");
        let images = if spec.images.is_empty() {
            None
        } else {
            let table: ImageTable = Arc::new(Mutex::new(BTreeMap::new()));
            for (name, im) in &spec.images {
                let image = im.build(name);
                let bytes = if im.compressed {
                    image.compressed(im.padding)
                } else {
                    image.to_bytes(im.padding)
                };
                lock(&table).insert(name.clone(), (bytes.into(), im.fault.clone()));
            }
            let t = table.clone();
            let web = WebServer::start(&service_ip, move |r| serve_image(&t, r.path_only()))?;
            Some((web, table))
        };
        let keys = match &spec.key_server {
            None => None,
            Some(k) => {
                let mut keys = Keys::default();
                for (u, text) in &k.launchpad {
                    keys = keys.launchpad(u, text);
                }
                for (u, text) in &k.github {
                    keys = keys.github(u, text);
                }
                for (u, n) in &k.failures {
                    keys = keys.failing(u, *n);
                }
                // The test certificate names 127.0.0.1, not the lab's
                // addresses: HTTPS servers stay there.
                Some(if k.tls {
                    KeyServer::start(keys)?
                } else {
                    KeyServer::start_http_on(&service_ip, keys)?
                })
            }
        };
        let tf = match &spec.testflinger_server {
            None => None,
            Some(t) => {
                let mut queues = BTreeMap::new();
                for (name, q) in &t.queues {
                    let infos = q
                        .devices
                        .iter()
                        .map(|d| {
                            devices
                                .iter()
                                .find(|x| x.spec.name == *d)
                                .map(|x| json!({"device_ip": x.dut.ip(), "agent_name": d}))
                                .with_context(|| format!("queue {name}: no device named {d}"))
                        })
                        .collect::<anyhow::Result<Vec<_>>>()?;
                    let behaviour = match q.behaviour.as_deref().unwrap_or("allocate") {
                        "allocate" => QueueBehaviour::Allocate,
                        "never" => QueueBehaviour::Never,
                        state => QueueBehaviour::EndIn(state.to_string()),
                    };
                    queues.insert(
                        name.clone(),
                        Queue {
                            devices: infos,
                            allocate_after: q
                                .allocate_after
                                .map_or(Duration::from_millis(300), |d| d.0),
                            behaviour,
                        },
                    );
                }
                Some(TfServer::start(&service_ip, queues)?)
            }
        };

        let lab = Lab {
            dir: dir.clone(),
            home,
            network,
            devices,
            control_hosts,
            images,
            keys,
            tf,
            _temp: None,
        };
        for d in &lab.devices {
            let yaml = lab.device_config(d, &spec.runtime, &ca, &agent.private_key)?;
            std::fs::write(&d.config_path, yaml)?;
        }
        Ok(lab)
    }

    fn device_config(
        &self,
        d: &LabDevice,
        runtime: &RuntimeSpec,
        ca: &Path,
        identity: &Path,
    ) -> anyhow::Result<String> {
        let mut cfg = serde_json::Map::new();
        cfg.insert("agent_name".into(), json!(d.spec.name));
        cfg.insert("device_ip".into(), json!(d.dut.ip()));
        if let Some(serial) = d.dut.serial() {
            cfg.insert("serial_host".into(), json!(serial.host()));
            cfg.insert("serial_port".into(), json!(serial.port()));
        }
        cfg.insert(
            "reboot_script".into(),
            json!([d.scripts.reboot.display().to_string()]),
        );
        cfg.insert(
            "poweroff_script".into(),
            json!([d.scripts.off.display().to_string()]),
        );
        cfg.insert(
            "poweron_script".into(),
            json!([d.scripts.on.display().to_string()]),
        );
        let mut rt = serde_json::Map::new();
        rt.insert(
            "ssh_config".into(),
            json!(self.home.join(".ssh/config").display().to_string()),
        );
        rt.insert(
            "identity_files".into(),
            json!([identity.display().to_string()]),
        );
        rt.insert(
            "poll_interval_seconds".into(),
            json!(runtime.poll_interval_seconds),
        );
        rt.insert(
            "serial_retry_seconds".into(),
            json!(runtime.serial_retry_seconds),
        );
        rt.insert(
            "control_host_settle_seconds".into(),
            json!(runtime.control_host_settle_seconds),
        );
        rt.insert("extra_ca_certs".into(), json!([ca.display().to_string()]));
        if let Some(keys) = &self.keys {
            rt.insert("launchpad_keys_url".into(), json!(keys.launchpad_url()));
            rt.insert("github_keys_url".into(), json!(keys.github_url()));
        }
        if let Some(limits) = &runtime.limits {
            rt.insert("limits".into(), limits.clone());
        }
        if let Some(ch_name) = &d.spec.control_host {
            let ch = self.control_host_entry(ch_name)?;
            cfg.insert("control_host".into(), json!(ch.host.ip()));
            cfg.insert(
                "control_user".into(),
                json!(ch.spec.user.clone().unwrap_or_else(|| "ubuntu".into())),
            );
            cfg.insert(
                "control_host_reboot_script".into(),
                json!([ch.scripts.reboot.display().to_string()]),
            );
            if let Some(card) = &d.card {
                if d.spec.media.is_some() {
                    cfg.insert(
                        "control_switch_local_cmd".into(),
                        json!(format!("muxctl {} plug_to_self", card.media().mux_word())),
                    );
                    cfg.insert(
                        "control_switch_device_cmd".into(),
                        json!(format!("muxctl {} set DUT", card.media().mux_word())),
                    );
                } else {
                    cfg.insert("test_device".into(), json!(card.device_path()));
                }
            }
            rt.insert("control_host_url".into(), json!(ch.host.url()));
        }
        cfg.insert("env".into(), json!({"DEVICE_IP": d.dut.ip()}));
        if let Some(Value::Object(extra)) = &d.spec.config {
            for (k, v) in extra {
                match (cfg.get_mut(k), v) {
                    (Some(Value::Object(base)), Value::Object(more)) => {
                        for (k2, v2) in more {
                            base.insert(k2.clone(), v2.clone());
                        }
                    }
                    _ => {
                        cfg.insert(k.clone(), v.clone());
                    }
                }
            }
        }
        if let Some(Value::Object(extra_rt)) = cfg.remove("connector_runtime") {
            rt.extend(extra_rt);
        }
        cfg.insert("connector_runtime".into(), Value::Object(rt));
        let header = format!(
            "# Written by labsim for the simulated device {} ({}).\n",
            d.spec.name,
            d.spec.provision_type.as_deref().unwrap_or("noprovision")
        );
        Ok(header + &serde_norway::to_string(&Value::Object(cfg))?)
    }

    fn device_entry(&self, name: &str) -> anyhow::Result<&LabDevice> {
        self.devices
            .iter()
            .find(|d| d.spec.name == name)
            .with_context(|| format!("the lab has no device named {name}"))
    }

    fn control_host_entry(&self, name: &str) -> anyhow::Result<&LabControlHost> {
        self.control_hosts
            .iter()
            .find(|c| c.spec.name == name)
            .with_context(|| format!("the lab has no control host named {name}"))
    }

    /// The lab directory.
    pub fn dir(&self) -> &Path {
        &self.dir
    }

    /// The agent user's home (`.ssh/config`, `.ssh/id_ed25519`): run the
    /// CLI with `HOME` set to it.
    pub fn home(&self) -> &Path {
        &self.home
    }

    /// The first three octets of the lab's addresses.
    pub fn network(&self) -> &str {
        &self.network
    }

    /// The devices, in the YAML's order.
    pub fn devices(&self) -> &[LabDevice] {
        &self.devices
    }

    /// The control hosts, in the YAML's order.
    pub fn control_hosts(&self) -> &[LabControlHost] {
        &self.control_hosts
    }

    /// Device `name`; panics with the known names if there is none (a
    /// test's typo).
    pub fn device(&self, name: &str) -> &LabDevice {
        self.device_entry(name).unwrap_or_else(|e| panic!("{e}"))
    }

    /// The simulated device `name`.
    pub fn dut(&self, name: &str) -> &Dut {
        &self.device(name).dut
    }

    /// Control host `name`; panics if there is none.
    pub fn control_host(&self, name: &str) -> &ControlHost {
        &self
            .control_host_entry(name)
            .unwrap_or_else(|e| panic!("{e}"))
            .host
    }

    /// The `default.yaml` written for device `name`.
    pub fn config_path(&self, name: &str) -> PathBuf {
        self.device(name).config_path.clone()
    }

    /// The card of device `name` (devices behind a control host).
    pub fn card(&self, name: &str) -> Option<&Card> {
        self.device(name).card.as_ref()
    }

    /// `http://.../<name>.img.zst` (or `.img` when not compressed).
    pub fn image_url(&self, name: &str) -> Option<String> {
        let (web, table) = self.images.as_ref()?;
        let compressed = lock(table)
            .get(name)?
            .0
            .starts_with(&[0x28, 0xb5, 0x2f, 0xfd]);
        Some(format!(
            "{}/{name}.{}",
            web.url(),
            if compressed { "img.zst" } else { "img" }
        ))
    }

    /// Changes how image `name` is served.
    pub fn set_image_fault(&self, name: &str, fault: Option<ImageFaultSpec>) {
        if let Some((_, table)) = &self.images
            && let Some(entry) = lock(table).get_mut(name)
        {
            entry.1 = fault;
        }
    }

    /// The image server, if the lab has images.
    pub fn image_server(&self) -> Option<&WebServer> {
        self.images.as_ref().map(|(w, _)| w)
    }

    /// The key server, if configured.
    pub fn key_server(&self) -> Option<&KeyServer> {
        self.keys.as_ref()
    }

    /// The Testflinger server, if configured.
    pub fn testflinger_server(&self) -> Option<&TfServer> {
        self.tf.as_ref()
    }

    /// A human summary of what runs where.
    pub fn summary(&self) -> String {
        let mut out = format!("labsim lab in {}\n", self.dir.display());
        for d in &self.devices {
            out.push_str(&format!(
                "  device {:<14} {:<11} ssh {}  {}{}\n",
                d.spec.name,
                d.spec.provision_type.as_deref().unwrap_or("noprovision"),
                d.dut.addr(),
                d.dut
                    .serial()
                    .map(|s| format!("serial {}  ", s.addr()))
                    .unwrap_or_default(),
                d.config_path.display()
            ));
        }
        for c in &self.control_hosts {
            out.push_str(&format!(
                "  control host {:<8} ssh {}  rest {}\n",
                c.spec.name,
                c.host.ssh().addr(),
                c.host.url()
            ));
        }
        if let Some((web, table)) = &self.images {
            let names: Vec<String> = lock(table).keys().cloned().collect();
            for name in &names {
                out.push_str(&format!(
                    "  image  {name:<14} {}\n",
                    self.image_url(name).unwrap_or_else(|| web.url())
                ));
            }
        }
        if let Some(k) = &self.keys {
            out.push_str(&format!(
                "  key server           {}\n",
                k.github_url().replace("/{user}.keys", "")
            ));
        }
        if let Some(t) = &self.tf {
            out.push_str(&format!("  testflinger server   {}\n", t.url()));
        }
        out.push_str(&format!("  agent home           {}\n", self.home.display()));
        out
    }
}

fn lock<T>(m: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|e| e.into_inner())
}

fn serve_image(table: &ImageTable, path: &str) -> Reply {
    let name = path
        .trim_start_matches('/')
        .trim_end_matches(".zst")
        .trim_end_matches(".img");
    let Some((bytes, fault)) = lock(table).get(name).cloned() else {
        return Reply::status_text(404, "no such image");
    };
    match fault {
        Some(ImageFaultSpec {
            truncate: Some(n), ..
        }) => Reply::Truncated {
            body: bytes,
            send: n,
        },
        Some(ImageFaultSpec {
            slow: Some(delay),
            chunk,
            ..
        }) => Reply::Slow {
            body: bytes,
            chunk: chunk.unwrap_or(64 << 10),
            delay: delay.0,
        },
        _ => Reply::bytes(bytes),
    }
}

fn random_network() -> String {
    use rand::RngExt as _;
    let mut rng = rand::rng();
    format!(
        "127.{}.{}",
        rng.random_range(16..250u8),
        rng.random_range(0..=255u8)
    )
}

fn validate(spec: &LabSpec) -> anyhow::Result<()> {
    let mut names = std::collections::HashSet::new();
    for n in spec
        .devices
        .iter()
        .map(|d| &d.name)
        .chain(spec.control_hosts.iter().map(|c| &c.name))
    {
        if n.is_empty() || n.contains(['/', '\\', ' ']) || n.starts_with('.') {
            bail!("`{n}` is not a usable device name (it names a directory)");
        }
        if ["home", "cards"].contains(&n.as_str()) || !names.insert(n.clone()) {
            bail!("the name `{n}` is used twice or reserved");
        }
    }
    for d in &spec.devices {
        if let Some(ch) = &d.control_host
            && !spec.control_hosts.iter().any(|c| &c.name == ch)
        {
            bail!(
                "device {}: control_host `{ch}` is not in control_hosts",
                d.name
            );
        }
    }
    Ok(())
}

fn ssh_fault(f: &FaultSpec, who: &str) -> anyhow::Result<Fault> {
    Ok(match f.ssh.as_deref().unwrap_or("none") {
        "none" => Fault::None,
        "refuse" => Fault::Refuse,
        "hang" => Fault::Hang,
        other => bail!("{who}: ssh fault `{other}` is not none, refuse or hang"),
    })
}

fn boot_fault(f: &FaultSpec, who: &str) -> anyhow::Result<BootFault> {
    Ok(match f.boot.as_deref().unwrap_or("none") {
        "none" => BootFault::None,
        "never" => BootFault::Never,
        "slow" => BootFault::Slow(f.boot_delay.map_or(Duration::from_secs(2), |d| d.0)),
        other => bail!("{who}: boot fault `{other}` is not none, never or slow"),
    })
}

fn power_fault(f: &FaultSpec, who: &str) -> anyhow::Result<PowerFault> {
    Ok(match f.power.as_deref().unwrap_or("none") {
        "none" => PowerFault::None,
        "fail" => PowerFault::Fail,
        "hang" => PowerFault::Hang,
        other => bail!("{who}: power fault `{other}` is not none, fail or hang"),
    })
}

fn provision_fault(f: &FaultSpec, who: &str) -> anyhow::Result<ProvisionFault> {
    let text = f.provision.as_deref().unwrap_or("none").trim();
    Ok(if text == "none" {
        ProvisionFault::None
    } else if text == "malformed" {
        ProvisionFault::MalformedEvent
    } else if let Some(msg) = text.strip_prefix("fail") {
        ProvisionFault::Fail(msg.trim_start_matches(':').trim().to_string())
    } else if let Some(n) = text.strip_prefix("drop") {
        ProvisionFault::DropStreamAfter(
            n.trim_start_matches(':')
                .trim()
                .parse()
                .with_context(|| format!("{who}: `drop: <n>` needs a number"))?,
        )
    } else {
        bail!(
            "{who}: provision fault `{text}` is not none, fail: <message>, drop: <n> or malformed"
        )
    })
}

fn rule(r: &RuleSpec, who: &str) -> anyhow::Result<Rule> {
    let mut rule = match (&r.exact, &r.regex) {
        (Some(e), None) => Rule::exact(e),
        (None, Some(re)) => Rule::regex(re)?,
        _ => bail!("{who}: a rule needs exactly one of `exact` or `regex`"),
    };
    rule = rule
        .status(r.status)
        .stdout(r.stdout.clone())
        .stderr(r.stderr.clone());
    if let Some(d) = r.delay {
        rule = rule.delay(d.0);
    }
    if let Some(d) = r.reboot_after {
        rule = rule.then_reboot(d.0);
    }
    Ok(rule)
}

#[cfg(test)]
mod tests {
    use super::*;

    const LAB: &str = r#"
network: 127.77.3
runtime: {poll_interval_seconds: 0.1}
devices:
  - name: pi4
    boot_time: 100ms
    image: {version: 22.04.4, codename: jammy, hostname: pi4-lab}
    rules: [{exact: "uname -m", stdout: "aarch64\n"}]
    config: {env: {EXTRA: "1"}, connector_runtime: {limits: {host_call_timeout: 5}}}
  - name: rpi-mux
    control_host: ctl
    media: sd
    serial: false
control_hosts:
  - name: ctl
    rest_port: 0
images:
  noble: {version: 24.04.1, codename: noble, padding: 1000}
key_server:
  github: {bob: "ssh-ed25519 AAAAC3NzaC1lZDI1NTE5AAAAIBdRN9kYK2U60WZ484Ru2OW08/CacxZed4nNrs9EVTET bob@x"}
testflinger_server:
  queues: {rpi4: {devices: [pi4], allocate_after: 100ms}}
"#;

    #[test]
    fn a_yaml_lab_starts_and_writes_configs() {
        let lab = Lab::start(LAB).unwrap();
        let pi4 = lab.dut("pi4");
        assert_eq!(pi4.ip(), "127.77.3.10");
        assert_eq!(lab.dut("rpi-mux").ip(), "127.77.3.11");
        assert_eq!(lab.control_host("ctl").ip(), "127.77.3.100");
        let cfg: Value =
            serde_norway::from_str(&std::fs::read_to_string(lab.config_path("pi4")).unwrap())
                .unwrap();
        assert_eq!(cfg["device_ip"], "127.77.3.10");
        assert_eq!(cfg["agent_name"], "pi4");
        assert_eq!(cfg["env"]["DEVICE_IP"], "127.77.3.10");
        assert_eq!(cfg["env"]["EXTRA"], "1");
        assert_eq!(cfg["serial_port"], pi4.serial().unwrap().port());
        assert_eq!(cfg["connector_runtime"]["poll_interval_seconds"], 0.1);
        assert_eq!(cfg["connector_runtime"]["limits"]["host_call_timeout"], 5);
        assert!(
            cfg["connector_runtime"]["github_keys_url"]
                .as_str()
                .unwrap()
                .starts_with("https://127.0.0.1:")
        );
        let mux: Value =
            serde_norway::from_str(&std::fs::read_to_string(lab.config_path("rpi-mux")).unwrap())
                .unwrap();
        assert_eq!(mux["control_host"], "127.77.3.100");
        assert_eq!(
            mux["control_switch_local_cmd"],
            "muxctl sdwire plug_to_self"
        );
        assert_eq!(
            mux["connector_runtime"]["control_host_url"],
            lab.control_host("ctl").url()
        );
        assert!(mux.get("serial_host").is_none());
        // The agent's key and ssh config reach every host.
        let key = lab.home().join(".ssh/id_ed25519");
        let out = crate::client::exec(
            pi4.addr(),
            "ubuntu",
            crate::client::Auth::Key(&key),
            "uname -m",
            b"",
            Duration::from_secs(10),
        )
        .unwrap();
        assert_eq!(out.stdout_text(), "aarch64\n");
        let out = crate::client::exec(
            pi4.addr(),
            "ubuntu",
            crate::client::Auth::Key(&key),
            "hostname",
            b"",
            Duration::from_secs(10),
        )
        .unwrap();
        assert_eq!(out.stdout_text(), "pi4-lab\n");
        let ssh_config = std::fs::read_to_string(lab.home().join(".ssh/config")).unwrap();
        assert!(ssh_config.contains("Host 127.77.3.100"), "{ssh_config}");
        assert_eq!(
            lab.card("rpi-mux")
                .unwrap()
                .image()
                .unwrap()
                .hostname_text()
                .unwrap(),
            "rpi-mux"
        );
        let url = lab.image_url("noble").unwrap();
        assert!(url.ends_with("/noble.img.zst"), "{url}");
        assert!(lab.testflinger_server().is_some());
        assert!(lab.summary().contains("device pi4"));
    }

    fn get(url: &str, header: &str) -> Vec<u8> {
        use std::io::{Read, Write};
        let rest = url.trim_start_matches("http://");
        let (addr, path) = rest.split_once('/').unwrap();
        let mut s = std::net::TcpStream::connect(addr).unwrap();
        s.set_read_timeout(Some(Duration::from_secs(10))).unwrap();
        write!(
            s,
            "GET /{path} HTTP/1.1\r\nHost: x\r\n{header}Connection: close\r\n\r\n"
        )
        .unwrap();
        let mut out = Vec::new();
        let _ = s.read_to_end(&mut out);
        out
    }

    fn body(response: &[u8]) -> &[u8] {
        let at = response.windows(4).position(|w| w == b"\r\n\r\n").unwrap();
        &response[at + 4..]
    }

    #[test]
    fn the_image_server_serves_ranges_and_faults() {
        let lab = Lab::start(
            "images: {noble: {version: 24.04.1, codename: noble, padding: 100000}, raw: {compressed: false}}",
        )
        .unwrap();
        let url = lab.image_url("noble").unwrap();
        let full = get(&url, "");
        let image = zstd::decode_all(body(&full)).unwrap();
        assert_eq!(
            Image::parse(&image).unwrap().pretty_name().unwrap(),
            "Ubuntu 24.04.1 LTS"
        );
        let part = get(&url, "Range: bytes=0-3\r\n");
        assert!(part.starts_with(b"HTTP/1.1 206"));
        assert_eq!(body(&part), [0x28, 0xb5, 0x2f, 0xfd]);
        assert!(lab.image_url("raw").unwrap().ends_with("/raw.img"));
        lab.set_image_fault(
            "noble",
            Some(ImageFaultSpec {
                slow: None,
                chunk: None,
                truncate: Some(10),
            }),
        );
        assert_eq!(body(&get(&url, "")).len(), 10);
        lab.set_image_fault(
            "noble",
            Some(ImageFaultSpec {
                slow: Some(Dur(Duration::from_millis(1))),
                chunk: Some(4096),
                truncate: None,
            }),
        );
        assert_eq!(body(&get(&url, "")), body(&full));
        assert!(
            get(
                &format!("{}/nope.img", lab.image_server().unwrap().url()),
                ""
            )
            .starts_with(b"HTTP/1.1 404")
        );
    }

    #[test]
    fn labs_can_be_built_in_code() {
        let lab = LabSpec::new()
            .device(DeviceSpec {
                control_host: Some("ctl".into()),
                powered_off: true,
                ..DeviceSpec::named("coded")
            })
            .control_host(ControlHostSpec {
                rest_port: Some(0),
                ..ControlHostSpec::named("ctl")
            })
            .image(
                "jammy",
                ImageSpec {
                    version: "22.04.5".into(),
                    codename: "jammy".into(),
                    ..Default::default()
                },
            )
            .start()
            .unwrap();
        assert_eq!(lab.dut("coded").state(), crate::dut::PowerState::Off);
        assert_eq!(lab.control_host("ctl").ssh().cards().len(), 1);
        assert!(lab.image_url("jammy").is_some());
        assert!(lab.config_path("coded").exists());
    }

    #[test]
    fn bad_labs_are_refused_with_the_reason() {
        let err = |yaml: &str| format!("{:#}", Lab::start(yaml).err().unwrap());
        assert!(err("devices: [{name: a}, {name: a}]").contains("used twice"));
        assert!(err("devices: [{name: a, control_host: x}]").contains("not in control_hosts"));
        assert!(err("devices: [{name: a, faults: {ssh: bogus}}]").contains("ssh fault"));
        assert!(err("devices: [{name: a, boot_time: soon}]").contains("not a duration"));
        assert!(err("devicez: []").contains("unknown field"));
        assert_eq!(parse_duration("300ms").unwrap(), Duration::from_millis(300));
        assert_eq!(parse_duration("1.5m").unwrap(), Duration::from_secs(90));
    }
}
