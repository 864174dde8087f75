//! The wasmtime engine, the linker, and loading components with a cache of
//! compiled code.
//!
//! Compiling a component with Cranelift costs ~150 ms; loading the compiled
//! artifact costs well under a millisecond. So the compiled code is cached
//! on disk, keyed by the component's digest and the engine's compatibility
//! hash. A cache entry that fails to load (corrupt, truncated, written by
//! another wasmtime) is a miss: it is recompiled and replaced.

use std::hash::{Hash, Hasher};
use std::path::{Path, PathBuf};
use std::sync::OnceLock;
use std::time::Duration;

use sha2::{Digest, Sha256};
use wasmtime::component::{Component, Linker};
use wasmtime::{Config, Engine};

use crate::host::HostState;

/// How often the epoch advances. A running guest yields to the async
/// executor at every tick, which is what lets the outer stage timeout fire
/// even for a guest spinning in a loop.
pub const EPOCH_TICK: Duration = Duration::from_millis(10);

/// The process-wide engine.
pub fn engine() -> &'static Engine {
    static ENGINE: OnceLock<Engine> = OnceLock::new();
    ENGINE.get_or_init(|| {
        let mut config = Config::new();
        config.epoch_interruption(true);
        config.wasm_component_model(true);
        Engine::new(&config).expect("the engine configuration is valid")
    })
}

/// The linker with WASI (deny-by-default context) and our interfaces.
pub fn linker() -> wasmtime::Result<Linker<HostState>> {
    let mut linker = Linker::new(engine());
    wasmtime_wasi::p2::add_to_linker_async(&mut linker)?;
    crate::bindings::Connector::add_to_linker::<_, wasmtime::component::HasSelf<_>>(
        &mut linker,
        |state| state,
    )?;
    Ok(linker)
}

/// Starts the background ticker that advances the engine's epoch.
pub fn start_epoch_ticker() {
    static STARTED: OnceLock<()> = OnceLock::new();
    STARTED.get_or_init(|| {
        std::thread::Builder::new()
            .name("epoch-ticker".into())
            .spawn(|| {
                loop {
                    std::thread::sleep(EPOCH_TICK);
                    engine().increment_epoch();
                }
            })
            .expect("spawning the epoch ticker");
    });
}

/// `sha256:<hex>` of `bytes`.
pub fn digest(bytes: &[u8]) -> String {
    format!("sha256:{}", hex::encode(Sha256::digest(bytes)))
}

struct ShaHasher(Sha256);

impl Hasher for ShaHasher {
    fn finish(&self) -> u64 {
        unreachable!("only the bytes fed in are used")
    }
    fn write(&mut self, bytes: &[u8]) {
        self.0.update(bytes);
    }
}

/// A short hex string that changes whenever compiled code from this engine
/// would not load in another (wasmtime version, features, settings).
pub fn engine_fingerprint() -> &'static str {
    static FP: OnceLock<String> = OnceLock::new();
    FP.get_or_init(|| {
        let mut hasher = ShaHasher(Sha256::new());
        engine().precompile_compatibility_hash().hash(&mut hasher);
        hex::encode(&hasher.0.finalize()[..8])
    })
}

/// Where compiled code is cached: `$TFDC_CACHE_DIR`, else
/// `$XDG_CACHE_HOME/testflinger-device-connectors`, else
/// `~/.cache/testflinger-device-connectors`.
pub fn default_cache_dir() -> Option<PathBuf> {
    if let Some(dir) = std::env::var_os("TFDC_CACHE_DIR") {
        return Some(PathBuf::from(dir));
    }
    let base = std::env::var_os("XDG_CACHE_HOME")
        .map(PathBuf::from)
        .filter(|p| p.is_absolute())
        .or_else(|| std::env::home_dir().map(|h| h.join(".cache")))?;
    Some(base.join("testflinger-device-connectors"))
}

/// How a component was obtained, for logs and benchmarks.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum LoadPath {
    /// Loaded from the compiled-code cache.
    Cached,
    /// Compiled now (and stored in the cache if possible).
    Compiled,
}

/// Loads `bytes` (whose digest is `digest`), from the cache in `cache_dir`
/// when possible.
pub fn load_component(
    bytes: &[u8],
    digest: &str,
    cache_dir: Option<&Path>,
) -> wasmtime::Result<(Component, LoadPath)> {
    let engine = engine();
    let Some(dir) = cache_dir else {
        return Ok((Component::new(engine, bytes)?, LoadPath::Compiled));
    };
    let hex = digest.strip_prefix("sha256:").unwrap_or(digest);
    let entry = dir.join(format!("{hex}-{}.cwasm", engine_fingerprint()));
    if entry.is_file() {
        // SAFETY: the cache directory is private to the agent user (0700)
        // and every entry was written by `Engine::precompile_component` of
        // an engine with the same compatibility hash (part of the file
        // name). Anything that fails to load is treated as a miss.
        match unsafe { Component::deserialize_file(engine, &entry) } {
            Ok(component) => return Ok((component, LoadPath::Cached)),
            Err(e) => {
                tracing::debug!(
                    "compiled-code cache entry {} unusable ({e}); recompiling",
                    entry.display()
                );
            }
        }
    }
    let compiled = engine.precompile_component(bytes)?;
    // SAFETY: these bytes were produced just above by this very engine.
    let component = unsafe { Component::deserialize(engine, &compiled)? };
    if let Err(e) = store_entry(dir, &entry, &compiled) {
        tracing::debug!(
            "cannot write compiled-code cache entry {}: {e}",
            entry.display()
        );
    }
    Ok((component, LoadPath::Compiled))
}

fn store_entry(dir: &Path, entry: &Path, compiled: &[u8]) -> std::io::Result<()> {
    use std::os::unix::fs::{DirBuilderExt, PermissionsExt};
    std::fs::DirBuilder::new()
        .recursive(true)
        .mode(0o700)
        .create(dir)?;
    std::fs::set_permissions(dir, std::fs::Permissions::from_mode(0o700))?;
    crate::rundir::write_atomic(entry, compiled)
}
