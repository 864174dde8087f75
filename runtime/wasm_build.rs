// Shared by the build scripts of the runtime (first-party connectors) and
// of the test crate (hostile fixtures): builds workspace crates for
// wasm32-wasip2 with a nested `cargo build` into a target directory of its
// own, next to the outer build's profile directory, so both build scripts
// share compiled dependencies.

use std::path::{Path, PathBuf};
use std::process::Command;

/// The cargo profile guests are built with (see the workspace Cargo.toml).
pub const WASM_PROFILE: &str = "connector";

/// Target directory of the nested wasm build.
pub fn wasm_target_dir() -> PathBuf {
    let out_dir = PathBuf::from(std::env::var_os("OUT_DIR").expect("OUT_DIR is set for build scripts"));
    // OUT_DIR = <target>/[<triple>/]<profile>/build/<pkg>-<hash>/out
    out_dir
        .ancestors()
        .nth(3)
        .expect("OUT_DIR has the usual depth")
        .join("wasm")
}

/// Builds `packages` (workspace members) for wasm32-wasip2 and returns the
/// path of each `.wasm`, in order.
pub fn build_wasm(workspace: &Path, packages: &[String]) -> Vec<PathBuf> {
    let target_dir = wasm_target_dir();
    let cargo = std::env::var_os("CARGO").unwrap_or_else(|| "cargo".into());
    let mut cmd = Command::new(cargo);
    cmd.current_dir(workspace)
        .arg("build")
        .arg("--quiet")
        .arg("--target=wasm32-wasip2")
        .arg(format!("--profile={WASM_PROFILE}"))
        .arg("--target-dir")
        .arg(&target_dir);
    for p in packages {
        cmd.arg("-p").arg(p);
    }
    // The outer build's settings must not leak into the guest build.
    for var in [
        "CARGO_ENCODED_RUSTFLAGS",
        "RUSTFLAGS",
        "CARGO_TARGET_DIR",
        "CARGO_BUILD_TARGET",
        "RUSTC_WORKSPACE_WRAPPER",
        "RUSTC_WRAPPER",
        "CARGO_PRIMARY_PACKAGE",
        "CARGO_LLVM_COV",
        "LLVM_PROFILE_FILE",
    ] {
        cmd.env_remove(var);
    }
    let status = cmd.status().expect("running cargo for the wasm build");
    if !status.success() {
        panic!(
            "building {packages:?} for wasm32-wasip2 failed (see the errors above). \
             If the target is missing, install it with `rustup target add wasm32-wasip2`."
        );
    }
    packages
        .iter()
        .map(|p| {
            target_dir
                .join("wasm32-wasip2")
                .join(WASM_PROFILE)
                .join(format!("{}.wasm", p.replace('-', "_")))
        })
        .collect()
}

/// Workspace member folders under `dir` that contain a Cargo.toml.
pub fn crates_in(dir: &Path) -> Vec<PathBuf> {
    let mut out: Vec<PathBuf> = std::fs::read_dir(dir)
        .map(|rd| {
            rd.filter_map(Result::ok)
                .map(|e| e.path())
                .filter(|p| p.join("Cargo.toml").is_file())
                .collect()
        })
        .unwrap_or_default();
    out.sort();
    out
}

/// The `version` of a crate's `[package]` (following `version.workspace`).
pub fn package_version(crate_dir: &Path, workspace: &Path) -> String {
    let text = std::fs::read_to_string(crate_dir.join("Cargo.toml")).expect("reading Cargo.toml");
    let value: toml::Table = toml::from_str(&text).expect("parsing Cargo.toml");
    match &value["package"]["version"] {
        toml::Value::String(v) => v.clone(),
        _ => {
            let root = std::fs::read_to_string(workspace.join("Cargo.toml")).expect("reading the workspace Cargo.toml");
            let root: toml::Table = toml::from_str(&root).expect("parsing the workspace Cargo.toml");
            root["workspace"]["package"]["version"].as_str().expect("workspace.package.version").to_string()
        }
    }
}

/// The `name` of a crate's `[package]`.
pub fn package_name(crate_dir: &Path) -> String {
    let text = std::fs::read_to_string(crate_dir.join("Cargo.toml")).expect("reading Cargo.toml");
    let value: toml::Table = toml::from_str(&text).expect("parsing Cargo.toml");
    value["package"]["name"].as_str().expect("package.name").to_string()
}
