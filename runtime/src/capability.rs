//! The capability gate: the one place that decides what a connector may do
//! outside its sandbox, and the audit trail of what it did.
//!
//! Every policy decision of the runtime lives here:
//! - a capability name is usable when the connector's manifest
//!   **declares** it **and** the lab **grants** it (the lab file's grants;
//!   without a lab pin, an embedded connector's published defaults, i.e.
//!   what it declares): [`Ask::Name`];
//! - a device-config command list may be run only under its key, and a
//!   secret-named key or the runtime's own section never: [`Ask::Command`];
//! - a URL may be fetched only if the job names it (after `$DEVICE_IP`
//!   substitution, [`job_urls`]) and the lab's URL grants, when it has any,
//!   cover it: [`Ask::JobUrl`], [`UrlGrants`]; a redirect must pass the
//!   same grants ([`UrlGrants::redirect`]);
//! - a request to a named endpoint stays below the endpoint's base URL
//!   ([`endpoint_url`]);
//! - how each function of the WIT world is guarded ([`HOST_FUNCTIONS`]).
//!
//! Whether the device config **configures** a name is checked by the
//! service that resolves it (an unconfigured SSH target is `not-found`,
//! naming the config key); [`config_need`] says what `check` expects.
//! [`Gate::check`] only decides; the host's call wrapper
//! (`host::outward`) asks it before anything else and records every
//! outcome, denials included, with [`Gate::audit`].

use std::collections::{BTreeMap, BTreeSet};
use std::fmt;
use std::io::Write;
use std::path::Path;
use std::sync::Mutex;
use std::time::Duration;

use crate::config::{RUNTIME_KEY, is_secret_key};
use crate::endpoints::{self, Endpoints};
use crate::error::redact_url;
use crate::job_file::JobFile;

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
/// sandbox.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Access {
    /// Reads or writes nothing outside the store (log lines, views of the
    /// job and config with secrets removed).
    Local,
    /// Reads or writes files of the run directory, through the one resolver
    /// that refuses escapes ([`crate::rundir`]); refusals are audited.
    RunDir,
    /// Reaches outside through the host's call wrapper, which asks the gate
    /// for a name of this family first.
    Gated(Capability),
    /// A method of a resource whose constructor was gated for this family;
    /// it goes through the wrapper too, which asks again for the
    /// resource's name.
    Handle(Capability),
}

/// One function of the `connector` world's imports.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct HostFn {
    /// The WIT interface (`ssh`).
    pub interface: &'static str,
    /// The function as WIT names it (`connect`, `[method]session.exec`).
    pub function: &'static str,
    /// The short name audit lines and spans use (`ssh.exec`).
    pub call: &'static str,
    /// How it is guarded.
    pub access: Access,
}

/// Every function of the world, with its guard: the host's call wrapper
/// takes one of these for every call that reaches outside, and refuses a
/// function that is not [`Access::Gated`] or [`Access::Handle`] or a check
/// of another family; a test checks the table against every served WIT
/// version, so a new function cannot be added without saying how it is
/// guarded.
pub mod funcs {
    use super::{Access, Capability::*, HostFn};

    const fn f(
        interface: &'static str,
        function: &'static str,
        call: &'static str,
        access: Access,
    ) -> HostFn {
        HostFn {
            interface,
            function,
            call,
            access,
        }
    }

