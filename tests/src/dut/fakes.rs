//! Fake system programs on the `PATH` of executed commands.
//!
//! `sudo` (runs the rest of its command line) and `sync` (does nothing) are
//! plain scripts. The others are small bash scripts that hand their
//! arguments, working directory and standard streams (through three named
//! pipes) to the simulator over TCP; the simulator answers them from its
//! state and sends back the exit status:
//!
//! | program | what it does |
//! |---|---|
//! | `reboot`, `poweroff`, `halt`, `shutdown [-r]` | power-cycles / powers off the device shortly after returning |
//! | `lsblk [-J] [-o COLS] [-n] [-d] [-b] [-p] [DEV...]` | the simulated disks: cards on this side of their mux, and the built-in disk; partitions with their labels |
//! | `mount [-o ..] [-t ..] DEV DIR`, `mount` | extracts a partition of a simulated image into `DIR`; lists mounts |
//! | `umount DIR\|DEV...` | writes the directory back into the image (card), empties it |
//! | `hdparm -z DEV` | re-reads the partition table of a present disk |
//! | `zstdcat [FILE...]` | decompresses zstd (in-process); passes other data through |
//! | `efibootmgr [-o ORDER] [-n NEXT] [-N] [-v]` | a boot order kept by the simulator |
//! | `snap model\|changes\|list\|version\|install\|refresh\|remove` | a small snapd |
//! | `fwupdmgr --version\|refresh\|get-devices --json\|upgrade\|update\|get-results` | one updatable device; an upgrade applies at the next boot |
//! | `hostname` | the installed image's host name |
//! | `stm -ts\|-dut` | MuxPi: the SD card to the control host / to the DUT |
//! | `muxctl sdwire\|typecmux plug_to_self\|set DUT\|set TS` | SDWire / TypeC mux; `plug_to_self` prints the block device (no newline) |

use std::collections::BTreeMap;
use std::fs::File;
use std::io::{Read, Write};
use std::net::SocketAddr;
use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use serde_json::{Value, json};
use tokio::io::{AsyncReadExt, AsyncWriteExt};

use super::{FakeCall, Shared, lock};
use crate::card::{Card, Media, MuxSide};
use crate::image::Image;

/// Fakes answered by the simulator.
pub const SERVICE_FAKES: [&str; 15] = [
    "reboot",
    "poweroff",
    "halt",
    "shutdown",
    "lsblk",
    "mount",
    "umount",
    "hdparm",
    "zstdcat",
    "efibootmgr",
    "snap",
    "fwupdmgr",
    "hostname",
    "stm",
    "muxctl",
];

/// How long the simulator waits for a fake's pipes to be opened.
const PIPE_TIMEOUT: Duration = Duration::from_secs(10);

/// Writes the fakes into `bin`.
pub fn install(bin: &Path, calls: &Path, service: SocketAddr, device: &str) -> std::io::Result<()> {
    std::fs::create_dir_all(bin)?;
    std::fs::create_dir_all(calls)?;
    let write = |name: &str, text: String| -> std::io::Result<()> {
        let path = bin.join(name);
        std::fs::write(&path, text)?;
        std::fs::set_permissions(&path, std::fs::Permissions::from_mode(0o755))
    };
    write(
        "sudo",
        "#!/bin/bash\n\
         # labsim: every user may do anything; sudo runs the rest of its command line.\n\
         while [ $# -gt 0 ]; do\n\
         \x20 case \"$1\" in\n\
         \x20   -u|-g|-C|-D|-h|-p|-r|-t|-U) shift 2 ;;\n\
         \x20   --) shift; break ;;\n\
         \x20   -*) shift ;;\n\
         \x20   *) break ;;\n\
         \x20 esac\n\
         done\n\
         [ $# -gt 0 ] || { echo 'usage: sudo command' >&2; exit 1; }\n\
         exec \"$@\"\n"
            .to_string(),
    )?;
    write(
        "sync",
        "#!/bin/sh\n# labsim: nothing to flush on a simulated device.\nexit 0\n".to_string(),
    )?;
    for name in SERVICE_FAKES {
        write(
            name,
            format!(
                "#!/bin/bash\n\
                 # labsim: fake `{name}` of the simulated device {device}; the simulator answers it.\n\
                 d=$(mktemp -d '{calls}/call.XXXXXX') || exit 125\n\
                 trap 'rm -rf \"$d\"' EXIT\n\
                 mkfifo \"$d/0\" \"$d/1\" \"$d/2\" || exit 125\n\
                 exec 3<>/dev/tcp/{ip}/{port} || {{ echo '{name}: the simulator is not reachable' >&2; exit 125; }}\n\
                 {{ printf '%s\\0' \"$d\" \"$PWD\" '{name}' \"$#\"; [ \"$#\" -eq 0 ] || printf '%s\\0' \"$@\"; }} >&3\n\
                 exec 4<&0\n\
                 cat <&4 >\"$d/0\" 2>/dev/null &\n\
                 i=$!\n\
                 cat \"$d/2\" >&2 &\n\
                 e=$!\n\
                 cat \"$d/1\"\n\
                 wait \"$e\"\n\
                 kill \"$i\" 2>/dev/null\n\
                 IFS= read -r st <&3 || st=125\n\
                 exit \"${{st:-125}}\"\n",
                calls = calls.display(),
                ip = service.ip(),
                port = service.port(),
            ),
        )?;
    }
    Ok(())
}

