//! `schema::validate`: a stage-data schema (TOML, as in `connector.toml`)
//! and stage data (JSON) from one input split at the first NUL byte.

#![no_main]

use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let Ok(text) = std::str::from_utf8(data) else {
        return;
    };
    let (schema, json) = text.split_once('\0').unwrap_or((text, ""));
    let Ok(schema) = toml::from_str::<toml::Table>(schema) else {
        return;
    };
    let schema = toml::Value::Table(schema);
    let value: Option<serde_json::Value> = serde_json::from_str(json).ok();
    let _ = tfdc::schema::validate("provision_data", &schema, value.as_ref());
    if let Some(toml::Value::Table(t)) = Some(&schema) {
        for v in t.values() {
            let _ = tfdc::schema::validate("x", v, value.as_ref());
        }
    }
});
