//! A scripted fake host, so that connector logic runs in plain
//! `cargo test` (a native build of the connector crate) without wasm or
//! the lab simulator. Every SDK call of the test's thread goes to the
//! [`FakeHost`] installed there: it answers from its script, records every
//! call in order, and keeps a virtual clock that sleeps and waits advance
//! (a 20-minute wait takes no real time).
//!
//! ```
//! use std::time::Duration;
//! use serde_json::json;
//! use testflinger_connector::prelude::*;
//! use testflinger_connector::testing::{FakeHost, err, exit, pattern};
//!
//! let host = FakeHost::new()
//!     .config(json!({"agent_name": "pi-1", "control_host": "10.0.0.2", "reboot_script": ["pdu 4 cycle"]}))
//!     .job(json!({"provision_data": {"url": "http://images/x.zst"}}))
//!     .exec("control-host", "stm -ts", [exit(0, "", "")])
//!     .exec("control-host", pattern(r"^sudo umount "), [exit(32, "", "not mounted")])
//!     .power("reboot_script", [err(ErrorKind::Timeout, "pdu 4 cycle: no exit within 120 s")])
//!     .install();
//!
//! let ch = ssh::connect("control-host").unwrap();
//! assert!(ch.exec("stm -ts").unwrap().success());
//! assert_eq!(ch.exec("sudo umount /dev/sda*").unwrap().status, 32);
//! assert!(power::run("reboot_script").unwrap_err().is_timeout());
//! assert_eq!(host.commands("control-host"), ["stm -ts", "sudo umount /dev/sda*"]);
//! assert_eq!(host.trace()[3], "power reboot_script");
//! ```
//!
//! Scripts: answers are given per target and command (exact text or a
//! [`pattern`]), per power key, per HTTP endpoint and path, and so on;
//! each list is used in order and its last answer repeats. What is not
//! scripted gets the default a healthy lab gives (a command exits 0, a
//! target answers, a power script works), except what the device config
//! does not configure, which fails as the runtime would (no `device_ip`:
//! the `device` target is `not-found`; no `reboot_script`: `power.run` is
//! `not-found` ...), and HTTP, which answers only what is scripted.

use std::cell::RefCell;
use std::collections::{BTreeMap, HashMap, VecDeque};
use std::fmt;
use std::ops::Deref;
use std::rc::Rc;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use regex::Regex;
use serde_json::{Map, Value};

use crate::error::{Error, ErrorKind, Result};
use crate::http::{Request, Response};
use crate::job::Stage;
use crate::log::Level;
use crate::power::ExecStyle;
use crate::ssh::Output;
use crate::transfer::{Report, Source};
use crate::units::human_duration;

thread_local! {
    static CURRENT: RefCell<Vec<FakeHost>> = const { RefCell::new(Vec::new()) };
}

/// The host installed on this thread, if any.
pub(crate) fn current() -> Option<FakeHost> {
    CURRENT.with(|c| c.borrow().last().cloned())
}

/// sha256 of no bytes: what a default transfer reports.
const EMPTY_SHA256: &str =
    "sha256:e3b0c44298fc1c149afbf4c8996fb92427ae41e4649b934ca495991b7852b855";

/// The wall-clock time a fake host's virtual clock starts at
/// (2027-01-01 00:00:00 UTC), so log lines with clock times are the same
/// in every run.
pub const WALL_START: Duration = Duration::from_secs(1_798_761_600);

/// A command (or path, URL) a script answers: exact text, or a regular
/// expression made with [`pattern`].
#[derive(Debug, Clone)]
pub enum Match {
    /// Exactly this text.
    Exact(String),
    /// Text this regular expression finds a match in.
    Pattern(Regex),
}

impl Match {
    fn matches(&self, text: &str) -> bool {
        match self {
            Match::Exact(s) => s == text,
            Match::Pattern(r) => r.is_match(text),
        }
    }
}

impl From<&str> for Match {
    fn from(s: &str) -> Self {
        Match::Exact(s.to_string())
    }
}

impl From<String> for Match {
    fn from(s: String) -> Self {
        Match::Exact(s)
    }
}

impl From<&String> for Match {
    fn from(s: &String) -> Self {
        Match::Exact(s.clone())
    }
}

/// A [`Match`] by regular expression (`^sudo umount `). Panics on a bad
/// expression: that is a mistake in the test.
pub fn pattern(regex: &str) -> Match {
    Match::Pattern(Regex::new(regex).unwrap_or_else(|e| panic!("bad pattern {regex:?}: {e}")))
}

/// A command's answer: it ran and exited with `status`.
pub fn exit(status: i32, stdout: &str, stderr: &str) -> Result<Output> {
    Ok(Output::new(status, stdout, stderr))
}

/// A command's answer: it exited 0 and printed `stdout`.
pub fn ok(stdout: &str) -> Result<Output> {
    exit(0, stdout, "")
}

