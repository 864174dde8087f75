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

/// What the connector prints before the `provision_data`.
const INTRO: &str =
    "fake_connector: nothing is provisioned by this connector.\nThe job's provision_data:";

impl Connector for FakeConnector {
    fn new() -> Self {
        FakeConnector
    }

    fn provision(&mut self) -> PhaseResult<()> {
        let data = |_: &_| job::value_or("provision_data", Value::Object(Default::default()));
        provision::Frame::new().run(data, |data| {
            let rule = "*".repeat(40);
            let text = indented_json(&data);
            log::print(&format!("{rule}\n{INTRO}\n{text}\n{rule}\n"));
            Ok(())
        })
    }
}

export_connector!(FakeConnector);

#[cfg(test)]
mod tests {
    use serde_json::json;
    use testflinger_connector::testing::{FakeHost, response};

    use super::*;

    #[test]
    fn four_space_indent() {
        let v: Value = serde_json::from_str(r#"{"url":"u","n":[1]}"#).unwrap();
        assert_eq!(
            indented_json(&v),
            "{\n    \"url\": \"u\",\n    \"n\": [\n        1\n    ]\n}"
        );
    }

    #[test]
    fn provision_prints_the_data_between_the_markers() {
        let host = FakeHost::new()
            .job(json!({"provision_data": {"url": "http://i/x"}}))
            .install();
        FakeConnector::new().provision().unwrap();
        assert!(
            host.stdout().contains("    \"url\": \"http://i/x\"\n"),
            "{}",
            host.stdout()
        );
        let log = host.log();
        assert_eq!(
            log[log.len() - 2..],
            ["INFO BEGIN provision", "INFO END provision"]
        );
        assert!(host.trace().is_empty());
    }

    #[test]
    fn a_control_host_gets_the_pre_provision_hook() {
        let host = FakeHost::new()
            .config(json!({"control_host": "10.0.0.2"}))
            .http(
                "control-host",
                "POST /api/v1/system/setup/provisioning",
                [response(200, "")],
            )
            .install();
        FakeConnector::new().provision().unwrap();
        assert_eq!(
            host.trace(),
            [
                "cycle-control-host",
                "http control-host POST /api/v1/system/setup/provisioning"
            ]
        );
        assert!(host.logged("INFO Setting up provisioning on control host 10.0.0.2"));
        assert!(host.stdout().contains("{}"), "{}", host.stdout());
    }
}
