//! A simulated MAAS region API: the subset of MAAS 2.0's REST API that the
//! `maas2` connector uses, for one machine, on a [`WebServer`].
//!
//! ```no_run
//! use std::time::Duration;
//! use labsim::maas::{MaasSim, DeployOutcome};
//! # fn f(dut: &labsim::dut::Dut) -> anyhow::Result<()> {
//! let maas = MaasSim::builder("abc123")
//!     .status("Deployed")
//!     .ip_addresses(&[&dut.ip()])
//!     .deploy_time(Duration::from_millis(300))
//!     .bmc(dut.control_addr())
//!     .start("127.0.0.1")?;
//! // device config: maas_url: <maas.url()>, maas_api_key: <maas.api_key()>
//! // ... run the CLI ...
//! assert!(maas.lines().iter().any(|l| l.starts_with("POST machines/abc123/?op=deploy")));
//! # Ok(()) }
//! ```
//!
//! # What it checks
//!
//! Every request must carry a valid OAuth 1.0a `PLAINTEXT` `Authorization`
//! header for the simulator's key (right consumer key, token and signature,
//! a nonce never seen before, a timestamp within five minutes); otherwise
//! it is answered `401` like MAAS does. Bodies must be
//! `application/x-www-form-urlencoded`. State rules follow MAAS: partitions
//! are created and deleted only while the machine is `Ready`, formatted and
//! mounted while `Ready` or `Allocated`, a machine is allocated only when
//! `Ready` and deployed only when `Allocated`, `release` of a `Ready` or
//! `Releasing` machine is a no-op, `mark_fixed` needs `Broken`. Errors are
//! `400` (bad parameters), `404` (unknown object or path) and `409`
//! (wrong machine state).
//!
//! # Time and power
//!
//! State changes that take time in MAAS are evaluated lazily at each
//! request: `Deploying` turns into the [`DeployOutcome`] after
//! [`MaasBuilder::deploy_time`], `Releasing` into `Ready` after
//! [`MaasBuilder::release_time`] (or never, see [`ReleaseOutcome`]). When a
//! [`MaasBuilder::bmc`] is set (a [`crate::dut::Dut`]'s power controller),
//! the simulator powers the device off when a release or `power_off` starts
//! and on when a deployment succeeds, so the deployed system answers SSH.
//!
//! # Records
//!
//! Every request is recorded in order ([`MaasSim::calls`]), with its path
//! relative to `/MAAS/api/2.0/`, its form parameters and the status it got;
//! [`Call::line`] renders one as `POST machines/abc/?op=deploy distro_series=jammy`.

use std::collections::HashSet;
use std::io::{BufRead, BufReader, Write};
use std::net::SocketAddr;
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use serde_json::{Value, json};

use crate::web::{Reply, Request, WebServer};

/// Prefix of every API path.
pub const API_PREFIX: &str = "/MAAS/api/2.0/";

/// What a deployment ends in.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum DeployOutcome {
    /// `Deployed` (and the device is powered on).
    Deployed,
    /// `Failed deployment`, with the installation log of the builder.
    Failed,
    /// Stays `Deploying` forever.
    Never,
}

/// How a release ends.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ReleaseOutcome {
    /// `Ready` after the release time.
    Ready,
    /// Stuck in `Releasing` until `mark_broken` + `mark_fixed`.
    AfterMarkFixed,
    /// Stuck in `Releasing` until `power_off`.
    AfterPowerOff,
    /// Stuck in `Releasing` whatever happens (`mark_fixed` and `power_off`
    /// succeed but change nothing).
    Never,
}

/// A file system on a block device or partition.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Filesystem {
    pub fstype: String,
    pub label: Option<String>,
    pub mount_point: Option<String>,
}

impl Filesystem {
    /// A formatted, mounted file system.
    pub fn mounted(fstype: &str, mount_point: &str) -> Self {
        Filesystem {
            fstype: fstype.into(),
            label: None,
            mount_point: Some(mount_point.into()),
        }
    }
}

/// A partition of a block device.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Partition {
    pub id: u64,
    pub size: u64,
    pub filesystem: Option<Filesystem>,
}

/// A block device of the machine.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct BlockDevice {
    pub id: u64,
    pub name: String,
    /// `physical` or `virtual`.
    pub kind: String,
    pub size: u64,
    pub partitions: Vec<Partition>,
    pub filesystem: Option<Filesystem>,
    /// Marked as the boot disk.
    pub boot: bool,
}

impl BlockDevice {
    /// An empty physical disk.
    pub fn physical(id: u64, name: &str, size: u64) -> Self {
        BlockDevice {
            id,
            name: name.into(),
            kind: "physical".into(),
            size,
            partitions: Vec::new(),
            filesystem: None,
            boot: false,
        }
    }

    /// An empty virtual device (bcache, RAID ...).
    pub fn virtual_device(id: u64, name: &str, size: u64) -> Self {
        BlockDevice {
            kind: "virtual".into(),
            ..BlockDevice::physical(id, name, size)
        }
    }

    /// Adds a partition.
    pub fn with_partition(mut self, id: u64, size: u64, fs: Option<Filesystem>) -> Self {
        self.partitions.push(Partition {
            id,
            size,
            filesystem: fs,
        });
        self
    }

    /// Formats (and mounts) the whole device.
    pub fn with_filesystem(mut self, fs: Filesystem) -> Self {
        self.filesystem = Some(fs);
        self
    }

