//! Host side of the `connector` world: one module per WIT interface, all
//! implemented on [`HostState`], the data of one store (one invocation).
//!
//! Every host function first asks the capability gate
//! ([`crate::capability`]) and only then touches the outside world.

pub mod http;
pub mod job;
pub mod log;
pub mod power;
pub mod serial;
pub mod ssh;
pub mod transfer;
pub mod types;
pub mod wit;

use std::sync::Arc;

use wasmtime::StoreLimits;
use wasmtime::component::ResourceTable;
use wasmtime_wasi::p2::pipe::MemoryOutputPipe;
use wasmtime_wasi::{WasiCtx, WasiCtxView, WasiView};

use crate::context::StageContext;
use wit::latest::types::Error as WitError;

/// Bytes of guest stderr kept (panic messages end up there). Writes past
/// it fail, which makes Rust's `eprintln!` panic.
pub const GUEST_STDERR_CAP: usize = 64 * 1024;
/// Bytes of guest stderr quoted in a failure message: the end, where a
/// panic message is.
const GUEST_STDERR_QUOTE: usize = 2 * 1024;

/// What a host call returns on failure: an error value for the guest, or a
/// trap that ends the phase (guest misuse, a limit that cannot be
/// tolerated, a host bug).
#[derive(Debug)]
pub enum HostError {
    /// Returned to the guest as `types.error`.
    Guest(WitError),
    /// Ends the phase.
    Trap(wasmtime::Error),
}

impl HostError {
    pub fn denied(msg: impl Into<String>) -> Self {
        HostError::Guest(WitError::Denied(msg.into()))
    }
    pub fn refused(msg: impl Into<String>) -> Self {
        HostError::Guest(WitError::Refused(msg.into()))
    }
    pub fn not_found(msg: impl Into<String>) -> Self {
        HostError::Guest(WitError::NotFound(msg.into()))
    }
    pub fn timeout(msg: impl Into<String>) -> Self {
        HostError::Guest(WitError::Timeout(msg.into()))
    }
    pub fn failed(msg: impl Into<String>) -> Self {
        HostError::Guest(WitError::Failed(msg.into()))
    }
    pub fn io(msg: impl Into<String>) -> Self {
        HostError::Guest(WitError::Io(msg.into()))
    }
    pub fn invalid(msg: impl Into<String>) -> Self {
        HostError::Guest(WitError::Invalid(msg.into()))
    }
    pub fn limit(msg: impl Into<String>) -> Self {
        HostError::Guest(WitError::Limit(msg.into()))
    }
    pub fn unsupported(msg: impl Into<String>) -> Self {
        HostError::Guest(WitError::Unsupported(msg.into()))
    }
    pub fn other(msg: impl Into<String>) -> Self {
        HostError::Guest(WitError::Other(msg.into()))
    }
    pub fn trap(msg: impl Into<String>) -> Self {
        HostError::Trap(wasmtime::format_err!("{}", msg.into()))
    }

    /// Short name of the error kind, for audit lines.
    pub fn kind(&self) -> &'static str {
        match self {
            HostError::Guest(e) => match e {
                WitError::Denied(_) => "denied",
                WitError::Refused(_) => "refused",
                WitError::NotFound(_) => "not-found",
                WitError::Timeout(_) => "timeout",
                WitError::Failed(_) => "failed",
                WitError::Io(_) => "io",
                WitError::Invalid(_) => "invalid",
                WitError::Limit(_) => "limit",
                WitError::Unsupported(_) => "unsupported",
                WitError::Other(_) => "other",
            },
            HostError::Trap(_) => "trap",
        }
    }
}

impl std::fmt::Display for HostError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            HostError::Guest(e) => write!(f, "{}", wit_error_text(e)),
            HostError::Trap(e) => write!(f, "{e}"),
        }
    }
}

/// The message carried by a WIT error.
pub fn wit_error_text(e: &WitError) -> &str {
    match e {
        WitError::Denied(m)
        | WitError::Refused(m)
        | WitError::NotFound(m)
        | WitError::Timeout(m)
        | WitError::Failed(m)
        | WitError::Io(m)
        | WitError::Invalid(m)
        | WitError::Limit(m)
        | WitError::Unsupported(m)
        | WitError::Other(m) => m,
    }
}

impl From<WitError> for HostError {
    fn from(e: WitError) -> Self {
        HostError::Guest(e)
    }
}

impl From<wasmtime::Error> for HostError {
    fn from(e: wasmtime::Error) -> Self {
        HostError::Trap(e)
    }
}

impl From<wasmtime::component::ResourceTableError> for HostError {
    fn from(e: wasmtime::component::ResourceTableError) -> Self {
        HostError::Trap(e.into())
    }
}

/// The data of one store: WASI (denying everything), the resource table,
/// the memory limiter, and the invocation's shared context.
pub struct HostState {
    wasi: WasiCtx,
    table: ResourceTable,
    /// Memory and instance limits applied by the store.
    pub limits: StoreLimits,
    /// What the invocation knows and the services it shares with the
    /// runtime's native defaults.
    pub cx: Arc<StageContext>,
    /// Per-store log accounting.
    pub log: log::LogState,
    /// Per-store accounting of `write-artifact` bytes.
    pub artifacts: job::ArtifactState,
    stderr: MemoryOutputPipe,
}

