//! A simulated device under test (DUT), or control host: an SSH server on
//! a loopback address that runs commands for real in a scratch root, with
//! a power state machine, an installed image, fault injection and a power
//! controller that other processes (the CLI's `reboot_script`) can drive.
//!
//! ```no_run
//! use labsim::dut::{Dut, Rule};
//! # fn f() -> anyhow::Result<()> {
//! let dut = Dut::start("127.0.0.2")?;
//! let home = tempfile::tempdir()?;
//! dut.configure_client(home.path())?; // agent key + ~/.ssh/config entry
//! dut.add_rule(Rule::exact("uname -m").stdout("aarch64\n"));
//! // ... run the CLI with HOME=home, device_ip: 127.0.0.2 ...
//! assert!(dut.commands().iter().any(|c| c.command == "/bin/true"));
//! # Ok(()) }
//! ```
//!
//! # Power states
//!
//! `Off` → (`power_on`) → `Booting` → (after the boot time) → `Up`. A
//! `reboot(down_for)` goes to `Booting` for `down_for` from any state.
//! Only an `Up` device listens: while `Off` or `Booting` the port is
//! closed and connections are refused; going down also cuts every open
//! connection and kills every running command, as a power cut does.
//! Faults ([`Fault`]) change how an `Up` device treats new connections;
//! [`BootFault`] makes boots slow or never finish, [`PowerFault`] makes the
//! power controller fail or hang.
//!
//! # Installed image
//!
//! A device boots an [`Image`]: its built-in one ([`DutBuilder::image`],
//! Ubuntu 24.04 by default), or, when it has a boot card
//! ([`DutBuilder::boot_card`]), the image on that card, read when the boot
//! starts, if the card's mux points at the device (otherwise, or with a
//! card that holds no image, the boot never finishes: "no bootable
//! media"). Once up, the image's `etc/os-release` and `etc/hostname` are
//! the device's `/etc/os-release` and `/etc/hostname`, and its serial
//! console ([`DutBuilder::with_serial`]) printed a boot log ending in
//! `<hostname> login: `.
//!
//! # Commands
//!
//! Every exec request is recorded ([`Dut::commands`]). It is answered by
//! the first matching [`Rule`], or else run with `/bin/sh -c` in the
//! device's home, with the channel's data as its standard input.
//! Absolute paths into the device's system directories are rewritten into
//! its scratch root ([`Dut::root`]; see [`rewrite`]), and small fakes of
//! `sudo`, `reboot`, `mount`, `lsblk`, `zstdcat`, `efibootmgr`, `snap`,
//! `fwupdmgr`, the mux commands ... come first on the `PATH` (see
//! [`fakes`]). Files written by commands (for example
//! `~/.ssh/authorized_keys`, or `/dev/sda` through `dd`) really land in the
//! root; [`Dut::history`] lists commands and the files they wrote, in
//! order. Interactive shells and subsystems (sftp) are refused.
//!
//! Input is passed on with backpressure: while a command does not read its
//! standard input, the connection stops reading too. A command that writes
//! a lot of output without ever reading the input it was sent can therefore
//! stall until it exits or the client gives up (real sshd avoids this with
//! per-channel windows; the simulator keeps it simple).

use std::collections::{HashMap, HashSet};
use std::io::Write as _;
use std::net::{IpAddr, SocketAddr};
use std::os::fd::AsFd;
use std::os::unix::fs::{OpenOptionsExt, PermissionsExt};
use std::os::unix::process::ExitStatusExt;
use std::path::{Path, PathBuf};
use std::process::Stdio;
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::{Duration, Instant};

pub mod fakes;
pub mod rewrite;

use anyhow::{Context as _, bail};
use bytes::Bytes;
use regex::Regex;
use russh::keys::{Algorithm, PrivateKey, PublicKey};
use russh::server::{self, Auth, Msg, PublicKeyOffer, VerifiedPublicKey};
use russh::{Channel, ChannelMsg, Sig};
use tokio::io::{AsyncBufReadExt, AsyncReadExt, AsyncWriteExt};
use tokio::sync::{Notify, oneshot};

use crate::card::{Card, MuxSide};
use crate::image::Image;
use crate::serial::SerialServer;
pub use fakes::{Efi, Firmware};

/// Power state of a simulated device.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum PowerState {
    /// Powered off: connections are refused.
    Off,
    /// Booting: connections are refused until the boot finishes.
    Booting,
    /// Up: SSH answers (unless a [`Fault`] says otherwise).
    Up,
}

/// How an `Up` device treats new connections.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Fault {
    /// Normal service.
    None,
    /// The port is closed: connections are refused.
    Refuse,
    /// TCP connections are accepted but never answered (no SSH banner),
    /// like a wedged sshd or a firewall that swallows packets after the
    /// handshake.
    Hang,
}

/// How boots go.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum BootFault {
    /// Boots take the configured time.
    None,
    /// Every boot takes this much longer.
    Slow(Duration),
    /// Boots never finish (the device never comes back).
    Never,
}

/// How the power controller behaves.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum PowerFault {
    /// Commands work.
    None,
    /// Every command is refused: power scripts exit non-zero.
    Fail,
    /// Commands are never answered: power scripts hang.
    Hang,
}

/// Something that happened on the device, in order.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Event {
    /// An exec request.
    Exec(ExecRecord),
    /// A command (or a `dd` to a block device) wrote this file (device
    /// path, size after the write). Seen when the command ended.
    Wrote { path: String, size: u64 },
    /// A command removed this file.
    Removed { path: String },
}

/// One call of a simulator-answered fake program.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct FakeCall {
    /// `lsblk`, `mount`, `stm` ...
    pub name: String,
    /// Its arguments, with paths as the device sees them.
    pub args: Vec<String>,
}

/// One exec request the device received.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ExecRecord {
    /// The user the connection logged in as.
    pub user: String,
    /// The command, as sent.
    pub command: String,
}

/// One successful login.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Login {
    pub user: String,
    /// `publickey` or `password`.
    pub method: &'static str,
}

#[derive(Debug, Clone)]
enum Matcher {
    Exact(String),
    Regex(Regex),
}

/// A scripted answer to matching commands.
#[derive(Debug, Clone)]
pub struct Rule {
    matcher: Matcher,
    status: u32,
    stdout: Bytes,
    stderr: Bytes,
    delay: Duration,
    reboot_after: Option<Duration>,
}

impl Rule {
    fn new(matcher: Matcher) -> Self {
        Rule {
            matcher,
            status: 0,
            stdout: Bytes::new(),
            stderr: Bytes::new(),
            delay: Duration::ZERO,
            reboot_after: None,
        }
    }

    /// Matches the command text exactly.
    pub fn exact(command: &str) -> Self {
        Rule::new(Matcher::Exact(command.to_string()))
    }

    /// Matches commands the regular expression finds a match in.
    pub fn regex(pattern: &str) -> anyhow::Result<Self> {
        let re = Regex::new(pattern).with_context(|| format!("bad rule pattern {pattern:?}"))?;
        Ok(Rule::new(Matcher::Regex(re)))
    }

    /// Exit status (default 0).
    pub fn status(mut self, status: u32) -> Self {
        self.status = status;
        self
    }

    /// Standard output.
    pub fn stdout(mut self, text: impl Into<Bytes>) -> Self {
        self.stdout = text.into();
        self
    }

    /// Standard error.
    pub fn stderr(mut self, text: impl Into<Bytes>) -> Self {
        self.stderr = text.into();
        self
    }

    /// Time before the answer (the command "runs" this long).
    pub fn delay(mut self, delay: Duration) -> Self {
        self.delay = delay;
        self
    }

    /// After answering, the device reboots and stays down for `down_for`
    /// (a `sudo reboot`).
    pub fn then_reboot(mut self, down_for: Duration) -> Self {
        self.reboot_after = Some(down_for);
        self
    }

    fn matches(&self, command: &str) -> bool {
        match &self.matcher {
            Matcher::Exact(s) => s == command,
            Matcher::Regex(re) => re.is_match(command),
        }
    }
}

/// An agent key pair written to disk.
#[derive(Debug, Clone)]
pub struct AgentKey {
    /// The private key file (mode 0600).
    pub private_key: PathBuf,
    /// The `.pub` file next to it.
    pub public_key: PathBuf,
    /// The `authorized_keys` line.
    pub public_line: String,
}

/// The generated power scripts of a device.
#[derive(Debug, Clone)]
pub struct PowerScripts {
    /// Reboots the device (down for the builder's `reboot_down_for`).
    pub reboot: PathBuf,
    /// Powers it off.
    pub off: PathBuf,
    /// Powers it on (it boots for the builder's `boot_time`).
    pub on: PathBuf,
}

/// Configures a [`Dut`] before it starts.
#[derive(Debug, Clone)]
pub struct DutBuilder {
    ip: String,
    name: String,
    user: String,
    password: String,
    boot_time: Duration,
    reboot_down_for: Duration,
    initial: PowerState,
    image: Image,
    boot_card: Option<Card>,
    boot_device: String,
    cards: Vec<Card>,
    serial: bool,
    boot_fault: BootFault,
    power_fault: PowerFault,
    snap_model: String,
}

impl DutBuilder {
    /// The user that password logins are accepted for (default `ubuntu`).
    pub fn user(mut self, user: &str) -> Self {
        self.user = user.to_string();
        self
    }

    /// The password accepted for [`DutBuilder::user`] (default `ubuntu`).
    pub fn password(mut self, password: &str) -> Self {
        self.password = password.to_string();
        self
    }

    /// How long `power_on` takes to reach `Up` (default 300 ms).
    pub fn boot_time(mut self, d: Duration) -> Self {
        self.boot_time = d;
        self
    }

