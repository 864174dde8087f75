//! Custom storage layouts (reference §4.5.1): the job's `disks` or the
//! device's `default_disks`, validated and planned against the node's
//! block devices before anything changes in MAAS.
//!
//! Entries are mappings with `id` and `type`:
//! - `disk`: `name` (renames the block device), `boot` (marks it as the
//!   boot disk), `ptable` (`gpt`/`msdos`, checked only), `disk` (ignored,
//!   as in the reference), `parent_disk_blkid` (pins a MAAS block device,
//!   for `default_disks` written for the reference);
//! - `partition`: `device` (a disk id), `size` (bytes, or a number with a
//!   K/M/G/T/B suffix in powers of 1000), `alloc_pct` (percent of the
//!   selected block device; `size` is then only the minimum used to select
//!   the block device), `number` (ignored);
//! - `format`: `volume` (a partition or disk id), `fstype`, `label`;
//! - `mount`: `device` (a format id), `path`.
//!
//! Each disk gets the first physical block device, in MAAS order, not yet
//! taken and at least as large as the sum of its partitions' sizes. Disks
//! are matched in the order their first partition appears, then the disks
//! without partitions, as the reference does.

use std::collections::{HashMap, HashSet};
use std::fmt;

use serde_json::{Map, Value};

/// A layout problem; the message names the entry and what to change.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct StorageError(pub String);

impl fmt::Display for StorageError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

#[derive(Debug, Clone, PartialEq, Eq)]
enum Kind {
    Disk {
        name: Option<String>,
        boot: bool,
        pinned: Option<u64>,
    },
    Partition {
        device: String,
        size: Option<u64>,
        alloc_pct: Option<u64>,
    },
    Format {
        volume: String,
        fstype: String,
        label: Option<String>,
    },
    Mount {
        device: String,
        path: String,
    },
}

impl Kind {
    fn word(&self) -> &'static str {
        match self {
            Kind::Disk { .. } => "disk",
            Kind::Partition { .. } => "partition",
            Kind::Format { .. } => "format",
            Kind::Mount { .. } => "mount",
        }
    }
}

#[derive(Debug, Clone, PartialEq, Eq)]
struct Entry {
    /// 1-based position in the list.
    n: usize,
    id: String,
    kind: Kind,
    /// The disk entry this entry ends up on.
    disk: String,
}

/// A validated layout.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Layout {
    source: String,
    entries: Vec<Entry>,
}

/// A block device of the node, as `block-devices read` reports it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct NodeDevice {
    pub id: u64,
    pub name: String,
    /// `physical`, `virtual` ...
    pub kind: String,
    pub size: u64,
    /// Ids of its partitions.
    pub partitions: Vec<u64>,
    /// `Some(mounted)` when the whole device carries a file system.
    pub filesystem: Option<bool>,
}

impl NodeDevice {
    /// Parses the JSON list MAAS returns for a node's block devices.
    pub fn list_from_json(value: &Value) -> Result<Vec<NodeDevice>, String> {
        let items = value
            .as_array()
            .ok_or("the block device list is not a JSON list")?;
        items
            .iter()
            .map(|d| {
                let id = as_u64(d.get("id")).ok_or("a block device has no numeric `id`")?;
                let size = as_u64(d.get("size"))
                    .ok_or_else(|| format!("block device {id} has no numeric `size`"))?;
                let partitions = d
                    .get("partitions")
                    .and_then(Value::as_array)
                    .map(|ps| ps.iter().filter_map(|p| as_u64(p.get("id"))).collect())
                    .unwrap_or_default();
                let filesystem = match d.get("filesystem") {
                    Some(fs @ Value::Object(_)) => {
                        Some(fs.get("mount_point").is_some_and(|m| !m.is_null()))
                    }
                    _ => None,
                };
                Ok(NodeDevice {
                    id,
                    name: d
                        .get("name")
                        .and_then(Value::as_str)
                        .unwrap_or("")
                        .to_string(),
                    kind: d
                        .get("type")
                        .and_then(Value::as_str)
                        .unwrap_or("")
                        .to_string(),
                    size,
                    partitions,
                    filesystem,
                })
            })
            .collect()
    }
}

fn as_u64(v: Option<&Value>) -> Option<u64> {
    match v? {
        Value::Number(n) => n.as_u64(),
        Value::String(s) => s.trim().parse().ok(),
        _ => None,
    }
}

/// One MAAS change that removes the existing configuration.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ClearStep {
    DeletePartition { blk: u64, partition: u64 },
    Unmount { blk: u64 },
    Unformat { blk: u64 },
}

