//! `log`: connector log lines (reference format, stderr) and stdout text.

use tracing::Level;

use super::HostState;
use crate::host::wit::latest::log::{Host, Level as WitLevel};
use crate::logging::GUEST_TARGET;

/// Log and stdout volume a connector produced in this stage.
#[derive(Debug, Default)]
pub struct LogState {
    bytes: u64,
}

impl HostState {
    /// Bytes the connector may still log in this stage.
    pub(crate) fn log_remaining(&self) -> u64 {
        self.cx.limits.max_log_bytes.saturating_sub(self.log.bytes)
    }

    /// Counts `len` bytes against the log-volume limit; past it the phase
    /// ends (a connector flooding the agent's log is misbehaving).
    pub(crate) fn account_log(&mut self, len: usize) -> wasmtime::Result<()> {
        self.log.bytes = self.log.bytes.saturating_add(len as u64);
        let max = self.cx.limits.max_log_bytes;
        if self.log.bytes > max {
            wasmtime::bail!(
                "connector {} exceeded the log volume limit of {max} bytes per stage (limits.max_log_bytes in the lab file raises it)",
                self.cx.connector.name
            );
        }
        Ok(())
    }
}

impl Host for HostState {
    async fn log(&mut self, level: WitLevel, message: String) -> wasmtime::Result<()> {
        self.account_log(message.len())?;
        let message = message.trim_end_matches('\n');
        match level {
            WitLevel::Debug => tracing::event!(target: GUEST_TARGET, Level::DEBUG, "{message}"),
            WitLevel::Info => tracing::event!(target: GUEST_TARGET, Level::INFO, "{message}"),
            WitLevel::Warning => tracing::event!(target: GUEST_TARGET, Level::WARN, "{message}"),
            WitLevel::Error => tracing::event!(target: GUEST_TARGET, Level::ERROR, "{message}"),
        }
        Ok(())
    }

    async fn print(&mut self, text: String) -> wasmtime::Result<()> {
        self.account_log(text.len())?;
        crate::logging::print(&text);
        Ok(())
    }
}
