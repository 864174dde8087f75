//! Native default `runtest` (reference §3.4): runs `test_data.test_cmds`
//! on the agent host, with the lab's test environment, while the serial
//! console is captured into `test-serial.log`.
//!
//! Kept from the reference on purpose: in list form the exit status is the
//! status of the *last* command (earlier failures are only logged), and
//! variables with empty values are dropped from the environment.
//!
//! Deliberate differences: a `test_cmds` of the wrong type (or a missing
//! `test_data`) is recorded in `device-connector-error.json` instead of
//! only being logged; an empty list is an error with a clear message
//! (the reference crashes with `UnboundLocalError`); non-string scalar
//! values in `env` are rendered (`3001`, `true`) instead of crashing the
//! spawn; templates (`{env[NAME]}`) cannot read `test_data.secrets`, which
//! the reference would substitute and then log with the command; and a
//! background process holding the output pipe no longer hangs the stage
//! (see [`super::shell`]).

use std::collections::{BTreeMap, BTreeSet};
use std::ffi::OsString;
use std::io::Write;
use std::os::unix::fs::{OpenOptionsExt, PermissionsExt};
use std::path::Path;
use std::sync::Arc;

use serde_json::{Map, Value};

use super::shell::{self, Env, OUTPUT_GRACE};
use super::template;
use crate::config::{DeviceConfig, kind_of};
use crate::context::StageContext;
use crate::error::StageError;
use crate::stage::Stage;

/// File the string form of `test_cmds` is written to, in the run directory.
pub const SCRIPT_NAME: &str = "tf_cmd_script";

/// The reference's message for a `test_cmds` that is neither a list nor a
/// string.
pub const BAD_TYPE: &str = "test_cmds field must be a list or string";

/// Runs the default runtest and returns the exit status.
pub async fn run(cx: &Arc<StageContext>) -> Result<u8, StageError> {
    tracing::info!(target: "tfdc::defaults", "BEGIN testrun");
    // The pre-test hook: `Setting up test on control host <host>`, then a
    // best-effort request (nothing without a control host).
    crate::control_host::setup(&cx.config, &cx.http, "test", None).await;
    let test_cmds = test_cmds(cx)?;
    // The console is captured into test-serial.log while the commands run.
    let rc = {
        let _capture = cx.serial.capture();
        run_commands(cx, &test_cmds).await?
    };
    tracing::info!(target: "tfdc::defaults", "END testrun");
    Ok(shell::exit_status(rc))
}

async fn run_commands(cx: &StageContext, test_cmds: &Value) -> Result<i32, StageError> {
    let secrets = cx
        .job
        .secrets()
        .map_err(|e| StageError::failed("JobDataError", e.to_string()))?;
    let runner = Runner {
        cwd: cx.rundir.root(),
        env: command_env(std::env::vars_os(), &cx.config, &secrets)?,
        template_keys: template_keys(&cx.config)?,
        secret_names: secrets.into_keys().collect(),
    };
    match test_cmds {
        Value::Array(items) => runner.run_list(items).await,
        Value::String(script) => runner.run_script(script).await,
        other => Err(StageError::failed(
            "TypeError",
            format!("{BAD_TYPE} (found {})", kind_of(other)),
        )),
    }
}

/// `test_data.test_cmds` (null when absent); a missing `test_data` is an
/// error.
fn test_cmds(cx: &StageContext) -> Result<Value, StageError> {
    let test_data = cx
        .job
        .stage_data(Stage::Runtest)
        .map_err(|e| StageError::failed("JobDataError", e.to_string()))?
        .ok_or_else(|| {
            StageError::failed(
                "KeyError",
                "the job has no test_data; runtest needs test_data.test_cmds",
            )
        })?;
    Ok(test_data.get("test_cmds").cloned().unwrap_or(Value::Null))
}

