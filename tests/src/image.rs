//! Simulated disk images: what tests flash onto a simulated SD card or USB
//! stick, and what a simulated device boots.
//!
//! # Format
//!
//! ```text
//! LABSIM-IMAGE 1\n
//! {"partitions":[{"label":"system-boot","files":{...}},{"label":"writable","files":{...}}]}\n
//! <padding: any bytes, ignored>
//! ```
//!
//! The first line is the magic, the second a one-line JSON document listing
//! the partitions in order (partition `n` of disk `sda` is `sda<n>`), each
//! with a label and its files: path relative to the partition's root →
//! UTF-8 content; a path ending in `/` is an empty directory. The padding
//! makes an image as large as a test wants (a transfer of a few MiB) without
//! making the header large. Anything that does not start with the magic is
//! "garbage": a device with such a card does not boot, `lsblk` shows no
//! partitions.
//!
//! Production images are zstd-compressed; [`Image::compressed`] does the
//! same, and the control host's `zstdcat` undoes it.

use std::collections::BTreeMap;
use std::io::{BufRead, Read, Write};
use std::path::Path;

use serde::{Deserialize, Serialize};

/// First line of every simulated image.
pub const MAGIC: &[u8] = b"LABSIM-IMAGE 1\n";

/// The header is read up to this size; a bigger one is garbage.
const MAX_HEADER: u64 = 64 << 20;

/// One partition.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Partition {
    /// Filesystem label (`writable`, `system-boot`, `ubuntu-seed` ...).
    pub label: String,
    /// Path (relative, `/`-separated) → content; `dir/` is an empty directory.
    #[serde(default)]
    pub files: BTreeMap<String, String>,
}

/// A simulated image: labelled partitions with files.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Image {
    pub partitions: Vec<Partition>,
}

/// Why bytes are not a simulated image.
#[derive(Debug, thiserror::Error)]
pub enum ImageError {
    #[error("not a labsim image (no `LABSIM-IMAGE 1` header)")]
    NoMagic,
    #[error("labsim image header is not valid JSON: {0}")]
    BadHeader(String),
    #[error("cannot read the image: {0}")]
    Io(#[from] std::io::Error),
}

/// `os-release` text for an Ubuntu release.
pub fn ubuntu_os_release(version: &str, codename: &str) -> String {
    let short: String = version.split('.').take(2).collect::<Vec<_>>().join(".");
    format!(
        "PRETTY_NAME=\"Ubuntu {version} LTS\"\nNAME=\"Ubuntu\"\nVERSION_ID=\"{short}\"\n\
         VERSION=\"{version} LTS ({codename})\"\nVERSION_CODENAME={codename}\nID=ubuntu\n\
         ID_LIKE=debian\nHOME_URL=\"https://www.ubuntu.com/\"\nUBUNTU_CODENAME={codename}\n"
    )
}

/// `PRETTY_NAME` (else `NAME`) of an os-release text.
pub fn pretty_name(os_release: &str) -> Option<String> {
    let field = |key: &str| {
        os_release.lines().find_map(|l| {
            l.strip_prefix(key)
                .and_then(|v| v.strip_prefix('='))
                .map(|v| v.trim().trim_matches('"').to_string())
        })
    };
    field("PRETTY_NAME").or_else(|| field("NAME"))
}

/// Partitions whose `etc/os-release` says what the image is, in the
/// order they are looked at.
const ROOT_LABELS: [&str; 3] = ["writable", "cloudimg-rootfs", "rootfs"];

impl Image {
    /// An empty image (no partitions).
    pub fn new() -> Self {
        Image::default()
    }

