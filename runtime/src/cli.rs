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
        "{} (WIT testflinger:connector@{}, also serving {}; wasmtime 48)",
        env!("CARGO_PKG_VERSION"),
        crate::host::wit::LATEST,
        crate::host::wit::served_text()
    )
}

/// `-c/--config CONFIG`, required.
fn config_arg() -> Arg {
    Arg::new("config")
        .short('c')
        .long("config")
        .required(true)
        .value_name("CONFIG")
        .value_parser(clap::value_parser!(PathBuf))
        .help("Device connector configuration (default.yaml)")
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
        .arg(config_arg())
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
            Arg::new("lab")
                .long("lab")
                .global(true)
                .value_name("LAB_FILE")
                .value_parser(clap::value_parser!(PathBuf))
                .help("Lab file pinning connectors (default: $TFDC_LAB_FILE, the device config's connector_runtime.lab_file, /etc/testflinger-device-connectors/lab.yaml)"),
        )
        .arg(
            Arg::new("debug")
                .long("debug")
                .global(true)
                .action(ArgAction::SetTrue)
                .help("Also show DEBUG log lines"),
        );
    root = root
        .subcommand(lab_command())
        .subcommand(
            Command::new("inspect")
                .about("Show a connector's manifest, WIT version, capabilities, imports and exports")
                .arg(
                    Arg::new("connector")
                        .required(true)
                        .value_name("COMPONENT_OR_TYPE")
                        .help("A component file, or a provision type (inspects the connector the runtime would run)"),
                ),
        )
        .subcommand(
            Command::new("check")
                .about("Before any job runs, and touching no device: compare what a connector declares with the lab's grants and the device config, and validate a job's stage data")
                .arg(Arg::new("type").required(true).value_name("PROVISION_TYPE"))
                .arg(
                    config_arg(),
                )
                .arg(
                    Arg::new("job")
                        .long("job")
                        .value_name("JOB_DATA")
                        .value_parser(clap::value_parser!(PathBuf))
                        .help("A job (testflinger.json) whose stage data to validate"),
                ),
        )
        .subcommand(
            Command::new("cache")
                .about("Manage the compiled-code cache")
                .subcommand_required(true)
                .subcommand(Command::new("clear").about("Remove every compiled-code cache entry"))
                .subcommand(Command::new("dir").about("Print the cache folder")),
        );
    let lab = crate::lab::locate(lab_flag_from_argv().as_deref(), None)
        .ok()
        .flatten();
    for t in crate::connectors::known_types(lab.as_ref()) {
        let mut sub = Command::new(t.clone())
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

fn lab_command() -> Command {
    let ty = || Arg::new("type").required(true).value_name("PROVISION_TYPE");
    let source = || {
        Arg::new("source")
            .required(true)
            .value_name("SOURCE")
            .help("A component file, an https:// URL, or `embedded`")
    };
    Command::new("lab")
        .about("Pin connector versions per provision type in the lab file")
        .subcommand_required(true)
        .subcommand(
            Command::new("add")
                .about("Pin a connector: computes its digest, stores it, grants what it declares")
                .arg(ty())
                .arg(source())
                .arg(
                    Arg::new("no-grants")
                        .long("no-grants")
                        .action(ArgAction::SetTrue)
                        .help("Grant nothing (edit the grants in the lab file afterwards)"),
                ),
        )
        .subcommand(Command::new("list").about("Show which connector serves each provision type, and from where"))
        .subcommand(Command::new("verify").about("Re-hash every pinned component and report drift"))
        .subcommand(
            Command::new("diff")
                .about("Show how the capabilities a new version declares differ from the pinned one")
                .arg(ty())
                .arg(source()),
        )
        .subcommand(
            Command::new("update")
                .about("Pin another version (the old pin is kept for rollback); new capabilities need --grant-new")
                .arg(ty())
                .arg(source())
                .arg(
                    Arg::new("grant-new")
                        .long("grant-new")
                        .action(ArgAction::SetTrue)
                        .help("Also grant capabilities the new version declares for the first time"),
                ),
        )
        .subcommand(Command::new("rollback").about("Go back to the pin before the last update").arg(ty()))
        .subcommand(Command::new("remove").about("Unpin a provision type").arg(ty()))
}

/// `--lab` from the raw command line (needed before parsing, to know the
/// provision types the lab file adds).
fn lab_flag_from_argv() -> Option<PathBuf> {
    let mut args = std::env::args_os().skip(1);
    while let Some(a) = args.next() {
        if a == "--lab" {
            return args.next().map(PathBuf::from);
        }
        if let Some(v) = a.to_str().and_then(|s| s.strip_prefix("--lab=")) {
            return Some(PathBuf::from(v));
        }
    }
    None
}

fn stage_args(m: &ArgMatches) -> Option<crate::run::StageArgs> {
    let (provision_type, tm) = m.subcommand()?;
    let (stage_name, sm) = tm.subcommand()?;
    Some(crate::run::StageArgs {
        provision_type: provision_type.to_string(),
        stage: Stage::from_cli(stage_name)?,
        config: sm.get_one::<PathBuf>("config")?.clone(),
        job_data: sm.get_one::<PathBuf>("job_data")?.clone(),
        connector: sm.get_one::<PathBuf>("connector").cloned(),
        lab: sm.get_one::<PathBuf>("lab").cloned(),
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
    match matches.subcommand() {
        Some(("lab", m)) => return finish(lab_main(&matches, m)),
        Some(("inspect", m)) => return finish(inspect_main(&matches, m)),
        Some(("cache", m)) => return finish(cache_main(m)),
        Some(("check", m)) => {
            return match check_main(&matches, m) {
                Ok((report, problems)) => {
                    print!("{report}");
                    ExitCode::from(if problems {
                        crate::error::EXIT_FAILED
                    } else {
                        0
                    })
                }
                Err(e) => finish(Err(e)),
            };
        }
        _ => {}
    }
    match stage_args(&matches) {
        Some(args) => ExitCode::from(crate::run::run_stage(args)),
        None => {
            let _ = command().print_help();
            ExitCode::from(EXIT_USAGE)
        }
    }
}

fn finish(result: Result<String, crate::commands::CommandError>) -> ExitCode {
    match result {
        Ok(text) => {
            print!("{text}");
            ExitCode::SUCCESS
        }
        Err(e) => {
            eprintln!("error: {e}");
            ExitCode::from(crate::error::EXIT_FAILED)
        }
    }
}

fn lab_flag(root: &ArgMatches, m: &ArgMatches) -> Option<PathBuf> {
    m.get_one::<PathBuf>("lab")
        .or_else(|| root.get_one::<PathBuf>("lab"))
        .cloned()
}

fn lab_main(root: &ArgMatches, m: &ArgMatches) -> Result<String, crate::commands::CommandError> {
    use crate::commands::{CommandError, block_on, lab};
    let (sub, sm) = m.subcommand().expect("subcommand_required");
    let flag = lab_flag(root, sm);
    let path = crate::lab::command_path(flag.as_deref());
    let ty = || sm.get_one::<String>("type").expect("required").as_str();
    let source = || sm.get_one::<String>("source").expect("required").as_str();
    match sub {
        "add" => block_on(lab::add(&path, ty(), source(), sm.get_flag("no-grants"))),
        "diff" => block_on(lab::diff(&path, ty(), source())),
        "update" => block_on(lab::update(&path, ty(), source(), sm.get_flag("grant-new"))),
        "rollback" => lab::rollback(&path, ty()),
        "remove" => lab::remove(&path, ty()),
        "list" => {
            let loaded = crate::lab::locate(flag.as_deref(), None)
                .map_err(|e| CommandError::new(e.to_string()))?;
            Ok(lab::list(loaded.as_ref()))
        }
        "verify" => {
            let loaded =
                crate::lab::LoadedLab::load(&path).map_err(|e| CommandError::new(e.to_string()))?;
            let (report, ok) = lab::verify(&loaded);
            if ok {
                Ok(report)
            } else {
                Err(CommandError::new(format!("drift found:\n{report}")))
            }
        }
        other => Err(CommandError::new(format!("unknown lab command {other}"))),
    }
}

fn inspect_main(
    root: &ArgMatches,
    m: &ArgMatches,
) -> Result<String, crate::commands::CommandError> {
    use crate::commands::{CommandError, block_on, inspect};
    let what = m.get_one::<String>("connector").expect("required");
    let path = std::path::Path::new(what);
    if path.exists() {
        let bytes = std::fs::read(path)
            .map_err(|e| CommandError::new(format!("cannot read {what}: {e}")))?;
        return inspect::report(&bytes, &path.display().to_string());
    }
    let lab = crate::lab::locate(lab_flag(root, m).as_deref(), None)
        .map_err(|e| CommandError::new(e.to_string()))?;
    let resolved = block_on(crate::connectors::resolve(what, None, lab.as_ref(), || {
        crate::http::build_client(&[])
    }))
    .map_err(|e| CommandError::new(e.to_string()))?;
    inspect::report(&resolved.bytes, &format!("{what} ({})", resolved.origin))
}

fn check_main(
    root: &ArgMatches,
    m: &ArgMatches,
) -> Result<(String, bool), crate::commands::CommandError> {
    let connector = m
        .get_one::<PathBuf>("connector")
        .or_else(|| root.get_one::<PathBuf>("connector"));
    crate::commands::block_on(crate::commands::check::check(
        m.get_one::<String>("type").expect("required"),
        m.get_one::<PathBuf>("config").expect("required"),
        m.get_one::<PathBuf>("job").map(PathBuf::as_path),
        connector.map(PathBuf::as_path),
        lab_flag(root, m).as_deref(),
    ))
}

fn cache_main(m: &ArgMatches) -> Result<String, crate::commands::CommandError> {
    use crate::commands::CommandError;
    let dir = crate::cache::default_dir()
        .ok_or_else(|| CommandError::new("no cache folder: set TFDC_CACHE_DIR or HOME"))?;
    match m.subcommand() {
        Some(("clear", _)) => {
            let n = crate::cache::CodeCache::new(&dir, 0)
                .clear()
                .map_err(|e| CommandError::new(format!("cannot clear {}: {e}", dir.display())))?;
            Ok(format!("removed {n} files from {}\n", dir.display()))
        }
        _ => Ok(format!("{}\n", dir.display())),
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
