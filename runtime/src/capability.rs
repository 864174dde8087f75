//! The capability gate: the one place that decides whether a connector may
//! use a capability, and the audit trail of what it did.
//!
//! A call is allowed when the name is **declared** by the connector's
//! manifest **and granted** by the lab (the lab file's grants; without a lab
//! pin, an embedded connector's published defaults, i.e. what it declares).
//! Whether the device config **configures** the name is checked by the
//! service that resolves it (an unconfigured SSH target is `not-found`,
//! naming the config key). Every host function calls [`Gate::check`] before
//! anything else, and records its outcome with [`Gate::audit`].

use std::collections::{BTreeMap, BTreeSet};
use std::io::Write;
use std::path::Path;
use std::sync::Mutex;
use std::time::{Duration, Instant};

use crate::host::HostError;
use crate::lab::UrlPattern;

/// The capability families of the WIT world that reach the outside world.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum Capability {
    /// `power`: a device-config command list, by key.
    Power,
    /// `serial`: a console, by name.
    Serial,
    /// `ssh`: a target, by name.
    Ssh,
    /// `http`: an endpoint, by name, or `job-urls`.
    Http,
    /// `transfer`: `job-urls` or `attachments`.
    Transfer,
}

impl Capability {
    /// The manifest/grant key.
    pub fn key(self) -> &'static str {
        match self {
            Capability::Power => "power",
            Capability::Serial => "serial",
            Capability::Ssh => "ssh",
            Capability::Http => "http",
            Capability::Transfer => "transfer",
        }
    }

    /// Every family.
    pub const ALL: [Capability; 5] = [
        Capability::Power,
        Capability::Serial,
        Capability::Ssh,
        Capability::Http,
        Capability::Transfer,
    ];
}

/// How a host function of the WIT world may touch the world outside the
/// sandbox. Every function is listed in [`HOST_FUNCTIONS`]; a test checks
/// the list against the WIT files, so a new function cannot be added
/// without saying how it is guarded.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Access {
    /// Reads or writes nothing outside the store (log lines, views of the
    /// job and config with secrets removed).
    Local,
    /// Reads or writes files of the run directory, through the one resolver
    /// that refuses escapes ([`crate::rundir`]).
    RunDir,
    /// Asks the gate for a capability name before doing anything.
    Gated(Capability),
    /// A method of a resource whose constructor was gated for that family.
    Handle(Capability),
}

/// Every function of the `connector` world's imports and its guard.
pub const HOST_FUNCTIONS: &[(&str, &str, Access)] = &[
    ("log", "log", Access::Local),
    ("log", "print", Access::Local),
    ("job", "current-stage", Access::Local),
    ("job", "job-json", Access::Local),
    ("job", "device-config-json", Access::Local),
    ("job", "attachments", Access::RunDir),
    ("job", "read-attachment", Access::RunDir),
    ("job", "set-device-info", Access::RunDir),
    ("job", "write-artifact", Access::RunDir),
    ("power", "run", Access::Gated(Capability::Power)),
    (
        "power",
        "cycle-control-host",
        Access::Gated(Capability::Power),
    ),
    ("serial", "open", Access::Gated(Capability::Serial)),
    (
        "serial",
        "[method]port.wait-for",
        Access::Handle(Capability::Serial),
    ),
    (
        "serial",
        "[method]port.write",
        Access::Handle(Capability::Serial),
    ),
    ("ssh", "connect", Access::Gated(Capability::Ssh)),
    ("ssh", "wait-reachable", Access::Gated(Capability::Ssh)),
    ("ssh", "authorize-key", Access::Gated(Capability::Ssh)),
    (
        "ssh",
        "[method]session.exec",
        Access::Handle(Capability::Ssh),
    ),
    (
        "ssh",
        "[method]session.upload",
        Access::Handle(Capability::Ssh),
    ),
    (
        "ssh",
        "[method]session.download",
        Access::Handle(Capability::Ssh),
    ),
    (
        "ssh",
        "[method]session.download-artifact",
        Access::Handle(Capability::Ssh),
    ),
    ("http", "call", Access::Gated(Capability::Http)),
    ("http", "fetch", Access::Gated(Capability::Http)),
    ("transfer", "to-ssh", Access::Gated(Capability::Transfer)),
    (
        "transfer",
        "to-artifact",
        Access::Gated(Capability::Transfer),
    ),
];

/// Interfaces a component may import besides `testflinger:connector/*`:
/// WASI 0.2, served by wasmtime-wasi with a context that denies files,
/// sockets, environment and arguments.
pub const WASI_PREFIXES: &[&str] = &[
    "wasi:io/",
    "wasi:cli/",
    "wasi:clocks/",
    "wasi:random/",
    "wasi:filesystem/",
    "wasi:sockets/",
];