    /// How long the power controller's `reboot` keeps the device down
    /// (default 500 ms).
    pub fn reboot_down_for(mut self, d: Duration) -> Self {
        self.reboot_down_for = d;
        self
    }

    /// Starts powered off instead of up.
    pub fn powered_off(mut self) -> Self {
        self.initial = PowerState::Off;
        self
    }

    /// The device's name (logs, host name of the default image).
    pub fn name(mut self, name: &str) -> Self {
        self.name = name.to_string();
        self.image = self.image.hostname(name);
        self
    }

    /// The built-in image, booted when there is no boot card.
    pub fn image(mut self, image: Image) -> Self {
        self.image = image;
        self
    }

    /// Boots from `card` (when its mux points at the device), seen by the
    /// device as `/dev/<device>` (e.g. `mmcblk0`).
    pub fn boot_card(mut self, card: Card, device: &str) -> Self {
        self.boot_card = Some(card);
        self.boot_device = device.trim_start_matches("/dev/").to_string();
        self
    }

    /// Attaches `card` as a block device (for a control host: the card is
    /// `/dev/<its block device>` while its mux points here).
    pub fn attach_card(mut self, card: Card) -> Self {
        self.cards.push(card);
        self
    }

    /// Starts a ser2net-style console on the same IP that prints a boot
    /// log at every boot.
    pub fn with_serial(mut self) -> Self {
        self.serial = true;
        self
    }

    /// Slow or failing boots.
    pub fn boot_fault(mut self, fault: BootFault) -> Self {
        self.boot_fault = fault;
        self
    }

    /// A failing or hanging power controller.
    pub fn power_fault(mut self, fault: PowerFault) -> Self {
        self.power_fault = fault;
        self
    }

    /// What `snap model` reports.
    pub fn snap_model(mut self, model: &str) -> Self {
        self.snap_model = model.to_string();
        self
    }

    /// Starts the device.
    pub fn start(self) -> anyhow::Result<Dut> {
        Dut::start_with(self)
    }
}

struct Machine {
    power: PowerState,
    fault: Fault,
    up_at: Option<Instant>,
    boot_fault: BootFault,
    power_fault: PowerFault,
    /// What the current boot brings up.
    booting: Option<Image>,
    /// Bumped at every power change: stale boot logs stop.
    generation: u64,
}

struct Shared {
    addr: SocketAddr,
    name: String,
    root: PathBuf,
    calls: PathBuf,
    bin: PathBuf,
    home: PathBuf,
    user: String,
    password: String,
    boot_time: Duration,
    reboot_down_for: Duration,
    host_key: PrivateKey,
    machine: Mutex<Machine>,
    wake: Notify,
    records: Mutex<Vec<ExecRecord>>,
    logins: Mutex<Vec<Login>>,
    rules: Mutex<Vec<Rule>>,
    power_events: Mutex<Vec<String>>,
    accepted: AtomicUsize,
    next_conn: AtomicU64,
    /// Duplicates of open connections' sockets, to cut them.
    live: Mutex<HashMap<u64, std::net::TcpStream>>,
    /// Process groups of running commands.
    procs: Mutex<HashSet<i32>>,
    /// Whether the SSH port is bound right now: the device only counts as
    /// up for observers once it can really be connected to.
    listening: std::sync::atomic::AtomicBool,
    /// Told whether the device listens, at every change.
    watchers: Mutex<Vec<std::sync::mpsc::Sender<bool>>>,
    builtin: Mutex<Image>,
    installed: Mutex<Option<Image>>,
    boot_card: Option<Card>,
    boot_device: String,
    cards: Mutex<Vec<Card>>,
    serial: Option<Arc<SerialServer>>,
    history: Mutex<Vec<Event>>,
    files: Mutex<std::collections::BTreeMap<PathBuf, rewrite::Stamp>>,
    fake_calls: Mutex<Vec<FakeCall>>,
    mounts: Mutex<Vec<fakes::MountEntry>>,
    efi: Mutex<Efi>,
    firmware: Mutex<Firmware>,
    snaps: Mutex<Vec<(String, String)>>,
    snap_model: String,
    /// Partition nodes (`/dev/sda2`) made for present disks.
    dev_nodes: Mutex<Vec<PathBuf>>,
}

fn lock<T>(m: &Mutex<T>) -> MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|e| e.into_inner())
}

impl Shared {
    /// Cuts every connection and kills every command.
    fn kill_all(&self) {
        for (_, sock) in lock(&self.live).drain() {
            let _ = sock.shutdown(std::net::Shutdown::Both);
        }
        for pgid in lock(&self.procs).drain() {
            // SAFETY: plain syscall on a process group this device started.
            unsafe {
                libc::killpg(pgid, libc::SIGKILL);
            }
        }
    }

    fn power_off(self: &Arc<Self>) {
        {
            let mut m = lock(&self.machine);
            m.power = PowerState::Off;
            m.up_at = None;
            m.booting = None;
            m.generation += 1;
        }
        self.wake.notify_one();
        self.kill_all();
    }

    fn reboot(self: &Arc<Self>, down_for: Duration) {
        self.begin_boot(down_for);
        self.kill_all();
    }

    fn power_on(self: &Arc<Self>) {
        let off = lock(&self.machine).power == PowerState::Off;
        if off {
            self.begin_boot(self.boot_time);
        }
    }

    /// What a boot starting now finds: the card's image when the device
    /// boots from a card, else the built-in image.
    fn boot_media(&self) -> Result<Image, String> {
        match &self.boot_card {
            None => Ok(lock(&self.builtin).clone()),
            Some(card) if card.side() != MuxSide::Dut => {
                Err("No bootable media found (the card is switched to the control host)".into())
            }
            Some(card) => card.image().map_err(|e| {
                format!("Kernel panic - not syncing: VFS: Unable to mount root fs ({e})")
            }),
        }
    }

    /// Starts a boot that takes `duration` (plus a slow-boot fault).
    fn begin_boot(self: &Arc<Self>, duration: Duration) {
        let media = self.boot_media();
        let generation = {
            let mut m = lock(&self.machine);
            let up_in = match (&media, m.boot_fault) {
                (Err(_), _) | (_, BootFault::Never) => None,
                (Ok(_), BootFault::Slow(extra)) => Some(duration + extra),
                (Ok(_), BootFault::None) => Some(duration),
            };
            m.power = PowerState::Booting;
            m.up_at = up_in.map(|d| Instant::now() + d);
            m.booting = media.as_ref().ok().cloned();
            m.generation += 1;
            // A pending firmware update applies at this boot.
            let mut fw = lock(&self.firmware);
            if let Some(v) = fw.pending.take() {
                fw.version = v;
                fw.update_state = 2;
            }
            (m.generation, up_in)
        };
        self.wake.notify_one();
        if let Some(serial) = &self.serial {
            let serial = serial.clone();
            let shared = self.clone();
            let (generation, up_in) = generation;
            std::thread::spawn(move || {
                shared.boot_log(&serial, generation, up_in.unwrap_or(duration), media)
            });
        }
    }

    /// Prints a boot log on the serial console, spread over the boot, and
    /// stops early if the power changes again.
    fn boot_log(
        &self,
        serial: &SerialServer,
        generation: u64,
        total: Duration,
        media: Result<Image, String>,
    ) {
        let current = || lock(&self.machine).generation == generation;
        let mut lines = vec![
            "".to_string(),
            "U-Boot 2024.01-labsim (Ubuntu 2024.01+dfsg-1ubuntu5)".to_string(),
            "DRAM:  3.9 GiB".to_string(),
            format!("Hit any key to stop autoboot:  0 ({})", self.name),
        ];
        let mut prompt = None;
        match &media {
            Err(reason) => lines.push(reason.clone()),
            Ok(image) => {
                let pretty = image.pretty_name().unwrap_or_else(|| "Linux".into());
                let host = image.hostname_text().unwrap_or_else(|| self.name.clone());
                let labels: Vec<&str> = image.partitions.iter().map(|p| p.label.as_str()).collect();
                lines.extend([
                    "Starting kernel ...".to_string(),
                    "[    0.000000] Booting Linux on physical CPU 0x0000000000 [0x410fd083]".to_string(),
                    "[    0.000000] Linux version 6.8.0-1010-labsim (buildd@labsim) #11-Ubuntu SMP PREEMPT_DYNAMIC".to_string(),
                    format!("[    1.204811] EXT4-fs ({}): mounted filesystem (partitions: {})", self.boot_device, labels.join(", ")),
                    format!("[    2.871044] systemd[1]: Detected architecture arm64. Hello from {pretty}!"),
                    format!("[    3.112233] systemd[1]: Hostname set to <{host}>."),
                    "[  OK  ] Started ssh.service - OpenBSD Secure Shell server.".to_string(),
                    "[  OK  ] Reached target multi-user.target - Multi-User System.".to_string(),
                    "".to_string(),
                    format!("{pretty} {host} ttyS0"),
                    "".to_string(),
                ]);
                prompt = Some(format!("{host} login: "));
            }
        }
        let steps = lines.len() + usize::from(prompt.is_some());
        let started = Instant::now();
        for (i, line) in lines.iter().enumerate() {
            let at = total.mul_f64(i as f64 / steps as f64);
            std::thread::sleep(at.saturating_sub(started.elapsed()));
            if !current() {
                return;
            }
            serial.push(format!("{line}\r\n"));
        }
        if let Some(prompt) = prompt {
            // The prompt shows once the device is up.
            std::thread::sleep(total.saturating_sub(started.elapsed()));
            if current() {
                serial.push(prompt);
            }
        }
    }

