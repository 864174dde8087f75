//! `muxpi provision` (reference §4.8) against a simulated lab: a control
//! host with the card behind its mux (`stm`, `muxctl`), the device booting
//! from that card, an image server, power scripts and a serial console.
//! The tests check what reached the control host and the device, in
//! order, what the card holds afterwards and what the device booted.

use std::time::{Duration, Instant};

use labsim::card::{Card, Media, MuxSide};
use labsim::control_host::ControlHost;
use labsim::dut::{BootFault, Dut, Event, PowerState};
use labsim::image::Image;
use labsim::web::{Reply, WebServer};
use serde_json::{Value, json};

use crate::common::{Run, RunDir};

/// The device, the control host and the image server each on an address
/// of their own (SSH client entries are per address).
const DUT_IP: &str = "127.0.10.1";
const CH_IP: &str = "127.0.10.2";
const WEB_IP: &str = "127.0.10.3";
const AGENT: &str = "mux-agent";

const CLASSIC_META: &str = include_str!("../../connectors/muxpi/data/classic/meta-data");
const CLASSIC_USER: &str = include_str!("../../connectors/muxpi/data/classic/user-data");
const CE_OEM_USER: &str = include_str!("../../connectors/muxpi/data/ce-oem-iot/user-data");
const UC20: &str = include_str!("../../connectors/muxpi/data/uc20/99_nocloud.cfg");
const OEM_CONFIG: &str = include_str!("../../connectors/muxpi/data/pi-desktop/oem-config.service");
const PRESEED: &str = include_str!("../../connectors/muxpi/data/pi-desktop/preseed.cfg");
const PLUCKY_META: &str = include_str!("../../connectors/muxpi/data/pi-desktop-plucky/meta-data");
const PLUCKY_USER: &str = include_str!("../../connectors/muxpi/data/pi-desktop-plucky/user-data");
const SUDOERS: &str = "ubuntu ALL=(ALL) NOPASSWD:ALL\n";
const BUILDSTAMP: &str = r"'iot-[a-z]+-[a-z-]*(classic-(server|desktop)|core)-\K[0-9]+'";

/// How a test lab differs from the default one.
struct Opts {
    /// The medium the device boots from.
    media: Media,
    /// Authorise the agent key on the device (else the boot check logs in
    /// with the job's password first).
    dut_key: bool,
    serial: bool,
    boot_fault: BootFault,
}

impl Default for Opts {
    fn default() -> Self {
        Opts {
            media: Media::Sd,
            dut_key: true,
            serial: false,
            boot_fault: BootFault::None,
        }
    }
}

/// A simulated muxpi lab and a run directory whose HOME reaches it.
struct Lab {
    rd: RunDir,
    dut: Dut,
    ch: ControlHost,
    card: Card,
    /// A second card on the other mux (media tests).
    other: Option<Card>,
    web: Option<WebServer>,
    /// `default.yaml` keys (raw YAML values), in order; later sets replace.
    config: Vec<(String, String)>,
    _cards: tempfile::TempDir,
}

/// The image the card holds before provisioning (the device runs it).
fn old_image() -> Image {
    Image::ubuntu("22.04.4", "jammy").hostname("old-image")
}

fn lab(opts: Opts) -> Lab {
    let cards = tempfile::tempdir().unwrap();
    let (block, other_block, other_media) = match opts.media {
        Media::Sd => ("sda", "sdb", Media::Usb),
        Media::Usb => ("sdb", "sda", Media::Sd),
    };
    let card = Card::new(&cards.path().join("boot.img"), block, opts.media).unwrap();
    card.write(&old_image().to_bytes(1000)).unwrap();
    let mut dut = Dut::builder(DUT_IP)
        .name("pi")
        .boot_card(card.clone(), "mmcblk0")
        .boot_time(Duration::from_millis(150))
        .reboot_down_for(Duration::from_millis(150))
        .boot_fault(opts.boot_fault);
    if opts.serial {
        dut = dut.with_serial();
    }
    let dut = dut.start().unwrap();
    let mut ch = ControlHost::builder(CH_IP)
        .ssh(|d| {
            d.name("muxpi-ctl")
                .boot_time(Duration::from_millis(150))
                .reboot_down_for(Duration::from_millis(300))
        })
        .attach_card(card.clone());
    let other = (opts.media == Media::Usb)
        .then(|| Card::new(&cards.path().join("other.img"), other_block, other_media).unwrap());
    if let Some(o) = &other {
        ch = ch.attach_card(o.clone());
    }
    let ch = ch.start().unwrap();
    let rd = RunDir::new();
    let key = ch.ssh().configure_client(&rd.home()).unwrap();
    if opts.dut_key {
        dut.configure_client(&rd.home()).unwrap();
    } else {
        dut.write_client_config(&rd.home(), &key.private_key)
            .unwrap();
    }
    let scripts = dut.write_power_scripts(&rd.path().join("scripts")).unwrap();
    let mut config = vec![
        ("agent_name".to_string(), AGENT.to_string()),
        ("device_ip".into(), DUT_IP.into()),
        ("control_host".into(), CH_IP.into()),
        ("test_device".into(), "/dev/sda".into()),
        (
            "reboot_script".into(),
            format!("[{}]", scripts.reboot.display()),
        ),
        ("muxpi_poll_seconds".into(), "0.05".into()),
        ("muxpi_control_retry_seconds".into(), "1".into()),
        ("muxpi_boot_timeout_seconds".into(), "20".into()),
        (
            "connector_runtime".into(),
            format!(
                "{{poll_interval_seconds: 0.1, control_host_settle_seconds: 0.1, control_host_url: \"{}\"}}",
                ch.url()
            ),
        ),
    ];
    if let Some(serial) = dut.serial() {
        config.push(("serial_host".into(), serial.host()));
        config.push(("serial_port".into(), serial.port().to_string()));
    }
    Lab {
        rd,
        dut,
        ch,
        card,
        other,
        web: None,
        config,
        _cards: cards,
    }
}

impl Lab {
    /// Sets a `default.yaml` key (raw YAML value).
    fn set(&mut self, key: &str, value: &str) {
        self.config.retain(|(k, _)| k != key);
        self.config.push((key.to_string(), value.to_string()));
    }

    fn unset(&mut self, key: &str) {
        self.config.retain(|(k, _)| k != key);
    }

    /// Serves `bytes` as `/img.zst` (or with `reply` for faults).
    fn serve(&mut self, reply: Reply) -> String {
        let web = WebServer::start(WEB_IP, move |_| reply.clone()).unwrap();
        let url = format!("{}/images/img.zst", web.url());
        self.web = Some(web);
        url
    }