    pub const LOG_LOG: HostFn = f("log", "log", "log.log", Access::Local);
    pub const LOG_PRINT: HostFn = f("log", "print", "log.print", Access::Local);
    pub const JOB_CURRENT_STAGE: HostFn =
        f("job", "current-stage", "job.current-stage", Access::Local);
    pub const JOB_JOB_JSON: HostFn = f("job", "job-json", "job.job-json", Access::Local);
    pub const JOB_DEVICE_CONFIG_JSON: HostFn = f(
        "job",
        "device-config-json",
        "job.device-config-json",
        Access::Local,
    );
    pub const JOB_ATTACHMENTS: HostFn = f("job", "attachments", "job.attachments", Access::RunDir);
    pub const JOB_READ_ATTACHMENT: HostFn = f(
        "job",
        "read-attachment",
        "job.read-attachment",
        Access::RunDir,
    );
    pub const JOB_SET_DEVICE_INFO: HostFn = f(
        "job",
        "set-device-info",
        "job.set-device-info",
        Access::RunDir,
    );
    pub const JOB_WRITE_ARTIFACT: HostFn = f(
        "job",
        "write-artifact",
        "job.write-artifact",
        Access::RunDir,
    );
    pub const POWER_RUN: HostFn = f("power", "run", "power.run", Access::Gated(Power));
    pub const POWER_CYCLE_CONTROL_HOST: HostFn = f(
        "power",
        "cycle-control-host",
        "power.cycle-control-host",
        Access::Gated(Power),
    );
    pub const SERIAL_OPEN: HostFn = f("serial", "open", "serial.open", Access::Gated(Serial));
    pub const SERIAL_WAIT_FOR: HostFn = f(
        "serial",
        "[method]port.wait-for",
        "serial.wait-for",
        Access::Handle(Serial),
    );
    pub const SERIAL_WRITE: HostFn = f(
        "serial",
        "[method]port.write",
        "serial.write",
        Access::Handle(Serial),
    );
    pub const SSH_CONNECT: HostFn = f("ssh", "connect", "ssh.connect", Access::Gated(Ssh));
    pub const SSH_WAIT_REACHABLE: HostFn = f(
        "ssh",
        "wait-reachable",
        "ssh.wait-reachable",
        Access::Gated(Ssh),
    );
    pub const SSH_AUTHORIZE_KEY: HostFn = f(
        "ssh",
        "authorize-key",
        "ssh.authorize-key",
        Access::Gated(Ssh),
    );
    pub const SSH_EXEC: HostFn = f(
        "ssh",
        "[method]session.exec",
        "ssh.exec",
        Access::Handle(Ssh),
    );
    pub const SSH_UPLOAD: HostFn = f(
        "ssh",
        "[method]session.upload",
        "ssh.upload",
        Access::Handle(Ssh),
    );
    pub const SSH_DOWNLOAD: HostFn = f(
        "ssh",
        "[method]session.download",
        "ssh.download",
        Access::Handle(Ssh),
    );
    pub const SSH_DOWNLOAD_ARTIFACT: HostFn = f(
        "ssh",
        "[method]session.download-artifact",
        "ssh.download-artifact",
        Access::Handle(Ssh),
    );
    pub const HTTP_CALL: HostFn = f("http", "call", "http.call", Access::Gated(Http));
    pub const HTTP_FETCH: HostFn = f("http", "fetch", "http.fetch", Access::Gated(Http));
    pub const TRANSFER_TO_SSH: HostFn = f(
        "transfer",
        "to-ssh",
        "transfer.to-ssh",
        Access::Gated(Transfer),
    );
    pub const TRANSFER_TO_ARTIFACT: HostFn = f(
        "transfer",
        "to-artifact",
        "transfer.to-artifact",
        Access::Gated(Transfer),
    );
}

/// Every function of the `connector` world's imports and its guard.
pub const HOST_FUNCTIONS: &[HostFn] = &[
    funcs::LOG_LOG,
    funcs::LOG_PRINT,
    funcs::JOB_CURRENT_STAGE,
    funcs::JOB_JOB_JSON,
    funcs::JOB_DEVICE_CONFIG_JSON,
    funcs::JOB_ATTACHMENTS,
    funcs::JOB_READ_ATTACHMENT,
    funcs::JOB_SET_DEVICE_INFO,
    funcs::JOB_WRITE_ARTIFACT,
    funcs::POWER_RUN,
    funcs::POWER_CYCLE_CONTROL_HOST,
    funcs::SERIAL_OPEN,
    funcs::SERIAL_WAIT_FOR,
    funcs::SERIAL_WRITE,
    funcs::SSH_CONNECT,
    funcs::SSH_WAIT_REACHABLE,
    funcs::SSH_AUTHORIZE_KEY,
    funcs::SSH_EXEC,
    funcs::SSH_UPLOAD,
    funcs::SSH_DOWNLOAD,
    funcs::SSH_DOWNLOAD_ARTIFACT,
    funcs::HTTP_CALL,
    funcs::HTTP_FETCH,
    funcs::TRANSFER_TO_SSH,
    funcs::TRANSFER_TO_ARTIFACT,
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

/// What a host call asks the gate for.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Ask<'a> {
    /// A capability name of a family (`ssh: device`).
    Name(Capability, &'a str),
    /// A device-config command list to run on the agent host, by key
    /// (`power: reboot_script`).
    Command(&'a str),
    /// A URL the job provides, under `<family>: [job-urls]`.
    JobUrl(Capability, &'a str),
}

impl Ask<'_> {
    /// The family asked for.
    pub fn family(&self) -> Capability {
        match self {
            Ask::Name(cap, _) | Ask::JobUrl(cap, _) => *cap,
            Ask::Command(_) => Capability::Power,
        }
    }

    /// The capability name asked for (`job-urls` for a URL).
    pub fn name(&self) -> &str {
        match self {
            Ask::Name(_, name) | Ask::Command(name) => name,
            Ask::JobUrl(..) => endpoints::JOB_URLS,
        }
    }

    /// `family:name`, as audit lines show it.
    pub fn label(&self) -> CapabilityLabel<'_> {
        CapabilityLabel(Some((self.family(), self.name())))
    }
}

/// How an audit line names the capability used: `ssh:device`, or
/// `run-dir` for the run-directory functions of `job`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct CapabilityLabel<'a>(pub Option<(Capability, &'a str)>);

impl fmt::Display for CapabilityLabel<'_> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self.0 {
            Some((cap, name)) => write!(f, "{}:{name}", cap.key()),
            None => f.write_str("run-dir"),
        }
    }
}

