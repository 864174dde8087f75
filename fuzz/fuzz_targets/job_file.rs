//! `JobFile::parse` on arbitrary text, then the views the runtime takes:
//! none may panic, and no secret value reaches the connector's view or the
//! job URLs.

#![no_main]

use std::path::Path;

use libfuzzer_sys::fuzz_target;
use tfdc::job_file::JobFile;
use tfdc::stage::Stage;

fuzz_target!(|data: &[u8]| {
    let Ok(text) = std::str::from_utf8(data) else {
        return;
    };
    let Ok(job) = JobFile::parse(Path::new("testflinger.json"), text) else {
        return;
    };
    let view = job.guest_view();
    if let Some(td) = view.get("test_data").and_then(|t| t.as_object()) {
        assert!(!td.contains_key("secrets") && !td.contains_key("test_password"));
    }
    let _ = job.urls();
    let _ = job.secrets();
    let _ = job.secret_values();
    let _ = job.test_username();
    let _ = job.test_password();
    let _ = job.job_id();
    for stage in Stage::ALL {
        let _ = job.stage_data(stage);
    }
});