    /// Writes `default.yaml` and `testflinger.json` with `provision_data`.
    fn write(&self, provision_data: Value) {
        let yaml: String = self
            .config
            .iter()
            .map(|(k, v)| format!("{k}: {v}\n"))
            .collect();
        self.rd.write("default.yaml", &yaml);
        self.rd.write(
            "testflinger.json",
            &json!({"job_id": "mux-1", "provision_data": provision_data}).to_string(),
        );
    }

    fn provision(&self, provision_data: Value) -> Run {
        self.write(provision_data);
        self.rd.stage("muxpi", "provision")
    }

    /// Gives the control host a working `control_host_reboot_script` (the
    /// simulated power controller's).
    fn set_control_host_reboot_script(&mut self) {
        let scripts = self
            .ch
            .ssh()
            .write_power_scripts(&self.rd.path().join("ch-scripts"))
            .unwrap();
        self.set(
            "control_host_reboot_script",
            &format!("[{}]", scripts.reboot.display()),
        );
    }

    /// Runs `provision` with the files already written, skipping the
    /// pre-provision hook's control-host power cycle, so only the
    /// connector's own control-host reboot is exercised.
    fn provision_without_pre_hook(&self) -> Run {
        crate::common::finish(
            self.rd
                .command(&[
                    "muxpi",
                    "provision",
                    "-c",
                    "default.yaml",
                    "testflinger.json",
                ])
                .env("DISABLE_CONTROL_HOST_POWERCYCLE", "1")
                .output()
                .unwrap(),
        )
    }

    /// Commands the control host received, in order.
    fn ch_commands(&self) -> Vec<String> {
        self.ch.ssh().command_lines()
    }

    /// The exception message of the error JSON.
    fn error_message(&self) -> String {
        self.rd.json("device-connector-error.json")["provision_exception_info"]["exception_message"]
            .as_str()
            .unwrap_or_default()
            .to_string()
    }

    fn error_name(&self) -> String {
        self.rd.json("device-connector-error.json")["provision_exception_info"]["exception_name"]
            .as_str()
            .unwrap_or_default()
            .to_string()
    }
}

/// The command `ssh.upload` runs for `path`.
fn upload(path: &str) -> String {
    format!("umask 077 && cat > {path} && chmod 644 {path}")
}

fn mnt(path: &str) -> String {
    format!("/mnt/{AGENT}/{path}")
}

fn strings(v: &[&str]) -> Vec<String> {
    v.iter().map(|s| s.to_string()).collect()
}

/// The commands that flash `dev` and mount the standard two partitions.
fn flash_and_mount(dev: &str) -> Vec<String> {
    let mut c = strings(&[
        &format!("sudo umount {dev}*"),
        &format!("zstdcat | sudo dd of={dev} bs=16M"),
        "sync",
        &format!("sudo hdparm -z {dev}"),
        &format!("lsblk -o NAME,LABEL -J {dev}"),
    ]);
    let base = dev.trim_start_matches("/dev/");
    for (i, label) in ["system-boot", "writable"].iter().enumerate() {
        c.push(format!("sudo mkdir -p {}", mnt(label)));
        c.push(format!("sudo mount /dev/{base}{} {}", i + 1, mnt(label)));
    }
    c
}

/// The detection queries up to (and including) the one that matches
/// `up_to` (`tegra`, or a path of the reference's list).
fn detection(up_to: &str) -> Vec<String> {
    let mut c = vec![format!(
        "grep -oP {BUILDSTAMP} {}",
        mnt("writable/.disk/info")
    )];
    if up_to == "ce-oem" {
        return c;
    }
    c.push(format!(
        "ls -d {}/*-tegra*/ >/dev/null 2>&1",
        mnt("writable/lib/firmware")
    ));
    if up_to == "tegra" {
        return c;
    }
    for p in [
        "writable/usr/bin/firefox",
        "writable/etc",
        "writable/system-data",
        "ubuntu-seed/snaps",
        "cloudimg-rootfs/etc/cloud/cloud.cfg",
    ] {
        c.push(format!("test -e {}", mnt(p)));
        if p == up_to {
            break;
        }
    }
    c
}

/// Upload then copy of a seed file.
fn install(seed: &str, dest: &str, first: bool) -> Vec<String> {
    let tmp = format!("/tmp/{AGENT}/{seed}");
    let mut c = Vec::new();
    if first {
        c.push(format!("mkdir -p /tmp/{AGENT}"));
    }
    c.push(upload(&tmp));
    c.push(format!("sudo cp {tmp} {dest}"));
    c
}

/// The files of partition `label` of the image on `card`.
fn files(card: &Card, label: &str) -> std::collections::BTreeMap<String, String> {
    card.image()
        .unwrap()
        .partitions
        .iter()
        .find(|p| p.label == label)
        .unwrap_or_else(|| panic!("no partition {label}"))
        .files
        .clone()
}

/// What the reference's fixed sleeps add up to for a run on a device
/// that is already up, with the image type found after `failed_probes`
/// unsuccessful detection queries (each is retried 13 times, 5 s apart):
/// the 5 s pause after the SDWire step, the `umount` that finds nothing
/// mounted (retried), and the 10 s before the first boot check.
fn reference_sleeps(umount_fails: bool, failed_probes: u32) -> u32 {
    let retried = 12 * 5;
    5 + if umount_fails { retried } else { 0 } + failed_probes * retried + 10
}