    fn used(&self) -> u64 {
        self.partitions.iter().map(|p| p.size).sum()
    }
}

/// One request the simulator received.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Call {
    /// `GET`, `POST`, `PUT`, `DELETE`.
    pub method: String,
    /// Path and query relative to `/MAAS/api/2.0/`, e.g.
    /// `machines/abc/?op=release` (the full path if it is outside the API).
    pub path: String,
    /// The `op` query parameter.
    pub op: Option<String>,
    /// Form parameters of the body, in order.
    pub params: Vec<(String, String)>,
    /// Status of the answer.
    pub status: u16,
}

impl Call {
    /// `METHOD path[?query] k=v k=v`.
    pub fn line(&self) -> String {
        let mut out = format!("{} {}", self.method, self.path);
        for (k, v) in &self.params {
            out.push_str(&format!(" {k}={v}"));
        }
        out
    }

    /// The value of form parameter `name`.
    pub fn param(&self, name: &str) -> Option<&str> {
        self.params
            .iter()
            .find(|(k, _)| k == name)
            .map(|(_, v)| v.as_str())
    }
}

/// Configures a [`MaasSim`].
#[derive(Debug, Clone)]
pub struct MaasBuilder {
    system_id: String,
    status: String,
    ip_addresses: Vec<String>,
    version: String,
    block_devices: Vec<BlockDevice>,
    deploy_time: Duration,
    deploy_outcome: DeployOutcome,
    release_time: Duration,
    release_outcome: ReleaseOutcome,
    bmc: Option<SocketAddr>,
    install_log: String,
    key: (String, String, String),
}

impl MaasBuilder {
    /// Status at start (default `Ready`).
    pub fn status(mut self, status: &str) -> Self {
        self.status = status.into();
        self
    }

    /// Addresses MAAS reports for the machine (default none).
    pub fn ip_addresses(mut self, ips: &[&str]) -> Self {
        self.ip_addresses = ips.iter().map(|s| s.to_string()).collect();
        self
    }

    /// What `version/` reports (default `3.5.0`).
    pub fn version(mut self, version: &str) -> Self {
        self.version = version.into();
        self
    }

    /// Replaces the block devices (default: one 500 GB physical `sda`
    /// with one ext4 partition mounted at `/`).
    pub fn block_devices(mut self, devices: Vec<BlockDevice>) -> Self {
        self.block_devices = devices;
        self
    }

    /// How long `Deploying` lasts (default 200 ms).
    pub fn deploy_time(mut self, d: Duration) -> Self {
        self.deploy_time = d;
        self
    }

    /// What a deployment ends in (default `Deployed`).
    pub fn deploy_outcome(mut self, o: DeployOutcome) -> Self {
        self.deploy_outcome = o;
        self
    }

    /// How long `Releasing` lasts (default 100 ms).
    pub fn release_time(mut self, d: Duration) -> Self {
        self.release_time = d;
        self
    }

    /// How a release ends (default `Ready`).
    pub fn release_outcome(mut self, o: ReleaseOutcome) -> Self {
        self.release_outcome = o;
        self
    }

    /// The power controller of the machine (a `Dut`'s `control_addr`).
    pub fn bmc(mut self, addr: SocketAddr) -> Self {
        self.bmc = Some(addr);
        self
    }

    /// Output of each new installation (default a short curtin-like log).
    pub fn install_log(mut self, log: &str) -> Self {
        self.install_log = log.into();
        self
    }

    /// The API key parts (default `simconsumer:simtoken:simsecret`).
    pub fn api_key(mut self, consumer: &str, token: &str, secret: &str) -> Self {
        self.key = (consumer.into(), token.into(), secret.into());
        self
    }

    /// Starts the simulator on `ip` (any free port).
    pub fn start(self, ip: &str) -> anyhow::Result<MaasSim> {
        let state = Arc::new(Mutex::new(State {
            machine_status: self.status.clone(),
            status_message: String::new(),
            deploy_started: None,
            release_started: None,
            broken_while_releasing: false,
            block_devices: self.block_devices.clone(),
            next_id: 1000,
            script_sets: vec![ScriptSet {
                id: 7,
                output: "previous installation\n".into(),
            }],
            nonces: HashSet::new(),
            calls: Vec::new(),
            faults: Vec::new(),
            bmc_events: Vec::new(),
            distro_series: String::new(),
            config: self.clone(),
        }));
        let shared = state.clone();
        let server = WebServer::start(ip, move |req| handle(&shared, req))?;
        Ok(MaasSim {
            server,
            state,
            key: self.key,
        })
    }
}

#[derive(Debug, Clone)]
struct ScriptSet {
    id: u64,
    output: String,
}

#[derive(Debug, Clone)]
struct Fault {
    prefix: String,
    remaining: usize,
    status: u16,
}

struct State {
    config: MaasBuilder,
    machine_status: String,
    status_message: String,
    deploy_started: Option<Instant>,
    release_started: Option<Instant>,
    broken_while_releasing: bool,
    block_devices: Vec<BlockDevice>,
    next_id: u64,
    script_sets: Vec<ScriptSet>,
    nonces: HashSet<String>,
    calls: Vec<Call>,
    faults: Vec<Fault>,
    bmc_events: Vec<String>,
    distro_series: String,
}

/// A running simulator; stops when dropped.
pub struct MaasSim {
    server: WebServer,
    state: Arc<Mutex<State>>,
    key: (String, String, String),
}

