//! The lab file: which connector code runs for each provision type on
//! this agent host, pinned by digest, with what it is granted.
//!
//! ```yaml
//! version: 1
//! store: ./store                 # content-addressed component store (default: next to this file)
//! audit_log: /var/log/tfdc-audit.jsonl   # optional JSON-lines audit trail
//! allow_embedded: true           # unlisted types fall back to the embedded connectors
//! limits: {memory: 256MiB}       # defaults for every connector
//! endpoints:                     # named HTTP endpoints: `http: [mirror]`
//!   mirror: http://mirror.lab:8080/ubuntu
//! connectors:
//!   muxpi:
//!     name: muxpi
//!     version: 0.1.0
//!     source: https://connectors.example/muxpi-0.1.0.wasm   # or file:<path>, or embedded
//!     sha256: sha256:6a1e...
//!     wit: 0.1.0
//!     grants:
//!       ssh: [device, control-host]
//!       power: [reboot_script]
//!       http: [control-host, job-urls]
//!       urls: ["https://images.example:443"]  # optional: narrows job-urls
//!     limits: {stage_timeout: 2h}
//!     previous: {...}              # the pin before the last update (rollback)
//! ```
//!
//! Located, in order: `--lab FILE`, `$TFDC_LAB_FILE`, the device config's
//! `connector_runtime.lab_file`, then [`DEFAULT_PATH`] if it exists.

use std::collections::{BTreeMap, BTreeSet};
use std::path::{Path, PathBuf};

use serde::{Deserialize, Serialize};

pub use crate::capability::UrlPattern;
use crate::capability::{Capability, CapabilitySet};
use crate::endpoints::{self, Endpoints};
use crate::manifest::capability_from_key;

/// The system-wide default location.
pub const DEFAULT_PATH: &str = "/etc/testflinger-device-connectors/lab.yaml";
/// Environment variable naming the lab file.
pub const ENV_VAR: &str = "TFDC_LAB_FILE";
/// The only schema version so far.
pub const VERSION: u32 = 1;

/// Why the lab file could not be used.
#[derive(Debug, thiserror::Error)]
pub enum LabError {
    #[error("cannot read lab file {path}: {source}")]
    Read {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("lab file {path} is not valid: {message}")]
    Invalid { path: PathBuf, message: String },
    #[error("lab file {path}, connectors.{provision_type} (line {line}): {message}")]
    Entry {
        path: PathBuf,
        provision_type: String,
        line: usize,
        message: String,
    },
    #[error("cannot write lab file {path}: {message}")]
    Write { path: PathBuf, message: String },
}

/// Grants: capability family → names, plus `urls` patterns narrowing
/// `job-urls`.
pub type Grants = BTreeMap<String, Vec<String>>;

/// One pinned connector.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
#[serde(deny_unknown_fields)]
pub struct Pin {
    /// Connector name (from its manifest).
    pub name: String,
    /// Connector version (from its manifest).
    pub version: String,
    /// `file:<path>` (relative to the lab file), `https://...`, `http://...`
    /// or `embedded`.
    pub source: String,
    /// `sha256:<64 hex>` of the component bytes.
    pub sha256: String,
    /// WIT API version the component was built against.
    pub wit: String,
    /// What the lab grants it. Absent or empty: nothing.
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub grants: Grants,
    /// Limits for this connector (override the lab-wide ones).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub limits: Option<serde_json::Value>,
    /// The pin before the last update, for rollback.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub previous: Option<Box<Pin>>,
}

/// The lab file.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
#[serde(deny_unknown_fields)]
pub struct LabFile {
    pub version: u32,
    /// Content-addressed store of downloaded components.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub store: Option<PathBuf>,
    /// JSON-lines audit trail.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub audit_log: Option<PathBuf>,
    /// Whether provision types not listed fall back to the embedded
    /// connectors (default true).
    #[serde(default = "yes", skip_serializing_if = "is_true")]
    pub allow_embedded: bool,
    /// Limits for every connector.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub limits: Option<serde_json::Value>,
    /// Named HTTP endpoints (name → base URL) connectors reach with
    /// `http.call`, each granted as `http: [<name>]` (see
    /// [`crate::endpoints`]).
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub endpoints: Endpoints,
    /// Provision type → pinned connector.
    #[serde(default)]
    pub connectors: BTreeMap<String, Pin>,
}

fn yes() -> bool {
    true
}

fn is_true(b: &bool) -> bool {
    *b
}

impl Default for LabFile {
    fn default() -> Self {
        LabFile {
            version: VERSION,
            store: None,
            audit_log: None,
            allow_embedded: true,
            limits: None,
            endpoints: Endpoints::new(),
            connectors: BTreeMap::new(),
        }
    }
}

