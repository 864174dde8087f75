//! The device configuration (`default.yaml`): the lab's description of one
//! device, read once per invocation.
//!
//! Keys are kept as JSON values so every connector can read its own keys;
//! the runtime's typed view covers the generic keys and its own
//! `connector_runtime` section.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

use serde::Deserialize;
use serde_json::{Map, Value};

/// Key of the runtime's own settings inside the device config. Connectors
/// never see it.
pub const RUNTIME_KEY: &str = "connector_runtime";

/// Why the device config could not be used.
#[derive(Debug, thiserror::Error)]
pub enum ConfigError {
    #[error("cannot read device config {path}: {source}; check the -c/--config path")]
    Read {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("device config {path} is not valid YAML: {message}")]
    Yaml { path: PathBuf, message: String },
    #[error("device config {path} must be a YAML mapping of keys to values, found {found}")]
    NotAMapping { path: PathBuf, found: &'static str },
    #[error("device config key `{key}` {problem}")]
    BadKey { key: String, problem: String },
    #[error("device config key `{key}` is missing; add it to the device config")]
    Missing { key: String },
}

/// Runtime settings from the `connector_runtime` section of the device
/// config. Every field has a default that matches the reference's
/// behaviour; labs and tests override what they need.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct RuntimeSettings {
    /// OpenSSH client config to honour (default `~/.ssh/config`).
    pub ssh_config: Option<PathBuf>,
    /// Private keys to offer (default: the OpenSSH defaults in `~/.ssh`).
    pub identity_files: Vec<PathBuf>,
    /// Verify host keys against `known_hosts` (the reference disables it).
    pub strict_host_key_checking: bool,
    /// known_hosts file used when `strict_host_key_checking` is on
    /// (default `~/.ssh/known_hosts`).
    pub known_hosts: Option<PathBuf>,
    /// Base URL of the control host's REST API
    /// (default `http://<control_host>:8000`).
    pub control_host_url: Option<String>,
    /// Where `lp:<user>` keys are fetched; `{user}` is replaced.
    pub launchpad_keys_url: String,
    /// Where `gh:<user>` keys are fetched; `{user}` is replaced.
    pub github_keys_url: String,
    /// Seconds between serial reconnection attempts (reference: 30).
    pub serial_retry_seconds: f64,
    /// Extra PEM CA certificates trusted for HTTPS (key servers, images).
    pub extra_ca_certs: Vec<PathBuf>,
    /// Seconds between polls of waits such as `wait-reachable` (reference: 10).
    /// Also scales the default reserve's retry pauses: at 10 they are the
    /// reference's (key import backoff 1..100 s, 60 s between key
    /// installation attempts).
    pub poll_interval_seconds: f64,
    /// Seconds to let the control host finish shutting down once it stopped
    /// answering, before its reboot script runs (reference: 10).
    pub control_host_settle_seconds: f64,
    /// Limits for connectors running for this device, over the lab
    /// file's (see [`crate::limits::Limits`] for the keys).
    pub limits: Option<Value>,
    /// Lab file to use (after `--lab` and `$TFDC_LAB_FILE`).
    pub lab_file: Option<PathBuf>,
    /// Named HTTP endpoints for this device (name → base URL), over the
    /// lab file's (see [`crate::endpoints`]).
    pub endpoints: crate::endpoints::Endpoints,
}

impl Default for RuntimeSettings {
    fn default() -> Self {
        RuntimeSettings {
            ssh_config: None,
            identity_files: Vec::new(),
            strict_host_key_checking: false,
            known_hosts: None,
            control_host_url: None,
            launchpad_keys_url: "https://launchpad.net/~{user}/+sshkeys".into(),
            github_keys_url: "https://github.com/{user}.keys".into(),
            serial_retry_seconds: 30.0,
            extra_ca_certs: Vec::new(),
            poll_interval_seconds: 10.0,
            control_host_settle_seconds: 10.0,
            limits: None,
            lab_file: None,
            endpoints: crate::endpoints::Endpoints::new(),
        }
    }
}

/// A parsed device config.
#[derive(Debug, Clone)]
pub struct DeviceConfig {
    path: PathBuf,
    keys: Map<String, Value>,
    /// The runtime's own settings.
    pub runtime: RuntimeSettings,
}

impl DeviceConfig {
    /// Reads and parses `path`.
    pub fn load(path: &Path) -> Result<Self, ConfigError> {
        let text = std::fs::read_to_string(path).map_err(|source| ConfigError::Read {
            path: path.to_path_buf(),
            source,
        })?;
        Self::parse(path, &text)
    }

