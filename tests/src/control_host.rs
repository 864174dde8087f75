//! A simulated control host (MuxPi, SDWire host, "Zapper"): an SSH server
//! built on the [`Dut`] machinery (its own scratch root, fakes for `stm`,
//! `muxctl`, `zstdcat`, `dd` ..., block devices that are [`Card`]s), plus
//! the control host's REST API (reference §3.3 and §4.13.1) on its own
//! port, which goes down and comes back with the host's power.
//!
//! # REST API
//!
//! | request | answer |
//! |---|---|
//! | `GET /health` | 200 `{"status": "OK"}` |
//! | `POST /api/v1/system/poweroff` | 200, then the host powers off (SSH and REST refuse) until its power controller turns it on (`control_host_reboot_script`) |
//! | `POST /api/v1/system/setup/<phase>` | 200; recorded with its body ([`ControlHost::setup_calls`]) |
//! | `POST /api/v1/provision` (JSON `{"method", "args", "kwargs"}`) | 200 `{"job_id"}`; the job runs (see below) |
//! | `POST /api/v1/provision/multipart` (`request` JSON field, `boot_binary` file) | same, with the file as the image |
//! | `GET /api/v1/provision/<id>/logs` | Server-Sent Events `id: <n>` / `data: {"level", "message"}`, resumed after `Last-Event-ID`; ends when the job ends |
//! | `GET /api/v1/provision/<id>` | `{"job_id", "status": "running"\|"completed"\|"failed", "error"}` |
//!
//! A provisioning job logs what it does; with an image (`kwargs.url`, the
//! first of `kwargs.urls`, `kwargs.control_host_iso_url`, or the
//! multipart file) and a target device ([`ControlHostBuilder::target`]) it
//! downloads the image, writes it (zstd-decompressed) to the target's card,
//! switches the card to the DUT, power-cycles the DUT and waits for it to
//! boot, so the DUT then runs the new image. [`ProvisionFault`] makes jobs
//! fail, streams drop after a few events, or an event carry malformed JSON.

use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use bytes::Bytes;
use serde_json::{Value, json};

use crate::card::{Card, MuxSide};
use crate::dut::{Dut, DutBuilder, DutHandle, PowerState};
use crate::web::{Reply, Request, StreamSource, WebServer};

/// The REST port the reference uses.
pub const REST_PORT: u16 = 8000;

/// Faults of provisioning jobs.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ProvisionFault {
    /// Jobs work.
    None,
    /// Jobs fail with this error after their first step.
    Fail(String),
    /// Each log stream is cut after this many events (the job goes on;
    /// clients resume with `Last-Event-ID`).
    DropStreamAfter(usize),
    /// The second event's data is not JSON.
    MalformedEvent,
}

/// One `setup/<phase>` request.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SetupCall {
    pub phase: String,
    pub body: String,
}

struct Subscriber {
    tx: tokio::sync::mpsc::UnboundedSender<Bytes>,
    sent: usize,
}

struct Job {
    id: String,
    /// (event id, data) in order.
    events: Vec<(u64, String)>,
    status: &'static str,
    error: Option<String>,
    subscribers: Vec<Subscriber>,
    request: Value,
}

struct State {
    jobs: Mutex<BTreeMap<String, Job>>,
    setup: Mutex<Vec<SetupCall>>,
    fault: Mutex<ProvisionFault>,
    target: Option<(DutHandle, Card)>,
    next_job: Mutex<u64>,
    step_delay: Duration,
    boot_timeout: Duration,
    extra_ca: Option<String>,
}

fn lock<T>(m: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|e| e.into_inner())
}

impl State {
    fn push(&self, job_id: &str, level: &str, message: &str) {
        let data = json!({"level": level, "message": message}).to_string();
        self.push_raw(job_id, data);
    }

