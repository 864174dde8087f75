//! `log`: connector log lines (reference format, stderr) and stdout text,
//! implemented on the one piece of state they need, the stage's
//! [`LogBudget`].

use tracing::Level;

use crate::host::wit::latest::log::{Host, Level as WitLevel};
use crate::logging::GUEST_TARGET;

/// Log and stdout volume a connector may still produce in this stage
/// (`limits.max_log_bytes`). Output lines the host logs for it (`ssh exec`
/// with `log-output`) count too.
#[derive(Debug)]
pub struct LogBudget {
    used: u64,
    max: u64,
    connector: String,
}

impl LogBudget {
    /// A budget of `max` bytes for `connector` (named in the error).
    pub fn new(max: u64, connector: impl Into<String>) -> Self {
        LogBudget {
            used: 0,
            max,
            connector: connector.into(),
        }
    }

    /// Bytes the connector may still log in this stage.
    pub fn remaining(&self) -> u64 {
        self.max.saturating_sub(self.used)
    }

    /// Counts `len` bytes against the budget; past it the phase ends (a
    /// connector flooding the agent's log is misbehaving).
    pub fn account(&mut self, len: u64) -> wasmtime::Result<()> {
        self.used = self.used.saturating_add(len);
        if self.used > self.max {
            wasmtime::bail!(
                "connector {} exceeded the log volume limit of {} bytes per stage (limits.max_log_bytes in the lab file raises it)",
                self.connector,
                self.max
            );
        }
        Ok(())
    }
}

impl Host for LogBudget {
    async fn log(&mut self, level: WitLevel, message: String) -> wasmtime::Result<()> {
        self.account(message.len() as u64)?;
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
        self.account(text.len() as u64)?;
        crate::logging::print(&text);
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn logging_past_the_budget_ends_the_phase() {
        let logs = crate::testing::log::LogCapture::start();
        let mut budget = LogBudget::new(10, "chatty");
        budget
            .log(WitLevel::Warning, "hello\n".into())
            .await
            .unwrap();
        assert_eq!(budget.remaining(), 4);
        let err = budget
            .log(WitLevel::Info, "again".into())
            .await
            .unwrap_err();
        assert!(
            err.to_string()
                .contains("connector chatty exceeded the log volume limit of 10 bytes"),
            "{err}"
        );
        let lines = logs.lines();
        assert_eq!(lines.len(), 1, "the line over the budget is not logged");
        assert_eq!(
            (lines[0].level, lines[0].message.as_str()),
            (Level::WARN, "hello")
        );
    }
}
