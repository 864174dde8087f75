//! What maas2 reads from the device config and the job.

use std::time::Duration;

use serde_json::Value;
use testflinger_connector::Result;
use testflinger_connector::config::Config;

/// The longest any of the `maas_*_seconds` keys may be.
const MAX_POLL: Duration = Duration::from_secs(86_400);

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

impl Settings {
    /// Reads the device config (as the connector sees it).
    pub fn from_config(c: &Config) -> Result<Settings> {
        if c.text("maas_url").optional()?.is_none() {
            let hint = if c.has("maas_user") {
                "; `maas_user` names a maas CLI profile, which this connector does not use: it talks to the MAAS API directly"
            } else {
                ""
            };
            return Err(c.missing(
                "maas_url",
                "http://maas.example:5240/MAAS",
                &format!("the MAAS region API, with `maas_api_key` set to the API key of the MAAS user{hint}"),
            ));
        }
        let node_id = c
            .text("node_id")
            .why("the machine's MAAS system id")
            .required("<system id>")?;
        let minutes = c
            .number("timeout_min")
            .above(0.0)
            .at_most(7.0 * 24.0 * 60.0)
            .or(60.0)?;
        let default_disks = c
            .value("default_disks")
            .optional()?
            .filter(|v| !v.as_array().is_some_and(Vec::is_empty));
        let poll = |key: &str, default: u64| {
            c.duration(key)
                .at_most(MAX_POLL)
                .or(Duration::from_secs(default))
        };
        Ok(Settings {
            node_id,
            agent_name: c.text("agent_name").or_default()?,
            device_ip: c.text("device_ip").optional()?,
            deploy_timeout: Duration::from_secs_f64(minutes * 60.0),
            reset_efi: c.flag("reset_efi").or(false)?,
            clear_tpm: c.flag("clear_tpm").or(false)?,
            default_disks,
            retry_base: poll("maas_retry_base_seconds", 10)?,
            deploy_poll: poll("maas_deploy_poll_seconds", 60)?,
            release_poll: poll("maas_release_poll_seconds", 10)?,
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
    /// Reads the stage's job.
    pub fn load() -> Result<Options> {
        Options::from_job(&testflinger_connector::job::job()?)
    }

    /// Reads the job.
    pub fn from_job(job: &Value) -> Result<Options> {
        let pd = Config::from_job_json(
            "provision_data",
            job.get("provision_data").cloned().unwrap_or(Value::Null),
        )?;
        Ok(Options {
            distro: pd.text("distro").or("jammy".into())?,
            kernel: pd.text("kernel").optional()?,
            user_data: pd.string("user_data").optional()?,
            disks: pd.value("disks").optional()?,
            ephemeral: pd.flag("ephemeral").or(false)?,
            debug: matches!(job.get("debug"), Some(Value::Bool(true))),
        })
    }
}

#[cfg(test)]
mod tests {
    use serde_json::json;

    use super::*;

    fn settings(v: Value) -> Result<Settings> {
        Settings::from_config(&Config::from_device_json(v))
    }

    #[test]
    fn defaults_match_the_reference() {
        let s = settings(json!({
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
        let s = settings(json!({
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
            settings(c).unwrap_err().to_string()
        };
        assert!(with("timeout_min", json!(0)).contains("timeout_min"));
        assert!(with("timeout_min", json!("soon")).contains("timeout_min"));
        assert!(with("reset_efi", json!("yes")).contains("reset_efi"));
        assert!(with("maas_deploy_poll_seconds", json!(-1)).contains("maas_deploy_poll_seconds"));
        let err = settings(json!({"maas_user": "admin", "node_id": "a"}))
            .unwrap_err()
            .to_string();
        assert!(
            err.contains("maas_url") && err.contains("maas_user"),
            "{err}"
        );
        let err = settings(json!({"maas_url": "http://m/MAAS"}))
            .unwrap_err()
            .to_string();
        assert!(err.contains("node_id"), "{err}");
        let err = Options::from_job(&json!({"provision_data": {"ephemeral": "yes"}}))
            .unwrap_err()
            .to_string();
        assert!(err.contains("provision_data.ephemeral"), "{err}");
    }
}
