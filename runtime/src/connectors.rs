//! Which component serves a provision type: a component named with
//! `--connector`, the lab file's pin, or the first-party connector embedded
//! in this binary — in that order. Every component from outside the binary
//! is hashed and checked against its pinned digest before it is compiled.

use std::borrow::Cow;
use std::path::{Path, PathBuf};

use crate::lab::{LoadedLab, ParsedGrants, Pin};
use crate::store::{Store, StoreError};

include!(concat!(env!("OUT_DIR"), "/embedded.rs"));

/// A connector compiled into the binary.
#[derive(Debug)]
pub struct Embedded {
    /// Connector (crate) name.
    pub name: &'static str,
    /// Connector (crate) version.
    pub version: &'static str,
    /// Provision types it serves.
    pub provision_types: &'static [&'static str],
    /// `sha256:<hex>` of `bytes`, computed at build time.
    pub digest: &'static str,
    /// The component.
    pub bytes: &'static [u8],
}

/// The 16 provision types of the reference command line, in its order.
pub const REFERENCE_TYPES: [&str; 16] = [
    "cm3",
    "dell_oemscript",
    "dragonboard",
    "fake_connector",
    "hp_oemscript",
    "lenovo_oemscript",
    "oem_autoinstall",
    "maas2",
    "multi",
    "muxpi",
    "netboot",
    "noprovision",
    "oemrecovery",
    "oemscript",
    "control_host_iot",
    "control_host_kvm",
];

/// Where a component came from.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Origin {
    /// Built into this binary.
    Embedded,
    /// Pinned in a lab file.
    Lab {
        /// The lab file.
        path: PathBuf,
        /// Line of the pin.
        line: usize,
        /// The pin's source.
        source: String,
    },
    /// A file named with `--connector`.
    File(PathBuf),
}

impl std::fmt::Display for Origin {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Origin::Embedded => f.write_str("embedded"),
            Origin::Lab { path, line, source } => {
                write!(f, "lab file {}:{line} ({source})", path.display())
            }
            Origin::File(p) => write!(f, "file {}", p.display()),
        }
    }
}

/// A component ready to load, with what the lab grants it.
#[derive(Debug, Clone)]
pub struct Resolved {
    pub bytes: Cow<'static, [u8]>,
    pub digest: String,
    pub origin: Origin,
    /// The lab's grants; `None` means the connector's published defaults
    /// (what its manifest declares) for an embedded or `--connector` one.
    pub grants: Option<ParsedGrants>,
    /// The pin, when the lab file chose the component.
    pub pin: Option<Pin>,
}

/// Why no component could be used.
#[derive(Debug, thiserror::Error)]
pub enum ResolveError {
    #[error(
        "provision type `{0}` has no connector in this runtime: none is embedded for it; pin one in the lab file (`testflinger-device-connectors lab add {0} <component>`) or pass --connector <component.wasm>"
    )]
    NotAvailable(String),
    #[error(
        "provision type `{provision_type}` is not pinned in lab file {lab} and the lab file sets `allow_embedded: false`"
    )]
    NotPinned {
        provision_type: String,
        lab: PathBuf,
    },
    #[error("cannot read connector component {path}: {source}")]
    Read {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("lab file {lab}:{line} (connectors.{provision_type}): {message}")]
    Pin {
        lab: PathBuf,
        line: usize,
        provision_type: String,
        message: String,
    },
}

/// Every provision type this binary accepts on the command line: the
/// reference's, any other an embedded connector serves, and those the lab
/// file pins.
pub fn known_types(lab: Option<&LoadedLab>) -> Vec<String> {
    let mut out: Vec<String> = REFERENCE_TYPES.iter().map(|s| s.to_string()).collect();
    let extra = EMBEDDED
        .iter()
        .flat_map(|e| e.provision_types.iter().map(|s| s.to_string()))
        .chain(
            lab.into_iter()
                .flat_map(|l| l.file.connectors.keys().cloned()),
        );
    for t in extra {
        if !out.contains(&t) {
            out.push(t);
        }
    }
    out
}

/// The embedded connector serving `provision_type`, if any.
pub fn embedded_for(provision_type: &str) -> Option<&'static Embedded> {
    EMBEDDED
        .iter()
        .find(|e| e.provision_types.contains(&provision_type))
}

/// The embedded connector named `name`, if any.
pub fn embedded_named(name: &str) -> Option<&'static Embedded> {
    EMBEDDED.iter().find(|e| e.name == name)
}