/// What clears the node's current storage configuration: every partition
/// of every non-virtual block device is deleted, and whole-device file
/// systems are unmounted and removed.
pub fn clear_steps(devices: &[NodeDevice]) -> Vec<ClearStep> {
    let mut out = Vec::new();
    for d in devices.iter().filter(|d| d.kind != "virtual") {
        for p in &d.partitions {
            out.push(ClearStep::DeletePartition {
                blk: d.id,
                partition: *p,
            });
        }
        if let Some(mounted) = d.filesystem {
            if mounted {
                out.push(ClearStep::Unmount { blk: d.id });
            }
            out.push(ClearStep::Unformat { blk: d.id });
        }
    }
    out
}

/// One MAAS change that applies the layout. Partitions are named by their
/// entry id: MAAS gives them ids only when they are created.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Step {
    SetBootDisk {
        disk: String,
        blk: u64,
    },
    Rename {
        disk: String,
        blk: u64,
        name: String,
    },
    CreatePartition {
        partition: String,
        blk: u64,
        size: u64,
    },
    FormatPartition {
        format: String,
        partition: String,
        blk: u64,
        fstype: String,
        label: Option<String>,
    },
    FormatDisk {
        format: String,
        blk: u64,
        fstype: String,
    },
    MountPartition {
        mount: String,
        partition: String,
        blk: u64,
        path: String,
    },
    MountDisk {
        mount: String,
        blk: u64,
        path: String,
    },
}

impl Step {
    /// The entry this step comes from.
    pub fn entry(&self) -> &str {
        match self {
            Step::SetBootDisk { disk, .. } | Step::Rename { disk, .. } => disk,
            Step::CreatePartition { partition, .. } => partition,
            Step::FormatPartition { format, .. } | Step::FormatDisk { format, .. } => format,
            Step::MountPartition { mount, .. } | Step::MountDisk { mount, .. } => mount,
        }
    }
}

/// The layout resolved to the node's block devices.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Plan {
    /// Disk entry id → chosen block device id, in matching order.
    pub disks: Vec<(String, u64)>,
    /// Changes in the order disk → partition → format → mount, each group
    /// in list order.
    pub steps: Vec<Step>,
}

/// Parses a partition size: bytes (a JSON integer or digits), or digits
/// with one of the suffixes K, M, G, T, B (powers of 1000,
/// case-insensitive).
pub fn parse_size(v: &Value) -> Result<u64, String> {
    let bad = || {
        format!(
            "`size` must be bytes or a whole number with a K, M, G, T or B suffix (powers of 1000), like 500M; got {v}"
        )
    };
    let bytes = match v {
        Value::Number(n) => n.as_u64().ok_or_else(bad)?,
        Value::String(s) => {
            let s = s.trim();
            let digits = s.chars().take_while(char::is_ascii_digit).count();
            let (number, suffix) = s.split_at(digits);
            if number.is_empty() {
                return Err(bad());
            }
            let power = match suffix.to_ascii_uppercase().as_str() {
                "" | "B" => 0,
                "K" => 1,
                "M" => 2,
                "G" => 3,
                "T" => 4,
                _ => return Err(bad()),
            };
            let n: u64 = number.parse().map_err(|_| bad())?;
            n.checked_mul(1000u64.pow(power)).ok_or_else(bad)?
        }
        _ => return Err(bad()),
    };
    if bytes == 0 {
        return Err("`size` must be more than 0 bytes".into());
    }
    Ok(bytes)
}

fn text(v: &Value) -> Option<String> {
    match v {
        Value::String(s) if !s.trim().is_empty() => Some(s.trim().to_string()),
        Value::Number(n) => Some(n.to_string()),
        _ => None,
    }
}

impl Layout {
    /// Validates `value` (from `source`, e.g. `provision_data.disks`):
    /// every rule that does not need the node's block devices.
    pub fn parse(value: &Value, source: &str) -> Result<Layout, StorageError> {
        let fail = |msg: String| StorageError(format!("{source}: {msg}"));
        let items = value
            .as_array()
            .ok_or_else(|| fail(format!("must be a list of storage entries, found {value}")))?;
        if items.is_empty() {
            return Err(fail(
                "is an empty list; leave it out to use the default layout".into(),
            ));
        }
        let mut entries: Vec<Entry> = Vec::new();
        let mut seen = HashSet::new();
        for (i, item) in items.iter().enumerate() {
            let n = i + 1;
            let at = |msg: String| fail(format!("entry {n}: {msg}"));
            let map = item
                .as_object()
                .ok_or_else(|| at(format!("must be a mapping, found {item}")))?;
            let id = map
                .get("id")
                .and_then(text)
                .ok_or_else(|| at("has no `id`".into()))?;
            let at = |msg: String| fail(format!("entry {n} (id `{id}`): {msg}"));
            if !seen.insert(id.clone()) {
                return Err(at("the id is used by an earlier entry too".into()));
            }
            let kind = parse_kind(map).map_err(at)?;
            entries.push(Entry {
                n,
                id,
                kind,
                disk: String::new(),
            });
        }
        let mut layout = Layout {
            source: source.to_string(),
            entries,
        };
        layout.check_references()?;
        layout.check_totals()?;
        Ok(layout)
    }