/// Builds the test commands' environment (reference §3.4 steps 4-5): the
/// `inherited` environment, then the config's `env`, then `AGENT_NAME`
/// and `REBOOT_SCRIPT`, then the job's secrets, each overriding the
/// previous; finally every variable with an empty value is removed.
///
/// Values Python treats as false (`false`, `0`, null) in `env` count as
/// empty, so they remove the variable as in the reference. Errors name
/// variables, never values.
pub fn command_env(
    inherited: impl IntoIterator<Item = (OsString, OsString)>,
    config: &DeviceConfig,
    secrets: &BTreeMap<String, String>,
) -> Result<Env, StageError> {
    let config_error =
        |e: crate::config::ConfigError| StageError::failed("ConfigError", e.to_string());
    let mut env: Env = inherited.into_iter().collect();
    let raw_env = config.get("env").and_then(Value::as_object);
    for (name, value) in config.env().map_err(config_error)? {
        let falsy = raw_env
            .and_then(|m| m.get(&name))
            .is_some_and(|v| matches!(v, Value::Bool(false)) || v.as_f64() == Some(0.0));
        let value = if falsy { String::new() } else { value };
        insert(&mut env, &name, value)?;
    }
    insert(&mut env, "AGENT_NAME", config.agent_name())?;
    insert(&mut env, "REBOOT_SCRIPT", reboot_script(config)?)?;
    for (name, value) in secrets {
        insert(&mut env, name, value.clone())?;
    }
    env.retain(|_, value| !value.is_empty());
    Ok(env)
}

/// `REBOOT_SCRIPT`: the `reboot_script` entries joined by `;`.
fn reboot_script(config: &DeviceConfig) -> Result<String, StageError> {
    Ok(match config.get("reboot_script") {
        Some(Value::String(s)) => s.clone(),
        _ => config
            .command_list("reboot_script")
            .map_err(|e| StageError::failed("ConfigError", e.to_string()))?
            .unwrap_or_default()
            .join(";"),
    })
}

/// What `{key}` templates can name: the config's top-level keys, with
/// `AGENT_NAME` and `REBOOT_SCRIPT` added to `env` as the reference does
/// before it templates. Secrets are deliberately left out (the reference
/// adds them too, and then logs the expanded command).
pub fn template_keys(config: &DeviceConfig) -> Result<Map<String, Value>, StageError> {
    let mut keys = config.keys().clone();
    let mut env = match keys.get("env") {
        Some(Value::Object(map)) => map.clone(),
        _ => Map::new(),
    };
    env.insert("AGENT_NAME".into(), Value::String(config.agent_name()));
    env.insert(
        "REBOOT_SCRIPT".into(),
        Value::String(reboot_script(config)?),
    );
    keys.insert("env".into(), Value::Object(env));
    Ok(keys)
}

fn insert(env: &mut Env, name: &str, value: String) -> Result<(), StageError> {
    if name.is_empty() || name.contains(['=', '\0']) {
        return Err(StageError::failed(
            "ValueError",
            format!("invalid environment variable name {name:?} for the test commands"),
        ));
    }
    if value.contains('\0') {
        return Err(StageError::failed(
            "ValueError",
            format!("the value of environment variable {name} contains a NUL byte"),
        ));
    }
    env.insert(name.into(), value.into());
    Ok(())
}

/// Runs the commands of one stage.
struct Runner<'a> {
    cwd: &'a Path,
    env: Env,
    template_keys: Map<String, Value>,
    /// Names of `test_data.secrets`, for a clearer template error.
    secret_names: BTreeSet<String>,
}