/// Capability names per family.
pub type CapabilitySet = BTreeMap<Capability, BTreeSet<String>>;

/// Who is being checked, for messages and the audit trail.
#[derive(Debug, Clone, Default)]
pub struct Subject {
    pub connector: String,
    pub version: String,
    pub stage: String,
}

/// Decides whether a call is allowed and keeps the audit trail.
#[derive(Debug)]
pub struct Gate {
    subject: Subject,
    declared: CapabilitySet,
    granted: CapabilitySet,
    urls: Vec<UrlPattern>,
    /// Where the grants come from, for messages.
    grant_source: String,
    json: Option<Mutex<std::fs::File>>,
}

impl Gate {
    /// A gate for `subject` allowing `declared ∩ granted`; `urls`, when
    /// not empty, narrows which job-provided URLs may be used.
    pub fn new(
        subject: Subject,
        declared: CapabilitySet,
        granted: CapabilitySet,
        urls: Vec<UrlPattern>,
        grant_source: impl Into<String>,
    ) -> Self {
        Gate {
            subject,
            declared,
            granted,
            urls,
            grant_source: grant_source.into(),
            json: None,
        }
    }

    /// Also appends the audit trail as JSON lines to `path`.
    pub fn with_json_audit(mut self, path: &Path) -> std::io::Result<Self> {
        let file = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(path)?;
        self.json = Some(Mutex::new(file));
        Ok(self)
    }

    /// The connector being checked.
    pub fn subject(&self) -> &Subject {
        &self.subject
    }

    /// Checks `name` of `cap`; a denial is audited and names the missing
    /// declaration or grant.
    pub fn check(&self, cap: Capability, name: &str) -> Result<(), HostError> {
        let result = self.decide(cap, name);
        if let Err(e) = &result {
            self.audit(
                cap.key(),
                name,
                "denied",
                Duration::ZERO,
                Some(&e.to_string()),
            );
        }
        result
    }

    fn decide(&self, cap: Capability, name: &str) -> Result<(), HostError> {
        let Subject {
            connector, version, ..
        } = &self.subject;
        if !self.declared.get(&cap).is_some_and(|n| n.contains(name)) {
            return Err(HostError::denied(format!(
                "connector {connector} {version} did not declare capability {}: {name}; its author must add `{} = [\"{name}\"]` under [capabilities] in connector.toml",
                cap.key(),
                cap.key()
            )));
        }
        if !self.granted.get(&cap).is_some_and(|n| n.contains(name)) {
            return Err(HostError::denied(format!(
                "capability {}: {name} is not granted to connector {connector} {version}; to allow it, add `{name}` to `grants: {{{}: [...]}}` of this provision type in {}",
                cap.key(),
                cap.key(),
                self.grant_source
            )));
        }
        Ok(())
    }

    /// Checks a job-provided URL against the lab's URL patterns (after
    /// `check(…, "job-urls")`).
    pub fn check_url(&self, cap: Capability, url: &str) -> Result<(), HostError> {
        if self.urls.is_empty() {
            return Ok(());
        }
        let parsed = reqwest::Url::parse(url)
            .map_err(|e| HostError::invalid(format!("bad URL `{url}`: {e}")))?;
        if self.urls.iter().any(|p| p.matches(&parsed)) {
            return Ok(());
        }
        let port = parsed
            .port_or_known_default()
            .map(|p| p.to_string())
            .unwrap_or_default();
        let err = HostError::denied(format!(
            "URL {url} is not covered by the URL grants of connector {} ({}); to allow it, add `{}://{}:{port}` to `grants: {{urls: [...]}}` in {}",
            self.subject.connector,
            self.urls
                .iter()
                .map(ToString::to_string)
                .collect::<Vec<_>>()
                .join(", "),
            parsed.scheme(),
            parsed.host_str().unwrap_or(""),
            self.grant_source
        ));
        self.audit(
            cap.key(),
            url,
            "denied",
            Duration::ZERO,
            Some(&err.to_string()),
        );
        Err(err)
    }