impl MaasSim {
    /// A builder for the machine `system_id`.
    pub fn builder(system_id: &str) -> MaasBuilder {
        MaasBuilder {
            system_id: system_id.into(),
            status: "Ready".into(),
            ip_addresses: Vec::new(),
            version: "3.5.0".into(),
            block_devices: vec![
                BlockDevice::physical(1, "sda", 500_000_000_000).with_partition(
                    11,
                    499_000_000_000,
                    Some(Filesystem::mounted("ext4", "/")),
                ),
            ],
            deploy_time: Duration::from_millis(200),
            deploy_outcome: DeployOutcome::Deployed,
            release_time: Duration::from_millis(100),
            release_outcome: ReleaseOutcome::Ready,
            bmc: None,
            install_log: "curtin: Installation started\ncurtin: Installation finished\n".into(),
            key: ("simconsumer".into(), "simtoken".into(), "simsecret".into()),
        }
    }

    /// The base URL for `maas_url` (`http://ip:port/MAAS`).
    pub fn url(&self) -> String {
        format!("{}/MAAS", self.server.url())
    }

    /// The API key for `maas_api_key`.
    pub fn api_key(&self) -> String {
        format!("{}:{}:{}", self.key.0, self.key.1, self.key.2)
    }

    fn lock(&self) -> MutexGuard<'_, State> {
        self.state.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// Every request so far, in order.
    pub fn calls(&self) -> Vec<Call> {
        self.lock().calls.clone()
    }

    /// [`Call::line`] of every request so far.
    pub fn lines(&self) -> Vec<String> {
        self.calls().iter().map(Call::line).collect()
    }

    /// The machine's status now.
    pub fn status(&self) -> String {
        let mut s = self.lock();
        s.tick();
        s.machine_status.clone()
    }

    /// Sets the machine's status.
    pub fn set_status(&self, status: &str) {
        self.lock().machine_status = status.into();
    }

    /// The block devices now.
    pub fn block_devices(&self) -> Vec<BlockDevice> {
        self.lock().block_devices.clone()
    }

    /// Answers the next `times` requests whose [`Call::line`] starts with
    /// `prefix` with `status` (and a short text body) instead of serving
    /// them.
    pub fn fail_next(&self, prefix: &str, times: usize, status: u16) {
        self.lock().faults.push(Fault {
            prefix: prefix.into(),
            remaining: times,
            status,
        });
    }

    /// Power commands sent to the BMC, with their replies.
    pub fn bmc_events(&self) -> Vec<String> {
        self.lock().bmc_events.clone()
    }
}

impl State {
    /// Applies the state changes whose time has come.
    fn tick(&mut self) {
        let now = Instant::now();
        if self.machine_status == "Deploying"
            && self
                .deploy_started
                .is_some_and(|t| now >= t + self.config.deploy_time)
        {
            match self.config.deploy_outcome {
                DeployOutcome::Deployed => {
                    self.machine_status = "Deployed".into();
                    self.status_message = "Deployed".into();
                    self.power("on");
                }
                DeployOutcome::Failed => {
                    self.machine_status = "Failed deployment".into();
                    self.status_message =
                        "Installation failed (refer to the installation log for more information)."
                            .into();
                    self.power("off");
                }
                DeployOutcome::Never => {}
            }
        }
        if self.machine_status == "Releasing"
            && self.config.release_outcome == ReleaseOutcome::Ready
            && self
                .release_started
                .is_some_and(|t| now >= t + self.config.release_time)
        {
            self.machine_status = "Ready".into();
            self.status_message = "Released".into();
        }
    }

    fn power(&mut self, action: &str) {
        let Some(addr) = self.config.bmc else { return };
        let reply = (|| -> std::io::Result<String> {
            let mut s = std::net::TcpStream::connect_timeout(&addr, Duration::from_secs(2))?;
            s.set_read_timeout(Some(Duration::from_secs(2)))?;
            writeln!(s, "{action}")?;
            let mut line = String::new();
            BufReader::new(s).read_line(&mut line)?;
            Ok(line.trim().to_string())
        })();
        let text = match reply {
            Ok(r) => format!("{action}: {r}"),
            Err(e) => format!("{action}: error {e}"),
        };
        self.bmc_events.push(text);
    }

    fn machine_json(&self) -> Value {
        json!({
            "system_id": self.config.system_id,
            "hostname": format!("node-{}", self.config.system_id),
            "status_name": self.machine_status,
            "status_message": self.status_message,
            "ip_addresses": if self.machine_status == "Deployed" || self.machine_status == "Deploying" {
                self.config.ip_addresses.clone()
            } else {
                Vec::new()
            },
            "osystem": "ubuntu",
            "distro_series": self.distro_series,
            "resource_uri": format!("/MAAS/api/2.0/machines/{}/", self.config.system_id),
        })
    }

    fn fresh_id(&mut self) -> u64 {
        self.next_id += 1;
        self.next_id
    }
}

fn fs_json(fs: &Option<Filesystem>) -> Value {
    match fs {
        None => Value::Null,
        Some(f) => json!({
            "fstype": f.fstype,
            "label": f.label,
            "uuid": "00000000-0000-0000-0000-000000000000",
            "mount_point": f.mount_point,
            "mount_options": null,
        }),
    }
}