    /// Parses YAML text; `path` is only used in messages.
    pub fn parse(path: &Path, text: &str) -> Result<Self, ConfigError> {
        let value: Value = serde_norway::from_str(text).map_err(|e| ConfigError::Yaml {
            path: path.to_path_buf(),
            message: e.to_string(),
        })?;
        let keys = match value {
            Value::Object(map) => map,
            other => {
                return Err(ConfigError::NotAMapping {
                    path: path.to_path_buf(),
                    found: kind_of(&other),
                });
            }
        };
        let runtime = match keys.get(RUNTIME_KEY) {
            None | Some(Value::Null) => RuntimeSettings::default(),
            Some(v) => serde_json::from_value(v.clone()).map_err(|e| ConfigError::BadKey {
                key: RUNTIME_KEY.into(),
                problem: format!("is invalid: {e}"),
            })?,
        };
        if let Some(limits) = &runtime.limits {
            serde_json::from_value::<crate::limits::Limits>(limits.clone()).map_err(|e| {
                ConfigError::BadKey {
                    key: format!("{RUNTIME_KEY}.limits"),
                    problem: format!("is invalid: {e}"),
                }
            })?;
        }
        crate::endpoints::check_all(&runtime.endpoints).map_err(|problem| ConfigError::BadKey {
            key: format!("{RUNTIME_KEY}.endpoints"),
            problem: format!("is invalid: {problem}"),
        })?;
        Ok(DeviceConfig {
            path: path.to_path_buf(),
            keys,
            runtime,
        })
    }

    /// Where the config was read from.
    pub fn path(&self) -> &Path {
        &self.path
    }

    /// Raw value of `key`.
    pub fn get(&self, key: &str) -> Option<&Value> {
        self.keys.get(key)
    }

    /// `key` as a non-empty string. Numbers are accepted and rendered (YAML
    /// turns `serial_port: 3001` into a number).
    pub fn string(&self, key: &str) -> Option<String> {
        match self.keys.get(key)? {
            Value::String(s) if !s.is_empty() => Some(s.clone()),
            Value::Number(n) => Some(n.to_string()),
            _ => None,
        }
    }

    /// `key` as a string, or an error naming the key.
    pub fn require_string(&self, key: &str) -> Result<String, ConfigError> {
        self.string(key)
            .ok_or_else(|| ConfigError::Missing { key: key.into() })
    }

    /// `device_ip`, if set.
    pub fn device_ip(&self) -> Option<String> {
        self.string("device_ip")
    }

    /// `agent_name`, or empty.
    pub fn agent_name(&self) -> String {
        self.string("agent_name").unwrap_or_default()
    }

    /// `key` as a list of command strings. `Ok(None)` if absent or null.
    pub fn command_list(&self, key: &str) -> Result<Option<Vec<String>>, ConfigError> {
        match self.keys.get(key) {
            None | Some(Value::Null) => Ok(None),
            Some(Value::Array(items)) => items
                .iter()
                .map(|item| match item {
                    Value::String(s) => Ok(s.clone()),
                    other => Err(ConfigError::BadKey {
                        key: key.into(),
                        problem: format!(
                            "must be a list of command strings, but an entry is {}",
                            kind_of(other)
                        ),
                    }),
                })
                .collect::<Result<Vec<_>, _>>()
                .map(Some),
            Some(other) => Err(ConfigError::BadKey {
                key: key.into(),
                problem: format!(
                    "must be a list of command strings, found {}",
                    kind_of(other)
                ),
            }),
        }
    }

    /// The `env` mapping exported to test commands. Scalars are rendered as
    /// strings; nested values are an error naming the variable.
    pub fn env(&self) -> Result<BTreeMap<String, String>, ConfigError> {
        let mut out = BTreeMap::new();
        match self.keys.get("env") {
            None | Some(Value::Null) => {}
            Some(Value::Object(map)) => {
                for (name, value) in map {
                    let text = match value {
                        Value::Null => String::new(),
                        Value::String(s) => s.clone(),
                        Value::Bool(b) => b.to_string(),
                        Value::Number(n) => n.to_string(),
                        other => {
                            return Err(ConfigError::BadKey {
                                key: format!("env.{name}"),
                                problem: format!("must be a string, found {}", kind_of(other)),
                            });
                        }
                    };
                    out.insert(name.clone(), text);
                }
            }
            Some(other) => {
                return Err(ConfigError::BadKey {
                    key: "env".into(),
                    problem: format!("must be a mapping, found {}", kind_of(other)),
                });
            }
        }
        Ok(out)
    }

    /// Top-level keys and values, for the deprecated `{key}` templating.
    pub fn keys(&self) -> &Map<String, Value> {
        &self.keys
    }