    fn push_raw(&self, job_id: &str, mut data: String) {
        let fault = lock(&self.fault).clone();
        let mut jobs = lock(&self.jobs);
        let Some(job) = jobs.get_mut(job_id) else {
            return;
        };
        let id = job.events.len() as u64 + 1;
        if fault == ProvisionFault::MalformedEvent && id == 2 {
            data = "{\"level\": \"info\", \"message\": oops".into();
        }
        let frame = Bytes::from(format!("id: {id}\ndata: {data}\n\n"));
        job.events.push((id, data));
        let limit = match fault {
            ProvisionFault::DropStreamAfter(n) => n.max(1),
            _ => usize::MAX,
        };
        job.subscribers.retain_mut(|s| {
            if s.tx.send(frame.clone()).is_err() {
                return false;
            }
            s.sent += 1;
            s.sent < limit
        });
    }

    fn finish(&self, job_id: &str, error: Option<String>) {
        let mut jobs = lock(&self.jobs);
        if let Some(job) = jobs.get_mut(job_id) {
            job.status = if error.is_some() {
                "failed"
            } else {
                "completed"
            };
            job.error = error;
            // Streams end with the job.
            job.subscribers.clear();
        }
    }
}

/// Configures a [`ControlHost`].
pub struct ControlHostBuilder {
    ip: String,
    dut: DutBuilder,
    rest_port: Option<u16>,
    target: Option<(DutHandle, Card)>,
    fault: ProvisionFault,
    step_delay: Duration,
    boot_timeout: Duration,
    extra_ca: Option<String>,
}

impl ControlHostBuilder {
    /// Changes the SSH side (user, password, boot time, faults ...).
    pub fn ssh(mut self, f: impl FnOnce(DutBuilder) -> DutBuilder) -> Self {
        self.dut = f(self.dut);
        self
    }

    /// Attaches a card (its block device appears while the mux points
    /// here).
    pub fn attach_card(mut self, card: Card) -> Self {
        self.dut = self.dut.attach_card(card);
        self
    }

    /// The REST port (default: 8000 when free on the host's IP, else any).
    pub fn rest_port(mut self, port: u16) -> Self {
        self.rest_port = Some(port);
        self
    }

    /// The device provisioning jobs flash (through `card`) and power-cycle.
    pub fn target(mut self, dut: DutHandle, card: Card) -> Self {
        self.target = Some((dut, card));
        self
    }

    /// Provisioning faults.
    pub fn provision_fault(mut self, fault: ProvisionFault) -> Self {
        self.fault = fault;
        self
    }

    /// Pause between the log events of a job (default 20 ms).
    pub fn step_delay(mut self, d: Duration) -> Self {
        self.step_delay = d;
        self
    }

    /// Extra CA certificate (PEM) trusted for image downloads.
    pub fn extra_ca(mut self, pem: &str) -> Self {
        self.extra_ca = Some(pem.to_string());
        self
    }

    /// Starts the control host (up).
    pub fn start(self) -> anyhow::Result<ControlHost> {
        ControlHost::start_with(self)
    }
}

/// A running control host; stops when dropped.
pub struct ControlHost {
    state: Arc<State>,
    web: Option<Arc<WebServer>>,
    stop: Arc<AtomicBool>,
    watcher: Option<std::thread::JoinHandle<()>>,
    dut: Dut,
}

impl ControlHost {
    /// A builder for a control host on the loopback address `ip`.
    pub fn builder(ip: &str) -> ControlHostBuilder {
        ControlHostBuilder {
            ip: ip.to_string(),
            dut: Dut::builder(ip).name(&format!("ctl-{}", ip.replace('.', "-"))),
            rest_port: None,
            target: None,
            fault: ProvisionFault::None,
            step_delay: Duration::from_millis(20),
            boot_timeout: Duration::from_secs(60),
            extra_ca: None,
        }
    }

