//! The native backend: every call goes to the [`FakeHost`] installed on
//! the current thread (see [`crate::testing`]). Without one, host calls
//! panic with a message saying so; the clock falls back to the real one.

use std::rc::Rc;
use std::time::{Duration, Instant, SystemTime};

use serde_json::Value;

use crate::error::Result;
use crate::http::{Request, Response};
use crate::job::Stage;
use crate::log::Level;
use crate::power::ExecStyle;
use crate::ssh::Output;
use crate::testing::{self, FakeHost};
use crate::transfer::{Report, Source};

thread_local! {
    static START: Instant = Instant::now();
}

fn host() -> FakeHost {
    testing::current().unwrap_or_else(|| {
        panic!(
            "testflinger-connector: no testing::FakeHost is installed on this thread; \
             native builds reach the host only through one (FakeHost::new()...install())"
        )
    })
}

pub(crate) fn log(level: Level, message: &str) {
    host().record_log(level, message);
}

pub(crate) fn print(text: &str) {
    host().record_print(text);
}

pub(crate) fn stage() -> Stage {
    host().stage_now()
}

pub(crate) fn job() -> Result<Rc<Value>> {
    Ok(host().job_value())
}

pub(crate) fn device_config() -> Result<Rc<Value>> {
    Ok(host().config_value())
}

pub(crate) fn attachments(phase: &str) -> Result<Vec<String>> {
    host().attachments(phase)
}

pub(crate) fn read_attachment(phase: &str, name: &str) -> Result<Vec<u8>> {
    host().read_attachment(phase, name)
}

pub(crate) fn set_device_info(key: &str, value_json: &str) -> Result<()> {
    host().set_device_info(key, value_json)
}

pub(crate) fn write_artifact(name: &str, data: &[u8]) -> Result<()> {
    host().write_artifact(name, data)
}

pub(crate) fn power_run(key: &str, style: ExecStyle, timeout_per_entry: Duration) -> Result<()> {
    host().power_run(key, style, timeout_per_entry)
}

pub(crate) fn cycle_control_host(manage_dut_power: bool, timeout: Duration) -> Result<()> {
    host().do_cycle_control_host(manage_dut_power, timeout)
}

/// An open serial console of the fake host.
pub(crate) struct Port {
    name: String,
}

pub(crate) fn serial_open(name: &str) -> Result<Port> {
    host().serial_open(name)?;
    Ok(Port {
        name: name.to_string(),
    })
}

impl Port {
    pub(crate) fn wait_for(&self, pattern: &str, timeout: Duration) -> Result<String> {
        host().serial_wait_for(&self.name, pattern, timeout)
    }

    pub(crate) fn write(&self, data: &[u8], _timeout: Duration) -> Result<()> {
        host().serial_write(&self.name, data)
    }
}

/// An open SSH session of the fake host.
pub(crate) struct Session {
    pub(crate) target: String,
}

pub(crate) fn ssh_connect(target: &str, timeout: Duration, user: Option<&str>) -> Result<Session> {
    host().ssh_connect(target, timeout, user)?;
    Ok(Session {
        target: target.to_string(),
    })
}

impl Session {
    pub(crate) fn exec(
        &self,
        command: &str,
        timeout: Duration,
        _log_output: bool,
    ) -> Result<Output> {
        host().ssh_exec(&self.target, command, timeout)
    }

    pub(crate) fn upload(
        &self,
        path: &str,
        data: &[u8],
        mode: u32,
        _timeout: Duration,
    ) -> Result<()> {
        host().ssh_upload(&self.target, path, data, mode)
    }

    pub(crate) fn download(&self, path: &str, _timeout: Duration) -> Result<Vec<u8>> {
        host().ssh_download(&self.target, path)
    }

    pub(crate) fn download_artifact(
        &self,
        path: &str,
        artifact: &str,
        _timeout: Duration,
    ) -> Result<u64> {
        host().ssh_download_artifact(&self.target, path, artifact)
    }
}

pub(crate) fn ssh_wait_reachable(target: &str, timeout: Duration) -> Result<()> {
    host().ssh_poll(target, timeout, false)
}

pub(crate) fn ssh_authorize_key(target: &str, timeout: Duration) -> Result<()> {
    host().ssh_poll(target, timeout, true)
}

pub(crate) fn http_call(endpoint: &str, req: &Request) -> Result<Response> {
    host().do_http(Some(endpoint), req)
}

pub(crate) fn http_fetch(req: &Request) -> Result<Response> {
    host().do_http(None, req)
}

pub(crate) fn transfer_to_ssh(
    src: &Source,
    session: &Session,
    command: &str,
    _timeout: Duration,
) -> Result<Report> {
    host().transfer(src, Some(&session.target), command)
}

pub(crate) fn transfer_to_artifact(src: &Source, name: &str, _timeout: Duration) -> Result<Report> {
    host().transfer(src, None, name)
}

/// The fake host's virtual time, or real time without one.
pub(crate) fn now() -> Duration {
    match testing::current() {
        Some(h) => h.elapsed(),
        None => START.with(Instant::elapsed),
    }
}

/// Advances the fake host's virtual clock (no real wait), or sleeps.
pub(crate) fn sleep(d: Duration) {
    match testing::current() {
        Some(h) => h.advance(d),
        None => std::thread::sleep(d),
    }
}

pub(crate) fn wall() -> SystemTime {
    match testing::current() {
        Some(h) => h.wall(),
        None => SystemTime::now(),
    }
}