    fn state(&self) -> PowerState {
        let mut m = lock(&self.machine);
        if m.power == PowerState::Booting && m.up_at.is_some_and(|t| t <= Instant::now()) {
            m.power = PowerState::Up;
            m.up_at = None;
            if let Some(image) = m.booting.take() {
                self.install(image);
            }
        }
        m.power
    }

    /// The image that came up is now the device's: its identity files are
    /// the device's.
    fn install(&self, image: Image) {
        let etc = self.root.join("etc");
        let _ = std::fs::create_dir_all(&etc);
        if let Some(text) = image.os_release_text() {
            let _ = std::fs::write(etc.join("os-release"), text);
        }
        let host = image.hostname_text().unwrap_or_else(|| self.name.clone());
        let _ = std::fs::write(etc.join("hostname"), format!("{host}\n"));
        self.settle_files(&etc);
        *lock(&self.installed) = Some(image);
    }

    /// The host name of the installed image.
    fn hostname(&self) -> String {
        lock(&self.installed)
            .as_ref()
            .and_then(Image::hostname_text)
            .unwrap_or_else(|| self.name.clone())
    }

    /// The disks the device sees now.
    fn disks(&self) -> Vec<fakes::Disk> {
        let mut out = Vec::new();
        for card in lock(&self.cards).iter() {
            if card.side() == MuxSide::ControlHost {
                out.push(fakes::Disk {
                    name: card.block_device().to_string(),
                    card: Some(card.clone()),
                    image: card.image().ok(),
                    size: std::fs::metadata(card.path()).map_or(0, |m| m.len()),
                });
            }
        }
        match &self.boot_card {
            Some(card) if card.side() == MuxSide::Dut => out.insert(
                0,
                fakes::Disk {
                    name: self.boot_device.clone(),
                    card: Some(card.clone()),
                    image: card.image().ok(),
                    size: std::fs::metadata(card.path()).map_or(0, |m| m.len()),
                },
            ),
            Some(_) => {}
            None => out.insert(
                0,
                fakes::Disk {
                    name: self.boot_device.clone(),
                    card: None,
                    image: Some(
                        lock(&self.installed)
                            .clone()
                            .unwrap_or_else(|| lock(&self.builtin).clone()),
                    ),
                    size: 32 << 30,
                },
            ),
        }
        out
    }

    /// Makes `/dev/<partition>` nodes for the partitions of the disks
    /// present now (links to `/dev/null`: they are for globs and `test`),
    /// and removes those of disks that went away.
    fn refresh_dev_nodes(&self) {
        let mut wanted = Vec::new();
        for d in self.disks() {
            if d.card.is_none() {
                continue;
            }
            let n = d.image.as_ref().map_or(0, |im| im.partitions.len());
            for i in 1..=n {
                wanted.push(
                    self.root
                        .join("dev")
                        .join(fakes::partition_name(&d.name, i)),
                );
            }
        }
        let mut nodes = lock(&self.dev_nodes);
        for old in nodes.iter().filter(|p| !wanted.contains(p)) {
            let _ = std::fs::remove_file(old);
        }
        for new in &wanted {
            if std::fs::symlink_metadata(new).is_err() {
                let _ = std::os::unix::fs::symlink("/dev/null", new);
            }
        }
        *nodes = wanted;
    }

    /// Writes an unmounted directory back into its disk's image.
    fn write_back(&self, m: &fakes::MountEntry) -> anyhow::Result<()> {
        let disks = self.disks();
        let disk = disks
            .iter()
            .find(|d| d.name == m.disk)
            .context("the disk is gone (switched away while mounted)")?;
        let mut image = disk.image.clone().context("no image on the disk")?;
        image.absorb(m.index, &m.dir)?;
        match &disk.card {
            Some(card) => image.rewrite_file(card.path())?,
            None => *lock(&self.builtin) = image,
        }
        Ok(())
    }

    /// Takes the files under `dir` as they are now as the baseline, so
    /// that changes the simulator itself made there (a mount, an unmount)
    /// are not reported as written by commands.
    fn settle_files(&self, dir: &Path) {
        let mut files = lock(&self.files);
        files.retain(|p, _| !p.starts_with(dir));
        for (p, s) in rewrite::snapshot(&self.root) {
            if p.starts_with(dir) {
                files.insert(p, s);
            }
        }
    }

    /// Records the files commands wrote or removed since the last look.
    fn record_files(&self) {
        let after = rewrite::snapshot(&self.root);
        let mut files = lock(&self.files);
        let (written, removed) = rewrite::diff(&files, &after);
        *files = after;
        drop(files);
        let mut history = lock(&self.history);
        for (p, size) in written {
            history.push(Event::Wrote {
                path: rewrite::device_path(&self.root, &p),
                size,
            });
        }
        for p in removed {
            history.push(Event::Removed {
                path: rewrite::device_path(&self.root, &p),
            });
        }
    }

    fn notify_listening(&self, listening: bool) {
        let before = self.listening.swap(listening, Ordering::SeqCst);
        if before != listening {
            lock(&self.watchers).retain(|w| w.send(listening).is_ok());
        }
    }

    fn rule_for(&self, command: &str) -> Option<Rule> {
        lock(&self.rules)
            .iter()
            .find(|r| r.matches(command))
            .cloned()
    }

    /// Whether `key` is listed in the home's `authorized_keys` (read at
    /// every login, so keys added by commands count at once).
    fn authorized(&self, key: &PublicKey) -> bool {
        let Ok(text) = std::fs::read_to_string(self.home.join(".ssh/authorized_keys")) else {
            return false;
        };
        text.lines().any(|line| {
            let mut words = line.split_whitespace();
            // Skip an options prefix: the key blob follows the algorithm.
            while let Some(w) = words.next() {
                if w.starts_with("ssh-") || w.starts_with("ecdsa-") || w.starts_with("sk-") {
                    return words
                        .next()
                        .and_then(|b64| russh::keys::parse_public_key_base64(b64).ok())
                        .is_some_and(|k| k.key_data() == key.key_data());
                }
            }
            false
        })
    }

    /// Applies one power controller command; returns the reply line, or
    /// `None` when the controller hangs.
    fn control(self: &Arc<Self>, line: &str) -> Option<String> {
        let words: Vec<&str> = line.split_whitespace().collect();
        lock(&self.power_events).push(line.trim().to_string());
        match lock(&self.machine).power_fault {
            PowerFault::None => {}
            PowerFault::Fail => return Some("err simulated power controller failure".into()),
            PowerFault::Hang => return None,
        }
        Some(self.apply_control(&words, line))
    }

    fn apply_control(self: &Arc<Self>, words: &[&str], line: &str) -> String {
        match words {
            ["reboot"] => self.reboot(self.reboot_down_for),
            ["reboot", ms] => match ms.parse::<u64>() {
                Ok(ms) => self.reboot(Duration::from_millis(ms)),
                Err(_) => return format!("err bad duration {ms}"),
            },
            ["off"] => self.power_off(),
            ["on"] => self.power_on(),
            ["state"] => {}
            _ => return format!("err unknown command {:?}", line.trim()),
        }
        format!("ok {:?}", self.state()).to_lowercase()
    }
}

/// A running simulated device; stops (and kills what it runs) when
/// dropped.
pub struct Dut {
    shared: Arc<Shared>,
    control_addr: SocketAddr,
    scratch: tempfile::TempDir,
    stop: Option<oneshot::Sender<()>>,
    thread: Option<std::thread::JoinHandle<()>>,
}

/// A cheap handle on a running device's power and state, for services
/// that act on it (a control host's REST API, a provisioning job). It does
/// not keep the device running.
#[derive(Clone)]
pub struct DutHandle {
    shared: Arc<Shared>,
}

impl DutHandle {
    /// The current power state (as [`Dut::state`]).
    pub fn state(&self) -> PowerState {
        observed_state(&self.shared)
    }

    /// Reboots: down for `down_for`, then up (unless a boot fault).
    pub fn reboot(&self, down_for: Duration) {
        self.shared.reboot(down_for);
    }

    /// Reboots for the configured reboot time.
    pub fn power_cycle(&self) {
        self.shared.reboot(self.shared.reboot_down_for);
    }

    /// Cuts the power.
    pub fn power_off(&self) {
        self.shared.power_off();
    }

    /// Powers on.
    pub fn power_on(&self) {
        self.shared.power_on();
    }

    /// The installed image (what the device runs since its last boot).
    pub fn installed_image(&self) -> Option<Image> {
        self.shared.state();
        lock(&self.shared.installed).clone()
    }

    /// The SSH address.
    pub fn addr(&self) -> SocketAddr {
        self.shared.addr
    }

    /// Registers `tx` to be told `true`/`false` whenever the device
    /// starts/stops listening (and at once with the current value).
    pub fn watch_listening(&self, tx: std::sync::mpsc::Sender<bool>) {
        let _ = tx.send(self.shared.listening.load(Ordering::SeqCst));
        lock(&self.shared.watchers).push(tx);
    }
}

fn observed_state(shared: &Shared) -> PowerState {
    match shared.state() {
        PowerState::Up if !shared.listening.load(Ordering::SeqCst) => PowerState::Booting,
        other => other,
    }
}

impl Dut {
    /// A builder for a device on the loopback address `ip`.
    pub fn builder(ip: &str) -> DutBuilder {
        DutBuilder {
            ip: ip.to_string(),
            name: format!("dut-{}", ip.replace([':', '.'], "-")),
            user: "ubuntu".into(),
            password: "ubuntu".into(),
            boot_time: Duration::from_millis(300),
            reboot_down_for: Duration::from_millis(500),
            initial: PowerState::Up,
            image: Image::ubuntu("24.04.1", "noble")
                .hostname(&format!("dut-{}", ip.replace([':', '.'], "-"))),
            boot_card: None,
            boot_device: "mmcblk0".into(),
            cards: Vec::new(),
            serial: false,
            boot_fault: BootFault::None,
            power_fault: PowerFault::None,
            snap_model: "ubuntu-core-24-pi-arm64".into(),
        }
    }

