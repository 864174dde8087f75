//! The connector manifest: what a component says about itself (name,
//! version, provision types, WIT version, capabilities it needs, the shape
//! of the stage data it accepts). The SDK embeds it, from the connector
//! crate's `connector.toml`, as the custom section [`SECTION`] of the
//! component's core module. The component's real imports and exports,
//! which the manifest's word is checked against, are read here too
//! ([`interface_names`]).

use std::collections::BTreeMap;

use serde::Deserialize;

use crate::capability::{Capability, CapabilitySet};

/// Name of the custom section holding the manifest.
pub const SECTION: &str = "testflinger:connector-manifest";

/// Why a manifest could not be read.
#[derive(Debug, thiserror::Error)]
pub enum ManifestError {
    #[error(
        "the component has no `{SECTION}` section: it was not built with the testflinger-connector SDK's export_connector! macro, so the runtime cannot tell what it needs; rebuild it with the SDK"
    )]
    Missing,
    #[error("the component has more than one `{SECTION}` section")]
    Duplicate,
    #[error("the component is not a valid WebAssembly component: {0}")]
    NotWasm(String),
    #[error("the connector manifest is not valid: {0}")]
    Invalid(String),
}

/// A parsed connector manifest.
#[derive(Debug, Clone, Deserialize, PartialEq)]
#[serde(deny_unknown_fields)]
pub struct Manifest {
    /// Connector name.
    pub name: String,
    /// Connector version (the crate version).
    pub version: String,
    /// WIT package version the connector was built against.
    pub wit: String,
    /// SDK version that wrote the manifest.
    #[serde(default)]
    pub sdk: Option<String>,
    /// One-line description.
    #[serde(default)]
    pub description: Option<String>,
    /// Provision types this connector serves.
    pub provision_types: Vec<String>,
    /// Capability names per family (`ssh = ["device"]` ...).
    #[serde(default)]
    pub capabilities: BTreeMap<String, Vec<String>>,
    /// Device-config keys behind declared capabilities that the connector
    /// works without (muxpi skips the power cycle without `reboot_script`):
    /// `check` reports them as optional rather than missing.
    #[serde(default)]
    pub optional_config: Vec<String>,
    /// Schemas of the stage data keys the connector reads
    /// (`provision_data` ...).
    #[serde(default)]
    pub stage_data: BTreeMap<String, toml::Value>,
}

impl Manifest {
    /// Parses manifest text.
    pub fn parse(text: &str) -> Result<Self, ManifestError> {
        let manifest: Manifest =
            toml::from_str(text).map_err(|e| ManifestError::Invalid(e.to_string()))?;
        manifest.validate()?;
        Ok(manifest)
    }

    fn validate(&self) -> Result<(), ManifestError> {
        let word = |s: &str| {
            !s.is_empty()
                && s.len() <= 64
                && s.chars()
                    .all(|c| c.is_ascii_alphanumeric() || "-_.".contains(c))
        };
        if !word(&self.name) {
            return Err(ManifestError::Invalid(format!(
                "bad connector name `{}`",
                self.name
            )));
        }
        if self.provision_types.is_empty() {
            return Err(ManifestError::Invalid("provision_types is empty".into()));
        }
        for t in &self.provision_types {
            if !word(t) {
                return Err(ManifestError::Invalid(format!("bad provision type `{t}`")));
            }
        }
        for (family, names) in &self.capabilities {
            if capability_from_key(family).is_none() {
                return Err(ManifestError::Invalid(format!(
                    "unknown capability family `{family}` (known: power, serial, ssh, http, transfer)"
                )));
            }
            for n in names {
                if !word(n) {
                    return Err(ManifestError::Invalid(format!(
                        "bad capability name `{family}: {n}`"
                    )));
                }
            }
        }
        Ok(())
    }

    /// The declared capabilities as a set.
    pub fn declared(&self) -> CapabilitySet {
        let mut out = CapabilitySet::new();
        for (family, names) in &self.capabilities {
            if let Some(cap) = capability_from_key(family) {
                out.entry(cap).or_default().extend(names.iter().cloned());
            }
        }
        out
    }
}