/// One call of a fake, as received.
struct CallRequest {
    dir: PathBuf,
    cwd: PathBuf,
    name: String,
    args: Vec<String>,
}

/// Serves the fakes' calls.
pub(super) async fn serve(listener: tokio::net::TcpListener, shared: Arc<Shared>) {
    while let Ok((stream, _)) = listener.accept().await {
        let shared = shared.clone();
        tokio::spawn(async move {
            let mut stream = stream;
            let Ok(Ok(Some(req))) =
                tokio::time::timeout(Duration::from_secs(10), read_request(&mut stream)).await
            else {
                return;
            };
            let status = tokio::task::spawn_blocking(move || call(&shared, req))
                .await
                .unwrap_or(125);
            let _ = stream.write_all(format!("{status}\n").as_bytes()).await;
        });
    }
}

async fn read_request(stream: &mut tokio::net::TcpStream) -> std::io::Result<Option<CallRequest>> {
    let mut buf = Vec::new();
    let mut chunk = [0u8; 4096];
    loop {
        let fields: Vec<&[u8]> = buf.split(|b| *b == 0).collect();
        // The last piece is what follows the last NUL (maybe empty).
        let complete = fields.len().saturating_sub(1);
        if complete >= 4 {
            let argc: usize = std::str::from_utf8(fields[3])
                .ok()
                .and_then(|s| s.parse().ok())
                .unwrap_or(usize::MAX);
            if argc != usize::MAX && complete >= 4 + argc {
                let s = |b: &[u8]| String::from_utf8_lossy(b).into_owned();
                return Ok(Some(CallRequest {
                    dir: PathBuf::from(s(fields[0])),
                    cwd: PathBuf::from(s(fields[1])),
                    name: s(fields[2]),
                    args: fields[4..4 + argc].iter().map(|a| s(a)).collect(),
                }));
            }
            if argc == usize::MAX {
                return Ok(None);
            }
        }
        if buf.len() > 1 << 20 {
            return Ok(None);
        }
        let n = stream.read(&mut chunk).await?;
        if n == 0 {
            return Ok(None);
        }
        buf.extend_from_slice(&chunk[..n]);
    }
}

/// Opens a named pipe, giving up (and unblocking the open) after
/// [`PIPE_TIMEOUT`].
fn open_fifo(path: &Path, write: bool) -> Option<File> {
    let (tx, rx) = std::sync::mpsc::channel();
    let p = path.to_path_buf();
    std::thread::spawn(move || {
        let f = if write {
            std::fs::OpenOptions::new().write(true).open(&p)
        } else {
            File::open(&p)
        };
        let _ = tx.send(f);
    });
    match rx.recv_timeout(PIPE_TIMEOUT) {
        Ok(f) => f.ok(),
        Err(_) => {
            // Open the other end ourselves so the blocked open returns.
            use std::os::unix::fs::OpenOptionsExt;
            let _ = std::fs::OpenOptions::new()
                .read(write)
                .write(!write)
                .custom_flags(libc::O_NONBLOCK)
                .open(path);
            let _ = rx.recv_timeout(Duration::from_secs(1));
            None
        }
    }
}

/// The standard streams of a fake.
pub(super) struct Io {
    stdin: File,
    stdout: File,
    stderr: File,
}

impl Io {
    fn out(&mut self, text: &str) {
        let _ = self.stdout.write_all(text.as_bytes());
    }

    fn err(&mut self, text: &str) {
        let _ = self.stderr.write_all(text.as_bytes());
    }
}