/// Why the gate said no.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum Refusal {
    /// Not declared, not granted, or outside what the grants cover; the
    /// message names the declaration or grant to add, and where.
    #[error("{0}")]
    Denied(String),
    /// The request itself is malformed (a URL that does not parse, a
    /// scheme other than http(s), an endpoint path without a leading `/`).
    #[error("{0}")]
    Invalid(String),
}

/// Decides whether a call is allowed and keeps the audit trail.
#[derive(Debug)]
pub struct Gate {
    subject: Subject,
    declared: CapabilitySet,
    granted: CapabilitySet,
    urls: UrlGrants,
    job_urls: BTreeSet<String>,
    /// Where the grants come from, for messages.
    grant_source: String,
    json: Option<Mutex<std::fs::File>>,
}

impl Gate {
    /// A gate for `subject` allowing `declared ∩ granted`; `urls`, when
    /// not empty, narrows which job-provided URLs may be used. The job
    /// provides no URL until [`Gate::with_job_urls`] says which.
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
            urls: UrlGrants::new(urls),
            job_urls: BTreeSet::new(),
            grant_source: grant_source.into(),
            json: None,
        }
    }

    /// The URLs the job provides (see [`job_urls`]).
    pub fn with_job_urls(mut self, urls: BTreeSet<String>) -> Self {
        self.job_urls = urls;
        self
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

    /// The lab's URL grants (empty: any job-provided URL).
    pub fn url_grants(&self) -> &UrlGrants {
        &self.urls
    }

    /// Decides `ask`. Only decides: the caller records the outcome.
    pub fn check(&self, ask: Ask<'_>) -> Result<(), Refusal> {
        match ask {
            Ask::Name(cap, name) => self.check_name(cap, name),
            Ask::Command(key) => {
                self.check_name(Capability::Power, key)?;
                // Even when a lab grants it by mistake, a secret-named key
                // or the runtime's own section is not a command list:
                // running its value would execute (and quote in errors) a
                // password.
                if is_secret_key(key) || key == RUNTIME_KEY {
                    return Err(Refusal::Denied(format!(
                        "`{key}` is a secret or runtime setting of the device config, which connectors never see; it cannot be run as a power command list"
                    )));
                }
                Ok(())
            }
            Ask::JobUrl(cap, url) => {
                self.check_name(cap, endpoints::JOB_URLS)?;
                self.check_job_url(url)
            }
        }
    }

    fn check_name(&self, cap: Capability, name: &str) -> Result<(), Refusal> {
        let Subject {
            connector, version, ..
        } = &self.subject;
        if !self.declared.get(&cap).is_some_and(|n| n.contains(name)) {
            return Err(Refusal::Denied(format!(
                "connector {connector} {version} did not declare capability {}: {name}; its author must add `{} = [\"{name}\"]` under [capabilities] in connector.toml",
                cap.key(),
                cap.key()
            )));
        }
        if !self.granted.get(&cap).is_some_and(|n| n.contains(name)) {
            return Err(Refusal::Denied(format!(
                "capability {}: {name} is not granted to connector {connector} {version}; to allow it, add `{name}` to `grants: {{{}: [...]}}` of this provision type in {}",
                cap.key(),
                cap.key(),
                self.grant_source
            )));
        }
        Ok(())
    }

    /// A URL must be an http(s) URL the job provides, and covered by the
    /// URL grants if the lab has any.
    fn check_job_url(&self, url: &str) -> Result<(), Refusal> {
        let shown = redact_url(url);
        let parsed = reqwest::Url::parse(url)
            .map_err(|e| Refusal::Invalid(format!("bad URL `{shown}`: {e}")))?;
        if !matches!(parsed.scheme(), "http" | "https") {
            return Err(Refusal::Invalid(format!(
                "only http and https URLs are supported, got `{shown}`"
            )));
        }
        // Exactly the string that will be fetched: a trimmed comparison
        // let `<job URL>\u{3000}` through although the job never named it.
        if !self.job_urls.contains(url) {
            return Err(Refusal::Denied(format!(
                "URL {shown} is not one the job provides; connectors may only fetch URLs from the job (a fixed address the lab provides is a named endpoint, reached with http.call)"
            )));
        }
        if self.urls.covers(&parsed) {
            return Ok(());
        }
        let port = parsed
            .port_or_known_default()
            .map(|p| p.to_string())
            .unwrap_or_default();
        Err(Refusal::Denied(format!(
            "URL {shown} is not covered by the URL grants of connector {} ({}); to allow it, add `{}://{}:{port}` to `grants: {{urls: [...]}}` in {}",
            self.subject.connector,
            self.urls,
            parsed.scheme(),
            parsed.host_str().unwrap_or(""),
            self.grant_source
        )))
    }

    /// Records one audit line: on stderr (reference format with fields) and
    /// in the JSON-lines file if configured.
    pub fn audit(&self, line: &AuditLine<'_>) {
        let Subject {
            connector,
            version,
            stage,
        } = &self.subject;
        let ms = line.duration.as_millis();
        let (call, capability, result) = (line.call, line.capability, line.result);
        // Allowed calls are routine: the JSON file has them, stderr only at
        // DEBUG, so the agent log reads like the reference's. Denials and
        // limits are what an operator must act on: WARNING, with the
        // refusal (which names the grant line to add).
        if matches!(result, "denied" | "limit") {
            let detail = quote(line.detail.unwrap_or(""));
            tracing::warn!(target: "tfdc::audit", connector = %connector, version = %version, stage = %stage, call = %call, capability = %capability, target = %quote(line.target), result = %result, duration_ms = ms, detail = %detail, "audit");
        } else {
            tracing::debug!(target: "tfdc::audit", connector = %connector, version = %version, stage = %stage, call = %call, capability = %capability, target = %quote(line.target), result = %result, duration_ms = ms, "audit");
        }
        if let Some(file) = &self.json {
            let json = serde_json::json!({
                "time": chrono::Local::now().to_rfc3339(),
                "connector": connector,
                "version": version,
                "stage": stage,
                "call": call,
                "capability": capability.to_string(),
                "target": line.target,
                "result": result,
                "duration_ms": ms as u64,
                "detail": line.detail,
            });
            if let Ok(mut f) = file.lock() {
                let _ = writeln!(f, "{json}");
            }
        }
    }
}