/// Finds the component for `provision_type`.
pub async fn resolve(
    provision_type: &str,
    override_path: Option<&Path>,
    lab: Option<&LoadedLab>,
    client: impl Fn() -> Result<reqwest::Client, String>,
) -> Result<Resolved, ResolveError> {
    if let Some(path) = override_path {
        let bytes = std::fs::read(path).map_err(|source| ResolveError::Read {
            path: path.to_path_buf(),
            source,
        })?;
        let digest = crate::engine::digest(&bytes);
        return Ok(Resolved {
            bytes: Cow::Owned(bytes),
            digest,
            origin: Origin::File(path.to_path_buf()),
            grants: None,
            pin: None,
        });
    }
    if let Some(lab) = lab {
        if let Some(pin) = lab.file.connectors.get(provision_type) {
            return resolve_pin(provision_type, pin, lab, client).await;
        }
        if !lab.file.allow_embedded {
            return Err(ResolveError::NotPinned {
                provision_type: provision_type.into(),
                lab: lab.path.clone(),
            });
        }
    }
    let e = embedded_for(provision_type)
        .ok_or_else(|| ResolveError::NotAvailable(provision_type.into()))?;
    Ok(Resolved {
        bytes: Cow::Borrowed(e.bytes),
        digest: e.digest.to_string(),
        origin: Origin::Embedded,
        grants: None,
        pin: None,
    })
}

async fn resolve_pin(
    provision_type: &str,
    pin: &Pin,
    lab: &LoadedLab,
    client: impl Fn() -> Result<reqwest::Client, String>,
) -> Result<Resolved, ResolveError> {
    let line = lab.line_of(provision_type);
    let err = |message: String| ResolveError::Pin {
        lab: lab.path.clone(),
        line,
        provision_type: provision_type.into(),
        message,
    };
    let store_err = |e: StoreError| err(e.to_string());
    let bytes: Cow<'static, [u8]> = if pin.source == "embedded" {
        let e = embedded_named(&pin.name).ok_or_else(|| {
            err(format!(
                "no connector named `{}` is embedded in this runtime",
                pin.name
            ))
        })?;
        if e.digest != pin.sha256 {
            return Err(err(format!(
                "expected {}, got {}: the embedded {} changed with this runtime version; re-pin it with `testflinger-device-connectors lab update {provision_type} embedded`",
                pin.sha256, e.digest, pin.name
            )));
        }
        Cow::Borrowed(e.bytes)
    } else if let Some(path) = lab.file_source(&pin.source) {
        let bytes = std::fs::read(&path)
            .map_err(|e| err(format!("cannot read {}: {e}", path.display())))?;
        crate::store::verify(&bytes, &pin.sha256, &path.display().to_string())
            .map_err(store_err)?;
        Cow::Owned(bytes)
    } else {
        let store = Store::new(lab.store_dir());
        match store.read(&pin.sha256).map_err(store_err)? {
            Some(bytes) => Cow::Owned(bytes),
            None => {
                let client = client().map_err(|e| err(format!("cannot set up HTTP: {e}")))?;
                store
                    .download(&client, &pin.source, Some(&pin.sha256))
                    .await
                    .map_err(store_err)?;
                let bytes = store
                    .read(&pin.sha256)
                    .map_err(store_err)?
                    .ok_or_else(|| err("the download vanished from the store".into()))?;
                Cow::Owned(bytes)
            }
        }
    };
    let grants = crate::lab::parse_grants(&pin.grants).map_err(err)?;
    Ok(Resolved {
        bytes,
        digest: pin.sha256.clone(),
        origin: Origin::Lab {
            path: lab.path.clone(),
            line,
            source: pin.source.clone(),
        },
        grants: Some(grants),
        pin: Some(pin.clone()),
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::capability::WASI_PREFIXES;

    /// The first-party connectors import nothing but our interfaces and
    /// deny-by-default WASI.
    #[test]
    fn embedded_connectors_import_only_known_interfaces() {
        for e in EMBEDDED {
            let (imports, _) = crate::manifest::interface_names(e.bytes).unwrap();
            for import in imports {
                let ours = import.starts_with("testflinger:connector/");
                let wasi = WASI_PREFIXES.iter().any(|p| import.starts_with(p));
                assert!(ours || wasi, "{} imports {import}", e.name);
            }
        }
    }
}
