//! The wasm32 backend: the generated bindings of the `connector` world.

use std::cell::RefCell;
use std::rc::Rc;
use std::time::{Duration, Instant, SystemTime};

use serde_json::Value;

use crate::bindings::testflinger::connector::{http, job, log, power, serial, ssh, transfer};
use crate::error::Result;
use crate::http::{Request, Response};
use crate::log::Level;
use crate::power::ExecStyle;
use crate::ssh::Output;
use crate::transfer::{Report, Source};

use crate::job::Stage;

/// A duration as the WIT's `duration-ms`, saturating.
fn ms(d: Duration) -> u64 {
    u64::try_from(d.as_millis()).unwrap_or(u64::MAX)
}

thread_local! {
    /// The stage's first clock reading, so that `now` counts from it.
    static START: Instant = Instant::now();
    /// The job and the device config, parsed once per stage.
    static JOB: RefCell<Option<Rc<Value>>> = const { RefCell::new(None) };
    static CONFIG: RefCell<Option<Rc<Value>>> = const { RefCell::new(None) };
}

pub(crate) fn log(level: Level, message: &str) {
    log::log(level, message);
}

pub(crate) fn print(text: &str) {
    log::print(text);
}

pub(crate) fn stage() -> Stage {
    job::current_stage()
}

fn cached(
    cell: &'static std::thread::LocalKey<RefCell<Option<Rc<Value>>>>,
    text: impl FnOnce() -> String,
    what: &str,
) -> Result<Rc<Value>> {
    cell.with(|c| {
        if let Some(v) = c.borrow().as_ref() {
            return Ok(v.clone());
        }
        let v: Value = serde_json::from_str(&text())
            .map_err(|e| crate::Error::new(crate::ErrorKind::Invalid, format!("{what}: {e}")))?;
        let v = Rc::new(v);
        *c.borrow_mut() = Some(v.clone());
        Ok(v)
    })
}

pub(crate) fn job() -> Result<Rc<Value>> {
    cached(&JOB, job::job_json, "job data")
}

pub(crate) fn device_config() -> Result<Rc<Value>> {
    cached(&CONFIG, job::device_config_json, "device config")
}

pub(crate) fn attachments(phase: &str) -> Result<Vec<String>> {
    Ok(job::attachments(phase)?)
}

pub(crate) fn read_attachment(phase: &str, name: &str) -> Result<Vec<u8>> {
    Ok(job::read_attachment(phase, name)?)
}

pub(crate) fn set_device_info(key: &str, value_json: &str) -> Result<()> {
    Ok(job::set_device_info(key, value_json)?)
}

pub(crate) fn write_artifact(name: &str, data: &[u8]) -> Result<()> {
    Ok(job::write_artifact(name, data)?)
}

pub(crate) fn power_run(key: &str, style: ExecStyle, timeout_per_entry: Duration) -> Result<()> {
    Ok(power::run(
        key,
        power::RunOptions {
            style,
            timeout_per_entry: ms(timeout_per_entry),
        },
    )?)
}

pub(crate) fn cycle_control_host(manage_dut_power: bool, timeout: Duration) -> Result<()> {
    Ok(power::cycle_control_host(manage_dut_power, ms(timeout))?)
}

/// An open serial console.
pub(crate) struct Port(serial::Port);

pub(crate) fn serial_open(name: &str) -> Result<Port> {
    Ok(Port(serial::open(name)?))
}

impl Port {
    pub(crate) fn wait_for(&self, pattern: &str, timeout: Duration) -> Result<String> {
        Ok(self.0.wait_for(pattern, ms(timeout))?)
    }

    pub(crate) fn write(&self, data: &[u8], timeout: Duration) -> Result<()> {
        Ok(self.0.write(data, ms(timeout))?)
    }
}

/// An open SSH session.
pub(crate) struct Session(ssh::Session);