fn call(shared: &Arc<Shared>, req: CallRequest) -> i32 {
    // The pipes live in the device's call directory, nowhere else.
    if !req.dir.starts_with(&shared.calls) {
        return 125;
    }
    let Some(stdin) = open_fifo(&req.dir.join("0"), false) else {
        return 125;
    };
    let Some(stdout) = open_fifo(&req.dir.join("1"), true) else {
        return 125;
    };
    let Some(stderr) = open_fifo(&req.dir.join("2"), true) else {
        return 125;
    };
    let mut io = Io {
        stdin,
        stdout,
        stderr,
    };
    let root = shared.root.to_string_lossy().into_owned();
    lock(&shared.fake_calls).push(FakeCall {
        name: req.name.clone(),
        args: req.args.iter().map(|a| a.replace(&root, "")).collect(),
    });
    let args: Vec<&str> = req.args.iter().map(String::as_str).collect();
    let cwd = req.cwd.as_path();
    if matches!(req.name.as_str(), "hdparm" | "lsblk" | "stm" | "muxctl") {
        shared.refresh_dev_nodes();
    }
    match req.name.as_str() {
        "reboot" => power(shared, &mut io, "reboot"),
        "poweroff" | "halt" => power(shared, &mut io, "off"),
        "shutdown" => {
            let action = if args.iter().any(|a| *a == "-r" || *a == "--reboot") {
                "reboot"
            } else {
                "off"
            };
            power(shared, &mut io, action)
        }
        "lsblk" => lsblk(shared, &mut io, &args),
        "mount" => mount(shared, &mut io, &args, cwd),
        "umount" => umount(shared, &mut io, &args, cwd),
        "hdparm" => hdparm(shared, &mut io, &args),
        "zstdcat" => zstdcat(shared, &mut io, &args, cwd),
        "efibootmgr" => efibootmgr(shared, &mut io, &args),
        "snap" => snap(shared, &mut io, &args),
        "fwupdmgr" => fwupdmgr(shared, &mut io, &args),
        "hostname" => {
            if args.contains(&"-I") || args.contains(&"-i") {
                io.out(&format!("{}\n", shared.addr.ip()));
            } else {
                io.out(&format!("{}\n", shared.hostname()));
            }
            0
        }
        "stm" => stm(shared, &mut io, &args),
        "muxctl" => muxctl(shared, &mut io, &args),
        other => {
            io.err(&format!("{other}: not simulated\n"));
            127
        }
    }
}

fn power(shared: &Arc<Shared>, io: &mut Io, action: &str) -> i32 {
    lock(&shared.power_events).push(format!("{action} (command)"));
    let shared = shared.clone();
    let action = action.to_string();
    // Let the command return and its answer leave before the power cut.
    std::thread::spawn(move || {
        std::thread::sleep(Duration::from_millis(100));
        if action == "reboot" {
            shared.reboot(shared.reboot_down_for);
        } else {
            shared.power_off();
        }
    });
    let _ = io;
    0
}

/// A disk as the device sees it now.
pub(super) struct Disk {
    pub name: String,
    pub card: Option<Card>,
    pub image: Option<Image>,
    pub size: u64,
}

/// Partition `n` (1-based) of disk `name`: `sda2`, `mmcblk0p2`.
pub fn partition_name(disk: &str, n: usize) -> String {
    if disk.ends_with(|c: char| c.is_ascii_digit()) {
        format!("{disk}p{n}")
    } else {
        format!("{disk}{n}")
    }
}

/// The disk and partition index a `/dev/...` path (real or device view)
/// names.
fn resolve(shared: &Shared, disks: &[Disk], arg: &str) -> Option<(usize, Option<usize>)> {
    let root = shared.root.to_string_lossy();
    let dev = arg.strip_prefix(root.as_ref()).unwrap_or(arg);
    let name = dev.strip_prefix("/dev/").unwrap_or(dev);
    for (i, d) in disks.iter().enumerate() {
        if d.name == name {
            return Some((i, None));
        }
        let parts = d.image.as_ref().map_or(0, |im| im.partitions.len());
        for n in 1..=parts {
            if partition_name(&d.name, n) == name {
                return Some((i, Some(n - 1)));
            }
        }
    }
    None
}

fn human(size: u64) -> String {
    let units = ["B", "K", "M", "G", "T"];
    let mut v = size as f64;
    let mut u = 0;
    while v >= 1024.0 && u < units.len() - 1 {
        v /= 1024.0;
        u += 1;
    }
    if u == 0 {
        format!("{size}B")
    } else if v >= 10.0 {
        format!("{v:.0}{}", units[u])
    } else {
        format!("{v:.1}{}", units[u])
    }
}