    /// Starts a device that is up, on `ip` (any free port).
    pub fn start(ip: &str) -> anyhow::Result<Dut> {
        Dut::builder(ip).start()
    }

    fn start_with(b: DutBuilder) -> anyhow::Result<Dut> {
        let ip: IpAddr =
            b.ip.parse()
                .with_context(|| format!("`{}` is not an IP address", b.ip))?;
        if !ip.is_loopback() {
            bail!("simulated devices only listen on loopback addresses, not {ip}");
        }
        let std_listener = std::net::TcpListener::bind((ip, 0))?;
        let addr = std_listener.local_addr()?;
        let control = std::net::TcpListener::bind((ip, 0))?;
        let control_addr = control.local_addr()?;
        let service = std::net::TcpListener::bind((ip, 0))?;
        let service_addr = service.local_addr()?;
        std_listener.set_nonblocking(true)?;
        control.set_nonblocking(true)?;
        service.set_nonblocking(true)?;
        let scratch = tempfile::tempdir()?;
        let root = scratch.path().join("root");
        let home = root.join("home").join(&b.user);
        std::fs::create_dir_all(home.join(".ssh"))?;
        for dir in [
            "etc", "dev", "mnt", "media", "tmp", "var/tmp", "boot", "opt", "srv",
        ] {
            std::fs::create_dir_all(root.join(dir))?;
        }
        let bin = scratch.path().join("bin");
        let calls = scratch.path().join("calls");
        fakes::install(&bin, &calls, service_addr, &b.name)?;
        for card in &b.cards {
            card.attach_link(&root.join("dev").join(card.block_device()));
        }
        let serial = if b.serial {
            Some(Arc::new(SerialServer::start(&b.ip)?))
        } else {
            None
        };
        let host_key = PrivateKey::random(&mut rand::rng(), Algorithm::Ed25519)
            .map_err(|e| anyhow::anyhow!("cannot generate a host key: {e}"))?;
        let up = b.initial == PowerState::Up;
        let shared = Arc::new(Shared {
            addr,
            name: b.name.clone(),
            root: root.clone(),
            calls,
            bin,
            home,
            user: b.user,
            password: b.password,
            boot_time: b.boot_time,
            reboot_down_for: b.reboot_down_for,
            host_key,
            machine: Mutex::new(Machine {
                power: b.initial,
                fault: Fault::None,
                up_at: None,
                boot_fault: b.boot_fault,
                power_fault: b.power_fault,
                booting: None,
                generation: 0,
            }),
            wake: Notify::new(),
            records: Mutex::new(Vec::new()),
            logins: Mutex::new(Vec::new()),
            rules: Mutex::new(Vec::new()),
            power_events: Mutex::new(Vec::new()),
            accepted: AtomicUsize::new(0),
            next_conn: AtomicU64::new(0),
            live: Mutex::new(HashMap::new()),
            procs: Mutex::new(HashSet::new()),
            listening: std::sync::atomic::AtomicBool::new(up),
            watchers: Mutex::new(Vec::new()),
            builtin: Mutex::new(b.image.clone()),
            installed: Mutex::new(None),
            boot_card: b.boot_card.clone(),
            boot_device: b.boot_device.clone(),
            cards: Mutex::new(b.cards.clone()),
            serial,
            history: Mutex::new(Vec::new()),
            files: Mutex::new(std::collections::BTreeMap::new()),
            fake_calls: Mutex::new(Vec::new()),
            mounts: Mutex::new(Vec::new()),
            efi: Mutex::new(Efi::default()),
            firmware: Mutex::new(Firmware::default()),
            snaps: Mutex::new(vec![
                ("core24".into(), "20240920".into()),
                ("snapd".into(), "2.66.1".into()),
            ]),
            snap_model: b.snap_model.clone(),
            dev_nodes: Mutex::new(Vec::new()),
        });
        if up {
            // Up from the start: the boot media's image is installed.
            match shared.boot_media() {
                Ok(image) => shared.install(image),
                Err(_) => {
                    // Nothing bootable: it cannot be up.
                    let mut m = lock(&shared.machine);
                    m.power = PowerState::Booting;
                    m.up_at = None;
                }
            }
        }
        *lock(&shared.files) = rewrite::snapshot(&root);
        let up = shared.state() == PowerState::Up;
        shared.listening.store(up, Ordering::SeqCst);
        let (stop_tx, stop_rx) = oneshot::channel();
        let inner = shared.clone();
        let listener = up.then_some(std_listener);
        let thread = std::thread::Builder::new()
            .name(format!("labsim-dut-{addr}"))
            .spawn(move || {
                let rt = tokio::runtime::Builder::new_current_thread()
                    .enable_all()
                    .build()
                    .expect("runtime");
                rt.block_on(supervise(inner, listener, control, service, stop_rx));
                rt.shutdown_timeout(Duration::from_secs(1));
            })?;
        Ok(Dut {
            shared,
            control_addr,
            scratch,
            stop: Some(stop_tx),
            thread: Some(thread),
        })
    }

    /// The SSH address.
    pub fn addr(&self) -> SocketAddr {
        self.shared.addr
    }

    /// The IP address (what `device_ip` holds).
    pub fn ip(&self) -> String {
        self.shared.addr.ip().to_string()
    }

    /// The SSH port.
    pub fn port(&self) -> u16 {
        self.shared.addr.port()
    }

    /// The device's home directory (where commands run).
    pub fn home(&self) -> &Path {
        &self.shared.home
    }

    /// The device's scratch directory (holds `root`, `bin` with the
    /// fakes, and the fakes' call pipes).
    pub fn scratch(&self) -> &Path {
        self.scratch.path()
    }

    /// The device's root: `/etc/hostname` of the device is
    /// `root().join("etc/hostname")`.
    pub fn root(&self) -> &Path {
        &self.shared.root
    }

    /// The real path of the device path `path` (`/mnt/x` → `<root>/mnt/x`).
    pub fn path(&self, path: &str) -> PathBuf {
        self.shared.root.join(path.trim_start_matches('/'))
    }

    /// The directory with the fake programs (first on executed commands'
    /// `PATH`).
    pub fn bin(&self) -> &Path {
        &self.shared.bin
    }

    /// The device's name.
    pub fn name(&self) -> &str {
        &self.shared.name
    }

    /// A handle for services acting on this device.
    pub fn handle(&self) -> DutHandle {
        DutHandle {
            shared: self.shared.clone(),
        }
    }

    /// Commands and the files they wrote, in order.
    pub fn history(&self) -> Vec<Event> {
        lock(&self.shared.history).clone()
    }

    /// Device paths of the files commands wrote, in order (repeats
    /// included).
    pub fn files_written(&self) -> Vec<String> {
        self.history()
            .into_iter()
            .filter_map(|e| match e {
                Event::Wrote { path, .. } => Some(path),
                _ => None,
            })
            .collect()
    }

    /// Calls of the simulator-answered fakes, in order.
    pub fn fake_calls(&self) -> Vec<FakeCall> {
        lock(&self.shared.fake_calls).clone()
    }

    /// The serial console, if the device has one.
    pub fn serial(&self) -> Option<&SerialServer> {
        self.shared.serial.as_deref()
    }

    /// The image the device runs since its last boot.
    pub fn installed_image(&self) -> Option<Image> {
        self.handle().installed_image()
    }

    /// Replaces the built-in image (booted at the next boot when the
    /// device has no boot card).
    pub fn set_image(&self, image: Image) {
        *lock(&self.shared.builtin) = image;
    }

    /// The boot card, if any.
    pub fn boot_card(&self) -> Option<&Card> {
        self.shared.boot_card.as_ref()
    }

    /// The cards attached as block devices.
    pub fn cards(&self) -> Vec<Card> {
        lock(&self.shared.cards).clone()
    }

    /// Sets the boot fault (applies from the next boot).
    pub fn set_boot_fault(&self, fault: BootFault) {
        lock(&self.shared.machine).boot_fault = fault;
    }

    /// Sets the power controller fault.
    pub fn set_power_fault(&self, fault: PowerFault) {
        lock(&self.shared.machine).power_fault = fault;
    }

    /// The simulated boot manager's state.
    pub fn efi(&self) -> Efi {
        lock(&self.shared.efi).clone()
    }

    /// The simulated firmware's state.
    pub fn firmware(&self) -> Firmware {
        lock(&self.shared.firmware).clone()
    }

    /// Sets the simulated firmware (version, releases ...).
    pub fn set_firmware(&self, firmware: Firmware) {
        *lock(&self.shared.firmware) = firmware;
    }

    /// The user password logins are accepted for.
    pub fn user(&self) -> &str {
        &self.shared.user
    }

    /// The host's public key.
    pub fn host_key(&self) -> PublicKey {
        self.shared.host_key.public_key().clone()
    }

    /// A `known_hosts` line for this device (`[ip]:port <key>`).
    pub fn known_hosts_line(&self) -> String {
        format!(
            "[{}]:{} {}",
            self.ip(),
            self.port(),
            self.host_key().to_openssh().unwrap_or_default()
        )
    }

    /// Every exec request so far, in order.
    pub fn commands(&self) -> Vec<ExecRecord> {
        lock(&self.shared.records).clone()
    }

    /// Just the command texts of [`Dut::commands`].
    pub fn command_lines(&self) -> Vec<String> {
        self.commands().into_iter().map(|r| r.command).collect()
    }

    /// Every successful login so far.
    pub fn logins(&self) -> Vec<Login> {
        lock(&self.shared.logins).clone()
    }

