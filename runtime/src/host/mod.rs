//! Host side of the `connector` world, the only part of the runtime that
//! speaks WIT: one module per WIT interface, each implemented on a narrow
//! view of the store's data that holds only what the interface needs
//! ([`log::LogBudget`], [`job::JobView`], [`power::PowerView`],
//! [`serial::SerialView`], [`ssh::SshView`], [`http::HttpView`],
//! [`transfer::TransferView`]), as wasmtime-wasi does; a view can be built
//! and called in a test without a store or a component.
//!
//! Every function that reaches outside goes through one wrapper,
//! [`outward::Outward::call`] (gate check, deadline cap, span, audit line).
//! The services it calls (`crate::ssh`, `crate::serial` ...) return their
//! own errors; each interface module converts them into [`HostError`] once,
//! and [`wit`] turns that into each WIT version's `error`.

pub mod http;
pub mod job;
pub mod log;
pub mod outward;
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
pub use types::HostError;

/// Bytes of guest stderr kept (panic messages end up there). Writes past
/// it fail, which makes Rust's `eprintln!` panic.
pub const GUEST_STDERR_CAP: usize = 64 * 1024;
/// Bytes of guest stderr quoted in a failure message: the end, where a
/// panic message is.
const GUEST_STDERR_QUOTE: usize = 2 * 1024;

/// The data of one store: WASI (denying everything), the resource table,
/// the memory limiter, and the invocation's shared context.
pub struct HostState {
    wasi: WasiCtx,
    table: ResourceTable,
    /// Memory and instance limits applied by the store.
    pub limits: StoreLimits,
    /// What the invocation knows and the services it shares with the
    /// runtime's native defaults.
    cx: Arc<StageContext>,
    /// Log volume left in this stage.
    log: log::LogBudget,
    /// Bytes written by `write-artifact` in this stage.
    artifact_bytes: u64,
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
            log: log::LogBudget::new(cx.limits.max_log_bytes, cx.connector.name.clone()),
            artifact_bytes: 0,
            cx,
            stderr,
        }
    }

    fn outward(cx: &StageContext) -> outward::Outward<'_> {
        outward::Outward::new(&cx.gate, &cx.limits)
    }

    /// The view `log` is implemented on.
    pub fn log(&mut self) -> &mut log::LogBudget {
        &mut self.log
    }

    /// The view `job` is implemented on.
    pub fn job(&mut self) -> job::JobView<'_> {
        let cx = &*self.cx;
        job::JobView {
            stage: cx.stage,
            job: &cx.job,
            config: &cx.config,
            rundir: &cx.rundir,
            limits: &cx.limits,
            gate: &cx.gate,
            artifact_bytes: &mut self.artifact_bytes,
        }
    }

    /// The view `power` is implemented on.
    pub fn power(&mut self) -> power::PowerView<'_> {
        let cx = &*self.cx;
        power::PowerView {
            outward: Self::outward(cx),
            config: &cx.config,
            http: &cx.http,
        }
    }

    /// The view `serial` is implemented on.
    pub fn serial(&mut self) -> serial::SerialView<'_> {
        let cx = &*self.cx;
        serial::SerialView {
            outward: Self::outward(cx),
            serial: &cx.serial,
            max_return_bytes: cx.limits.max_return_bytes,
            table: &mut self.table,
        }
    }

    /// The view `ssh` is implemented on.
    pub fn ssh(&mut self) -> ssh::SshView<'_> {
        let cx = &*self.cx;
        ssh::SshView {
            outward: Self::outward(cx),
            pool: &cx.ssh,
            rundir: &cx.rundir,
            max_return_bytes: cx.limits.max_return_bytes,
            table: &mut self.table,
            log: &mut self.log,
        }
    }

    /// The view `http` is implemented on.
    pub fn http(&mut self) -> http::HttpView<'_> {
        let cx = &*self.cx;
        http::HttpView {
            outward: Self::outward(cx),
            http: &cx.http,
            max_return_bytes: cx.limits.max_return_bytes,
        }
    }

    /// The view `transfer` is implemented on.
    pub fn transfer(&mut self) -> transfer::TransferView<'_> {
        let cx = &*self.cx;
        transfer::TransferView {
            outward: Self::outward(cx),
            transfers: &cx.transfers,
            io: crate::transfer::Io {
                http: &cx.http,
                rundir: &cx.rundir,
            },
            table: &mut self.table,
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
}

impl WasiView for HostState {
    fn ctx(&mut self) -> WasiCtxView<'_> {
        WasiCtxView {
            ctx: &mut self.wasi,
            table: &mut self.table,
        }
    }
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