fn lsblk(shared: &Arc<Shared>, io: &mut Io, args: &[&str]) -> i32 {
    let mut json_out = false;
    let mut cols: Vec<String> = ["NAME", "MAJ:MIN", "RM", "SIZE", "RO", "TYPE", "MOUNTPOINTS"]
        .map(String::from)
        .to_vec();
    let mut headings = true;
    let mut nodeps = false;
    let mut bytes = false;
    let mut paths = false;
    let mut devices = Vec::new();
    let mut it = args.iter();
    while let Some(a) = it.next() {
        match *a {
            "-J" | "--json" => json_out = true,
            "-n" | "--noheadings" => headings = false,
            "-d" | "--nodeps" => nodeps = true,
            "-b" | "--bytes" => bytes = true,
            "-p" | "--paths" => paths = true,
            "-l" | "--list" | "-a" | "--all" => {}
            "-o" | "--output" => {
                if let Some(v) = it.next() {
                    cols = v.split(',').map(|c| c.to_uppercase()).collect();
                }
            }
            s if s.starts_with("-o") => {
                cols = s[2..].split(',').map(|c| c.to_uppercase()).collect();
            }
            s if s.starts_with("--output=") => {
                cols = s[9..].split(',').map(|c| c.to_uppercase()).collect();
            }
            s if s.starts_with('-') => {
                io.err(&format!("lsblk: unsupported option {s} (simulated)\n"));
                return 1;
            }
            s => devices.push(s.to_string()),
        }
    }
    let disks = shared.disks();
    let mut selected = Vec::new();
    for d in &devices {
        match resolve(shared, &disks, d) {
            Some(found) => selected.push(found),
            None => {
                let shown = d.replace(shared.root.to_string_lossy().as_ref(), "");
                io.err(&format!("lsblk: {shown}: not a block device\n"));
                return 32;
            }
        }
    }
    if devices.is_empty() {
        selected = (0..disks.len()).map(|i| (i, None)).collect();
    }
    let mounts = lock(&shared.mounts).clone();
    let row = |name: &str, disk: &Disk, part: Option<usize>| -> BTreeMap<String, Value> {
        let mut m = BTreeMap::new();
        let label = part.and_then(|p| {
            disk.image
                .as_ref()
                .and_then(|im| im.partitions.get(p))
                .map(|p| p.label.clone())
        });
        let parts = disk
            .image
            .as_ref()
            .map_or(1, |im| im.partitions.len().max(1)) as u64;
        let size = match part {
            Some(_) => disk.size / parts,
            None => disk.size,
        };
        let mountpoint = mounts
            .iter()
            .find(|m| m.source == name)
            .map(|m| super::rewrite::device_path(&shared.root, &m.dir));
        for c in &cols {
            let v = match c.as_str() {
                "NAME" => json!(if paths {
                    format!("/dev/{name}")
                } else {
                    name.to_string()
                }),
                "PATH" => json!(format!("/dev/{name}")),
                "KNAME" => json!(name),
                "LABEL" | "PARTLABEL" => json!(label),
                "FSTYPE" => json!(label.as_ref().map(|l| {
                    if l == "system-boot" || l == "ubuntu-seed" {
                        "vfat"
                    } else {
                        "ext4"
                    }
                })),
                "SIZE" => {
                    if bytes {
                        json!(size)
                    } else {
                        json!(human(size))
                    }
                }
                "TYPE" => json!(if part.is_some() { "part" } else { "disk" }),
                "RM" => json!(disk.card.is_some()),
                "RO" => json!(false),
                "MAJ:MIN" => json!(format!("8:{}", part.map_or(0, |p| p + 1))),
                "MOUNTPOINT" => json!(mountpoint),
                "MOUNTPOINTS" => json!([mountpoint]),
                _ => Value::Null,
            };
            m.insert(c.to_lowercase(), v);
        }
        m
    };
    let mut tree = Vec::new();
    for (i, part) in selected {
        let disk = &disks[i];
        match part {
            Some(p) => tree.push((
                row(&partition_name(&disk.name, p + 1), disk, Some(p)),
                vec![],
            )),
            None => {
                let children = if nodeps {
                    vec![]
                } else {
                    let n = disk.image.as_ref().map_or(0, |im| im.partitions.len());
                    (0..n)
                        .map(|p| row(&partition_name(&disk.name, p + 1), disk, Some(p)))
                        .collect()
                };
                tree.push((row(&disk.name, disk, None), children));
            }
        }
    }
    if json_out {
        let devices: Vec<Value> = tree
            .into_iter()
            .map(|(mut r, children)| {
                let mut obj = serde_json::Map::new();
                for c in &cols {
                    let k = c.to_lowercase();
                    obj.insert(k.clone(), r.remove(&k).unwrap_or(Value::Null));
                }
                if !children.is_empty() {
                    let kids = children
                        .into_iter()
                        .map(|mut r| {
                            let mut o = serde_json::Map::new();
                            for c in &cols {
                                let k = c.to_lowercase();
                                o.insert(k.clone(), r.remove(&k).unwrap_or(Value::Null));
                            }
                            Value::Object(o)
                        })
                        .collect();
                    obj.insert("children".into(), Value::Array(kids));
                }
                Value::Object(obj)
            })
            .collect();
        let text =
            serde_json::to_string_pretty(&json!({ "blockdevices": devices })).unwrap_or_default();
        io.out(&format!("{text}\n"));
        return 0;
    }
    let cell = |v: &Value| match v {
        Value::Null => String::new(),
        Value::String(s) => s.clone(),
        Value::Bool(b) => if *b { "1" } else { "0" }.to_string(),
        Value::Array(a) => a
            .iter()
            .filter_map(Value::as_str)
            .collect::<Vec<_>>()
            .join(","),
        other => other.to_string(),
    };
    // Rows of cells, then columns padded to their widest cell.
    let mut rows: Vec<Vec<String>> = Vec::new();
    if headings {
        rows.push(cols.clone());
    }
    for (r, children) in &tree {
        rows.push(cols.iter().map(|c| cell(&r[&c.to_lowercase()])).collect());
        for (k, child) in children.iter().enumerate() {
            let branch = if k + 1 == children.len() {
                "└─"
            } else {
                "├─"
            };
            rows.push(
                cols.iter()
                    .enumerate()
                    .map(|(ci, c)| {
                        let v = cell(&child[&c.to_lowercase()]);
                        if ci == 0 { format!("{branch}{v}") } else { v }
                    })
                    .collect(),
            );
        }
    }
    let widths: Vec<usize> = (0..cols.len())
        .map(|i| rows.iter().map(|r| r[i].chars().count()).max().unwrap_or(0))
        .collect();
    let lines: Vec<String> = rows
        .iter()
        .map(|r| {
            r.iter()
                .zip(&widths)
                .map(|(c, w)| format!("{c}{}", " ".repeat(w - c.chars().count())))
                .collect::<Vec<_>>()
                .join(" ")
                .trim_end()
                .to_string()
        })
        .collect();
    io.out(&(lines.join("\n") + "\n"));
    0
}

