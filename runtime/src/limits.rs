//! Resource limits of one invocation, with the defaults labs get when they
//! configure nothing.

use std::time::Duration;

use serde::Deserialize;

use crate::units::{de_duration, de_size, de_usize_size};

/// Limits applied to a connector's store and host calls. In YAML, sizes
/// are bytes or strings like `"512MiB"`, durations are seconds or strings
/// like `"2h30m"`.
#[derive(Debug, Clone, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct Limits {
    /// Linear memory a connector may grow to, in bytes.
    #[serde(rename = "memory", deserialize_with = "de_usize_size")]
    pub memory_bytes: usize,
    /// Component instances per store (a component instantiates a few core
    /// instances internally).
    pub max_instances: usize,
    /// Wall-clock budget of one stage, guest and host calls together.
    #[serde(deserialize_with = "de_duration")]
    pub stage_timeout: Duration,
    /// Upper bound on any single host call's deadline.
    #[serde(deserialize_with = "de_duration")]
    pub host_call_timeout: Duration,
    /// Bytes a single host call may return to the guest.
    #[serde(deserialize_with = "de_size")]
    pub max_return_bytes: u64,
    /// Bytes of log and stdout text a connector may emit per stage.
    #[serde(deserialize_with = "de_size")]
    pub max_log_bytes: u64,
    /// Bytes a connector may write with `write-artifact` per stage (data
    /// from its own memory; host-side copies are not counted), so that a
    /// loop cannot fill the agent's disk.
    #[serde(deserialize_with = "de_size")]
    pub max_artifact_bytes: u64,
    /// Bytes of command output buffered per SSH exec.
    #[serde(deserialize_with = "de_size")]
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
            max_artifact_bytes: 1 << 30,
            max_exec_output_bytes: 16 << 20,
            max_ssh_sessions: 32,
            max_serial_ports: 4,
            max_transfers: 4,
        }
    }
}