/// A host call's answer: it failed with `kind` and `message`.
pub fn err<T>(kind: ErrorKind, message: &str) -> Result<T> {
    Err(Error::new(kind, message))
}

/// An HTTP answer with `status` and `body`.
pub fn response(status: u16, body: &str) -> Result<Response> {
    Ok(Response::new(status, body.as_bytes().to_vec()))
}

/// A transfer's answer: `bytes` moved.
pub fn moved(bytes: u64) -> Result<Report> {
    Ok(Report {
        bytes,
        sha256: EMPTY_SHA256.to_string(),
        elapsed: Duration::ZERO,
    })
}

/// One call that reached the fake host, in order. Log lines and job or
/// config reads are not calls (see [`FakeHost::log`]).
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Call {
    /// `power.run(key)`.
    Power {
        /// The device-config key.
        key: String,
    },
    /// `power.cycle-control-host`.
    CycleControlHost {
        /// Whether the device's power was managed.
        manage_dut_power: bool,
    },
    /// `serial.open(name)`.
    SerialOpen {
        /// The console.
        name: String,
    },
    /// `port.wait-for(pattern)`.
    SerialWaitFor {
        /// The console.
        name: String,
        /// The regular expression.
        pattern: String,
    },
    /// `port.write(data)`.
    SerialWrite {
        /// The console.
        name: String,
        /// What was sent.
        data: Vec<u8>,
    },
    /// `ssh.connect(target)`.
    Connect {
        /// The target.
        target: String,
        /// The user asked for, if any.
        user: Option<String>,
    },
    /// `session.exec(command)`.
    Exec {
        /// The target.
        target: String,
        /// The command line.
        command: String,
    },
    /// `session.upload(path)`.
    Upload {
        /// The target.
        target: String,
        /// The remote path.
        path: String,
        /// Permission bits.
        mode: u32,
        /// The content.
        data: Vec<u8>,
    },
    /// `session.download(path)` or `download-artifact`.
    Download {
        /// The target.
        target: String,
        /// The remote path.
        path: String,
    },
    /// `ssh.wait-reachable(target)`.
    WaitReachable {
        /// The target.
        target: String,
        /// The deadline given.
        timeout: Duration,
    },
    /// `ssh.authorize-key(target)`.
    AuthorizeKey {
        /// The target.
        target: String,
        /// The deadline given.
        timeout: Duration,
    },
    /// `http.call` (with an endpoint) or `http.fetch` (without).
    Http {
        /// The endpoint; `None` for `fetch`.
        endpoint: Option<String>,
        /// The method.
        method: String,
        /// The path (or URL for `fetch`).
        url: String,
        /// The body.
        body: Vec<u8>,
    },
    /// `transfer.to-ssh` (with a target) or `to-artifact` (without).
    Transfer {
        /// Where the bytes came from.
        source: Source,
        /// The SSH target; `None` for an artifact.
        target: Option<String>,
        /// The command (or the artifact's name).
        sink: String,
    },
    /// `job.set-device-info`.
    SetDeviceInfo {
        /// The key.
        key: String,
        /// The value, as JSON.
        json: String,
    },
    /// `job.write-artifact`.
    WriteArtifact {
        /// The artifact's name.
        name: String,
        /// Its size.
        bytes: usize,
    },
}

impl fmt::Display for Call {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Call::Power { key } => write!(f, "power {key}"),
            Call::CycleControlHost { manage_dut_power } => write!(
                f,
                "cycle-control-host{}",
                if *manage_dut_power {
                    " (device off)"
                } else {
                    ""
                }
            ),
            Call::SerialOpen { name } => write!(f, "serial open {name}"),
            Call::SerialWaitFor { name, pattern } => write!(f, "serial {name} wait-for {pattern}"),
            Call::SerialWrite { name, data } => {
                write!(f, "serial {name} write {:?}", String::from_utf8_lossy(data))
            }
            Call::Connect { target, user } => match user {
                Some(u) => write!(f, "ssh connect {target} as {u}"),
                None => write!(f, "ssh connect {target}"),
            },
            Call::Exec { target, command } => write!(f, "ssh {target}: {command}"),
            Call::Upload {
                target,
                path,
                mode,
                data,
            } => write!(f, "upload {target}:{path} ({mode:o}, {} bytes)", data.len()),
            Call::Download { target, path } => write!(f, "download {target}:{path}"),
            Call::WaitReachable { target, .. } => write!(f, "wait-reachable {target}"),
            Call::AuthorizeKey { target, .. } => write!(f, "authorize-key {target}"),
            Call::Http {
                endpoint,
                method,
                url,
                ..
            } => match endpoint {
                Some(e) => write!(f, "http {e} {method} {url}"),
                None => write!(f, "fetch {method} {url}"),
            },
            Call::Transfer {
                source,
                target,
                sink,
            } => match target {
                Some(t) => write!(f, "transfer {source} -> {t}: {sink}"),
                None => write!(f, "transfer {source} -> artifact {sink}"),
            },
            Call::SetDeviceInfo { key, json } => write!(f, "device-info {key}={json}"),
            Call::WriteArtifact { name, bytes } => write!(f, "artifact {name} ({bytes} bytes)"),
        }
    }
}

