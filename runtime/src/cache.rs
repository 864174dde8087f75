//! The compiled-code cache.
//!
//! Compiling a component costs ~150 ms; loading its compiled form well
//! under a millisecond. Entries are keyed by (component digest, engine
//! fingerprint), so a wasmtime upgrade or a different engine setting simply
//! misses. Every entry carries a CRC-32 trailer: a truncated or corrupted
//! file is a miss that gets rebuilt, never a crash and never wrong code.
//!
//! Concurrency: entries appear by atomic rename; compiling takes an
//! exclusive lock on `<entry>.lock`, so concurrent invocations of the same
//! connector compile it once and the others wait and load. The folder is
//! private to the agent user (0700) and bounded in size: the least recently
//! used entries are evicted.

use std::fs::{self, File, OpenOptions};
use std::io::{self, Write};
use std::os::unix::fs::{DirBuilderExt, PermissionsExt};
use std::path::{Path, PathBuf};
use std::time::SystemTime;

use wasmtime::component::Component;

use crate::engine::{self, LoadPath};

/// Trailer: magic, then the CRC-32 of everything before it.
const MAGIC: &[u8; 8] = b"TFDCcw01";
const TRAILER: usize = 12;

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
        if let Some(component) = self.try_load(&entry) {
            return Ok((component, LoadPath::Cached));
        }
        if let Err(e) = self.prepare_dir() {
            tracing::debug!(target: "tfdc::cache", "compiled-code cache {} unusable ({e}); compiling in memory", self.dir.display());
            return Ok((Component::new(engine::engine(), bytes)?, LoadPath::Compiled));
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
            && let Some(component) = self.try_load(&entry)
        {
            return Ok((component, LoadPath::Cached));
        }
        let compiled = engine::engine().precompile_component(bytes)?;
        // SAFETY: produced just above by this very engine.
        let component = unsafe { Component::deserialize(engine::engine(), &compiled)? };
        if let Err(e) = write_entry(&entry, &compiled) {
            tracing::debug!(target: "tfdc::cache", "cannot write {}: {e}", entry.display());
        }
        drop(lock);
        if let Err(e) = self.evict(&entry) {
            tracing::debug!(target: "tfdc::cache", "cache eviction failed: {e}");
        }
        Ok((component, LoadPath::Compiled))
    }

    fn try_load(&self, entry: &Path) -> Option<Component> {
        let data = fs::read(entry).ok()?;
        let Some(body) = check_trailer(&data) else {
            tracing::debug!(target: "tfdc::cache", "cache entry {} is corrupt or truncated; recompiling", entry.display());
            return None;
        };
        // SAFETY: the cache folder is private to the agent user (0700), the
        // file name carries the engine fingerprint, and the CRC trailer
        // proves the bytes are exactly what `precompile_component` wrote.
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

    fn prepare_dir(&self) -> io::Result<()> {
        fs::DirBuilder::new()
            .recursive(true)
            .mode(0o700)
            .create(&self.dir)?;
        let meta = fs::metadata(&self.dir)?;
        if meta.permissions().mode() & 0o777 != 0o700 {
            fs::set_permissions(&self.dir, fs::Permissions::from_mode(0o700))?;
        }
        Ok(())
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

fn write_entry(entry: &Path, compiled: &[u8]) -> io::Result<()> {
    let dir = entry.parent().unwrap_or(Path::new("."));
    let mut tmp = tempfile::NamedTempFile::new_in(dir)?;
    let mut hasher = crc32fast::Hasher::new();
    hasher.update(compiled);
    tmp.write_all(compiled)?;
    tmp.write_all(MAGIC)?;
    tmp.write_all(&hasher.finalize().to_le_bytes())?;
    // No fsync: a torn entry after a crash fails its CRC and is rebuilt.
    tmp.persist(entry).map_err(|e| e.error)?;
    Ok(())
}

/// The compiled bytes if the trailer is intact.
fn check_trailer(data: &[u8]) -> Option<&[u8]> {
    if data.len() < TRAILER {
        return None;
    }
    let (body, trailer) = data.split_at(data.len() - TRAILER);
    if &trailer[..8] != MAGIC {
        return None;
    }
    let want = u32::from_le_bytes(trailer[8..].try_into().ok()?);
    (crc32fast::hash(body) == want).then_some(body)
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
    fn trailer_detects_truncation_and_flips() {
        let dir = tempfile::tempdir().unwrap();
        let p = dir.path().join("e.cwasm");
        write_entry(&p, b"compiled code").unwrap();
        let data = fs::read(&p).unwrap();
        assert_eq!(check_trailer(&data), Some(&b"compiled code"[..]));
        assert_eq!(check_trailer(&data[..data.len() - 1]), None);
        let mut flipped = data.clone();
        flipped[3] ^= 1;
        assert_eq!(check_trailer(&flipped), None);
        assert_eq!(check_trailer(b"short"), None);
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
