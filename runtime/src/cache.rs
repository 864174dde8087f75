//! The compiled-code cache.
//!
//! Compiling a component costs ~150 ms; loading its compiled form well
//! under a millisecond. Entries are keyed by (component digest, engine
//! fingerprint), so a wasmtime upgrade or a different engine setting simply
//! misses. Every entry carries an HMAC-SHA256 trailer over (component
//! digest, engine fingerprint, compiled bytes), keyed by a 32-byte secret
//! kept 0600 beside (not inside) the cache folder: a truncated, corrupted,
//! forged or another component's entry is a miss that gets rebuilt.
//! Before anything is read on a hit, the folder and the entry must belong
//! to the effective user with no group or other access, and the entry is
//! opened with `O_NOFOLLOW` and checked on the open descriptor.
//!
//! Concurrency: entries appear by atomic rename; compiling takes an
//! exclusive lock on `<entry>.lock`, so concurrent invocations of the same
//! connector compile it once and the others wait and load. The folder is
//! private to the agent user (0700) and bounded in size: the least recently
//! used entries are evicted.

use std::fs::{self, File, OpenOptions};
use std::io::{self, Read, Write};
use std::os::unix::fs::{DirBuilderExt, MetadataExt, OpenOptionsExt};
use std::path::{Path, PathBuf};
use std::time::SystemTime;

use wasmtime::component::Component;

use crate::engine::{self, LoadPath};

/// Trailer: magic, then the HMAC-SHA256 of (digest, fingerprint, body).
const MAGIC: &[u8; 8] = b"TFDCcw02";
const TAG: usize = 32;
const TRAILER: usize = 8 + TAG;
const KEY_LEN: usize = 32;

type Mac = hmac::Hmac<sha2::Sha256>;

/// Default size bound of the cache folder.
pub const DEFAULT_MAX_BYTES: u64 = 512 << 20;

/// A cache folder.
#[derive(Debug, Clone)]
pub struct CodeCache {
    dir: PathBuf,
    max_bytes: u64,
}

impl CodeCache {
    /// A cache in `dir`, bounded to `max_bytes`.
    pub fn new(dir: impl Into<PathBuf>, max_bytes: u64) -> Self {
        CodeCache {
            dir: dir.into(),
            max_bytes,
        }
    }

    /// The folder.
    pub fn dir(&self) -> &Path {
        &self.dir
    }

    /// Path of the entry for `digest` in this engine.
    pub fn entry_path(&self, digest: &str) -> PathBuf {
        let hex = digest.strip_prefix("sha256:").unwrap_or(digest);
        self.dir
            .join(format!("{hex}-{}.cwasm", engine::engine_fingerprint()))
    }

    /// Loads the compiled form of `bytes` (digest `digest`), compiling and
    /// storing it on a miss. Cache problems never fail the load: they are
    /// logged at debug level and the component is compiled in memory.
    pub fn load(&self, bytes: &[u8], digest: &str) -> wasmtime::Result<(Component, LoadPath)> {
        let entry = self.entry_path(digest);
        let key = match self.prepare_dir().and_then(|()| self.key()) {
            Ok(key) => key,
            Err(e) => {
                tracing::debug!(target: "tfdc::cache", "compiled-code cache {} unusable ({e}); compiling in memory", self.dir.display());
                return Ok((Component::new(engine::engine(), bytes)?, LoadPath::Compiled));
            }
        };
        if let Some(component) = self.try_load(&entry, &key, digest) {
            return Ok((component, LoadPath::Cached));
        }
        // Serialise compilation of this entry between processes.
        let lock = match lock_file(&entry) {
            Ok(lock) => Some(lock),
            Err(e) => {
                tracing::debug!(target: "tfdc::cache", "cannot lock {}: {e}", entry.display());
                None
            }
        };
        if lock.is_some()
            && let Some(component) = self.try_load(&entry, &key, digest)
        {
            return Ok((component, LoadPath::Cached));
        }
        let compiled = engine::engine().precompile_component(bytes)?;
        // SAFETY: produced just above by this very engine.
        let component = unsafe { Component::deserialize(engine::engine(), &compiled)? };
        if let Err(e) = write_entry(&entry, &compiled, &key, digest) {
            tracing::debug!(target: "tfdc::cache", "cannot write {}: {e}", entry.display());
        }
        drop(lock);
        if let Err(e) = self.evict(&entry) {
            tracing::debug!(target: "tfdc::cache", "cache eviction failed: {e}");
        }
        Ok((component, LoadPath::Compiled))
    }