/// Answers used in order; the last one repeats.
#[derive(Debug, Clone)]
struct Script<T> {
    answers: VecDeque<Result<T>>,
}

impl<T: Clone> Script<T> {
    fn new(answers: impl IntoIterator<Item = Result<T>>) -> Self {
        Script {
            answers: answers.into_iter().collect(),
        }
    }

    fn next(&mut self) -> Option<Result<T>> {
        if self.answers.len() > 1 {
            self.answers.pop_front()
        } else {
            self.answers.front().cloned()
        }
    }
}

#[derive(Debug, Clone)]
struct Rule<T> {
    scope: String,
    what: Match,
    script: Script<T>,
}

fn answer<T: Clone>(rules: &mut [Rule<T>], scope: &str, text: &str) -> Option<Result<T>> {
    rules
        .iter_mut()
        .find(|r| r.scope == scope && r.what.matches(text) && !r.script.answers.is_empty())
        .and_then(|r| r.script.next())
}

#[derive(Debug, Default)]
struct Console {
    /// What the device "printed" and nobody matched yet.
    pending: String,
    error: Option<Error>,
}

#[derive(Debug)]
struct State {
    stage: Stage,
    job: Rc<Value>,
    config: Rc<Value>,
    attachments: BTreeMap<(String, String), Vec<u8>>,
    exec: Vec<Rule<Output>>,
    connect: HashMap<String, Script<()>>,
    reachable: HashMap<String, Script<()>>,
    authorize: HashMap<String, Script<()>>,
    power: HashMap<String, Script<()>>,
    cycle: Script<()>,
    http: Vec<Rule<Response>>,
    transfers: Script<Report>,
    files: HashMap<(String, String), Vec<u8>>,
    consoles: HashMap<String, Console>,
    call_cost: Duration,
    poll: Duration,
    now: Duration,
    calls: Vec<Call>,
    log: Vec<(Level, String)>,
    stdout: String,
    device_info: Map<String, Value>,
    artifacts: BTreeMap<String, Vec<u8>>,
}

/// A scripted host for native tests; see the [module](self) documentation.
/// Build it, [`FakeHost::install`] it, run connector code, then look at
/// what happened. Clones share one host.
#[derive(Debug, Clone)]
pub struct FakeHost(Rc<RefCell<State>>);

impl Default for FakeHost {
    fn default() -> Self {
        FakeHost::new()
    }
}

impl FakeHost {
    /// A host with an empty job and device config, at stage `provision`,
    /// whose calls take no time and whose own polling (`wait-reachable`,
    /// `authorize-key`) is every 10 s, as the runtime's default.
    pub fn new() -> Self {
        FakeHost(Rc::new(RefCell::new(State {
            stage: Stage::Provision,
            job: Rc::new(Value::Object(Map::new())),
            config: Rc::new(Value::Object(Map::new())),
            attachments: BTreeMap::new(),
            exec: Vec::new(),
            connect: HashMap::new(),
            reachable: HashMap::new(),
            authorize: HashMap::new(),
            power: HashMap::new(),
            cycle: Script::new([]),
            http: Vec::new(),
            transfers: Script::new([]),
            files: HashMap::new(),
            consoles: HashMap::new(),
            call_cost: Duration::ZERO,
            poll: Duration::from_secs(10),
            now: Duration::ZERO,
            calls: Vec::new(),
            log: Vec::new(),
            stdout: String::new(),
            device_info: Map::new(),
            artifacts: BTreeMap::new(),
        })))
    }

    fn edit(self, f: impl FnOnce(&mut State)) -> Self {
        f(&mut self.0.borrow_mut());
        self
    }

    /// The stage being run.
    pub fn stage(self, stage: Stage) -> Self {
        self.edit(|s| s.stage = stage)
    }

    /// The job (`testflinger.json` as the connector sees it).
    pub fn job(self, job: Value) -> Self {
        self.edit(|s| s.job = Rc::new(job))
    }

    /// The device config (`default.yaml` as JSON, secrets already out).
    pub fn config(self, config: Value) -> Self {
        self.edit(|s| s.config = Rc::new(config))
    }

    /// A file under `attachments/<phase>/`.
    pub fn attachment(self, phase: &str, name: &str, data: &[u8]) -> Self {
        self.edit(|s| {
            s.attachments
                .insert((phase.to_string(), name.to_string()), data.to_vec());
        })
    }