/// A mounted partition.
#[derive(Debug, Clone)]
pub(super) struct MountEntry {
    /// `sda2`.
    pub source: String,
    /// The disk's name.
    pub disk: String,
    pub index: usize,
    /// The real directory.
    pub dir: PathBuf,
}

/// The operands of a command line (options and their values skipped),
/// relative ones made absolute in the caller's directory `cwd`.
fn positional(args: &[&str], with_value: &[&str], cwd: &Path) -> Vec<String> {
    let mut out = Vec::new();
    let mut it = args.iter();
    while let Some(a) = it.next() {
        if with_value.contains(a) {
            it.next();
        } else if !a.starts_with('-') {
            out.push(absolute(a, cwd));
        }
    }
    out
}

fn absolute(path: &str, cwd: &Path) -> String {
    if path.starts_with('/') {
        path.to_string()
    } else {
        cwd.join(path).to_string_lossy().into_owned()
    }
}

fn mount(shared: &Arc<Shared>, io: &mut Io, args: &[&str], cwd: &Path) -> i32 {
    let pos = positional(args, &["-o", "-t", "-L", "-U", "--options", "--types"], cwd);
    let pos: Vec<&str> = pos.iter().map(String::as_str).collect();
    let view = |p: &str| p.replace(shared.root.to_string_lossy().as_ref(), "");
    if pos.is_empty() {
        for m in lock(&shared.mounts).iter() {
            io.out(&format!(
                "/dev/{} on {} type ext4 (rw,relatime)\n",
                m.source,
                super::rewrite::device_path(&shared.root, &m.dir)
            ));
        }
        return 0;
    }
    if pos.len() != 2 {
        io.err("mount: bad usage (simulated: mount DEVICE DIR)\n");
        return 1;
    }
    let (src, dir) = (pos[0], PathBuf::from(pos[1]));
    if !dir.starts_with(&shared.root) {
        io.err(&format!(
            "mount: {}: permission denied (outside the simulated device)\n",
            view(pos[1])
        ));
        return 32;
    }
    let disks = shared.disks();
    let Some((di, Some(pi))) = resolve(shared, &disks, src) else {
        io.err(&format!(
            "mount: {}: special device {} does not exist.\n",
            view(pos[1]),
            view(src)
        ));
        return 32;
    };
    if !dir.is_dir() {
        io.err(&format!(
            "mount: {}: mount point does not exist.\n",
            view(pos[1])
        ));
        return 32;
    }
    let source = partition_name(&disks[di].name, pi + 1);
    let mut mounts = lock(&shared.mounts);
    if mounts.iter().any(|m| m.dir == dir) {
        io.err(&format!(
            "mount: {}: /dev/{source} already mounted or mount point busy.\n",
            view(pos[1])
        ));
        return 32;
    }
    let Some(image) = disks[di].image.as_ref() else {
        io.err(&format!("mount: {}: wrong fs type, bad option, bad superblock on /dev/{source}, missing codepage or helper program, or other error.\n", view(pos[1])));
        return 32;
    };
    if let Err(e) = image.extract(pi, &dir) {
        io.err(&format!("mount: {}: {e}\n", view(pos[1])));
        return 32;
    }
    shared.settle_files(&dir);
    mounts.push(MountEntry {
        source,
        disk: disks[di].name.clone(),
        index: pi,
        dir,
    });
    0
}