fn partition_json(system_id: &str, device: &BlockDevice, p: &Partition) -> Value {
    json!({
        "system_id": system_id,
        "device_id": device.id,
        "id": p.id,
        "type": "partition",
        "size": p.size,
        "path": format!("/dev/disk/by-dname/{}-part{}", device.name, p.id),
        "filesystem": fs_json(&p.filesystem),
        "resource_uri": format!("/MAAS/api/2.0/nodes/{system_id}/blockdevices/{}/partition/{}", device.id, p.id),
    })
}

fn device_json(system_id: &str, d: &BlockDevice) -> Value {
    json!({
        "system_id": system_id,
        "id": d.id,
        "name": d.name,
        "type": d.kind,
        "size": d.size,
        "path": format!("/dev/disk/by-dname/{}", d.name),
        "available_size": d.size - d.used().min(d.size),
        "used_size": d.used(),
        "partitions": d.partitions.iter().map(|p| partition_json(system_id, d, p)).collect::<Vec<_>>(),
        "filesystem": fs_json(&d.filesystem),
        "resource_uri": format!("/MAAS/api/2.0/nodes/{system_id}/blockdevices/{}/", d.id),
    })
}

/// Decodes `application/x-www-form-urlencoded` text.
pub fn parse_form(text: &str) -> Vec<(String, String)> {
    text.split('&')
        .filter(|p| !p.is_empty())
        .map(|pair| {
            let (k, v) = pair.split_once('=').unwrap_or((pair, ""));
            (percent_decode(k), percent_decode(v))
        })
        .collect()
}

fn percent_decode(s: &str) -> String {
    let bytes = s.as_bytes();
    let mut out = Vec::with_capacity(bytes.len());
    let mut i = 0;
    while i < bytes.len() {
        match bytes[i] {
            b'+' => out.push(b' '),
            b'%' if i + 2 < bytes.len() => {
                let hex = std::str::from_utf8(&bytes[i + 1..i + 3]).unwrap_or("");
                match u8::from_str_radix(hex, 16) {
                    Ok(b) => {
                        out.push(b);
                        i += 2;
                    }
                    Err(_) => out.push(b'%'),
                }
            }
            b => out.push(b),
        }
        i += 1;
    }
    String::from_utf8_lossy(&out).into_owned()
}

/// The `k="v"` parameters of an `OAuth ...` header (values percent-decoded).
fn oauth_params(header: &str) -> Option<Vec<(String, String)>> {
    let rest = header.strip_prefix("OAuth ")?;
    let mut out = Vec::new();
    for part in rest.split(',') {
        let (k, v) = part.trim().split_once('=')?;
        let v = v.strip_prefix('"')?.strip_suffix('"')?;
        out.push((k.to_string(), percent_decode(v)));
    }
    Some(out)
}

fn unauthorized(message: &str) -> Reply {
    Reply::status_text(401, format!("Authorization Error: {message}"))
}

fn check_auth(state: &mut State, req: &Request) -> Result<(), Reply> {
    let Some(header) = req.header("authorization") else {
        return Err(unauthorized("no credentials (an OAuth header is required)"));
    };
    let Some(params) = oauth_params(header) else {
        return Err(unauthorized("malformed OAuth header"));
    };
    let get = |name: &str| {
        params
            .iter()
            .find(|(k, _)| k == name)
            .map(|(_, v)| v.as_str())
    };
    let (ck, tk, ts) = &state.config.key;
    if get("oauth_signature_method") != Some("PLAINTEXT") {
        return Err(unauthorized("unsupported signature method"));
    }
    if get("oauth_version").is_some_and(|v| v != "1.0") {
        return Err(unauthorized("unsupported OAuth version"));
    }
    if get("oauth_consumer_key") != Some(ck.as_str()) {
        return Err(unauthorized("Invalid consumer"));
    }
    if get("oauth_token") != Some(tk.as_str()) {
        return Err(unauthorized(&format!(
            "'Invalid access token: {}'",
            get("oauth_token").unwrap_or("")
        )));
    }
    if get("oauth_signature") != Some(format!("&{ts}").as_str()) {
        return Err(unauthorized("Invalid signature"));
    }
    let now = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_secs())
        .unwrap_or(0);
    match get("oauth_timestamp").and_then(|t| t.parse::<u64>().ok()) {
        Some(t) if t.abs_diff(now) <= 300 => {}
        _ => return Err(unauthorized("Expired timestamp")),
    }
    match get("oauth_nonce") {
        Some(n) if !n.is_empty() => {
            if !state.nonces.insert(n.to_string()) {
                return Err(unauthorized("Nonce already used"));
            }
        }
        _ => return Err(unauthorized("Missing nonce")),
    }
    Ok(())
}