    fn try_load(&self, entry: &Path, key: &[u8; KEY_LEN], digest: &str) -> Option<Component> {
        let data = match read_private(entry) {
            Ok(data) => data,
            Err(e) => {
                if e.kind() != io::ErrorKind::NotFound {
                    tracing::debug!(target: "tfdc::cache", "cache entry {} refused ({e}); recompiling", entry.display());
                }
                return None;
            }
        };
        let Some(body) = check_trailer(&data, key, digest) else {
            tracing::debug!(target: "tfdc::cache", "cache entry {} fails its authenticity check (corrupt, truncated, forged or another component's); recompiling", entry.display());
            return None;
        };
        // SAFETY: the folder and the entry belong to the effective user with
        // no group or other access, the entry was opened without following
        // symlinks, and the HMAC trailer (keyed by a private secret) proves
        // that this process's user wrote exactly these bytes with
        // `precompile_component` for this component digest and engine.
        // Anything wasmtime still rejects (another version ...) is a miss.
        match unsafe { Component::deserialize(engine::engine(), body) } {
            Ok(component) => {
                touch(entry);
                Some(component)
            }
            Err(e) => {
                tracing::debug!(target: "tfdc::cache", "cache entry {} unusable ({e}); recompiling", entry.display());
                None
            }
        }
    }

    /// Creates the folder (0700) if missing; an existing folder must be a
    /// real directory of the effective user with no group or other access.
    /// An exposed folder is refused rather than repaired: whatever was
    /// planted while it was open stays untrusted.
    fn prepare_dir(&self) -> io::Result<()> {
        fs::DirBuilder::new()
            .recursive(true)
            .mode(0o700)
            .create(&self.dir)?;
        let meta = fs::symlink_metadata(&self.dir)?;
        if !meta.is_dir() {
            return Err(io::Error::other("not a directory (symlink?)"));
        }
        check_private(&meta)
    }

    /// Path of the secret that keys entry MACs: beside the folder, so
    /// that whoever can write entries cannot read or replace it by that
    /// alone.
    pub fn key_path(&self) -> PathBuf {
        let name = self
            .dir
            .file_name()
            .map(|n| n.to_string_lossy().into_owned())
            .unwrap_or_else(|| "tfdc-cache".into());
        self.dir.with_file_name(format!("{name}.key"))
    }

    /// The MAC key, created (0600, 32 random bytes) on first use.
    fn key(&self) -> io::Result<[u8; KEY_LEN]> {
        let path = self.key_path();
        match read_private(&path) {
            Ok(data) => {
                return data.try_into().map_err(|_| {
                    io::Error::other(format!("{} is not a {KEY_LEN}-byte key", path.display()))
                });
            }
            Err(e) if e.kind() == io::ErrorKind::NotFound => {}
            Err(e) => return Err(io::Error::other(format!("key {}: {e}", path.display()))),
        }
        let mut key = [0u8; KEY_LEN];
        File::open("/dev/urandom")?.read_exact(&mut key)?;
        match OpenOptions::new()
            .write(true)
            .create_new(true)
            .mode(0o600)
            .custom_flags(libc::O_NOFOLLOW)
            .open(&path)
        {
            Ok(mut f) => {
                f.write_all(&key)?;
                Ok(key)
            }
            // Another invocation created it first: use theirs.
            Err(e) if e.kind() == io::ErrorKind::AlreadyExists => {
                let data = read_private(&path)?;
                data.try_into()
                    .map_err(|_| io::Error::other("cache key being written; try again"))
            }
            Err(e) => Err(e),
        }
    }