fn umount(shared: &Arc<Shared>, io: &mut Io, args: &[&str], cwd: &Path) -> i32 {
    let pos = positional(args, &["-t", "-O"], cwd);
    let pos: Vec<&str> = pos.iter().map(String::as_str).collect();
    let view = |p: &str| p.replace(shared.root.to_string_lossy().as_ref(), "");
    if pos.is_empty() {
        io.err("umount: bad usage\n");
        return 1;
    }
    let mut status = 0;
    for arg in pos {
        let name = view(arg);
        let name = name.strip_prefix("/dev/").unwrap_or(&name).to_string();
        let entry = {
            let mut mounts = lock(&shared.mounts);
            let i = mounts
                .iter()
                .position(|m| m.dir == Path::new(arg) || m.source == name);
            i.map(|i| mounts.remove(i))
        };
        let Some(m) = entry else {
            io.err(&format!("umount: {}: not mounted.\n", view(arg)));
            status = 32;
            continue;
        };
        if let Err(e) = shared.write_back(&m) {
            io.err(&format!("umount: {}: {e}\n", view(arg)));
            status = 32;
        }
        let _ = std::fs::remove_dir_all(&m.dir);
        let _ = std::fs::create_dir_all(&m.dir);
        shared.settle_files(&m.dir);
    }
    status
}

fn hdparm(shared: &Arc<Shared>, io: &mut Io, args: &[&str]) -> i32 {
    let disks = shared.disks();
    let mut status = 0;
    for dev in args.iter().filter(|a| !a.starts_with('-')) {
        let shown = dev.replace(shared.root.to_string_lossy().as_ref(), "");
        match resolve(shared, &disks, dev) {
            Some((_, None)) => {
                io.out(&format!("\n{shown}:\n"));
                if args.contains(&"-z") {
                    io.out(" re-reading partition table\n");
                }
            }
            _ => {
                io.err(&format!("{shown}: No such file or directory\n"));
                status = 2;
            }
        }
    }
    status
}

/// zstd frames are decompressed; anything else is passed through.
fn zstdcat(shared: &Arc<Shared>, io: &mut Io, args: &[&str], cwd: &Path) -> i32 {
    let files: Vec<String> = args
        .iter()
        .filter(|a| !a.starts_with('-'))
        .map(|a| absolute(a, cwd))
        .collect();
    let mut status = 0;
    let run = |input: &mut dyn Read, out: &mut File, err: &mut File, name: &str| {
        let mut head = [0u8; 4];
        let mut got = 0;
        while got < 4 {
            match input.read(&mut head[got..]) {
                Ok(0) => break,
                Ok(n) => got += n,
                Err(_) => break,
            }
        }
        let chained = std::io::Read::chain(&head[..got], input);
        let result = if got == 4 && head == [0x28, 0xb5, 0x2f, 0xfd] {
            zstd::stream::copy_decode(chained, &mut *out)
        } else {
            let mut chained = chained;
            std::io::copy(&mut chained, out).map(|_| ())
        };
        if let Err(e) = result
            && e.kind() != std::io::ErrorKind::BrokenPipe
        {
            let _ = writeln!(err, "zstd: {name}: {e}");
            return 1;
        }
        0
    };
    if files.is_empty() {
        status = run(&mut io.stdin, &mut io.stdout, &mut io.stderr, "/*stdin*\\");
    } else {
        for f in files {
            let shown = f.replace(shared.root.to_string_lossy().as_ref(), "");
            match File::open(&f) {
                Ok(mut file) => {
                    status |= run(&mut file, &mut io.stdout, &mut io.stderr, &shown);
                }
                Err(e) => {
                    io.err(&format!("zstd: {shown}: {e}\n"));
                    status = 1;
                }
            }
        }
    }
    status
}

/// The simulated firmware boot manager.
#[derive(Debug, Clone)]
pub struct Efi {
    pub current: String,
    pub next: Option<String>,
    pub order: Vec<String>,
    pub entries: Vec<(String, String)>,
}

impl Default for Efi {
    fn default() -> Self {
        Efi {
            current: "0000".into(),
            next: None,
            order: vec!["0000".into(), "0001".into(), "0002".into()],
            entries: vec![
                ("0000".into(), "ubuntu".into()),
                (
                    "0001".into(),
                    "UEFI: PXE IPv4 Intel(R) Ethernet Connection".into(),
                ),
                ("0002".into(), "UEFI: USB Flash Disk".into()),
            ],
        }
    }
}