    fn start_with(b: ControlHostBuilder) -> anyhow::Result<ControlHost> {
        let dut = b.dut.start()?;
        let state = Arc::new(State {
            jobs: Mutex::new(BTreeMap::new()),
            setup: Mutex::new(Vec::new()),
            fault: Mutex::new(b.fault),
            target: b.target,
            next_job: Mutex::new(0),
            step_delay: b.step_delay,
            boot_timeout: b.boot_timeout,
            extra_ca: b.extra_ca,
        });
        let handler = {
            let state = state.clone();
            let host = dut.handle();
            Arc::new(move |r: &Request| handle(&state, &host, r))
        };
        let web = match b.rest_port {
            Some(port) => WebServer::start_on(&format!("{}:{port}", b.ip), handler)?,
            None => WebServer::start_on(&format!("{}:{REST_PORT}", b.ip), handler.clone())
                .or_else(|_| WebServer::start_on(&format!("{}:0", b.ip), handler))?,
        };
        let web = Arc::new(web);
        // The REST API follows the host's power.
        let (tx, rx) = std::sync::mpsc::channel();
        dut.handle().watch_listening(tx);
        let stop = Arc::new(AtomicBool::new(false));
        let watcher = {
            let web = web.clone();
            let stop = stop.clone();
            std::thread::Builder::new()
                .name("labsim-ctl-power".into())
                .spawn(move || {
                    while !stop.load(Ordering::SeqCst) {
                        match rx.recv_timeout(Duration::from_millis(50)) {
                            Ok(up) => web.set_refusing(!up),
                            Err(std::sync::mpsc::RecvTimeoutError::Timeout) => {}
                            Err(_) => break,
                        }
                    }
                })?
        };
        Ok(ControlHost {
            state,
            web: Some(web),
            stop,
            watcher: Some(watcher),
            dut,
        })
    }

    /// The SSH side (commands, history, fakes, cards, power).
    pub fn ssh(&self) -> &Dut {
        &self.dut
    }

    /// The host's IP (what `control_host` holds).
    pub fn ip(&self) -> String {
        self.dut.ip()
    }

    /// The REST address.
    pub fn rest_addr(&self) -> SocketAddr {
        self.web.as_ref().expect("running").addr()
    }

    /// `http://ip:port` (for `connector_runtime.control_host_url`).
    pub fn url(&self) -> String {
        self.web.as_ref().expect("running").url()
    }

    /// Every REST request so far.
    pub fn requests(&self) -> Vec<Request> {
        self.web.as_ref().expect("running").requests()
    }

    /// The `setup/<phase>` requests so far.
    pub fn setup_calls(&self) -> Vec<SetupCall> {
        lock(&self.state.setup).clone()
    }

    /// The provisioning requests (`{"method", "args", "kwargs"}`) so far.
    pub fn provision_requests(&self) -> Vec<Value> {
        lock(&self.state.jobs)
            .values()
            .map(|j| j.request.clone())
            .collect()
    }

    /// Status of job `id` (`running`, `completed`, `failed`).
    pub fn job_status(&self, id: &str) -> Option<String> {
        lock(&self.state.jobs).get(id).map(|j| j.status.to_string())
    }

    /// Changes the provisioning fault (for jobs' next events).
    pub fn set_provision_fault(&self, fault: ProvisionFault) {
        *lock(&self.state.fault) = fault;
    }
}

impl Drop for ControlHost {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::SeqCst);
        if let Some(t) = self.watcher.take() {
            let _ = t.join();
        }
        // Streams end, then the server (and its handle on the host) goes.
        for job in lock(&self.state.jobs).values_mut() {
            job.subscribers.clear();
        }
        self.web = None;
    }
}

fn json_reply(status: u16, value: Value) -> Reply {
    Reply::Full {
        status,
        headers: vec![("content-type".into(), "application/json".into())],
        body: Bytes::from(value.to_string()),
    }
}