/// One line of the audit trail: a call the connector made and how it
/// ended.
#[derive(Debug, Clone, Copy)]
pub struct AuditLine<'a> {
    /// `ssh.exec`, `job.write-artifact` ... ([`HostFn::call`]).
    pub call: &'a str,
    /// The capability used.
    pub capability: CapabilityLabel<'a>,
    /// What was reached: a target name, an endpoint, a redacted URL, a
    /// run-directory name.
    pub target: &'a str,
    /// `ok`, `denied`, or the error kind the connector got.
    pub result: &'a str,
    /// How long the call took.
    pub duration: Duration,
    /// The error message, if any.
    pub detail: Option<&'a str>,
}

fn quote(s: &str) -> String {
    if !s.is_empty() && s.chars().all(|c| c.is_ascii_graphic() && c != '"') {
        s.to_string()
    } else {
        format!("{s:?}")
    }
}

/// The URLs the job provides: every http(s) string in it, and each with
/// `$DEVICE_IP` replaced by the device's address (a job may name a URL on
/// the device it is about to provision).
pub fn job_urls(job: &JobFile, device_ip: Option<&str>) -> BTreeSet<String> {
    let mut out = BTreeSet::new();
    for url in job.urls() {
        if let Some(ip) = device_ip {
            out.insert(url.replace("$DEVICE_IP", ip));
        }
        out.insert(url);
    }
    out
}

/// A `scheme://host:port` pattern for job-provided URLs. `host` may start
/// with `*.` (any subdomain); `port` may be `*`; the port is required so a
/// grant never silently covers another service on the same host.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct UrlPattern {
    scheme: String,
    host: String,
    port: Option<u16>,
}

impl UrlPattern {
    /// Parses a pattern, with an explanation when it is not one.
    pub fn parse(text: &str) -> Result<Self, String> {
        let bad = |why: &str| {
            format!(
                "bad URL grant `{text}`: {why} (form: `https://images.example:443`, `http://*.lab:*`)"
            )
        };
        let (scheme, rest) = text
            .split_once("://")
            .ok_or_else(|| bad("missing scheme"))?;
        if !matches!(scheme, "http" | "https") {
            return Err(bad("scheme must be http or https"));
        }
        let rest = rest.trim_end_matches('/');
        if rest.contains('/') {
            return Err(bad("paths are not allowed"));
        }
        let (host, port) = rest
            .rsplit_once(':')
            .ok_or_else(|| bad("a port (or `*`) is required"))?;
        let port = match port {
            "*" => None,
            p => Some(
                p.parse::<u16>()
                    .map_err(|_| bad("port must be a number or `*`"))?,
            ),
        };
        let wild = host.strip_prefix("*.").unwrap_or(host);
        if wild.is_empty() || wild.contains('*') || host == "*" {
            return Err(bad("host wildcards are only allowed as a leading `*.`"));
        }
        Ok(UrlPattern {
            scheme: scheme.to_string(),
            host: host.to_ascii_lowercase(),
            port,
        })
    }

