//! `fake_connector` (reference §4.3): a testing aid that provisions nothing
//! and reports the job's `provision_data` on stdout; every other stage is
//! the runtime's default.

use serde::Serialize;
use serde_json::Value;
use testflinger_connector::prelude::*;

/// The connector.
pub struct FakeConnector;

/// `value` as JSON indented by four spaces, like Python's
/// `json.dumps(value, indent=4)`.
pub fn indented_json(value: &Value) -> String {
    let mut out = Vec::new();
    let formatter = serde_json::ser::PrettyFormatter::with_indent(b"    ");
    let mut ser = serde_json::Serializer::with_formatter(&mut out, formatter);
    value
        .serialize(&mut ser)
        .expect("a JSON value always serializes");
    String::from_utf8(out).expect("serde_json writes UTF-8")
}

impl Connector for FakeConnector {
    fn new() -> Self {
        FakeConnector
    }

    fn provision(&mut self) -> PhaseResult<()> {
        hooks::pre_provision(false)?;
        let provision_data = job::job()?
            .get("provision_data")
            .cloned()
            .unwrap_or_else(|| Value::Object(Default::default()));
        info!("BEGIN provision");
        let rule = "*".repeat(40);
        log::print(&format!(
            "{rule}\nfake_connector: nothing is provisioned by this connector.\nThe job's provision_data:\n{}\n{rule}\n",
            indented_json(&provision_data)
        ));
        info!("END provision");
        Ok(())
    }
}

export_connector!(FakeConnector);

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn four_space_indent() {
        let v: Value = serde_json::from_str(r#"{"url":"u","n":[1]}"#).unwrap();
        assert_eq!(
            indented_json(&v),
            "{\n    \"url\": \"u\",\n    \"n\": [\n        1\n    ]\n}"
        );
    }
}
