//! What maas2 reads from the device config and the job.

use std::time::Duration;

use serde_json::Value;

/// Device-config settings (`default.yaml`; `maas_api_key` is not visible
/// here: the host keeps it).
#[derive(Debug, Clone, PartialEq)]
pub struct Settings {
    /// `node_id`: the machine's MAAS system id.
    pub node_id: String,
    /// `agent_name`, for messages.
    pub agent_name: String,
    /// `device_ip`: must be among the addresses MAAS reports (provision
    /// needs it; cleanup does not).
    pub device_ip: Option<String>,
    /// `timeout_min` (minutes, default 60; fractions allowed).
    pub deploy_timeout: Duration,
    /// `reset_efi`.
    pub reset_efi: bool,
    /// `clear_tpm`.
    pub clear_tpm: bool,
    /// `default_disks`, when set and not empty.
    pub default_disks: Option<Value>,
    /// `maas_retry_base_seconds` (default 10): failed MAAS calls are tried
    /// again after 1, 2 and 4 times this.
    pub retry_base: Duration,
    /// `maas_deploy_poll_seconds` (default 60): how often the deployment
    /// state is read.
    pub deploy_poll: Duration,
    /// `maas_release_poll_seconds` (default 10): how often the state is
    /// read while waiting for `Ready` (30 reads after a release, 3 after
    /// each recovery step).
    pub release_poll: Duration,
}

fn string(c: &Value, key: &str) -> Option<String> {
    match c.get(key)? {
        Value::String(s) if !s.trim().is_empty() => Some(s.trim().to_string()),
        Value::Number(n) => Some(n.to_string()),
        _ => None,
    }
}

fn number(c: &Value, key: &str) -> Result<Option<f64>, String> {
    let bad = |v: &Value| format!("device config key `{key}` must be a number, found {v}");
    match c.get(key) {
        None | Some(Value::Null) => Ok(None),
        Some(v @ Value::Number(n)) => n.as_f64().map(Some).ok_or_else(|| bad(v)),
        Some(v @ Value::String(s)) => s.trim().parse().map(Some).map_err(|_| bad(v)),
        Some(v) => Err(bad(v)),
    }
}

fn seconds(c: &Value, key: &str, default: f64) -> Result<Duration, String> {
    let s = number(c, key)?.unwrap_or(default);
    if !(0.0..=86_400.0).contains(&s) {
        return Err(format!(
            "device config key `{key}` must be between 0 and 86400 seconds, found {s}"
        ));
    }
    Ok(Duration::from_secs_f64(s))
}

fn flag(c: &Value, key: &str) -> Result<bool, String> {
    match c.get(key) {
        None | Some(Value::Null) => Ok(false),
        Some(Value::Bool(b)) => Ok(*b),
        Some(v) => Err(format!(
            "device config key `{key}` must be true or false, found {v}"
        )),
    }
}

impl Settings {
    /// Reads the device config (as the connector sees it).
    pub fn from_config(c: &Value) -> Result<Settings, String> {
        if string(c, "maas_url").is_none() {
            let hint = if string(c, "maas_user").is_some() {
                " (`maas_user` names a maas CLI profile, which this connector does not use: it talks to the MAAS API directly)"
            } else {
                ""
            };
            return Err(format!(
                "device config key `maas_url` is missing: set it to the MAAS URL, like http://maas.example:5240/MAAS, and `maas_api_key` to the API key of the MAAS user{hint}"
            ));
        }
        let node_id = string(c, "node_id").ok_or(
            "device config key `node_id` is missing: set it to the machine's MAAS system id",
        )?;
        let minutes = number(c, "timeout_min")?.unwrap_or(60.0);
        if !(minutes > 0.0 && minutes <= 7.0 * 24.0 * 60.0) {
            return Err(format!(
                "device config key `timeout_min` must be a positive number of minutes, found {minutes}"
            ));
        }
        let default_disks = match c.get("default_disks") {
            None | Some(Value::Null) => None,
            Some(Value::Array(a)) if a.is_empty() => None,
            Some(v) => Some(v.clone()),
        };
        Ok(Settings {
            node_id,
            agent_name: string(c, "agent_name").unwrap_or_default(),
            device_ip: string(c, "device_ip"),
            deploy_timeout: Duration::from_secs_f64(minutes * 60.0),
            reset_efi: flag(c, "reset_efi")?,
            clear_tpm: flag(c, "clear_tpm")?,
            default_disks,
            retry_base: seconds(c, "maas_retry_base_seconds", 10.0)?,
            deploy_poll: seconds(c, "maas_deploy_poll_seconds", 60.0)?,
            release_poll: seconds(c, "maas_release_poll_seconds", 10.0)?,
        })
    }
}

