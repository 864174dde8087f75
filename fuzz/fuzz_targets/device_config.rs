//! `DeviceConfig::parse` on arbitrary text, then every view a stage takes
//! of it: none may panic, and the connector's view never shows a secret
//! key or the runtime section.

#![no_main]

use std::path::Path;

use libfuzzer_sys::fuzz_target;
use tfdc::config::{DeviceConfig, RUNTIME_KEY, is_secret_key};

fn assert_no_secret_keys(v: &serde_json::Value) {
    match v {
        serde_json::Value::Object(m) => {
            for (k, v) in m {
                assert!(!is_secret_key(k), "secret key {k} in the guest view");
                assert_no_secret_keys(v);
            }
        }
        serde_json::Value::Array(a) => a.iter().for_each(assert_no_secret_keys),
        _ => {}
    }
}

fuzz_target!(|data: &[u8]| {
    let Ok(text) = std::str::from_utf8(data) else {
        return;
    };
    let Ok(config) = DeviceConfig::parse(Path::new("default.yaml"), text) else {
        return;
    };
    let view = config.guest_view();
    assert!(view.get(RUNTIME_KEY).is_none());
    assert_no_secret_keys(&view);
    let _ = config.device_ip();
    let _ = config.agent_name();
    let _ = config.env();
    for key in ["reboot_script", "serial_port", "device_ip"] {
        let _ = config.command_list(key);
        let _ = config.string(key);
    }
    if let Some(limits) = &config.runtime.limits {
        let _ = tfdc::lab::merge_limits(&[Some(limits)]);
    }
});