    /// TCP connections accepted so far (including hung ones).
    pub fn connections_accepted(&self) -> usize {
        self.shared.accepted.load(Ordering::SeqCst)
    }

    /// Power controller commands received so far (`reboot`, `off` ...).
    pub fn power_events(&self) -> Vec<String> {
        lock(&self.shared.power_events).clone()
    }

    /// Adds a rule; rules are tried in the order they were added.
    pub fn add_rule(&self, rule: Rule) {
        lock(&self.shared.rules).push(rule);
    }

    /// Appends a public key line to the device's `authorized_keys`.
    pub fn authorize_key(&self, public_line: &str) -> anyhow::Result<()> {
        let path = self.home().join(".ssh/authorized_keys");
        let mut f = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .mode(0o600)
            .open(&path)?;
        writeln!(f, "{}", public_line.trim())?;
        Ok(())
    }

    /// The current power state.
    pub fn state(&self) -> PowerState {
        observed_state(&self.shared)
    }

    /// Waits (polling, bounded by `timeout`) until the device is in
    /// `state`; returns whether it got there.
    pub fn wait_state(&self, state: PowerState, timeout: Duration) -> bool {
        let deadline = Instant::now() + timeout;
        loop {
            if self.state() == state {
                return true;
            }
            if Instant::now() >= deadline {
                return false;
            }
            std::thread::sleep(Duration::from_millis(10));
        }
    }

    /// Sets the fault applied to new connections while up.
    pub fn set_fault(&self, fault: Fault) {
        lock(&self.shared.machine).fault = fault;
        self.shared.wake.notify_one();
    }

    /// Reboots: down (refusing) for `down_for`, then up again.
    pub fn reboot(&self, down_for: Duration) {
        self.shared.reboot(down_for);
    }

    /// Cuts the power.
    pub fn power_off(&self) {
        self.shared.power_off();
    }

    /// Powers on; the device is up after the boot time.
    pub fn power_on(&self) {
        self.shared.power_on();
    }

    /// The power controller's address (line protocol: `reboot [ms]`,
    /// `off`, `on`, `state`; each answered by `ok <state>` or `err ...`).
    pub fn control_addr(&self) -> SocketAddr {
        self.control_addr
    }

    /// Sends one command to the power controller over TCP, as a script
    /// would; returns the reply line.
    pub fn control(&self, command: &str) -> anyhow::Result<String> {
        use std::io::{BufRead, BufReader};
        let mut s = std::net::TcpStream::connect(self.control_addr)?;
        s.set_read_timeout(Some(Duration::from_secs(5)))?;
        writeln!(s, "{command}")?;
        let mut reply = String::new();
        BufReader::new(s).read_line(&mut reply)?;
        Ok(reply.trim().to_string())
    }

    /// Writes executable `reboot`, `off` and `on` scripts into `dir`
    /// (bash, talking to the power controller through `/dev/tcp`), for a
    /// device config's `reboot_script` and friends. They exit 0 on
    /// success and non-zero, with a message, otherwise.
    pub fn write_power_scripts(&self, dir: &Path) -> anyhow::Result<PowerScripts> {
        std::fs::create_dir_all(dir)?;
        let name = format!("dut-{}-{}", self.ip(), self.port()).replace([':', '.'], "_");
        let write = |action: &str| -> anyhow::Result<PathBuf> {
            let path = dir.join(format!("{name}-{action}"));
            let script = format!(
                "#!/bin/bash\n\
                 # Generated by labsim: power control ({action}) of the simulated device {dev}.\n\
                 set -u\n\
                 exec 3<>/dev/tcp/{cip}/{cport} || {{ echo \"power controller {cip}:{cport} is not reachable\" >&2; exit 2; }}\n\
                 printf '%s\\n' '{action}' >&3\n\
                 if ! IFS= read -r -t 3600 reply <&3; then echo \"no answer from the power controller\" >&2; exit 3; fi\n\
                 exec 3>&-\n\
                 case \"$reply\" in ok*) echo \"{action}: $reply\"; exit 0 ;; *) echo \"power controller: $reply\" >&2; exit 1 ;; esac\n",
                dev = self.addr(),
                cip = self.control_addr.ip(),
                cport = self.control_addr.port(),
            );
            std::fs::write(&path, script)?;
            std::fs::set_permissions(&path, std::fs::Permissions::from_mode(0o755))?;
            Ok(path)
        };
        Ok(PowerScripts {
            reboot: write("reboot")?,
            off: write("off")?,
            on: write("on")?,
        })
    }

    /// The `~/.ssh/config` lines that send `ssh <ip>` to this device with
    /// `identity`.
    pub fn client_config_snippet(&self, identity: &Path) -> String {
        format!(
            "Host {ip}\n    HostName {ip}\n    Port {port}\n    IdentityFile {id}\n",
            ip = self.ip(),
            port = self.port(),
            id = identity.display()
        )
    }

    /// Appends [`Dut::client_config_snippet`] to `home/.ssh/config`.
    pub fn write_client_config(&self, home: &Path, identity: &Path) -> anyhow::Result<()> {
        std::fs::create_dir_all(home.join(".ssh"))?;
        let mut f = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .mode(0o600)
            .open(home.join(".ssh/config"))?;
        write!(f, "{}", self.client_config_snippet(identity))?;
        Ok(())
    }

    /// Prepares the agent side in `home` so that `ssh <ip>` (and the CLI
    /// run with `HOME=home`) reaches this device: an agent key pair at
    /// `home/.ssh/id_ed25519` (created if missing), authorised here, and
    /// a `Host` entry appended to `home/.ssh/config`.
    pub fn configure_client(&self, home: &Path) -> anyhow::Result<AgentKey> {
        let key = agent_key(home)?;
        self.authorize_key(&key.public_line)?;
        self.write_client_config(home, &key.private_key)?;
        Ok(key)
    }
}

impl Drop for Dut {
    fn drop(&mut self) {
        self.shared.kill_all();
        if let Some(stop) = self.stop.take() {
            let _ = stop.send(());
        }
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
        self.shared.kill_all();
    }
}

/// The agent key pair in `home/.ssh/id_ed25519`, created if missing.
pub fn agent_key(home: &Path) -> anyhow::Result<AgentKey> {
    let dir = home.join(".ssh");
    std::fs::create_dir_all(&dir)?;
    std::fs::set_permissions(&dir, std::fs::Permissions::from_mode(0o700))?;
    let path = dir.join("id_ed25519");
    if path.exists() {
        let key = russh::keys::load_secret_key(&path, None)
            .with_context(|| format!("reading {}", path.display()))?;
        let public_line = key.public_key().to_openssh()?.trim().to_string();
        return Ok(AgentKey {
            public_key: pub_path(&path),
            private_key: path,
            public_line,
        });
    }
    write_key_pair(&path, None)
}

/// Writes a new ed25519 key pair at `path` (and `path.pub`), encrypted
/// with `passphrase` if given.
pub fn write_key_pair(path: &Path, passphrase: Option<&str>) -> anyhow::Result<AgentKey> {
    let key = PrivateKey::random(&mut rand::rng(), Algorithm::Ed25519)
        .map_err(|e| anyhow::anyhow!("cannot generate a key: {e}"))?;
    let public_line = format!("{} labsim-agent", key.public_key().to_openssh()?.trim());
    let stored = match passphrase {
        Some(p) => key
            .encrypt(&mut rand::rng(), p)
            .map_err(|e| anyhow::anyhow!("cannot encrypt the key: {e}"))?,
        None => key,
    };
    let text = stored.to_openssh(russh::keys::ssh_key::LineEnding::LF)?;
    let mut f = std::fs::OpenOptions::new()
        .create(true)
        .write(true)
        .truncate(true)
        .mode(0o600)
        .open(path)?;
    f.write_all(text.as_bytes())?;
    let public_key = pub_path(path);
    std::fs::write(&public_key, format!("{public_line}\n"))?;
    Ok(AgentKey {
        private_key: path.to_path_buf(),
        public_key,
        public_line,
    })
}

fn pub_path(path: &Path) -> PathBuf {
    let mut p = path.as_os_str().to_owned();
    p.push(".pub");
    PathBuf::from(p)
}

async fn accept_opt(
    l: &Option<tokio::net::TcpListener>,
) -> std::io::Result<(tokio::net::TcpStream, SocketAddr)> {
    match l {
        Some(l) => l.accept().await,
        None => std::future::pending().await,
    }
}

async fn sleep_opt(until: Option<Instant>) {
    match until {
        Some(t) => tokio::time::sleep_until(tokio::time::Instant::from_std(t)).await,
        None => std::future::pending().await,
    }
}

fn bind(addr: SocketAddr) -> std::io::Result<tokio::net::TcpListener> {
    let socket = if addr.is_ipv4() {
        tokio::net::TcpSocket::new_v4()?
    } else {
        tokio::net::TcpSocket::new_v6()?
    };
    // The port was ours before the power cut; take it back even with
    // connections of the previous boot in TIME_WAIT.
    socket.set_reuseaddr(true)?;
    socket.bind(addr)?;
    socket.listen(128)
}

