//! Resource limits of one invocation, with the defaults labs get when they
//! configure nothing.

use std::time::Duration;

/// Limits applied to a connector's store and host calls.
#[derive(Debug, Clone)]
pub struct Limits {
    /// Linear memory a connector may grow to, in bytes.
    pub memory_bytes: usize,
    /// Component instances per store (a component instantiates a few core
    /// instances internally).
    pub max_instances: usize,
    /// Wall-clock budget of one stage, guest and host calls together.
    pub stage_timeout: Duration,
    /// Upper bound on any single host call's deadline.
    pub host_call_timeout: Duration,
    /// Bytes a single host call may return to the guest.
    pub max_return_bytes: u64,
    /// Bytes of log and stdout text a connector may emit per stage.
    pub max_log_bytes: u64,
    /// Bytes of command output buffered per SSH exec.
    pub max_exec_output_bytes: u64,
    /// Open SSH sessions per stage.
    pub max_ssh_sessions: usize,
    /// Open serial ports per stage.
    pub max_serial_ports: usize,
    /// Concurrent transfers per stage.
    pub max_transfers: usize,
}

impl Default for Limits {
    fn default() -> Self {
        Limits {
            memory_bytes: 512 << 20,
            max_instances: 64,
            // The agent's own global timeout is 4 h; reserve may hold a
            // device for 6 h (more with special permission).
            stage_timeout: Duration::from_secs(8 * 3600),
            host_call_timeout: Duration::from_secs(4 * 3600),
            max_return_bytes: 64 << 20,
            max_log_bytes: 64 << 20,
            max_exec_output_bytes: 16 << 20,
            max_ssh_sessions: 32,
            max_serial_ports: 4,
            max_transfers: 4,
        }
    }
}