/// A lab file read from disk.
#[derive(Debug, Clone)]
pub struct LoadedLab {
    pub path: PathBuf,
    pub file: LabFile,
    text: String,
}

impl LoadedLab {
    /// Reads and validates `path`.
    pub fn load(path: &Path) -> Result<Self, LabError> {
        let text = std::fs::read_to_string(path).map_err(|source| LabError::Read {
            path: path.to_path_buf(),
            source,
        })?;
        Self::parse(path, &text)
    }

    /// Parses and validates lab file text.
    pub fn parse(path: &Path, text: &str) -> Result<Self, LabError> {
        let invalid = |message: String| LabError::Invalid {
            path: path.to_path_buf(),
            message,
        };
        let file: LabFile = serde_norway::from_str(text).map_err(|e| invalid(e.to_string()))?;
        if file.version != VERSION {
            return Err(invalid(format!(
                "version {} is not supported by this runtime (it reads version {VERSION})",
                file.version
            )));
        }
        let lab = LoadedLab {
            path: path.to_path_buf(),
            file,
            text: text.to_string(),
        };
        for (t, pin) in &lab.file.connectors {
            validate_pin(pin).map_err(|message| lab.entry_error(t, message))?;
        }
        if let Some(limits) = &lab.file.limits {
            check_limits(limits).map_err(|m| invalid(format!("limits: {m}")))?;
        }
        endpoints::check_all(&lab.file.endpoints)
            .map_err(|m| invalid(format!("endpoints: {m}")))?;
        Ok(lab)
    }

    /// An empty lab file that will be written at `path`.
    pub fn new_at(path: &Path) -> Self {
        LoadedLab {
            path: path.to_path_buf(),
            file: LabFile::default(),
            text: String::new(),
        }
    }

    /// 1-based line of `connectors.<provision_type>` (0 if unknown).
    pub fn line_of(&self, provision_type: &str) -> usize {
        let mut in_connectors = false;
        for (i, line) in self.text.lines().enumerate() {
            if line.starts_with("connectors:") {
                in_connectors = true;
                continue;
            }
            if in_connectors {
                if !line.starts_with(' ') && !line.trim().is_empty() && !line.starts_with('#') {
                    in_connectors = false;
                    continue;
                }
                let trimmed = line.trim_start();
                let key = trimmed
                    .split(':')
                    .next()
                    .unwrap_or("")
                    .trim_matches(|c| c == '"' || c == '\'');
                if line.len() - trimmed.len() > 0 && key == provision_type && trimmed.contains(':')
                {
                    return i + 1;
                }
            }
        }
        0
    }

    /// An error about one entry, naming the file and line.
    pub fn entry_error(&self, provision_type: &str, message: impl Into<String>) -> LabError {
        LabError::Entry {
            path: self.path.clone(),
            provision_type: provision_type.to_string(),
            line: self.line_of(provision_type),
            message: message.into(),
        }
    }

    /// The content-addressed store folder.
    pub fn store_dir(&self) -> PathBuf {
        let base = self.path.parent().unwrap_or(Path::new("."));
        match &self.file.store {
            Some(p) => base.join(p),
            None => base.join("store"),
        }
    }

    /// Resolves a `file:` source path relative to the lab file.
    pub fn file_source(&self, source: &str) -> Option<PathBuf> {
        let rest = source.strip_prefix("file:")?;
        let rest = rest.strip_prefix("//").unwrap_or(rest);
        let base = self.path.parent().unwrap_or(Path::new("."));
        Some(base.join(rest))
    }

    /// Writes the file atomically, holding an exclusive lock so that two
    /// operators (or an operator and a running job reading it) never see a
    /// half-written file. Comments are not preserved.
    pub fn save(&mut self) -> Result<(), LabError> {
        let werr = |message: String| LabError::Write {
            path: self.path.clone(),
            message,
        };
        let mut text = String::from(
            "# Testflinger device connectors lab file (see the README, \"Pinning connectors\").\n# Written by `testflinger-device-connectors lab`; comments are not kept.\n",
        );
        text.push_str(&serde_norway::to_string(&self.file).map_err(|e| werr(e.to_string()))?);
        if let Some(parent) = self.path.parent().filter(|p| !p.as_os_str().is_empty()) {
            std::fs::create_dir_all(parent).map_err(|e| werr(e.to_string()))?;
        }
        let lock_path = self.path.with_extension("lock");
        let lock = std::fs::OpenOptions::new()
            .create(true)
            .truncate(false)
            .write(true)
            .open(&lock_path)
            .map_err(|e| werr(format!("cannot open {}: {e}", lock_path.display())))?;
        lock.lock().map_err(|e| werr(e.to_string()))?;
        crate::rundir::write_durable(&self.path, text.as_bytes())
            .map_err(|e| werr(e.to_string()))?;
        self.text = text;
        Ok(())
    }
}

