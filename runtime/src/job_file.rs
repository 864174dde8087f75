//! The job (`testflinger.json`): what the submitter asked for, including
//! resolved secrets. The runtime keeps the full job; connectors get a view
//! without secrets.

use std::collections::{BTreeMap, BTreeSet};
use std::path::{Path, PathBuf};

use serde_json::{Map, Value};

use crate::stage::Stage;

/// Why the job file could not be used.
#[derive(Debug, thiserror::Error)]
pub enum JobError {
    #[error(
        "cannot read job file {path}: {source}; the agent writes it as testflinger.json in the run directory"
    )]
    Read {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("job file {path} is not valid JSON: {message}")]
    Json { path: PathBuf, message: String },
    #[error("job file {path} must be a JSON object, found {found}")]
    NotAnObject { path: PathBuf, found: &'static str },
    #[error("job key `{key}` {problem}")]
    BadKey { key: String, problem: String },
}

/// A parsed job.
#[derive(Debug, Clone)]
pub struct JobFile {
    keys: Map<String, Value>,
}

impl JobFile {
    /// Reads and parses `path`.
    pub fn load(path: &Path) -> Result<Self, JobError> {
        let text = std::fs::read_to_string(path).map_err(|source| JobError::Read {
            path: path.to_path_buf(),
            source,
        })?;
        Self::parse(path, &text)
    }

    /// Parses JSON text; `path` is only used in messages.
    pub fn parse(path: &Path, text: &str) -> Result<Self, JobError> {
        let value: Value = serde_json::from_str(text).map_err(|e| JobError::Json {
            path: path.to_path_buf(),
            message: e.to_string(),
        })?;
        match value {
            Value::Object(keys) => Ok(JobFile { keys }),
            other => Err(JobError::NotAnObject {
                path: path.to_path_buf(),
                found: crate::config::kind_of(&other),
            }),
        }
    }

    /// An empty job (used when a stage runs without a job file).
    pub fn empty() -> Self {
        JobFile { keys: Map::new() }
    }

    /// Raw top-level value.
    pub fn get(&self, key: &str) -> Option<&Value> {
        self.keys.get(key)
    }

    /// `job_id`, if present.
    pub fn job_id(&self) -> Option<&str> {
        self.keys.get("job_id").and_then(Value::as_str)
    }

    /// The stage's `<stage>_data` mapping, if present and a mapping.
    pub fn stage_data(&self, stage: Stage) -> Result<Option<&Map<String, Value>>, JobError> {
        let Some(key) = stage.data_key() else {
            return Ok(None);
        };
        match self.keys.get(key) {
            None | Some(Value::Null) => Ok(None),
            Some(Value::Object(map)) => Ok(Some(map)),
            Some(other) => Err(JobError::BadKey {
                key: key.into(),
                problem: format!("must be a mapping, found {}", crate::config::kind_of(other)),
            }),
        }
    }

    fn test_data_str(&self, key: &str) -> Option<String> {
        match self.keys.get("test_data")?.get(key)? {
            Value::String(s) if !s.is_empty() => Some(s.clone()),
            _ => None,
        }
    }

    /// `test_data.test_username`, default `ubuntu`.
    pub fn test_username(&self) -> String {
        self.test_data_str("test_username")
            .unwrap_or_else(|| "ubuntu".into())
    }

    /// `test_data.test_password`, default `ubuntu`. Host use only.
    pub fn test_password(&self) -> String {
        self.test_data_str("test_password")
            .unwrap_or_else(|| "ubuntu".into())
    }

    /// `test_data.secrets`: environment variable name to value. Host use only.
    pub fn secrets(&self) -> Result<BTreeMap<String, String>, JobError> {
        let mut out = BTreeMap::new();
        let Some(secrets) = self.keys.get("test_data").and_then(|t| t.get("secrets")) else {
            return Ok(out);
        };
        let Value::Object(map) = secrets else {
            return Err(JobError::BadKey {
                key: "test_data.secrets".into(),
                problem: "must be a mapping of variable names to values".into(),
            });
        };
        for (name, value) in map {
            let text = match value {
                Value::String(s) => s.clone(),
                Value::Null => String::new(),
                other => other.to_string(),
            };
            out.insert(name.clone(), text);
        }
        Ok(out)
    }