    /// Removes least recently used entries until the folder is within its
    /// bound, never `keep`.
    pub fn evict(&self, keep: &Path) -> io::Result<()> {
        let mut entries = Vec::new();
        let mut total = 0u64;
        for e in fs::read_dir(&self.dir)? {
            let e = e?;
            let path = e.path();
            if path.extension().is_some_and(|x| x == "cwasm") {
                let meta = e.metadata()?;
                total += meta.len();
                let used = meta.modified().unwrap_or(SystemTime::UNIX_EPOCH);
                entries.push((used, meta.len(), path));
            }
        }
        entries.sort();
        for (_, len, path) in entries {
            if total <= self.max_bytes {
                break;
            }
            if path == keep {
                continue;
            }
            if fs::remove_file(&path).is_ok() {
                total -= len;
                let _ = fs::remove_file(lock_path(&path));
            }
        }
        Ok(())
    }

    /// Removes every entry.
    pub fn clear(&self) -> io::Result<usize> {
        let mut n = 0;
        match fs::read_dir(&self.dir) {
            Ok(rd) => {
                for e in rd {
                    let path = e?.path();
                    if path
                        .extension()
                        .is_some_and(|x| x == "cwasm" || x == "lock")
                    {
                        fs::remove_file(&path)?;
                        n += 1;
                    }
                }
            }
            Err(e) if e.kind() == io::ErrorKind::NotFound => {}
            Err(e) => return Err(e),
        }
        Ok(n)
    }
}

fn lock_path(entry: &Path) -> PathBuf {
    entry.with_extension("lock")
}

fn lock_file(entry: &Path) -> io::Result<File> {
    let file = OpenOptions::new()
        .create(true)
        .truncate(false)
        .write(true)
        .open(lock_path(entry))?;
    file.lock()?;
    Ok(file)
}

fn touch(path: &Path) {
    if let Ok(f) = OpenOptions::new().write(true).open(path) {
        let _ = f.set_modified(SystemTime::now());
    }
}

/// Owner is the effective user, no group or other permission bits.
fn check_private(meta: &fs::Metadata) -> io::Result<()> {
    // SAFETY: geteuid has no preconditions and cannot fail.
    let euid = unsafe { libc::geteuid() };
    if meta.uid() != euid {
        return Err(io::Error::other(format!(
            "owned by uid {}, not by this user (uid {euid})",
            meta.uid()
        )));
    }
    if meta.mode() & 0o077 != 0 {
        return Err(io::Error::other(format!(
            "mode {:o} gives group or others access; must be private",
            meta.mode() & 0o777
        )));
    }
    Ok(())
}

/// Reads a regular file without following a final symlink, after checking
/// on the open descriptor that it is private to the effective user.
fn read_private(path: &Path) -> io::Result<Vec<u8>> {
    let mut f = OpenOptions::new()
        .read(true)
        .custom_flags(libc::O_NOFOLLOW | libc::O_NONBLOCK)
        .open(path)
        .map_err(|e| {
            if e.raw_os_error() == Some(libc::ELOOP) {
                io::Error::other("is a symlink")
            } else {
                e
            }
        })?;
    let meta = f.metadata()?;
    if !meta.is_file() {
        return Err(io::Error::other("not a regular file"));
    }
    check_private(&meta)?;
    let mut data = Vec::with_capacity(meta.len() as usize);
    f.read_to_end(&mut data)?;
    Ok(data)
}

fn mac(key: &[u8; KEY_LEN], digest: &str, body: &[u8]) -> Mac {
    use hmac::{KeyInit, Mac as _};
    let mut mac = <Mac as KeyInit>::new_from_slice(key).expect("HMAC takes any key length");
    // Length-prefixed so that no (digest, fingerprint) pair can be shifted
    // into another.
    for part in [digest.as_bytes(), engine::engine_fingerprint().as_bytes()] {
        mac.update(&(part.len() as u64).to_le_bytes());
        mac.update(part);
    }
    mac.update(body);
    mac
}