    /// Answers of `command` run on `target` (exact text or a [`pattern`]),
    /// in order; the last repeats. Rules are tried in the order given;
    /// an unscripted command exits 0 without output.
    pub fn exec(
        self,
        target: &str,
        command: impl Into<Match>,
        answers: impl IntoIterator<Item = Result<Output>>,
    ) -> Self {
        let rule = Rule {
            scope: target.to_string(),
            what: command.into(),
            script: Script::new(answers),
        };
        self.edit(|s| s.exec.push(rule))
    }

    /// Outcomes of `ssh.connect(target)` (default: it works).
    pub fn connect(self, target: &str, outcomes: impl IntoIterator<Item = Result<()>>) -> Self {
        let script = Script::new(outcomes);
        self.edit(|s| {
            s.connect.insert(target.to_string(), script);
        })
    }

    /// Outcomes of the login attempts of `wait-reachable(target)`, one per
    /// attempt (default: the target answers). A call attempts until one
    /// works, one fails for good, or its deadline passes, the fake's poll
    /// interval apart (see [`FakeHost::poll_interval`]).
    pub fn reachable(self, target: &str, outcomes: impl IntoIterator<Item = Result<()>>) -> Self {
        let script = Script::new(outcomes);
        self.edit(|s| {
            s.reachable.insert(target.to_string(), script);
        })
    }

    /// Outcomes of the attempts of `authorize-key(target)`, as for
    /// [`FakeHost::reachable`].
    pub fn authorize(self, target: &str, outcomes: impl IntoIterator<Item = Result<()>>) -> Self {
        let script = Script::new(outcomes);
        self.edit(|s| {
            s.authorize.insert(target.to_string(), script);
        })
    }

    /// Outcomes of `power.run(key)` (default: it works, when the device
    /// config has the list).
    pub fn power(self, key: &str, outcomes: impl IntoIterator<Item = Result<()>>) -> Self {
        let script = Script::new(outcomes);
        self.edit(|s| {
            s.power.insert(key.to_string(), script);
        })
    }

    /// Outcomes of `power.cycle-control-host` (default: it works).
    pub fn cycle_control_host(self, outcomes: impl IntoIterator<Item = Result<()>>) -> Self {
        let script = Script::new(outcomes);
        self.edit(|s| s.cycle = script)
    }

    /// Answers of `http.call(endpoint, <method> <path>)`: `request` is
    /// matched against `"<METHOD> <path>"` (`"GET /health"`, or a
    /// [`pattern`]). Unscripted requests fail with `not-found`.
    pub fn http(
        self,
        endpoint: &str,
        request: impl Into<Match>,
        answers: impl IntoIterator<Item = Result<Response>>,
    ) -> Self {
        let rule = Rule {
            scope: endpoint.to_string(),
            what: request.into(),
            script: Script::new(answers),
        };
        self.edit(|s| s.http.push(rule))
    }

    /// Answers of `http.fetch`: `request` is matched against
    /// `"<METHOD> <url>"`.
    pub fn fetch(
        self,
        request: impl Into<Match>,
        answers: impl IntoIterator<Item = Result<Response>>,
    ) -> Self {
        self.http("", request, answers)
    }

    /// Outcomes of the transfers, in order (default: 0 bytes moved).
    pub fn transfers(self, outcomes: impl IntoIterator<Item = Result<Report>>) -> Self {
        let script = Script::new(outcomes);
        self.edit(|s| s.transfers = script)
    }

    /// A file `download` finds on `target`.
    pub fn file(self, target: &str, path: &str, data: &[u8]) -> Self {
        self.edit(|s| {
            s.files
                .insert((target.to_string(), path.to_string()), data.to_vec());
        })
    }

    /// Console `name` exists and prints `output` (what `wait-for` sees).
    pub fn serial(self, name: &str, output: &str) -> Self {
        self.edit(|s| {
            s.consoles.insert(
                name.to_string(),
                Console {
                    pending: output.to_string(),
                    error: None,
                },
            );
        })
    }

    /// Opening console `name` fails with `error`.
    pub fn serial_error(self, name: &str, error: Error) -> Self {
        self.edit(|s| {
            s.consoles.insert(
                name.to_string(),
                Console {
                    pending: String::new(),
                    error: Some(error),
                },
            );
        })
    }

    /// Virtual time every host call takes (default none).
    pub fn call_cost(self, cost: Duration) -> Self {
        self.edit(|s| s.call_cost = cost)
    }

    /// The pause between the fake's own login attempts in `wait-reachable`
    /// and `authorize-key` (the runtime's `poll_interval_seconds`).
    pub fn poll_interval(self, poll: Duration) -> Self {
        self.edit(|s| s.poll = poll)
    }

    /// Makes this the host of the current thread until the guard is
    /// dropped (the one before comes back then).
    pub fn install(self) -> Installed {
        CURRENT.with(|c| c.borrow_mut().push(self.clone()));
        Installed(self)
    }

    // ---- what happened ----

    /// Every call, in order.
    pub fn calls(&self) -> Vec<Call> {
        self.0.borrow().calls.clone()
    }

