//! Which component serves a provision type: the first-party connectors
//! embedded in this binary, or a component named on the command line.

use std::borrow::Cow;
use std::path::{Path, PathBuf};

include!(concat!(env!("OUT_DIR"), "/embedded.rs"));

/// A connector compiled into the binary.
#[derive(Debug)]
pub struct Embedded {
    /// Connector (crate) name.
    pub name: &'static str,
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
    /// A file named with `--connector`.
    File(PathBuf),
}

impl std::fmt::Display for Origin {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Origin::Embedded => f.write_str("embedded"),
            Origin::File(p) => write!(f, "file {}", p.display()),
        }
    }
}

/// A component ready to load.
#[derive(Debug, Clone)]
pub struct Resolved {
    pub bytes: Cow<'static, [u8]>,
    pub digest: String,
    pub origin: Origin,
}

/// Why no component could be found.
#[derive(Debug, thiserror::Error)]
pub enum ResolveError {
    #[error(
        "provision type `{0}` has no connector in this runtime: none is embedded for it; pin one in the lab file or pass --connector <component.wasm>"
    )]
    NotAvailable(String),
    #[error("cannot read connector component {path}: {source}")]
    Read {
        path: PathBuf,
        source: std::io::Error,
    },
}

/// Every provision type this binary accepts on the command line: the
/// reference's, plus any other an embedded connector serves.
pub fn known_types() -> Vec<&'static str> {
    let mut out: Vec<&'static str> = REFERENCE_TYPES.to_vec();
    for e in EMBEDDED {
        for t in e.provision_types {
            if !out.contains(t) {
                out.push(t);
            }
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

/// Finds the component for `provision_type`; `override_path` (from
/// `--connector`) wins over everything.
pub fn resolve(
    provision_type: &str,
    override_path: Option<&Path>,
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
        });
    }
    let e = embedded_for(provision_type)
        .ok_or_else(|| ResolveError::NotAvailable(provision_type.into()))?;
    Ok(Resolved {
        bytes: Cow::Borrowed(e.bytes),
        digest: e.digest.to_string(),
        origin: Origin::Embedded,
    })
}
