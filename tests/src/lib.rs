//! A simulated Testflinger lab on loopback: devices under test reachable
//! over SSH, control hosts, ser2net-style serial consoles, power control
//! and the HTTP services connectors talk to. Used by the end-to-end tests
//! and by the README's demo.
//!
//! Every simulated service runs on its own thread with its own async
//! runtime, so it works the same from synchronous tests (which run the CLI
//! as a child process) and from async code; dropping the handle stops it.

pub mod card;
pub mod client;
pub mod control_host;
pub mod dut;
pub mod image;
pub mod keyserver;
pub mod lab;
pub mod maas;
pub mod openssh;
pub mod serial;
pub mod tfserver;
pub mod tls;
pub mod web;

/// Fixture components built from `tests/fixtures/*` (with the `fixtures`
/// feature).
pub mod fixtures {
    include!(concat!(env!("OUT_DIR"), "/fixtures.rs"));

    /// Path of the fixture built from crate `name`; panics with a hint if
    /// it was not built.
    pub fn path(name: &str) -> std::path::PathBuf {
        FIXTURES
            .iter()
            .find(|(n, _)| *n == name)
            .map(|(_, p)| std::path::PathBuf::from(p))
            .unwrap_or_else(|| {
                panic!("fixture {name} was not built: enable the `fixtures` feature of tf-labsim")
            })
    }

    /// Path of a committed fixture under `tests/compat/`.
    pub fn compat(name: &str) -> std::path::PathBuf {
        std::path::Path::new(env!("CARGO_MANIFEST_DIR"))
            .join("compat")
            .join(name)
    }
}