    fn err(&self, e: &Entry, msg: impl fmt::Display) -> StorageError {
        StorageError(format!(
            "{}: entry {} (id `{}`, type {}): {msg}",
            self.source,
            e.n,
            e.id,
            e.kind.word()
        ))
    }

    fn find(&self, id: &str) -> Option<&Entry> {
        self.entries.iter().find(|e| e.id == id)
    }

    /// Every `device`/`volume` names an entry of the right type; gives
    /// each entry its disk.
    fn check_references(&mut self) -> Result<(), StorageError> {
        let mut disks = Vec::with_capacity(self.entries.len());
        for e in &self.entries {
            let expect =
                |target: &str, allowed: &[&str], field: &str| -> Result<&Entry, StorageError> {
                    let t = self.find(target).ok_or_else(|| {
                        self.err(
                            e,
                            format!("`{field}` names `{target}`, which is not the id of any entry"),
                        )
                    })?;
                    if !allowed.contains(&t.kind.word()) {
                        return Err(self.err(
                            e,
                            format!(
                                "`{field}` names `{target}`, a {} entry; it must name a {} entry",
                                t.kind.word(),
                                allowed.join(" or ")
                            ),
                        ));
                    }
                    Ok(t)
                };
            let disk = match &e.kind {
                Kind::Disk { .. } => e.id.clone(),
                Kind::Partition { device, .. } => expect(device, &["disk"], "device")?.id.clone(),
                Kind::Format { volume, .. } => {
                    let v = expect(volume, &["partition", "disk"], "volume")?;
                    match &v.kind {
                        Kind::Partition { device, .. } => device.clone(),
                        _ => v.id.clone(),
                    }
                }
                Kind::Mount { device, .. } => {
                    let f = expect(device, &["format"], "device")?;
                    let Kind::Format { volume, .. } = &f.kind else {
                        unreachable!("checked to be a format entry")
                    };
                    match self.find(volume).map(|v| &v.kind) {
                        Some(Kind::Partition { device, .. }) => device.clone(),
                        _ => volume.clone(),
                    }
                }
            };
            disks.push(disk);
        }
        for (e, disk) in self.entries.iter_mut().zip(disks) {
            e.disk = disk;
        }
        // One format per volume, one mount per format, no whole-disk file
        // system on a partitioned disk.
        let mut formatted: HashMap<&str, &Entry> = HashMap::new();
        let mut mounted: HashMap<&str, &Entry> = HashMap::new();
        for e in &self.entries {
            match &e.kind {
                Kind::Format { volume, .. } => {
                    if let Some(first) = formatted.insert(volume, e) {
                        return Err(self.err(
                            e,
                            format!("`{volume}` is already formatted by entry `{}`", first.id),
                        ));
                    }
                    if matches!(self.find(volume).map(|v| &v.kind), Some(Kind::Disk { .. }))
                        && let Some(p) = self.entries.iter().find(|p| {
                            matches!(&p.kind, Kind::Partition { device, .. } if device == volume)
                        })
                    {
                        return Err(self.err(
                            e,
                            format!(
                                "formats the whole disk `{volume}`, which also has partition `{}`; format the partitions instead",
                                p.id
                            ),
                        ));
                    }
                }
                Kind::Mount { device, .. } => {
                    if let Some(first) = mounted.insert(device, e) {
                        return Err(self.err(
                            e,
                            format!("`{device}` is already mounted by entry `{}`", first.id),
                        ));
                    }
                }
                _ => {}
            }
        }
        Ok(())
    }

    /// `alloc_pct` adds up to at most 100 per disk.
    fn check_totals(&self) -> Result<(), StorageError> {
        for disk in self
            .entries
            .iter()
            .filter(|e| matches!(e.kind, Kind::Disk { .. }))
        {
            let mut total = 0;
            for p in self.partitions_of(&disk.id) {
                if let Kind::Partition {
                    alloc_pct: Some(pct),
                    ..
                } = p.kind
                {
                    total += pct;
                    if total > 100 {
                        return Err(self.err(
                            p,
                            format!(
                                "the total alloc_pct of the partitions on disk `{}` exceeds 100 ({total} so far)",
                                disk.id
                            ),
                        ));
                    }
                }
            }
        }
        Ok(())
    }