    /// Starts timing an outward call for the audit trail.
    pub fn begin<'a>(&'a self, operation: &'a str, target: &'a str) -> AuditCall<'a> {
        AuditCall {
            gate: self,
            operation,
            target,
            start: Instant::now(),
        }
    }

    /// Records one audit line: on stderr (reference format with fields) and
    /// in the JSON-lines file if configured.
    pub fn audit(
        &self,
        operation: &str,
        target: &str,
        result: &str,
        duration: Duration,
        detail: Option<&str>,
    ) {
        let Subject {
            connector,
            version,
            stage,
        } = &self.subject;
        let ms = duration.as_millis();
        if result == "denied" {
            tracing::warn!(target: "tfdc::audit", connector = %connector, version = %version, stage = %stage, capability = %operation, target = %quote(target), result = %result, duration_ms = ms, "audit");
        } else {
            tracing::info!(target: "tfdc::audit", connector = %connector, version = %version, stage = %stage, capability = %operation, target = %quote(target), result = %result, duration_ms = ms, "audit");
        }
        if let Some(file) = &self.json {
            let line = serde_json::json!({
                "time": chrono::Local::now().to_rfc3339(),
                "connector": connector,
                "version": version,
                "stage": stage,
                "capability": operation,
                "target": target,
                "result": result,
                "duration_ms": ms as u64,
                "detail": detail,
            });
            if let Ok(mut f) = file.lock() {
                let _ = writeln!(f, "{line}");
            }
        }
    }
}

fn quote(s: &str) -> String {
    if !s.is_empty() && s.chars().all(|c| c.is_ascii_graphic() && c != '"') {
        s.to_string()
    } else {
        format!("{s:?}")
    }
}

/// An outward call being timed.
pub struct AuditCall<'a> {
    gate: &'a Gate,
    operation: &'a str,
    target: &'a str,
    start: Instant,
}

impl AuditCall<'_> {
    /// Records the outcome and passes the result through.
    pub fn end<T>(self, result: Result<T, HostError>) -> Result<T, HostError> {
        let (outcome, detail) = match &result {
            Ok(_) => ("ok", None),
            Err(e) => (e.kind(), Some(e.to_string())),
        };
        self.gate.audit(
            self.operation,
            self.target,
            outcome,
            self.start.elapsed(),
            detail.as_deref(),
        );
        result
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn set(pairs: &[(Capability, &str)]) -> CapabilitySet {
        let mut out = CapabilitySet::new();
        for (cap, name) in pairs {
            out.entry(*cap).or_default().insert(name.to_string());
        }
        out
    }

    fn subject() -> Subject {
        Subject {
            connector: "acme".into(),
            version: "1.2.0".into(),
            stage: "provision".into(),
        }
    }

    #[test]
    fn declared_and_granted_are_both_needed() {
        let declared = set(&[
            (Capability::Ssh, "device"),
            (Capability::Power, "reboot_script"),
        ]);
        let granted = set(&[(Capability::Ssh, "device"), (Capability::Http, "maas")]);
        let gate = Gate::new(
            subject(),
            declared,
            granted,
            vec![],
            "lab file /etc/lab.yaml (connectors.acme)",
        );
        assert!(gate.check(Capability::Ssh, "device").is_ok());
        // Declared but not granted: the message names the grant line.
        let err = gate
            .check(Capability::Power, "reboot_script")
            .unwrap_err()
            .to_string();
        assert!(err.contains("not granted to connector acme 1.2.0"), "{err}");
        assert!(
            err.contains("grants: {power: [...]}") && err.contains("/etc/lab.yaml"),
            "{err}"
        );
        // Granted but not declared: refused too.
        let err = gate
            .check(Capability::Http, "maas")
            .unwrap_err()
            .to_string();
        assert!(
            err.contains("did not declare capability http: maas"),
            "{err}"
        );
        // Neither.
        assert!(gate.check(Capability::Ssh, "control-host").is_err());
        assert!(gate.check(Capability::Serial, "console").is_err());
    }

    #[test]
    fn url_patterns_narrow_job_urls() {
        let caps = set(&[(Capability::Http, "job-urls")]);
        let gate = Gate::new(
            subject(),
            caps.clone(),
            caps.clone(),
            vec![UrlPattern::parse("https://images.lab:443").unwrap()],
            "lab",
        );
        assert!(
            gate.check_url(Capability::Http, "https://images.lab/x.img")
                .is_ok()
        );
        let err = gate
            .check_url(Capability::Http, "http://images.lab/x.img")
            .unwrap_err()
            .to_string();
        assert!(err.contains("add `http://images.lab:80`"), "{err}");
        assert!(
            gate.check_url(Capability::Http, "https://images.lab:8443/x")
                .is_err()
        );
        let open = Gate::new(subject(), caps.clone(), caps, vec![], "lab");
        assert!(
            open.check_url(Capability::Http, "http://anything:1/x")
                .is_ok()
        );
    }

    /// Every function the WIT world imports is classified, and every
    /// classified function exists.
    #[test]
    fn every_host_function_is_classified() {
        let mut resolve = wit_parser::Resolve::default();
        let wit = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("../wit");
        let (pkg, _) = resolve.push_dir(&wit).unwrap();
        let world = resolve.select_world(&[pkg], Some("connector")).unwrap();
        let mut seen = Vec::new();
        for item in resolve.worlds[world].imports.values() {
            let wit_parser::WorldItem::Interface { id, .. } = item else {
                panic!("the world imports something that is not an interface: {item:?}");
            };
            let iface = &resolve.interfaces[*id];
            let name = iface.name.clone().unwrap();
            for func in iface.functions.keys() {
                let entry = HOST_FUNCTIONS
                    .iter()
                    .find(|(i, f, _)| *i == name && f == func);
                assert!(
                    entry.is_some(),
                    "{name}.{func} is not classified in HOST_FUNCTIONS"
                );
                seen.push((name.clone(), func.clone()));
            }
        }
        for (i, f, _) in HOST_FUNCTIONS {
            assert!(
                seen.iter().any(|(a, b)| a == i && b == f),
                "{i}.{f} is classified but not in the WIT world"
            );
        }
        // Every interface that reaches outside is gated somewhere.
        for cap in Capability::ALL {
            assert!(
                HOST_FUNCTIONS
                    .iter()
                    .any(|(_, _, a)| *a == Access::Gated(cap)),
                "{cap:?} has no gated entry point"
            );
        }
    }

    /// The first-party connectors import nothing but our interfaces and
    /// deny-by-default WASI.
    #[test]
    fn embedded_connectors_import_only_known_interfaces() {
        for e in crate::connectors::EMBEDDED {
            let (imports, _) = crate::commands::inspect::interface_names(e.bytes).unwrap();
            for import in imports {
                let ours = import.starts_with("testflinger:connector/");
                let wasi = WASI_PREFIXES.iter().any(|p| import.starts_with(p));
                assert!(ours || wasi, "{} imports {import}", e.name);
            }
        }
    }

    #[test]
    fn audit_lines_go_to_the_json_file() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("audit.jsonl");
        let gate = Gate::new(
            subject(),
            CapabilitySet::new(),
            CapabilitySet::new(),
            vec![],
            "lab",
        )
        .with_json_audit(&path)
        .unwrap();
        let _ = gate.check(Capability::Ssh, "device");
        let call = gate.begin("ssh.exec", "device");
        let _ = call.end(Ok::<_, HostError>(()));
        let text = std::fs::read_to_string(&path).unwrap();
        let lines: Vec<serde_json::Value> = text
            .lines()
            .map(|l| serde_json::from_str(l).unwrap())
            .collect();
        assert_eq!(lines.len(), 2);
        assert_eq!(lines[0]["result"], "denied");
        assert_eq!(lines[0]["capability"], "ssh");
        assert_eq!(lines[1]["result"], "ok");
        assert_eq!(lines[1]["connector"], "acme");
        assert_eq!(lines[1]["stage"], "provision");
    }
}