    /// Every call, one line each (`ssh control-host: stm -ts`, `power
    /// reboot_script`, `http maas GET /api/2.0/version/` ...).
    pub fn trace(&self) -> Vec<String> {
        self.0.borrow().calls.iter().map(Call::to_string).collect()
    }

    /// The commands that reached `target`, in order: `exec`s and the
    /// commands transfers streamed into.
    pub fn commands(&self, target: &str) -> Vec<String> {
        self.0
            .borrow()
            .calls
            .iter()
            .filter_map(|c| match c {
                Call::Exec { target: t, command } if t == target => Some(command.clone()),
                Call::Transfer {
                    target: Some(t),
                    sink,
                    ..
                } if t == target => Some(sink.clone()),
                _ => None,
            })
            .collect()
    }

    /// The log lines, `LEVEL message` (`INFO BEGIN provision`,
    /// `WARNING ...`).
    pub fn log(&self) -> Vec<String> {
        self.0
            .borrow()
            .log
            .iter()
            .map(|(level, m)| format!("{} {m}", level_name(*level)))
            .collect()
    }

    /// Whether some log line contains `text`.
    pub fn logged(&self, text: &str) -> bool {
        self.log().iter().any(|l| l.contains(text))
    }

    /// What the connector printed on stdout.
    pub fn stdout(&self) -> String {
        self.0.borrow().stdout.clone()
    }

    /// The `device_info` keys set.
    pub fn device_info(&self) -> Map<String, Value> {
        self.0.borrow().device_info.clone()
    }

    /// The artifacts written.
    pub fn artifacts(&self) -> BTreeMap<String, Vec<u8>> {
        self.0.borrow().artifacts.clone()
    }

    /// Virtual time since the host was made.
    pub fn elapsed(&self) -> Duration {
        self.0.borrow().now
    }

    // ---- the backend (crate::sys::native) ----

    pub(crate) fn advance(&self, d: Duration) {
        let mut s = self.0.borrow_mut();
        s.now = s.now.saturating_add(d);
    }

    pub(crate) fn wall(&self) -> SystemTime {
        UNIX_EPOCH + WALL_START + self.elapsed()
    }

    /// Records `call`, which takes the call cost.
    fn call(&self, call: Call) {
        let mut s = self.0.borrow_mut();
        s.calls.push(call);
        s.now = s.now.saturating_add(s.call_cost);
    }

    pub(crate) fn record_log(&self, level: Level, message: &str) {
        self.0.borrow_mut().log.push((level, message.to_string()));
    }

    pub(crate) fn record_print(&self, text: &str) {
        self.0.borrow_mut().stdout.push_str(text);
    }

    pub(crate) fn stage_now(&self) -> Stage {
        self.0.borrow().stage
    }

    pub(crate) fn job_value(&self) -> Rc<Value> {
        self.0.borrow().job.clone()
    }

    pub(crate) fn config_value(&self) -> Rc<Value> {
        self.0.borrow().config.clone()
    }

    fn configured(&self, key: &str) -> bool {
        match self.0.borrow().config.get(key) {
            Some(Value::String(s)) => !s.trim().is_empty(),
            Some(Value::Number(_)) => true,
            _ => false,
        }
    }

    pub(crate) fn attachments(&self, phase: &str) -> Result<Vec<String>> {
        Ok(self
            .0
            .borrow()
            .attachments
            .keys()
            .filter(|(p, _)| p == phase)
            .map(|(_, n)| n.clone())
            .collect())
    }

    pub(crate) fn read_attachment(&self, phase: &str, name: &str) -> Result<Vec<u8>> {
        self.0
            .borrow()
            .attachments
            .get(&(phase.to_string(), name.to_string()))
            .cloned()
            .ok_or_else(|| {
                Error::new(
                    ErrorKind::NotFound,
                    format!("attachments/{phase}/{name} does not exist"),
                )
            })
    }

    pub(crate) fn set_device_info(&self, key: &str, value_json: &str) -> Result<()> {
        self.call(Call::SetDeviceInfo {
            key: key.to_string(),
            json: value_json.to_string(),
        });
        let value: Value = serde_json::from_str(value_json)
            .map_err(|e| Error::new(ErrorKind::Invalid, format!("device info {key}: {e}")))?;
        self.0
            .borrow_mut()
            .device_info
            .insert(key.to_string(), value);
        Ok(())
    }

    pub(crate) fn write_artifact(&self, name: &str, data: &[u8]) -> Result<()> {
        self.call(Call::WriteArtifact {
            name: name.to_string(),
            bytes: data.len(),
        });
        self.0
            .borrow_mut()
            .artifacts
            .insert(name.to_string(), data.to_vec());
        Ok(())
    }