/// What the job asks for.
#[derive(Debug, Clone, PartialEq)]
pub struct Options {
    /// `distro` (default `jammy`).
    pub distro: String,
    /// `kernel` → `hwe_kernel`.
    pub kernel: Option<String>,
    /// `user_data` as the job gives it.
    pub user_data: Option<String>,
    /// `disks`, when given (even empty: that is an error later).
    pub disks: Option<Value>,
    /// `ephemeral`.
    pub ephemeral: bool,
    /// Top-level `debug`: log MAAS responses.
    pub debug: bool,
}

impl Default for Options {
    fn default() -> Self {
        Options {
            distro: "jammy".into(),
            kernel: None,
            user_data: None,
            disks: None,
            ephemeral: false,
            debug: false,
        }
    }
}

impl Options {
    /// Reads the job.
    pub fn from_job(job: &Value) -> Result<Options, String> {
        let debug = matches!(job.get("debug"), Some(Value::Bool(true)));
        let pd = match job.get("provision_data") {
            None | Some(Value::Null) => {
                return Ok(Options {
                    debug,
                    ..Options::default()
                });
            }
            Some(v @ Value::Object(_)) => v,
            Some(v) => return Err(format!("provision_data must be a mapping, found {v}")),
        };
        let text = |key: &str| -> Result<Option<String>, String> {
            match pd.get(key) {
                None | Some(Value::Null) => Ok(None),
                Some(Value::String(s)) if s.trim().is_empty() => Ok(None),
                Some(Value::String(s)) => Ok(Some(s.clone())),
                Some(v) => Err(format!("provision_data.{key} must be a string, found {v}")),
            }
        };
        let ephemeral = match pd.get("ephemeral") {
            None | Some(Value::Null) => false,
            Some(Value::Bool(b)) => *b,
            Some(v) => {
                return Err(format!(
                    "provision_data.ephemeral must be true or false, found {v}"
                ));
            }
        };
        Ok(Options {
            distro: text("distro")?
                .map(|d| d.trim().to_string())
                .unwrap_or_else(|| "jammy".into()),
            kernel: text("kernel")?.map(|k| k.trim().to_string()),
            user_data: text("user_data")?,
            disks: pd.get("disks").filter(|v| !v.is_null()).cloned(),
            ephemeral,
            debug,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn defaults_match_the_reference() {
        let s = Settings::from_config(&json!({
            "maas_url": "http://m/MAAS", "node_id": "abc", "device_ip": "10.0.0.1"
        }))
        .unwrap();
        assert_eq!(s.deploy_timeout, Duration::from_secs(3600));
        assert_eq!(s.retry_base, Duration::from_secs(10));
        assert_eq!(s.deploy_poll, Duration::from_secs(60));
        assert_eq!(s.release_poll, Duration::from_secs(10));
        assert!(!s.reset_efi && !s.clear_tpm && s.default_disks.is_none());
        assert_eq!(Options::from_job(&json!({})).unwrap(), Options::default());
    }

    #[test]
    fn fast_settings_and_options() {
        let s = Settings::from_config(&json!({
            "maas_url": "http://m/MAAS", "node_id": "abc", "device_ip": "10.0.0.1",
            "timeout_min": "0.05", "maas_retry_base_seconds": 0.01, "reset_efi": true,
            "default_disks": [],
        }))
        .unwrap();
        assert_eq!(s.deploy_timeout, Duration::from_secs(3));
        assert_eq!(s.retry_base, Duration::from_millis(10));
        assert!(s.reset_efi && s.default_disks.is_none());
        let o = Options::from_job(&json!({"debug": true, "provision_data": {
            "distro": "noble", "kernel": "ga-24.04", "user_data": "#cloud-config\n", "disks": [], "ephemeral": true
        }}))
        .unwrap();
        assert_eq!(o.distro, "noble");
        assert_eq!(o.kernel.as_deref(), Some("ga-24.04"));
        assert_eq!(o.disks, Some(json!([])));
        assert!(o.ephemeral && o.debug);
    }

    #[test]
    fn problems_name_the_key() {
        let base = json!({"maas_url": "http://m/MAAS", "node_id": "abc", "device_ip": "1.2.3.4"});
        let with = |k: &str, v: Value| {
            let mut c = base.clone();
            c[k] = v;
            Settings::from_config(&c).unwrap_err()
        };
        assert!(with("timeout_min", json!(0)).contains("timeout_min"));
        assert!(with("timeout_min", json!("soon")).contains("timeout_min"));
        assert!(with("reset_efi", json!("yes")).contains("reset_efi"));
        assert!(with("maas_deploy_poll_seconds", json!(-1)).contains("maas_deploy_poll_seconds"));
        let err =
            Settings::from_config(&json!({"maas_user": "admin", "node_id": "a"})).unwrap_err();
        assert!(
            err.contains("maas_url") && err.contains("maas_user"),
            "{err}"
        );
        let err = Settings::from_config(&json!({"maas_url": "http://m/MAAS"})).unwrap_err();
        assert!(err.contains("node_id"), "{err}");
        let err = Options::from_job(&json!({"provision_data": {"ephemeral": "yes"}})).unwrap_err();
        assert!(err.contains("provision_data.ephemeral"), "{err}");
    }
}
