//! The lab file and its grants: `LoadedLab::parse` on arbitrary text (then
//! the grants of every pin and the line lookup), and `UrlPattern::parse`
//! on each line of the input, matched against a few URLs.

#![no_main]

use std::path::Path;

use libfuzzer_sys::fuzz_target;
use tfdc::lab::{LoadedLab, UrlPattern, parse_grants};

fuzz_target!(|data: &[u8]| {
    let Ok(text) = std::str::from_utf8(data) else {
        return;
    };
    if let Ok(lab) = LoadedLab::parse(Path::new("/lab/lab.yaml"), text) {
        for (t, pin) in &lab.file.connectors {
            let _ = lab.line_of(t);
            let _ = parse_grants(&pin.grants);
            let _ = lab.file_source(&pin.source);
        }
        let _ = lab.store_dir();
    }
    let urls = [
        "http://a.lab:80/x",
        "https://images.example/x.img",
        "http://[::1]:8080/",
    ]
    .map(|u| reqwest::Url::parse(u).unwrap());
    for line in text.lines().take(16) {
        if let Ok(p) = UrlPattern::parse(line) {
            // A pattern prints as one that parses back to itself.
            assert_eq!(UrlPattern::parse(&p.to_string()).as_ref(), Ok(&p));
            for u in &urls {
                let _ = p.matches(u);
            }
        }
    }
});