#[test]
fn flashes_a_url_image_seeds_a_login_and_boots_it() {
    let mut lab = lab(Opts {
        serial: true,
        ..Opts::default()
    });
    let image = Image::ubuntu("24.04.2", "noble")
        .hostname("fresh-noble")
        .dir("writable", "etc/sudoers.d/");
    let url = lab.serve(Reply::bytes(image.compressed(2 << 20)));
    assert_eq!(lab.dut.state(), PowerState::Up);
    let started = Instant::now();
    let run = lab.provision(json!({"url": url}));
    let took = started.elapsed();
    assert_eq!(run.code, 0, "{}", run.stderr);

    // The control host: switch, flash, rescan, mount, detect, seed,
    // unmount, switch back. Nothing else, in this order.
    let nocloud = mnt("writable/var/lib/cloud/seed/nocloud-net");
    let mut want = vec!["stm -ts".to_string()];
    want.extend(flash_and_mount("/dev/sda"));
    want.extend(detection("writable/etc"));
    want.push(format!("sudo mkdir -p {nocloud}"));
    want.extend(install(
        "classic-meta-data",
        &format!("{nocloud}/meta-data"),
        true,
    ));
    want.extend(install(
        "classic-user-data",
        &format!("{nocloud}/user-data"),
        false,
    ));
    want.push(format!(
        "sudo rm -f {}/99-fake?cloud.cfg",
        mnt("writable/etc/cloud/cloud.cfg.d")
    ));
    want.push(format!("sudo umount {}", mnt("system-boot")));
    want.push(format!("sudo umount {}", mnt("writable")));
    want.push("stm -dut".into());
    assert_eq!(lab.ch_commands(), want);
    // The image went through the mux to the control host and back.
    assert_eq!(lab.card.switches(), [MuxSide::ControlHost, MuxSide::Dut]);
    assert!(
        lab.ch
            .ssh()
            .history()
            .iter()
            .any(|e| matches!(e, Event::Wrote { path, .. } if path == "/dev/sda"))
    );

    // The card holds the image, seeded, with its padding intact.
    let on_card = lab.card.image().unwrap();
    let writable = files(&lab.card, "writable");
    assert_eq!(
        writable["var/lib/cloud/seed/nocloud-net/meta-data"],
        CLASSIC_META
    );
    assert_eq!(
        writable["var/lib/cloud/seed/nocloud-net/user-data"],
        CLASSIC_USER
    );
    assert!(!writable.contains_key("etc/cloud/cloud.cfg.d/99-fake_cloud.cfg"));
    assert!(
        !writable.contains_key("etc/sudoers.d/ubuntu"),
        "not for classic images"
    );
    assert_eq!(files(&lab.card, "system-boot"), image.partitions[0].files);
    let bytes = lab.card.bytes().unwrap();
    let raw = image.to_bytes(2 << 20);
    assert_eq!(bytes.len(), on_card.header().len() + (2 << 20));
    assert!(bytes.ends_with(&raw[image.header().len()..]));

    // The device was power cycled once, booted the new image, and let the
    // agent's key in without running anything.
    assert_eq!(lab.dut.power_events(), ["reboot"]);
    assert_eq!(
        lab.dut.installed_image().unwrap().hostname_text().unwrap(),
        "fresh-noble"
    );
    assert!(
        lab.dut.command_lines().is_empty(),
        "{:?}",
        lab.dut.command_lines()
    );
    assert!(!lab.dut.logins().is_empty());
    // Its console was captured while provisioning.
    let serial = lab.rd.read("provision-serial.log");
    assert!(serial.contains("Hostname set to <fresh-noble>"), "{serial}");

    // The log: the reference's markers, the flash report, the pre-hook.
    for line in [
        "Running pre-provision hook",
        "BEGIN provision",
        "control_host_reboot_script not defined, skip rebooting control host",
        "Device /dev/sda might not be mounted",
        "Flashing Test image img.zst on /dev/sda",
        "Image type detected: ubuntu",
        "Creating Test User",
        "Booting Test Image",
        "END provision",
    ] {
        assert!(
            run.stderr.contains(line),
            "missing {line:?}:\n{}",
            run.stderr
        );
    }
    assert!(
        run.stderr.contains("Flashed img.zst onto /dev/sda ("),
        "{}",
        run.stderr
    );
    assert_eq!(
        lab.ch.setup_calls().len(),
        1,
        "the pre-hook's setup request"
    );
    assert!(!lab.rd.exists("device-connector-error.json"));
    // Detection took 3 "no" answers before `writable/etc`; the reference
    // would have retried each for a minute.
    eprintln!(
        "muxpi provision on the simulator: {:.2} s; the reference's fixed sleeps alone: {} s",
        took.as_secs_f64(),
        reference_sleeps(true, 3)
    );
}

#[test]
fn an_attachment_is_flashed_as_it_is_and_the_password_installs_the_key() {
    let lab = lab(Opts {
        dut_key: false,
        ..Opts::default()
    });
    let image = Image::ubuntu("24.04.2", "noble").hostname("from-attachment");
    let raw = image.to_bytes(100_000);
    // Not compressed: zstdcat passes it through, as the reference relies on.
    std::fs::create_dir_all(lab.rd.path().join("attachments/provision")).unwrap();
    std::fs::write(lab.rd.path().join("attachments/provision/disk.img"), &raw).unwrap();
    let run = lab.provision(json!({"use_attachment": "disk.img", "create_user": false}));
    assert_eq!(run.code, 0, "{}", run.stderr);
    assert_eq!(
        lab.ch_commands(),
        strings(&[
            "stm -ts",
            "sudo umount /dev/sda*",
            "zstdcat | sudo dd of=/dev/sda bs=16M",
            "sync",
            "sudo hdparm -z /dev/sda",
            "stm -dut",
        ])
    );
    assert_eq!(lab.card.bytes().unwrap(), raw, "exactly the attachment");
    assert!(
        run.stderr
            .contains("Skipping test user creation (create_user=False)")
    );
    // The boot check logged in with the password and installed the key.
    let logins: Vec<&str> = lab.dut.logins().iter().map(|l| l.method).collect();
    assert!(logins.contains(&"password"), "{logins:?}");
    assert_eq!(logins.last(), Some(&"publickey"));
    let keys = std::fs::read_to_string(lab.dut.home().join(".ssh/authorized_keys")).unwrap();
    assert!(keys.contains("labsim-agent"), "{keys}");
    assert_eq!(lab.dut.command_lines().len(), 1, "the key installation");
    assert_eq!(
        lab.dut.installed_image().unwrap().hostname_text().unwrap(),
        "from-attachment"
    );
}

#[test]
fn media_sd_switches_both_muxes_through_the_mux_cli() {
    let mut lab = lab(Opts::default());
    lab.set(
        "control_switch_local_cmd",
        "\"sudo -n muxctl sdwire set TS\"",
    );
    // Without a mux CLI this would reboot the control host; with one, not.
    lab.set_control_host_reboot_script();
    lab.unset("test_device");
    let image = Image::ubuntu("24.04.2", "noble").hostname("sd-image");
    let url = lab.serve(Reply::bytes(image.compressed(4096)));
    lab.write(json!({"url": url, "media": "sd", "create_user": false}));
    let run = lab.provision_without_pre_hook();
    assert_eq!(run.code, 0, "{}", run.stderr);
    assert_eq!(
        lab.ch_commands(),
        strings(&[
            "sudo -n muxctl sdwire plug_to_self",
            "sudo -n muxctl typecmux plug_to_self",
            "sudo umount /dev/sda*",
            "zstdcat | sudo dd of=/dev/sda bs=16M",
            "sync",
            "sudo hdparm -z /dev/sda",
            "sudo -n muxctl sdwire set DUT",
        ])
    );
    assert!(
        lab.ch.ssh().power_events().is_empty(),
        "no control host reboot"
    );
    assert_eq!(
        lab.dut.installed_image().unwrap().hostname_text().unwrap(),
        "sd-image"
    );
    // The missing TypeC mux was only noted.
    assert!(
        run.stderr
            .contains("typecmux plug_to_self` failed (ignored)"),
        "{}",
        run.stderr
    );
}

