//! The connector manifest: `Manifest::parse` on the bytes as text, and
//! `manifest::read` on the bytes as a component (the runtime reads it from
//! untrusted components before anything else).

#![no_main]

use libfuzzer_sys::fuzz_target;
use tfdc::manifest::{self, Manifest};

fuzz_target!(|data: &[u8]| {
    if let Ok(text) = std::str::from_utf8(data)
        && let Ok(m) = Manifest::parse(text)
    {
        let _ = m.declared();
        let _ = tfdc::host::wit::served_line(&m.wit);
    }
    let _ = manifest::read(data);
    let _ = tfdc::run::foreign_interface(data);
});