    /// An Ubuntu preinstalled-server-like image: `system-boot` and
    /// `writable` with os-release, hostname and a cloud-init config dir.
    pub fn ubuntu(version: &str, codename: &str) -> Self {
        Image::new()
            .file("system-boot", "config.txt", "[all]\nkernel=vmlinuz\n")
            .file(
                "system-boot",
                "cmdline.txt",
                "console=serial0,115200 root=LABEL=writable\n",
            )
            .os_release(&ubuntu_os_release(version, codename))
            .hostname("ubuntu")
            .dir("writable", "etc/cloud/cloud.cfg.d/")
            .file(
                "writable",
                "etc/cloud/cloud.cfg.d/99-fake_cloud.cfg",
                "datasource_list: [ None ]\n",
            )
    }

    /// The partition labelled `label`, created (last) if missing.
    pub fn partition_mut(&mut self, label: &str) -> &mut Partition {
        let i = match self.partitions.iter().position(|p| p.label == label) {
            Some(i) => i,
            None => {
                self.partitions.push(Partition {
                    label: label.to_string(),
                    files: BTreeMap::new(),
                });
                self.partitions.len() - 1
            }
        };
        &mut self.partitions[i]
    }

    /// Adds an (empty) partition labelled `label` if missing.
    pub fn partition(mut self, label: &str) -> Self {
        self.partition_mut(label);
        self
    }

    /// Adds a file to partition `label` (created if missing).
    pub fn file(mut self, label: &str, path: &str, content: &str) -> Self {
        let path = path.trim_start_matches('/').to_string();
        self.partition_mut(label)
            .files
            .insert(path, content.to_string());
        self
    }

    /// Adds an empty directory to partition `label`.
    pub fn dir(mut self, label: &str, path: &str) -> Self {
        let mut path = path.trim_start_matches('/').to_string();
        if !path.ends_with('/') {
            path.push('/');
        }
        self.partition_mut(label).files.insert(path, String::new());
        self
    }

    /// Sets `etc/os-release` of the root partition (`writable` unless the
    /// image already has another root label).
    pub fn os_release(self, text: &str) -> Self {
        let label = self.root_label();
        self.file(&label, "etc/os-release", text)
    }

    /// Sets `etc/hostname` of the root partition.
    pub fn hostname(self, name: &str) -> Self {
        let label = self.root_label();
        self.file(&label, "etc/hostname", &format!("{name}\n"))
    }

    fn root_label(&self) -> String {
        ROOT_LABELS
            .iter()
            .find(|l| self.partitions.iter().any(|p| p.label == **l))
            .unwrap_or(&"writable")
            .to_string()
    }

    /// A file of the root partition (`writable`, `cloudimg-rootfs`,
    /// `rootfs`, then any partition), e.g. `etc/os-release`.
    pub fn root_file(&self, path: &str) -> Option<&str> {
        let path = path.trim_start_matches('/');
        ROOT_LABELS
            .iter()
            .filter_map(|l| self.partitions.iter().find(|p| p.label == *l))
            .chain(self.partitions.iter())
            .find_map(|p| {
                p.files
                    .get(path)
                    .or_else(|| p.files.get(&format!("system-data/{path}")))
            })
            .map(String::as_str)
    }

    /// The image's os-release text, if it has one.
    pub fn os_release_text(&self) -> Option<&str> {
        self.root_file("etc/os-release")
    }

    /// The image's host name (`etc/hostname`, first line).
    pub fn hostname_text(&self) -> Option<String> {
        self.root_file("etc/hostname")
            .and_then(|t| t.lines().next())
            .map(|l| l.trim().to_string())
            .filter(|l| !l.is_empty())
    }

    /// The image's `PRETTY_NAME`.
    pub fn pretty_name(&self) -> Option<String> {
        self.os_release_text().and_then(pretty_name)
    }

    /// The header: magic and JSON line.
    pub fn header(&self) -> Vec<u8> {
        let mut out = MAGIC.to_vec();
        out.extend_from_slice(
            serde_json::to_string(self)
                .expect("images serialise")
                .as_bytes(),
        );
        out.push(b'\n');
        out
    }

    /// The raw image with `padding` filler bytes after the header.
    pub fn to_bytes(&self, padding: usize) -> Vec<u8> {
        let mut out = self.header();
        out.extend(filler(padding));
        out
    }