fn efibootmgr(shared: &Arc<Shared>, io: &mut Io, args: &[&str]) -> i32 {
    let mut efi = lock(&shared.efi);
    let known = |efi: &Efi, id: &str| efi.entries.iter().any(|(e, _)| e == id);
    let mut it = args.iter();
    while let Some(a) = it.next() {
        match *a {
            "-o" | "--bootorder" => {
                let Some(list) = it.next() else {
                    io.err("efibootmgr: option requires an argument -- 'o'\n");
                    return 1;
                };
                let order: Vec<String> = list.split(',').map(|s| s.trim().to_uppercase()).collect();
                if let Some(bad) = order.iter().find(|id| !known(&efi, id)) {
                    io.err(&format!("Invalid BootOrder order entry value{bad}\n"));
                    return 1;
                }
                efi.order = order;
            }
            "-n" | "--bootnext" => {
                let Some(id) = it.next() else {
                    io.err("efibootmgr: option requires an argument -- 'n'\n");
                    return 1;
                };
                let id = id.to_uppercase();
                if !known(&efi, &id) {
                    io.err(&format!("Boot entry {id} not found\n"));
                    return 1;
                }
                efi.next = Some(id);
            }
            "-N" | "--delete-bootnext" => efi.next = None,
            "-v" | "--verbose" | "-q" | "--quiet" => {}
            other => {
                io.err(&format!("efibootmgr: option {other} is not simulated\n"));
                return 1;
            }
        }
    }
    let mut text = String::new();
    if let Some(next) = &efi.next {
        text.push_str(&format!("BootNext: {next}\n"));
    }
    text.push_str(&format!(
        "BootCurrent: {}\nTimeout: 1 seconds\nBootOrder: {}\n",
        efi.current,
        efi.order.join(",")
    ));
    for (id, label) in &efi.entries {
        text.push_str(&format!("Boot{id}* {label}\n"));
    }
    io.out(&text);
    0
}

fn snap(shared: &Arc<Shared>, io: &mut Io, args: &[&str]) -> i32 {
    let mut snaps = lock(&shared.snaps);
    match args.first().copied() {
        Some("model") => {
            io.out(&format!(
                "brand   canonical✓\nmodel   {}\nserial  labsim-{}\n",
                shared.snap_model,
                shared.addr.ip()
            ));
            0
        }
        Some("changes") => {
            io.out("ID   Status  Spawn      Ready      Summary\n1    Done    today at 09:00 UTC  today at 09:01 UTC  Initialize system state\n2    Done    today at 09:01 UTC  today at 09:01 UTC  Initialize device\n");
            0
        }
        Some("version") => {
            io.out("snap    2.66.1\nsnapd   2.66.1\nseries  16\n");
            0
        }
        Some("list") => {
            let mut text =
                String::from("Name    Version  Rev    Tracking       Publisher   Notes\n");
            for (name, version) in snaps.iter() {
                text.push_str(&format!(
                    "{name:<7} {version:<8} 1      latest/stable  canonical✓  -\n"
                ));
            }
            io.out(&text);
            0
        }
        Some("install") | Some("refresh") => {
            let names: Vec<&str> = args[1..]
                .iter()
                .copied()
                .filter(|a| !a.starts_with('-'))
                .collect();
            for name in names {
                if !snaps.iter().any(|(n, _)| n == name) {
                    snaps.push((name.to_string(), "1.0".into()));
                }
                io.out(&format!("{name} 1.0 from Canonical✓ installed\n"));
            }
            0
        }
        Some("remove") => {
            for name in args[1..].iter().filter(|a| !a.starts_with('-')) {
                snaps.retain(|(n, _)| n != name);
                io.out(&format!("{name} removed\n"));
            }
            0
        }
        other => {
            io.err(&format!(
                "error: unknown command \"{}\", see 'snap help'.\n",
                other.unwrap_or("")
            ));
            1
        }
    }
}

/// The simulated updatable firmware.
#[derive(Debug, Clone)]
pub struct Firmware {
    pub device_id: String,
    pub name: String,
    pub version: String,
    /// Available releases, newest first.
    pub releases: Vec<String>,
    /// Version installed at the next boot.
    pub pending: Option<String>,
    /// fwupd update state of the last update (2 = success).
    pub update_state: u8,
}

impl Default for Firmware {
    fn default() -> Self {
        Firmware {
            device_id: "362301da643102b9f38477387e2193e57abaa590".into(),
            name: "System Firmware".into(),
            version: "1.0.0".into(),
            releases: vec!["1.1.0".into(), "1.0.0".into()],
            pending: None,
            update_state: 0,
        }
    }
}