/// The device's main loop: follows the power state, opens and closes the
/// port, and hands accepted connections to sessions.
async fn supervise(
    shared: Arc<Shared>,
    initial: Option<std::net::TcpListener>,
    control: std::net::TcpListener,
    service: std::net::TcpListener,
    mut stop: oneshot::Receiver<()>,
) {
    let config = Arc::new(server::Config {
        keys: vec![shared.host_key.clone()],
        auth_rejection_time: Duration::ZERO,
        auth_rejection_time_initial: Some(Duration::ZERO),
        inactivity_timeout: None,
        nodelay: true,
        ..Default::default()
    });
    let mut listener = initial.and_then(|l| tokio::net::TcpListener::from_std(l).ok());
    if let Ok(control) = tokio::net::TcpListener::from_std(control) {
        tokio::spawn(serve_control(control, shared.clone()));
    }
    if let Ok(service) = tokio::net::TcpListener::from_std(service) {
        tokio::spawn(fakes::serve(service, shared.clone()));
    }
    loop {
        let power = shared.state();
        let (fault, up_at) = {
            let m = lock(&shared.machine);
            (m.fault, m.up_at)
        };
        let listen = power == PowerState::Up && fault != Fault::Refuse;
        if !listen {
            listener = None;
        } else if listener.is_none() {
            match bind(shared.addr) {
                Ok(l) => listener = Some(l),
                Err(e) => {
                    eprintln!("labsim dut {}: cannot listen again: {e}", shared.addr);
                    tokio::time::sleep(Duration::from_millis(20)).await;
                    continue;
                }
            }
        }
        shared.notify_listening(listener.is_some());
        tokio::select! {
            _ = &mut stop => break,
            _ = shared.wake.notified() => {}
            _ = sleep_opt(up_at), if power == PowerState::Booting => {}
            accepted = accept_opt(&listener) => {
                if let Ok((stream, _)) = accepted {
                    accept(&shared, &config, stream);
                }
            }
        }
    }
}

fn accept(shared: &Arc<Shared>, config: &Arc<server::Config>, stream: tokio::net::TcpStream) {
    // A connection that slipped in while the device went down is cut.
    if shared.state() != PowerState::Up || lock(&shared.machine).fault == Fault::Refuse {
        return;
    }
    shared.accepted.fetch_add(1, Ordering::SeqCst);
    let _ = stream.set_nodelay(true);
    let id = shared.next_conn.fetch_add(1, Ordering::SeqCst);
    if let Ok(dup) = stream.as_fd().try_clone_to_owned() {
        lock(&shared.live).insert(id, std::net::TcpStream::from(dup));
    }
    let hang = lock(&shared.machine).fault == Fault::Hang;
    let shared = shared.clone();
    let config = config.clone();
    tokio::spawn(async move {
        if hang {
            // Read and discard until the client gives up; never answer.
            let mut stream = stream;
            let mut buf = [0u8; 1024];
            while let Ok(n) = stream.read(&mut buf).await {
                if n == 0 {
                    break;
                }
            }
        } else {
            let handler = Session {
                shared: shared.clone(),
                user: String::new(),
            };
            if let Ok(session) = server::run_stream(config, stream, handler).await {
                let _ = session.await;
            }
        }
        lock(&shared.live).remove(&id);
    });
}

async fn serve_control(listener: tokio::net::TcpListener, shared: Arc<Shared>) {
    while let Ok((stream, _)) = listener.accept().await {
        let shared = shared.clone();
        tokio::spawn(async move {
            let (r, mut w) = stream.into_split();
            let mut lines = tokio::io::BufReader::new(r).lines();
            while let Ok(Some(line)) = lines.next_line().await {
                let Some(reply) = shared.control(&line) else {
                    // A hung controller: hold the connection, say nothing.
                    while let Ok(Some(_)) = lines.next_line().await {}
                    break;
                };
                if w.write_all(format!("{reply}\n").as_bytes()).await.is_err() {
                    break;
                }
            }
        });
    }
}

/// One SSH connection to the device.
struct Session {
    shared: Arc<Shared>,
    user: String,
}

impl server::Handler for Session {
    type Error = russh::Error;

    async fn auth_publickey_offered(
        &mut self,
        _user: &str,
        offer: PublicKeyOffer<'_>,
    ) -> Result<Auth, Self::Error> {
        Ok(if self.shared.authorized(offer.public_key) {
            Auth::Accept
        } else {
            Auth::reject()
        })
    }

    async fn auth_publickey(
        &mut self,
        user: &str,
        key: VerifiedPublicKey<'_>,
    ) -> Result<Auth, Self::Error> {
        if !self.shared.authorized(key.public_key) {
            return Ok(Auth::reject());
        }
        self.user = user.to_string();
        lock(&self.shared.logins).push(Login {
            user: user.to_string(),
            method: "publickey",
        });
        Ok(Auth::Accept)
    }

    async fn auth_password(&mut self, user: &str, password: &str) -> Result<Auth, Self::Error> {
        if user != self.shared.user || password != self.shared.password {
            return Ok(Auth::reject());
        }
        self.user = user.to_string();
        lock(&self.shared.logins).push(Login {
            user: user.to_string(),
            method: "password",
        });
        Ok(Auth::Accept)
    }

    async fn channel_open_session(
        &mut self,
        channel: Channel<Msg>,
        reply: server::ChannelOpenHandle,
        session: &mut server::Session,
    ) -> Result<(), Self::Error> {
        reply.accept().await;
        tokio::spawn(run_channel(
            self.shared.clone(),
            channel,
            session.handle(),
            self.user.clone(),
        ));
        Ok(())
    }

    async fn exec_request(
        &mut self,
        channel: russh::ChannelId,
        data: &[u8],
        session: &mut server::Session,
    ) -> Result<(), Self::Error> {
        let record = ExecRecord {
            user: self.user.clone(),
            command: String::from_utf8_lossy(data).into_owned(),
        };
        lock(&self.shared.history).push(Event::Exec(record.clone()));
        lock(&self.shared.records).push(record);
        session.channel_success(channel)?;
        Ok(())
    }

    async fn shell_request(
        &mut self,
        channel: russh::ChannelId,
        session: &mut server::Session,
    ) -> Result<(), Self::Error> {
        session.channel_failure(channel)?;
        Ok(())
    }

    async fn subsystem_request(
        &mut self,
        channel: russh::ChannelId,
        _name: &str,
        session: &mut server::Session,
    ) -> Result<(), Self::Error> {
        session.channel_failure(channel)?;
        Ok(())
    }
}

/// Serves one session channel: waits for its exec request and answers it.
async fn run_channel(
    shared: Arc<Shared>,
    channel: Channel<Msg>,
    handle: server::Handle,
    user: String,
) {
    let id = channel.id();
    let (mut rx, tx) = channel.split();
    let command = loop {
        match rx.wait().await {
            Some(ChannelMsg::Exec { command, .. }) => {
                break String::from_utf8_lossy(&command).into_owned();
            }
            Some(ChannelMsg::Close) | None => return,
            Some(ChannelMsg::RequestShell { .. }) | Some(ChannelMsg::RequestSubsystem { .. }) => {
                let _ = tx.close().await;
                return;
            }
            Some(_) => {}
        }
    };
    if let Some(rule) = shared.rule_for(&command) {
        let reply = async {
            tokio::time::sleep(rule.delay).await;
            if !rule.stdout.is_empty() {
                let _ = tx.data_bytes(rule.stdout.clone()).await;
            }
            if !rule.stderr.is_empty() {
                let _ = tx.extended_data_bytes(1, rule.stderr.clone()).await;
            }
            let _ = tx.exit_status(rule.status).await;
            let _ = tx.eof().await;
            let _ = tx.close().await;
            true
        };
        // Input is drained (and ignored) so the connection never stalls;
        // a client that closes first cancels the answer.
        let drain = async {
            while let Some(msg) = rx.wait().await {
                if matches!(msg, ChannelMsg::Close) {
                    break;
                }
            }
            false
        };
        let answered = tokio::select! {
            a = reply => a,
            a = drain => a,
        };
        if answered && let Some(down_for) = rule.reboot_after {
            // Let the answer leave before the "power cut".
            tokio::time::sleep(Duration::from_millis(50)).await;
            shared.reboot(down_for);
        }
        return;
    }
    run_process(&shared, id, &command, rx, tx, handle, &user).await;
}

/// Runs `command` with `/bin/sh -c` in the device's home.
async fn run_process(
    shared: &Arc<Shared>,
    id: russh::ChannelId,
    command: &str,
    mut rx: russh::ChannelReadHalf,
    tx: russh::ChannelWriteHalf<Msg>,
    handle: server::Handle,
    user: &str,
) {
    let system_path =
        std::env::var_os("PATH").unwrap_or_else(|| "/usr/local/bin:/usr/bin:/bin".into());
    let mut path = shared.bin.clone().into_os_string();
    path.push(":");
    path.push(system_path);
    let command = rewrite::rewrite(command, &shared.root);
    shared.refresh_dev_nodes();
    let mut cmd = tokio::process::Command::new("/bin/sh");
    cmd.arg("-c")
        .arg(&command)
        .current_dir(&shared.home)
        .env_clear()
        .env("HOME", &shared.home)
        .env("PATH", path)
        .env("TMPDIR", shared.root.join("tmp"))
        .env("LABSIM_ROOT", &shared.root)
        .env("USER", user)
        .env("LOGNAME", user)
        .env("SHELL", "/bin/sh")
        .env("LANG", "C.UTF-8")
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .process_group(0)
        .kill_on_drop(true);
    let mut child = match cmd.spawn() {
        Ok(c) => c,
        Err(e) => {
            let _ = tx
                .extended_data_bytes(1, Bytes::from(format!("sh: {e}\n")))
                .await;
            let _ = tx.exit_status(127).await;
            let _ = tx.eof().await;
            let _ = tx.close().await;
            return;
        }
    };
    let pgid = child.id().map(|p| p as i32);
    if let Some(pgid) = pgid {
        lock(&shared.procs).insert(pgid);
    }
    let mut stdin = child.stdin.take();
    let mut stdout = child.stdout.take();
    let mut stderr = child.stderr.take();
    let outputs = async {
        tokio::join!(
            forward(stdout.take(), &tx, None),
            forward(stderr.take(), &tx, Some(1)),
        );
        child.wait().await
    };
    let input = async {
        while let Some(msg) = rx.wait().await {
            match msg {
                ChannelMsg::Data { data } => {
                    if let Some(pipe) = stdin.as_mut()
                        && pipe.write_all(&data).await.is_err()
                    {
                        // The command stopped reading: discard the rest.
                        stdin = None;
                    }
                }
                ChannelMsg::Eof => stdin = None,
                ChannelMsg::Close => return,
                _ => {}
            }
        }
    };
    let status = tokio::select! {
        status = outputs => status.ok(),
        _ = input => None,
    };
    shared.record_files();
    if let Some(pgid) = pgid {
        lock(&shared.procs).remove(&pgid);
        // The command is done or abandoned: nothing it started survives.
        // SAFETY: plain syscall on the process group this channel started.
        unsafe {
            libc::killpg(pgid, libc::SIGKILL);
        }
    }
    let Some(status) = status else {
        return;
    };
    if let Some(code) = status.code() {
        let _ = tx.exit_status(code as u32).await;
    } else if let Some(signal) = status.signal() {
        let _ = handle
            .exit_signal_request(id, signal_name(signal), false, String::new(), String::new())
            .await;
    }
    let _ = tx.eof().await;
    let _ = tx.close().await;
}