    /// The image zstd-compressed, as production images are served.
    pub fn compressed(&self, padding: usize) -> Vec<u8> {
        zstd::encode_all(&self.to_bytes(padding)[..], 3).expect("compressing in memory")
    }

    /// Parses raw image bytes.
    pub fn parse(bytes: &[u8]) -> Result<Image, ImageError> {
        Image::read(bytes)
    }

    /// Reads the header of a raw image from `r` (the padding is not read).
    pub fn read(r: impl Read) -> Result<Image, ImageError> {
        let mut r = std::io::BufReader::new(r.take(MAX_HEADER));
        let mut magic = Vec::new();
        r.read_until(b'\n', &mut magic)?;
        if magic != MAGIC {
            return Err(ImageError::NoMagic);
        }
        let mut json = Vec::new();
        r.read_until(b'\n', &mut json)?;
        serde_json::from_slice(&json).map_err(|e| ImageError::BadHeader(e.to_string()))
    }

    /// Reads the header of the raw image file at `path`.
    pub fn read_file(path: &Path) -> Result<Image, ImageError> {
        Image::read(std::fs::File::open(path)?)
    }

    /// Writes partition `index`'s files under `dir` (a mount).
    pub fn extract(&self, index: usize, dir: &Path) -> std::io::Result<()> {
        let Some(p) = self.partitions.get(index) else {
            return Err(std::io::Error::other("no such partition"));
        };
        std::fs::create_dir_all(dir)?;
        for (path, content) in &p.files {
            let rel = safe_relative(path)
                .ok_or_else(|| std::io::Error::other(format!("unsafe path {path:?}")))?;
            if path.ends_with('/') {
                std::fs::create_dir_all(dir.join(rel))?;
            } else {
                let dest = dir.join(rel);
                if let Some(parent) = dest.parent() {
                    std::fs::create_dir_all(parent)?;
                }
                std::fs::write(dest, content)?;
            }
        }
        Ok(())
    }

    /// Replaces partition `index`'s files with what is under `dir` (an
    /// unmount). Files that are not UTF-8 are stored lossily; symbolic
    /// links are skipped.
    pub fn absorb(&mut self, index: usize, dir: &Path) -> std::io::Result<()> {
        let mut files = BTreeMap::new();
        collect(dir, dir, &mut files, 0)?;
        match self.partitions.get_mut(index) {
            Some(p) => {
                p.files = files;
                Ok(())
            }
            None => Err(std::io::Error::other("no such partition")),
        }
    }

