//! The stage, the job (secrets removed by the host) and the run-directory
//! files a connector may touch. Device-config keys are read with
//! [`crate::config`].
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
//! let user = job::test_username()?;
//! # Ok(()) }
//! ```

use serde::Serialize;
use serde::de::DeserializeOwned;
use serde_json::Value;

use crate::error::{Error, ErrorKind, Result};
use crate::sys;

pub use crate::bindings::testflinger::connector::job::Stage;

/// The stage this invocation runs.
pub fn stage() -> Stage {
    sys::stage()
}

/// The whole job (`testflinger.json` without secrets), read once per stage.
pub fn job() -> Result<Value> {
    Ok((*sys::job()?).clone())
}

/// The job deserialized into `T`.
pub fn job_as<T: DeserializeOwned>() -> Result<T> {
    T::deserialize(&*sys::job()?)
        .map_err(|e| Error::new(ErrorKind::Invalid, format!("job data: {e}")))
}

/// The device config (`default.yaml` without secret values), read once per
/// stage. [`crate::config::Config`] reads its keys with checks and clear
/// errors.
pub fn config() -> Result<Value> {
    Ok((*sys::device_config()?).clone())
}

/// The device config deserialized into `T`.
pub fn config_as<T: DeserializeOwned>() -> Result<T> {
    T::deserialize(&*sys::device_config()?)
        .map_err(|e| Error::new(ErrorKind::Invalid, format!("device config: {e}")))
}

/// A device-config key as a string (numbers are rendered), or `None` when
/// absent, null or empty.
pub fn config_str(key: &str) -> Result<Option<String>> {
    Ok(match sys::device_config()?.get(key) {
        Some(Value::String(s)) if !s.is_empty() => Some(s.clone()),
        Some(Value::Number(n)) => Some(n.to_string()),
        _ => None,
    })
}

/// A job key as JSON, `default` when the job has none (the reference's
/// `job_data.get(key, default)`; a null stays null).
pub fn value_or(key: &str, default: Value) -> Result<Value> {
    Ok(sys::job()?.get(key).cloned().unwrap_or(default))
}

/// A job key deserialized into `T`, or `T::default()` when absent or null.
pub fn section<T: DeserializeOwned + Default>(key: &str) -> Result<T> {
    match sys::job()?.get(key) {
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
    Ok(sys::job()?
        .get("test_data")
        .and_then(|t| t.get("test_username"))
        .and_then(Value::as_str)
        .filter(|s| !s.is_empty())
        .unwrap_or("ubuntu")
        .to_string())
}

/// Names of the files under `attachments/<phase>/`.
pub fn attachments(phase: &str) -> Result<Vec<String>> {
    sys::attachments(phase)
}

/// Contents of a (small) attachment.
pub fn read_attachment(phase: &str, name: &str) -> Result<Vec<u8>> {
    sys::read_attachment(phase, name)
}

/// Sets `device_info.<key>` in `device-info.json`.
pub fn set_device_info<T: Serialize>(key: &str, value: &T) -> Result<()> {
    sys::set_device_info(key, &serde_json::to_string(value)?)
}

/// Writes `artifacts/<name>`.
pub fn write_artifact(name: &str, data: &[u8]) -> Result<()> {
    sys::write_artifact(name, data)
}
