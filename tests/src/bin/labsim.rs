//! `labsim`: run a simulated Testflinger lab on loopback.
//!
//! * `labsim up lab.yaml --dir <out> [--for 30s]` starts the lab described
//!   by `lab.yaml` (schema: `labsim::lab`), writes a `default.yaml` per
//!   device and the agent's SSH setup under `<out>`, prints where
//!   everything is, and runs until Ctrl-C (or for the given time).
//! * `labsim demo [--dir <out>] [--cli <path>]` starts a one-device lab
//!   and runs a whole job through the CLI binary found next to this one,
//!   printing each command the agent would run and what it printed.

use std::io::{BufRead, BufReader};
use std::path::{Path, PathBuf};
use std::process::{Command, ExitCode, Stdio};
use std::time::{Duration, Instant};

use anyhow::{Context as _, bail};
use clap::{Parser, Subcommand};
use labsim::lab::Lab;

#[derive(Parser)]
#[command(name = "labsim", about = "A simulated Testflinger lab on loopback")]
struct Cli {
    #[command(subcommand)]
    command: Cmd,
}

#[derive(Subcommand)]
enum Cmd {
    /// Start the lab described by a YAML file and keep it running.
    Up {
        /// The lab description.
        lab: PathBuf,
        /// Where to write default.yaml files, scripts and the agent home.
        #[arg(long)]
        dir: PathBuf,
        /// Stop after this long (e.g. 30s, 5m) instead of at Ctrl-C.
        #[arg(long = "for", value_name = "DURATION")]
        run_for: Option<String>,
    },
    /// Run a complete job against a one-device lab through the CLI.
    Demo {
        /// Keep the lab and run directories here (default: a temporary
        /// directory, removed at the end).
        #[arg(long)]
        dir: Option<PathBuf>,
        /// The CLI binary (default: testflinger-device-connectors next to
        /// this binary).
        #[arg(long)]
        cli: Option<PathBuf>,
    },
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    let result = match cli.command {
        Cmd::Up { lab, dir, run_for } => up(&lab, &dir, run_for.as_deref()),
        Cmd::Demo { dir, cli } => demo(dir.as_deref(), cli),
    };
    match result {
        Ok(code) => code,
        Err(e) => {
            eprintln!("labsim: {e:#}");
            ExitCode::from(2)
        }
    }
}

fn up(lab_file: &Path, dir: &Path, run_for: Option<&str>) -> anyhow::Result<ExitCode> {
    let yaml = std::fs::read_to_string(lab_file)
        .with_context(|| format!("reading {}", lab_file.display()))?;
    let limit = run_for
        .map(labsim::lab::parse_duration)
        .transpose()
        .map_err(|e| anyhow::anyhow!("--for: {e}"))?;
    let lab = Lab::start_in(&yaml, dir)?;
    print!("{}", lab.summary());
    println!();
    println!("Run a stage as the agent would:");
    for d in lab.devices() {
        println!(
            "  cd <run dir> && HOME={} testflinger-device-connectors {} provision -c {} testflinger.json",
            lab.home().display(),
            d.spec.provision_type.as_deref().unwrap_or("noprovision"),
            d.config_path.display()
        );
    }
    match limit {
        Some(d) => println!("\nRunning for {d:?}."),
        None => println!("\nRunning until Ctrl-C."),
    }
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()?;
    rt.block_on(async {
        match limit {
            Some(d) => {
                tokio::select! {
                    _ = tokio::time::sleep(d) => {}
                    _ = tokio::signal::ctrl_c() => {}
                }
            }
            None => {
                let _ = tokio::signal::ctrl_c().await;
            }
        }
    });
    drop(lab);
    println!("labsim: lab stopped");
    Ok(ExitCode::SUCCESS)
}

/// The demo's lab: a Raspberry Pi whose SD card sits behind the SDWire of
/// a control host (`stm -ts`/`stm -dut`, card at `/dev/sda` there), still
/// running last week's jammy image, and an image server with the noble
/// image the job asks for (64 MiB raw, zstd-compressed as production
/// images are; served slowly, as over a real link, so that the transfer
/// shows its progress lines).
const DEMO_LAB: &str = r#"
runtime:
  poll_interval_seconds: 0.5
  serial_retry_seconds: 1
  control_host_settle_seconds: 0.5
devices:
  - name: demo-pi4
    provision_type: muxpi
    boot_time: 1s
    reboot_time: 2s
    control_host: ctl-01
    block_device: sda
    image: {version: 22.04.4, codename: jammy, hostname: demo-pi4}
