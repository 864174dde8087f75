//! The command line: `testflinger-device-connectors <type> <stage> -c
//! CONFIG JOB_JSON`, as the reference's, built from the provision types
//! this binary knows.

use std::path::PathBuf;
use std::process::ExitCode;

use clap::{Arg, ArgAction, ArgMatches, Command};

use crate::error::EXIT_USAGE;
use crate::stage::Stage;

/// Version line printed by `--version`.
pub fn version_text() -> String {
    format!(
        "{} (WIT testflinger:connector@{}, wasmtime 48)",
        env!("CARGO_PKG_VERSION"),
        crate::bindings::WIT_VERSION
    )
}

fn stage_command(stage: Stage) -> Command {
    let about = match stage {
        Stage::Provision => "Put the job's image on the device",
        Stage::FirmwareUpdate => "Update the device's firmware",
        Stage::Runtest => "Run the job's test commands (alias: test)",
        Stage::Allocate => "Hold the device for a multi-device job",
        Stage::Reserve => "Give the job's users SSH access for a while",
        Stage::Cleanup => "Release whatever the job took",
    };
    let mut cmd = Command::new(stage.cli_name())
        .about(about)
        .arg(
            Arg::new("config")
                .short('c')
                .long("config")
                .required(true)
                .value_name("CONFIG")
                .value_parser(clap::value_parser!(PathBuf))
                .help("Device connector configuration (default.yaml)"),
        )
        .arg(
            Arg::new("job_data")
                .required(true)
                .value_name("JOB_DATA")
                .value_parser(clap::value_parser!(PathBuf))
                .help("Job data (testflinger.json)"),
        );
    if stage == Stage::Runtest {
        cmd = cmd.visible_alias("test");
    }
    cmd
}

/// The whole command tree.
pub fn command() -> Command {
    let mut root = Command::new("testflinger-device-connectors")
        .about("Testflinger device connectors, each provision type running as a sandboxed WebAssembly component")
        .version(version_text())
        .subcommand_required(true)
        .arg_required_else_help(true)
        .subcommand_value_name("PROVISION_TYPE")
        .arg(
            Arg::new("connector")
                .long("connector")
                .global(true)
                .value_name("COMPONENT")
                .value_parser(clap::value_parser!(PathBuf))
                .help("Run this connector component instead of the one the runtime would pick"),
        )
        .arg(
            Arg::new("debug")
                .long("debug")
                .global(true)
                .action(ArgAction::SetTrue)
                .help("Also show DEBUG log lines"),
        );
    for t in crate::connectors::known_types() {
        let mut sub = Command::new(t)
            .about(format!("Stages of the {t} provision type"))
            .subcommand_required(true)
            .arg_required_else_help(true)
            .subcommand_value_name("STAGE");
        for stage in Stage::ALL {
            sub = sub.subcommand(stage_command(stage));
        }
        root = root.subcommand(sub);
    }
    root
}

/// Arguments of one stage invocation.
#[derive(Debug, Clone)]
pub struct StageArgs {
    pub provision_type: String,
    pub stage: Stage,
    pub config: PathBuf,
    pub job_data: PathBuf,
    pub connector: Option<PathBuf>,
    pub debug: bool,
}

fn stage_args(m: &ArgMatches) -> Option<StageArgs> {
    let (provision_type, tm) = m.subcommand()?;
    let (stage_name, sm) = tm.subcommand()?;
    Some(StageArgs {
        provision_type: provision_type.to_string(),
        stage: Stage::from_cli(stage_name)?,
        config: sm.get_one::<PathBuf>("config")?.clone(),
        job_data: sm.get_one::<PathBuf>("job_data")?.clone(),
        connector: sm.get_one::<PathBuf>("connector").cloned(),
        debug: sm.get_flag("debug"),
    })
}

/// Entry point of both binaries.
pub fn main() -> ExitCode {
    main_from(std::env::args_os())
}

/// Entry point with explicit arguments.
pub fn main_from<I, T>(args: I) -> ExitCode
where
    I: IntoIterator<Item = T>,
    T: Into<std::ffi::OsString> + Clone,
{
    let matches = match command().try_get_matches_from(args) {
        Ok(m) => m,
        Err(e) => {
            let _ = e.print();
            return ExitCode::from(if e.use_stderr() { EXIT_USAGE } else { 0 });
        }
    };
    match stage_args(&matches) {
        Some(args) => ExitCode::from(crate::run::run_stage(args)),
        None => {
            let _ = command().print_help();
            ExitCode::from(EXIT_USAGE)
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_the_reference_shape_and_the_test_alias() {
        let m = command()
            .try_get_matches_from(["x", "noprovision", "test", "-c", "d.yaml", "j.json"])
            .unwrap();
        let a = stage_args(&m).unwrap();
        assert_eq!(a.stage, Stage::Runtest);
        assert_eq!(a.provision_type, "noprovision");
        let m = command()
            .try_get_matches_from([
                "x",
                "muxpi",
                "firmware_update",
                "j.json",
                "--config",
                "d.yaml",
            ])
            .unwrap();
        assert_eq!(stage_args(&m).unwrap().stage, Stage::FirmwareUpdate);
    }

    #[test]
    fn usage_errors() {
        for argv in [
            vec!["x", "nosuchtype", "provision", "-c", "d", "j"],
            vec!["x", "noprovision", "flash", "-c", "d", "j"],
            vec!["x", "noprovision", "provision", "j"],
            vec!["x", "noprovision", "provision", "-c", "d"],
            vec!["x", "zapper_iot", "provision", "-c", "d", "j"],
        ] {
            let err = command().try_get_matches_from(&argv).unwrap_err();
            assert!(err.use_stderr(), "{argv:?}");
            assert_eq!(err.exit_code(), 2, "{argv:?}");
        }
    }
}