    pub(crate) fn power_run(&self, key: &str, _style: ExecStyle, _timeout: Duration) -> Result<()> {
        self.call(Call::Power {
            key: key.to_string(),
        });
        let listed = self
            .0
            .borrow()
            .config
            .get(key)
            .and_then(Value::as_array)
            .is_some_and(|l| l.iter().all(Value::is_string));
        if !listed {
            return err(
                ErrorKind::NotFound,
                &format!("device config key `{key}` is not a list of commands"),
            );
        }
        let answer = self
            .0
            .borrow_mut()
            .power
            .get_mut(key)
            .and_then(Script::next);
        answer.unwrap_or(Ok(()))
    }

    pub(crate) fn do_cycle_control_host(
        &self,
        manage_dut_power: bool,
        _timeout: Duration,
    ) -> Result<()> {
        self.call(Call::CycleControlHost { manage_dut_power });
        let answer = self.0.borrow_mut().cycle.next();
        answer.unwrap_or(Ok(()))
    }

    pub(crate) fn serial_open(&self, name: &str) -> Result<()> {
        self.call(Call::SerialOpen {
            name: name.to_string(),
        });
        let mut s = self.0.borrow_mut();
        match s.consoles.get(name) {
            Some(Console { error: Some(e), .. }) => Err(e.clone()),
            Some(_) => Ok(()),
            None => {
                let configured = ["serial_host", "serial_port"]
                    .iter()
                    .all(|k| s.config.get(*k).is_some_and(|v| !v.is_null()));
                if name == "console" && configured {
                    s.consoles.insert(name.to_string(), Console::default());
                    Ok(())
                } else {
                    err(
                        ErrorKind::NotFound,
                        &format!(
                            "serial console `{name}` is not configured (serial_host, serial_port)"
                        ),
                    )
                }
            }
        }
    }

    pub(crate) fn serial_wait_for(
        &self,
        name: &str,
        pattern: &str,
        timeout: Duration,
    ) -> Result<String> {
        self.call(Call::SerialWaitFor {
            name: name.to_string(),
            pattern: pattern.to_string(),
        });
        let re = Regex::new(pattern)
            .map_err(|e| Error::new(ErrorKind::Invalid, format!("bad pattern {pattern:?}: {e}")))?;
        let mut s = self.0.borrow_mut();
        let console = s.consoles.entry(name.to_string()).or_default();
        if let Some(m) = re.find(&console.pending) {
            let matched = m.as_str().to_string();
            let end = m.end();
            console.pending.drain(..end);
            return Ok(matched);
        }
        s.now = s.now.saturating_add(timeout);
        err(
            ErrorKind::Timeout,
            &format!(
                "`{pattern}` did not appear on {name} within {}",
                human_duration(timeout)
            ),
        )
    }

    pub(crate) fn serial_write(&self, name: &str, data: &[u8]) -> Result<()> {
        self.call(Call::SerialWrite {
            name: name.to_string(),
            data: data.to_vec(),
        });
        Ok(())
    }

    /// `not-found` unless the device config configures `target`.
    fn target(&self, target: &str) -> Result<()> {
        let key = match target {
            "device" => "device_ip",
            "control-host" => "control_host",
            other => {
                return err(
                    ErrorKind::NotFound,
                    &format!("unknown SSH target `{other}`"),
                );
            }
        };
        if self.configured(key) {
            Ok(())
        } else {
            err(
                ErrorKind::NotFound,
                &format!(
                    "SSH target `{target}` is not configured: the device config has no `{key}`"
                ),
            )
        }
    }

    pub(crate) fn ssh_connect(
        &self,
        target: &str,
        _timeout: Duration,
        user: Option<&str>,
    ) -> Result<()> {
        self.call(Call::Connect {
            target: target.to_string(),
            user: user.map(str::to_string),
        });
        self.target(target)?;
        let answer = self
            .0
            .borrow_mut()
            .connect
            .get_mut(target)
            .and_then(Script::next);
        answer.unwrap_or(Ok(()))
    }

    pub(crate) fn ssh_exec(
        &self,
        target: &str,
        command: &str,
        _timeout: Duration,
    ) -> Result<Output> {
        self.call(Call::Exec {
            target: target.to_string(),
            command: command.to_string(),
        });
        let answer = answer(&mut self.0.borrow_mut().exec, target, command);
        answer.unwrap_or_else(|| ok(""))
    }

    pub(crate) fn ssh_upload(
        &self,
        target: &str,
        path: &str,
        data: &[u8],
        mode: u32,
    ) -> Result<()> {
        self.call(Call::Upload {
            target: target.to_string(),
            path: path.to_string(),
            mode,
            data: data.to_vec(),
        });
        Ok(())
    }

    fn remote_file(&self, target: &str, path: &str) -> Result<Vec<u8>> {
        self.call(Call::Download {
            target: target.to_string(),
            path: path.to_string(),
        });
        self.0
            .borrow()
            .files
            .get(&(target.to_string(), path.to_string()))
            .cloned()
            .ok_or_else(|| {
                Error::new(
                    ErrorKind::NotFound,
                    format!("{path} does not exist on {target}"),
                )
            })
    }