#[test]
fn media_usb_flashes_the_usb_stick() {
    let mut lab = lab(Opts {
        media: Media::Usb,
        ..Opts::default()
    });
    lab.set("control_switch_local_cmd", "\"muxctl typecmux set TS\"");
    let image = Image::ubuntu("24.04.2", "noble").hostname("usb-image");
    let url = lab.serve(Reply::bytes(image.compressed(4096)));
    let run = lab.provision(json!({"url": url, "media": "usb", "create_user": false}));
    assert_eq!(run.code, 0, "{}", run.stderr);
    assert_eq!(
        lab.ch_commands(),
        strings(&[
            "muxctl sdwire plug_to_self",
            "muxctl typecmux plug_to_self",
            "sudo umount /dev/sdb*",
            "zstdcat | sudo dd of=/dev/sdb bs=16M",
            "sync",
            "sudo hdparm -z /dev/sdb",
            "muxctl typecmux set DUT",
        ])
    );
    // As in the reference, the other medium stays on the control host.
    assert_eq!(lab.other.as_ref().unwrap().side(), MuxSide::ControlHost);
    assert_eq!(lab.card.side(), MuxSide::Dut);
    assert_eq!(
        lab.dut.installed_image().unwrap().hostname_text().unwrap(),
        "usb-image"
    );
}

#[test]
fn media_without_a_mux_cli_is_refused_before_anything_runs() {
    let mut lab = lab(Opts::default());
    for (cmd, shown) in [
        (None, "not set"),
        (Some("\"stm -ts\""), "`stm -ts`"),
        (Some("\"sdwire set TS\""), "`sdwire set TS`"),
    ] {
        match cmd {
            Some(c) => lab.set("control_switch_local_cmd", c),
            None => lab.unset("control_switch_local_cmd"),
        }
        let _ = std::fs::remove_file(lab.rd.path().join("device-connector-error.json"));
        let run = lab.provision(json!({"url": "http://127.0.10.3:9/x.zst", "media": "sd"}));
        assert_eq!(run.code, 1);
        let message = lab.error_message();
        assert!(
            message.contains("control_switch_local_cmd") && message.contains(shown),
            "{message}"
        );
        assert_eq!(lab.error_name(), "ProvisioningError");
    }
    assert!(lab.ch_commands().is_empty());
    assert!(lab.ch.setup_calls().is_empty(), "not even the pre-hook");
    assert!(lab.dut.power_events().is_empty());
}

#[test]
fn without_a_mux_cli_the_control_host_is_rebooted_and_polled_until_back() {
    let mut lab = lab(Opts::default());
    let dir = lab.rd.path().join("scripts");
    let ch_scripts = lab.ch.ssh().write_power_scripts(&dir).unwrap();
    let dut_scripts = lab.dut.write_power_scripts(&dir).unwrap();
    lab.set(
        "control_host_reboot_script",
        &format!("[{}]", ch_scripts.reboot.display()),
    );
    lab.set(
        "poweroff_script",
        &format!("[{}]", dut_scripts.off.display()),
    );
    lab.set("poweron_script", &format!("[{}]", dut_scripts.on.display()));
    lab.set("control_host_reboot_timeout", "30");
    let image = Image::ubuntu("24.04.2", "noble").hostname("after-reboot");
    let url = lab.serve(Reply::bytes(image.compressed(4096)));
    let started = Instant::now();
    let run = lab.provision(json!({"url": url, "create_user": false}));
    assert_eq!(run.code, 0, "{}", run.stderr);
    // The pre-hook power cycles the control host (REST power-off, then its
    // script) with the device kept off; then, without a mux CLI, the
    // control host and the device are rebooted once more (the reference's
    // double reboot), and the control host is polled until it answers.
    assert_eq!(lab.ch.ssh().power_events(), ["reboot", "reboot"]);
    assert_eq!(lab.dut.power_events(), ["off", "on", "reboot", "reboot"]);
    assert!(
        lab.ch
            .requests()
            .iter()
            .any(|r| r.path == "/api/v1/system/poweroff")
    );
    let commands = lab.ch_commands();
    let first_switch = commands.iter().position(|c| c == "stm -ts").unwrap();
    assert!(
        commands[..first_switch].iter().all(|c| c == "/bin/true") && first_switch >= 1,
        "only readiness probes before switching: {commands:?}"
    );
    assert_eq!(commands.last().unwrap(), "stm -dut");
    assert!(
        run.stderr.contains("The control host is back after"),
        "{}",
        run.stderr
    );
    // The reference sleeps the whole reboot timeout (30 s here) and 5 s more.
    eprintln!(
        "muxpi provision with two control host reboots: {:.2} s (reference: at least {} s of sleeps)",
        started.elapsed().as_secs_f64(),
        30 + 5 + 60 + 10
    );
    assert_eq!(
        lab.dut.installed_image().unwrap().hostname_text().unwrap(),
        "after-reboot"
    );
}

#[test]
fn post_provision_commands_run_on_the_control_host_and_failures_only_warn() {
    let mut lab = lab(Opts::default());
    lab.set(
        "post_provision_script",
        "[\"echo post > /tmp/post-marker\", \"false\"]",
    );
    lab.set("muxpi_control_retry_seconds", "0.3");
    let image = Image::ubuntu("24.04.2", "noble").hostname("post");
    let url = lab.serve(Reply::bytes(image.compressed(4096)));
    let run = lab.provision(json!({"url": url, "create_user": false}));
    assert_eq!(run.code, 0, "{}", run.stderr);
    let commands = lab.ch_commands();
    let n = commands.len();
    assert_eq!(commands[n - 1], "stm -dut");
    assert_eq!(commands[5], "echo post > /tmp/post-marker");
    // `false` is retried within the (short) window, then only warned about.
    assert!(
        commands[6..n - 1]
            .iter()
            .all(|c| c == "false" || c == "/bin/true")
    );
    assert!(commands[6..n - 1].iter().filter(|c| *c == "false").count() >= 2);
    assert_eq!(
        std::fs::read_to_string(lab.ch.ssh().path("/tmp/post-marker")).unwrap(),
        "post\n"
    );
    assert!(run.stderr.contains("Error running false"), "{}", run.stderr);
}