control_hosts:
  - name: ctl-01
    boot_time: 1s
images:
  ubuntu-24.04.2-preinstalled-server-arm64+raspi:
    {version: 24.04.2, codename: noble, hostname: demo-pi4, padding: 67108864,
     fault: {slow: 500ms, chunk: 256}}
"#;

/// The image the demo job provisions.
const DEMO_IMAGE: &str = "ubuntu-24.04.2-preinstalled-server-arm64+raspi";

/// Every `ssh` of the demo's test commands: `-F` because ssh reads the
/// config of the passwd home, not `$HOME`.
const SSH: &str = "ssh -F $HOME/.ssh/config -o StrictHostKeyChecking=no -o UserKnownHostsFile=/dev/null -o BatchMode=yes -o LogLevel=ERROR";

struct Phase {
    name: &'static str,
    stage: &'static str,
    code: i32,
    took: Duration,
}

fn demo(dir: Option<&Path>, cli: Option<PathBuf>) -> anyhow::Result<ExitCode> {
    let cli = match cli {
        Some(c) => c,
        None => std::env::current_exe()?
            .parent()
            .context("no directory for the labsim binary")?
            .join("testflinger-device-connectors"),
    };
    if !cli.exists() {
        bail!(
            "{} not found: build it (cargo build --release -p tfdc-runtime) or pass --cli",
            cli.display()
        );
    }
    let temp;
    let dir = match dir {
        Some(d) => d.to_path_buf(),
        None => {
            temp = tempfile::tempdir()?;
            temp.path().to_path_buf()
        }
    };
    let mut yaml = DEMO_LAB.to_string();
    yaml.push_str(&format!(
        "key_server:\n  launchpad: {{demo-user: \"{}\"}}\n",
        labsim::keyserver::ALICE_ED25519.replace("alice@laptop", "demo-user@laptop")
    ));
    say("starting a simulated lab on loopback");
    let lab = Lab::start_in(&yaml, &dir.join("lab"))?;
    for line in lab.summary().lines() {
        say(line);
    }
    let device = lab.device("demo-pi4");
    let job_id = "5b1d3c2e-9f0a-4c8e-b7d6-labsim-demo";
    let run_dir = dir.join("run").join(job_id);
    std::fs::create_dir_all(&run_dir)?;
    let image_url = lab
        .image_url(DEMO_IMAGE)
        .context("the demo lab serves its image")?;
    let job = serde_json::json!({
        "job_id": job_id,
        "job_queue": "demo-pi4",
        "provision_data": {"url": image_url},
        "test_data": {"test_cmds": [
            "echo \"Testing on $AGENT_NAME: device $DEVICE_IP\"",
            format!("{SSH} $DEVICE_IP 'hostname; grep PRETTY_NAME /etc/os-release; lsblk -o NAME,LABEL,SIZE'"),
            "echo \"Power cycling the device through $REBOOT_SCRIPT\" && $REBOOT_SCRIPT",
            format!("for i in $(seq 1 20); do {SSH} -o ConnectTimeout=2 $DEVICE_IP true 2>/dev/null && break; sleep 0.5; done; {SSH} $DEVICE_IP 'echo back up: $(hostname) running $(grep VERSION_CODENAME /etc/os-release)'"),
        ]},
        "reserve_data": {"ssh_keys": ["lp:demo-user"], "timeout": "2s"},
    });
    std::fs::write(
        run_dir.join("testflinger.json"),
        serde_json::to_string_pretty(&job)?,
    )?;
    std::fs::write(run_dir.join("testflinger-outcome.json"), "{}")?;
    std::fs::write(run_dir.join("device-connector-error.json"), "")?;
    let config = device.config_path.clone();
    let provision_type = "muxpi";
    let mut phases = Vec::new();
    let mut run = |name: &'static str, stage: &'static str| -> anyhow::Result<i32> {
        banner(name, "demo-pi4");
        let args = [
            provision_type,
            stage,
            "-c",
            config.to_str().unwrap_or_default(),
            "testflinger.json",
        ];
        println!("$ testflinger-device-connectors {}", args.join(" "));
        let started = Instant::now();
        let code = stream(&cli, &args, &run_dir, lab.home())?;
        phases.push(Phase {
            name,
            stage,
            code,
            took: started.elapsed(),
        });
        Ok(code)
    };

    let card = lab.card("demo-pi4").context("the demo device has a card")?;
    say(&format!(
        "the device runs {} from its SD card; the job asks for {DEMO_IMAGE}",
        card_image(card)
    ));
    run("provision", "provision")?;
    run("test", "runtest")?;
    run("reserve", "reserve")?;
    run("cleanup", "cleanup")?;

    println!();
    say("summary");
    let mut ok = true;
    for p in &phases {
        println!(
            "  {:<10} {:<10} exit {:>3}   {:>5.1} s",
            p.name,
            p.stage,
            p.code,
            p.took.as_secs_f64()
        );
        ok &= p.code == 0;
    }
    println!("  files in the run directory {}:", run_dir.display());
    let mut names: Vec<String> = std::fs::read_dir(&run_dir)?
        .filter_map(|e| e.ok())
        .map(|e| e.file_name().to_string_lossy().into_owned())
        .collect();
    names.sort();
    for n in names {
        let path = run_dir.join(&n);
        let size = std::fs::metadata(&path).map_or(0, |m| m.len());
        let detail = match n.as_str() {
            "device-info.json" => std::fs::read_to_string(&path).unwrap_or_default(),
            "test-serial.log" => {
                let text = std::fs::read_to_string(&path).unwrap_or_default();
                let lines = text.lines().count();
                format!(
                    "{lines} lines of console output, ending with {:?}",
                    text.lines().last().unwrap_or("")
                )
            }
            _ => String::new(),
        };
        println!("    {n:<28} {size:>6} bytes  {}", detail.trim());
    }
    println!(
        "  the SD card holds {} ({} bytes)",
        card_image(card),
        card.bytes().map_or(0, |b| b.len())
    );
    println!(
        "  the control host ran {} commands; power events: {}",
        lab.control_host("ctl-01").ssh().command_lines().len(),
        none_if_empty(lab.control_host("ctl-01").ssh().power_events())
    );
    println!(
        "  the device received {} commands; power events: {}",
        device.dut.commands().len(),
        none_if_empty(device.dut.power_events())
    );
    drop(lab);
    say(if ok {
        "demo finished: every phase exited 0; the lab is stopped"
    } else {
        "demo finished with failures (see above); the lab is stopped"
    });
    Ok(if ok {
        ExitCode::SUCCESS
    } else {
        ExitCode::FAILURE
    })
}