/// What the device config must hold for a capability name to be usable.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ConfigNeed {
    /// Device-config keys that must be set.
    pub keys: Vec<String>,
    /// Whether a connector works without it (the control-host hook keys).
    pub optional: bool,
}

/// The device-config keys behind capability `name` of `cap`; `None` when
/// this runtime does not know the name at all.
pub fn config_need(cap: Capability, name: &str) -> Option<ConfigNeed> {
    let need = |keys: &[&str], optional: bool| {
        Some(ConfigNeed {
            keys: keys.iter().map(|k| k.to_string()).collect(),
            optional,
        })
    };
    match (cap, name) {
        (Capability::Ssh, "device") => need(&["device_ip"], false),
        (Capability::Ssh, "control-host") => need(&["control_host"], false),
        // Like the reference's serial logger, connectors capture the
        // console only when the device has one.
        (Capability::Serial, "console") => need(&["serial_host", "serial_port"], true),
        (Capability::Http, "control-host") => need(&["control_host"], true),
        (Capability::Http, "maas") => need(
            &[crate::maas_auth::URL_KEY, crate::maas_auth::API_KEY_KEY],
            false,
        ),
        (Capability::Http, "job-urls")
        | (Capability::Transfer, "job-urls")
        | (Capability::Transfer, "attachments") => need(&[], false),
        (
            Capability::Power,
            key @ ("control_host_reboot_script" | "poweroff_script" | "poweron_script"),
        ) => need(&[key], true),
        (Capability::Power, key) => need(&[key], false),
        _ => None,
    }
}