fn handle(shared: &Arc<Mutex<State>>, req: &Request) -> Reply {
    let mut state = shared.lock().unwrap_or_else(|e| e.into_inner());
    let (path, query) = match req.path.split_once('?') {
        Some((p, q)) => (p, q),
        None => (req.path.as_str(), ""),
    };
    let query_params = parse_form(query);
    let op = query_params
        .iter()
        .find(|(k, _)| k == "op")
        .map(|(_, v)| v.clone());
    let rel = path.strip_prefix(API_PREFIX);
    let content_type = req.header("content-type").unwrap_or("");
    let body_params = if req.body.is_empty() {
        Ok(Vec::new())
    } else if content_type.starts_with("application/x-www-form-urlencoded") {
        Ok(parse_form(&String::from_utf8_lossy(&req.body)))
    } else {
        Err(Reply::status_text(
            415,
            format!("unsupported content type {content_type:?}"),
        ))
    };
    let mut call = Call {
        method: req.method.clone(),
        path: match rel {
            Some(r) => format!("{r}{}", &req.path[path.len()..]),
            None => req.path.clone(),
        },
        op: op.clone(),
        params: body_params.clone().unwrap_or_default(),
        status: 0,
    };
    let reply = (|| -> Result<Reply, Reply> {
        let Some(rel) = rel else {
            return Ok(Reply::status_text(404, "not a MAAS API path"));
        };
        check_auth(&mut state, req)?;
        let body = body_params?;
        let line = call.line();
        if let Some(f) = state
            .faults
            .iter_mut()
            .find(|f| f.remaining > 0 && line.starts_with(&f.prefix))
        {
            f.remaining -= 1;
            return Ok(Reply::status_text(f.status, "simulated failure"));
        }
        state.tick();
        let mut params: Vec<(String, String)> = query_params
            .into_iter()
            .filter(|(k, _)| k != "op")
            .collect();
        params.extend(body);
        Ok(route(&mut state, &req.method, rel, op.as_deref(), &params))
    })()
    .unwrap_or_else(|r| r);
    call.status = match reply {
        Reply::Full { status, .. } => status,
        _ => 200,
    };
    state.calls.push(call);
    reply
}

fn param<'a>(params: &'a [(String, String)], name: &str) -> Option<&'a str> {
    params
        .iter()
        .find(|(k, _)| k == name)
        .map(|(_, v)| v.as_str())
}

fn bad_request(field: &str, message: &str) -> Reply {
    Reply::Full {
        status: 400,
        headers: vec![("content-type".into(), "application/json".into())],
        body: json!({ field: [message] }).to_string().into(),
    }
}

fn conflict(message: impl Into<String>) -> Reply {
    Reply::status_text(409, message)
}

fn not_found() -> Reply {
    Reply::status_text(404, "Not Found")
}

fn route(
    state: &mut State,
    method: &str,
    rel: &str,
    op: Option<&str>,
    params: &[(String, String)],
) -> Reply {
    let trailing = rel.ends_with('/');
    let parts: Vec<&str> = rel.split('/').filter(|p| !p.is_empty()).collect();
    let sid = state.config.system_id.clone();
    // Partition paths are the only ones without a trailing slash in MAAS.
    let is_partition = parts.len() == 6 && matches!(parts[4], "partition" | "partitions");
    if trailing == is_partition {
        return not_found();
    }
    match (method, parts.as_slice(), op) {
        ("GET", ["version"], None) => Reply::json(&json!({
            "capabilities": ["networks-management", "static-ipaddresses", "storage-deployment-ubuntu"],
            "version": state.config.version,
            "subversion": "",
        })),
        ("GET", ["machines", id], None) if *id == sid => Reply::json(&state.machine_json()),
        ("POST", ["machines"], Some("allocate")) => {
            if param(params, "system_id") != Some(sid.as_str()) {
                return conflict("No machine available matching the given constraints.");
            }
            if state.machine_status != "Ready" {
                return conflict(format!(
                    "No machine available matching the given constraints (machine is {}).",
                    state.machine_status
                ));
            }
            state.machine_status = "Allocated".into();
            Reply::json(&state.machine_json())
        }
        ("POST", ["machines", id], Some(op)) if *id == sid => machine_op(state, op, params),
        ("GET", ["nodes", id, "blockdevices"], None) if *id == sid => Reply::json(&Value::Array(
            state
                .block_devices
                .iter()
                .map(|d| device_json(&sid, d))
                .collect(),
        )),
        (_, ["nodes", id, "blockdevices", bid, rest @ ..], _) if *id == sid => {
            let Ok(bid) = bid.parse::<u64>() else {
                return not_found();
            };
            storage(state, method, bid, rest, op, params)
        }
        ("GET", ["nodes", id, "results"], None) if *id == sid => {
            let kind = param(params, "type");
            if kind.is_some_and(|k| !matches!(k, "installation" | "install" | "2")) {
                return Reply::json(&json!([]));
            }
            Reply::json(&Value::Array(
                state
                    .script_sets
                    .iter()
                    .map(|s| {
                        json!({
                            "id": s.id,
                            "system_id": sid,
                            "type": 2,
                            "type_name": "Installation",
                            "results": [{"id": s.id * 10, "name": "/tmp/install.log", "status_name": "Passed"}],
                        })
                    })
                    .collect(),
            ))
        }
        ("GET", ["nodes", id, "results", rid], Some("download")) if *id == sid => {
            match state.script_sets.iter().find(|s| s.id.to_string() == *rid) {
                Some(s) => Reply::text(s.output.clone()),
                None => not_found(),
            }
        }
        _ => not_found(),
    }
}