/// What the card holds: `<PRETTY_NAME> (<hostname>)`.
fn card_image(card: &labsim::card::Card) -> String {
    match card.image() {
        Ok(image) => {
            let pretty = image
                .os_release_text()
                .and_then(|t| {
                    t.lines()
                        .find_map(|l| l.strip_prefix("PRETTY_NAME="))
                        .map(|v| v.trim_matches('"').to_string())
                })
                .unwrap_or_else(|| "an unnamed image".into());
            format!(
                "{pretty} (hostname {})",
                image.hostname_text().unwrap_or_else(|| "unset".into())
            )
        }
        Err(e) => format!("no bootable image ({e})"),
    }
}

fn none_if_empty(events: Vec<String>) -> String {
    if events.is_empty() {
        "none".into()
    } else {
        events.join(", ")
    }
}

fn say(text: &str) {
    println!("[labsim] {text}");
}

/// The three banner lines the agent echoes before a phase.
fn banner(phase: &str, agent: &str) {
    let text = format!("* Starting testflinger {phase} phase on {agent} *");
    let frame = "*".repeat(text.len());
    println!("\n{frame}\n{text}\n{frame}");
}

/// Runs the CLI in `dir` with `HOME=home`, streaming its merged output;
/// returns its exit code.
fn stream(cli: &Path, args: &[&str], dir: &Path, home: &Path) -> anyhow::Result<i32> {
    let mut child = Command::new(cli)
        .args(args)
        .current_dir(dir)
        .env("HOME", home)
        .env("PYTHONUNBUFFERED", "1")
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .with_context(|| format!("starting {}", cli.display()))?;
    let out = child.stdout.take().context("no stdout")?;
    let err = child.stderr.take().context("no stderr")?;
    let t = std::thread::spawn(move || {
        for line in BufReader::new(err).lines().map_while(Result::ok) {
            println!("{line}");
        }
    });
    for line in BufReader::new(out).lines().map_while(Result::ok) {
        println!("{line}");
    }
    let _ = t.join();
    let status = child.wait()?;
    Ok(status.code().unwrap_or(-1))
}