/// Checks the shape of a pin; the message names what to fix.
pub fn validate_pin(pin: &Pin) -> Result<(), String> {
    if !is_digest(&pin.sha256) {
        return Err(format!(
            "sha256 `{}` must be `sha256:` followed by 64 lowercase hex digits",
            pin.sha256
        ));
    }
    let s = &pin.source;
    if !(s == "embedded"
        || s.starts_with("file:")
        || s.starts_with("https://")
        || s.starts_with("http://"))
    {
        return Err(format!(
            "source `{s}` must be `file:<path>`, `https://...` or `embedded`"
        ));
    }
    parse_grants(&pin.grants)?;
    if let Some(limits) = &pin.limits {
        check_limits(limits).map_err(|m| format!("limits: {m}"))?;
    }
    if let Some(prev) = &pin.previous {
        validate_pin(prev).map_err(|m| format!("previous: {m}"))?;
    }
    Ok(())
}

/// Whether `s` is `sha256:` + 64 lowercase hex digits.
pub fn is_digest(s: &str) -> bool {
    s.strip_prefix("sha256:").is_some_and(|h| {
        h.len() == 64
            && h.bytes()
                .all(|b| b.is_ascii_digit() || (b'a'..=b'f').contains(&b))
    })
}

fn check_limits(value: &serde_json::Value) -> Result<(), String> {
    serde_json::from_value::<crate::limits::Limits>(value.clone())
        .map(|_| ())
        .map_err(|e| e.to_string())
}

/// Parsed grants: capability names per family, and URL patterns.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct ParsedGrants {
    pub caps: CapabilitySet,
    pub urls: Vec<UrlPattern>,
}

/// Validates grants and splits them into capabilities and URL patterns.
pub fn parse_grants(grants: &Grants) -> Result<ParsedGrants, String> {
    let mut out = ParsedGrants::default();
    for (family, names) in grants {
        if family == "urls" {
            for n in names {
                out.urls.push(UrlPattern::parse(n)?);
            }
            continue;
        }
        let cap = capability_from_key(family).ok_or_else(|| {
            format!(
                "unknown grant family `{family}` (known: power, serial, ssh, http, transfer, urls)"
            )
        })?;
        let set: &mut BTreeSet<String> = out.caps.entry(cap).or_default();
        for n in names {
            if n == "*" {
                return Err(format!(
                    "`{family}: [\"*\"]` is not allowed: grant the names the connector declares (see `testflinger-device-connectors inspect`)"
                ));
            }
            if n.is_empty()
                || n.len() > 64
                || !n
                    .chars()
                    .all(|c| c.is_ascii_alphanumeric() || "-_.".contains(c))
            {
                return Err(format!(
                    "bad {family} grant `{n}`: names are letters, digits, `-`, `_` and `.`"
                ));
            }
            set.insert(n.clone());
        }
    }
    Ok(out)
}

/// Turns a capability set back into grants (for proposals).
pub fn grants_from(caps: &CapabilitySet) -> Grants {
    caps.iter()
        .filter(|(_, names)| !names.is_empty())
        .map(|(cap, names)| (cap.key().to_string(), names.iter().cloned().collect()))
        .collect()
}

/// Finds the lab file: `flag`, `$TFDC_LAB_FILE`, the device config key,
/// then the default path. `Ok(None)` when none is named and the default
/// does not exist; a named file that is missing is an error.
pub fn locate(
    flag: Option<&Path>,
    config_key: Option<&Path>,
) -> Result<Option<LoadedLab>, LabError> {
    let env = std::env::var_os(ENV_VAR)
        .filter(|v| !v.is_empty())
        .map(PathBuf::from);
    if let Some(path) = flag
        .map(Path::to_path_buf)
        .or(env)
        .or(config_key.map(Path::to_path_buf))
    {
        return LoadedLab::load(&path).map(Some);
    }
    let default = Path::new(DEFAULT_PATH);
    if default.exists() {
        return LoadedLab::load(default).map(Some);
    }
    Ok(None)
}

/// The path lab commands write to when no lab file exists yet.
pub fn command_path(flag: Option<&Path>) -> PathBuf {
    flag.map(Path::to_path_buf)
        .or_else(|| {
            std::env::var_os(ENV_VAR)
                .filter(|v| !v.is_empty())
                .map(PathBuf::from)
        })
        .unwrap_or_else(|| PathBuf::from(DEFAULT_PATH))
}