#[test]
fn boot_check_url_is_polled_until_it_answers_200() {
    let mut lab = lab(Opts::default());
    let dut = lab.dut.handle();
    let ready = WebServer::start(DUT_IP, move |_| {
        let booted = dut.state() == PowerState::Up
            && dut
                .installed_image()
                .and_then(|i| i.hostname_text())
                .is_some_and(|h| h == "web-ready");
        if booted {
            Reply::text("ok")
        } else {
            Reply::status(503)
        }
    })
    .unwrap();
    let image = Image::ubuntu("24.04.2", "noble").hostname("web-ready");
    let url = lab.serve(Reply::bytes(image.compressed(4096)));
    // No agent key on the device: the SSH check would need a login.
    lab.dut.authorize_key("ssh-ed25519 AAAA nothing").unwrap();
    let check = format!("http://$DEVICE_IP:{}/ready", ready.addr().port());
    let logins_before = lab.dut.logins().len();
    let run = lab.provision(json!({"url": url, "create_user": false, "boot_check_url": check}));
    assert_eq!(run.code, 0, "{}", run.stderr);
    let requests = ready.requests();
    assert!(!requests.is_empty());
    assert!(requests.iter().all(|r| r.path == "/ready"));
    assert_eq!(lab.dut.logins().len(), logins_before, "no SSH login");
    assert!(
        run.stderr.contains(&format!(
            "until http://{DUT_IP}:{}/ready answers 200",
            ready.addr().port()
        )),
        "{}",
        run.stderr
    );
}

// ---- image types and their seeds ----

/// Provisions `image` (a URL, create_user on) and returns the run and the
/// control host's commands after the flash-and-mount part.
fn seeded(image: &Image, mounts: &[&str]) -> (Lab, Run, Vec<String>) {
    let mut lab = lab(Opts::default());
    let url = lab.serve(Reply::bytes(image.compressed(4096)));
    let run = lab.provision(json!({"url": url}));
    assert_eq!(run.code, 0, "{}", run.stderr);
    let commands = lab.ch_commands();
    let mut head = strings(&["stm -ts"]);
    head.extend(flash_and_mount("/dev/sda").into_iter().take(5));
    for (i, label) in mounts.iter().enumerate() {
        head.push(format!("sudo mkdir -p {}", mnt(label)));
        head.push(format!("sudo mount /dev/sda{} {}", i + 1, mnt(label)));
    }
    assert_eq!(commands[..head.len()], head[..], "{commands:?}");
    let mut tail = Vec::new();
    for label in mounts {
        tail.push(format!("sudo umount {}", mnt(label)));
    }
    tail.push("stm -dut".into());
    assert_eq!(commands[commands.len() - tail.len()..], tail[..]);
    let middle = commands[head.len()..commands.len() - tail.len()].to_vec();
    (lab, run, middle)
}

fn sudoers_step() -> Vec<String> {
    let tmp = format!("/tmp/{AGENT}/sudoers");
    vec![
        upload(&tmp),
        format!(
            "sudo install -m 0440 {tmp} {}",
            mnt("writable/etc/sudoers.d/ubuntu")
        ),
    ]
}

fn classic_steps(base: &str, first: bool) -> Vec<String> {
    let dir = format!("{base}/var/lib/cloud/seed/nocloud-net");
    let mut c = vec![format!("sudo mkdir -p {dir}")];
    c.extend(install(
        "classic-meta-data",
        &format!("{dir}/meta-data"),
        first,
    ));
    c.extend(install(
        "classic-user-data",
        &format!("{dir}/user-data"),
        false,
    ));
    c
}

#[test]
fn ce_oem_iot_before_24_gets_its_user_data_sudo_and_the_classic_seed() {
    let image = Image::ubuntu("22.04.5", "jammy")
        .hostname("ce-jammy")
        .file(
            "writable",
            ".disk/info",
            "iot-pi-jammy-classic-server-2204\n",
        )
        .dir("writable", "etc/sudoers.d/");
    let (lab, run, middle) = seeded(&image, &["system-boot", "writable"]);
    let mut want = detection("ce-oem");
    want.extend(install(
        "ce-oem-iot-user-data",
        &mnt("system-boot/user-data"),
        true,
    ));
    want.extend(sudoers_step());
    want.extend(classic_steps(&mnt("writable"), false));
    assert_eq!(middle, want);
    assert!(
        run.stderr
            .contains("Image type detected: ce-oem-iot-before-24")
    );
    assert_eq!(files(&lab.card, "system-boot")["user-data"], CE_OEM_USER);
    let w = files(&lab.card, "writable");
    assert_eq!(w["etc/sudoers.d/ubuntu"], SUDOERS);
    assert_eq!(w["var/lib/cloud/seed/nocloud-net/user-data"], CLASSIC_USER);
    assert_eq!(w["var/lib/cloud/seed/nocloud-net/meta-data"], CLASSIC_META);
    // Classic fake-cloud removal is for `ubuntu` images only.
    assert!(w.contains_key("etc/cloud/cloud.cfg.d/99-fake_cloud.cfg"));
}

#[test]
fn ce_oem_iot_24_and_beyond_seeds_nocloud_sudo_and_the_classic_seed() {
    let image = Image::ubuntu("24.04.2", "noble")
        .hostname("ce-noble")
        .file("writable", ".disk/info", "iot-kria-noble-core-24\n")
        .dir("writable", "etc/sudoers.d/");
    let (lab, run, middle) = seeded(&image, &["system-boot", "writable"]);
    let nocloud = mnt("writable/var/lib/cloud/seed/nocloud");
    let mut want = detection("ce-oem");
    want.push(format!("sudo mkdir -p {nocloud}"));
    want.extend(install(
        "ce-oem-iot-user-data",
        &format!("{nocloud}/user-data"),
        true,
    ));
    want.extend(sudoers_step());
    want.extend(classic_steps(&mnt("writable"), false));
    assert_eq!(middle, want);
    assert!(
        run.stderr
            .contains("Image type detected: ce-oem-iot-24-and-beyond")
    );
    let w = files(&lab.card, "writable");
    assert_eq!(w["var/lib/cloud/seed/nocloud/user-data"], CE_OEM_USER);
    assert_eq!(w["etc/sudoers.d/ubuntu"], SUDOERS);
    assert_eq!(w["var/lib/cloud/seed/nocloud-net/user-data"], CLASSIC_USER);
}