    /// Whether `url` matches.
    pub fn matches(&self, url: &reqwest::Url) -> bool {
        if url.scheme() != self.scheme {
            return false;
        }
        let Some(host) = url.host_str() else {
            return false;
        };
        let host = host.to_ascii_lowercase();
        let host_ok = match self.host.strip_prefix("*.") {
            Some(suffix) => host.ends_with(&format!(".{suffix}")),
            None => host == self.host,
        };
        host_ok
            && self
                .port
                .is_none_or(|p| url.port_or_known_default() == Some(p))
    }
}

impl fmt::Display for UrlPattern {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self.port {
            Some(p) => write!(f, "{}://{}:{p}", self.scheme, self.host),
            None => write!(f, "{}://{}:*", self.scheme, self.host),
        }
    }
}

/// The lab's URL grants of one connector (`grants: {urls: [...]}`): none
/// means any URL the job provides.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct UrlGrants(Vec<UrlPattern>);

impl UrlGrants {
    /// Grants from patterns.
    pub fn new(patterns: Vec<UrlPattern>) -> Self {
        UrlGrants(patterns)
    }

    /// Whether there are none (any job URL may be used).
    pub fn is_empty(&self) -> bool {
        self.0.is_empty()
    }

    /// Whether `url` may be used: no grants, or one matches.
    pub fn covers(&self, url: &reqwest::Url) -> bool {
        self.0.is_empty() || self.0.iter().any(|p| p.matches(url))
    }

    /// Whether a redirect from `from` to `to` may be followed; the reason
    /// otherwise. A redirect is a request the connector did not name, so it
    /// must pass the check the first URL passed: it stays on the origin it
    /// leaves, or the grants cover it (without grants, any http(s) URL may
    /// follow, as the job could have named it directly). Otherwise a
    /// granted server (or one a job names) could bounce the host to an
    /// internal service and hand its answer to the connector.
    pub fn redirect(&self, from: Option<&reqwest::Url>, to: &reqwest::Url) -> Result<(), String> {
        let same_origin = from.is_some_and(|prev| prev.origin() == to.origin());
        if same_origin || self.covers(to) {
            return Ok(());
        }
        Err(format!(
            "it redirects to {}, which is not covered by the URL grants ({self}); to allow it, add `{}://{}:{}` to `grants: {{urls: [...]}}` in the lab file",
            redact_url(to.as_str()),
            to.scheme(),
            to.host_str().unwrap_or(""),
            to.port_or_known_default().unwrap_or(0),
        ))
    }
}

/// Whether a named built-in endpoint's (`control-host`, `maas`) redirect
/// from `from` to `to` may be followed: only on the same origin. The lab
/// vouched for that server, not for wherever it points; following a 302
/// elsewhere would hand an unconfigured address's answer to the
/// connector, and a 307/308 would replay a POST with its body there.
pub fn endpoint_redirect(from: Option<&reqwest::Url>, to: &reqwest::Url) -> Result<(), String> {
    if from.is_some_and(|prev| prev.origin() == to.origin()) {
        return Ok(());
    }
    Err(format!(
        "it redirects to {}, another address than the one the lab configured; named endpoints follow redirects on their own origin only: point the device config at the final address",
        redact_url(to.as_str()),
    ))
}

impl fmt::Display for UrlGrants {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        for (i, p) in self.0.iter().enumerate() {
            if i > 0 {
                f.write_str(", ")?;
            }
            write!(f, "{p}")?;
        }
        Ok(())
    }
}

/// The absolute URL of `path` on the named endpoint `endpoint` whose base
/// URL is `base`. The path must start with `/` (with an optional query),
/// and the result must stay below the base: same scheme, host, port and
/// credentials, under the base path; a `..` segment (also percent-encoded
/// or written with `\`) is refused whatever it resolves to, so a server
/// that decodes paths itself cannot be walked out of the base either.
pub fn endpoint_url(endpoint: &str, base: &str, path: &str) -> Result<String, Refusal> {
    if !path.starts_with('/') {
        return Err(Refusal::Invalid(format!(
            "endpoint paths must start with `/`, got `{path}`"
        )));
    }
    let escape = || {
        Refusal::Denied(format!(
            "path `{path}` would leave HTTP endpoint `{endpoint}` ({}); connectors may only reach paths below an endpoint's base URL",
            redact_url(base)
        ))
    };
    let path_part = path.split(['?', '#']).next().unwrap_or("");
    let decoded = percent_encoding::percent_decode_str(path_part).decode_utf8_lossy();
    if decoded.split(['/', '\\']).any(|segment| segment == "..") {
        return Err(escape());
    }
    let base_url = reqwest::Url::parse(base).map_err(|e| {
        Refusal::Invalid(format!(
            "HTTP endpoint `{endpoint}` has a bad base URL: {e}"
        ))
    })?;
    let joined = format!("{}{path}", base.trim_end_matches('/'));
    let url = reqwest::Url::parse(&joined).map_err(|_| escape())?;
    let base_path = base_url.path().trim_end_matches('/');
    let below = url.path() == base_path
        || url
            .path()
            .strip_prefix(base_path)
            .is_some_and(|rest| rest.starts_with('/'));
    let same_place = url.scheme() == base_url.scheme()
        && url.host() == base_url.host()
        && url.port_or_known_default() == base_url.port_or_known_default()
        && url.username() == base_url.username()
        && url.password() == base_url.password();
    if !(below && same_place) {
        return Err(escape());
    }
    Ok(url.into())
}