    /// The config a connector may read: the runtime section is dropped and
    /// the values of secret-looking keys are removed at any depth.
    pub fn guest_view(&self) -> Value {
        let mut map = self.keys.clone();
        map.remove(RUNTIME_KEY);
        let mut value = Value::Object(map);
        strip_secrets(&mut value);
        value
    }
}

/// Whether a config key names a secret the connector must not see.
pub fn is_secret_key(key: &str) -> bool {
    let k = key.to_ascii_lowercase();
    [
        "password",
        "passwd",
        "secret",
        "token",
        "api_key",
        "apikey",
        "private_key",
        "credential",
    ]
    .iter()
    .any(|needle| k.contains(needle))
}

fn strip_secrets(value: &mut Value) {
    match value {
        Value::Object(map) => {
            map.retain(|k, _| !is_secret_key(k));
            for v in map.values_mut() {
                strip_secrets(v);
            }
        }
        Value::Array(items) => items.iter_mut().for_each(strip_secrets),
        _ => {}
    }
}

/// A word for a JSON value's type, for messages.
pub fn kind_of(value: &Value) -> &'static str {
    match value {
        Value::Null => "nothing (null)",
        Value::Bool(_) => "a boolean",
        Value::Number(_) => "a number",
        Value::String(_) => "a string",
        Value::Array(_) => "a list",
        Value::Object(_) => "a mapping",
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn parse(text: &str) -> Result<DeviceConfig, ConfigError> {
        DeviceConfig::parse(Path::new("default.yaml"), text)
    }

    #[test]
    fn generic_keys() {
        let c = parse(
            "device_ip: 10.0.0.5\nagent_name: dut1\nserial_port: 3001\nreboot_script: [a b, c]\n",
        )
        .unwrap();
        assert_eq!(c.device_ip().as_deref(), Some("10.0.0.5"));
        assert_eq!(c.agent_name(), "dut1");
        assert_eq!(c.string("serial_port").as_deref(), Some("3001"));
        assert_eq!(
            c.command_list("reboot_script").unwrap().unwrap(),
            vec!["a b", "c"]
        );
        assert!(c.command_list("poweroff_script").unwrap().is_none());
    }

    #[test]
    fn bad_shapes_are_named() {
        assert!(matches!(
            parse("- a\n- b\n"),
            Err(ConfigError::NotAMapping { .. })
        ));
        assert!(matches!(parse("a: [\n"), Err(ConfigError::Yaml { .. })));
        assert!(matches!(parse(""), Err(ConfigError::NotAMapping { .. })));
        let c = parse("reboot_script: reboot now\n").unwrap();
        let err = c.command_list("reboot_script").unwrap_err().to_string();
        assert!(
            err.contains("reboot_script") && err.contains("list"),
            "{err}"
        );
        let err = parse("connector_runtime: {nope: 1}\n")
            .unwrap_err()
            .to_string();
        assert!(err.contains("nope"), "{err}");
        let err = parse("connector_runtime: {endpoints: {maas: 'http://x/'}}\n")
            .unwrap_err()
            .to_string();
        assert!(
            err.contains("connector_runtime.endpoints") && err.contains("reserved"),
            "{err}"
        );
    }

    /// A device's endpoints are runtime settings: parsed, and never shown
    /// to connectors.
    #[test]
    fn endpoints_are_read_and_hidden() {
        let c = parse("connector_runtime: {endpoints: {mirror: 'http://mirror.lab/ubuntu/'}}\n")
            .unwrap();
        assert_eq!(c.runtime.endpoints["mirror"], "http://mirror.lab/ubuntu/");
        assert!(!c.guest_view().to_string().contains("mirror.lab"));
    }

    #[test]
    fn env_renders_scalars_and_rejects_nesting() {
        let c = parse("env: {A: x, B: 3, C: true}\n").unwrap();
        let env = c.env().unwrap();
        assert_eq!(env["B"], "3");
        assert_eq!(env["C"], "true");
        let c = parse("env: {A: [1]}\n").unwrap();
        assert!(c.env().unwrap_err().to_string().contains("env.A"));
    }

    #[test]
    fn guest_view_hides_secrets_and_runtime_section() {
        let c = parse(
            "device_ip: 1.2.3.4\nmaas_api_key: k\ncontrol: {bmc_password: p, user: u}\nconnector_runtime: {serial_retry_seconds: 1}\n",
        )
        .unwrap();
        let view = c.guest_view().to_string();
        assert!(view.contains("1.2.3.4") && view.contains("\"user\""));
        assert!(!view.contains("maas_api_key") && !view.contains("bmc_password"));
        assert!(!view.contains(RUNTIME_KEY));
        assert_eq!(c.runtime.serial_retry_seconds, 1.0);
    }
}