fn handle(state: &Arc<State>, host: &DutHandle, r: &Request) -> Reply {
    let path = r.path_only().to_string();
    match (r.method.as_str(), path.as_str()) {
        ("GET", "/health") => json_reply(200, json!({"status": "OK"})),
        ("POST", "/api/v1/system/poweroff") => {
            let host = host.clone();
            std::thread::spawn(move || {
                // Let the answer leave first.
                std::thread::sleep(Duration::from_millis(100));
                host.power_off();
            });
            json_reply(200, json!({"message": "powering off"}))
        }
        ("POST", p) if p.starts_with("/api/v1/system/setup/") => {
            let phase = p.trim_start_matches("/api/v1/system/setup/").to_string();
            lock(&state.setup).push(SetupCall {
                phase,
                body: String::from_utf8_lossy(&r.body).into_owned(),
            });
            json_reply(200, json!({"message": "ok"}))
        }
        ("POST", "/api/v1/provision") => match serde_json::from_slice::<Value>(&r.body) {
            Ok(request) if request.get("method").is_some_and(Value::is_string) => {
                start_job(state, request, None)
            }
            _ => json_reply(
                400,
                json!({"error": "the body must be JSON {\"method\", \"args\", \"kwargs\"}"}),
            ),
        },
        ("POST", "/api/v1/provision/multipart") => {
            let Some(parts) = multipart(r) else {
                return json_reply(400, json!({"error": "expected a multipart/form-data body"}));
            };
            let request = parts
                .iter()
                .find(|(n, _)| n == "request")
                .and_then(|(_, b)| serde_json::from_slice::<Value>(b).ok());
            let file = parts
                .iter()
                .find(|(n, _)| n == "boot_binary")
                .map(|(_, b)| b.clone());
            match request {
                Some(request) => start_job(state, request, file),
                None => json_reply(400, json!({"error": "missing `request` field"})),
            }
        }
        ("GET", p) if p.starts_with("/api/v1/provision/") => {
            let rest = p.trim_start_matches("/api/v1/provision/");
            if let Some(id) = rest.strip_suffix("/logs") {
                logs(state, id, r.header("last-event-id"))
            } else {
                match lock(&state.jobs).get(rest) {
                    Some(job) => json_reply(
                        200,
                        json!({"job_id": job.id, "status": job.status, "error": job.error}),
                    ),
                    None => json_reply(404, json!({"error": format!("no job {rest}")})),
                }
            }
        }
        _ => json_reply(
            404,
            json!({"error": format!("no route {} {path}", r.method)}),
        ),
    }
}

fn logs(state: &Arc<State>, id: &str, last: Option<&str>) -> Reply {
    let after: u64 = last.and_then(|v| v.trim().parse().ok()).unwrap_or(0);
    let mut jobs = lock(&state.jobs);
    let Some(job) = jobs.get_mut(id) else {
        return json_reply(404, json!({"error": format!("no job {id}")}));
    };
    let (tx, source) = StreamSource::channel();
    let _ = tx.send(Bytes::from_static(b": labsim control host log stream\n\n"));
    let mut sent = 0;
    for (eid, data) in job.events.iter().filter(|(eid, _)| *eid > after) {
        let _ = tx.send(Bytes::from(format!("id: {eid}\ndata: {data}\n\n")));
        sent += 1;
    }
    let limit = match *lock(&state.fault) {
        ProvisionFault::DropStreamAfter(n) => n.max(1),
        _ => usize::MAX,
    };
    if job.status == "running" && sent < limit {
        job.subscribers.push(Subscriber { tx, sent });
    }
    Reply::Stream {
        status: 200,
        headers: vec![
            ("content-type".into(), "text/event-stream".into()),
            ("cache-control".into(), "no-cache".into()),
        ],
        body: source,
    }
}

fn start_job(state: &Arc<State>, request: Value, file: Option<Vec<u8>>) -> Reply {
    let id = {
        let mut n = lock(&state.next_job);
        *n += 1;
        format!("ch-job-{:04}", *n)
    };
    lock(&state.jobs).insert(
        id.clone(),
        Job {
            id: id.clone(),
            events: Vec::new(),
            status: "running",
            error: None,
            subscribers: Vec::new(),
            request: request.clone(),
        },
    );
    let st = state.clone();
    let job_id = id.clone();
    std::thread::spawn(move || {
        let result = run_job(&st, &job_id, &request, file);
        match result {
            Ok(()) => {
                st.push(&job_id, "info", "Provisioning completed");
                st.finish(&job_id, None);
            }
            Err(e) => {
                st.push(&job_id, "error", &format!("Provisioning failed: {e}"));
                st.finish(&job_id, Some(e));
            }
        }
    });
    json_reply(200, json!({"job_id": id}))
}