    pub(crate) fn ssh_download(&self, target: &str, path: &str) -> Result<Vec<u8>> {
        self.remote_file(target, path)
    }

    pub(crate) fn ssh_download_artifact(
        &self,
        target: &str,
        path: &str,
        artifact: &str,
    ) -> Result<u64> {
        let data = self.remote_file(target, path)?;
        let n = data.len() as u64;
        self.0
            .borrow_mut()
            .artifacts
            .insert(artifact.to_string(), data);
        Ok(n)
    }

    /// `wait-reachable` / `authorize-key`: attempts until one works, one
    /// fails for good or `timeout` passes (at least one attempt).
    pub(crate) fn ssh_poll(&self, target: &str, timeout: Duration, authorize: bool) -> Result<()> {
        self.call(if authorize {
            Call::AuthorizeKey {
                target: target.to_string(),
                timeout,
            }
        } else {
            Call::WaitReachable {
                target: target.to_string(),
                timeout,
            }
        });
        self.target(target)?;
        let start = self.elapsed();
        loop {
            let answer = {
                let mut s = self.0.borrow_mut();
                let scripts = if authorize {
                    &mut s.authorize
                } else {
                    &mut s.reachable
                };
                scripts.get_mut(target).and_then(Script::next)
            };
            let e = match answer.unwrap_or(Ok(())) {
                Ok(()) => return Ok(()),
                Err(e) if e.is_permanent() => return Err(e),
                Err(e) => e,
            };
            let waited = self.elapsed().saturating_sub(start);
            if waited >= timeout {
                if timeout.is_zero() {
                    return Err(e);
                }
                return err(
                    ErrorKind::Timeout,
                    &format!(
                        "{target} did not answer within {}: {}",
                        human_duration(timeout),
                        e.message()
                    ),
                );
            }
            let poll = self.0.borrow().poll.max(Duration::from_millis(1));
            self.advance(poll.min(timeout - waited));
        }
    }

    pub(crate) fn do_http(&self, endpoint: Option<&str>, req: &Request) -> Result<Response> {
        self.call(Call::Http {
            endpoint: endpoint.map(str::to_string),
            method: req.method().to_string(),
            url: req.url().to_string(),
            body: req.body_bytes().to_vec(),
        });
        let needs = match endpoint {
            Some("control-host") => Some("control_host"),
            Some("maas") => Some("maas_url"),
            _ => None,
        };
        if let Some(key) = needs
            && !self.configured(key)
        {
            return err(
                ErrorKind::NotFound,
                &format!(
                    "HTTP endpoint `{}` is not configured: the device config has no `{key}`",
                    endpoint.unwrap_or_default()
                ),
            );
        }
        let request = format!("{} {}", req.method(), req.url());
        let scope = endpoint.unwrap_or_default();
        let answer = answer(&mut self.0.borrow_mut().http, scope, &request);
        answer.unwrap_or_else(|| {
            err(
                ErrorKind::NotFound,
                &format!(
                    "fake host: no HTTP answer scripted for {} {request}",
                    endpoint.unwrap_or("fetch")
                ),
            )
        })
    }

    pub(crate) fn transfer(
        &self,
        source: &Source,
        target: Option<&str>,
        sink: &str,
    ) -> Result<Report> {
        self.call(Call::Transfer {
            source: source.clone(),
            target: target.map(str::to_string),
            sink: sink.to_string(),
        });
        let answer = self.0.borrow_mut().transfers.next();
        answer.unwrap_or_else(|| moved(0))
    }
}

fn level_name(level: Level) -> &'static str {
    match level {
        Level::Debug => "DEBUG",
        Level::Info => "INFO",
        Level::Warning => "WARNING",
        Level::Error => "ERROR",
    }
}

/// A [`FakeHost`] installed on the current thread; uninstalled when
/// dropped. Derefs to the host, to look at what happened.
#[must_use = "the host is uninstalled when the guard is dropped"]
#[derive(Debug)]
pub struct Installed(FakeHost);

impl Deref for Installed {
    type Target = FakeHost;

    fn deref(&self) -> &FakeHost {
        &self.0
    }
}

impl Drop for Installed {
    fn drop(&mut self) {
        CURRENT.with(|c| {
            let mut hosts = c.borrow_mut();
            if let Some(i) = hosts.iter().rposition(|h| Rc::ptr_eq(&h.0, &self.0.0)) {
                hosts.remove(i);
            }
        });
    }
}

#[cfg(test)]
mod tests {
    use serde_json::json;

    use super::*;
    use crate::{config, http, job, log, power, serial, ssh, transfer};

