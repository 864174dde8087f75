//! The six stages of the command line, how each maps onto job keys,
//! attachment folders and serial log names, and how a connector's export
//! of a stage ended ([`PhaseOutcome`]).

use std::fmt;

/// One stage of `testflinger-device-connectors <type> <stage>`.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum Stage {
    Provision,
    FirmwareUpdate,
    Runtest,
    Allocate,
    Reserve,
    Cleanup,
}

impl Stage {
    /// Every stage, in the order the agent runs them.
    pub const ALL: [Stage; 6] = [
        Stage::Provision,
        Stage::FirmwareUpdate,
        Stage::Runtest,
        Stage::Allocate,
        Stage::Reserve,
        Stage::Cleanup,
    ];

    /// The name on the command line (and in `<stage>_exception_info`).
    pub fn cli_name(self) -> &'static str {
        match self {
            Stage::Provision => "provision",
            Stage::FirmwareUpdate => "firmware_update",
            Stage::Runtest => "runtest",
            Stage::Allocate => "allocate",
            Stage::Reserve => "reserve",
            Stage::Cleanup => "cleanup",
        }
    }

    /// Parses a command-line stage name. `test` is accepted as an alias of
    /// `runtest`: the reference's documentation uses it.
    pub fn from_cli(name: &str) -> Option<Stage> {
        Some(match name {
            "provision" => Stage::Provision,
            "firmware_update" => Stage::FirmwareUpdate,
            "runtest" | "test" => Stage::Runtest,
            "allocate" => Stage::Allocate,
            "reserve" => Stage::Reserve,
            "cleanup" => Stage::Cleanup,
            _ => return None,
        })
    }

    /// The generic error class (`exception_name`) of a failure of this
    /// stage, after the reference's classes, for failures that name none.
    pub fn failure_class(self) -> &'static str {
        match self {
            Stage::Provision => "ProvisioningError",
            Stage::FirmwareUpdate => "FirmwareUpdateError",
            Stage::Runtest => "TestError",
            Stage::Allocate => "AllocateError",
            Stage::Reserve => "ReserveError",
            Stage::Cleanup => "CleanupError",
        }
    }

    /// The agent's name for the phase (`test` for `runtest`), used for the
    /// attachment folder and the serial log.
    pub fn agent_phase(self) -> &'static str {
        match self {
            Stage::Runtest => "test",
            other => other.cli_name(),
        }
    }

    /// The job key holding this stage's data (`cleanup` has none).
    pub fn data_key(self) -> Option<&'static str> {
        match self {
            Stage::Provision => Some("provision_data"),
            Stage::FirmwareUpdate => Some("firmware_update_data"),
            Stage::Runtest => Some("test_data"),
            Stage::Allocate => Some("allocate_data"),
            Stage::Reserve => Some("reserve_data"),
            Stage::Cleanup => None,
        }
    }

    /// File the serial console is captured into: `provision-serial.log`,
    /// `test-serial.log`, ...
    pub fn serial_log_name(self) -> String {
        format!("{}-serial.log", self.agent_phase())
    }
}

impl fmt::Display for Stage {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.cli_name())
    }
}

/// A failure as the connector reported it: the error class the agent shows
/// (`ProvisioningError`, `MaasStorageError` ...), what happened, and what
/// caused it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Failure {
    /// The exception class name; empty when the connector named none.
    pub class: String,
    /// What happened and what to do about it.
    pub message: String,
    /// The underlying cause, if the connector gave one.
    pub cause: Option<String>,
}

/// How a connector's export of a stage ended, whatever WIT version it was
/// built against.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum PhaseOutcome {
    /// The stage succeeded; for `runtest`, with the tests' exit status.
    Done(i32),
    /// The connector does not implement the stage: the runtime's native
    /// default runs instead.
    Unsupported,
    /// The stage failed; the device is still usable (exit 1).
    Failed(Failure),
    /// The stage failed and the device needs manual recovery (exit 46).
    RecoveryNeeded(Failure),
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names_round_trip_and_test_is_an_alias() {
        for stage in Stage::ALL {
            assert_eq!(Stage::from_cli(stage.cli_name()), Some(stage));
        }
        assert_eq!(Stage::from_cli("test"), Some(Stage::Runtest));
        assert_eq!(Stage::from_cli("flash"), None);
    }

    #[test]
    fn runtest_files_use_the_agent_phase_name() {
        assert_eq!(Stage::Runtest.serial_log_name(), "test-serial.log");
        assert_eq!(Stage::Provision.serial_log_name(), "provision-serial.log");
        assert_eq!(Stage::Runtest.data_key(), Some("test_data"));
        assert_eq!(Stage::Cleanup.data_key(), None);
    }
}