impl HostState {
    /// A fresh state for one invocation. WASI is the builder's default: no
    /// preopened directories, no environment, no arguments, sockets and
    /// name lookup denied, stdin closed; stdout is discarded and stderr is
    /// kept in a small buffer for error reports.
    pub fn new(cx: Arc<StageContext>) -> Self {
        let stderr = MemoryOutputPipe::new(GUEST_STDERR_CAP);
        let mut builder = WasiCtx::builder();
        builder.stderr(stderr.clone());
        builder
            .allow_tcp(false)
            .allow_udp(false)
            .allow_ip_name_lookup(false);
        let limits = wasmtime::StoreLimitsBuilder::new()
            .memory_size(cx.limits.memory_bytes)
            .instances(cx.limits.max_instances)
            .tables(64)
            .memories(16)
            .trap_on_grow_failure(true)
            .build();
        HostState {
            wasi: builder.build(),
            table: ResourceTable::new(),
            limits,
            log: log::LogState::default(),
            artifacts: job::ArtifactState::default(),
            cx,
            stderr,
        }
    }

    /// What the guest wrote to stderr (typically a panic message).
    pub fn guest_stderr(&self) -> String {
        String::from_utf8_lossy(&self.stderr.contents())
            .trim()
            .to_string()
    }

    /// What a failure message says about the guest's stderr: its last
    /// bytes (a panic message), and whether it filled up. Empty when the
    /// guest wrote nothing.
    pub fn guest_stderr_report(&self) -> String {
        let bytes = self.stderr.contents();
        let text = String::from_utf8_lossy(&bytes);
        let text = text.trim();
        if text.is_empty() {
            return String::new();
        }
        let mut start = text.len().saturating_sub(GUEST_STDERR_QUOTE);
        while !text.is_char_boundary(start) {
            start += 1;
        }
        let quoted = &text[start..];
        // Writes that do not fit are refused whole, so a full pipe may
        // hold a little less than its capacity.
        let full = bytes.len() + 4096 > GUEST_STDERR_CAP;
        match (start > 0, full) {
            (_, true) => format!(
                "; the connector's stderr is full ({} of {} KiB; further writes fail, which makes eprintln! panic: log through the log interface instead); its end: ...{quoted}",
                bytes.len() >> 10,
                GUEST_STDERR_CAP >> 10
            ),
            (true, false) => format!("; connector stderr (end): ...{quoted}"),
            (false, false) => format!("; connector stderr: {quoted}"),
        }
    }

    /// The resource table.
    pub fn table(&mut self) -> &mut ResourceTable {
        &mut self.table
    }
}

impl WasiView for HostState {
    fn ctx(&mut self) -> WasiCtxView<'_> {
        WasiCtxView {
            ctx: &mut self.wasi,
            table: &mut self.table,
        }
    }
}

/// Runs `call` as an outward call of the connector: its outcome and
/// duration go to the audit trail as `operation` on `target`.
pub async fn audited<T>(
    cx: &StageContext,
    operation: &str,
    target: &str,
    call: impl std::future::Future<Output = Result<T, HostError>>,
) -> Result<T, HostError> {
    let audit = cx.gate.begin(operation, target);
    audit.end(call.await)
}

/// Converts a duration in milliseconds from the guest, refusing absurd
/// values instead of overflowing.
pub fn duration_ms(ms: u64) -> std::time::Duration {
    std::time::Duration::from_millis(ms.min(30 * 24 * 3600 * 1000))
}

/// Parses an options bag against the names a function understands.
pub fn parse_options<'a>(
    opts: &'a [(String, String)],
    known: &[&str],
    function: &str,
) -> Result<std::collections::BTreeMap<&'a str, &'a str>, HostError> {
    let mut out = std::collections::BTreeMap::new();
    for (name, value) in opts {
        if !known.contains(&name.as_str()) {
            return Err(HostError::invalid(format!(
                "{function}: unknown option `{name}` (known: {})",
                if known.is_empty() {
                    "none".to_string()
                } else {
                    known.join(", ")
                }
            )));
        }
        out.insert(name.as_str(), value.as_str());
    }
    Ok(out)
}

/// Parses a `true`/`false` option value.
pub fn bool_option(value: Option<&str>, default: bool, name: &str) -> Result<bool, HostError> {
    match value {
        None => Ok(default),
        Some("true") => Ok(true),
        Some("false") => Ok(false),
        Some(other) => Err(HostError::invalid(format!(
            "option `{name}` must be `true` or `false`, got `{other}`"
        ))),
    }
}

/// A host state for unit tests of host functions: run directory `dir`,
/// device config `config` (YAML), `limits`, and `caps` both declared and
/// granted.
#[cfg(test)]
pub(crate) fn test_state(
    dir: &std::path::Path,
    config: &str,
    limits: crate::limits::Limits,
    caps: &[(crate::capability::Capability, &str)],
) -> HostState {
    use crate::capability::{CapabilitySet, Gate, Subject};
    let mut set = CapabilitySet::new();
    for (cap, name) in caps {
        set.entry(*cap).or_default().insert(name.to_string());
    }
    let cx = crate::context::StageContext::new(crate::context::StageSpec {
        stage: crate::stage::Stage::Provision,
        provision_type: "test".into(),
        connector: crate::context::ConnectorInfo {
            name: "test-connector".into(),
            version: "1.0.0".into(),
            digest: String::new(),
            wit: crate::host::wit::LATEST.into(),
        },
        config: crate::config::DeviceConfig::parse(std::path::Path::new("default.yaml"), config)
            .unwrap(),
        job: crate::job_file::JobFile::empty(),
        rundir: crate::rundir::RunDir::new(dir),
        limits,
        gate: Gate::new(Subject::default(), set.clone(), set, vec![], "the lab file"),
    })
    .unwrap();
    HostState::new(cx)
}