fn write_entry(entry: &Path, compiled: &[u8], key: &[u8; KEY_LEN], digest: &str) -> io::Result<()> {
    use hmac::Mac as _;
    let dir = entry.parent().unwrap_or(Path::new("."));
    // NamedTempFile is created 0600.
    let mut tmp = tempfile::NamedTempFile::new_in(dir)?;
    let tag = mac(key, digest, compiled).finalize().into_bytes();
    tmp.write_all(compiled)?;
    tmp.write_all(MAGIC)?;
    tmp.write_all(&tag)?;
    // No fsync: a torn entry after a crash fails its MAC and is rebuilt.
    tmp.persist(entry).map_err(|e| e.error)?;
    Ok(())
}

/// The compiled bytes if the trailer authenticates them for `digest`.
fn check_trailer<'a>(data: &'a [u8], key: &[u8; KEY_LEN], digest: &str) -> Option<&'a [u8]> {
    use hmac::Mac as _;
    if data.len() < TRAILER {
        return None;
    }
    let (body, trailer) = data.split_at(data.len() - TRAILER);
    if &trailer[..8] != MAGIC {
        return None;
    }
    // verify_slice compares in constant time.
    mac(key, digest, body).verify_slice(&trailer[8..]).ok()?;
    Some(body)
}

/// The cache folder to use: `$TFDC_CACHE_DIR`, else
/// `$XDG_CACHE_HOME/testflinger-device-connectors`, else
/// `~/.cache/testflinger-device-connectors`.
pub fn default_dir() -> Option<PathBuf> {
    if let Some(dir) = std::env::var_os("TFDC_CACHE_DIR").filter(|d| !d.is_empty()) {
        return Some(PathBuf::from(dir));
    }
    let base = std::env::var_os("XDG_CACHE_HOME")
        .map(PathBuf::from)
        .filter(|p| p.is_absolute())
        .or_else(|| std::env::home_dir().map(|h| h.join(".cache")))?;
    Some(base.join("testflinger-device-connectors"))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn trailer_detects_truncation_flips_other_digests_and_keys() {
        let dir = tempfile::tempdir().unwrap();
        let p = dir.path().join("e.cwasm");
        let key = [7u8; KEY_LEN];
        write_entry(&p, b"compiled code", &key, "sha256:aa").unwrap();
        let data = fs::read(&p).unwrap();
        assert_eq!(
            check_trailer(&data, &key, "sha256:aa"),
            Some(&b"compiled code"[..])
        );
        assert_eq!(
            check_trailer(&data[..data.len() - 1], &key, "sha256:aa"),
            None
        );
        let mut flipped = data.clone();
        flipped[3] ^= 1;
        assert_eq!(check_trailer(&flipped, &key, "sha256:aa"), None);
        assert_eq!(check_trailer(b"short", &key, "sha256:aa"), None);
        assert_eq!(
            check_trailer(&data, &key, "sha256:bb"),
            None,
            "bound to the digest"
        );
        assert_eq!(
            check_trailer(&data, &[8u8; KEY_LEN], "sha256:aa"),
            None,
            "keyed"
        );
    }

    #[test]
    fn eviction_keeps_the_bound_and_the_newest() {
        let dir = tempfile::tempdir().unwrap();
        let cache = CodeCache::new(dir.path(), 25);
        let mut paths = Vec::new();
        for i in 0..4 {
            let p = dir.path().join(format!("{i}.cwasm"));
            fs::write(&p, [0u8; 10]).unwrap();
            let t = SystemTime::UNIX_EPOCH + std::time::Duration::from_secs(1000 + i);
            File::options()
                .write(true)
                .open(&p)
                .unwrap()
                .set_modified(t)
                .unwrap();
            paths.push(p);
        }
        cache.evict(&paths[0]).unwrap();
        // 40 bytes > 25: the oldest unprotected entries go first, until
        // the rest fits (two of them here).
        assert!(paths[0].exists(), "the protected entry stays");
        assert!(!paths[1].exists() && !paths[2].exists());
        assert!(paths[3].exists(), "the most recently used entry stays");
    }
}
