//! The device's view of absolute paths: executed commands run on the
//! simulator's own machine, so absolute paths into the system directories
//! of the simulated device (`/etc`, `/dev/sda`, `/mnt`, `/tmp` ...) are
//! rewritten into its scratch root before `/bin/sh` sees the command, and
//! the files commands write are found by comparing snapshots of the root.
//!
//! The rewrite works on the command text: a path is rewritten when it
//! starts a word (after a blank, a quote, `=`, a redirection, `(`, `;`,
//! `|`, `&`, `` ` `` or `{`) and its first component is one of
//! [`VIRTUAL_DIRS`]. Paths built at run time from pieces (`"/"$dir`) are
//! not seen; the real `/dev/null` and friends are left alone. Programs
//! (`/bin/true`, `/usr/bin/...`) are the simulator machine's own.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

/// First components of absolute paths that belong to the simulated device.
pub const VIRTUAL_DIRS: [&str; 11] = [
    "boot", "dev", "etc", "home", "media", "mnt", "opt", "root", "srv", "tmp", "var",
];

/// Device nodes of the real machine that stay real.
const REAL_DEV: [&str; 13] = [
    "null", "zero", "full", "random", "urandom", "tty", "stdin", "stdout", "stderr", "fd", "tcp",
    "udp", "shm",
];

fn starts_word(prev: Option<char>) -> bool {
    match prev {
        None => true,
        Some(c) => {
            c.is_whitespace()
                || matches!(
                    c,
                    '\'' | '"' | '=' | '<' | '>' | '(' | ';' | '|' | '&' | '`' | '{'
                )
        }
    }
}

/// Rewrites absolute device paths in `command` into `root`.
pub fn rewrite(command: &str, root: &Path) -> String {
    let root_s = root.to_string_lossy();
    let mut out = String::with_capacity(command.len() + 64);
    let mut prev: Option<char> = None;
    let mut i = 0;
    let bytes = command.as_bytes();
    while i < command.len() {
        let rest = &command[i..];
        if bytes[i] == b'/' && starts_word(prev) {
            if rest.starts_with(root_s.as_ref()) {
                // Already a path into the root (a test or a fake wrote it).
                out.push_str(&root_s);
                i += root_s.len();
                prev = root_s.chars().last();
                continue;
            }
            let first: String = rest[1..]
                .chars()
                .take_while(|c| *c != '/' && !is_delimiter(*c))
                .collect();
            let after = rest[1 + first.len()..].chars().next();
            let component_ends = after.is_none_or(|c| c == '/' || is_delimiter(c));
            if component_ends && VIRTUAL_DIRS.contains(&first.as_str()) {
                let real_dev = first == "dev" && {
                    let node: String = rest[5.min(rest.len())..]
                        .chars()
                        .take_while(|c| *c != '/' && !is_delimiter(*c))
                        .collect();
                    REAL_DEV.contains(&node.as_str()) || node.starts_with("pts")
                };
                if !real_dev {
                    out.push_str(&root_s);
                }
            }
        }
        let c = rest.chars().next().expect("non-empty");
        out.push(c);
        prev = Some(c);
        i += c.len_utf8();
    }
    out
}

fn is_delimiter(c: char) -> bool {
    c.is_whitespace()
        || matches!(
            c,
            '\'' | '"' | ';' | '|' | '&' | ')' | '(' | '<' | '>' | '`' | '}' | '*' | '?' | '['
        )
}

/// The device path (`/etc/hostname`) of a real path under `root`.
pub fn device_path(root: &Path, real: &Path) -> String {
    match real.strip_prefix(root) {
        Ok(rel) => format!("/{}", rel.to_string_lossy()),
        Err(_) => real.to_string_lossy().into_owned(),
    }
}

/// What a file looked like: size and modification time.
pub type Stamp = (u64, i64, i64);

/// Size and mtime of every file under `root` (links under `dev` are
/// followed: they are the block devices). Bounded in depth and count.
pub fn snapshot(root: &Path) -> BTreeMap<PathBuf, Stamp> {
    let mut out = BTreeMap::new();
    walk(root, root, &mut out, 0);
    out
}