#[test]
fn tegra_gets_nocloud_user_data_no_grub_timeouts_and_sudo() {
    let image = Image::ubuntu("22.04.5", "jammy")
        .hostname("jetson")
        .dir("writable", "lib/firmware/nv-tegra234/")
        .file(
            "writable",
            "boot/grub/grub.cfg",
            "set timeout_style=menu\nset timeout=5\nmenuentry 'L4T' {\n}\n",
        )
        .file(
            "writable",
            "etc/default/grub",
            "GRUB_DEFAULT=0\nGRUB_TIMEOUT=10\n",
        )
        .file("writable", "etc/default/keyboard", "XKBLAYOUT=us\n")
        .dir("writable", "etc/sudoers.d/");
    let (lab, run, middle) = seeded(&image, &["system-boot", "writable"]);
    assert_eq!(middle[..2], detection("tegra")[..]);
    assert!(run.stderr.contains("Image type detected: tegra"));
    let w = files(&lab.card, "writable");
    assert_eq!(w["var/lib/cloud/seed/nocloud/user-data"], CLASSIC_USER);
    assert!(!w.contains_key("var/lib/cloud/seed/nocloud/meta-data"));
    assert_eq!(
        w["boot/grub/grub.cfg"],
        "set timeout_style=menu\nset timeout=0\nmenuentry 'L4T' {\n}\n"
    );
    assert_eq!(w["etc/default/grub"], "GRUB_DEFAULT=0\nGRUB_TIMEOUT=0\n");
    assert_eq!(w["etc/default/keyboard"], "XKBLAYOUT=us\n");
    assert_eq!(w["etc/sudoers.d/ubuntu"], SUDOERS);
}

/// A Raspberry Pi desktop image of `version`.
fn pi_desktop(version: &str, codename: &str) -> Image {
    Image::ubuntu(version, codename)
        .hostname("pi-desktop")
        .file("writable", "usr/bin/firefox", "#!/bin/sh\n")
        .file(
            "writable",
            "etc/systemd/system/multi-user.target.wants/NetworkManager.service",
            "-> /usr/lib/systemd/system/NetworkManager.service\n",
        )
        .dir("writable", "etc/sudoers.d/")
}

#[test]
fn pi_desktop_before_25_gets_oem_config_a_preseed_and_networkmanager() {
    let (lab, run, middle) = seeded(
        &pi_desktop("24.04.1", "noble"),
        &["system-boot", "writable"],
    );
    let mut want = detection("writable/usr/bin/firefox");
    want.push(format!("cat {}", mnt("writable/etc/os-release")));
    want.extend(install(
        "pi-desktop-oem-config.service",
        &mnt("writable/etc/systemd/system/oem-config.service"),
        true,
    ));
    want.extend(install(
        "pi-desktop-preseed.cfg",
        &mnt("writable/preseed.cfg"),
        false,
    ));
    let wants = mnt("writable/etc/systemd/system/oem-config.target.wants");
    want.push(format!("sudo mkdir -p {wants}"));
    want.push(format!(
        "sudo cp -a {} {wants}/",
        mnt("writable/etc/systemd/system/multi-user.target.wants/NetworkManager.service")
    ));
    want.extend(sudoers_step());
    assert_eq!(middle, want);
    assert!(run.stderr.contains("Image type detected: pi-desktop"));
    let w = files(&lab.card, "writable");
    assert_eq!(w["etc/systemd/system/oem-config.service"], OEM_CONFIG);
    assert_eq!(w["preseed.cfg"], PRESEED);
    assert_eq!(
        w["etc/systemd/system/oem-config.target.wants/NetworkManager.service"],
        "-> /usr/lib/systemd/system/NetworkManager.service\n"
    );
    assert_eq!(w["etc/sudoers.d/ubuntu"], SUDOERS);
    assert!(!w.contains_key("var/lib/cloud/seed/nocloud-net/user-data"));
}

#[test]
fn pi_desktop_from_25_gets_cloud_init_seeds() {
    let (lab, run, middle) = seeded(&pi_desktop("25.04", "plucky"), &["system-boot", "writable"]);
    let nocloud = mnt("writable/var/lib/cloud/seed/nocloud-net");
    let mut want = detection("writable/usr/bin/firefox");
    want.push(format!("cat {}", mnt("writable/etc/os-release")));
    want.push(format!("sudo mkdir -p {nocloud}"));
    want.extend(install(
        "pi-desktop-plucky-meta-data",
        &format!("{nocloud}/meta-data"),
        true,
    ));
    want.extend(install(
        "pi-desktop-plucky-user-data",
        &format!("{nocloud}/user-data"),
        false,
    ));
    want.push(format!(
        "sudo rm -f {}/99-fake?cloud.cfg",
        mnt("writable/etc/cloud/cloud.cfg.d")
    ));
    let wants = mnt("writable/etc/systemd/system/oem-config.target.wants");
    want.push(format!("sudo mkdir -p {wants}"));
    want.push(format!(
        "sudo cp -a {} {wants}/",
        mnt("writable/etc/systemd/system/multi-user.target.wants/NetworkManager.service")
    ));
    want.extend(sudoers_step());
    assert_eq!(middle, want);
    assert!(run.stderr.contains("Image type detected: pi-desktop"));
    let w = files(&lab.card, "writable");
    assert_eq!(w["var/lib/cloud/seed/nocloud-net/meta-data"], PLUCKY_META);
    assert_eq!(w["var/lib/cloud/seed/nocloud-net/user-data"], PLUCKY_USER);
    assert!(!w.contains_key("etc/cloud/cloud.cfg.d/99-fake_cloud.cfg"));
    assert!(w.contains_key("etc/systemd/system/oem-config.target.wants/NetworkManager.service"));
    assert!(!w.contains_key("preseed.cfg"));
    assert_eq!(w["etc/sudoers.d/ubuntu"], SUDOERS);
}

#[test]
fn core_and_cloud_images_get_the_classic_seed_in_their_root() {
    // Ubuntu Core 16/18: the seed goes under writable/system-data.
    let core = Image::new()
        .file("system-boot", "uboot.env", "x")
        .dir("writable", "system-data/")
        .file("writable", "system-data/etc/hostname", "core18\n");
    let (lab, run, middle) = seeded(&core, &["system-boot", "writable"]);
    let mut want = detection("writable/system-data");
    want.extend(classic_steps(&mnt("writable/system-data"), true));
    assert_eq!(middle, want);
    assert!(run.stderr.contains("Image type detected: core"));
    let w = files(&lab.card, "writable");
    assert_eq!(
        w["system-data/var/lib/cloud/seed/nocloud-net/user-data"],
        CLASSIC_USER
    );
    drop(lab);

    // Ubuntu cloud images: the seed goes into cloudimg-rootfs.
    let cpc = Image::new()
        .file(
            "cloudimg-rootfs",
            "etc/cloud/cloud.cfg",
            "datasource_list: [NoCloud]\n",
        )
        .file("cloudimg-rootfs", "etc/hostname", "cloudimg\n");
    let (lab, run, middle) = seeded(&cpc, &["cloudimg-rootfs"]);
    let mut want = detection("cloudimg-rootfs/etc/cloud/cloud.cfg");
    want.extend(classic_steps(&mnt("cloudimg-rootfs"), true));
    assert_eq!(middle, want);
    assert!(run.stderr.contains("Image type detected: ubuntu-cpc"));
    let c = files(&lab.card, "cloudimg-rootfs");
    assert_eq!(c["var/lib/cloud/seed/nocloud-net/meta-data"], CLASSIC_META);
    assert_eq!(c["var/lib/cloud/seed/nocloud-net/user-data"], CLASSIC_USER);
}

