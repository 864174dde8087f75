//! With the `fixtures` feature, builds the test fixture components
//! (`tests/fixtures/*`, hostile and special-purpose connectors) for
//! wasm32-wasip2 and generates `labsim::fixtures::path()` for them.

use std::fmt::Write as _;

include!("../runtime/wasm_build.rs");

fn main() {
    let tests_dir = PathBuf::from(std::env::var("CARGO_MANIFEST_DIR").unwrap());
    let workspace = tests_dir.parent().unwrap().to_path_buf();
    let mut out = String::from(
        "/// Built fixture components: (crate name, path of the .wasm).\npub static FIXTURES: &[(&str, &str)] = &[\n",
    );
    if std::env::var_os("CARGO_FEATURE_FIXTURES").is_some() {
        for dir in ["tests/fixtures", "sdk", "wit"] {
            println!("cargo:rerun-if-changed={}", workspace.join(dir).display());
        }
        let crates = crates_in(&tests_dir.join("fixtures"));
        let names: Vec<String> = crates.iter().map(|c| package_name(c)).collect();
        if !names.is_empty() {
            for (name, wasm) in names.iter().zip(build_wasm(&workspace, &names)) {
                let _ = writeln!(out, "    ({name:?}, {:?}),", wasm.display().to_string());
            }
        }
    }
    out.push_str("];\n");
    let dest = PathBuf::from(std::env::var("OUT_DIR").unwrap()).join("fixtures.rs");
    std::fs::write(dest, out).unwrap();
}