/// Merges limit overrides (later wins) over the defaults.
pub fn merge_limits(
    layers: &[Option<&serde_json::Value>],
) -> Result<crate::limits::Limits, String> {
    let mut merged = serde_json::Map::new();
    for layer in layers.iter().flatten() {
        if let serde_json::Value::Object(map) = layer {
            for (k, v) in map {
                merged.insert(k.clone(), v.clone());
            }
        }
    }
    serde_json::from_value(serde_json::Value::Object(merged)).map_err(|e| e.to_string())
}

/// The capabilities `caps` has that `base` lacks.
pub fn extra_caps(caps: &CapabilitySet, base: &CapabilitySet) -> Vec<(Capability, String)> {
    let mut out = Vec::new();
    for (cap, names) in caps {
        for n in names {
            if !base.get(cap).is_some_and(|b| b.contains(n)) {
                out.push((*cap, n.clone()));
            }
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    const DIGEST: &str = "sha256:0123456789abcdef0123456789abcdef0123456789abcdef0123456789abcdef";

    fn lab(text: &str) -> Result<LoadedLab, LabError> {
        LoadedLab::parse(Path::new("/lab/lab.yaml"), text)
    }

    #[test]
    fn parses_and_points_at_lines() {
        let text = format!(
            "version: 1\nconnectors:\n  noprovision:\n    name: noprovision\n    version: 0.1.0\n    source: file:np.wasm\n    sha256: {DIGEST}\n    wit: 0.1.0\n    grants:\n      ssh: [device]\n      urls: ['https://img.lab:443']\n"
        );
        let l = lab(&text).unwrap();
        assert_eq!(l.line_of("noprovision"), 3);
        assert_eq!(l.store_dir(), Path::new("/lab/store"));
        assert_eq!(
            l.file_source("file:np.wasm").unwrap(),
            Path::new("/lab/np.wasm")
        );
        assert!(l.file.endpoints.is_empty());
        let g = parse_grants(&l.file.connectors["noprovision"].grants).unwrap();
        assert!(g.caps[&Capability::Ssh].contains("device"));
        assert_eq!(g.urls.len(), 1);
    }

    #[test]
    fn bad_files_are_explained() {
        let base = format!(
            "version: 1\nconnectors:\n  x:\n    name: x\n    version: 1\n    source: file:x\n    sha256: {DIGEST}\n    wit: 0.1.0\n"
        );
        for (text, needle) in [
            ("version: 2\n".to_string(), "version 2"),
            (base.replace(DIGEST, "sha256:abc"), "64 lowercase hex"),
            (base.replace("file:x", "ftp://x"), "must be `file:"),
            (format!("{base}    grants: {{ssh: ['*']}}\n"), "not allowed"),
            (
                format!("{base}    grants: {{fs: [a]}}\n"),
                "unknown grant family",
            ),
            (
                format!("{base}    grants: {{urls: ['https://*:443']}}\n"),
                "wildcards",
            ),
            (
                format!("{base}    grants: {{urls: ['https://img']}}\n"),
                "port",
            ),
            (format!("{base}    limits: {{memory: lots}}\n"), "limits"),
            (
                format!("endpoints: {{control-host: 'http://x/'}}\n{base}"),
                "endpoints: `control-host` is reserved",
            ),
            (
                format!("endpoints: {{mirror: 'mirror.lab'}}\n{base}"),
                "endpoint `mirror`",
            ),
            (format!("{base}    surprise: 1\n"), "surprise"),
        ] {
            let err = lab(&text).unwrap_err().to_string();
            assert!(err.contains(needle), "{needle}: {err}");
        }
        let err = lab(&base.replace(DIGEST, "sha256:abc"))
            .unwrap_err()
            .to_string();
        assert!(err.contains("connectors.x (line 3)"), "{err}");
    }

    #[test]
    fn endpoints_are_read() {
        let l = lab(
            "version: 1\nendpoints:\n  mirror: http://mirror.lab:8080/ubuntu\nconnectors: {}\n",
        )
        .unwrap();
        assert_eq!(l.file.endpoints["mirror"], "http://mirror.lab:8080/ubuntu");
    }

    #[test]
    fn limits_merge_in_order() {
        let a = serde_json::json!({"memory": "64MiB", "max_ssh_sessions": 3});
        let b = serde_json::json!({"max_ssh_sessions": 5});
        let l = merge_limits(&[Some(&a), None, Some(&b)]).unwrap();
        assert_eq!(l.memory_bytes, 64 << 20);
        assert_eq!(l.max_ssh_sessions, 5);
    }
}