fn machine_op(state: &mut State, op: &str, params: &[(String, String)]) -> Reply {
    let status = state.machine_status.clone();
    match op {
        "release" => {
            match status.as_str() {
                "Ready" | "Releasing" => {}
                "Allocated" | "Deploying" | "Deployed" | "Failed deployment" | "Broken"
                | "Failed releasing" => {
                    state.machine_status = "Releasing".into();
                    state.status_message = "Releasing".into();
                    state.release_started = Some(Instant::now());
                    state.broken_while_releasing = false;
                    state.power("off");
                }
                other => {
                    return conflict(format!(
                        "Machine cannot be released in its current state ('{other}')."
                    ));
                }
            }
            Reply::json(&state.machine_json())
        }
        "deploy" => {
            if status != "Allocated" {
                return conflict(format!(
                    "Cannot deploy: machine is {status}; it must be allocated first."
                ));
            }
            if let Some(data) = param(params, "user_data")
                && !is_base64(data)
            {
                return bad_request("user_data", "user_data must be base64 encoded");
            }
            state.distro_series = param(params, "distro_series").unwrap_or("").to_string();
            state.machine_status = "Deploying".into();
            state.status_message = "Deploying".into();
            state.deploy_started = Some(Instant::now());
            let id = state.script_sets.iter().map(|s| s.id).max().unwrap_or(0) + 1;
            let output = state.config.install_log.clone();
            state.script_sets.push(ScriptSet { id, output });
            Reply::json(&state.machine_json())
        }
        "set_storage_layout" => {
            if status != "Ready" {
                return conflict(
                    "Cannot change the storage layout on a machine that is not Ready.",
                );
            }
            if param(params, "storage_layout") != Some("flat") {
                return bad_request("storage_layout", "unsupported layout");
            }
            let next = state.fresh_id();
            let mut first = true;
            for d in state
                .block_devices
                .iter_mut()
                .filter(|d| d.kind == "physical")
            {
                d.partitions.clear();
                d.filesystem = None;
                if first {
                    d.partitions.push(Partition {
                        id: next,
                        size: d.size,
                        filesystem: Some(Filesystem::mounted("ext4", "/")),
                    });
                    first = false;
                }
            }
            Reply::json(&state.machine_json())
        }
        "mark_broken" => {
            state.broken_while_releasing = status == "Releasing";
            state.machine_status = "Broken".into();
            Reply::json(&state.machine_json())
        }
        "mark_fixed" => {
            if status != "Broken" {
                return conflict(format!(
                    "Cannot mark fixed: machine is {status}, not Broken."
                ));
            }
            state.machine_status = match state.config.release_outcome {
                ReleaseOutcome::Never | ReleaseOutcome::AfterPowerOff
                    if state.broken_while_releasing =>
                {
                    "Releasing".into()
                }
                _ => "Ready".into(),
            };
            Reply::json(&state.machine_json())
        }
        "power_off" => {
            state.power("off");
            if status == "Releasing"
                && state.config.release_outcome == ReleaseOutcome::AfterPowerOff
            {
                state.machine_status = "Ready".into();
            }
            Reply::json(&state.machine_json())
        }
        _ => bad_request("op", &format!("unknown operation {op}")),
    }
}

fn storage(
    state: &mut State,
    method: &str,
    bid: u64,
    rest: &[&str],
    op: Option<&str>,
    params: &[(String, String)],
) -> Reply {
    let status = state.machine_status.clone();
    let ready = status == "Ready";
    let editable = ready || status == "Allocated";
    let sid = state.config.system_id.clone();
    let Some(dev_index) = state.block_devices.iter().position(|d| d.id == bid) else {
        return not_found();
    };
    match (method, rest, op) {
        ("PUT", [], None) => {
            let dev = &mut state.block_devices[dev_index];
            if let Some(name) = param(params, "name") {
                dev.name = name.to_string();
            }
            Reply::json(&device_json(&sid, dev))
        }
        ("POST", [], Some(op)) => {
            if !editable {
                return conflict(format!(
                    "Cannot {op} block device because the machine is not Ready or Allocated."
                ));
            }
            if op == "set_boot_disk" {
                if state.block_devices[dev_index].kind != "physical" {
                    return bad_request(
                        "id",
                        "Cannot set a virtual block device as the boot disk.",
                    );
                }
                for d in &mut state.block_devices {
                    d.boot = d.id == bid;
                }
                return Reply::json(&json!("OK"));
            }
            let dev = &mut state.block_devices[dev_index];
            match op {
                "format" => {
                    if !dev.partitions.is_empty() {
                        return bad_request(
                            "__all__",
                            "Cannot format block device with partitions.",
                        );
                    }
                    let Some(fstype) = param(params, "fstype") else {
                        return bad_request("fstype", "This field is required.");
                    };
                    dev.filesystem = Some(Filesystem {
                        fstype: fstype.into(),
                        label: param(params, "label").map(str::to_string),
                        mount_point: None,
                    });
                }
                "unformat" => match &dev.filesystem {
                    None => return bad_request("__all__", "Block device is not formatted."),
                    Some(f) if f.mount_point.is_some() => {
                        return bad_request(
                            "__all__",
                            "Filesystem is mounted and cannot be unformatted.",
                        );
                    }
                    Some(_) => dev.filesystem = None,
                },
                "mount" => {
                    let Some(fs) = dev.filesystem.as_mut() else {
                        return bad_request("__all__", "Block device is not formatted.");
                    };
                    let Some(mp) = param(params, "mount_point") else {
                        return bad_request("mount_point", "This field is required.");
                    };
                    fs.mount_point = Some(mp.into());
                }
                "unmount" => match dev.filesystem.as_mut() {
                    Some(fs) if fs.mount_point.is_some() => fs.mount_point = None,
                    _ => return bad_request("__all__", "Filesystem is already unmounted."),
                },
                other => return bad_request("op", &format!("unknown operation {other}")),
            }
            Reply::json(&device_json(&sid, dev))
        }
        ("POST", ["partitions"], None) => {
            if !ready {
                return conflict("Cannot create partition because the node is not Ready.");
            }
            let new_id = state.fresh_id();
            let dev = &mut state.block_devices[dev_index];
            let free = dev.size.saturating_sub(dev.used());
            let size = match param(params, "size") {
                None => free,
                Some(s) => match s.parse::<u64>() {
                    Ok(n) => n,
                    Err(_) => return bad_request("size", "Enter a whole number."),
                },
            };
            if size == 0 || size > free {
                return bad_request(
                    "size",
                    &format!("Partition of {size} bytes does not fit: {free} bytes are free."),
                );
            }
            dev.partitions.push(Partition {
                id: new_id,
                size,
                filesystem: None,
            });
            let p = dev.partitions.last().cloned().unwrap_or(Partition {
                id: new_id,
                size,
                filesystem: None,
            });
            Reply::json(&partition_json(&sid, dev, &p))
        }
        (_, [_, pid], op) => {
            let dev = &mut state.block_devices[dev_index];
            let Some(pi) = dev.partitions.iter().position(|p| p.id.to_string() == *pid) else {
                return not_found();
            };
            match (method, op) {
                ("DELETE", None) => {
                    if !ready {
                        return conflict(
                            "Cannot delete block device because the node is not Ready.",
                        );
                    }
                    dev.partitions.remove(pi);
                    Reply::status(204)
                }
                ("POST", Some(op)) => {
                    if !editable {
                        return conflict(format!(
                            "Cannot {op} partition because the node is not Ready or Allocated."
                        ));
                    }
                    let part = &mut dev.partitions[pi];
                    match op {
                        "format" => {
                            let Some(fstype) = param(params, "fstype") else {
                                return bad_request("fstype", "This field is required.");
                            };
                            part.filesystem = Some(Filesystem {
                                fstype: fstype.into(),
                                label: param(params, "label").map(str::to_string),
                                mount_point: None,
                            });
                        }
                        "mount" => {
                            let Some(fs) = part.filesystem.as_mut() else {
                                return bad_request("__all__", "Partition is not formatted.");
                            };
                            let Some(mp) = param(params, "mount_point") else {
                                return bad_request("mount_point", "This field is required.");
                            };
                            fs.mount_point = Some(mp.into());
                        }
                        other => return bad_request("op", &format!("unknown operation {other}")),
                    }
                    let p = part.clone();
                    Reply::json(&partition_json(&sid, dev, &p))
                }
                _ => not_found(),
            }
        }
        _ => not_found(),
    }
}