#[test]
fn core20_gets_a_cloud_cfg_drop_in_in_ubuntu_seed() {
    let image = Image::new()
        .file("ubuntu-seed", "snaps/pc_1.snap", "snap")
        .partition("ubuntu-boot")
        .file("ubuntu-data", "etc/hostname", "core24\n");
    let (lab, run, middle) = seeded(&image, &["ubuntu-seed", "ubuntu-boot", "ubuntu-data"]);
    let dir = mnt("ubuntu-seed/data/etc/cloud/cloud.cfg.d");
    let mut want = detection("ubuntu-seed/snaps");
    want.push(format!("sudo mkdir -p {dir}"));
    want.extend(install(
        "uc20-99_nocloud.cfg",
        &format!("{dir}/99_nocloud.cfg"),
        true,
    ));
    assert_eq!(middle, want);
    assert!(run.stderr.contains("Image type detected: core20"));
    assert_eq!(
        files(&lab.card, "ubuntu-seed")["data/etc/cloud/cloud.cfg.d/99_nocloud.cfg"],
        UC20
    );
}

#[test]
fn an_unknown_image_gets_the_classic_seed_where_writable_would_be() {
    let image = Image::new()
        .file("data", "README", "not an Ubuntu image\n")
        .file("data", "etc/hostname", "mystery\n");
    let (lab, run, middle) = seeded(&image, &["data"]);
    let mut want = detection("none");
    want.extend(classic_steps(&mnt("writable"), true));
    assert_eq!(middle, want);
    assert!(run.stderr.contains("Image type detected: unknown"));
    // As in the reference the seed lands in /mnt/<agent>/writable, which
    // is not a partition of this image: the image itself is unchanged.
    assert_eq!(files(&lab.card, "data").len(), 2);
    assert_eq!(
        std::fs::read_to_string(
            lab.ch
                .ssh()
                .path(&mnt("writable/var/lib/cloud/seed/nocloud-net/user-data"))
        )
        .unwrap(),
        CLASSIC_USER
    );
}

// ---- faults ----

#[test]
fn an_unreachable_control_host_fails_after_the_retry_window() {
    let mut lab = lab(Opts::default());
    lab.set("muxpi_control_retry_seconds", "0.5");
    lab.ch.ssh().set_fault(labsim::dut::Fault::Refuse);
    let run = lab.provision(json!({"url": "http://127.0.10.3:9/img.zst"}));
    assert_eq!(run.code, 1);
    assert_eq!(lab.error_name(), "ProvisioningError");
    let message = lab.error_message();
    assert!(
        message.contains("Cannot switch the storage to the control host")
            && message.contains("`stm -ts` on the control host failed after"),
        "{message}"
    );
    let retries = run
        .stderr
        .matches("Control command failed, retrying")
        .count();
    assert!(retries >= 2, "{}", run.stderr);
    assert!(lab.ch_commands().is_empty());
    assert!(lab.card.switches().is_empty());
    assert!(lab.dut.power_events().is_empty());
}

#[test]
fn a_truncated_download_fails_and_leaves_no_bootable_half_image() {
    let mut lab = lab(Opts::default());
    let image = Image::ubuntu("24.04.2", "noble").hostname("never");
    let body = image.to_bytes(1 << 20);
    let url = lab.serve(Reply::Truncated {
        body: body.clone().into(),
        send: body.len() / 2,
    });
    let run = lab.provision(json!({"url": url}));
    assert_eq!(run.code, 1);
    assert_eq!(lab.error_name(), "ProvisioningError");
    let message = lab.error_message();
    assert!(
        message.contains("Error while piping the test image to /dev/sda")
            && message.contains("truncated")
            && message.contains("first MiB was zeroed so that no partial image can boot"),
        "{message}"
    );
    // The card was wiped and switched back; the device was not rebooted.
    assert_eq!(
        lab.ch_commands(),
        strings(&[
            "stm -ts",
            "sudo umount /dev/sda*",
            "zstdcat | sudo dd of=/dev/sda bs=16M",
            "sudo dd if=/dev/zero of=/dev/sda bs=1M count=1 conv=fsync",
            "stm -dut",
        ])
    );
    let card = lab.card.bytes().unwrap();
    assert!(card.len() >= 1 << 20 && card[..1 << 20].iter().all(|b| *b == 0));
    assert!(lab.card.image().is_err(), "no image header left");
    assert_eq!(lab.card.side(), MuxSide::Dut);
    assert!(lab.dut.power_events().is_empty());
    // Still running what it ran before.
    assert_eq!(
        lab.dut.installed_image().unwrap().hostname_text().unwrap(),
        "old-image"
    );
}

#[test]
fn a_device_that_never_boots_fails_the_boot_check() {
    let mut lab = lab(Opts {
        boot_fault: BootFault::Never,
        ..Opts::default()
    });
    lab.set("muxpi_boot_timeout_seconds", "1");
    let image = Image::ubuntu("24.04.2", "noble").hostname("stuck");
    let url = lab.serve(Reply::bytes(image.compressed(4096)));
    let run = lab.provision(json!({"url": url, "create_user": false}));
    assert_eq!(run.code, 1);
    assert_eq!(lab.error_name(), "ProvisioningError");
    let message = lab.error_message();
    assert!(
        message.starts_with("Failed to boot test image!"),
        "{message}"
    );
    assert!(message.contains("within 1 s"), "{message}");
    assert_eq!(lab.dut.power_events(), ["reboot"]);
    assert_eq!(lab.card.side(), MuxSide::Dut);
}