/// Copies a command's output pipe into the channel (as extended data
/// `ext` when given).
async fn forward(
    pipe: Option<impl tokio::io::AsyncRead + Unpin>,
    tx: &russh::ChannelWriteHalf<Msg>,
    ext: Option<u32>,
) {
    let Some(mut pipe) = pipe else { return };
    let mut buf = vec![0u8; 32 * 1024];
    loop {
        match pipe.read(&mut buf).await {
            Ok(0) | Err(_) => break,
            Ok(n) => {
                let data = Bytes::copy_from_slice(&buf[..n]);
                let sent = match ext {
                    None => tx.data_bytes(data).await,
                    Some(ext) => tx.extended_data_bytes(ext, data).await,
                };
                if sent.is_err() {
                    break;
                }
            }
        }
    }
}

fn signal_name(signal: i32) -> Sig {
    match signal {
        libc::SIGABRT => Sig::ABRT,
        libc::SIGALRM => Sig::ALRM,
        libc::SIGFPE => Sig::FPE,
        libc::SIGHUP => Sig::HUP,
        libc::SIGILL => Sig::ILL,
        libc::SIGINT => Sig::INT,
        libc::SIGKILL => Sig::KILL,
        libc::SIGPIPE => Sig::PIPE,
        libc::SIGQUIT => Sig::QUIT,
        libc::SIGSEGV => Sig::SEGV,
        libc::SIGTERM => Sig::TERM,
        libc::SIGUSR1 => Sig::USR1,
        other => Sig::Custom(other.to_string()),
    }
}

#[cfg(test)]
mod tests {
    use std::io::{ErrorKind, Read};

    use super::*;

    /// Reads the server's first bytes within a short time, if any.
    fn banner(addr: SocketAddr) -> std::io::Result<String> {
        let mut s = std::net::TcpStream::connect(addr)?;
        s.set_read_timeout(Some(Duration::from_millis(300)))?;
        let mut buf = [0u8; 8];
        s.read_exact(&mut buf)?;
        Ok(String::from_utf8_lossy(&buf).into_owned())
    }

    /// Waits (bounded) until connections are refused.
    fn eventually_refused(addr: SocketAddr) -> bool {
        let deadline = Instant::now() + Duration::from_secs(5);
        while !refused(addr) {
            if Instant::now() >= deadline {
                return false;
            }
            std::thread::sleep(Duration::from_millis(10));
        }
        true
    }

    fn refused(addr: SocketAddr) -> bool {
        matches!(
            std::net::TcpStream::connect(addr),
            Err(e) if e.kind() == ErrorKind::ConnectionRefused
        )
    }

    #[test]
    fn faults_change_how_connections_are_treated() {
        let dut = Dut::start("127.0.0.2").unwrap();
        assert_eq!(banner(dut.addr()).unwrap(), "SSH-2.0-");
        dut.set_fault(Fault::Refuse);
        assert!(eventually_refused(dut.addr()));
        dut.set_fault(Fault::Hang);
        let deadline = Instant::now() + Duration::from_secs(5);
        while refused(dut.addr()) && Instant::now() < deadline {
            std::thread::sleep(Duration::from_millis(10));
        }
        let err = banner(dut.addr()).unwrap_err();
        assert!(
            matches!(err.kind(), ErrorKind::WouldBlock | ErrorKind::TimedOut),
            "{err}"
        );
        dut.set_fault(Fault::None);
        assert_eq!(banner(dut.addr()).unwrap(), "SSH-2.0-");
        assert!(dut.connections_accepted() >= 3);
    }

    #[test]
    fn power_scripts_drive_the_state_machine() {
        let dut = Dut::builder("127.0.0.2")
            .powered_off()
            .boot_time(Duration::from_millis(100))
            .reboot_down_for(Duration::from_millis(200))
            .start()
            .unwrap();
        assert_eq!(dut.state(), PowerState::Off);
        assert!(refused(dut.addr()));
        let dir = tempfile::tempdir().unwrap();
        let scripts = dut.write_power_scripts(dir.path()).unwrap();
        let run = |p: &Path| std::process::Command::new(p).output().unwrap();

        let out = run(&scripts.on);
        assert!(out.status.success(), "{out:?}");
        assert!(dut.wait_state(PowerState::Up, Duration::from_secs(5)));
        assert_eq!(banner(dut.addr()).unwrap(), "SSH-2.0-");

        let out = run(&scripts.reboot);
        assert!(out.status.success(), "{out:?}");
        assert_eq!(
            String::from_utf8_lossy(&out.stdout).trim(),
            "reboot: ok booting"
        );
        assert!(eventually_refused(dut.addr()));
        assert!(dut.wait_state(PowerState::Up, Duration::from_secs(5)));
        assert_eq!(banner(dut.addr()).unwrap(), "SSH-2.0-");

        assert!(run(&scripts.off).status.success());
        assert_eq!(dut.state(), PowerState::Off);
        assert_eq!(dut.power_events(), ["on", "reboot", "off"]);
        assert!(dut.control("explode").unwrap().starts_with("err"));
        assert_eq!(dut.control("reboot 50").unwrap(), "ok booting");
        assert!(dut.wait_state(PowerState::Up, Duration::from_secs(5)));
    }

    #[test]
    fn a_script_for_a_stopped_device_fails() {
        let dir = tempfile::tempdir().unwrap();
        let scripts = {
            let dut = Dut::start("127.0.0.2").unwrap();
            dut.write_power_scripts(dir.path()).unwrap()
        };
        let out = std::process::Command::new(&scripts.reboot)
            .output()
            .unwrap();
        assert!(!out.status.success());
    }

    use crate::card::{Card, Media, MuxSide};
    use crate::client::{self, Auth};

    const T: Duration = Duration::from_secs(20);

    /// Runs `command` as ubuntu with the agent key of `home`.
    fn run(dut: &Dut, home: &Path, command: &str, stdin: &[u8]) -> client::Output {
        let key = home.join(".ssh/id_ed25519");
        client::exec(dut.addr(), "ubuntu", Auth::Key(&key), command, stdin, T).unwrap()
    }

    fn ok(dut: &Dut, home: &Path, command: &str) -> String {
        let out = run(dut, home, command, b"");
        assert_eq!(out.status, Some(0), "{command}: {}", out.stderr_text());
        out.stdout_text()
    }

    #[test]
    fn commands_see_the_device_root_its_image_and_the_fakes() {
        let dut = Dut::builder("127.0.0.2").name("pi4-a").start().unwrap();
        let home = tempfile::tempdir().unwrap();
        dut.configure_client(home.path()).unwrap();
        assert!(ok(&dut, home.path(), "cat /etc/os-release").contains("Ubuntu 24.04.1 LTS"));
        assert_eq!(ok(&dut, home.path(), "hostname"), "pi4-a\n");
        assert_eq!(ok(&dut, home.path(), "cat /etc/hostname"), "pi4-a\n");
        ok(
            &dut,
            home.path(),
            "echo hi > /tmp/note && sudo mkdir -p /mnt/x",
        );
        assert_eq!(
            std::fs::read_to_string(dut.path("/tmp/note")).unwrap(),
            "hi\n"
        );
        // Relative paths are the caller's; plain data passes zstdcat.
        assert_eq!(ok(&dut, home.path(), "cd /tmp && zstdcat note"), "hi\n");
        let lsblk: serde_json::Value =
            serde_json::from_str(&ok(&dut, home.path(), "lsblk -J -o NAME,LABEL")).unwrap();
        assert_eq!(lsblk["blockdevices"][0]["name"], "mmcblk0");
        assert_eq!(lsblk["blockdevices"][0]["children"][1]["name"], "mmcblk0p2");
        assert_eq!(lsblk["blockdevices"][0]["children"][1]["label"], "writable");
        let efi = ok(&dut, home.path(), "sudo efibootmgr -o 0002,0000");
        assert!(efi.contains("BootOrder: 0002,0000"), "{efi}");
        assert_eq!(dut.efi().order, ["0002", "0000"]);
        assert!(ok(&dut, home.path(), "snap model").contains("ubuntu-core-24-pi-arm64"));
        let bad = run(&dut, home.path(), "efibootmgr -o 0009", b"");
        assert_eq!(bad.status, Some(1));
        // Firmware: an upgrade applies at the next boot.
        let devices: serde_json::Value =
            serde_json::from_str(&ok(&dut, home.path(), "sudo fwupdmgr get-devices --json"))
                .unwrap();
        let id = devices["Devices"][0]["DeviceId"]
            .as_str()
            .unwrap()
            .to_string();
        ok(
            &dut,
            home.path(),
            &format!("sudo fwupdmgr upgrade {id} -y --no-reboot-check"),
        );
        assert_eq!(dut.firmware().version, "1.0.0");
        let _ = run(&dut, home.path(), "sudo reboot", b"");
        assert!(dut.wait_state(PowerState::Booting, T));
        assert!(dut.wait_state(PowerState::Up, T));
        assert_eq!(dut.firmware().version, "1.1.0");
        let results: serde_json::Value = serde_json::from_str(&ok(
            &dut,
            home.path(),
            &format!("sudo fwupdmgr get-results {id} --json"),
        ))
        .unwrap();
        assert_eq!(results["UpdateState"], 2);

        let history = dut.history();
        let wrote = history.iter().position(
            |e| matches!(e, Event::Wrote { path, size } if path == "/tmp/note" && *size == 3),
        );
        let exec = history
            .iter()
            .position(|e| matches!(e, Event::Exec(r) if r.command.starts_with("echo hi")));
        assert!(exec.unwrap() < wrote.unwrap(), "{history:?}");
        assert!(dut.power_events().contains(&"reboot (command)".to_string()));
        let calls: Vec<String> = dut.fake_calls().into_iter().map(|c| c.name).collect();
        assert!(calls.contains(&"lsblk".to_string()) && calls.contains(&"reboot".to_string()));
    }