fn fwupdmgr(shared: &Arc<Shared>, io: &mut Io, args: &[&str]) -> i32 {
    let mut fw = lock(&shared.firmware);
    let words: Vec<&str> = args
        .iter()
        .copied()
        .filter(|a| !a.starts_with('-'))
        .collect();
    if args.contains(&"--version") {
        io.out(
            "runtime   org.freedesktop.fwupd  1.9.16\ncompile   org.freedesktop.fwupd  1.9.16\n",
        );
        return 0;
    }
    let release = |v: &str, current: &str| {
        let mut flags = vec!["is-upgrade"];
        if v == current {
            flags = vec![];
        }
        json!({"Version": v, "Flags": flags, "Uri": format!("https://fwupd.example/{v}.cab")})
    };
    match words.first().copied() {
        Some("refresh") => {
            io.out("Updating lvfs\nDownloading…             [***************************************]\nSuccessfully downloaded new metadata: 1 local device supported\n");
            0
        }
        Some("get-devices") => {
            let releases: Vec<Value> = fw
                .releases
                .iter()
                .map(|v| release(v, &fw.version))
                .collect();
            let doc = json!({"Devices": [{
                "Name": fw.name, "DeviceId": fw.device_id, "Version": fw.version,
                "Flags": ["internal", "updatable", "registered"], "Releases": releases,
            }]});
            io.out(&format!(
                "{}\n",
                serde_json::to_string_pretty(&doc).unwrap_or_default()
            ));
            0
        }
        Some("upgrade") | Some("update") | Some("install") => {
            let Some(target) = fw.releases.first().cloned() else {
                io.out("No updatable devices\n");
                return 2;
            };
            if target == fw.version {
                io.out("Devices with no available firmware updates:\n • System Firmware\n");
                return 2;
            }
            fw.pending = Some(target.clone());
            fw.update_state = 1;
            io.out(&format!(
                "Upgrading {} from {} to {target}…\nWaiting…                 [***************************************]\nSuccessfully installed firmware\nAn update requires a reboot to complete.\n",
                fw.name, fw.version
            ));
            0
        }
        Some("get-results") => {
            let releases: Vec<Value> = vec![json!({"Version": fw.version})];
            let doc = json!({"Name": fw.name, "DeviceId": fw.device_id, "Version": fw.version,
                "UpdateState": fw.update_state, "Releases": releases});
            io.out(&format!(
                "{}\n",
                serde_json::to_string_pretty(&doc).unwrap_or_default()
            ));
            0
        }
        other => {
            io.err(&format!("Unknown command '{}'\n", other.unwrap_or("")));
            1
        }
    }
}

/// The card behind the mux for `media` (the first card when there is no
/// media of that kind and `fallback` is set).
fn card_for(shared: &Shared, media: Option<Media>) -> Option<Card> {
    let cards = lock(&shared.cards);
    match media {
        Some(m) => cards.iter().find(|c| c.media() == m).cloned(),
        None => cards
            .iter()
            .find(|c| c.media() == Media::Sd)
            .or(cards.first())
            .cloned(),
    }
}

fn stm(shared: &Arc<Shared>, io: &mut Io, args: &[&str]) -> i32 {
    let side = match args {
        ["-ts"] => MuxSide::ControlHost,
        ["-dut"] => MuxSide::Dut,
        _ => {
            io.err("usage (simulated): stm -ts | stm -dut\n");
            return 1;
        }
    };
    let Some(card) = card_for(shared, None) else {
        io.err("stm: no MuxPi SD mux attached to this host\n");
        return 1;
    };
    card.switch(side);
    shared.refresh_dev_nodes();
    0
}

fn muxctl(shared: &Arc<Shared>, io: &mut Io, args: &[&str]) -> i32 {
    let media = match args.first().copied() {
        Some("sdwire") => Media::Sd,
        Some("typecmux") => Media::Usb,
        _ => {
            io.err("usage (simulated): muxctl sdwire|typecmux plug_to_self|set DUT|set TS\n");
            return 1;
        }
    };
    let Some(card) = card_for(shared, Some(media)) else {
        io.err(&format!(
            "muxctl: no {} attached to this host\n",
            media.mux_word()
        ));
        return 1;
    };
    match &args[1..] {
        ["plug_to_self"] | ["set", "TS"] | ["set", "HOST"] => {
            card.switch(MuxSide::ControlHost);
            if args[1] == "plug_to_self" {
                io.out(&card.device_path());
            }
            0
        }
        ["set", "DUT"] => {
            card.switch(MuxSide::Dut);
            0
        }
        _ => {
            io.err("usage (simulated): muxctl sdwire|typecmux plug_to_self|set DUT|set TS\n");
            1
        }
    }
}