impl Runner<'_> {
    /// Expands the deprecated `{key}` templating if `command` asks for it.
    fn templated(&self, command: &str) -> Result<String, StageError> {
        if !template::is_templated(command) {
            return Ok(command.to_string());
        }
        tracing::warn!(target: "tfdc::defaults", "DEPRECATED - Detected use of double-braces in test_cmds");
        template::expand(command, &self.template_keys).map_err(|e| {
            let mut message = format!(
                "cannot fill in config values in test_cmds: {}; a command containing `{{{{` is read as a Python format string (deprecated): double every literal brace, or avoid `{{{{`",
                e.message
            );
            let missing = e.message.trim_matches('\'');
            if e.kind == "KeyError" && self.secret_names.contains(missing) {
                message.push_str(
                    "; test_data.secrets are only available as environment variables, not in templates",
                );
            }
            StageError::failed(e.kind, message)
        })
    }

    async fn run_command(&self, command: &str) -> Result<i32, StageError> {
        shell::run(
            command,
            &self.env,
            self.cwd,
            OUTPUT_GRACE,
            crate::logging::print_bytes,
        )
        .await
        .map_err(|e| {
            StageError::failed(
                "OSError",
                format!("cannot run test command in {}: {e}", self.cwd.display()),
            )
        })
    }

    /// List form: every command in turn; the status is the last command's.
    async fn run_list(&self, items: &[Value]) -> Result<i32, StageError> {
        if items.is_empty() {
            return Err(StageError::failed(
                "ValueError",
                "test_cmds is an empty list: there is nothing to run",
            ));
        }
        let mut rc = 0;
        for (index, item) in items.iter().enumerate() {
            let Value::String(command) = item else {
                return Err(StageError::failed(
                    "TypeError",
                    format!(
                        "test_cmds[{index}] must be a string, found {}",
                        kind_of(item)
                    ),
                ));
            };
            let command = self.templated(command)?;
            tracing::info!(target: "tfdc::defaults", "Running: {command}");
            rc = self.run_command(&command).await?;
            if rc != 0 {
                tracing::warn!(target: "tfdc::defaults", "Command failed, rc={rc}");
            }
        }
        Ok(rc)
    }

    /// String form: written to `tf_cmd_script` (mode 0775) and executed.
    async fn run_script(&self, script: &str) -> Result<i32, StageError> {
        let script = if script.starts_with("#!") {
            script.to_string()
        } else {
            format!("#!/bin/bash\n{script}")
        };
        let script = self.templated(&script)?;
        let path = self.cwd.join(SCRIPT_NAME);
        write_script(&path, &script).map_err(|e| {
            StageError::failed("OSError", format!("cannot write {}: {e}", path.display()))
        })?;
        let rc = self.run_command(&format!("./{SCRIPT_NAME}")).await?;
        if rc != 0 {
            tracing::warn!(target: "tfdc::defaults", "Tests failed, rc={rc}");
        }
        Ok(rc)
    }
}

