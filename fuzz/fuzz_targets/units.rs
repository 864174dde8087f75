//! `parse_duration` and `parse_size` on arbitrary text: no panic, and
//! what they accept is consistent (a plain number of seconds or bytes
//! means exactly that); the log-line format of any parsed duration does
//! not panic either.

#![no_main]

use libfuzzer_sys::fuzz_target;
use tfdc::units::{human_duration, parse_duration, parse_size};

fuzz_target!(|data: &[u8]| {
    let Ok(text) = std::str::from_utf8(data) else {
        return;
    };
    let d = parse_duration(text);
    let s = parse_size(text);
    let t = text.trim();
    if !t.is_empty() && t.bytes().all(|b| b.is_ascii_digit()) {
        let n = t.parse::<u64>().ok();
        assert_eq!(d, n.map(std::time::Duration::from_secs));
        assert_eq!(s, n);
    }
    if let Some(d) = d {
        assert!(!human_duration(d).is_empty());
    }
    // Neither takes a sign.
    if t.starts_with(['+', '-']) {
        assert_eq!((d, s), (None, None));
    }
});