fn run_job(state: &State, id: &str, request: &Value, file: Option<Vec<u8>>) -> Result<(), String> {
    let pause = || std::thread::sleep(state.step_delay);
    let method = request["method"].as_str().unwrap_or("?");
    let kwargs = &request["kwargs"];
    state.push(
        id,
        "info",
        &format!(
            "Starting {method} for {}",
            kwargs["agent_name"].as_str().unwrap_or("an unnamed agent")
        ),
    );
    pause();
    if let ProvisionFault::Fail(why) = lock(&state.fault).clone() {
        return Err(why);
    }
    let url = kwargs["url"]
        .as_str()
        .or_else(|| kwargs["urls"].get(0).and_then(Value::as_str))
        .or_else(|| kwargs["control_host_iso_url"].as_str())
        .map(str::to_string);
    let image = match (file, url) {
        (Some(bytes), _) => {
            state.push(
                id,
                "info",
                &format!("Received boot_binary ({} bytes)", bytes.len()),
            );
            Some(bytes)
        }
        (None, Some(url)) => {
            state.push(id, "info", &format!("Downloading {url}"));
            let bytes = download(&url, state.extra_ca.as_deref())?;
            state.push(id, "info", &format!("Downloaded {} bytes", bytes.len()));
            Some(bytes)
        }
        (None, None) => None,
    };
    pause();
    let (Some(image), Some((dut, card))) = (image, state.target.as_ref()) else {
        state.push(id, "info", "Nothing to flash");
        return Ok(());
    };
    let raw = if image.starts_with(&[0x28, 0xb5, 0x2f, 0xfd]) {
        zstd::decode_all(&image[..]).map_err(|e| format!("cannot decompress the image: {e}"))?
    } else {
        image
    };
    card.switch(MuxSide::ControlHost);
    state.push(
        id,
        "info",
        &format!("Flashing {} bytes to {}", raw.len(), card.device_path()),
    );
    card.write(&raw)
        .map_err(|e| format!("cannot write {}: {e}", card.device_path()))?;
    pause();
    card.switch(MuxSide::Dut);
    state.push(
        id,
        "info",
        "Switched the media to the DUT; power cycling the DUT",
    );
    dut.power_cycle();
    std::thread::sleep(Duration::from_millis(20));
    let deadline = Instant::now() + state.boot_timeout;
    while dut.state() != PowerState::Up {
        if Instant::now() >= deadline {
            return Err(format!(
                "the DUT did not boot within {} s",
                state.boot_timeout.as_secs()
            ));
        }
        std::thread::sleep(Duration::from_millis(20));
    }
    let name = dut
        .installed_image()
        .and_then(|i| i.pretty_name())
        .unwrap_or_else(|| "unknown".into());
    state.push(id, "info", &format!("The DUT booted {name}"));
    Ok(())
}

fn download(url: &str, extra_ca: Option<&str>) -> Result<Vec<u8>, String> {
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .map_err(|e| e.to_string())?;
    rt.block_on(async {
        let mut builder = reqwest::Client::builder().timeout(Duration::from_secs(120));
        if let Some(pem) = extra_ca {
            let cert = reqwest::Certificate::from_pem(pem.as_bytes()).map_err(|e| e.to_string())?;
            builder = builder.add_root_certificate(cert);
        }
        let client = builder.build().map_err(|e| e.to_string())?;
        let resp = client
            .get(url)
            .send()
            .await
            .map_err(|e| format!("cannot download {url}: {e}"))?;
        if !resp.status().is_success() {
            return Err(format!("cannot download {url}: HTTP {}", resp.status()));
        }
        let bytes = resp
            .bytes()
            .await
            .map_err(|e| format!("cannot download {url}: {e}"))?;
        Ok(bytes.to_vec())
    })
}

