//! Shared helpers: a scratch run directory, writing inputs, running the CLI.

use std::path::{Path, PathBuf};
use std::process::{Command, Output};

/// The CLI binary under test.
pub fn cli() -> PathBuf {
    PathBuf::from(env!("CARGO_BIN_EXE_testflinger-device-connectors"))
}

/// A scratch run directory with a private HOME and compiled-code cache.
pub struct RunDir {
    pub dir: tempfile::TempDir,
}

/// What one CLI invocation did.
#[derive(Debug)]
pub struct Run {
    pub code: i32,
    pub stdout: String,
    pub stderr: String,
}

impl RunDir {
    pub fn new() -> Self {
        let dir = tempfile::tempdir().expect("tempdir");
        std::fs::create_dir_all(dir.path().join("home/.ssh")).unwrap();
        RunDir { dir }
    }

    pub fn path(&self) -> &Path {
        self.dir.path()
    }

    pub fn home(&self) -> PathBuf {
        self.dir.path().join("home")
    }

    pub fn write(&self, name: &str, text: &str) -> PathBuf {
        let p = self.dir.path().join(name);
        if let Some(parent) = p.parent() {
            std::fs::create_dir_all(parent).unwrap();
        }
        std::fs::write(&p, text).unwrap();
        p
    }

    pub fn read(&self, name: &str) -> String {
        std::fs::read_to_string(self.dir.path().join(name))
            .unwrap_or_else(|e| panic!("reading {name}: {e}"))
    }

    pub fn json(&self, name: &str) -> serde_json::Value {
        serde_json::from_str(&self.read(name)).unwrap_or_else(|e| panic!("{name} is not JSON: {e}"))
    }

    pub fn exists(&self, name: &str) -> bool {
        self.dir.path().join(name).exists()
    }

    /// A command for the CLI with the run dir as working directory.
    pub fn command(&self, args: &[&str]) -> Command {
        let mut cmd = Command::new(cli());
        cmd.args(args)
            .current_dir(self.path())
            .env("HOME", self.home())
            .env("TFDC_CACHE_DIR", shared_cache_dir())
            .env_remove("DISABLE_CONTROL_HOST_POWERCYCLE");
        cmd
    }

    /// Runs `<type> <stage> -c default.yaml testflinger.json`.
    pub fn stage(&self, provision_type: &str, stage: &str) -> Run {
        self.run(&[
            provision_type,
            stage,
            "-c",
            "default.yaml",
            "testflinger.json",
        ])
    }

    pub fn run(&self, args: &[&str]) -> Run {
        finish(self.command(args).output().expect("running the CLI"))
    }
}

pub fn finish(out: Output) -> Run {
    let run = Run {
        code: out.status.code().unwrap_or(-1),
        stdout: String::from_utf8_lossy(&out.stdout).into_owned(),
        stderr: String::from_utf8_lossy(&out.stderr).into_owned(),
    };
    eprintln!(
        "--- exit {}\n--- stdout\n{}--- stderr\n{}",
        run.code, run.stdout, run.stderr
    );
    run
}

/// One compiled-code cache for the whole test run, so each connector is
/// compiled once.
pub fn shared_cache_dir() -> PathBuf {
    let dir = PathBuf::from(env!("CARGO_TARGET_TMPDIR")).join("tfdc-cache");
    std::fs::create_dir_all(&dir).unwrap();
    dir
}