    /// Every secret value the job carries (secrets and the test password),
    /// non-empty ones only: what must never reach a connector.
    pub fn secret_values(&self) -> Vec<String> {
        let mut values: Vec<String> = self
            .secrets()
            .map(|s| s.into_values().collect())
            .unwrap_or_default();
        values.extend(self.test_data_str("test_password"));
        values.retain(|v| !v.is_empty());
        values
    }

    /// The job a connector may read: `test_data.secrets` and
    /// `test_data.test_password` removed.
    pub fn guest_view(&self) -> Value {
        let mut keys = self.keys.clone();
        if let Some(Value::Object(test_data)) = keys.get_mut("test_data") {
            test_data.remove("secrets");
            test_data.remove("test_password");
        }
        Value::Object(keys)
    }

    /// Every `http`/`https` URL that appears as a string anywhere in the job
    /// (secrets excluded): the URLs a connector may fetch without a grant.
    pub fn urls(&self) -> BTreeSet<String> {
        let mut out = BTreeSet::new();
        collect_urls(&self.guest_view(), &mut out);
        out
    }
}

fn collect_urls(value: &Value, out: &mut BTreeSet<String>) {
    match value {
        Value::String(s) => {
            // The string as written, and without ASCII white space (a
            // trailing newline from a YAML block); never a Unicode trim:
            // the gate compares exactly what is fetched, and `x\u{3000}`
            // is another URL than `x` (issue 15, item 10).
            let trimmed = s.trim_matches(|c: char| c.is_ascii_whitespace());
            if trimmed.starts_with("http://") || trimmed.starts_with("https://") {
                out.insert(trimmed.to_string());
                out.insert(s.clone());
            }
        }
        Value::Array(items) => items.iter().for_each(|v| collect_urls(v, out)),
        Value::Object(map) => map.values().for_each(|v| collect_urls(v, out)),
        _ => {}
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn parse(text: &str) -> Result<JobFile, JobError> {
        JobFile::parse(Path::new("testflinger.json"), text)
    }

    #[test]
    fn guest_view_has_no_secrets() {
        let job = parse(
            r#"{"job_id":"j1","test_data":{"test_cmds":"x","test_password":"pw1","secrets":{"TOKEN":"s3cr3t"}}}"#,
        )
        .unwrap();
        let view = job.guest_view().to_string();
        assert!(view.contains("test_cmds"));
        assert!(!view.contains("pw1") && !view.contains("s3cr3t") && !view.contains("secrets"));
        assert_eq!(job.secrets().unwrap()["TOKEN"], "s3cr3t");
        assert_eq!(job.test_password(), "pw1");
        let mut values = job.secret_values();
        values.sort();
        assert_eq!(values, vec!["pw1", "s3cr3t"]);
    }

    #[test]
    fn defaults_and_errors() {
        let job = parse("{}").unwrap();
        assert_eq!(job.test_username(), "ubuntu");
        assert_eq!(job.test_password(), "ubuntu");
        assert!(matches!(parse("[1]"), Err(JobError::NotAnObject { .. })));
        assert!(matches!(parse("{"), Err(JobError::Json { .. })));
        let job = parse(r#"{"provision_data": 3}"#).unwrap();
        assert!(job.stage_data(Stage::Provision).is_err());
    }

    #[test]
    fn urls_are_collected_from_anywhere_but_secrets() {
        let job = parse(
            r#"{"provision_data":{"url":"https://img/x.zst","nested":[{"u":"http://a/b"}]},"test_data":{"secrets":{"S":"https://secret/"}}}"#,
        )
        .unwrap();
        let urls = job.urls();
        assert!(urls.contains("https://img/x.zst") && urls.contains("http://a/b"));
        assert!(!urls.iter().any(|u| u.contains("secret")));
    }
}
