//! The stage, the job and the device config (secrets removed by the host),
//! and the run-directory files a connector may touch.
//!
//! ```no_run
//! use serde::Deserialize;
//! use testflinger_connector::prelude::*;
//!
//! #[derive(Deserialize, Default)]
//! struct ProvisionData {
//!     url: Option<String>,
//! }
//!
//! # fn f() -> testflinger_connector::Result<()> {
//! let data: ProvisionData = job::provision_data()?;
//! let device_ip = job::config_str("device_ip")?;
//! # Ok(()) }
//! ```

use serde::Serialize;
use serde::de::DeserializeOwned;
use serde_json::Value;

use crate::bindings::testflinger::connector::job as wit;
use crate::error::{Error, ErrorKind, Result};

pub use wit::Stage;

/// The stage this invocation runs.
pub fn stage() -> Stage {
    wit::current_stage()
}

/// The whole job (`testflinger.json` without secrets).
pub fn job() -> Result<Value> {
    Ok(serde_json::from_str(&wit::job_json())?)
}

/// The job deserialized into `T`.
pub fn job_as<T: DeserializeOwned>() -> Result<T> {
    serde_json::from_str(&wit::job_json())
        .map_err(|e| Error::new(ErrorKind::Invalid, format!("job data: {e}")))
}

/// The device config (`default.yaml` without secret values).
pub fn config() -> Result<Value> {
    Ok(serde_json::from_str(&wit::device_config_json())?)
}

/// The device config deserialized into `T`.
pub fn config_as<T: DeserializeOwned>() -> Result<T> {
    serde_json::from_str(&wit::device_config_json())
        .map_err(|e| Error::new(ErrorKind::Invalid, format!("device config: {e}")))
}

/// A device-config key as a string (numbers are rendered), or `None` when
/// absent, null or empty.
pub fn config_str(key: &str) -> Result<Option<String>> {
    Ok(match config()?.get(key) {
        Some(Value::String(s)) if !s.is_empty() => Some(s.clone()),
        Some(Value::Number(n)) => Some(n.to_string()),
        _ => None,
    })
}

/// A job key deserialized into `T`, or `T::default()` when absent or null.
pub fn section<T: DeserializeOwned + Default>(key: &str) -> Result<T> {
    match job()?.get(key) {
        None | Some(Value::Null) => Ok(T::default()),
        Some(v) => T::deserialize(v)
            .map_err(|e| Error::new(ErrorKind::Invalid, format!("job key `{key}`: {e}"))),
    }
}

/// `provision_data` deserialized into `T`.
pub fn provision_data<T: DeserializeOwned + Default>() -> Result<T> {
    section("provision_data")
}

/// `test_data.test_username`, default `ubuntu`.
pub fn test_username() -> Result<String> {
    Ok(job()?
        .get("test_data")
        .and_then(|t| t.get("test_username"))
        .and_then(Value::as_str)
        .filter(|s| !s.is_empty())
        .unwrap_or("ubuntu")
        .to_string())
}

/// Names of the files under `attachments/<phase>/`.
pub fn attachments(phase: &str) -> Result<Vec<String>> {
    Ok(wit::attachments(phase)?)
}

/// Contents of a (small) attachment.
pub fn read_attachment(phase: &str, name: &str) -> Result<Vec<u8>> {
    Ok(wit::read_attachment(phase, name)?)
}

/// Sets `device_info.<key>` in `device-info.json`.
pub fn set_device_info<T: Serialize>(key: &str, value: &T) -> Result<()> {
    Ok(wit::set_device_info(key, &serde_json::to_string(value)?)?)
}

/// Writes `artifacts/<name>`.
pub fn write_artifact(name: &str, data: &[u8]) -> Result<()> {
    Ok(wit::write_artifact(name, data)?)
}