fn walk(root: &Path, dir: &Path, out: &mut BTreeMap<PathBuf, Stamp>, depth: usize) {
    use std::os::unix::fs::MetadataExt;
    if depth > 24 || out.len() > 50_000 {
        return;
    }
    let Ok(entries) = std::fs::read_dir(dir) else {
        return;
    };
    for entry in entries.flatten() {
        let path = entry.path();
        let Ok(ty) = entry.file_type() else { continue };
        if ty.is_dir() {
            walk(root, &path, out, depth + 1);
            continue;
        }
        let meta = if ty.is_symlink() {
            if !path.starts_with(root.join("dev")) {
                continue;
            }
            match std::fs::metadata(&path) {
                Ok(m) if m.is_file() => m,
                _ => continue,
            }
        } else if ty.is_file() {
            match entry.metadata() {
                Ok(m) => m,
                Err(_) => continue,
            }
        } else {
            continue;
        };
        out.insert(path, (meta.len(), meta.mtime(), meta.mtime_nsec()));
    }
}

/// Files that are new or changed in `after`, and files gone from it.
pub fn diff(
    before: &BTreeMap<PathBuf, Stamp>,
    after: &BTreeMap<PathBuf, Stamp>,
) -> (Vec<(PathBuf, u64)>, Vec<PathBuf>) {
    let written = after
        .iter()
        .filter(|(p, s)| before.get(*p) != Some(s))
        .map(|(p, s)| (p.clone(), s.0))
        .collect();
    let removed = before
        .keys()
        .filter(|p| !after.contains_key(*p))
        .cloned()
        .collect();
    (written, removed)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn rewrites_device_paths_only() {
        let root = Path::new("/scratch/root");
        let r = |c: &str| rewrite(c, root);
        assert_eq!(
            r("zstdcat | sudo dd of=/dev/sda bs=16M"),
            "zstdcat | sudo dd of=/scratch/root/dev/sda bs=16M"
        );
        assert_eq!(r("cat /etc/os-release"), "cat /scratch/root/etc/os-release");
        assert_eq!(
            r("sudo mount /dev/sda2 '/mnt/agent/writable'"),
            "sudo mount /scratch/root/dev/sda2 '/scratch/root/mnt/agent/writable'"
        );
        assert_eq!(
            r("sudo umount /dev/sda*"),
            "sudo umount /scratch/root/dev/sda*"
        );
        assert_eq!(
            r("echo x >/tmp/f 2>/dev/null </dev/zero"),
            "echo x >/scratch/root/tmp/f 2>/dev/null </dev/zero"
        );
        assert_eq!(r("/bin/true"), "/bin/true");
        assert_eq!(r("ls /etcetera /usr/etc"), "ls /etcetera /usr/etc");
        assert_eq!(r("curl http://h/etc/x"), "curl http://h/etc/x");
        assert_eq!(r("cat /scratch/root/etc/x"), "cat /scratch/root/etc/x");
        assert_eq!(r("test -e /mnt"), "test -e /scratch/root/mnt");
        assert_eq!(
            r("ls /mnt/a/lib/*-tegra*/"),
            "ls /scratch/root/mnt/a/lib/*-tegra*/"
        );
        assert_eq!(r("écho /var/x"), "écho /scratch/root/var/x");
        assert_eq!(
            device_path(root, Path::new("/scratch/root/etc/hostname")),
            "/etc/hostname"
        );
    }

    #[test]
    fn snapshots_find_writes_and_removals() {
        let dir = tempfile::tempdir().unwrap();
        let root = dir.path();
        std::fs::create_dir_all(root.join("etc")).unwrap();
        std::fs::write(root.join("etc/a"), "1").unwrap();
        std::fs::write(root.join("etc/b"), "1").unwrap();
        let before = snapshot(root);
        std::fs::write(root.join("etc/a"), "22").unwrap();
        std::fs::remove_file(root.join("etc/b")).unwrap();
        std::fs::write(root.join("etc/c"), "333").unwrap();
        let (written, removed) = diff(&before, &snapshot(root));
        assert_eq!(
            written,
            vec![(root.join("etc/a"), 2), (root.join("etc/c"), 3)]
        );
        assert_eq!(removed, vec![root.join("etc/b")]);
    }
}