/// What the device config (or the lab) must hold for a capability name to
/// be usable.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ConfigNeed {
    /// Device-config keys that must be set.
    pub keys: Vec<String>,
    /// Whether a connector works without it (the control-host hook keys).
    pub optional: bool,
}

/// The device-config keys behind capability `name` of `cap`; `None` when
/// this runtime does not know the name at all. `endpoints` are the named
/// HTTP endpoints the lab file and the device config define: each needs
/// no further key.
pub fn config_need(cap: Capability, name: &str, endpoints: &Endpoints) -> Option<ConfigNeed> {
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
        (Capability::Http, endpoints::CONTROL_HOST) => need(&["control_host"], true),
        (Capability::Http, endpoints::MAAS) => need(
            &[crate::maas_auth::URL_KEY, crate::maas_auth::API_KEY_KEY],
            false,
        ),
        (Capability::Http, endpoints::TESTFLINGER_SERVER) => {
            need(&[endpoints::TESTFLINGER_SERVER_KEY], false)
        }
        (Capability::Http, endpoints::JOB_URLS)
        | (Capability::Transfer, endpoints::JOB_URLS)
        | (Capability::Transfer, "attachments") => need(&[], false),
        (Capability::Http, endpoint) if endpoints.contains_key(endpoint) => need(&[], false),
        (
            Capability::Power,
            key @ ("control_host_reboot_script" | "poweroff_script" | "poweron_script"),
        ) => need(&[key], true),
        (Capability::Power, key) => need(&[key], false),
        _ => None,
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

    fn denied(r: Result<(), Refusal>) -> String {
        match r {
            Err(Refusal::Denied(m)) => m,
            other => panic!("expected a denial, got {other:?}"),
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
        assert!(gate.check(Ask::Name(Capability::Ssh, "device")).is_ok());
        // Declared but not granted: the message names the grant line.
        let err = denied(gate.check(Ask::Command("reboot_script")));
        assert!(err.contains("not granted to connector acme 1.2.0"), "{err}");
        assert!(
            err.contains("grants: {power: [...]}") && err.contains("/etc/lab.yaml"),
            "{err}"
        );
        // Granted but not declared: refused too.
        let err = denied(gate.check(Ask::Name(Capability::Http, "maas")));
        assert!(
            err.contains("did not declare capability http: maas"),
            "{err}"
        );
        // Neither.
        assert!(
            gate.check(Ask::Name(Capability::Ssh, "control-host"))
                .is_err()
        );
        assert!(
            gate.check(Ask::Name(Capability::Serial, "console"))
                .is_err()
        );
    }

    /// A lab that grants a secret-named key or the runtime section by
    /// mistake still does not get its value run.
    #[test]
    fn secret_keys_are_never_commands() {
        let caps = set(&[
            (Capability::Power, "bmc_password"),
            (Capability::Power, "connector_runtime"),
            (Capability::Power, "reboot_script"),
        ]);
        let gate = Gate::new(subject(), caps.clone(), caps, vec![], "lab");
        assert!(gate.check(Ask::Command("reboot_script")).is_ok());
        for key in ["bmc_password", "connector_runtime"] {
            let err = denied(gate.check(Ask::Command(key)));
            assert!(err.contains("secret or runtime setting"), "{err}");
        }
    }

    #[test]
    fn job_urls_must_be_in_the_job_and_covered_by_the_grants() {
        let caps = set(&[(Capability::Http, "job-urls")]);
        let job = JobFile::parse(
            Path::new("j"),
            r#"{"provision_data":{"url":"https://images.lab/x.img","other":"http://images.lab/x.img","boot":"http://$DEVICE_IP:8080/ok","bad":"http://images.lab:8443/x"}}"#,
        )
        .unwrap();
        let urls = job_urls(&job, Some("10.1.1.1"));
        let gate = Gate::new(
            subject(),
            caps.clone(),
            caps.clone(),
            vec![
                UrlPattern::parse("https://images.lab:443").unwrap(),
                UrlPattern::parse("http://10.1.1.1:*").unwrap(),
            ],
            "lab",
        )
        .with_job_urls(urls.clone());
        let ask = |url| gate.check(Ask::JobUrl(Capability::Http, url));
        assert!(ask("https://images.lab/x.img").is_ok());
        assert!(ask("http://10.1.1.1:8080/ok").is_ok());
        let err = denied(ask("http://images.lab/x.img"));
        assert!(err.contains("add `http://images.lab:80`"), "{err}");
        assert!(ask("http://images.lab:8443/x").is_err());
        let err = denied(ask("https://images.lab/y.img"));
        assert!(err.contains("is not one the job provides"), "{err}");
        assert!(matches!(
            ask("file:///etc/passwd"),
            Err(Refusal::Invalid(_))
        ));
        assert!(matches!(ask("not a url"), Err(Refusal::Invalid(_))));
        // Compared exactly: Unicode white space is part of another URL.
        for suffix in ["\u{3000}", "\u{a0}", " ", "\u{200b}"] {
            let url = format!("https://images.lab/x.img{suffix}");
            let err = denied(gate.check(Ask::JobUrl(Capability::Http, &url)));
            assert!(err.contains("is not one the job provides"), "{err}");
        }
        // The grant comes first: without it, even a job URL is denied.
        let other =
            Gate::new(subject(), caps.clone(), set(&[]), vec![], "lab").with_job_urls(urls.clone());
        let err = denied(other.check(Ask::JobUrl(Capability::Http, "https://images.lab/x.img")));
        assert!(err.contains("http: job-urls is not granted"), "{err}");
        // Without URL grants, any job URL.
        let open = Gate::new(subject(), caps.clone(), caps, vec![], "lab").with_job_urls(urls);
        assert!(
            open.check(Ask::JobUrl(Capability::Http, "http://images.lab:8443/x"))
                .is_ok()
        );
        assert!(
            open.check(Ask::JobUrl(Capability::Http, "http://anything:1/x"))
                .is_err()
        );
    }

    #[test]
    fn url_patterns() {
        let p = UrlPattern::parse("https://images.lab:443").unwrap();
        let u = |s: &str| reqwest::Url::parse(s).unwrap();
        assert!(p.matches(&u("https://images.lab/a.img")));
        assert!(!p.matches(&u("http://images.lab:443/a.img")));
        assert!(!p.matches(&u("https://images.lab:8443/a.img")));
        assert!(!p.matches(&u("https://evil.images.lab.attacker/a")));
        let w = UrlPattern::parse("http://*.lab:*").unwrap();
        assert!(w.matches(&u("http://a.b.lab:81/x")));
        assert!(!w.matches(&u("http://lab:81/x")));
    }

    #[test]
    fn redirects_pass_the_url_grants() {
        let u = |s: &str| reqwest::Url::parse(s).unwrap();
        let grants = UrlGrants::new(vec![UrlPattern::parse("http://a.lab:80").unwrap()]);
        assert!(
            grants
                .redirect(Some(&u("http://a.lab/x")), &u("http://a.lab/y"))
                .is_ok()
        );
        assert!(
            grants
                .redirect(Some(&u("http://b.lab/x")), &u("http://b.lab/y"))
                .is_ok()
        );
        let err = grants
            .redirect(
                Some(&u("http://a.lab/x")),
                &u("http://internal:8080/secret"),
            )
            .unwrap_err();
        assert!(
            err.contains("not covered by the URL grants (http://a.lab:80)")
                && err.contains("add `http://internal:8080`"),
            "{err}"
        );
        assert!(
            UrlGrants::default()
                .redirect(None, &u("http://internal/"))
                .is_ok()
        );
    }

    #[test]
    fn endpoint_paths_stay_below_the_base() {
        let base = "http://mirror.lab:8080/ubuntu";
        let ok = |p: &str| endpoint_url("mirror", base, p).unwrap();
        assert_eq!(
            ok("/dists/noble/Release"),
            "http://mirror.lab:8080/ubuntu/dists/noble/Release"
        );
        assert_eq!(ok("/?q=1"), "http://mirror.lab:8080/ubuntu/?q=1");
        assert_eq!(ok("/a/./b"), "http://mirror.lab:8080/ubuntu/a/b");
        assert_eq!(ok("//x"), "http://mirror.lab:8080/ubuntu//x");
        // Another host in the path is only a path.
        assert_eq!(
            ok("/@evil.example/x"),
            "http://mirror.lab:8080/ubuntu/@evil.example/x"
        );
        assert!(matches!(
            endpoint_url("mirror", base, "dists"),
            Err(Refusal::Invalid(_))
        ));
        assert!(matches!(
            endpoint_url("mirror", base, "http://evil/"),
            Err(Refusal::Invalid(_))
        ));
        assert!(matches!(
            endpoint_url("mirror", base, "@evil/"),
            Err(Refusal::Invalid(_))
        ));
        for escape in [
            "/..",
            "/../secret",
            "/a/../../secret",
            "/%2e%2e/secret",
            "/%2E%2E/secret",
            "/.%2e/secret",
            "/a/..%2f..%2fsecret",
            "/a\\..\\..\\secret",
            "/..?x=1",
        ] {
            let err = match endpoint_url("mirror", base, escape) {
                Err(Refusal::Denied(m)) => m,
                other => panic!("{escape}: {other:?}"),
            };
            assert!(err.contains("would leave HTTP endpoint `mirror`"), "{err}");
        }
        // A `..` inside a name is fine, and a base without a path takes any
        // path on its host.
        assert_eq!(ok("/a..b"), "http://mirror.lab:8080/ubuntu/a..b");
        assert_eq!(
            endpoint_url("seed", "https://seed.lab", "/x").unwrap(),
            "https://seed.lab/x"
        );
        // The base's credentials never appear in the message.
        let err = endpoint_url("m", "http://u:SECRET@h/b", "/../x")
            .unwrap_err()
            .to_string();
        assert!(!err.contains("SECRET"), "{err}");
    }

    /// Every function every served WIT version imports is classified, and
    /// every classified function exists in the latest one.
    #[test]
    fn every_host_function_is_classified() {
        let root = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("../wit");
        let mut latest = Vec::new();
        for (dir, is_latest) in [(root.clone(), true), (root.join("v0.1.0"), false)] {
            let mut resolve = wit_parser::Resolve::default();
            let (pkg, _) = resolve.push_dir(&dir).unwrap();
            let world = resolve.select_world(&[pkg], Some("connector")).unwrap();
            for item in resolve.worlds[world].imports.values() {
                let wit_parser::WorldItem::Interface { id, .. } = item else {
                    panic!("the world imports something that is not an interface: {item:?}");
                };
                let iface = &resolve.interfaces[*id];
                let name = iface.name.clone().unwrap();
                for func in iface.functions.keys() {
                    assert!(
                        HOST_FUNCTIONS
                            .iter()
                            .any(|f| f.interface == name && f.function == func),
                        "{name}.{func} ({}) is not classified in HOST_FUNCTIONS",
                        dir.display()
                    );
                    if is_latest {
                        latest.push((name.clone(), func.clone()));
                    }
                }
            }
        }
        for f in HOST_FUNCTIONS {
            assert!(
                latest
                    .iter()
                    .any(|(a, b)| a == f.interface && b == f.function),
                "{}.{} is classified but not in the WIT world",
                f.interface,
                f.function
            );
            assert!(
                f.call.starts_with(&format!("{}.", f.interface)),
                "{} must start with its interface",
                f.call
            );
            assert_eq!(
                HOST_FUNCTIONS.iter().filter(|g| g.call == f.call).count(),
                1,
                "{} is listed twice",
                f.call
            );
        }
        // Every interface that reaches outside is gated somewhere.
        for cap in Capability::ALL {
            assert!(
                HOST_FUNCTIONS
                    .iter()
                    .any(|f| f.access == Access::Gated(cap)),
                "{cap:?} has no gated entry point"
            );
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
        gate.audit(&AuditLine {
            call: "ssh.exec",
            capability: Ask::Name(Capability::Ssh, "device").label(),
            target: "device",
            result: "ok",
            duration: Duration::from_millis(12),
            detail: None,
        });
        gate.audit(&AuditLine {
            call: "job.write-artifact",
            capability: CapabilityLabel(None),
            target: "../escape",
            result: "denied",
            duration: Duration::ZERO,
            detail: Some("refused"),
        });
        let text = std::fs::read_to_string(&path).unwrap();
        let lines: Vec<serde_json::Value> = text
            .lines()
            .map(|l| serde_json::from_str(l).unwrap())
            .collect();
        assert_eq!(lines.len(), 2);
        assert_eq!(lines[0]["call"], "ssh.exec");
        assert_eq!(lines[0]["capability"], "ssh:device");
        assert_eq!(lines[0]["result"], "ok");
        assert_eq!(lines[0]["duration_ms"], 12);
        assert_eq!(lines[0]["connector"], "acme");
        assert_eq!(lines[0]["stage"], "provision");
        assert_eq!(lines[1]["capability"], "run-dir");
        assert_eq!(lines[1]["target"], "../escape");
        assert_eq!(lines[1]["detail"], "refused");
    }

    #[test]
    fn lab_endpoints_need_no_device_key() {
        let lab = Endpoints::from([("mirror".to_string(), "http://m/".to_string())]);
        assert_eq!(
            config_need(Capability::Http, "mirror", &lab),
            Some(ConfigNeed {
                keys: vec![],
                optional: false
            })
        );
        assert_eq!(
            config_need(Capability::Http, "mirror", &Endpoints::new()),
            None
        );
        assert!(config_need(Capability::Http, "maas", &lab).is_some_and(|n| n.keys.len() == 2));
        // The Testflinger server is built in: a connector granted it needs
        // `testflinger_server` in the device config.
        assert_eq!(
            config_need(Capability::Http, "testflinger-server", &Endpoints::new()),
            Some(ConfigNeed {
                keys: vec!["testflinger_server".into()],
                optional: false
            })
        );
    }
}
