//! The wasmtime engine and the linker. Compiled code is cached by
//! [`crate::cache`].

use std::hash::{Hash, Hasher};
use std::sync::OnceLock;
use std::time::Duration;

use sha2::{Digest, Sha256};
use wasmtime::component::Linker;
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

/// The linker with WASI (deny-by-default context) and our interfaces, in
/// every WIT version served.
pub fn linker() -> wasmtime::Result<Linker<HostState>> {
    let mut linker = Linker::new(engine());
    wasmtime_wasi::p2::add_to_linker_async(&mut linker)?;
    crate::host::wit::add_to_linker(&mut linker)?;
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

/// How a component was obtained, for logs and benchmarks.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum LoadPath {
    /// Loaded from the compiled-code cache.
    Cached,
    /// Compiled now (and stored in the cache if possible).
    Compiled,
}
