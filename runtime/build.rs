//! Builds the first-party connectors (`connectors/*`) for wasm32-wasip2 and
//! embeds them, with their digests and the provision types their
//! `connector.toml` declares, so a fresh install works without a lab file.
//!
//! `TFDC_SKIP_EMBED=1` builds a runtime with no embedded connectors (useful
//! when only the runtime's own unit tests are wanted).

use std::fmt::Write as _;

use sha2::{Digest, Sha256};

include!("wasm_build.rs");

fn main() {
    let runtime_dir = PathBuf::from(std::env::var("CARGO_MANIFEST_DIR").unwrap());
    let workspace = runtime_dir.parent().unwrap().to_path_buf();
    for dir in ["connectors", "sdk", "wit"] {
        println!("cargo:rerun-if-changed={}", workspace.join(dir).display());
    }
    println!("cargo:rerun-if-changed=wasm_build.rs");
    println!("cargo:rerun-if-env-changed=TFDC_SKIP_EMBED");

    let crates = if std::env::var_os("TFDC_SKIP_EMBED").is_some() {
        Vec::new()
    } else {
        crates_in(&workspace.join("connectors"))
    };
    let names: Vec<String> = crates.iter().map(|c| package_name(c)).collect();
    let wasm = if names.is_empty() {
        Vec::new()
    } else {
        build_wasm(&workspace, &names)
    };

    let mut out = String::from(
        "/// Connectors built into this binary.\npub static EMBEDDED: &[Embedded] = &[\n",
    );
    for ((dir, name), wasm) in crates.iter().zip(&names).zip(&wasm) {
        let bytes = std::fs::read(wasm).expect("reading built connector");
        let digest = format!("sha256:{}", hex::encode(Sha256::digest(&bytes)));
        let manifest_text =
            std::fs::read_to_string(dir.join("connector.toml")).expect("connector.toml");
        let manifest: toml::Table = toml::from_str(&manifest_text).expect("parsing connector.toml");
        let types: Vec<String> = manifest["provision_types"]
            .as_array()
            .expect("provision_types is a list")
            .iter()
            .map(|v| format!("{:?}", v.as_str().unwrap()))
            .collect();
        let _ = writeln!(
            out,
            "    Embedded {{ name: {name:?}, version: {:?}, provision_types: &[{}], digest: {digest:?}, bytes: include_bytes!({:?}) }},",
            package_version(dir, &workspace),
            types.join(", "),
            wasm.display().to_string()
        );
        println!("cargo:rerun-if-changed={}", wasm.display());
    }
    out.push_str("];\n");
    let dest = PathBuf::from(std::env::var("OUT_DIR").unwrap()).join("embedded.rs");
    std::fs::write(dest, out).unwrap();
}