pub(crate) fn ssh_connect(target: &str, timeout: Duration, user: Option<&str>) -> Result<Session> {
    let opts: Vec<(String, String)> = user
        .map(|u| ("user".to_string(), u.to_string()))
        .into_iter()
        .collect();
    Ok(Session(ssh::connect(target, ms(timeout), &opts)?))
}

impl Session {
    pub(crate) fn exec(
        &self,
        command: &str,
        timeout: Duration,
        log_output: bool,
    ) -> Result<Output> {
        let opts = vec![("log-output".to_string(), log_output.to_string())];
        let r = self.0.exec(command, ms(timeout), &opts)?;
        Ok(Output {
            status: r.status,
            stdout: r.stdout,
            stderr: r.stderr,
        })
    }

    pub(crate) fn upload(
        &self,
        path: &str,
        data: &[u8],
        mode: u32,
        timeout: Duration,
    ) -> Result<()> {
        Ok(self.0.upload(path, data, mode, ms(timeout))?)
    }

    pub(crate) fn download(&self, path: &str, timeout: Duration) -> Result<Vec<u8>> {
        Ok(self.0.download(path, ms(timeout))?)
    }

    pub(crate) fn download_artifact(
        &self,
        path: &str,
        artifact: &str,
        timeout: Duration,
    ) -> Result<u64> {
        Ok(self.0.download_artifact(path, artifact, ms(timeout))?)
    }
}

pub(crate) fn ssh_wait_reachable(target: &str, timeout: Duration) -> Result<()> {
    Ok(ssh::wait_reachable(target, ms(timeout))?)
}

pub(crate) fn ssh_authorize_key(target: &str, timeout: Duration) -> Result<()> {
    Ok(ssh::authorize_key(target, ms(timeout))?)
}

fn http_request(req: &Request) -> http::Request {
    http::Request {
        method: req.method.clone(),
        url: req.url.clone(),
        headers: req.headers.clone(),
        body: req.body.clone(),
        timeout: ms(req.timeout),
    }
}

fn http_response(r: http::Response) -> Response {
    Response {
        status: r.status,
        headers: r.headers,
        body: r.body,
    }
}

pub(crate) fn http_call(endpoint: &str, req: &Request) -> Result<Response> {
    Ok(http_response(http::call(
        endpoint,
        &http_request(req),
        &[],
    )?))
}

pub(crate) fn http_fetch(req: &Request) -> Result<Response> {
    Ok(http_response(http::fetch(&http_request(req), &[])?))
}

fn source(src: &Source) -> transfer::Source {
    match src {
        Source::Url(u) => transfer::Source::Url(u.clone()),
        Source::Attachment(a) => transfer::Source::Attachment(a.clone()),
    }
}

fn report(r: transfer::Report) -> Report {
    Report {
        bytes: r.bytes,
        sha256: r.sha256,
        elapsed: Duration::from_millis(r.elapsed_ms),
    }
}

pub(crate) fn transfer_to_ssh(
    src: &Source,
    session: &Session,
    command: &str,
    timeout: Duration,
) -> Result<Report> {
    Ok(report(transfer::to_ssh(
        &source(src),
        &session.0,
        command,
        ms(timeout),
        &[],
    )?))
}

pub(crate) fn transfer_to_artifact(src: &Source, name: &str, timeout: Duration) -> Result<Report> {
    Ok(report(transfer::to_artifact(
        &source(src),
        name,
        ms(timeout),
        &[],
    )?))
}

/// Time since the stage's first clock reading (WASI monotonic clock).
pub(crate) fn now() -> Duration {
    START.with(Instant::elapsed)
}

/// A WASI monotonic-clock wait: the host suspends the connector, nothing
/// spins.
pub(crate) fn sleep(d: Duration) {
    if !d.is_zero() {
        std::thread::sleep(d);
    }
}

pub(crate) fn wall() -> SystemTime {
    SystemTime::now()
}