#[test]
fn a_failing_reboot_script_needs_recovery() {
    let mut lab = lab(Opts::default());
    lab.dut.set_power_fault(labsim::dut::PowerFault::Fail);
    let image = Image::ubuntu("24.04.2", "noble").hostname("no-power");
    let url = lab.serve(Reply::bytes(image.compressed(4096)));
    lab.set("muxpi_boot_timeout_seconds", "1");
    let run = lab.provision(json!({"url": url, "create_user": false}));
    assert_eq!(run.code, 46, "{}", run.stderr);
    assert_eq!(lab.error_name(), "RecoveryError");
    let message = lab.error_message();
    assert!(message.contains("reboot_script"), "{message}");
    // The storage was already back with the device.
    assert_eq!(lab.ch_commands().last().unwrap(), "stm -dut");
    assert_eq!(lab.card.side(), MuxSide::Dut);
}

#[test]
fn a_missing_attachment_fails_before_anything_runs() {
    let lab = lab(Opts::default());
    let run = lab.provision(json!({"use_attachment": "nope.img"}));
    assert_eq!(run.code, 1);
    assert!(
        lab.error_message().contains("nope.img"),
        "{}",
        lab.error_message()
    );
    assert!(lab.ch_commands().is_empty());
    assert!(lab.ch.setup_calls().is_empty());
}

#[test]
fn a_missing_image_fails_the_stage_with_the_http_status() {
    let mut lab = lab(Opts::default());
    let url = lab.serve(Reply::status(404));
    let run = lab.provision(json!({"url": url}));
    assert_eq!(run.code, 1);
    assert_eq!(lab.error_name(), "ProvisioningError");
    let message = lab.error_message();
    assert!(
        message.contains("Error while piping the test image to /dev/sda")
            && message.contains("answered HTTP 404"),
        "{message}"
    );
    // Nothing was streamed: dd never ran; the card was wiped anyway (the
    // connector cannot tell a refused download from a half-written one)
    // and given back to the device, which was not rebooted.
    assert_eq!(
        lab.ch_commands(),
        strings(&[
            "stm -ts",
            "sudo umount /dev/sda*",
            "sudo dd if=/dev/zero of=/dev/sda bs=1M count=1 conv=fsync",
            "stm -dut",
        ])
    );
    assert!(lab.card.image().is_err());
    assert_eq!(lab.card.side(), MuxSide::Dut);
    assert!(lab.dut.power_events().is_empty());
}

#[test]
fn configured_switch_commands_replace_the_defaults() {
    let mut lab = lab(Opts::default());
    lab.set("control_switch_local_cmd", "\"sudo stm -ts\"");
    lab.set("control_switch_device_cmd", "\"sudo stm -dut\"");
    let image = Image::ubuntu("24.04.2", "noble").hostname("own-switch");
    let url = lab.serve(Reply::bytes(image.compressed(4096)));
    let run = lab.provision(json!({"url": url, "create_user": false}));
    assert_eq!(run.code, 0, "{}", run.stderr);
    let commands = lab.ch_commands();
    assert_eq!(commands.first().map(String::as_str), Some("sudo stm -ts"));
    assert_eq!(commands.last().map(String::as_str), Some("sudo stm -dut"));
    assert!(!commands.iter().any(|c| c == "stm -ts" || c == "stm -dut"));
    assert_eq!(lab.card.switches(), [MuxSide::ControlHost, MuxSide::Dut]);
    assert_eq!(
        lab.dut.installed_image().unwrap().hostname_text().unwrap(),
        "own-switch"
    );
}

#[test]
fn a_failing_control_host_reboot_script_is_a_provisioning_error() {
    let mut lab = lab(Opts::default());
    lab.set_control_host_reboot_script();
    lab.ch.ssh().set_power_fault(labsim::dut::PowerFault::Fail);
    lab.write(json!({"url": "http://127.0.10.3:9/img.zst"}));
    // Without the pre-hook's power cycle (which only warns about a failing
    // script): the connector's own SDWire reset must fail the stage.
    let run = lab.provision_without_pre_hook();
    assert_eq!(run.code, 1, "not 46: only the device's reboot_script is");
    assert_eq!(lab.error_name(), "ProvisioningError");
    let message = lab.error_message();
    assert!(message.contains("fail to reboot control host"), "{message}");
    assert!(lab.ch_commands().is_empty());
    assert!(
        lab.dut.power_events().is_empty(),
        "the device was not touched"
    );
}

#[test]
fn a_control_host_that_does_not_come_back_fails_within_the_reboot_timeout() {
    let mut lab = lab(Opts::default());
    lab.set_control_host_reboot_script();
    lab.set("control_host_reboot_timeout", "0.5");
    lab.ch.ssh().set_boot_fault(BootFault::Never);
    lab.write(json!({"url": "http://127.0.10.3:9/img.zst"}));
    let run = lab.provision_without_pre_hook();
    assert_eq!(run.code, 1);
    assert_eq!(lab.error_name(), "ProvisioningError");
    let message = lab.error_message();
    assert!(
        message.starts_with("Control host did not come back")
            && message.contains("did not answer within 2 s"),
        "{message}"
    );
    // The bound: timeout (down) + timeout + retry window (1 s) = 2 s.
    assert!(
        run.stderr
            .contains("Waiting up to 2 s for the control host to reboot"),
        "{}",
        run.stderr
    );
    assert_eq!(lab.ch.ssh().power_events(), ["reboot"]);
    assert!(lab.ch_commands().is_empty());
}

/// `check` before any job: a device config without `reboot_script` is
/// fine for muxpi (the connector declares it optional), one without
/// `control_host` is not; nothing reaches the lab either way.
#[test]
fn check_treats_reboot_script_as_optional_and_control_host_as_required() {
    let mut lab = lab(Opts::default());
    lab.write(json!({"url": "http://127.0.10.3:9/x.zst"}));
    let run = lab.rd.run(&["check", "muxpi", "-c", "default.yaml"]);
    assert_eq!(run.code, 0, "{}", run.stdout);
    assert!(run.stdout.contains("no problems found"), "{}", run.stdout);

    lab.unset("reboot_script");
    lab.write(json!({"url": "http://127.0.10.3:9/x.zst"}));
    let run = lab.rd.run(&["check", "muxpi", "-c", "default.yaml"]);
    assert_eq!(run.code, 0, "{}", run.stdout);
    assert!(
        run.stdout
            .contains("power: reboot_script   optional, not configured (reboot_script)"),
        "{}",
        run.stdout
    );

    lab.unset("control_host");
    lab.write(json!({"url": "http://127.0.10.3:9/x.zst"}));
    let run = lab.rd.run(&["check", "muxpi", "-c", "default.yaml"]);
    assert_eq!(run.code, 1, "{}", run.stdout);
    assert!(
        run.stdout
            .contains("ssh: control-host   MISSING config key(s): control_host"),
        "{}",
        run.stdout
    );
    assert!(lab.ch_commands().is_empty());
    assert!(lab.dut.power_events().is_empty());
}