    fn partitions_of<'a>(&'a self, disk: &'a str) -> impl Iterator<Item = &'a Entry> + 'a {
        self.entries
            .iter()
            .filter(move |e| matches!(&e.kind, Kind::Partition { device, .. } if device == disk))
    }

    /// Chooses a block device for every disk and computes partition sizes.
    pub fn plan(&self, devices: &[NodeDevice]) -> Result<Plan, StorageError> {
        // Matching order: by first partition, then disks without one.
        let mut order: Vec<&Entry> = Vec::new();
        for p in self
            .entries
            .iter()
            .filter(|e| matches!(e.kind, Kind::Partition { .. }))
        {
            if !order.iter().any(|d| d.id == p.disk)
                && let Some(d) = self.find(&p.disk)
            {
                order.push(d);
            }
        }
        for d in self
            .entries
            .iter()
            .filter(|e| matches!(e.kind, Kind::Disk { .. }))
        {
            if !order.iter().any(|o| o.id == d.id) {
                order.push(d);
            }
        }
        let required = |disk: &str| -> u64 {
            self.partitions_of(disk)
                .filter_map(|p| match p.kind {
                    Kind::Partition { size, .. } => size,
                    _ => None,
                })
                .sum()
        };
        let describe = |taken: &HashSet<u64>| -> String {
            let list: Vec<String> = devices
                .iter()
                .map(|d| {
                    format!(
                        "{} `{}` {} {} bytes{}",
                        d.id,
                        d.name,
                        d.kind,
                        d.size,
                        if taken.contains(&d.id) {
                            " (taken)"
                        } else {
                            ""
                        }
                    )
                })
                .collect();
            if list.is_empty() {
                "none".into()
            } else {
                list.join(", ")
            }
        };
        let mut chosen: HashMap<&str, u64> = HashMap::new();
        let mut taken: HashSet<u64> = HashSet::new();
        // Pinned disks first, so size matching cannot take their device.
        for d in &order {
            if let Kind::Disk {
                pinned: Some(blk), ..
            } = d.kind
            {
                let Some(dev) = devices.iter().find(|x| x.id == blk) else {
                    return Err(self.err(
                        d,
                        format!(
                            "parent_disk_blkid {blk} is not a block device of the node (it has: {})",
                            describe(&taken)
                        ),
                    ));
                };
                if !taken.insert(blk) {
                    return Err(self.err(
                        d,
                        format!("block device {blk} is pinned by another disk too"),
                    ));
                }
                let need = required(&d.id);
                if dev.size < need {
                    return Err(self.err(
                        d,
                        format!(
                            "its partitions need {need} bytes but the pinned block device {blk} has {}",
                            dev.size
                        ),
                    ));
                }
                chosen.insert(&d.id, blk);
            }
        }
        for d in &order {
            if chosen.contains_key(d.id.as_str()) {
                continue;
            }
            let need = required(&d.id);
            let Some(dev) = devices
                .iter()
                .find(|x| x.kind == "physical" && !taken.contains(&x.id) && x.size >= need)
            else {
                return Err(self.err(
                    d,
                    format!(
                        "no free physical block device of at least {need} bytes for this disk (node block devices: {})",
                        describe(&taken)
                    ),
                ));
            };
            taken.insert(dev.id);
            chosen.insert(&d.id, dev.id);
        }
        let size_of = |blk: u64| devices.iter().find(|x| x.id == blk).map_or(0, |x| x.size);

        // Partition sizes, and a check that they fit.
        let mut sizes: HashMap<&str, u64> = HashMap::new();
        for d in &order {
            let blk = chosen[d.id.as_str()];
            let total = size_of(blk);
            let mut sum: u64 = 0;
            for p in self.partitions_of(&d.id) {
                let Kind::Partition {
                    size, alloc_pct, ..
                } = p.kind
                else {
                    continue;
                };
                let bytes = match alloc_pct {
                    Some(pct) => (u128::from(total) * u128::from(pct)).div_ceil(100) as u64,
                    None => size.unwrap_or(0),
                };
                sum = sum.saturating_add(bytes);
                if sum > total {
                    return Err(self.err(
                        p,
                        format!(
                            "the partitions of disk `{}` add up to {sum} bytes, more than the {total} bytes of block device {blk}",
                            d.id
                        ),
                    ));
                }
                sizes.insert(&p.id, bytes);
            }
        }

        let mut steps = Vec::new();
        for e in &self.entries {
            if let Kind::Disk { name, boot, .. } = &e.kind {
                let blk = chosen[e.id.as_str()];
                let boot_mount = self.entries.iter().any(|m| {
                    m.disk == e.id
                        && matches!(&m.kind, Kind::Mount { path, .. } if path.contains("/boot"))
                });
                if *boot || boot_mount {
                    steps.push(Step::SetBootDisk {
                        disk: e.id.clone(),
                        blk,
                    });
                }
                if let Some(name) = name {
                    steps.push(Step::Rename {
                        disk: e.id.clone(),
                        blk,
                        name: name.clone(),
                    });
                }
            }
        }
        for e in &self.entries {
            if let Kind::Partition { .. } = e.kind {
                steps.push(Step::CreatePartition {
                    partition: e.id.clone(),
                    blk: chosen[e.disk.as_str()],
                    size: sizes[e.id.as_str()],
                });
            }
        }
        for e in &self.entries {
            if let Kind::Format {
                volume,
                fstype,
                label,
            } = &e.kind
            {
                let blk = chosen[e.disk.as_str()];
                if self
                    .find(volume)
                    .is_some_and(|v| matches!(v.kind, Kind::Partition { .. }))
                {
                    steps.push(Step::FormatPartition {
                        format: e.id.clone(),
                        partition: volume.clone(),
                        blk,
                        fstype: fstype.clone(),
                        label: label.clone(),
                    });
                } else {
                    steps.push(Step::FormatDisk {
                        format: e.id.clone(),
                        blk,
                        fstype: fstype.clone(),
                    });
                }
            }
        }
        for e in &self.entries {
            if let Kind::Mount { device, path } = &e.kind {
                let blk = chosen[e.disk.as_str()];
                let volume = match self.find(device).map(|f| &f.kind) {
                    Some(Kind::Format { volume, .. }) => volume.clone(),
                    _ => continue,
                };
                if self
                    .find(&volume)
                    .is_some_and(|v| matches!(v.kind, Kind::Partition { .. }))
                {
                    steps.push(Step::MountPartition {
                        mount: e.id.clone(),
                        partition: volume,
                        blk,
                        path: path.clone(),
                    });
                } else {
                    steps.push(Step::MountDisk {
                        mount: e.id.clone(),
                        blk,
                        path: path.clone(),
                    });
                }
            }
        }
        Ok(Plan {
            disks: order
                .iter()
                .map(|d| (d.id.clone(), chosen[d.id.as_str()]))
                .collect(),
            steps,
        })
    }

    /// Where a layout entry came from and its position, for messages about
    /// a step that MAAS refused.
    pub fn describe(&self, id: &str) -> String {
        match self.find(id) {
            Some(e) => format!(
                "{} entry {} (id `{}`, type {})",
                self.source,
                e.n,
                e.id,
                e.kind.word()
            ),
            None => format!("{} entry `{id}`", self.source),
        }
    }
}