    /// Rewrites the header of the raw image file at `path`, keeping the
    /// bytes after the old header.
    pub fn rewrite_file(&self, path: &Path) -> Result<(), ImageError> {
        let mut f = std::io::BufReader::new(std::fs::File::open(path)?);
        let mut line = Vec::new();
        f.read_until(b'\n', &mut line)?;
        if line != MAGIC {
            return Err(ImageError::NoMagic);
        }
        line.clear();
        f.read_until(b'\n', &mut line)?;
        let tmp = path.with_extension("rewrite");
        {
            let mut out = std::io::BufWriter::new(std::fs::File::create(&tmp)?);
            out.write_all(&self.header())?;
            std::io::copy(&mut f, &mut out)?;
            out.flush()?;
        }
        // Keep the inode (links and open handles to the card stay valid).
        let mut dest = std::fs::OpenOptions::new()
            .write(true)
            .truncate(true)
            .open(path)?;
        std::io::copy(&mut std::fs::File::open(&tmp)?, &mut dest)?;
        std::fs::remove_file(&tmp)?;
        Ok(())
    }
}

/// `n` filler bytes (text, so a hexdump of a card is readable).
fn filler(n: usize) -> impl Iterator<Item = u8> {
    b"labsim image filler.\n".iter().copied().cycle().take(n)
}

/// `path` as a relative path without `..` or absolute parts.
fn safe_relative(path: &str) -> Option<&Path> {
    let p = Path::new(path.trim_end_matches('/'));
    p.components()
        .all(|c| matches!(c, std::path::Component::Normal(_)))
        .then_some(p)
}

fn collect(
    base: &Path,
    dir: &Path,
    out: &mut BTreeMap<String, String>,
    depth: usize,
) -> std::io::Result<()> {
    if depth > 32 {
        return Ok(());
    }
    let mut empty = true;
    for entry in std::fs::read_dir(dir)? {
        let entry = entry?;
        empty = false;
        let ty = entry.file_type()?;
        let path = entry.path();
        let rel = path
            .strip_prefix(base)
            .map_err(std::io::Error::other)?
            .to_string_lossy()
            .into_owned();
        if ty.is_dir() {
            collect(base, &path, out, depth + 1)?;
        } else if ty.is_file() {
            let bytes = std::fs::read(&path)?;
            out.insert(rel, String::from_utf8_lossy(&bytes).into_owned());
        }
    }
    if empty && dir != base {
        let rel = dir
            .strip_prefix(base)
            .map_err(std::io::Error::other)?
            .to_string_lossy()
            .into_owned();
        out.insert(format!("{rel}/"), String::new());
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn round_trips_through_bytes_zstd_and_directories() {
        let image = Image::ubuntu("24.04.1", "noble").hostname("pi4-lab").file(
            "ubuntu-seed",
            "snaps/pc.snap",
            "x",
        );
        let raw = image.to_bytes(1000);
        assert!(raw.starts_with(MAGIC));
        assert_eq!(Image::parse(&raw).unwrap(), image);
        let z = image.compressed(1 << 20);
        assert!(z.len() < 100_000, "filler compresses");
        let back = zstd::decode_all(&z[..]).unwrap();
        assert_eq!(Image::parse(&back).unwrap(), image);
        assert_eq!(image.pretty_name().unwrap(), "Ubuntu 24.04.1 LTS");
        assert_eq!(image.hostname_text().unwrap(), "pi4-lab");
        assert_eq!(
            image
                .partitions
                .iter()
                .map(|p| p.label.as_str())
                .collect::<Vec<_>>(),
            ["system-boot", "writable", "ubuntu-seed"]
        );

        let dir = tempfile::tempdir().unwrap();
        image.extract(1, dir.path()).unwrap();
        assert!(dir.path().join("etc/cloud/cloud.cfg.d").is_dir());
        std::fs::create_dir_all(dir.path().join("var/lib/cloud/seed/nocloud-net")).unwrap();
        std::fs::write(
            dir.path().join("var/lib/cloud/seed/nocloud-net/user-data"),
            "#cloud-config\n",
        )
        .unwrap();
        let mut changed = image.clone();
        changed.absorb(1, dir.path()).unwrap();
        assert_eq!(
            changed.partitions[1].files["var/lib/cloud/seed/nocloud-net/user-data"],
            "#cloud-config\n"
        );
        let file = dir.path().join("card.img");
        std::fs::write(&file, &raw).unwrap();
        changed.rewrite_file(&file).unwrap();
        let bytes = std::fs::read(&file).unwrap();
        assert_eq!(Image::parse(&bytes).unwrap(), changed);
        assert!(bytes.ends_with(&raw[image.header().len()..]), "filler kept");
    }

    #[test]
    fn garbage_and_unsafe_paths_are_refused() {
        assert!(matches!(
            Image::parse(b"\0\0\0\0"),
            Err(ImageError::NoMagic)
        ));
        assert!(matches!(
            Image::parse(b"LABSIM-IMAGE 1\n{nope\n"),
            Err(ImageError::BadHeader(_))
        ));
        let evil = Image::new().file("writable", "../../escape", "x");
        let dir = tempfile::tempdir().unwrap();
        assert!(evil.extract(0, &dir.path().join("m")).is_err());
        assert!(!dir.path().join("escape").exists());
    }
}