/// Replaces `path` with `text`, mode 0775 whatever the umask.
fn write_script(path: &Path, text: &str) -> std::io::Result<()> {
    match std::fs::remove_file(path) {
        Ok(()) => {}
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
        Err(e) => return Err(e),
    }
    let mut file = std::fs::OpenOptions::new()
        .write(true)
        .create_new(true)
        .mode(0o775)
        .open(path)?;
    file.write_all(text.as_bytes())?;
    file.set_permissions(std::fs::Permissions::from_mode(0o775))?;
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn config(text: &str) -> DeviceConfig {
        DeviceConfig::parse(Path::new("default.yaml"), text).unwrap()
    }

    fn get<'a>(env: &'a Env, name: &str) -> Option<&'a str> {
        env.get(&OsString::from(name)).and_then(|v| v.to_str())
    }

    fn inherited() -> Vec<(OsString, OsString)> {
        vec![
            ("PATH".into(), "/bin".into()),
            ("EMPTY".into(), "".into()),
            ("OVERRIDDEN".into(), "old".into()),
            ("CLEARED".into(), "was-set".into()),
            ("AGENT_NAME".into(), "from-process".into()),
        ]
    }

    #[test]
    fn environment_layers_and_empty_values() {
        let c = config(
            "agent_name: agent-7\nreboot_script: [snmp off, snmp on]\nenv:\n  DEVICE_IP: 10.0.0.9\n  OVERRIDDEN: new\n  CLEARED: ''\n  PORT: 3001\n  FLAG: true\n  OFF: false\n  ZERO: 0\n  NOTHING: null\n  SECRET_TOO: from-config\n",
        );
        let mut secrets = BTreeMap::new();
        secrets.insert("TOKEN".to_string(), "s3cr3t-value".to_string());
        secrets.insert("SECRET_TOO".to_string(), "from-job".to_string());
        secrets.insert("UNRESOLVED".to_string(), String::new());
        let env = command_env(inherited(), &c, &secrets).unwrap();
        assert_eq!(get(&env, "PATH"), Some("/bin"));
        assert_eq!(get(&env, "DEVICE_IP"), Some("10.0.0.9"));
        assert_eq!(get(&env, "OVERRIDDEN"), Some("new"));
        assert_eq!(get(&env, "AGENT_NAME"), Some("agent-7"));
        assert_eq!(get(&env, "REBOOT_SCRIPT"), Some("snmp off;snmp on"));
        assert_eq!(get(&env, "PORT"), Some("3001"));
        assert_eq!(get(&env, "FLAG"), Some("true"));
        assert_eq!(get(&env, "TOKEN"), Some("s3cr3t-value"));
        // Secrets win over the config's env.
        assert_eq!(get(&env, "SECRET_TOO"), Some("from-job"));
        // Empty and Python-false values remove the variable, inherited or not.
        for gone in ["EMPTY", "CLEARED", "OFF", "ZERO", "NOTHING", "UNRESOLVED"] {
            assert!(get(&env, gone).is_none(), "{gone}");
        }
    }

    #[test]
    fn missing_agent_name_and_reboot_script_remove_the_variables() {
        let env = command_env(
            inherited(),
            &config("device_ip: 1.2.3.4\n"),
            &BTreeMap::new(),
        )
        .unwrap();
        assert!(get(&env, "AGENT_NAME").is_none());
        assert!(get(&env, "REBOOT_SCRIPT").is_none());
        assert!(
            get(&env, "DEVICE_IP").is_none(),
            "DEVICE_IP only comes from env"
        );
    }

    #[test]
    fn errors_name_the_variable_but_never_the_value() {
        let c = config("env: {NESTED: [1, 2]}\n");
        let e = command_env(Vec::new(), &c, &BTreeMap::new()).unwrap_err();
        assert!(e.message.contains("env.NESTED"), "{}", e.message);
        let mut secrets = BTreeMap::new();
        secrets.insert("BAD".to_string(), "top\0secret".to_string());
        let e = command_env(Vec::new(), &config("{}\n"), &secrets).unwrap_err();
        assert!(e.message.contains("BAD"), "{}", e.message);
        assert!(!e.message.contains("secret"), "{}", e.message);
        let mut secrets = BTreeMap::new();
        secrets.insert("A=B".to_string(), "value-x".to_string());
        let e = command_env(Vec::new(), &config("{}\n"), &secrets).unwrap_err();
        assert!(!e.message.contains("value-x"), "{}", e.message);
    }

    #[test]
    fn templates_see_agent_name_and_reboot_script_in_env() {
        let c = config("agent_name: a1\nreboot_script: [x, y]\nenv: {DEVICE_IP: 1.2.3.4}\n");
        let keys = template_keys(&c).unwrap();
        let got = template::expand(
            "{env[DEVICE_IP]} {env[AGENT_NAME]} {env[REBOOT_SCRIPT]} {{}}",
            &keys,
        )
        .unwrap();
        assert_eq!(got, "1.2.3.4 a1 x;y {}");
        let keys = template_keys(&config("{}\n")).unwrap();
        assert_eq!(
            template::expand("{env} {{}}", &keys).unwrap(),
            "{'AGENT_NAME': '', 'REBOOT_SCRIPT': ''} {}"
        );
    }

    #[test]
    fn script_is_written_with_mode_0775() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join(SCRIPT_NAME);
        std::fs::write(&path, "old").unwrap();
        write_script(&path, "#!/bin/sh\necho hi\n").unwrap();
        let meta = std::fs::metadata(&path).unwrap();
        assert_eq!(meta.permissions().mode() & 0o7777, 0o775);
        assert_eq!(
            std::fs::read_to_string(&path).unwrap(),
            "#!/bin/sh\necho hi\n"
        );
    }
}