/// Maps a manifest/grant family key to a capability.
pub fn capability_from_key(key: &str) -> Option<Capability> {
    Some(match key {
        "power" => Capability::Power,
        "serial" => Capability::Serial,
        "ssh" => Capability::Ssh,
        "http" => Capability::Http,
        "transfer" => Capability::Transfer,
        _ => return None,
    })
}

/// Reads the manifest section out of component bytes (it lives in one of
/// the component's nested core modules).
pub fn read(component: &[u8]) -> Result<Manifest, ManifestError> {
    let mut found: Option<Vec<u8>> = None;
    for payload in wasmparser::Parser::new(0).parse_all(component) {
        let payload = payload.map_err(|e| ManifestError::NotWasm(e.to_string()))?;
        if let wasmparser::Payload::CustomSection(section) = payload
            && section.name() == SECTION
        {
            if found.is_some() {
                return Err(ManifestError::Duplicate);
            }
            found = Some(section.data().to_vec());
        }
    }
    let bytes = found.ok_or(ManifestError::Missing)?;
    let text = String::from_utf8(bytes).map_err(|_| ManifestError::Invalid("not UTF-8".into()))?;
    Manifest::parse(&text)
}

/// Names of the component's top-level imports and exports (interfaces
/// such as `testflinger:connector/ssh@0.2.0`).
pub fn interface_names(component: &[u8]) -> Result<(Vec<String>, Vec<String>), ManifestError> {
    let mut imports = Vec::new();
    let mut exports = Vec::new();
    let mut depth = 0usize;
    let bad = |e: wasmparser::BinaryReaderError| ManifestError::NotWasm(e.to_string());
    for payload in wasmparser::Parser::new(0).parse_all(component) {
        match payload.map_err(bad)? {
            wasmparser::Payload::ModuleSection { .. }
            | wasmparser::Payload::ComponentSection { .. } => depth += 1,
            wasmparser::Payload::End(_) => depth = depth.saturating_sub(1),
            wasmparser::Payload::ComponentImportSection(reader) if depth == 0 => {
                for import in reader {
                    imports.push(import.map_err(bad)?.name.name.to_string());
                }
            }
            wasmparser::Payload::ComponentExportSection(reader) if depth == 0 => {
                for export in reader {
                    exports.push(export.map_err(bad)?.name.name.to_string());
                }
            }
            _ => {}
        }
    }
    Ok((imports, exports))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_and_validates() {
        let m = Manifest::parse(
            "name = \"noprovision\"\nversion = \"0.1.0\"\nwit = \"0.1.0\"\nprovision_types = [\"noprovision\",]\n[capabilities]\nssh = [\"device\",]\npower = [\"reboot_script\"]\n",
        )
        .unwrap();
        assert_eq!(
            m.declared()[&Capability::Ssh].iter().next().unwrap(),
            "device"
        );
        for bad in [
            "name = \"x\"\nversion = \"1\"\nwit = \"0.1.0\"\nprovision_types = []\n",
            "name = \"x y\"\nversion = \"1\"\nwit = \"0.1.0\"\nprovision_types = [\"a\"]\n",
            "name = \"x\"\nversion = \"1\"\nwit = \"0.1.0\"\nprovision_types = [\"a\"]\n[capabilities]\nfs = [\"/\"]\n",
            "name = \"x\"\nversion = \"1\"\nwit = \"0.1.0\"\nprovision_types = [\"a\"]\nunknown = 1\n",
            "not toml",
        ] {
            assert!(Manifest::parse(bad).is_err(), "{bad}");
        }
    }

    #[test]
    fn non_wasm_and_missing_section() {
        assert!(matches!(read(b"nope"), Err(ManifestError::NotWasm(_))));
        // An empty core module: valid wasm, no manifest.
        let empty = [0u8, 0x61, 0x73, 0x6d, 1, 0, 0, 0];
        assert!(matches!(read(&empty), Err(ManifestError::Missing)));
    }
}