/// The parts (name, content) of a `multipart/form-data` body.
fn multipart(r: &Request) -> Option<Vec<(String, Vec<u8>)>> {
    let ct = r.header("content-type")?;
    let boundary = ct
        .split(';')
        .find_map(|p| p.trim().strip_prefix("boundary="))?
        .trim_matches('"');
    let delim = format!("--{boundary}");
    let body = &r.body;
    let mut parts = Vec::new();
    let mut pos = find(body, delim.as_bytes(), 0)?;
    loop {
        pos += delim.len();
        if body[pos..].starts_with(b"--") {
            break;
        }
        let header_end = find(body, b"\r\n\r\n", pos)?;
        let headers = String::from_utf8_lossy(&body[pos..header_end]).into_owned();
        let content_start = header_end + 4;
        let next = find(body, format!("\r\n{delim}").as_bytes(), content_start)?;
        let name = headers
            .split(';')
            .find_map(|p| p.trim().strip_prefix("name="))
            .map(|n| {
                n.split(['\r', '\n'])
                    .next()
                    .unwrap_or("")
                    .trim_matches('"')
                    .to_string()
            })
            .unwrap_or_default();
        parts.push((name, body[content_start..next].to_vec()));
        pos = next + 2;
    }
    Some(parts)
}

fn find(hay: &[u8], needle: &[u8], from: usize) -> Option<usize> {
    if from > hay.len() {
        return None;
    }
    hay[from..]
        .windows(needle.len())
        .position(|w| w == needle)
        .map(|p| p + from)
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::io::{BufRead, BufReader, Read, Write};

    const T: Duration = Duration::from_secs(20);

    fn request(
        addr: SocketAddr,
        method: &str,
        path: &str,
        headers: &str,
        body: &[u8],
    ) -> (u16, String) {
        let mut s = std::net::TcpStream::connect(addr).unwrap();
        s.set_read_timeout(Some(T)).unwrap();
        write!(
            s,
            "{method} {path} HTTP/1.1\r\nHost: x\r\nConnection: close\r\nContent-Length: {}\r\n{headers}\r\n",
            body.len()
        )
        .unwrap();
        s.write_all(body).unwrap();
        let mut out = String::new();
        let _ = s.read_to_string(&mut out);
        let status = out.get(9..12).and_then(|c| c.parse().ok()).unwrap_or(0);
        let body = out
            .split_once("\r\n\r\n")
            .map(|(_, b)| b.to_string())
            .unwrap_or_default();
        (status, body)
    }

    /// The `(id, data)` events of one SSE stream (chunked encoding undone
    /// by only looking at `id:`/`data:` lines).
    fn events(text: &str) -> Vec<(u64, String)> {
        let mut out = Vec::new();
        let mut id = 0;
        for line in text.lines() {
            if let Some(v) = line.strip_prefix("id: ") {
                id = v.trim().parse().unwrap();
            } else if let Some(v) = line.strip_prefix("data: ") {
                out.push((id, v.to_string()));
            }
        }
        out
    }

    fn wait_status(ch: &ControlHost, id: &str, want: &str) {
        let deadline = Instant::now() + T;
        while ch.job_status(id).as_deref() != Some(want) {
            assert!(
                Instant::now() < deadline,
                "job {id} is {:?}",
                ch.job_status(id)
            );
            std::thread::sleep(Duration::from_millis(10));
        }
    }

    #[test]
    fn health_setup_and_poweroff_follow_the_power() {
        let ch = ControlHost::builder("127.0.0.6")
            .ssh(|d| d.boot_time(Duration::from_millis(100)))
            .start()
            .unwrap();
        let addr = ch.rest_addr();
        assert_eq!(request(addr, "GET", "/health", "", b"").0, 200);
        let (status, _) = request(
            addr,
            "POST",
            "/api/v1/system/setup/provisioning",
            "Content-Type: application/json\r\n",
            br#"{"usb": "DUT"}"#,
        );
        assert_eq!(status, 200);
        assert_eq!(
            ch.setup_calls(),
            [SetupCall {
                phase: "provisioning".into(),
                body: r#"{"usb": "DUT"}"#.into()
            }]
        );
        assert_eq!(
            request(addr, "POST", "/api/v1/system/poweroff", "", b"").0,
            200
        );
        assert!(ch.web.as_ref().unwrap().wait_refusing(true, T));
        assert!(ch.ssh().wait_state(PowerState::Off, T));
        // The control_host_reboot_script brings it back.
        let dir = tempfile::tempdir().unwrap();
        let scripts = ch.ssh().write_power_scripts(dir.path()).unwrap();
        assert!(
            std::process::Command::new(&scripts.reboot)
                .status()
                .unwrap()
                .success()
        );
        assert!(ch.ssh().wait_state(PowerState::Up, T));
        assert!(ch.web.as_ref().unwrap().wait_refusing(false, T));
        assert_eq!(request(addr, "GET", "/health", "", b"").0, 200);
    }

    #[test]
    fn provisioning_flashes_the_card_and_the_dut_boots_it() {
        let dir = tempfile::tempdir().unwrap();
        let card = Card::new(&dir.path().join("sd.img"), "sda", crate::card::Media::Sd).unwrap();
        let dut = Dut::builder("127.0.0.7")
            .boot_card(card.clone(), "mmcblk0")
            .boot_time(Duration::from_millis(100))
            .reboot_down_for(Duration::from_millis(100))
            .powered_off()
            .start()
            .unwrap();
        let image = crate::image::Image::ubuntu("24.04.2", "noble").hostname("zapped");
        let served = image.compressed(4096);
        let images = WebServer::start("127.0.0.7", move |_| Reply::bytes(served.clone())).unwrap();
        let ch = ControlHost::builder("127.0.0.8")
            .attach_card(card.clone())
            .target(dut.handle(), card.clone())
            .start()
            .unwrap();
        let body = json!({"method": "ProvisioningIoT", "args": [], "kwargs": {
            "agent_name": "iot-1", "urls": [format!("{}/img.zst", images.url())]}});
        let (status, text) = request(
            ch.rest_addr(),
            "POST",
            "/api/v1/provision",
            "Content-Type: application/json\r\n",
            body.to_string().as_bytes(),
        );
        assert_eq!(status, 200, "{text}");
        let id = serde_json::from_str::<Value>(&text).unwrap()["job_id"]
            .as_str()
            .unwrap()
            .to_string();
        // The stream follows the job to its end.
        let (_, log) = request(
            ch.rest_addr(),
            "GET",
            &format!("/api/v1/provision/{id}/logs"),
            "",
            b"",
        );
        let evs = events(&log);
        let messages: Vec<String> = evs
            .iter()
            .map(|(_, d)| {
                serde_json::from_str::<Value>(d).unwrap()["message"]
                    .as_str()
                    .unwrap()
                    .to_string()
            })
            .collect();
        assert!(
            messages[0].starts_with("Starting ProvisioningIoT for iot-1"),
            "{messages:?}"
        );
        assert!(
            messages.iter().any(|m| m.starts_with("Flashing")),
            "{messages:?}"
        );
        assert_eq!(messages.last().unwrap(), "Provisioning completed");
        assert_eq!(
            evs.iter().map(|e| e.0).collect::<Vec<_>>(),
            (1..=evs.len() as u64).collect::<Vec<_>>()
        );
        let (_, st) = request(
            ch.rest_addr(),
            "GET",
            &format!("/api/v1/provision/{id}"),
            "",
            b"",
        );
        assert_eq!(
            serde_json::from_str::<Value>(&st).unwrap()["status"],
            "completed"
        );
        assert_eq!(
            dut.installed_image().unwrap().hostname_text().unwrap(),
            "zapped"
        );
        assert_eq!(card.side(), MuxSide::Dut);
        // Resume: only what follows Last-Event-ID.
        let (_, tail) = request(
            ch.rest_addr(),
            "GET",
            &format!("/api/v1/provision/{id}/logs"),
            &format!("Last-Event-ID: {}\r\n", evs.len() - 1),
            b"",
        );
        assert_eq!(events(&tail).len(), 1);
        assert_eq!(
            request(ch.rest_addr(), "GET", "/api/v1/provision/nope", "", b"").0,
            404
        );
    }

    #[test]
    fn streams_drop_and_resume_jobs_fail_and_multipart_uploads_work() {
        let ch = ControlHost::builder("127.0.0.9")
            .provision_fault(ProvisionFault::DropStreamAfter(1))
            .step_delay(Duration::from_millis(50))
            .start()
            .unwrap();
        let boundary = "XyZ";
        let mut body = Vec::new();
        write!(
            body,
            "--{boundary}\r\nContent-Disposition: form-data; name=\"request\"\r\n\r\n{}\r\n--{boundary}\r\nContent-Disposition: form-data; name=\"boot_binary\"; filename=\"img\"\r\nContent-Type: application/octet-stream\r\n\r\nBINARY\r\n--{boundary}--\r\n",
            json!({"method": "ProvisioningKVM", "args": [], "kwargs": {}})
        )
        .unwrap();
        let (status, text) = request(
            ch.rest_addr(),
            "POST",
            "/api/v1/provision/multipart",
            &format!("Content-Type: multipart/form-data; boundary={boundary}\r\n"),
            &body,
        );
        assert_eq!(status, 200, "{text}");
        let id = serde_json::from_str::<Value>(&text).unwrap()["job_id"]
            .as_str()
            .unwrap()
            .to_string();
        // Every stream is cut after one event: a client resumes until the end.
        let mut seen = Vec::new();
        for _ in 0..20 {
            let last = seen
                .last()
                .map(|(i, _): &(u64, String)| format!("Last-Event-ID: {i}\r\n"))
                .unwrap_or_default();
            let (_, log) = request(
                ch.rest_addr(),
                "GET",
                &format!("/api/v1/provision/{id}/logs"),
                &last,
                b"",
            );
            seen.extend(events(&log));
            if ch.job_status(&id).as_deref() == Some("completed")
                && seen
                    .iter()
                    .any(|(_, d)| d.contains("Provisioning completed"))
            {
                break;
            }
        }
        assert!(
            seen.iter()
                .any(|(_, d)| d.contains("Received boot_binary (6 bytes)")),
            "{seen:?}"
        );
        let ids: Vec<u64> = seen.iter().map(|e| e.0).collect();
        assert_eq!(
            ids,
            (1..=ids.len() as u64).collect::<Vec<_>>(),
            "no gaps, no repeats"
        );

        ch.set_provision_fault(ProvisionFault::Fail("no DUT power".into()));
        let (_, text) = request(
            ch.rest_addr(),
            "POST",
            "/api/v1/provision",
            "",
            br#"{"method": "ProvisioningIoT", "args": [], "kwargs": {}}"#,
        );
        let id = serde_json::from_str::<Value>(&text).unwrap()["job_id"]
            .as_str()
            .unwrap()
            .to_string();
        wait_status(&ch, &id, "failed");
        let (_, st) = request(
            ch.rest_addr(),
            "GET",
            &format!("/api/v1/provision/{id}"),
            "",
            b"",
        );
        assert_eq!(
            serde_json::from_str::<Value>(&st).unwrap()["error"],
            "no DUT power"
        );
        assert_eq!(
            request(ch.rest_addr(), "POST", "/api/v1/provision", "", b"{").0,
            400
        );
        let _ = BufReader::new(&b""[..]).lines();
    }
}