fn is_base64(s: &str) -> bool {
    let s = s.trim_end_matches('=');
    !s.is_empty()
        && s.bytes()
            .all(|b| b.is_ascii_alphanumeric() || b == b'+' || b == b'/')
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::io::Read;

    struct Client {
        addr: SocketAddr,
        n: u64,
    }

    impl Client {
        fn send(
            &mut self,
            method: &str,
            path: &str,
            body: &str,
            auth: Option<String>,
        ) -> (u16, String) {
            self.n += 1;
            let auth = auth.unwrap_or_else(|| {
                format!(
                    "OAuth oauth_version=\"1.0\", oauth_signature_method=\"PLAINTEXT\", oauth_consumer_key=\"simconsumer\", oauth_token=\"simtoken\", oauth_signature=\"%26simsecret\", oauth_nonce=\"n{}\", oauth_timestamp=\"{}\"",
                    self.n,
                    SystemTime::now().duration_since(UNIX_EPOCH).unwrap().as_secs()
                )
            });
            let mut s = std::net::TcpStream::connect(self.addr).unwrap();
            s.set_read_timeout(Some(Duration::from_secs(5))).unwrap();
            write!(
                s,
                "{method} {API_PREFIX}{path} HTTP/1.1\r\nHost: x\r\nConnection: close\r\nAuthorization: {auth}\r\nContent-Type: application/x-www-form-urlencoded\r\nContent-Length: {}\r\n\r\n{body}",
                body.len()
            )
            .unwrap();
            let mut out = String::new();
            let _ = s.read_to_string(&mut out);
            let status = out[9..12].parse().unwrap();
            let body = out.split("\r\n\r\n").nth(1).unwrap_or("").to_string();
            (status, body)
        }
    }

    #[test]
    fn checks_credentials_and_nonces() {
        let maas = MaasSim::builder("m1").start("127.0.0.1").unwrap();
        let mut c = Client {
            addr: maas.server.addr(),
            n: 0,
        };
        assert_eq!(c.send("GET", "machines/m1/", "", None).0, 200);
        let forged = "OAuth oauth_signature_method=\"PLAINTEXT\", oauth_consumer_key=\"simconsumer\", oauth_token=\"simtoken\", oauth_signature=\"&wrong\", oauth_nonce=\"x\", oauth_timestamp=\"1\"".to_string();
        let (status, body) = c.send("GET", "machines/m1/", "", Some(forged));
        assert_eq!(status, 401);
        assert!(body.contains("Authorization Error"), "{body}");
        let now = SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .unwrap()
            .as_secs();
        let replay = format!(
            "OAuth oauth_signature_method=\"PLAINTEXT\", oauth_consumer_key=\"simconsumer\", oauth_token=\"simtoken\", oauth_signature=\"&simsecret\", oauth_nonce=\"same\", oauth_timestamp=\"{now}\""
        );
        assert_eq!(c.send("GET", "version/", "", Some(replay.clone())).0, 200);
        assert_eq!(c.send("GET", "version/", "", Some(replay)).0, 401);
        let statuses: Vec<u16> = maas.calls().iter().map(|c| c.status).collect();
        assert_eq!(statuses, [200, 401, 200, 401]);
    }

    #[test]
    fn machine_life_cycle() {
        let maas = MaasSim::builder("m1")
            .status("Deployed")
            .ip_addresses(&["10.0.0.9"])
            .deploy_time(Duration::from_millis(50))
            .release_time(Duration::from_millis(20))
            .start("127.0.0.1")
            .unwrap();
        let mut c = Client {
            addr: maas.server.addr(),
            n: 0,
        };
        // Partitions cannot change while deployed.
        assert_eq!(
            c.send("DELETE", "nodes/m1/blockdevices/1/partition/11", "", None)
                .0,
            409
        );
        assert_eq!(c.send("POST", "machines/m1/?op=release", "", None).0, 200);
        assert_eq!(maas.status(), "Releasing");
        let deadline = Instant::now() + Duration::from_secs(5);
        while maas.status() != "Ready" && Instant::now() < deadline {
            std::thread::sleep(Duration::from_millis(10));
        }
        assert_eq!(maas.status(), "Ready");
        assert_eq!(
            c.send("DELETE", "nodes/m1/blockdevices/1/partition/11/", "", None)
                .0,
            404
        );
        assert_eq!(
            c.send("DELETE", "nodes/m1/blockdevices/1/partition/11", "", None)
                .0,
            204
        );
        let (status, body) = c.send(
            "POST",
            "nodes/m1/blockdevices/1/partitions/",
            "size=1000",
            None,
        );
        assert_eq!(status, 200, "{body}");
        let part: Value = serde_json::from_str(&body).unwrap();
        let pid = part["id"].as_u64().unwrap();
        assert_eq!(
            c.send(
                "POST",
                &format!("nodes/m1/blockdevices/1/partition/{pid}?op=mount"),
                "mount_point=/",
                None
            )
            .0,
            400
        );
        assert_eq!(
            c.send(
                "POST",
                &format!("nodes/m1/blockdevices/1/partition/{pid}?op=format"),
                "fstype=ext4&label=root",
                None
            )
            .0,
            200
        );
        assert_eq!(
            c.send(
                "POST",
                &format!("nodes/m1/blockdevices/1/partition/{pid}?op=mount"),
                "mount_point=%2F",
                None
            )
            .0,
            200
        );
        assert_eq!(
            maas.block_devices()[0].partitions[0].filesystem,
            Some(Filesystem {
                fstype: "ext4".into(),
                label: Some("root".into()),
                mount_point: Some("/".into())
            })
        );
        assert_eq!(
            c.send(
                "POST",
                "machines/m1/?op=deploy",
                "distro_series=jammy",
                None
            )
            .0,
            409
        );
        assert_eq!(
            c.send("POST", "machines/?op=allocate", "system_id=m1", None)
                .0,
            200
        );
        assert_eq!(
            c.send(
                "POST",
                "machines/m1/?op=deploy",
                "distro_series=jammy&user_data=a%20b",
                None
            )
            .0,
            400
        );
        assert_eq!(
            c.send(
                "POST",
                "machines/m1/?op=deploy",
                "distro_series=jammy",
                None
            )
            .0,
            200
        );
        let (_, results) = c.send("GET", "nodes/m1/results/?type=installation", "", None);
        let results: Value = serde_json::from_str(&results).unwrap();
        assert_eq!(results.as_array().unwrap().len(), 2);
        assert_eq!(
            c.send("GET", "nodes/m1/results/8/?op=download", "", None).1,
            "curtin: Installation started\ncurtin: Installation finished\n"
        );
        let deadline = Instant::now() + Duration::from_secs(5);
        while maas.status() != "Deployed" && Instant::now() < deadline {
            std::thread::sleep(Duration::from_millis(10));
        }
        let (_, machine) = c.send("GET", "machines/m1/", "", None);
        let machine: Value = serde_json::from_str(&machine).unwrap();
        assert_eq!(machine["status_name"], "Deployed");
        assert_eq!(machine["ip_addresses"], json!(["10.0.0.9"]));
        assert_eq!(
            maas.lines()[11],
            "POST machines/m1/?op=deploy distro_series=jammy"
        );
    }

    #[test]
    fn stuck_releases_and_faults() {
        let maas = MaasSim::builder("m1")
            .status("Deployed")
            .release_outcome(ReleaseOutcome::AfterMarkFixed)
            .release_time(Duration::ZERO)
            .start("127.0.0.1")
            .unwrap();
        let mut c = Client {
            addr: maas.server.addr(),
            n: 0,
        };
        maas.fail_next("POST machines/m1/?op=release", 1, 503);
        assert_eq!(c.send("POST", "machines/m1/?op=release", "", None).0, 503);
        assert_eq!(c.send("POST", "machines/m1/?op=release", "", None).0, 200);
        std::thread::sleep(Duration::from_millis(20));
        assert_eq!(maas.status(), "Releasing");
        assert_eq!(
            c.send("POST", "machines/m1/?op=mark_fixed", "", None).0,
            409
        );
        assert_eq!(
            c.send("POST", "machines/m1/?op=mark_broken", "", None).0,
            200
        );
        assert_eq!(
            c.send("POST", "machines/m1/?op=mark_fixed", "", None).0,
            200
        );
        assert_eq!(maas.status(), "Ready");
        assert_eq!(
            parse_form("a=1&b=x+y%2Fz&c"),
            vec![
                ("a".to_string(), "1".to_string()),
                ("b".to_string(), "x y/z".to_string()),
                ("c".to_string(), String::new()),
            ]
        );
    }
}