    #[test]
    fn a_control_host_flashes_the_card_that_the_dut_then_boots() {
        let dir = tempfile::tempdir().unwrap();
        let card = Card::new(&dir.path().join("sd.img"), "sda", Media::Sd).unwrap();
        let ch = Dut::builder("127.0.0.3")
            .name("ctl")
            .attach_card(card.clone())
            .start()
            .unwrap();
        let dut = Dut::builder("127.0.0.4")
            .name("dut")
            .boot_card(card.clone(), "mmcblk0")
            .with_serial()
            .boot_time(Duration::from_millis(200))
            .reboot_down_for(Duration::from_millis(200))
            .powered_off()
            .start()
            .unwrap();
        let home = tempfile::tempdir().unwrap();
        ch.configure_client(home.path()).unwrap();
        dut.configure_client(home.path()).unwrap();
        let h = home.path();

        // Not switched yet: no /dev/sda on the control host.
        assert_eq!(
            run(&ch, h, "lsblk -o NAME,LABEL -J /dev/sda", b"").status,
            Some(32)
        );
        ok(&ch, h, "stm -ts");
        assert_eq!(card.side(), MuxSide::ControlHost);
        let image = crate::image::Image::ubuntu("22.04.5", "jammy")
            .hostname("flashed")
            .file(
                "writable",
                ".disk/info",
                "iot-pi-jammy-classic-server-2404\n",
            );
        let compressed = image.compressed(3 << 20);
        let out = run(&ch, h, "zstdcat | sudo dd of=/dev/sda bs=16M", &compressed);
        assert_eq!(out.status, Some(0), "{}", out.stderr_text());
        assert_eq!(card.bytes().unwrap(), image.to_bytes(3 << 20));
        ok(&ch, h, "sync");
        assert!(ok(&ch, h, "sudo hdparm -z /dev/sda").contains("re-reading partition table"));
        let lsblk: serde_json::Value =
            serde_json::from_str(&ok(&ch, h, "lsblk -o NAME,LABEL -J /dev/sda")).unwrap();
        let labels: Vec<(String, String)> = lsblk["blockdevices"][0]["children"]
            .as_array()
            .unwrap()
            .iter()
            .map(|c| {
                (
                    c["name"].as_str().unwrap().into(),
                    c["label"].as_str().unwrap().into(),
                )
            })
            .collect();
        assert_eq!(
            labels,
            [
                ("sda1".to_string(), "system-boot".to_string()),
                ("sda2".into(), "writable".into())
            ]
        );
        ok(
            &ch,
            h,
            "sudo mkdir -p /mnt/agent/writable && sudo mount /dev/sda2 /mnt/agent/writable",
        );
        assert_eq!(
            ok(
                &ch,
                h,
                "grep -oP 'iot-\\w+-\\w+-classic-(server|desktop)-\\d+' /mnt/agent/writable/.disk/info"
            ),
            "iot-pi-jammy-classic-server-2404\n"
        );
        assert!(
            run(&ch, h, "ls /mnt/agent/writable/lib/firmware/*-tegra*/", b"").status != Some(0)
        );
        ok(
            &ch,
            h,
            "test -d /mnt/agent/writable/etc && echo 'ubuntu ALL=(ALL) NOPASSWD:ALL' > /tmp/sudoers",
        );
        ok(
            &ch,
            h,
            "sudo mkdir -p /mnt/agent/writable/etc/sudoers.d && sudo cp /tmp/sudoers /mnt/agent/writable/etc/sudoers.d/ubuntu",
        );
        ok(&ch, h, "sudo umount /dev/sda*; true");
        assert!(
            ch.fake_calls()
                .iter()
                .any(|c| c.name == "umount" && c.args == ["/dev/sda", "/dev/sda1", "/dev/sda2"]),
            "{:?}",
            ch.fake_calls()
        );
        assert!(
            ch.files_written()
                .contains(&"/mnt/agent/writable/etc/sudoers.d/ubuntu".to_string())
        );
        assert!(ch.files_written().contains(&"/dev/sda".to_string()));
        ok(&ch, h, "stm -dut");
        let flashed = card.image().unwrap();
        assert_eq!(
            flashed.partitions[1].files["etc/sudoers.d/ubuntu"],
            "ubuntu ALL=(ALL) NOPASSWD:ALL\n"
        );

        // The DUT boots what is on the card.
        let serial = dut.serial().unwrap();
        let mut console = std::net::TcpStream::connect(serial.addr()).unwrap();
        assert!(serial.wait_accepted(1, T));
        dut.power_on();
        assert!(dut.wait_state(PowerState::Up, T));
        assert_eq!(ok(&dut, h, "hostname"), "flashed\n");
        assert!(ok(&dut, h, "cat /etc/os-release").contains("Ubuntu 22.04.5 LTS"));
        let log = read_for(&mut console, b"flashed login: ");
        assert!(log.contains("Ubuntu 22.04.5 LTS flashed ttyS0"), "{log}");

        // Switched away, the card is not bootable: the DUT never comes back.
        card.switch(MuxSide::ControlHost);
        dut.handle().power_cycle();
        assert!(!dut.wait_state(PowerState::Up, Duration::from_millis(800)));
        let log = read_for(&mut console, b"No bootable media");
        assert!(log.contains("No bootable media found"), "{log}");
    }

    fn read_for(s: &mut std::net::TcpStream, needle: &[u8]) -> String {
        s.set_read_timeout(Some(Duration::from_millis(100)))
            .unwrap();
        let deadline = Instant::now() + T;
        let mut out = Vec::new();
        let mut buf = [0u8; 4096];
        while !out.windows(needle.len()).any(|w| w == needle) && Instant::now() < deadline {
            if let Ok(n) = s.read(&mut buf) {
                if n == 0 {
                    break;
                }
                out.extend_from_slice(&buf[..n]);
            }
        }
        String::from_utf8_lossy(&out).into_owned()
    }

    #[test]
    fn boot_and_power_faults() {
        let dut = Dut::builder("127.0.0.5")
            .boot_time(Duration::from_millis(50))
            .reboot_down_for(Duration::from_millis(50))
            .start()
            .unwrap();
        dut.set_boot_fault(BootFault::Never);
        dut.reboot(Duration::from_millis(10));
        assert!(!dut.wait_state(PowerState::Up, Duration::from_millis(500)));
        dut.set_boot_fault(BootFault::Slow(Duration::from_millis(300)));
        let started = Instant::now();
        dut.reboot(Duration::from_millis(10));
        assert!(dut.wait_state(PowerState::Up, T));
        assert!(started.elapsed() >= Duration::from_millis(300));

        let dir = tempfile::tempdir().unwrap();
        let scripts = dut.write_power_scripts(dir.path()).unwrap();
        dut.set_power_fault(PowerFault::Fail);
        let out = std::process::Command::new(&scripts.reboot)
            .output()
            .unwrap();
        assert_eq!(out.status.code(), Some(1), "{out:?}");
        assert_eq!(dut.state(), PowerState::Up);
        dut.set_power_fault(PowerFault::Hang);
        let mut child = std::process::Command::new(&scripts.reboot)
            .stdout(std::process::Stdio::null())
            .stderr(std::process::Stdio::null())
            .spawn()
            .unwrap();
        std::thread::sleep(Duration::from_millis(300));
        let hung = child.try_wait().unwrap().is_none();
        child.kill().unwrap();
        child.wait().unwrap();
        assert!(hung);
        assert_eq!(dut.state(), PowerState::Up);
    }

    #[test]
    fn key_pairs_round_trip_and_only_loopback_is_allowed() {
        let dir = tempfile::tempdir().unwrap();
        let key = agent_key(dir.path()).unwrap();
        assert!(key.public_line.starts_with("ssh-ed25519 "));
        // Idempotent: the existing key is reused.
        assert_eq!(agent_key(dir.path()).unwrap().private_key, key.private_key);
        let enc = write_key_pair(&dir.path().join("enc"), Some("pw")).unwrap();
        assert!(russh::keys::load_secret_key(&enc.private_key, None).is_err());
        assert!(russh::keys::load_secret_key(&enc.private_key, Some("pw")).is_ok());
        assert!(Dut::start("192.0.2.1").is_err());
        assert!(Rule::regex("(").is_err());
        let rule = Rule::regex("^sudo reboot").unwrap();
        assert!(rule.matches("sudo reboot now") && !rule.matches("echo sudo reboot"));
    }
}