    #[test]
    fn scripts_are_used_in_order_and_their_last_answer_repeats() {
        let host = FakeHost::new()
            .config(json!({"control_host": "ch"}))
            .exec("control-host", "a", [exit(1, "", "x"), ok("y")])
            .exec("control-host", pattern("^b"), [ok("b!")])
            .install();
        let s = ssh::connect("control-host").unwrap();
        let outs: Vec<i32> = (0..3).map(|_| s.exec("a").unwrap().status).collect();
        assert_eq!(outs, [1, 0, 0]);
        assert_eq!(s.exec("bc").unwrap().stdout, "b!");
        assert_eq!(s.exec("other").unwrap(), Output::new(0, "", ""));
        assert_eq!(
            host.commands("control-host"),
            ["a", "a", "a", "bc", "other"]
        );
    }

    #[test]
    fn what_the_config_does_not_configure_fails_as_the_runtime_would() {
        let _host = FakeHost::new().install();
        assert_eq!(
            ssh::connect("device").unwrap_err().kind(),
            ErrorKind::NotFound
        );
        assert_eq!(
            power::run("reboot_script").unwrap_err().kind(),
            ErrorKind::NotFound
        );
        assert_eq!(
            serial::open("console").err().unwrap().kind(),
            ErrorKind::NotFound
        );
        let e = http::call("control-host", http::Request::get("/health")).unwrap_err();
        assert_eq!(e.kind(), ErrorKind::NotFound);
    }

    #[test]
    fn waits_take_virtual_time() {
        let host = FakeHost::new()
            .config(json!({"device_ip": "d"}))
            .reachable("device", [err(ErrorKind::Io, "refused")])
            .poll_interval(Duration::from_secs(10))
            .install();
        let e = ssh::wait_reachable("device", Duration::from_secs(1200)).unwrap_err();
        assert_eq!(e.kind(), ErrorKind::Timeout);
        assert!(e.message().contains("within 20 min: refused"), "{e}");
        assert_eq!(host.elapsed(), Duration::from_secs(1200));
        // A zero deadline is one attempt, its own error.
        assert_eq!(
            ssh::wait_reachable("device", Duration::ZERO)
                .unwrap_err()
                .kind(),
            ErrorKind::Io
        );
    }

    #[test]
    fn everything_is_recorded() {
        let host = FakeHost::new()
            .config(json!({"device_ip": "d", "maas_url": "http://m", "serial_host": "s", "serial_port": 1}))
            .job(json!({"provision_data": {"url": "http://i/x"}}))
            .http("maas", "GET /api/2.0/version/", [response(200, "{\"version\": \"3.5.0\"}")])
            .serial("console", "boot...\nlogin: ")
            .file("device", "/etc/hostname", b"pi\n")
            .transfers([moved(42)])
            .call_cost(Duration::from_millis(5))
            .install();
        log::info("hello");
        log::print("out\n");
        let r = http::call("maas", http::Request::get("/api/2.0/version/")).unwrap();
        assert_eq!(r.status, 200);
        let port = serial::open("console").unwrap();
        assert_eq!(
            port.wait_for(r"login:\s*$", Duration::from_secs(5))
                .unwrap(),
            "login: "
        );
        assert!(
            port.wait_for("login", Duration::from_secs(5))
                .unwrap_err()
                .is_timeout()
        );
        let s = ssh::connect_as("device", "ubuntu").unwrap();
        assert_eq!(s.download("/etc/hostname").unwrap(), b"pi\n");
        let report = transfer::to_ssh(
            transfer::Source::Url("http://i/x".into()),
            &s,
            "dd of=/dev/sda",
            Duration::from_secs(9),
        )
        .unwrap();
        assert_eq!(report.bytes, 42);
        job::set_device_info("kind", &"pi").unwrap();
        assert_eq!(
            config::Config::load()
                .unwrap()
                .text("device_ip")
                .required("x")
                .unwrap(),
            "d"
        );
        assert_eq!(job::provision_data::<Value>().unwrap()["url"], "http://i/x");
        assert_eq!(
            host.trace(),
            [
                "http maas GET /api/2.0/version/",
                "serial open console",
                r"serial console wait-for login:\s*$",
                "serial console wait-for login",
                "ssh connect device as ubuntu",
                "download device:/etc/hostname",
                "transfer url http://i/x -> device: dd of=/dev/sda",
                "device-info kind=\"pi\"",
            ]
        );
        assert_eq!(host.log(), ["INFO hello"]);
        assert_eq!(host.stdout(), "out\n");
        assert_eq!(host.device_info()["kind"], "pi");
        assert_eq!(host.commands("device"), ["dd of=/dev/sda"]);
        // 8 calls at 5 ms, and the 5 s wait-for that timed out.
        assert_eq!(host.elapsed(), Duration::from_millis(5040));
    }

    #[test]
    fn installs_nest_and_uninstall() {
        let outer = FakeHost::new().install();
        {
            let inner = FakeHost::new().install();
            log::info("inner");
            assert_eq!(inner.log().len(), 1);
        }
        log::info("outer");
        assert_eq!(outer.log(), ["INFO outer"]);
        drop(outer);
        assert!(current().is_none());
    }
}