fn parse_kind(map: &Map<String, Value>) -> Result<Kind, String> {
    let kind = map
        .get("type")
        .and_then(Value::as_str)
        .ok_or("has no `type` (disk, partition, format or mount)")?;
    let opt_text = |key: &str| -> Result<Option<String>, String> {
        match map.get(key) {
            None | Some(Value::Null) => Ok(None),
            Some(v) => text(v)
                .map(Some)
                .ok_or_else(|| format!("`{key}` must be a non-empty string, found {v}")),
        }
    };
    let req_text = |key: &str, what: &str| -> Result<String, String> {
        opt_text(key)?.ok_or_else(|| format!("has no `{key}` ({what})"))
    };
    match kind {
        "disk" => {
            let boot = match map.get("boot") {
                None | Some(Value::Null) => false,
                Some(Value::Bool(b)) => *b,
                Some(v) => return Err(format!("`boot` must be true or false, found {v}")),
            };
            if let Some(pt) = opt_text("ptable")?
                && !matches!(pt.to_ascii_lowercase().as_str(), "gpt" | "msdos" | "mbr")
            {
                return Err(format!("`ptable` must be gpt or msdos, found `{pt}`"));
            }
            let pinned = match map.get("parent_disk_blkid") {
                None | Some(Value::Null) => None,
                Some(v) => Some(as_u64(Some(v)).ok_or_else(|| {
                    format!("`parent_disk_blkid` must be a MAAS block device id, found {v}")
                })?),
            };
            Ok(Kind::Disk {
                name: opt_text("name")?,
                boot,
                pinned,
            })
        }
        "partition" => {
            let size = match map.get("size") {
                None | Some(Value::Null) => None,
                Some(v) => Some(parse_size(v)?),
            };
            let alloc_pct = match map.get("alloc_pct") {
                None | Some(Value::Null) => None,
                Some(v) => match v.as_u64() {
                    Some(p @ 1..=100) => Some(p),
                    _ => {
                        return Err(format!(
                            "`alloc_pct` must be a whole percentage from 1 to 100, found {v}"
                        ));
                    }
                },
            };
            if size.is_none() && alloc_pct.is_none() {
                return Err("has neither `size` nor `alloc_pct`".into());
            }
            Ok(Kind::Partition {
                device: req_text("device", "the id of its disk entry")?,
                size,
                alloc_pct,
            })
        }
        "format" => Ok(Kind::Format {
            volume: req_text("volume", "the id of the partition or disk to format")?,
            fstype: req_text("fstype", "the file system type, like ext4")?,
            label: opt_text("label")?,
        }),
        "mount" => {
            let path = req_text("path", "where to mount it, like /")?;
            if !path.starts_with('/') && path != "none" {
                return Err(format!(
                    "`path` must be an absolute path (or none for swap), found `{path}`"
                ));
            }
            Ok(Kind::Mount {
                device: req_text("device", "the id of its format entry")?,
                path,
            })
        }
        other => Err(format!(
            "`type` must be disk, partition, format or mount, found `{other}`"
        )),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn devices() -> Vec<NodeDevice> {
        NodeDevice::list_from_json(&json!([
            {"id": 1, "name": "sda", "type": "physical", "size": 100_000_000_000u64,
             "partitions": [{"id": 11}], "filesystem": null},
            {"id": 2, "name": "bcache0", "type": "virtual", "size": 900_000_000_000u64,
             "partitions": [{"id": 21}], "filesystem": null},
            {"id": 3, "name": "sdb", "type": "physical", "size": 500_000_000_000u64,
             "partitions": [], "filesystem": {"fstype": "ext4", "mount_point": "/srv"}},
            {"id": 4, "name": "sdc", "type": "physical", "size": "2000000000",
             "partitions": [], "filesystem": {"fstype": "swap", "mount_point": null}},
        ]))
        .unwrap()
    }

    /// The layout of the upstream documentation (with its typo fixed).
    fn doc_layout() -> Value {
        json!([
            {"id": "disk0", "disk": 0, "type": "disk", "ptable": "gpt"},
            {"id": "disk0-part1", "device": "disk0", "type": "partition", "number": 1, "size": "2G", "alloc_pct": 80},
            {"id": "disk0-part1-format", "type": "format", "volume": "disk0-part1", "fstype": "ext4", "label": "nova-ephemeral"},
            {"id": "disk0-part1-mount", "device": "disk0-part1-format", "path": "/", "type": "mount"},
            {"id": "disk1", "disk": 1, "type": "disk", "ptable": "gpt", "name": "bootdisk"},
            {"id": "disk1-part1", "device": "disk1", "type": "partition", "number": 1, "size": "500M", "alloc_pct": 10},
            {"id": "disk1-part1-format", "type": "format", "volume": "disk1-part1", "fstype": "fat32", "label": "efi"},
            {"id": "disk1-part1-mount", "device": "disk1-part1-format", "path": "/boot/efi", "type": "mount"},
            {"id": "disk1-part2", "device": "disk1", "type": "partition", "number": 2, "size": "200G"},
            {"id": "disk1-part2-format", "volume": "disk1-part2", "type": "format", "fstype": "ext4", "label": "data"},
            {"id": "disk1-part2-mount", "device": "disk1-part2-format", "path": "/data", "type": "mount"},
        ])
    }

    #[test]
    fn sizes() {
        for (v, bytes) in [
            (json!("500"), 500),
            (json!(1234), 1234),
            (json!("10B"), 10),
            (json!("2k"), 2_000),
            (json!("500M"), 500_000_000),
            (json!("2G"), 2_000_000_000),
            (json!("3t"), 3_000_000_000_000),
        ] {
            assert_eq!(parse_size(&v), Ok(bytes), "{v}");
        }
        for v in [
            json!("1.5G"),
            json!("10GB"),
            json!("G"),
            json!("10 X"),
            json!(-1),
            json!(0),
            json!([1]),
        ] {
            assert!(parse_size(&v).is_err(), "{v}");
        }
        assert!(
            parse_size(&json!("99999999999T"))
                .unwrap_err()
                .contains("500M")
        );
    }

    #[test]
    fn clears_existing_storage() {
        assert_eq!(
            clear_steps(&devices()),
            vec![
                ClearStep::DeletePartition {
                    blk: 1,
                    partition: 11
                },
                ClearStep::Unmount { blk: 3 },
                ClearStep::Unformat { blk: 3 },
                ClearStep::Unformat { blk: 4 },
            ]
        );
    }

    #[test]
    fn plans_the_documented_layout() {
        let layout = Layout::parse(&doc_layout(), "provision_data.disks").unwrap();
        let plan = layout.plan(&devices()).unwrap();
        // disk0 needs 2 GB: sda (100 GB); disk1 needs 200.5 GB: sdb.
        assert_eq!(
            plan.disks,
            vec![("disk0".to_string(), 1), ("disk1".to_string(), 3)]
        );
        let s = |x: &str| x.to_string();
        assert_eq!(
            plan.steps,
            vec![
                Step::SetBootDisk {
                    disk: s("disk1"),
                    blk: 3
                },
                Step::Rename {
                    disk: s("disk1"),
                    blk: 3,
                    name: s("bootdisk")
                },
                Step::CreatePartition {
                    partition: s("disk0-part1"),
                    blk: 1,
                    size: 80_000_000_000
                },
                Step::CreatePartition {
                    partition: s("disk1-part1"),
                    blk: 3,
                    size: 50_000_000_000
                },
                Step::CreatePartition {
                    partition: s("disk1-part2"),
                    blk: 3,
                    size: 200_000_000_000
                },
                Step::FormatPartition {
                    format: s("disk0-part1-format"),
                    partition: s("disk0-part1"),
                    blk: 1,
                    fstype: s("ext4"),
                    label: Some(s("nova-ephemeral"))
                },
                Step::FormatPartition {
                    format: s("disk1-part1-format"),
                    partition: s("disk1-part1"),
                    blk: 3,
                    fstype: s("fat32"),
                    label: Some(s("efi"))
                },
                Step::FormatPartition {
                    format: s("disk1-part2-format"),
                    partition: s("disk1-part2"),
                    blk: 3,
                    fstype: s("ext4"),
                    label: Some(s("data"))
                },
                Step::MountPartition {
                    mount: s("disk0-part1-mount"),
                    partition: s("disk0-part1"),
                    blk: 1,
                    path: s("/")
                },
                Step::MountPartition {
                    mount: s("disk1-part1-mount"),
                    partition: s("disk1-part1"),
                    blk: 3,
                    path: s("/boot/efi")
                },
                Step::MountPartition {
                    mount: s("disk1-part2-mount"),
                    partition: s("disk1-part2"),
                    blk: 3,
                    path: s("/data")
                },
            ]
        );
    }

    #[test]
    fn alloc_pct_is_rounded_up() {
        let layout = Layout::parse(
            &json!([
                {"id": "d", "type": "disk"},
                {"id": "p", "type": "partition", "device": "d", "alloc_pct": 33},
            ]),
            "default_disks",
        )
        .unwrap();
        let devs = vec![NodeDevice {
            id: 9,
            name: "vda".into(),
            kind: "physical".into(),
            size: 1001,
            partitions: vec![],
            filesystem: None,
        }];
        let plan = layout.plan(&devs).unwrap();
        // 1001 * 33 / 100 = 330.33 -> 331 (never under-allocate).
        assert_eq!(
            plan.steps,
            vec![Step::CreatePartition {
                partition: "p".into(),
                blk: 9,
                size: 331
            }]
        );
    }

    #[test]
    fn whole_disk_formats_boot_flags_and_pins() {
        let layout = Layout::parse(
            &json!([
                {"id": "a", "type": "disk", "boot": true},
                {"id": "b", "type": "disk", "parent_disk_blkid": "4"},
                {"id": "bf", "type": "format", "volume": "b", "fstype": "swap"},
                {"id": "bm", "type": "mount", "device": "bf", "path": "none"},
            ]),
            "default_disks",
        )
        .unwrap();
        let plan = layout.plan(&devices()).unwrap();
        // `b` is pinned to sdc (4); `a` (no partitions) takes the first free
        // physical device.
        assert_eq!(plan.disks, vec![("a".to_string(), 1), ("b".to_string(), 4)]);
        assert_eq!(
            plan.steps,
            vec![
                Step::SetBootDisk {
                    disk: "a".into(),
                    blk: 1
                },
                Step::FormatDisk {
                    format: "bf".into(),
                    blk: 4,
                    fstype: "swap".into()
                },
                Step::MountDisk {
                    mount: "bm".into(),
                    blk: 4,
                    path: "none".into()
                },
            ]
        );
    }

    fn parse_err(v: Value) -> String {
        Layout::parse(&v, "provision_data.disks").unwrap_err().0
    }

    #[test]
    fn static_rules_name_the_entry() {
        let d = json!({"id": "d0", "type": "disk"});
        let cases = [
            (json!({}), "must be a list"),
            (json!([]), "empty list"),
            (json!([1]), "entry 1: must be a mapping"),
            (json!([{"type": "disk"}]), "entry 1: has no `id`"),
            (
                json!([d, {"id": "d0", "type": "disk"}]),
                "entry 2 (id `d0`): the id is used",
            ),
            (
                json!([{"id": "x", "type": "lvm"}]),
                "`type` must be disk, partition",
            ),
            (
                json!([d, {"id": "p", "type": "partition", "device": "d0", "size": "1.5G"}]),
                "entry 2 (id `p`): `size` must be",
            ),
            (
                json!([d, {"id": "p", "type": "partition", "device": "d0"}]),
                "neither `size` nor `alloc_pct`",
            ),
            (
                json!([d, {"id": "p", "type": "partition", "device": "d0", "alloc_pct": 101}]),
                "from 1 to 100",
            ),
            (
                json!([d, {"id": "p", "type": "partition", "device": "nope", "size": 1}]),
                "entry 2 (id `p`, type partition): `device` names `nope`, which is not",
            ),
            (
                json!([d, {"id": "p", "type": "partition", "device": "d0", "size": 1}, {"id": "q", "type": "partition", "device": "p", "size": 1}]),
                "`device` names `p`, a partition entry; it must name a disk entry",
            ),
            (
                json!([d, {"id": "f", "type": "format", "volume": "d0"}]),
                "has no `fstype`",
            ),
            (
                json!([d, {"id": "m", "type": "mount", "device": "d0", "path": "/"}]),
                "must name a format entry",
            ),
            (
                json!([d, {"id": "f", "type": "format", "volume": "d0", "fstype": "ext4"}, {"id": "m", "type": "mount", "device": "f", "path": "srv"}]),
                "absolute path",
            ),
            (
                json!([d, {"id": "f", "type": "format", "volume": "d0", "fstype": "ext4"}, {"id": "g", "type": "format", "volume": "d0", "fstype": "xfs"}]),
                "entry 3 (id `g`, type format): `d0` is already formatted by entry `f`",
            ),
            (
                json!([d, {"id": "f", "type": "format", "volume": "d0", "fstype": "ext4"}, {"id": "m", "type": "mount", "device": "f", "path": "/"}, {"id": "n", "type": "mount", "device": "f", "path": "/x"}]),
                "already mounted by entry `m`",
            ),
            (
                json!([d, {"id": "p", "type": "partition", "device": "d0", "size": 1}, {"id": "f", "type": "format", "volume": "d0", "fstype": "ext4"}]),
                "also has partition `p`",
            ),
            (
                json!([{"id": "d0", "type": "disk", "boot": "yes"}]),
                "`boot` must be true or false",
            ),
            (
                json!([{"id": "d0", "type": "disk", "ptable": "zfs"}]),
                "`ptable` must be gpt or msdos",
            ),
        ];
        for (v, want) in cases {
            let err = parse_err(v.clone());
            assert!(err.contains(want), "{v}: {err}");
            assert!(err.starts_with("provision_data.disks: "), "{err}");
        }
    }

    #[test]
    fn alloc_pct_over_100_per_disk() {
        let err = parse_err(json!([
            {"id": "d0", "type": "disk"},
            {"id": "d1", "type": "disk"},
            {"id": "a", "type": "partition", "device": "d0", "alloc_pct": 60},
            {"id": "b", "type": "partition", "device": "d1", "alloc_pct": 60},
            {"id": "c", "type": "partition", "device": "d0", "alloc_pct": 50},
        ]));
        assert!(err.contains("entry 5 (id `c`, type partition)"), "{err}");
        assert!(
            err.contains("on disk `d0` exceeds 100 (110 so far)"),
            "{err}"
        );
    }

    #[test]
    fn block_device_selection_failures() {
        // 150 GB fits only sdb; the second disk then finds nothing.
        let layout = Layout::parse(
            &json!([
                {"id": "d0", "type": "disk"},
                {"id": "d1", "type": "disk"},
                {"id": "p0", "type": "partition", "device": "d0", "size": "150G"},
                {"id": "p1", "type": "partition", "device": "d1", "size": "150G"},
            ]),
            "provision_data.disks",
        )
        .unwrap();
        let err = layout.plan(&devices()).unwrap_err().0;
        assert!(err.contains("entry 2 (id `d1`, type disk)"), "{err}");
        assert!(err.contains("at least 150000000000 bytes"), "{err}");
        assert!(
            err.contains("3 `sdb` physical 500000000000 bytes (taken)"),
            "{err}"
        );
        // A fixed size plus a percentage can overflow the device.
        let layout = Layout::parse(
            &json!([
                {"id": "d0", "type": "disk"},
                {"id": "p0", "type": "partition", "device": "d0", "size": "60G"},
                {"id": "p1", "type": "partition", "device": "d0", "alloc_pct": 50},
            ]),
            "provision_data.disks",
        )
        .unwrap();
        let err = layout.plan(&devices()).unwrap_err().0;
        assert!(
            err.contains("(id `p1`, type partition)") && err.contains("110000000000 bytes"),
            "{err}"
        );
        // Pins must exist.
        let layout = Layout::parse(
            &json!([{"id": "d0", "type": "disk", "parent_disk_blkid": 77}]),
            "default_disks",
        )
        .unwrap();
        let err = layout.plan(&devices()).unwrap_err().0;
        assert!(
            err.starts_with("default_disks: entry 1 (id `d0`, type disk): parent_disk_blkid 77"),
            "{err}"
        );
    }
}
